"""A scripted LLM and describer for running the real `ipo` commands in process without a
model: register one under a scheme and pass `--llm scripted:NAME` (or `--lmm scripted:NAME`).

As simonw/llm's tests do (tests/conftest.py: `MockModel.enqueue()` queues the answers the
next prompt gets; the model is registered through the `register_models` plugin hook), the
answers are queued, and every prompt is kept in `history` for the test to read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from ipo_cli.llm import registry
from ipo_cli.llm.base import Generation, SamplingSettings, Usage


class ScriptedLLM:
    """Answers from a queue (`enqueue`), then from `reply(messages, seed)` when the queue is
    empty. Counts about 4 characters a token, as ipo's server backends estimate."""

    def __init__(self, name: str = "scripted", reply: Callable[[Sequence[dict], int], str] | None = None,
                 n_ctx: int | None = 8192):
        self.identity = f"scripted:{name}"
        self.n_ctx = n_ctx
        self.reply = reply or (lambda messages, seed: "<INS>A photo of a <CLASS>.</INS>")
        self.history: list[dict] = []
        self._queue: list[str] = []

    def enqueue(self, answers: list[str]) -> None:
        assert isinstance(answers, list)
        self._queue.extend(answers)

    def count_tokens(self, messages: Sequence[dict]) -> int:
        return sum(len(m["content"]) if isinstance(m["content"], str) else 800 for m in messages) // 4 + 8

    def generate(self, messages: Sequence[dict], seed: int, settings: SamplingSettings,
                 grammar: str | None = None) -> Generation:
        self.history.append({"messages": list(messages), "seed": seed, "settings": settings, "grammar": grammar})
        text = self._queue.pop(0) if self._queue else self.reply(messages, seed)
        return Generation(text, seed, "stop", Usage(self.count_tokens(messages), 0, len(text) // 4, 0.0))


class ScriptedDescriber:
    """A describer (llm/captions.py backends): the same description for every image unless
    `reply(data_uri)` says otherwise; every image it was shown is in `seen`."""

    def __init__(self, name: str = "scripted", reply: Callable[[str], str] | None = None):
        self.identity = f"scripted:{name}"
        self.reply = reply or (lambda data_uri: "a grey object on a white background")
        self.seen: list[str] = []

    def describe(self, data_uri: str, settings=None) -> str:
        self.seen.append(data_uri)
        return self.reply(data_uri)


@contextlib.contextmanager
def scripted(llm: ScriptedLLM | None = None, describer: ScriptedDescriber | None = None,
             scheme: str = "scripted") -> Iterator[tuple[ScriptedLLM | None, ScriptedDescriber | None]]:
    """Register these under `scheme` for the duration: `--llm scripted:ANY` gets `llm`,
    `--lmm scripted:ANY` gets `describer` (the NAME is only recorded)."""
    if llm is not None:
        registry.register(scheme, lambda name, **options: llm, "llm")
    if describer is not None:
        registry.register(scheme, lambda name, **options: describer, "lmm")
    try:
        yield llm, describer
    finally:
        registry.unregister(scheme, "llm")
        registry.unregister(scheme, "lmm")
