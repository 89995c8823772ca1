"""`ipo report RUN`: why the prompt works, from a finished run folder.

Written to RUN/report/: `report.html` (one self-contained file: plots inline as PNG,
thumbnails inline, no network needed) and the plots as PNG files, made with matplotlib:

- the search: accuracy and loss of every scored candidate per step, the best so far and
  the baseline; with --base-novel, the held-out base / novel / H of the final prompt and
  the baseline;
- per class: the final prompt's training accuracy minus the baseline's, sorted, and the
  confusions (true -> predicted) whose counts changed most;
- word attribution: each word of the final prompt (and each phrase between punctuation)
  dropped in turn and the prompt re-scored on the cached training embeddings; the change
  in loss and accuracy says what each word carries;
- the top distinct prompts, and their ensemble scored as one prompt;
- the training images with the descriptions the LLM received.

Image embeddings come from the cache (nothing the cache holds is recomputed); CLIP is
loaded only to encode the few new texts the attribution needs.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ipo_cli.errors import IpoError, shown
from ipo_cli.gates import json_in
from ipo_cli.gates.text import html_text, terminal_safe
from ipo_cli.optimize.meta_prompt import PLACEHOLDER

TOP_PROMPTS = 5


@dataclass
class Attribution:
    unit: str  # the word or phrase dropped
    kind: str  # word | phrase
    variant: str  # the prompt without it
    loss_change: float  # loss without it minus loss with it: > 0 means the unit helps
    accuracy_change: float  # accuracy with it minus without it: > 0 means the unit helps


@dataclass
class Report:
    run: str
    steps: list[dict]
    candidates: list[dict]  # scored candidates, baseline included
    best: dict
    baseline: dict
    classnames: list[str]
    per_class_delta: list[tuple[str, float]]  # (class, final - baseline accuracy), sorted
    confusions: list[dict]  # {true, predicted, baseline, final}
    attribution: list[Attribution]
    top_prompts: list[dict]  # {template, accuracy, loss}
    ensemble: dict  # {templates, accuracy, loss}
    base_novel: dict | None
    images: list[dict] = field(default_factory=list)  # {path, description}
    feedback: list[dict] = field(default_factory=list)  # {step, text}: what --feedback showed the LLM

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run, "best": _brief(self.best), "baseline": _brief(self.baseline),
            "steps": len(self.steps) - 1, "candidates": len(self.candidates) - 1,
            "per_class_delta": [{"class": c, "delta": d} for c, d in self.per_class_delta],
            "confusions": self.confusions,
            "attribution": [a.__dict__ for a in self.attribution],
            "top_prompts": self.top_prompts, "ensemble": self.ensemble, "base_novel": self.base_novel,
            "images": self.images, "feedback": self.feedback,
        }


def _brief(record: dict) -> dict:
    return {"template": record["template"], "accuracy": record["accuracy"], "loss": record["loss"], "step": record["step"]}


# ---- word attribution ---------------------------------------------------------------------
def variants(template: str) -> list[tuple[str, str, str]]:
    """(unit, kind, template without it) for each word and each phrase between punctuation;
    the class placeholder is never dropped."""
    out: list[tuple[str, str, str]] = []
    words = template.split()
    for i, word in enumerate(words):
        if PLACEHOLDER in word:
            continue
        rest = " ".join(words[:i] + words[i + 1:])
        out.append((word, "word", rest))
    pieces = re.split(r"(?<=[,;:.!?])\s+", template.strip())
    if len(pieces) > 1:
        for i, piece in enumerate(pieces):
            if PLACEHOLDER in piece:
                continue
            out.append((piece, "phrase", " ".join(pieces[:i] + pieces[i + 1:])))
    seen, unique = set(), []
    for unit in out:
        if unit[2] and unit[2] not in seen and PLACEHOLDER in unit[2]:
            seen.add(unit[2])
            unique.append(unit)
    return unique


def attribute(template: str, score: Callable[[str], tuple[float, float]]) -> list[Attribution]:
    """`score(template)` -> (accuracy, loss). Sorted by how much each unit lowers the loss."""
    acc, loss = score(template)
    rows = []
    for unit, kind, variant in variants(template):
        v_acc, v_loss = score(variant)
        rows.append(Attribution(unit, kind, variant, v_loss - loss, acc - v_acc))
    return sorted(rows, key=lambda a: -a.loss_change)


# ---- building the report ------------------------------------------------------------------
def build(run: Path, cache_dir: Path | None = None, device: str = "auto", clip=None, train=None,
          image_loading: str | None = None) -> Report:
    """Everything the report shows. `clip` and `train` (an EmbeddedSet) may be passed by a
    caller that has them loaded (the end of `ipo optimize`). The images are decoded as the
    run decoded them unless `image_loading` says otherwise."""
    from ipo_cli import cache
    from ipo_cli.clip import evaluate
    from ipo_cli.clip.scoring import Prompt, score_embeddings, score_prompt
    from ipo_cli.clip.spec import DEFAULT_CLIP
    from ipo_cli.data.folders import Dataset
    from ipo_cli.optimize.loop import rank_key
    from ipo_cli.optimize.run_folder import RunFolder

    folder, config = RunFolder.open(Path(run))
    records = folder.records()
    steps = [r for r in records if r.get("type") == "step"]
    scored = [r for r in records if r.get("type") == "candidate" and r.get("valid")]
    finished = {s["step"] for s in steps}
    scored = [r for r in scored if r["step"] in finished]
    if not scored:
        raise IpoError(f"{run} has no scored prompt yet", "run or resume the optimisation first")
    classnames = _run_classnames(run, config)
    _check_scores(run, scored, len(classnames))
    baseline = next((r for r in scored if r["step"] == 0), None)
    if baseline is None:
        raise IpoError(f"the history of {run} has no step-0 record (the baseline's score), which the report "
                       "compares every prompt with", "restore history.jsonl, or run the optimisation again")
    best = min(scored, key=lambda r: rank_key(r, "train"))
    request: dict = config["request"] if isinstance(config.get("request"), dict) else {}

    if train is None:
        items = _training_items(run, config, len(classnames))
        if not items:
            raise IpoError(f"the training images of {run} are gone", "the report needs them (their embeddings)")
        data = Dataset(classnames, items, image_loading=image_loading or run_image_loading(config))
        store = cache.Store(cache.cache_root(cache_dir), "embeddings")
        if clip is None:
            from ipo_cli.clip.loading import open_clip_model

            # a report made before has cached every text it needs: then no model is loaded
            needed = _texts_needed(best, baseline, scored, classnames)
            clip = open_clip_model(request.get("clip") or DEFAULT_CLIP, request.get("clip_weights"),
                                   store, data.paths, needed, device, image_loading=data.image_loading)
        train = evaluate.embed_dataset(clip, data, store)

    def score(template: str) -> tuple[float, float]:
        s = score_prompt(clip, Prompt(template, [template]), classnames, train.embeddings, train.labels)
        return s.acc1, s.loss

    per_class = [(c, b - a) for c, a, b in zip(classnames, baseline["per_class"], best["per_class"])]
    per_class.sort(key=lambda x: x[1])

    def predictions(template: str) -> np.ndarray:
        from ipo_cli.clip.scoring import fill

        text = clip.encode_texts([fill(template, c) for c in classnames])
        return np.argmax(train.embeddings @ text.T, axis=1)

    labels = np.asarray(train.labels)
    pred_base, pred_best = predictions(baseline["template"]), predictions(best["template"])
    n = len(classnames)
    conf_base = np.zeros((n, n), int)
    conf_best = np.zeros((n, n), int)
    np.add.at(conf_base, (labels, pred_base), 1)
    np.add.at(conf_best, (labels, pred_best), 1)
    change = conf_best - conf_base
    np.fill_diagonal(change, 0)
    order = np.dstack(np.unravel_index(np.argsort(-np.abs(change), axis=None), change.shape))[0]
    confusions = [{"true": classnames[t], "predicted": classnames[p], "baseline": int(conf_base[t, p]),
                   "final": int(conf_best[t, p])} for t, p in order[:8] if change[t, p] != 0]

    distinct = _distinct(scored)
    templates = [p["template"] for p in distinct]
    ens = score_embeddings(train.embeddings, train.labels,
                           _ensemble(clip, templates, classnames), clip.logit_scale)
    summary_path = Path(run) / "summary.json"
    base_novel = None
    if summary_path.is_file():
        try:
            base_novel = json_in.object_at(json_in.read_json(summary_path, "run summary"), "run summary").get("base_novel")
        except IpoError:
            base_novel = None
    images = config.get("descriptions") if isinstance(config.get("descriptions"), list) else None
    images = images or [{"path": str(p), "description": ""} for p in train.dataset.paths[:40]]
    return Report(str(run), steps, scored, best, baseline, classnames, per_class, confusions,
                  attribute(best["template"], score), distinct,
                  {"templates": templates, "accuracy": ens.acc1, "loss": ens.loss}, base_novel,
                  [i for i in images if isinstance(i, dict) and isinstance(i.get("path"), str)
                   and isinstance(i.get("description", ""), str)],
                  feedback_seen(Path(run)))


def run_image_loading(config: dict) -> str:
    """How the run decoded its images (config.json's `image_loading`, written since ipo
    records it); a run from before: "reference" for a --dataset run, as ipo loaded those,
    else "ipo". The report must load them the same way, or its numbers differ from the run's
    and every embedding is computed again (the cache key names the loading)."""
    from ipo_cli.data.folders import IMAGE_LOADINGS

    saved = config.get("image_loading")
    if isinstance(saved, str) and saved in IMAGE_LOADINGS:
        return saved
    request: dict = config["request"] if isinstance(config.get("request"), dict) else {}
    saved = request.get("image_loading")
    if isinstance(saved, str) and saved in IMAGE_LOADINGS:
        return saved
    return "reference" if request.get("dataset") else "ipo"


def _run_classnames(run: Path, config: dict) -> list[str]:
    """The training classes config.json names: a list of strings (a string would be read as
    one class per character)."""
    for key in ("train_classnames", "classnames"):
        names = config.get(key)
        if names is None:
            continue
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise IpoError(f"{run}/config.json: {key!r} is {shown(names)}, not a list of class names",
                           "restore config.json, or run the optimisation again")
        return names
    raise IpoError(f"{run}/config.json names no classes (no 'train_classnames')",
                   "restore config.json, or run the optimisation again")


def _check_scores(run: Path, scored: list[dict], n_classes: int) -> None:
    """Every scored record the report draws: a per-class accuracy for each class, each a
    finite number (the history's own check, run_folder.check_record, covers the rest)."""
    for r in scored:
        per_class = r.get("per_class")
        where = f"the history of {run}: the prompt {shown(r.get('template'), 60)} of step {r.get('step')}"
        if per_class is None:
            raise IpoError(f"{where} has no 'per_class' accuracies, which the report's per-class changes need",
                           "restore history.jsonl, or run the optimisation again")
        if not (isinstance(per_class, list) and len(per_class) == n_classes
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in per_class)):
            raise IpoError(f"{where} has 'per_class' {shown(per_class, 60)}, not {n_classes} finite accuracies "
                           "(one per class)", "restore history.jsonl, or run the optimisation again")


def _training_items(run: Path, config: dict, n_classes: int) -> list[Any]:
    """The training images config.json's split names, those still on disk."""
    from ipo_cli.data.folders import ImageItem

    split = config.get("split")
    train = split.get("train") if isinstance(split, dict) else None
    if train is None:
        return []
    if not isinstance(train, list):
        raise IpoError(f"{run}/config.json: the training split is {shown(train)}, not a list of [path, label]")
    items = []
    for n, entry in enumerate(train):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], int) and not isinstance(entry[1], bool) and 0 <= entry[1] < n_classes):
            raise IpoError(f"{run}/config.json: training image {n} is {shown(entry)}, not [path, label] with a "
                           f"label from 0 to {n_classes - 1}", "restore config.json, or run the optimisation again")
        if Path(entry[0]).is_file():
            items.append(ImageItem(Path(entry[0]), entry[1]))
    return items


def feedback_seen(run: Path) -> list[dict]:
    """The feedback section of each step's saved meta-prompt (--feedback; none otherwise)."""
    from ipo_cli.optimize.strategies import feedback_shown

    out = []
    for path in sorted((Path(run) / "meta_prompts").glob("step_*.txt")):
        if not path.stem.split("_")[-1].isdigit():
            continue
        text = feedback_shown(path.read_text(encoding="utf-8", errors="replace"))
        if text:
            out.append({"step": int(path.stem.split("_")[-1]), "text": text})
    return out


def _distinct(scored: list[dict]) -> list[dict]:
    from ipo_cli.optimize.loop import rank_key

    distinct, seen = [], set()
    for r in sorted(scored, key=lambda r: rank_key(r, "train")):
        key = " ".join(r["template"].lower().split())
        if key not in seen:
            seen.add(key)
            distinct.append({"template": r["template"], "accuracy": r["accuracy"], "loss": r["loss"]})
        if len(distinct) == TOP_PROMPTS:
            break
    return distinct


def _texts_needed(best: dict, baseline: dict, scored: list[dict], classnames: list[str]) -> list[str]:
    from ipo_cli.clip.scoring import fill

    templates = [best["template"], baseline["template"], *(v for _, _, v in variants(best["template"])),
                 *(p["template"] for p in _distinct(scored))]
    return [fill(t, c) for t in dict.fromkeys(templates) for c in classnames]


def _ensemble(clip, templates: list[str], classnames: list[str]) -> np.ndarray:
    from ipo_cli.clip.scoring import Prompt, class_embeddings

    return class_embeddings(clip, Prompt("ensemble", templates), classnames)


# ---- plots and the HTML file ---------------------------------------------------------------
def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plots(report: Report) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # a prompt or a name with $...$ is text, not math
    import matplotlib.pyplot as plt

    out = {}
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 3.6))
    steps = [r["step"] for r in report.candidates]
    ax_acc.scatter(steps, [r["accuracy"] for r in report.candidates], s=12, alpha=0.6, label="candidates")
    ax_loss.scatter(steps, [r["loss"] for r in report.candidates], s=12, alpha=0.6, color="tab:orange")
    by_step = [s for s in report.steps]
    ax_acc.plot([s["step"] for s in by_step], [s["best_accuracy"] for s in by_step], color="black", label="best so far")
    ax_loss.plot([s["step"] for s in by_step], [s["best_loss"] for s in by_step], color="black")
    ax_acc.axhline(report.baseline["accuracy"], ls="--", color="grey", label="baseline")
    ax_loss.axhline(report.baseline["loss"], ls="--", color="grey")
    ax_acc.set(xlabel="step", ylabel="training accuracy (%)", title="accuracy")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss")
    ax_acc.legend(fontsize=8)
    out["search.png"] = _figure_png(fig)

    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(report.per_class_delta))))
    names = [terminal_safe(c, newlines=False) for c, _ in report.per_class_delta]  # outside text, drawn: controls escaped
    deltas = [d for _, d in report.per_class_delta]
    ax.barh(names, deltas, color=["tab:red" if d < 0 else "tab:green" for d in deltas])
    ax.axvline(0, color="black", lw=0.8)
    ax.set(xlabel="final minus baseline training accuracy (points)", title="per class")
    out["per_class.png"] = _figure_png(fig)

    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(report.attribution))))
    units = [terminal_safe(a.unit, newlines=False) for a in report.attribution][::-1]
    changes = [a.loss_change for a in report.attribution][::-1]
    ax.barh(units, changes, color=["tab:green" if c > 0 else "tab:red" for c in changes])
    ax.axvline(0, color="black", lw=0.8)
    ax.set(xlabel="loss without it minus loss with it (> 0: it helps)", title="word attribution")
    out["attribution.png"] = _figure_png(fig)
    return out


def _thumbnail(path: str) -> str:
    try:
        from ipo_cli.data.folders import load_image

        img = load_image(Path(path))
        img.thumbnail((96, 96))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:  # noqa: BLE001 - a missing image is shown as missing
        return ""


def _highlight(report: Report) -> str:
    words = {a.unit: a.loss_change for a in report.attribution if a.kind == "word"}
    scale = max((abs(v) for v in words.values()), default=0) or 1
    spans = []
    for word in report.best["template"].split():
        change = words.get(word)
        if change is None:
            spans.append(f"<b>{html_text(word)}</b>")
            continue
        alpha = min(1.0, abs(change) / scale)
        colour = f"rgba(0,160,0,{alpha:.2f})" if change > 0 else f"rgba(220,0,0,{alpha:.2f})"
        spans.append(f'<span style="background:{colour}" title="loss change {change:+.4f}">{html_text(word)}</span>')
    return " ".join(spans)


def to_html(report: Report, pngs: dict[str, bytes]) -> str:
    e = html_text

    def img(name: str) -> str:
        return f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(pngs[name]).decode()}">'

    def table(headers: list[str], rows: list[list[Any]]) -> str:
        head = "".join(f"<th>{e(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>ipo report</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.imgs{display:flex;flex-wrap:wrap}"
        ".imgs div{width:220px;margin:6px;font-size:12px}</style></head><body>",
        f"<h1>ipo report: {e(report.run)}</h1>",
        f"<p>Final prompt: <b>{e(report.best['template'])}</b> — training accuracy {report.best['accuracy']:.2f}, "
        f"loss {report.best['loss']:.4f} (baseline <i>{e(report.baseline['template'])}</i>: "
        f"{report.baseline['accuracy']:.2f}, {report.baseline['loss']:.4f}).</p>",
        "<h2>The search</h2>", img("search.png"),
    ]
    if report.base_novel:
        bn = report.base_novel
        parts.append(table(["", "base", "novel", "H"], [
            ["final prompt", f"{bn['best']['base']:.2f}", f"{bn['best']['novel']:.2f}", f"{bn['best']['hm']:.2f}"],
            ["baseline", f"{bn['baseline']['base']:.2f}", f"{bn['baseline']['novel']:.2f}",
             f"{bn['baseline']['hm']:.2f}"]]))
    parts += ["<h2>Per class</h2>", img("per_class.png"),
              "<h3>Confusions that changed most</h3>",
              table(["true class", "predicted as", "baseline", "final"],
                    [[c["true"], c["predicted"], c["baseline"], c["final"]] for c in report.confusions]),
              "<h2>Which words matter</h2>", f"<p style='font-size:1.3em'>{_highlight(report)}</p>",
              img("attribution.png"),
              table(["dropped", "kind", "loss change", "accuracy change"],
                    [[a.unit, a.kind, f"{a.loss_change:+.4f}", f"{a.accuracy_change:+.2f}"] for a in report.attribution]),
              "<h2>Top distinct prompts</h2>",
              table(["prompt", "accuracy", "loss"],
                    [[p["template"], f"{p['accuracy']:.2f}", f"{p['loss']:.4f}"] for p in report.top_prompts]
                    + [[f"ensemble of these {len(report.ensemble['templates'])}", f"{report.ensemble['accuracy']:.2f}",
                        f"{report.ensemble['loss']:.4f}"]]),
              *_feedback_html(report),
              "<h2>The images the loop saw</h2><div class='imgs'>"]
    for item in report.images:
        src = _thumbnail(item.get("path", ""))
        thumb = f"<img src='{src}'>" if src else "(missing)"
        parts.append(f"<div>{thumb}<br>{e(Path(item.get('path', '')).name)}<br>{e(item.get('description', ''))}</div>")
    parts.append("</div></body></html>")
    return "\n".join(parts)


def _feedback_html(report: Report) -> list[str]:
    """The feedback the LLM saw at each step (--feedback), as it was written into the meta-prompt."""
    if not report.feedback:
        return []
    rows = "".join(f"<tr><td>{item['step']}</td><td><pre style='white-space:pre-wrap;margin:0'>"
                   f"{html_text(item['text'])}</pre></td></tr>" for item in report.feedback)
    return ["<h2>Feedback the LLM saw</h2>", f"<table><tr><th>step</th><th>feedback</th></tr>{rows}</table>"]


def write(report: Report, out: Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pngs = plots(report)
    written = []
    for name, data in pngs.items():
        (out / name).write_bytes(data)
        written.append(out / name)
    (out / "report.html").write_text(to_html(report, pngs), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return [out / "report.html", *written]


# ---- a bench folder ---------------------------------------------------------------------------
def is_bench(folder: Path) -> bool:
    return (Path(folder) / "table.json").is_file()


def write_bench(folder: Path) -> Path:
    """BENCH/report.html: the base-to-novel table, H per dataset (CLIP vs IPO) as a plot,
    and a link to each run's own report."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # a prompt or a name with $...$ is text, not math
    import matplotlib.pyplot as plt

    folder = Path(folder)
    try:
        table = json_in.read_json(folder / "table.json", "bench table")
        rows = table["datasets"]
        assert isinstance(rows, dict)
        for row in rows.values():  # every cell a number, the seeds a list: checked before drawing
            assert isinstance(row["seeds"], list)
            for m in ("CLIP", "IPO"):
                for k in ("base", "novel", "H"):
                    assert all(isinstance(row[m][k][v], (int, float)) for v in ("mean", "std"))
    except (IpoError, KeyError, TypeError, AssertionError):
        raise IpoError(f"{folder}/table.json is not an ipo bench table", "run ipo bench again") from None
    names = list(rows)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 3.5))
    x = np.arange(len(names))
    for offset, method in ((-0.2, "CLIP"), (0.2, "IPO")):
        ax.bar(x + offset, [rows[n][method]["H"]["mean"] for n in names], width=0.4, label=method,
               yerr=[rows[n][method]["H"]["std"] for n in names])
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylabel="H (%)", title=f"base-to-novel H, {table.get('shots', '?')} shot(s)")
    ax.legend()
    png = _figure_png(fig)
    (folder / "h_per_dataset.png").write_bytes(png)
    e = html_text  # the text-out gate: every value from the table is escaped (gates/text.py)
    lines = ["<!doctype html><html><head><meta charset='utf-8'><title>ipo bench</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>",
             f"<h1>ipo bench: {e(str(folder))}</h1>",
             f"<img alt='H per dataset' src='data:image/png;base64,{base64.b64encode(png).decode()}'>",
             "<table><tr><th>dataset</th><th>seeds</th>"
             + "".join(f"<th>{m} {k}</th>" for m in ("CLIP", "IPO") for k in ("base", "novel", "H")) + "</tr>"]
    for name in names:
        row = rows[name]
        cells = "".join(f"<td>{row[m][k]['mean']:.2f} ± {row[m][k]['std']:.2f}</td>"
                        for m in ("CLIP", "IPO") for k in ("base", "novel", "H"))
        links = ", ".join(f"<a href='{e(urllib.parse.quote(str(name)))}/seed{e(s)}/report/report.html'>seed {e(s)}</a>"
                          for s in row["seeds"])
        lines.append(f"<tr><td>{e(name)} ({links})</td><td>{len(row['seeds'])}</td>{cells}</tr>")
    lines.append("</table></body></html>")
    (folder / "report.html").write_text("\n".join(lines), encoding="utf-8")
    return folder / "report.html"
