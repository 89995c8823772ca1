"""The JSON-in gate (ipo_cli/gates/json_in.py): one reader with a size cap, a nesting
cap, UTF-8 with or without a BOM, and one-line errors naming the source and the spot."""

from __future__ import annotations

import pytest

from ipo_cli.errors import IpoError
from ipo_cli.gates import json_in


def test_values_come_back_as_parsed():
    assert json_in.loads(b'{"a": [1, 2.5, "x", null, true]}', "t") == {"a": [1, 2.5, "x", None, True]}


def test_a_bom_is_allowed_in_bytes_and_text():
    assert json_in.loads("\ufeff[1]".encode(), "t") == [1]
    assert json_in.loads("\ufeff[1]", "t") == [1]


@pytest.mark.parametrize("levels", [json_in.MAX_DEPTH + 1, 900, 100_000])
def test_deep_nesting_is_one_line_whatever_the_depth(levels):
    with pytest.raises(IpoError, match=f"split file x.json nests lists or objects deeper than {json_in.MAX_DEPTH}"):
        json_in.loads("[" * levels + "]" * levels, "split file x.json")
    with pytest.raises(IpoError, match="deeper than"):
        json_in.loads('{"a":' * levels + "1" + "}" * levels, "split file x.json")


def test_nesting_up_to_the_cap_is_read():
    doc = "[" * json_in.MAX_DEPTH + "]" * json_in.MAX_DEPTH
    assert json_in.depth(json_in.loads(doc, "t")) == json_in.MAX_DEPTH


def test_the_first_bad_spot_is_named_as_line_and_column():
    with pytest.raises(IpoError, match=r"prompts file p.json is not valid JSON: Expecting ':' delimiter at line 2:6"):
        json_in.loads('{"a": 1,\n "b" 2}', "prompts file p.json")


def test_bytes_that_are_not_utf8_say_where():
    with pytest.raises(IpoError, match=r"is not UTF-8 \(byte 2: b'\\xff'\)"):
        json_in.loads(b'["\xff"]', "t")


def test_the_size_cap_is_checked_before_parsing():
    with pytest.raises(IpoError, match="over the limit of 1 MiB"):
        json_in.loads(b" " * (2 << 20), "t", max_bytes=1 << 20)


def test_an_integer_too_long_for_python_is_one_line():
    with pytest.raises(IpoError, match="not valid JSON"):
        json_in.loads("1" * 5000, "t")


def test_read_json_names_the_file_and_refuses_a_fifo(tmp_path):
    import os

    (tmp_path / "c.json").write_text('{"x": 1}')
    assert json_in.read_json(tmp_path / "c.json", "run config") == {"x": 1}
    os.mkfifo(tmp_path / "pipe.json")
    with pytest.raises(IpoError, match="run config .*pipe.json is a FIFO"):
        json_in.read_json(tmp_path / "pipe.json", "run config")
    with pytest.raises(IpoError, match="does not exist"):
        json_in.read_json(tmp_path / "none.json", "run config")


def test_object_at_says_what_it_got():
    with pytest.raises(IpoError, match="is a JSON array, not an object"):
        json_in.object_at([], "the answer")
