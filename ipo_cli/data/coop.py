"""The base-to-novel datasets of CoOp / CoCoOp (and so of IPO), laid out as CoOp's
DATASETS.md says, with the hand-written CLIP template CoOp uses for each.

Sources (KaiyangZhou/CoOp at ff61507): DATASETS.md for the folders, `datasets/*.py` for
how each is read (image folder, split file, ImageNet's wnid folders with `classnames.txt`,
FGVC-Aircraft's variant text files, the ImageNet variants), `trainers/zsclip.py`
`CUSTOM_TEMPLATES` for the templates, which are the paper's CLIP row. The task hint names
each dataset's domain for the meta-prompt, as the official IPO code does.

`--dataset NAME --data-root DIR` (DIR is CoOp's $DATA) finds the images; ImageNet and its
variants are read in CoOp's order: class folders sorted, images in `os.listdir` order
(unsorted, as Dassl's `listdir_nohidden` returns them), so the few-shot draw matches
CoOp's on the same disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ipo_cli.data.folders import Dataset, ImageItem, load_split, read_text
from ipo_cli.errors import IpoError, close_matches


@dataclass(frozen=True)
class Preset:
    name: str
    folder: str  # under --data-root
    image_dir: str  # under folder ("" for the folder itself)
    reader: str  # split | imagenet | fgvc | imagenet-variant | imagenetv2
    template: str  # CoOp's CUSTOM_TEMPLATES entry: the paper's CLIP baseline
    hint: str  # the domain, for the meta-prompt
    split_file: str | None = None
    test_only: bool = False


PRESETS = {p.name: p for p in (
    Preset("ImageNet", "imagenet", "images", "imagenet", "a photo of a {}.", "photos of everyday objects and animals"),
    Preset("Caltech101", "caltech-101", "101_ObjectCategories", "split", "a photo of a {}.", "photos of objects",
           "split_zhou_Caltech101.json"),
    Preset("OxfordPets", "oxford_pets", "images", "split", "a photo of a {}, a type of pet.",
           "photos of pets (cat and dog breeds)", "split_zhou_OxfordPets.json"),
    Preset("StanfordCars", "stanford_cars", "", "split", "a photo of a {}.", "photos of cars (make, model, year)",
           "split_zhou_StanfordCars.json"),
    Preset("Flowers102", "oxford_flowers", "jpg", "split", "a photo of a {}, a type of flower.", "photos of flowers",
           "split_zhou_OxfordFlowers.json"),
    Preset("Food101", "food-101", "images", "split", "a photo of {}, a type of food.", "photos of food dishes",
           "split_zhou_Food101.json"),
    Preset("FGVCAircraft", "fgvc_aircraft", "images", "fgvc", "a photo of a {}, a type of aircraft.",
           "photos of aircraft (model variants)"),
    Preset("SUN397", "sun397", "SUN397", "split", "a photo of a {}.", "photos of scenes and places",
           "split_zhou_SUN397.json"),
    Preset("DTD", "dtd", "images", "split", "{} texture.", "photos of textures", "split_zhou_DescribableTextures.json"),
    Preset("EuroSAT", "eurosat", "2750", "split", "a centered satellite photo of {}.",
           "satellite photos of land use and land cover", "split_zhou_EuroSAT.json"),
    Preset("UCF101", "ucf101", "UCF-101-midframes", "split", "a photo of a person doing {}.",
           "video frames of people doing actions", "split_zhou_UCF101.json"),
    Preset("ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val", "imagenetv2", "a photo of a {}.",
           "photos of everyday objects and animals", test_only=True),
    Preset("ImageNetSketch", "imagenet-sketch", "images", "imagenet-variant", "a photo of a {}.",
           "sketches of everyday objects and animals", test_only=True),
    Preset("ImageNetA", "imagenet-adversarial", "imagenet-a", "imagenet-variant", "a photo of a {}.",
           "hard photos of everyday objects and animals", test_only=True),
    Preset("ImageNetR", "imagenet-rendition", "imagenet-r", "imagenet-variant", "a photo of a {}.",
           "renditions (art, cartoons) of everyday objects and animals", test_only=True),
)}
BASE_TO_NOVEL = [n for n, p in PRESETS.items() if not p.test_only]
# The same datasets' keys in CLIP_benchmark's template and classnames files
# (clip_benchmark/datasets/en_zeroshot_classification_templates.json, en_classnames.json).
CLIP_BENCHMARK_KEYS = {"ImageNet": "imagenet1k", "Caltech101": "caltech101", "OxfordPets": "pets",
                       "StanfordCars": "cars", "Flowers102": "flowers", "Food101": "food101",
                       "FGVCAircraft": "fgvc_aircraft", "SUN397": "sun397", "DTD": "dtd", "EuroSAT": "eurosat"}


# CoOp's own names, the DATASET.NAME of its configs/datasets/*.yaml (KaiyangZhou/CoOp at
# ff61507: oxford_flowers.yaml "OxfordFlowers", dtd.yaml "DescribableTextures"; the others
# are ipo's names already), and CLIP_benchmark's keys above, with its `wds/` and `vtab/`
# prefixes stripped as its builder.py does.
ALIASES = {"OxfordFlowers": "Flowers102", "DescribableTextures": "DTD",
           **{key: name for name, key in CLIP_BENCHMARK_KEYS.items()}}


def get(name: str) -> Preset:
    lowered = {n.lower(): p for n, p in PRESETS.items()}
    lowered.update({alias.lower(): PRESETS[target] for alias, target in ALIASES.items()})
    for prefix in ("wds/", "vtab/"):
        if name.lower().startswith(prefix):
            name = name[len(prefix):]
    preset = lowered.get(name.lower())
    if preset is None:
        raise IpoError(f"unknown dataset {name!r}" + close_matches(name, list(PRESETS)),
                       f"choose one of {', '.join(PRESETS)}")
    return preset


def images_folder(preset: Preset, data_root: Path) -> Path:
    return Path(data_root) / preset.folder / preset.image_dir if preset.image_dir else Path(data_root) / preset.folder


def load(name: str, data_root: Path | str | None, part: str = "train") -> Dataset:
    """The `part` ("train", "val" or "test") of a CoOp dataset under `data_root`; its
    images load as the reference code loads them (folders.load_image "reference")."""
    data = _load(name, data_root, part)
    data.image_loading = "reference"
    return data


def _load(name: str, data_root: Path | str | None, part: str) -> Dataset:
    preset = get(name)
    if not data_root:
        raise IpoError(f"--dataset {preset.name} needs --data-root", "the folder that holds CoOp's dataset folders ($DATA)")
    folder = Path(data_root) / preset.folder
    images = images_folder(preset, Path(data_root))
    if not images.is_dir():
        raise IpoError(f"{preset.name} is not under {data_root}: expected the folder {images}",
                       "lay it out as CoOp's DATASETS.md says, or fix --data-root")
    if preset.test_only and part != "test":
        raise IpoError(f"{preset.name} has test images only (CoOp evaluates on it after training on ImageNet)",
                       "optimise on ImageNet, then ipo eval the prompts with --dataset " + preset.name)
    if preset.reader == "split":
        split = folder / str(preset.split_file)
        if not split.is_file():
            raise IpoError(f"{preset.name}: expected the split file {split}", "download it as CoOp's DATASETS.md says")
        return load_split(split, images, part)
    if preset.reader == "fgvc":
        return _fgvc(folder, images, part)
    classnames = _imagenet_classnames(folder / "classnames.txt", preset)
    if preset.reader == "imagenet":
        if part == "val":
            raise IpoError("ImageNet has no val part in CoOp (its val images are the test set)")
        from ipo_cli.data import coop_cache

        # CoOp's imagenet.py reads preprocessed.pkl, when present, instead of the folders
        cached = coop_cache.preprocessed_imagenet(folder, images, part)
        if cached is not None:
            return cached
        return _class_folders(images / ("train" if part == "train" else "val"), classnames, preset)
    if preset.reader == "imagenetv2":
        wnids = list(classnames)
        items = []
        for label in range(len(wnids)):
            class_dir = images / str(label)
            if not class_dir.is_dir():
                raise IpoError(f"{preset.name}: expected the folder {class_dir}")
            items += [ImageItem(class_dir / f, label) for f in _listdir(class_dir)]
        return Dataset([classnames[w] for w in wnids], items, images)
    return _class_folders(images, classnames, preset)


def _listdir(path: Path) -> list[str]:
    """Dassl's listdir_nohidden: os.listdir order, hidden files left out."""
    return [f for f in os.listdir(path) if not f.startswith(".")]


def _imagenet_classnames(path: Path, preset: Preset) -> dict[str, str]:
    """`classnames.txt`: "wnid class name" per line (CoOp's ImageNet.read_classnames)."""
    if not path.is_file():
        raise IpoError(f"{preset.name}: expected {path} (\"wnid class name\" per line)",
                       "download classnames.txt as CoOp's DATASETS.md says")
    names: dict[str, str] = {}
    for n, line in enumerate(read_text(path, "classnames file").splitlines(), 1):
        parts = line.strip().split(" ")
        if len(parts) < 2 or not parts[0]:
            if line.strip():
                raise IpoError(f"{path} line {n} is not \"wnid class name\": {line[:60]!r}")
            continue
        names[parts[0]] = " ".join(parts[1:])
    return names


def _class_folders(root: Path, classnames: dict[str, str], preset: Preset) -> Dataset:
    """Class folders sorted by name, labelled in that order; images in listdir order."""
    if not root.is_dir():
        raise IpoError(f"{preset.name}: expected the folder {root}")
    folders = sorted(f.name for f in os.scandir(root) if f.is_dir() and not f.name.startswith("."))
    missing = [f for f in folders if f not in classnames]
    if missing:
        raise IpoError(f"{preset.name}: classnames.txt has no name for the folder(s) {', '.join(missing[:3])}")
    items = [ImageItem(root / folder / f, label) for label, folder in enumerate(folders) for f in _listdir(root / folder)]
    return Dataset([classnames[f] for f in folders], items, root)


def _fgvc(folder: Path, images: Path, part: str) -> Dataset:
    """FGVC-Aircraft: variants.txt names the classes; images_variant_{part}.txt lists
    "image-id variant name" per line (CoOp's FGVCAircraft)."""
    variants_file = folder / "variants.txt"
    listing = folder / f"images_variant_{part}.txt"
    for path in (variants_file, listing):
        if not path.is_file():
            raise IpoError(f"FGVCAircraft: expected {path}", "keep fgvc-aircraft-2013b's data/ folder as fgvc_aircraft/")
    classnames = [line.strip() for line in read_text(variants_file, "variants file").splitlines() if line.strip()]
    index = {c: i for i, c in enumerate(classnames)}
    items = []
    for n, line in enumerate(read_text(listing, "FGVC listing").splitlines(), 1):
        if not line.strip():
            continue
        image, _, variant = line.strip().partition(" ")
        if variant not in index:
            raise IpoError(f"{listing} line {n} names a variant not in variants.txt: {variant!r}")
        items.append(ImageItem(images / f"{image}.jpg", index[variant]))
    return Dataset(classnames, items, images)
