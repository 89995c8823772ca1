"""The IPO loop: propose with the LLM, validate, score with CLIP, record, select, stop.

The loop only sees small interfaces: an LLM (N answers per step, `count_tokens`, `n_ctx`), a
`Scorer` (score a template on the training set and, with --select val, on a validation
set; the predictions per training image for --feedback), the image descriptions, and the
strategies (optimize/strategies.py: the pool, the history order, meta-prompt sections),
which it calls by setting, never by name. Everything it does is appended to the run folder as it
happens; `run()` replays that history first, so a resumed run continues exactly where the
last complete record left off, with the same seeds an uninterrupted run would have used.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ipo_cli.cache import Store, key_of
from ipo_cli.errors import IpoError
from ipo_cli.gates.text import MAX_ANSWER_CHARS
from ipo_cli.llm.base import LLM, Generation, SamplingSettings, Usage, batch_tag, generate_many
from ipo_cli.optimize import meta_prompt as mp
from ipo_cli.optimize import strategies
from ipo_cli.optimize.run_folder import RunFolder

# The template the loop starts from and scores first (step 0): CLIP's plain prompt, in the
# loop's <CLASS> form. Not `--baseline`, the hand-written template reports compare with.
START_TEMPLATE = "a photo of a <CLASS>."
RETRIES = 3  # extra attempts, with new seeds, when a step yields no valid candidate


@dataclass
class LoopSettings:
    steps: int = 100
    candidates: int = 5
    history: int = 20
    patience: int = 20  # 0: never stop early (the official code runs all its steps)
    seed: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 160  # enough for any answer the grammar allows
    task_hint: str | None = None
    select: str = "train"  # or "val"
    # prompts scoring under this training accuracy (%) are left out of the meta-prompt's
    # history; the official code hides those under 20 (lmsdss/IPO train.py,
    # old_instruction_score_threshold = 20, applied in optimization/opt_utils.py)
    hide_below: float = 0.0
    # the strategies (optimize/strategies.py, TABLE); these defaults are plain IPO
    feedback: str = "none"  # or "confusions"
    history_order: str = "best"  # or "contrastive"
    pool: str = "best"  # or "pareto"


@dataclass
class ScoreResult:
    accuracy: float
    loss: float
    per_class: list[float]


class Scorer(Protocol):
    classnames: Sequence[str]

    def score(self, template: str, split: str = "train") -> ScoreResult: ...

    def token_count(self, text: str) -> int: ...

    def predictions(self, template: str) -> tuple[Sequence[int], Sequence[int]]:
        """(true labels, predicted labels) of the training images, in one fixed order (only
        --feedback confusions asks)."""
        ...


class ClipScorer:
    """Scores templates on cached CLIP embeddings of the training (and validation) images."""

    def __init__(self, clip, train, val=None):
        self.clip, self.sets = clip, {"train": train, "val": val}
        self.classnames = train.dataset.classnames

    def score(self, template: str, split: str = "train") -> ScoreResult:
        from ipo_cli.clip.scoring import Prompt, score_prompt

        data = self.sets[split]
        s = score_prompt(self.clip, Prompt(template, [template]), self.classnames, data.embeddings, data.labels)
        return ScoreResult(s.acc1, s.loss, s.per_class)

    def token_count(self, text: str) -> int:
        return self.clip.token_count(text)

    def predictions(self, template: str) -> tuple[Sequence[int], Sequence[int]]:
        """From the cached image embeddings and the template's text embeddings (cached too):
        milliseconds, no image is looked at again."""
        from ipo_cli.clip.scoring import Prompt, class_embeddings, predict_embeddings

        data = self.sets["train"]
        text = class_embeddings(self.clip, Prompt(template, [template]), self.classnames)
        return [int(x) for x in data.labels], predict_embeddings(data.embeddings, text).tolist()


def candidate_seed(run_seed: int, step: int, attempt: int, index: int) -> int:
    """Separate, reproducible seeds for every sample of every step."""
    return int(key_of("candidate-seed", run_seed, step, attempt, index)[:8], 16)


@dataclass
class LoopState:
    """What the history says so far; rebuilt from history.jsonl on resume."""

    valid: list[dict] = field(default_factory=list)  # scored candidate records, baseline included
    steps_done: list[dict] = field(default_factory=list)
    partial: dict[tuple[int, int, int], dict] = field(default_factory=dict)  # an unfinished step
    calls: int = 0
    usage: Usage = field(default_factory=Usage)
    cached_calls: int = 0

    @classmethod
    def replay(cls, records: list[dict]) -> LoopState:
        state = cls()
        finished = {r["step"] for r in records if r.get("type") == "step"}
        for r in records:
            if r.get("type") == "step":
                state.steps_done.append(r)
            elif r.get("type") == "candidate":
                state.count(r)
                if r["step"] in finished:
                    if r["valid"]:
                        state.valid.append(r)
                else:
                    state.partial[(r["step"], r["attempt"], r["index"])] = r
        return state

    def count(self, record: dict) -> None:
        if record["step"] == 0:
            return
        self.calls += 1
        u = record.get("usage") or {}
        self.usage.prompt_tokens += u.get("prompt_tokens", 0)
        self.usage.reused_tokens += u.get("reused_tokens", 0)
        self.usage.completion_tokens += u.get("completion_tokens", 0)
        self.usage.seconds += u.get("seconds", 0.0)
        self.cached_calls += bool(record.get("cached"))


def rank_key(record: dict, select: str) -> tuple:
    """Best first: accuracy, ties broken by lower loss (on the selection split)."""
    if select == "val":
        return (-record["val_accuracy"], record["val_loss"], record["step"], record["index"])
    return (-record["accuracy"], record["loss"], record["step"], record["index"])


@dataclass
class LoopResult:
    ranking: list[dict]  # the pool (--pool: every valid candidate, or the Pareto frontier), best first
    baseline: dict | None  # None only when not even the starting template was scored
    state: LoopState
    stopped_early: bool
    interrupted: bool = False

    @property
    def best(self) -> dict:
        return self.ranking[0]


class Optimizer:
    def __init__(self, llm: LLM, scorer: Scorer, folder: RunFolder, settings: LoopSettings,
                 descriptions: Sequence[str] = (), generation_cache: Store | None = None,
                 on_step: Callable[[dict, LoopState], None] | None = None,
                 image_descriptions: Sequence[str | None] = ()):
        """`descriptions` go into the meta-prompt; `image_descriptions` are the same texts
        per training image in the scorer's order (None where an image has none), for a
        strategy that speaks of particular images (--feedback confusions)."""
        # The N candidates of a step are one call (llm.base.generate_many): the backend decides
        # how (a llama.cpp batch, a server's `n` or its parallel slots, else one after another).
        self.llm, self.scorer, self.folder, self.settings = llm, scorer, folder, settings
        self.descriptions = list(descriptions)
        self.image_descriptions = list(image_descriptions)
        strategies.check(settings)
        self.cache = generation_cache
        self.on_step = on_step
        self.sampling = SamplingSettings(settings.temperature, settings.top_p, settings.max_tokens)
        self.validator = mp.Validator(scorer.classnames, scorer.token_count)

    # ---- the answers of one step ----------------------------------------------------------
    def _key(self, messages: list[dict], seed: int, tag: str) -> str:
        parts: tuple = (self.llm.identity, messages, seed, asdict(self.sampling), mp.INS_GRAMMAR)
        # which path drew the answer: a batch (`batch_tag`), a sampler other than the backend's
        # plain one (llm.llama: the grammar checked lazily); neither: the keys of before
        path = tuple(p for p in (tag, getattr(self.llm, "sampler", "")) if p)
        return "gen:" + key_of(*parts, *path)

    def answers(self, messages: list[dict], seeds: list[int], wanted: list[int]) -> dict[int, tuple[Generation, bool, float]]:
        """The answers for the candidates `wanted` (indices into `seeds`), each with whether it
        came from the cache and its share of the call's seconds. Where the backend's answers
        depend on the whole batch (`batch_tag`), the whole batch is asked for even when some of
        it is already recorded (a resumed step): the answers then equal an uninterrupted run's."""
        if not wanted:
            return {}
        tag = batch_tag(self.llm, seeds)
        out: dict[int, tuple[Generation, bool, float]] = {}
        if self.cache is not None:
            for i in wanted:
                hit = self.cache.get_json(self._key(messages, seeds[i], tag))
                if isinstance(hit, dict) and isinstance(hit.get("text"), str):
                    finish = hit.get("finish_reason")
                    out[i] = (Generation(hit["text"], seeds[i], finish if isinstance(finish, str) else "stop", Usage()),
                              True, 0.0)
        missing = [i for i in wanted if i not in out]
        if not missing:
            return out
        ask = list(range(len(seeds))) if tag else missing
        start = time.perf_counter()
        gens = generate_many(self.llm, messages, [seeds[i] for i in ask], self.sampling, grammar=mp.INS_GRAMMAR)
        share = (time.perf_counter() - start) / len(ask)
        for i, gen in zip(ask, gens):
            gen.text = gen.text[:MAX_ANSWER_CHARS]  # a runaway answer is cut before it is stored (gates/text.py)
            if self.cache is not None:
                self.cache.set_json(self._key(messages, seeds[i], tag), {"text": gen.text, "finish_reason": gen.finish_reason})
            if i in missing:
                out[i] = (gen, False, share)
        return out

    def scored(self, template: str) -> dict[str, Any]:
        train = self.scorer.score(template, "train")
        out = {"accuracy": train.accuracy, "loss": train.loss, "per_class": train.per_class}
        if self.settings.select == "val":
            val = self.scorer.score(template, "val")
            out.update(val_accuracy=val.accuracy, val_loss=val.loss)
        return out

    def propose(self, step: int, attempt: int, index: int, generated: tuple[Generation, bool, float]) -> dict:
        seed = candidate_seed(self.settings.seed, step, attempt, index)
        gen, cached, seconds = generated  # asked for with the step's other candidates (answers)
        start = time.perf_counter() - seconds
        checked = self.validator.check(gen.text)
        reason = checked.reason
        if reason and gen.finish_reason == "length":
            reason += " (answer cut off at --max-tokens)"
        record = {"type": "candidate", "step": step, "attempt": attempt, "index": index, "seed": seed,
                  "raw": gen.text, "template": checked.template, "valid": reason is None, "reason": reason,
                  "cached": cached, "usage": gen.usage.to_json()}
        if reason is None:
            assert checked.template is not None  # a valid answer has its template
            record.update(self.scored(checked.template))
        record["seconds"] = round(time.perf_counter() - start, 4)
        return record

    # ---- the loop ---------------------------------------------------------------------
    def run(self) -> LoopResult:
        state = LoopState.replay(self.folder.records())
        try:
            return self._run(state)
        except KeyboardInterrupt:
            return self.result(state, stopped_early=False, interrupted=True)

    def _run(self, state: LoopState) -> LoopResult:
        if not state.steps_done:
            baseline = {"type": "candidate", "step": 0, "attempt": 0, "index": 0, "seed": None, "raw": None,
                        "template": START_TEMPLATE, "valid": True, "reason": None, "cached": False, "usage": None,
                        **self.scored(START_TEMPLATE), "seconds": 0.0}
            self.folder.append(baseline)
            state.valid.append(baseline)
            self.finish_step(state, 0, [baseline], None, 0.0)
        for record in state.valid:
            self.validator.remember(record["template"])
        stopped_early = False
        first = state.steps_done[-1]["step"] + 1
        for step in range(first, self.settings.steps + 1):
            if self.settings.patience and self.stale_steps(state) >= self.settings.patience:
                stopped_early = True
                break
            self.run_step(state, step)
        if not any(r["step"] > 0 for r in state.valid) and state.calls:
            rejected = [r for r in self.folder.records() if r.get("type") == "candidate" and not r["valid"]]
            examples = "; ".join(f"{r['raw'][:60]!r} ({r['reason']})" for r in rejected[:3])
            raise IpoError(f"the LLM returned no valid prompt in {state.calls} calls, e.g. {examples}",
                           "try a larger --llm, a higher --max-tokens, or check the model's chat template")
        return self.result(state, stopped_early)

    def run_step(self, state: LoopState, step: int) -> None:
        start = time.perf_counter()
        history = [mp.HistoryItem(r["template"], r["accuracy"], r["loss"])
                   for r in strategies.pool(self.settings, state.valid) if r["accuracy"] >= self.settings.hide_below]
        best = min(state.valid, key=lambda r: rank_key(r, "train"))
        view = strategies.StepView(best["template"], self.scorer.classnames,
                                   lambda template: self.scorer.predictions(template), self.image_descriptions)
        budget = (self.llm.n_ctx or 8192) - self.settings.max_tokens - 16
        meta = mp.build(history, self.descriptions, self.llm.count_tokens, budget, self.settings.history,
                        self.settings.task_hint, self.settings.seed, pick=strategies.order(self.settings),
                        sections=strategies.sections(self.settings, view))
        self.folder.write_meta_prompt(step, meta.text)
        records = []
        for attempt in range(RETRIES + 1):
            seeds = [candidate_seed(self.settings.seed, step, attempt, i) for i in range(self.settings.candidates)]
            todo = [i for i in range(self.settings.candidates) if (step, attempt, i) not in state.partial]
            fetched = self.answers(meta.messages, seeds, todo)
            for index in range(self.settings.candidates):
                record = state.partial.pop((step, attempt, index), None)
                if record is None:
                    record = self.propose(step, attempt, index, fetched[index])
                    self.folder.append(record)
                    state.count(record)
                if record["valid"]:
                    self.validator.remember(record["template"])
                    state.valid.append(record)
                records.append(record)
            if any(r["valid"] for r in records):
                break
        self.finish_step(state, step, records, meta, time.perf_counter() - start)

    def finish_step(self, state: LoopState, step: int, records: list[dict], meta, seconds: float) -> None:
        best = min(state.valid, key=lambda r: rank_key(r, "train"))
        previous = state.steps_done[-1] if state.steps_done else None
        improved = previous is None or (best["accuracy"], -best["loss"]) > (previous["best_accuracy"], -previous["best_loss"])
        fresh = [r for r in records if r["step"] == step and not r.get("cached") and r.get("usage")]
        summary = {
            "type": "step", "step": step, "candidates": len(records),
            "valid": sum(r["valid"] for r in records),
            "best_template": best["template"], "best_accuracy": best["accuracy"], "best_loss": best["loss"],
            "improved": improved,
            "meta_prompt_tokens": meta.tokens if meta else 0,
            "descriptions_used": meta.descriptions_used if meta else 0,
            "descriptions_left_out": meta.descriptions_left_out if meta else 0,
            "prompt_tokens": sum(r["usage"]["prompt_tokens"] for r in fresh),
            "reused_tokens": sum(r["usage"]["reused_tokens"] for r in fresh),
            "evaluated_tokens": sum(r["usage"]["evaluated_tokens"] for r in fresh),
            "seconds": round(seconds, 3),
        }
        self.folder.append(summary)
        state.steps_done.append(summary)
        if self.on_step:
            self.on_step(summary, state)

    @staticmethod
    def stale_steps(state: LoopState) -> int:
        n = 0
        for summary in reversed(state.steps_done):
            if summary["improved"]:
                break
            n += 1
        return n

    def result(self, state: LoopState, stopped_early: bool, interrupted: bool = False) -> LoopResult:
        baseline = next(r for r in state.valid if r["step"] == 0) if state.valid else None
        ranking = sorted(strategies.pool(self.settings, state.valid), key=lambda r: rank_key(r, self.settings.select))
        return LoopResult(ranking, baseline, state, stopped_early, interrupted)
