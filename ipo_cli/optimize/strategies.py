"""The loop's strategies, chosen by name from one table.

Plain IPO shows the LLM its best earlier prompts and keeps the best prompt. Three settings
change that, each by a name in `TABLE`, and each one small function here:

- `feedback` (`--feedback`): a bounded meta-prompt section after the history. `confusions`
  tells the LLM which classes the best prompt so far confuses on the training images and
  what some of the misclassified images look like (GEPA's textual feedback on failures,
  gepa-ai/gepa; as far as we know none of the CLIP prompt optimisers uses confusions).
- `history_order` (`--history-order`): which earlier prompts the LLM sees and in what
  order. `contrastive` shows the best and the worst, each marked (Liu et al., CVPR 2024;
  GLOV, arXiv 2410.06154, puts the top and bottom prompts in its meta-prompt).
- `pool` (`--pool`): which scored prompts stay candidates, for the history and for the
  final choice. `pareto` keeps the prompts no other prompt beats on every class at once.

A new strategy is one function and one entry in `TABLE`; the loop calls `pool`,
`history` and `sections` below and never branches on a strategy's name. The settings are
fields of the run's Request, so a resumed run must use the same ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ipo_cli.errors import IpoError
from ipo_cli.optimize import meta_prompt as mp

# --feedback confusions: how much it may show (K pairs, M image descriptions, each cut)
FEEDBACK_PAIRS = 3
FEEDBACK_IMAGES = 3
DESCRIPTION_CHARS = 300

FEEDBACK_HEADER = "Where the best prompt so far goes wrong on the training images"
FEEDBACK_NO_ERRORS = "it classifies every training image correctly."
FEEDBACK_ADVICE = "Write a prompt that helps CLIP tell these classes apart."


@dataclass
class StepView:
    """What a meta-prompt section may look at when a step begins."""

    best_template: str  # the best prompt so far, by training accuracy (ties: lower loss)
    classnames: Sequence[str]
    # (true labels, predicted labels) of the training images for a template
    predictions: Callable[[str], tuple[Sequence[int], Sequence[int]]]
    # per training image (the scorer's order), its redacted description or None
    image_descriptions: Sequence[str | None] = ()


# ---- feedback: a meta-prompt section after the history -----------------------------------
@dataclass(frozen=True)
class Confusion:
    true: int
    predicted: int
    count: int  # images of `true` given `predicted`
    total: int  # images of `true`


def top_confusions(labels: Sequence[int], predicted: Sequence[int], n_classes: int, k: int) -> list[Confusion]:
    """The `k` (true, predicted) pairs with the most misclassified images; ties: the larger
    share of the true class's images, then class order (so a step's section is reproducible)."""
    from ipo_cli.clip.scoring import confusion_counts

    counts = confusion_counts(labels, predicted, n_classes)
    totals = counts.sum(axis=1)
    off = [(int(counts[t, p]), t, p) for t in range(n_classes) for p in range(n_classes)
           if t != p and counts[t, p] > 0]
    off.sort(key=lambda x: (-x[0], -x[0] / totals[x[1]], x[1], x[2]))
    return [Confusion(t, p, c, int(totals[t])) for c, t, p in off[:k]]


def no_feedback(view: StepView) -> str | None:
    return None


def confusion_feedback(view: StepView) -> str | None:
    """The K most confused class pairs of the best prompt, and descriptions of up to M of
    their images (already redacted by the captioner: they never name their class)."""
    labels, predicted = view.predictions(view.best_template)
    names = view.classnames
    pairs = top_confusions(labels, predicted, len(names), FEEDBACK_PAIRS)
    head = f'{FEEDBACK_HEADER}, "{view.best_template}":'
    if not pairs:
        return f"{head} {FEEDBACK_NO_ERRORS}"
    lines = [head] + [f"- {names[c.true]} images taken for {names[c.predicted]}: {c.count} of {c.total}"
                      for c in pairs]
    described: list[str] = []
    for c in pairs:
        for i, (label, guess) in enumerate(zip(labels, predicted)):
            text = view.image_descriptions[i] if i < len(view.image_descriptions) else None
            if label == c.true and guess == c.predicted and text and len(described) < FEEDBACK_IMAGES:
                cut = text if len(text) <= DESCRIPTION_CHARS else text[:DESCRIPTION_CHARS - 3] + "..."
                described.append(f"- a {names[c.true]} image taken for {names[c.predicted]}: {cut}")
    if described:
        lines += ["Some of these images:"] + described
    lines.append(FEEDBACK_ADVICE)
    return "\n".join(lines)


def feedback_tokens(feedback: str) -> int:
    """The most tokens a feedback section takes, for the plan (optimize/plan.py): K pair
    lines, M descriptions at their cut length (about 4 characters a token), the rest."""
    if feedback == "none":
        return 0
    return 60 + FEEDBACK_PAIRS * 20 + FEEDBACK_IMAGES * (DESCRIPTION_CHARS // 4 + 20)


def feedback_shown(meta_prompt_text: str) -> str | None:
    """The feedback section of a saved meta-prompt (meta_prompts/step_NNN.txt), or None."""
    start = meta_prompt_text.find(FEEDBACK_HEADER)
    if start < 0:
        return None
    end = meta_prompt_text.find(mp.INSTRUCTION.split("{")[0], start)
    return meta_prompt_text[start:end if end >= 0 else None].strip()


# ---- history order: which earlier prompts the LLM sees ------------------------------------
def _ranked(history: Sequence[mp.HistoryItem]) -> list[mp.HistoryItem]:
    return sorted(history, key=lambda h: (-h.accuracy, h.loss, h.template))


def contrastive_history(history: Sequence[mp.HistoryItem], keep: int) -> list[mp.HistoryItem]:
    """The best ceil(keep/2) and the worst of the rest (keep in all: the same room as plain
    IPO's history), each marked, listed worst first and best last."""
    ranked = _ranked(history)
    n_best = math.ceil(keep / 2)
    best, rest = ranked[:n_best], ranked[n_best:]
    worst = rest[len(rest) - (keep - n_best):] if keep - n_best > 0 else []
    shown = [mp.HistoryItem(h.template, h.accuracy, h.loss, "best") for h in best] + \
            [mp.HistoryItem(h.template, h.accuracy, h.loss, "worst") for h in worst]  # best first
    return list(reversed(shown))


# ---- pool: which scored prompts stay candidates ----------------------------------------------
def all_prompts(records: Sequence[dict]) -> list[dict]:
    return list(records)


def pareto_frontier(records: Sequence[dict]) -> list[dict]:
    """The prompts that no other prompt dominates on per-class training accuracy (as good on
    every class and better on one): a prompt that alone is best on some class stays.

    Classic non-dominance, not GEPA's "best on some instance, redundant ones removed"
    (gepa-ai/gepa src/gepa/gepa_utils.py, remove_dominated_programs): that rule can drop the
    prompt with the best average (one that is second on every class), and the final choice
    is made from this pool. Here the best by training accuracy always stays, since a prompt
    that dominates it would have a higher accuracy."""
    if not records:
        return []
    scores = np.nan_to_num(np.array([r["per_class"] for r in records], dtype=np.float64), nan=-1.0)
    order = sorted(range(len(records)), key=lambda i: (-float(scores[i].mean()), i))
    kept: list[int] = []
    for i in order:  # a dominator has a higher mean, so it was seen first (or one that dominates it was)
        if kept:
            others = scores[kept]
            if bool(((others >= scores[i]).all(axis=1) & (others > scores[i]).any(axis=1)).any()):
                continue
        kept.append(i)
    return [records[i] for i in sorted(kept)]


# ---- the table ---------------------------------------------------------------------------------
TABLE: dict[str, dict[str, Callable[..., Any]]] = {
    "feedback": {"none": no_feedback, "confusions": confusion_feedback},
    "history_order": {"best": mp.history_order, "contrastive": contrastive_history},
    "pool": {"best": all_prompts, "pareto": pareto_frontier},
}
FLAGS = {"feedback": "--feedback", "history_order": "--history-order", "pool": "--pool"}

# `ipo bench --strategies`: a name for each setting that differs from plain IPO; "a+b" combines
PRESETS: dict[str, dict[str, str]] = {
    "ipo": {},
    "feedback": {"feedback": "confusions"},
    "contrastive": {"history_order": "contrastive"},
    "pareto": {"pool": "pareto"},
}


def check(settings: Any) -> None:
    """One line for a strategy name that does not exist (settings: a Request or LoopSettings)."""
    for name, choices in TABLE.items():
        value = getattr(settings, name)
        if value not in choices:
            raise IpoError(f"{FLAGS[name]} must be one of {', '.join(choices)}, not {value!r}")


def preset(name: str) -> dict[str, str]:
    """The settings of a bench strategy: a name of PRESETS, or several joined with '+'."""
    out: dict[str, str] = {}
    for part in name.split("+"):
        if part not in PRESETS:
            raise IpoError(f"--strategies: unknown strategy {part!r}",
                           f"choose from {', '.join(PRESETS)} (combine with +, e.g. feedback+pareto)")
        for key, value in PRESETS[part].items():
            if out.get(key, value) != value:
                raise IpoError(f"--strategies: {name!r} sets {FLAGS[key]} twice")
            out[key] = value
    return out


def pool(settings: Any, records: Sequence[dict]) -> list[dict]:
    """The scored prompts that stay candidates (history and final choice)."""
    return TABLE["pool"][settings.pool](records)


def order(settings: Any) -> Callable[[Sequence[mp.HistoryItem], int], list[mp.HistoryItem]]:
    return TABLE["history_order"][settings.history_order]


def sections(settings: Any, view: StepView) -> list[str]:
    text = TABLE["feedback"][settings.feedback](view)
    return [text] if text else []
