"""How well a prompt classifies cached image embeddings, and the metrics of evaluation.

A prompt is one template (`a photo of a {}.`), an ensemble of templates (their
normalised text embeddings averaged per class, as CLIP does with its 80 ImageNet
templates), or per-class prompts (CuPL style: several full sentences per class).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# The template language (placeholders, braces, the text scored) is data/templates.py's;
# these names stay here for the callers that import them from scoring.
from ipo_cli.data.templates import PLACEHOLDERS, check_template, fill, placeholder_count  # noqa: F401
from ipo_cli.errors import IpoError


@dataclass
class Prompt:
    """Something that yields one text embedding per class."""

    name: str
    templates: list[str] = field(default_factory=list)  # ensemble if more than one
    per_class: dict[str, list[str]] | None = None  # CuPL: class name -> sentences
    dataset: str | None = None  # the dataset key of a CLIP_benchmark file it came from

    @property
    def kind(self) -> str:
        if self.per_class is not None:
            return "per-class"
        return "template" if len(self.templates) == 1 else "ensemble"

    def texts(self, classnames: Sequence[str]) -> list[list[str]]:
        if self.per_class is not None:
            from ipo_cli.data.folders import normalize_name

            lookup = {normalize_name(k): v for k, v in self.per_class.items()}
            missing = [c for c in classnames if normalize_name(c) not in lookup]
            if missing:
                raise IpoError(
                    f"per-class prompts {self.name!r} have no sentences for: {', '.join(missing[:5])}"
                    + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""),
                    "give every class at least one sentence",
                )
            return [lookup[normalize_name(c)] for c in classnames]
        return [[fill(t, c) for t in self.templates] for c in classnames]


class TextEncoder(Protocol):
    logit_scale: float

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


def class_embeddings(encoder: TextEncoder, prompt: Prompt, classnames: Sequence[str]) -> np.ndarray:
    """(C, D) normalised: the mean of the normalised embeddings of each class's texts."""
    per_class = prompt.texts(classnames)
    flat = [t for texts in per_class for t in texts]
    emb = encoder.encode_texts(flat)
    out = np.empty((len(classnames), emb.shape[1]), dtype=np.float32)
    start = 0
    for c, texts in enumerate(per_class):
        mean = emb[start:start + len(texts)].mean(axis=0)
        out[c] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        start += len(texts)
    return out


@dataclass
class Score:
    """Classification results of one prompt on one labelled set of embeddings."""

    acc1: float  # percent
    acc5: float
    mean_per_class_recall: float
    loss: float  # mean cross-entropy with the model's logit scale
    per_class: list[float]  # percent, in class order
    correct: np.ndarray = field(repr=False)  # bool per image, for paired bootstrap
    n: int = 0

    def metrics(self) -> dict[str, float]:
        return {
            "acc1": self.acc1,
            "acc5": self.acc5,
            "mean_per_class_recall": self.mean_per_class_recall,
            "loss": self.loss,
        }


def score_embeddings(
    image_emb: np.ndarray, labels: Sequence[int] | np.ndarray, text_emb: np.ndarray, logit_scale: float
) -> Score:
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = text_emb.shape[0]
    logits = logit_scale * (image_emb @ text_emb.T).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(labels)), labels].mean()) if len(labels) else float("nan")
    true_logit = logits[np.arange(len(labels)), labels][:, None]
    # rank = the true class's place in an argmax ordering: the classes scoring higher, plus
    # the classes scoring exactly the same with a lower index (np.argmax gives ties to the
    # lowest index), so an exact tie is a hit only for the class that argmax would pick
    lower_index = np.arange(n_classes)[None, :] < labels[:, None]
    rank = (logits > true_logit).sum(axis=1) + ((logits == true_logit) & lower_index).sum(axis=1)
    correct = rank == 0
    top5 = rank < min(5, n_classes)
    per_class = []
    for c in range(n_classes):
        mask = labels == c
        per_class.append(float(correct[mask].mean() * 100) if mask.any() else float("nan"))
    present = [v for v in per_class if not np.isnan(v)]
    return Score(
        acc1=float(correct.mean() * 100) if len(labels) else float("nan"),
        acc5=float(top5.mean() * 100) if len(labels) else float("nan"),
        mean_per_class_recall=float(np.mean(present)) if present else float("nan"),
        loss=loss,
        per_class=per_class,
        correct=correct,
        n=len(labels),
    )


def predict_embeddings(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """The class each image is given: the argmax of its similarities, an exact tie going to
    the lowest class index (np.argmax), the same rule `score_embeddings` counts a hit by."""
    return np.argmax(image_emb @ text_emb.T, axis=1).astype(np.int64)


def confusion_counts(labels: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray,
                     n_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return out


def score_prompt(
    encoder: TextEncoder,
    prompt: Prompt,
    classnames: Sequence[str],
    image_emb: np.ndarray,
    labels: Sequence[int] | np.ndarray,
) -> Score:
    return score_embeddings(image_emb, labels, class_embeddings(encoder, prompt, classnames), encoder.logit_scale)


def harmonic_mean(base: float, novel: float) -> float:
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def paired_bootstrap(
    correct_a: np.ndarray | None,
    correct_b: np.ndarray | None,
    n_boot: int = 2000,
    seed: int = 0,
    groups: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[float, float, float]:
    """Difference in accuracy (percentage points) of a over b with a 95% interval.

    Both are scored on the same images; resampling images with replacement keeps the
    pairing, so the interval reflects only how much the images matter. With `groups`
    (pairs of correctness arrays of base and novel images) the statistic is the
    difference of harmonic means, each group resampled on its own.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        assert correct_a is not None and correct_b is not None, "paired_bootstrap needs both arrays or groups"
        a, b = correct_a.astype(np.float64), correct_b.astype(np.float64)
        delta = (a.mean() - b.mean()) * 100
        idx = rng.integers(0, len(a), size=(n_boot, len(a)))
        boots = (a[idx].mean(axis=1) - b[idx].mean(axis=1)) * 100
    else:
        delta, boots = _h_delta_boots(groups, rng, n_boot)
    low, high = np.percentile(boots, [2.5, 97.5])
    return float(delta), float(low), float(high)


def _h_delta_boots(groups: Sequence[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator,
                   n_boot: int) -> tuple[float, np.ndarray]:
    """The difference of harmonic means (a over b) of one cell's base and novel groups, and
    its `n_boot` resampled values (each group resampled on its own, pairs kept)."""
    (ba0, bb0), (na0, nb0) = [(g[0].mean() * 100, g[1].mean() * 100) for g in groups]
    delta = harmonic_mean(ba0, na0) - harmonic_mean(bb0, nb0)
    samples = []
    for ga, gb in groups:
        idx = rng.integers(0, len(ga), size=(n_boot, len(ga)))
        samples.append((ga[idx].mean(axis=1) * 100, gb[idx].mean(axis=1) * 100))
    (ba, bb), (na, nb) = samples
    ha = np.where(ba + na > 0, 2 * ba * na / np.maximum(ba + na, 1e-12), 0)
    hb = np.where(bb + nb > 0, 2 * bb * nb / np.maximum(bb + nb, 1e-12), 0)
    return float(delta), ha - hb


def paired_bootstrap_cells(
    cells: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """The mean over cells (datasets x seeds) of the difference in H of a over b, with a 95%
    interval: every cell's base and novel images are resampled on their own, in the same
    draw, so the interval reflects the images of every cell at once. One cell gives exactly
    `paired_bootstrap(None, None, n_boot, seed, groups=cell)`."""
    if not cells:
        raise ValueError("paired_bootstrap_cells needs at least one cell")
    rng = np.random.default_rng(seed)
    deltas, boots = zip(*(_h_delta_boots(groups, rng, n_boot) for groups in cells))
    mean_boots = np.mean(np.stack(boots), axis=0)
    low, high = np.percentile(mean_boots, [2.5, 97.5])
    return float(np.mean(deltas)), float(low), float(high)
