"""`ipo classify` and the Classifier API, with a real (random-weight) CLIP and real images."""

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import run_ipo
from ipo_cli import Classifier, dataset as ds
from ipo_cli.prompts import parse_prompts, read_prompts
from ipo_cli.scoring import Prompt

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
