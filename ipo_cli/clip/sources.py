"""The labelled images an `ipo eval` scores, the prompts it scores on them and the baseline
every prompt is compared with.

Three ways to name the images: a CoOp dataset under a data root (`dataset` without
`images`: its split, its classes, its CoOp template as the default baseline), a folder of
class folders, or a folder with a CoOp split file (`images`, with `dataset` then picking one
dataset of a multi-dataset CLIP_benchmark template or classnames file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ipo_cli.clip.scoring import Prompt
from ipo_cli.data.folders import Dataset
from ipo_cli.errors import InvalidInput, NotFound

SPLIT_PARTS = ("train", "val", "test")


@dataclass
class EvalInputs:
    """What one evaluation scores: the images, the prompts and the baseline template."""

    data: Dataset
    prompts: list[Prompt]
    baseline: str

    def texts(self) -> list[str]:
        """Every text the evaluation encodes (the prompts and the baseline, for each class):
        what a warm CLIP must hold in its cache."""
        everything = [*self.prompts, Prompt(self.baseline, [self.baseline])]
        return [t for p in everything for ts in p.texts(self.data.classnames) for t in ts]


def check_split_part(part: str) -> None:
    if part not in SPLIT_PARTS:
        raise InvalidInput(f"--split-part must be train, val or test, not {part!r}")


def eval_inputs(prompts_file: Path, images: Path | None = None, dataset: str | None = None,
                data_root: Path | None = None, classes: Path | None = None, split: Path | None = None,
                split_part: str = "test", allow_outside_root: bool = False, shots: int | None = None,
                seed: int = 1, baseline: str | None = None, cache_dir: Path | None = None,
                image_loading: str | None = None) -> EvalInputs:
    """Read the prompts and load the images an evaluation scores (a seeded `shots` per class
    sample when given); `baseline` defaults to the CoOp dataset's template, else the
    default baseline template."""
    from ipo_cli.clip.evaluate import DEFAULT_BASELINE
    from ipo_cli.data import folders
    from ipo_cli.data import prompts as prompt_files

    check_split_part(split_part)
    if dataset and images is None:
        from ipo_cli.data import coop

        if split or classes:
            raise InvalidInput("--dataset with --data-root says where the images are; leave out --split and --classes")
        preset = coop.get(dataset)
        prompt_list = prompt_files.read_prompts(prompts_file, coop.CLIP_BENCHMARK_KEYS.get(preset.name, preset.name))
        data = coop.load(dataset, data_root, split_part)
        baseline = baseline or preset.template
    elif images is None:
        raise InvalidInput("missing --images", "pass --images DIR, or --dataset NAME --data-root DIR")
    else:
        prompt_list = prompt_files.read_prompts(prompts_file, dataset)
        # a run's prompts.json names its classes: they stand in for --classes (data/prompts.py)
        info = prompt_files.read_info(prompts_file)
        given = folders.read_classes(classes, dataset) if classes is not None and split is None else None
        names = prompt_files.resolve_classes(info, given) if split is None else None
        data = folders.load_dataset(images, classes if names is None else None, split, split_part,
                                    allow_outside_root, classes_key=dataset, classnames=names, cache_dir=cache_dir)
    if image_loading:
        data.image_loading = folders.check_image_loading(image_loading)
    if shots:
        data = folders.few_shot(data, shots, seed)
    return EvalInputs(data, prompt_list, baseline or DEFAULT_BASELINE)


def image_files(images: Path) -> list[Path]:
    """The images `ipo classify` labels: one file, or every image under a folder."""
    from ipo_cli.data import folders
    from ipo_cli.gates.paths import check_path

    check_path(images, "image file or folder")  # a FIFO, a device, a socket: said as what it is
    if images.is_dir():
        paths = folders.list_images(images)
    elif images.is_file():
        paths = [images]
    else:
        raise NotFound(f"{images} does not exist")
    if not paths:
        raise NotFound(f"{images} holds no images", f"image files end in {', '.join(sorted(folders.IMAGE_EXTENSIONS))}")
    return paths


def shard_images(images: Path, split_part: str | None, cache_dir: Path | None,
                 classnames: list[str] | None = None) -> Dataset | None:
    """A CLIP_benchmark webdataset folder's images (data/shards.py), as `ipo eval` and
    `ipo describe` read them; None for any other path. Without `split_part`, its test
    split, else the first it has."""
    from ipo_cli.data import shards

    if not shards.is_shard_folder(images):
        return None
    if split_part is None:
        split_part = next(s for s in ("test", "train", "val") if (images / s / "nshards.txt").is_file())
    check_split_part(split_part)
    return shards.load_shards(images, split_part, cache_dir, classnames)
