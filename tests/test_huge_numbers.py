"""A 400-digit integer where a coordinate or a size belongs (a CVAT point or box, a keypoint's x, original_width,
a rectangle's value, a saved polygon's point) is a 4xx with a short message, over HTTP, through the nuclio handler's
call and in the export command, never a 500 from an OverflowError deep in a handler (issue 37, item 3). The bound
lives in the one JSON parser (``ml_backend/jsonbody.py``)."""

from __future__ import annotations

import base64
import copy
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from backend_helpers import make_app, recorded

HUGE = 10**400
KEYPOINTS = (
    '<KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>'
)
RECTANGLES = '<RectangleLabels name="box" toName="image" smart="true"><Label value="Object"/></RectangleLabels>'
CONFIG = (
    '<View><Image name="image" value="$image"/><PolygonLabels name="poly" toName="image"><Label value="Object"/>'
    f"</PolygonLabels>{KEYPOINTS}{RECTANGLES}</View>"
)


def _keypoint(**value) -> dict:
    v = {"x": 50.0, "y": 50.0, "width": 0.6, "keypointlabels": ["Object"], **value}
    return {"original_width": 481, "original_height": 321, "image_rotation": 0, "value": v, "id": "k1",
            "from_name": "kp", "to_name": "image", "type": "keypointlabels"}  # fmt: skip


def _body(result: list[dict], annotations: list[dict] | None = None) -> dict:
    body = recorded("predict_interactive_1click")
    body["label_config"] = CONFIG
    body["tasks"][0]["annotations"] = annotations or []
    body["params"]["context"]["result"] = result
    return body


def _saved_polygon(points: list) -> dict:
    value = {"points": points, "polygonlabels": ["Object"], "closed": True}
    result = {"id": "p1", "type": "polygonlabels", "from_name": "poly", "to_name": "image", "value": value,
              "original_width": 481, "original_height": 321}  # fmt: skip
    return {"id": 9, "result": [result], "updated_at": "2026-01-01T00:00:00Z"}


def _ls_cases() -> dict[str, dict]:
    big_wide = _keypoint()
    big_wide["original_width"] = HUGE
    rectangle = {**_keypoint(), "type": "rectanglelabels", "from_name": "box"}
    rectangle["value"] = {"x": 10, "y": 10, "width": HUGE, "height": 20, "rectanglelabels": ["Object"]}
    square = [[40, 40], [60, 40], [60, 60], [40, 60]]
    return {
        "keypoint x": _body([_keypoint(x=HUGE)]),
        "keypoint y (negative)": _body([_keypoint(y=-HUGE)]),
        "original_width": _body([big_wide]),
        "rectangle width": _body([rectangle]),
        "saved polygon point": _body([_keypoint()], [_saved_polygon([*square, [HUGE, 50]])]),
    }


@pytest.fixture(scope="module")
def client():
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("name", list(_ls_cases()))
def test_label_studio_requests_with_a_400_digit_integer_get_a_4xx(client, name):
    reply = client.post("/predict", content=json.dumps(_ls_cases()[name]), headers={"content-type": "application/json"})
    assert 400 <= reply.status_code < 500, (reply.status_code, reply.text[:300])
    message = reply.json()["error"]
    assert "digits" in message and len(message) < 200 and "0" * 30 not in message  # short; the number not echoed


def test_the_same_request_with_ordinary_numbers_is_answered(client):
    body = _ls_cases()["saved polygon point"]
    body["tasks"][0]["annotations"] = [_saved_polygon([[40, 40], [60, 40], [60, 60], [40, 60]])]
    reply = client.post("/predict", json=body)
    assert reply.status_code == 200 and reply.json()["results"][0]["result"]


def _cvat_body(pos, box=None) -> dict:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(buf, format="PNG")
    return {"image": base64.b64encode(buf.getvalue()).decode(), "pos_points": pos, "neg_points": [],
            "obj_bbox": box or []}  # fmt: skip


CVAT_CASES = {
    "point x": _cvat_body([[HUGE, 5]]),
    "point y": _cvat_body([[5, -HUGE]]),
    "box corner": _cvat_body([], [[1, 1], [HUGE, 20]]),
}


@pytest.mark.parametrize("name", list(CVAT_CASES))
def test_cvat_calls_with_a_400_digit_integer_get_a_4xx_over_http_and_in_the_handler(client, name):
    headers = {"x-nuclio-function-name": "pth-adaptiveclick", "content-type": "application/json"}
    reply = client.post("/api/function_invocations", content=json.dumps(CVAT_CASES[name]), headers=headers)
    assert 400 <= reply.status_code < 500, (reply.status_code, reply.text[:300])
    assert "digits" in reply.json()["error"]
    # nuclio hands the handler a body it decoded itself: the interactor bounds it the same way
    status, answer = client.app.state.cvat.handle(copy.deepcopy(CVAT_CASES[name]))
    assert 400 <= status < 500 and "digits" in answer["error"], (status, answer)


def test_the_export_command_refuses_a_400_digit_point_in_one_line(tmp_path, capsys):
    from cli import main

    task = {"id": 1, "data": {"image": "a.png"}, "annotations": [_saved_polygon([[1, 1], [HUGE, 2], [3, 9]])]}
    source = tmp_path / "export.json"
    source.write_text(json.dumps([task]))
    code = main(["export", "--from-json", str(source), "--format", "yolo-seg", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "digits" in err and "Traceback" not in err and len(err) < 300, err


def test_the_bound_is_64_bits_exactly():
    from ml_backend.errors import BadRequest
    from ml_backend.jsonbody import MAX_INT_DIGITS, check_numbers, loads

    assert loads(str(2**63 - 1)) == 2**63 - 1 and loads(str(-(2**63))) == -(2**63)
    for text in (str(2**63), "9" * (MAX_INT_DIGITS + 1), "-" + "1" * 400):
        with pytest.raises(ValueError, match="digits"):
            loads(text)
    check_numbers({"a": [[1, 2**62]]})
    with pytest.raises(BadRequest, match="digits"):
        check_numbers({"a": [[1, {"b": HUGE}]]})


def test_cvat_mask_runs_of_extreme_size_are_a_region_error():
    """A CVAT mask shape read for fine-tuning (``ml_backend.cvat.annotations``): runs of 1e308 pixels summed to inf
    (an ``OverflowError``); any run is now counted at most at its box's size."""
    from ml_backend.cvat.annotations import decode_box_rle
    from ml_backend.masks.regions import RegionError

    with pytest.raises(RegionError, match="runs cover"):
        decode_box_rle([1e308, 1e308, 0, 0, 3, 3], 10, 10, "job 1 shape 2")
    assert decode_box_rle([3, 13, 0, 0, 3, 3], 10, 10, "ok").sum() == 13
