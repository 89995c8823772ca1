"""`ipo models`: the local model store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from ipo_cli.cli.console import err, out
from ipo_cli.cli.options import JsonOpt
from ipo_cli.cli.output import human_bytes
from ipo_cli.errors import IpoError


# ---- ipo models -------------------------------------------------------------------

def models_list(as_json: JsonOpt = False) -> None:
    """Catalogue and local models, installed or not, with sizes."""
    from ipo_cli.store import local, pull

    rows = pull.list_models()
    if as_json:
        print(json.dumps([r.__dict__ for r in rows]))
        return
    from rich.table import Table

    table = Table(title=f"models (store: {local.models_dir()})")
    for col in ("name", "kind", "installed", "size", "handler", "pinned"):
        table.add_column(col, no_wrap=True)
    table.add_column("when to choose it", overflow="fold")
    for r in rows:
        pinned = "" if r.pinned is None else "yes" if r.pinned else Text("hub hash", style="yellow")
        table.add_row(r.name, r.kind, Text("yes", style="green") if r.installed else "no",
                      human_bytes(r.size) if r.size else "?", r.handler or "", pinned, r.note)
    out.print(table)



def models_pull(name: Annotated[str, typer.Argument(help="A catalogue name (see ipo models list).")]) -> None:
    """Download a catalogue model with a progress bar, resumably, and verify its checksum."""
    model = pull_with_progress(name)
    out.print(f"pulled {name}: " + ", ".join(f"{role} {r['path']} ({human_bytes(r['size'])})" for role, r in model.files.items()))


def pull_with_progress(name: str):
    """store.pull.pull with a download bar per file; the bars start with the first byte."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from ipo_cli.store import pull

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
        return pull.pull(name, factory, notify)
    finally:
        if progress.live.is_started:
            progress.stop()



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
    from ipo_cli.store import local

    model = local.add_model(name, file, kind, mmproj, handler, n_ctx, force)
    out.print(f"added {name} ({model.kind}, {human_bytes(sum(f['size'] for f in model.files.values()))})")



def models_rm(name: Annotated[str, typer.Argument(help="An installed model.")]) -> None:
    """Forget a model; files that ipo downloaded are deleted, files you added are kept."""
    from ipo_cli.store import local

    model = local.remove(name)
    out.print(f"removed {name}" + (" and its files" if model.source == "catalogue" else " (your files are kept)"))



def models_path(name: Annotated[str, typer.Argument(help="An installed model.")]) -> None:
    """Print the path of an installed model's GGUF file (and its projector)."""
    from ipo_cli.store import local

    model = local.Manifest().load().get(name)
    if model is None:
        local.resolve(name, "llm")  # raises the right error: not pulled yet, or unknown
        raise IpoError(f"{name} is a file, not an installed model name", "see: ipo models list")
    print(model.path)
    if model.mmproj:
        print(model.mmproj)
