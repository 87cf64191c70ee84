"""Requests a hostile client sends: each gets a 4xx with a message, never a 5xx (issue: 500s that should be 4xx).

The app runs with the real media fetcher (no stand-in), so URL parsing is what the server really does.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ml_backend.app import create_app
from ml_backend.config import Settings
from ml_backend.interactive.engine import Engine
from testkit.standins import DiskPredictor

from backend_helpers import running_server

RECORDED = json.loads((Path(__file__).parent / "e2e" / "recorded" / "ls-1.23.2.json").read_text())["requests"]
ONE_CLICK = next(r["body"] for r in RECORDED if r["name"] == "predict_interactive_1click")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings.from_env({})
    settings.no_traffic_warning_s = 0
    settings.label_studio_url = "http://127.0.0.1:9"  # nothing listens there: a fetch that gets through fails
    settings.label_studio_api_key = "secret"
    settings.local_files_document_root = str(tmp_path_factory.mktemp("files"))
    app = create_app(settings, engine=Engine(settings, factory=DiskPredictor, name="disk"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _predict_with_image(url) -> dict:
    body = copy.deepcopy(ONE_CLICK)
    body["tasks"][0]["data"]["image"] = url
    body["tasks"][0]["id"] = abs(hash(repr(url))) % 10**6 + 1  # no cached image from an earlier case
    return body


def _raw(client, path: str, text: str):
    return client.post(path, content=text.encode(), headers={"content-type": "application/json"})


def _assert_4xx(reply, *words: str) -> None:
    assert 400 <= reply.status_code < 500, (reply.status_code, reply.text)
    message = reply.json()["error"]
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    "url, words",
    [
        ("http://[::1/x.png", ["closed"]),
        ("http://[zz]/x", ["IPv6"]),
        ("s3://[bad", ["malformed"]),
        ("s3:///key.png", ["bucket"]),
        ("http://127.0.0.1:9\\@127.0.0.1:9/data/upload/1/x.png", ["backslash"]),
        ("http://user@127.0.0.1:9/data/upload/1/x.png", ["credentials"]),
        ("http://127.0.0.1:99999/x.png", ["port"]),
        ("/data/local-files/?d=a%00b.png", ["NUL"]),
        ("//127.0.0.1:9/data/upload/1/x.png", ["no scheme"]),
    ],
)
def test_malformed_image_urls_are_4xx(client, url, words):
    _assert_4xx(client.post("/predict", json=_predict_with_image(url)), *words)


def test_lone_surrogates_anywhere_in_a_body_are_400(client):
    body = json.dumps(ONE_CLICK)
    in_key = body.replace('"image":', '"im\\ud800age":', 1)
    in_url = json.dumps(_predict_with_image("/data/upload/1/PLACEHOLDER.png")).replace("PLACEHOLDER", "\\ud800")
    for path, text in (
        ("/predict", in_key),
        ("/predict", in_url),
        ("/webhook", '{"action": "\\ud800", "project": 1}'),
        ("/setup", '{"project": "1.2", "label_config": "\\udfff"}'),
    ):
        _assert_4xx(_raw(client, path, text), "surrogate")
    # A surrogate pair is valid text (an emoji) and is accepted.
    assert _raw(client, "/webhook", '{"action": "\\ud83d\\ude00", "project": 1}').status_code == 200


def test_an_echoed_non_ascii_action_renders(client):
    reply = client.post("/webhook", json={"action": "ÄNNOTATION_CREATED ✓", "project": 1})
    assert reply.status_code == 200 and reply.json()


# ---------------------------------------------------------------------------------------------
# Slow hosts: a real download deadline, and downloads never take every request thread


class TrickleServer:
    """``/data/upload/slow*`` sends headers, then one byte every 0.2 s for a minute; anything else is a PNG."""

    def __init__(self) -> None:
        import http.server
        import io
        import threading
        import time

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (200, 200, 200)).save(buf, format="PNG")
        png = buf.getvalue()
        self.stop = threading.Event()
        stop = self.stop

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                if self.path.startswith("/data/upload/slow"):
                    self.send_header("Content-Length", "300")
                    self.end_headers()
                    for _ in range(300):
                        if stop.wait(0.2):
                            return
                        try:
                            self.wfile.write(b"x")
                            self.wfile.flush()
                        except OSError:
                            return
                    return
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self._time = time

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def trickle():
    server = TrickleServer()
    yield server
    server.close()


def test_a_trickling_host_cannot_outlast_the_download_deadline(trickle):
    import time

    from ml_backend.errors import MediaError
    from ml_backend.media.fetcher import MediaFetcher

    settings = Settings.from_env({})
    settings.label_studio_url = trickle.url
    settings.fetch_timeout_s = 1.5
    started = time.monotonic()
    with pytest.raises(MediaError) as error:
        MediaFetcher(settings).fetch("/data/upload/slow.png", 1)
    elapsed = time.monotonic() - started
    assert error.value.status == 504 and "FETCH_TIMEOUT_S=1.5" in error.value.message
    assert elapsed < 10  # the host would have trickled for 60 s (each byte within any per-read timeout)


def test_slow_downloads_never_take_every_request_thread(trickle):
    import threading

    settings = Settings.from_env({})
    settings.no_traffic_warning_s = 0
    settings.label_studio_url = trickle.url
    settings.fetch_timeout_s = 4
    settings.threads = 4  # two downloads at once
    settings.prefetch_on_open = False
    app = create_app(settings, engine=Engine(settings, factory=DiskPredictor, name="disk"))
    with TestClient(app, raise_server_exceptions=False) as client:
        cached = _predict_with_image("/data/upload/1/fast.png")
        assert client.post("/predict", json=cached).status_code == 200  # the image is now cached
        slow_replies: list = []

        def slow(i: int) -> None:
            slow_replies.append(client.post("/predict", json=_predict_with_image(f"/data/upload/slow{i}.png")))

        threads = [threading.Thread(target=slow, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        trickle._time.sleep(0.5)
        again = copy.deepcopy(cached)
        again["params"]["context"]["result"][0]["value"]["x"] += 7  # a new click on the cached task
        reply = client.post("/predict", json=again)
        still_downloading = sum(thread.is_alive() for thread in threads)
        for thread in threads:
            thread.join()
    assert reply.status_code == 200 and reply.headers["x-cache"].startswith("image")
    assert still_downloading >= 1  # answered while the slow downloads were still going
    assert sorted(r.status_code for r in slow_replies) == [504] * 6  # each ends at its deadline, with a message
    assert all("FETCH_TIMEOUT_S" in r.json()["error"] for r in slow_replies)


# ---------------------------------------------------------------------------------------------
# A client that leaves gets no more work done for it


def _many_clicks(n: int) -> dict:
    body = copy.deepcopy(ONE_CLICK)
    first = body["params"]["context"]["result"][0]
    clicks = []
    for i in range(n):
        click = copy.deepcopy(first)
        click["id"] = f"c{i}"
        click["value"]["x"] = 20 + (i * 7) % 60
        click["value"]["y"] = 20 + (i * 11) % 60
        clicks.append(click)
    body["params"]["context"]["result"] = clicks
    body["tasks"][0]["data"]["image"] = "data:image/png;base64," + _png_base64()
    return body


def _png_base64() -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 90, 90)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_a_disconnected_client_stops_the_click_loop():
    import socket
    import time

    import requests

    settings = Settings.from_env({})
    settings.no_traffic_warning_s = 0
    settings.prefetch_on_open = False
    app = create_app(settings, engine=Engine(settings, factory=lambda: DiskPredictor(cost_ms=100), name="disk"))
    with running_server(app) as url:
        warm = requests.post(url + "/predict", json=_many_clicks(1), timeout=30)  # first-use imports
        assert warm.status_code == 200
        body = _many_clicks(60)  # 60 forwards x 0.1 s = 6 s of model work
        body["tasks"][0]["id"] = 2
        payload = json.dumps(body).encode()
        before = DiskPredictor.forwards
        client = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        client.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        time.sleep(1.0)
        client.close()  # the annotator clicked again / closed the tab
        time.sleep(2.0)
        done = DiskPredictor.forwards - before
        time.sleep(1.0)
        assert DiskPredictor.forwards - before == done  # nothing more is computed for the gone client
        assert 1 <= done < 40, done


def test_health_answers_while_a_large_reply_is_rendered(monkeypatch):
    """Rendering a big /predict reply is CPU work off the event loop (stood in for by a slow render)."""
    import threading
    import time

    import requests

    import ml_backend.app as app_module

    rendered = threading.Event()
    render = app_module.AsciiJSONResponse.render

    def slow_render(self, content):
        if isinstance(content, dict) and "results" in content:
            time.sleep(1.5)  # what a 70 MB batch reply cost
            rendered.set()
        return render(self, content)

    monkeypatch.setattr(app_module.AsciiJSONResponse, "render", slow_render)
    settings = Settings.from_env({})
    settings.no_traffic_warning_s = 0
    app = create_app(settings, engine=Engine(settings, factory=DiskPredictor, name="disk"))
    with running_server(app) as url:
        batch = {"tasks": [{"id": i, "data": {"image": "/data/upload/1/a.png"}} for i in range(50)]}
        worker = threading.Thread(target=lambda: requests.post(url + "/predict", json=batch, timeout=30))
        worker.start()
        time.sleep(0.3)
        started = time.monotonic()
        health = requests.get(url + "/health", timeout=5)
        answered_in = time.monotonic() - started
        still_rendering = not rendered.is_set()
        worker.join(30)
        assert health.status_code == 200 and still_rendering
        assert answered_in < 0.5  # not after the 1.5 s render
