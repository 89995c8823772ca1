"""A GGUF model run in process by llama.cpp (llama-cpp-python)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ipo_cli.errors import IpoError
from ipo_cli.llm.base import Generation, Message, SamplingSettings, Usage, context_error
from ipo_cli.llm.placement import resolve_gpu_layers


class LlamaCppLLM:
    """A GGUF model loaded once into llama.cpp."""

    def __init__(self, model_path: Path, n_ctx: int = 4096, n_threads: int | None = None,
                 identity: str | None = None, verbose: bool = False, gpu_layers: int | None = None):
        from ipo_cli.store.local import check_gguf

        check_gguf(model_path)
        try:
            from llama_cpp import Llama
        except ImportError:
            raise IpoError("llama-cpp-python is not installed", "pip install 'ipo-cli[llama]'") from None
        # llama-cpp-python defaults to half the cores; prompt evaluation wants them all.
        n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.identity = identity or Path(model_path).name
        try:
            self.llama = Llama(str(model_path), n_ctx=n_ctx, n_threads=n_threads, verbose=verbose,
                               n_gpu_layers=resolve_gpu_layers(gpu_layers))
        except Exception as exc:  # noqa: BLE001 - llama-cpp-python builds the GGUF's chat template here too
            if type(exc).__module__.startswith("jinja2"):
                raise self._template_error(exc) from None
            if not isinstance(exc, (ValueError, RuntimeError)):
                raise
            hint = (f"--n-ctx {n_ctx} may be more than memory holds: try a smaller one"
                    if n_ctx and n_ctx > 32768 else "is it a complete GGUF file?")
            raise IpoError(f"llama.cpp could not load {model_path} with a context of {n_ctx} tokens: {exc}",
                           hint) from None
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
            try:
                self._formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
            except Exception as exc:  # noqa: BLE001 - jinja2's syntax and security errors, any other
                raise self._template_error(exc) from None
            # One trial render now, before any run folder is written: a template that fails
            # fails here, as one line naming the model.
            self.render([{"role": "system", "content": "test"}, {"role": "user", "content": "test"}])

    def _template_error(self, exc: BaseException) -> IpoError:
        from ipo_cli.gates.text import terminal_safe

        detail = terminal_safe(" ".join(str(exc).split()), newlines=False)[:160]
        return IpoError(f"the chat template of {self.identity} cannot be rendered: {type(exc).__name__}: {detail}",
                        "use another model or GGUF file (the template is in its tokenizer.chat_template)")

    @property
    def has_chat_template(self) -> bool:
        return self._formatter is not None

    def render(self, messages: Sequence[Message]) -> tuple[str, list[str]]:
        """The exact prompt text the model sees, and the template's stop strings."""
        if self._formatter is not None:
            try:
                result = self._formatter(messages=list(messages))  # type: ignore[arg-type]  # plain dicts of llama_cpp's message shape
            except Exception as exc:  # noqa: BLE001 - the template is the model's code, run sandboxed
                raise self._template_error(exc) from None
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
        out: Any = self.llama.create_completion(  # not streamed: one CreateCompletionResponse
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
