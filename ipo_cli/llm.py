"""Language-model backends behind one small interface.

`LlamaCppLLM` runs a GGUF model in process (llama-cpp-python); `OpenAIServerLLM` talks to
any OpenAI-compatible server (llama.cpp's server, vLLM, Ollama, LM Studio). Both take chat
messages and return `Generation`s with usage: how many prompt tokens were evaluated and
how many were reused from the prefix already in the model's context. The optimizer keeps
the unchanging part of its meta-prompt first so that this reuse is large.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from ipo_cli.errors import IpoError

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
    n_ctx: int | None

    def generate(self, messages: Sequence[Message], seed: int, settings: SamplingSettings,
                 grammar: str | None = None) -> Generation: ...

    def count_tokens(self, messages: Sequence[Message]) -> int: ...


def context_error(prompt_tokens: int, max_tokens: int, n_ctx: int) -> IpoError:
    over = prompt_tokens + max_tokens - n_ctx
    return IpoError(
        f"the prompt is {prompt_tokens} tokens; with {max_tokens} new tokens it needs "
        f"{prompt_tokens + max_tokens}, {over} more than the context of {n_ctx}",
        "shorten the prompt or raise the context size (--n-ctx)",
    )


class LlamaCppLLM:
    """A GGUF model loaded once into llama.cpp."""

    def __init__(self, model_path: Path, n_ctx: int = 4096, n_threads: int | None = None,
                 identity: str | None = None, verbose: bool = False):
        from ipo_cli.catalogue import check_gguf

        check_gguf(model_path)
        try:
            from llama_cpp import Llama
        except ImportError:
            raise IpoError("llama-cpp-python is not installed", "pip install 'ipo-cli[llama]'") from None
        # llama-cpp-python defaults to half the cores; prompt evaluation wants them all.
        n_threads = n_threads or max(1, os.cpu_count() or 1)
        try:
            self.llama = Llama(str(model_path), n_ctx=n_ctx, n_threads=n_threads, verbose=verbose)
        except (ValueError, RuntimeError) as exc:
            raise IpoError(f"llama.cpp could not load {model_path}: {exc}", "is it a complete GGUF file?") from None
        self.model_path = Path(model_path)
        self.n_ctx = self.llama.n_ctx()
        self.identity = identity or self.model_path.name
        self._grammars: dict[str, object] = {}
        template = self.llama.metadata.get("tokenizer.chat_template")
        self._formatter = None
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            vocab = self.llama._model
            eos = vocab.token_get_text(self.llama.token_eos()) if self.llama.token_eos() >= 0 else ""
            bos = vocab.token_get_text(self.llama.token_bos()) if self.llama.token_bos() >= 0 else ""
            self._formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)

    @property
    def has_chat_template(self) -> bool:
        return self._formatter is not None

    def render(self, messages: Sequence[Message]) -> tuple[str, list[str]]:
        """The exact prompt text the model sees, and the template's stop strings."""
        if self._formatter is not None:
            result = self._formatter(messages=list(messages))
            stop = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
            return result.prompt, stop
        # No chat template: plain completion with a simple transcript.
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n\n".join(lines) + "\n\nAssistant:", ["\nUser:"]

    def tokenize(self, text: str) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.tokenize(self.render(messages)[0]))

    def _grammar(self, gbnf: str):
        if gbnf not in self._grammars:
            from llama_cpp import LlamaGrammar

            try:
                self._grammars[gbnf] = LlamaGrammar.from_string(gbnf, verbose=False)
            except ValueError as exc:
                raise IpoError(f"invalid GBNF grammar: {exc}") from None
        return self._grammars[gbnf]

    def generate(self, messages: Sequence[Message], seed: int, settings: SamplingSettings,
                 grammar: str | None = None) -> Generation:
        prompt, template_stop = self.render(messages)
        tokens = self.tokenize(prompt)
        if len(tokens) + settings.max_tokens > self.n_ctx:
            raise context_error(len(tokens), settings.max_tokens, self.n_ctx)
        cached = list(self.llama._input_ids[: self.llama.n_tokens])
        prefix = self.llama.longest_token_prefix(cached, tokens)
        reused = prefix - 1 if prefix == len(tokens) else prefix
        start = time.perf_counter()
        out = self.llama.create_completion(
            tokens,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=seed,
            stop=list(settings.stop) + template_stop,
            grammar=self._grammar(grammar) if grammar else None,
        )
        seconds = time.perf_counter() - start
        choice = out["choices"][0]
        usage = Usage(len(tokens), max(reused, 0), out["usage"]["completion_tokens"], seconds)
        return Generation(choice["text"], seed, choice.get("finish_reason") or "stop", usage)


class OpenAIServerLLM:
    """An OpenAI-compatible chat-completions server, with timeouts and retries."""

    def __init__(self, base_url: str, model: str | None = None, timeout: float = 120, retries: int = 3,
                 backoff: float = 1.0, n_ctx: int | None = None):
        self.base_url = base_url.rstrip("/")
        self.model = model or "default"
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.n_ctx = n_ctx
        self.identity = f"{self.base_url}#{self.model}"

    def count_tokens(self, messages: Sequence[Message]) -> int:
        # A server does not tokenise for us; ~4 characters per token is the usual estimate.
        return sum(len(m["content"]) if isinstance(m["content"], str) else 800 for m in messages) // 4 + 8

    def post(self, path: str, payload: dict) -> dict:
        url = f"{self.base_url}{path}"
        body = json.dumps(payload).encode()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:200].decode("utf-8", "replace")
                if exc.code < 500 and exc.code != 429:
                    raise IpoError(f"the server at {url} refused the request: HTTP {exc.code} {detail}") from None
                last = exc
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last = exc
                continue
            try:
                data = json.loads(raw)
                assert isinstance(data, dict)
                return data
            except (json.JSONDecodeError, AssertionError):
                raise IpoError(f"the server at {url} answered something that is not JSON: {raw[:80]!r}",
                               "is --llm-url the /v1 address of an OpenAI-compatible server?") from None
        reason = getattr(last, "reason", last)
        raise IpoError(f"cannot reach the model server at {url} after {self.retries + 1} tries: {reason}",
                       "start the server or check --llm-url") from None

    def generate(self, messages: Sequence[Message], seed: int, settings: SamplingSettings,
                 grammar: str | None = None) -> Generation:
        payload = {
            "model": self.model,
            "messages": list(messages),
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "max_tokens": settings.max_tokens,
            "seed": seed,
        }
        if settings.stop:
            payload["stop"] = list(settings.stop)
        if grammar:
            payload["grammar"] = grammar  # llama.cpp's server; others ignore unknown fields
        start = time.perf_counter()
        data = self.post("/chat/completions", payload)
        seconds = time.perf_counter() - start
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise IpoError(f"the server at {self.base_url} answered without choices[0].message.content: "
                           f"{json.dumps(data)[:120]}") from None
        usage = data.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        return Generation(text, seed, choice.get("finish_reason") or "stop",
                          Usage(usage.get("prompt_tokens", 0), cached, usage.get("completion_tokens", 0), seconds))


def load_llm(model: str | None = None, url: str | None = None, url_model: str | None = None,
             n_ctx: int | None = None, n_threads: int | None = None) -> LLM:
    """`--llm NAME|FILE` or `--llm-url URL [--llm-model NAME]`."""
    if url:
        if not url.startswith(("http://", "https://")):
            raise IpoError(f"--llm-url {url!r} is not an http(s) URL", "for example http://127.0.0.1:8080/v1")
        return OpenAIServerLLM(url, url_model, n_ctx=n_ctx)
    from ipo_cli.catalogue import default_model, resolve

    local = resolve(model or default_model("llm").name, "llm")
    return LlamaCppLLM(local.path, n_ctx=n_ctx or local.n_ctx, n_threads=n_threads, identity=local.identity)
