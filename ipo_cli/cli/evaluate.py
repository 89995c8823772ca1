"""`ipo eval`: score prompt templates on labelled images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from ipo_cli.cli.console import err, out, progress_bar, status, warn
from ipo_cli.cli.options import ClassesOpt, SplitOpt, ClipOpt, ClipWeightsOpt, CacheDirOpt, DeviceOpt, JsonOpt, DatasetOpt, DataRootOpt, OutsideRootOpt
from ipo_cli.cli.output import check_out, write_out
from ipo_cli.errors import IpoError


# ---- ipo eval ---------------------------------------------------------------------

def eval_cmd(
    prompts: Annotated[Path, typer.Argument(help="JSON list of templates, a CLIP_benchmark template file, or an ipo prompts.json.")],
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder with one sub-folder per class (or the image root of --split).")] = None,
    dataset: DatasetOpt = None,
    data_root: DataRootOpt = None,
    classes: ClassesOpt = None,
    split: SplitOpt = None,
    split_part: Annotated[str, typer.Option("--split-part", help="Which part of --split to score.")] = "test",
    allow_outside_root: OutsideRootOpt = False,
    shots: Annotated[Optional[int], typer.Option("--shots", min=1, help="Score only K images per class (seeded sample).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --shots sample and the bootstrap.")] = 1,
    base_novel: Annotated[bool, typer.Option("--base-novel", help="Also report base, novel and harmonic mean H (CoOp protocol).")] = False,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Hand-written template every prompt is compared with (default: CoOp's for --dataset, else 'a photo of a {}.').")] = None,
    clip: ClipOpt = "ViT-B-16:openai",
    clip_weights: ClipWeightsOpt = None,
    cache_dir: CacheDirOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 32,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Also write the results as JSON to this file.")] = None,
    truncate_long: Annotated[bool, typer.Option("--truncate-long", help="Score prompts longer than CLIP's 77 tokens cut to fit (with a warning) instead of refusing them.")] = False,
    out_format: Annotated[str, typer.Option("--format", help="What --out holds: ipo (every prompt) or clip_benchmark (the first prompt, in CLIP_benchmark's result JSON).")] = "ipo",
) -> None:
    """Score prompt templates on labelled images: top-1, top-5, mean per-class recall.

    With --dataset NAME --data-root DIR the images are a CoOp dataset; with --dataset KEY
    --images DIR, KEY picks one dataset of a CLIP_benchmark template or classnames file."""
    from ipo_cli import cache
    from ipo_cli.data import folders as ds
    from ipo_cli.clip import evaluate
    from ipo_cli.data import prompts as pr
    from ipo_cli.clip import model as vision
    from ipo_cli.clip import spec as clip_spec
    from ipo_cli.clip import warm
    from ipo_cli.clip.scoring import Prompt

    check_out(out_file)
    if split_part not in ("train", "val", "test"):
        raise IpoError(f"--split-part must be train, val or test, not {split_part!r}")
    if out_format not in ("ipo", "clip_benchmark"):
        raise IpoError(f"--format must be ipo or clip_benchmark, not {out_format!r}")
    if dataset and images is None:
        from ipo_cli.data import coop as presets

        if split or classes:
            raise IpoError("--dataset with --data-root says where the images are; leave out --split and --classes")
        preset = presets.get(dataset)
        prompt_list = pr.read_prompts(prompts, presets.CLIP_BENCHMARK_KEYS.get(preset.name, preset.name))
        data = presets.load(dataset, data_root, split_part)
        baseline = baseline or preset.template
    elif images is None:
        raise IpoError("missing --images", "pass --images DIR, or --dataset NAME --data-root DIR")
    else:
        prompt_list = pr.read_prompts(prompts, dataset)
        data = ds.load_dataset(images, classes, split, split_part, allow_outside_root, classes_key=dataset)
    baseline = baseline or "a photo of a {}."
    if shots:
        data = ds.few_shot(data, shots, seed)
    store = cache.Store(cache.cache_root(cache_dir), "embeddings")
    # When the cache holds every embedding this evaluation needs, neither torch nor
    # open_clip is imported and no model is loaded.
    texts = [t for p in [*prompt_list, Prompt(baseline, [baseline])] for ts in p.texts(data.classnames) for t in ts]
    model = warm.cached_clip(clip, clip_weights, store, data.paths, texts, device)
    if model is None:
        spec = clip_spec.parse_clip(clip, clip_weights)
        with status(f"loading CLIP {spec.identity}"):
            model = vision.load_clip(spec, device)
        model.remember(store)
    for line in evaluate.check_text_lengths(model, prompt_list, data.classnames, baseline, truncate_long):
        warn(line)
    with progress_bar("embedding images", len(data.items), quiet=as_json) as advance:
        embedded = evaluate.embed_dataset(model, data, store, progress=advance, batch_size=batch_size)
    for path, reason in embedded.skipped:
        warn(f"skipped unreadable image {path}: {reason}")
    report = evaluate.evaluate(model, embedded, prompt_list, baseline=baseline, base_novel=base_novel, seed=seed)
    result = report.to_json()
    result["cache"] = {"images_computed": model.stats["images_computed"], "images_cached": model.stats["images_cached"],
                       "model_loaded": not getattr(model, "warm", False)}
    if out_file:
        if out_format == "clip_benchmark":
            name = dataset or (images.resolve().name if images else "dataset")
            write_out(out_file, json.dumps(evaluate.to_clip_benchmark(report, name, model.identity)) + "\n")
        else:
            write_out(out_file, json.dumps(result, indent=2) + "\n")
    if as_json:
        print(json.dumps(result))
    else:
        _render_eval(report)
        if embedded.skipped:
            warn(f"{len(embedded.skipped)} unreadable image(s) skipped")
        if out_file:
            err.print(f"results written to {out_file}")


def _render_eval(report) -> None:
    from rich.table import Table

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
