"""Labelled image sets: a folder of class folders, `classes.txt`, or a CoOp split file.

Also the two sampling steps of the CoOp protocol that IPO follows: K shots per class
drawn with a seeded `random.sample`, and the base/novel split of the sorted labels.
"""

from __future__ import annotations

import math
import os
import random
import re
import unicodedata
from pathlib import Path

from ipo_cli.data.records import Dataset as Dataset
from ipo_cli.data.records import ImageItem as ImageItem
from ipo_cli.data.records import read_text as read_text
from ipo_cli.errors import IpoError, close_matches, shown
from ipo_cli.gates import json_in
from ipo_cli.gates.paths import check_name, check_path, name_ok

RUN_MARKER = ".ipo-run"  # optimize/run_folder.py MARKER (data may not import optimize)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})


def normalize_name(name: str) -> str:
    """Case, spaces, `_` and `-` do not distinguish class names, nor how an accent is
    written (NFC "é" or NFD "e" + U+0301, as macOS file names store it)."""
    return re.sub(r"[\s_\-]+", " ", unicodedata.normalize("NFC", name).strip().lower()).strip()


def read_classes(path: Path, key: str | None = None) -> list[str]:
    """One class per line; blank lines and `#` comments are ignored. A comment starts a line
    or follows a space (as in a shell): a `#` inside a name is part of it (`C#`). Lines end at line feeds (and CRLF) only: a
    U+2028 inside a name is not a line break (str.splitlines would split there). A JSON file
    is read as CLIP_benchmark's classnames file, `{dataset: [names]}` (its
    en_classnames.json), and `key` (`--dataset`) picks the dataset; a file with one dataset
    needs no key."""
    path = check_path(path, "classes file", must_exist=True, kind="file")  # a folder or a FIFO: said as such
    text = read_text(path, "classes file")
    if path.suffix.lower() == ".json":
        lines = _classnames_json(path, text, key)
    else:
        lines = [re.split(r"(?:^|\s)#", line, maxsplit=1)[0] for line in text.split("\n")]
    names: list[str] = []
    seen: dict[str, str] = {}
    for line in lines:
        name = line.strip()
        if not name:
            continue
        if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
            raise IpoError(f"classes file {path}: the class {shown(name)} holds a control character or a line "
                           "or paragraph separator", "write each class name on its own line, as plain text")
        key = normalize_name(name)
        if key in seen:
            raise IpoError(
                f"classes file {path} names the class {name!r} twice (also as {seen[key]!r})",
                "keep one line per class",
            )
        seen[key] = name
        names.append(name)
    if not names:
        raise IpoError(f"classes file {path} names no class", "write one class name per line")
    return names


def _classnames_json(path: Path, text: str, key: str | None) -> list[str]:
    data = json_in.loads(text, f"classes file {path}")
    if isinstance(data, list):
        data = {"": data}
    if not isinstance(data, dict) or not data:
        raise IpoError(f"classes file {path} is not {{dataset: [class names]}}")
    if key is None:
        if len(data) > 1:
            raise IpoError(f"classes file {path} holds {len(data)} datasets",
                           f"pass --dataset with one of: {', '.join(list(data)[:10])}")
        key = next(iter(data))
    lookup = {k.lower(): k for k in data}
    if key.lower() not in lookup:
        raise IpoError(f"classes file {path} has no dataset {key!r}" + close_matches(key, list(data)),
                       f"choose one of: {', '.join(list(data)[:10])}")
    names = data[lookup[key.lower()]]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise IpoError(f"classes file {path} [{key}] must be a list of class names")
    return names


def list_images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _class_folders(root: Path) -> list[Path]:
    check_path(root, "images folder", kind="dir")
    if not root.exists():
        raise IpoError(f"images folder {root} does not exist", "pass a folder with one sub-folder per class")
    if not root.is_dir():
        raise IpoError(f"{root} is not a folder", "pass a folder with one sub-folder per class")
    # a run folder of ipo's own (its .ipo-run marker, optimize/run_folder.py) is output, not a class
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and not (p / RUN_MARKER).exists())
    if not folders:
        raise IpoError(
            f"images folder {root} has no class sub-folders",
            "put each class's images in a sub-folder named after the class",
        )
    return folders


def load_folder(root: Path, classnames: list[str] | None = None) -> Dataset:
    """A folder with one sub-folder per class.

    Without `classnames` every sub-folder is a class, its name with `_` read as a space.
    With them, names match sub-folders case-insensitively, with spaces, `_` and `-` alike.
    """
    root = Path(root)
    folders = _class_folders(root)
    by_key: dict[str, Path] = {}
    for folder in folders:
        first = by_key.setdefault(normalize_name(folder.name), folder)
        if first is not folder:  # Fish/ and fish/ would both read Fish/: one class, said before any work
            raise IpoError(f"sub-folders {first.name!r} and {folder.name!r} of {root} name the same class "
                           "(class names are compared without case, spaces, '_' and '-')",
                           "merge the two folders or rename one")
    if classnames is None:
        classnames = [folder.name.replace("_", " ") for folder in folders]
    else:
        missing = [name for name in classnames if normalize_name(name) not in by_key]
        if missing:
            raise IpoError(
                f"no sub-folder of {root} matches the class(es): {', '.join(missing)}",
                "name each class's folder after it (case, spaces, '_' and '-' do not matter)",
            )
        wanted = {normalize_name(name) for name in classnames}
        extra = [folder.name for folder in folders if normalize_name(folder.name) not in wanted]
        if extra:
            raise IpoError(
                f"sub-folder(s) of {root} match no class in the classes file: {', '.join(extra)}",
                "add them to the classes file or move them out of the images folder",
            )
    items: list[ImageItem] = []
    empty: list[str] = []
    for label, name in enumerate(classnames):
        images = list_images(by_key[normalize_name(name)])
        if not images:
            empty.append(name)
        items.extend(ImageItem(path, label) for path in images)
    if empty:
        raise IpoError(
            f"class(es) with no images in {root}: {', '.join(empty)}",
            f"add images with one of the extensions {', '.join(sorted(IMAGE_EXTENSIONS))}",
        )
    return Dataset(list(classnames), items, root)


def load_split(split_file: Path, root: Path, part: str = "train", allow_outside_root: bool = False) -> Dataset:
    """A CoOp split file: {"train"|"val"|"test": [[relative path, label, classname], ...]}.

    Paths are relative to the image root; one that leads outside it (`..`, an absolute
    path) is refused unless `allow_outside_root`."""
    split_file, root = check_path(split_file, "split file", must_exist=True, kind="file"), Path(root)
    data = json_in.loads(read_text(split_file, "split file"), f"split file {split_file}")
    if not isinstance(data, dict) or data.get(part) is None:
        raise IpoError(
            f"split file {split_file} has no {part!r} part",
            "a CoOp split file is {\"train\": [...], \"val\": [...], \"test\": [...]}",
        )
    names: dict[int, str] = {}
    root_text = os.fspath(root)
    for split_part in ("train", "val", "test"):
        entries = data.get(split_part)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise IpoError(f"split file {split_file}: {split_part!r} is a {type(entries).__name__}, not a list",
                           "each part is a list of [relative path, integer label, class name]")
        for n, entry in enumerate(entries):
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and entry[0]
                    and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] >= 0
                    and isinstance(entry[2], str)):
                raise IpoError(
                    f"split file {split_file} has a malformed entry {n} in {split_part!r}: {str(entry)[:80]}",
                    "each entry is [relative path, integer label, class name]",
                )
            if not name_ok(os.path.join(root_text, entry[0])):  # the message only for a bad one
                check_name(root / entry[0], f"split file {split_file} entry {n} in {split_part!r}")
            named = names.setdefault(entry[1], entry[2])
            if named != entry[2]:  # one label, two names: which class is it?
                raise IpoError(f"split file {split_file} names label {entry[1]} both {shown(named)} and "
                               f"{shown(entry[2])} (entry {n} in {split_part!r})" + _difference(named, entry[2]),
                               "each label is one class: give it one name throughout")
    if sorted(names) != list(range(len(names))):
        raise IpoError(f"split file {split_file} does not number its labels 0..n-1")
    items = [ImageItem(root / entry[0], entry[1]) for entry in data[part]]
    if not items:
        raise IpoError(f"the {part!r} part of split file {split_file} is empty")
    missing = _check_split_files(split_file, root, items, allow_outside_root)
    if missing:
        listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise IpoError(
            f"split file {split_file} points at {len(missing)} missing image(s): {listed}",
            "pass the dataset's image folder with --images",
        )
    classnames = [names[i].replace("_", " ") for i in range(len(names))]
    return Dataset(classnames, items, root)


def _check_split_files(split_file: Path, root: Path, items: list[ImageItem], allow_outside_root: bool) -> list[str]:
    """Every entry inside the image root (unless allowed) and a file; returns the missing ones.
    One `resolve` and one `os.scandir` per folder, and one `resolve` per symbolic link, instead
    of a `resolve` and a `stat` per entry: ImageNet's 1.28 M training entries sit in 1,000
    folders (a split of 1e6 entries took 38 s per entry, under 10 s per folder, on a 2-core CPU)."""
    base = root.resolve()
    folders: dict[Path, list[ImageItem]] = {}
    for item in items:
        folders.setdefault(item.path.parent, []).append(item)

    def outside(item: ImageItem) -> IpoError:
        return IpoError(f"split file {split_file} points outside the image root {root}: {item.path}",
                        "pass --allow-outside-root if that is intended")

    if not allow_outside_root:
        for folder, members in folders.items():
            if not folder.resolve().is_relative_to(base):
                # an entry may still name the root itself ("." or "a/.."): the entries decide
                for item in members:
                    if not item.path.resolve().is_relative_to(base):
                        raise outside(item)
    missing = []
    for folder, members in folders.items():
        try:
            with os.scandir(folder) as listing:
                entries = {entry.name: entry for entry in listing}
        except OSError:
            entries = {}
        for item in members:
            entry = entries.get(item.path.name)
            try:
                is_file = entry is not None and entry.is_file()  # follows a symbolic link, as Path.is_file
                link = entry is not None and entry.is_symlink()
            except OSError:
                is_file = link = False
            if is_file and link and not allow_outside_root and not item.path.resolve().is_relative_to(base):
                raise outside(item)
            if not is_file:
                missing.append(str(item.path))
    return missing


def _difference(a: str, b: str) -> str:
    """For two names that may print alike (NFC vs NFD, a look-alike letter): their code points."""
    if a == b or (a.isascii() and b.isascii()):
        return ""
    return f" (as code points: {code_points(a)} vs {code_points(b)})"


def code_points(text: str, limit: int = 40) -> str:
    """`text` with every non-ASCII character written as its code point (`e\\u0301`), so
    that two names that look the same on a terminal can be told apart."""
    shown_text = "".join(c if c.isascii() and c.isprintable() else f"\\u{ord(c):04x}" for c in text[:limit])
    return shown_text + ("..." if len(text) > limit else "")


def few_shot(dataset: Dataset, shots: int, seed: int | random.Random, strict: bool = True) -> Dataset:
    """K images per class, drawn exactly as Dassl's `generate_fewshot_dataset` (called by
    CoOp's dataset classes) draws them: the items are grouped by label in the order each
    label first appears in the list (`split_dataset_by_label`, a defaultdict), and each
    group gives `random.sample(items, K)` from one generator seeded once; a group with
    fewer than K items is taken whole. Pass a `random.Random` to continue a generator (CoOp
    draws the val sample right after the train sample from the same one).

    `strict` (the training sample): a class with fewer than K images is an error instead,
    since the user asked for K."""
    if shots < 1:
        raise IpoError(f"--shots must be at least 1, not {shots}")
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    groups: dict[int, list[ImageItem]] = {}
    for item in dataset.items:
        groups.setdefault(item.label, []).append(item)
    if strict:
        for label in range(len(dataset.classnames)):
            held = len(groups.get(label, []))
            if held < shots:
                smallest = min(len(groups.get(i, [])) for i in range(len(dataset.classnames)))
                raise IpoError(
                    f"--shots {shots} is more than class {dataset.classnames[label]!r} holds ({held} images)",
                    f"use --shots {max(smallest, 1)} or add images",
                )
    sampled: list[ImageItem] = []
    for items in groups.values():
        sampled.extend(rng.sample(items, shots) if len(items) >= shots else items)
    return Dataset(dataset.classnames, sampled, dataset.root, list(dataset.original_labels), dataset.image_loading)


def base_novel_labels(n_classes: int) -> tuple[list[int], list[int]]:
    """CoOp's split: of the sorted labels, the first ceil(n/2) are base, the rest novel."""
    m = math.ceil(n_classes / 2)
    return list(range(m)), list(range(m, n_classes))


def split_base_novel(dataset: Dataset) -> tuple[Dataset, Dataset]:
    base, novel = base_novel_labels(len(dataset.classnames))
    return dataset.subset_classes(base), dataset.subset_classes(novel)


def load_dataset(
    images: Path,
    classes_file: Path | None = None,
    split_file: Path | None = None,
    split_part: str = "train",
    allow_outside_root: bool = False,
    classes_key: str | None = None,
    classnames: list[str] | None = None,
    cache_dir: Path | str | None = None,
) -> Dataset:
    """The one entry point the commands use: a split file if given, a CLIP_benchmark
    webdataset folder (data/shards.py, `split_part` its split folder), else a class folder.
    `classnames` (those a run's prompts.json recorded) stand in for a classes file."""
    images = check_path(images, "images folder")  # a name the OS refuses is one line (gates/paths.py)
    if split_file is None:
        from ipo_cli.data import shards

        if shards.is_shard_folder(images):
            names = read_classes(classes_file, classes_key) if classes_file is not None else classnames
            return shards.load_shards(images, split_part, cache_dir, names)
    if split_file is not None:
        if not images.is_dir():
            raise IpoError(f"images folder {images} does not exist")
        dataset = load_split(split_file, images, split_part, allow_outside_root)
        if classes_file is not None:
            given = [normalize_name(n) for n in read_classes(classes_file, classes_key)]
            if given != [normalize_name(n) for n in dataset.classnames]:
                raise IpoError(
                    f"classes file {classes_file} does not list the split file's classes in label order",
                    "leave out --classes with --split; the split file names its classes",
                )
        return dataset
    if classes_file is not None:
        classnames = read_classes(classes_file, classes_key)
    return load_folder(images, classnames)


IMAGE_LOADINGS = ("ipo", "reference")


def check_image_loading(mode: str) -> str:
    if mode not in IMAGE_LOADINGS:
        raise IpoError(f"--image-loading must be reference or ipo, not {mode!r}")
    return mode


def load_image(path: Path, mode: str = "ipo"):
    """An RGB Pillow image.

    "ipo" (a user's photos): EXIF orientation applied, transparency composited on white.
    "reference" (the field's datasets): `convert("RGB")` and nothing else, as the reference
    code loads them, so that numbers compare: Dassl's `read_image`
    (KaiyangZhou/Dassl.pytorch dassl/utils/tools.py: `Image.open(path).convert("RGB")`)
    and CLIP_benchmark (torchvision's ImageFolder loader, or webdataset's PIL decoder,
    then open_clip's preprocessing, whose first step is `image.convert("RGB")`).

    Raises `UnreadableImage` for a file Pillow cannot decode fully (truncated included).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from ipo_cli.gates.images import decoded, open_checked

    try:
        with open_checked(path) as img:  # size and aspect checked before decoding (gates/images.py)
            img.seek(0)
            if mode == "reference":
                return decoded(img).convert("RGB")
            img = ImageOps.exif_transpose(decoded(img))
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            if img.mode in ("RGBA", "LA", "PA"):
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(path, str(exc) or type(exc).__name__) from None


class UnreadableImage(Exception):
    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
