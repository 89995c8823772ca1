"""Score prompts on a labelled image set: the engine behind `ipo eval`.

Every prompt is compared with a baseline on the same images, with a paired bootstrap
interval, so that a gain can be told from noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ipo_cli.clip.scoring import Prompt, Score, check_template, harmonic_mean, paired_bootstrap, score_prompt
from ipo_cli.data.folders import Dataset, base_novel_labels
from ipo_cli.errors import IpoError

DEFAULT_BASELINE = "a photo of a {}."


@dataclass
class EmbeddedSet:
    """Image embeddings with their labels; unreadable images are already left out."""

    dataset: Dataset
    embeddings: np.ndarray
    labels: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def subset(self, labels: list[int]) -> EmbeddedSet:
        remap = {old: new for new, old in enumerate(labels)}
        mask = np.isin(self.labels, labels)
        return EmbeddedSet(
            self.dataset.subset_classes(labels),
            self.embeddings[mask],
            np.array([remap[int(x)] for x in self.labels[mask]], dtype=np.int64),
        )


def embed_dataset(clip, dataset: Dataset, store=None, progress: Callable[[int], None] | None = None,
                  batch_size: int = 32) -> EmbeddedSet:
    """The set's image embeddings, its images decoded as the set says (`image_loading`:
    the reference code's way for the field's datasets, ipo's for a user's folders); a
    warm CLIP must have been checked for that same loading (`cached_clip`)."""
    if getattr(clip, "image_loading", "ipo") != dataset.image_loading:
        if getattr(clip, "warm", False):
            raise IpoError(f"the cached CLIP was checked for {clip.image_loading!r} image loading, "
                           f"not {dataset.image_loading!r}", "run again; report this if it repeats")
        clip.image_loading = dataset.image_loading
    emb, kept, failures = clip.embed_images(dataset.paths, store=store, batch_size=batch_size, progress=progress)
    skipped = [(str(f.path), f.reason) for f in failures]
    kept_set = set(kept)
    remaining = Dataset(
        dataset.classnames,
        [item for i, item in enumerate(dataset.items) if i in kept_set],
        dataset.root,
        list(dataset.original_labels),
        dataset.image_loading,
    )
    empty = [remaining.classnames[label] for label, items in remaining.by_label().items() if not items]
    if not remaining.items:
        # said here in full: the callers warn about skipped images only after this returns
        first = f"; first {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise IpoError(f"none of the {len(dataset.items)} images could be read{first}", "check the image files")
    if empty:
        raise IpoError(
            f"every image of class(es) {', '.join(empty)} was unreadable",
            "replace the files listed in the warnings",
        )
    return EmbeddedSet(remaining, emb, np.array(remaining.labels, dtype=np.int64), skipped)


@dataclass
class EvalRow:
    name: str
    kind: str  # template | ensemble | per-class | baseline
    acc1: float
    acc5: float
    mean_per_class_recall: float
    loss: float
    per_class: list[float]
    delta: float | None = None  # vs baseline: acc1 points, or H points with base/novel
    delta_low: float | None = None
    delta_high: float | None = None
    base: float | None = None
    novel: float | None = None
    hm: float | None = None
    dataset: str | None = None  # the dataset key of a multi-dataset template file


@dataclass
class EvalReport:
    clip: str
    classnames: list[str]
    n_images: int
    baseline: str
    rows: list[EvalRow]
    base_novel: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        """CLIP_benchmark-style `metrics` per prompt, plus ipo's own fields."""
        out: dict[str, Any] = {
            "clip": self.clip,
            "n_images": self.n_images,
            "n_classes": len(self.classnames),
            "classnames": self.classnames,
            "baseline": self.baseline,
            "base_novel": self.base_novel,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "results": [],
        }
        for row in self.rows:
            d = asdict(row)
            metrics = {k: d.pop(k) for k in ("acc1", "acc5", "mean_per_class_recall", "loss")}
            for k in ("base", "novel", "hm"):
                if d[k] is None:
                    d.pop(k)
                else:
                    metrics[k] = d.pop(k)
            if d["dataset"] is None:
                d.pop("dataset")
            d["metrics"] = metrics
            d["per_class"] = dict(zip(self.classnames, row.per_class))
            out["results"].append(d)
        return out


def evaluate(
    clip,
    data: EmbeddedSet,
    prompts: list[Prompt],
    baseline: str = DEFAULT_BASELINE,
    base_novel: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
) -> EvalReport:
    check_template(baseline, " (--baseline)")
    base_prompt = Prompt(name=baseline, templates=[baseline])
    all_prompts = [(p, p.kind) for p in prompts] + [(base_prompt, "baseline")]
    names = data.dataset.classnames
    scores: list[Score] = [score_prompt(clip, p, names, data.embeddings, data.labels) for p, _ in all_prompts]
    split_scores: list[tuple[Score, Score]] = []
    if base_novel:
        if len(names) < 2:
            raise IpoError("--base-novel needs at least two classes")
        base_l, novel_l = base_novel_labels(len(names))
        base_set, novel_set = data.subset(base_l), data.subset(novel_l)
        for p, _ in all_prompts:
            split_scores.append((
                score_prompt(clip, p, base_set.dataset.classnames, base_set.embeddings, base_set.labels),
                score_prompt(clip, p, novel_set.dataset.classnames, novel_set.embeddings, novel_set.labels),
            ))
    rows = []
    ref = scores[-1]
    for i, ((prompt, kind), score) in enumerate(zip(all_prompts, scores)):
        row = EvalRow(prompt.name, kind, score.acc1, score.acc5, score.mean_per_class_recall, score.loss, score.per_class,
                      dataset=prompt.dataset)
        if base_novel:
            b, n = split_scores[i]
            row.base, row.novel, row.hm = b.acc1, n.acc1, harmonic_mean(b.acc1, n.acc1)
        if kind != "baseline":
            if base_novel:
                (rb, rn) = split_scores[-1]
                groups = [(b.correct, rb.correct), (n.correct, rn.correct)]
                row.delta, row.delta_low, row.delta_high = paired_bootstrap(None, None, n_boot, seed, groups=groups)
            else:
                row.delta, row.delta_low, row.delta_high = paired_bootstrap(score.correct, ref.correct, n_boot, seed)
        rows.append(row)
    return EvalReport(clip.identity, list(names), len(data.labels), baseline, rows, base_novel, list(data.skipped))


def check_text_lengths(clip, prompts: list[Prompt], classnames: list[str], baseline: str | None = None,
                       truncate: bool = False) -> list[str]:
    """Every text a prompt makes must fit CLIP's context (77 tokens for CLIP): a longer one
    is cut by the tokenizer, the class name can fall off the end, and every class then gets
    the same text. Refused, or with `truncate`, allowed with one warning per prompt (the
    returned lines). Also checks, before any image is embedded, that per-class prompts
    cover every class."""
    limit = int(getattr(clip.model, "context_length", 77) or 77)
    checked = list(prompts) + ([Prompt(baseline, [baseline])] if baseline else [])
    warnings = []
    for prompt in checked:
        longest, text = 0, ""
        for texts in prompt.texts(classnames):
            for t in texts:
                n = clip.token_count(t)
                if n > longest:
                    longest, text = n, t
        if longest > limit:
            shown = text if len(text) <= 80 else text[:77] + "..."
            if not truncate:
                raise IpoError(f"prompt {prompt.name[:60]!r} makes a text of {longest} CLIP tokens, more than the "
                               f"{limit} CLIP reads: {shown!r}", "shorten it, or pass --truncate-long to cut it")
            warnings.append(f"prompt {prompt.name[:60]!r} is cut at {limit} of its {longest} CLIP tokens")
    return warnings


# CLIP_benchmark's result file name when --output is not given (clip_benchmark/cli.py,
# `--output` default and `run`: the dataset with `wds/` stripped and "/" made "_", the
# checkpoint file's base name for a path given as --pretrained).
CLIP_BENCHMARK_OUTPUT = "{dataset}_{pretrained}_{model}_{language}_{task}.json"


@dataclass(frozen=True)
class BenchmarkRun:
    """What CLIP_benchmark's result file names: its `--dataset`, `--model`, `--pretrained`."""

    dataset: str
    model: str
    pretrained: str  # the open_clip tag, or the checkpoint path as given

    def file_name(self) -> str:
        import os

        name = self.dataset.replace("wds/", "", 1) if self.dataset.startswith("wds/") else self.dataset
        pretrained = os.path.basename(self.pretrained) if os.path.isfile(self.pretrained) else self.pretrained
        # CLIP_benchmark formats the model name in as it is; a "/" in it (hf-hub:ORG/NAME)
        # would name a folder, so ipo writes "_" there
        return CLIP_BENCHMARK_OUTPUT.format(dataset=name.replace("/", "_"), pretrained=pretrained.replace("/", "_"),
                                            model=self.model.replace("/", "_"), language="en",
                                            task="zeroshot_classification")


def benchmark_run(dataset: str, clip: str, clip_weights: str | None) -> BenchmarkRun:
    """`--clip ARCH:TAG` is CLIP_benchmark's `--model ARCH --pretrained TAG`; with
    `--clip-weights FILE` the pretrained is the file's path, as CLIP_benchmark records it."""
    model, _, tag = clip.strip().partition(":")
    if clip.strip().startswith("hf-hub:"):
        model, tag = clip.strip(), ""
    elif model.endswith(".json"):
        from pathlib import Path

        model = Path(model).stem
    pretrained = str(clip_weights) if clip_weights else (tag or "none")
    return BenchmarkRun(dataset, model, pretrained)


def to_clip_benchmark(report: EvalReport, prompts: list[Prompt], run: BenchmarkRun,
                      dump_templates: bool = False, best_only: bool = False) -> dict:
    """The result CLIP_benchmark would write for this prompts file, in its own JSON
    (clip_benchmark/cli.py `run`: dataset, model, pretrained, task, metrics, language, and
    `templates` with `--dump_templates`), so that `clip_benchmark build` reads it.

    CLIP_benchmark scores a dataset's templates as one ensemble (metrics/zeroshot_classification.py
    `zero_shot_classifier`: per class, the normalised text embeddings of every template are
    averaged), and a CuPL file's sentences per class likewise: so the row is the file's
    ensemble (or per-class set), a single template only when the file has one. Metrics are
    fractions, and acc5 is NaN below 5 classes as its `evaluate` does. `best_only` (an ipo
    prompts.json, best first): the best prompt, as `ipo export` writes it by default."""
    by_prompt = list(zip(prompts, report.rows))
    chosen = None if best_only else next(((p, r) for p, r in by_prompt if r.kind in ("ensemble", "per-class")), None)
    chosen = chosen or next(((p, r) for p, r in by_prompt if r.kind != "baseline"), None)
    if chosen is None:
        raise IpoError("the prompts file gave no prompt to write as a CLIP_benchmark result")
    prompt, row = chosen
    few = len(report.classnames) < 5
    out = {
        "dataset": run.dataset, "model": run.model, "pretrained": run.pretrained, "task": "zeroshot_classification",
        "metrics": {"acc1": row.acc1 / 100, "acc5": float("nan") if few else row.acc5 / 100,
                    "mean_per_class_recall": row.mean_per_class_recall / 100},
        "language": "en",
    }
    if dump_templates:
        from ipo_cli.data.templates import str_format

        # CLIP_benchmark dumps `dataset.templates`: a list with {c}, or CuPL's class -> sentences
        out["templates"] = dict(prompt.per_class) if prompt.per_class is not None \
            else [str_format(t) for t in prompt.templates]
    return out
