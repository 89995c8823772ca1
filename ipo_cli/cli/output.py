"""Output helpers of the commands: --out files, sizes, --json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ipo_cli.errors import IpoError


def emit_json(value: Any) -> None:
    """One JSON document on stdout (the --json form of every command)."""
    print(json.dumps(value))


def check_out(path: Optional[Path]) -> None:
    """Refuse an unusable --out file before any work is done."""
    if path is None:
        return
    if path.is_dir():
        raise IpoError(f"--out {path} is a folder", "name a file, e.g. --out results.json")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise IpoError(f"--out {path}: {parent} is a file, not a folder")
            break


def write_out(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise IpoError(f"cannot write --out {path}: {exc.strerror or exc}") from None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
