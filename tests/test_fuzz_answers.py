"""Property-based tests (Hypothesis) for every parser of a server's answer: an
OpenAI-compatible chat answer and model list (OpenAI, vLLM, llama.cpp's servers), Ollama's
native answers (/api/version, /api/tags, /api/show, /api/chat), and the hub's file
listing. Each answer body is generated (valid examples with a part replaced by any JSON
value, truncations, raw bytes, deep nesting, odd Unicode) and comes back with an HTTP
status drawn too; the property: a valid result or an IpoError, never another exception.

The bodies are handed to the parsers below the HTTP gate (the exchange itself is tested
against real servers in test_gates_http.py), so that hundreds of examples take seconds.
"""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_readers import EXAMPLES, FUZZ, documents, holds  # noqa: F401 - EXAMPLES: per test

from ipo_cli.llm.base import SamplingSettings
from ipo_cli.llm.openai_http import OpenAIServerLLM

MESSAGES = [{"role": "system", "content": "You write prompts."}, {"role": "user", "content": "one prompt"}]
STATUS = st.sampled_from([200, 200, 200, 400, 401, 404, 429, 500])

CHAT = {"id": "c", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                                                                      "content": "<INS>a photo of a <CLASS>.</INS>"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2}}}
MODELS = {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "llamacpp"}]}
OLLAMA_CHAT = {"model": "q", "message": {"role": "assistant", "content": '{"prompt": "a photo of a <CLASS>."}'},
               "done": True, "done_reason": "stop", "prompt_eval_count": 12, "eval_count": 7}
OLLAMA_SHOW = {"model_info": {"qwen2.context_length": 32768}}
OLLAMA_TAGS = {"models": [{"name": "q", "model": "q"}]}


def client(kind: str | None, answers) -> OpenAIServerLLM:
    """A client whose exchanges return `answers(url)` = (status, body)."""
    server = OpenAIServerLLM("http://127.0.0.1:1/v1", "m", retries=0, backoff=0.0, timeout=5)
    server.kind = kind
    if kind == "ollama":
        server.n_ctx = 4096
    server._request = lambda url, payload, deadline: answers(url)
    return server


@FUZZ
@given(body=documents(CHAT), status=STATUS, kind=st.sampled_from(["openai", "llama.cpp", "vllm", "openai-compatible"]),
       structured=st.booleans())
def test_openai_chat_answers(body, status, kind, structured):
    server = client(kind, lambda url: (status, body))
    grammar = "root ::= \"<INS>\" [a-z ]+ \"</INS>\"" if structured else None
    holds(lambda: server.generate(MESSAGES, 1, SamplingSettings(), grammar=grammar))


@FUZZ
@given(models=documents(MODELS), version=documents({"version": "0.5.1"}), status=STATUS,
       version_status=st.sampled_from([200, 404]), tags=documents(OLLAMA_TAGS), show=documents(OLLAMA_SHOW))
def test_server_detection(models, version, status, version_status, tags, show):
    """What the server is, from /v1/models, /api/version, /api/tags and /api/show."""
    def answers(url):
        if url.endswith("/api/version"):
            return version_status, version
        if url.endswith("/api/tags"):
            return 200, tags
        if url.endswith("/api/show"):
            return 200, show
        return status, models

    server = client(None, answers)
    server.requested_model = None
    holds(server.detect)


@FUZZ
@given(body=documents(OLLAMA_CHAT), status=STATUS, structured=st.booleans())
def test_ollama_chat_answers(body, status, structured):
    server = client("ollama", lambda url: (status, body))
    holds(lambda: server.generate(MESSAGES, 1, SamplingSettings(), grammar="root ::= x" if structured else None))


@FUZZ
@given(body=documents(OLLAMA_SHOW), status=STATUS)
def test_ollama_model_info(body, status):
    from ipo_cli.llm.ollama import ollama_context

    server = client("ollama", lambda url: (status, body))
    server.n_ctx = None
    holds(lambda: ollama_context(server))


class Answer(io.BytesIO):
    """What the hub client reads: a body, a status, headers."""

    def __init__(self, body: bytes, link: str | None):
        super().__init__(body)
        self.status, self.url = 200, "https://huggingface.co/api/models/x"
        self.headers = {"Link": link} if link else {}

    def read1(self, n=-1):
        return self.read(n)


SHA = "6a1a2eb6d15622bf3c96857206351ba97e1af16c30d7a74ee38970e434e9407e"
LISTING = [{"type": "file", "path": "qwen2.5-1.5b-instruct-q4_k_m.gguf", "size": 1117320736,
            "lfs": {"oid": SHA, "size": 1117320736}}, {"type": "file", "path": "README.md", "size": 10}]


@FUZZ
@given(body=documents(LISTING), link=st.none() | st.sampled_from([
    '<https://huggingface.co/api/models/x?cursor=2>; rel="next"', '<https://evil.example/x>; rel="next"',
    'garbage', '<>; rel="next"']))
def test_hub_listings(body, link, monkeypatch):
    from ipo_cli.store import hub
    from ipo_cli.store.entries import load_catalogue

    entry = load_catalogue()["qwen2.5-1.5b"]
    pages = iter([body, b"[]"])
    monkeypatch.setattr(hub, "hub_open", lambda url, headers=None, timeout=60, deadline=None: Answer(next(pages, b"[]"), link))
    holds(lambda: hub.remote_files(entry))
