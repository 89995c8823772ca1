"""A GGUF model run in process by llama.cpp (llama-cpp-python).

The N candidates of a step are decoded as one batch of N sequences (llm/batch.py) unless
`batch=False` (--no-batch); the grammar is checked on the sampled token and applied to the
whole vocabulary only when that token breaks it, unless `lazy_grammar=False` (then `generate`
is llama-cpp-python's `create_completion`, as ipo did before). Threads default to the
physical cores the process may use (llm/threads.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ipo_cli.errors import IpoError
from ipo_cli.llm.base import Generation, Message, SamplingSettings, Usage, context_error
from ipo_cli.llm.placement import resolve_gpu_layers

# Sequences one context holds (n_seq_max); more candidates are decoded in groups of this many.
# llama.cpp allows up to LLAMA_MAX_SEQ (llama_max_parallel_sequences(), 256 in src/llama-cparams.h).
MAX_SEQUENCES = 64
# Answer tokens past max_tokens a sequence may take: _create_completion waits out a split UTF-8
# character (up to 3 more tokens) before it checks the length.
SLACK_TOKENS = 4


class LlamaCppLLM:
    """A GGUF model loaded once into llama.cpp."""

    def __init__(self, model_path: Path, n_ctx: int = 4096, n_threads: int | None = None,
                 identity: str | None = None, verbose: bool = False, gpu_layers: int | None = None,
                 batch: bool = True, lazy_grammar: bool = True, fit_threads: bool | None = None):
        from ipo_cli.store.local import check_gguf

        check_gguf(model_path)
        try:
            from llama_cpp import Llama
        except ImportError:
            raise IpoError("llama-cpp-python is not installed", "pip install 'ipo-cli[llama]'") from None
        from ipo_cli.llm.threads import llama_threads

        # llama-cpp-python defaults to half of os.cpu_count() for decoding and all of it for
        # batches (Llama.__init__, llama_cpp/llama.py): logical CPUs, blind to affinity and quota.
        # A batch of N candidates runs on n_threads_batch (src/llama-context.cpp graph_compute:
        # `batched ? n_threads_batch : n_threads`), so both get the same count.
        self.n_threads = llama_threads(n_threads)
        # Unless the caller chose the threads: before each call, the usable cores less those other
        # processes keep busy now (llm/threads.py fit_threads), so spinning threads never wait on
        # a core that is not free. The default when n_threads is None; job.py says it explicitly.
        self.fit = n_threads is None if fit_threads is None else fit_threads
        self.threads_now = self.n_threads
        self.batch, self.lazy_grammar = batch, lazy_grammar
        self.identity = identity or Path(model_path).name
        try:
            self.llama = Llama(str(model_path), n_ctx=n_ctx, n_threads=self.n_threads,
                               n_threads_batch=self.n_threads, verbose=verbose,
                               n_gpu_layers=resolve_gpu_layers(gpu_layers))
            if batch:
                self._make_batch_context(verbose)
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
        self._decoder: Any = None
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

    def _make_batch_context(self, verbose: bool) -> None:
        """Swap Llama's context for one with room for MAX_SEQUENCES sequences in one unified KV
        cache of the same n_ctx: `Llama()` takes neither n_seq_max nor kv_unified (an unknown
        keyword is swallowed by its **kwargs) and sets them only for embeddings
        (llama_cpp/llama.py `Llama.__init__`). Its own context is freed first, so the memory
        peak is one context; everything else of Llama's (n_ctx, its arrays) stays valid."""
        import contextlib

        import llama_cpp
        from llama_cpp import _internals

        params = llama_cpp.llama_context_params.from_buffer_copy(self.llama.context_params)
        params.n_seq_max = min(MAX_SEQUENCES, int(llama_cpp.llama_max_parallel_sequences()))
        params.kv_unified = True
        self.llama._ctx.close()
        self.llama._ctx = self.llama._stack.enter_context(contextlib.closing(
            _internals.LlamaContext(model=self.llama._model, params=params, verbose=verbose)))
        self.llama.context_params = params
        self.llama.n_tokens = 0

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

    # ---- answers -------------------------------------------------------------------------------
    def batched_for(self, n: int) -> bool:
        """N > 1 answers asked together come from one batch, whose kernels give other answers than
        N single sequences would (llm.base.batch_tag)."""
        return self.batch and n > 1

    @property
    def sampler(self) -> str:
        """Names how tokens are drawn where it is not llama-cpp-python's own `create_completion`
        (ipo's path before the grammar was checked lazily): the loop's cache keys carry it, so an
        answer cached by the older sampler is not taken for one this sampler would draw."""
        return "grammar-checked" if self.lazy_grammar else ""

    def generate_many(self, messages: Sequence[Message], seeds: Sequence[int], settings: SamplingSettings,
                      grammar: str | None = None) -> list[Generation]:
        """One answer per seed: one batch of N sequences, else (--no-batch, one seed) in turn."""
        if not self.batched_for(len(seeds)):
            return [self.generate(messages, seed, settings, grammar) for seed in seeds]
        self._fit_threads()
        return self._decode(messages, list(seeds), settings, grammar)

    def _fit_threads(self) -> None:
        """Give llama.cpp the cores free now (a 0.15 s look at the CPUs' load), where the
        threads were not chosen; llama_set_n_threads changes them between calls at no cost
        (include/llama.h: "Set the number of threads used for decoding")."""
        if not self.fit or self.n_threads <= 1:
            return
        from ipo_cli.llm.threads import fit_threads

        threads = fit_threads(self.n_threads)
        if threads != self.threads_now:
            import llama_cpp

            llama_cpp.llama_set_n_threads(self.llama._ctx.ctx, threads, threads)
            self.threads_now = threads

    def generate(self, messages: Sequence[Message], seed: int, settings: SamplingSettings,
                 grammar: str | None = None) -> Generation:
        self._fit_threads()
        if not self.lazy_grammar:
            return self._completion(messages, seed, settings, grammar)
        return self._decode(messages, [seed], settings, grammar)[0]

    def _decoder_for(self) -> Any:
        if self._decoder is None:
            import llama_cpp

            from ipo_cli.llm.batch import BatchDecoder

            self._decoder = BatchDecoder(self.llama, int(llama_cpp.llama_n_seq_max(self.llama._ctx.ctx)))
        return self._decoder

    def _decode(self, messages: Sequence[Message], seeds: list[int], settings: SamplingSettings,
                grammar: str | None) -> list[Generation]:
        """The answers by llm/batch.py, in groups that fit the context: the prompt once, plus
        each sequence's answer (the cache is unified: n_ctx cells for all of them)."""
        prompt, template_stop = self.render(messages)
        tokens = self.tokenize(prompt)
        if len(tokens) + settings.max_tokens > self.n_ctx:
            raise context_error(len(tokens), settings.max_tokens, self.n_ctx)
        decoder = self._decoder_for()
        fits = (self.n_ctx - len(tokens)) // (settings.max_tokens + SLACK_TOKENS)
        group = max(1, min(decoder.n_seq_max, fits))
        stop = list(settings.stop) + template_stop
        out: list[Generation] = []
        for start in range(0, len(seeds), group):
            part = seeds[start:start + group]
            answers, reused, seconds = decoder.run(tokens, part, settings.temperature, settings.top_p,
                                                   settings.max_tokens, stop, grammar, lazy=self.lazy_grammar)
            for i, (seed, answer) in enumerate(zip(part, answers)):
                # the prompt is evaluated once for the group: the other sequences reuse all of it
                usage = Usage(len(tokens), reused if i == 0 else len(tokens), answer.completion_tokens,
                              seconds / len(part))
                out.append(Generation(answer.text, seed, answer.finish_reason, usage))
        return out

    def _completion(self, messages: Sequence[Message], seed: int, settings: SamplingSettings,
                    grammar: str | None = None) -> Generation:
        """llama-cpp-python's create_completion: the grammar applied to every token of the
        vocabulary at every step (ipo's path before issue 20; `lazy_grammar=False`)."""
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
