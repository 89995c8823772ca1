# ruff: noqa: E501  (the chat template is Qwen's, line for line)
"""A benchmark model the size of ipo's CPU default: Qwen2.5-1.5B-Instruct's architecture with
random weights, as a Q4_K_M GGUF, built once and cached.

No Qwen2.5 weights can be had here, and a benchmark of the loop needs a model that costs
what the default costs to decode: on a CPU that is the weights read for every token (about
1 GB for 1.5B parameters at Q4_K_M), set by the shapes and the quantisation, not by what
the weights say. So this file writes those shapes with random weights (the `gguf` package,
as tests/projectors.py writes its projectors), and llama.cpp's own quantiser
(`llama_model_quantize` in llama-cpp-python) turns them into Q4_K_M, as a real conversion
would. Its answers are noise; the grammar keeps them well-formed.

Every shape is Qwen/Qwen2.5-1.5B-Instruct's config.json (huggingface.co/Qwen/
Qwen2.5-1.5B-Instruct/blob/main/config.json, as quoted verbatim by public transformers logs
that load it): "architectures": ["Qwen2ForCausalLM"], "hidden_size": 1536,
"intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
"num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
"max_position_embeddings": 32768, "tie_word_embeddings": true, "vocab_size": 151936,
"bos_token_id": 151643, "eos_token_id": 151645. Qwen2 has biases on q, k and v only
(transformers Qwen2Attention: q_proj/k_proj/v_proj bias=True, o_proj bias=False).

GGUF keys and tensor names are llama.cpp's, taken from the `gguf` package itself
(gguf-py, the writer convert_hf_to_gguf.py's Qwen2Model uses): `gguf.MODEL_ARCH.QWEN2`
("qwen2") and its `MODEL_TENSORS` / `TENSOR_NAMES` (token_embd, output_norm,
blk.N.attn_norm, attn_q/k/v (+ .bias), attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down).
No `output.weight` is written: with tied embeddings convert_hf_to_gguf.py writes none and
llama.cpp reads the output projection from token_embd (and llama-quant.cpp quantises
token_embd as the output tensor, Q6_K under Q4_K_M). llama.cpp types a 28-layer,
1536-wide qwen2 model "1.5B" (src/llama-model.cpp, load_hparams, LLM_ARCH_QWEN2).

The tokenizer cannot be Qwen's (its vocab.json/merges.txt are not reachable here). It is a
synthetic byte-level BPE of the same size and layout, which is what the decode cost depends
on (the output projection is vocabulary x hidden): the 256 byte tokens of GPT-2's byte
alphabet, merges that build every string of up to four of " abc...z" (so English splits
into tokens of about four letters, near Qwen's own rate), then Qwen2.5's special tokens at
Qwen's ids (<|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645, ...), then
"[PAD{i}]" up to 151936 as convert_hf_to_gguf.py pads a vocabulary shorter than the
model's (`TokenType.UNUSED`). The chat template is Qwen2.5-Instruct's
(tokenizer_config.json `chat_template`; ipo uses its no-tools branch).

Run:  python benchmarks/standin.py            (builds once; prints the path)
Disk: the F16 intermediate (~3.1 GB) goes to the cache folder and is deleted after
quantising; the result is about 1 GB. RAM: under 3 GB.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ARCH = dict(n_layer=28, n_embd=1536, n_ff=8960, n_head=12, n_head_kv=2, n_vocab=151936,
            rope_theta=1_000_000.0, rms_eps=1e-6, n_ctx_train=32768)
NAME = "qwen2.5-1.5b-instruct-standin-q4_k_m.gguf"
BUILD_VERSION = "1"  # a change to what is written makes a new file

# Qwen2.5's added tokens (tokenizer_config.json added_tokens_decoder, ids 151643-151664)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
           "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
           "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
           "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
FIRST_SPECIAL = 151643

CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table (openai/gpt-2 encoder.py bytes_to_unicode), which
    llama.cpp's byte-level BPE ("gpt2" tokenizer model) decodes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def vocabulary() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of the synthetic tokenizer: 151936 tokens."""
    import gguf

    tokens = byte_alphabet()
    merges: list[str] = []
    letters = ["Ġ"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]  # Ġ is the space byte in GPT-2's table
    known = set(tokens)
    level = letters
    while len(tokens) < FIRST_SPECIAL:
        longer = []
        for stem in level:
            for c in letters:
                if c == "Ġ" and stem != "Ġ":
                    continue  # a space only starts a token, as GPT-2's pre-tokeniser splits
                word = stem + c
                if word in known:
                    continue
                known.add(word)
                tokens.append(word)
                merges.append(f"{stem} {c}")
                longer.append(word)
                if len(tokens) == FIRST_SPECIAL:
                    break
            if len(tokens) == FIRST_SPECIAL:
                break
        level = longer
    types = [gguf.TokenType.NORMAL] * len(tokens)
    tokens += SPECIAL
    types += [gguf.TokenType.CONTROL] * len(SPECIAL)
    pads = ARCH["n_vocab"] - len(tokens)
    tokens += [f"[PAD{i}]" for i in range(pads)]
    types += [gguf.TokenType.UNUSED] * pads
    return tokens, [int(t) for t in types], merges


def cache_dir() -> Path:
    from ipo_cli import cache

    return cache.cache_root() / "bench-models"


def write_f16(path: Path, seed: int = 0) -> None:
    """The F16 GGUF: Qwen2.5-1.5B's tensors with random weights of about 0.01 (random bits
    with the exponent pinned, far cheaper to make than normal samples and as costly to
    decode), norms of ones, biases of zeros."""
    import gguf
    import numpy as np

    a = ARCH
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2]  # "qwen2"
    names = gguf.TENSOR_NAMES
    T = gguf.MODEL_TENSOR
    allowed = set(gguf.MODEL_TENSORS[gguf.MODEL_ARCH.QWEN2])
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("Qwen2.5-1.5B-Instruct stand-in (random weights)")
    w.add_context_length(a["n_ctx_train"])
    w.add_embedding_length(a["n_embd"])
    w.add_block_count(a["n_layer"])
    w.add_feed_forward_length(a["n_ff"])
    w.add_head_count(a["n_head"])
    w.add_head_count_kv(a["n_head_kv"])
    w.add_rope_freq_base(a["rope_theta"])
    w.add_layer_norm_rms_eps(a["rms_eps"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, types, merges = vocabulary()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(FIRST_SPECIAL)  # <|endoftext|>, Qwen's bos_token_id
    w.add_eos_token_id(FIRST_SPECIAL + 2)  # <|im_end|>, Qwen2.5-Instruct's eos_token_id
    w.add_pad_token_id(FIRST_SPECIAL)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def tensor(kind, shape, bid=None, suffix="weight", fill=None):
        assert kind in allowed, kind
        name = names[kind].format(bid=bid) + "." + suffix
        if fill is None:  # random F16 bits with the exponent pinned: |w| in [1/128, 1/64), either sign
            bits = np.frombuffer(rng.bytes(int(np.prod(shape)) * 2), dtype=np.uint16)
            data = ((bits & 0x83FF) | 0x2000).view(np.float16).reshape(shape)
        else:
            data = np.full(shape, fill, dtype=np.float32)  # norms and biases stay F32, as converted models keep them
        w.add_tensor(name, data)

    e, ff, hd = a["n_embd"], a["n_ff"], a["n_embd"] // a["n_head"]
    kv = hd * a["n_head_kv"]
    # numpy shapes are ggml's ne reversed: (out, in) for a matrix applied to in-wide rows
    tensor(T.TOKEN_EMBD, (a["n_vocab"], e))
    tensor(T.OUTPUT_NORM, (e,), fill=1.0)
    for i in range(a["n_layer"]):
        tensor(T.ATTN_NORM, (e,), i, fill=1.0)
        tensor(T.ATTN_Q, (e, e), i)
        tensor(T.ATTN_Q, (e,), i, "bias", fill=0.0)
        tensor(T.ATTN_K, (kv, e), i)
        tensor(T.ATTN_K, (kv,), i, "bias", fill=0.0)
        tensor(T.ATTN_V, (kv, e), i)
        tensor(T.ATTN_V, (kv,), i, "bias", fill=0.0)
        tensor(T.ATTN_OUT, (e, e), i)
        tensor(T.FFN_NORM, (e,), i, fill=1.0)
        tensor(T.FFN_GATE, (ff, e), i)
        tensor(T.FFN_UP, (ff, e), i)
        tensor(T.FFN_DOWN, (e, ff), i)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src: Path, dst: Path, threads: int = 2) -> None:
    """llama.cpp's own quantiser, as `llama-quantize F16.gguf OUT.gguf Q4_K_M` runs it."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")


def standin_path(build: bool = True, log=print) -> Path:
    """The cached stand-in, built first where it is missing."""
    folder = cache_dir()
    out = folder / f"v{BUILD_VERSION}-{NAME}"
    if out.exists() or not build:
        return out
    folder.mkdir(parents=True, exist_ok=True)
    f16 = folder / f"v{BUILD_VERSION}-{NAME}.f16.partial"
    partial = out.with_suffix(".partial")
    try:
        start = time.perf_counter()
        log(f"writing the F16 stand-in ({f16}) ...")
        write_f16(f16)
        log(f"  {f16.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s; quantising to Q4_K_M ...")
        start = time.perf_counter()
        quantize(f16, partial, threads=max(1, len(os.sched_getaffinity(0))))
        os.replace(partial, out)
        log(f"  {out.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s: {out}")
    finally:
        for leftover in (f16, partial):
            leftover.unlink(missing_ok=True)
    return out


def check(path: Path) -> None:
    """It loads in llama.cpp as a 1.5B qwen2 and decodes, its chat template included."""
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=512, n_threads=1, verbose=False)
    meta = llm.metadata
    assert meta["general.architecture"] == "qwen2" and llm.n_vocab() == ARCH["n_vocab"], meta
    assert int(meta["qwen2.block_count"]) == 28 and int(meta["qwen2.embedding_length"]) == 1536
    ids = llm.tokenize(b"<|im_start|>user\nA photo of a dog.<|im_end|>", add_bos=False, special=True)
    assert ids[0] == FIRST_SPECIAL + 1 and ids[-1] == FIRST_SPECIAL + 2, ids
    start = time.perf_counter()
    out = llm.create_chat_completion([{"role": "system", "content": "You write prompts."},
                                      {"role": "user", "content": "One prompt, please."}],
                                     max_tokens=16, seed=1, temperature=1.0)
    took = time.perf_counter() - start
    used = out["usage"]
    print(f"loads and decodes: {used['prompt_tokens']} prompt tokens, {used['completion_tokens']} new tokens "
          f"in {took:.1f} s; tokens of 'A photo of a dog.': {len(ids) - 4}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    path = standin_path()
    print(path)
    if "--check" in sys.argv:
        check(path)
