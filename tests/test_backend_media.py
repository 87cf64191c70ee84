"""Media fetching against a stub Label Studio on 127.0.0.1: auth (PAT exchange, legacy token), local files,
presigned cloud URLs, SSRF refusals, size caps and the error messages users see."""

from __future__ import annotations

import base64
import http.server
import io
import json
import threading
import time
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from ml_backend.config import Settings
from ml_backend.errors import BadRequest, MediaError
from ml_backend.media.fetcher import MediaFetcher

LEGACY = "legacy-token-123"


def _jwt(payload: dict) -> str:
    def enc(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(payload)}.c2ln"


PAT = _jwt({"token_type": "refresh", "exp": 9999999999, "user_id": "1"})


def _png(w=20, h=10, color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


class StubLS:
    """A tiny threaded HTTP server playing Label Studio (and, on a second instance, a foreign host)."""

    def __init__(self):
        self.exchanges = 0
        self.access_lifetime = 300
        self.valid_access: set[str] = set()
        self.seen_auth: list[str | None] = []
        self.image = _png()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", headers=None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self):
                auth = self.headers.get("Authorization")
                stub.seen_auth.append(auth)
                return auth == f"Token {LEGACY}" or (auth or "").removeprefix("Bearer ") in stub.valid_access

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path == "/api/token/refresh/":
                    if body.get("refresh") != PAT:
                        return self._send(401, b'{"detail":"bad"}')
                    stub.exchanges += 1
                    exp = time.time() + stub.access_lifetime
                    access = _jwt({"token_type": "access", "exp": exp, "n": stub.exchanges})
                    stub.valid_access.add(access)
                    return self._send(200, json.dumps({"access": access}).encode())
                self._send(404)

            def do_GET(self):
                path = urllib.parse.urlsplit(self.path)
                if path.path == "/health":
                    return self._send(200, b'{"status":"UP"}')
                if path.path.startswith("/data/upload/"):
                    return self._send(200, stub.image) if self._authorized() else self._send(401)
                if path.path == "/data/local-files/":
                    return self._send(403)
                if path.path.startswith("/tasks/7/presign/"):
                    if not self._authorized():
                        return self._send(401)
                    uri = base64.urlsafe_b64decode(urllib.parse.parse_qs(path.query)["fileuri"][0]).decode()
                    assert uri == "s3://bucket/img.png"
                    return self._send(303, headers={"Location": stub.redirect_to})
                if path.path == "/public.png":
                    stub.seen_auth.append(self.headers.get("Authorization"))
                    return self._send(200, stub.image)
                if path.path == "/huge.png":
                    return self._send(200, b"x" * 5000)
                self._send(404)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.redirect_to = ""
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def ls():
    stub = StubLS()
    yield stub
    stub.close()


@pytest.fixture(scope="module")
def foreign():
    stub = StubLS()
    yield stub
    stub.close()


def fetcher(ls, **kw) -> MediaFetcher:
    settings = Settings.from_env({})
    settings.label_studio_url = ls.url
    for k, v in kw.items():
        setattr(settings, k, v)
    return MediaFetcher(settings)


def test_legacy_token_downloads_uploads(ls):
    img = fetcher(ls, label_studio_api_key=LEGACY).load("/data/upload/1/a.png", 1)
    assert img.size == (20, 10) and tuple(img.array[0, 0]) == (200, 10, 10)
    assert ls.seen_auth[-1] == f"Token {LEGACY}"


def test_pat_is_exchanged_once_and_refreshed_before_expiry(ls):
    f = fetcher(ls, label_studio_api_key=PAT)
    assert f.auth.kind == "pat"
    before = ls.exchanges
    for _ in range(3):
        f.fetch("/data/upload/1/a.png", 1)
    assert ls.exchanges == before + 1
    assert ls.seen_auth[-1].startswith("Bearer ")
    f.auth._access_exp = time.time() + 10  # about to expire: exchanged again
    f.fetch("/data/upload/1/a.png", 1)
    assert ls.exchanges == before + 2


def test_label_studio_media_paths_on_another_host_are_fetched_from_label_studio(ls):
    """Complaint: LS writes http://localhost:8080/data/upload/... while the backend reaches LS elsewhere."""
    img = fetcher(ls, label_studio_api_key=LEGACY).load("http://localhost:8080/data/upload/1/a.png", 1)
    assert img.size == (20, 10) and ls.seen_auth[-1] == f"Token {LEGACY}"


def test_refused_pat_and_missing_key_say_what_to_fix(ls):
    with pytest.raises(MediaError, match="Personal Access Token"):
        fetcher(ls, label_studio_api_key=_jwt({"token_type": "refresh", "exp": 1})).fetch("/data/upload/1/a.png", 1)
    with pytest.raises(MediaError, match="set LABEL_STUDIO_API_KEY"):
        fetcher(ls).fetch("/data/upload/1/a.png", 1)
    with pytest.raises(MediaError, match="legacy token"):
        fetcher(ls, label_studio_api_key="wrong-legacy").fetch("/data/upload/1/a.png", 1)


def test_setup_token_and_hostname_are_fallbacks(ls):
    settings = Settings.from_env({})
    f = MediaFetcher(settings)
    with pytest.raises(MediaError, match="LABEL_STUDIO_URL is not set"):
        f.fetch("/data/upload/1/a.png", 1)
    f.set_setup_fallback(ls.url, LEGACY)
    assert f.load("/data/upload/1/a.png", 1).size == (20, 10)


def test_url_problems_are_explained(ls):
    with pytest.raises(BadRequest, match="no scheme"):
        fetcher(ls).fetch("images/a.png", 1)
    with pytest.raises(MediaError, match="has no scheme"):
        fetcher(ls, label_studio_url="localhost:8080").fetch("/data/upload/1/a.png", 1)
    with pytest.raises(BadRequest, match="unsupported"):
        fetcher(ls).fetch("ftp://x/y.png", 1)
    with pytest.raises(BadRequest):
        fetcher(ls).fetch(None, 1)


def test_local_files_from_the_mounted_root_are_confined(ls, tmp_path):
    (tmp_path / "root" / "images").mkdir(parents=True)
    (tmp_path / "root" / "images" / "a.png").write_bytes(_png(7, 5))
    (tmp_path / "secret.png").write_bytes(_png())
    f = fetcher(ls, local_files_document_root=str(tmp_path / "root"))
    assert f.load("/data/local-files/?d=images/a.png", 1).size == (7, 5)
    assert f.load(f"{ls.url}/data/local-files/?d=images%2Fa.png", 1).size == (7, 5)
    with pytest.raises(MediaError) as err:
        f.fetch("/data/local-files/?d=../secret.png", 1)
    assert err.value.status == 403 and "outside" in err.value.message
    with pytest.raises(MediaError, match="not found under LOCAL_FILES_DOCUMENT_ROOT"):
        f.fetch("/data/local-files/?d=images/missing.png", 1)


def test_local_files_through_label_studio_explain_the_403(ls):
    with pytest.raises(MediaError, match="LOCAL_FILES_SERVING_ENABLED"):
        fetcher(ls, label_studio_api_key=LEGACY).fetch("/data/local-files/?d=images/a.png", 1)


def test_foreign_hosts_are_refused_unless_allow_listed(ls, foreign):
    url = f"{foreign.url}/public.png"
    with pytest.raises(MediaError) as err:
        fetcher(ls, label_studio_api_key=LEGACY).fetch(url, 1)
    assert err.value.status == 403 and "MEDIA_ALLOWED_HOSTS" in err.value.message
    port = foreign.server.server_port
    ok = fetcher(ls, label_studio_api_key=LEGACY, media_allowed_hosts=(f"127.0.0.1:{port}",))
    assert ok.load(url, 1).size == (20, 10)
    assert foreign.seen_auth[-1] is None  # Label Studio's token never leaves for another host


def test_presigned_cloud_uri_follows_only_safe_redirects(ls, foreign):
    ls.redirect_to = f"{foreign.url}/public.png"
    with pytest.raises(MediaError, match="refusing to fetch"):  # a loopback target is not a public host
        fetcher(ls, label_studio_api_key=LEGACY).fetch("s3://bucket/img.png", 7)
    allowed = fetcher(ls, label_studio_api_key=LEGACY, media_allowed_hosts=("127.0.0.1",))
    assert allowed.load("s3://bucket/img.png", 7).size == (20, 10)
    assert foreign.seen_auth[-1] is None
    with pytest.raises(BadRequest, match="task id"):
        allowed.fetch("s3://bucket/img.png", None)


def test_download_size_is_capped(ls):
    f = fetcher(ls, label_studio_api_key=LEGACY, max_image_bytes=1000)
    with pytest.raises(MediaError) as err:
        f.fetch("/huge.png", 1)
    assert err.value.status == 413


def test_unreachable_label_studio_is_reported():
    settings = Settings.from_env({})
    settings.label_studio_url = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(MediaError, match="cannot connect"):
        MediaFetcher(settings).fetch("/data/upload/1/a.png", 1)


def test_data_uri_images():
    uri = "data:image/png;base64," + base64.b64encode(_png(3, 2)).decode()
    image = MediaFetcher(Settings.from_env({})).load(uri)
    assert image.size == (3, 2) and isinstance(image.array, np.ndarray)
