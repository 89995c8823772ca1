"""Cached values: everything read back from the cache is checked before use, since a
cache directory can be damaged, shared, or written by another version. A value that is
not what ipo wrote (wrong type, wrong shape, NaN or infinite numbers, missing fields) is
treated as a miss: the caller recomputes it. NaN embeddings would otherwise score every
image the same and give 100% accuracy through argmax ties.
"""

from __future__ import annotations

import math
from typing import Any


def vector(value: Any, dim: int | None = None):
    """A float32 copy of a cached 1-D embedding of length `dim` with finite values, or None."""
    import numpy as np

    if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype.kind != "f":
        return None
    if (dim is not None and value.shape != (dim,)) or value.size == 0 or not np.isfinite(value).all():
        return None
    return value.astype(np.float32)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def text_entry(value: Any, dim: int | None = None) -> dict | None:
    """A cached text embedding {"embedding": [D finite numbers], "tokens": n}, or None."""
    if not isinstance(value, dict) or not _count(value.get("tokens")):
        return None
    embedding = value.get("embedding")
    if not isinstance(embedding, list) or not embedding or (dim is not None and len(embedding) != dim):
        return None
    if not all(_finite_number(x) for x in embedding):
        return None
    return value


CARD_FIELDS = {"logit_scale": _finite_number, "context_length": lambda v: _count(v) and v > 0,
               "embed_dim": lambda v: _count(v) and v > 0, "precision": lambda v: isinstance(v, str),
               "preprocess_id": lambda v: isinstance(v, str), "open_clip_version": lambda v: isinstance(v, str)}


def model_card(value: Any) -> dict | None:
    """A cached CLIP model card with every field ipo reads, of the right type, or None."""
    if not isinstance(value, dict):
        return None
    for name, valid in CARD_FIELDS.items():
        if name not in value or not valid(value[name]):
            return None
    return value


def text_record(value: Any, field: str) -> str | None:
    """The string `field` of a cached {field: str, ...} record (a generation, a caption), or None."""
    if isinstance(value, dict) and isinstance(value.get(field), str):
        return value[field]
    return None
