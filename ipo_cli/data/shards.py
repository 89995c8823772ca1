"""CLIP_benchmark's webdataset folders as an image source.

The layout (LAION-AI/CLIP_benchmark clip_benchmark/datasets/builder.py, `build_wds_dataset`,
and webdataset_builder.py, `convert_dataset`, which writes it):

    FOLDER/
        test/nshards.txt       the number of shards, N
        test/0.tar ... N-1.tar samples: "s0000000.webp" (or .png/.jpg/.jpeg) + "s0000000.cls"
        train/...              the same for another split
        classnames.txt         one class per line; a sample's .cls is its line number
        zeroshot_classification_templates.txt   one template ({c}) per line

Shards are read one tar member at a time (`tarfile` in stream mode), and each image is
streamed to disk in 1 MiB pieces while it is hashed, so memory does not grow with the set
or with a member. Each image's bytes are written once to a content-addressed folder of
ipo's cache (`CACHE/shard-images/ab/<sha256>.<ext>`), so an image's cache key is its
bytes' hash exactly as for an image in a folder: the embedding cache is shared with the
same images kept as files. Only the bytes are written, under a name ipo makes; no name
from the tar is ever used as a path.

Every size is checked before it is read, from the header that states it:

- `tarfile` reads a GNU long name or long link (type L/K) and a pax header (x/g) whole,
  as one `fileobj.read` of the size in its header (python/cpython Lib/tarfile.py,
  `TarInfo._proc_gnulong` and `_proc_pax`: `tarfile.fileobj.read(self._block(self.size))`),
  so those headers are checked against `MAX_NAME_HEADER` before `tarfile` processes them
  (`_BoundedTarInfo._proc_member`, the method that dispatches to them); GNU sparse members
  (type S, which webdataset never writes) are refused.
- A member over `MAX_MEMBER` is refused from its header.
- What a folder's shards unpack to is bounded by `MAX_EXPANSION` times their size on
  disk plus `EXPANSION_SLACK` (`_Budget`): images are compressed already, so a real
  shard, gzip'd or not, unpacks to about its own size, and a small gzip'd shard cannot
  fill the disk (the bytes written to `CACHE/shard-images` are bounded by the same
  figure). A member's header is checked against what is left before its bytes are
  read, and every byte that comes out of the decompressor is counted.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ipo_cli.data.records import Dataset, ImageItem, read_text
from ipo_cli.errors import IpoError

if TYPE_CHECKING:
    from ipo_cli import cache

# the image extensions CLIP_benchmark decodes (builder.py: to_tuple(["webp", "png", "jpg", "jpeg"], "cls"))
IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
MAX_MEMBER = 256 << 20  # one image's bytes
MAX_LABEL_BYTES = 4096  # a .cls member: a class number
MAX_NAME_HEADER = 64 << 10  # a GNU long name or a pax header (paths are at most 4 KiB on Linux)
MAX_EXPANSION = 4  # what shards may unpack to, times their size on disk ...
EXPANSION_SLACK = 64 << 20  # ... plus this
MAX_SHARDS = 100_000
CHUNK = 1 << 20
# webdataset's sample key: the member path up to the first dot of its base name
# (webdataset/tariterators.py, base_plus_ext)
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def is_shard_folder(folder: Path) -> bool:
    """A CLIP_benchmark webdataset folder: some split folder holds nshards.txt."""
    folder = Path(folder)
    return folder.is_dir() and any((folder / s / "nshards.txt").is_file() for s in ("test", "train", "val"))


def _nshards(path: Path) -> int:
    text = read_text(path, "shard count").strip()
    # ASCII digits only: str.isdigit accepts '²' and other digits int() refuses
    # (https://docs.python.org/3/library/stdtypes.html#str.isdigit), and few of them.
    if not (text.isascii() and text.isdigit() and len(text) < 10) or not 0 < int(text) <= MAX_SHARDS:
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
    store = cache.ShardImages(cache_dir)  # under --cache-dir, bounded in total (cache.py)
    items: list[ImageItem] = []
    origins: dict[Path, Path] = {}
    shards = [folder / split / f"{index}.tar" for index in range(_nshards(count_file))]
    for shard in shards:
        if not shard.is_file():
            raise IpoError(f"shard {shard} is missing", f"{count_file} says there are more shards")
    budget = _Budget(MAX_EXPANSION * sum(shard.stat().st_size for shard in shards) + EXPANSION_SLACK, folder)
    for shard in shards:
        for key, image, label in _samples(shard, store, budget):
            if not 0 <= label < len(names):
                image.discard()
                raise IpoError(f"sample {key!r} of {shard} has label {label}, but there are {len(names)} classes")
            items.append(ImageItem(image.keep(), label))
            origins.setdefault(items[-1].path, shard)
    if not items:
        raise IpoError(f"the {split!r} split of {folder} holds no image with a .cls label")
    return Dataset(list(names), items, folder, image_loading="reference", origins=origins)


class _Budget:
    """The bytes a folder's shards may unpack to, counted down."""

    def __init__(self, total: int, folder: Path):
        self.total = self.left = total
        self.folder = folder

    def check(self, size: int, where: str) -> None:
        """Refuse, before it is read, a member that would overdraw what is left."""
        if size > self.left:
            raise IpoError(f"{where} would unpack {self.folder}'s shards past {self.total >> 20} MiB, "
                           f"{MAX_EXPANSION} times their size on disk plus {EXPANSION_SLACK >> 20} MiB; "
                           "ipo stopped before reading it",
                           "is it a CLIP_benchmark webdataset? its images are compressed already")

    def take(self, size: int, where: str) -> None:
        self.check(size, where)
        self.left -= size


class _Counted:
    """The decompressed stream under `tarfile`: every byte it hands out is taken from the
    budget (a backstop: each member's size is checked from its header first)."""

    def __init__(self, raw: BinaryIO, budget: _Budget, shard: Path):
        self.raw, self.budget, self.shard = raw, budget, shard

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size if size is not None and size >= 0 else CHUNK)
        self.budget.take(len(data), f"shard {self.shard}")
        return data


def _decompressed(fh: BinaryIO) -> BinaryIO:
    """The tar stream of a shard: gzip, bzip2 or xz undone as it is read (the
    compressions `tarfile`'s "r|*" knows in Python 3.11), by the magic bytes it tests."""
    head = fh.read(6)
    fh.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(fh, "rb")  # type: ignore[return-value]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(fh, "rb")  # type: ignore[return-value]
    return fh


class _HeaderTooBig(IpoError):
    pass


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo whose special headers are checked before `tarfile` reads them:
    `_proc_member` is where a header read by `fromtarfile` is dispatched to
    `_proc_gnulong`, `_proc_sparse`, `_proc_pax` or `_proc_builtin` (Lib/tarfile.py), and
    `fromtarfile` builds the next header with this same class, so a chain is checked
    header by header."""

    def _proc_member(self, tarfile_obj: Any) -> Any:
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                         tarfile.SOLARIS_XHDTYPE) and self.size > MAX_NAME_HEADER:
            what = "GNU long-name" if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) else "pax"
            raise _HeaderTooBig(f"a {what} header of {self.size} bytes (over {MAX_NAME_HEADER >> 10} KiB, "
                                "more than any path needs)")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _HeaderTooBig("a GNU sparse member, which webdataset never writes")
        return super()._proc_member(tarfile_obj)  # type: ignore[misc]  # private in typeshed, there since 2.x


class _Stored:
    """An image streamed from a shard to a temporary file while it was hashed: `keep`
    moves it to its content address, `discard` removes it."""

    def __init__(self, store: cache.ShardImages, tmp: Path, digest: str, ext: str):
        self.store, self.tmp, self.digest, self.ext = store, tmp, digest, ext

    def keep(self) -> Path:
        return self.store.adopt(self.tmp, self.digest, self.ext)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def _stream_to(store: cache.ShardImages, data: BinaryIO, ext: str, size: int) -> _Stored:
    """`size` bytes of a member to a temporary file of the store, 1 MiB at a time."""
    root = store.path
    tmp_dir = store.tmp_dir
    sha = hashlib.sha256()
    try:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{os.getpid()}-{os.urandom(6).hex()}.{ext}"
        with open(tmp, "xb") as out:
            left = size
            while left > 0:
                chunk = data.read(min(CHUNK, left))
                if not chunk:
                    break
                sha.update(chunk)
                out.write(chunk)
                left -= len(chunk)
    except OSError as exc:
        raise IpoError(f"cannot store a shard image under {root}: {exc.strerror or exc}",
                       "free some disk space or pass --cache-dir") from None
    return _Stored(store, tmp, sha.hexdigest(), ext)


def _samples(shard: Path, store: cache.ShardImages, budget: _Budget) -> Iterator[tuple[str, _Stored, int]]:
    """(key, stored image, label) per sample; one member's header and at most 1 MiB of
    its bytes in memory at a time."""
    key: str | None = None
    parts: dict[str, Any] = {}
    try:
        with open(shard, "rb") as raw, \
                tarfile.open(fileobj=_Counted(_decompressed(raw), budget, shard), mode="r|",  # type: ignore[call-overload]
                             tarinfo=_BoundedTarInfo) as tar:
            for member in tar:
                if member.isreg():  # its bytes are read next, or skipped by reading: both count
                    budget.check(member.size, f"{shard}: member {member.name[:60]!r} ({member.size} bytes)")
                if not member.isfile():
                    continue
                match = _KEY_RE.match(member.name)
                if not match:
                    continue
                base, ext = match.group(1), match.group(2).lower()
                if ext not in IMAGE_EXTS and ext != "cls":
                    continue
                limit = MAX_LABEL_BYTES if ext == "cls" else MAX_MEMBER
                if member.size > limit:
                    raise IpoError(f"{shard}: member {member.name[:60]!r} is {member.size} bytes, over the "
                                   f"{_size(limit)} a{' label' if ext == 'cls' else 'n image'} may take")
                if base != key:
                    if key is not None:
                        yield from _sample(shard, key, parts)
                    key, parts = base, {}
                data = tar.extractfile(member)
                if data is None:
                    continue
                if ext == "cls":
                    parts[ext] = data.read(member.size)
                else:
                    if ext in parts:
                        parts[ext].discard()
                    parts[ext] = _stream_to(store, data, ext, member.size)
            if key is not None:
                yield from _sample(shard, key, parts)
            key, parts = None, {}
    except _HeaderTooBig as exc:
        raise IpoError(f"shard {shard} holds {exc.message}; ipo stopped before reading it",
                       "is it a CLIP_benchmark webdataset shard?") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, RecursionError) as exc:
        what = "headers chained too deep" if isinstance(exc, RecursionError) else str(exc)
        raise IpoError(f"shard {shard} is not a readable tar file: {what}") from None
    finally:
        for part in parts.values():
            if isinstance(part, _Stored):
                part.discard()


def _size(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 else f"{n} bytes"


def _sample(shard: Path, key: str, parts: dict) -> Iterator[tuple[str, _Stored, int]]:
    image_ext = next((e for e in IMAGE_EXTS if e in parts), None)
    for ext in IMAGE_EXTS:  # the other images of the sample are not used
        if ext != image_ext and ext in parts:
            parts[ext].discard()
    if image_ext is None or "cls" not in parts:
        if image_ext is not None:
            parts[image_ext].discard()
        return  # not a classification sample (CLIP_benchmark's to_tuple skips it likewise)
    text = parts["cls"].decode("ascii", "replace").strip()
    if not re.fullmatch(r"\d{1,9}", text):
        parts[image_ext].discard()
        raise IpoError(f"sample {key!r} of {shard} has the label {text[:20]!r}, not a class number")
    image = parts.pop(image_ext)
    yield key, image, int(text)
