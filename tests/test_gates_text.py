"""The text-out gate (ipo_cli/gates/text.py): control characters and bidi overrides never
reach the terminal raw, reports are escaped, CSV cells never start a formula, and a
terminal that cannot show a character gets a replacement instead of a crash."""

from __future__ import annotations

import csv
import io
import sys

import pytest

from ipo_cli.gates.text import csv_cell, html_text, terminal_console, terminal_safe, tolerant_streams


@pytest.mark.parametrize("raw, shown", [
    ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"), ("a\rb", "a\\x0db"), ("\x9b2J", "\\x9b2J"),
    ("left \u202eright", "left \\u202eright"), ("\u2066iso\u2069", "\\u2066iso\\u2069"), ("\x00", "\\x00"),
])
def test_controls_and_bidi_overrides_are_shown_escaped(raw, shown):
    assert terminal_safe(raw) == shown


def test_plain_text_newlines_tabs_and_other_scripts_pass():
    text = "tabs\tand\nlines, Δ, 猫, émigré"
    assert terminal_safe(text) == text
    assert terminal_safe("a\nb", newlines=False) == "a\\x0ab"


def test_the_console_escapes_every_renderable():
    from rich.table import Table
    from rich.text import Text

    buffer = io.StringIO()
    console = terminal_console(file=buffer, markup=False, highlight=False, width=80)
    table = Table()
    table.add_column("x")
    table.add_row("\x1b[2J")
    console.print("a\x1b]0;t\x07b")
    console.print(Text("c\x1b[31md"))
    console.print(table)
    out = buffer.getvalue()
    assert "\x1b" not in out and "\x07" not in out
    assert "a\\x1b]0;t\\x07b" in out and "c\\x1b[31md" in out and "\\x1b[2J" in out


def test_html_text_escapes_markup_and_quotes():
    assert html_text("<script>alert(3)</script>") == "&lt;script&gt;alert(3)&lt;/script&gt;"
    assert html_text("' onload='x") == "&#x27; onload=&#x27;x"


@pytest.mark.parametrize("cell", ["=1+1", "+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx", "\0x"])
def test_csv_cells_that_would_start_a_formula_get_a_quote(cell):
    assert csv_cell(cell) == "'" + cell
    buffer = io.StringIO()
    csv.writer(buffer).writerow([csv_cell(cell)])
    assert next(csv.reader(io.StringIO(buffer.getvalue())))[0] == "'" + cell


def test_csv_cells_that_are_text_or_numbers_pass():
    assert csv_cell("a photo of a dog") == "a photo of a dog" and csv_cell(-1.5) == -1.5


def test_an_ascii_terminal_gets_replacements_not_a_crash(monkeypatch):
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdout", stream)
    tolerant_streams()
    print("Δ accuracy", file=stream)
    stream.flush()
    assert raw.getvalue() == b"? accuracy\n"
