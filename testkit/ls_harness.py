"""Run a real Label Studio (from its own venv) and the backend on 127.0.0.1, and talk to them.

Used by the end-to-end tests (tests/e2e) and usable by hand:

    python testkit/ls_harness.py   # starts LS + backend, prints the URLs, Ctrl-C stops both
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from testkit.proxy import ForwardingProxy

REPO = Path(__file__).resolve().parents[1]
LS_VENV = Path(os.environ.get("LS_VENV", REPO / ".cache" / "ls-venv"))
LS_USER = "admin@example.com"
LS_PASSWORD = "e2e-password-1"
LS_LEGACY_TOKEN = "e2e-legacy-token-0123456789"
# GrabCut evaluation images by how they reach their task; copied to a temporary folder, never into the repo.
E2E_IMAGES = {"upload": "37073.jpg", "local": "llama.png"}
LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
</View>"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered:\n{tail}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s:\n{tail}")


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process started with ``start_new_session=True`` and everything in its process group."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class LabelStudio:
    """``label-studio start`` on 127.0.0.1 with a temporary data dir, local files, and the SSRF flags lifted."""

    def __init__(self, data_dir: Path, document_root: Path, port: int | None = None):
        self.data_dir = data_dir
        self.document_root = document_root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "label-studio.log"
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def executable() -> Path:
        return LS_VENV / "bin" / "label-studio"

    def start(self, timeout: float = 240) -> LabelStudio:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
        env.update(
            {
                "LABEL_STUDIO_USERNAME": LS_USER,
                "LABEL_STUDIO_PASSWORD": LS_PASSWORD,
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                "LABEL_STUDIO_USER_TOKEN": LS_LEGACY_TOKEN,
                "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
                # Label Studio >= 1.23.1 refuses ML backends on loopback/private addresses unless these are lifted.
                "ML_BLOCK_LOCAL_IP": "false",
                "SSRF_PROTECTION_ENABLED": "false",
                # Nothing may leave 127.0.0.1: no version check, no error reporting, no analytics.
                "LATEST_VERSION_CHECK": "false",
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
                "COLLECT_ANALYTICS": "false",
            }
        )
        cmd = [
            str(self.executable()),
            "start",
            "--no-browser",
            "--data-dir",
            str(self.data_dir),
            "--internal-host",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.data_dir,
                start_new_session=True,
            )
        try:
            wait_http(self.url + "/health", timeout, self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def client(self) -> LSClient:
        return LSClient(self.url, LS_LEGACY_TOKEN)

    def personal_access_token(self) -> str:
        """Log in like a browser and create a personal access token (a JWT refresh token)."""
        s = requests.Session()
        s.get(self.url + "/user/login/", timeout=30).raise_for_status()
        r = s.post(
            self.url + "/user/login/",
            timeout=30,
            allow_redirects=False,
            data={"csrfmiddlewaretoken": s.cookies["csrftoken"], "email": LS_USER, "password": LS_PASSWORD},
            headers={"Referer": self.url + "/user/login/"},
        )
        assert r.status_code == 302, r.text[:500]
        r = s.post(
            self.url + "/api/token/",
            json={},
            timeout=30,
            headers={"X-CSRFToken": s.cookies["csrftoken"], "Referer": self.url + "/"},
        )
        r.raise_for_status()
        return r.json()["token"]


class LSClient:
    """The few Label Studio API calls the tests make (legacy token auth)."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, expect: int | tuple[int, ...] = (200, 201), **kw) -> Any:
        r = self.s.request(method, self.url + path, timeout=120, **kw)
        expected = (expect,) if isinstance(expect, int) else expect
        assert r.status_code in expected, f"{method} {path} -> {r.status_code}: {r.text[:1000]}"
        return r.json() if r.content else None

    def create_project(self, title: str = "AdaptiveClick e2e", config: str = LABEL_CONFIG) -> int:
        return self.call("POST", "/api/projects", json={"title": title, "label_config": config})["id"]

    def upload(self, project: int, path: Path) -> None:
        with open(path, "rb") as fh:
            self.call("POST", f"/api/projects/{project}/import", files={"file": (path.name, fh)})

    def import_tasks(self, project: int, tasks: list[dict]) -> None:
        self.call("POST", f"/api/projects/{project}/import", json=tasks)

    def add_local_storage(self, project: int, path: Path) -> None:
        self.call(
            "POST",
            "/api/storages/localfiles",
            json={"project": project, "title": "images", "path": str(path), "use_blob_urls": True},
        )

    def tasks(self, project: int) -> list[dict]:
        reply = self.call("GET", "/api/tasks", params={"project": project})
        return reply["tasks"] if isinstance(reply, dict) else reply

    def connect_backend(self, project: int, url: str, user: str | None = None, password: str | None = None) -> dict:
        body: dict[str, Any] = {"project": project, "url": url, "title": "adaptiveclick", "is_interactive": True}
        if user is not None:
            body.update(auth_method="BASIC_AUTH", basic_auth_user=user, basic_auth_pass=password)
        return self.call("POST", "/api/ml", json=body)

    def interactive(self, ml_id: int, task: int, result: list[dict]) -> dict:
        return self.call(
            "POST", f"/api/ml/{ml_id}/interactive-annotating", json={"task": task, "context": {"result": result}}
        )


def keypoint(row: float, col: float, positive: bool, width: int, height: int, i: int = 0) -> dict:
    """A smart keypoint region as the labeling UI sends it, at pixel (row, col)."""
    return {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": (col + 0.5) / width * 100,
            "y": (row + 0.5) / height * 100,
            "width": 0.5,
            "keypointlabels": ["Object"],
        },
        "is_positive": positive,
        "id": f"kp{i}",
        "from_name": "tag2",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }


class Backend:
    """``adaptiveclick serve`` as a subprocess (gunicorn + uvicorn worker, the production path)."""

    def __init__(self, env: dict[str, str], log: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> Backend:
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            wait_http(self.url + "/health", timeout, self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class InProcessBackend:
    """The backend app under uvicorn in a thread (its ``Backend`` object is inspectable)."""

    def __init__(self, app: Any):
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> InProcessBackend:
        self.thread.start()
        wait_http(self.url + "/health", 30)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


class RecordingProxy:
    """A pass-through HTTP proxy in front of the backend that records what Label Studio sends it.

    Label Studio is connected to ``proxy.url``; each call is forwarded to ``target`` unchanged and recorded in
    ``calls`` as ``{"method", "path", "body", "status", "forwards", "superseded", "arrived"}`` when it is answered
    (``body`` parsed as JSON when it is; ``forwards`` / ``superseded`` from the backend's ``X-Forwards`` /
    ``X-Superseded`` headers; ``arrived``: the call's place in the order of arrival), so a test can read what really
    arrived, in which order, and what it cost."""

    def __init__(self, target: str):
        self.calls: list[dict[str, Any]] = []
        self.arrivals = itertools.count()
        self.lock = threading.Lock()
        self.arrived = threading.local()
        self.proxy = ForwardingProxy(target, self._record, before=self._arrive)
        self.url = self.proxy.url

    def _arrive(self) -> None:
        with self.lock:
            self.arrived.number = next(self.arrivals)

    def _record(self, method: str, path: str, headers: Any, raw: bytes, reply: requests.Response) -> None:
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        call = {
            "method": method,
            "path": path,
            "body": body,
            "status": reply.status_code,
            "forwards": reply.headers.get("X-Forwards"),
            "superseded": reply.headers.get("X-Superseded") == "1",
            "arrived": self.arrived.number,
        }
        with self.lock:
            self.calls.append(call)

    def start(self) -> RecordingProxy:
        self.proxy.start()
        return self

    def stop(self) -> None:
        self.proxy.stop()

    def predictions(self) -> list[dict[str, Any]]:
        """The recorded ``/predict`` calls that carried clicks (``params.context`` set), oldest first."""
        with self.lock:
            calls = list(self.calls)
        return [
            c
            for c in calls
            if c["path"].startswith("/predict")
            and isinstance(c["body"], dict)
            and ((c["body"].get("params") or {}).get("context"))
        ]


def basic_auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@contextlib.contextmanager
def running(*services: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for service in reversed(services):
            service.stop()


if __name__ == "__main__":  # manual use: LS + backend, Ctrl-C to stop
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="ls-e2e-"))
    (tmp / "root").mkdir()
    ls = LabelStudio(tmp / "data", tmp / "root").start()
    backend = Backend(
        {
            "MODEL_ENGINE": os.environ.get("MODEL_ENGINE", "grabcut"),
            "LABEL_STUDIO_URL": ls.url,
            "LABEL_STUDIO_API_KEY": LS_LEGACY_TOKEN,
            "LOCAL_FILES_DOCUMENT_ROOT": str(tmp / "root"),
        },
        tmp / "backend.log",
    ).start()
    print(f"Label Studio {ls.url} ({LS_USER} / {LS_PASSWORD}), backend {backend.url}, files in {tmp}")
    with running(ls, backend):
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)
