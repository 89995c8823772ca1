"""`ipo classify` and the Classifier API, with a real (random-weight) CLIP and real images."""

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import run_ipo, run_ipo_without_torch
from ipo_cli import Classifier
from ipo_cli.data import folders as ds
from ipo_cli.data.prompts import parse_prompts, read_prompts
from ipo_cli.clip.scoring import Prompt

DATA = Path(__file__).parent / "data"


def test_top1_equals_evals_argmax_on_the_same_images(tmp_path, fashion_train, tiny_config, tiny_checkpoint):
    template = "a photo of a {}, seen from the front."
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([template]))
    clip = ["--clip", tiny_config, "--clip-weights", tiny_checkpoint]
    evaluated = run_ipo("eval", prompts, "--images", fashion_train, "--classes", fashion_train / "classes.txt",
                        *clip, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    acc1 = json.loads(evaluated.stdout)["results"][0]["metrics"]["acc1"]
    data = ds.load_dataset(fashion_train, fashion_train / "classes.txt")
    clf = Classifier(Prompt(template, [template]), data.classnames, str(tiny_config), tiny_checkpoint)
    predictions = clf.classify(data.paths, top_k=3)
    hits = [p.top[0][0] == data.classnames[label] for p, label in zip(predictions, data.labels)]
    assert abs(100 * np.mean(hits) - acc1) < 1e-6
    for p in predictions:
        probs = [q for _, q in p.top]
        assert len(p.top) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9


def test_pil_images_and_paths_agree(fashion_train, tiny_config, tiny_checkpoint):
    data = ds.load_dataset(fashion_train, fashion_train / "classes.txt")
    clf = Classifier(Prompt("a {}", ["a {}"]), data.classnames, str(tiny_config), tiny_checkpoint)
    paths = data.paths[:8]
    by_path = clf.classify(paths, top_k=1)
    by_pil = clf.classify([Image.open(p) for p in paths], top_k=1)
    assert [p.top[0][0] for p in by_path] == [p.top[0][0] for p in by_pil]
    assert by_pil[0].source == "<image 0>"


def test_the_command_writes_csv_and_jsonl_and_lists_unreadable_files(tmp_path, fashion_train, tiny_config,
                                                                     tiny_checkpoint):
    folder = tmp_path / "new"
    folder.mkdir()
    for i, p in enumerate(ds.load_dataset(fashion_train, fashion_train / "classes.txt").paths[:5]):
        (folder / f"img{i}.png").write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "prompts.json").write_text(json.dumps({"schema": "ipo.prompts/v1", "best": "a <CLASS> item.",
                                                      "prompts": [{"template": "a <CLASS> item."},
                                                                  {"template": "a photo of a <CLASS>."}]}))
    clip = ["--clip", tiny_config, "--clip-weights", tiny_checkpoint]
    base = ["classify", folder, "--prompts", run_dir / "prompts.json", "--classes", fashion_train / "classes.txt", *clip]
    as_csv = run_ipo(*base, "--out", tmp_path / "preds.csv", "--top-k", "2")
    assert as_csv.returncode == 0, as_csv.stderr
    assert "broken.png" in as_csv.stderr and "broken.png" in as_csv.stdout
    rows = list(csv.DictReader((tmp_path / "preds.csv").open()))
    assert len([r for r in rows if r["rank"]]) == 5 * 2 and [r["error"] for r in rows if not r["rank"]]
    as_jsonl = run_ipo(*base, "--ensemble", "--json")
    lines = [json.loads(line) for line in as_jsonl.stdout.splitlines()]
    assert len(lines) == 6 and sum(1 for line in lines if line["error"]) == 1
    assert all(len(line["top"]) == 3 for line in lines if not line["error"])
    bad = run_ipo(*base, "--out", tmp_path / "preds.txt")
    assert bad.returncode == 2 and ".csv or .jsonl" in bad.stderr


def test_cupl_files_are_per_class_prompts(tmp_path, fashion_train, tiny_config, tiny_checkpoint):
    """tests/data/cupl_fashion.json has the shape of CuPL's released files
    (github.com/sarahpratt/CuPL): class name -> LLM-written sentences, no dataset key."""
    prompts = read_prompts(DATA / "cupl_fashion.json")
    assert len(prompts) == 1 and prompts[0].kind == "per-class" and prompts[0].name == "cupl_fashion"
    result = run_ipo("eval", DATA / "cupl_fashion.json", "--images", fashion_train, "--classes",
                     fashion_train / "classes.txt", "--clip", tiny_config, "--clip-weights", tiny_checkpoint, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["kind"] == "per-class"
    # a CLIP_benchmark template file is still read as templates
    assert parse_prompts({"cifar10": ["a photo of a {c}."]})[0].kind == "template"


def test_clip_benchmark_files_and_result_format(tmp_path, fashion_train, tiny_config, tiny_checkpoint):
    """Template and classnames files shaped like CLIP_benchmark's (many datasets per file),
    and its result JSON, read back the way `clip_benchmark build` reads it (cli.py
    main_build: metrics merged into the row, model_fullname = model + ' ' + pretrained)."""
    clip = ["--clip", tiny_config, "--clip-weights", tiny_checkpoint]
    templates, names = DATA / "clip_benchmark_templates.json", DATA / "clip_benchmark_classnames.json"
    base = ["eval", templates, "--images", fashion_train, *clip, "--json"]
    picked = run_ipo(*base, "--classes", names, "--dataset", "fashion")
    assert picked.returncode == 0, picked.stderr
    rows = json.loads(picked.stdout)["results"]
    assert {r.get("dataset") for r in rows if r["kind"] != "baseline"} == {"fashion"} and len(rows) == 3 + 1 + 1
    everything = run_ipo(*base, "--classes", fashion_train / "classes.txt")
    assert everything.returncode == 0, everything.stderr
    labelled = {r.get("dataset") for r in json.loads(everything.stdout)["results"] if r["kind"] != "baseline"}
    assert labelled == {"cifar10", "dtd", "eurosat", "pets", "fashion"}
    unpicked = run_ipo(*base, "--classes", names)
    assert unpicked.returncode == 2 and "holds 2 datasets" in unpicked.stderr and "cifar10" in unpicked.stderr
    out = tmp_path / "result.json"
    written = run_ipo(*base, "--classes", names, "--dataset", "fashion", "--format", "clip_benchmark", "--out", out)
    assert written.returncode == 0, written.stderr
    data = json.load(out.open())
    assert set(data) >= {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert data["task"] == "zeroshot_classification" and data["dataset"] == "fashion"
    row = dict(data["metrics"])
    row.update(data)
    del row["metrics"]
    row["model_fullname"] = row["model"] + " " + row["pretrained"]
    assert 0 <= row["acc1"] <= 1 and 0 <= row["acc5"] <= 1 and 0 <= row["mean_per_class_recall"] <= 1
    # the row is the ensemble of the dataset's templates, as CLIP_benchmark scores a template file
    ensemble = next(r for r in json.loads(picked.stdout)["results"] if r["kind"] == "ensemble")
    assert abs(row["acc1"] * 100 - ensemble["metrics"]["acc1"]) < 1e-9


def test_acc5_is_nan_below_five_classes_in_clip_benchmark_format(tmp_path, fashion_train, tiny_config,
                                                                  tiny_checkpoint):
    import math

    three = tmp_path / "classes3.txt"
    three.write_text("t-shirt\ntrouser\npullover\n")
    root = tmp_path / "imgs"
    for name in ("t-shirt", "trouser", "pullover"):
        src = fashion_train / name
        (root / name).mkdir(parents=True)
        for f in sorted(src.iterdir())[:2]:
            (root / name / f.name).write_bytes(f.read_bytes())
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(["a photo of a {}."]))
    out = tmp_path / "r.json"
    result = run_ipo("eval", prompts, "--images", root, "--classes", three, "--clip", tiny_config, "--clip-weights",
                     tiny_checkpoint, "--format", "clip_benchmark", "--out", out)
    assert result.returncode == 0, result.stderr
    assert math.isnan(json.load(out.open())["metrics"]["acc5"])


def test_a_warm_classify_needs_neither_torch_nor_open_clip(tmp_path, fashion_train, tiny_config, tiny_checkpoint):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(["a photo of a {}."]))
    args = ["classify", str(fashion_train), "--prompts", str(prompts), "--classes", str(fashion_train / "classes.txt"),
            "--clip", str(tiny_config), "--clip-weights", str(tiny_checkpoint), "--json"]
    cold = run_ipo(*args)
    assert cold.returncode == 0, cold.stderr
    warm = run_ipo_without_torch(*args)
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout == cold.stdout
