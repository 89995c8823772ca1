"""Scoring-engine benchmark: ratios measured side by side in one run.

1. Text encoding: open_clip's padded encode_text (77 positions) vs ipo's trimmed one, on
   typical prompts (37 Oxford-Pets classes in a template), ViT-B-32.
2. `ipo eval` over 500 real Fashion-MNIST images, cold cache vs warm cache: the whole
   command in a subprocess, and the in-process embed+score stage alone. One untimed run
   first warms the disk cache, bytecode and the allocator.
3. Image embedding throughput: ipo's cold path (hash, decode in threads one batch ahead,
   forward, normalise) against the bare forward pass over already-decoded tensors
   (goal: at least 90% of the bare forward's images per second).

CLIP weights are random (no weights can be downloaded here); cost is the same as with
trained ones. Run: .venv/bin/python benchmarks/bench_scoring.py [--images 500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

PETS = ["abyssinian", "american bulldog", "american pit bull terrier", "basset hound", "beagle",
        "bengal", "birman", "bombay", "boxer", "british shorthair", "chihuahua", "egyptian mau",
        "english cocker spaniel", "english setter", "german shorthaired", "great pyrenees", "havanese",
        "japanese chin", "keeshond", "leonberger", "maine coon", "miniature pinscher", "newfoundland",
        "persian", "pomeranian", "pug", "ragdoll", "russian blue", "saint bernard", "samoyed",
        "scottish terrier", "shiba inu", "siamese", "sphynx", "staffordshire bull terrier",
        "wheaten terrier", "yorkshire terrier"]


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_text(checkpoint: Path) -> None:
    import torch

    from ipo_cli.clip import model as vision
    from ipo_cli.clip.spec import parse_clip

    clip = vision.load_clip(parse_clip("ViT-B-32", checkpoint))
    for template in ("a photo of a {}, a type of pet.", "Identify the unique visual features of the {} accurately."):
        texts = [template.format(c) for c in PETS]
        tokens = clip.tokenize(texts)
        with torch.inference_mode():
            clip.model.encode_text(tokens)  # warm-up
            padded = best_of(lambda: clip.model.encode_text(tokens))
            trimmed = best_of(lambda: vision.encode_text_trimmed(clip.model, tokens))
            diff = (torch.nn.functional.normalize(clip.model.encode_text(tokens), dim=-1)
                    - torch.nn.functional.normalize(vision.encode_text_trimmed(clip.model, tokens), dim=-1)).abs().max()
        longest = int(tokens.argmax(-1).max()) + 1
        print(f"text encoding, {len(texts)} prompts of up to {longest} tokens ({template!r}):")
        print(f"  padded {padded * 1000:.0f} ms, trimmed {trimmed * 1000:.0f} ms, "
              f"speed-up {padded / trimmed:.1f}x, max |diff| {float(diff):.1e}")


def bench_eval(checkpoint: Path, n_images: int, work: Path) -> None:
    from fashion_mnist import export

    from ipo_cli import cache
    from ipo_cli.data import folders as dataset
    from ipo_cli.clip import evaluate
    from ipo_cli.clip import model as vision
    from ipo_cli.clip.spec import parse_clip
    from ipo_cli.data.prompts import parse_prompts

    per_class = n_images // 10
    images = export(work / "images", "test", per_class=per_class)
    prompts = work / "prompts.json"
    prompts.write_text(json.dumps(["a photo of a {}.", "a black and white photo of a {}."]))
    cmd = [sys.executable, "-m", "ipo_cli", "eval", str(prompts), "--images", str(images),
           "--classes", str(images / "classes.txt"), "--clip", "ViT-B-32", "--clip-weights", str(checkpoint),
           "--json"]

    def run(cache_dir: Path) -> tuple[float, dict]:
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             env={**os.environ, "IPO_CACHE_DIR": str(cache_dir)})
        return time.perf_counter() - start, json.loads(out.stdout)

    run(work / "cache-warmup")  # untimed: first-call costs (imports from disk, bytecode) land here
    cold_t, cold = run(work / "cache-cli")
    warm_t, warm = run(work / "cache-cli")
    assert warm["cache"]["images_computed"] == 0
    print(f"ipo eval, {cold['n_images']} images, ViT-B-32, whole command in a subprocess:")
    print(f"  cold cache {cold_t:.2f} s, warm cache {warm_t:.2f} s, speed-up {cold_t / warm_t:.1f}x")

    clip = vision.load_clip(parse_clip("ViT-B-32", checkpoint))
    data = dataset.load_dataset(images, images / "classes.txt")
    prompt_list = parse_prompts(json.loads(prompts.read_text()))

    def stage(cache_dir: Path) -> float:
        store = cache.Store(cache_dir, "embeddings")
        clip._text_memo.clear()
        start = time.perf_counter()
        emb = evaluate.embed_dataset(clip, data, store)
        evaluate.evaluate(clip, emb, prompt_list)
        elapsed = time.perf_counter() - start
        store.close()
        return elapsed

    cold_s = stage(work / "cache-lib")
    warm_s = stage(work / "cache-lib")
    print(f"  embed + score stage in process (model loaded): cold {cold_s:.2f} s, warm {warm_s:.3f} s, "
          f"speed-up {cold_s / warm_s:.0f}x")


def bench_throughput(checkpoint: Path, work: Path, batch_size: int = 32) -> None:
    import torch

    from ipo_cli.data import folders as dataset
    from ipo_cli.clip import model as vision
    from ipo_cli.clip.spec import parse_clip

    images = work / "images"
    paths = dataset.load_dataset(images, images / "classes.txt").paths
    clip = vision.load_clip(parse_clip("ViT-B-32", checkpoint))
    tensors = [clip.preprocess(dataset.load_image(p)) for p in paths]

    def bare() -> None:
        with torch.inference_mode():
            for start in range(0, len(tensors), batch_size):
                clip.model.encode_image(torch.stack(tensors[start:start + batch_size]))

    def ipo() -> None:
        clip.embed_images(paths, store=None, batch_size=batch_size)

    ipo()  # warm-up of both paths
    bare_s = min(_timed(bare) for _ in range(2))
    ipo_s = min(_timed(ipo) for _ in range(2))
    n = len(paths)
    print(f"image embedding, {n} images, batch {batch_size}, ViT-B-32 on {clip.device}:")
    print(f"  bare forward {n / bare_s:.1f} images/s, ipo cold path {n / ipo_s:.1f} images/s "
          f"({bare_s / ipo_s * 100:.0f}% of the forward pass; goal >= 90%)")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    import open_clip
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        checkpoint = work / "vit-b-32-random.pt"
        torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), checkpoint)
        print(f"torch {torch.__version__}, open_clip {open_clip.__version__}, {torch.get_num_threads()} threads")
        bench_text(checkpoint)
        bench_eval(checkpoint, args.images, work)
        bench_throughput(checkpoint, work)


if __name__ == "__main__":
    main()
