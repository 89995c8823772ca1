"""The loop's logic with a scorer that has a planted signal and an LLM that recombines
words from the history it is shown."""

import random
import re
from pathlib import Path

import pytest

from ipo_cli.errors import IpoError
from ipo_cli.llm.base import Generation, Usage
from ipo_cli.optimize.loop import START_TEMPLATE, LoopSettings, Optimizer, ScoreResult, candidate_seed
from ipo_cli.optimize.run_folder import RunFolder

VOCAB = ["photo", "image", "picture", "of", "a", "the", "small", "large", "vivid", "clear", "shot"]


class PlantedScorer:
    """Each 'vivid' adds 10 points of accuracy (up to 95) and lowers the loss."""

    classnames = ["cat", "dog", "bird"]

    def score(self, template, split="train"):
        n = len(re.findall(r"\bvivid\b", template))
        acc = min(95.0, 30.0 + 10 * n) - (1.0 if split == "val" else 0.0)
        return ScoreResult(acc, 2.0 - 0.1 * n + 0.001 * len(template), [acc] * 3)

    def token_count(self, text):
        return len(text.split()) + 2


class RecombiningLLM:
    """Builds a prompt from words of the best prompts it is shown, plus one random word."""

    identity = "recombiner"
    n_ctx = 100_000

    def __init__(self, broken=False):
        self.broken = broken
        self.calls = 0

    def count_tokens(self, messages):
        return sum(len(m["content"].split()) for m in messages)

    def generate(self, messages, seed, settings, grammar=None):
        self.calls += 1
        if self.broken:
            return Generation("I cannot help with that.", seed, "stop", Usage(10, 0, 5, 0.01))
        rng = random.Random(seed)
        shown = re.findall(r"<INS>(.*?)</INS>", messages[-1]["content"])
        best = shown[-3:]  # best last
        words = [w for t in best for w in t.replace("<CLASS>", " ").replace(".", " ").split()]
        picked = rng.sample(words, min(len(words), rng.randint(2, 5))) + [rng.choice(VOCAB)]
        rng.shuffle(picked)
        return Generation(f"<INS>{' '.join(picked)} <CLASS>.</INS>", seed, "stop", Usage(100, 80, 10, 0.01))


def run_loop(tmp_path, llm=None, **kw):
    folder = RunFolder.create(tmp_path / "run", {"request": {}})
    settings = LoopSettings(**{"steps": 15, "candidates": 4, "history": 5, "patience": 50, **kw})
    opt = Optimizer(llm or RecombiningLLM(), PlantedScorer(), folder, settings)
    return opt.run(), folder


def test_best_accuracy_rises_and_ranking_is_ordered(tmp_path):
    result, folder = run_loop(tmp_path)
    steps = [r for r in folder.records() if r["type"] == "step"]
    best = [s["best_accuracy"] for s in steps]
    assert best == sorted(best) and best[-1] >= 60 > best[0] == 30
    ranking = [(-r["accuracy"], r["loss"]) for r in result.ranking]
    assert ranking == sorted(ranking)
    assert result.best["accuracy"] == best[-1]
    assert result.baseline["template"] == START_TEMPLATE


def test_seeds_are_separate_and_reproducible(tmp_path):
    seeds = {candidate_seed(1, s, a, i) for s in range(5) for a in range(2) for i in range(5)}
    assert len(seeds) == 50
    first, _ = run_loop(tmp_path / "a")
    second, _ = run_loop(tmp_path / "b")
    assert [r["template"] for r in first.ranking] == [r["template"] for r in second.ranking]


def test_patience_stops_early(tmp_path):
    class Flat(PlantedScorer):
        def score(self, template, split="train"):
            return ScoreResult(30.0, 2.0, [30.0] * 3)

    folder = RunFolder.create(tmp_path / "run", {"request": {}})
    opt = Optimizer(RecombiningLLM(), Flat(), folder, LoopSettings(steps=50, candidates=2, patience=3))
    result = opt.run()
    assert result.stopped_early
    assert result.state.steps_done[-1]["step"] == 3  # steps 1-3 brought nothing better than step 0


def test_patience_zero_never_stops_early(tmp_path):
    """--patience 0: every step runs, as the official code's fixed 100 steps do."""
    class Flat(PlantedScorer):
        def score(self, template, split="train"):
            return ScoreResult(30.0, 2.0, [30.0] * 3)

    folder = RunFolder.create(tmp_path / "run", {"request": {}})
    result = Optimizer(RecombiningLLM(), Flat(), folder, LoopSettings(steps=6, candidates=2, patience=0)).run()
    assert not result.stopped_early and result.state.steps_done[-1]["step"] == 6


def test_hide_below_keeps_weak_prompts_out_of_the_meta_prompt(tmp_path):
    """--hide-below 35: the baseline (30%) is scored and ranked but never shown to the LLM."""
    shown = f"Prompt: <INS>{START_TEMPLATE}</INS>"
    result, folder = run_loop(tmp_path / "a", steps=3, hide_below=35.0)
    assert any(r["template"] == START_TEMPLATE for r in result.ranking)
    metas = [p.read_text() for p in (folder.path / "meta_prompts").glob("*.txt")]
    assert metas and not any(shown in t for t in metas)
    _, plain = run_loop(tmp_path / "b", steps=1)
    assert any(shown in p.read_text() for p in (plain.path / "meta_prompts").glob("*.txt"))


def test_llm_that_returns_nothing_valid_stops_with_a_report(tmp_path):
    llm = RecombiningLLM(broken=True)
    with pytest.raises(IpoError, match="no valid prompt in 8 calls.*I cannot help.*no <INS>"):
        run_loop(tmp_path, llm=llm, steps=1, candidates=2)
    assert llm.calls == 2 * 4  # the step was retried with new seeds 3 times


def test_select_val_ranks_on_the_validation_scores(tmp_path):
    result, _ = run_loop(tmp_path, select="val", steps=4)
    keys = [(-r["val_accuracy"], r["val_loss"]) for r in result.ranking]
    assert keys == sorted(keys) and "val_accuracy" in result.best


def test_rejected_candidates_are_kept_with_their_reason(tmp_path):
    class Dupes(RecombiningLLM):
        def generate(self, messages, seed, settings, grammar=None):
            return Generation("<INS>a photo of a <CLASS>.</INS>" if seed % 2 else "<INS>vivid <CLASS></INS>",
                              seed, "stop", Usage())

    result, folder = run_loop(tmp_path, llm=Dupes(), steps=2, candidates=4)
    rejected = [r for r in folder.records() if r["type"] == "candidate" and not r["valid"]]
    assert rejected and all(r["reason"] == "duplicate of an earlier prompt" for r in rejected)
    assert all(r["raw"] for r in rejected)


def test_settings_merge_saved_then_budget_then_typed():
    from ipo_cli.optimize.request import Overrides, make_request

    x = Overrides(images=Path("x"))
    assert (make_request(x).steps, make_request(x).candidates) == (100, 5)
    light = make_request(x, "light")
    assert (light.steps, light.candidates) == (10, 4)
    typed = make_request(Overrides(images=Path("x"), candidates=7), "light")
    assert (typed.steps, typed.candidates) == (10, 7)
    resumed = make_request(Overrides(), None, {"images": "saved", "steps": 3, "seed": 9})
    assert (resumed.images, resumed.steps, resumed.seed) == (Path("saved"), 3, 9)
    with pytest.raises(IpoError, match="--budget must be one of"):
        make_request(x, "huge")
    with pytest.raises(IpoError, match="missing the images folder"):
        make_request(Overrides())


def test_prompts_json_records_the_runs_classes_and_clip(tmp_path):
    """What `ipo classify` and `ipo eval` default to (data/prompts.py read_info)."""
    from ipo_cli.data.prompts import read_info
    from ipo_cli.optimize import history_md

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    folder = RunFolder.create(tmp_path / "run", {"request": {"clip": "ARCH", "clip_weights": str(weights)},
                                                 "classnames": ["cat", "dog", "bird"]})
    settings = LoopSettings(steps=2, candidates=2, history=5, patience=5)
    result = Optimizer(RecombiningLLM(), PlantedScorer(), folder, settings).run()
    history_md.write_outputs(folder, result, "pets", "ARCH:sha256=ab", "train", {})
    info = read_info(folder.path / "prompts.json")
    assert info.classes == ["cat", "dog", "bird"] and info.clip == "ARCH" and info.clip_weights == str(weights.resolve())


class BatchingLLM(RecombiningLLM):
    """Like RecombiningLLM, but answers a step's candidates in one call, and each answer depends
    on the whole seed list (as llama.cpp's batched answers depend on the batch): the loop must
    make one call per step, tag its cache keys with the batch, and resume exactly."""

    identity = "batcher"

    def __init__(self):
        super().__init__()
        self.batches: list[list[int]] = []

    def batched_for(self, n):
        return n > 1

    def generate_many(self, messages, seeds, settings, grammar=None):
        self.batches.append(list(seeds))
        mixed = sum(seeds) % 1000
        return [self.generate(messages, seed * 1000 + mixed, settings, grammar) for seed in seeds]


def test_one_call_per_step_for_all_candidates(tmp_path):
    llm = BatchingLLM()
    result, folder = run_loop(tmp_path, llm, steps=6, candidates=4)
    assert len(llm.batches) == 6 and all(len(b) == 4 for b in llm.batches)
    assert [b[0] for b in llm.batches] == [candidate_seed(1, step, 0, 0) for step in range(1, 7)]
    assert result.best["accuracy"] > 30.0


def test_a_plain_backend_is_asked_once_per_candidate(tmp_path):
    llm = RecombiningLLM()
    run_loop(tmp_path, llm, steps=3, candidates=4)
    assert llm.calls == 12


def test_batched_run_resumed_mid_step_equals_an_uninterrupted_one(tmp_path):
    from ipo_cli import cache

    def history(folder):
        return [{k: v for k, v in r.items() if k not in ("seconds", "cached", "usage")}
                for r in folder.records() if r.get("type") != "step"]

    whole, whole_folder = run_loop(tmp_path / "a", BatchingLLM(), steps=4, candidates=4)
    # the same run, cut after two candidates of step 3 (as kill -9 would leave it), then resumed
    settings = LoopSettings(steps=4, candidates=4, history=5, patience=50)
    folder = RunFolder.create(tmp_path / "b" / "run", {"request": {}})
    store = cache.Store(tmp_path / "b" / "cache", "generations")
    Optimizer(BatchingLLM(), PlantedScorer(), folder, settings, generation_cache=store).run()
    lines = folder.history_path.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"step": 3' in line and '"index": 2' in line)
    folder.history_path.write_text("".join(lines[:cut]))
    for llm, cached in ((BatchingLLM(), True), (BatchingLLM(), False)):
        if not cached:  # without the cache the whole batch is decoded again, with the same seeds
            store = None
            folder.history_path.write_text("".join(lines[:cut]))
        resumed = Optimizer(llm, PlantedScorer(), folder, settings, generation_cache=store).run()
        assert history(folder) == history(whole_folder)
        assert resumed.best["template"] == whole.best["template"]
        assert (llm.batches == []) == cached  # cached: every answer of the cut step came from the cache
        if not cached:
            assert llm.batches[0] == [candidate_seed(1, 3, 0, i) for i in range(4)]


def test_batch_tag_names_the_batch_only_where_answers_depend_on_it():
    from ipo_cli.llm.base import batch_tag

    assert batch_tag(RecombiningLLM(), [1, 2, 3]) == ""
    assert batch_tag(BatchingLLM(), [7]) == ""
    assert batch_tag(BatchingLLM(), [1, 2, 3]) == "batch:1,2,3"


def test_an_answer_cached_by_another_sampler_is_not_reused(tmp_path):
    from ipo_cli import cache

    class Checked(RecombiningLLM):
        sampler = "grammar-checked"  # as llm/llama.py names its lazy grammar check

    store = cache.Store(tmp_path / "cache", "generations")
    settings = LoopSettings(steps=2, candidates=3, history=5, patience=50)
    runs = []
    for n, llm in enumerate((RecombiningLLM(), RecombiningLLM(), Checked(), Checked())):
        folder = RunFolder.create(tmp_path / f"run{n}", {"request": {}})
        Optimizer(llm, PlantedScorer(), folder, settings, generation_cache=store).run()
        runs.append(llm.calls)
    assert runs == [6, 0, 6, 0]  # the same sampler: from the cache; another: drawn again
