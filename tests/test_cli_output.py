"""What the commands print and write: one show() for tables or --json, CSV cells a
spreadsheet cannot run, library error kinds mapped to one line each."""

import csv
import io
import json

import pytest

from conftest import run_ipo
from ipo_cli import errors
from ipo_cli.cli import errors as cli_errors
from ipo_cli.cli.output import show
from ipo_cli.clip.classify import Prediction
from ipo_cli.clip.predictions_out import format_predictions, safe_cell, to_csv


@pytest.mark.parametrize("cell", ["=1+2", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", "=cmd|'/c calc'!A1"])
def test_a_cell_that_a_spreadsheet_would_run_gets_a_quote(cell):
    assert safe_cell(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["shirt", "a photo of a {}", "1.5", "", "'=already quoted", " =1"])
def test_other_cells_are_written_as_they_are(cell):
    assert safe_cell(cell) == cell


def test_the_predictions_csv_quotes_paths_classes_and_errors_but_not_numbers():
    predictions = [Prediction("=HYPERLINK(\"x\").png", [("-minus", 0.75), ("plain", 0.25)]),
                   Prediction("@bad.png", [], error="=not an image")]
    rows = list(csv.reader(io.StringIO(to_csv(predictions))))
    assert rows[0] == ["path", "rank", "class", "probability", "error"]
    assert rows[1] == ["'=HYPERLINK(\"x\").png", "1", "'-minus", "0.750000", ""]
    assert rows[2] == ["'=HYPERLINK(\"x\").png", "2", "plain", "0.250000", ""]
    assert rows[3] == ["'@bad.png", "", "", "", "'=not an image"]
    lines = [json.loads(line) for line in format_predictions(predictions, __import__("pathlib").Path("p.jsonl")).splitlines()]
    assert lines[0]["path"] == "=HYPERLINK(\"x\").png" and lines[0]["top"][0]["class"] == "-minus"  # JSON as it is


def test_classify_writes_formula_looking_names_quoted(tmp_path, fashion_train, tiny_config, tiny_checkpoint):
    """The real command: an image file and a class whose names start like formulas."""
    from ipo_cli.data import folders

    folder = tmp_path / "new"
    folder.mkdir()
    source = folders.load_dataset(fashion_train, fashion_train / "classes.txt").paths[0]
    (folder / "=1+1.png").write_bytes(source.read_bytes())
    classes = tmp_path / "classes.txt"
    classes.write_text("-minus\n@at\nplain\n")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["a photo of a {}."]))
    out = tmp_path / "preds.csv"
    result = run_ipo("classify", "=1+1.png", "--prompts", prompts, "--classes", classes, "--clip", tiny_config,
                     "--clip-weights", tiny_checkpoint, "--out", out, "--top-k", "3", cwd=folder)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 and all(r["path"] == "'=1+1.png" for r in rows)
    assert sorted(r["class"] for r in rows) == ["'-minus", "'@at", "plain"]


def test_show_prints_one_document_or_json_lines_or_the_rendering(capsys):
    drawn = []
    show({"a": 1}, True, drawn.append)
    show([{"a": 1}, {"b": 2}], True, drawn.append, lines=True)
    assert capsys.readouterr().out == '{"a": 1}\n{"a": 1}\n{"b": 2}\n' and drawn == []
    show({"a": 1}, False, drawn.append)
    assert drawn == [{"a": 1}] and capsys.readouterr().out == ""


@pytest.mark.parametrize("kind", [errors.IpoError, errors.InvalidInput, errors.NotFound, errors.NetworkError,
                                  errors.ModelError])
def test_every_error_kind_is_an_ipo_error_worded_as_before(kind):
    exc = kind("the folder x does not exist", "pass --images DIR")
    assert isinstance(exc, errors.IpoError) and exc.exit_code == 2
    assert str(exc) == "the folder x does not exist; pass --images DIR"
    assert cli_errors.format_known_exception(exc) == ("the folder x does not exist; pass --images DIR", 2)
    assert cli_errors.format_known_exception(ValueError("x")) is None


def test_a_library_error_kind_reaches_the_user_as_one_line(tmp_path):
    missing = tmp_path / "nothing-here"
    (tmp_path / "p.json").write_text(json.dumps(["a photo of a {}."]))
    (tmp_path / "c.txt").write_text("cat\ndog\n")
    result = run_ipo("classify", missing, "--prompts", tmp_path / "p.json", "--classes", tmp_path / "c.txt")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: {missing} does not exist\n"
