"""Backends by name, so that a program (or a test) can put its own LLM or describer behind
the real `ipo` commands: `register("scripted", factory)` makes `--llm scripted:NAME` (or
`--lmm scripted:NAME`) call `factory("NAME", n_ctx=...)` in place of llama.cpp or a server.

This is what simonw/llm does with its plugin hook `register_models` (llm/hookspecs.py):
its tests/conftest.py registers a `MockModel` whose answers are queued with `enqueue()`,
and the CLI tests run against it in process. ipo's own backends (llama.cpp, HTTP servers)
are not registered here; a registered scheme is only consulted for a NAME of the form
`SCHEME:REST` that is not a file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipo_cli.errors import IpoError

KINDS = ("llm", "lmm")
_FACTORIES: dict[str, dict[str, Callable[..., Any]]] = {kind: {} for kind in KINDS}


def register(scheme: str, factory: Callable[..., Any], kind: str = "llm") -> None:
    """`factory(name, **options)` returns an LLM (llm/base.py `LLM`) for kind "llm", or a
    describer (an object with `identity` and `describe(data_uri, settings)`, as
    llm/captions.py's backends) for kind "lmm"."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if not scheme.isidentifier():
        raise ValueError(f"a scheme is a plain name, not {scheme!r}")
    _FACTORIES[kind][scheme] = factory


def unregister(scheme: str, kind: str = "llm") -> None:
    _FACTORIES[kind].pop(scheme, None)


def registered(kind: str = "llm") -> list[str]:
    return sorted(_FACTORIES[kind])


def lookup(spec: str | None, kind: str = "llm") -> tuple[Callable[..., Any], str] | None:
    """The factory and name a `SCHEME:NAME` spec selects, or None (then the spec is a model
    name or file as usual)."""
    if not spec or ":" not in spec:
        return None
    scheme, _, name = spec.partition(":")
    factory = _FACTORIES[kind].get(scheme)
    if factory is None or Path(spec).expanduser().is_file():
        return None
    if not name:
        raise IpoError(f"--{kind} {spec!r} names no {scheme} model", f"use --{kind} {scheme}:NAME")
    return factory, name


def create(spec: str | None, kind: str = "llm", **options: Any) -> Any | None:
    """The registered backend `spec` selects, made with `options` (n_ctx, ...), or None."""
    found = lookup(spec, kind)
    if found is None:
        return None
    factory, name = found
    return factory(name, **options)
