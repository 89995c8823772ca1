"""Terminal output shared by the commands: progress bars, warnings, errors.

Only `cli` uses this module; the library reports progress through plain callbacks.
Both consoles parse no markup: every string prints as it is, so a `[/]` or `[bold]` in an
image path, a class name, a prompt, a caption or a server's answer can neither crash a
command nor vanish. Styling is done with `rich.text.Text` only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.text import Text

from ipo_cli.gates.text import terminal_console, terminal_safe

# Every character printed passes the text-out gate (control characters and bidi overrides
# shown escaped): see ipo_cli/gates/text.py.
out = terminal_console(soft_wrap=True, markup=False, highlight=False)
err = terminal_console(stderr=True, soft_wrap=True, markup=False, highlight=False)


def warn(message: str) -> None:
    """The message is plain text: brackets in paths, names or prompts print as they are."""
    err.print(Text.assemble(("warning:", "yellow"), " ", terminal_safe(message)), highlight=False)


def fail(message: str) -> None:
    err.print(Text.assemble(("error:", "bold red"), " ", terminal_safe(message)), highlight=False)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, quiet: bool = False) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1, **fields)`; draws a bar on stderr unless quiet or not a TTY."""
    if quiet or total == 0 or not err.is_terminal:
        yield lambda n=1, **fields: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("{task.description}", markup=False, style="progress.description"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}", markup=False),
    ]
    with Progress(*columns, console=err) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(n: int = 1, **fields) -> None:
            progress.update(task, advance=n, **fields)

        yield advance


def status(message: str):
    """A spinner with a message shown as it is (rich would parse a plain string as markup)."""
    return err.status(Text(str(message)))
