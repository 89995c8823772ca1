"""On-disk stores, built on diskcache.

Keys are strings that name everything the value depends on; values are plain bytes
(`.npy` arrays loaded with `allow_pickle=False`) or UTF-8 JSON, never pickles: a cache
directory shared between users must not be a way to run code. diskcache stores `str` and
`bytes` natively, without pickling, and `SafeDisk` refuses to unpickle anything: a row in
pickle mode (planted, or written by another program) is a miss, deleted and counted.

A damaged store (not a database any more) is moved aside, named in one warning, and
rebuilt; a read-only store serves its hits and skips writes, with one warning; a full disk
stops the command with a one-line error, keeping what was already written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipo_cli.errors import IpoError

STORES = ("embeddings", "captions", "generations")
_warn: Callable[[str], None] = lambda message: None  # noqa: E731 - the CLI sets this


def set_warner(warn: Callable[[str], None]) -> None:
    """Where the stores' one-line warnings go (the CLI prints them)."""
    global _warn
    _warn = warn


class PickleRefused(Exception):
    """A value or key stored in pickle mode: never loaded."""


def _safe_disk():
    import diskcache

    class SafeDisk(diskcache.Disk):
        """diskcache's Disk without the one thing that runs code: unpickling."""

        def get(self, key, raw):
            if not raw:
                raise PickleRefused("pickled key")
            return super().get(key, raw)

        def fetch(self, mode, filename, value, read):
            if mode == diskcache.core.MODE_PICKLE:
                raise PickleRefused("pickled value")
            return super().fetch(mode, filename, value, read)

    return SafeDisk


def _is_full(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "disk is full" in str(exc) \
        or "database or disk is full" in str(exc)


def _is_readonly(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM)) \
        or "readonly" in text or "read-only" in text or "unable to open database" in text


_chosen: list[Path] = []  # the running command's --cache-dir (`using_root`), innermost last
_third_party: dict[str, str] = {}  # the cache variables ipo itself set, and to what


def cache_root(override: Path | str | None = None) -> Path:
    """`--cache-dir`, else the running command's `--cache-dir` (`using_root`), else
    `IPO_CACHE_DIR`, else the user cache directory."""
    if override:
        return Path(override).expanduser()
    if _chosen:
        return _chosen[-1]
    env = os.environ.get("IPO_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("ipo", appauthor=False))


THIRD_PARTY = (("MPLCONFIGDIR", "matplotlib"), ("TORCHINDUCTOR_CACHE_DIR", "torchinductor"),
               ("TRITON_CACHE_DIR", "triton"))


def keep_third_party_caches_inside(root: Path) -> None:
    """matplotlib's font cache and torch's compile caches go under ipo's cache directory
    (unless the user set them): ipo writes only inside the folders it names. matplotlib
    reads MPLCONFIGDIR (matplotlib/__init__.py, _get_config_or_cache_dir), torch inductor
    TORCHINDUCTOR_CACHE_DIR (torch/_inductor/runtime/cache_dir_utils.py), triton
    TRITON_CACHE_DIR. A variable ipo set itself follows a later `--cache-dir`; one the user
    set is left alone."""
    for variable, folder in THIRD_PARTY:
        current = os.environ.get(variable)
        if not current or current == _third_party.get(variable):
            os.environ[variable] = _third_party[variable] = str(Path(root) / folder)


@contextlib.contextmanager
def using_root(override: Path | str | None):
    """The cache folder for everything a command caches, while it runs: `--cache-dir`
    (else IPO_CACHE_DIR, else the default) for every store, the shard images of
    webdataset folders (data/shards.py asks `cache_root()`), and matplotlib's and torch's
    own caches. The CLI wraps each command that takes --cache-dir in it (cli/app.py), so
    no library call has to pass the folder on for it to be followed."""
    saved = {variable: os.environ.get(variable) for variable, _ in THIRD_PARTY}
    saved_set = dict(_third_party)
    _chosen.append(Path(override).expanduser() if override else cache_root())
    keep_third_party_caches_inside(_chosen[-1])
    try:
        yield _chosen[-1]
    finally:
        _chosen.pop()
        for variable, value in saved.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value
        _third_party.clear()
        _third_party.update(saved_set)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def key_of(*parts: Any) -> str:
    """A short stable key from JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def encode_array(array) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_array(blob: bytes):
    import numpy as np

    return np.load(io.BytesIO(blob), allow_pickle=False)


class Store:
    """One named diskcache store with typed, pickle-free get/set.

    A value that cannot be decoded (a corrupt entry, a pickle) is deleted and reported as a
    miss, so the caller recomputes it.
    """

    def __init__(self, root: Path, name: str):
        self.path = Path(root) / name
        self.name = name
        self.dropped = 0  # undecodable values removed
        self.pickles_refused = 0
        self.read_only = False
        self._ro: sqlite3.Connection | None = None
        self._cache = None
        try:
            self._open()
        except (sqlite3.DatabaseError, OSError) as exc:
            if _is_full(exc):
                raise IpoError(f"the disk holding the cache {self.path} is full", "free some space, "
                               "or point --cache-dir / IPO_CACHE_DIR elsewhere") from None
            if _is_readonly(exc) or (isinstance(exc, sqlite3.OperationalError) and self._readable_db()):
                self._open_read_only(exc)
            elif isinstance(exc, sqlite3.DatabaseError):
                self._move_aside(exc)
            else:
                raise IpoError(f"cannot use the cache {self.path}: {exc}",
                               "check the folder, or point --cache-dir / IPO_CACHE_DIR elsewhere") from None

    def _open(self) -> None:
        import diskcache

        for folder in (self.path, *self.path.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise IpoError(f"the cache path {folder} is a file, not a folder",
                                   "remove it, or point --cache-dir / IPO_CACHE_DIR elsewhere")
                break
        self.path.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(str(self.path), size_limit=2**40, disk=_safe_disk())

    def _readable_db(self) -> bool:
        return (self.path / "cache.db").is_file() and os.access(self.path / "cache.db", os.R_OK) and \
            not os.access(self.path, os.W_OK)

    def _open_read_only(self, exc: BaseException) -> None:
        db = self.path / "cache.db"
        self.read_only = True
        # diskcache keeps its index in WAL mode (diskcache/core.py, DEFAULT_SETTINGS
        # "sqlite_journal_mode": "wal"); a WAL database opened with mode=ro still needs to
        # create its -shm file, which a read-only mount refuses (https://www.sqlite.org/wal.html,
        # "Read-Only Databases"). `immutable=1` then opens it without locks or the -shm file
        # (https://www.sqlite.org/uri.html#uriimmutable): right where nothing can write it.
        for query in ("mode=ro", "mode=ro&immutable=1"):
            if db.is_file():
                try:
                    self._ro = sqlite3.connect(f"file:{db}?{query}", uri=True, check_same_thread=False)
                    self._ro.execute("SELECT 1 FROM Cache LIMIT 1")
                    break
                except sqlite3.DatabaseError:
                    self._ro = None
        _warn(f"the cache {self.path} is read-only ({exc}); using what it holds, writing nothing new")

    def _move_aside(self, exc: BaseException) -> None:
        if not is_own_store(self.path):
            raise IpoError(f"the cache {self.path} cannot be opened ({exc}) and holds files ipo did not make; "
                           "ipo leaves it as it is", "point --cache-dir / IPO_CACHE_DIR elsewhere") from None
        aside = self.path.with_name(f"{self.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            self.path.rename(aside)
        except OSError as move_error:
            raise IpoError(f"the cache {self.path} is damaged ({exc}) and cannot be moved aside: {move_error}",
                           "run: ipo cache clear") from None
        _warn(f"the cache {self.path} was damaged ({exc}); moved it to {aside} and started a new one")
        self._open()

    # ---- reading ------------------------------------------------------------------------
    def _get_raw(self, key: str, kind: type) -> Any:
        try:
            value = self._read(key)
        except PickleRefused:
            self.pickles_refused += 1
            if self.pickles_refused == 1:
                _warn(f"the cache {self.path} held values in pickle mode, which ipo never writes; "
                      "they were not loaded, and are deleted and recomputed")
            self._drop(key)
            return None
        except (sqlite3.DatabaseError, OSError, UnicodeDecodeError):
            return None  # an unreadable row or value file is a miss
        if value is None:
            return None
        if not isinstance(value, kind):
            self._drop(key)
            return None
        return value

    def _read(self, key: str) -> Any:
        if self._cache is not None:
            return self._cache.get(key, default=None, retry=True)
        if self._ro is None:
            return None
        row = self._ro.execute("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone()
        if row is None:
            return None
        return _safe_disk()(str(self.path)).fetch(row[0], row[1], row[2], False)

    def _drop(self, key: str) -> None:
        self.dropped += 1
        if self._cache is not None:
            try:
                self._cache.delete(key, retry=True)
            except (sqlite3.DatabaseError, OSError):
                pass

    def _write(self, key: str, value: Any) -> None:
        if self._cache is None:
            return  # read-only: said once when opened
        try:
            self._cache.set(key, value, retry=True)
        except (sqlite3.DatabaseError, OSError) as exc:
            if _is_full(exc):
                raise IpoError(f"the disk holding the cache {self.path} is full; what was computed so far "
                               "is kept", "free some space and run the same command again") from None
            if _is_readonly(exc):
                self._cache = None
                self.read_only = True
                _warn(f"the cache {self.path} became read-only ({exc}); writing nothing new")
                return
            raise IpoError(f"cannot write to the cache {self.path}: {exc}", "run: ipo cache clear") from None

    def get_array(self, key: str):
        blob = self._get_raw(key, bytes)
        if blob is None:
            return None
        try:
            return decode_array(blob)
        except (ValueError, OSError, EOFError):
            self._drop(key)
            return None

    def set_array(self, key: str, array) -> None:
        self._write(key, encode_array(array))

    def get_json(self, key: str) -> Any:
        text = self._get_raw(key, str)
        if text is None:
            return None
        try:
            from ipo_cli.gates import json_in

            return json_in.loads(text, f"cache {self.name}")
        except IpoError:
            self._drop(key)
            return None

    def set_json(self, key: str, value: Any) -> None:
        self._write(key, json.dumps(value))

    def __len__(self) -> int:
        if self._cache is not None:
            return len(self._cache)
        if self._ro is not None:
            return int(self._ro.execute("SELECT COUNT(*) FROM Cache").fetchone()[0])
        return 0

    def volume(self) -> int:
        return self._cache.volume() if self._cache is not None else 0

    def clear(self) -> int:
        if self._cache is None:
            raise IpoError(f"the cache {self.path} is read-only; it cannot be cleared",
                           "check the folder's permissions")
        return self._cache.clear(retry=True)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        if self._ro is not None:
            self._ro.close()


@dataclass
class StoreInfo:
    name: str
    path: str
    entries: int
    bytes: int


def info(root: Path) -> list[StoreInfo]:
    out = []
    for name in STORES:
        store = Store(root, name)
        out.append(StoreInfo(name, str(store.path), len(store), store.volume()))
        store.close()
    images = ShardImages(root, limit=SHARD_IMAGES_MAX)
    out.append(StoreInfo(SHARD_IMAGES, str(images.path), *images.usage()))
    return out


# ---- shard images --------------------------------------------------------------------
SHARD_IMAGES = "shard-images"
# The most the shard images may take in all; past it the ones least recently used by a
# command are removed first (never one the running command has stored or used).
SHARD_IMAGES_MAX = 20 << 30
_SHARD_NAME_RE = re.compile(r"[0-9a-f]{64}\.[a-z0-9]{1,8}(\.\d+\.tmp)?")
_SHARD_TMP = "tmp"  # images being streamed out of a shard (data/shards.py), named pid-random.ext
_SHARD_TMP_RE = re.compile(r"\d+-[0-9a-f]{12}\.[a-z0-9]{1,8}")


def shard_images_limit() -> int:
    """IPO_SHARD_IMAGES_MB, else SHARD_IMAGES_MAX (20 GiB)."""
    text = os.environ.get("IPO_SHARD_IMAGES_MB", "").strip()
    if not text:
        return SHARD_IMAGES_MAX
    if not re.fullmatch(r"[0-9]{1,9}", text) or int(text) < 1:
        raise IpoError(f"IPO_SHARD_IMAGES_MB must be a whole number of megabytes (1 or more), not {text[:20]!r}")
    return int(text) << 20


class ShardImages:
    """The images of webdataset shards, one file per distinct image under the cache
    (`CACHE/shard-images/ab/<sha256>.<ext>`): an image's embedding key is its bytes' hash
    exactly as for a file of a folder. The folder follows --cache-dir (`cache_root`), is
    listed by `ipo cache info` and emptied by `ipo cache clear`, and is bounded in total
    size: before a new image is written past the limit, the least recently used images
    not used by this command are removed; when that is not enough, one line says so."""

    def __init__(self, root: Path | str | None = None, limit: int | None = None):
        self.path = cache_root(root) / SHARD_IMAGES
        self.limit = shard_images_limit() if limit is None else limit
        self.used: set[str] = set()
        self._sizes: dict[str, tuple[int, float]] | None = None  # name -> (bytes, last used), read when needed

    def _scan(self) -> dict[str, tuple[int, float]]:
        if self._sizes is None:
            self._sizes = {}
            if self.path.is_dir():
                for folder in self.path.iterdir():
                    if len(folder.name) != 2 or not folder.is_dir() or folder.is_symlink():
                        continue
                    for entry in os.scandir(folder):
                        if entry.is_file(follow_symlinks=False) and _SHARD_NAME_RE.fullmatch(entry.name) \
                                and not entry.name.endswith(".tmp"):
                            info = entry.stat(follow_symlinks=False)
                            self._sizes[entry.name] = (info.st_size, info.st_mtime)
        return self._sizes

    def usage(self) -> tuple[int, int]:
        """(images, bytes) held."""
        sizes = self._scan()
        return len(sizes), sum(size for size, _ in sizes.values())

    def put(self, data: bytes, ext: str) -> Path:
        """The path of these bytes' file, written once (atomically) when new."""
        digest = hashlib.sha256(data).hexdigest()
        name = f"{digest}.{ext}"
        path = self.path / digest[:2] / name
        self.used.add(name)
        if path.is_file():
            try:
                os.utime(path)  # recently used: the last to be removed
            except OSError:
                pass
            return path
        self._make_room(len(data))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError as exc:
            from ipo_cli.gates.paths import os_error

            raise os_error(exc, f"cannot store a shard image under {self.path}",
                           "free some disk space, or pass --cache-dir") from None
        self._scan()[name] = (len(data), time.time())
        return path

    @property
    def tmp_dir(self) -> Path:
        return self.path / _SHARD_TMP

    def adopt(self, tmp: Path, digest: str, ext: str) -> Path:
        """`put` for an image already streamed to a temporary file of `tmp_dir` (its bytes'
        sha256 `digest`): moved to its content address, or dropped when that exists."""
        name = f"{digest}.{ext}"
        path = self.path / digest[:2] / name
        self.used.add(name)
        try:
            if path.is_file():
                tmp.unlink(missing_ok=True)
                os.utime(path)  # recently used: the last to be removed
                return path
            size = tmp.stat().st_size
            try:
                self._make_room(size)
            except IpoError:
                tmp.unlink(missing_ok=True)
                raise
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.replace(path)
        except OSError as exc:
            from ipo_cli.gates.paths import os_error

            raise os_error(exc, f"cannot store a shard image under {self.path}",
                           "free some disk space, or pass --cache-dir") from None
        self._scan()[name] = (size, time.time())
        return path

    def _make_room(self, incoming: int) -> None:
        sizes = self._scan()
        total = sum(size for size, _ in sizes.values()) + incoming
        if total <= self.limit:
            return
        for name, (size, _) in sorted(sizes.items(), key=lambda item: item[1][1]):
            if total <= self.limit:
                break
            if name in self.used:
                continue
            try:
                (self.path / name[:2] / name).unlink()
            except FileNotFoundError:
                pass
            except OSError:
                continue
            del sizes[name]
            total -= size
        if total > self.limit:
            raise IpoError(f"the shard images of this set need more than the {self.limit >> 20} MB the cache "
                           f"keeps for them ({self.path})",
                           "raise IPO_SHARD_IMAGES_MB, or pass --cache-dir on a disk with room")

    def clear(self) -> int:
        """Remove every shard image (only files named as ipo names them; a folder holding
        anything else is left as it is, with one line). Returns how many were removed."""
        if not self.path.exists():
            return 0
        if self.path.is_symlink() or not self.path.is_dir():
            raise IpoError(f"{self.path} is not ipo's folder of shard images; `ipo cache clear` left it as it is",
                           "check --cache-dir / IPO_CACHE_DIR")
        folders = list(self.path.iterdir())
        for folder in folders:
            tmp = folder.name == _SHARD_TMP  # what a stopped shard load left half-written
            ok = (len(folder.name) == 2 or tmp) and folder.is_dir() and not folder.is_symlink() and all(
                f.is_file() and not f.is_symlink() and (
                    _SHARD_TMP_RE.fullmatch(f.name) if tmp else _SHARD_NAME_RE.fullmatch(f.name) and f.name[:2] == folder.name)
                for f in folder.iterdir())
            if not ok:
                raise IpoError(f"{self.path} holds {folder.name!r}, which ipo did not make; `ipo cache clear` "
                               "deletes only ipo's own files and left everything as it is",
                               "check --cache-dir / IPO_CACHE_DIR")
        removed = 0
        for folder in folders:
            for item in folder.iterdir():
                item.unlink()
                removed += 1 if not item.name.endswith(".tmp") and folder.name != _SHARD_TMP else 0
            folder.rmdir()
        self.path.rmdir()
        self._sizes = None
        return removed


_STORE_FILES = frozenset({"cache.db", "cache.db-wal", "cache.db-shm", "cache.db-journal"})


def is_own_store(path: Path) -> bool:
    """Whether the folder holds only what diskcache writes for ipo: its database files and
    value files `xx/yy/*.val` (diskcache/core.py, Disk.filename). Anything else there is
    the user's, and ipo neither moves nor deletes such a folder."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    for child in path.iterdir():
        if child.name in _STORE_FILES and child.is_file() and not child.is_symlink():
            continue
        if not (len(child.name) == 2 and all(c in "0123456789abcdef" for c in child.name) and child.is_dir()
                and not child.is_symlink()):
            return False
        for item in child.rglob("*"):
            if item.is_symlink() or (item.is_file() and item.suffix != ".val"):
                return False
    return True


def clear(root: Path) -> int:
    """Empty every store, whatever state it is in: a store that cannot even be opened
    (damaged beyond diskcache) is deleted as a folder, when it holds only what ipo made
    (`is_own_store`); a folder holding anything else is refused, untouched."""
    removed = 0
    for name in STORES:
        path = Path(root) / name
        if path.is_symlink() or (path.exists() and not is_own_store(path)):
            raise IpoError(f"{path} holds files ipo did not make; `ipo cache clear` deletes only ipo's own "
                           "stores and left everything as it is", "check --cache-dir / IPO_CACHE_DIR")
        try:
            store = Store(root, name)
            removed += store.clear()
            store.close()
        except IpoError:
            raise
        except Exception:  # noqa: BLE001 - any damage: remove ipo's own folder
            if path.is_dir():
                shutil.rmtree(path)
        for aside in Path(root).glob(f"{name}.damaged-*"):  # what earlier repairs moved aside
            if is_own_store(aside):
                shutil.rmtree(aside)
    return removed + ShardImages(root, limit=SHARD_IMAGES_MAX).clear()
