"""Fuzzing /predict, /webhook and /setup with malformed bodies (hypothesis): never a 5xx, always a JSON error."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend_helpers import RECORDED, make_app, recorded

CONFIG = recorded("predict_interactive_1click")["label_config"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)
numbers = st.one_of(st.floats(), st.integers(-(10**9), 10**9), st.text(max_size=6), st.none(), st.booleans())
image_urls = st.one_of(
    st.sampled_from(
        [
            "/data/upload/1/a.png",
            "/data/local-files/?d=a.png",
            "s3://b/a.png",
            "http://127.0.0.1:1/x.png",
            "",
            "data:image/png;base64,AAAA",
            "images/a.png",
        ]
    ),
    json_values,
)


keypoints = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["keypointlabels", "keypointlabels", "keypointlabels", "rectanglelabels"]),
        "value": st.fixed_dictionaries(
            {
                "x": st.floats(-5, 105),
                "y": st.floats(-5, 105),
                "keypointlabels": st.sampled_from([["Object"], ["Object"], ["Other"], []]),
            }
        ),
        "from_name": st.sampled_from(["tag2", "tag2", "tag2", "nope"]),
        "to_name": st.sampled_from(["image", "image", "image", "other"]),
    },
    optional={
        "is_positive": st.booleans(),
        "original_width": st.integers(1, 1500),
        "original_height": st.integers(1, 1500),
        "image_rotation": st.sampled_from([0, 90, 180, 270]),
        "item_index": st.integers(0, 3),
    },
)
task = st.fixed_dictionaries(
    {
        "data": st.fixed_dictionaries({"image": st.sampled_from(["/data/upload/1/a.png", "s3://b/a.png"])}),
        "id": st.integers(1, 10**6),
    },
    optional={"annotations": st.just([]), "drafts": st.just([])},
)
predict_bodies = st.fixed_dictionaries(
    {
        "tasks": st.lists(task, min_size=1, max_size=2),
        "label_config": st.sampled_from(
            [
                CONFIG,
                CONFIG,
                CONFIG,
                CONFIG.replace("BrushLabels", "RectangleLabels"),
                CONFIG.replace('value="$image"', 'valueList="$image"'),
            ]
        ),
        "project": st.sampled_from(["1.1795", 3, None]),
        "params": st.fixed_dictionaries(
            {
                "context": st.integers(0, 4).flatmap(
                    lambda i: st.fixed_dictionaries({"result": st.lists(keypoints, max_size=6)}) if i else st.none()
                )
            }
        ),
    }
)


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


def _replace(body, path, value):
    if not path:
        return value
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return body


webhook_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "action": st.one_of(
                st.sampled_from(["ANNOTATION_CREATED", "TASKS_DELETED", "PROJECT_DELETED", "START_TRAINING"]),
                json_values,
            ),
            "tasks": json_values,
            "project": json_values,
            "annotation": json_values,
        },
    ),
)


@pytest.fixture(scope="module")
def client():
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        yield c


def _check(response):
    assert response.status_code < 500, response.text
    assert isinstance(response.json(), dict)
    if response.status_code >= 400:
        assert response.json()["error"]


fuzz = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@fuzz
@given(body=predict_bodies, data=st.data())
def test_predict_never_5xx(client, body, data):
    """Plausible Label Studio requests, half of them with one node replaced by a value of any type."""
    if data.draw(st.booleans()):
        path = data.draw(st.sampled_from(list(_paths(body))))
        body = _replace(body, path, data.draw(json_values))
    _check(client.post("/predict", content=json.dumps(body), headers={"content-type": "application/json"}))


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=json_values)
def test_predict_arbitrary_json_never_5xx(client, body):
    _check(client.post("/predict", content=json.dumps(body), headers={"content-type": "application/json"}))


@fuzz
@given(body=webhook_bodies)
def test_webhook_never_5xx(client, body):
    _check(client.post("/webhook", content=json.dumps(body), headers={"content-type": "application/json"}))


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(raw=st.binary(max_size=200), path=st.sampled_from(["/predict", "/webhook", "/setup"]))
def test_raw_bytes_never_5xx(client, raw, path):
    _check(client.post(path, content=raw))


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=json_values)
def test_setup_never_5xx(client, body):
    _check(client.post("/setup", content=json.dumps(body), headers={"content-type": "application/json"}))


def test_mutated_recorded_payloads_never_5xx(client):
    """Every field of every recorded request replaced, one at a time, by values of the wrong type."""
    junk = [None, 1, -1, 1.5, "x", [], {}, [1], {"a": 1}, True]
    for record in RECORDED:
        paths = [
            p for p in _paths(record["body"]) if "rle" not in p and all(not isinstance(k, int) or k < 3 for k in p)
        ]
        for path in paths[1:120]:
            for value in junk[: 3 if len(path) > 3 else len(junk)]:
                body = json.loads(json.dumps(record["body"]))
                node = body
                for key in path[:-1]:
                    node = node[key]
                node[path[-1]] = value
                _check(client.post(record["path"], json=body))
