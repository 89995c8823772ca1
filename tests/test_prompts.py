import json

import pytest

from ipo_cli.errors import IpoError
from ipo_cli.data.prompts import SCHEMA, parse_prompts, read_prompts, to_clip_benchmark


def test_list_of_templates_gives_each_and_an_ensemble():
    rows = parse_prompts(["a photo of a {}.", "a {} texture.", "a photo of a {}."])
    assert [r.kind for r in rows] == ["template", "template", "ensemble"]
    assert rows[-1].templates == ["a photo of a {}.", "a {} texture."]


def test_clip_benchmark_files():
    rows = parse_prompts({"cifar10": ["a photo of a {c}.", "a blurry photo of a {c}."],
                          "cupl": {"cat": ["a small furry cat"], "dog": "a dog on a lawn"}})
    assert [r.kind for r in rows] == ["template", "template", "ensemble", "per-class"]
    assert rows[2].name == "cifar10"
    assert rows[3].per_class["dog"] == ["a dog on a lawn"]


def test_ipo_schema_round_trip(tmp_path):
    f = tmp_path / "prompts.json"
    f.write_text(json.dumps({"schema": SCHEMA, "name": "pets", "best": "Take a photo of a <CLASS>.",
                             "prompts": [{"template": "Take a photo of a <CLASS>.", "acc1": 80},
                                         {"template": "A <CLASS>, a pet.", "acc1": 75}]}))
    rows = read_prompts(f)
    assert [r.name for r in rows] == ["Take a photo of a <CLASS>.", "A <CLASS>, a pet.", "pets ensemble"]


@pytest.mark.parametrize("content, message", [
    ("{oops", "not valid JSON"),
    ("[]", "has no templates"),
    ("{}", "holds no templates"),
    ('["a photo of a cat."]', "no class placeholder"),
    ('["a {} and a {}."]', "2 class placeholders"),
    ('{"x": 3}', "neither a list"),
    ('{"schema": "ipo.prompts/v9", "prompts": []}', "ipo.prompts/v9"),
])
def test_bad_prompt_files(tmp_path, content, message):
    f = tmp_path / "p.json"
    f.write_text(content)
    with pytest.raises(IpoError, match=message):
        read_prompts(f)


def test_export_to_clip_benchmark():
    assert to_clip_benchmark("pets", ["A <CLASS>, a pet.", "a {}"]) == {"pets": ["A {c}, a pet.", "a {c}"]}
