"""`ipo eval` as a user runs it: a subprocess over real images and a real open_clip model."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import run_ipo, run_ipo_without_torch


def clip_args(tiny_config, tiny_checkpoint):
    return ["--clip", str(tiny_config), "--clip-weights", str(tiny_checkpoint)]


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from ipo_cli.cli import app; "
            "print(sorted(m for m in ('torch', 'open_clip', 'llama_cpp', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    helped = run_ipo("--help")
    assert helped.returncode == 0 and "eval" in helped.stdout


def test_eval_table_json_and_out_file(tmp_path, fashion_test, tiny_config, tiny_checkpoint):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["a photo of a {}.", "a grey product photo of a {}.", "<CLASS>"]))
    out = tmp_path / "results.json"
    result = run_ipo("eval", prompts, "--images", fashion_test, "--classes", fashion_test / "classes.txt",
                     *clip_args(tiny_config, tiny_checkpoint), "--out", out)
    assert result.returncode == 0, result.stderr
    assert "a grey product photo of a {}." in result.stdout and "ensemble" in result.stdout
    assert "baseline" in result.stdout and "top-1" in result.stdout
    data = json.loads(out.read_text())
    assert data["n_images"] == 80 and data["n_classes"] == 10
    kinds = [r["kind"] for r in data["results"]]
    assert kinds == ["template", "template", "template", "ensemble", "baseline"]
    for row in data["results"]:
        assert set(row["metrics"]) >= {"acc1", "acc5", "mean_per_class_recall", "loss"}
        assert 0 <= row["metrics"]["acc1"] <= row["metrics"]["acc5"] <= 100
        assert len(row["per_class"]) == 10
    first = data["results"][0]
    # the baseline itself is the first template: no difference at all
    assert first["delta"] == 0 and first["delta_low"] == 0 and first["delta_high"] == 0
    assert data["cache"]["images_computed"] == 80

    again = run_ipo("eval", prompts, "--images", fashion_test, "--classes", fashion_test / "classes.txt",
                    *clip_args(tiny_config, tiny_checkpoint), "--json")
    assert again.returncode == 0, again.stderr
    warm = json.loads(again.stdout)
    assert warm["cache"] == {"images_computed": 0, "images_cached": 80, "model_loaded": False}
    assert [r["metrics"] for r in warm["results"]] == [r["metrics"] for r in data["results"]]


def test_eval_base_novel_and_clip_benchmark_file(tmp_path, fashion_test, tiny_config, tiny_checkpoint):
    prompts = tmp_path / "templates.json"
    prompts.write_text(json.dumps({"fashion": ["a photo of a {c}.", "a {c}, an item of clothing."]}))
    result = run_ipo("eval", prompts, "--images", fashion_test, "--classes", fashion_test / "classes.txt",
                     *clip_args(tiny_config, tiny_checkpoint), "--base-novel", "--json",
                     "--baseline", "a {}.")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    row = data["results"][0]["metrics"]
    assert {"base", "novel", "hm"} <= set(row)
    assert row["hm"] == pytest.approx(2 * row["base"] * row["novel"] / (row["base"] + row["novel"]), abs=1e-9) or row["hm"] == 0
    assert data["results"][-1]["name"] == "a {}."


def test_unreadable_image_is_skipped_with_a_warning(tmp_path, fashion_test, tiny_config, tiny_checkpoint):
    images = tmp_path / "imgs"
    shutil.copytree(fashion_test, images)
    (images / "bag" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    prompts = tmp_path / "p.json"
    prompts.write_text('["a photo of a {}."]')
    result = run_ipo("eval", prompts, "--images", images, "--classes", images / "classes.txt",
                     *clip_args(tiny_config, tiny_checkpoint), "--json")
    assert result.returncode == 0, result.stderr
    assert "zz_broken.png" in result.stderr and "1 unreadable" not in result.stdout
    data = json.loads(result.stdout)
    assert data["n_images"] == 80 and data["skipped"][0]["path"].endswith("zz_broken.png")


@pytest.mark.parametrize("case", [
    "missing-images", "empty-classes", "dup-classes", "unmatched-class", "extra-folder", "bad-split",
    "prompts-not-json", "prompts-empty", "template-no-placeholder", "template-two-placeholders",
    "too-many-shots", "unknown-model", "corrupt-checkpoint",
])
def test_bad_input_is_one_line_exit_2(case, tmp_path, fashion_test, tiny_config, tiny_checkpoint):
    prompts = tmp_path / "p.json"
    prompts.write_text('["a photo of a {}."]')
    classes = tmp_path / "classes.txt"
    classes.write_text((fashion_test / "classes.txt").read_text())
    args = ["eval", prompts, "--images", fashion_test, "--classes", classes, *clip_args(tiny_config, tiny_checkpoint)]
    expect = None
    if case == "missing-images":
        args[3] = tmp_path / "nope"
        expect = "does not exist"
    elif case == "empty-classes":
        classes.write_text("# nothing\n")
        expect = "names no class"
    elif case == "dup-classes":
        classes.write_text(classes.read_text() + "Bag\n")
        expect = "twice"
    elif case == "unmatched-class":
        classes.write_text(classes.read_text() + "handbag\n")
        expect = "handbag"
    elif case == "extra-folder":
        classes.write_text("\n".join(classes.read_text().splitlines()[:-1]))
        expect = "match no class"
    elif case == "bad-split":
        split = tmp_path / "split.json"
        split.write_text("[1, 2")
        args += ["--split", split]
        expect = "not valid JSON"
    elif case == "prompts-not-json":
        prompts.write_text("a photo of a {}")
        expect = "not valid JSON"
    elif case == "prompts-empty":
        prompts.write_text("[]")
        expect = "no templates"
    elif case == "template-no-placeholder":
        prompts.write_text('["a photo"]')
        expect = "no class placeholder"
    elif case == "template-two-placeholders":
        prompts.write_text('["a {} of a {}"]')
        expect = "2 class placeholders"
    elif case == "too-many-shots":
        args += ["--shots", "9"]
        expect = "holds (8 images)"
    elif case == "unknown-model":
        args = args[:-4] + ["--clip", "ViT-B-99:openai"]
        expect = "unknown CLIP model"
    elif case == "corrupt-checkpoint":
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"garbage")
        args = args[:-2] + ["--clip-weights", bad]
        expect = "could not be loaded"
    result = run_ipo(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert expect in lines[0]
    assert "Traceback" not in result.stderr


def test_ipo_debug_shows_the_traceback(tmp_path):
    result = run_ipo("eval", tmp_path / "missing.json", "--images", tmp_path, env={"IPO_DEBUG": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_cache_info_and_clear(tmp_path, fashion_test, tiny_config, tiny_checkpoint):
    prompts = tmp_path / "p.json"
    prompts.write_text('["a photo of a {}."]')
    cache_dir = tmp_path / "mycache"
    assert run_ipo("eval", prompts, "--images", fashion_test, "--classes", fashion_test / "classes.txt",
                   *clip_args(tiny_config, tiny_checkpoint), "--cache-dir", cache_dir).returncode == 0
    info = json.loads(run_ipo("cache", "info", "--cache-dir", cache_dir, "--json").stdout)
    stores = {s["name"]: s for s in info["stores"]}
    # 80 image embeddings, 10 text embeddings (one per class), the model's card
    assert stores["embeddings"]["entries"] == 91 and info["root"] == str(cache_dir)
    cleared = run_ipo("cache", "clear", "--cache-dir", cache_dir)
    assert "removed 91" in cleared.stdout
    info = json.loads(run_ipo("cache", "info", "--cache-dir", cache_dir, "--json").stdout)
    assert {s["name"]: s["entries"] for s in info["stores"]}["embeddings"] == 0


def test_a_warm_eval_needs_neither_torch_nor_open_clip(tmp_path, fashion_train, tiny_config, tiny_checkpoint):
    """Every embedding cached: the command runs with torch and open_clip made unimportable."""

    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(["a photo of a {}.", "a {} on a plain background."]))
    args = ["eval", str(prompts), "--images", str(fashion_train), "--classes", str(fashion_train / "classes.txt"),
            "--clip", str(tiny_config), "--clip-weights", str(tiny_checkpoint), "--json"]
    cold = run_ipo(*args)
    assert cold.returncode == 0, cold.stderr
    assert json.loads(cold.stdout)["cache"]["model_loaded"] is True
    warm = run_ipo_without_torch(*args)
    assert warm.returncode == 0, warm.stderr
    cold_json, warm_json = json.loads(cold.stdout), json.loads(warm.stdout)
    assert warm_json["cache"] == {"images_computed": 0, "images_cached": 60, "model_loaded": False}
    assert [r["metrics"] for r in warm_json["results"]] == [r["metrics"] for r in cold_json["results"]]
    # a text never encoded before needs the model again, and gets it
    prompts.write_text(json.dumps(["a new prompt about a {}."]))
    again = run_ipo(*args)
    assert again.returncode == 0 and json.loads(again.stdout)["cache"]["model_loaded"] is True
