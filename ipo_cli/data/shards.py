"""CLIP_benchmark's webdataset folders as an image source.

The layout (LAION-AI/CLIP_benchmark clip_benchmark/datasets/builder.py, `build_wds_dataset`,
and webdataset_builder.py, `convert_dataset`, which writes it):

    FOLDER/
        test/nshards.txt       the number of shards, N
        test/0.tar ... N-1.tar samples: "s0000000.webp" (or .png/.jpg/.jpeg) + "s0000000.cls"
        train/...              the same for another split
        classnames.txt         one class per line; a sample's .cls is its line number
        zeroshot_classification_templates.txt   one template ({c}) per line

Shards are read one tar member at a time (`tarfile` in stream mode), so memory does not
grow with the set. Each image's bytes are written once to a content-addressed folder of
ipo's cache (`CACHE/shard-images/ab/<sha256>.<ext>`), so an image's cache key is its
bytes' hash exactly as for an image in a folder: the embedding cache is shared with the
same images kept as files. Only the bytes are written, under a name ipo makes; no name
from the tar is ever used as a path.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from pathlib import Path
from typing import Any

from ipo_cli.data.records import Dataset, ImageItem, read_text
from ipo_cli.errors import IpoError

# the image extensions CLIP_benchmark decodes (builder.py: to_tuple(["webp", "png", "jpg", "jpeg"], "cls"))
IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
MAX_MEMBER = 256 << 20  # one image's bytes
MAX_SHARDS = 100_000
# webdataset's sample key: the member path up to the first dot of its base name
# (webdataset/tariterators.py, base_plus_ext)
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def is_shard_folder(folder: Path) -> bool:
    """A CLIP_benchmark webdataset folder: some split folder holds nshards.txt."""
    folder = Path(folder)
    return folder.is_dir() and any((folder / s / "nshards.txt").is_file() for s in ("test", "train", "val"))


def _nshards(path: Path) -> int:
    text = read_text(path, "shard count").strip()
    if not text.isdigit() or not 0 < int(text) <= MAX_SHARDS:
        raise IpoError(f"{path} should hold the number of shards (1..{MAX_SHARDS}), not {text[:20]!r}")
    return int(text)


def read_classnames(folder: Path) -> list[str]:
    path = Path(folder) / "classnames.txt"
    if not path.is_file():
        raise IpoError(f"{folder} has no classnames.txt", "CLIP_benchmark's webdataset folders keep their class "
                       "names there, one per line; pass --classes FILE otherwise")
    # as CLIP_benchmark reads it: every line stripped (builder.py, build_wds_dataset)
    names = [line.strip() for line in read_text(path, "classnames file").splitlines()]
    if not names or any(not n for n in names):
        raise IpoError(f"{path} has an empty line", "one class name per line, none empty")
    return names


def load_shards(folder: Path, split: str = "test", cache_dir: Path | str | None = None,
                classnames: list[str] | None = None) -> Dataset:
    """The `split` of a webdataset folder, its images stored by content under the cache."""
    from ipo_cli import cache

    folder = Path(folder)
    count_file = folder / split / "nshards.txt"
    if not count_file.is_file():
        present = [s for s in ("test", "train", "val") if (folder / s / "nshards.txt").is_file()]
        raise IpoError(f"{folder} has no {split!r} split (no {split}/nshards.txt)",
                       f"choose one with --split-part: {', '.join(present)}")
    names = classnames if classnames is not None else read_classnames(folder)
    store = cache.cache_root(cache_dir) / "shard-images"
    items: list[ImageItem] = []
    origins: dict[Path, Path] = {}
    for index in range(_nshards(count_file)):
        shard = folder / split / f"{index}.tar"
        if not shard.is_file():
            raise IpoError(f"shard {shard} is missing", f"{count_file} says there are more shards")
        for key, image, ext, label in _samples(shard):
            if not 0 <= label < len(names):
                raise IpoError(f"sample {key!r} of {shard} has label {label}, but there are {len(names)} classes")
            items.append(ImageItem(_store(store, image, ext), label))
            origins.setdefault(items[-1].path, shard)
    if not items:
        raise IpoError(f"the {split!r} split of {folder} holds no image with a .cls label")
    return Dataset(list(names), items, folder, image_loading="reference", origins=origins)


def _samples(shard: Path):
    """(key, image bytes, extension, label) per sample, one member in memory at a time."""
    key: str | None = None
    parts: dict[str, Any] = {}
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                match = _KEY_RE.match(member.name)
                if not match:
                    continue
                base, ext = match.group(1), match.group(2).lower()
                if ext not in IMAGE_EXTS and ext != "cls":
                    continue
                if member.size > MAX_MEMBER:
                    raise IpoError(f"{shard}: member {member.name[:60]!r} is {member.size} bytes, over the "
                                   f"{MAX_MEMBER >> 20} MB an image may take")
                if base != key:
                    if key is not None:
                        yield from _sample(shard, key, parts)
                    key, parts = base, {}
                data = tar.extractfile(member)
                parts[ext] = data.read() if data is not None else b""
            if key is not None:
                yield from _sample(shard, key, parts)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise IpoError(f"shard {shard} is not a readable tar file: {exc}") from None


def _sample(shard: Path, key: str, parts: dict):
    image_ext = next((e for e in IMAGE_EXTS if e in parts), None)
    if image_ext is None or "cls" not in parts:
        return  # not a classification sample (CLIP_benchmark's to_tuple skips it likewise)
    text = parts["cls"].decode("ascii", "replace").strip()
    if not re.fullmatch(r"\d{1,9}", text):
        raise IpoError(f"sample {key!r} of {shard} has the label {text[:20]!r}, not a class number")
    yield key, parts[image_ext], image_ext, int(text)


def _store(root: Path, data: bytes, ext: str) -> Path:
    digest = hashlib.sha256(data).hexdigest()
    path = root / digest[:2] / f"{digest}.{ext}"
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError as exc:
            raise IpoError(f"cannot store a shard image under {root}: {exc.strerror or exc}",
                           "free some disk space or pass --cache-dir") from None
    return path
