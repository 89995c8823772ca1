"""Label new images with a prompt that `ipo optimize` found: the library behind
`ipo classify`, usable on its own.

    from ipo_cli import Classifier

    clf = Classifier.from_files("runs/fashion/prompts.json", "classes.txt")   # CLIP loaded once
    for p in clf.classify(["shoe.jpg", "bag.png"], top_k=3):                  # paths or PIL images
        print(p.source, p.top[0])                                             # ("sandal", 0.81)

Image embeddings of files are cached on disk as everywhere in ipo (by file content,
model and preprocessing); PIL images are embedded directly. Probabilities are CLIP's
softmax over the classes (logit scale times cosine similarity). An unreadable file is a
prediction with `error` set, not an exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ipo_cli.clip.scoring import Prompt
from ipo_cli.clip.spec import DEFAULT_CLIP
from ipo_cli.errors import IpoError


@dataclass
class Prediction:
    source: str  # the file path, or "<image N>" for a PIL image
    top: list[tuple[str, float]] = field(default_factory=list)  # (class name, probability), best first
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.source, "top": [{"class": c, "probability": p} for c, p in self.top],
                "error": self.error}


def choose_prompt(prompts: list[Prompt], ensemble: bool = False) -> Prompt:
    """The prompt a file means: its first (for ipo's prompts.json, the best) or, with
    `ensemble`, all its templates averaged; per-class prompts are used as they are."""
    if not prompts:
        raise IpoError("the prompts file holds no prompt")
    per_class = [p for p in prompts if p.per_class is not None]
    if per_class:
        return per_class[0]
    if ensemble:
        templates = list(dict.fromkeys(t for p in prompts for t in p.templates))
        return Prompt("ensemble of " + str(len(templates)), templates)
    return prompts[0]


class Classifier:
    def __init__(self, prompt: Prompt, classnames: Sequence[str], clip: str = DEFAULT_CLIP,
                 clip_weights: Path | str | None = None, device: str = "auto", cache_dir: Path | None = None,
                 image_loading: str = "ipo"):
        from ipo_cli import cache

        self.prompt = prompt
        self.classnames = list(classnames)
        if len(self.classnames) < 2:
            raise IpoError("classifying needs at least two class names")
        self.texts = [t for texts in prompt.texts(self.classnames) for t in texts]  # checks per-class coverage
        self.spec = (clip, clip_weights, device)
        self.image_loading = image_loading  # how image files are decoded (data/folders.load_image)
        self.store = cache.Store(cache.cache_root(cache_dir), "embeddings")
        self.clip: Any = None  # loaded on first need: a fully cached batch of files needs no model at all
        self.text: Any = None

    def _model(self, paths: Sequence[Path] = (), need_model: bool = False):
        from ipo_cli.clip.loading import open_clip_model
        from ipo_cli.clip.scoring import class_embeddings

        if self.clip is None or (need_model and getattr(self.clip, "warm", False)):
            clip, weights, device = self.spec
            self.clip = open_clip_model(clip, weights, self.store, paths, self.texts, device, warm=not need_model,
                                        image_loading=self.image_loading)
            self.clip.image_loading = self.image_loading  # part of every image's cache key
            self.text = class_embeddings(self.clip, self.prompt, self.classnames)
        return self.clip

    @classmethod
    def from_files(cls, prompts_file: Path | str, classes_file: Path | str | None = None, ensemble: bool = False,
                   **kwargs) -> Classifier:
        """From a prompts file; a run's prompts.json names its classes and CLIP, which are
        then the defaults (a classes file or `clip=` that disagrees is an error)."""
        from ipo_cli.data.folders import read_classes
        from ipo_cli.data.prompts import read_info, read_prompts, resolve_classes, resolve_clip

        info = read_info(prompts_file)
        classnames = resolve_classes(info, read_classes(Path(classes_file)) if classes_file is not None else None,
                                     "the classes file")
        if classnames is None:
            raise IpoError(f"{prompts_file} names no classes", "pass the classes file the prompt was made for")
        kwargs["clip"], kwargs["clip_weights"] = resolve_clip(info, kwargs.get("clip"), kwargs.get("clip_weights"))
        prompt = choose_prompt(read_prompts(prompts_file), ensemble)
        return cls(prompt, classnames, **kwargs)

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        logits = self._model().logit_scale * (embeddings @ self.text.T).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def classify(self, images: Sequence[Any], top_k: int = 5, batch_size: int = 32,
                 progress=None) -> list[Prediction]:
        """Predictions in the order of `images` (file paths or PIL images)."""
        top_k = max(1, min(top_k, len(self.classnames)))
        out: list[Prediction] = [Prediction(self._name(i, x)) for i, x in enumerate(images)]
        paths = [(i, Path(x)) for i, x in enumerate(images) if isinstance(x, (str, Path))]
        pils = [(i, x) for i, x in enumerate(images) if not isinstance(x, (str, Path))]
        rows: dict[int, np.ndarray] = {}
        readable = [p for _, p in paths if p.is_file()]
        self._model(readable if len(readable) == len(paths) else (), need_model=bool(pils) or len(readable) < len(paths))
        if paths:
            emb, kept, failures = self.clip.embed_images([p for _, p in paths], store=self.store,
                                                         batch_size=batch_size, progress=progress)
            for row, k in enumerate(kept):
                rows[paths[k][0]] = emb[row]
            for failure in failures:
                index = next(i for i, p in paths if p == failure.path)
                out[index].error = failure.reason
        if pils:
            rows.update(zip([i for i, _ in pils], self.clip.embed_pil_images([x for _, x in pils])))
        if rows:
            order = sorted(rows)
            probs = self.probabilities(np.stack([rows[i] for i in order]))
            for i, p in zip(order, probs):
                best = np.argsort(-p, kind="stable")[:top_k]  # ties: the lower class index first, as argmax
                out[i].top = [(self.classnames[c], float(p[c])) for c in best]
        return out

    def use_clip(self, clip: Any) -> None:
        """Score with this CLIP (e.g. one whose images a cluster embeds: cluster/embed.py)."""
        from ipo_cli.clip.scoring import class_embeddings

        self.clip = clip
        self.text = class_embeddings(clip, self.prompt, self.classnames)

    def predict_embedded(self, paths: Sequence[Path], embeddings: np.ndarray, kept: Sequence[int],
                         failures: Sequence[Any], top_k: int = 5) -> list[Prediction]:
        """Predictions for files already embedded (`kept` indexes `paths`; `failures` are the
        unreadable ones), in the order of `paths`: a chunk of `classify` for a caller that
        gets embeddings in chunks, as they arrive."""
        top_k = max(1, min(top_k, len(self.classnames)))
        out = [Prediction(str(p)) for p in paths]
        for failure in failures:
            for i, p in enumerate(paths):
                if Path(p) == Path(failure.path):
                    out[i].error = failure.reason
        if len(kept):
            probs = self.probabilities(np.asarray(embeddings))
            for i, p in zip(kept, probs):
                best = np.argsort(-p, kind="stable")[:top_k]
                out[i].top = [(self.classnames[c], float(p[c])) for c in best]
        return out

    @staticmethod
    def _name(i: int, x: Any) -> str:
        return str(x) if isinstance(x, (str, Path)) else f"<image {i}>"
