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


def test_the_papers_prompts_by_any_name_of_the_dataset():
    """paper:DATASET reads data/paper_prompts.json (the paper's Tables 3 and 17); CoOp's and
    CLIP_benchmark's names work."""
    from ipo_cli.data.prompts import PAPER_FILE

    table = json.loads(PAPER_FILE.read_text())["datasets"]
    assert len(table) == 11 and all(sorted(e["shots"] for e in v) == [1, 16] for v in table.values())
    flowers = [r.name for r in read_prompts("paper:Flowers102")]
    assert flowers == ["Identify the unique visual features of the <CLASS> flower accurately."]  # Table 1c too
    assert [r.name for r in read_prompts("paper:OxfordFlowers")] == flowers
    assert [r.name for r in read_prompts("paper:flowers", "flowers")] == flowers
    assert read_prompts("paper:Food101:16")[0].name.startswith("Categorize the image depicting a delicious")
    with pytest.raises(IpoError, match="1 and 16 shots, not '4'"):
        read_prompts("paper:DTD:4")
    with pytest.raises(IpoError, match="holds no prompt of the paper for 'CIFAR10'"):
        read_prompts("paper:CIFAR10")


def test_a_text_file_is_one_template_per_line(tmp_path):
    """CLIP_benchmark's zeroshot_classification_templates.txt (one {c} template a line)."""
    f = tmp_path / "zeroshot_classification_templates.txt"
    f.write_text("a photo of a {c}.\n  a sketch of a {c}.  \n\n")
    assert [r.name for r in read_prompts(f)] == ["a photo of a {c}.", "a sketch of a {c}.", "ensemble"]


def test_a_runs_prompts_remember_classes_and_clip(tmp_path):
    from ipo_cli.data.prompts import read_info, resolve_classes, resolve_clip

    f = tmp_path / "prompts.json"
    f.write_text(json.dumps({"schema": SCHEMA, "name": "pets", "prompts": [{"template": "A <CLASS>."}],
                             "classes": ["cat", "dog"], "clip_spec": {"clip": "ViT-B-32:openai", "clip_weights": None}}))
    info = read_info(f)
    assert info.classes == ["cat", "dog"] and info.from_run
    assert resolve_classes(info, None) == ["cat", "dog"]
    assert resolve_classes(info, ["Cat", "dog"]) == ["Cat", "dog"]  # the same classes
    with pytest.raises(IpoError, match="--classes differs.*adds bird"):
        resolve_classes(info, ["cat", "dog", "bird"])
    with pytest.raises(IpoError, match="order differs"):
        resolve_classes(info, ["dog", "cat"])
    assert resolve_clip(info, None, None) == ("ViT-B-32:openai", None)
    with pytest.raises(IpoError, match="--clip ViT-L-14:openai differs.*ViT-B-32:openai"):
        resolve_clip(info, "ViT-L-14:openai", None)
    old = tmp_path / "old.json"  # written before ipo recorded them: the flags decide
    old.write_text(json.dumps({"schema": SCHEMA, "prompts": [{"template": "A <CLASS>."}]}))
    assert read_info(old).classes is None
    assert resolve_clip(read_info(old), None, None) == ("ViT-B-16:openai", None)
    assert read_info(tmp_path / "old.json").from_run


def test_clip_benchmark_prefixes_are_stripped_as_it_strips_them():
    """builder.py looks `wds/NAME` up as itself, then as NAME."""
    from ipo_cli.data.prompts import select_dataset

    data = {"cars": ["a photo of a {c}."], "wds/pets": ["a {c}, a pet."]}
    assert select_dataset(data, "wds/cars", "f") == {"cars": data["cars"]}
    assert select_dataset(data, "vtab/cars", "f") == {"cars": data["cars"]}
    assert select_dataset(data, "wds/pets", "f") == {"wds/pets": data["wds/pets"]}


def test_bench_table_has_a_row_for_the_papers_prompt(tmp_path):
    from ipo_cli.data.prompts import paper_prompt
    from ipo_cli.optimize import bench

    assert paper_prompt("OxfordFlowers").templates == [read_prompts("paper:Flowers102")[0].name]
    assert paper_prompt("Flowers102", 16).templates == [read_prompts("paper:Flowers102:16")[0].name]
    assert paper_prompt("CIFAR10") is None and paper_prompt(None) is None
    cells = []
    for seed, (ours, theirs) in enumerate([((70.0, 72.0, 71.0), (68.0, 70.0, 69.0)), ((72.0, 74.0, 73.0), (66.0, 72.0, 69.0))], 1):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        bn = {"best": dict(zip(("base", "novel", "hm"), ours)), "baseline": {"base": 60.0, "novel": 65.0, "hm": 62.4},
              "paper": {"template": "Identify the <CLASS> flower.", **dict(zip(("base", "novel", "hm"), theirs))}}
        (folder / "summary.json").write_text(json.dumps({"base_novel": bn, "best": {"template": "A <CLASS>."}}))
        cells.append(bench.Cell("Flowers102", seed, folder))
    result = bench.table(cells, 1)
    paper = result["datasets"]["Flowers102"]["paper_prompt"]
    assert paper["template"] == "Identify the <CLASS> flower." and paper["base"]["mean"] == 67.0
    assert "| Flowers102, the paper's prompt | 2 | — | — | — | 67.00 ± 1.00 | 71.00 ± 1.00 | 69.00 ± 0.00 |" \
        in bench.markdown(result)
