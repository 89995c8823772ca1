"""The few-shot sample a run trains on, drawn as CoOp/Dassl draw it, and the other parts
(validation, held-out test) of the dataset a request names.

`ipo optimize` and `ipo bench` (its plan) both draw here, so the two always agree on
which images a run uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ipo_cli.data import coop, coop_cache
from ipo_cli.errors import IpoError

if TYPE_CHECKING:
    from ipo_cli.data.folders import Dataset
    from ipo_cli.optimize.request import Request


def sample(request: Request) -> tuple[Dataset, Dataset, Dataset | None]:
    """Training (and validation) images as CoOp/Dassl draw them: one generator seeded with
    --seed draws K shots per class over all classes (labels in the order they first appear
    in the split's train list), then the val sample with min(K, 4) shots from the split's
    val list (CoOp's dataset classes), and only then are the classes cut to the base half
    (`subsample_classes`). The val sample is drawn even when not used, so the training
    images are the same with --select train or val."""
    import random

    from ipo_cli.data import folders as ds

    full = load_part(request, "train")
    if len(full.classnames) < 2:
        raise IpoError(f"{request.images} has {len(full.classnames)} class; prompt optimisation needs at least two")
    base_labels = list(range(len(full.classnames)))
    if request.base_novel:
        base_labels, _ = ds.base_novel_labels(len(full.classnames))
        if len(base_labels) < 2:
            raise IpoError("--base-novel leaves fewer than two base classes", "use at least four classes")
    rng = random.Random(request.seed)
    # CoOp loads split_fewshot/shot_K-seed_S.pkl when it exists instead of drawing
    cached = cached_sample(request.dataset, request.data_root, request.shots, request.seed, full) \
        if request.dataset and request.data_root and not request.fresh_sample else None
    train_all = cached.train if cached is not None else ds.few_shot(full, request.shots, rng)
    val_all = cached.val if cached is not None else None
    if val_all is None:  # (ImageNet's cached file holds no val part)
        val_source = _val_source(request, full, train_all)
        val_all = ds.few_shot(val_source, min(request.shots, 4), rng, strict=False) if val_source is not None else None
    train = train_all.subset_classes(base_labels)
    val = None
    if request.select == "val":
        if val_all is None or any(len(v) == 0 for v in val_all.subset_classes(base_labels).by_label().values()):
            raise IpoError("not enough images for the validation sample of --select val",
                           "add images, or use --select train")
        val = val_all.subset_classes(base_labels)
    return full, train, val


def sample_source(request: Request) -> str:
    """What the plan says of the training sample: CoOp's cached file, or a fresh draw."""
    cached = sample_file(request.dataset, request.data_root, request.shots, request.seed) \
        if request.dataset and not request.fresh_sample else None
    return f"CoOp's cached sample {cached}" if cached else f"drawn with seed {request.seed}"


def load_part(request: Request, part: str) -> Dataset:
    from ipo_cli.data import folders as ds

    if request.dataset:
        from ipo_cli.data import coop as presets

        return presets.load(request.dataset, request.data_root, part)
    return ds.load_dataset(Path(request.images), Path(request.classes) if request.classes else None,
                           Path(request.split) if request.split else None, part, request.allow_outside_root)


def _val_source(request: Request, full: Dataset, train: Dataset) -> Dataset | None:
    """CoOp's val list: the split file's val part; for a plain folder, the images not drawn
    for training."""
    if request.dataset or request.split:
        try:
            return load_part(request, "val")
        except IpoError:
            return None  # no val part: CoOp's ImageNet draws no val sample either
    return full.without(set(train.paths))


def held_out_set(request: Request, full: Dataset) -> Dataset:
    from ipo_cli.data import folders as ds

    if request.test_images:
        return ds.load_dataset(Path(request.test_images), Path(request.classes) if request.classes else None)
    if request.dataset:
        return load_part(request, "test")
    if request.split:
        return ds.load_split(Path(request.split), Path(request.images), "test", request.allow_outside_root)
    raise IpoError("--base-novel needs held-out images to report base and novel accuracy",
                   "pass --test-images DIR (same classes) or a --split file with a test part")


# CoOp's cached few-shot samples (the files are read by data/coop_cache.py)
def sample_file(name: str, data_root: Path | str | None, shots: int, seed: int) -> Path | None:
    """CoOp's cached sample file for this dataset, shots and seed, if there is one."""
    if not data_root:
        return None
    path = coop_cache.fewshot_file(Path(data_root) / coop.get(name).folder, shots, seed)
    return path if path.is_file() else None


def cached_sample(name: str, data_root: Path | str, shots: int, seed: int, full: Dataset) -> coop_cache.CachedSample | None:
    """CoOp's cached few-shot sample for this dataset, shots and seed, when the file exists
    (ImageNet's holds no val part, as CoOp's imagenet.py writes it); `full` gives the
    classes the labels index."""
    preset = coop.get(name)
    dataset_dir = Path(data_root) / preset.folder
    path = coop_cache.fewshot_file(dataset_dir, shots, seed)
    if not path.is_file():
        return None
    image_dir = coop.images_folder(preset, Path(data_root))
    anchors = _anchors(preset)
    is_imagenet = preset.reader == "imagenet"
    parts = coop_cache.read_parts(path, ("train",) if is_imagenet else ("train", "val"))
    train = coop_cache.to_dataset(parts["train"], full.classnames, image_dir, anchors, path)
    val = None if is_imagenet else coop_cache.to_dataset(parts["val"], full.classnames, image_dir, anchors, path)
    return coop_cache.CachedSample(train, val, path)


def _anchors(preset) -> list[str]:
    """Names to find in a foreign path: the dataset folder with its image folder, then the
    image folder alone (StanfordCars keeps images in the dataset folder itself)."""
    if preset.image_dir:
        return [f"{preset.folder}/{preset.image_dir}", preset.image_dir]
    return [preset.folder]
