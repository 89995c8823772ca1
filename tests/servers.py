"""Real HTTP servers on 127.0.0.1 for the tests: a Hugging Face-like hub and an
OpenAI-compatible chat server, each recording the requests it received."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server:
    def __init__(self, handler_cls):
        self.requests: list[dict] = []
        outer = self

        class Handler(handler_cls):
            server_state = outer

            def log_message(self, *args):  # keep test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeHub(_Server):
    """The Hugging Face hub as huggingface_hub meets it (huggingface_hub/utils/_http.py reads
    the X-Error-Code header): `GET /api/models/REPO/tree/REV` lists files with their size and,
    for LFS files, `lfs.oid` (sha256) and `lfs.size`; `/REPO/resolve/REV/FILE` answers a 302
    to a CDN on another host (a second server here) that serves the bytes with Range. A
    gated repo answers 401 (X-Error-Code: GatedRepo) without `Authorization: Bearer TOKEN`;
    an unknown revision 404 (RevisionNotFound); an unknown repo 401 (RepoNotFound), as the
    hub does for anonymous requests. `drop_after` cuts the first `drops` downloads short.

    The tree listing comes in pages of `page_size` items, each linking the next with a
    `Link: <URL>; rel="next"` header: the hub pages its listings and huggingface_hub's
    `list_repo_tree` follows them through `paginate` (huggingface_hub hf_api.py;
    utils/_pagination.py reads `response.links["next"]["url"]`). The small default makes
    every listing here span pages. A Range that starts at or past the end of a file is
    answered 416 with `Content-Range: bytes */SIZE` (RFC 9110, 14.4 and 15.5.17)."""

    def __init__(self, repo: str | None = None, files: dict[str, bytes] | None = None, revision: str = "main",
                 listed_sha: dict[str, str] | None = None, drop_after: int | None = None, drops: int = 0,
                 gated: bool = False, token: str = "hf_test_token", page_size: int = 2):
        self.repos: dict[str, dict] = {}
        self.token = token
        self.page_size = page_size
        self.drop_after, self.drops = drop_after, drops
        self.cdn_delay = 0.0  # seconds before each download's first byte
        if repo is not None:
            self.add_repo(repo, files or {}, revision, listed_sha, gated)
        self.cdn = _Server(_CdnHandler)
        self.cdn.hub = self
        super().__init__(_HubHandler)

    def add_repo(self, repo: str, files: dict[str, bytes], revision: str = "main",
                 listed_sha: dict[str, str | None] | None = None, gated: bool = False,
                 small_files: dict[str, bytes] | None = None) -> None:
        """`files` are LFS files (listed with their sha256); `small_files` plain git files."""
        self.repos[repo] = {"revision": revision, "files": files, "listed_sha": listed_sha or {}, "gated": gated,
                            "small": small_files if small_files is not None else {"README.md": b"# model card\n"}}

    def __enter__(self):
        self.cdn.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.cdn.__exit__(*exc)


class _HubHandler(BaseHTTPRequestHandler):
    server_state: FakeHub
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        hub = self.server_state
        path = urllib.parse.unquote(self.path.split("?")[0])
        hub.requests.append({"path": self.path, "range": self.headers.get("Range"),
                             "auth": self.headers.get("Authorization"), "host": "hub"})
        for repo, info in hub.repos.items():
            tree = f"/api/models/{repo}/tree/"
            resolve = f"/{repo}/resolve/"
            if path.startswith(tree) or path.startswith(resolve):
                break
        else:
            return self._error(401, "RepoNotFound", "Repository Not Found")
        if info["gated"] and self.headers.get("Authorization") != f"Bearer {hub.token}":
            return self._error(401, "GatedRepo", f"Access to model {repo} is restricted. You must have access "
                                                   "to it and be authenticated to access it. Please log in.")
        if path.startswith(tree):
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            if path[len(tree):] != info["revision"]:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {path[len(tree):]}")
            listing = [{"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name,
                        "lfs": {"oid": info["listed_sha"].get(name, hashlib.sha256(data).hexdigest()),
                                "size": len(data), "pointerSize": 134}}
                       for name, data in info["files"].items()]
            for item in listing:
                if item["lfs"]["oid"] is None:
                    del item["lfs"]
            listing += [{"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name}
                        for name, data in info["small"].items()]
            start = int(query.get("cursor", ["0"])[0])
            page = listing[start:start + hub.page_size]
            link = None
            if start + hub.page_size < len(listing):
                rest = {k: v[0] for k, v in query.items() if k != "cursor"}
                link = f'<{hub.url}{self.path.split("?")[0]}?{urllib.parse.urlencode({**rest, "cursor": start + hub.page_size})}>; rel="next"'
            return self._send(200, json.dumps(page).encode(), "application/json", {"Link": link} if link else None)
        revision, _, name = path[len(resolve):].partition("/")
        if revision != info["revision"]:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if name not in info["files"]:
            return self._error(404, "EntryNotFound", f"{name} does not exist on {revision}")
        # LFS content lives on a CDN: a redirect to another host, as the real hub does
        self.send_response(302)
        self.send_header("Location", f"{hub.cdn.url}/{repo}/{name}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _error(self, code: int, error_code: str, message: str):
        body = json.dumps({"error": message}).encode()
        self.send_response(code)
        self.send_header("X-Error-Code", error_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _CdnHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        cdn = self.server_state
        hub = cdn.hub
        path = urllib.parse.unquote(self.path)
        hub.requests.append({"path": self.path, "range": self.headers.get("Range"),
                             "auth": self.headers.get("Authorization"), "host": "cdn"})
        data = None
        for repo, info in hub.repos.items():
            if path.startswith(f"/{repo}/") and path[len(repo) + 2:] in info["files"]:
                data = info["files"][path[len(repo) + 2:]]
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
        if start >= len(data):  # unsatisfiable: 416 and the size (RFC 9110 15.5.17)
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        time.sleep(hub.cdn_delay)
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if hub.drops > 0 and hub.drop_after is not None:
            hub.drops -= 1
            self.wfile.write(body[: hub.drop_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


class _JsonHandler(BaseHTTPRequestHandler):
    def _json(self, code: int, data: dict):
        body = json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FakeChatServer(_Server):
    """llama.cpp's server (llama-server) as an OpenAI-compatible one: POST
    /v1/chat/completions answers `reply(payload)` (payloads recorded in `requests`); GET
    /v1/models lists the one model it serves, `owned_by` "llamacpp", its `id` the -m path
    unless --alias names it (ggml-org/llama.cpp tools/server/README.md, "GET /v1/models":
    "The returned list always has one single element"); GET /props reports `total_slots`,
    "the total number of slots for process requests (defined by `--parallel` option)" (same
    README, "GET /props"); other GETs are 404 (recorded in `gets`). With garbage=True it
    answers HTML instead of JSON.

    It decodes at most `slots` requests at once (each takes `latency` seconds) and holds the
    rest until a slot frees, as llama-server queues tasks no slot can take; `max_in_flight`
    counts the requests it had received and not yet answered at once. `n` other than 1 is
    refused as llama-server refused it before `n_cmpl` (tools/server/utils.hpp,
    oaicompat_chat_params_parse: "Only one completion choice is allowed", answered as HTTP 500
    {"error": {"code": 500, ..., "type": "server_error"}}); with `n_cmpl=True` it is a newer
    llama-server that takes n up to its slots and refuses more ("n_cmpl cannot be greater than
    the number of slots, please increase -np", tools/server/server-task.cpp)."""

    MODEL_ID = "models/llava-v1.5-7b-Q4_K_M.gguf"

    def __init__(self, reply=None, garbage: bool = False, model_id: str = MODEL_ID, slots: int = 1,
                 latency: float = 0.0, n_cmpl: bool = False, props: bool = True):
        self.reply = reply or (lambda payload: "a grey object with two straps on a white background")
        self.garbage = garbage
        self.model_id = model_id
        self.slots, self.latency, self.n_cmpl, self.props = slots, latency, n_cmpl, props
        self.gets: list[str] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.slot_pool = threading.BoundedSemaphore(slots)
        super().__init__(_ChatHandler)

    @property
    def payloads(self) -> list[dict]:
        return [r["json"] for r in self.requests]


class _ChatHandler(_JsonHandler):
    server_state: FakeChatServer

    def do_GET(self):
        state = self.server_state
        state.gets.append(self.path)
        if self.path == "/v1/models":
            body = json.dumps({"object": "list", "data": [{
                "id": state.model_id, "object": "model", "created": 1735142223, "owned_by": "llamacpp",
                "meta": {"vocab_type": 2, "n_vocab": 32064, "n_ctx_train": 4096, "n_embd": 4096}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        elif self.path == "/props" and state.props:
            body = json.dumps({"default_generation_settings": {"id": 0, "id_task": -1, "n_ctx": 4096},
                               "total_slots": state.slots, "model_path": state.model_id,
                               "chat_template": "...", "build_info": "b1-stand-in"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        else:
            body = b"Not Found"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        state = self.server_state
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        state.requests.append({"path": self.path, "json": payload})
        if state.garbage:
            body = b"<html>not an API</html>"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        n = payload.get("n_cmpl", payload.get("n", 1))
        if n != 1 and not state.n_cmpl:
            return self._json(500, {"error": {"code": 500, "message": "Only one completion choice is allowed",
                                                   "type": "server_error"}})
        if n > state.slots:
            return self._json(500, {"error": {"code": 500, "type": "server_error", "message":
                                                   "n_cmpl cannot be greater than the number of slots, please increase -np"}})
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            with state.slot_pool:  # a slot decodes one request; the others wait for it
                time.sleep(state.latency)
                texts = [state.reply(payload) for _ in range(n)]
        finally:
            with state.lock:
                state.in_flight -= 1
        self._json(200, {
            "id": "x", "object": "chat.completion",
            "choices": [{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                        for i, text in enumerate(texts)],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5 * n},
        })


# ---- OpenAI's API as it really answers ---------------------------------------------------
# The request body fields of POST /v1/chat/completions in OpenAI's API reference
# (platform.openai.com/docs/api-reference/chat/create); anything else is a 400
# "Unrecognized request argument supplied: NAME" (invalid_request_error), as OpenAI answers.
OPENAI_CHAT_FIELDS = {
    "messages", "model", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format", "safety_identifier", "seed",
    "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
    "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
}


# OpenAI's `temperature` is "between 0 and 2" (API reference, chat/create); outside it the
# answer is a 400 invalid_request_error naming the parameter, as recorded from
# api.openai.com in BerriAI/litellm litellm/litellm_core_utils/exception_mapping_utils.py
# (get_error_message): "Invalid 'temperature': decimal above maximum value. Expected a
# value <= 2, but got 200 instead.", code "decimal_above_max_value" (the minimum's wording
# is the same pattern, "decimal_below_min_value").
OPENAI_TEMPERATURE = (0.0, 2.0)
# Prompt caching (platform.openai.com/docs/guides/prompt-caching): only prompts of 1,024
# tokens or more are cached, and cache hits come in increments of 128 tokens beyond that;
# under 1,024 tokens `usage.prompt_tokens_details.cached_tokens` is 0.
OPENAI_CACHE_MIN, OPENAI_CACHE_STEP = 1024, 128


class FakeOpenAI(_Server):
    """An OpenAI-style API: 401 without `Authorization: Bearer KEY` (or with a wrong key), 400
    for any body field OpenAI does not accept or a temperature outside 0-2, 404 for a model
    it does not serve; answers `reply(payload)`, as a JSON object {"prompt": ...} when a
    json_schema response_format was asked for. Usage counts about 4 characters a token;
    `cached_tokens` is the prefix shared with an earlier prompt, from 1,024 tokens and in
    steps of 128, as OpenAI caches. `n` asks for that many choices ("How many chat
    completion choices to generate for each input message", API reference chat/create), one
    usage for the request (the prompt once, the completion tokens of all choices); `reply`
    sees the payload with `choice_index` added when n > 1, as a real server samples each
    choice apart. owned_by="vllm" makes it vLLM's server as ipo tells it apart (its
    /v1/models), which takes `n` and `seed` alike (vllm.SamplingParams)."""

    def __init__(self, key: str = "sk-test-abcdef123456", models=("gpt-4o-mini",), reply=None, latency: float = 0.0,
                 owned_by: str = "system"):
        self.key, self.models, self.latency, self.owned_by = key, list(models), latency, owned_by
        self.reply = reply or (lambda payload: "<INS>A detailed photo of a <CLASS>.</INS>")
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.usage = None  # replaces the usage object of every answer when set
        self.prompts: list[str] = []  # what was sent, for the prompt cache
        super().__init__(_OpenAIHandler)

    def cached_tokens(self, prompt: str) -> int:
        shared = 0
        for earlier in self.prompts:
            n = 0
            for a, b in zip(prompt, earlier):
                if a != b:
                    break
                n += 1
            shared = max(shared, n // 4)
        if len(prompt) // 4 < OPENAI_CACHE_MIN or shared < OPENAI_CACHE_MIN:
            return 0
        return shared // OPENAI_CACHE_STEP * OPENAI_CACHE_STEP

    @property
    def payloads(self) -> list[dict]:
        return [r["json"] for r in self.requests if "json" in r]


class _OpenAIHandler(_JsonHandler):
    server_state: FakeOpenAI

    def _auth_ok(self) -> bool:
        state = self.server_state
        header = self.headers.get("Authorization") or ""
        if header == f"Bearer {state.key}":
            return True
        shown = header.removeprefix("Bearer ")
        message = ("You didn't provide an API key." if not header else
                   f"Incorrect API key provided: {shown[:3]}***{shown[-4:]}. You can find your API key at "
                   "https://platform.openai.com/account/api-keys.")
        self._json(401, {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": "invalid_api_key"}})
        return False

    def do_GET(self):
        state = self.server_state
        state.requests.append({"path": self.path, "auth": self.headers.get("Authorization")})
        if not self._auth_ok():
            return
        if self.path == "/v1/models":
            return self._json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": state.owned_by} for m in state.models]})
        self._json(404, {"error": {"message": f"Invalid URL (GET {self.path})", "type": "invalid_request_error"}})

    def do_POST(self):
        state = self.server_state
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        state.requests.append({"path": self.path, "json": payload, "auth": self.headers.get("Authorization")})
        if not self._auth_ok():
            return
        if self.path != "/v1/chat/completions":
            return self._json(404, {"error": {"message": f"Invalid URL (POST {self.path})"}})
        unknown = sorted(set(payload) - OPENAI_CHAT_FIELDS)
        if unknown:
            return self._json(400, {"error": {"message": f"Unrecognized request argument supplied: {unknown[0]}",
                                              "type": "invalid_request_error", "param": None, "code": None}})
        if payload.get("model") not in state.models:
            return self._json(404, {"error": {"message": f"The model `{payload.get('model')}` does not exist or "
                                                         "you do not have access to it.", "code": "model_not_found"}})
        temperature = payload.get("temperature")
        low, high = OPENAI_TEMPERATURE
        if isinstance(temperature, (int, float)) and not low <= temperature <= high:
            above = temperature > high
            message = (f"Invalid 'temperature': decimal {'above maximum' if above else 'below minimum'} value. "
                       f"Expected a value {'<=' if above else '>='} {high if above else low:g}, but got "
                       f"{temperature:g} instead.")
            return self._json(400, {"error": {"message": message, "type": "invalid_request_error",
                                              "param": "temperature",
                                              "code": "decimal_above_max_value" if above else "decimal_below_min_value"}})
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        n = payload.get("n") or 1  # `n` choices, `index` 0..n-1, for the request's one seed
        try:
            time.sleep(state.latency)
            texts = [state.reply(payload if n == 1 else {**payload, "choice_index": i}) for i in range(n)]
        finally:
            with state.lock:
                state.in_flight -= 1
        fmt = payload.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            texts = [json.dumps({"prompt": t.removeprefix("<INS>").removesuffix("</INS>")}) for t in texts]
        prompt = "".join(m["content"] if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
                         for m in payload["messages"])
        with state.lock:
            cached = state.cached_tokens(prompt)
            state.prompts.append(prompt)
        prompt_tokens, completion_tokens = len(prompt) // 4 + 8, sum(max(1, len(t) // 4) for t in texts)
        self._json(200, {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": payload["model"],
            "choices": [{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": t}}
                        for i, t in enumerate(texts)],
            "usage": state.usage if state.usage is not None else {
                "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": {"cached_tokens": cached}},
        })



# ---- Ollama as it really answers (github.com/ollama/ollama docs/api.md, docs/openai.md) ----
class FakeOllama(_Server):
    """GET /api/version, GET /api/tags, POST /api/show (model_info with
    "<arch>.context_length"), POST /api/chat (options.num_ctx, format = a JSON schema,
    images as base64), GET /v1/models (owned_by "library"), 404 {"error": "model 'x' not
    found"} for an unknown model. A prompt longer than num_ctx (default 2048) is cut to
    its last num_ctx tokens, silently, as Ollama does; `truncated` counts those. /api/chat
    streams unless the request says `"stream": false` (docs/api.md: "`stream`: if `false`
    the response will be returned as a single response object, rather than a stream of
    objects"): one JSON object a line (application/x-ndjson), `done` true on the last."""

    def __init__(self, models=None, reply=None, tokens_per_char: float = 0.25):
        self.models = models or {"qwen2.5:1.5b": 32768}
        self.reply = reply or (lambda payload: '{"prompt": "A close photo of a <CLASS>."}')
        self.tokens_per_char = tokens_per_char
        self.truncated = 0
        super().__init__(_OllamaHandler)

    @property
    def chats(self) -> list[dict]:
        return [r["json"] for r in self.requests if r["path"] == "/api/chat"]


class _OllamaHandler(_JsonHandler):
    server_state: FakeOllama

    def do_GET(self):
        state = self.server_state
        state.requests.append({"path": self.path, "auth": self.headers.get("Authorization")})
        if self.path == "/api/version":
            return self._json(200, {"version": "0.12.6"})
        if self.path == "/api/tags":
            return self._json(200, {"models": [{"name": m, "model": m} for m in state.models]})
        if self.path == "/v1/models":
            return self._json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "library"} for m in state.models]})
        self._json(404, {"error": "404 page not found"})

    def do_POST(self):
        state = self.server_state
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        state.requests.append({"path": self.path, "json": payload, "auth": self.headers.get("Authorization")})
        model = payload.get("model")
        if self.path in ("/api/show", "/api/chat") and model not in state.models:
            return self._json(404, {"error": f"model '{model}' not found"})
        if self.path == "/api/show":
            return self._json(200, {"details": {"family": "qwen2"}, "model_info": {
                "general.architecture": "qwen2", "qwen2.context_length": state.models[model]}})
        if self.path == "/api/chat":
            num_ctx = (payload.get("options") or {}).get("num_ctx") or 2048
            prompt_tokens = int(sum(len(m.get("content", "")) for m in payload["messages"]) * state.tokens_per_char)
            if prompt_tokens > num_ctx:
                state.truncated += 1
                prompt_tokens = num_ctx
            text = state.reply(payload)
            final = {"model": model, "created_at": "2026-11-28T00:00:00Z",
                     "message": {"role": "assistant", "content": text},
                     "done": True, "done_reason": "stop", "prompt_eval_count": prompt_tokens, "eval_count": 12}
            if payload.get("stream", True) is not False:
                pieces = [text[i:i + 8] for i in range(0, len(text), 8)]
                lines = [{"model": model, "created_at": "2026-11-28T00:00:00Z",
                          "message": {"role": "assistant", "content": p}, "done": False} for p in pieces]
                lines.append({**final, "message": {"role": "assistant", "content": ""}})
                body = "".join(json.dumps(line) + "\n" for line in lines).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            return self._json(200, final)
        self._json(404, {"error": "404 page not found"})



class TrickleServer(_Server):
    """Sends its headers, then one byte every `every` seconds: only a total deadline ends it."""

    def __init__(self, every: float = 0.5):
        self.every = every
        super().__init__(_TrickleHandler)


class _TrickleHandler(BaseHTTPRequestHandler):
    server_state: TrickleServer

    def do_GET(self):
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(200):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(self.server_state.every)
        except OSError:
            pass
