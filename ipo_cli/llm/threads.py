"""How many threads the models may use: the physical cores this process may run on.

llama.cpp's thread pool busy-waits, so one thread more than the cores it can have makes
every token wait on a thread that is not running (issue 20: 60 tokens took 43 s with two
threads against 1.1 s with one beside other jobs). `os.cpu_count()` counts the machine's
logical CPUs; what a process may use is fewer:

- its CPU affinity (`os.sched_getaffinity`, set by `taskset`, `docker --cpuset-cpus`, Slurm);
- a cgroup CPU quota (`docker --cpus`, Kubernetes limits): cgroup v2's `cpu.max`
  ("QUOTA PERIOD" or "max PERIOD"), cgroup v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us`
  (-1: none), https://docs.kernel.org/admin-guide/cgroup-v2.html#cpu-interface-files and
  https://docs.kernel.org/scheduler/sched-bwc.html;
- hyperthreads: llama.cpp's own default (`common_cpu_get_num_math` ->
  `common_cpu_get_num_physical_cores` in ggml-org/llama.cpp common/common.cpp) counts the
  distinct `/sys/devices/system/cpu/cpuN/topology/thread_siblings` masks, one per physical core,
  because "hyperthreading isn't useful for linear algebra".

The count here is llama.cpp's, restricted to the CPUs of the affinity, then capped by the
quota (rounded down: a thread beyond the quota is throttled while it spins). Every file is read
under `root`, so a test can hand it a fake /sys and /proc.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Cores:
    threads: int  # what llama.cpp (and torch) get by default
    why: str  # for the plan: "2 physical cores of 4 CPUs, quota 2.0 CPUs"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def physical_cores(cpus: Iterable[int], root: Path = Path("/")) -> int:
    """Distinct thread-sibling sets among `cpus` (as llama.cpp counts physical cores); the
    number of CPUs where the topology files cannot be read."""
    cpus = sorted(set(cpus))
    siblings = {_read(root / f"sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings") for cpu in cpus}
    if None in siblings or not siblings:
        return len(cpus)
    return len(siblings)


def _own_cgroup(root: Path, v1: bool) -> str:
    """The process's cgroup path from /proc/self/cgroup: v2's "0::/path" line, or the v1 line
    whose controllers include "cpu" ("4:cpu,cpuacct:/path"); '' when it is the root."""
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        if (not v1 and parts[0] == "0" and parts[1] == "") or (v1 and "cpu" in parts[1].split(",")):
            return parts[2].strip("/")
    return ""


def _cgroup_dirs(mount: Path, own: str) -> list[Path]:
    """The process's own cgroup folder first, then the mount point itself (what a container
    sees as its own cgroup)."""
    return ([mount / own] if own else []) + [mount]


def cpu_quota(root: Path = Path("/")) -> float | None:
    """CPUs' worth of time the cgroup allows per period, or None when no quota is set."""
    for folder in _cgroup_dirs(root / "sys/fs/cgroup", _own_cgroup(root, v1=False)):
        v2 = _read(folder / "cpu.max")
        if v2 is not None:
            fields = v2.split()
            if len(fields) >= 1 and fields[0] != "max":
                try:
                    quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100000
                except ValueError:
                    return None
                return quota / period if quota > 0 and period > 0 else None
            return None
    own = _own_cgroup(root, v1=True)
    mounts = (root / "sys/fs/cgroup/cpu", root / "sys/fs/cgroup/cpu,cpuacct")
    for folder in [d for mount in mounts for d in _cgroup_dirs(mount, own)]:
        quota_text, period_text = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota_text is not None and period_text is not None:
            try:
                quota, period = int(quota_text), int(period_text)
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
    return None


def usable_cores(root: Path = Path("/"), affinity: Iterable[int] | None = None) -> Cores:
    """The physical cores this process may use: its affinity's (default: os.sched_getaffinity)
    physical cores, capped by the cgroup quota; at least 1."""
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # macOS, Windows: no affinity call
            affinity = range(os.cpu_count() or 1)
    cpus = sorted(set(affinity))
    physical = physical_cores(cpus, root) if cpus else 1
    quota = cpu_quota(root)
    threads = physical if quota is None else min(physical, max(1, math.floor(quota)))
    why = f"{physical} physical core{'s' if physical != 1 else ''} of {len(cpus)} CPU{'s' if len(cpus) != 1 else ''}"
    if quota is not None:
        why += f", CPU quota {quota:g}"
    return Cores(max(1, threads), why)


def llama_threads(threads: int | None = None, root: Path = Path("/")) -> int:
    """--threads N, else the usable physical cores."""
    return threads if threads else usable_cores(root).threads
