"""JSON in: the one reader for every JSON file ipo reads (classes, split, prompts, manifest,
catalogue, config.json, history.jsonl, summaries, CLIP configs) and every server body.

It caps the size (`MAX_JSON_BYTES`) and the nesting (`MAX_DEPTH`), decodes UTF-8 (a BOM is
allowed everywhere, as in text files), and turns every failure into one `IpoError` that
names the file or URL and the first bad spot as line:column. The standard library's
parser recurses in C once per nesting level and raises RecursionError near the
interpreter's recursion limit (1000 levels); that is mapped to the same one-line error,
and what parsed is then measured without recursion against `MAX_DEPTH`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ipo_cli.errors import IpoError

MAX_JSON_BYTES = 64 * 1024 * 1024  # 64 MiB: far above any file or answer ipo reads
MAX_DEPTH = 64  # ipo's own documents are at most 6 deep; a server's answer ~8


def depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def loads(data: bytes | str, source: str, hint: str | None = None, max_bytes: int = MAX_JSON_BYTES,
          max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value in `data`, or one `IpoError` naming `source` (e.g. "split file x.json"
    or "the answer of http://host/v1/models") and where it went wrong."""
    if len(data) > max_bytes:
        raise IpoError(f"{source} is {len(data) / 2**20:.1f} MiB of JSON, over the limit of {max_bytes // 2**20} MiB",
                       hint)
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise IpoError(f"{source} is not UTF-8 (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})",
                           hint or "save it as UTF-8") from None
    else:
        text = data[1:] if data.startswith("\ufeff") else data
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IpoError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno}:{exc.colno}", hint) from None
    except RecursionError:
        raise IpoError(f"{source} nests lists or objects deeper than {max_depth} levels", hint) from None
    except (ValueError, TypeError) as exc:  # e.g. an integer over Python's 4300-digit limit
        first = str(exc).split("\n")[0][:120]
        raise IpoError(f"{source} is not valid JSON: {first}", hint) from None
    # A document cannot nest deeper than it has brackets: only one with more than max_depth
    # of them is walked (the count runs in C; the walk visits every value).
    if text.count("[") + text.count("{") > max_depth and depth(value) > max_depth:
        raise IpoError(f"{source} nests lists or objects deeper than {max_depth} levels", hint)
    return value


def read_bytes(path: Path | str, what: str, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """A regular file's bytes, at most `max_bytes` (one-line errors for the rest)."""
    from ipo_cli.gates.paths import check_path, os_error

    path = Path(path)
    check_path(path, what, must_exist=True, kind="file")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise os_error(exc, f"cannot read {what} {path}") from None
    if len(data) > max_bytes:
        raise IpoError(f"{what} {path} is over the limit of {max_bytes // 2**20} MiB")
    return data


def read_json(path: Path | str, what: str, hint: str | None = None, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in the file at `path`; `what` names it for the user ("split file")."""
    return loads(read_bytes(path, what, max_bytes), f"{what} {path}", hint, max_bytes)


def read_json_lines(path: Path | str, what: str, max_bytes: int = 1 << 30) -> list[tuple[int, Any | IpoError]]:
    """Each line of a JSON-lines file as (line number, value or the IpoError it gave); the
    caller decides what a bad line means (a torn last line after a crash is expected)."""
    data = read_bytes(path, what, max_bytes)
    out: list[tuple[int, Any | IpoError]] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            out.append((number, loads(raw, f"{what} {path} line {number}")))
        except IpoError as exc:
            out.append((number, exc))
    return out


def object_at(value: Any, source: str, hint: str | None = None) -> dict:
    """`value` when it is a JSON object, else one line saying what it was."""
    if not isinstance(value, dict):
        raise IpoError(f"{source} is a JSON {_kind(value)}, not an object", hint)
    return value


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


__all__ = ["MAX_DEPTH", "MAX_JSON_BYTES", "depth", "loads", "object_at", "read_bytes", "read_json",
           "read_json_lines"]
