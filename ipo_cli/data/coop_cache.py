"""CoOp's cached samples, read without running anything they hold.

CoOp's dataset classes (KaiyangZhou/CoOp at ff61507, e.g. datasets/caltech101.py) load
`DATASET/split_fewshot/shot_{K}-seed_{S}.pkl` when it exists instead of drawing the
few-shot sample, and ImageNet (datasets/imagenet.py) loads `imagenet/preprocessed.pkl`
instead of listing its folders: `{"train": [...], "val": [...]}` (ImageNet's few-shot file:
`{"train": [...]}`) and `{"train": [...], "test": [...]}`, lists of Dassl `Datum` objects
(KaiyangZhou/Dassl.pytorch dassl/data/datasets/base_dataset.py: attributes `_impath`,
`_label`, `_domain`, `_classname`), pickled with `pickle.HIGHEST_PROTOCOL`. Users who ran
CoOp have these files, and reproducing their numbers needs the same images.

A pickle can run any code on load, so these are read with an unpickler that builds only
a stand-in for `Datum` (a plain record) and builtin containers, and refuses anything else
with a one-line error before anything runs. Paths are absolute paths of the machine that
made the file: each is mapped onto this dataset's image folder by what follows the image
folder's name in it, and a path that maps to no file is an error naming it.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from ipo_cli.data.folders import Dataset, ImageItem
from ipo_cli.errors import IpoError, shown

# where pickle records Datum's class: its module and name
DATUM_CLASSES = {("dassl.data.datasets.base_dataset", "Datum"), ("dassl.data.datasets", "Datum")}
MAX_BYTES = 512 << 20


class DatumRecord:
    """What a Dassl `Datum` holds, as plain data: built by the unpickler in its place."""

    def __init__(self, *args, **kwargs):  # a REDUCE with arguments builds nothing else
        self.__dict__.update(kwargs)


def _reconstructor(cls, base, state):
    """copyreg._reconstructor, for protocols 0 and 1: only a DatumRecord from object."""
    if cls is not DatumRecord or base is not object or state is not None:
        raise pickle.UnpicklingError("copyreg._reconstructor of something other than Datum")
    return DatumRecord()


_ALLOWED = {
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("builtins", "object"): object,
    ("__builtin__", "object"): object,
    ("collections", "OrderedDict"): OrderedDict,
}


class _Refused(Exception):
    pass


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in DATUM_CLASSES:
            return DatumRecord
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise _Refused(f"{module}.{name}")


def load_pickle(path: Path):
    """The content of a CoOp pickle: Datum records in builtin containers, or a one-line error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IpoError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise IpoError(f"{path} is {len(data)} bytes, more than a CoOp sample file holds")
    try:
        return _Unpickler(io.BytesIO(data)).load()
    except _Refused as exc:
        raise IpoError(f"{path} asks to build {exc}, which a CoOp sample file never holds; nothing was run",
                       "delete it, or pass --fresh-sample to draw the sample anew") from None
    except Exception as exc:  # a malformed pickle fails in many ways; none of them runs code
        raise IpoError(f"{path} is not a CoOp sample file ({type(exc).__name__}: {str(exc)[:80]})",
                       "delete it, or pass --fresh-sample to draw the sample anew") from None


@dataclass
class Entry:
    path: str
    label: int
    classname: str


def _entries(value, path: Path, part: str) -> list[Entry]:
    if not isinstance(value, list):
        raise IpoError(f"{path}: its {part!r} part is a {type(value).__name__}, not a list of Datum")
    out = []
    for n, item in enumerate(value):
        d = getattr(item, "__dict__", None) if isinstance(item, DatumRecord) else None
        if not (d and isinstance(d.get("_impath"), str) and isinstance(d.get("_label"), int)
                and not isinstance(d.get("_label"), bool) and d["_label"] >= 0):
            raise IpoError(f"{path}: entry {n} of {part!r} is not a Datum with an image path and a label")
        classname = d.get("_classname", "")
        if not isinstance(classname, str):  # shown bounded: it may be nested 100,000 deep (errors.shown)
            raise IpoError(f"{path}: entry {n} of {part!r} has a class name that is not text: {shown(classname)}")
        out.append(Entry(d["_impath"], d["_label"], classname))
    return out


def map_path(foreign: str, image_dir: Path, anchors: list[str]) -> Path:
    """Where a path of another machine lies under this dataset's image folder: what follows
    the last occurrence of the anchor (the dataset folder and image folder names) in it."""
    pure = PureWindowsPath(foreign) if "\\" in foreign and "/" not in foreign else PurePosixPath(foreign)
    parts = list(pure.parts)
    for anchor in anchors:
        need = [p for p in anchor.split("/") if p]
        for i in range(len(parts) - len(need), -1, -1):
            if parts[i:i + len(need)] == need:
                rest = parts[i + len(need):]
                if rest and ".." not in rest:
                    return image_dir.joinpath(*rest)
    raise IpoError(f"the cached sample's path {foreign} is not under a folder named {anchors[-1]!r}",
                   "pass --fresh-sample to draw the sample anew")


def to_dataset(entries: list[Entry], classnames: list[str], image_dir: Path, anchors: list[str],
               source: Path) -> Dataset:
    items = []
    for e in entries:
        if e.label >= len(classnames):
            raise IpoError(f"{source}: label {shown(e.label)} of {shown(e.path)} is beyond the dataset's "
                           f"{len(classnames)} classes")
        local = map_path(e.path, image_dir, anchors)
        if not local.is_file():
            raise IpoError(f"{source} names {e.path}, which maps to {local}, and there is no such file",
                           "check --data-root, or pass --fresh-sample to draw the sample anew")
        items.append(ImageItem(local, e.label))
    return Dataset(list(classnames), items, image_dir, image_loading="reference")


def read_parts(path: Path, parts: tuple[str, ...]) -> dict[str, list[Entry]]:
    data = load_pickle(path)
    if not isinstance(data, dict):
        raise IpoError(f"{path} is not a CoOp sample file (a {type(data).__name__}, not a dict)")
    missing = [p for p in parts if p not in data]
    if missing:
        raise IpoError(f"{path} has no {missing[0]!r} part", "pass --fresh-sample to draw the sample anew")
    return {p: _entries(data[p], path, p) for p in parts}


def fewshot_file(dataset_dir: Path, shots: int, seed: int) -> Path:
    """CoOp's name for the sample of K shots with seed S (datasets/*.py)."""
    return Path(dataset_dir) / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"


@dataclass
class CachedSample:
    train: Dataset
    val: Dataset | None
    path: Path


def preprocessed_imagenet(folder: Path, image_dir: Path, part: str) -> Dataset | None:
    """ImageNet's `preprocessed.pkl` (train, and val as "test") when present: it fixes the
    order the images were listed in on the machine that made it."""
    path = Path(folder) / "preprocessed.pkl"
    if not path.is_file():
        return None
    entries = read_parts(path, ("train", "test"))["test" if part == "test" else "train"]
    names: dict[int, str] = {}
    for e in entries:
        names.setdefault(e.label, e.classname)
    if sorted(names) != list(range(len(names))):
        raise IpoError(f"{path} does not number its labels 0..n-1")
    return to_dataset(entries, [names[i] for i in range(len(names))], image_dir,
                      [f"{Path(folder).name}/{image_dir.name}", image_dir.name], path)
