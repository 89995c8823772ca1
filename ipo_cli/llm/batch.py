"""N answers to one prompt as one llama.cpp batch of N sequences, with the grammar applied only
where the sampled token breaks it.

Built on llama-cpp-python's low-level API (the ctypes mirror of llama.h, llama_cpp/llama_cpp.py
of abetlen/llama-cpp-python 0.3.36, which vendors ggml-org/llama.cpp; paths below are in that
vendored tree):

- The prompt is held by sequence 0 of the context's KV cache, positions 0..P-1, and reused
  across calls as far as it agrees with the next prompt (`llama_memory_seq_rm` from the first
  difference; include/llama.h: "Removes all tokens that belong to the specified sequence and have
  positions in [p0, p1)"). It is evaluated in chunks of n_batch with logits for its last token
  only, as `Llama.eval` does (llama_cpp/llama.py), so one sequence here sees exactly the logits
  that `Llama.create_completion` sees.
- Sequences 1..N-1 share its cells (`llama_memory_seq_cp`: with a unified KV cache, a copy adds
  the sequence id to the same cells, src/llama-kv-cache.cpp `seq_cp`), so the prompt costs one
  evaluation and one copy in memory. The context must hold N sequences: `n_seq_max`, with
  `kv_unified` (one buffer of n_ctx cells for all; include/llama.h `llama_context_params`).
  `Llama()` has no such arguments and swallows unknown keywords (`**kwargs` in `Llama.__init__`),
  and sets `n_seq_max`/`kv_unified` only for embeddings, so llm/llama.py makes the context itself;
  a sequence id at or above the context's n_seq_max is refused ("invalid seq_id",
  src/llama-batch.cpp `llama_batch_allocr::init`, and llama_decode returns -1).
- Each step decodes one token of every unfinished sequence in one `llama_decode`, each at its own
  next position, and samples it with the sequence's own chain. Positions must continue what the
  KV cache holds for the sequence (src/llama-batch.cpp: "it is required that the sequence
  positions remain consecutive: Y = X + 1"; else llama_decode returns -1, src/llama-context.cpp
  `decode`), hence the cleaning below. The KV calls are `llama_memory_*`: the old
  `llama_kv_self_*` ones are in neither include/llama.h nor llama_cpp/llama_cpp.py any more.
- Afterwards sequences 1..N-1 are removed and sequence 0 keeps the prompt only: the KV cache is
  handed back as a sequential call would leave it (and `Llama`'s own bookkeeping of what it
  holds, `n_tokens`/`input_ids`, is set to match, so its `create_completion` reuses the prefix).

Sampling chain: as `Llama._init_sampler` builds it for ipo's settings (top_k 40, typical 1.0,
top_p, min_p 0.05, temperature, dist(seed)); its penalties sampler is left out because ipo's
penalties are neutral (repeat 1.0, frequency and presence 0), where llama.cpp's penalties sampler
does nothing (src/llama-sampler.cpp `llama_sampler_penalties_apply` returns early).
`llama_sampler_sample` applies the chain to the logits of one output and accepts the token it
returns (include/llama.h: "Sample and accept a token from the idx-th output").

Grammar: llama.cpp's own approach (common/sampling.cpp `common_sampler_sample`, grammar_first
false): sample from the unconstrained chain, check that one token against the grammar (a
single-entry token-data array through the grammar sampler: -inf means rejected), and only when it
is rejected sample again with the grammar applied to the whole vocabulary first. The grammar
sampler only ever accepts a token it allowed and never an end-of-generation token:
`llama_grammar_accept_impl` (src/llama-grammar.cpp) aborts the process (GGML_ABORT) on an EOG
token before the grammar is complete and throws through the C API (terminating the process) on a
token the grammar does not allow.
"""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ipo_cli.errors import IpoError

TOP_K, MIN_P, TYPICAL_P = 40, 0.05, 1.0  # Llama.create_completion's defaults (llama_cpp/llama.py)


@dataclass
class Answer:
    text: str
    finish_reason: str
    completion_tokens: int


@dataclass
class _Seq:
    index: int  # position in the caller's seed list
    seq_id: int
    chain: Any
    grammar: Any
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    text: bytes = b""
    finish: str = "length"
    multibyte_fix: int = 0


class BatchDecoder:
    """Decodes N sequences of one prompt together in one llama.cpp context (see module doc).
    `llama` is a llama_cpp.Llama whose context was made with room for `n_seq_max` sequences."""

    def __init__(self, llama: Any, n_seq_max: int):
        import llama_cpp

        self.lib = llama_cpp
        self.llama = llama
        self.n_seq_max = n_seq_max
        self.n_batch = max(int(llama.n_batch), n_seq_max)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._grammar_sources: dict[str, Any] = {}

    def close(self) -> None:
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None
        for sampler in self._grammar_sources.values():
            self.lib.llama_sampler_free(sampler)
        self._grammar_sources.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: llama_cpp may be gone already
            pass

    # ---- the pieces ------------------------------------------------------------------------------
    @property
    def _ctx(self):
        return self.llama._ctx.ctx

    @property
    def _mem(self):
        return self.lib.llama_get_memory(self._ctx)

    @property
    def _vocab(self):
        return self.llama._model.vocab

    def _chain(self, seed: int, temperature: float, top_p: float) -> Any:
        lib = self.lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if temperature < 0.0:  # as Llama._init_sampler: dist over the raw logits
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        elif temperature == 0.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(TOP_K))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_typical(TYPICAL_P, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(MIN_P, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    def _grammar(self, gbnf: str) -> Any:
        """A fresh grammar sampler: a clone of the parsed one (parsed once per grammar)."""
        source = self._grammar_sources.get(gbnf)
        if source is None:
            source = self.lib.llama_sampler_init_grammar(self._vocab, gbnf.encode("utf-8"), b"root")
            if not source:  # llama.cpp returns NULL when the grammar does not parse
                raise IpoError("invalid GBNF grammar: llama.cpp could not parse it")
            self._grammar_sources[gbnf] = source
        return self.lib.llama_sampler_clone(source)

    def _allows(self, grammar: Any, token: int) -> bool:
        """Whether the grammar, in its present state, allows this one token."""
        lib = self.lib
        single = lib.llama_token_data(token, 1.0, 0.0)
        array = lib.llama_token_data_array(ctypes.pointer(single), 1, -1, False)
        lib.llama_sampler_apply(grammar, ctypes.byref(array))
        return not math.isinf(array.data[0].logit)

    def _sample_constrained(self, seq: _Seq, idx: int) -> int:
        """Grammar over the whole vocabulary first, then the chain (what create_completion does
        at every token; here only when the unconstrained token was rejected, or grammar_first)."""
        import numpy as np

        lib = self.lib
        n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, idx), shape=(n_vocab,))
        data = (lib.llama_token_data * n_vocab)()
        view = np.frombuffer(data, dtype=np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)]))
        view["id"] = np.arange(n_vocab, dtype=np.int32)
        view["logit"] = logits
        view["p"] = 0.0
        array = lib.llama_token_data_array(data, n_vocab, -1, False)
        lib.llama_sampler_apply(seq.grammar, ctypes.byref(array))
        lib.llama_sampler_apply(seq.chain, ctypes.byref(array))
        if array.selected < 0:
            raise IpoError("llama.cpp's sampler selected no token (the grammar allows none here)")
        token = int(array.data[array.selected].id)
        lib.llama_sampler_accept(seq.chain, token)
        return token

    def _sample(self, seq: _Seq, idx: int, lazy: bool) -> int:
        lib = self.lib
        if seq.grammar is None:
            return int(lib.llama_sampler_sample(seq.chain, self._ctx, idx))
        if lazy:
            token = int(lib.llama_sampler_sample(seq.chain, self._ctx, idx))
            if not self._allows(seq.grammar, token):
                token = self._sample_constrained(seq, idx)
        else:
            token = self._sample_constrained(seq, idx)
        if not lib.llama_vocab_is_eog(self._vocab, token):  # never an EOG into the grammar (module doc)
            lib.llama_sampler_accept(seq.grammar, token)
        return token

    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) entries."""
        batch = self.batch
        for i, (token, pos, seq_id, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        status = self.lib.llama_decode(self._ctx, batch)
        if status != 0:
            raise IpoError(f"llama.cpp could not decode a batch of {len(entries)} tokens (llama_decode returned {status})",
                           "try a larger --n-ctx, fewer --candidates, or --no-batch")

    # ---- the prompt --------------------------------------------------------------------------
    def prefill(self, tokens: list[int]) -> int:
        """Sequence 0 holds `tokens`, with the logits of the last one ready; returns how many
        were reused from what the context held."""
        llama = self.llama
        held = [int(t) for t in llama.input_ids[: llama.n_tokens]]
        prefix = 0
        for a, b in zip(held, tokens):
            if a != b:
                break
            prefix += 1
        reuse = prefix - 1 if prefix == len(tokens) else prefix  # the last token again, for its logits
        self.lib.llama_memory_seq_rm(self._mem, -1, reuse, -1)
        llama.n_tokens = reuse
        for start in range(reuse, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            last = start + len(chunk) == len(tokens)
            self._decode([(t, start + i, 0, last and i == len(chunk) - 1) for i, t in enumerate(chunk)])
            llama.input_ids[start:start + len(chunk)] = chunk
            llama.n_tokens = start + len(chunk)
        return max(reuse, 0)

    # ---- N answers ---------------------------------------------------------------------------
    def run(self, tokens: list[int], seeds: Sequence[int], temperature: float, top_p: float, max_tokens: int,
            stop: Sequence[str], grammar: str | None = None, lazy: bool = True) -> tuple[list[Answer], int, float]:
        """The answers for `seeds` (at most n_seq_max), the reused prompt tokens and the seconds."""
        if not 0 < len(seeds) <= self.n_seq_max:
            raise ValueError(f"{len(seeds)} sequences for a context of {self.n_seq_max}")
        lib, llama = self.lib, self.llama
        start = time.perf_counter()
        seqs = [_Seq(i, i, self._chain(seed, temperature, top_p), self._grammar(grammar) if grammar else None)
                for i, seed in enumerate(seeds)]
        stops = [s.encode("utf-8") for s in stop if s]
        n_prompt = len(tokens)
        try:
            reused = self.prefill(tokens)
            for seq in seqs[1:]:
                lib.llama_memory_seq_cp(self._mem, 0, seq.seq_id, -1, -1)
            idx = {seq.seq_id: -1 for seq in seqs}  # first token: all from the prompt's last logits
            while True:
                for seq in seqs:
                    if not seq.done:
                        self._step(seq, self._sample(seq, idx[seq.seq_id], lazy), stops, max_tokens)
                active = [seq for seq in seqs if not seq.done]
                if not active:
                    break
                entries = [(seq.tokens[-1], n_prompt + len(seq.tokens) - 1, seq.seq_id, True) for seq in active]
                self._decode(entries)
                idx = {seq.seq_id: i for i, seq in enumerate(active)}
        except BaseException:
            lib.llama_memory_clear(self._mem, True)  # nothing half-made is left for the next call
            llama.n_tokens = 0
            raise
        finally:
            for seq in seqs:
                lib.llama_sampler_free(seq.chain)
                if seq.grammar is not None:
                    lib.llama_sampler_free(seq.grammar)
        self.hand_back(len(seqs), n_prompt)
        answers = [Answer(seq.text.decode("utf-8", errors="ignore"), seq.finish, len(seq.tokens)) for seq in seqs]
        return answers, reused, time.perf_counter() - start

    def _step(self, seq: _Seq, token: int, stops: list[bytes], max_tokens: int) -> None:
        """Take one sampled token into the sequence; stop as Llama._create_completion does (an EOG
        token, a stop string in the text, max_tokens), with its wait for a split UTF-8 character."""
        detok = self.llama.detokenize  # as _create_completion (prev_tokens changes nothing there)
        if self.lib.llama_vocab_is_eog(self._vocab, token):
            seq.text, seq.finish, seq.done = detok(seq.tokens), "stop", True
            return
        seq.tokens.append(token)
        text = detok(seq.tokens)
        for k, char in enumerate(text[-3:]):  # as _create_completion: a character still incomplete
            k = 3 - k
            for num, pattern in ((2, 192), (3, 224), (4, 240)):
                if num > k and pattern & char == pattern:
                    seq.multibyte_fix = num - k
        if seq.multibyte_fix > 0:
            seq.multibyte_fix -= 1
            return
        found = [s for s in stops if s in text]
        if found:
            seq.text, seq.finish, seq.done = text[: text.index(found[0])], "stop", True
        elif len(seq.tokens) >= max_tokens:
            seq.text, seq.finish, seq.done = text, "length", True

    def hand_back(self, n_seqs: int, n_prompt: int) -> None:
        """Only the prompt stays, in sequence 0; the other sequences and every answer token go."""
        lib, mem = self.lib, self._mem
        for seq_id in range(1, n_seqs):
            lib.llama_memory_seq_rm(mem, seq_id, -1, -1)
        lib.llama_memory_seq_rm(mem, 0, n_prompt, -1)
        self.llama.n_tokens = n_prompt
        self.llama._requires_eval = True  # its logits are an answer's, not the prompt's
