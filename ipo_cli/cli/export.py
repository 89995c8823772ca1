"""`ipo export`: prompts into CLIP_benchmark's or CuPL's files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ipo_cli.cli.console import err
from ipo_cli.cli.options import ClassesOpt
from ipo_cli.cli.output import check_out, write_out


def export_cmd(
    prompts: Annotated[Path, typer.Argument(help="An ipo prompts.json, any prompts file ipo reads, or paper:DATASET.")],
    to: Annotated[str, typer.Option("--to", help="clip_benchmark (its --custom_template_file JSON) or cupl ({class: [sentences]}).")] = "clip_benchmark",
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="The dataset key to write (CLIP_benchmark's --dataset name, e.g. cars or wds/cars); also picks one dataset of a multi-dataset file. Default: the prompts' name.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="How many prompts: the run's best K (the first K templates of other files).")] = 1,
    classes: ClassesOpt = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the JSON here (default: stdout).")] = None,
) -> None:
    """Write prompts as a CLIP_benchmark --custom_template_file or a CuPL prompts file."""
    from ipo_cli.data import export as exporter
    from ipo_cli.data import prompts as pr
    from ipo_cli.data.folders import read_classes

    check_out(out_file, prompts, classes)
    info = pr.read_info(prompts)
    names = pr.resolve_classes(info, read_classes(classes) if classes is not None else None)
    prompt_list = pr.read_prompts(prompts, dataset)
    key = dataset or next((p.dataset for p in prompt_list if p.dataset), None) or info.name \
        or (Path(str(prompts)).stem if not str(prompts).startswith(pr.PAPER_PREFIX) else str(prompts)[6:])
    result = exporter.export(prompt_list, key, to, top, names)
    text = json.dumps(result.document, indent=2, ensure_ascii=False) + "\n"
    if out_file is None:
        print(text, end="")
        return
    write_out(out_file, text)
    err.print(f"{result.count} {'classes' if to == 'cupl' else 'prompt(s)'} of {key!r} written to {out_file}")
