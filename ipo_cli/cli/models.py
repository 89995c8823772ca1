"""`ipo models`: the local model store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ipo_cli.cli.console import err, out, real
from ipo_cli.cli.options import JsonOpt
from ipo_cli.cli.output import human_bytes, show
from ipo_cli.errors import IpoError

# ---- ipo models -------------------------------------------------------------------

def models_list(as_json: JsonOpt = False) -> None:
    """Catalogue and local models, one line each (details: ipo models show NAME)."""
    from ipo_cli.store import local, pull

    rows = pull.list_models()

    def render(_: Any) -> None:
        from rich.table import Table
        from rich.text import Text

        table = Table(title="models")
        for col in ("name", "kind", "installed", "size", "handler", "pinned"):
            table.add_column(col, no_wrap=True)
        for r in rows:
            pinned = "" if r.pinned is None else "yes" if r.pinned else Text("hub hash", style="yellow")
            table.add_row(r.name, r.kind, Text("yes", style="green") if r.installed else "no",
                          human_bytes(r.size) if r.size else "?", r.handler or "", pinned)
        out.print(table)
        out.print("details: ipo models show NAME")
        out.print(f"store: {local.models_dir()}")

    show([r.__dict__ for r in rows], as_json, render)


def models_show(
    name: Annotated[str, typer.Argument(help="A catalogue or installed model name (see ipo models list).")],
    as_json: JsonOpt = False,
) -> None:
    """One model in full: note, hub revision, files, sizes, sha256s, sources."""
    from ipo_cli.store.info import model_info

    show(model_info(name), as_json, _render_model)


def _render_model(info: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{info['name']} ({info['kind']})", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    entry, local = info.get("catalogue"), info.get("local")
    if entry:
        table.add_row("when to choose it", entry["note"])
        table.add_row("license", entry["license"])
        table.add_row("context", str(entry["n_ctx"]))
        if entry["handler"]:
            table.add_row("chat handler", entry["handler"])
        if entry["default_for"]:
            table.add_row("default on", ", ".join(f"a {m} machine" for m in entry["default_for"]))
        table.add_row("hub", f"{entry['repo']} at revision {entry['revision']}")
        for role, f in entry["files"].items():
            size = human_bytes(f["size"]) if isinstance(f.get("size"), int) else "size unknown"
            table.add_row(role, f"{f.get('file') or '?'} ({size})")
            table.add_row(f"{role} sha256", f.get("sha256") or Text("not published: checked against the hub's", style="yellow"))
        table.add_row("pinned", "yes" if entry["pinned"] else "no")
        for i, source in enumerate(entry["cite"]):
            table.add_row("checked against" if i == 0 else "", source)
    table.add_row("installed", Text("yes", style="green") if local else "no")
    if local:
        table.add_row("source", "pulled from the catalogue" if local["source"] == "catalogue" else "added with ipo models add")
        for role, record in local["files"].items():
            table.add_row(f"{role} file", f"{record['path']} ({human_bytes(record['size'])})")
            table.add_row(f"{role} sha256", record["sha256"])
        if not entry:
            table.add_row("context", str(local["n_ctx"]))
            if local["handler"]:
                table.add_row("chat handler", local["handler"])
    out.print(table)


def models_pull(name: Annotated[str, typer.Argument(help="A catalogue name (see ipo models list).")]) -> None:
    """Download a catalogue model with a progress bar, resumably, and verify its checksum."""
    model = pull_with_progress(name)
    out.print(f"pulled {name}: " + ", ".join(f"{role} {r['path']} ({human_bytes(r['size'])})" for role, r in model.files.items()))


def pull_with_progress(name: str) -> Any:
    """store.pull.pull with a download bar per file; the bars start with the first byte."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from ipo_cli.store import pull

    progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=real(err))

    def factory(filename: str, total: int | None) -> Callable[[int, int | None], None]:
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
    local.check_files(model)  # a deleted file is said, not printed as if it were there
    print(model.path)
    if model.mmproj:
        print(model.mmproj)
