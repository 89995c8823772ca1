"""`ipo bench`: the base-to-novel benchmark of CoOp / CoCoOp / IPO as one command.

Each (dataset, seed) is an ordinary `ipo optimize --dataset D --seed S --base-novel` run
folder under the bench folder: `BENCH/<dataset>/seed<S>/`. A finished run (it has
summary.json with base/novel results) is skipped, an interrupted one is resumed, so the
sweep can be stopped and started again at any point. At the end `table.md` and
`table.json` give, per dataset and on average, base (B), novel (N) and harmonic mean (H)
accuracy of the hand-written CLIP template CoOp uses for the dataset and of IPO's prompt,
as the mean and spread over seeds, with the paper's published averages beside them.

With `--strategies ipo,feedback,...` (optimize/strategies.py, PRESETS) every strategy runs on
the same cells (same datasets, seeds, few-shot samples, LLM seeds); plain IPO stays in
`seed<S>/`, another strategy in `seed<S>-<strategy>/`. Once all are done, each strategy's
prompt and plain IPO's are scored on the same held-out images (`seed<S>-compare.json`:
which images each gets right), and the table adds B/N/H per strategy with the paired
bootstrap interval of its H minus plain IPO's (clip/scoring.py, paired_bootstrap_cells).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipo_cli.errors import IpoError
from ipo_cli.gates import json_in
from ipo_cli.optimize import strategies
from ipo_cli.optimize.request import Overrides, Placement, Request, make_request

if TYPE_CHECKING:
    import numpy as np

PLAIN = "ipo"  # the strategy every other one is compared with

# The IPO paper (NeurIPS 2024), average over the 11 datasets, ViT-B/16 (shared/IPO_METHOD.md).
PAPER = {
    1: {"CLIP": (69.34, 74.22, 71.70), "IPO": (71.76, 77.00, 74.29)},
    16: {"IPO": (79.92, 80.51, 80.21)},
}


@dataclass
class Cell:
    dataset: str
    seed: int
    folder: Path
    strategy: str = "ipo"  # a name of strategies.PRESETS, or several joined with '+'

    @property
    def finished(self) -> bool:
        summary = self.summary()
        return bool(summary and "base_novel" in summary)

    def summary(self) -> dict | None:
        try:
            data = json_in.read_json(self.folder / "summary.json", "run summary")
        except IpoError:
            return None
        return data if isinstance(data, dict) else None


def parse_list(text: str, what: str, convert=str) -> list:
    try:
        items = [convert(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise IpoError(f"{what} must be a comma-separated list, not {text!r}") from None
    if not items:
        raise IpoError(f"{what} names nothing")
    if convert is int:  # seeds: the range --seed takes, said with the flag the user typed
        for item in items:
            if not 0 <= item <= 2**32 - 1:
                raise IpoError(f"{what} holds {item}; each must be from 0 to {2**32 - 1}")
    return items


def cells(out: Path, datasets: list[str], seeds: list[int], strategies_: Sequence[str] = (PLAIN,)) -> list[Cell]:
    """One cell per dataset, seed and strategy; the strategies of a dataset and seed side by side."""
    for name in strategies_:
        strategies.preset(name)  # an unknown name is refused before any work
    return [Cell(d, s, Path(out) / d / (f"seed{s}" if name == PLAIN else f"seed{s}-{name}"), name)
            for d in datasets for s in seeds for name in dict.fromkeys(strategies_)]


def cell_request(cell: Cell, given: Overrides, budget: str | None) -> Request:
    """The request of one cell: the bench's settings for this dataset and seed, base-to-novel,
    with the cell's strategy."""
    chosen = strategies.preset(cell.strategy)
    return make_request(replace(given, dataset=cell.dataset, seed=cell.seed, base_novel=True,
                                feedback=chosen.get("feedback"), history_order=chosen.get("history_order"),
                                pool=chosen.get("pool")), budget)


def plan(cells_: list[Cell], given: Overrides, budget: str | None) -> dict:
    """How many runs, LLM calls and captions the whole sweep needs (finished runs excluded)."""
    from ipo_cli.data import sampling
    from ipo_cli.optimize.plan import described_subset

    todo = [c for c in cells_ if not c.finished]
    llm_calls = captions = 0
    for cell in todo:
        request = cell_request(cell, given, budget)
        llm_calls += request.steps * request.candidates
        if (request.lmm or "").lower() != "none":
            _, train, _ = sampling.sample(request)
            captions += len(described_subset(request, {"llm": request.llm or ""}, len(train.items)))
    return {"runs": len(cells_), "finished": len(cells_) - len(todo), "to_run": len(todo),
            "llm_calls_max": llm_calls, "captions_max": captions}


def _next_request(cell: Cell, given: Overrides, budget: str | None) -> tuple[Request, bool]:
    """What an unfinished cell runs, here or on a cluster: a started cell resumes with the
    settings its config.json saved (type-checked, the file named); a new one gets the bench's."""
    config = cell.folder / "config.json"
    if not config.is_file():
        return cell_request(cell, given, budget), False
    from ipo_cli.optimize.run_folder import RunFolder

    saved = RunFolder.open(cell.folder)[1].get("request", {})
    return make_request(Overrides(), None, saved, str(config)), True


def run_cells(cells_: list[Cell], given: Overrides, budget: str | None,
              run_one: Callable[[Request, Path, bool], dict]) -> None:
    """Run or resume every unfinished cell with `run_one(request, folder, resume)`."""
    for cell in cells_:
        if cell.finished:
            continue
        request, resume = _next_request(cell, given, budget)
        summary = run_one(request, cell.folder, resume)
        if summary.get("interrupted"):
            raise KeyboardInterrupt


@dataclass
class CellUnit:
    """One cell as a unit of work elsewhere: its request, folder and whether it resumes."""

    dataset: str
    seed: int
    folder: Path
    request: Request
    resume: bool


@dataclass
class CellWork:
    """Runs one bench cell where the executor puts it (a Ray task): the same resumable
    `ipo optimize` run as locally, into the cell's folder (which the driver checked is
    shared), saying nothing on the terminal; the LLM is the worker node's own (pulled once
    into its store) or the server the request names (--llm-url)."""

    placement: Any

    def setup(self) -> None:
        pass

    def __call__(self, unit: CellUnit) -> dict:
        from ipo_cli.optimize import job

        return job.run(unit.request, self.placement, unit.folder, job.Reporter(), resume=unit.resume)


def run_cells_on(executor: Any, cells_: list[Cell], given: Overrides, budget: str | None, placement: Any,
                 on_cell: Callable[[Cell, str | None], None] | None = None) -> dict[str, str]:
    """Every unfinished cell as one unit on `executor` (one Ray task per cell); a cell that
    fails after its retries is returned (`"DATASET/seedS": reason`) and the others go on."""
    units = []
    for cell in cells_:
        if cell.finished:
            continue
        request, resume = _next_request(cell, given, budget)
        units.append(CellUnit(cell.dataset, cell.seed, cell.folder, request, resume))
    failed: dict[str, str] = {}
    by_folder = {str(c.folder): c for c in cells_}
    for outcome in executor.map_units(units, CellWork(placement), stateful=False):
        unit = outcome.unit
        error = outcome.error
        if error is None and isinstance(outcome.value, dict) and outcome.value.get("interrupted"):
            error = "interrupted"
        if error is not None:
            failed[f"{unit.dataset}/seed{unit.seed}"] = error
        if on_cell is not None:
            on_cell(by_folder[str(unit.folder)], error)
    return failed


def table(cells_: list[Cell], shots: int) -> dict[str, Any]:
    """Per dataset and on average: B, N, H of the CLIP baseline and of IPO, mean and
    standard deviation over the seeds that finished."""
    rows: dict[str, dict[str, Any]] = {}
    for cell in cells_:
        if cell.strategy != PLAIN:
            continue
        summary = cell.summary()
        if not summary or "base_novel" not in summary:
            continue
        bn = summary["base_novel"]
        row = rows.setdefault(cell.dataset, {"seeds": [], "CLIP": [], "IPO": [], "prompts": [], "paper": []})
        row["seeds"].append(cell.seed)
        row["CLIP"].append((bn["baseline"]["base"], bn["baseline"]["novel"], bn["baseline"]["hm"]))
        row["IPO"].append((bn["best"]["base"], bn["best"]["novel"], bn["best"]["hm"]))
        row["prompts"].append(summary["best"]["template"])
        if "paper" in bn:  # the paper's own prompt for the dataset, scored on the same images
            row["paper"].append((bn["paper"]["base"], bn["paper"]["novel"], bn["paper"]["hm"]))
            row["paper_prompt"] = bn["paper"]["template"]
    out: dict[str, Any] = {"shots": shots, "datasets": {}, "paper_average": PAPER.get(shots, {})}
    for name, row in rows.items():
        out["datasets"][name] = {"seeds": row["seeds"], "prompts": row["prompts"],
                                 **{m: _stats(row[m]) for m in ("CLIP", "IPO")}}
        if row["paper"]:
            out["datasets"][name]["paper_prompt"] = {"template": row["paper_prompt"], **_stats(row["paper"])}
    if rows:
        out["average"] = {m: _stats([tuple(statistics.fmean(v[i] for v in r[m]) for i in range(3))
                                     for r in rows.values()]) for m in ("CLIP", "IPO")}
        out["average"]["datasets"] = len(rows)
    if any(c.strategy != PLAIN for c in cells_):
        out["strategies"] = strategy_table(cells_)
    return out


# ---- strategies against plain IPO, on the same held-out images ------------------------------
def compare_path(cell: Cell) -> Path:
    return cell.folder.parent / f"seed{cell.seed}-compare.json"


def _groups(cells_: list[Cell]) -> dict[tuple[str, int], dict[str, Cell]]:
    out: dict[tuple[str, int], dict[str, Cell]] = {}
    for cell in cells_:
        out.setdefault((cell.dataset, cell.seed), {})[cell.strategy] = cell
    return out


def _templates(group: dict[str, Cell]) -> dict[str, str]:
    """The final prompt of each finished strategy of one dataset and seed."""
    out = {}
    for name, cell in group.items():
        summary = cell.summary()
        if summary and "base_novel" in summary:
            out[name] = summary["best"]["template"]
    return out


def compare(cells_: list[Cell], placement: Placement) -> list[Path]:
    """For each dataset and seed where plain IPO and another strategy have finished: which
    held-out base and novel images each final prompt gets right, written once (again only
    when a prompt changed). CLIP is loaded once per model; the images' embeddings come from
    the cache the runs filled."""
    written = []
    models: dict[str, Any] = {}
    for group in _groups(cells_).values():
        templates = _templates(group)
        if PLAIN not in templates or len(templates) < 2:
            continue
        path = compare_path(group[PLAIN])
        try:
            old = json_in.read_json(path, "bench comparison")
        except IpoError:
            old = None
        if isinstance(old, dict) and old.get("templates") == templates:
            continue
        config = json_in.object_at(json_in.read_json(group[PLAIN].folder / "config.json", "run config"), "run config")
        saved = config.get("request", {})
        request = make_request(Overrides(), None, saved)
        right = correct_images(request, templates, placement, models)
        path.write_text(json.dumps({"templates": templates, "correct": right}) + "\n", encoding="utf-8")
        written.append(path)
    return written


def correct_images(request: Request, templates: dict[str, str], placement: Placement,
                   models: dict[str, Any] | None = None) -> dict[str, dict[str, str]]:
    """Per prompt, its hits on the run's held-out base and novel images ('1' right, '0'
    wrong, in image order): the images and the split that `ipo optimize --base-novel` scored
    (optimize/job.py), so the means are its B and N."""
    from ipo_cli import cache
    from ipo_cli.clip import evaluate
    from ipo_cli.clip.model import load_clip
    from ipo_cli.clip.scoring import Prompt, score_prompt
    from ipo_cli.clip.spec import parse_clip
    from ipo_cli.data import sampling
    from ipo_cli.data.folders import base_novel_labels

    models = {} if models is None else models
    spec = parse_clip(request.clip, request.clip_weights)
    if spec.identity not in models:
        models[spec.identity] = load_clip(spec, placement.device)
    clip = models[spec.identity]
    store = cache.Store(cache.cache_root(placement.cache_dir), "embeddings")
    clip.remember(store)
    full, _, _ = sampling.sample(request)
    test = evaluate.embed_dataset(clip, sampling.held_out_set(request, full), store)
    base_l, novel_l = base_novel_labels(len(test.dataset.classnames))
    parts = {"base": test.subset(base_l), "novel": test.subset(novel_l)}
    out: dict[str, dict[str, str]] = {}
    for name, template in templates.items():
        out[name] = {}
        for part, data in parts.items():
            hit = score_prompt(clip, Prompt(template, [template]), data.dataset.classnames, data.embeddings,
                               data.labels).correct
            out[name][part] = "".join("1" if h else "0" for h in hit)
    return out


def _bits(text: Any) -> np.ndarray:
    import numpy as np

    if not isinstance(text, str) or set(text) - {"0", "1"}:
        raise IpoError("a bench comparison file is damaged", "delete the seed*-compare.json files and run ipo bench again")
    return np.frombuffer(text.encode(), dtype=np.uint8) == ord("1")


def strategy_table(cells_: list[Cell], n_boot: int = 2000) -> dict[str, Any]:
    """Per strategy, per dataset and over all: B, N, H (mean and spread over seeds), and H
    minus plain IPO's with a 95% paired bootstrap interval over the held-out images of every
    seed (and dataset) where both finished."""
    from ipo_cli.clip.scoring import paired_bootstrap_cells

    names = list(dict.fromkeys(c.strategy for c in cells_))
    found: dict[str, dict[str, Any]] = {n: {"datasets": {}} for n in names}
    pairs: dict[str, dict[str, list]] = {n: {} for n in names}
    for (dataset, seed), group in _groups(cells_).items():
        comparison: dict = {}
        if PLAIN in group:
            try:
                read = json_in.read_json(compare_path(group[PLAIN]), "bench comparison")
                comparison = read if isinstance(read, dict) else {}
            except IpoError:
                pass
        for name, cell in group.items():
            summary = cell.summary()
            if not summary or "base_novel" not in summary:
                continue
            bn = summary["base_novel"]["best"]
            row = found[name]["datasets"].setdefault(dataset, {"seeds": [], "values": [], "prompts": []})
            row["seeds"].append(seed)
            row["values"].append((bn["base"], bn["novel"], bn["hm"]))
            row["prompts"].append(summary["best"]["template"])
            right = comparison.get("correct") or {}
            if name != PLAIN and name in right and PLAIN in right \
                    and comparison.get("templates", {}).get(name) == summary["best"]["template"]:
                pairs[name].setdefault(dataset, []).append(
                    [(_bits(right[name][k]), _bits(right[PLAIN][k])) for k in ("base", "novel")])
    out: dict[str, Any] = {}
    for name in names:
        datasets = found[name]["datasets"]
        entry: dict[str, Any] = {"datasets": {}}
        for dataset, row in datasets.items():
            entry["datasets"][dataset] = {"seeds": row["seeds"], "prompts": row["prompts"], **_stats(row["values"])}
            if pairs[name].get(dataset):
                entry["datasets"][dataset]["vs_ipo"] = _delta(paired_bootstrap_cells(pairs[name][dataset], n_boot),
                                                              len(pairs[name][dataset]))
        if datasets:
            entry["average"] = {**_stats([tuple(statistics.fmean(v[i] for v in r["values"]) for i in range(3))
                                          for r in datasets.values()]), "datasets": len(datasets)}
            every = [c for cells_of in pairs[name].values() for c in cells_of]
            if every:
                entry["average"]["vs_ipo"] = _delta(paired_bootstrap_cells(every, n_boot), len(every))
        out[name] = entry
    return out


def _delta(result: tuple[float, float, float], cells_used: int) -> dict[str, Any]:
    delta, low, high = result
    return {"H_delta": delta, "low": low, "high": high, "cells": cells_used}


def strategy_markdown(found: dict[str, Any]) -> list[str]:
    lines = ["", "## Strategies against plain IPO", "",
             "Mean ± standard deviation over seeds; ΔH is the strategy's H minus plain IPO's on the same "
             "held-out images, with a 95% paired bootstrap interval (images resampled within every seed "
             "and dataset; the average row pools every cell).", "",
             "| strategy | dataset | seeds | base | novel | H | ΔH vs ipo [95% interval] |",
             "|---|---|---|---|---|---|---|"]

    def delta(row: dict) -> str:
        d = row.get("vs_ipo")
        return f"{d['H_delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] ({d['cells']} cells)" if d else "—"

    for name, entry in found.items():
        for dataset, row in entry["datasets"].items():
            cells = " | ".join(f"{row[k]['mean']:.2f} ± {row[k]['std']:.2f}" for k in ("base", "novel", "H"))
            lines.append(f"| {name} | {dataset} | {len(row['seeds'])} | {cells} | {delta(row)} |")
        if "average" in entry:
            avg = entry["average"]
            cells = " | ".join(f"{avg[k]['mean']:.2f} ± {avg[k]['std']:.2f}" for k in ("base", "novel", "H"))
            lines.append(f"| **{name}** | **average ({avg['datasets']} datasets)** | | {cells} | {delta(avg)} |")
    return lines


def _stats(values: list[tuple[float, ...]]) -> dict[str, Any]:
    out = {}
    for i, key in enumerate(("base", "novel", "H")):
        column = [v[i] for v in values]
        out[key] = {"mean": statistics.fmean(column), "std": statistics.pstdev(column) if len(column) > 1 else 0.0}
    return out


def markdown(result: dict) -> str:
    def cell(stats: dict) -> str:
        return " | ".join(f"{stats[k]['mean']:.2f} ± {stats[k]['std']:.2f}" for k in ("base", "novel", "H"))

    lines = [f"# Base-to-novel, {result['shots']} shot(s)", "",
             "Mean ± standard deviation over seeds; CLIP is the hand-written template CoOp uses for each "
             "dataset (the paper's CLIP row).", "",
             "| dataset | seeds | CLIP base | CLIP novel | CLIP H | IPO base | IPO novel | IPO H |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in result["datasets"].items():
        lines.append(f"| {name} | {len(row['seeds'])} | {cell(row['CLIP'])} | {cell(row['IPO'])} |")
        if "paper_prompt" in row:  # the paper's published prompt, in the IPO columns
            lines.append(f"| {name}, the paper's prompt | {len(row['seeds'])} | — | — | — | {cell(row['paper_prompt'])} |")
    if "average" in result:
        avg = result["average"]
        lines.append(f"| **average ({avg['datasets']} datasets)** | | {cell(avg['CLIP'])} | {cell(avg['IPO'])} |")
    paper = result.get("paper_average") or {}
    if paper:
        def ref(name: str) -> str:
            return " | ".join(f"{v:.2f}" for v in paper[name]) if name in paper else " | ".join(["—"] * 3)

        lines.append(f"| *paper, average of 11* | 3 | {ref('CLIP')} | {ref('IPO')} |")
    if result.get("strategies"):
        lines += strategy_markdown(result["strategies"])
    if result.get("failed"):
        lines += ["", "Cells that failed (run the same command again to retry them):", ""]
        lines += [f"- {name}: {reason}" for name, reason in result["failed"].items()]
    lines += ["", "Prompts found:", ""]
    for name, row in result["datasets"].items():
        for seed, prompt in zip(row["seeds"], row["prompts"]):
            lines.append(f"- {name}, seed {seed}: {prompt}")
    return "\n".join(lines) + "\n"


def write_tables(out: Path, result: dict) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "table.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (Path(out) / "table.md").write_text(markdown(result), encoding="utf-8")


def finish(out: Path, cells_: list[Cell], shots: int, failed: dict[str, str] | None = None) -> dict[str, Any]:
    """The end of a bench, finished or stopped: the table of what is done (table.json,
    table.md, with the cells that failed) and, once a dataset has a result, the bench
    report linking every run's."""
    result = table(cells_, shots)
    if failed:
        result["failed"] = dict(failed)
    write_tables(out, result)
    if result["datasets"]:
        from ipo_cli.explain import report

        report.write_bench(out)
    return result
