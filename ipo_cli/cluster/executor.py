"""The executor interface: a list of independent units, one piece of work that runs each,
results back as they arrive.

`ipo embed`, `ipo eval`, `ipo classify` and `ipo bench` call `map_units` whichever way they
run: `LocalExecutor` runs the units one after the other in this process (today's path),
`RayExecutor` (cluster/ray_executor.py) on a Ray cluster. The work is a picklable object
with `setup()` (what a worker does once, e.g. load CLIP) and `__call__(unit)`; a worker
calls `setup` once and then runs many units.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

RAY_ENV = "RAY_ADDRESS"  # Ray's own variable for the cluster to attach to (ray.init's `address`)


class Work(Protocol):
    def setup(self) -> None: ...

    def __call__(self, unit: Any) -> Any: ...


@dataclass
class Outcome:
    """A unit's result (`value`), or why it failed after its retries (`error`)."""

    unit: Any
    value: Any = None
    error: str | None = None


class Executor(Protocol):
    workers: int

    def map_units(self, units: Sequence[Any], work: Work, *, stateful: bool = True) -> Iterator[Outcome]:
        """Every unit's outcome, in the order they finish. `stateful`: workers are kept and
        reused (actors holding a loaded model); else one task per unit (a bench cell)."""
        ...

    def on_every_node(self, fn: Callable[[Any], Any], arg: Any) -> list[Any]:
        """`fn(arg)` once on every node (e.g. to check that a folder is shared)."""
        ...

    def close(self) -> None: ...


class LocalExecutor:
    """Today's path: the units in order, in this process; an error stops the command as it
    always did (no retries: nothing here can lose a worker)."""

    workers = 1

    def __init__(self) -> None:
        self._ready: list[Any] = []

    def map_units(self, units: Sequence[Any], work: Work, *, stateful: bool = True) -> Iterator[Outcome]:
        if not any(w is work for w in self._ready):
            work.setup()
            self._ready.append(work)
        for unit in units:
            yield Outcome(unit, work(unit))

    def on_every_node(self, fn: Callable[[Any], Any], arg: Any) -> list[Any]:
        return [fn(arg)]

    def close(self) -> None:
        self._ready.clear()


def ray_address(option: str | None) -> str | None:
    """`--ray ADDRESS`, else RAY_ADDRESS, else None (run here)."""
    address = (option or "").strip() or os.environ.get(RAY_ENV, "").strip()
    return address or None


def sees_token(arg: tuple[str, str]) -> bool:
    """Whether this node reads `token` in the file `path` (a folder shared with the driver)."""
    path, token = arg
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read() == token
    except OSError:
        return False


def check_shared(executor: Executor, folder: Path, what: str) -> None:
    """Refuse to submit work that writes into `folder` unless every node sees it: the
    driver writes a random token there and each node must read it back."""
    import secrets

    from ipo_cli.errors import IpoError

    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".ipo-shared-{secrets.token_hex(8)}"
    token = secrets.token_hex(16)
    probe.write_text(token, encoding="utf-8")
    try:
        seen = executor.on_every_node(sees_token, (str(probe.resolve()), token))
    finally:
        probe.unlink(missing_ok=True)
    if not all(seen):
        raise IpoError(f"{what} {folder} is not on storage every Ray node shares ({seen.count(False)} of "
                       f"{len(seen)} node(s) cannot read it)",
                       "put it on a shared filesystem (NFS, a cluster volume) mounted at the same path on every node")


def open_executor(address: str | None, *, workers: int | None = None, gpus_per_worker: float | None = None,
                  device: str = "auto") -> Executor:
    """A LocalExecutor without an address; with one, a RayExecutor attached to it (`local`
    starts a private cluster that `close` stops). Ray is imported only here, and only then."""
    if address is None:
        return LocalExecutor()
    from ipo_cli.cluster.ray_executor import RayExecutor

    return RayExecutor(address, workers=workers, gpus_per_worker=gpus_per_worker, device=device)
