"""The driver side of embedding images with an executor: list the units, skip those whose
embeddings the cache already holds, run the rest, and merge what comes back into the local
cache as it arrives (the same keys and float16 values the local path writes, so writing a
unit twice changes nothing).

`ClusterClip` puts this behind the interface `ipo eval` and `ipo classify` already use
(`embed_images`, `encode_texts`, `token_count`), reading texts and images from the cache
once the workers have filled it (clip/warm.py `CachedClip`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipo_cli.cache import Store, sha256_file
from ipo_cli.clip.spec import card_key, image_key, text_key
from ipo_cli.clip.warm import CachedClip
from ipo_cli.cluster.clip_work import CardRequest, ClipWork, ImageUnit, TextUnit, UnitEmbeddings
from ipo_cli.cluster.executor import Executor
from ipo_cli.data.folders import UnreadableImage
from ipo_cli.errors import InvalidInput, IpoError
from ipo_cli.gates import cached as checked

DEFAULT_UNIT_SIZE = 256  # images per unit of a folder or split (a shard is one unit whatever its size)


def plan_units(paths: Sequence[Path], unit_size: int = DEFAULT_UNIT_SIZE, batch_size: int = 32,
               origins: dict[Path, Path] | None = None) -> list[ImageUnit]:
    """Units in a fixed order (so a rerun finds the same ones): one per shard for images
    taken from webdataset shards, else chunks of `unit_size` files. `unit_size` is a
    multiple of `batch_size`, so that every forward pass holds the same images as on the
    local path, and gives the same numbers."""
    if unit_size < 1 or unit_size % batch_size:
        raise InvalidInput(f"--unit-size {unit_size} must be a multiple of --batch-size {batch_size}",
                           "so that each forward pass holds the same images as without --ray")
    units: list[ImageUnit] = []
    if origins and all(p in origins for p in paths):
        by_shard: dict[Path, list[str]] = {}
        for p in paths:
            by_shard.setdefault(origins[p], []).append(str(p))
        for shard, members in by_shard.items():
            for start in range(0, len(members), unit_size):  # a huge shard is still split
                units.append(ImageUnit(len(units), tuple(members[start:start + unit_size]), str(shard)))
        return units
    for start in range(0, len(paths), unit_size):
        units.append(ImageUnit(len(units), tuple(str(p) for p in paths[start:start + unit_size])))
    return units


@dataclass
class UnitResult:
    """One unit's embeddings, from the cache or from a worker."""

    unit: ImageUnit
    embeddings: Any  # float32 (len(kept), D)
    kept: list[int]
    failures: list[UnreadableImage]
    cached: bool


@dataclass
class EmbedStats:
    units: int = 0
    units_cached: int = 0
    units_failed: int = 0
    images_computed: int = 0
    images_cached: int = 0
    errors: list[str] = field(default_factory=list)


class Embedder:
    """Embeds units of images with `work` on `executor`, merging into `store`."""

    def __init__(self, executor: Executor, work: ClipWork, store: Store):
        self.executor = executor
        self.work = work
        self.store = store
        self.stats = EmbedStats()
        self._card: dict | None = None

    @property
    def card(self) -> dict:
        """The workers' model card (asked once), written to the store as `ClipModel.remember`
        does, so later commands on these images are warm."""
        if self._card is None:
            outcome = next(iter(self.executor.map_units([CardRequest()], self.work)))
            if outcome.error:
                raise IpoError(f"the workers could not load CLIP {self.work.model}: {outcome.error}")
            card = dict(outcome.value)
            self.identity = card.pop("identity")
            self.store.set_json(card_key(self.identity, card["open_clip_version"]), card)
            self._card = card
        return self._card

    def use_card(self, identity: str, card: dict) -> None:
        """The card of a model whose embeddings the cache already holds (clip/warm.py): no
        worker needs to load CLIP to tell what is done."""
        self.identity, self._card = identity, dict(card)

    def key(self, path: Path) -> str | None:
        card = self.card
        try:
            sha = sha256_file(path)
        except OSError:
            return None  # unreadable: the worker reports why
        return image_key(sha, self.identity, card["preprocess_id"], card["open_clip_version"], card["precision"],
                         self.work.image_loading)

    def _cached(self, unit: ImageUnit) -> UnitResult | None:
        import numpy as np

        rows = []
        dim = int(self.card["embed_dim"])
        for path in unit.paths:
            key = self.key(Path(path))
            row = checked.vector(self.store.get_array(key), dim) if key else None
            if row is None:
                return None
            rows.append(row)
        return UnitResult(unit, np.stack(rows) if rows else np.zeros((0, dim), np.float32),
                          list(range(len(unit.paths))), [], cached=True)

    def warm_texts(self, texts: Sequence[str]) -> None:
        """Encode on a worker the texts the cache lacks, and store them as the local path does."""
        card = self.card
        version, dim = card["open_clip_version"], int(card["embed_dim"])
        missing = tuple(t for t in dict.fromkeys(texts)
                        if checked.text_entry(self.store.get_json(text_key(self.identity, version, t)), dim) is None)
        if not missing:
            return
        outcome = next(iter(self.executor.map_units([TextUnit(missing)], self.work)))
        if outcome.error:
            raise IpoError(f"the workers could not encode the prompts: {outcome.error}")
        for text, embedding, tokens in outcome.value:
            self.store.set_json(text_key(self.identity, version, text), {"embedding": embedding, "tokens": tokens})

    def run(self, units: Sequence[ImageUnit], progress: Callable[[int], None] | None = None) -> Iterator[UnitResult]:
        """Every unit's result: the cached ones first, then the others as workers finish them.
        A unit that fails after its retries is counted in `stats.errors`, not raised, so the
        rest still lands in the cache."""
        import numpy as np

        self.stats.units += len(units)
        todo = []
        for unit in units:
            hit = self._cached(unit)
            if hit is None:
                todo.append(unit)
                continue
            self.stats.units_cached += 1
            self.stats.images_cached += len(unit.paths)
            if progress:
                progress(len(unit.paths))
            yield hit
        seen: set[int] = set()
        for outcome in self.executor.map_units(todo, self.work):
            unit = outcome.unit
            if outcome.error is not None:
                self.stats.units_failed += 1
                self.stats.errors.append(f"unit {unit.index} ({unit.paths[0] if unit.paths else ''}...): "
                                         f"{outcome.error}")
                if progress:
                    progress(len(unit.paths))
                continue
            if unit.index in seen:  # a retried unit answered twice: the first answer stands
                continue
            seen.add(unit.index)
            got: UnitEmbeddings = outcome.value
            for key, row in zip(got.keys, got.rows):
                self.store.set_array(key, row)  # the same bytes under the same key: idempotent
            self.stats.images_computed += len(got.kept)
            if progress:
                progress(len(unit.paths))
            failures = [UnreadableImage(Path(p), reason) for p, reason in got.failures]
            yield UnitResult(unit, np.asarray(got.rows, dtype=np.float32), list(got.kept), failures, cached=False)


class ClusterClip(CachedClip):
    """The CLIP of `ipo eval` and `ipo classify` with `--ray`: images embedded by the
    executor's workers, texts encoded by one of them, everything read back from the cache."""

    def __init__(self, embedder: Embedder, texts: Sequence[str] = (), unit_size: int = DEFAULT_UNIT_SIZE):
        card = embedder.card
        super().__init__(embedder.identity, card, embedder.store)
        self.embedder = embedder
        self.unit_size = unit_size
        self.image_loading = embedder.work.image_loading
        self.warm = False
        self.origins: dict[Path, Path] = {}
        if texts:
            embedder.warm_texts(texts)

    def embed_units(self, paths: Sequence[Path], batch_size: int = 32,
                    progress: Callable[[int], None] | None = None) -> Iterator[UnitResult]:
        units = plan_units(paths, self.unit_size, batch_size, self.origins)
        yield from self.embedder.run(units, progress)
        self.stats["images_computed"] = self.embedder.stats.images_computed
        self.stats["images_cached"] = self.embedder.stats.images_cached
        if self.embedder.stats.errors:
            raise IpoError(f"{len(self.embedder.stats.errors)} unit(s) failed on the cluster; what the others "
                           f"computed is in the cache (first: {self.embedder.stats.errors[0]})",
                           "run the same command again to retry them")

    def embed_images(self, paths: Sequence[Path], store: Store | None = None, batch_size: int = 32,
                     progress: Callable[[int], None] | None = None):
        """(embeddings, kept, failures) in the order of `paths`, as ClipModel.embed_images."""
        import numpy as np

        rows: dict[int, Any] = {}
        failures: list[UnreadableImage] = []
        positions: dict[str, list[int]] = {}
        for i, p in enumerate(paths):  # two shard samples with the same bytes share one file
            positions.setdefault(str(p), []).append(i)
        unique = list(dict.fromkeys(Path(p) for p in paths))
        for result in self.embed_units(unique, batch_size, progress):
            for row, k in zip(result.embeddings, result.kept):
                for i in positions[result.unit.paths[k]]:
                    rows[i] = row
            failures.extend(result.failures)
        kept = sorted(rows)
        dim = int(self.card["embed_dim"])
        emb = np.stack([rows[i] for i in kept]) if kept else np.zeros((0, dim), np.float32)
        return emb, kept, failures


def cluster_clip(executor: Executor, model: str, weights: Path | str | None, store: Store, texts: Sequence[str],
                 device: str = "auto", image_loading: str = "ipo", batch_size: int = 32,
                 unit_size: int = DEFAULT_UNIT_SIZE) -> ClusterClip:
    work = ClipWork(model, str(weights) if weights else None, device, image_loading, batch_size)
    return ClusterClip(Embedder(executor, work, store), texts, unit_size)


@dataclass
class ImageSet:
    """The images `ipo embed` computes, how they are decoded, and the shard of each."""

    paths: list[Path]
    image_loading: str
    origins: dict[Path, Path] = field(default_factory=dict)


def image_set(images: Path, split: Path | None = None, split_part: str = "test", allow_outside_root: bool = False,
              image_loading: str | None = None, cache_dir: Path | None = None) -> ImageSet:
    """A folder's images (recursively), a split's part, or a webdataset folder's split."""
    from ipo_cli.clip.sources import check_split_part, image_files
    from ipo_cli.data import folders, shards
    from ipo_cli.gates.paths import check_path

    check_split_part(split_part)
    images = check_path(images, "images folder")
    if split is not None or shards.is_shard_folder(images):
        data = folders.load_dataset(images, None, split, split_part, allow_outside_root, cache_dir=cache_dir)
        paths = list(dict.fromkeys(data.paths))
        found = ImageSet(paths, data.image_loading, dict(data.origins))
    else:
        found = ImageSet(image_files(images), "ipo")
    if image_loading:
        found.image_loading = folders.check_image_loading(image_loading)
    return found


def embedder_for(executor: Executor, model: str, weights: Path | str | None, store: Store, images: ImageSet,
                 device: str = "auto", batch_size: int = 32) -> Embedder:
    """The embedder of these images; when the cache already holds them all, its card is
    taken from there, and no worker loads CLIP."""
    from ipo_cli.clip.warm import cached_clip

    work = ClipWork(model, str(weights) if weights else None, device, images.image_loading, batch_size)
    embedder = Embedder(executor, work, store)
    warm = cached_clip(model, weights, store, images.paths, (), device, images.image_loading)
    if warm is not None:
        embedder.use_card(warm.identity, warm.card)
    return embedder
