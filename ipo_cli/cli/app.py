"""The `ipo` command: a thin Typer layer over the library.

Each command module parses its options, calls one library function and renders the result;
this module only assembles them. Heavy libraries are imported inside the commands, so
`ipo --help` stays instant.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from ipo_cli import __version__
from ipo_cli.cli import cache as cache_cmds
from ipo_cli.cli import classify, describe, embed, evaluate, export, models, optimize, report
from ipo_cli.cli.console import out
from ipo_cli.cli.help import PanelCommand, PanelGroup

app = typer.Typer(
    cls=PanelGroup,
    name="ipo",
    help="Find human-readable prompts for CLIP models with a local LLM in the loop (IPO).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
cache_app = typer.Typer(cls=PanelGroup, help="The on-disk caches of image embeddings, captions and LLM answers.", no_args_is_help=True,
                      rich_markup_mode=None)
models_app = typer.Typer(cls=PanelGroup, help="The local model store: list, show, pull, add, rm, path.", no_args_is_help=True,
                       rich_markup_mode=None)


def _version(value: bool) -> None:
    if value:
        out.print(f"ipo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """ipo: interpretable prompt optimisation for CLIP, offline."""


_COMMANDS: dict[typer.Typer, list[tuple[str, Callable[..., None]]]] = {
    app: [("optimize", optimize.optimize_cmd), ("eval", evaluate.eval_cmd), ("classify", classify.classify_cmd),
          ("describe", describe.describe_cmd), ("report", report.report_cmd), ("bench", optimize.bench_cmd),
          ("export", export.export_cmd), ("embed", embed.embed_cmd)],
    models_app: [("list", models.models_list), ("show", models.models_show), ("pull", models.models_pull),
                 ("add", models.models_add), ("rm", models.models_rm), ("path", models.models_path)],
    cache_app: [("info", cache_cmds.cache_info), ("clear", cache_cmds.cache_clear)],
}


def _with_cache_dir(function: Callable[..., None]) -> Callable[..., None]:
    """A command that takes --cache-dir runs with it as the cache for everything it caches
    (cache.using_root: stores, shard images, matplotlib's and torch's caches), whether or
    not each library call is handed the folder."""
    if "cache_dir" not in inspect.signature(function).parameters:
        return function

    @functools.wraps(function)
    def command(*args: Any, **kwargs: Any) -> None:
        from ipo_cli import cache

        with cache.using_root(kwargs.get("cache_dir")):
            function(*args, **kwargs)

    return command


for group, commands in _COMMANDS.items():
    for name, function in commands:
        group.command(name, cls=PanelCommand)(_with_cache_dir(function))
app.add_typer(models_app, name="models")
app.add_typer(cache_app, name="cache")

def main() -> None:
    """Entry point: every error is one line on stderr and a non-zero exit code."""
    from ipo_cli.cli.errors import run

    run(app)
