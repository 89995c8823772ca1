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
- Every exchange has a total deadline besides urllib's per-read timeout: one watchdog
  thread shuts the socket down when it passes, so a server that trickles its status line,
  its headers or its body one byte at a time (each read well within the timeout) cannot
  hold ipo longer (`_Watchdog`).
- One mapping for transport failures (`transport_error`): whatever `http.client` raises
  (every `http.client.HTTPException`: BadStatusLine for a port that answers something
  other than HTTP, LineTooLong past its 65,536-byte line limit, "got more than 100
  headers", IncompleteRead for a cut body or a bad chunk size; CPython Lib/http/client.py,
  `_MAXLINE`, `_MAXHEADERS`, `_read_status`, `_read_next_chunk_size`) and every OSError
  (refused, reset, timed out, TLS) becomes a `NetworkError` naming the server and what was
  wrong. Those that may pass on a second try (an OSError, a cut body) are also
  `ConnectionError`s (`RetryableNetworkError`), so a caller that retries connection
  errors still does; a server that does not speak HTTP is not retried.
- `probe` checks once, at the start of a command, that a server answers HTTP at all,
  before any model is loaded.
- A key is checked before it is put in a header (printable ASCII, no whitespace), and the
  error never shows it.
- `user:password@` in a URL becomes Basic auth and is removed from the URL that is kept,
  stored or printed; the password joins the secrets.
- `scrub` removes every secret in play (keys, tokens, URL passwords) from a message that
  could hold server text.
"""

from __future__ import annotations

import base64
import functools
import heapq
import http.client
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Mapping
from typing import Any

from ipo_cli.errors import IpoError, NetworkError

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


class NetworkFailure(NetworkError):
    """A server could not be reached or did not answer HTTP; one line naming it. `what`
    is the failure alone ("nothing listens there"), for a caller that words its own line."""

    def __init__(self, message: str, hint: str | None = None, what: str | None = None):
        super().__init__(message, hint)
        self.what = what or message


class TooLarge(NetworkError):
    """An answer over the cap it was read against (`read_capped`)."""


class RetryableNetworkError(NetworkFailure, ConnectionError):
    """A failure that may pass on a second try (refused, reset, timed out, a cut body):
    also a ConnectionError, so the callers that retry those still do."""


def _quoted(raw: object, limit: int = 60) -> str:
    from ipo_cli.gates.text import terminal_safe

    text = raw.decode("iso-8859-1") if isinstance(raw, (bytes, bytearray)) else str(raw)
    text = text.strip()
    return repr(terminal_safe(scrub(text[:limit]), newlines=False) + ("..." if len(text) > limit else ""))


def describe_failure(exc: BaseException) -> tuple[str, bool]:
    """(what went wrong, in words; whether a second try may pass) for what `http.client`,
    urllib or the socket raised."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError) \
            and isinstance(exc.reason, BaseException):
        return describe_failure(exc.reason)
    if isinstance(exc, http.client.RemoteDisconnected):
        return "it closed the connection without an answer", True
    if isinstance(exc, http.client.BadStatusLine):
        line = exc.args[0] if exc.args else ""
        if not str(line).strip():
            return "it answered an empty status line, not HTTP", False
        return f"it does not speak HTTP: it answered {_quoted(line)}", False
    if isinstance(exc, http.client.LineTooLong):
        return f"it does not speak HTTP as ipo reads it: {exc}", False
    if isinstance(exc, http.client.IncompleteRead):
        if not exc.partial and exc.expected is None:
            return "its answer broke off (a cut connection, or a bad chunk size in a chunked answer)", True
        more = f", {exc.expected} more announced" if isinstance(exc.expected, int) else ""
        return f"its answer broke off after {len(exc.partial)} bytes{more}", True
    if isinstance(exc, http.client.HTTPException):
        detail = str(exc) or type(exc).__name__
        return f"it does not speak HTTP as ipo reads it: {_quoted(detail, 120)}", False
    if isinstance(exc, (TimeoutError, socket.timeout)):
        if str(exc) == "deadline passed":
            return "no complete answer within the deadline", True
        return "no answer within the read timeout", True
    if isinstance(exc, ConnectionRefusedError):
        return "nothing listens there (connection refused)", True
    if isinstance(exc, ConnectionResetError):
        return "it reset the connection", True
    if isinstance(exc, socket.gaierror):
        return f"the host name does not resolve ({exc.strerror or exc})", True
    if isinstance(exc, OSError):
        return scrub(exc.strerror or exc), True
    return scrub(exc), False


def transport_error(url: str, exc: BaseException, hint: str | None = None) -> NetworkFailure:
    """The one mapping: what a transport failure at `url` becomes (see the module doc)."""
    if isinstance(exc, NetworkFailure):
        return exc
    what, retry = describe_failure(exc)
    kind = RetryableNetworkError if retry else NetworkFailure
    return kind(f"{_shown(url)}: {what}", hint or "check the URL and that the server there is running", what)


class _Watchdog:
    """One daemon thread that shuts a socket down when its exchange's total deadline
    passes. Entries hold the socket weakly: one closed or collected meanwhile is skipped."""

    def __init__(self):
        self._heap: list[tuple[float, int, Any]] = []
        self._cond = threading.Condition()
        self._count = 0
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, deadline: float) -> None:
        with self._cond:
            self._count += 1
            heapq.heappush(self._heap, (deadline, self._count, weakref.ref(sock)))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ipo-http-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, ref = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            sock = ref()
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # closed already


_WATCHDOG = _Watchdog()


class _Deadline:
    """A connection whose socket the watchdog shuts at `deadline` (a total time for the whole
    exchange, headers included, besides the per-read timeout)."""

    sock: Any

    def __init__(self, *args: Any, deadline: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)  # the connection class after this mixin
        self.deadline = deadline

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        if self.deadline is not None and self.sock is not None:
            _WATCHDOG.watch(self.sock, self.deadline)


class _DeadlineConnection(_Deadline, http.client.HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_Deadline, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(functools.partial(_DeadlineConnection, deadline=getattr(req, "deadline", None)), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(functools.partial(_DeadlineHTTPSConnection, deadline=getattr(req, "deadline", None)),
                            req, context=self._context)  # type: ignore[attr-defined]  # set by HTTPSHandler.__init__


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects come back as HTTPError; `open` decides what to follow."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(_NoRedirect, _HTTPHandler, _HTTPSHandler)
DEFAULT_DEADLINE = 120.0  # an exchange that names none: a JSON answer, a page of a listing


def open_url(url: str, method: str = "GET", data: bytes | None = None, headers: Mapping[str, str] | None = None,
             auth: Mapping[str, str] | None = None, timeout: float = 30, deadline: float | None = None) -> Any:
    """An open response for `url` after the redirects this gate allows. `auth` (headers
    that carry credentials) goes only to `url`'s own origin. HTTP errors (4xx, 5xx) raise
    urllib's HTTPError as usual; a refused redirect is an IpoError; a transport failure is
    a NetworkFailure (`transport_error`). The connection is shut at `deadline` (a
    `time.monotonic()` time; `DEFAULT_DEADLINE` seconds from now when None), whatever is
    being read then."""
    if deadline is None:
        deadline = time.monotonic() + DEFAULT_DEADLINE
    current = url
    method = method.upper()
    for _hop in range(MAX_REDIRECTS + 1):
        sent = dict(headers or {})
        if auth and same_origin(current, url):
            sent.update(auth)
        request = urllib.request.Request(current, data=data, headers=sent, method=method)
        request.deadline = deadline  # type: ignore[attr-defined]  # read by _HTTPHandler / _HTTPSHandler
        left = deadline - time.monotonic()
        if left <= 0:
            raise transport_error(current, TimeoutError("deadline passed"))
        try:
            return _opener.open(request, timeout=min(timeout, left))
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
        except (http.client.HTTPException, OSError) as exc:
            failure = transport_error(current, exc)
            if time.monotonic() >= deadline and isinstance(failure, RetryableNetworkError):
                failure = RetryableNetworkError(f"{_shown(current)}: no complete answer within the deadline",
                                                failure.hint, "no complete answer within the deadline")
            raise failure from None
    raise IpoError(f"{_shown(url)} redirected more than {MAX_REDIRECTS} times", "check the URL")


def read_some(response: Any, size: int, deadline: float | None = None) -> bytes:
    """Up to `size` bytes of a body (b"" at its end), under the exchange's deadline; a
    transport failure is a NetworkFailure (`transport_error`)."""
    url = getattr(response, "url", None) or ""
    if deadline is not None and time.monotonic() > deadline:
        raise RetryableNetworkError(f"{_shown(url) if url else 'the server'}: no complete answer within the "
                                    "deadline", None, "no complete answer within the deadline")
    try:
        return response.read(size)
    except (http.client.HTTPException, OSError) as exc:
        late = deadline is not None and time.monotonic() >= deadline
        raise transport_error(url, TimeoutError("deadline passed") if late else exc) from None


def read_capped(response: Any, max_bytes: int = MAX_ANSWER_BYTES, deadline: float | None = None,
                what: str = "the answer") -> bytes:
    """At most `max_bytes` of a response's body, under a total deadline (a server that
    trickles bytes cannot hold ipo longer); more is a one-line error."""
    chunks: list[bytes] = []
    size = 0
    read = getattr(response, "read1", None) or response.read
    url = getattr(response, "url", None) or ""
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise RetryableNetworkError(f"{_shown(url) if url else 'the server'}: no complete answer within "
                                        "the deadline", "is the server overloaded, or not a model server?",
                                        "no complete answer within the deadline")
        try:
            chunk = read(1 << 16)
        except (http.client.HTTPException, OSError) as exc:
            late = deadline is not None and time.monotonic() >= deadline
            raise transport_error(url, TimeoutError("deadline passed") if late else exc) from None
        if not chunk:
            # http.client's read1 returns b"" when the connection ends early, even short of
            # Content-Length (its `length` is then what is missing): a cut answer, or the
            # watchdog's shutdown at the deadline
            if deadline is not None and time.monotonic() >= deadline:
                raise transport_error(url, TimeoutError("deadline passed"))
            missing = getattr(response, "length", None)
            if isinstance(missing, int) and missing > 0:
                raise transport_error(url, http.client.IncompleteRead(b"".join(chunks), missing))
            break
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"{what} of {_shown(url) if url else 'the server'} is over the limit of "
                           f"{max_bytes // 2**20} MiB; ipo stopped reading it",
                           "is the URL that of a model server?")
        chunks.append(chunk)
    return b"".join(chunks)


def request(url: str, method: str = "GET", data: bytes | None = None, headers: Mapping[str, str] | None = None,
            auth: Mapping[str, str] | None = None, timeout: float = 30, deadline: float | None = None,
            max_bytes: int = MAX_ANSWER_BYTES) -> tuple[int, bytes]:
    """One exchange: (status, body), HTTP errors included (their body capped at
    `MAX_ERROR_BYTES`). A transport failure is a NetworkFailure (`transport_error`);
    those worth a second try are ConnectionErrors too."""
    if deadline is None:
        deadline = time.monotonic() + DEFAULT_DEADLINE
    if deadline - time.monotonic() <= 0:
        raise transport_error(url, TimeoutError("deadline passed"))
    try:
        response = open_url(url, method, data, headers, auth, timeout, deadline)
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                return exc.code, exc.read(MAX_ERROR_BYTES)
            except (OSError, ValueError, http.client.HTTPException):
                return exc.code, b""
    with response:
        return response.status, read_capped(response, max_bytes, deadline)


def probe(url: str, flag: str, timeout: float = 10.0) -> None:
    """Check once, before any model is loaded, that a server answers HTTP at `url`: a
    status line and headers, whatever the status (the caller finds out the rest); a port
    that does not speak HTTP, or where nothing listens, is a one-line NetworkFailure
    naming `flag`. Nothing of the body is read."""
    clean, auth = split_credentials(url, flag)
    try:
        with open_url(clean, headers={"User-Agent": "ipo-cli"}, auth=auth, timeout=timeout,
                      deadline=time.monotonic() + timeout):
            pass
    except urllib.error.HTTPError as exc:
        exc.close()  # an HTTP status: it speaks HTTP
    except NetworkFailure as exc:
        raise type(exc)(f"{flag} {exc.message}", f"check {flag}: is a model server running there?", exc.what) from None
