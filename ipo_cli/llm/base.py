"""The language-model interface every backend implements, and the types it speaks in.

A backend takes chat messages and returns `Generation`s with usage: how many prompt tokens
were evaluated and how many were reused from the prefix already in the model's context.
The optimizer keeps the unchanging part of its meta-prompt first so that this reuse is
large. Backends: llm/llama.py (llama.cpp in process), llm/openai_http.py (any
OpenAI-compatible server, with llm/ollama.py for Ollama's own API); llm/loading.py picks
one for `--llm` / `--llm-url`, and llm/registry.py lets a test put its own behind the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from ipo_cli.errors import IpoError
from ipo_cli.gates import json_in

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass
class Usage:
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose evaluation was kept from the previous call
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def evaluated_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens

    def to_json(self) -> dict:
        return {**asdict(self), "evaluated_tokens": self.evaluated_tokens}


@dataclass
class Generation:
    text: str
    seed: int
    finish_reason: str
    usage: Usage


@dataclass
class SamplingSettings:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()


class LLM(Protocol):
    identity: str

    @property
    def n_ctx(self) -> int | None: ...  # read-only here: a model may know it as a plain int

    def generate(self, messages: Sequence[Message], seed: int, settings: SamplingSettings,
                 grammar: str | None = None) -> Generation: ...

    def count_tokens(self, messages: Sequence[Message]) -> int: ...


class ManyAnswers(Protocol):
    """What a backend adds to answer N candidates of one prompt in one call (llama.cpp in
    process: one batch of N sequences; a server: one request with `n`, or concurrent requests
    into its slots). A backend without it is asked N times in turn (`generate_many` below)."""

    def generate_many(self, messages: Sequence[Message], seeds: Sequence[int], settings: SamplingSettings,
                      grammar: str | None = None) -> list[Generation]: ...

    def batched_for(self, n: int) -> bool:
        """True when N answers asked together differ from the same N asked one by one (a batch's
        kernels, or one server seed for all N): the answers then depend on the whole seed list,
        and the loop's cache key says so (`batch_tag`)."""
        ...


def generate_many(llm: LLM, messages: Sequence[Message], seeds: Sequence[int], settings: SamplingSettings,
                  grammar: str | None = None) -> list[Generation]:
    """One answer per seed, in the order of `seeds`: by the backend's own call for N answers
    where it has one, else one `generate` after another."""
    many = getattr(llm, "generate_many", None)
    if many is not None and len(seeds) > 1:
        gens = list(many(messages, list(seeds), settings, grammar=grammar))
        if len(gens) != len(seeds):
            raise IpoError(f"{llm.identity} gave {len(gens)} answers for {len(seeds)} candidates")
        return gens
    return [llm.generate(messages, seed, settings, grammar=grammar) for seed in seeds]


def batch_tag(llm: LLM, seeds: Sequence[int]) -> str:
    """'' when each answer depends on its own seed only (the sequential path: cache keys as
    before), else a tag naming the whole batch, so a cached answer is reused only for the
    same batch of seeds from the same path."""
    batched = getattr(llm, "batched_for", None)
    if len(seeds) < 2 or batched is None or not batched(len(seeds)):
        return ""
    return "batch:" + ",".join(str(s) for s in seeds)


def context_error(prompt_tokens: int, max_tokens: int, n_ctx: int) -> IpoError:
    over = prompt_tokens + max_tokens - n_ctx
    return IpoError(
        f"the prompt is {prompt_tokens} tokens; with {max_tokens} new tokens it needs "
        f"{prompt_tokens + max_tokens}, {over} more than the context of {n_ctx}",
        "shorten the prompt or raise the context size (--n-ctx)",
    )


# The answer shape for servers with JSON-schema structured output (OpenAI, vLLM, Ollama):
# one prompt string; it is turned back into <INS>...</INS> and validated like any answer.
ANSWER_SCHEMA = {"type": "object", "properties": {"prompt": {"type": "string"}},
                 "required": ["prompt"], "additionalProperties": False}


def unwrap_answer(text: str) -> str:
    """A JSON-schema answer {"prompt": "..."} as the <INS>...</INS> text the validator reads;
    anything else is passed on as it came, for the validator to judge."""
    try:
        data = json_in.loads(text, "the answer")
    except IpoError:
        return text
    if isinstance(data, dict) and isinstance(data.get("prompt"), str):
        prompt = data["prompt"].strip()
        return prompt if "<INS>" in prompt else f"<INS>{prompt}</INS>"
    return text



def usage_count(value: Any) -> int:
    """A token count from a server's JSON: a non-negative integer, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
