"""The cached-values gate (ipo_cli/gates/cached.py): what comes back from the cache is
used only when it is what ipo wrote."""

from __future__ import annotations

import numpy as np
import pytest

from ipo_cli.gates import cached


@pytest.mark.parametrize("value", [
    np.full(4, np.nan, np.float16), np.array([1, np.inf, 0, 0], np.float32), np.zeros(3, np.float16),
    np.zeros((2, 2), np.float16), np.zeros(4, np.int64), np.array(["a"] * 4), [0.0] * 4, None,
])
def test_damaged_embeddings_are_misses(value):
    assert cached.vector(value, 4) is None


def test_a_good_embedding_comes_back_as_float32():
    out = cached.vector(np.ones(4, np.float16), 4)
    assert out.dtype == np.float32 and out.tolist() == [1.0] * 4


@pytest.mark.parametrize("entry", [
    {"embedding": [0.1], "tokens": 3}, {"embedding": [0.1, float("nan")], "tokens": 3},
    {"embedding": [0.1, 0.2], "tokens": -1}, {"embedding": "xy", "tokens": 2}, [0.1, 0.2], {"tokens": 2},
    {"embedding": [0.1, True], "tokens": 2},
])
def test_damaged_text_entries_are_misses(entry):
    assert cached.text_entry(entry, 2) is None


def test_a_model_card_needs_every_field_of_its_type():
    card = {"logit_scale": 100.0, "context_length": 77, "embed_dim": 64, "precision": "fp32",
            "preprocess_id": "abc", "open_clip_version": "2.0"}
    assert cached.model_card(card) == card
    for name in card:
        assert cached.model_card({k: v for k, v in card.items() if k != name}) is None
    assert cached.model_card({**card, "logit_scale": float("nan")}) is None
    assert cached.model_card({**card, "embed_dim": "64"}) is None
