"""The CLI reference, docs/cli.md, written from the real CLI: every command's `--help`.

Run `python -m ipo_cli.cli.docs > docs/cli.md` after changing a command or an option;
tests/test_docs_cli.py fails while the file differs from what this writes. The page has the
form of simonw/llm's docs/help.md (a heading and the `--help` text of each command and
subcommand, found by walking the click command tree), written here by click's own help
formatter at a fixed width, so it does not depend on the terminal it is made in.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

WIDTH = 88
HEADER = """# CLI reference

Every `ipo` command and option, as `ipo COMMAND --help` prints it. This page is generated:
run `python -m ipo_cli.cli.docs > docs/cli.md` after changing the CLI (a test fails while it
is out of date).
"""


def _walk(command: Any, ctx: Any, path: list[str]) -> Iterator[tuple[list[str], Any, Any]]:
    yield path, command, ctx
    names = command.list_commands(ctx) if hasattr(command, "list_commands") else []
    for name in names:
        sub = command.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        yield from _walk(sub, type(ctx)(sub, info_name=name, parent=ctx, terminal_width=WIDTH,
                                         max_content_width=WIDTH), [*path, name])


def reference() -> str:
    """docs/cli.md: a section per command, in the order `ipo --help` lists them."""
    import typer.main

    from ipo_cli.cli.app import app

    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="ipo", terminal_width=WIDTH, max_content_width=WIDTH)
    parts = [HEADER]
    for path, command, command_ctx in _walk(root, ctx, []):
        name = " ".join(["ipo", *path])
        parts.append(f"\n{'#' * (len(path) + 2)} {name}\n\n```\n{command.get_help(command_ctx).rstrip()}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    sys.stdout.write(reference())
