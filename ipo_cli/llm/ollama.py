"""Ollama's own API, which ipo speaks to an Ollama server in place of its OpenAI endpoint.

Ollama's OpenAI-compatible endpoint cannot set the context size, and Ollama silently cuts
prompts that do not fit; its native /api/chat takes `options.num_ctx`, the JSON schema as
`format`, and `stream` (true unless set: ipo always sends false). Reference:
ollama/ollama docs/api.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ipo_cli.errors import IpoError
from ipo_cli.llm.base import ANSWER_SCHEMA, Message, SamplingSettings, Usage, unwrap_answer, usage_count

if TYPE_CHECKING:
    from ipo_cli.llm.openai_http import OpenAIServerLLM


def ollama_context(server: OpenAIServerLLM) -> None:
    """Ollama's model limit from /api/show (model_info "<arch>.context_length", e.g.
    "llama.context_length", as Ollama's API docs and its clients read it); the context
    ipo asks for is --n-ctx, else that limit up to 8192 tokens."""
    try:
        info = server.post("/api/show", {"model": server.model}, base=server.root)
    except IpoError:
        info = {}
    model_info = found if isinstance(found := info.get("model_info"), dict) else {}
    limits = [v for k, v in model_info.items() if k.endswith(".context_length") and isinstance(v, int)]
    server.context_length = limits[0] if limits else None
    if server.n_ctx is None:
        server.n_ctx = min(server.context_length or 8192, 8192)
    elif server.context_length and server.n_ctx > server.context_length:
        raise IpoError(f"--n-ctx {server.n_ctx} is more than {server.model!r} supports ({server.context_length} tokens)",
                       f"use --n-ctx {server.context_length} or less")


def ollama_chat(server: OpenAIServerLLM, messages: Sequence[Message], seed: int, settings: SamplingSettings,
                structured: bool) -> tuple[str, str, Usage]:
    need = server.count_tokens(messages) + settings.max_tokens
    if server.n_ctx and need > server.n_ctx:
        limit = f" (the model allows {server.context_length})" if server.context_length else ""
        raise IpoError(f"the prompt needs about {need} tokens with the answer, more than the context of "
                       f"{server.n_ctx} ipo asks Ollama for{limit}; Ollama would cut it silently",
                       "raise --n-ctx, or show fewer descriptions/history (--history)")
    options: dict[str, Any] = {"seed": seed, "temperature": settings.temperature, "top_p": settings.top_p,
                               "num_predict": settings.max_tokens, "num_ctx": server.n_ctx}
    if settings.stop:
        options["stop"] = list(settings.stop)
    payload: dict[str, Any] = {"model": server.model, "messages": [ollama_message(m) for m in messages],
                               "stream": False, "options": options}
    if structured:
        payload["format"] = ANSWER_SCHEMA  # Ollama structured outputs: a JSON schema in `format`
    data = server.post("/api/chat", payload, base=server.root)
    message = data.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str):
        raise IpoError(f"Ollama at {server.root} answered without message.content: "
                       f"{server._scrub(json.dumps(data)[:120])}")
    if structured:
        text = unwrap_answer(text)
    finish = "length" if data.get("done_reason") == "length" else "stop"
    return text, finish, Usage(usage_count(data.get("prompt_eval_count")), 0, usage_count(data.get("eval_count")), 0.0)


def ollama_message(message: Message) -> dict:
    """OpenAI content parts to Ollama's message: text plus base64 `images`."""
    content = message["content"]
    if isinstance(content, str):
        return {"role": message["role"], "content": content}
    texts, images = [], []
    for part in content:
        if part.get("type") == "text":
            texts.append(part.get("text", ""))
        elif part.get("type") == "image_url":
            url = part["image_url"]["url"]
            images.append(url.split(",", 1)[1] if url.startswith("data:") else url)
    out = {"role": message["role"], "content": "\n".join(texts)}
    if images:
        out["images"] = images
    return out
