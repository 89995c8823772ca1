from pathlib import Path

import pytest

from ipo_cli.optimize import meta_prompt as mp
from ipo_cli.errors import IpoError

HISTORY = [mp.HistoryItem("a photo of a <CLASS>.", 40.0, 1.8), mp.HistoryItem("a blurry photo of a <CLASS>.", 30.0, 2.0),
           mp.HistoryItem("Identify the <CLASS> in this product photo.", 55.5, 1.234)]


def words(messages):
    return sum(len(m["content"].split()) for m in messages)


def test_meta_prompt_matches_the_written_out_text():
    expected = (Path(__file__).parent / "data" / "meta_prompt_expected.txt").read_text()
    meta = mp.build(HISTORY, ["a grey object with two straps", "a pair of shoes with laces"], words, 10_000,
                    keep=20, task_hint="product photos")
    assert meta.text == expected
    # the unchanging part (task, descriptions) is the system message, first
    assert meta.messages[0]["role"] == "system" and "Image_2:" in meta.messages[0]["content"]
    assert "Prompt: <INS>" not in meta.messages[0]["content"]


def test_history_keeps_the_best_and_lists_them_best_last():
    many = [mp.HistoryItem(f"prompt {i} <CLASS>", float(i), 1.0) for i in range(30)]
    many.append(mp.HistoryItem("tie <CLASS>", 29.0, 0.5))  # same accuracy, lower loss: better
    shown = mp.history_order(many, 20)
    assert len(shown) == 20
    assert [h.template for h in shown[-2:]] == ["prompt 29 <CLASS>", "tie <CLASS>"]
    assert shown[0].accuracy == 11.0


def test_descriptions_are_left_out_to_fit_and_reported():
    descriptions = [f"image number {i} shows a thing with many words in it" for i in range(50)]
    full = words(mp.render(None, descriptions, HISTORY))
    bare = words(mp.render(None, [], HISTORY))
    budget = bare + (full - bare) // 3
    meta = mp.build(HISTORY, descriptions, words, budget, seed=3)
    assert meta.tokens <= budget and 0 < meta.descriptions_used < 50
    assert meta.descriptions_used + meta.descriptions_left_out == 50
    again = mp.build(HISTORY + [mp.HistoryItem("new <CLASS>", 1.0, 3.0)], descriptions, words, budget, seed=3)
    assert again.messages[0] == meta.messages[0] or again.descriptions_used != meta.descriptions_used


def test_meta_prompt_that_cannot_fit_says_the_sizes():
    bare = words(mp.render(None, [], HISTORY))
    with pytest.raises(IpoError, match=f"needs {bare} tokens even without image descriptions, but only 50 fit"):
        mp.build(HISTORY, ["x"], words, 50)


@pytest.fixture
def validator():
    v = mp.Validator(["ankle boot", "bag", "t-shirt"], lambda text: len(text.split()) + 2)
    v.remember("a photo of a <CLASS>.")
    return v


@pytest.mark.parametrize("raw, reason", [
    ("<INS>A studio shot of a <CLASS>.</INS>", None),
    ("  <INS>  Take a high-quality photo of a <CLASS>.  </INS> trailing", None),
    ("A photo of a <CLASS>.", "no <INS>"),
    ("<INS>a <CLASS></INS><INS>b <CLASS></INS>", "more than one"),
    ("<INS>a photo of something</INS>", "0 <CLASS> placeholders"),
    ("<INS><CLASS> and <CLASS></INS>", "2 <CLASS> placeholders"),
    ("<INS>A PHOTO  of a <class>.</INS>", "0 <CLASS>"),
    ("<INS>A  Photo of a <CLASS>. </INS>", "duplicate"),
    ("<INS>a <CLASS>, like a bag</INS>", "names the class 'bag'"),
    ("<INS>a <CLASS> or ankle boots</INS>", "names the class 'ankle boots'"),
    ("<INS>" + "word " * 80 + "<CLASS></INS>", "CLIP tokens"),
    ("<INS>" + "x" * 501 + "<CLASS></INS>", "characters"),
    ("<INS></INS>", "empty"),
])
def test_candidate_rules(validator, raw, reason):
    checked = validator.check(raw)
    if reason is None:
        assert checked.reason is None and "<CLASS>" in checked.template and "<INS>" not in checked.template
    else:
        assert reason in checked.reason


def test_grammar_forces_one_answer_with_one_placeholder(smollm):
    import re

    from ipo_cli.llm.base import SamplingSettings
    from ipo_cli.llm.llama import LlamaCppLLM

    llm = LlamaCppLLM(smollm, n_ctx=2048)
    meta = mp.build(HISTORY, [], llm.count_tokens, 1900)
    for seed in range(4):
        out = llm.generate(meta.messages, seed, SamplingSettings(max_tokens=mp.GRAMMAR_MAX_TOKENS), grammar=mp.INS_GRAMMAR)
        assert re.fullmatch(r"<INS>[^<>\n]*<CLASS>[^<>\n]*</INS>", out.text), out.text


def test_braces_are_rejected_by_validator_and_grammar():
    from ipo_cli.optimize import meta_prompt as mp

    validator = mp.Validator(["cat", "dog"], lambda t: len(t.split()) + 2)
    for raw in ("<INS>a photo of a {} <CLASS></INS>", "<INS>a {c} of a <CLASS></INS>"):
        assert validator.check(raw).reason.startswith("contains { or }")
    assert "[^<>{}\\n]" in mp.INS_GRAMMAR
