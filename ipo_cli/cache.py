"""On-disk stores, built on diskcache.

Keys are strings that name everything the value depends on; values are plain bytes
(`.npy` arrays loaded with `allow_pickle=False`) or UTF-8 JSON, never pickles: a cache
directory shared between users must not be a way to run code. diskcache stores `str` and
`bytes` natively, without pickling.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STORES = ("embeddings", "captions", "generations")


def cache_root(override: Path | str | None = None) -> Path:
    """`--cache-dir`, else `IPO_CACHE_DIR`, else the user cache directory."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("IPO_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("ipo", appauthor=False))


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

    A value that cannot be decoded (a corrupt entry) is deleted and reported as a miss,
    so the caller recomputes it.
    """

    def __init__(self, root: Path, name: str):
        import diskcache

        self.path = Path(root) / name
        self.path.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(str(self.path), size_limit=2**40)
        self.dropped = 0

    def _get_raw(self, key: str, kind: type) -> Any:
        value = self._cache.get(key, default=None, retry=True)
        if value is None:
            return None
        if not isinstance(value, kind):
            self._drop(key)
            return None
        return value

    def _drop(self, key: str) -> None:
        self.dropped += 1
        self._cache.delete(key, retry=True)

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
        self._cache.set(key, encode_array(array), retry=True)

    def get_json(self, key: str) -> Any:
        text = self._get_raw(key, str)
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            self._drop(key)
            return None

    def set_json(self, key: str, value: Any) -> None:
        self._cache.set(key, json.dumps(value), retry=True)

    def __len__(self) -> int:
        return len(self._cache)

    def volume(self) -> int:
        return self._cache.volume()

    def clear(self) -> int:
        return self._cache.clear(retry=True)

    def close(self) -> None:
        self._cache.close()


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
    return out


def clear(root: Path) -> int:
    removed = 0
    for name in STORES:
        store = Store(root, name)
        removed += store.clear()
        store.close()
    return removed
