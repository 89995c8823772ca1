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


# ---- the cores free now -------------------------------------------------------------------
# The count above is what the process may use; what it should use at a given moment is fewer
# when other processes keep some of those cores busy. llama.cpp's threads spin while they
# wait for each other (ggml's thread pool polls; llama.cpp's `--poll` defaults to 50, common/arg.cpp),
# so a thread beyond the free cores is not shared fairly: it makes every token wait for the
# one thread the scheduler has put aside (issue 20: 3.1x slower beside one busy process with
# 2 threads on 2 cores). Before each call the backend therefore measures, over a short window,
# how much CPU time the other processes take on its CPUs (/proc/stat's per-CPU jiffies minus
# this process's own, /proc/self/stat utime+stime; proc(5)) and gives llama.cpp the cores left:
# at least 1, at most the usable count. A user's --threads is never changed.


def _cpu_jiffies(cpus: set[int], root: Path) -> tuple[int, int] | None:
    """(busy, total) jiffies of these CPUs since boot, from /proc/stat's `cpuN` lines: busy is
    everything but idle and iowait (fields 4 and 5)."""
    text = _read(root / "proc/stat")
    if text is None:
        return None
    busy = total = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        try:
            values = [int(v) for v in rest.split()[:8]]
        except ValueError:
            return None
        if len(values) < 5:
            return None
        total += sum(values)
        busy += sum(values) - values[3] - values[4]
    return (busy, total) if total else None


def _own_jiffies(root: Path) -> int | None:
    """This process's user + system jiffies (all its threads), /proc/self/stat fields 14 and 15
    (counted after the command name, which may hold spaces and parentheses)."""
    text = _read(root / "proc/self/stat")
    if text is None or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    try:
        return int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None


@dataclass
class LoadProbe:
    """Measures the CPUs' load by others over a window: `start()`, wait, `others()`; a test
    hands it a fake root whose files it rewrites between the two."""

    cpus: set[int]
    root: Path = Path("/")
    _start: tuple[int, int, int] | None = None

    def start(self) -> None:
        cpu, own = _cpu_jiffies(self.cpus, self.root), _own_jiffies(self.root)
        self._start = (cpu[0], cpu[1], own) if cpu is not None and own is not None else None

    def others(self) -> float | None:
        """Cores' worth of time the other processes took on these CPUs since `start()`."""
        cpu, own = _cpu_jiffies(self.cpus, self.root), _own_jiffies(self.root)
        if self._start is None or cpu is None or own is None:
            return None
        busy, total, mine = cpu[0] - self._start[0], cpu[1] - self._start[1], own - self._start[2]
        if total <= 0:
            return None
        return max(0.0, (busy - mine) / total * len(self.cpus))


def free_threads(usable: int, others: float | None) -> int:
    """The threads to run now: the usable cores less what the others keep busy (rounded to
    the nearest core), at least 1; `usable` when the load cannot be read."""
    if others is None:
        return usable
    return max(1, min(usable, usable - math.floor(others + 0.5)))


def fit_threads(usable: int, window: float = 0.15, root: Path = Path("/"),
                cpus: Iterable[int] | None = None) -> int:
    """`free_threads` measured over `window` seconds now (the process itself is idle then)."""
    import time

    if usable <= 1:
        return 1
    if cpus is None:
        try:
            cpus = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            return usable
    probe = LoadProbe(set(cpus), root)
    probe.start()
    time.sleep(window)
    return free_threads(usable, probe.others())
