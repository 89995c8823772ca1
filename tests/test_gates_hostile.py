"""The hostile suite, second part: one case (or a few) for each class of fault that
issue 14 found, through the real CLI. Each asserts the exit code, the one error line, no
traceback, no secret printed or written, and that nothing was lost or deleted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_gates_http import Recorder
from test_hostile import KEY, clip, evaluate, fine, optimize, prompts, small, user_error  # noqa: F401 - fixtures

from conftest import run_ipo, run_ipo_process
from servers import FakeOpenAI


def no_secret(result, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in result.stdout and secret not in result.stderr, secret


def written(folder: Path) -> str:
    """Everything under a folder, as text, for looking for secrets."""
    return "".join(p.read_bytes().decode("utf-8", "replace") for p in Path(folder).rglob("*") if p.is_file())


# ---- credentials never leave their host -------------------------------------------------
def test_a_redirect_to_another_host_gets_no_key_and_no_post(small, tmp_path, clip):
    """/v1/models and /chat/completions both answer 302 to another host, which would answer
    anything: the model list is read there without the key, the chat request is not sent."""
    answer = json.dumps({"object": "list", "data": [{"id": "m", "owned_by": "system"}],
                         "choices": [{"message": {"content": "<INS>a photo of a <CLASS>.</INS>"}}]}).encode()
    other = Recorder(lambda h: (200, {"Content-Type": "application/json"}, answer))
    first = Recorder(lambda h: (302, {"Location": other.url + h.path}, b""))
    try:
        result = optimize(small, clip, tmp_path / "run", "--llm-model", "m", url=first.url + "/v1")
    finally:
        first.close()
        other.close()
    user_error(result, "redirected a POST request to another host")
    no_secret(result, KEY)
    assert other.seen and all(r["auth"] is None for r in other.seen)  # the other host never saw the key
    assert all(r["method"] == "GET" and "chat" not in r["path"] for r in other.seen)  # nor the chat request
    assert not (tmp_path / "run").exists() or KEY not in written(tmp_path / "run")


@pytest.mark.parametrize("key, needle", [(KEY[:8] + "\n" + KEY[8:], "line break"), (KEY + " x", "whitespace"),
                                         ("sk-\u00e9\u00e9\u00e9\u00e9\u00e9", "non-ASCII")])
def test_a_malformed_key_is_one_line_that_does_not_show_it(small, tmp_path, clip, key, needle):
    result = optimize(small, clip, tmp_path / "run", url="http://127.0.0.1:9/v1", env={"IPO_API_KEY": key})
    user_error(result, needle)
    no_secret(result, key.strip(), KEY[8:])


def test_a_password_in_the_url_is_refused_hidden_and_never_stored(small, tmp_path, clip):
    run = tmp_path / "run"
    result = optimize(small, clip, run, url="http://alice:hunter2pw@127.0.0.1:9/v1")
    user_error(result, "holds a user name or password")
    no_secret(result, "hunter2pw")
    assert not run.exists() or "hunter2pw" not in written(run)


def test_hf_endpoint_that_is_not_a_url_is_one_line():
    user_error(run_ipo("models", "pull", "qwen2.5-1.5b", env={"HF_ENDPOINT": "not-a-url", "HF_HUB_OFFLINE": "0"}),
               "HF_ENDPOINT")


# ---- outside text reaches the terminal escaped ----------------------------------------------
def test_control_characters_in_an_answer_never_reach_the_terminal_raw(small, tmp_path, clip):
    answer = "<INS>a \x1b]0;owned\x07photo\x1b[2J of a <CLASS>\u202e.</INS>"
    with FakeOpenAI(key=KEY, models=("m",), reply=lambda payload: answer) as api:
        result = run_ipo("optimize", small, "--classes", small / "classes.txt", "--shots", "1", "--steps", "1",
                         "--candidates", "2", "--lmm", "none", *clip, "--out", tmp_path / "run",
                         "--llm-url", api.url + "/v1", "--llm-model", "m", env={"IPO_API_KEY": KEY})
    assert result.returncode == 0, result.stderr
    for raw in ("\x1b", "\x07", "\u202e"):
        assert raw not in result.stdout and raw not in result.stderr


def test_the_bench_report_escapes_table_values(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    cell = {k: {"mean": 1.0, "std": 0.0} for k in ("base", "novel", "H")}
    table = {"shots": 1, "datasets": {"<b>pets</b>": {"seeds": ["<script>alert(3)</script>"], "CLIP": cell,
                                                      "IPO": cell}}}
    (bench / "table.json").write_text(json.dumps(table))
    from ipo_cli.explain.report import write_bench

    html = write_bench(bench).read_text()
    assert "<script>alert" not in html and "<b>pets" not in html and "&lt;script&gt;" in html


def test_a_malformed_bench_table_is_one_line(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "table.json").write_text(json.dumps({"datasets": {"x": {"seeds": [1], "CLIP": {"H": {"mean": "a"}}}}}))
    from ipo_cli.errors import IpoError
    from ipo_cli.explain.report import write_bench

    with pytest.raises(IpoError, match="is not an ipo bench table"):
        write_bench(bench)


# ---- deep or huge JSON --------------------------------------------------------------------
@pytest.mark.parametrize("which", ["classes", "prompts", "split"])
def test_json_nested_100000_deep_is_one_line(small, tmp_path, clip, which):
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / f"deep-{which}.json"
    path.write_text(deep)
    args = {"classes": ["eval", prompts(tmp_path, ["a {}."]), "--images", small, "--classes", path],
            "prompts": ["eval", path, "--images", small, "--classes", small / "classes.txt"],
            "split": ["eval", prompts(tmp_path, ["a {}."]), "--images", small, "--split", path]}[which]
    user_error(run_ipo(*args, *clip), "deeper than")


# ---- paths the OS refuses and --out that is not a regular file ------------------------------
@pytest.mark.parametrize("name", ["n" * 300, "d/" * 2100])
def test_names_too_long_are_one_line(small, tmp_path, clip, name):
    user_error(run_ipo("eval", prompts(tmp_path, ["a {}."]), "--images", tmp_path / name, *clip), "limit")
    user_error(evaluate(small, tmp_path, clip, "--out", tmp_path / name), "limit")


def test_out_onto_a_fifo_a_device_or_through_a_link_is_refused_before_work(small, tmp_path, clip):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "target.json").write_text("keep me")
    os.symlink(tmp_path / "target.json", tmp_path / "link.json")
    for out, needle in ((tmp_path / "fifo", "FIFO"), ("/dev/null", "device"), (tmp_path / "link.json", "symbolic")):
        user_error(evaluate(small, tmp_path, clip, "--out", out), needle)
    assert (tmp_path / "target.json").read_text() == "keep me"
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_an_optimize_out_that_is_a_link_is_refused_even_with_force(small, tmp_path, clip):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "mine.txt").write_text("mine")
    os.symlink(tmp_path / "real", tmp_path / "run")
    user_error(optimize(small, clip, tmp_path / "run", "--force", url="http://127.0.0.1:9/v1"), "symbolic link")
    assert (tmp_path / "real" / "mine.txt").read_text() == "mine"


# ---- deleting only what ipo made --------------------------------------------------------------
def test_models_rm_never_deletes_a_file_outside_the_store(tmp_path):
    from ipo_cli.store import local

    victim = tmp_path / "precious.txt"
    victim.write_text("mine")
    local.Manifest().put(local.LocalModel("m", "llm", {"model": {"path": str(victim), "sha256": "0" * 64, "size": 4,
                                                                  "from": "download"}}, source="catalogue"))
    fine(run_ipo("models", "rm", "m"))
    assert victim.read_text() == "mine"


def test_cache_clear_never_touches_a_folder_of_the_users_files(tmp_path):
    root = tmp_path / "mine"
    (root / "embeddings").mkdir(parents=True)
    (root / "embeddings" / "thesis.tex").write_text("years of work")
    (root / "embeddings" / "cache.db").write_text("not a database")
    user_error(run_ipo("cache", "clear", "--cache-dir", root), "did not make")
    assert (root / "embeddings" / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in root.iterdir()) == ["embeddings"]


# ---- images that cost gigabytes ---------------------------------------------------------------
def test_an_absurd_image_is_skipped_with_one_warning(small, tmp_path, clip):
    first = next(p for p in sorted(small.iterdir()) if p.is_dir())
    Image.new("L", (1, 20000)).save(first / "thin.png")
    result = evaluate(small, tmp_path, clip)
    fine(result)
    warnings = [line for line in result.stderr.splitlines() if "thin.png" in line]
    assert len(warnings) == 1 and "20000:1" in warnings[0], result.stderr
    assert "DecompressionBomb" not in result.stderr


# ---- silent wrong answers -----------------------------------------------------------------
def test_nan_embeddings_in_the_cache_are_recomputed(small, tmp_path, clip):
    from ipo_cli import cache

    cold = evaluate(small, tmp_path, clip, "--json")
    fine(cold)
    store = cache.Store(Path(os.environ["IPO_CACHE_DIR"]), "embeddings")
    for key in list(store._cache.iterkeys()):
        if key.startswith("img:"):
            store.set_array(key, np.full(64, np.nan, np.float16))
    store.close()
    warm = evaluate(small, tmp_path, clip, "--json")
    fine(warm)
    strip = lambda r: {k: v for k, v in json.loads(r.stdout).items() if k not in ("cache", "seconds", "timing")}  # noqa: E731
    assert strip(warm) == strip(cold)
    assert json.loads(warm.stdout)["cache"]["images_computed"] == 6


def test_class_folders_that_name_the_same_class_are_refused(small, tmp_path, clip):
    first = next(p for p in sorted(small.iterdir()) if p.is_dir())
    twin = small / first.name.swapcase()
    twin.mkdir()
    for image in first.iterdir():
        (twin / image.name).write_bytes(image.read_bytes())
    user_error(run_ipo("eval", prompts(tmp_path, ["a {}."]), "--images", small, *clip), "name the same class")


def test_base_novel_with_held_out_images_of_other_classes_is_refused_before_work(small, tmp_path, clip):
    other = tmp_path / "other"
    for name in ("x1", "x2", "x3"):
        (other / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(other / name / "a.png")
    result = optimize(small, clip, tmp_path / "run", "--base-novel", "--test-images", other,
                      url="http://127.0.0.1:9/v1")
    assert result.returncode == 2 and ("other classes" in result.stderr or "matches the class" in result.stderr)
    user_error(result)
    assert not (tmp_path / "run").exists()


def test_a_saved_setting_of_the_wrong_type_is_one_line_on_resume(small, tmp_path, clip):
    run = tmp_path / "run"
    with FakeOpenAI(key=KEY, models=("m",)) as api:
        fine(optimize(small, clip, run, "--llm-model", "m", url=api.url + "/v1"))
    config = json.loads((run / "config.json").read_text())
    config["request"]["images"] = 5
    (run / "config.json").write_text(json.dumps(config))
    before = (run / "history.jsonl").read_bytes()
    user_error(run_ipo("optimize", "--resume", run), "'images' is the whole number 5, not a path")
    assert (run / "history.jsonl").read_bytes() == before


# ---- output the terminal cannot show ------------------------------------------------------
def test_an_ascii_terminal_gets_replacements_not_a_crash(tmp_path):
    """stdout in ASCII: the table with a non-ASCII path is printed with "?" in its place."""
    result = run_ipo_process("cache", "info", "--cache-dir", tmp_path / "Δ-cache", env={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0, result.stderr
    assert "UnicodeEncodeError" not in result.stderr and "?-cache" in result.stdout


def test_matplotlib_and_torch_caches_go_under_ipos_cache(tmp_path, monkeypatch):
    from ipo_cli import cache

    for name in ("MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MPLCONFIGDIR", "")  # empty counts as unset
    cache.keep_third_party_caches_inside(tmp_path)
    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "matplotlib")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "torchinductor")
    monkeypatch.setenv("MPLCONFIGDIR", "/mine")
    cache.keep_third_party_caches_inside(tmp_path)
    assert os.environ["MPLCONFIGDIR"] == "/mine"  # the user's own choice stays


# ---- chat templates -------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["{% for %}", "{{ raise_exception('boom') }}", "{{ 1 / 0 }}"],
                ids=["unparsable", "raises", "divides-by-zero"])
def broken_template_gguf(request, smollm, tmp_path_factory):
    """SmolLM2 with its chat template replaced (gguf's own gguf_new_metadata script)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("gguf") / "broken.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(smollm), str(out),
                    "--chat-template", request.param, "--force"], check=True, capture_output=True)
    return out


def test_a_chat_template_that_fails_is_one_line_before_the_run_folder(small, tmp_path, clip, broken_template_gguf):
    run = tmp_path / "run"
    result = run_ipo("optimize", small, "--classes", small / "classes.txt", "--shots", "1", "--steps", "1",
                     "--candidates", "1", "--lmm", "none", *clip, "--llm", broken_template_gguf, "--out", run)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "chat template of" in errors[0] and "unexpected" not in errors[0], errors[0]
    assert not run.exists()
