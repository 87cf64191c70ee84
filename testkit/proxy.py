"""A pass-through HTTP proxy on loopback for tests and drives: each call is forwarded to a target unchanged (but the
headers named in ``drop``), its reply relayed, and ``on_call`` told of both, so a caller records what a platform
really sent and what it cost (Label Studio's calls to the backend, CVAT's calls to its dashboard)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from typing import Any

import requests

# (method, path, request headers, request body, the target's reply)
OnCall = Callable[[str, str, Any, bytes, requests.Response], None]


class ForwardingProxy:
    """Listens on 127.0.0.1:``port`` (0: a free port), forwards to ``target`` and calls ``on_call`` before
    relaying each reply; ``before`` (optional) as each call arrives. Both run in the call's own request thread."""

    def __init__(
        self,
        target: str,
        on_call: OnCall,
        port: int = 0,
        drop: tuple[str, ...] = ("host", "content-length"),
        timeout_s: float = 300,
        http11: bool = False,
        before: Callable[[], None] | None = None,
    ):
        target = target.rstrip("/")

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if http11 else "HTTP/1.0"

            def log_message(self, *args: Any) -> None:  # the calls are recorded, not printed
                pass

            def _forward(self) -> None:
                if before is not None:
                    before()
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in drop}
                reply = requests.request(
                    self.command, target + self.path, data=raw or None, headers=headers, timeout=timeout_s
                )
                on_call(self.command, self.path, self.headers, raw, reply)
                self.send_response(reply.status_code)
                self.send_header("Content-Type", reply.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            do_GET = do_POST = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> ForwardingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
