"""Language-model backends behind one small interface.

`LlamaCppLLM` runs a GGUF model in process (llama-cpp-python); `OpenAIServerLLM` talks to
any OpenAI-compatible server (llama.cpp's server, vLLM, Ollama, LM Studio). Both take chat
messages and return `Generation`s with usage: how many prompt tokens were evaluated and
how many were reused from the prefix already in the model's context. The optimizer keeps
the unchanging part of its meta-prompt first so that this reuse is large.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from ipo_cli.errors import IpoError

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass
class Usage:
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose evaluation was kept from the previous call
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def evaluated_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens

    def to_json(self) -> dict:
        return {**asdict(self), "evaluated_tokens": self.evaluated_tokens}


@dataclass
class Generation:
    text: str
    seed: int
    finish_reason: str
    usage: Usage


@dataclass
class SamplingSettings:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()


class LLM(Protocol):
    identity: str
    n_ctx: int | None

    def generate(self, messages: Sequence[Message], seed: int, settings: SamplingSettings,
                 grammar: str | None = None) -> Generation: ...

    def count_tokens(self, messages: Sequence[Message]) -> int: ...


def context_error(prompt_tokens: int, max_tokens: int, n_ctx: int) -> IpoError:
    over = prompt_tokens + max_tokens - n_ctx
    return IpoError(
        f"the prompt is {prompt_tokens} tokens; with {max_tokens} new tokens it needs "
        f"{prompt_tokens + max_tokens}, {over} more than the context of {n_ctx}",
        "shorten the prompt or raise the context size (--n-ctx)",
    )


def resolve_gpu_layers(gpu_layers: int | None) -> int:
    """--gpu-layers: None means every layer when llama.cpp was built with GPU offload, else 0;
    -1 is llama.cpp's own "all layers"."""
    if gpu_layers is not None:
        if gpu_layers < -1:
            raise IpoError(f"--gpu-layers must be -1 (all), 0 (CPU) or a positive count, not {gpu_layers}")
        return gpu_layers
    from ipo_cli.llm.placement import llama_gpu_offload

    return -1 if llama_gpu_offload() else 0


class LlamaCppLLM:
    """A GGUF model loaded once into llama.cpp."""

    supports_parallel = False  # one model, one context: candidates run one after another

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
        try:
            self.llama = Llama(str(model_path), n_ctx=n_ctx, n_threads=n_threads, verbose=verbose,
                               n_gpu_layers=resolve_gpu_layers(gpu_layers))
        except (ValueError, RuntimeError) as exc:
            raise IpoError(f"llama.cpp could not load {model_path}: {exc}", "is it a complete GGUF file?") from None
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
            self._formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)

    @property
    def has_chat_template(self) -> bool:
        return self._formatter is not None

    def render(self, messages: Sequence[Message]) -> tuple[str, list[str]]:
        """The exact prompt text the model sees, and the template's stop strings."""
        if self._formatter is not None:
            result = self._formatter(messages=list(messages))
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
        out = self.llama.create_completion(
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


API_KEY_ENV = ("IPO_API_KEY", "OPENAI_API_KEY")
# The answer shape for servers with JSON-schema structured output (OpenAI, vLLM, Ollama):
# one prompt string; it is turned back into <INS>...</INS> and validated like any answer.
ANSWER_SCHEMA = {"type": "object", "properties": {"prompt": {"type": "string"}},
                 "required": ["prompt"], "additionalProperties": False}


def api_key_from_env() -> str | None:
    for name in API_KEY_ENV:
        value = os.environ.get(name, "").strip()
        if value:
            return value
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

    supports_parallel = True

    def __init__(self, base_url: str, model: str | None = None, timeout: float = 120, retries: int = 3,
                 backoff: float = 1.0, n_ctx: int | None = None, api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.requested_model = model
        self.model = model or "default"
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.n_ctx = n_ctx
        self._key = api_key if api_key is not None else api_key_from_env()
        self.kind: str | None = None  # llama.cpp | vllm | ollama | openai | openai-compatible
        self.context_length: int | None = None  # the model's own limit, where the server says it
        self.identity = f"{self.base_url}#{self.model}"

    # ---- HTTP -------------------------------------------------------------------------
    @property
    def root(self) -> str:
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url

    def _scrub(self, text: str) -> str:
        if self._key:
            text = text.replace(self._key, "***")
        return re.sub(r"\b(sk-[A-Za-z0-9_\-*]{3})[A-Za-z0-9_\-*]+", r"\1***", text)

    def _request(self, url: str, payload: dict | None, deadline: float) -> tuple[int, bytes]:
        """One HTTP exchange under a total deadline (a server that trickles bytes cannot
        hold it longer); returns (status, body), HTTP errors included."""
        headers = {"Content-Type": "application/json", "User-Agent": "ipo-cli"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        try:
            response = urllib.request.urlopen(request, timeout=min(left, 30.0))
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(2000)
        with response:
            chunks = []
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no complete answer within {self.timeout:.0f} s")
                chunk = response.read1(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            return response.status, b"".join(chunks)

    def _get_json(self, url: str) -> tuple[int, Any]:
        try:
            status, body = self._request(url, None, time.monotonic() + min(self.timeout, 15))
            return status, json.loads(body) if body else None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, json.JSONDecodeError, ValueError):
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
                data = json.loads(raw)
                assert isinstance(data, dict)
                return data
            except (json.JSONDecodeError, AssertionError, UnicodeDecodeError):
                raise IpoError(f"the server at {url} answered something that is not JSON: {raw[:80]!r}",
                               "is --llm-url the /v1 address of an OpenAI-compatible server?") from None
        raise IpoError(f"cannot reach the model server at {url} after {self.retries + 1} tries "
                       f"(deadline {self.timeout:.0f} s each): {self._scrub(str(last))}",
                       "start the server or check --llm-url") from None

    def _refusal(self, url: str, status: int, raw: bytes) -> IpoError:
        detail = ""
        try:
            body = json.loads(raw)
            error = body.get("error") if isinstance(body, dict) else None
            detail = error.get("message", "") if isinstance(error, dict) else str(error or "")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
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
            self._ollama_context()
        return kind

    def _ollama_context(self) -> None:
        """Ollama's model limit from /api/show (model_info "<arch>.context_length", e.g.
        "llama.context_length", as Ollama's API docs and its clients read it); the context
        ipo asks for is --n-ctx, else that limit up to 8192 tokens."""
        try:
            info = self.post("/api/show", {"model": self.model}, base=self.root)
        except IpoError:
            info = {}
        model_info = info.get("model_info") if isinstance(info.get("model_info"), dict) else {}
        limits = [v for k, v in model_info.items() if k.endswith(".context_length") and isinstance(v, int)]
        self.context_length = limits[0] if limits else None
        if self.n_ctx is None:
            self.n_ctx = min(self.context_length or 8192, 8192)
        elif self.context_length and self.n_ctx > self.context_length:
            raise IpoError(f"--n-ctx {self.n_ctx} is more than {self.model!r} supports ({self.context_length} tokens)",
                           f"use --n-ctx {self.context_length} or less")

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

    def generate(self, messages: Sequence[Message], seed: int, settings: SamplingSettings,
                 grammar: str | None = None) -> Generation:
        kind = self.detect()
        start = time.perf_counter()
        if kind == "ollama":
            text, finish, usage = self._ollama_chat(messages, seed, settings, structured=grammar is not None)
        else:
            payload: dict[str, Any] = {
                "model": self.model, "messages": list(messages), "temperature": settings.temperature,
                "top_p": settings.top_p, "max_tokens": settings.max_tokens, "seed": seed,
            }
            if settings.stop:
                payload["stop"] = list(settings.stop)
            structured = False
            if grammar and kind == "llama.cpp":
                payload["grammar"] = grammar  # GBNF: llama.cpp's server and llama-cpp-python's
            elif grammar and kind in ("openai", "vllm"):
                # OpenAI structured outputs; vLLM accepts the same field
                payload["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "prompt", "schema": ANSWER_SCHEMA, "strict": True}}
                structured = True
            data = self.post("/chat/completions", payload)
            try:
                choice = data["choices"][0]
                text = choice["message"]["content"] or ""
                if not isinstance(text, str):
                    raise TypeError
            except (KeyError, IndexError, TypeError):
                raise IpoError(f"the server at {self.base_url} answered without choices[0].message.content: "
                               f"{self._scrub(json.dumps(data)[:120])}") from None
            finish = choice.get("finish_reason") or "stop"
            if structured:
                text = unwrap_answer(text)
            raw_usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
            details = raw_usage.get("prompt_tokens_details") if isinstance(raw_usage.get("prompt_tokens_details"), dict) else {}
            usage = Usage(_int(raw_usage.get("prompt_tokens")), _int(details.get("cached_tokens")),
                          _int(raw_usage.get("completion_tokens")), 0.0)
        usage.seconds = time.perf_counter() - start
        return Generation(text, seed, str(finish), usage)

    def _ollama_chat(self, messages: Sequence[Message], seed: int, settings: SamplingSettings,
                     structured: bool) -> tuple[str, str, Usage]:
        need = self.count_tokens(messages) + settings.max_tokens
        if self.n_ctx and need > self.n_ctx:
            limit = f" (the model allows {self.context_length})" if self.context_length else ""
            raise IpoError(f"the prompt needs about {need} tokens with the answer, more than the context of "
                           f"{self.n_ctx} ipo asks Ollama for{limit}; Ollama would cut it silently",
                           "raise --n-ctx, or show fewer descriptions/history (--history)")
        options: dict[str, Any] = {"seed": seed, "temperature": settings.temperature, "top_p": settings.top_p,
                                   "num_predict": settings.max_tokens, "num_ctx": self.n_ctx}
        if settings.stop:
            options["stop"] = list(settings.stop)
        payload: dict[str, Any] = {"model": self.model, "messages": [_ollama_message(m) for m in messages],
                                   "stream": False, "options": options}
        if structured:
            payload["format"] = ANSWER_SCHEMA  # Ollama structured outputs: a JSON schema in `format`
        data = self.post("/api/chat", payload, base=self.root)
        message = data.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        if not isinstance(text, str):
            raise IpoError(f"Ollama at {self.root} answered without message.content: {json.dumps(data)[:120]}")
        if structured:
            text = unwrap_answer(text)
        finish = "length" if data.get("done_reason") == "length" else "stop"
        return text, finish, Usage(_int(data.get("prompt_eval_count")), 0, _int(data.get("eval_count")), 0.0)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _ollama_message(message: Message) -> dict:
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


def unwrap_answer(text: str) -> str:
    """A JSON-schema answer {"prompt": "..."} as the <INS>...</INS> text the validator reads;
    anything else is passed on as it came, for the validator to judge."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text
    if isinstance(data, dict) and isinstance(data.get("prompt"), str):
        prompt = data["prompt"].strip()
        return prompt if "<INS>" in prompt else f"<INS>{prompt}</INS>"
    return text


def load_llm(model: str | None = None, url: str | None = None, url_model: str | None = None,
             n_ctx: int | None = None, n_threads: int | None = None, gpu_layers: int | None = None,
             machine: str = "cpu") -> LLM:
    """`--llm NAME|FILE` or `--llm-url URL [--llm-model NAME]`."""
    if url:
        check_url(url, "--llm-url")
        server = OpenAIServerLLM(url, url_model, n_ctx=n_ctx)
        server.detect()
        return server
    from ipo_cli.store.entries import default_model
    from ipo_cli.store.local import resolve

    local = resolve(model or default_model("llm", machine).name, "llm")
    return LlamaCppLLM(local.path, n_ctx=n_ctx or local.n_ctx, n_threads=n_threads, identity=local.identity,
                       gpu_layers=gpu_layers)


def check_url(url: str, flag: str) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise IpoError(f"{flag} {url!r} is not a valid URL: {exc}", "for example http://127.0.0.1:8080/v1") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise IpoError(f"{flag} {url!r} is not an http(s) URL", "for example http://127.0.0.1:8080/v1")
