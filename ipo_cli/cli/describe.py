"""`ipo describe`: caption images with a multimodal model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ipo_cli.cli.console import out, progress_bar, status, warn
from ipo_cli.cli.options import (
    DATA,
    MODELS,
    OUTPUT,
    CacheDirOpt,
    ClassesOpt,
    ClipOpt,
    ClipWeightsOpt,
    DeviceOpt,
    GpuLayersOpt,
    ImageLoadingOpt,
    JsonOpt,
)
from ipo_cli.cli.output import check_out, show, write_out
from ipo_cli.clip.spec import DEFAULT_CLIP
from ipo_cli.errors import IpoError

# ---- ipo describe -----------------------------------------------------------------

def describe_cmd(
    images: Annotated[Path, typer.Argument(help="A folder of class folders, or a flat folder of images.")],
    classes: ClassesOpt = None,
    lmm: Annotated[Optional[str], typer.Option("--lmm", help="Catalogue name, installed name or GGUF file of the multimodal model; clip: describe with --clip alone (no multimodal model).", rich_help_panel=MODELS)] = None,
    mmproj: Annotated[Optional[Path], typer.Option("--mmproj", help="Projector GGUF, with --lmm FILE.gguf.", rich_help_panel=MODELS)] = None,
    handler: Annotated[Optional[str], typer.Option("--handler", help="Chat handler, with --lmm FILE.gguf (default mtmd).", rich_help_panel=MODELS)] = None,
    lmm_url: Annotated[Optional[str], typer.Option("--lmm-url", help="OpenAI-compatible server instead, e.g. http://127.0.0.1:8080/v1.", rich_help_panel=MODELS)] = None,
    lmm_model: Annotated[Optional[str], typer.Option("--lmm-model", help="Model name to send to --lmm-url.", rich_help_panel=MODELS)] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Instruction for the model (default: describe without naming the class).", rich_help_panel=MODELS)] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Longest caption, in tokens.", rich_help_panel=MODELS)] = 160,
    gpu_layers: GpuLayersOpt = None,
    split_part: Annotated[Optional[str], typer.Option("--split-part", help="Which split of a webdataset folder to describe (default: train, else the first it has).", rich_help_panel=DATA)] = None,
    image_loading: ImageLoadingOpt = None,  # with --lmm clip: how CLIP decodes the images
    clip: ClipOpt = DEFAULT_CLIP,  # with --lmm clip only
    clip_weights: ClipWeightsOpt = None,
    device: DeviceOpt = "auto",
    cache_dir: CacheDirOpt = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the captions as JSON lines to this file.", rich_help_panel=OUTPUT)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Caption images with a multimodal model (cached), redacting class names."""
    from ipo_cli import cache
    from ipo_cli.data import shards
    from ipo_cli.data.folders import check_image_loading
    from ipo_cli.llm import captions as describe
    from ipo_cli.llm.machine_defaults import defaults_machine

    check_out(out_file, images, classes, mmproj, clip_weights, lmm if (lmm or "").endswith(".gguf") else None)
    if image_loading is not None:
        check_image_loading(image_loading)
        if (lmm or "").lower() != describe.CLIP_DESCRIBER or lmm_url:
            raise IpoError("--image-loading is for --lmm clip (a multimodal model reads the image files itself)")
    paths, labels, classnames = describe.collect_images(images, classes, split_part)
    check_out(out_file, *paths)  # each image read, links and hard links included (gates/paths.py)
    # a webdataset folder's images are the field's: decoded as CLIP_benchmark does (data/folders.load_image)
    loading = image_loading or ("reference" if shards.is_shard_folder(images) else "ipo")
    settings = describe.CaptionSettings(instruction=prompt or describe.DEFAULT_INSTRUCTION, max_tokens=max_tokens)
    if (lmm or "").lower() == describe.CLIP_DESCRIBER and not lmm_url:  # the CLIP-only describer
        from ipo_cli.clip.attributes import clip_describer
        from ipo_cli.clip.spec import DEFAULT_CLIP

        backend: Any = clip_describer(clip or DEFAULT_CLIP, clip_weights, cache_dir, classnames, paths, device,
                                 loading=lambda identity: status(f"loading CLIP {identity}"), image_loading=loading)
    else:
        machine = defaults_machine(lmm, lmm_url)
        if machine.warning:
            warn(machine.warning)
        with status("loading the multimodal model"):
            backend = describe.load_vision(lmm, mmproj, handler, lmm_url, lmm_model, gpu_layers=gpu_layers,
                                           machine=machine.kind)
    captioner = describe.Captioner(backend, cache.Store(cache.cache_root(cache_dir), "captions"), settings)
    with progress_bar("captioning", len(paths), quiet=as_json) as advance:
        report = captioner.caption(paths, classnames, labels, progress=advance)
    for path, reason in report.failed:
        warn(f"could not caption {path}: {reason}")
    lines = report.to_json_lines()
    if out_file:
        write_out(out_file, "".join(json.dumps(line) + "\n" for line in lines))
    summary = {"summary": report.summary(), "failed": [{"path": p, "reason": r} for p, r in report.failed]}

    def render(_: Any) -> None:
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

    show([*lines, summary], as_json, render, lines=True)
