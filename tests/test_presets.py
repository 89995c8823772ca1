"""CoOp's datasets by name: tiny copies built here in CoOp's layouts (DATASETS.md and
datasets/*.py of KaiyangZhou/CoOp), with real image files."""

import json
import os
import random
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_ipo
from ipo_cli.data import coop as presets
from ipo_cli.errors import IpoError
from servers import FakeOpenAI

KEY = "sk-presets-0123456789"


def image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (shade % 255, (shade * 7) % 255, 90)).save(path)


def coop_split_dataset(root: Path, preset: str, classes: list[str], per_class: int = 6, seed: int = 5) -> Path:
    """A split_zhou_*.json dataset with its train list shuffled (not grouped by label)."""
    p = presets.get(preset)
    images = presets.images_folder(p, root)
    entries = []
    for label, name in enumerate(classes):
        for i in range(per_class):
            rel = f"{name}/{name}_{i}.jpg"
            image(images / rel, label * 31 + i)
            entries.append([rel, label, name])
    rng = random.Random(seed)
    rng.shuffle(entries)
    n = len(entries)
    split = {"train": entries[: n // 2], "val": entries[n // 2: 3 * n // 4], "test": entries[3 * n // 4:]}
    (root / p.folder / p.split_file).write_text(json.dumps(split))
    return root


def imagenet_layout(root: Path, wnids: dict[str, str], per_class: int = 3) -> Path:
    base = root / "imagenet"
    for part in ("train", "val"):
        for i, wnid in enumerate(wnids):
            for j in range(per_class):
                image(base / "images" / part / wnid / f"{wnid}_{part}_{j}.JPEG", i * 40 + j)
    (base / "classnames.txt").write_text("".join(f"{w} {name}\n" for w, name in wnids.items()))
    return root


def test_every_coop_dataset_is_known_with_its_template():
    assert set(presets.BASE_TO_NOVEL) == {"ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "Flowers102",
                                          "Food101", "FGVCAircraft", "SUN397", "DTD", "EuroSAT", "UCF101"}
    assert presets.get("dtd").template == "{} texture."
    assert presets.get("EuroSAT").template == "a centered satellite photo of {}."
    assert presets.get("oxfordpets").template == "a photo of a {}, a type of pet."
    with pytest.raises(IpoError, match="unknown dataset 'Flowers101'.*Flowers102"):
        presets.get("Flowers101")


def test_a_missing_dataset_names_the_folder_it_expected(tmp_path):
    with pytest.raises(IpoError, match=f"expected the folder {tmp_path}/oxford_pets/images"):
        presets.load("OxfordPets", tmp_path, "train")
    (tmp_path / "oxford_pets" / "images").mkdir(parents=True)
    with pytest.raises(IpoError, match="split_zhou_OxfordPets.json"):
        presets.load("OxfordPets", tmp_path, "train")


def test_imagenet_reads_wnid_folders_in_coops_order(tmp_path):
    wnids = {"n02085620": "Chihuahua", "n01440764": "tench", "n01443537": "goldfish"}
    imagenet_layout(tmp_path, wnids)
    train = presets.load("ImageNet", tmp_path, "train")
    assert train.classnames == ["tench", "goldfish", "Chihuahua"]  # folders sorted, like CoOp
    folder = tmp_path / "imagenet" / "images" / "train" / "n01440764"
    assert [p.name for p in train.paths[:3]] == [f for f in os.listdir(folder) if not f.startswith(".")]
    assert len(presets.load("ImageNet", tmp_path, "test").items) == 9
    with pytest.raises(IpoError, match="no val part"):
        presets.load("ImageNet", tmp_path, "val")


def test_fgvc_aircraft_reads_its_variant_files(tmp_path):
    base = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "F/A-18"]
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    for part in ("train", "val", "test"):
        lines = []
        for i, v in enumerate(variants):
            name = f"{part}{i:05d}"
            image(base / "images" / f"{name}.jpg", i)
            lines.append(f"{name} {v}")
        (base / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    data = presets.load("FGVCAircraft", tmp_path, "train")
    assert data.classnames == variants and data.labels == [0, 1, 2]
    (base / "images_variant_test.txt").write_text("test00000 Boeing 999\n")
    with pytest.raises(IpoError, match="not in variants.txt"):
        presets.load("FGVCAircraft", tmp_path, "test")


def test_imagenet_variants_are_test_only(tmp_path):
    base = tmp_path / "imagenet-sketch"
    image(base / "images" / "n01440764" / "a.JPEG", 1)
    (base / "classnames.txt").write_text("n01440764 tench\n")
    assert presets.load("ImageNetSketch", tmp_path, "test").classnames == ["tench"]
    with pytest.raises(IpoError, match="test images only"):
        presets.load("ImageNetSketch", tmp_path, "train")


def test_eval_with_a_dataset_uses_coops_baseline(tmp_path, tiny_config, tiny_checkpoint):
    coop_split_dataset(tmp_path / "data", "OxfordPets", ["abyssinian", "beagle", "pug", "sphynx"])
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(["a photo of a {}."]))
    result = run_ipo("eval", prompts, "--dataset", "OxfordPets", "--data-root", tmp_path / "data",
                     "--clip", tiny_config, "--clip-weights", tiny_checkpoint, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["results"]
    assert rows[-1]["name"] == "a photo of a {}, a type of pet." and rows[-1]["kind"] == "baseline"
    assert json.loads(result.stdout)["n_images"] == 6  # the test part of the split


def test_optimize_on_a_dataset_names_its_domain_and_reports_against_its_baseline(tmp_path, tiny_config,
                                                                                  tiny_checkpoint):
    coop_split_dataset(tmp_path / "data", "DTD", ["banded", "blotchy", "braided", "bubbly"])
    out = tmp_path / "run"
    with FakeOpenAI(key=KEY, reply=lambda p: "<INS>a close-up of a <CLASS> surface.</INS>") as api:
        result = run_ipo("optimize", "--dataset", "DTD", "--data-root", tmp_path / "data", "--shots", "1",
                         "--steps", "1", "--candidates", "2", "--base-novel", "--lmm", "none",
                         "--llm-url", api.url + "/v1", "--clip", tiny_config, "--clip-weights", tiny_checkpoint,
                         "--out", out, "--json", env={"IPO_API_KEY": KEY})
    assert result.returncode == 0, result.stderr
    meta = (out / "meta_prompts" / "step_001.txt").read_text()
    assert "(photos of textures)" in meta
    evaluation = json.loads((out / "eval_base_novel.json").read_text())
    assert evaluation["results"][-1]["name"] == "{} texture."
    config = json.loads((out / "config.json").read_text())
    assert config["request"]["dataset"] == "DTD" and config["request"]["baseline"] == "{} texture."


def test_coops_own_names_and_clip_benchmark_keys_are_aliases():
    """CoOp's configs/datasets/*.yaml DATASET.NAME values, and CLIP_benchmark's keys with
    its wds/ and vtab/ prefixes."""
    from ipo_cli.data import coop

    for name, preset in [("OxfordFlowers", "Flowers102"), ("DescribableTextures", "DTD"), ("oxfordflowers", "Flowers102"),
                         ("wds/cars", "StanfordCars"), ("vtab/flowers", "Flowers102"), ("pets", "OxfordPets"),
                         ("imagenet1k", "ImageNet"), ("Caltech101", "Caltech101")]:
        assert coop.get(name).name == preset
