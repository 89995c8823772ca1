"""The warm path: CLIP's answers from the cache, without torch or open_clip.

When every text and image embedding a command needs is on disk (with the model's "card",
which `ClipModel.remember` writes), `CachedClip` stands in for the loaded model; the
cache keys come from clip/spec.py, the same ones the model writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ipo_cli.cache import Store, sha256_file
from ipo_cli.clip.spec import card_key, image_key, light_identity, open_clip_version, text_key
from ipo_cli.errors import IpoError
from ipo_cli.gates import cached as checked


class CachedClip:
    """Stands in for a loaded ClipModel when every embedding a command needs is on disk:
    text embeddings (float32, exactly what the model gave), their token counts, and the
    image embeddings under the keys the model wrote them with (its "card" records the
    preprocessing, precision and logit scale)."""

    def __init__(self, identity: str, card: dict, store: Store):
        self.identity = identity
        self.card = card
        self.store = store
        self.logit_scale = float(card["logit_scale"])
        self.model = type("CachedModel", (), {"context_length": int(card["context_length"])})()
        self.stats = {"images_computed": 0, "images_cached": 0, "texts_encoded": 0}
        self.warm = True
        self.image_loading = "ipo"

    def image_key(self, file_sha: str) -> str:
        return image_key(file_sha, self.identity, self.card["preprocess_id"], self.card["open_clip_version"],
                         self.card["precision"], self.image_loading)

    def _text(self, text: str) -> dict | None:
        # Every cached value is checked (gates/cached.py): a damaged one is a miss, and the
        # model is loaded to recompute it.
        return checked.text_entry(self.store.get_json(text_key(self.identity, self.card["open_clip_version"], text)),
                                  int(self.card["embed_dim"]))

    def has_texts(self, texts: Sequence[str]) -> bool:
        return all(self._text(t) is not None for t in dict.fromkeys(texts))

    def encode_texts(self, texts: Sequence[str]):
        import numpy as np

        rows = []
        for text in texts:
            entry = self._text(text)
            if entry is None:
                raise IpoError(f"no cached text embedding for {text[:40]!r}")  # has_texts said otherwise: a race
            rows.append(np.asarray(entry["embedding"], dtype=np.float32))
        return np.stack(rows) if rows else np.zeros((0, int(self.card["embed_dim"])), np.float32)

    def token_count(self, text: str) -> int:
        entry = self._text(text)
        return int(entry["tokens"]) if entry else 0

    def embed_images(self, paths: Sequence[Path], store: Store | None = None, batch_size: int = 32,
                     progress: Callable[[int], None] | None = None):
        import numpy as np

        rows = []
        for path in paths:
            row = checked.vector(self.store.get_array(self.image_key(sha256_file(path))), int(self.card["embed_dim"]))
            if row is None:  # has_images said otherwise: changed since (another process)
                raise IpoError(f"the cached embedding of {path} changed while ipo read it", "run the command again")
            rows.append(row)
            self.stats["images_cached"] += 1
            if progress:
                progress(1)
        return np.stack(rows), list(range(len(paths))), []

    def has_images(self, paths: Sequence[Path]) -> bool:
        dim = int(self.card["embed_dim"])
        for path in paths:
            try:
                cached = self.store.get_array(self.image_key(sha256_file(path)))
            except OSError:
                return False
            if checked.vector(cached, dim) is None:
                return False
        return True


def cached_clip(model: str, weights: Path | str | None, store: Store, paths: Sequence[Path],
                texts: Sequence[str], device: str = "auto", image_loading: str = "ipo") -> CachedClip | None:
    """A CachedClip when the cache holds everything for these images and texts, else None
    (the caller loads CLIP). `--device cuda` always loads the model."""
    if device not in ("auto", "cpu"):
        return None
    identity = light_identity(model, weights)
    if identity is None:
        return None
    version = open_clip_version()
    card = checked.model_card(store.get_json(card_key(identity, version)))
    if card is None or card.get("open_clip_version") != version:
        return None
    if device == "cpu" and card.get("precision") != "fp32":
        return None
    warm = CachedClip(identity, card, store)
    warm.image_loading = image_loading
    if not warm.has_texts(texts) or not warm.has_images(paths):
        return None
    return warm
