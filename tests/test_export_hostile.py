"""``adaptiveclick export`` against a hostile Label Studio and hostile files (issue 37, items 2, 7, 9 and the
``--out`` links): the project export is downloaded through the media fetcher's checked redirects (Label Studio's
origin only, at most 5 hops), with a size cap and a deadline for the whole download; a corrupt image is named and
skipped; a link as ``--out`` is a one-line error. Servers listen on loopback only."""

from __future__ import annotations

import http.server
import io
import itertools
import json
import threading
import time

import pytest
from PIL import Image

from ml_backend.config import Settings
from ml_backend.labelstudio.export import ExportError, download_project_export
from testkit.decoder_fuzz import mutants


class _Server:
    def __init__(self, handler_for):
        stub = self
        self.hits: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                stub.hits.append(self.path)
                handler_for(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _redirect(handler, location):
    handler.send_response(302)
    handler.send_header("Location", location)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


@pytest.fixture()
def servers():
    elsewhere = _Server(lambda h: (h.send_response(200), h.send_header("Content-Length", "2"), h.end_headers(),
                                   h.wfile.write(b"[]")))  # fmt: skip

    def label_studio(h):
        project = h.path.split("/")[3]
        if project == "1":  # another port of the same host
            return _redirect(h, f"{elsewhere.url}/api/projects/1/export")
        if project == "2":  # the same port under another name
            return _redirect(h, f"http://localhost:{ls.port}/api/projects/2/export")
        if project == "3":  # a loop on the same origin
            return _redirect(h, h.path)
        if project == "4":  # 3 MB without a Content-Length
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for _ in range(48):
                chunk = b"[" + b" " * 65534 + b"]"
                h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            h.wfile.write(b"0\r\n\r\n")
            return None
        if project == "5":  # one byte every 0.3 s
            h.send_response(200)
            h.send_header("Content-Length", "1000")
            h.end_headers()
            for _ in range(100):
                try:
                    h.wfile.write(b" ")
                    h.wfile.flush()
                except OSError:
                    return None
                time.sleep(0.3)
            return None
        if project == "6" and h.path.startswith("/api/projects/6/export"):  # a same-origin hop, then the export
            return _redirect(h, "/api/projects/6/real")
        body = json.dumps([{"id": 1, "data": {"image": "a.png"}, "annotations": []}]).encode()
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
        return None

    ls = _Server(label_studio)
    try:
        yield ls, elsewhere
    finally:
        ls.stop()
        elsewhere.stop()


def _settings(url: str, **env) -> Settings:
    return Settings.from_env({"LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": "legacy-token", **env})


def test_the_project_export_follows_only_same_origin_redirects_within_limits(servers):
    ls, elsewhere = servers
    settings = _settings(ls.url, EXPORT_MAX_MB="1", EXPORT_TIMEOUT_S="1.5")
    assert json.loads(download_project_export(settings, 6))[0]["id"] == 1  # a hop on Label Studio's origin
    for project, words in ((1, "origin only"), (2, "origin only"), (3, "too many redirects")):
        with pytest.raises(ExportError, match=words):
            download_project_export(settings, project)
    assert not elsewhere.hits  # nothing was sent anywhere else
    assert sum(h.startswith("/api/projects/3/") for h in ls.hits) <= 6  # at most 5 hops after the first request
    with pytest.raises(ExportError, match="EXPORT_MAX_MB=1"):
        download_project_export(settings, 4)
    t0 = time.monotonic()
    with pytest.raises(ExportError, match="EXPORT_TIMEOUT_S=1.5"):
        download_project_export(settings, 5)
    assert time.monotonic() - t0 < 5  # the deadline holds for the whole download, not per read


def test_the_command_reports_a_refused_download_in_one_line(servers, monkeypatch, tmp_path, capsys):
    from cli import main

    ls, _ = servers
    monkeypatch.setenv("LABEL_STUDIO_URL", ls.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "legacy-token")
    assert main(["export", "--project", "1", "--format", "coco", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "origin only" in err and "Traceback" not in err and err.count("\n") == 1, err


def _image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (90, 20, 20)).save(buf, format=fmt)
    return buf.getvalue()


def test_a_corrupt_image_is_named_and_skipped_and_the_rest_written(tmp_path, capsys):
    from cli import main

    images = tmp_path / "images"
    images.mkdir()
    good = _image("PNG")
    tiff = bytearray(_image("TIFF"))
    tiff[4:8] = (0xFFFFFFF0).to_bytes(4, "little")  # the first IFD's offset far past the end
    fuzzed = dict(itertools.islice(((i, d) for i, (_, d) in enumerate(mutants(37))), 20224))
    broken = {
        "a.png": good,
        "b.tif": bytes(tiff),
        "c.png": good[:60],
        "d.jpg": _image("JPEG")[:200],
        "e.png": fuzzed[5225],
        "f.tif": fuzzed[20223],
    }  # fmt: skip  (ValueError at open; TypeError at load)
    for name, data in broken.items():
        (images / name).write_bytes(data)
    polygon = {"type": "polygonlabels", "original_width": 40, "original_height": 30,
               "value": {"points": [[10, 10], [90, 10], [50, 90]], "polygonlabels": ["Object"]}}  # fmt: skip
    tasks = [{"id": i + 1, "data": {"image": name}, "annotations": [{"id": i, "result": [polygon]}]}
             for i, name in enumerate(broken)]  # fmt: skip
    source = tmp_path / "export.json"
    source.write_text(json.dumps(tasks))
    out = tmp_path / "out"
    assert main(["export", "--from-json", str(source), "--format", "yolo-seg", "--out", str(out), "--images",
                 str(images)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    for task, name in ((2, "b.tif"), (3, "c.png"), (4, "d.jpg"), (5, "e.png"), (6, "f.tif")):
        assert f"image not copied: task {task} ({name}):" in printed, printed
    assert [p.name for p in (out / "images" / "train").iterdir()] == ["1_a.png"]
    assert len(list((out / "labels" / "train").iterdir())) == 6  # the labels of every task are written


@pytest.mark.parametrize("link", ["to an empty folder", "dangling"])
def test_out_at_a_symbolic_link_is_a_one_line_error(tmp_path, capsys, link):
    from cli import main

    target = tmp_path / "target"
    if link == "to an empty folder":
        target.mkdir()
    (tmp_path / "out").symlink_to(target)
    source = tmp_path / "export.json"
    source.write_text("[]")
    assert main(["export", "--from-json", str(source), "--format", "coco", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and "Traceback" not in err, err
