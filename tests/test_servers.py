"""ipo against model servers as they really behave: a hosted OpenAI-style API (keys,
strict fields, JSON-schema answers), Ollama (native chat, context size, model names),
llama.cpp's server (GBNF grammar), concurrency, deadlines, and GPU offload arguments."""

import json
import time
from pathlib import Path

import pytest

from conftest import run_ipo
from ipo_cli.errors import IpoError
from ipo_cli.llm.base import SamplingSettings, unwrap_answer
from ipo_cli.llm.loading import load_llm
from ipo_cli.llm.openai_http import OpenAIServerLLM
from servers import FakeChatServer, FakeOllama, FakeOpenAI, TrickleServer

GRAMMAR = 'root ::= "<INS>" [a-z ]* "<CLASS>" [a-z ]* "</INS>"'
MESSAGES = [{"role": "system", "content": "You write prompts."}, {"role": "user", "content": "One prompt, please."}]
KEY = "sk-test-abcdef123456"


def test_openai_gets_the_key_a_json_schema_and_no_grammar(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("IPO_API_KEY", raising=False)
    with FakeOpenAI(key=KEY) as api:
        llm = load_llm(url=api.url + "/v1", url_model="gpt-4o-mini")
        gen = llm.generate(MESSAGES, 7, SamplingSettings(max_tokens=40), grammar=GRAMMAR)
        payload = api.payloads[-1]
    assert gen.text == "<INS>A detailed photo of a <CLASS>.</INS>"
    assert "grammar" not in payload and payload["response_format"]["type"] == "json_schema"
    assert payload["seed"] == 7 and gen.usage.reused_tokens == 0  # OpenAI caches from 1,024 prompt tokens
    assert all(r["auth"] == f"Bearer {KEY}" for r in api.requests)


def test_ipo_api_key_wins_over_openai_api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-000000")
    monkeypatch.setenv("IPO_API_KEY", KEY)
    with FakeOpenAI(key=KEY) as api:
        load_llm(url=api.url + "/v1", url_model="gpt-4o-mini").generate(MESSAGES, 1, SamplingSettings())
    assert {r["auth"] for r in api.requests} == {f"Bearer {KEY}"}


@pytest.mark.parametrize("key", [None, "sk-wrong-key-987654321"])
def test_a_missing_or_wrong_key_is_one_line_without_the_key(monkeypatch, key):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("IPO_API_KEY", raising=False)
    if key:
        monkeypatch.setenv("IPO_API_KEY", key)
    with FakeOpenAI(key=KEY) as api:
        with pytest.raises(IpoError) as info:
            load_llm(url=api.url + "/v1", url_model="gpt-4o-mini")
    message = str(info.value)
    assert "HTTP 401" in message and "IPO_API_KEY" in message
    if key:
        assert key not in message and key[-6:] not in message


def test_the_strict_fake_rejects_what_openai_rejects(monkeypatch):
    """The stand-in itself: an unknown field such as llama.cpp's `grammar` is a 400."""
    monkeypatch.setenv("IPO_API_KEY", KEY)
    with FakeOpenAI(key=KEY) as api:
        client = OpenAIServerLLM(api.url + "/v1", "gpt-4o-mini")
        client.detect()
        with pytest.raises(IpoError, match="Unrecognized request argument supplied: grammar"):
            client.post("/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "grammar": GRAMMAR})


def test_a_model_the_server_lacks_names_the_choices(monkeypatch):
    monkeypatch.setenv("IPO_API_KEY", KEY)
    with FakeOpenAI(key=KEY, models=("gpt-4o-mini", "gpt-4.1")) as api:
        llm = load_llm(url=api.url + "/v1", url_model="gpt-5-nano")
        with pytest.raises(IpoError, match="no model 'gpt-5-nano'.*gpt-4o-mini, gpt-4.1"):
            llm.generate(MESSAGES, 1, SamplingSettings())
        with pytest.raises(IpoError, match="serves 2 models and none was chosen"):
            load_llm(url=api.url + "/v1")


def test_a_url_without_v1_gets_a_hint(monkeypatch):
    monkeypatch.setenv("IPO_API_KEY", KEY)
    with FakeOpenAI(key=KEY) as api:
        with pytest.raises(IpoError, match=r"try --llm-url .*/v1"):
            load_llm(url=api.url, url_model="gpt-4o-mini")


def test_ollama_native_chat_with_model_from_the_list_context_and_schema():
    with FakeOllama(models={"qwen2.5:1.5b": 32768}) as ollama:
        llm = load_llm(url=ollama.url + "/v1")  # no --llm-model: the only one is taken
        assert llm.kind == "ollama" and llm.model == "qwen2.5:1.5b" and llm.n_ctx == 8192
        long = [{"role": "user", "content": "describe " * 2000}]  # about 4,500 tokens: more than 2048
        gen = llm.generate(long, 5, SamplingSettings(max_tokens=40), grammar=GRAMMAR)
        chat = ollama.chats[-1]
    assert gen.text == "<INS>A close photo of a <CLASS>.</INS>"
    assert chat["options"]["num_ctx"] == 8192 and chat["options"]["seed"] == 5
    assert chat["format"]["required"] == ["prompt"] and chat["stream"] is False
    assert ollama.truncated == 0  # Ollama's 2048-token default would have cut this prompt


def test_ollama_refuses_a_prompt_over_the_context_with_numbers():
    with FakeOllama(models={"tiny:1b": 2048}) as ollama:
        llm = load_llm(url=ollama.url + "/v1")
        assert llm.n_ctx == 2048
        with pytest.raises(IpoError, match=r"needs about \d+ tokens.*context of 2048.*model allows 2048"):
            llm.generate([{"role": "user", "content": "word " * 4000}], 1, SamplingSettings())
    assert ollama.truncated == 0


def test_ollama_unknown_model_and_several_models():
    with FakeOllama(models={"qwen2.5:1.5b": 32768, "llama3.2:3b": 131072}) as ollama:
        with pytest.raises(IpoError, match="no model 'qwen2.5:7b'.*qwen2.5:1.5b, llama3.2:3b"):
            load_llm(url=ollama.url + "/v1", url_model="qwen2.5:7b")
        with pytest.raises(IpoError, match="pass --llm-model"):
            load_llm(url=ollama.url)


def test_ollama_gets_images_as_base64():
    from ipo_cli.llm.captions import ServerVision, CaptionSettings

    with FakeOllama(models={"llava:7b": 4096}, reply=lambda p: "a grey shape") as ollama:
        vision = ServerVision(ollama.url + "/v1")
        text = vision.describe("data:image/jpeg;base64,QUJD", CaptionSettings())
        message = ollama.chats[-1]["messages"][0]
    assert text == "a grey shape" and message["images"] == ["QUJD"] and "Describe" in message["content"]
    assert "format" not in ollama.chats[-1]


def test_a_trickling_server_hits_the_total_deadline():
    with TrickleServer(every=0.3) as server:
        client = OpenAIServerLLM(server.url + "/v1", "m", timeout=1.5, retries=0)
        client.kind = "openai-compatible"
        start = time.monotonic()
        with pytest.raises(IpoError, match=r"after 1 tries \(deadline 2 s each\)"):
            client.generate(MESSAGES, 1, SamplingSettings())
    assert time.monotonic() - start < 5


def test_unwrap_answer():
    assert unwrap_answer('{"prompt": "a <CLASS> photo"}') == "<INS>a <CLASS> photo</INS>"
    assert unwrap_answer('{"prompt": "<INS>x <CLASS></INS>"}') == "<INS>x <CLASS></INS>"
    assert unwrap_answer("plain text") == "plain text"
    assert unwrap_answer('{"other": 1}') == '{"other": 1}'


def test_llama_objects_get_n_gpu_layers(monkeypatch, smollm):
    """The arguments ipo passes to llama_cpp.Llama (a GPU build is not available here)."""
    import llama_cpp

    from ipo_cli.llm import placement as hardware
    from ipo_cli.llm.llama import LlamaCppLLM

    seen = []
    real = llama_cpp.Llama

    def spy(*args, **kwargs):
        seen.append(kwargs.get("n_gpu_layers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(llama_cpp, "Llama", spy)
    LlamaCppLLM(smollm, n_ctx=512, gpu_layers=0)
    LlamaCppLLM(smollm, n_ctx=512, gpu_layers=7)
    hardware.llama_gpu_offload.cache_clear()
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    LlamaCppLLM(smollm, n_ctx=512)  # default with a GPU build: all layers
    hardware.llama_gpu_offload.cache_clear()
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)
    LlamaCppLLM(smollm, n_ctx=512)  # default with a CPU build: none
    hardware.llama_gpu_offload.cache_clear()
    assert seen == [0, 7, -1, 0]
    with pytest.raises(IpoError, match="--gpu-layers"):
        hardware.resolve_gpu_layers(-2)


def test_machine_defaults_and_the_cpu_only_build_warning(monkeypatch):
    from ipo_cli.store import entries
    from ipo_cli.llm import placement as hardware

    monkeypatch.setattr(hardware, "llama_backend", lambda: "CPU")
    monkeypatch.setattr(hardware, "torch_gpu", lambda: hardware.TorchGPU("CUDA", "NVIDIA H100", 80 * 1024**3))
    found = hardware.machine()
    assert found.kind == "cpu" and 'CMAKE_ARGS="-DGGML_CUDA=on"' in found.warning
    monkeypatch.setattr(hardware, "llama_backend", lambda: "CUDA")
    found = hardware.machine()
    assert found.kind == "gpu" and found.warning is None
    assert entries.default_model("llm", found.kind).name == "qwen2.5-7b"
    monkeypatch.setattr(hardware, "torch_gpu", lambda: hardware.TorchGPU("CUDA", "small", 4 * 1024**3))
    assert hardware.machine().kind == "cpu"
    monkeypatch.setattr(hardware, "llama_backend", lambda: "Metal")
    monkeypatch.setattr(hardware, "torch_gpu", lambda: hardware.TorchGPU("Metal"))
    assert hardware.machine().kind == "gpu"


# ---- the whole command against servers ----------------------------------------------
@pytest.fixture
def clip_args(tiny_config, tiny_checkpoint):
    return ["--clip", tiny_config, "--clip-weights", tiny_checkpoint]


def _optimize(fashion_train, out, url, clip, *extra, env=None):
    return run_ipo("optimize", fashion_train, "--classes", fashion_train / "classes.txt", "--shots", "1",
                   "--steps", "2", "--candidates", "5", "--lmm", "none", "--llm-url", url,
                   *clip, "--out", out, "--json", *extra, env=env)


def test_llama_server_slots_take_a_step_concurrently_and_equal_a_sequential_run(tmp_path, fashion_train, clip_args):
    """llama-server: one request per candidate, as many at once as its /props `total_slots`
    (--parallel 1: one after another); the answers are the same either way."""
    replies = lambda payload: f"<INS>a photo number {payload['seed'] % 997} of a <CLASS>.</INS>"  # noqa: E731
    runs = {}
    for parallel in ("1", None):
        with FakeChatServer(reply=replies, slots=5, latency=0.3) as server:
            out = tmp_path / f"run-{parallel}"
            extra = ("--parallel", parallel) if parallel else ()
            result = _optimize(fashion_train, out, server.url + "/v1", clip_args, *extra,
                               env={"IPO_CACHE_DIR": str(tmp_path / f"cache-{parallel}")})
            assert result.returncode == 0, result.stderr
            assert all("n" not in p for p in server.payloads)  # llama-server refused n != 1 (before n_cmpl)
            runs[parallel] = (server.max_in_flight, [json.loads(line) for line in (out / "history.jsonl").open()])
    assert runs["1"][0] == 1 and runs[None][0] == 5
    strip = lambda recs: [{k: v for k, v in r.items() if k not in ("seconds", "usage")} for r in recs]  # noqa: E731
    assert strip(runs["1"][1]) == strip(runs[None][1])


@pytest.mark.parametrize(("slots", "parallel", "props", "expected"), [
    (5, None, True, 5), (2, None, True, 2), (5, 1, True, 1), (5, 3, True, 3), (2, None, False, 2)])
def test_llama_server_in_flight_follows_its_slots_unless_told(slots, parallel, props, expected):
    """The default is the slots /props reports; without /props (llama-cpp-python's server)
    all N are sent and the server's own queue holds what its slots cannot take."""
    seeds = [11, 12, 13, 14, 15]
    with FakeChatServer(reply=lambda p: f"answer {p['seed']}", slots=slots, latency=0.3, props=props) as server:
        llm = load_llm(url=server.url + "/v1")
        llm.parallel = parallel
        gens = llm.generate_many(MESSAGES, seeds, SamplingSettings(max_tokens=20), grammar=GRAMMAR)
    assert llm.slots == (slots if props else None) and not llm.batched_for(5)
    assert [g.text for g in gens] == [f"answer {s}" for s in seeds] and [g.seed for g in gens] == seeds
    assert sorted(p["seed"] for p in server.payloads) == seeds and all(p["grammar"] == GRAMMAR for p in server.payloads)
    # without /props nothing caps ipo's side: 5 go out, and the server's 2 slots hold 2 of them at a time
    assert server.max_in_flight == (expected if props else 5)


def test_the_llama_stand_in_refuses_n_as_llama_server_does():
    import urllib.error
    import urllib.request

    def ask(server, n):
        body = json.dumps({"model": "m", "messages": MESSAGES, "n": n}).encode()
        request = urllib.request.Request(server.url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    with FakeChatServer(slots=2) as old, FakeChatServer(slots=2, n_cmpl=True) as new:
        assert ask(old, 2) == (500, {"error": {"code": 500, "message": "Only one completion choice is allowed",
                                               "type": "server_error"}})
        assert ask(old, 1)[0] == 200
        status, answer = ask(new, 2)
        assert status == 200 and [c["index"] for c in answer["choices"]] == [0, 1]
        status, answer = ask(new, 3)
        assert status == 500 and "n_cmpl cannot be greater than the number of slots" in answer["error"]["message"]


@pytest.mark.parametrize("owned_by", ["system", "vllm"])
def test_openai_and_vllm_get_a_step_in_one_request_with_n(monkeypatch, owned_by):
    """OpenAI and vLLM take `n`: the 5 candidates are one request, under the first seed; the
    choices come back in index order; the prompt is counted once."""
    monkeypatch.setenv("IPO_API_KEY", KEY)
    seeds = [21, 22, 23, 24, 25]
    reply = lambda p: f"<INS>choice {p.get('choice_index', 0)} of seed {p['seed']} for a <CLASS>.</INS>"  # noqa: E731
    with FakeOpenAI(key=KEY, reply=reply, owned_by=owned_by) as api:
        llm = load_llm(url=api.url + "/v1", url_model="gpt-4o-mini")
        gens = llm.generate_many(MESSAGES, seeds, SamplingSettings(max_tokens=40), grammar=GRAMMAR)
        payloads = [p for p in api.payloads if "messages" in p]
    assert llm.kind == ("openai" if owned_by == "system" else "vllm") and llm.batched_for(5) and not llm.batched_for(1)
    assert len(payloads) == 1 and payloads[0]["n"] == 5 and payloads[0]["seed"] == 21
    assert payloads[0]["response_format"]["type"] == "json_schema"
    assert [g.text for g in gens] == [f"<INS>choice {i} of seed 21 for a <CLASS>.</INS>" for i in range(5)]
    assert [g.seed for g in gens] == seeds
    assert gens[0].usage.prompt_tokens > 0 and all(g.usage.prompt_tokens == 0 for g in gens[1:])
    assert sum(g.usage.completion_tokens for g in gens) > 0


def test_a_server_that_ignores_n_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("IPO_API_KEY", KEY)
    with FakeOpenAI(key=KEY) as api:
        llm = load_llm(url=api.url + "/v1", url_model="gpt-4o-mini")
        monkeypatch.setattr(llm, "post", lambda path, payload, base=None: {"choices": [
            {"index": 0, "message": {"content": "<INS>a <CLASS>.</INS>"}}]})
        with pytest.raises(IpoError, match="answered 1 choices for n=5"):
            llm.generate_many(MESSAGES, [1, 2, 3, 4, 5], SamplingSettings())


def test_an_openai_run_asks_each_step_in_one_request(tmp_path, fashion_train, clip_args):
    """The whole command against the OpenAI stand-in: a step of 5 candidates is one request
    with n=5, whatever --parallel says (it caps requests in flight, and a step is one)."""
    reply = lambda p: f"<INS>a photo {p.get('choice_index', 0)} {p['seed'] % 997} of a <CLASS>.</INS>"  # noqa: E731
    with FakeOpenAI(key=KEY, reply=reply, latency=0.1) as api:
        out = tmp_path / "run"
        result = _optimize(fashion_train, out, api.url + "/v1", clip_args, "--llm-model", "gpt-4o-mini",
                           env={"IPO_API_KEY": KEY})
        assert result.returncode == 0, result.stderr
        chats = [p for p in api.payloads if "messages" in p]
    records = [json.loads(line) for line in (out / "history.jsonl").open()]
    candidates = [r for r in records if r.get("type") == "candidate" and r["step"] > 0]  # step 0: the start template
    assert len(chats) == 2 and all(p["n"] == 5 for p in chats) and api.max_in_flight == 1
    assert len(candidates) == 10 and len({r["raw"] for r in candidates}) == 10


def test_ollama_gets_one_request_per_candidate_all_at_once():
    """Ollama has no `n` and does not report OLLAMA_NUM_PARALLEL: the N requests go together
    and Ollama queues what its slots cannot take."""
    seeds = [31, 32, 33]
    with FakeOllama(reply=lambda p: f'{{"prompt": "seed {p["options"]["seed"]} <CLASS>"}}') as ollama:
        llm = load_llm(url=ollama.url)
        gens = llm.generate_many(MESSAGES, seeds, SamplingSettings(max_tokens=20), grammar=GRAMMAR)
    assert llm.kind == "ollama" and llm.in_flight(3) == 3 and not llm.batched_for(3)
    assert [g.text for g in gens] == [f"<INS>seed {s} <CLASS></INS>" for s in seeds]
    assert sorted(c["options"]["seed"] for c in ollama.chats) == seeds and all("n" not in c for c in ollama.chats)


def test_the_api_key_never_lands_on_disk_or_in_output(tmp_path, fashion_train, clip_args):
    with FakeOpenAI(key=KEY) as api:
        out = tmp_path / "run"
        result = _optimize(fashion_train, out, api.url + "/v1", clip_args,
                           "--llm-model", "gpt-4o-mini", env={"IPO_API_KEY": KEY})
    assert result.returncode == 0, result.stderr
    assert KEY not in result.stdout + result.stderr
    for folder in (out, Path(run_ipo("cache", "info", "--json").stdout and json.loads(
            run_ipo("cache", "info", "--json").stdout)["root"])):
        for path in folder.rglob("*"):
            if path.is_file():
                assert KEY.encode() not in path.read_bytes(), path


def test_wrong_key_in_the_whole_command_is_one_line(tmp_path, fashion_train, clip_args):
    with FakeOpenAI(key=KEY) as api:
        result = _optimize(fashion_train, tmp_path / "run", api.url + "/v1", clip_args,
                           "--llm-model", "gpt-4o-mini", env={"IPO_API_KEY": "sk-not-the-right-one"})
    assert result.returncode == 2 and "HTTP 401" in result.stderr and "sk-not-the-right-one" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_plan_names_the_defaults_for_the_machine_and_why(monkeypatch):
    from ipo_cli.llm import placement as hardware
    from ipo_cli.optimize.plan import model_plan
    from ipo_cli.optimize.request import Request

    monkeypatch.setattr(hardware, "machine", lambda: hardware.Machine("gpu", "CUDA", "llama.cpp offloads to CUDA"))
    monkeypatch.setattr(hardware, "where", lambda layers: "CUDA (all layers)")
    plan = model_plan(Request(images="x"), use_lmm=True, gpu_layers=None)
    assert (plan["llm"], plan["lmm"]) == ("qwen2.5-7b", "qwen2.5-vl-3b")
    assert plan["llm_where"] == "CUDA (all layers)" and "gpu machine" in plan["llm_why"]
    monkeypatch.setattr(hardware, "machine", lambda: hardware.Machine("cpu", "CPU", "no GPU offload", "warning!"))
    monkeypatch.setattr(hardware, "where", lambda layers: "CPU")
    plan = model_plan(Request(images="x"), use_lmm=True, gpu_layers=None)
    assert (plan["llm"], plan["lmm"], plan["warning"]) == ("qwen2.5-1.5b", "smolvlm-500m", "warning!")
    plan = model_plan(Request(images="x", llm_url="http://h/v1", lmm="none"), use_lmm=False, gpu_layers=None)
    assert plan["llm_where"] == "server" and "machine" not in plan


# ---- the stand-ins behave as the services do --------------------------------------------
def test_openai_caches_only_long_prefixes_and_reports_them(monkeypatch):
    """OpenAI reports cached tokens from 1,024 prompt tokens, in steps of 128; ipo reads
    them as the reused part of the prompt."""
    monkeypatch.setenv("IPO_API_KEY", KEY)
    shared = "You write prompts for a photo classifier. " * 120  # about 1,300 tokens
    with FakeOpenAI(key=KEY) as api:
        llm = load_llm(url=api.url + "/v1", url_model="gpt-4o-mini")
        first = llm.generate([{"role": "system", "content": shared}, {"role": "user", "content": "one"}], 1,
                             SamplingSettings())
        second = llm.generate([{"role": "system", "content": shared}, {"role": "user", "content": "two"}], 2,
                              SamplingSettings())
        short = llm.generate(MESSAGES, 3, SamplingSettings())
        again = llm.generate(MESSAGES, 4, SamplingSettings())
    assert first.usage.reused_tokens == 0 and first.usage.prompt_tokens > 1024
    assert second.usage.reused_tokens >= 1024 and second.usage.reused_tokens % 128 == 0
    assert second.usage.reused_tokens <= second.usage.prompt_tokens
    assert short.usage.reused_tokens == again.usage.reused_tokens == 0  # under 1,024 tokens: never cached


@pytest.mark.parametrize("temperature, word", [(2.5, "above maximum"), (-0.5, "below minimum")])
def test_openai_refuses_a_temperature_outside_0_to_2_in_one_line(monkeypatch, temperature, word):
    """ipo allows --temperature up to 5 (llama.cpp takes it); OpenAI answers 400 naming the
    parameter, and ipo passes that on as one line."""
    monkeypatch.setenv("IPO_API_KEY", KEY)
    with FakeOpenAI(key=KEY) as api:
        llm = load_llm(url=api.url + "/v1", url_model="gpt-4o-mini")
        llm.generate(MESSAGES, 1, SamplingSettings(temperature=2.0))  # the edge is allowed
        with pytest.raises(IpoError, match=f"HTTP 400 Invalid 'temperature': decimal {word} value") as info:
            llm.generate(MESSAGES, 1, SamplingSettings(temperature=temperature))
    assert "\n" not in str(info.value)


def test_ollama_streams_unless_told_not_to():
    """Ollama's /api/chat streams NDJSON by default; ipo always sends "stream": false."""
    import urllib.request

    with FakeOllama(models={"qwen2.5:1.5b": 32768}, reply=lambda p: "a long answer in several pieces") as ollama:
        body = json.dumps({"model": "qwen2.5:1.5b", "messages": MESSAGES}).encode()
        with urllib.request.urlopen(urllib.request.Request(ollama.url + "/api/chat", data=body)) as response:
            kind, lines = response.headers["Content-Type"], response.read().decode().splitlines()
        llm = load_llm(url=ollama.url + "/v1")
        text = llm.generate(MESSAGES, 1, SamplingSettings()).text
    chunks = [json.loads(line) for line in lines]
    assert kind == "application/x-ndjson" and len(chunks) > 2 and chunks[-1]["done"] is True
    assert "".join(c["message"]["content"] for c in chunks) == text == "a long answer in several pieces"
    assert ollama.chats[-1]["stream"] is False


def test_every_openai_style_stand_in_lists_its_models():
    """GET /v1/models is part of every OpenAI-compatible server; ipo takes the one model a
    llama.cpp server lists instead of a made-up name."""

    with FakeChatServer() as chat, FakeOpenAI(key=KEY) as api, FakeOllama() as ollama:
        import urllib.request

        for url, headers in ((chat.url, {}), (api.url, {"Authorization": f"Bearer {KEY}"}), (ollama.url, {})):
            with urllib.request.urlopen(urllib.request.Request(url + "/v1/models", headers=headers)) as response:
                listed = json.loads(response.read())
            assert listed["object"] == "list" and listed["data"][0]["id"], url
        server = OpenAIServerLLM(chat.url + "/v1")
        assert server.detect() == "llama.cpp" and server.model == FakeChatServer.MODEL_ID
