"""A stub OpenAI-compatible server on 127.0.0.1 (a free port) for tests that run the real CLI:
``POST <base_url>/chat/completions`` answered by a rule the test gives, every request kept.

``rule(body) -> str`` gives the assistant's text for a request body; the server wraps it as
``{"choices": [{"message": {"content": text}}]}``. ``requests`` holds ``(body, headers)`` of
every request, in arrival order."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class OpenAIStub:
    def __init__(self, rule: Callable[[dict], str]):
        self.rule = rule
        self.requests: list[tuple[dict, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.stub = self
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> OpenAIStub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        stub: OpenAIStub = self.server.stub
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with stub.lock:
            stub.requests.append((body, dict(self.headers)))
        if self.path.rstrip("/").endswith("/chat/completions"):
            status, payload = 200, {"choices": [{"message": {"content": stub.rule(body)}}]}
        else:
            status, payload = 404, {"error": {"message": f"no route {self.path}"}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass
