"""`ipo classify`: label new images with an optimised prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ipo_cli.cli.console import out, progress_bar, status, warn
from ipo_cli.cli.options import ClassesOpt, ClipOpt, ClipWeightsOpt, CacheDirOpt, DeviceOpt, JsonOpt
from ipo_cli.cli.output import check_out, write_out
from ipo_cli.errors import IpoError


# ---- ipo classify -----------------------------------------------------------------

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
    from ipo_cli.data import folders as ds
    from ipo_cli.clip.classify import Classifier, choose_prompt
    from ipo_cli.data.prompts import read_prompts

    check_out(out_file)
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
            write_out(out_file, buf.getvalue())
        else:
            write_out(out_file, "".join(json.dumps(p.to_json()) + "\n" for p in predictions))
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
