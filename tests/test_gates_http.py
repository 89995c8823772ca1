"""The HTTP gate (ipo_cli/gates/http.py) against real servers on 127.0.0.1: credentials
stay on their origin across redirects, a POST is never turned into a GET elsewhere,
bodies are capped, keys are checked and never shown, secrets are scrubbed."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ipo_cli.errors import IpoError, NetworkError
from ipo_cli.gates import http
from ipo_cli.llm.base import SamplingSettings
from ipo_cli.llm.openai_http import OpenAIServerLLM

KEY = "sk-gate-0123456789abcdef"


class Recorder:
    """A server that records every request (path, method, Authorization) and answers with
    `route(handler) -> (status, headers, body)`."""

    def __init__(self, route):
        self.seen: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.seen.append({"path": self.path, "method": self.command, "auth": self.headers.get("Authorization"),
                                   "body": body})
                status, headers, payload = route(self)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    made = []

    def make(route):
        server = Recorder(route)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def ok(body: dict | bytes = b"{}"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return lambda h: (200, {"Content-Type": "application/json"}, data)


def redirect(to: str, code: int = 302):
    return lambda h: (code, {"Location": to + h.path}, b"")


def test_credentials_are_dropped_on_a_redirect_to_another_origin(servers):
    other = servers(ok({"fine": True}))
    first = servers(redirect(other.url))
    status, body = http.request(first.url + "/v1/models", auth={"Authorization": f"Bearer {KEY}"})
    assert status == 200 and json.loads(body) == {"fine": True}
    assert first.seen[0]["auth"] == f"Bearer {KEY}"
    assert other.seen[0]["auth"] is None  # the other host never sees the key


def test_credentials_are_kept_on_a_redirect_within_the_origin(servers):
    def route(h):
        if h.path == "/old":
            return 301, {"Location": "/new"}, b""
        return 200, {}, b'"here"'

    server = servers(route)
    status, body = http.request(server.url + "/old", auth={"Authorization": "Bearer same"})
    assert (status, body) == (200, b'"here"')
    assert [s["auth"] for s in server.seen] == ["Bearer same", "Bearer same"]


def test_a_port_change_is_another_origin(servers):
    other = servers(ok())
    first = servers(redirect(other.url.replace("127.0.0.1", "localhost")))
    http.request(first.url + "/x", auth={"Authorization": "Bearer k"})
    assert other.seen[0]["auth"] is None


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_post_is_never_resent_to_another_host(servers, code):
    other = servers(ok({"choices": []}))
    first = servers(redirect(other.url, code))
    with pytest.raises(IpoError, match=f"redirected a POST request to another host .*HTTP {code}"):
        http.request(first.url + "/v1/chat/completions", "POST", b"{}", auth={"Authorization": "Bearer k"})
    assert other.seen == []  # neither as a POST nor as a GET


def test_a_post_follows_a_307_within_the_origin_with_its_body(servers):
    def route(h):
        if h.path == "/a":
            return 307, {"Location": "/b"}, b""
        return 200, {}, b"{}"

    server = servers(route)
    http.request(server.url + "/a", "POST", b'{"x": 1}', auth={"Authorization": "Bearer k"})
    assert [(s["method"], s["body"], s["auth"]) for s in server.seen] == [
        ("POST", b'{"x": 1}', "Bearer k"), ("POST", b'{"x": 1}', "Bearer k")]


def test_redirect_loops_end(servers):
    server = servers(lambda h: (302, {"Location": h.path + "x"}, b""))
    with pytest.raises(IpoError, match=f"more than {http.MAX_REDIRECTS} times"):
        http.request(server.url + "/loop")


def test_a_body_over_the_cap_is_refused_not_read_whole(servers):
    server = servers(ok(b"x" * 300_000))
    with pytest.raises(IpoError, match="over the limit of 0 MiB"):
        http.request(server.url + "/big", max_bytes=100_000)
    assert http.request(server.url + "/big", max_bytes=400_000)[1] == b"x" * 300_000


def test_http_errors_come_back_with_a_capped_body(servers):
    server = servers(lambda h: (500, {}, b"e" * (http.MAX_ERROR_BYTES * 2)))
    status, body = http.request(server.url + "/x")
    assert status == 500 and len(body) == http.MAX_ERROR_BYTES


def test_a_refused_connection_is_a_network_error_that_callers_may_retry():
    with pytest.raises(http.RetryableNetworkError) as info:
        http.request("http://127.0.0.1:9/x", timeout=5)
    # one line naming the server and what was wrong; a ConnectionError, so retrying callers still retry
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, NetworkError)
    assert "http://127.0.0.1:9" in str(info.value) and "connection refused" in str(info.value)


@pytest.mark.parametrize("key, what", [
    ("sk-abc\ndef", "whitespace or a line break"), ("sk-abc def", "whitespace"), ("sk-\u00e9t\u00e9", "non-ASCII"),
    ("sk-\x01x", "control character"), ("", "empty"),
])
def test_bad_keys_are_refused_without_being_shown(key, what):
    with pytest.raises(IpoError) as info:
        http.check_key(key, "IPO_API_KEY")
    assert what in str(info.value) and "IPO_API_KEY" in str(info.value)
    if key:
        assert key not in str(info.value)


def test_url_credentials_become_basic_auth_and_leave_the_url():
    clean, auth = http.split_credentials("http://alice:s3cr%40t-pw@127.0.0.1:8080/v1", "--llm-url")
    assert clean == "http://127.0.0.1:8080/v1"
    import base64

    assert base64.b64decode(auth["Authorization"].split()[1]) == b"alice:s3cr@t-pw"
    assert "s3cr@t-pw" not in http.scrub("the password is s3cr@t-pw")
    assert http.split_credentials("http://127.0.0.1/v1", "x") == ("http://127.0.0.1/v1", {})


@pytest.mark.parametrize("text, secret", [
    (f"echo: Bearer {KEY}", KEY), ("key sk-proj-abcdefghijkl", "abcdefghijkl"),
    ("token hf_abcdefghijklmnop", "abcdefghijklmnop"), ("at http://bob:hunter2@host/x", "hunter2"),
])
def test_scrub_removes_every_secret_shape(text, secret):
    assert secret not in http.scrub(text)


def test_a_server_that_redirects_chat_to_another_host_gets_nothing(servers):
    """The whole client: /v1/models and /chat/completions both 302 to another host."""
    other = servers(ok({"object": "list", "data": [{"id": "m", "owned_by": "system"}],
                        "choices": [{"message": {"content": "<INS>x <CLASS></INS>"}}]}))
    first = servers(redirect(other.url))
    client = OpenAIServerLLM(first.url + "/v1", "m", retries=0, api_key=KEY)
    with pytest.raises(IpoError) as info:
        client.generate([{"role": "user", "content": "hi"}], 1, SamplingSettings())
    assert "redirected a POST request to another host" in str(info.value)
    assert KEY not in str(info.value)
    assert all(s["auth"] is None for s in other.seen) and all(s["method"] == "GET" for s in other.seen)


def test_a_key_echoed_in_a_non_json_answer_is_not_shown(servers):
    server = servers(lambda h: (200, {}, f"<html>you sent Bearer {KEY}</html>".encode()))
    client = OpenAIServerLLM(server.url + "/v1", "m", retries=0, api_key=KEY)
    client.kind = "openai-compatible"
    with pytest.raises(IpoError, match="not JSON") as info:
        client.generate([{"role": "user", "content": "hi"}], 1, SamplingSettings())
    assert KEY not in str(info.value) and KEY[6:] not in str(info.value)


def test_a_deep_answer_is_one_line(servers):
    server = servers(ok(b"[" * 100_000 + b"]" * 100_000))
    client = OpenAIServerLLM(server.url + "/v1", "m", retries=0)
    client.kind = "openai-compatible"
    with pytest.raises(IpoError, match="not JSON.*nests"):
        client.generate([{"role": "user", "content": "hi"}], 1, SamplingSettings())
