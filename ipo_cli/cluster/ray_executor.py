"""Units of work on a Ray cluster: the only module of ipo that imports Ray.

Facts about Ray 2.60 this module relies on (checked in Ray's docs and in the installed
`ray` package; see the comments where each is used):
- `ray.init(address=...)` attaches to a running cluster; without an address, and without
  RAY_ADDRESS, it starts a private one that `ray.shutdown()` stops
  (https://docs.ray.io/en/latest/ray-core/api/doc/ray.init.html).
- An actor whose process dies is restarted up to `max_restarts` times (default 0), its
  constructor run again; a method call lost with it is retried up to `max_task_retries`
  times (default 0: at most once)
  (https://docs.ray.io/en/latest/ray-core/fault_tolerance/actors.html).
- A task whose worker process dies is retried up to `max_retries` times (default 3); a
  Python exception is not retried unless `retry_exceptions` says so
  (https://docs.ray.io/en/latest/ray-core/fault_tolerance/tasks.html).
- Ray 2.60 turns token authentication on for a cluster `ray.init()` starts when RAY_AUTH_MODE
  is unset, generating a token into ~/.ray/auth_token (`ray/_private/worker.py` calls
  `enable_token_auth_by_default`); `ray start --head`, and a driver attaching to a cluster,
  turn it on when a token already exists or RAY_AUTH_MODE=token (`ray/scripts/scripts.py`
  calls `maybe_enable_token_auth_if_token_available`); the token is read from RAY_AUTH_TOKEN,
  then RAY_AUTH_TOKEN_PATH, then that file (installed
  ray/_private/authentication/authentication_token_setup.py;
  https://docs.ray.io/en/master/ray-core/internals/token-authentication.html).
- `local_mode` is gone: `ray.init(local_mode=True)` raises (installed ray/_private/worker.py).
- `num_gpus` is a logical resource: Ray gives a task or actor that asks for GPUs its own
  CUDA_VISIBLE_DEVICES (https://docs.ray.io/en/latest/ray-core/scheduling/accelerators.html).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from ipo_cli.cluster.executor import Outcome, Work
from ipo_cli.errors import IpoError

INSTALL_HINT = 'install the extra: pip install "ipo-cli[ray]" (Ray 2.60)'
RETRIES = 3  # restarts of a lost worker, and retries of the unit it held


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise IpoError("--ray needs Ray, which is not installed", INSTALL_HINT) from None
    return ray


class _Holder:
    """One worker: the work set up once (CLIP loaded), then unit after unit."""

    def __init__(self, work: Work):
        self.work = work
        work.setup()

    def run(self, unit: Any) -> Any:
        return self.work(unit)


def _run_task(work: Work, unit: Any) -> Any:
    work.setup()
    return work(unit)


class RayExecutor:
    """Units on a Ray cluster: stateful work on actors (each loads the model once, units are
    handed to whichever is free), stateless work as one task per unit."""

    def __init__(self, address: str, *, workers: int | None = None, gpus_per_worker: float | None = None,
                 device: str = "auto"):
        self.address = address
        self.owned = address == "local"
        if self.owned:
            _private_token()  # before Ray is imported: it reads the settings once
        ray = require_ray()
        self.ray = ray
        # Ray's INFO lines and the workers' stdout would mix into ipo's output (and --json):
        # `log_to_driver=False` keeps worker output in the cluster's logs.
        options: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False,
                                   "include_dashboard": False}
        if not self.owned and not ray.is_initialized():
            _probe(address)
        self.attached_before = ray.is_initialized()  # a program (or a test) that already called ray.init
        try:
            if self.attached_before:
                pass
            elif self.owned:
                ray.init(address="local", **options)
            else:
                ray.init(address=address, **options)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise IpoError(f"cannot reach the Ray cluster at {address!r}: {first}",
                           "start one with `ray start --head`, pass its address (HOST:PORT), or --ray local") \
                from None
        resources = ray.cluster_resources()
        self.cpus = int(resources.get("CPU", 1))
        self.gpus = 0.0 if device == "cpu" else float(resources.get("GPU", 0))
        node_cpus = max([int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [1])
        # one GPU per worker where the cluster has GPUs (`num_gpus` is logical: Ray sets
        # CUDA_VISIBLE_DEVICES for each actor to the GPU it was given), else CPU workers
        self.gpus_per_worker = (gpus_per_worker if gpus_per_worker is not None else 1.0) if self.gpus else 0.0
        # never more workers than the cluster can place at once: a unit handed to an actor
        # that waits for resources would wait for ever
        fits = int(self.gpus // self.gpus_per_worker) if self.gpus_per_worker else self.cpus
        if fits < 1:
            raise IpoError(f"each worker asks for {self.gpus_per_worker:g} GPU(s), but the Ray cluster has "
                           f"{self.gpus:g}", "ask for fewer (--ray-gpus-per-cell), or add GPU nodes")
        self.workers = max(1, min(workers or fits, fits))
        # CPU workers split the CPUs between them (torch then runs as many threads), but one
        # worker asks for no more than one node has
        self.cpus_per_worker = 1 if self.gpus_per_worker else max(1, min(self.cpus // self.workers, node_cpus))
        self._actors: list[tuple[Work, list[Any]]] = []

    # ---- workers --------------------------------------------------------------------------
    def _pool(self, work: Work) -> list[Any]:
        for known, actors in self._actors:
            if known == work:
                return actors
        ray = self.ray
        holder = ray.remote(_Holder).options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
            max_restarts=RETRIES, max_task_retries=RETRIES)
        actors = [holder.remote(work) for _ in range(self.workers)]
        self._actors.append((work, actors))
        return actors

    def map_units(self, units: Sequence[Any], work: Work, *, stateful: bool = True) -> Iterator[Outcome]:
        if not units:
            return
        if not stateful:
            yield from self._tasks(units, work)
            return
        ray = self.ray
        idle = list(self._pool(work))
        queue = deque(units)
        pending: dict[Any, tuple[Any, Any]] = {}
        try:
            while queue or pending:
                while queue and idle:
                    actor = idle.pop()
                    unit = queue.popleft()
                    pending[actor.run.remote(unit)] = (unit, actor)
                if not pending:  # every worker is gone: the rest cannot run
                    for unit in queue:
                        yield Outcome(unit, error="no worker left on the cluster")
                    return
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    unit, actor = pending.pop(ref)
                    try:
                        value = ray.get(ref)
                    except ray.exceptions.ActorDiedError as exc:
                        yield Outcome(unit, error=_reason(exc))  # restarts spent: this worker is gone
                        continue
                    except ray.exceptions.RayError as exc:
                        idle.append(actor)
                        yield Outcome(unit, error=_reason(exc))
                        continue
                    idle.append(actor)
                    yield Outcome(unit, value)
        finally:
            for ref in pending:  # Ctrl-C or an error: what was submitted is cancelled (close kills the actors)
                _cancel(ray, ref, force=False)  # force is for tasks only, not actor methods

    def _tasks(self, units: Sequence[Any], work: Work) -> Iterator[Outcome]:
        ray = self.ray
        self._release_actors()  # workers kept from stateful work would hold the CPUs/GPUs the tasks wait for
        # a task whose worker dies is retried (max_retries); an exception in the work is
        # not (retry_exceptions=False): it is the unit's own failure, reported
        task = ray.remote(_run_task).options(num_cpus=1, num_gpus=self.gpus_per_worker,
                                             max_retries=RETRIES, retry_exceptions=False)
        pending = {task.remote(work, unit): unit for unit in units}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    unit = pending.pop(ref)
                    try:
                        yield Outcome(unit, ray.get(ref))
                    except ray.exceptions.RayError as exc:
                        yield Outcome(unit, error=_reason(exc))
        finally:
            for ref in pending:
                _cancel(ray, ref, force=True)

    def on_every_node(self, fn: Any, arg: Any) -> list[Any]:
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = ray.remote(fn)
        refs = [task.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                .remote(arg) for node in ray.nodes() if node.get("Alive")]
        return list(ray.get(refs))

    def _release_actors(self) -> None:
        ray = self.ray
        for _, actors in self._actors:
            for actor in actors:
                try:
                    ray.kill(actor)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self._actors.clear()

    def close(self) -> None:
        """Kill this command's workers; stop the cluster when `--ray local` started it, else
        only detach from it."""
        ray = self.ray
        self._release_actors()
        if ray.is_initialized() and not self.attached_before:
            ray.shutdown()


def _cancel(ray: Any, ref: Any, force: bool) -> None:
    try:
        ray.cancel(ref, force=force)
    except Exception:  # noqa: BLE001 - finished meanwhile, or the cluster is going away
        pass


def _probe(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) that accepts no connection is refused at once:
    `ray.init` would wait for the cluster's GCS for minutes."""
    import socket

    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # `auto`, or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise IpoError(f"cannot reach the Ray cluster at {address!r}: {exc.strerror or exc}",
                       "start one with `ray start --head`, pass its address (HOST:PORT), or --ray local") from None


def _private_token() -> None:
    """A private cluster (`--ray local`) with token authentication, its token only in this
    process's environment (and its children's: the cluster's processes), so that Ray does
    not write one into ~/.ray: ipo writes only in the folders it names. A user's own
    RAY_AUTH_MODE / RAY_AUTH_TOKEN settings are left as they are."""
    import os
    import secrets

    if "RAY_AUTH_MODE" not in os.environ and not os.environ.get("RAY_AUTH_TOKEN"):
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def _reason(exc: BaseException) -> str:
    """The last line of a Ray error: the worker's own exception, or why the worker died."""
    cause = getattr(exc, "cause", None)  # RayTaskError.cause: the exception the work raised
    if isinstance(cause, IpoError):
        return str(cause)
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]
