"""Terminal output shared by the commands: progress bars, warnings, errors.

Only `cli` uses this module; the library reports progress through plain callbacks.
Both consoles parse no markup: every string prints as it is, so a `[/]` or `[bold]` in an
image path, a class name, a prompt, a caption or a server's answer can neither crash a
command nor vanish. Styling is done with `rich.text.Text` only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from ipo_cli.gates.text import terminal_console, terminal_safe

if TYPE_CHECKING:
    from rich.console import Console


class _Lazy:
    """A console made on first use: `ipo --help` prints through click and never needs rich
    (importing it is a seventh of the help's time). The width is read from COLUMNS then."""

    def __init__(self, **options: Any):
        self._options = options
        self._console: Any = None

    def made(self) -> Any:
        if self._console is None:
            self._console = terminal_console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.made(), name)

    def __enter__(self) -> Any:  # special methods are not looked up through __getattr__
        return self.made().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self.made().__exit__(*exc)


def real(console: Any) -> Console:
    """The rich Console itself (for rich classes that take a `console=`)."""
    return console.made() if isinstance(console, _Lazy) else console


# Every character printed passes the text-out gate (control characters and bidi overrides
# shown escaped): see ipo_cli/gates/text.py.
out = cast("Console", _Lazy(soft_wrap=True, markup=False, highlight=False))
err = cast("Console", _Lazy(stderr=True, soft_wrap=True, markup=False, highlight=False))


def warn(message: str) -> None:
    """The message is plain text: brackets in paths, names or prompts print as they are."""
    from rich.text import Text

    err.print(Text.assemble(("warning:", "yellow"), " ", terminal_safe(message)), highlight=False)


def fail(message: str) -> None:
    from rich.text import Text

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
    with Progress(*columns, console=real(err)) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(n: int = 1, **fields: Any) -> None:
            progress.update(task, advance=n, **fields)

        yield advance


def status(message: str) -> Any:
    """A spinner with a message shown as it is (rich would parse a plain string as markup)."""
    from rich.text import Text

    return err.status(Text(str(message)))
