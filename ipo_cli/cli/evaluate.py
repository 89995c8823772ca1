"""`ipo eval`: score prompt templates on labelled images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ipo_cli.cli.console import err, out, progress_bar, status, warn
from ipo_cli.cli.options import (
    CLIP,
    DATA,
    OUTPUT,
    CacheDirOpt,
    ClassesOpt,
    ClipOpt,
    ClipWeightsOpt,
    DataRootOpt,
    DatasetOpt,
    DeviceOpt,
    ImageLoadingOpt,
    JsonOpt,
    OutsideRootOpt,
    RayOpt,
    RayWorkersOpt,
    SplitOpt,
    UnitSizeOpt,
)
from ipo_cli.cli.output import check_out, show, write_out
from ipo_cli.errors import IpoError

# ---- ipo eval ---------------------------------------------------------------------

def eval_cmd(
    prompts: Annotated[Path, typer.Argument(help="JSON list of templates, a CLIP_benchmark template file, or an ipo prompts.json.")],
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder with one sub-folder per class (or the image root of --split).", rich_help_panel=DATA)] = None,
    dataset: DatasetOpt = None,
    data_root: DataRootOpt = None,
    classes: ClassesOpt = None,
    split: SplitOpt = None,
    split_part: Annotated[str, typer.Option("--split-part", help="Which part of --split to score.", rich_help_panel=DATA)] = "test",
    allow_outside_root: OutsideRootOpt = False,
    shots: Annotated[Optional[int], typer.Option("--shots", min=1, help="Score only K images per class (seeded sample).", rich_help_panel=DATA)] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Seed of the --shots sample and the bootstrap.", rich_help_panel=DATA)] = 1,
    base_novel: Annotated[bool, typer.Option("--base-novel", help="Also report base, novel and harmonic mean H (CoOp protocol).", rich_help_panel=OUTPUT)] = False,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Hand-written template every prompt is compared with (default: CoOp's for --dataset, else 'a photo of a {}.').", rich_help_panel=OUTPUT)] = None,
    clip: ClipOpt = None,  # default: the CLIP a run's prompts.json names, else ViT-B-16:openai
    clip_weights: ClipWeightsOpt = None,
    cache_dir: CacheDirOpt = None,
    image_loading: ImageLoadingOpt = None,
    dump_templates: Annotated[bool, typer.Option("--dump-templates", help="With --format clip_benchmark: record the templates in the result, as CLIP_benchmark's --dump_templates.", rich_help_panel=OUTPUT)] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.", rich_help_panel=CLIP)] = 32,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Also write the results as JSON to this file.", rich_help_panel=OUTPUT)] = None,
    truncate_long: Annotated[bool, typer.Option("--truncate-long", help="Score prompts longer than CLIP's 77 tokens cut to fit (with a warning) instead of refusing them.", rich_help_panel=CLIP)] = False,
    ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
    unit_size: UnitSizeOpt = 256,
    out_format: Annotated[str, typer.Option("--format", help="What --out holds: ipo (every prompt) or clip_benchmark (CLIP_benchmark's result JSON: the file's ensemble as it scores it, a run's best prompt; --out FOLDER/ names the file as CLIP_benchmark does).", rich_help_panel=OUTPUT)] = "ipo",
) -> None:
    """Score prompt templates on labelled images: top-1, top-5, mean per-class recall.

    With --dataset NAME --data-root DIR the images are a CoOp dataset; with --dataset KEY
    --images DIR, KEY picks one dataset of a CLIP_benchmark template or classnames file."""
    from ipo_cli import cache
    from ipo_cli.clip import evaluate, sources
    from ipo_cli.clip.loading import open_clip_model
    from ipo_cli.data import prompts as prompt_files

    to_folder = out_format == "clip_benchmark" and out_file is not None and (out_file.is_dir() or str(out_file).endswith("/"))
    # --out FOLDER/: CLIP_benchmark's file is named inside it, and it lies inside no input folder
    check_out(out_file, prompts, images, classes, split, clip_weights, folder=to_folder)
    sources.check_split_part(split_part)
    if out_format not in ("ipo", "clip_benchmark"):
        raise IpoError(f"--format must be ipo or clip_benchmark, not {out_format!r}")
    info = prompt_files.read_info(prompts)  # a run's prompts.json: its CLIP is the default
    clip, weights = prompt_files.resolve_clip(info, clip, clip_weights)
    inputs = sources.eval_inputs(prompts, images, dataset, data_root, classes, split, split_part,
                                 allow_outside_root, shots, seed, baseline, cache_dir, image_loading)
    data, prompt_list, baseline = inputs.data, inputs.prompts, inputs.baseline
    check_out(out_file, data.root, *data.paths, folder=to_folder)  # no image it reads, by any name (gates/paths.py)
    store = cache.Store(cache.cache_root(cache_dir), "embeddings")
    # When the cache holds every embedding this evaluation needs, neither torch nor
    # open_clip is imported and no model is loaded (nor a Ray cluster reached).
    executor, model = _cluster_clip(ray, ray_workers, unit_size, clip, weights, store, data, inputs.texts(), device,
                                    batch_size)
    try:
        if model is None:
            model = open_clip_model(clip, weights, store, data.paths, inputs.texts(), device,
                                    loading=lambda identity: status(f"loading CLIP {identity}"),
                                    image_loading=data.image_loading)
        for line in evaluate.check_text_lengths(model, prompt_list, data.classnames, baseline, truncate_long):
            warn(line)
        with progress_bar("embedding images", len(data.items), quiet=as_json) as advance:
            embedded = evaluate.embed_dataset(model, data, store, progress=advance, batch_size=batch_size)
    finally:
        if executor is not None:
            executor.close()
    for path, reason in embedded.skipped:
        warn(f"skipped unreadable image {path}: {reason}")
    report = evaluate.evaluate(model, embedded, prompt_list, baseline=baseline, base_novel=base_novel, seed=seed)
    result = report.to_json()
    result["cache"] = {"images_computed": model.stats["images_computed"], "images_cached": model.stats["images_cached"],
                       "model_loaded": not getattr(model, "warm", False)}
    if out_file:
        if out_format == "clip_benchmark":
            run = evaluate.benchmark_run(dataset or (images.resolve().name if images else "dataset"), clip, weights)
            if to_folder:
                out_file = out_file / run.file_name()
                check_out(out_file, prompts, classes, split, clip_weights, *data.paths)
            write_out(out_file, json.dumps(evaluate.to_clip_benchmark(
                report, prompt_list, run, dump_templates, best_only=info.from_run)) + "\n")
        else:
            write_out(out_file, json.dumps(result, indent=2) + "\n")

    def render(_: dict[str, Any]) -> None:
        _render_eval(report)
        if embedded.skipped:
            warn(f"{len(embedded.skipped)} unreadable image(s) skipped")
        if out_file:
            err.print(f"results written to {out_file}")

    show(result, as_json, render)


def _cluster_clip(ray: str | None, workers: int | None, unit_size: int, clip: str, weights: Any, store: Any,
                  data: Any, texts: list[str], device: str, batch_size: int) -> tuple[Any, Any]:
    """With --ray (or RAY_ADDRESS) and images the cache lacks: the executor and a CLIP whose
    images are embedded by the cluster's workers (ipo_cli/cluster/); else (None, None)."""
    from ipo_cli.cluster.executor import ray_address

    address = ray_address(ray)
    if address is None:
        return None, None
    from ipo_cli.clip.warm import cached_clip

    if cached_clip(clip, weights, store, data.paths, texts, device, data.image_loading) is not None:
        return None, None  # all cached: nothing to run anywhere
    from ipo_cli.cluster.embed import cluster_clip
    from ipo_cli.cluster.executor import open_executor

    with status(f"starting CLIP {clip} on the Ray cluster"):
        executor = open_executor(address, workers=workers, device=device)
        try:
            model = cluster_clip(executor, clip, weights, store, texts, device, data.image_loading, batch_size,
                                 unit_size)
        except BaseException:
            executor.close()
            raise
    model.origins = dict(getattr(data, "origins", {}))
    return executor, model


def _render_eval(report: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{report.n_images} images, {len(report.classnames)} classes, CLIP {report.clip}")
    with_dataset = any(row.dataset for row in report.rows)
    if with_dataset:
        table.add_column("dataset")
    table.add_column("prompt", overflow="fold", max_width=60)
    table.add_column("kind")
    for col in ("top-1", "top-5", "mean recall"):
        table.add_column(col, justify="right")
    if report.base_novel:
        for col in ("base", "novel", "H"):
            table.add_column(col, justify="right")
    table.add_column("Δ vs baseline [95% CI]" + (" (H)" if report.base_novel else " (top-1)"), justify="right")
    for row in report.rows:
        cells = ([row.dataset or ""] if with_dataset else []) + \
            [row.name, row.kind, f"{row.acc1:.2f}", f"{row.acc5:.2f}", f"{row.mean_per_class_recall:.2f}"]
        if report.base_novel:
            cells += [f"{row.base:.2f}", f"{row.novel:.2f}", f"{row.hm:.2f}"]
        if row.delta is None:
            cells.append("—")
        else:
            colour = "green" if row.delta_low > 0 else "red" if row.delta_high < 0 else "white"
            cells.append(Text.assemble((f"{row.delta:+.2f}", colour), f" [{row.delta_low:+.2f}, {row.delta_high:+.2f}]"))
        table.add_row(*cells, style="bold" if row.kind == "baseline" else None)
    out.print(table)
