"""`ipo models list` (one short line per model, readable at 80 columns) and `ipo models show`."""

import json
import re
from pathlib import Path

from conftest import run_ipo, run_ipo_process

CATALOGUE = Path(__file__).resolve().parent.parent / "models"


def test_models_list_fits_an_80_column_terminal():
    listed = json.loads(run_ipo("models", "list", "--json").stdout)
    result = run_ipo_process("models", "list", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("store: ")  # the store's path, as long as it is
    lines = lines[:-1]
    assert lines and all(len(line) <= 80 for line in lines)
    table = [line for line in lines if line.startswith("│")]
    # one line per model: every name and handler whole on its own row, nothing folded
    assert len(table) == len(listed)  # one row per model (the header row is drawn with ┃)
    for row in listed:
        cells = [[c.strip() for c in line.strip("│").split("│")] for line in table]
        assert sum(1 for c in cells if c[0] == row["name"]) == 1
        if row["handler"]:
            assert any(c[0] == row["name"] and c[4] == row["handler"] for c in cells)
    # the long notes are not in the list any more: they are in `ipo models show`
    assert all(row["note"] not in result.stdout for row in listed if len(row["note"]) > 20)
    assert len(lines) <= 3 * len(listed) + 8
    assert "ipo models show NAME" in result.stdout


def test_models_show_gives_the_catalogue_entry_in_full():
    entry = json.loads((CATALOGUE / "minicpm-v-2.6.json").read_text())
    shown = run_ipo("models", "show", "minicpm-v-2.6")
    assert shown.returncode == 0, shown.stderr
    # the value column of the table, its wrapped lines joined again
    text = " ".join(" ".join(line.split("│")[2].split()) for line in shown.stdout.splitlines() if line.count("│") == 3)
    for fact in (entry["note"], entry["source"]["revision"], entry["source"]["repo"], entry["license"],
                 entry["files"]["model"]["sha256"], entry["files"]["mmproj"]["sha256"], entry["source"]["file"]):
        assert fact in text
    assert all(" ".join(c.split()) in text for c in entry["cite"])
    as_json = json.loads(run_ipo("models", "show", "minicpm-v-2.6", "--json").stdout)
    card = as_json["catalogue"]
    assert as_json["name"] == "minicpm-v-2.6" and as_json["installed"] is False
    assert card["revision"] == entry["source"]["revision"] and card["cite"] == entry["cite"]
    assert card["files"]["model"] == {"file": entry["source"]["file"], **entry["files"]["model"]}
    assert card["files"]["mmproj"]["sha256"] == entry["files"]["mmproj"]["sha256"]
    assert card["size"] == entry["files"]["model"]["size"] + entry["files"]["mmproj"]["size"]


def test_models_show_an_added_model_names_its_file(smollm):
    assert run_ipo("models", "add", "smol", "--file", smollm, "--kind", "llm").returncode == 0
    shown = json.loads(run_ipo("models", "show", "smol", "--json").stdout)
    assert shown["installed"] is True and "catalogue" not in shown
    record = shown["local"]["files"]["model"]
    assert Path(record["path"]) == Path(smollm).resolve() and re.fullmatch(r"[0-9a-f]{64}", record["sha256"])
    table = run_ipo("models", "show", "smol")
    assert table.returncode == 0 and record["sha256"] in table.stdout and "added with ipo models add" in table.stdout


def test_models_show_of_an_unknown_name_is_one_line_with_close_matches():
    result = run_ipo("models", "show", "minicpm-v-2")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "unknown model 'minicpm-v-2'" in result.stderr
    assert "did you mean minicpm-v-2.6" in result.stderr
