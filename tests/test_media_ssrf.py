"""Parser-differential SSRF corpus: no URL shape makes the backend reach an internal service or send Label
Studio's token anywhere but Label Studio.

Three local servers stand for Label Studio, an allow-listed media host and an internal service (same machine as
Label Studio, another port: what an attacker would aim at). Every URL of the corpus is fetched as a task image
and as a redirect target; afterwards the internal service must have received nothing and every request that
carried a token must have gone to Label Studio.
"""

from __future__ import annotations

import http.server
import io
import threading

import pytest
from PIL import Image

from ml_backend.config import Settings
from ml_backend.errors import BackendError
from ml_backend.finetuning.worker import LabelStudioAPI
from ml_backend.media.fetcher import MediaFetcher
from ml_backend.media.urls import UnsafeURL, parse_destination

TOKEN = "legacy-secret-token"


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 10)).save(buf, format="PNG")
    return buf.getvalue()


class Recorder:
    """Answers every GET and records (path, Authorization); ``/go/<k>`` redirects to ``redirects[k]``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.redirects: dict[str, str] = {}
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                recorder.requests.append((self.path, self.headers.get("Authorization")))
                if self.path.startswith("/go/"):
                    self.send_response(302)
                    self.send_header("Location", recorder.redirects[self.path[4:]])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = _png()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def servers():
    ls, allowed, internal = Recorder(), Recorder(), Recorder()
    yield ls, allowed, internal
    for server in (ls, allowed, internal):
        server.close()


def _fetcher(ls: Recorder, allowed: Recorder) -> MediaFetcher:
    settings = Settings.from_env({})
    settings.label_studio_url = f"http://127.0.0.1:{ls.port}"
    settings.label_studio_api_key = TOKEN
    settings.media_allowed_hosts = (f"localhost:{allowed.port}",)
    settings.fetch_timeout_s = 5
    return MediaFetcher(settings)


def corpus(ls: Recorder, allowed: Recorder, internal: Recorder) -> list[str]:
    """URL shapes that parsers disagree on, aimed at the internal service."""
    # Short names keep the corpus readable: L = Label Studio, A = the allowed host, N = the internal service.
    L, A, N, pi = f"127.0.0.1:{ls.port}", f"localhost:{allowed.port}", f"127.0.0.1:{internal.port}", internal.port
    path = "/data/upload/1/x.png"
    return [
        f"http://{N}\\@{L}{path}",  # the reported bypass
        f"http://{N}\\\\@{L}{path}",
        f"http://{N}\\{path}@{L}{path}",
        f"http://{L}\\@{N}{path}",
        f"http://{N}\\.{L}{path}",
        f"http://{N}#@{L}{path}",
        f"http://{N}?@{L}{path}",
        f"http://{N}/#@{L}{path}",
        f"http://{L}@{N}{path}",  # userinfo that looks like Label Studio
        f"http://user:pass@{N}{path}",
        f"http://{N}%40{L}{path}",
        f"http://{L}%2f@{N}{path}",
        f"http://127%2e0%2e0%2e1:{pi}{path}",
        f"http://127\u30020\u30020\u30021:{pi}{path}",  # ideographic full stops
        f"http://127\uff0e0\uff0e0\uff0e1:{pi}{path}",  # fullwidth full stops
        f"http://\u24c1ocalhost:{pi}{path}",  # IDNA maps a circled L to l
        f"http://[::ffff:127.0.0.1]:{pi}{path}",
        f"http://[::ffff:7f00:1]:{pi}{path}",
        f"http://[::1]:{pi}{path}",
        f"http://[127.0.0.1:{pi}]{path}",
        f"http://[::1{path}",
        f"http://[zz]{path}",
        f"http://127.0.0.1:{pi}:{ls.port}{path}",
        f"http://127.1:{pi}{path}",
        f"http://0x7f.0.0.1:{pi}{path}",
        f"http://2130706433:{pi}{path}",
        f"http://0177.0.0.1:{pi}{path}",
        f"http://127.0.0.1\t:{pi}{path}",
        f"http://127.0.0.1:{ls.port}\n@{N}{path}",
        f"http://127.0.0.1:{ls.port}\r\n@{N}{path}",
        f"http://{N}\x00@{L}{path}",
        f"http:\\\\{N}{path}",
        f"http:/{N}{path}",
        f"//{N}{path}",
        f"HTTP://{N}\\@{L}{path}",
        f"http://{N}\\@{A}{path}",
        f"http://{A}\\@{N}{path}",
        f"http://{N}\ud800@{L}{path}",
        f"http://{N}",  # plain internal: refused by the allow-list, as before
    ]


def _assert_contained(ls: Recorder, allowed: Recorder, internal: Recorder) -> None:
    assert internal.requests == [], f"the internal service was reached: {internal.requests}"
    assert all(auth is None for _, auth in allowed.requests), "Label Studio's token reached the allow-listed host"
    assert all(auth in (None, f"Token {TOKEN}") for _, auth in ls.requests)


def _fetch_and_check(fetcher: MediaFetcher, url: str, servers) -> None:
    """Fetch ``url``: it may work or fail with a 4xx/5xx and a message, but never reach what it must not."""
    try:
        fetcher.fetch(url, 1)
    except BackendError as error:
        assert 400 <= error.status < 600 and error.message, url
    _assert_contained(*servers)


def test_no_url_in_the_corpus_reaches_the_internal_service_or_leaks_the_token(servers):
    ls, allowed, internal = servers
    fetcher = _fetcher(ls, allowed)
    for url in corpus(ls, allowed, internal):
        _fetch_and_check(fetcher, url, servers)


def test_no_redirect_in_the_corpus_gets_through(servers):
    ls, allowed, internal = servers
    fetcher = _fetcher(ls, allowed)
    urls = corpus(ls, allowed, internal)
    locations = (
        urls
        + [u.replace("http://", "//", 1) for u in urls]
        + [
            f"/\\127.0.0.1:{internal.port}/x",
            f"\\\\127.0.0.1:{internal.port}/x",
            f"http:127.0.0.1:{internal.port}/x",
        ]
    )
    for k, location in enumerate(locations):
        ls.redirects[str(k)] = location
        allowed.redirects[str(k)] = location
        for start in (f"/go/{k}", f"http://localhost:{allowed.port}/go/{k}"):
            _fetch_and_check(fetcher, start, servers)


def test_legitimate_urls_still_work_and_carry_the_token_only_to_label_studio(servers):
    ls, allowed, internal = servers
    fetcher = _fetcher(ls, allowed)
    ls.requests.clear()
    allowed.requests.clear()
    assert fetcher.load("/data/upload/1/a.png", 1).size == (8, 6)
    assert fetcher.load(f"http://127.0.0.1:{ls.port}/data/upload/1/b%20c.png?x=1#frag", 1).size == (8, 6)
    assert fetcher.load(f"http://localhost:{allowed.port}/img/d.png", 1).size == (8, 6)
    # Label Studio's own media URL written with another host is fetched from LABEL_STUDIO_URL.
    assert fetcher.load("http://label-studio.invalid:8080/data/upload/1/e.png", 1).size == (8, 6)
    assert [p for p, _ in ls.requests] == [
        "/data/upload/1/a.png",
        "/data/upload/1/b%20c.png?x=1",
        "/data/upload/1/e.png",
    ]
    assert all(auth == f"Token {TOKEN}" for _, auth in ls.requests)
    assert allowed.requests == [("/img/d.png", None)]
    ls.redirects["ok"] = f"http://localhost:{allowed.port}/img/f.png"
    assert fetcher.load("/go/ok", 1).size == (8, 6)
    assert allowed.requests[-1] == ("/img/f.png", None)
    _assert_contained(ls, allowed, internal)


def test_the_fine_tune_worker_sends_its_token_only_to_label_studio(servers):
    ls, allowed, internal = servers
    fetcher = _fetcher(ls, allowed)
    api = LabelStudioAPI(fetcher, timeout=5)
    ls.redirects["api"] = f"http://127.0.0.1:{internal.port}/api/projects/1"
    with pytest.raises(RuntimeError, match="redirect"):
        api.get("/go/api")
    fetcher.settings.label_studio_url = f"http://127.0.0.1:{internal.port}\\@127.0.0.1:{ls.port}"
    with pytest.raises(RuntimeError, match="backslash"):
        api.get("/api/projects/1")
    _assert_contained(ls, allowed, internal)


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://a\\@b/x", "backslash"),
        ("http://u@b/x", "credentials"),
        ("http://a%2eb/x", "percent-encoded"),
        ("http://b\u3002c/x", "non-ASCII"),
        ("http://[::1/x", "closed"),
        ("http://[zz]/x", "not an IPv6"),
        ("http://127.1/x", "dotted-quad"),
        ("http://b:99999/x", "port"),
        ("http://b\t/x", "control"),
        ("ftp://b/x", "only http"),
    ],
)
def test_refusals_say_what_is_wrong(url, why):
    with pytest.raises(UnsafeURL, match=why) as error:
        parse_destination(url)
    assert error.value.status == 422


def test_the_rebuilt_url_is_canonical():
    d = parse_destination("HTTP://Example.COM.:80/a b/\u00e9?q=1 2#frag")
    assert (d.scheme, d.host, d.port) == ("http", "example.com", 80)
    assert d.url == "http://example.com/a%20b/%C3%A9?q=1%202"
    assert parse_destination("https://[::FFFF:7F00:1]:8443/").url == "https://[::ffff:7f00:1]:8443/"
    assert parse_destination("http://label_studio:8080").path == "/"
