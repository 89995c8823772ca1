"""The Prompt Optimization Prompt (IPO's meta-prompt) and the checks on what comes back.

The meta-prompt has four parts (see IPO_METHOD.md): the task instruction, one line per
training image describing it without naming its class, the history of earlier prompts
with their loss and accuracy (best last), and the generation instruction. The first two
do not change during a run, so they come first, in the system message: llama.cpp then
reuses their evaluation from step to step and only the history is evaluated anew.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ipo_cli.errors import IpoError

PLACEHOLDER = "<CLASS>"
MAX_CHARS = 500
MAX_CLIP_TOKENS = 77

# Exactly one <INS>...</INS> answer with exactly one <CLASS>. Each side is bounded so that
# the answer closes within GRAMMAR_MAX_TOKENS even at one token per character.
INS_GRAMMAR = r'''root ::= "<INS>" side "<CLASS>" side "</INS>"
side ::= [^<>{}\n]{0,70}'''
GRAMMAR_MAX_TOKENS = 160

TASK = (
    "You help to classify images with CLIP, a model that matches an image with short texts. "
    "For each class, CLIP reads a prompt in which {placeholder} is replaced by the class name, "
    "and it picks the class whose prompt fits the image best. Your task is to write a better "
    "prompt for this dataset{domain}."
)
DESCRIPTIONS_HEADER = (
    "Here are descriptions of some of the training images, written without naming their "
    "class, to show what the images look like:"
)
HISTORY_HEADER = (
    "Below are earlier prompts with their scores on the training images: the loss (lower is "
    "better) and the accuracy in percent (higher is better). They are sorted from worst to best."
)
INSTRUCTION = (
    "Write a new prompt that is different from all the prompts above and that has a lower loss "
    "and a higher accuracy. Keep it concise and applicable to every class; it must contain "
    "{placeholder} exactly once and no class name. Answer with the prompt only, between <INS> "
    "and </INS>."
)


# With a history that marks its prompts (--history-order contrastive: optimize/strategies.py)
MARKS_NOTE = (
    "Prompts marked [worst] are among the worst so far: avoid what they do. Prompts marked "
    "[best] are among the best so far."
)


@dataclass
class HistoryItem:
    template: str
    accuracy: float
    loss: float
    mark: str | None = None  # shown after the scores, e.g. "best" or "worst"


@dataclass
class MetaPrompt:
    messages: list[dict]
    descriptions_used: int
    descriptions_left_out: int
    history_used: int
    tokens: int

    @property
    def text(self) -> str:
        """Exactly what the model is given, for the run folder."""
        return "\n\n".join(f"### {m['role']}\n{m['content']}" for m in self.messages)


def history_order(history: Sequence[HistoryItem], keep: int) -> list[HistoryItem]:
    """The `keep` best by accuracy (ties: lower loss), listed worst first, best last."""
    best = sorted(history, key=lambda h: (-h.accuracy, h.loss, h.template))[:keep]
    return list(reversed(best))


def render(task_hint: str | None, descriptions: Sequence[str], history: Sequence[HistoryItem],
           sections: Sequence[str] = ()) -> list[dict]:
    """The messages. `sections` (a strategy's feedback) come after the history and before the
    instruction: the system message, evaluated once and reused, stays the same."""
    domain = f" ({task_hint})" if task_hint else ""
    system = TASK.format(placeholder=PLACEHOLDER, domain=domain)
    if descriptions:
        lines = "\n".join(f"Image_{i + 1}: {d}" for i, d in enumerate(descriptions))
        system += f"\n\n{DESCRIPTIONS_HEADER}\n{lines}"
    shown = "\n\n".join(
        f"Prompt: <INS>{h.template}</INS>\nLoss: {h.loss:.3f}  Accuracy: {h.accuracy:.2f}"
        + (f"  [{h.mark}]" if h.mark else "") for h in history
    )
    header = HISTORY_HEADER + (f" {MARKS_NOTE}" if any(h.mark for h in history) else "")
    extra = "".join(f"{section}\n\n" for section in sections)
    user = f"{header}\n\n{shown}\n\n{extra}{INSTRUCTION.format(placeholder=PLACEHOLDER)}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def build(
    history: Sequence[HistoryItem],
    descriptions: Sequence[str],
    count_tokens: Callable[[list[dict]], int],
    budget: int,
    keep: int = 20,
    task_hint: str | None = None,
    seed: int = 0,
    pick: Callable[[Sequence[HistoryItem], int], list[HistoryItem]] = history_order,
    sections: Sequence[str] = (),
) -> MetaPrompt:
    """The meta-prompt that fits `budget` tokens, leaving out descriptions if it must.

    Descriptions are dropped as a seeded random subset (the same for every step of a run,
    so the system message, and llama.cpp's cached prefix, stays the same). `pick` chooses and
    orders the history shown (a strategy's, optimize/strategies.py); `sections` are bounded
    by their strategy and always shown: only descriptions give way.
    """
    shown = pick(history, keep)
    messages = render(task_hint, descriptions, shown, sections)
    tokens = count_tokens(messages)
    if tokens <= budget:
        return MetaPrompt(messages, len(descriptions), 0, len(shown), tokens)
    bare = render(task_hint, [], shown, sections)
    bare_tokens = count_tokens(bare)
    if budget <= 0:  # the answer alone (--max-tokens) takes the whole context
        raise IpoError("--max-tokens takes the whole of the LLM's context: no room is left for the meta-prompt",
                       "lower --max-tokens or raise --n-ctx")
    if bare_tokens > budget:
        raise IpoError(
            f"the meta-prompt needs {bare_tokens} tokens even without image descriptions, "
            f"but only {budget} fit the LLM's context after room for the answer",
            "use a model with a larger context (--n-ctx), a shorter --history, or a shorter --task-hint"
            + (" (the feedback section is part of it)" if sections else ""),
        )
    order = list(range(len(descriptions)))
    random.Random(seed).shuffle(order)
    low, high = 0, len(descriptions)  # largest n whose subset fits
    while low < high:
        mid = (low + high + 1) // 2
        subset = [descriptions[i] for i in sorted(order[:mid])]
        if count_tokens(render(task_hint, subset, shown, sections)) <= budget:
            low = mid
        else:
            high = mid - 1
    subset = [descriptions[i] for i in sorted(order[:low])]
    messages = render(task_hint, subset, shown, sections)
    return MetaPrompt(messages, low, len(descriptions) - low, len(shown), count_tokens(messages))


def normalise(template: str) -> str:
    return re.sub(r"\s+", " ", template.strip().lower())


@dataclass
class Checked:
    template: str | None
    reason: str | None  # None when valid


@dataclass
class Validator:
    """The rules a candidate must pass before it is scored."""

    classnames: Sequence[str]
    token_count: Callable[[str], int]
    seen: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        names = sorted({n.strip().lower() for n in self.classnames if n.strip()}, key=len, reverse=True)
        self._class_re = re.compile(r"\b(?:" + "|".join(re.escape(n) for n in names) + r")s?\b", re.IGNORECASE) if names else None
        self._longest = max(self.classnames, key=len) if self.classnames else ""

    def remember(self, template: str) -> None:
        self.seen.add(normalise(template))

    def check(self, raw: str) -> Checked:
        found = re.findall(r"<INS>(.*?)</INS>", raw, flags=re.DOTALL)
        if not found:
            return Checked(None, "no <INS>...</INS> answer")
        if len(found) > 1:
            return Checked(None, "more than one <INS> answer")
        template = found[0].strip()
        if "<INS>" in template or "</INS>" in template:
            return Checked(template, "leaked <INS> tags")
        if not template:
            return Checked(template, "empty")
        if "{" in template or "}" in template:  # `{}` / `{c}` would be filled with the class name too
            return Checked(template, "contains { or }, which other tools read as a class placeholder")
        count = template.count(PLACEHOLDER)
        if count != 1:
            return Checked(template, f"{count} <CLASS> placeholders, needs exactly one")
        if len(template) > MAX_CHARS:
            return Checked(template, f"{len(template)} characters, more than {MAX_CHARS}")
        tokens = self.token_count(template.replace(PLACEHOLDER, self._longest))
        if tokens > MAX_CLIP_TOKENS:
            return Checked(template, f"{tokens} CLIP tokens, more than {MAX_CLIP_TOKENS}")
        if self._class_re is not None:
            leak = self._class_re.search(template.replace(PLACEHOLDER, " "))
            if leak:
                return Checked(template, f"names the class {leak.group(0)!r}")
        if normalise(template) in self.seen:
            return Checked(template, "duplicate of an earlier prompt")
        return Checked(template, None)
