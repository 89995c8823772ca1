"""`ipo classify --out`: predictions as CSV (path, rank, class, probability, error) or as
JSON lines, one object per image.

A CSV opened in a spreadsheet runs any cell that starts with `=`, `+`, `-` or `@` as a
formula (and a leading tab or carriage return can hide one); image paths, class names and
error texts come from the user's files, so such a cell is written with a `'` in front, the
mitigation of OWASP's "CSV Injection" page (https://owasp.org/www-community/attacks/CSV_Injection;
the same characters in OWASP ASVS 4.0 requirement 1.2.10, quoted at
https://asvs.emil.hemdal.se/1.2.10). JSON lines are written as they are.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

from ipo_cli.clip.classify import Prediction
from ipo_cli.errors import InvalidInput
from ipo_cli.gates.text import CSV_FORMULA_STARTS, csv_cell

FORMULA_STARTS = CSV_FORMULA_STARTS  # one list, in the text-out gate (gates/text.py)
SUFFIXES = (".csv", ".jsonl")
CSV_HEADER = ["path", "rank", "class", "probability", "error"]


def check_suffix(path: Path) -> None:
    """Refuse an --out name whose format ipo cannot tell, before any image is read."""
    if path.suffix.lower() not in SUFFIXES:
        raise InvalidInput(f"--out {path} must end in .csv or .jsonl")


def safe_cell(value: object) -> str:
    """The cell as text, with a `'` in front when a spreadsheet would read it as a formula."""
    return str(csv_cell(str(value)))


def to_csv(predictions: Iterable[Prediction]) -> str:
    """One row per image and rank; an unreadable image gets one row with its error."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_HEADER)
    for p in predictions:
        for rank, (name, prob) in enumerate(p.top, 1):
            writer.writerow([safe_cell(p.source), rank, safe_cell(name), f"{prob:.6f}", ""])
        if p.error:
            writer.writerow([safe_cell(p.source), "", "", "", safe_cell(p.error)])
    return buf.getvalue()


def to_json_lines(predictions: Iterable[Prediction]) -> str:
    return "".join(json.dumps(p.to_json()) + "\n" for p in predictions)


def format_predictions(predictions: Iterable[Prediction], path: Path) -> str:
    """The text of --out `path`: CSV for .csv, JSON lines for .jsonl."""
    check_suffix(path)
    return to_csv(predictions) if path.suffix.lower() == ".csv" else to_json_lines(predictions)


class PredictionStream:
    """`--out` written as predictions arrive (`ipo classify --ray`): the header, then each
    chunk appended and flushed, so the file holds every prediction made so far. Opened
    without following a link (the paths gate checked the name first)."""

    def __init__(self, path: Path):
        from ipo_cli.gates.paths import check_out_file, os_error

        check_suffix(path)
        self.path = check_out_file(path, "--out")
        self.csv = path.suffix.lower() == ".csv"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise os_error(exc, f"cannot write --out {self.path}") from None
        self.fh = os.fdopen(fd, "w", encoding="utf-8", newline="")
        if self.csv:
            self.fh.write(to_csv([]))

    def write(self, predictions: Iterable[Prediction]) -> None:
        text = to_csv(predictions).split("\n", 1)[1] if self.csv else to_json_lines(predictions)
        self.fh.write(text)
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()
