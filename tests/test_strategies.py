"""The loop's strategies (optimize/strategies.py): confusion feedback, the contrastive
history, the Pareto pool, their place in the saved settings, and `ipo bench --strategies`.

The planted signal: each class has a word only a prompt written for it contains; a scorer
classifies a class's images correctly only when its word is in the template, and a
scripted LLM writes a class's word only when the feedback names that class. So the loop
climbs with --feedback confusions, and cannot without it."""

import json
import random
import re

import numpy as np
import pytest
from conftest import run_ipo
from hypothesis import given, settings
from hypothesis import strategies as st
from scripted import ScriptedLLM, scripted

from ipo_cli.errors import IpoError
from ipo_cli.optimize import meta_prompt as mp
from ipo_cli.optimize import strategies
from ipo_cli.optimize.loop import LoopSettings, Optimizer, ScoreResult
from ipo_cli.optimize.run_folder import RunFolder

CLASSES = ["cat", "dog", "bird", "fish"]
WORDS = {"cat": "whiskered", "dog": "barking", "bird": "feathered", "fish": "finned"}
FILLER = ["photo", "image", "picture", "clear", "small", "bright", "close", "shot", "nice", "plain"]


class KeywordScorer:
    """Two training images per class; a class's images are right only when the template holds
    its word, else they are taken for the next class. Loss falls with every class got right."""

    classnames = CLASSES
    labels = [0, 0, 1, 1, 2, 2, 3, 3]

    def predictions(self, template):
        words = set(re.findall(r"[a-z]+", template.lower()))
        return list(self.labels), [c if WORDS[CLASSES[c]] in words else (c + 1) % 4 for c in self.labels]

    def score(self, template, split="train"):
        labels, predicted = self.predictions(template)
        per_class = [100.0 * sum(p == c for t, p in zip(labels, predicted) if t == c) / 2 for c in range(4)]
        acc = sum(per_class) / 4 - (1.0 if split == "val" else 0.0)
        return ScoreResult(acc, 2.0 - acc / 100 + 0.001 * len(template), per_class)

    def token_count(self, text):
        return len(text.split()) + 2


def feedback_reader(messages, seed):
    """Keeps the class words of the best prompt shown (the last), adds the word of one class
    the feedback names (none when there is no feedback), and a filler word."""
    rng = random.Random(seed)
    user = messages[-1]["content"]
    best = re.findall(r"Prompt: <INS>(.*?)</INS>", user)[-1]
    kept = [w for w in WORDS.values() if w in best.split()]
    named = re.findall(r"^- (\w+) images taken for", user, flags=re.MULTILINE)
    if named:
        kept.append(WORDS[rng.choice(named)])
    words = list(dict.fromkeys(kept)) + [rng.choice(FILLER), rng.choice(FILLER)]
    return f"<INS>a {' '.join(words)} <CLASS>.</INS>"


def run_loop(path, llm=None, scorer=None, **kw):
    folder = RunFolder.create(path / "run", {"request": {}})
    options = {"steps": 6, "candidates": 3, "history": 6, "patience": 50, **kw}
    opt = Optimizer(llm or ScriptedLLM(reply=feedback_reader), scorer or KeywordScorer(), folder, LoopSettings(**options),
                    descriptions=[f"a thing number {i}" for i in range(8)],
                    image_descriptions=[f"a thing number {i}" for i in range(8)])
    return opt.run(), folder


def test_feedback_lets_the_loop_climb_where_plain_ipo_cannot(tmp_path):
    with_feedback, folder = run_loop(tmp_path / "a", feedback="confusions")
    without, plain = run_loop(tmp_path / "b")
    assert with_feedback.best["accuracy"] == 100.0 and without.best["accuracy"] == 0.0
    first = (folder.path / "meta_prompts" / "step_001.txt").read_text()
    assert '- cat images taken for dog: 2 of 2' in first and "- a cat image taken for dog: a thing number 0" in first
    assert strategies.FEEDBACK_HEADER not in (plain.path / "meta_prompts" / "step_001.txt").read_text()


def test_confusion_section_is_exact_on_a_hand_built_case():
    labels = [0, 0, 0, 0, 1, 1, 2, 2]
    predicted = [1, 1, 1, 0, 1, 0, 2, 1]
    described = ["striped, lying down", None, "x" * 400, "curled up", None, "on a lawn", None, "in snow"]
    view = strategies.StepView("a photo of a <CLASS>.", ["cat", "dog", "fox"], lambda t: (labels, predicted), described)
    assert strategies.confusion_feedback(view) == (
        'Where the best prompt so far goes wrong on the training images, "a photo of a <CLASS>.":\n'
        "- cat images taken for dog: 3 of 4\n"
        "- dog images taken for cat: 1 of 2\n"
        "- fox images taken for dog: 1 of 2\n"
        "Some of these images:\n"
        "- a cat image taken for dog: striped, lying down\n"
        f"- a cat image taken for dog: {'x' * 297}...\n"
        "- a dog image taken for cat: on a lawn\n"
        "Write a prompt that helps CLIP tell these classes apart.")
    right = strategies.StepView("t <CLASS>", ["cat", "dog"], lambda t: ([0, 1], [0, 1]))
    assert strategies.confusion_feedback(right) == \
        'Where the best prompt so far goes wrong on the training images, "t <CLASS>": it classifies every ' \
        "training image correctly."
    assert strategies.no_feedback(view) is None


def test_confusion_section_from_real_clip_scores(tiny_clip, fashion_train):
    """Random-weight open_clip on real images: the predictions agree with the scorer's own
    per-class accuracy, and the section's pairs with a confusion matrix made by hand."""
    from ipo_cli.clip import evaluate
    from ipo_cli.data.folders import load_folder, read_classes
    from ipo_cli.optimize.loop import ClipScorer

    data = evaluate.embed_dataset(tiny_clip, load_folder(fashion_train, read_classes(fashion_train / "classes.txt")))
    scorer = ClipScorer(tiny_clip, data)
    template = "a photo of a <CLASS>."
    labels, predicted = scorer.predictions(template)
    score = scorer.score(template)
    names = list(scorer.classnames)
    for c in range(len(names)):
        mine = [p == c for lab, p in zip(labels, predicted) if lab == c]
        assert 100.0 * sum(mine) / len(mine) == pytest.approx(score.per_class[c])
    text = tiny_clip.encode_texts([template.replace("<CLASS>", n) for n in names])
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    by_hand = np.zeros((len(names), len(names)), int)
    for lab, p in zip(data.labels, np.argmax(data.embeddings @ text.T, axis=1)):
        by_hand[lab, p] += 1
    np.fill_diagonal(by_hand, 0)
    assert by_hand.sum() > 0  # random weights: plenty of mistakes
    section = strategies.confusion_feedback(strategies.StepView(template, names, scorer.predictions))
    shown = re.findall(r"^- (.+) images taken for (.+): (\d+) of (\d+)$", section, flags=re.MULTILINE)
    assert len(shown) == min(strategies.FEEDBACK_PAIRS, int((by_hand > 0).sum()))
    for true, guess, count, total in shown:
        t, p = names.index(true), names.index(guess)
        assert by_hand[t, p] == int(count) and int(total) == int((data.labels == t).sum())
    assert int(shown[0][2]) == by_hand.max()


def test_meta_prompt_stays_within_the_context_budget_with_feedback(tmp_path):
    descriptions = [f"image {i}: " + "a long description of many words " * 6 for i in range(8)]

    class Scorer(KeywordScorer):
        pass

    llm = ScriptedLLM(reply=feedback_reader, n_ctx=900)
    folder = RunFolder.create(tmp_path / "run", {"request": {}})
    settings_ = LoopSettings(steps=4, candidates=2, history=6, patience=50, max_tokens=60, feedback="confusions")
    Optimizer(llm, Scorer(), folder, settings_, descriptions=descriptions, image_descriptions=descriptions).run()
    steps = [r for r in folder.records() if r["type"] == "step" and r["step"] > 0]
    budget = 900 - 60 - 16
    assert steps and all(0 < s["meta_prompt_tokens"] <= budget for s in steps)
    assert any(s["descriptions_left_out"] > 0 for s in steps)  # the descriptions gave way, not the feedback
    assert all(strategies.FEEDBACK_HEADER in m["messages"][-1]["content"] for m in llm.history)
    assert all(llm.count_tokens(m["messages"]) <= budget for m in llm.history)
    with pytest.raises(IpoError, match="feedback section is part of it"):
        mp.build([mp.HistoryItem("a <CLASS>", 1.0, 1.0)], [], llm.count_tokens, 40,
                 sections=["x " * 400])


def test_contrastive_history_shows_the_best_and_the_worst_marked():
    items = [mp.HistoryItem(f"prompt {i} <CLASS>", float(i), 1.0) for i in range(10)]
    shown = strategies.contrastive_history(items, 5)
    assert [(h.accuracy, h.mark) for h in shown] == [(0.0, "worst"), (1.0, "worst"), (7.0, "best"), (8.0, "best"),
                                                     (9.0, "best")]
    assert len(strategies.contrastive_history(items[:2], 5)) == 2
    text = mp.render(None, [], shown)[1]["content"]
    assert mp.MARKS_NOTE in text and "Accuracy: 0.00  [worst]" in text and text.rstrip().endswith("</INS>.")
    assert mp.MARKS_NOTE not in mp.render(None, [], mp.history_order(items, 5))[1]["content"]


def rec(i, per_class, val=None):
    r = {"template": f"p{i} <CLASS>", "step": i, "index": 0, "per_class": per_class,
         "accuracy": sum(per_class) / len(per_class), "loss": 1.0}
    if val is not None:
        r.update(val_accuracy=val, val_loss=1.0)
    return r


def test_pareto_pool_keeps_class_specialists_and_the_best_on_average():
    a, b, c, d, e = rec(1, [100, 0, 0]), rec(2, [0, 100, 0]), rec(3, [50, 50, 50]), rec(4, [40, 40, 40]), rec(5, [0, 100, 0])
    assert strategies.pareto_frontier([a, b, c, d, e]) == [a, b, c, e]  # d: c is as good everywhere, better somewhere
    assert strategies.pareto_frontier([]) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 50.0, 100.0]), min_size=3, max_size=3), min_size=1, max_size=12))
def test_pareto_pool_equals_the_definition(vectors):
    records = [rec(i, v) for i, v in enumerate(vectors)]

    def dominated(r):
        return any(all(x >= y for x, y in zip(o["per_class"], r["per_class"])) and o["per_class"] != r["per_class"]
                   for o in records)

    frontier = strategies.pareto_frontier(records)
    assert frontier == [r for r in records if not dominated(r)]
    assert max(records, key=lambda r: r["accuracy"])["accuracy"] == max(r["accuracy"] for r in frontier)


def test_pareto_pool_decides_the_history_and_the_final_choice(tmp_path):
    result, folder = run_loop(tmp_path, feedback="confusions", pool="pareto", select="val")
    frontier = strategies.pareto_frontier([r for r in folder.records() if r["type"] == "candidate" and r["valid"]])
    assert result.ranking == sorted(frontier, key=lambda r: (-r["val_accuracy"], r["val_loss"], r["step"], r["index"]))
    before = strategies.pareto_frontier([r for r in folder.records()
                                         if r["type"] == "candidate" and r["valid"] and r["step"] < 6])
    shown = re.findall(r"Prompt: <INS>(.*?)</INS>", (folder.path / "meta_prompts" / "step_006.txt").read_text())
    assert set(shown) == {r["template"] for r in before}  # all of them: fewer than --history
    assert "a photo of a <CLASS>." not in shown  # the baseline (wrong on every class) is dominated


CASES = [{"feedback": "confusions"}, {"history_order": "contrastive"}, {"pool": "pareto"},
         {"feedback": "confusions", "history_order": "contrastive", "pool": "pareto", "select": "val"}]


@pytest.mark.parametrize("options", CASES, ids=lambda o: "+".join(f"{k}={v}" for k, v in o.items()))
def test_resume_is_exact_with_each_strategy(tmp_path, options):
    def history(folder):
        return [{k: v for k, v in r.items() if k not in ("seconds", "cached", "usage")}
                for r in folder.records()]

    whole, whole_folder = run_loop(tmp_path / "a", steps=5, **options)
    cut_at, _ = run_loop(tmp_path / "b", steps=5, **options)
    folder = RunFolder(tmp_path / "b" / "run")
    lines = folder.history_path.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"step": 3' in line and '"index": 1' in line)
    folder.history_path.write_text("".join(lines[:cut]))
    for name in ("step_004.txt", "step_005.txt"):
        (folder.path / "meta_prompts" / name).unlink()
    resumed = Optimizer(ScriptedLLM(reply=feedback_reader), KeywordScorer(), folder,
                        LoopSettings(**{"steps": 5, "candidates": 3, "history": 6, "patience": 50, **options}),
                        descriptions=[f"a thing number {i}" for i in range(8)],
                        image_descriptions=[f"a thing number {i}" for i in range(8)]).run()
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in history(folder)] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in history(whole_folder)]
    assert resumed.best["template"] == whole.best["template"] == cut_at.best["template"]
    for step in range(1, 6):
        name = f"meta_prompts/step_{step:03d}.txt"
        assert (folder.path / name).read_text() == (whole_folder.path / name).read_text()


def test_unknown_strategy_names_are_refused():
    with pytest.raises(IpoError, match="--feedback must be one of none, confusions, not 'loud'"):
        strategies.check(LoopSettings(feedback="loud"))
    with pytest.raises(IpoError, match="unknown strategy 'magic'"):
        strategies.preset("feedback+magic")
    assert strategies.preset("feedback+pareto") == {"feedback": "confusions", "pool": "pareto"}
    assert strategies.preset("ipo") == {}


def test_feedback_section_is_read_back_from_a_saved_meta_prompt(tmp_path):
    _, folder = run_loop(tmp_path, feedback="confusions", steps=2)
    text = (folder.path / "meta_prompts" / "step_002.txt").read_text()
    shown = strategies.feedback_shown(text)
    assert shown and shown.startswith(strategies.FEEDBACK_HEADER) and shown.endswith(strategies.FEEDBACK_ADVICE)
    assert "Write a new prompt" not in shown
    assert strategies.feedback_shown("### user\nno feedback here") is None


def optimize(data, tiny_config, tiny_checkpoint, out, *extra):
    return run_ipo("optimize", data, "--classes", data / "classes.txt", "--shots", "1", "--steps", "2",
                   "--candidates", "2", "--clip", tiny_config, "--clip-weights", tiny_checkpoint, "--out", out,
                   "--lmm", "none", "--llm", "scripted:x", "--json", *extra)


def test_a_run_saves_its_strategy_and_resume_refuses_another(tmp_path, fashion_train, tiny_config, tiny_checkpoint):
    out = tmp_path / "run"
    llm = ScriptedLLM(reply=lambda messages, seed: f"<INS>A photo number {seed % 97} of a <CLASS>.</INS>")
    with scripted(llm):
        first = optimize(fashion_train, tiny_config, tiny_checkpoint, out, "--feedback", "confusions", "--pool", "pareto")
        assert first.returncode == 0, first.stderr
        config = json.loads((out / "config.json").read_text())
        assert config["request"]["feedback"] == "confusions" and config["request"]["pool"] == "pareto"
        assert json.loads(first.stdout)["plan"]["feedback_tokens"] > 0
        assert strategies.FEEDBACK_HEADER in llm.history[0]["messages"][-1]["content"]
        document = json.loads((out / "prompts.json").read_text())  # the frontier, which ipo eval also ensembles
        scored = [r for r in map(json.loads, (out / "history.jsonl").read_text().splitlines())
                  if r["type"] == "candidate" and r["valid"]]
        assert document["meta"]["pool"] == "pareto"
        assert len(scored) <= 5  # so the frontier fits prompts.json's top 10 whole
        assert {p["template"] for p in document["prompts"]} == {r["template"] for r in strategies.pareto_frontier(scored)}
        other = run_ipo("optimize", "--resume", out, "--feedback", "none")
        assert other.returncode == 2
        assert "different settings (feedback: 'confusions' in the run, 'none' now)" in other.stderr
        same = run_ipo("optimize", "--resume", out, "--steps", "2", "--json")
        assert same.returncode == 0, same.stderr
        bad = optimize(fashion_train, tiny_config, tiny_checkpoint, tmp_path / "r2", "--select", "pareto")
        assert bad.returncode == 2 and "--pool pareto" in bad.stderr and "Traceback" not in bad.stderr
        bad = optimize(fashion_train, tiny_config, tiny_checkpoint, tmp_path / "r3", "--history-order", "random")
        assert bad.returncode == 2 and "--history-order must be one of best, contrastive" in bad.stderr


def test_paired_bootstrap_over_cells_matches_one_cell_and_averages():
    from ipo_cli.clip.scoring import paired_bootstrap, paired_bootstrap_cells

    rng = np.random.default_rng(3)
    cell = [(rng.random(40) < 0.7, rng.random(40) < 0.6), (rng.random(30) < 0.5, rng.random(30) < 0.55)]
    assert paired_bootstrap_cells([cell], 500, 7) == paired_bootstrap(None, None, 500, 7, groups=cell)
    same = [(g[1], g[1]) for g in cell]
    delta, low, high = paired_bootstrap_cells([cell, same], 500, 7)
    assert delta == pytest.approx(paired_bootstrap(None, None, 500, 7, groups=cell)[0] / 2)
    assert low <= delta <= high


def test_bench_runs_each_strategy_on_the_same_cells_and_compares_with_ipo(tmp_path, tiny_config, tiny_checkpoint):
    from test_presets import coop_split_dataset

    from ipo_cli.clip.scoring import harmonic_mean

    data = coop_split_dataset(tmp_path / "data", "DTD", ["banded", "blotchy", "braided", "bubbly"])
    out = tmp_path / "bench"

    def reply(messages, seed):  # another prompt when the feedback is shown: the strategies differ
        word = "detailed " if strategies.FEEDBACK_HEADER in messages[-1]["content"] else ""
        return f"<INS>a {word}photo number {seed % 97} of a <CLASS>.</INS>"

    llm = ScriptedLLM(reply=reply)
    args = ["bench", "--data-root", data, "--datasets", "DTD", "--seeds", "1,2", "--steps", "2", "--candidates", "2",
            "--lmm", "none", "--llm", "scripted:x", "--clip", tiny_config, "--clip-weights", tiny_checkpoint,
            "--out", out, "--strategies", "feedback,pareto", "--json"]
    with scripted(llm):
        result = run_ipo(*args)
        assert result.returncode == 0, result.stderr
        table = json.loads((out / "table.json").read_text())
        assert list(table["strategies"]) == ["ipo", "feedback", "pareto"]  # plain IPO is always the reference
        for seed in (1, 2):
            folders = {name: out / "DTD" / (f"seed{seed}" if name == "ipo" else f"seed{seed}-{name}")
                       for name in ("ipo", "feedback", "pareto")}
            configs = {n: json.loads((f / "config.json").read_text()) for n, f in folders.items()}
            assert configs["feedback"]["request"]["feedback"] == "confusions"
            assert configs["pareto"]["request"]["pool"] == "pareto" and configs["ipo"]["request"]["pool"] == "best"
            assert len({json.dumps(c["split"]) for c in configs.values()}) == 1  # the same sample
            summaries = {n: json.loads((f / "summary.json").read_text()) for n, f in folders.items()}
            compared = json.loads((out / "DTD" / f"seed{seed}-compare.json").read_text())
            for name, s in summaries.items():
                assert compared["templates"][name] == s["best"]["template"]
                for part, key in (("base", "base"), ("novel", "novel")):
                    hits = compared["correct"][name][part]
                    assert 100 * hits.count("1") / len(hits) == pytest.approx(s["base_novel"]["best"][key])
        row = table["strategies"]["feedback"]["datasets"]["DTD"]
        deltas = []
        for seed in (1, 2):
            h = {n: json.loads((out / "DTD" / (f"seed{seed}" if n == "ipo" else f"seed{seed}-{n}") / "summary.json")
                               .read_text())["base_novel"]["best"] for n in ("ipo", "feedback")}
            deltas.append(harmonic_mean(h["feedback"]["base"], h["feedback"]["novel"])
                          - harmonic_mean(h["ipo"]["base"], h["ipo"]["novel"]))
        vs = row["vs_ipo"]
        assert vs["cells"] == 2 and vs["H_delta"] == pytest.approx(sum(deltas) / 2)
        assert vs["low"] <= vs["H_delta"] <= vs["high"]
        assert table["strategies"]["feedback"]["average"]["vs_ipo"]["H_delta"] == pytest.approx(vs["H_delta"])
        markdown = (out / "table.md").read_text()
        assert "## Strategies against plain IPO" in markdown and "| feedback | DTD | 2 |" in markdown
        # the run's report shows the feedback the LLM saw, step by step
        report = json.loads((out / "DTD" / "seed1-feedback" / "report" / "report.json").read_text())
        assert [f["step"] for f in report["feedback"]] == [1, 2]
        assert "images taken for" in report["feedback"][0]["text"] or "correctly" in report["feedback"][0]["text"]
        assert "Feedback the LLM saw" in (out / "DTD" / "seed1-feedback" / "report" / "report.html").read_text()
        assert json.loads((out / "DTD" / "seed1" / "report" / "report.json").read_text())["feedback"] == []
        before = (out / "DTD" / "seed1-compare.json").stat().st_mtime
        calls = len(llm.history)
        again = run_ipo(*args)
        assert again.returncode == 0, again.stderr
        assert len(llm.history) == calls and (out / "DTD" / "seed1-compare.json").stat().st_mtime == before
        unknown = run_ipo(*args[:-3], "--strategies", "ipo,magic")
        assert unknown.returncode == 2 and "unknown strategy 'magic'" in unknown.stderr
