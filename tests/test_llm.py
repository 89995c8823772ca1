"""The LLM backends with a real model: SmolLM2-135M in llama.cpp, in process and behind
llama-cpp-python's own OpenAI-compatible server."""

import re
import socket
import subprocess
import sys
import time

import pytest

from ipo_cli.errors import IpoError
from ipo_cli.llm.base import SamplingSettings
from ipo_cli.llm.llama import LlamaCppLLM
from ipo_cli.llm.loading import load_llm
from ipo_cli.llm.openai_http import OpenAIServerLLM
from servers import FakeChatServer

INS_GRAMMAR = r'''root ::= "<INS>" words "<CLASS>" words "</INS>"
words ::= [a-zA-Z ,]{0,40}'''
MESSAGES = [
    {"role": "system", "content": "You write short prompts for an image classifier. " * 20},
    {"role": "user", "content": "Write one prompt for photos of clothes, with <CLASS> where the class name goes."},
]


@pytest.fixture(scope="module")
def llm(smollm):
    return LlamaCppLLM(smollm, n_ctx=2048, n_threads=2)


def test_seeded_calls_repeat_exactly(llm):
    settings = SamplingSettings(temperature=1.0, max_tokens=24)
    a = llm.generate(MESSAGES, seed=7, settings=settings)
    llm.generate(MESSAGES, seed=8, settings=settings)
    b = llm.generate(MESSAGES, seed=7, settings=settings)
    assert a.text == b.text and a.text
    texts = {llm.generate(MESSAGES, seed=s, settings=settings).text for s in range(4)}
    assert len(texts) > 1  # temperature 1: different seeds, different samples


def test_grammar_output_always_parses(llm):
    settings = SamplingSettings(temperature=1.0, max_tokens=120)
    for seed in range(6):
        out = llm.generate(MESSAGES, seed=seed, settings=settings, grammar=INS_GRAMMAR)
        assert re.fullmatch(r"<INS>[a-zA-Z ,]*<CLASS>[a-zA-Z ,]*</INS>", out.text), out.text


def test_usage_counts_reused_prefix(llm):
    settings = SamplingSettings(temperature=0.0, max_tokens=4)
    llm.generate([{"role": "user", "content": "unrelated"}], seed=0, settings=settings)
    first = llm.generate(MESSAGES, seed=0, settings=settings)
    changed = MESSAGES[:1] + [{"role": "user", "content": "Now write one for photos of birds."}]
    second = llm.generate(changed, seed=0, settings=settings)
    assert first.usage.prompt_tokens == llm.count_tokens(MESSAGES)
    assert first.usage.reused_tokens < 10
    # the long system message is shared: most of the second prompt is reused
    assert second.usage.reused_tokens > 0.7 * second.usage.prompt_tokens
    assert second.usage.evaluated_tokens == second.usage.prompt_tokens - second.usage.reused_tokens
    assert second.usage.completion_tokens <= 4 and second.usage.seconds > 0


def test_prompt_longer_than_context_says_by_how_much(llm):
    long = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(IpoError, match=r"more than the context of 2048") as info:
        llm.generate(long, seed=0, settings=SamplingSettings(max_tokens=10))
    n = llm.count_tokens(long)
    assert f"{n + 10 - 2048} more" in str(info.value)


def test_plain_completion_without_chat_template(llm):
    formatter = llm._formatter
    llm._formatter = None
    try:
        prompt, stop = llm.render(MESSAGES)
        assert prompt.endswith("Assistant:") and "User: Write one prompt" in prompt
        out = llm.generate(MESSAGES, seed=1, settings=SamplingSettings(max_tokens=8))
        assert out.usage.prompt_tokens == len(llm.tokenize(prompt))
    finally:
        llm._formatter = formatter


def test_non_gguf_model_file_is_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_text("not a model")
    with pytest.raises(IpoError, match="not a GGUF file"):
        LlamaCppLLM(bad)
    with pytest.raises(IpoError, match="not an http"):
        load_llm(url="127.0.0.1:8080/v1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(smollm):
    """llama-cpp-python's real OpenAI-compatible server, serving SmolLM2 on 127.0.0.1."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--model_alias", "smol"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.3)
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(timeout=10)


def test_http_backend_against_llama_cpp_server(llama_server):
    client = OpenAIServerLLM(llama_server, "smol", timeout=60)
    settings = SamplingSettings(temperature=1.0, max_tokens=100)
    a = client.generate(MESSAGES, seed=3, settings=settings, grammar=INS_GRAMMAR)
    b = client.generate(MESSAGES, seed=3, settings=settings, grammar=INS_GRAMMAR)
    assert re.fullmatch(r"<INS>[a-zA-Z ,]*<CLASS>[a-zA-Z ,]*</INS>", a.text), a.text
    assert a.text == b.text
    assert a.usage.prompt_tokens > 50 and a.usage.completion_tokens > 0


def test_http_errors_are_one_line():
    refused = OpenAIServerLLM("http://127.0.0.1:9/v1", retries=1, backoff=0.01)
    with pytest.raises(IpoError, match="cannot reach the model server .* after 2 tries"):
        refused.generate(MESSAGES, 0, SamplingSettings())
    with FakeChatServer(garbage=True) as server:
        with pytest.raises(IpoError, match="not JSON"):
            OpenAIServerLLM(server.url + "/v1").generate(MESSAGES, 0, SamplingSettings())
