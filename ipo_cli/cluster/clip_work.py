"""What a CLIP worker does: load the model once, then embed one unit of images (or encode
the texts a command needs) and send back what the driver stores.

The worker runs exactly the local code (`ClipModel.embed_images`), on the unit's files as
a path every node sees, and returns the float16 rows ipo's cache holds with the keys the
local path writes them under (file content hash, model identity, preprocessing, open_clip
version, precision, image loading: clip/spec.py `image_key`); so a cluster's embeddings
and the local path's are the same numbers under the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ImageUnit:
    """A fixed-size chunk of files (a folder, a split) or one webdataset shard's images."""

    index: int
    paths: tuple[str, ...]
    shard: str | None = None  # the shard the files were taken from (re-extracted where missing)


@dataclass(frozen=True)
class TextUnit:
    texts: tuple[str, ...]


@dataclass(frozen=True)
class CardRequest:
    """Asks a worker for its model's card (what the cache keys of its embeddings name)."""


@dataclass
class UnitEmbeddings:
    index: int
    kept: list[int]  # positions in the unit's paths
    keys: list[str]  # the cache key of each kept image
    rows: Any  # float16 array (len(kept), D), exactly what the cache stores
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): today's warning


@dataclass
class ClipWork:
    """The CLIP a command names, as a worker loads it; compared by these fields, so one
    command's units share the workers that loaded it."""

    model: str
    weights: str | None = None
    device: str = "auto"
    image_loading: str = "ipo"
    batch_size: int = 32
    fault_marker: str | None = None  # tests: a worker exits in the middle of a unit while this file exists

    def __post_init__(self) -> None:
        self._clip: Any = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_clip"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._clip = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClipWork) and self.__getstate__() == other.__getstate__()

    __hash__ = None  # type: ignore[assignment]

    def setup(self) -> None:
        if self._clip is None:
            from ipo_cli.clip.model import load_clip
            from ipo_cli.clip.spec import parse_clip

            self._clip = load_clip(parse_clip(self.model, self.weights), self.device)
            self._clip.image_loading = self.image_loading

    def __call__(self, unit: Any) -> Any:
        self.setup()
        clip = self._clip
        if isinstance(unit, CardRequest):
            return {"identity": clip.identity, "preprocess_id": clip.preprocess_id,
                    "open_clip_version": clip.open_clip_version, "precision": clip.precision,
                    "logit_scale": clip.logit_scale, "embed_dim": clip.embed_dim,
                    "context_length": int(getattr(clip.model, "context_length", 77) or 77)}
        if isinstance(unit, TextUnit):
            emb = clip.encode_texts(list(unit.texts))
            return [(text, row.tolist(), clip.token_count(text)) for text, row in zip(unit.texts, emb)]
        if isinstance(unit, ImageUnit):
            return self._embed(unit)
        raise TypeError(f"a CLIP worker cannot run {type(unit).__name__}")

    def _embed(self, unit: ImageUnit) -> UnitEmbeddings:
        import numpy as np

        from ipo_cli.cache import sha256_file

        paths = [Path(p) for p in unit.paths]
        if unit.shard is not None and not all(p.is_file() for p in paths):
            _extract(Path(unit.shard), paths)
        clip = self._clip
        half = len(paths) // 2
        if self.fault_marker and Path(self.fault_marker).exists() and half:
            clip.embed_images(paths[:half], store=None, batch_size=self.batch_size)  # half the unit done...
            try:
                Path(self.fault_marker).unlink()  # one worker claims the marker
            except FileNotFoundError:
                pass
            else:
                import os

                os._exit(1)  # ...and the worker process dies, as on a lost node
        emb, kept, failures = clip.embed_images(paths, store=None, batch_size=self.batch_size)
        keys = [clip.image_key(sha256_file(paths[i])) for i in kept]
        return UnitEmbeddings(unit.index, list(kept), keys, emb.astype(np.float16),
                              [(str(f.path), f.reason) for f in failures])


def _extract(shard: Path, paths: list[Path]) -> None:
    """A shard's images, where this node does not have them yet, written to the same
    content-addressed names the driver listed (data/shards.py)."""
    from ipo_cli import cache
    from ipo_cli.data import shards

    wanted = {p.name: p for p in paths}
    if not wanted:
        return
    # CACHE/shard-images/ab/<sha256>.<ext>: the same bounded store and streaming read as the driver's
    store = cache.ShardImages(next(iter(wanted.values())).parent.parent.parent)
    budget = shards._Budget(shards.MAX_EXPANSION * shard.stat().st_size + shards.EXPANSION_SLACK, shard.parent)
    for _, image, _ in shards._samples(shard, store, budget):
        name = f"{image.digest}.{image.ext}"
        if name in wanted and not wanted[name].is_file():
            image.keep()
        else:
            image.discard()
