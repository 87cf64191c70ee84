"""A stand-in of the part of CVAT's server that ``cvat-cli function create-native`` / ``run-agent`` (2.80) call,
read from cvat-cli's own code (``cvat_cli/_internal/agent.py``, ``agent_driver*.py``, ``commands_functions.py``)
and cvat-sdk's task dataset (``cvat_sdk/datasets``): the native function, its request queue (acquire / complete /
fail, the server-sent ``watch`` stream that wakes the agent) and, for the frames, a task's metadata, labels and
``data?type=frame``. Requests are queued by the test as CVAT Online queues an annotator's clicks; every exchange
is recorded. Loopback only."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import queue
import re
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "agent-test-token"
NOW = datetime.datetime(2026, 12, 7, tzinfo=datetime.timezone.utc).isoformat()


class AgentApi:
    """The server's state: functions, tasks (frames as encoded bytes), the queue and the outcomes."""

    def __init__(self) -> None:
        self.functions: dict[int, dict[str, Any]] = {}
        self.tasks: dict[int, list[tuple[bytes, int, int]]] = {}  # task id -> frames (bytes, width, height)
        self.pending: list[dict[str, Any]] = []
        self.outcomes: dict[str, queue.Queue] = {}
        self.log: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.new_request = 0
        self.unknown: list[str] = []

    def add_task(self, frames: list[tuple[bytes, int, int]]) -> int:
        task_id = len(self.tasks) + 1
        self.tasks[task_id] = frames
        return task_id

    def interact(self, function_id: int, task: int, frame: int, pos=(), neg=(), box=()) -> str:
        """Queue an interaction request as CVAT does for a click; returns its id (see :meth:`outcome`)."""
        ar_id = uuid.uuid4().hex
        params = {
            "type": "interact",
            "task": task,
            "frame": frame,
            "pos_points": [list(p) for p in pos],
            "neg_points": [list(p) for p in neg],
            "obj_bbox": [list(c) for c in box],
        }
        with self.wake:
            self.outcomes[ar_id] = queue.Queue()
            self.pending.append({"function": function_id, "ar_id": ar_id, "ar_params": params})
            self.new_request += 1
            self.wake.notify_all()
        return ar_id

    def outcome(self, ar_id: str, timeout: float = 300) -> tuple[str, dict[str, Any]]:
        """``("complete", body)`` or ``("fail", body)`` once the agent answered the request."""
        return self.outcomes[ar_id].get(timeout=timeout)


def _handler(api: AgentApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: Any = None, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            size = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(size)) if size else None

        def _authorized(self) -> bool:
            return self.headers.get("Authorization") in (f"Bearer {TOKEN}", f"Token {TOKEN}")

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_DELETE(self) -> None:
            self._route("DELETE")

        def _route(self, method: str) -> None:
            raw_path, _, query = self.path.partition("?")
            path = urllib.parse.unquote(raw_path).rstrip("/")
            params = dict(p.partition("=")[::2] for p in query.split("&") if p)
            body = self._body() if method == "POST" else None
            api.log.append({"method": method, "path": path, "query": params, "body": body})
            if path == "/api/server/about":
                about = {"name": "CVAT stand-in", "description": "", "version": "2.80.0"}
                about.update(logo_url="", subtitle="")
                return self._send(200, about)
            if not self._authorized():
                return self._send(401, {"detail": "Authentication credentials were not provided."})
            if path == "/api/users/self":
                return self._send(200, {"id": 1, "username": "agent", "url": "", "first_name": "", "last_name": ""})
            if path == "/api/functions" and method == "POST":
                function_id = len(api.functions) + 1
                api.functions[function_id] = {**body, "id": function_id}
                return self._send(201, api.functions[function_id])
            if m := re.fullmatch(r"/api/functions/(\d+)", path):
                function = api.functions.get(int(m[1]))
                if function is None:
                    return self._send(404, {"detail": "Not found."})
                defaults = {"min_neg_points": -1, "startswith_box": False, "startswith_box_optional": False}
                return self._send(200, {**defaults, **function})
            if m := re.fullmatch(r"/api/functions/queues/function:(\d+)/watch", path):
                return self._watch()
            if m := re.fullmatch(r"/api/functions/queues/function:(\d+)/requests/acquire", path):
                with api.lock:
                    mine = [r for r in api.pending if r["function"] == int(m[1])]
                    if body.get("request_category") != "interactive" or not mine:
                        return self._send(200, {"ar_assignment": None})
                    api.pending.remove(mine[0])
                assignment = {"ar_id": mine[0]["ar_id"], "ar_params": mine[0]["ar_params"]}
                return self._send(200, {"ar_assignment": assignment})
            if m := re.fullmatch(r"/api/functions/queues/function:(\d+)/requests/(\w+)/(complete|fail|update)", path):
                if m[3] != "update":
                    api.outcomes[m[2]].put((m[3], body))
                return self._send(200, {})
            if m := re.fullmatch(r"/api/tasks/(\d+)", path):
                return self._task(int(m[1]))
            if m := re.fullmatch(r"/api/tasks/(\d+)/data/meta", path):
                return self._meta(int(m[1]))
            if path == "/api/labels":
                return self._send(200, {"count": 1, "next": None, "previous": None, "results": [self._label()]})
            if m := re.fullmatch(r"/api/tasks/(\d+)/data", path):
                frames = api.tasks.get(int(m[1]), [])
                number = int(params.get("number", -1))
                if params.get("type") != "frame" or not 0 <= number < len(frames):
                    return self._send(400, {"detail": "bad frame request"})
                return self._send(200, frames[number][0], content_type="image/png")
            api.unknown.append(f"{method} {path}")
            return self._send(404, {"detail": f"the stand-in has no {method} {path}"})

        def _watch(self) -> None:
            """Server-sent events: a ``newrequest`` event whenever a request is queued (the agent then polls)."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            seen = -1
            try:
                self.wfile.write(b"retry: 500\n\n")
                self.wfile.flush()
                while True:
                    with api.wake:
                        last = seen
                        api.wake.wait_for(lambda last=last: api.new_request != last, timeout=5)
                        changed, seen = api.new_request != last, api.new_request
                    if changed:
                        self.wfile.write(b'event: newrequest\ndata: {"request_category": "interactive"}\n\n')
                    else:
                        self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):
                return

        def _task(self, task_id: int) -> None:
            frames = api.tasks.get(task_id)
            if frames is None:
                return self._send(404, {"detail": "Not found."})
            return self._send(
                200,
                {
                    "id": task_id,
                    "name": f"task {task_id}",
                    "size": len(frames),
                    "mode": "annotation",
                    "dimension": "2d",
                    "data_chunk_size": 36,
                    "data_compressed_chunk_type": "imageset",
                    "data_original_chunk_type": "imageset",
                    "image_quality": 70,
                    "created_date": NOW,
                    "updated_date": NOW,
                    "status": "annotation",
                    "organization": None,
                    "jobs": {"count": 1, "completed": 0, "validation": 0, "url": ""},
                    "labels": {"url": f"/api/labels?task_id={task_id}"},
                },
            )

        def _meta(self, task_id: int) -> None:
            frames = api.tasks.get(task_id, [])
            return self._send(
                200,
                {
                    "chunk_size": 36,
                    "size": len(frames),
                    "image_quality": 70,
                    "start_frame": 0,
                    "stop_frame": max(len(frames) - 1, 0),
                    "frame_filter": "",
                    "chunks_updated_date": NOW,
                    "deleted_frames": [],
                    "included_frames": None,
                    "frames": [
                        {"width": w, "height": h, "name": f"frame_{i:06d}.png", "related_files": 0}
                        for i, (_, w, h) in enumerate(frames)
                    ],
                },
            )

        def _label(self) -> dict[str, Any]:
            return {"id": 1, "name": "object", "color": "#ff0000", "type": "any", "attributes": [], "sublabels": []}

    return Handler


@contextlib.contextmanager
def serving(api: AgentApi) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def png_bytes(image: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
