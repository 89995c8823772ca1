"""Real HTTP servers on 127.0.0.1 for the tests: a Hugging Face-like hub and an
OpenAI-compatible chat server, each recording the requests it received."""

from __future__ import annotations

import hashlib
import json
import threading
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
    """Serves files the way the hub does: a tree listing with LFS sha256 and size, and
    /resolve/ downloads that honour Range. `drop_after` cuts the first N downloads short."""

    def __init__(self, repo: str, files: dict[str, bytes], revision: str = "main",
                 listed_sha: dict[str, str] | None = None, drop_after: int | None = None, drops: int = 0):
        self.repo, self.files, self.revision = repo, files, revision
        self.listed_sha = listed_sha or {}
        self.drop_after, self.drops = drop_after, drops
        super().__init__(_HubHandler)


class _HubHandler(BaseHTTPRequestHandler):
    server_state: FakeHub
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        hub = self.server_state
        hub.requests.append({"path": self.path, "range": self.headers.get("Range")})
        tree = f"/api/models/{hub.repo}/tree/{hub.revision}"
        resolve = f"/{hub.repo}/resolve/{hub.revision}/"
        if self.path.split("?")[0] == tree:
            listing = [{"type": "file", "path": name, "size": len(data),
                        "lfs": {"oid": hub.listed_sha.get(name, hashlib.sha256(data).hexdigest()), "size": len(data)}}
                       for name, data in hub.files.items()]
            listing.append({"type": "file", "path": "README.md", "size": 10})
            return self._send(200, json.dumps(listing).encode(), "application/json")
        if self.path.startswith(resolve) and self.path[len(resolve):] in hub.files:
            data = hub.files[self.path[len(resolve):]]
            start = 0
            if self.headers.get("Range"):
                start = int(self.headers["Range"].split("=")[1].split("-")[0])
            body = data[start:]
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
            return
        self._send(404, b'{"error": "not found"}', "application/json")

    def _send(self, code: int, body: bytes, ctype: str):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FakeChatServer(_Server):
    """OpenAI-compatible /v1/chat/completions that answers `reply(payload)` and records payloads.
    With garbage=True it answers HTML instead of JSON."""

    def __init__(self, reply=None, garbage: bool = False):
        self.reply = reply or (lambda payload: "a grey object with two straps on a white background")
        self.garbage = garbage
        super().__init__(_ChatHandler)

    @property
    def payloads(self) -> list[dict]:
        return [r["json"] for r in self.requests]


class _ChatHandler(BaseHTTPRequestHandler):
    server_state: FakeChatServer

    def do_POST(self):
        state = self.server_state
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        state.requests.append({"path": self.path, "json": payload})
        if state.garbage:
            body = b"<html>not an API</html>"
        else:
            body = json.dumps({
                "id": "x", "object": "chat.completion",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": state.reply(payload)}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5},
            }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
