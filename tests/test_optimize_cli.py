"""`ipo optimize` end to end: real SmolLM2-135M in llama.cpp, a real open_clip model with
random weights, real images, and a fake captioner (a local OpenAI-compatible server)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_ipo
from servers import FakeChatServer


def base_args(fashion_train, smollm, tiny_config, tiny_checkpoint, out, steps=3, candidates=3):
    return ["optimize", fashion_train, "--classes", fashion_train / "classes.txt", "--shots", "2",
            "--steps", str(steps), "--candidates", str(candidates), "--llm", smollm, "--n-ctx", "2048",
            "--clip", tiny_config, "--clip-weights", tiny_checkpoint, "--out", out]


def comparable(records):
    """History records without timings and cache bookkeeping, which differ between runs."""
    drop = {"seconds", "usage", "cached", "prompt_tokens", "reused_tokens", "evaluated_tokens"}
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def read_history(run):
    return [json.loads(l) for l in (run / "history.jsonl").read_text().splitlines() if l.strip()]


def test_run_folder_is_complete_and_consistent(tmp_path, fashion_train, fashion_test, smollm, tiny_config, tiny_checkpoint):
    out = tmp_path / "run"
    with FakeChatServer(lambda p: "A dark item with a strap, seen from the front on black.") as captioner:
        result = run_ipo(*base_args(fashion_train, smollm, tiny_config, tiny_checkpoint, out),
                         "--lmm-url", captioner.url + "/v1", "--task-hint", "product photos", "--json",
                         "--n-ctx", "4096")  # room for all 20 descriptions
        caption_calls = len(captioner.requests)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert caption_calls == 20  # 2 shots x 10 classes, described once
    plan = summary["plan"]
    assert (plan["llm_where"], plan["lmm_where"], plan["machine"]) == ("CPU", "server", "cpu")
    config = json.loads((out / "config.json").read_text())
    assert config["request"]["steps"] == 3 and config["request"]["seed"] == 1
    assert config["models"]["llm"].startswith("SmolLM2") and config["models"]["lmm"].endswith("#" + FakeChatServer.MODEL_ID)
    assert len(config["split"]["train"]) == 20 and "torch" in config["versions"]
    records = read_history(out)
    candidates = [r for r in records if r["type"] == "candidate"]
    steps = [r for r in records if r["type"] == "step"]
    assert [s["step"] for s in steps] == [0, 1, 2, 3]
    assert len(candidates) >= 1 + 3 * 3
    for r in candidates:
        assert r["valid"] == (r["reason"] is None)
        if r["valid"]:
            assert 0 <= r["accuracy"] <= 100 and r["loss"] > 0 and len(r["per_class"]) == 10
    for s in steps[1:]:
        assert s["prompt_tokens"] == s["reused_tokens"] + s["evaluated_tokens"]
    assert sum(s["reused_tokens"] for s in steps[2:]) > 0  # the unchanging prefix is reused
    metas = sorted(p.name for p in (out / "meta_prompts").iterdir())
    assert metas == ["step_001.txt", "step_002.txt", "step_003.txt"]
    meta = (out / "meta_prompts" / "step_001.txt").read_text()
    assert "Image_20: A dark item" in meta and "(product photos)" in meta and "<INS>a photo of a <CLASS>.</INS>" in meta
    prompts = json.loads((out / "prompts.json").read_text())
    assert prompts["schema"] == "ipo.prompts/v1" and prompts["best"] == summary["best"]["template"]
    accs = [(-p["acc1"], p["loss"]) for p in prompts["prompts"]]
    assert accs == sorted(accs)
    history_md = (out / "history.md").read_text()
    assert "## Step 3" in history_md and "(baseline)" in history_md and "Final ranking" in history_md
    bench = json.loads((out / "templates_clip_benchmark.json").read_text())
    assert all("{c}" in t for t in bench["train"])
    assert summary["llm_calls"] >= 9 and summary["tokens"]["completion_tokens"] > 0
    # ipo eval reads the run's prompts.json
    evaluated = run_ipo("eval", out / "prompts.json", "--images", fashion_test, "--classes", fashion_test / "classes.txt",
                        "--clip", tiny_config, "--clip-weights", tiny_checkpoint, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["results"][0]["name"] == prompts["prompts"][0]["template"]


def test_killed_run_resumes_to_the_same_history(tmp_path, fashion_train, smollm, tiny_config, tiny_checkpoint):
    args = lambda out: base_args(fashion_train, smollm, tiny_config, tiny_checkpoint, out, steps=4) + ["--lmm", "none"]
    whole = run_ipo(*args(tmp_path / "whole"), env={"IPO_CACHE_DIR": str(tmp_path / "cache-a")})
    assert whole.returncode == 0, whole.stderr
    cut = tmp_path / "cut"
    env = {**os.environ, "IPO_CACHE_DIR": str(tmp_path / "cache-b")}
    proc = subprocess.Popen([sys.executable, "-m", "ipo_cli", *map(str, args(cut))], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        history = cut / "history.jsonl"
        if history.exists() and len(history.read_text().splitlines()) >= 7:  # mid step 2
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines_at_kill = len((cut / "history.jsonl").read_text().splitlines())
    assert 7 <= lines_at_kill < len(read_history(tmp_path / "whole"))
    resumed = run_ipo("optimize", "--resume", cut, env={"IPO_CACHE_DIR": str(tmp_path / "cache-b")})
    assert resumed.returncode == 0, resumed.stderr
    assert comparable(read_history(cut)) == comparable(read_history(tmp_path / "whole"))
    assert json.loads((cut / "prompts.json").read_text())["best"] == \
        json.loads((tmp_path / "whole" / "prompts.json").read_text())["best"]


def test_warm_rerun_uses_caches(tmp_path, fashion_train, smollm, tiny_config, tiny_checkpoint):
    args = base_args(fashion_train, smollm, tiny_config, tiny_checkpoint, tmp_path / "a", steps=2, candidates=2)
    cold = run_ipo(*args, "--lmm", "none", "--json")
    args[-1] = tmp_path / "b"
    warm = run_ipo(*args, "--lmm", "none", "--json")
    assert cold.returncode == 0 and warm.returncode == 0, warm.stderr
    c, w = json.loads(cold.stdout), json.loads(warm.stdout)
    assert w["llm_calls_cached"] == w["llm_calls"] > 0 and c["llm_calls_cached"] == 0
    assert w["best"] == c["best"]


def test_base_novel_and_select_val(tmp_path, fashion_train, fashion_test, smollm, tiny_config, tiny_checkpoint):
    args = base_args(fashion_train, smollm, tiny_config, tiny_checkpoint, tmp_path / "bn", steps=1, candidates=2)
    result = run_ipo(*args, "--lmm", "none", "--base-novel", "--test-images", fashion_test, "--select", "val", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    config = json.loads((tmp_path / "bn" / "config.json").read_text())
    assert config["train_classnames"] == config["classnames"][:5]
    assert len(config["split"]["val"]) == 5 * 2
    bn = summary["base_novel"]
    assert bn["test_images"] == 80 and set(bn["best"]) == {"base", "novel", "hm"}
    assert "val_accuracy" in summary["best"]


@pytest.mark.parametrize("case, expect", [
    ("one-class", "at least two"),
    ("too-many-shots", "holds (6 images)"),
    ("out-exists", "already exists"),
    ("resume-not-a-run", "is not an ipo run folder"),
    ("cannot-fit", "even without image descriptions"),
])
def test_optimize_bad_input(case, expect, tmp_path, fashion_train, smollm, tiny_config, tiny_checkpoint):
    out = tmp_path / "run"
    args = base_args(fashion_train, smollm, tiny_config, tiny_checkpoint, out, steps=1, candidates=1) + ["--lmm", "none"]
    if case == "one-class":
        (tmp_path / "one.txt").write_text("bag\n")
        one = tmp_path / "one"
        (one / "bag").mkdir(parents=True)
        for p in (fashion_train / "bag").iterdir():
            (one / "bag" / p.name).write_bytes(p.read_bytes())
        args[1], args[3] = one, tmp_path / "one.txt"
    elif case == "too-many-shots":
        args[5] = "7"
    elif case == "out-exists":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "resume-not-a-run":
        out.mkdir()
        args = ["optimize", "--resume", out]
    elif case == "cannot-fit":
        args[args.index("2048")] = "512"
        args += ["--max-tokens", "400"]
    result = run_ipo(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and expect in errors[0] and "Traceback" not in result.stderr


def test_resume_with_other_settings_is_refused(tmp_path, fashion_train, smollm, tiny_config, tiny_checkpoint):
    out = tmp_path / "run"
    first = run_ipo(*base_args(fashion_train, smollm, tiny_config, tiny_checkpoint, out, steps=1, candidates=1), "--lmm", "none")
    assert first.returncode == 0, first.stderr
    other = run_ipo("optimize", "--resume", out, "--candidates", "4")
    assert other.returncode == 2 and "different settings (candidates: 1 in the run, 4 now)" in other.stderr
    forced = run_ipo(*base_args(fashion_train, smollm, tiny_config, tiny_checkpoint, out, steps=1, candidates=1),
                     "--lmm", "none", "--force")
    assert forced.returncode == 0, forced.stderr


def test_ctrl_c_stops_cleanly_after_saving(tmp_path, fashion_train, smollm, tiny_config, tiny_checkpoint):
    out = tmp_path / "run"
    args = base_args(fashion_train, smollm, tiny_config, tiny_checkpoint, out, steps=20) + ["--lmm", "none"]
    proc = subprocess.Popen([sys.executable, "-m", "ipo_cli", *map(str, args)], env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "meta_prompts" / "step_002.txt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"ipo optimize --resume {out}" in stderr and "Traceback" not in stderr
    prompts = json.loads((out / "prompts.json").read_text())
    assert prompts["prompts"] and (out / "history.md").exists()
    steps_done = [r for r in read_history(out) if r["type"] == "step"]
    assert 1 <= steps_done[-1]["step"] < 20
