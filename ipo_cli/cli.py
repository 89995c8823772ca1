"""The `ipo` command: a thin Typer layer that parses, calls the library and renders.

Heavy libraries are imported inside the commands, so `ipo --help` stays instant.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from ipo_cli import __version__
from ipo_cli.console import err, fail, out, progress_bar, status, warn
from ipo_cli.errors import IpoError

app = typer.Typer(
    name="ipo",
    help="Find human-readable prompts for CLIP models with a local LLM in the loop (IPO).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
cache_app = typer.Typer(help="The on-disk caches of image embeddings, captions and LLM answers.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
models_app = typer.Typer(help="The local model store: list, pull, add, rm, path.", no_args_is_help=True)
app.add_typer(models_app, name="models")

# ---- options shared by several commands -------------------------------------------
ImagesOpt = Annotated[Path, typer.Option("--images", help="Folder with one sub-folder per class (or the image root of --split).")]
ClassesOpt = Annotated[Optional[Path], typer.Option("--classes", help="Text file, one class name per line ('#' comments allowed).")]
SplitOpt = Annotated[Optional[Path], typer.Option("--split", help="A CoOp split file (split_zhou_*.json); paths are relative to the images folder.")]
ClipOpt = Annotated[str, typer.Option("--clip", help="open_clip model: ARCH:TAG (ViT-B-16:openai), hf-hub:ORG/NAME, ARCH with --clip-weights, or a model config .json.")]
ClipWeightsOpt = Annotated[Optional[Path], typer.Option("--clip-weights", help="A local open_clip checkpoint for the architecture named by --clip.")]
CacheDirOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache folder (default: $IPO_CACHE_DIR or the user cache directory).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Where CLIP runs: auto (CUDA if available), cpu, cuda or cuda:N.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="A CoOp dataset (ImageNet, Caltech101, OxfordPets, StanfordCars, Flowers102, Food101, FGVCAircraft, SUN397, DTD, EuroSAT, UCF101; ImageNetV2/Sketch/A/R for eval) under --data-root, laid out as CoOp's DATASETS.md says.")]
DataRootOpt = Annotated[Optional[Path], typer.Option("--data-root", help="The folder that holds CoOp's dataset folders ($DATA), with --dataset.")]
OutsideRootOpt = Annotated[bool, typer.Option("--allow-outside-root", help="Let --split entries point outside the images folder (.., absolute paths).")]
GpuLayersOpt = Annotated[Optional[int], typer.Option("--gpu-layers", min=-1, help="llama.cpp layers to offload to the GPU: -1 all, 0 none (default: all when llama.cpp was built with GPU offload, else 0).")]


def _version(value: bool) -> None:
    if value:
        out.print(f"ipo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """ipo: interpretable prompt optimisation for CLIP, offline."""


# ---- ipo eval ---------------------------------------------------------------------
@app.command("eval")
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
    from ipo_cli import cache, dataset as ds, evaluate, prompts as pr, vision
    from ipo_cli.scoring import Prompt

    _check_out(out_file)
    if split_part not in ("train", "val", "test"):
        raise IpoError(f"--split-part must be train, val or test, not {split_part!r}")
    if out_format not in ("ipo", "clip_benchmark"):
        raise IpoError(f"--format must be ipo or clip_benchmark, not {out_format!r}")
    if dataset and images is None:
        from ipo_cli import presets

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
    model = vision.cached_clip(clip, clip_weights, store, data.paths, texts, device)
    if model is None:
        spec = vision.parse_clip(clip, clip_weights)
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
            _write_out(out_file, json.dumps(evaluate.to_clip_benchmark(report, name, model.identity)) + "\n")
        else:
            _write_out(out_file, json.dumps(result, indent=2) + "\n")
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


# ---- ipo report -------------------------------------------------------------------
@app.command("report")
def report_cmd(
    run: Annotated[Path, typer.Argument(help="A run folder of ipo optimize.")],
    device: DeviceOpt = "auto",
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Why the prompt works: the search, per-class changes, word attribution, top prompts, images."""
    from ipo_cli import insight

    if insight.is_bench(run):
        written = insight.write_bench(run)
        if as_json:
            print(json.dumps({"report": str(written)}))
        else:
            out.print(f"bench report written: {written}")
        return
    with status("scoring the run's prompts on its cached embeddings"):
        report = insight.build(run, cache_dir, device)
    written = insight.write(report, run / "report")
    if as_json:
        print(json.dumps(report.to_json()))
        return
    from rich.table import Table

    b, base = report.best, report.baseline
    out.print(Text.assemble(("final prompt: ", "bold"), b["template"],
                            f"  (accuracy {b['accuracy']:.2f}, loss {b['loss']:.4f}; baseline {base['accuracy']:.2f}, "
                            f"{base['loss']:.4f}; {len(report.steps) - 1} steps, {len(report.candidates) - 1} scored prompts)"))
    words = Table(title="which words matter (dropped one at a time)")
    for col in ("dropped", "kind", "loss change (> 0: it helps)", "accuracy change"):
        words.add_column(col)
    for a in report.attribution:
        words.add_row(a.unit, a.kind, f"{a.loss_change:+.4f}", f"{a.accuracy_change:+.2f}")
    out.print(words)
    classes = Table(title="per class: final minus baseline training accuracy")
    classes.add_column("class")
    classes.add_column("change", justify="right")
    for name, delta in report.per_class_delta:
        classes.add_row(name, Text(f"{delta:+.1f}", style="green" if delta > 0 else "red" if delta < 0 else ""))
    out.print(classes)
    top = Table(title="top distinct prompts")
    for col in ("prompt", "accuracy", "loss"):
        top.add_column(col)
    for p in report.top_prompts:
        top.add_row(p["template"], f"{p['accuracy']:.2f}", f"{p['loss']:.4f}")
    top.add_row(f"ensemble of these {len(report.ensemble['templates'])}", f"{report.ensemble['accuracy']:.2f}",
                f"{report.ensemble['loss']:.4f}")
    out.print(top)
    if report.confusions:
        confusions = Table(title="confusions that changed most (training images)")
        for col in ("true class", "predicted as", "baseline", "final"):
            confusions.add_column(col)
        for c in report.confusions:
            confusions.add_row(c["true"], c["predicted"], str(c["baseline"]), str(c["final"]))
        out.print(confusions)
    out.print(f"report written: {written[0]}")


# ---- ipo classify -----------------------------------------------------------------
@app.command("classify")
def classify_cmd(
    images: Annotated[Path, typer.Argument(help="An image file, or a folder of images (searched recursively).")],
    prompts: Annotated[Path, typer.Option("--prompts", help="An ipo prompts.json (its best prompt), a template list, or per-class prompts.")],
    classes: ClassesOpt = None,
    ensemble: Annotated[bool, typer.Option("--ensemble", help="Average all the file's templates instead of using its best one.")] = False,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes listed per image.")] = 3,
    clip: ClipOpt = "ViT-B-16:openai",
    clip_weights: ClipWeightsOpt = None,
    device: DeviceOpt = "auto",
    cache_dir: CacheDirOpt = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the predictions: .csv (path, rank, class, probability) or .jsonl.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Label new images with an optimised prompt: top-k classes with probabilities."""
    from ipo_cli import dataset as ds
    from ipo_cli.classify import Classifier, choose_prompt
    from ipo_cli.prompts import read_prompts

    _check_out(out_file)
    if out_file is not None and out_file.suffix.lower() not in (".csv", ".jsonl"):
        raise IpoError(f"--out {out_file} must end in .csv or .jsonl")
    if classes is None:
        raise IpoError("missing --classes", "pass the class names the prompt was made for, one per line")
    if images.is_dir():
        paths = ds.list_images(images)
    elif images.is_file():
        paths = [images]
    else:
        raise IpoError(f"{images} does not exist")
    if not paths:
        raise IpoError(f"{images} holds no images", f"image files end in {', '.join(sorted(ds.IMAGE_EXTENSIONS))}")
    prompt = choose_prompt(read_prompts(prompts), ensemble)
    classnames = ds.read_classes(classes)
    with status(f"loading CLIP {clip}"):
        classifier = Classifier(prompt, classnames, clip, clip_weights, device, cache_dir)
    with progress_bar("classifying", len(paths), quiet=as_json) as advance:
        predictions = classifier.classify(paths, top_k=top_k, progress=advance)
    failed = [p for p in predictions if p.error]
    for p in failed:
        warn(f"could not read {p.source}: {p.error}")
    if out_file:
        if out_file.suffix.lower() == ".csv":
            import csv
            import io

            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(["path", "rank", "class", "probability", "error"])
            for p in predictions:
                for rank, (name, prob) in enumerate(p.top, 1):
                    writer.writerow([p.source, rank, name, f"{prob:.6f}", ""])
                if p.error:
                    writer.writerow([p.source, "", "", "", p.error])
            _write_out(out_file, buf.getvalue())
        else:
            _write_out(out_file, "".join(json.dumps(p.to_json()) + "\n" for p in predictions))
    if as_json:
        for p in predictions:
            print(json.dumps(p.to_json()))
        return
    from rich.table import Table

    table = Table(title=f"{len(predictions)} images, prompt {prompt.name[:60]}, CLIP {clip}")
    table.add_column("image", overflow="fold")
    table.add_column("class")
    table.add_column("probability", justify="right")
    table.add_column("then", overflow="fold")
    for p in predictions:
        if p.error:
            table.add_row(p.source, "—", "—", p.error)
            continue
        (best, prob), rest = p.top[0], p.top[1:]
        table.add_row(p.source, best, f"{prob:.3f}", ", ".join(f"{c} {q:.3f}" for c, q in rest))
    out.print(table)
    if failed:
        warn(f"{len(failed)} unreadable image(s) listed")


# ---- ipo optimize -----------------------------------------------------------------
@app.command("optimize")
def optimize_cmd(
    images: Annotated[Optional[Path], typer.Argument(help="Folder with one sub-folder per class (or the image root of --split).")] = None,
    classes: ClassesOpt = None,
    split: SplitOpt = None,
    shots: Annotated[Optional[int], typer.Option("--shots", help="Training images per class (paper: 1).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the few-shot sample and of every LLM sample.")] = None,
    base_novel: Annotated[Optional[bool], typer.Option("--base-novel/--all-classes", help="Optimise on the base half of the classes, then report base/novel/H on held-out images.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Optimisation steps (paper: 100).")] = None,
    candidates: Annotated[Optional[int], typer.Option("--candidates", min=1, help="New prompts per step (paper: 5).")] = None,
    history: Annotated[Optional[int], typer.Option("--history", min=0, help="Best earlier prompts shown to the LLM (paper: 20).")] = None,
    patience: Annotated[Optional[int], typer.Option("--patience", min=1, help="Stop after this many steps without improvement.")] = None,
    budget: Annotated[Optional[str], typer.Option("--budget", help="Preset steps x candidates: light (10x4), medium (30x5), heavy (100x8).")] = None,
    llm: Annotated[Optional[str], typer.Option("--llm", help="LLM: catalogue or installed name, or a GGUF file (default: the catalogue's default).")] = None,
    llm_url: Annotated[Optional[str], typer.Option("--llm-url", help="OpenAI-compatible server instead, e.g. http://127.0.0.1:8080/v1.")] = None,
    llm_model: Annotated[Optional[str], typer.Option("--llm-model", help="Model name to send to --llm-url.")] = None,
    n_ctx: Annotated[Optional[int], typer.Option("--n-ctx", help="Context size for the LLM (default: the model's catalogue value).")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="LLM sampling temperature (paper: 1.0).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Longest answer, in tokens.")] = None,
    lmm: Annotated[Optional[str], typer.Option("--lmm", help="Multimodal model for image descriptions: name, GGUF file, or none.")] = None,
    mmproj: Annotated[Optional[Path], typer.Option("--mmproj", help="Projector GGUF, with --lmm FILE.gguf.")] = None,
    handler: Annotated[Optional[str], typer.Option("--handler", help="Chat handler, with --lmm FILE.gguf.")] = None,
    lmm_url: Annotated[Optional[str], typer.Option("--lmm-url", help="OpenAI-compatible server for descriptions.")] = None,
    lmm_model: Annotated[Optional[str], typer.Option("--lmm-model", help="Model name to send to --lmm-url.")] = None,
    clip: Annotated[Optional[str], typer.Option("--clip", help="open_clip model (default ViT-B-16:openai), as for ipo eval.")] = None,
    clip_weights: ClipWeightsOpt = None,
    task_hint: Annotated[Optional[str], typer.Option("--task-hint", help='Names the domain in the meta-prompt, e.g. "photos of pets".')] = None,
    select: Annotated[Optional[str], typer.Option("--select", help="Pick the final prompt on the train sample or a separate val sample.")] = None,
    test_images: Annotated[Optional[Path], typer.Option("--test-images", help="Held-out images for --base-novel (default: the split file's test part).")] = None,
    allow_outside_root: Annotated[Optional[bool], typer.Option("--allow-outside-root", help="Let --split entries point outside the images folder.")] = None,
    dataset: DatasetOpt = None,
    data_root: DataRootOpt = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Hand-written template the --base-novel report compares with (default: CoOp's for --dataset, else 'a photo of a {}.').")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/<date>-<name>).")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this folder from its last complete record.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing run folder.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Never download; name the pull command instead.")] = False,
    device: DeviceOpt = "auto",
    gpu_layers: GpuLayersOpt = None,
    parallel: Annotated[Optional[int], typer.Option("--parallel", min=1, help="Candidates of a step sent to --llm-url at once (default: --candidates); results equal a sequential run.")] = None,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find a better prompt template with an LLM in the loop (IPO)."""
    import datetime as dt

    from ipo_cli import job

    given = job.Overrides(
        images=_s(images), classes=_s(classes), split=_s(split), shots=shots, seed=seed, base_novel=base_novel,
        steps=steps, candidates=candidates, history=history, patience=patience, temperature=temperature,
        max_tokens=max_tokens, task_hint=task_hint, select=select, llm=llm, llm_url=llm_url, llm_model=llm_model,
        n_ctx=n_ctx, lmm=lmm, mmproj=_s(mmproj), handler=handler, lmm_url=lmm_url, lmm_model=lmm_model, clip=clip,
        clip_weights=_s(clip_weights), test_images=_s(test_images), allow_outside_root=allow_outside_root,
        dataset=dataset, data_root=_s(data_root), baseline=baseline)
    saved = None
    if resume is not None:
        from ipo_cli.runs import RunFolder

        if out_dir is not None and out_dir.resolve() != resume.resolve():
            raise IpoError(f"--resume {resume} continues that run in place; --out {out_dir} names another folder",
                           "drop --out (or pass the same folder)")
        saved = RunFolder.open(resume)[1].get("request", {})
    request = job.make_request(given, budget, saved)
    out_path = resume or out_dir or Path("runs") / f"{dt.date.today().isoformat()}-{Path(request.images).resolve().name}"
    reporter = _OptimizeReporter(quiet=as_json, total=request.steps)
    try:
        summary = job.run(request, out_path, resume=resume is not None, force=force, offline=offline,
                          cache_dir=cache_dir, reporter=reporter, device=device, gpu_layers=gpu_layers,
                          parallel=parallel)
    finally:
        reporter.close()
    if as_json:
        print(json.dumps(summary))
    else:
        _render_summary(summary)
    if summary["interrupted"]:
        fail(f"stopped; continue with: ipo optimize --resume {summary['run']}")
        _SUMMARY_SHOWN[0] = True
        raise typer.Exit(143 if _TERMINATED[0] else 130)


@app.command("bench")
def bench_cmd(
    data_root: Annotated[Path, typer.Option("--data-root", help="The folder that holds CoOp's dataset folders ($DATA).")],
    datasets: Annotated[str, typer.Option("--datasets", help="all, or a comma-separated list (e.g. DTD,EuroSAT).")] = "all",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds (paper: 1,2,3).")] = "1,2,3",
    shots: Annotated[int, typer.Option("--shots", min=1, help="Training images per class (paper: 1).")] = 1,
    out_dir: Annotated[Path, typer.Option("--out", help="The bench folder: one run folder per dataset and seed, then table.md and table.json.")] = Path("runs/bench"),
    budget: Annotated[Optional[str], typer.Option("--budget", help="Steps x candidates of every run: light, medium, heavy (default: the paper's 100x5).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1)] = None,
    candidates: Annotated[Optional[int], typer.Option("--candidates", min=1)] = None,
    llm: Annotated[Optional[str], typer.Option("--llm", help="As for ipo optimize.")] = None,
    llm_url: Annotated[Optional[str], typer.Option("--llm-url", help="As for ipo optimize.")] = None,
    llm_model: Annotated[Optional[str], typer.Option("--llm-model")] = None,
    lmm: Annotated[Optional[str], typer.Option("--lmm", help="As for ipo optimize (none: no descriptions).")] = None,
    lmm_url: Annotated[Optional[str], typer.Option("--lmm-url")] = None,
    lmm_model: Annotated[Optional[str], typer.Option("--lmm-model")] = None,
    clip: Annotated[Optional[str], typer.Option("--clip", help="open_clip model (paper: ViT-B-16:openai).")] = None,
    clip_weights: ClipWeightsOpt = None,
    device: DeviceOpt = "auto",
    gpu_layers: GpuLayersOpt = None,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The base-to-novel benchmark: an optimize run per dataset and seed, then the paper's table."""
    from ipo_cli import bench, job, presets

    names = presets.BASE_TO_NOVEL if datasets.strip().lower() == "all" else \
        [presets.get(n).name for n in bench.parse_list(datasets, "--datasets")]
    seed_list = bench.parse_list(seeds, "--seeds", int)
    given = {"data_root": str(data_root), "shots": shots, "steps": steps, "candidates": candidates, "llm": llm,
             "llm_url": llm_url, "llm_model": llm_model, "lmm": lmm, "lmm_url": lmm_url, "lmm_model": lmm_model,
             "clip": clip, "clip_weights": _s(clip_weights)}
    given = {k: v for k, v in given.items() if v is not None}
    cells = bench.cells(out_dir, names, seed_list)
    sweep = bench.plan(cells, given, budget)
    if not as_json:
        err.print(Text.assemble(("bench", "bold"), f": {len(names)} dataset(s) x {len(seed_list)} seed(s) = "
                                f"{sweep['runs']} runs ({sweep['finished']} finished), up to {sweep['llm_calls_max']} "
                                f"LLM calls and {sweep['captions_max']} image descriptions to go; folder {out_dir}"))

    def run_one(request, folder, resume):
        reporter = _OptimizeReporter(quiet=as_json, total=request.steps)
        try:
            return job.run(request, folder, resume=resume, cache_dir=cache_dir, reporter=reporter, device=device,
                           gpu_layers=gpu_layers)
        finally:
            reporter.close()

    try:
        bench.run_cells(cells, given, budget, run_one)
    finally:
        result = bench.table(cells, shots)
        bench.write_tables(out_dir, result)
        if result["datasets"]:
            from ipo_cli import insight

            insight.write_bench(out_dir)
    if as_json:
        print(json.dumps({"plan": sweep, **result}))
    else:
        out.print(bench.markdown(result))


def _s(path) -> Optional[str]:
    return str(path) if path is not None else None


class _OptimizeReporter:
    """Renders the job's progress with rich: the plan, bars, and one bar over the steps."""

    def __init__(self, quiet: bool, total: int):
        self.quiet, self.total = quiet, total
        self._steps = None
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

        parallel = f", {plan['parallel']} requests in flight" if plan.get("parallel", 1) > 1 else ""
        err.print(Text.assemble(
            ("plan", "bold"),
            f": {plan['train_images']} training images ({plan['shots']} per class, "
            f"{plan['train_classes']} of {plan['classes']} classes), {plan['steps']} steps x "
            f"{plan['candidates']} candidates = up to {plan['llm_calls_max']} LLM calls{parallel}, "
            f"{plan['captions']} image descriptions (of {plan.get('captions_of', plan['captions'])} training "
            f"images: what fits the LLM's context)\n      LLM {model('llm')}\n      LMM {model('lmm')}\n"
            f"      CLIP {plan['clip']}; run folder {plan['out']}"))

    def status(self, message: str):
        import contextlib

        return contextlib.nullcontext() if self.quiet else status(message)

    def progress(self, description: str, total: int):
        return progress_bar(description, total, quiet=self.quiet)

    def warn(self, message: str) -> None:
        warn(message)

    def pull(self, name: str, size) -> None:
        if not self.quiet:
            err.print(f"pulling {name} ({_human_bytes(size) if size else 'size unknown'}), needed on first use")
        _pull_with_progress(name)

    def step(self, summary: dict, state) -> None:
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


# ---- ipo models -------------------------------------------------------------------
@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Catalogue and local models, installed or not, with sizes."""
    from ipo_cli import catalogue

    rows = catalogue.list_models()
    if as_json:
        print(json.dumps([r.__dict__ for r in rows]))
        return
    from rich.table import Table

    table = Table(title=f"models (store: {catalogue.models_dir()})")
    for col in ("name", "kind", "installed", "size", "handler", "pinned"):
        table.add_column(col, no_wrap=True)
    table.add_column("when to choose it", overflow="fold")
    for r in rows:
        pinned = "" if r.pinned is None else "yes" if r.pinned else Text("hub hash", style="yellow")
        table.add_row(r.name, r.kind, Text("yes", style="green") if r.installed else "no",
                      _human_bytes(r.size) if r.size else "?", r.handler or "", pinned, r.note)
    out.print(table)


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="A catalogue name (see ipo models list).")]) -> None:
    """Download a catalogue model with a progress bar, resumably, and verify its checksum."""
    model = _pull_with_progress(name)
    out.print(f"pulled {name}: " + ", ".join(f"{role} {r['path']} ({_human_bytes(r['size'])})" for role, r in model.files.items()))


def _pull_with_progress(name: str):
    """catalogue.pull with a download bar per file; the bars start with the first byte."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from ipo_cli import catalogue

    progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=err)

    def factory(filename: str, total: int | None):
        if not err.is_terminal:  # a log or a pipe gets the outcome, not a bar
            return lambda done, total_: None
        if not progress.live.is_started:
            progress.start()
        task = progress.add_task(filename, total=total)

        def update(done: int, total_: int | None) -> None:
            progress.update(task, completed=done, total=total_)

        return update

    def notify(message: str) -> None:
        progress.console.print(message)

    try:
        return catalogue.pull(name, factory, notify)
    finally:
        if progress.live.is_started:
            progress.stop()


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="Name to register the model under.")],
    file: Annotated[Path, typer.Option("--file", help="The model's GGUF file (it stays where it is).")],
    kind: Annotated[str, typer.Option("--kind", help="llm or lmm.")],
    mmproj: Annotated[Optional[Path], typer.Option("--mmproj", help="Projector GGUF of a multimodal model.")] = None,
    handler: Annotated[Optional[str], typer.Option("--handler", help="llama-cpp-python chat handler of an lmm.")] = None,
    n_ctx: Annotated[int, typer.Option("--n-ctx", help="Context size to load it with.")] = 4096,
    force: Annotated[bool, typer.Option("--force", help="Replace an installed model of that name, or shadow a catalogue name.")] = False,
) -> None:
    """Register a GGUF file you already have."""
    from ipo_cli import catalogue

    model = catalogue.add_model(name, file, kind, mmproj, handler, n_ctx, force)
    out.print(f"added {name} ({model.kind}, {_human_bytes(sum(f['size'] for f in model.files.values()))})")


@models_app.command("rm")
def models_rm(name: Annotated[str, typer.Argument(help="An installed model.")]) -> None:
    """Forget a model; files that ipo downloaded are deleted, files you added are kept."""
    from ipo_cli import catalogue

    model = catalogue.remove(name)
    out.print(f"removed {name}" + (" and its files" if model.source == "catalogue" else " (your files are kept)"))


@models_app.command("path")
def models_path(name: Annotated[str, typer.Argument(help="An installed model.")]) -> None:
    """Print the path of an installed model's GGUF file (and its projector)."""
    from ipo_cli import catalogue

    model = catalogue.Manifest().load().get(name)
    if model is None:
        catalogue.resolve(name, "llm")  # raises the right error: not pulled yet, or unknown
        raise IpoError(f"{name} is a file, not an installed model name", "see: ipo models list")
    print(model.path)
    if model.mmproj:
        print(model.mmproj)


# ---- ipo describe -----------------------------------------------------------------
@app.command("describe")
def describe_cmd(
    images: Annotated[Path, typer.Argument(help="A folder of class folders, or a flat folder of images.")],
    classes: ClassesOpt = None,
    lmm: Annotated[Optional[str], typer.Option("--lmm", help="Catalogue name, installed name or GGUF file of the multimodal model.")] = None,
    mmproj: Annotated[Optional[Path], typer.Option("--mmproj", help="Projector GGUF, with --lmm FILE.gguf.")] = None,
    handler: Annotated[Optional[str], typer.Option("--handler", help="Chat handler, with --lmm FILE.gguf (default mtmd).")] = None,
    lmm_url: Annotated[Optional[str], typer.Option("--lmm-url", help="OpenAI-compatible server instead, e.g. http://127.0.0.1:8080/v1.")] = None,
    lmm_model: Annotated[Optional[str], typer.Option("--lmm-model", help="Model name to send to --lmm-url.")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Instruction for the model (default: describe without naming the class).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Longest caption, in tokens.")] = 160,
    gpu_layers: GpuLayersOpt = None,
    cache_dir: CacheDirOpt = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the captions as JSON lines to this file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Caption images with a multimodal model (cached), redacting class names."""
    from ipo_cli import cache, describe

    _check_out(out_file)
    paths, labels, classnames = describe.collect_images(images, classes)
    settings = describe.CaptionSettings(instruction=prompt or describe.DEFAULT_INSTRUCTION, max_tokens=max_tokens)
    machine = "cpu"
    if not lmm and not lmm_url:
        from ipo_cli import hardware

        found = hardware.machine()
        if found.warning:
            warn(found.warning)
        machine = found.kind
    with status("loading the multimodal model"):
        backend = describe.load_vision(lmm, mmproj, handler, lmm_url, lmm_model, gpu_layers=gpu_layers,
                                       machine=machine)
    captioner = describe.Captioner(backend, cache.Store(cache.cache_root(cache_dir), "captions"), settings)
    with progress_bar("captioning", len(paths), quiet=as_json) as advance:
        report = captioner.caption(paths, classnames, labels, progress=advance)
    for path, reason in report.failed:
        warn(f"could not caption {path}: {reason}")
    lines = report.to_json_lines()
    if out_file:
        _write_out(out_file, "".join(json.dumps(line) + "\n" for line in lines))
    if as_json:
        for line in lines:
            print(json.dumps(line))
        print(json.dumps({"summary": report.summary(), "failed": [{"path": p, "reason": r} for p, r in report.failed]}))
        return
    from rich.table import Table

    table = Table(title=f"captions by {report.model}")
    table.add_column("image", overflow="fold")
    table.add_column("class")
    table.add_column("caption", overflow="fold")
    for c in report.captions:
        table.add_row(Path(c.path).name, c.label or "", c.caption)
    out.print(table)
    s = report.summary()
    out.print(f"captioned {s['captioned']} ({s['from_cache']} from cache), failed {s['failed']}, "
              f"class names redacted {s['redactions']} time(s)" + (f"; written to {out_file}" if out_file else ""))


# ---- ipo cache --------------------------------------------------------------------
@cache_app.command("info")
def cache_info(cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """Entries, size and location of each cache."""
    from ipo_cli import cache

    root = cache.cache_root(cache_dir)
    stores = cache.info(root)
    if as_json:
        print(json.dumps({"root": str(root), "stores": [s.__dict__ for s in stores]}))
        return
    from rich.table import Table

    table = Table(title=f"ipo cache at {root}")
    for col in ("store", "entries", "size", "path"):
        table.add_column(col)
    for s in stores:
        table.add_row(s.name, str(s.entries), _human_bytes(s.bytes), s.path)
    out.print(table)


@cache_app.command("clear")
def cache_clear(cache_dir: CacheDirOpt = None) -> None:
    """Delete every cached embedding, caption and LLM answer."""
    from ipo_cli import cache

    root = cache.cache_root(cache_dir)
    removed = cache.clear(root)
    out.print(f"removed {removed} entries from {root}")


def _check_out(path: Optional[Path]) -> None:
    """Refuse an unusable --out file before any work is done."""
    if path is None:
        return
    if path.is_dir():
        raise IpoError(f"--out {path} is a folder", "name a file, e.g. --out results.json")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise IpoError(f"--out {path}: {parent} is a file, not a folder")
            break


def _write_out(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise IpoError(f"cannot write --out {path}: {exc.strerror or exc}") from None


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def main() -> None:
    """Entry point: every error is one line on stderr and a non-zero exit code.

    Typer runs outside click's standalone mode so that usage errors (a bad flag, a value
    out of range) are one line too, like the library's IpoError (exit 2); --help and
    `ipo` alone print help as usual. SIGTERM is handled like Ctrl-C.
    """
    import signal

    debug = os.environ.get("IPO_DEBUG") == "1"
    # open_clip and huggingface_hub log through the root logger; we report errors ourselves.
    logging.basicConfig(level=logging.DEBUG if debug else logging.CRITICAL, format="%(name)s: %(message)s")
    from ipo_cli import cache

    cache.set_warner(warn)
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = app(standalone_mode=False)
    except IpoError as exc:
        if debug:
            raise
        fail(" ".join(str(exc).split("\n")))
        _exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as exc:  # noqa: BLE001 - click's own errors, then bugs
        kinds = {cls.__name__ for cls in type(exc).__mro__}
        # Typer may vendor click (typer._click): its exceptions are known by their class names.
        if "NoArgsIsHelpError" in kinds:
            err.print(exc.format_message())
            _exit(2)
        if "UsageError" in kinds:
            ctx = getattr(exc, "ctx", None)
            command = ctx.command_path if ctx is not None else "ipo"
            fail(f"{' '.join(exc.format_message().split())} (see: {command} --help)")
            _exit(exc.exit_code)
        if "ClickException" in kinds:
            fail(" ".join(exc.format_message().split()))
            _exit(exc.exit_code)
        if "Abort" in kinds:
            _interrupted()
        if debug:
            raise
        fail(f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())} "
             "(set IPO_DEBUG=1 for the traceback and report it)")
        _exit(1)
    if code == 130 and not _SUMMARY_SHOWN[0]:
        _interrupted()  # typer turns a Ctrl-C into a silent exit code 130
    _exit(code if isinstance(code, int) else 0)


_TERMINATED = [False]
_SUMMARY_SHOWN = [False]  # optimize already said it stopped, with the resume hint


def _exit(code: int) -> None:
    """Leave with this code; a Ctrl-C that arrives while leaving changes nothing."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)


def _interrupted() -> None:
    terminated = _TERMINATED[0]
    fail("terminated" if terminated else "interrupted")
    _exit(143 if terminated else 130)


def _terminated(signum, frame) -> None:
    """SIGTERM: stop like Ctrl-C (what is scored is saved, the resume hint is printed)."""
    _TERMINATED[0] = True
    raise KeyboardInterrupt
