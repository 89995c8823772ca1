"""The cost of --feedback confusions per step, beside one CLIP score of a template.

160 real Fashion-MNIST training images (16 per class, 10 classes), the tiny open_clip of
tests/conftest.py with random weights, CPU, text embeddings warm (as in the loop, where the
best prompt was scored before its feedback is asked for): the whole feedback section
(predictions from the cached embeddings, the confusion pairs, the text) against one
`ClipScorer.score`, each averaged over 50 calls after 3 warm-up calls, side by side.

    PYTHONPATH=$PWD python benchmarks/bench_feedback.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples")]


def main() -> None:
    import open_clip
    import torch
    from conftest import TINY_CONFIG
    from fashion_mnist import export

    from ipo_cli.clip import evaluate
    from ipo_cli.clip import model as vision
    from ipo_cli.clip.spec import parse_clip
    from ipo_cli.data.folders import load_folder, read_classes
    from ipo_cli.optimize import strategies
    from ipo_cli.optimize.loop import ClipScorer

    folder = Path(tempfile.mkdtemp())
    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(1)
    torch.save(open_clip.create_model(config.stem, pretrained=None).state_dict(), folder / "tiny.pt")
    clip = vision.load_clip(parse_clip(str(config), folder / "tiny.pt"))
    root = export(folder / "train", "train", per_class=16)
    data = evaluate.embed_dataset(clip, load_folder(root, read_classes(root / "classes.txt")))
    scorer = ClipScorer(clip, data)
    template = "a photo of a <CLASS>."
    view = strategies.StepView(template, list(scorer.classnames), scorer.predictions,
                               [f"description {i}" for i in range(len(data.labels))])
    for _ in range(3):
        scorer.score(template)
        strategies.confusion_feedback(view)
    n = 50
    start = time.perf_counter()
    for _ in range(n):
        strategies.confusion_feedback(view)
    feedback = (time.perf_counter() - start) / n * 1000
    start = time.perf_counter()
    for _ in range(n):
        scorer.score(template)
    score = (time.perf_counter() - start) / n * 1000
    print(f"{len(data.labels)} images, {len(scorer.classnames)} classes, tiny CLIP (warm text cache): "
          f"feedback section {feedback:.2f} ms, one score {score:.2f} ms")


if __name__ == "__main__":
    main()
