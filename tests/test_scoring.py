import numpy as np
import pytest
import torch

from ipo_cli.clip import scoring
from ipo_cli.errors import IpoError
from ipo_cli.clip.scoring import Prompt


class TableEncoder:
    """Text embeddings looked up from a table: exact, for checking the arithmetic."""

    logit_scale = 10.0

    def __init__(self, table):
        self.table = table
        self.calls = []

    def encode_texts(self, texts):
        self.calls.append(list(texts))
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


@pytest.mark.parametrize("template", ["a photo of a {}.", "a {c} texture.", "Identify the <CLASS>."])
def test_fill_accepts_every_placeholder(template):
    assert "zebra" in scoring.fill(scoring.check_template(template), "zebra")
    assert "{" not in scoring.fill(template, "zebra") and "<CLASS>" not in scoring.fill(template, "zebra")


@pytest.mark.parametrize("template", ["a photo.", "a {} and a {}.", "<CLASS> or {c}"])
def test_templates_need_exactly_one_placeholder(template):
    with pytest.raises(IpoError, match="placeholder"):
        scoring.check_template(template)


def test_scores_match_a_hand_computation():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(3, 8)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    images = text[[0, 0, 1, 2, 2, 2]] + 0.3 * rng.normal(size=(6, 8)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    labels = np.array([0, 1, 1, 2, 2, 0])
    s = scoring.score_embeddings(images, labels, text, 10.0)
    logits = torch.tensor(10.0 * images @ text.T, dtype=torch.float64)
    pred = logits.argmax(1).numpy()
    assert s.acc1 == pytest.approx((pred == labels).mean() * 100)
    assert s.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).item(), rel=1e-6)
    per_class = [(pred[labels == c] == c).mean() * 100 for c in range(3)]
    assert s.per_class == pytest.approx(per_class)
    assert s.mean_per_class_recall == pytest.approx(np.mean(per_class))
    assert s.acc5 == 100.0  # 3 classes: the true class is always in the top 5


def test_top5_counts_ranks():
    text = np.eye(7, dtype=np.float32)
    image = np.array([[7, 6, 5, 4, 3, 2, 1]], dtype=np.float32)
    for label, in_top5 in [(0, True), (4, True), (5, False), (6, False)]:
        s = scoring.score_embeddings(image, [label], text, 1.0)
        assert s.acc5 == (100.0 if in_top5 else 0.0)
        assert s.acc1 == (100.0 if label == 0 else 0.0)


def test_ensemble_averages_normalised_text_embeddings():
    e = {"A cat": np.array([1, 0, 0.0]), "B cat": np.array([0, 2, 0.0]),
         "A dog": np.array([0, 0, 1.0]), "B dog": np.array([0, 0, 3.0])}
    enc = TableEncoder({k: v / np.linalg.norm(v) for k, v in e.items()})
    emb = scoring.class_embeddings(enc, Prompt("ens", ["A {}", "B {}"]), ["cat", "dog"])
    assert emb[0] == pytest.approx(np.array([1, 1, 0]) / np.sqrt(2))
    assert emb[1] == pytest.approx([0, 0, 1])
    assert enc.calls == [["A cat", "B cat", "A dog", "B dog"]]


def test_per_class_prompts_match_names_loosely_and_require_every_class():
    enc = TableEncoder({"a furry cat": np.array([1.0, 0]), "a loyal dog": np.array([0, 1.0])})
    cupl = Prompt("cupl", per_class={"Cat": ["a furry cat"], "dog": ["a loyal dog"]})
    assert scoring.class_embeddings(enc, cupl, ["cat", "dog"]).tolist() == [[1, 0], [0, 1]]
    with pytest.raises(IpoError, match="no sentences for: bird"):
        scoring.class_embeddings(enc, cupl, ["cat", "dog", "bird"])


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(3)
    b = rng.random(400) < 0.5
    a = b.copy()
    a[:40] = True  # a fixes some of b's errors
    delta, low, high = scoring.paired_bootstrap(a, b, seed=0)
    assert delta == pytest.approx((a.mean() - b.mean()) * 100)
    assert low <= delta <= high and low > 0
    same = scoring.paired_bootstrap(b, b)
    assert same == (0.0, 0.0, 0.0)


def test_harmonic_mean():
    assert scoring.harmonic_mean(80, 60) == pytest.approx(2 * 80 * 60 / 140)
    assert scoring.harmonic_mean(0, 0) == 0


def test_an_exact_tie_is_a_hit_only_for_the_class_argmax_picks():
    import numpy as np

    from ipo_cli.clip.scoring import score_embeddings

    text = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # classes 0 and 1 have the same text
    images = np.array([[1.0, 0.0], [1.0, 0.0]])
    score = score_embeddings(images, [0, 1], text, 1.0)
    assert list(score.correct) == [True, False]  # argmax picks class 0 for both
    assert score.acc1 == 50.0 and score.acc5 == 100.0
