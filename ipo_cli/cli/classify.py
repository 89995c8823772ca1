"""`ipo classify`: label new images with an optimised prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ipo_cli.cli.console import out, progress_bar, status, warn
from ipo_cli.cli.options import (
    DATA,
    OUTPUT,
    CacheDirOpt,
    ClassesOpt,
    ClipOpt,
    ClipWeightsOpt,
    DeviceOpt,
    ImageLoadingOpt,
    JsonOpt,
    RayOpt,
    RayWorkersOpt,
    UnitSizeOpt,
)
from ipo_cli.cli.output import check_out, show, write_out
from ipo_cli.errors import IpoError

# ---- ipo classify -----------------------------------------------------------------

def classify_cmd(
    images: Annotated[Path, typer.Argument(help="An image file, a folder of images (searched recursively), or a CLIP_benchmark webdataset folder.")],
    prompts: Annotated[Path, typer.Option("--prompts", help="An ipo prompts.json (its best prompt), a template list, or per-class prompts.", rich_help_panel=DATA)],
    classes: ClassesOpt = None,
    ensemble: Annotated[bool, typer.Option("--ensemble", help="Average all the file's templates instead of using its best one.", rich_help_panel=DATA)] = False,
    split_part: Annotated[Optional[str], typer.Option("--split-part", help="Which split of a webdataset folder to label (default: test, else the first it has).", rich_help_panel=DATA)] = None,
    image_loading: ImageLoadingOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes listed per image.", rich_help_panel=OUTPUT)] = 3,
    clip: ClipOpt = None,  # default: the CLIP a run's prompts.json names, else ViT-B-16:openai
    clip_weights: ClipWeightsOpt = None,
    device: DeviceOpt = "auto",
    cache_dir: CacheDirOpt = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the predictions: .csv (path, rank, class, probability) or .jsonl.", rich_help_panel=OUTPUT)] = None,
    as_json: JsonOpt = False,
    ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
    unit_size: UnitSizeOpt = 256,
) -> None:
    """Label new images with an optimised prompt: top-k classes with probabilities."""
    from ipo_cli.clip import predictions_out, sources
    from ipo_cli.clip.classify import Classifier, choose_prompt
    from ipo_cli.data.folders import check_image_loading, read_classes
    from ipo_cli.data.prompts import read_info, read_prompts, resolve_classes, resolve_clip

    check_out(out_file, images, prompts, classes, clip_weights)
    if out_file is not None:
        predictions_out.check_suffix(out_file)
    # a run's prompts.json names its classes and CLIP: they are the defaults (data/prompts.py)
    info = read_info(prompts)
    classnames = resolve_classes(info, read_classes(classes) if classes is not None else None)
    if classnames is None:
        raise IpoError("missing --classes", "pass the class names the prompt was made for, one per line")
    clip_name, weights = resolve_clip(info, clip, clip_weights)
    if image_loading is not None:
        check_image_loading(image_loading)
    prompt = choose_prompt(read_prompts(prompts), ensemble)
    shards = sources.shard_images(images, split_part, cache_dir, classnames)  # a webdataset folder, as eval reads it
    if shards is None and split_part is not None:
        raise IpoError(f"--split-part is for a webdataset folder (with SPLIT/nshards.txt); {images} is not one")
    paths = shards.paths if shards is not None else sources.image_files(images)
    check_out(out_file, *paths)  # each image read, links and hard links included (gates/paths.py)
    loading = image_loading or (shards.image_loading if shards is not None else "ipo")
    with status(f"loading CLIP {clip_name}"):
        classifier = Classifier(prompt, classnames, clip_name, weights, device, cache_dir, image_loading=loading)
    from ipo_cli.cluster.executor import ray_address

    address = ray_address(ray)
    if address is not None:
        predictions = _classify_on_cluster(classifier, paths, address, ray_workers, unit_size, top_k, device,
                                           out_file, as_json)
    else:
        with progress_bar("classifying", len(paths), quiet=as_json) as advance:
            predictions = classifier.classify(paths, top_k=top_k, progress=advance)
    failed = [p for p in predictions if p.error]
    for p in failed:
        warn(f"could not read {p.source}: {p.error}")
    if out_file and address is None:
        write_out(out_file, predictions_out.format_predictions(predictions, out_file))

    def render(_: Any) -> None:
        from rich.table import Table

        table = Table(title=f"{len(predictions)} images, prompt {prompt.name[:60]}, CLIP {clip_name}")
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

    show([p.to_json() for p in predictions], as_json, render, lines=True)


def _classify_on_cluster(classifier: Any, paths: list[Path], address: str, workers: int | None, unit_size: int,
                         top_k: int, device: str, out_file: Optional[Path], as_json: bool) -> list[Any]:
    """Images embedded by the cluster's workers, unit by unit; each unit's predictions are
    appended to --out as soon as it arrives. Returned in the order of `paths`."""
    from ipo_cli.clip import predictions_out
    from ipo_cli.cluster.embed import cluster_clip
    from ipo_cli.cluster.executor import open_executor

    clip_name, weights, _ = classifier.spec
    with status(f"starting CLIP {clip_name} on the Ray cluster"):
        executor = open_executor(address, workers=workers, device=device)
    stream = None
    found: dict[str, Any] = {}
    try:
        with status(f"starting CLIP {clip_name} on the Ray cluster"):
            clip = cluster_clip(executor, clip_name, weights, classifier.store, classifier.texts, device,
                                unit_size=unit_size)
        classifier.use_clip(clip)
        stream = predictions_out.PredictionStream(out_file) if out_file is not None else None
        with progress_bar("classifying", len(paths), quiet=as_json) as advance:
            for result in clip.embed_units(paths, progress=advance):
                chunk = classifier.predict_embedded(list(result.unit.paths), result.embeddings, result.kept,
                                                    result.failures, top_k)
                if stream is not None:
                    stream.write(chunk)
                found.update((p.source, p) for p in chunk)
    finally:
        executor.close()
        if stream is not None:
            stream.close()
    return [found[str(p)] for p in paths]
