"""The warm path: CLIP's answers from the cache, without torch or open_clip.

When every text and image embedding a command needs is on disk (with the model's "card",
which `ClipModel.remember` writes), `CachedClip` stands in for the loaded model; the
cache keys come from clip/spec.py, the same ones the model writes.

An image the model found unreadable (truncated, not an image, over the size gates) has no
embedding and never will; the model remembers it as unreadable by its bytes' hash
(`remember_unreadable`), so that one bad file does not switch the warm path off for good:
it is skipped warm with the same reason as cold, and checked again when its bytes change
(a new hash), or when Pillow or ipo changes (part of the key, clip/spec.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ipo_cli.cache import Store, sha256_file
from ipo_cli.clip.spec import UNREADABLE_PATH, card_key, image_key, light_identity, open_clip_version, text_key, unreadable_key
from ipo_cli.data.folders import UnreadableImage
from ipo_cli.errors import IpoError
from ipo_cli.gates import cached as checked


def remember_unreadable(store: Store, file_sha: str, image_loading: str, error: UnreadableImage) -> None:
    """Keep why these bytes are no image (the file's own path left out: the same bytes can
    lie elsewhere under another name)."""
    reason = str(error.reason).replace(str(error.path), UNREADABLE_PATH)
    store.set_json(unreadable_key(file_sha, image_loading), {"reason": reason[:2000]})


def remembered_unreadable(store: Store, path: Path, file_sha: str, image_loading: str) -> UnreadableImage | None:
    """The remembered failure of these bytes, named by this path, or None."""
    reason = checked.text_record(store.get_json(unreadable_key(file_sha, image_loading)), "reason")
    if reason is None:
        return None
    return UnreadableImage(path, reason.replace(UNREADABLE_PATH, str(path)))


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

        dim = int(self.card["embed_dim"])
        rows, kept, failures = [], [], []
        for i, path in enumerate(paths):
            try:
                sha = sha256_file(path)
            except OSError:
                sha = ""
            row = checked.vector(self.store.get_array(self.image_key(sha)), dim) if sha else None
            if row is not None:
                rows.append(row)
                kept.append(i)
                self.stats["images_cached"] += 1
            else:
                failure = remembered_unreadable(self.store, path, sha, self.image_loading) if sha else None
                if failure is None:  # has_images said otherwise: changed since (another process)
                    raise IpoError(f"the cached embedding of {path} changed while ipo read it", "run the command again")
                failures.append(failure)
            if progress:
                progress(1)
        emb = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
        return emb, kept, failures

    def has_images(self, paths: Sequence[Path]) -> bool:
        """Whether every image has its embedding, or is remembered as unreadable (the same
        bytes failed before, with this Pillow and this ipo)."""
        dim = int(self.card["embed_dim"])
        for path in paths:
            try:
                sha = sha256_file(path)
            except OSError:
                return False
            if checked.vector(self.store.get_array(self.image_key(sha)), dim) is None \
                    and remembered_unreadable(self.store, path, sha, self.image_loading) is None:
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
