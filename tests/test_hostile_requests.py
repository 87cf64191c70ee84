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
from ml_backend.engine import Engine
from ml_backend.testing import DiskPredictor

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


@pytest.mark.parametrize("url, words", [
    ("http://[::1/x.png", ["closed"]),
    ("http://[zz]/x", ["IPv6"]),
    ("s3://[bad", ["malformed"]),
    ("s3:///key.png", ["bucket"]),
    ("http://127.0.0.1:9\\@127.0.0.1:9/data/upload/1/x.png", ["backslash"]),
    ("http://user@127.0.0.1:9/data/upload/1/x.png", ["credentials"]),
    ("http://127.0.0.1:99999/x.png", ["port"]),
    ("/data/local-files/?d=a%00b.png", ["NUL"]),
    ("//127.0.0.1:9/data/upload/1/x.png", ["no scheme"]),
])
def test_malformed_image_urls_are_4xx(client, url, words):
    _assert_4xx(client.post("/predict", json=_predict_with_image(url)), *words)


def test_lone_surrogates_anywhere_in_a_body_are_400(client):
    body = json.dumps(ONE_CLICK)
    in_key = body.replace('"image":', '"im\\ud800age":', 1)
    in_url = json.dumps(_predict_with_image("/data/upload/1/PLACEHOLDER.png")).replace("PLACEHOLDER", "\\ud800")
    for path, text in (("/predict", in_key), ("/predict", in_url), ("/webhook", '{"action": "\\ud800", "project": 1}'),
                       ("/setup", '{"project": "1.2", "label_config": "\\udfff"}')):
        _assert_4xx(_raw(client, path, text), "surrogate")
    # A surrogate pair is valid text (an emoji) and is accepted.
    assert _raw(client, "/webhook", '{"action": "\\ud83d\\ude00", "project": 1}').status_code == 200


def test_an_echoed_non_ascii_action_renders(client):
    reply = client.post("/webhook", json={"action": "ÄNNOTATION_CREATED ✓", "project": 1})
    assert reply.status_code == 200 and reply.json()
