"""Export Fashion-MNIST images (Zalando, MIT licence) as PNG class folders.

Reads the IDX files of Debian's `dataset-fashion-mnist` package. Used to make the
example set in examples/fashion, and by the tests and benchmarks for real photos:

    python examples/fashion_mnist.py OUT_DIR --split test --per-class 50
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def read_idx(split: str):
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(SOURCE / f"{prefix}-images-idx3-ubyte.gz") as fh:
        _, n, rows, cols = struct.unpack(">IIII", fh.read(16))
        pixels = fh.read(n * rows * cols)
    with gzip.open(SOURCE / f"{prefix}-labels-idx1-ubyte.gz") as fh:
        fh.read(8)
        labels = fh.read(n)
    return pixels, labels, rows, cols


def export(out_dir: Path, split: str = "test", per_class: int = 10, skip: int = 0) -> Path:
    """Write `per_class` images per class (after skipping `skip` of each) to out_dir/<class>/."""
    from PIL import Image

    pixels, labels, rows, cols = read_idx(split)
    size = rows * cols
    counts = [0] * len(CLASSES)
    out_dir = Path(out_dir)
    for i, label in enumerate(labels):
        if all(c >= per_class + skip for c in counts):
            break
        counts[label] += 1
        if counts[label] <= skip or counts[label] > per_class + skip:
            continue
        folder = out_dir / CLASSES[label].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.frombytes("L", (cols, rows), pixels[i * size:(i + 1) * size])
        img.save(folder / f"{split}_{i:05d}.png")
    (out_dir / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return out_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--split", choices=["train", "test"], default="test")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--skip", type=int, default=0)
    args = parser.parse_args()
    print(export(args.out_dir, args.split, args.per_class, args.skip))
