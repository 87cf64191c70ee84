"""``adaptiveclick weights``: downloads against a local HTTP server (never the internet).

The server runs on 127.0.0.1 in a thread and serves files with Range support, a path that drops the connection
half-way through the first response (resume), 403/404, an HTML page (also one disguised as a binary), and a
Google-Drive-like confirmation flow. Registry entries are injected with monkeypatch, so no real URL is touched.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from cli import main as model_main
from model import weights

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: several chunks, not a multiple of the chunk size
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
HTML_PAGE = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in</body></html>"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        parsed = urlparse(self.path)
        srv.log.append((parsed.path, self.headers.get("Range")))
        route = parsed.path
        if route == "/missing":
            return self._plain(404, b"not found")
        if route == "/forbidden":
            return self._plain(403, b"forbidden")
        if route == "/page":
            return self._plain(200, HTML_PAGE, "text/html; charset=utf-8")
        if route == "/disguised":
            return self._plain(200, HTML_PAGE, "application/octet-stream")
        if route == "/norange":
            return self._plain(200, PAYLOAD, "application/octet-stream")
        if route == "/drop":
            srv.drop_count += 1
            if srv.drop_count <= srv.drops:  # announce everything, send half, hang up
                start = self._range_start() or 0
                body = PAYLOAD[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return None
            return self._ranged(PAYLOAD)
        if route == "/file":
            return self._ranged(PAYLOAD)
        if route == "/gdrive/download":  # the confirmation page Google shows for large files
            query = parse_qs(parsed.query)
            file_id = query.get("id", [""])[0]
            page = (
                "<!DOCTYPE html><html><body><p>Google Drive can&#39;t scan this file for viruses.</p>"
                '<form id="download-form" action="/gdrive/confirmed" method="get">'
                '<input type="submit" value="Download anyway"/>'
                f'<input type="hidden" name="id" value="{file_id}">'
                '<input type="hidden" name="export" value="download">'
                '<input type="hidden" name="confirm" value="t">'
                '<input type="hidden" name="uuid" value="u-1&amp;2"></form></body></html>'
            ).encode()
            return self._plain(200, page, "text/html; charset=utf-8")
        if route == "/gdrive/confirmed":
            query = parse_qs(parsed.query)
            if query.get("uuid") != ["u-1&2"] or query.get("id") != [srv.drive_id]:
                return self._plain(403, b"bad confirmation")
            return self._ranged(PAYLOAD)
        return self._plain(404, b"no such route")

    def _range_start(self) -> int | None:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        return int(match.group(1)) if match else None

    def _plain(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _ranged(self, data: bytes) -> None:
        start = self._range_start()
        if start is None:
            return self._plain(200, data, "application/octet-stream")
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        body = data[start:]
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.log: list[tuple[str, str | None]] = []
        self.drops = 1
        self.drop_count = 0
        self.drive_id = "FILEid_0123456789"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture
def registry(monkeypatch, server, tmp_path):
    """Test entries only; the weights folder and MODEL_DIR point into tmp_path."""

    def entry(name, route, sha=None, **kw):
        return weights.WeightsEntry(
            name, f"{name}.bin", "mae", f"test {name}", url=server.base + route, sha256=sha, **kw
        )

    entries = {
        e.name: e
        for e in (
            entry("good", "/file", PAYLOAD_SHA),
            entry("unpinned", "/file"),
            entry("wrongsha", "/file", "0" * 64),
            entry("drop", "/drop", PAYLOAD_SHA),
            entry("missing", "/missing"),
            entry("forbidden", "/forbidden"),
            entry("page", "/page"),
            entry("disguised", "/disguised"),
            entry("norange", "/norange", PAYLOAD_SHA),
            weights.WeightsEntry("manual", "manual.pth", "adaptiveclick", "no link", manual="Get {filename} by hand."),
            weights.WeightsEntry("starter", "starter.safetensors", "project", "starter", local=True),
        )
    }
    monkeypatch.setattr(weights, "REGISTRY", entries)
    monkeypatch.setattr(weights.time, "sleep", lambda s: None)  # no back-off waits in tests
    monkeypatch.setenv("ADAPTIVECLICK_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.delenv("MODEL_DIR", raising=False)
    return entries


def fetch(*args: str) -> int:
    return model_main(["weights", "fetch", *args, "--no-progress"])


def test_fetch_downloads_verifies_and_renames(registry, server, tmp_path, capsys):
    dest = tmp_path / "out"
    assert fetch("good", "--dest", str(dest)) == 0
    assert (dest / "good.bin").read_bytes() == PAYLOAD
    assert not (dest / "good.bin.part").exists()
    out = capsys.readouterr().out
    assert PAYLOAD_SHA in out and "verified" in out
    # a second fetch finds the file and checks it instead of downloading again
    requests_before = len(server.log)
    assert fetch("good", "--dest", str(dest)) == 0
    assert len(server.log) == requests_before and "already present" in capsys.readouterr().out


def test_fetch_defaults_to_model_dir_then_weights_dir(registry, tmp_path, monkeypatch):
    assert fetch("unpinned") == 0
    assert (tmp_path / "weights" / "unpinned.bin").read_bytes() == PAYLOAD
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    assert fetch("good") == 0
    assert (tmp_path / "models" / "good.bin").is_file()


def test_unpinned_download_prints_the_computed_sha256(registry, tmp_path, capsys):
    assert fetch("unpinned.bin", "--dest", str(tmp_path)) == 0  # a file name works as NAME too
    out = capsys.readouterr().out
    assert PAYLOAD_SHA in out and "no sha256 is pinned" in out


def test_sha256_mismatch_deletes_the_partial_file(registry, tmp_path, capsys):
    assert fetch("wrongsha", "--dest", str(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # the error itself is one line
    assert err.startswith("adaptiveclick weights: error: sha256 mismatch") and PAYLOAD_SHA in err
    assert list(tmp_path.iterdir()) == []


def test_sha256_override_on_the_command_line(registry, tmp_path, capsys):
    assert fetch("unpinned", "--dest", str(tmp_path), "--sha256", "f" * 64) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    assert fetch("unpinned", "--dest", str(tmp_path), "--sha256", "xyz") == 2
    assert "64 hexadecimal" in capsys.readouterr().err


def test_dropped_connection_is_resumed_with_range_in_the_same_run(registry, server, tmp_path):
    server.drops = 2
    assert fetch("drop", "--dest", str(tmp_path), "--retries", "3") == 0
    assert (tmp_path / "drop.bin").read_bytes() == PAYLOAD
    ranges = [r for p, r in server.log if p == "/drop"]
    assert ranges[0] is None
    kept = [int(r[6:-1]) for r in ranges[1:]]  # "bytes=N-": the later tries ask for the rest only
    assert len(kept) == 2 and 0 < kept[0] <= len(PAYLOAD) // 2 and kept[0] < kept[1] < len(PAYLOAD)


def test_dropped_connection_leaves_a_part_file_that_the_next_run_resumes(registry, server, tmp_path, capsys):
    assert fetch("drop", "--dest", str(tmp_path), "--retries", "0") == 2
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err
    part = tmp_path / "drop.bin.part"
    kept = part.stat().st_size
    assert 0 < kept <= len(PAYLOAD) // 2 and part.read_bytes() == PAYLOAD[:kept]
    assert not (tmp_path / "drop.bin").exists()
    assert fetch("drop", "--dest", str(tmp_path), "--retries", "0") == 0
    assert (tmp_path / "drop.bin").read_bytes() == PAYLOAD and not part.exists()
    assert server.log[-1] == ("/drop", f"bytes={kept}-")


def test_complete_part_file_is_finished_without_downloading_again(registry, server, tmp_path):
    (tmp_path / "good.bin.part").write_bytes(PAYLOAD)  # 416 from the server: the .part is already whole
    assert fetch("good", "--dest", str(tmp_path)) == 0
    assert (tmp_path / "good.bin").read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_from_zero(registry, server, tmp_path):
    (tmp_path / "norange.bin.part").write_bytes(PAYLOAD[:1000])
    assert fetch("norange", "--dest", str(tmp_path)) == 0
    assert (tmp_path / "norange.bin").read_bytes() == PAYLOAD


@pytest.mark.parametrize("name, words", [("missing", "HTTP 404"), ("forbidden", "HTTP 403")])
def test_http_errors_are_one_clear_line(registry, tmp_path, capsys, name, words):
    assert fetch(name, "--dest", str(tmp_path), "--retries", "0") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert words in err and err.startswith("adaptiveclick weights: error:")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["page", "disguised"])
def test_html_instead_of_a_binary_is_refused(registry, tmp_path, capsys, name):
    assert fetch(name, "--dest", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "HTML page instead of the binary" in err and "browser" in err
    assert not any(tmp_path.iterdir())


def test_no_network_is_reported(registry, monkeypatch, tmp_path, capsys):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    entry = weights.WeightsEntry("offline", "offline.bin", "mae", "x", url=f"http://127.0.0.1:{port}/f")
    monkeypatch.setitem(weights.REGISTRY, "offline", entry)
    assert fetch("offline", "--dest", str(tmp_path), "--retries", "1") == 2
    assert "cannot reach 127.0.0.1" in capsys.readouterr().err


def test_entry_without_a_link_explains_the_manual_download(registry, tmp_path, capsys):
    assert fetch("manual", "--dest", str(tmp_path)) == 2
    captured = capsys.readouterr()
    assert "Get manual.pth by hand." in captured.err and "--url" in captured.err


def test_url_override_for_an_entry_without_a_link(registry, server, tmp_path):
    assert fetch("manual", "--dest", str(tmp_path), "--url", server.base + "/file") == 0
    assert (tmp_path / "manual.pth").read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://drive.google.com/file/d/1AbC-dEf_GhIjKlMn/view?usp=sharing", "1AbC-dEf_GhIjKlMn"),
        ("https://drive.google.com/uc?id=1AbC-dEf_GhIjKlMn&export=download", "1AbC-dEf_GhIjKlMn"),
        ("https://drive.google.com/open?id=1AbC-dEf_GhIjKlMn", "1AbC-dEf_GhIjKlMn"),
        ("https://drive.usercontent.google.com/download?id=1AbC-dEf_GhIjKlMn&confirm=t", "1AbC-dEf_GhIjKlMn"),
        ("https://example.com/file/d/1AbC-dEf_GhIjKlMn/view", None),
        ("https://notgoogle.com/uc?id=1AbC", None),
    ],
)
def test_google_drive_ids(url, expected):
    assert weights.google_drive_id(url) == expected


def test_google_drive_confirmation_flow(registry, server, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "GDRIVE_DOWNLOAD_URL", server.base + "/gdrive/download")
    link = f"https://drive.google.com/file/d/{server.drive_id}/view?usp=sharing"  # only its ID is used
    assert fetch("manual", "--dest", str(tmp_path), "--url", link) == 0
    assert (tmp_path / "manual.pth").read_bytes() == PAYLOAD
    paths = [p for p, _ in server.log]
    assert paths[0] == "/gdrive/download" and "/gdrive/confirmed" in paths


def test_google_drive_page_without_a_form_is_a_clear_error(registry, server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(weights, "GDRIVE_DOWNLOAD_URL", server.base + "/page")
    assert fetch("manual", "--dest", str(tmp_path), "--url", "https://drive.google.com/uc?id=FILEid_0123456789") == 2
    assert "Google Drive did not offer the file" in capsys.readouterr().err


def test_unknown_name(registry, capsys):
    assert fetch("nope") == 2
    assert "unknown weights 'nope'" in capsys.readouterr().err


def test_verify_prints_and_checks_sha256(registry, tmp_path, capsys):
    path = tmp_path / "some.pth"
    path.write_bytes(PAYLOAD)
    assert model_main(["weights", "verify", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert PAYLOAD_SHA in out and "not pinned" in out
    assert model_main(["weights", "verify", str(path), "--sha256", PAYLOAD_SHA, "--no-progress"]) == 0
    assert "OK" in capsys.readouterr().out
    assert model_main(["weights", "verify", str(path), "--sha256", "0" * 64, "--no-progress"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert model_main(["weights", "verify", str(tmp_path / "absent.pth")]) == 2


def test_verify_by_name_uses_the_registry_pin(registry, tmp_path, capsys):
    wdir = tmp_path / "weights"
    wdir.mkdir()
    (wdir / "good.bin").write_bytes(PAYLOAD)
    assert model_main(["weights", "verify", "good", "--no-progress"]) == 0
    assert "OK" in capsys.readouterr().out
    (wdir / "good.bin").write_bytes(PAYLOAD[:-1])
    assert model_main(["weights", "verify", "good", "--no-progress"]) == 1
    assert model_main(["weights", "verify", "wrongsha"]) == 2  # not downloaded
    assert "weights fetch wrongsha" in capsys.readouterr().err


def test_starter_sha256_comes_from_its_sha256_file(registry, tmp_path, capsys):
    wdir = tmp_path / "weights"
    wdir.mkdir()
    starter = wdir / "starter.safetensors"
    starter.write_bytes(b"starter weights")
    digest = hashlib.sha256(b"starter weights").hexdigest()
    assert model_main(["weights", "verify", "starter", "--no-progress"]) == 0
    assert "not pinned" in capsys.readouterr().out  # no starter.sha256 yet: computed and printed
    (wdir / "starter.sha256").write_text(f"{digest}  starter.safetensors\n")
    assert model_main(["weights", "verify", "--no-progress"]) == 0  # every known file present
    assert f"sha256 {digest}  OK" in capsys.readouterr().out
    assert model_main(["weights", "list"]) == 0
    assert digest in capsys.readouterr().out
    starter.write_bytes(b"tampered")
    assert model_main(["weights", "verify", "starter", "--no-progress"]) == 1
    assert fetch("starter") == 0  # shipped, never downloaded
    starter.unlink()
    assert fetch("starter") == 2


def test_verify_load_opens_the_checkpoint_safely(registry, tmp_path, capsys):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    assert model_main(["weights", "verify", str(path), "--load", "--no-progress"]) == 2
    assert "is not a checkpoint: it is a text file" in capsys.readouterr().err


def test_real_registry_is_consistent():
    names = set(weights.REGISTRY)
    assert {
        "starter",
        "adaptiveclick_base448_sbd",
        "adaptiveclick_base448_cocolvis",
        "mae_vit_base",
        "mae_vit_large",
        "mae_vit_huge",
    } <= names
    for entry in weights.REGISTRY.values():
        assert entry.local or entry.url or entry.manual, entry.name
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        if entry.url:
            assert entry.url.startswith("https://") and entry.url.endswith(entry.filename)


def test_weights_command_is_on_the_console_script(capsys):
    from cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["weights", "--help"])
    assert exit_.value.code == 0
    assert "fetch" in capsys.readouterr().out


def test_no_test_touches_the_internet(registry):
    for entry in weights.REGISTRY.values():
        assert entry.url is None or entry.url.startswith("http://127.0.0.1:")


def test_download_function_directly(server, tmp_path):
    digest = weights.download(server.base + "/file", tmp_path / "x" / "f.bin", PAYLOAD_SHA, progress=False)
    assert digest == PAYLOAD_SHA and Path(tmp_path / "x" / "f.bin").read_bytes() == PAYLOAD


def test_verify_load_accepts_a_released_format_checkpoint(registry, golden_dir, capsys):
    path = golden_dir / "tiny_official.pth"  # the released .pth layout, tiny network
    assert model_main(["weights", "verify", str(path), "--load", "--no-progress"]) == 0
    assert "loads: AdaptiveClick" in capsys.readouterr().out
