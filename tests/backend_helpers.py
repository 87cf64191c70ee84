"""Shared by the HTTP-level tests: the requests Label Studio 1.23.2 really sent, and an app on a stand-in model."""

from __future__ import annotations

import contextlib
import copy
import http.server
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import requests
import uvicorn
from PIL import Image

from ml_backend.app import create_app
from ml_backend.config import Settings
from ml_backend.errors import BadRequest
from ml_backend.interactive.engine import Engine
from ml_backend.media.fetcher import MediaFetcher
from testkit.standins import DiskPredictor

RECORDED = json.loads((Path(__file__).parent / "e2e" / "recorded" / "ls-1.23.2.json").read_text())["requests"]


def recorded(name: str) -> dict:
    return copy.deepcopy(next(r["body"] for r in RECORDED if r["name"] == name))


def synthetic_image(w=481, h=321) -> np.ndarray:
    """A bright ellipse (the object) on a dark textured background."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    inside = ((xx - w * 0.52) / (w * 0.22)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2 <= 1
    img[inside] = rng.integers(190, 255, (int(inside.sum()), 3), dtype=np.uint8)
    return img


class ImageFetcher(MediaFetcher):
    """Serves one image for every URL string (the HTTP tests are about the protocol, not media)."""

    def __init__(self, settings, image: np.ndarray):
        super().__init__(settings)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        self.data = buf.getvalue()
        self.fetches = 0

    def fetch(self, url, task_id=None):
        if not isinstance(url, str) or not url:
            raise BadRequest("no image URL")
        self.fetches += 1
        return self.data


def make_app(engine_factory=DiskPredictor, image=None, name="disk", **overrides):
    settings = Settings.from_env({})
    settings.no_traffic_warning_s = 0
    for k, v in overrides.items():
        setattr(settings, k, v)
    engine = Engine(settings, factory=engine_factory, name=name) if engine_factory else Engine(settings)
    fetcher = ImageFetcher(settings, synthetic_image() if image is None else image)
    return create_app(settings, engine=engine, fetcher=fetcher)


@contextlib.contextmanager
def running_server(app) -> Iterator[str]:
    """``app`` served by a real uvicorn on a free loopback port, in a thread; yields its base URL once ``/health``
    says the model is loaded (the warm-up imports take a few seconds)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if requests.get(url + "/health", timeout=1).json().get("model_loaded"):
                    break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


# The labeling config of the recorded project (a BrushLabels + KeyPointLabels project).
LABEL_CONFIG = recorded("webhook_start_training")["project"]["label_config"]


class StubLabelStudio:
    """Serves /api/projects/{id}, /api/projects/{id}/export and /data/upload/... like Label Studio 1.23."""

    def __init__(self, tasks: dict[int, list[dict]], images: dict[str, bytes]):
        self.tasks, self.images, self.requests = tasks, images, []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                stub.requests.append((self.path, self.headers.get("Authorization")))
                path = self.path.split("?")[0]
                parts = path.strip("/").split("/")
                if path.startswith("/data/upload/") and path in stub.images:
                    return self._send(200, stub.images[path], "image/png")
                if parts[:2] == ["api", "projects"] and len(parts) >= 3 and int(parts[2]) in stub.tasks:
                    if len(parts) == 3:
                        return self._send(200, json.dumps({"id": int(parts[2]), "label_config": LABEL_CONFIG}))
                    if parts[3:] == ["export"]:
                        return self._send(200, json.dumps(stub.tasks[int(parts[2])]))
                self._send(404, b'{"detail": "not found"}')

            def _send(self, status, body, ctype="application/json"):
                body = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


class StubCvat:
    """Serves the read calls a CVAT fine-tuning job makes, as CVAT 2.73 answers them: ``/api/jobs`` (paginated,
    filtered by ``project_id`` / ``task_id``), ``/api/jobs/{id}``, ``/api/jobs/{id}/annotations``,
    ``/api/jobs/{id}/data/meta`` and ``/api/jobs/{id}/data?type=frame&number=N``. ``delay_s``, ``garbage`` (a
    path prefix answered with HTML) and ``redirect`` (a path prefix answered 302) make it misbehave."""

    def __init__(self, jobs: list[dict], annotations: dict, meta: dict, frames: dict, page_size: int = 100):
        self.jobs, self.annotations, self.meta, self.frames = jobs, annotations, meta, frames
        self.page_size, self.requests = page_size, []
        self.delay_s, self.garbage, self.redirect = 0.0, "", ""
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                from urllib.parse import parse_qs, urlsplit

                stub.requests.append((self.path, self.headers.get("Authorization")))
                if stub.delay_s:
                    time.sleep(stub.delay_s)
                parts = urlsplit(self.path)
                path, query = parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}
                if stub.redirect and path.startswith(stub.redirect):
                    return self._send(302, b"", headers={"Location": "http://169.254.169.254/latest/"})
                if stub.garbage and path.startswith(stub.garbage):
                    return self._send(200, b"<html>502 Bad Gateway</html>", "text/html")
                segments = path.strip("/").split("/")
                if segments == ["api", "jobs"]:
                    return self._list(query)
                if segments[:2] == ["api", "jobs"] and len(segments) >= 3 and segments[2].isdigit():
                    job_id = int(segments[2])
                    job = next((j for j in stub.jobs if j["id"] == job_id), None)
                    if job is not None:
                        rest = segments[3:]
                        if rest == []:
                            return self._send(200, json.dumps(job))
                        if rest == ["annotations"] and job_id in stub.annotations:
                            return self._send(200, json.dumps(stub.annotations[job_id]))
                        if rest == ["data", "meta"] and job_id in stub.meta:
                            return self._send(200, json.dumps(stub.meta[job_id]))
                        key = (job_id, int(query.get("number", -1)))
                        if rest == ["data"] and query.get("type") == "frame" and key in stub.frames:
                            return self._send(200, stub.frames[key], "image/png")
                self._send(404, b'{"detail": "Not found."}')

            def _list(self, query):
                jobs = [
                    j
                    for j in stub.jobs
                    if all(str(j.get(k)) == query[k] for k in ("project_id", "task_id") if k in query)
                ]
                size = min(int(query.get("page_size", 10)), stub.page_size)
                page = int(query.get("page", 1))
                chunk = jobs[(page - 1) * size : page * size]
                more = page * size < len(jobs)
                nxt = f"http://127.0.0.1/api/jobs?page={page + 1}" if more else None
                self._send(200, json.dumps({"count": len(jobs), "next": nxt, "previous": None, "results": chunk}))

            def _send(self, status, body, ctype="application/json", headers=None):
                body = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
