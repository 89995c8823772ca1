"""HTTP: the one client for the model hub and for model servers (OpenAI-compatible,
llama.cpp, Ollama, an LMM server).

- Redirects are followed by hand, at most `MAX_REDIRECTS`. Credentials (the Authorization
  header) go only to the origin (scheme, host, port) the user named; a hop to another
  origin goes without them, as `requests` does (psf/requests, requests/sessions.py,
  `SessionRedirectMixin.rebuild_auth` / `should_strip_auth`: the header is dropped when the
  host changes). urllib alone re-sends every header to wherever it is sent.
- A POST is never turned into a GET: only a 307/308 to the same origin is followed (the
  method and body are kept); any other redirect of a POST is a one-line error. (urllib and
  browsers turn a redirected POST into a GET, so a run would "succeed" on another host's
  answer.)
- Bodies are read up to a cap (`MAX_ANSWER_BYTES`) under a total deadline; downloads are
  streamed by the caller.
- A key is checked before it is put in a header (printable ASCII, no whitespace), and the
  error never shows it.
- `user:password@` in a URL becomes Basic auth and is removed from the URL that is kept,
  stored or printed; the password joins the secrets.
- `scrub` removes every secret in play (keys, tokens, URL passwords) from a message that
  could hold server text.
"""

from __future__ import annotations

import base64
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from ipo_cli.errors import IpoError

MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a JSON answer (a chat completion, a model list, a file list)
MAX_ERROR_BYTES = 64 * 1024  # the body of an HTTP error: only read for its message
MAX_REDIRECTS = 5
REDIRECT_CODES = (301, 302, 303, 307, 308)

_SECRETS: set[str] = set()


def add_secret(secret: str | None) -> None:
    """Remember a secret for `scrub` (kept in memory only, for this process)."""
    if secret and len(secret) >= 4:
        _SECRETS.add(secret)
        quoted = urllib.parse.quote(secret, safe="")
        if quoted != secret:
            _SECRETS.add(quoted)


_PATTERNS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{4,}"), r"\1 ***"),
    (re.compile(r"\b(sk-[A-Za-z0-9_\-*]{3})[A-Za-z0-9_\-*]+"), r"\1***"),  # OpenAI-style keys
    (re.compile(r"\b(hf_)[A-Za-z0-9]{6,}"), r"\1***"),  # Hugging Face tokens
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^/\s@]*@"), r"\1***@"),  # URL passwords
)


def scrub(text: object) -> str:
    """`text` with every known secret and anything shaped like a key, a token or a URL
    password replaced by ***."""
    out = str(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        out = out.replace(secret, "***")
    for pattern, replacement in _PATTERNS:
        out = pattern.sub(replacement, out)
    return out


def check_key(key: str, name: str) -> str:
    """The key as it may be sent in a header: printable ASCII without whitespace. The
    error says what is wrong and where, never the key itself."""
    for index, char in enumerate(key):
        if not ("\x21" <= char <= "\x7e"):
            what = "whitespace or a line break" if char.isspace() else (
                "a control character" if ord(char) < 0x20 or ord(char) == 0x7f else "a non-ASCII character")
            raise IpoError(f"{name} holds {what} at position {index + 1} of {len(key)}, which cannot be sent "
                           "in an HTTP header", f"set {name} to the key alone, without spaces or line breaks")
    if not key:
        raise IpoError(f"{name} is set but empty", f"set {name} to the key, or unset it")
    add_secret(key)
    return key


def split_credentials(url: str, flag: str) -> tuple[str, dict[str, str]]:
    """(the URL without `user:password@`, the Basic auth header it asked for, or {}).
    The clean URL is the only one kept, stored or printed."""
    try:
        parts = urllib.parse.urlsplit(url)
        username, password = parts.username, parts.password
        host = parts.hostname or ""
        port = parts.port
    except ValueError as exc:
        raise IpoError(f"{flag} is not a valid URL: {scrub(exc)}", "for example http://127.0.0.1:8080/v1") from None
    if username is None and password is None:
        return url, {}
    user = urllib.parse.unquote(username or "")
    secret = urllib.parse.unquote(password or "")
    add_secret(password)
    add_secret(secret)
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    clean = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    token = base64.b64encode(f"{user}:{secret}".encode("utf-8")).decode("ascii")
    add_secret(token)
    return clean, {"Authorization": f"Basic {token}"}


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def same_origin(a: str, b: str) -> bool:
    return origin(a) == origin(b)


def _shown(url: str) -> str:
    scheme, host, port = origin(url)
    return scrub(f"{scheme}://{host}:{port}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects come back as HTTPError; `open` decides what to follow."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def open_url(url: str, method: str = "GET", data: bytes | None = None, headers: Mapping[str, str] | None = None,
             auth: Mapping[str, str] | None = None, timeout: float = 30) -> Any:
    """An open response for `url` after the redirects this gate allows. `auth` (headers
    that carry credentials) goes only to `url`'s own origin. HTTP errors (4xx, 5xx) raise
    urllib's HTTPError as usual; a refused redirect is an IpoError."""
    current = url
    method = method.upper()
    for _hop in range(MAX_REDIRECTS + 1):
        sent = dict(headers or {})
        if auth and same_origin(current, url):
            sent.update(auth)
        request = urllib.request.Request(current, data=data, headers=sent, method=method)
        try:
            return _opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            location = exc.headers.get("Location") if exc.headers else None
            if exc.code not in REDIRECT_CODES or not location:
                raise
            exc.close()
            target = urllib.parse.urljoin(current, location)
            if urllib.parse.urlsplit(target).scheme.lower() not in ("http", "https"):
                raise IpoError(f"{_shown(current)} redirected to a non-HTTP address; ipo does not follow it") from None
            if method not in ("GET", "HEAD") and not (exc.code in (307, 308) and same_origin(target, url)):
                where = "another host" if not same_origin(target, url) else "the same host"
                raise IpoError(f"{_shown(current)} redirected a {method} request to {where} ({_shown(target)}, "
                               f"HTTP {exc.code}); ipo does not resend it there",
                               "point the URL at the server's final address") from None
            current = target
    raise IpoError(f"{_shown(url)} redirected more than {MAX_REDIRECTS} times", "check the URL")


def read_capped(response: Any, max_bytes: int = MAX_ANSWER_BYTES, deadline: float | None = None,
                what: str = "the answer") -> bytes:
    """At most `max_bytes` of a response's body, under a total deadline (a server that
    trickles bytes cannot hold ipo longer); more is a one-line error."""
    chunks: list[bytes] = []
    size = 0
    read = getattr(response, "read1", None) or response.read
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError("no complete answer before the deadline")
        chunk = read(1 << 16)
        if not chunk:
            break
        size += len(chunk)
        if size > max_bytes:
            url = getattr(response, "url", None) or getattr(response, "geturl", lambda: "")()
            raise IpoError(f"{what} of {_shown(url) if url else 'the server'} is over the limit of "
                           f"{max_bytes // 2**20} MiB; ipo stopped reading it",
                           "is the URL that of a model server?")
        chunks.append(chunk)
    return b"".join(chunks)


def request(url: str, method: str = "GET", data: bytes | None = None, headers: Mapping[str, str] | None = None,
            auth: Mapping[str, str] | None = None, timeout: float = 30, deadline: float | None = None,
            max_bytes: int = MAX_ANSWER_BYTES) -> tuple[int, bytes]:
    """One exchange: (status, body), HTTP errors included (their body capped at
    `MAX_ERROR_BYTES`). Network errors raise as urllib raises them."""
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        timeout = min(timeout, left)
    try:
        response = open_url(url, method, data, headers, auth, timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                return exc.code, exc.read(MAX_ERROR_BYTES)
            except (OSError, ValueError):
                return exc.code, b""
    with response:
        return response.status, read_capped(response, max_bytes, deadline)
