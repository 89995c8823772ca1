"""`ipo --help` and `ipo CMD --help` wall time: the median of 10 runs of the installed
executable (goal: under 0.25 s each), and the CPU time of the same runs (steadier than wall
time on a shared machine). With `--against DIR` (a tree holding an older `ipo_cli/`, e.g.
`git archive REV ipo_cli | tar -x -C DIR`) the same commands run from that tree too,
interleaved run by run, so both see the same load.

Run: .venv/bin/python benchmarks/bench_help.py [--against DIR] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [["--help"], ["optimize", "--help"], ["eval", "--help"], ["bench", "--help"], ["classify", "--help"],
            ["describe", "--help"], ["models", "list", "--help"]]
# the installed executable's own code (ipo_cli/entry.py), run with a chosen tree first on the path
ENTRY = "import sys; sys.argv = ['ipo'] + sys.argv[1:]; from ipo_cli.entry import main; main()"


def run_once(args: list[str], tree: Path | None) -> tuple[float, float]:
    if tree is None:
        command, env = [str(ROOT / ".venv" / "bin" / "ipo"), *args], dict(os.environ)
    else:
        command, env = [sys.executable, "-c", ENTRY, *args], {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True, env=env, cwd="/tmp")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", type=Path, help="a tree with an older ipo_cli/ to compare with")
    parser.add_argument("--runs", type=int, default=10)
    ns = parser.parse_args()
    trees: dict[str, Path | None] = {"now": None}
    if ns.against:
        trees = {"before": ns.against.resolve(), "now": None}
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(ns.runs):
        for args in COMMANDS:
            for label, tree in trees.items():
                times.setdefault((label, " ".join(args)), []).append(run_once(args, tree))
    print(f"median of {ns.runs} runs, wall (cpu) seconds; load average {os.getloadavg()[0]:.2f}")
    for args in COMMANDS:
        name = " ".join(args)
        cells = []
        for label in trees:
            runs = times[(label, name)]
            cells.append(f"{label} {statistics.median(w for w, _ in runs):.3f} "
                         f"({statistics.median(c for _, c in runs):.3f})")
        print(f"  ipo {name:22s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
