"""Any OpenAI-compatible chat server: llama.cpp's (or llama-cpp-python's), vLLM, Ollama,
LM Studio, or a hosted OpenAI-style API; what the server is decides what is sent.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
from collections.abc import Sequence
from typing import Any

from ipo_cli.errors import IpoError
from ipo_cli.gates import http, json_in
from ipo_cli.llm.base import ANSWER_SCHEMA, Generation, Message, SamplingSettings, Usage, unwrap_answer, usage_count
from ipo_cli.llm.ollama import ollama_chat, ollama_context

API_KEY_ENV = ("IPO_API_KEY", "OPENAI_API_KEY")


def api_key_from_env() -> str | None:
    """The key in IPO_API_KEY, else OPENAI_API_KEY, checked by the HTTP gate before any
    use (printable ASCII, no whitespace inside; the error never shows it)."""
    for name in API_KEY_ENV:
        value = os.environ.get(name, "").strip()
        if value:
            return http.check_key(value, name)
    return None


class OpenAIServerLLM:
    """A chat server: llama.cpp's (or llama-cpp-python's), vLLM, Ollama, a hosted
    OpenAI-style API, or any OpenAI-compatible one.

    What the server is decides what is sent (`detect`): llama.cpp servers get the GBNF
    grammar; OpenAI and vLLM get a JSON schema through `response_format`; Ollama is spoken
    to through its native /api/chat, which takes the schema as `format` and the context
    size as `options.num_ctx` (its OpenAI endpoint cannot set the context, and Ollama
    silently cuts prompts that do not fit); anything else gets plain text. Every answer is
    validated by the caller either way. The API key (IPO_API_KEY, else OPENAI_API_KEY) is
    sent as a Bearer token and kept out of identities, errors and files.
    """

    parallel: int | None = None  # most requests of a step in flight (--parallel; None: what the server says)

    def __init__(self, base_url: str, model: str | None = None, timeout: float = 120, retries: int = 3,
                 backoff: float = 1.0, n_ctx: int | None = None, api_key: str | None = None):
        # user:password@ in the URL becomes Basic auth; only the clean URL is kept (gates/http.py)
        clean, self._auth = http.split_credentials(base_url.rstrip("/"), "the server URL")
        self.base_url = clean.rstrip("/")
        self.requested_model = model
        self.model = model or "default"
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.n_ctx = n_ctx
        self._key = http.check_key(api_key, "the API key") if api_key is not None else api_key_from_env()
        if self._key:
            self._auth = {"Authorization": f"Bearer {self._key}"}
        self.kind: str | None = None  # llama.cpp | vllm | ollama | openai | openai-compatible
        self.context_length: int | None = None  # the model's own limit, where the server says it
        self.slots: int | None = None  # requests the server decodes at once, where it says (llama.cpp)
        self.identity = f"{self.base_url}#{self.model}"

    # ---- HTTP -------------------------------------------------------------------------
    @property
    def root(self) -> str:
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url

    def _scrub(self, text: str) -> str:
        return http.scrub(text)  # every secret in play: the key, URL passwords, token shapes

    def _request(self, url: str, payload: dict | None, deadline: float) -> tuple[int, bytes]:
        """One HTTP exchange through the HTTP gate (gates/http.py) under a total deadline (a
        server that trickles bytes cannot hold it longer); returns (status, body), HTTP
        errors included. The credentials go to this server's origin only; a redirected POST
        is refused; the body is capped."""
        headers = {"Content-Type": "application/json", "User-Agent": "ipo-cli"}
        data = json.dumps(payload).encode() if payload is not None else None
        return http.request(url, "POST" if data else "GET", data, headers, auth=self._auth, timeout=30.0,
                            deadline=deadline)

    def _get_json(self, url: str) -> tuple[int, Any]:
        try:
            status, body = self._request(url, None, time.monotonic() + min(self.timeout, 15))
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, ValueError):
            return 0, None
        try:
            return status, json_in.loads(body, f"the answer of {url}") if body else None
        except IpoError:
            return 0, None

    def post(self, path: str, payload: dict, base: str | None = None) -> dict:
        url = f"{base or self.base_url}{path}"
        last: Exception | str | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status, raw = self._request(url, payload, time.monotonic() + self.timeout)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last = getattr(exc, "reason", exc)
                continue
            if status >= 500 or status == 429:
                last = f"HTTP {status}"
                continue
            if status >= 400:
                raise self._refusal(url, status, raw)
            try:
                data = json_in.object_at(json_in.loads(raw, f"the answer of {url}"), f"the answer of {url}")
                return data
            except IpoError as exc:
                reason = exc.message.removeprefix(f"the answer of {url} ")
                raise IpoError(f"the server at {url} answered something that is not JSON: "
                               f"{http.scrub(repr(raw[:80]))} ({http.scrub(reason)})",
                               "is --llm-url the /v1 address of an OpenAI-compatible server?") from None
        if isinstance(last, str) and last.startswith("HTTP "):  # it answered: it is running, and failing
            raise IpoError(f"the model server at {url} answered {last} to each of {self.retries + 1} tries",
                           "see the server's own log; it is reachable but fails on this request") from None
        raise IpoError(f"cannot reach the model server at {url} after {self.retries + 1} tries "
                       f"(deadline {self.timeout:.0f} s each): {self._scrub(str(last))}",
                       "start the server or check --llm-url") from None

    def _refusal(self, url: str, status: int, raw: bytes) -> IpoError:
        detail = ""
        try:
            body = json_in.loads(raw, f"the answer of {url}")
            error = body.get("error") if isinstance(body, dict) else None
            detail = error.get("message", "") if isinstance(error, dict) else str(error or "")
        except (IpoError, AttributeError):
            detail = raw[:200].decode("utf-8", "replace")
        detail = self._scrub(" ".join(detail.split()))[:200]
        if status in (401, 403):
            named = "the API key in " + ("IPO_API_KEY" if os.environ.get("IPO_API_KEY") else "OPENAI_API_KEY") \
                if self._key else "no API key"
            return IpoError(f"the server at {self.base_url} refused {named} (HTTP {status})",
                            "set IPO_API_KEY (or OPENAI_API_KEY) to a valid key for this server")
        if status == 404 and not self.base_url.endswith("/v1") and self.kind != "ollama":
            return IpoError(f"the server at {url} answered HTTP 404",
                            f"OpenAI-compatible servers live under /v1: try --llm-url {self.base_url}/v1")
        if status == 404 and "model" in detail.lower():
            return IpoError(f"the server has no model {self.model!r}: {detail}", self._choices_hint())
        return IpoError(f"the server at {url} refused the request: HTTP {status} {detail}".rstrip())

    def _choices_hint(self) -> str:
        names = self.list_models()
        return f"choose one with --llm-model: {', '.join(names[:8])}" if names else "check --llm-model"

    # ---- what the server is -----------------------------------------------------------
    def list_models(self) -> list[str]:
        status, data = self._get_json(f"{self.base_url}/models")
        if status == 200 and isinstance(data, dict) and isinstance(data.get("data"), list):
            return [m["id"] for m in data["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
        return []

    def detect(self) -> str:
        """Find out once what the server is, which model to use and how long its context is."""
        if self.kind is not None:
            return self.kind
        status, data = self._get_json(f"{self.base_url}/models")
        if status in (401, 403):
            raise self._refusal(f"{self.base_url}/models", status, b"")
        listed = data.get("data") if status == 200 and isinstance(data, dict) else None
        listed = [m for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)] if isinstance(listed, list) else []
        owners = {str(m.get("owned_by", "")) for m in listed}
        ollama_status, version = self._get_json(f"{self.root}/api/version")
        if ollama_status == 200 and isinstance(version, dict) and "version" in version:
            kind = "ollama"  # Ollama answers /api/version (docs/api.md)
        elif owners & {"llamacpp", "me"}:
            kind = "llama.cpp"  # llama-server lists owned_by "llamacpp"; llama-cpp-python's server "me"
        elif "vllm" in owners:
            kind = "vllm"
        elif urllib.parse.urlsplit(self.base_url).hostname == "api.openai.com" or (
                owners and owners <= {"openai", "system", "openai-internal"}):
            kind = "openai"  # OpenAI's /v1/models lists owned_by "openai", "system", "openai-internal"
        else:
            kind = "openai-compatible"
        if status == 404 and kind != "ollama" and not self.base_url.endswith("/v1"):
            raise IpoError(f"the server at {self.base_url} answered HTTP 404 for /models",
                           f"OpenAI-compatible servers live under /v1: try --llm-url {self.base_url}/v1")
        names = [m["id"] for m in listed]
        if kind == "ollama" and not names:  # the native list, for a URL without /v1
            _, tags = self._get_json(f"{self.root}/api/tags")
            models = tags.get("models") if isinstance(tags, dict) else None
            names = [m["name"] for m in models if isinstance(m, dict) and isinstance(m.get("name"), str)] \
                if isinstance(models, list) else []
        if self.requested_model is None:
            if len(names) == 1:
                self.model = names[0]
            elif len(names) > 1 and kind != "llama.cpp":
                raise IpoError(f"the server at {self.base_url} serves {len(names)} models and none was chosen",
                               f"pass --llm-model (or --lmm-model) with one of: {', '.join(names[:8])}")
        elif names and self.requested_model not in names and kind in ("ollama", "vllm"):
            raise IpoError(f"the server at {self.base_url} has no model {self.requested_model!r}",
                           f"choose one of: {', '.join(names[:8])}")
        self.kind = kind
        self.identity = f"{self.base_url}#{self.model}"
        if kind == "ollama":
            ollama_context(self)
        elif kind == "llama.cpp":
            self.slots = self._llama_slots()
        return kind

    def _llama_slots(self) -> int | None:
        """llama-server's GET /props `total_slots`: "the total number of slots for process
        requests (defined by `--parallel` option)" (ggml-org/llama.cpp tools/server/README.md,
        "GET /props"). llama-cpp-python's server has no /props: None."""
        status, props = self._get_json(f"{self.root}/props")
        slots = props.get("total_slots") if status == 200 and isinstance(props, dict) else None
        return slots if isinstance(slots, int) and not isinstance(slots, bool) and 1 <= slots <= 4096 else None

    # ---- generation -------------------------------------------------------------------
    def count_tokens(self, messages: Sequence[Message]) -> int:
        # A server does not tokenise for us; ~4 characters per token is the usual estimate
        # (erring long); an image counts as 800.
        total = 0
        for m in messages:
            content = m["content"]
            if isinstance(content, str):
                total += len(content) // 3
            else:
                total += sum(len(p.get("text", "")) // 3 if p.get("type") == "text" else 800 for p in content)
        return total + 8

    # ---- N answers to one prompt -------------------------------------------------------
    # OpenAI's chat completions take `n`, "How many chat completion choices to generate for
    # each input message", with one `seed` for the request (platform.openai.com/docs/
    # api-reference/chat/create); vLLM's server takes every OpenAI parameter (docs.vllm.ai
    # serving/openai_compatible_server.html) and samples `n` sequences with one seeded
    # generator (vllm.SamplingParams(n, seed), docs.vllm.ai api/inference_params.html).
    # llama.cpp's server refused n != 1 ("Only one completion choice is allowed",
    # tools/server/utils.hpp oaicompat_chat_params_parse) until `n_cmpl` (= n) arrived, and
    # then only up to its slots ("n_cmpl cannot be greater than the number of slots",
    # tools/server/server-task.cpp params_from_json_cmpl); Ollama's /api/chat has no `n` and
    # its OpenAI endpoint lists `n` as unsupported (ollama/ollama docs/openai.md). Those two
    # get one request per candidate, concurrently, into their parallel slots.
    N_KINDS = ("openai", "vllm")

    def batched_for(self, n: int) -> bool:
        """True where a step is one request with `n`: the answers then depend on the
        request's seed (the first of the step's), not each candidate's own."""
        return n > 1 and self.detect() in self.N_KINDS

    def in_flight(self, n: int) -> int:
        """How many requests of a step go at once: --parallel where given, else the slots
        the server reports (llama.cpp's /props `total_slots`), else all N (Ollama does not
        report OLLAMA_NUM_PARALLEL through its API and queues what its slots cannot take,
        ollama/ollama docs/faq.md)."""
        if self.parallel is not None:
            return max(1, min(self.parallel, n))
        return max(1, min(self.slots or n, n))

    def generate_many(self, messages: Sequence[Message], seeds: Sequence[int], settings: SamplingSettings,
                      grammar: str | None = None) -> list[Generation]:
        """The answers of one step in the order of `seeds`: one request with `n` where the
        server takes it (OpenAI, vLLM), else one request per seed with up to `in_flight`
        of them at once, whatever order they finish in."""
        kind = self.detect()
        if len(seeds) > 1 and kind in self.N_KINDS:
            return self._generate_n(messages, list(seeds), settings, grammar)
        workers = self.in_flight(len(seeds))
        if workers < 2:
            return [self.generate(messages, seed, settings, grammar) for seed in seeds]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda seed: self.generate(messages, seed, settings, grammar), seeds))

    def _generate_n(self, messages: Sequence[Message], seeds: list[int], settings: SamplingSettings,
                    grammar: str | None) -> list[Generation]:
        """One request for all of `seeds`: `n` choices under the first seed. The request's
        usage is shared out: its prompt tokens on the first answer (the prompt was read once),
        completion tokens and seconds in equal parts (the API does not count them per choice)."""
        start = time.perf_counter()
        payload, structured = self._payload(messages, seeds[0], settings, grammar)
        payload["n"] = len(seeds)
        data = self.post("/chat/completions", payload)
        choices = data.get("choices")
        if not isinstance(choices, list) or len(choices) != len(seeds):
            got = len(choices) if isinstance(choices, list) else 0
            raise IpoError(f"the server at {self.base_url} answered {got} choices for n={len(seeds)}",
                           "the server does not honour `n`; ask one candidate at a time with --candidates 1")
        by_index = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        prompt, cached, completion = self._usage(data)
        seconds = (time.perf_counter() - start) / len(seeds)
        gens = []
        for i, (seed, choice) in enumerate(zip(seeds, by_index)):
            text, finish = self._choice(choice, data, structured, i)
            share = completion // len(seeds) + (1 if i < completion % len(seeds) else 0)
            gens.append(Generation(text, seed, finish, Usage(prompt if i == 0 else 0, cached if i == 0 else 0,
                                                             share, seconds)))
        return gens

    # ---- one answer ---------------------------------------------------------------------
    def _payload(self, messages: Sequence[Message], seed: int, settings: SamplingSettings,
                 grammar: str | None) -> tuple[dict[str, Any], bool]:
        """The chat-completions body for this server, and whether the answer comes back as a
        JSON-schema object ({"prompt": ...}) to unwrap."""
        payload: dict[str, Any] = {
            "model": self.model, "messages": list(messages), "temperature": settings.temperature,
            "top_p": settings.top_p, "max_tokens": settings.max_tokens, "seed": seed,
        }
        if settings.stop:
            payload["stop"] = list(settings.stop)
        structured = False
        if grammar and self.kind == "llama.cpp":
            payload["grammar"] = grammar  # GBNF: llama.cpp's server and llama-cpp-python's
        elif grammar and self.kind in ("openai", "vllm"):
            # OpenAI structured outputs; vLLM accepts the same field
            payload["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "prompt", "schema": ANSWER_SCHEMA, "strict": True}}
            structured = True
        return payload, structured

    def _choice(self, choice: Any, data: dict, structured: bool, index: int = 0) -> tuple[str, str]:
        try:
            text = choice["message"]["content"] or ""
            if not isinstance(text, str):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise IpoError(f"the server at {self.base_url} answered without choices[{index}].message.content: "
                           f"{self._scrub(json.dumps(data)[:120])}") from None
        finish = choice.get("finish_reason") or "stop"
        return (unwrap_answer(text) if structured else text), str(finish)

    @staticmethod
    def _usage(data: dict) -> tuple[int, int, int]:
        raw_usage = found if isinstance(found := data.get("usage"), dict) else {}
        details = found if isinstance(found := raw_usage.get("prompt_tokens_details"), dict) else {}
        return (usage_count(raw_usage.get("prompt_tokens")), usage_count(details.get("cached_tokens")),
                usage_count(raw_usage.get("completion_tokens")))

    def generate(self, messages: Sequence[Message], seed: int, settings: SamplingSettings,
                 grammar: str | None = None) -> Generation:
        kind = self.detect()
        start = time.perf_counter()
        if kind == "ollama":
            text, finish, usage = ollama_chat(self, messages, seed, settings, structured=grammar is not None)
        else:
            payload, structured = self._payload(messages, seed, settings, grammar)
            data = self.post("/chat/completions", payload)
            choices = data.get("choices")
            first = choices[0] if isinstance(choices, list) and choices else None
            text, finish = self._choice(first, data, structured)
            usage = Usage(*self._usage(data), 0.0)
        usage.seconds = time.perf_counter() - start
        return Generation(text, seed, str(finish), usage)


def check_url(url: str, flag: str) -> None:
    """An http(s) URL without credentials: a `user:password@` part is refused (the URL is
    kept in the run's config.json and in messages; the password must be in neither), and
    the error shows the URL with the password hidden."""
    shown = http.scrub(url)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise IpoError(f"{flag} {shown!r} is not a valid URL: {http.scrub(exc)}",
                       "for example http://127.0.0.1:8080/v1") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise IpoError(f"{flag} {shown!r} is not an http(s) URL", "for example http://127.0.0.1:8080/v1")
    if parts.username is not None or parts.password is not None:
        http.split_credentials(url, flag)  # remembers the password as a secret, for scrubbing
        raise IpoError(f"{flag} {http.scrub(url)!r} holds a user name or password; ipo does not take "
                       "credentials in URLs (the URL is written to the run's files)",
                       "pass the URL without them and put the server's key in IPO_API_KEY")
