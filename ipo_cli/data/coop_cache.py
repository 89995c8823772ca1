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
with a one-line error before anything runs. Before that, the file's size is checked from
its metadata (`MAX_BYTES`) and its opcodes pass the pickle gate (gates/pickles.py: memo
indices in order, lengths inside the file, a bound on the objects the load builds). The
records are counted as CoOp makes them: Dassl's `generate_fewshot_dataset`
(dassl/data/datasets/base_dataset.py) draws `random.sample(items, num_shots)` per class,
and CoOp's datasets call it with `repeat` left False (`num_shots` for train,
`min(num_shots, 4)` for val, e.g. CoOp datasets/oxford_pets.py), so a few-shot file holds
at most K records a class (K from its name) and never one image twice. Paths are absolute paths of the machine that
made the file: each is mapped onto this dataset's image folder by what follows the image
folder's name in it, and a path that maps to no file is an error naming it.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from ipo_cli.data.folders import Dataset, ImageItem
from ipo_cli.errors import InvalidInput, IpoError, shown
from ipo_cli.gates import pickles

# where pickle records Datum's class: its module and name
DATUM_CLASSES = {("dassl.data.datasets.base_dataset", "Datum"), ("dassl.data.datasets", "Datum")}
MAX_BYTES = 512 << 20


class DatumRecord:
    """What a Dassl `Datum` holds, as plain data: built by the unpickler in its place. Four
    slots and no `__dict__`: a record costs 72 bytes however many refer to one state."""

    __slots__ = ("_impath", "_label", "_domain", "_classname")

    def __init__(self, *args, **kwargs):  # a REDUCE with arguments builds nothing else
        pass

    def __setstate__(self, state):
        """BUILD: Datum's `__dict__` (or protocol 2's `(dict, slots)` pair); only its four
        attributes are kept."""
        if isinstance(state, tuple) and len(state) == 2:
            state = state[0] or state[1]
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("a Datum's state is not a dict")
        for name in self.__slots__:
            if name in state:
                setattr(self, name, state[name])


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


FRESH_HINT = "delete it, or pass --fresh-sample to draw the sample anew"


def read_capped(path: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """A regular file's bytes, its size checked from its metadata before a byte is read
    (and the read capped at that size, should it grow meanwhile)."""
    from ipo_cli.gates.paths import check_path, os_error

    check_path(path, "CoOp sample file", must_exist=True, kind="file")  # no FIFO or device
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise InvalidInput(f"{path} is {size} bytes, more than the {max_bytes >> 20} MiB a CoOp sample "
                                   "file can take; nothing was read", FRESH_HINT)
            data = fh.read(size + 1)  # read(n) allocates n first: the size, not the cap
    except OSError as exc:
        raise os_error(exc, f"cannot read {path}") from None
    if len(data) > size:
        raise InvalidInput(f"{path} grew while it was read", "run the same command again")
    return data


def load_pickle(path: Path):
    """The content of a CoOp pickle: Datum records in builtin containers, or a one-line error."""
    path = Path(path)
    data = read_capped(path)
    pickles.check(data, str(path), FRESH_HINT, "a CoOp sample file")  # memo, lengths, objects: bounded before the load
    try:
        return _Unpickler(io.BytesIO(data)).load()
    except _Refused as exc:
        raise InvalidInput(f"{path} asks to build {exc}, which a CoOp sample file never holds; nothing was run",
                           FRESH_HINT) from None
    except Exception as exc:  # a malformed pickle fails in many ways; none of them runs code
        raise InvalidInput(f"{path} is not a CoOp sample file ({type(exc).__name__}: {str(exc)[:80]})",
                           FRESH_HINT) from None


@dataclass
class Entry:
    path: str
    label: int
    classname: str


MAX_LABEL = 1 << 31


def _entries(value, path: Path, part: str, per_class: int | None = None) -> list[Entry]:
    """The records of one part, each image once and, for a few-shot file, at most
    `per_class` a label (as CoOp draws them): a refusal comes at the first record over,
    before the rest are looked at."""
    if not isinstance(value, list):
        raise InvalidInput(f"{path}: its {part!r} part is a {type(value).__name__}, not a list of Datum")
    out = []
    seen: set[str] = set()
    counts: dict[int, int] = {}
    for n, item in enumerate(value):
        impath = getattr(item, "_impath", None) if isinstance(item, DatumRecord) else None
        label = getattr(item, "_label", None) if isinstance(item, DatumRecord) else None
        if isinstance(impath, str) and isinstance(label, int) and not isinstance(label, bool) \
                and not 0 <= label < MAX_LABEL:  # shown bounded: 10**5000 has no str() (errors.shown)
            raise InvalidInput(f"{path}: entry {n} of {part!r} has the label {shown(label)}, not one from 0 to "
                               f"{MAX_LABEL - 1}", FRESH_HINT)
        if not (isinstance(impath, str) and isinstance(label, int) and not isinstance(label, bool)):
            raise InvalidInput(f"{path}: entry {n} of {part!r} is not a Datum with an image path and a label")
        if impath in seen:
            raise InvalidInput(f"{path}: entry {n} of {part!r} names {impath[:120]!r} again; a CoOp sample "
                               "never holds an image twice", FRESH_HINT)
        seen.add(impath)
        counts[label] = counts.get(label, 0) + 1
        if per_class is not None and counts[label] > per_class:
            raise InvalidInput(f"{path}: its {part!r} part holds more than {per_class} images of label {label}, "
                               f"more than CoOp draws for this file", FRESH_HINT)
        classname = getattr(item, "_classname", "")
        if not isinstance(classname, str):  # shown bounded: it may be nested 100,000 deep (errors.shown)
            raise InvalidInput(f"{path}: entry {n} of {part!r} has a class name that is not text: {shown(classname)}")
        out.append(Entry(impath, label, classname))
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


_FEWSHOT_NAME = re.compile(r"shot_(\d{1,6})-seed_\d{1,9}\.pkl")


def per_class_limit(path: Path, part: str) -> int | None:
    """How many records a class CoOp writes into this file's `part`: K for train and
    min(K, 4) for val in `shot_K-seed_S.pkl`; None for other files (preprocessed.pkl)."""
    match = _FEWSHOT_NAME.fullmatch(Path(path).name)
    if not match:
        return None
    shots = int(match.group(1))
    return min(shots, 4) if part == "val" else shots


def read_parts(path: Path, parts: tuple[str, ...]) -> dict[str, list[Entry]]:
    data = load_pickle(path)
    if not isinstance(data, dict):
        raise InvalidInput(f"{path} is not a CoOp sample file (a {type(data).__name__}, not a dict)")
    missing = [p for p in parts if p not in data]
    if missing:
        raise InvalidInput(f"{path} has no {missing[0]!r} part", "pass --fresh-sample to draw the sample anew")
    return {p: _entries(data[p], path, p, per_class_limit(path, p)) for p in parts}


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
