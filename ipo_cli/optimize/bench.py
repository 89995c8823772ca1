"""`ipo bench`: the base-to-novel benchmark of CoOp / CoCoOp / IPO as one command.

Each (dataset, seed) is an ordinary `ipo optimize --dataset D --seed S --base-novel` run
folder under the bench folder: `BENCH/<dataset>/seed<S>/`. A finished run (it has
summary.json with base/novel results) is skipped, an interrupted one is resumed, so the
sweep can be stopped and started again at any point. At the end `table.md` and
`table.json` give, per dataset and on average, base (B), novel (N) and harmonic mean (H)
accuracy of the hand-written CLIP template CoOp uses for the dataset and of IPO's prompt,
as the mean and spread over seeds, with the paper's published averages beside them.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ipo_cli.errors import IpoError
from ipo_cli.gates import json_in
from ipo_cli.optimize.request import Overrides, Request, make_request

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
    return items


def cells(out: Path, datasets: list[str], seeds: list[int]) -> list[Cell]:
    return [Cell(d, s, Path(out) / d / f"seed{s}") for d in datasets for s in seeds]


def cell_request(cell: Cell, given: Overrides, budget: str | None) -> Request:
    """The request of one cell: the bench's settings for this dataset and seed, base-to-novel."""
    return make_request(replace(given, dataset=cell.dataset, seed=cell.seed, base_novel=True), budget)


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


def run_cells(cells_: list[Cell], given: Overrides, budget: str | None,
              run_one: Callable[[Request, Path, bool], dict]) -> None:
    """Run or resume every unfinished cell with `run_one(request, folder, resume)`."""
    for cell in cells_:
        if cell.finished:
            continue
        resume = (cell.folder / "config.json").is_file()
        request = cell_request(cell, given, budget)
        if resume:
            from ipo_cli.optimize.run_folder import RunFolder

            saved = RunFolder.open(cell.folder)[1].get("request", {})
            request = make_request(Overrides(), None, saved)
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
        resume = (cell.folder / "config.json").is_file()
        request = cell_request(cell, given, budget)
        if resume:
            from ipo_cli.optimize.run_folder import RunFolder

            saved = RunFolder.open(cell.folder)[1].get("request", {})
            request = make_request(Overrides(), None, saved)
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
    return out


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
