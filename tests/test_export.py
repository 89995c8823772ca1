"""Prompts both ways with the field's tools: `ipo export` to CLIP_benchmark's
--custom_template_file and CuPL's files, prompts.json files that remember their classes
and CLIP, and `--format clip_benchmark` rows as CLIP_benchmark computes them."""

import json
import math
from pathlib import Path

import pytest

from conftest import run_ipo
from ipo_cli.data.prompts import SCHEMA

TEMPLATES = ["a photo of a <CLASS>, seen up close.", "a plain photo of a <CLASS>.", "a <CLASS> on a shelf."]


@pytest.fixture
def run_prompts(tmp_path, fashion_train, tiny_config, tiny_checkpoint):
    """A prompts.json as `ipo optimize` writes it, with its classes and CLIP recorded."""
    classes = [line for line in (fashion_train / "classes.txt").read_text().splitlines() if line.strip()]
    path = tmp_path / "run" / "prompts.json"
    path.parent.mkdir()
    path.write_text(json.dumps({
        "schema": SCHEMA, "name": "fashion", "clip": "tiny", "best": TEMPLATES[0],
        "prompts": [{"template": t, "rank": i + 1} for i, t in enumerate(TEMPLATES)],
        "classes": classes, "clip_spec": {"clip": str(tiny_config), "clip_weights": str(tiny_checkpoint)}}))
    return path


def metrics(result):
    assert result.returncode == 0, result.stderr
    return [r["metrics"] for r in json.loads(result.stdout)["results"]]


def test_export_then_eval_of_the_export_scores_the_same(tmp_path, run_prompts, fashion_train, tiny_config,
                                                        tiny_checkpoint):
    exported = tmp_path / "custom_templates.json"
    done = run_ipo("export", run_prompts, "--top", "2", "--dataset", "fashion", "--out", exported)
    assert done.returncode == 0, done.stderr
    assert json.loads(exported.read_text()) == {"fashion": [t.replace("<CLASS>", "{c}") for t in TEMPLATES[:2]]}
    # the run's prompts.json needs neither --classes nor --clip: it names both
    original = metrics(run_ipo("eval", run_prompts, "--images", fashion_train, "--json"))
    again = metrics(run_ipo("eval", exported, "--images", fashion_train, "--classes", fashion_train / "classes.txt",
                            "--dataset", "fashion", "--clip", tiny_config, "--clip-weights", tiny_checkpoint, "--json"))
    assert again[:2] == original[:2]
    # CuPL's form: one sentence list per class, the top 3 templates filled in = the run's ensemble
    cupl = tmp_path / "cupl.json"
    assert run_ipo("export", run_prompts, "--to", "cupl", "--top", "3", "--out", cupl).returncode == 0
    sentences = json.loads(cupl.read_text())
    assert sentences["trouser"] == [t.replace("<CLASS>", "trouser") for t in TEMPLATES]
    per_class = metrics(run_ipo("eval", cupl, "--images", fashion_train, "--classes", fashion_train / "classes.txt",
                                "--clip", tiny_config, "--clip-weights", tiny_checkpoint, "--json"))
    assert per_class[0] == original[3]  # the prompts.json's ensemble row


def test_export_to_stdout_and_its_errors(tmp_path, run_prompts):
    shown = run_ipo("export", run_prompts)
    assert shown.returncode == 0 and json.loads(shown.stdout) == {"fashion": [TEMPLATES[0].replace("<CLASS>", "{c}")]}
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(["a {} here."]))
    refused = run_ipo("export", plain, "--to", "cupl")
    assert refused.returncode == 2 and "name no classes" in refused.stderr and "--classes" in refused.stderr
    bad = run_ipo("export", run_prompts, "--to", "nowhere")
    assert bad.returncode == 2 and "--to must be one of clip_benchmark, cupl" in bad.stderr


def test_a_flag_that_disagrees_with_the_run_says_which(tmp_path, run_prompts, fashion_train, tiny_config):
    three = tmp_path / "three.txt"
    three.write_text("t-shirt\ntrouser\npullover\n")
    one = next(p for p in (fashion_train / "trouser").iterdir())
    classes = run_ipo("classify", one, "--prompts", run_prompts, "--classes", three)
    assert classes.returncode == 2 and "--classes differs from the classes these prompts were optimised for" \
        in classes.stderr
    clip = run_ipo("classify", one, "--prompts", run_prompts, "--clip", "ViT-B-32:openai")
    assert clip.returncode == 2 and "--clip ViT-B-32:openai differs" in clip.stderr and str(tiny_config) in clip.stderr
    fine = run_ipo("classify", one, "--prompts", run_prompts, "--json")
    assert fine.returncode == 0, fine.stderr
    assert json.loads(fine.stdout.splitlines()[0])["top"][0]["class"] in (fashion_train / "classes.txt").read_text()


def test_clip_benchmark_row_is_the_ensemble_with_its_templates_and_file_name(tmp_path, fashion_train, tiny_config,
                                                                          tiny_checkpoint):
    """CLIP_benchmark scores a template file's templates as one ensemble; `pretrained` is the
    checkpoint path as given; --out FOLDER/ names the file {dataset}_{pretrained}_{model}_{language}_{task}.json
    (clip_benchmark/cli.py, with the checkpoint's base name)."""
    templates = tmp_path / "t.json"
    templates.write_text(json.dumps({"wds/fashion": ["a photo of a {c}.", "a {c}, a garment."]}))
    base = ["eval", templates, "--images", fashion_train, "--classes", fashion_train / "classes.txt",
            "--clip", tiny_config, "--clip-weights", tiny_checkpoint]
    rows = json.loads(run_ipo(*base, "--json").stdout)["results"]
    ensemble = next(r for r in rows if r["kind"] == "ensemble")
    out = tmp_path / "results"
    out.mkdir()
    written = run_ipo(*base, "--dataset", "wds/fashion", "--format", "clip_benchmark", "--dump-templates", "--out", out)
    assert written.returncode == 0, written.stderr
    files = list(out.iterdir())
    assert [f.name for f in files] == [f"fashion_{Path(tiny_checkpoint).name}_tiny-clip_en_zeroshot_classification.json"]
    data = json.loads(files[0].read_text())
    assert data["dataset"] == "wds/fashion" and data["model"] == "tiny-clip" and data["pretrained"] == str(tiny_checkpoint)
    assert data["templates"] == ["a photo of a {c}.", "a {c}, a garment."]
    assert abs(data["metrics"]["acc1"] * 100 - ensemble["metrics"]["acc1"]) < 1e-9
    assert abs(data["metrics"]["mean_per_class_recall"] * 100 - ensemble["metrics"]["mean_per_class_recall"]) < 1e-9
    # the field types of CLIP_benchmark's own dump (cli.py `run`), which `clip_benchmark build` reads
    assert all(isinstance(data[k], str) for k in ("dataset", "model", "pretrained", "task", "language"))
    assert all(isinstance(v, float) and not math.isnan(v) for v in data["metrics"].values())
    _build_as_clip_benchmark(files, tmp_path / "benchmark.csv")


def _build_as_clip_benchmark(files, csv_path):
    """`clip_benchmark build` on the files: its own main_build when clip_benchmark is
    installed (not a dependency of ipo), else the same steps it takes (cli.py main_build:
    metrics merged into the row, model_fullname = model + ' ' + pretrained)."""
    import argparse
    import csv

    try:
        from clip_benchmark.cli import main_build
    except ImportError:
        main_build = None
    if main_build is not None:
        main_build(argparse.Namespace(files=[str(f) for f in files], output=str(csv_path)))
        rows = list(csv.DictReader(csv_path.open()))
    else:
        rows = []
        for f in files:
            data = json.loads(f.read_text())
            row = dict(data["metrics"])
            row.update(data)
            del row["metrics"]
            row["model_fullname"] = row["model"] + " " + row["pretrained"]
            rows.append(row)
    assert rows and all(float(r["acc1"]) >= 0 and r["model_fullname"].startswith("tiny-clip ") for r in rows)


def test_a_runs_prompts_json_writes_its_best_prompt_as_the_row(tmp_path, run_prompts, fashion_train):
    out = tmp_path / "r.json"
    first = metrics(run_ipo("eval", run_prompts, "--images", fashion_train, "--json"))[0]
    done = run_ipo("eval", run_prompts, "--images", fashion_train, "--format", "clip_benchmark", "--dump-templates",
                   "--out", out)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["templates"] == [TEMPLATES[0].replace("<CLASS>", "{c}")]
    assert abs(data["metrics"]["acc1"] * 100 - first["acc1"]) < 1e-9


def test_the_classifier_api_takes_classes_and_clip_from_a_runs_prompts(run_prompts, fashion_train, tmp_path):
    from ipo_cli import Classifier
    from ipo_cli.errors import IpoError

    clf = Classifier.from_files(run_prompts)
    names = [line for line in (fashion_train / "classes.txt").read_text().splitlines() if line.strip()]
    assert clf.classnames == names
    image = next((fashion_train / "sandal").iterdir())
    assert clf.classify([image], top_k=2)[0].top[0][0] in names
    other = tmp_path / "two.txt"
    other.write_text("cat\ndog\n")
    with pytest.raises(IpoError, match="the classes file differs"):
        Classifier.from_files(run_prompts, other)
