"""Output helpers of the commands: a result for a person or as --json, --out files, sizes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Optional, TypeVar

from ipo_cli.gates.paths import check_out_file, refuse_input_as_output, write_text_atomic

T = TypeVar("T")


def emit_json(value: Any) -> None:
    """One JSON document on stdout (the --json form of every command)."""
    print(json.dumps(value))


def show(result: T, as_json: bool, render: Callable[[T], None] | None = None, *, lines: bool = False) -> None:
    """Every command's last step: with --json, `result` as one JSON document on stdout (or,
    with `lines`, each of its items as one line of JSON lines); else `render(result)` draws
    it for a person (rich tables on stdout)."""
    if as_json:
        items: Iterable[Any] = result if lines else [result]  # type: ignore[assignment]
        for item in items:
            emit_json(item)
    elif render is not None:
        render(result)


def check_out(path: Optional[Path], *inputs: Path | str | None, folder: bool = False, replaced: bool = False) -> None:
    """Refuse an unusable --out before any work is done: a folder, a symbolic link, a
    device, a FIFO, a name the OS cannot take, and any of the command's `inputs` (or a
    place inside an input folder), which writing would destroy (the paths gate,
    gates/paths.py). With `folder`, --out is a folder ipo writes into; with `replaced`, one
    it may replace whole (a run folder and --force), so it must hold no input either."""
    if path is None:
        return
    if not folder:
        check_out_file(path, "--out")
    refuse_input_as_output(path, inputs, "--out", folder=replaced)


def write_out(path: Path, text: str) -> None:
    """Atomically, as a regular file, never through a link (gates/paths.py)."""
    write_text_atomic(path, text, "--out")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
