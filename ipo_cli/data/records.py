"""The records every image source returns (a labelled image, a labelled set) and the one
UTF-8 text reader the sources share; folders, split files and webdataset shards build them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ipo_cli.errors import IpoError
from ipo_cli.gates.paths import check_path


@dataclass(frozen=True)
class ImageItem:
    path: Path
    label: int


@dataclass
class Dataset:
    """Images with integer labels indexing `classnames`."""

    classnames: list[str]
    items: list[ImageItem]
    root: Path | None = None
    # Where each class sat in the original class list; kept through subsetting so that
    # reports can name the original labels.
    original_labels: list[int] = field(default_factory=list)
    # How its images are decoded (see load_image): "reference" for the field's datasets
    # (CoOp's --dataset, CLIP_benchmark shards), "ipo" for a user's folders.
    image_loading: str = "ipo"
    # The webdataset shard each image was taken from (data/shards.py), so that work can be
    # split by shard; empty for image files.
    origins: dict[Path, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.original_labels:
            self.original_labels = list(range(len(self.classnames)))

    @property
    def labels(self) -> list[int]:
        return [item.label for item in self.items]

    @property
    def paths(self) -> list[Path]:
        return [item.path for item in self.items]

    def by_label(self) -> dict[int, list[ImageItem]]:
        groups: dict[int, list[ImageItem]] = {i: [] for i in range(len(self.classnames))}
        for item in self.items:
            groups[item.label].append(item)
        return groups

    def subset_classes(self, labels: list[int]) -> Dataset:
        """Only the given classes, relabelled 0..m-1 in the given order (as CoOp does)."""
        remap = {old: new for new, old in enumerate(labels)}
        return Dataset(
            classnames=[self.classnames[i] for i in labels],
            items=[ImageItem(it.path, remap[it.label]) for it in self.items if it.label in remap],
            root=self.root,
            original_labels=[self.original_labels[i] for i in labels],
            image_loading=self.image_loading,
        )

    def without(self, paths: set[Path]) -> Dataset:
        """The same set less some images (for instance those that could not be read)."""
        return Dataset(
            self.classnames,
            [it for it in self.items if it.path not in paths],
            self.root,
            list(self.original_labels),
            self.image_loading,
        )


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file (a BOM is allowed); other bytes are a one-line error saying where."""
    check_path(path, what, kind="file")  # NUL, too long, a FIFO or a device: one line (gates/paths.py)
    try:
        return Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IpoError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})",
                       "save it as UTF-8") from None
    except OSError as exc:
        raise IpoError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
