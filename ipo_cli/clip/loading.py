"""One way to get CLIP for a command: warm from the cache, or loaded cold.

`ipo eval`, `ipo classify` (the `Classifier`) and `ipo report` all need "the CLIP these
images and texts are scored with". When the embedding cache already holds every image and
text embedding they need (and the model card), `CachedClip` stands in and neither torch
nor open_clip is imported; otherwise the model is loaded and remembered in the store, so
the next run can be warm. The warm/cold policy itself (which devices may be warm, what a
card must say) lives in `clip/warm.py`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from ipo_cli.cache import Store


def open_clip_model(model: str, weights: Path | str | None, store: Store, paths: Sequence[Path] = (),
                    texts: Sequence[str] = (), device: str = "auto", *, warm: bool = True,
                    loading: Callable[[str], AbstractContextManager[Any]] | None = None,
                    image_loading: str = "ipo") -> Any:
    """CLIP for these images and texts: a `CachedClip` when the cache holds them all (and
    `warm`), else a loaded `ClipModel` whose card is written to `store`.

    `loading(identity)` wraps the cold load (the CLI shows a spinner with it); it is not
    called on the warm path."""
    from ipo_cli.clip.model import load_clip
    from ipo_cli.clip.spec import parse_clip
    from ipo_cli.clip.warm import cached_clip

    if warm:
        cached = cached_clip(model, weights, store, paths, texts, device, image_loading)
        if cached is not None:
            return cached
    spec = parse_clip(model, weights)
    with loading(spec.identity) if loading is not None else contextlib.nullcontext():
        clip = load_clip(spec, device)
    clip.remember(store)
    return clip
