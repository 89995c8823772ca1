"""`ipo optimize` and `ipo bench`: the IPO loop, and the loop over datasets and seeds."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ipo_cli.cli.console import err, fail, out, progress_bar, status, warn
from ipo_cli.cli.errors import SUMMARY_SHOWN, TERMINATED
from ipo_cli.cli.models import pull_with_progress
from ipo_cli.cli.options import (
    CLIP,
    CLUSTER,
    DATA,
    LOOP,
    MODELS,
    OUTPUT,
    CacheDirOpt,
    ClassesOpt,
    ClipWeightsOpt,
    DataRootOpt,
    DatasetOpt,
    DeviceOpt,
    GpuLayersOpt,
    ImageLoadingOpt,
    JsonOpt,
    LlmModelOpt,
    LlmOpt,
    LlmUrlOpt,
    LmmModelOpt,
    LmmOpt,
    LmmUrlOpt,
    NoBatchOpt,
    RayOpt,
    SplitOpt,
    ThreadsOpt,
)
from ipo_cli.cli.output import check_out, human_bytes, show
from ipo_cli.errors import IpoError

# ---- ipo optimize -----------------------------------------------------------------

def optimize_cmd(
    images: Annotated[Optional[Path], typer.Argument(help="Folder with one sub-folder per class (or the image root of --split).")] = None,
    classes: ClassesOpt = None,
    split: SplitOpt = None,
    shots: Annotated[Optional[int], typer.Option("--shots", help="Training images per class (paper: 1).", rich_help_panel=DATA)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, max=2**32 - 1, help="Seed of the few-shot sample and of every LLM sample.", rich_help_panel=DATA)] = None,
    base_novel: Annotated[Optional[bool], typer.Option("--base-novel/--all-classes", help="Optimise on the base half of the classes, then report base/novel/H on held-out images.", rich_help_panel=DATA)] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Optimisation steps (paper: 100).", rich_help_panel=LOOP)] = None,
    candidates: Annotated[Optional[int], typer.Option("--candidates", min=1, help="New prompts per step (paper: 5).", rich_help_panel=LOOP)] = None,
    history: Annotated[Optional[int], typer.Option("--history", min=0, help="Best earlier prompts shown to the LLM (paper: 20).", rich_help_panel=LOOP)] = None,
    patience: Annotated[Optional[int], typer.Option("--patience", min=0, help="Stop after this many steps without improvement; 0 never stops early (the official code's fixed steps).", rich_help_panel=LOOP)] = None,
    hide_below: Annotated[Optional[float], typer.Option("--hide-below", min=0, max=100, help="Leave prompts under this training accuracy (%) out of the LLM's history (the official code: 20; default 0).", rich_help_panel=LOOP)] = None,
    budget: Annotated[Optional[str], typer.Option("--budget", help="Preset steps x candidates: light (10x4), medium (30x5), heavy (100x8).", rich_help_panel=LOOP)] = None,
    llm: LlmOpt = None,
    llm_url: LlmUrlOpt = None,
    llm_model: LlmModelOpt = None,
    n_ctx: Annotated[Optional[int], typer.Option("--n-ctx", help="Context size for the LLM (default: the model's catalogue value).", rich_help_panel=MODELS)] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="LLM sampling temperature (paper: 1.0).", rich_help_panel=MODELS)] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Longest answer, in tokens.", rich_help_panel=MODELS)] = None,
    lmm: LmmOpt = None,
    mmproj: Annotated[Optional[Path], typer.Option("--mmproj", help="Projector GGUF, with --lmm FILE.gguf.", rich_help_panel=MODELS)] = None,
    handler: Annotated[Optional[str], typer.Option("--handler", help="Chat handler, with --lmm FILE.gguf.", rich_help_panel=MODELS)] = None,
    lmm_url: LmmUrlOpt = None,
    lmm_model: LmmModelOpt = None,
    clip: Annotated[Optional[str], typer.Option("--clip", help="open_clip model (default ViT-B-16:openai), as for ipo eval.", rich_help_panel=CLIP)] = None,
    clip_weights: ClipWeightsOpt = None,
    task_hint: Annotated[Optional[str], typer.Option("--task-hint", help='Names the domain in the meta-prompt, e.g. "photos of pets".', rich_help_panel=LOOP)] = None,
    select: Annotated[Optional[str], typer.Option("--select", help="Pick the final prompt on the train sample or a separate val sample (from the --pool).", rich_help_panel=LOOP)] = None,
    feedback: Annotated[Optional[str], typer.Option("--feedback", help="none, or confusions: after the history, the classes the best prompt confuses on the training images and descriptions of some misclassified ones (gain unmeasured with real weights: compare with ipo bench --strategies ipo,feedback).", rich_help_panel=LOOP)] = None,
    history_order: Annotated[Optional[str], typer.Option("--history-order", help="best (IPO: the --history best prompts) or contrastive (the best half and the worst half, each marked).", rich_help_panel=LOOP)] = None,
    pool: Annotated[Optional[str], typer.Option("--pool", help="Prompts kept for the history and the final choice: best (all) or pareto (those no other prompt beats on every class; prompts.json lists them, so ipo eval scores their ensemble).", rich_help_panel=LOOP)] = None,
    test_images: Annotated[Optional[Path], typer.Option("--test-images", help="Held-out images for --base-novel (default: the split file's test part).", rich_help_panel=DATA)] = None,
    allow_outside_root: Annotated[Optional[bool], typer.Option("--allow-outside-root", help="Let --split entries point outside the images folder.", rich_help_panel=DATA)] = None,
    dataset: DatasetOpt = None,
    data_root: DataRootOpt = None,
    fresh_sample: Annotated[Optional[bool], typer.Option("--fresh-sample", help="With --dataset: draw the few-shot sample anew even when CoOp's cached split_fewshot/shot_K-seed_S.pkl exists (used by default, as CoOp does).", rich_help_panel=DATA)] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Hand-written template the --base-novel report compares with (default: CoOp's for --dataset, else 'a photo of a {}.').", rich_help_panel=OUTPUT)] = None,
    image_loading: ImageLoadingOpt = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/<date>-<name>).", rich_help_panel=OUTPUT)] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this folder from its last complete record.", rich_help_panel=OUTPUT)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing run folder.", rich_help_panel=OUTPUT)] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Never download; name the pull command instead.", rich_help_panel=MODELS)] = False,
    device: DeviceOpt = "auto",
    gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    no_batch: NoBatchOpt = False,
    parallel: Annotated[Optional[int], typer.Option("--parallel", min=1, help="Most requests in flight at once to --llm-url (default: the slots the server reports, else --candidates); results equal a sequential run. OpenAI and vLLM get a step's candidates in one request (n).", rich_help_panel=MODELS)] = None,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find a better prompt template with an LLM in the loop (IPO)."""
    import datetime as dt

    from ipo_cli.optimize import job
    from ipo_cli.optimize.request import Overrides, Placement, make_request

    given = Overrides(
        images=images, classes=classes, split=split, shots=shots, seed=seed, base_novel=base_novel,
        steps=steps, candidates=candidates, history=history, patience=patience, hide_below=hide_below, temperature=temperature,
        max_tokens=max_tokens, task_hint=task_hint, select=select, llm=llm, llm_url=llm_url, llm_model=llm_model,
        n_ctx=n_ctx, lmm=lmm, mmproj=mmproj, handler=handler, lmm_url=lmm_url, lmm_model=lmm_model, clip=clip,
        clip_weights=clip_weights, test_images=test_images, allow_outside_root=allow_outside_root,
        dataset=dataset, data_root=data_root, baseline=baseline, fresh_sample=fresh_sample,
        image_loading=image_loading, feedback=feedback, history_order=history_order, pool=pool)
    placement = Placement(device=device, gpu_layers=gpu_layers, parallel=parallel, threads=threads, batch=not no_batch,
                          cache_dir=cache_dir, offline=offline)
    saved = None
    if resume is not None:
        from ipo_cli.optimize.run_folder import RunFolder

        if out_dir is not None and out_dir.resolve() != resume.resolve():
            raise IpoError(f"--resume {resume} continues that run in place; --out {out_dir} names another folder",
                           "drop --out (or pass the same folder)")
        saved = RunFolder.open(resume)[1].get("request", {})
    request = make_request(given, budget, saved, str(resume / "config.json") if resume is not None else "--resume")
    out_path = resume or out_dir or Path("runs") / f"{dt.date.today().isoformat()}-{Path(request.images).resolve().name}"
    if resume is None:  # the run folder (replaced by --force) is no input and lies in none (gates/paths.py)
        check_out(out_path, request.images, request.classes, request.split, request.test_images, request.mmproj,
                  request.clip_weights, *(m for m in (request.llm, request.lmm) if m and m.endswith(".gguf")),
                  folder=True, replaced=True)
    reporter = _OptimizeReporter(quiet=as_json, total=request.steps)
    try:
        summary = job.run(request, placement, out_path, reporter, resume=resume is not None, force=force)
    finally:
        reporter.close()
    show(summary, as_json, _render_summary)
    if summary["interrupted"]:
        fail(f"stopped; continue with: ipo optimize --resume {summary['run']}")
        SUMMARY_SHOWN[0] = True
        raise typer.Exit(143 if TERMINATED[0] else 130)



def bench_cmd(
    data_root: Annotated[Path, typer.Option("--data-root", help="The folder that holds CoOp's dataset folders ($DATA).", rich_help_panel=DATA)],
    datasets: Annotated[str, typer.Option("--datasets", help="all, or a comma-separated list (e.g. DTD,EuroSAT).", rich_help_panel=DATA)] = "all",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds (paper: 1,2,3).", rich_help_panel=DATA)] = "1,2,3",
    shots: Annotated[int, typer.Option("--shots", min=1, help="Training images per class (paper: 1).", rich_help_panel=DATA)] = 1,
    out_dir: Annotated[Path, typer.Option("--out", help="The bench folder: one run folder per dataset and seed, then table.md and table.json.", rich_help_panel=OUTPUT)] = Path("runs/bench"),
    budget: Annotated[Optional[str], typer.Option("--budget", help="Steps x candidates of every run: light, medium, heavy (default: the paper's 100x5).", rich_help_panel=LOOP)] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Optimisation steps of every run (overrides --budget).", rich_help_panel=LOOP)] = None,
    candidates: Annotated[Optional[int], typer.Option("--candidates", min=1, help="New prompts per step of every run (overrides --budget).", rich_help_panel=LOOP)] = None,
    llm: LlmOpt = None,
    llm_url: LlmUrlOpt = None,
    llm_model: LlmModelOpt = None,
    lmm: LmmOpt = None,
    lmm_url: LmmUrlOpt = None,
    lmm_model: LmmModelOpt = None,
    clip: Annotated[Optional[str], typer.Option("--clip", help="open_clip model (paper: ViT-B-16:openai).", rich_help_panel=CLIP)] = None,
    clip_weights: ClipWeightsOpt = None,
    strategies: Annotated[str, typer.Option("--strategies", help="Comma-separated strategies, each run on the same cells: ipo (plain IPO), feedback (--feedback confusions), contrastive (--history-order contrastive), pareto (--pool pareto); join with + to combine (feedback+pareto). The table adds each one's B/N/H and its H minus plain IPO's with a paired bootstrap interval.", rich_help_panel=LOOP)] = "ipo",
    device: DeviceOpt = "auto",
    gpu_layers: GpuLayersOpt = None,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
    ray: RayOpt = None,
    ray_gpus_per_cell: Annotated[Optional[float], typer.Option("--ray-gpus-per-cell", min=0, help="GPUs each cell asks the Ray cluster for (default: 1 where the cluster has GPUs, else 0).", rich_help_panel=CLUSTER)] = None,
) -> None:
    """The base-to-novel benchmark: an optimize run per dataset and seed, then the paper's table."""
    from ipo_cli.data import coop as presets
    from ipo_cli.optimize import bench, job
    from ipo_cli.optimize.request import Overrides, Placement

    names = presets.BASE_TO_NOVEL if datasets.strip().lower() == "all" else \
        [presets.get(n).name for n in bench.parse_list(datasets, "--datasets")]
    seed_list = bench.parse_list(seeds, "--seeds", int)
    given = Overrides(data_root=data_root, shots=shots, steps=steps, candidates=candidates, llm=llm, llm_url=llm_url,
                      llm_model=llm_model, lmm=lmm, lmm_url=lmm_url, lmm_model=lmm_model, clip=clip,
                      clip_weights=clip_weights)
    placement = Placement(device=device, gpu_layers=gpu_layers, cache_dir=cache_dir)
    strategy_list = bench.parse_list(strategies, "--strategies")
    if bench.PLAIN not in strategy_list:
        strategy_list.insert(0, bench.PLAIN)  # the reference every other strategy is compared with
    check_out(out_dir, *(presets.images_folder(presets.get(n), data_root) for n in names), clip_weights,
              folder=True, replaced=True)
    cells = bench.cells(out_dir, names, seed_list, strategy_list)
    sweep = bench.plan(cells, given, budget)
    if not as_json:
        from rich.text import Text

        err.print(Text.assemble(("bench", "bold"), f": {len(names)} dataset(s) x {len(seed_list)} seed(s)"
                                f"{f' x {len(strategy_list)} strategies' if len(strategy_list) > 1 else ''} = "
                                f"{sweep['runs']} runs ({sweep['finished']} finished), up to {sweep['llm_calls_max']} "
                                f"LLM calls and {sweep['captions_max']} image descriptions to go; folder {out_dir}"))

    def run_one(request: Any, folder: Path, resume: bool) -> dict[str, Any]:
        reporter = _OptimizeReporter(quiet=as_json, total=request.steps)
        try:
            return job.run(request, placement, folder, reporter, resume=resume)
        finally:
            reporter.close()

    from ipo_cli.cluster.executor import ray_address

    address = ray_address(ray)
    failed: dict[str, str] = {}
    try:
        if address is None:
            bench.run_cells(cells, given, budget, run_one)
        else:
            failed = _bench_on_cluster(bench, cells, given, budget, placement, address, ray_gpus_per_cell, out_dir,
                                       device, as_json)
        with status("scoring each strategy's prompt on the held-out images") if not as_json else contextlib.nullcontext():
            bench.compare(cells, placement)
    finally:
        result = bench.finish(out_dir, cells, shots, failed)
    show({"plan": sweep, **result}, as_json, lambda _: out.print(bench.markdown(result)))


def _bench_on_cluster(bench: Any, cells: list[Any], given: Any, budget: Optional[str], placement: Any, address: str,
                      gpus: Optional[float], out_dir: Path, device: str, as_json: bool) -> dict[str, str]:
    """One Ray task per unfinished cell, into the bench folder, which every node must see."""
    from ipo_cli.cluster.executor import check_shared, open_executor

    with status("connecting to the Ray cluster"):
        executor = open_executor(address, gpus_per_worker=gpus, device=device)
    try:
        check_shared(executor, out_dir, "the bench folder")
        todo = sum(1 for c in cells if not c.finished)
        with progress_bar("bench cells", todo, quiet=as_json) as advance:
            def on_cell(cell: Any, error: Optional[str]) -> None:
                if error:
                    warn(f"cell {cell.dataset} seed {cell.seed} failed: {error}")
                advance(1)

            return bench.run_cells_on(executor, cells, given, budget, placement, on_cell)
    finally:
        executor.close()


if TYPE_CHECKING:  # the job (and its loop) is imported only when a command runs, not for --help
    from ipo_cli.optimize.job import Reporter as _Reporter
else:
    _Reporter = object


class _OptimizeReporter(_Reporter):
    """Renders the job's progress with rich: the plan, bars, and one bar over the steps."""

    def __init__(self, quiet: bool, total: int):
        self.quiet, self.total = quiet, total
        self._steps: Callable[..., None] | None = None
        self._bar: Any = None
        self._done = 0

    def plan(self, plan: dict) -> None:
        if plan.get("warning"):
            warn(plan["warning"])
        if self.quiet:
            return
        def model(role: str) -> str:
            where = plan.get(f"{role}_where")
            why = plan.get(f"{role}_why")
            return f"{plan[role]}" + (f" on {where}" if where else "") + (f" ({why})" if why else "")

        from rich.text import Text

        parallel = ""
        if plan.get("llm_server"):  # a server: one request with n (OpenAI, vLLM), else requests into its slots
            parallel = (f", up to {plan['parallel']} requests in flight" if plan.get("parallel")
                        else ", sent together as the server allows")
        if plan.get("llm_answers"):  # the in-process llama.cpp path and its threads
            parallel += f" ({plan['llm_answers']})"
        err.print(Text.assemble(
            ("plan", "bold"),
            f": {plan['train_images']} training images ({plan['shots']} per class, "
            f"{plan['train_classes']} of {plan['classes']} classes), {plan['steps']} steps x "
            f"{plan['candidates']} candidates = up to {plan['llm_calls_max']} LLM calls{parallel}, "
            f"{plan['captions']} image descriptions (of {plan.get('captions_of', plan['captions'])} training "
            f"images: what fits the LLM's context)\n      LLM {model('llm')}\n      LMM {model('lmm')}\n"
            f"      CLIP {plan['clip']}; sample {plan.get('sample', '')}; run folder {plan['out']}"))

    def status(self, message: str) -> Any:
        import contextlib

        return contextlib.nullcontext() if self.quiet else status(message)

    def progress(self, description: str, total: int) -> Any:
        return progress_bar(description, total, quiet=self.quiet)

    def warn(self, message: str) -> None:
        warn(message)

    def pull(self, name: str, size: int | None) -> Any:
        if not self.quiet:
            err.print(f"pulling {name} ({human_bytes(size) if size else 'size unknown'}), needed on first use")
        return pull_with_progress(name)

    def step(self, summary: dict, state: Any) -> None:
        if self.quiet:
            return
        if self._steps is None:
            self._bar = progress_bar("optimizing", self.total)
            self._steps = self._bar.__enter__()
        advance, self._done = summary["step"] - self._done, summary["step"]  # resumed runs start midway
        self._steps(advance, status=f"best {summary['best_accuracy']:.2f}% | reused {summary['reused_tokens']}"
                              f"/{summary['prompt_tokens']} prompt tokens")

    def close(self) -> None:
        if self._steps is not None:
            self._bar.__exit__(None, None, None)


def _render_summary(summary: dict) -> None:
    from rich.table import Table

    table = Table(title="ipo optimize", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    b, base = summary["best"], summary["baseline"]
    table.add_row("best prompt", b["template"])
    table.add_row("train accuracy / loss", f"{b['accuracy']:.2f} / {b['loss']:.3f}")
    table.add_row("baseline", f"{base['template']}: {base['accuracy']:.2f} / {base['loss']:.3f}")
    table.add_row("gain", f"{summary['gain']:+.2f} points")
    if "base_novel" in summary:
        bn = summary["base_novel"]
        table.add_row("test base / novel / H", f"{bn['best']['base']:.2f} / {bn['best']['novel']:.2f} / {bn['best']['hm']:.2f}"
                      f" (baseline {bn['baseline']['hm']:.2f}; ΔH {bn['hm_delta']:+.2f} "
                      f"[{bn['hm_delta_ci'][0]:+.2f}, {bn['hm_delta_ci'][1]:+.2f}])")
    tokens = summary["tokens"]
    table.add_row("steps", f"{summary['steps']}" + (" (stopped early: no improvement)" if summary["stopped_early"] else ""))
    table.add_row("LLM calls", f"{summary['llm_calls']} ({summary['llm_calls_cached']} from cache), "
                  f"{summary['valid_candidates']} valid prompts")
    table.add_row("tokens", f"{tokens['prompt_tokens']} prompt ({tokens['reused_tokens']} reused), "
                  f"{tokens['completion_tokens']} generated")
    table.add_row("time", f"{summary['seconds']:.1f} s")
    table.add_row("run folder", summary["run"])
    out.print(table)
