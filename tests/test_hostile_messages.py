"""Issue 22, items 8-10: hostile values that crashed while their error was being worded,
damaged run folders, and messages that said something untrue. Each case: exit 2 (or the
documented code), one line on stderr, no traceback, no "unexpected"."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import run_ipo
from PIL import Image
from test_hostile import user_error  # exit code, one line, no traceback, no "unexpected"

RUN_FORMAT_KEY = "ipo_run_format"


def images(root: Path, classes: dict[str, int]) -> Path:
    for n, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (40 * n, 7 * i, 90)).save(root / name / f"{i}.png")
    return root


def templates(tmp_path: Path) -> Path:
    path = tmp_path / "templates.json"
    path.write_text(json.dumps(["a photo of a {}."]))
    return path


# ---- item 8: values that broke the message -------------------------------------------
def test_shown_bounds_values_that_cannot_be_printed():
    from ipo_cli.errors import shown

    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    assert shown(nested) == "[[[[[...]]]]]"
    assert shown(10**5000) == "<an integer of about 5001 digits>"
    assert len(shown("x" * 10_000)) < 100


def test_nshards_with_a_superscript_digit_is_one_line(tmp_path):
    folder = tmp_path / "wds"
    (folder / "test").mkdir(parents=True)
    (folder / "test" / "nshards.txt").write_text("²\n")
    (folder / "classnames.txt").write_text("a\nb\n")
    user_error(run_ipo("eval", templates(tmp_path), "--images", folder), "should hold the number of shards")


def _datum_pickle(path: Path, **fields) -> Path:
    """A pickle naming Dassl's Datum class, as CoOp writes them (a stand-in module, so that
    pickle records the same module and class name)."""
    module = types.ModuleType("dassl.data.datasets.base_dataset")

    class Datum:
        pass

    Datum.__module__, Datum.__qualname__ = module.__name__, "Datum"
    module.Datum = Datum  # type: ignore[attr-defined]
    saved = {name: sys.modules.get(name) for name in ("dassl", "dassl.data", "dassl.data.datasets", module.__name__)}
    sys.modules.update({"dassl": types.ModuleType("dassl"), "dassl.data": types.ModuleType("dassl.data"),
                        "dassl.data.datasets": types.ModuleType("dassl.data.datasets"), module.__name__: module})
    try:
        datum = Datum()
        datum.__dict__.update({"_impath": "/x/caltech-101/101_ObjectCategories/a/1.jpg", "_label": 0,
                               "_domain": 0, "_classname": "a", **fields})
        path.write_bytes(pickle.dumps({"train": [datum], "test": [datum]}, protocol=pickle.HIGHEST_PROTOCOL))
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
    return path


def test_a_classname_nested_100000_deep_is_one_line(tmp_path):
    from ipo_cli.data import coop_cache
    from ipo_cli.errors import IpoError

    # pickle cannot write a list nested so deep (it recurses), but its reader builds one from
    # 100,000 EMPTY_LIST opcodes and 99,999 APPENDs (pickletools: EMPTY_LIST "]", APPEND "a")
    path = _datum_pickle(tmp_path / "deep.pkl", _classname="PLACEHOLDER")
    placeholder = b"\x8c\x0bPLACEHOLDER"  # SHORT_BINUNICODE, protocol 4 and up
    data = path.read_bytes()
    assert data.count(placeholder) == 1
    path.write_bytes(data.replace(placeholder, b"]" * 100_000 + b"a" * 99_999))
    with pytest.raises(IpoError, match="class name that is not text") as caught:
        coop_cache.read_parts(path, ("train",))
    assert len(str(caught.value)) < 400


def test_a_label_of_5000_digits_is_one_line(tmp_path):
    from ipo_cli.data import coop_cache
    from ipo_cli.errors import IpoError

    path = _datum_pickle(tmp_path / "big.pkl", _label=10**5000)
    with pytest.raises(IpoError, match="about 5001 digits") as caught:  # refused as it is read (MAX_LABEL)
        coop_cache.read_parts(path, ("train",))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["../evil.gguf", "a/../../b.gguf", "/etc/passwd", "C:x.gguf", "a\\..\\b.gguf"])
def test_a_hub_path_that_leaves_the_repository_is_one_line(name):
    from ipo_cli.errors import IpoError
    from ipo_cli.store.local import find_in_hf_cache

    with pytest.raises(IpoError, match="leaves the repository"):
        find_in_hf_cache("org/repo", "main", name)


def test_the_unexpected_message_survives_an_unprintable_exception():
    from ipo_cli.cli.errors import _text_of

    class Hostile(Exception):
        def __str__(self):
            raise RecursionError("deep")

    assert "cannot be shown" in _text_of(Hostile())


# ---- item 9: the report of a damaged run ---------------------------------------------
def _run(tmp_path: Path, records: list[dict], **config) -> Path:
    from ipo_cli.optimize.run_folder import MARKER, RUN_FORMAT

    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text(json.dumps({RUN_FORMAT_KEY: RUN_FORMAT}))
    base = {"format": RUN_FORMAT, "request": {}, "models": {}, "train_classnames": ["cat", "dog"], "split": {}}
    (run / "config.json").write_text(json.dumps({**base, **config}))
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def _candidate(step: int, **extra) -> dict:
    return {"type": "candidate", "step": step, "attempt": 0, "index": 0, "valid": True, "template": "a {}.",
            "accuracy": 50.0, "loss": 1.0, "per_class": [50.0, 50.0], **extra}


def _step(step: int) -> dict:
    return {"type": "step", "step": step, "improved": False, "best_accuracy": 50.0, "best_loss": 1.0}


def test_report_of_a_history_without_its_step_0_record_says_so(tmp_path):
    run = _run(tmp_path, [_candidate(1), _step(1)])
    user_error(run_ipo("report", run), "no step-0 record")


def test_report_of_a_history_without_per_class_says_so(tmp_path):
    record = _candidate(0)
    del record["per_class"]
    run = _run(tmp_path, [record, _step(0)])
    user_error(run_ipo("report", run), "no 'per_class'")


def test_report_refuses_a_short_per_class_and_classnames_as_a_string(tmp_path):
    run = _run(tmp_path, [_candidate(0, per_class=[50.0]), _step(0)])
    user_error(run_ipo("report", run), "not 2 finite accuracies")
    other = tmp_path / "other"
    other.mkdir()
    run = _run(other, [_candidate(0), _step(0)], train_classnames="abc")
    user_error(run_ipo("report", run), "'train_classnames' is the text 'abc', not a list")  # config.json's typed gate


def test_a_nan_accuracy_in_the_history_is_refused(tmp_path):
    from ipo_cli.optimize.run_folder import check_record

    assert "finite" in check_record(_candidate(0, accuracy=float("nan")))
    assert "percentage" in check_record(_candidate(0, accuracy=250.0))
    assert check_record(_candidate(0)) is None


def test_report_uses_the_runs_own_image_loading():
    from ipo_cli.explain.report import run_image_loading

    assert run_image_loading({"image_loading": "reference"}) == "reference"
    assert run_image_loading({"request": {"dataset": "Caltech101"}}) == "reference"
    assert run_image_loading({"request": {}}) == "ipo"


# ---- item 9: messages that said something untrue -------------------------------------
def test_classes_file_keeps_csharp_and_a_line_separator_is_refused(tmp_path):
    from ipo_cli.data.folders import read_classes
    from ipo_cli.errors import IpoError

    path = tmp_path / "classes.txt"
    path.write_text("# languages\nC#\nF#  # functional\nGo\n")
    assert read_classes(path) == ["C#", "F#", "Go"]
    path.write_text("snow\u2028leopard\ncat\n")
    with pytest.raises(IpoError, match="line or paragraph separator"):
        read_classes(path)


def test_a_folder_or_fifo_as_classes_file_is_said_as_such(tmp_path):
    user_error(run_ipo("eval", templates(tmp_path), "--images", images(tmp_path / "i", {"a": 1, "b": 1}),
                       "--classes", tmp_path), "is a folder, not a file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    user_error(run_ipo("eval", templates(tmp_path), "--images", tmp_path / "i", "--classes", fifo), "FIFO")


def test_nfc_and_nfd_class_folders_match_and_differences_show_code_points(tmp_path):
    from ipo_cli.data.folders import code_points, load_folder

    root = images(tmp_path / "i", {"cafe\u0301": 1, "tea": 1})  # NFD on disk, as macOS stores it
    data = load_folder(root, ["caf\u00e9", "tea"])  # NFC in the classes file
    assert len(data.items) == 2
    assert code_points("caf\u00e9") != code_points("cafe\u0301")


def test_a_split_naming_one_label_two_ways_is_refused(tmp_path):
    root = images(tmp_path / "i", {"a": 2, "b": 1})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [["a/0.png", 0, "cat"], ["b/0.png", 1, "dog"]],
                                 "test": [["a/1.png", 0, "kitten"]]}))
    user_error(run_ipo("eval", templates(tmp_path), "--images", root, "--split", split), "names label 0 both")


def test_a_run_folder_inside_the_image_folder_is_no_class(tmp_path):
    from ipo_cli.data.folders import load_folder

    root = images(tmp_path / "i", {"a": 1, "b": 1})
    (root / "run").mkdir()
    (root / "run" / ".ipo-run").write_text("{}")
    Image.new("RGB", (8, 8)).save(root / "run" / "thumb.png")
    assert load_folder(root).classnames == ["a", "b"]


def test_negative_seeds_are_said_with_their_flag(tmp_path):
    user_error(run_ipo("bench", "--datasets", "Caltech101", "--seeds", "-3", "--data-root", tmp_path,
                       "--out", tmp_path / "b"), "--seeds holds -3")


def test_a_closed_output_pipe_is_one_line_and_exit_141():
    process = subprocess.Popen([sys.executable, "-m", "ipo_cli", "models", "list", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})
    assert process.stdout is not None
    process.stdout.close()  # the reader went away before ipo wrote (as `| head -c 0`)
    _, stderr = process.communicate(timeout=300)
    text = stderr.decode()
    assert process.returncode == 141, text
    assert "Traceback" not in text and "unexpected" not in text and len(text.strip().splitlines()) == 1, text


def _gguf(path: Path) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("w", np.ones((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_models_add_refuses_the_first_5kb_of_a_gguf(tmp_path):
    from ipo_cli.store.gguf_extent import data_end

    full = _gguf(tmp_path / "full.gguf")
    end, size = data_end(full)
    assert end == size  # gguf-py's own writer: the header's extent is the file's size
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full.read_bytes()[:5000])
    user_error(run_ipo("models", "add", "cut", "--file", cut, "--kind", "llm"), "truncated")
    assert run_ipo("models", "add", "full", "--file", full, "--kind", "llm").returncode == 0
    full.unlink()
    user_error(run_ipo("models", "path", "full"), "is missing")  # not printed as if it were there
    assert "ipo models add full" in run_ipo("models", "path", "full").stderr  # not "models pull"
