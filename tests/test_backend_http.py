"""The backend over HTTP: the requests Label Studio 1.23.2 really sent (recorded), auth, limits, errors,
concurrency, and the real engines (GrabCut baseline; AdaptiveClick with the tiny golden checkpoint)."""

from __future__ import annotations

import base64
import copy
import logging
import threading
import time

import numpy as np
import pytest
import requests
from fastapi.testclient import TestClient
from label_studio_sdk.converter.brush import decode_rle

from ml_backend.app import create_app
from ml_backend.config import Settings
from ml_backend.interactive.engine import Engine
from ml_backend.media.fetcher import decode_image
from testkit.standins import SEGMENTATION_ENGINE, DiskPredictor

from backend_helpers import RECORDED, ImageFetcher, make_app, recorded, running_server, synthetic_image
from prerequisites import missing


@pytest.fixture()
def client():
    with TestClient(make_app()) as c:
        yield c


def brush_mask(region: dict) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[..., 3]


def pixel(kp: dict) -> tuple[int, int]:
    v = kp["value"]
    return int(v["y"] / 100 * kp["original_height"]), int(v["x"] / 100 * kp["original_width"])


# --- recorded Label Studio traffic ---------------------------------------------------------------


def test_recorded_setup_and_versions(client):
    reply = client.post("/setup", json=recorded("setup")).json()
    assert reply == {"model_version": "disk"}
    assert client.get("/versions").json()["versions"] == ["disk"]
    for path in ("/health", "/"):
        body = client.get(path).json()
        assert body["status"] == "UP" and body["model_version"] == "disk"


def test_recorded_interactive_clicks_give_one_brush_region(client):
    one = recorded("predict_interactive_1click")
    assert "is_positive" not in one["params"]["context"]["result"][0]  # older UIs omit it: positive
    reply = client.post("/predict", json=one)
    assert reply.status_code == 200, reply.text
    [prediction] = reply.json()["results"]
    [region] = prediction["result"]
    assert (region["from_name"], region["to_name"], region["type"]) == ("tag", "image", "brushlabels")
    assert region["value"]["brushlabels"] == ["Object"] and region["value"]["format"] == "rle"
    assert (region["original_width"], region["original_height"], region["image_rotation"]) == (481, 321, 0)
    assert 0 < region["score"] <= 1 and prediction["model_version"] == "disk"
    mask1 = brush_mask(region)
    assert mask1[pixel(one["params"]["context"]["result"][0])] == 255

    two = recorded("predict_interactive_2click")
    assert two["tasks"][0]["annotations"], "the recorded 2-click request carries the task's annotation"
    reply2 = client.post("/predict", json=two)
    # One forward: the first click's state was cached. The saved annotation's region holds the first click, but
    # that object was already under way as a click object, so it stays one (no switch to continuing the region).
    assert reply2.headers["x-forwards"] == "1"
    region2 = reply2.json()["results"][0]["result"][0]
    mask2 = brush_mask(region2)
    neg = two["params"]["context"]["result"][1]
    assert neg["is_positive"] is False and mask2[pixel(neg)] == 0
    assert region2["id"] != region["id"]

    again = client.post("/predict", json=one)  # the user removed the negative click
    assert again.headers["x-forwards"] == "0" and "result" in again.headers["x-cache"]
    assert np.array_equal(brush_mask(again.json()["results"][0]["result"][0]), mask1)


def test_recorded_task_open_answers_at_once_with_empty_results(client):
    body = recorded("predict_batch")
    assert body["params"]["context"] is None
    t0 = time.perf_counter()
    reply = client.post("/predict", json=body)
    assert time.perf_counter() - t0 < 1.0
    assert reply.json()["results"] == [{"result": [], "score": 0.0, "model_version": "disk"}] * len(body["tasks"])


@pytest.mark.parametrize("name", [r["name"] for r in RECORDED if r["path"] == "/webhook"])
def test_recorded_webhooks_are_acknowledged(client, name):
    body = recorded(name)
    reply = client.post("/webhook", json=body)
    assert reply.status_code == 200 and reply.json()["action"] == body["action"]


def test_interactive_call_without_clicks_is_never_an_empty_results_list(client):
    body = recorded("predict_interactive_1click")
    body["params"]["context"] = {"result": []}
    assert client.post("/predict", json=body).json()["results"] == [
        {"result": [], "score": 0.0, "model_version": "disk"}
    ]


def test_keypoint_label_without_brush_label_logs_a_clear_error(client, caplog):
    body = recorded("predict_interactive_1click")
    body["label_config"] = body["label_config"].replace(
        'toName="image"><Label value="Object"/></BrushLabels>', 'toName="image"><Label value="Car"/></BrushLabels>'
    )
    with caplog.at_level(logging.ERROR, logger="adaptiveclick.backend"):
        reply = client.post("/predict", json=body)
    assert reply.status_code == 200 and reply.json()["results"][0]["result"] == []
    assert 'add <Label value="Object"/> to the BrushLabels' in caplog.text


def test_setup_warns_about_an_unusable_config(client):
    body = recorded("setup")
    body["schema"] = '<View><Image name="image" value="$image"/></View>'
    reply = client.post("/setup", json=body).json()
    assert reply["model_version"] == "disk" and any("KeyPointLabels" in w for w in reply["warnings"])


def test_rotated_resized_and_multi_image_tasks(caplog):
    app = make_app()
    with TestClient(app) as c:
        body = recorded("predict_interactive_1click")
        kp = body["params"]["context"]["result"][0]
        kp.update(original_width=321, original_height=481, image_rotation=90)
        region = c.post("/predict", json=body).json()["results"][0]["result"][0]
        assert (region["original_width"], region["original_height"], region["image_rotation"]) == (321, 481, 90)
        assert brush_mask(region)[pixel(kp)] == 255

        body = recorded("predict_interactive_1click")
        kp = body["params"]["context"]["result"][0]
        kp.update(original_width=962, original_height=642)  # not the decoded 481x321: rescaled, logged
        with caplog.at_level(logging.WARNING, logger="adaptiveclick.backend"):
            region = c.post("/predict", json=body).json()["results"][0]["result"][0]
        assert "rescaled" in caplog.text and brush_mask(region).shape == (642, 962)
        assert brush_mask(region)[pixel(kp)] == 255

        body = recorded("predict_interactive_1click")
        body["label_config"] = body["label_config"].replace('value="$image"', 'valueList="$images"')
        body["tasks"][0]["data"] = {"images": ["/data/upload/1/a.png", "/data/upload/1/b.png"]}
        body["params"]["context"]["result"][0]["item_index"] = 1
        region = c.post("/predict", json=body).json()["results"][0]["result"][0]
        assert region["item_index"] == 1


# --- auth, limits, malformed input ---------------------------------------------------------------


def test_basic_auth_on_every_route_but_health():
    with TestClient(make_app(basic_auth_user="u", basic_auth_pass="p")) as c:
        assert c.get("/health").status_code == 200
        for method, path in (
            ("get", "/"),
            ("get", "/versions"),
            ("post", "/setup"),
            ("post", "/predict"),
            ("post", "/webhook"),
        ):
            r = getattr(c, method)(path)
            assert r.status_code == 401 and "BASIC_AUTH" in r.json()["error"], path
            assert r.headers["www-authenticate"].startswith("Basic")
        wrong = {"Authorization": "Basic " + base64.b64encode(b"u:wrong").decode()}
        assert c.get("/versions", headers=wrong).status_code == 401
        good = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
        assert c.get("/versions", headers=good).status_code == 200
        assert c.post("/setup", json=recorded("setup"), headers=good).status_code == 200


def test_request_size_limit():
    with TestClient(make_app(max_request_bytes=1000)) as c:
        assert c.post("/predict", content=b"{" + b" " * 2000 + b"}").status_code == 413

        def chunks():
            for _ in range(10):
                yield b" " * 500

        assert c.post("/webhook", content=chunks()).status_code == 413  # no Content-Length


@pytest.mark.parametrize(
    "body,status",
    [
        (b"{", 400),
        (b"\xff\xfe", 400),
        (b"", 400),
        (b"[1]", 422),
        (b'"x"', 422),
        (b'{"tasks": {}}', 422),
        (b'{"tasks": [1]}', 422),
        (b'{"tasks": [{"data": []}]}', 422),
        (b'{"tasks": [{"id": "x", "data": {}}]}', 422),
        (b'{"tasks": [{"data": {}}], "params": 5}', 422),
        (b'{"tasks": [{"data": {}}], "params": {"context": []}}', 422),
        (b'{"tasks": [{"data": {}}], "params": {"context": {"result": []}}, "label_config": "<View"}', 422),
        (
            b'{"tasks": [{"data": {}}], "params": {"context": {"result": '
            b'[{"type": "keypointlabels", "value": {"x": 1}}]}},'
            b' "label_config": "<View><Image name=\\"image\\" value=\\"$image\\"/></View>"}',
            422,
        ),
        (b"[" * 100000 + b"]" * 100000, 400),
    ],
)
def test_malformed_predict_bodies_get_4xx_with_a_message(client, body, status):
    r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]


def test_missing_image_field_and_wrong_webhooks(client):
    body = recorded("predict_interactive_1click")
    body["tasks"][0]["data"] = {"img": "/data/upload/1/x.png"}
    r = client.post("/predict", json=body)
    assert r.status_code == 422 and 'no data field "image"' in r.json()["error"]
    assert client.post("/webhook", json={"nothing": 1}).status_code == 422
    assert client.post("/webhook", json=[1]).status_code == 422
    assert client.post("/setup", json={"schema": 5}).status_code == 422


def test_too_many_clicks_is_a_4xx():
    with TestClient(make_app(max_clicks=3)) as c:
        body = recorded("predict_interactive_1click")
        kp = body["params"]["context"]["result"][0]
        body["params"]["context"]["result"] = [dict(kp, value=dict(kp["value"], x=float(i))) for i in range(1, 6)]
        assert c.post("/predict", json=body).status_code == 422


# --- concurrency -----------------------------------------------------------------------------


@pytest.fixture()
def slow_server():
    """A real uvicorn server in a thread, with a model that takes 1.5 s per click."""
    with running_server(make_app(lambda: DiskPredictor(cost_ms=1500))) as url:
        yield url


def test_health_and_setup_answer_fast_while_a_prediction_runs(slow_server):
    done = {}

    def click():
        done["reply"] = requests.post(slow_server + "/predict", json=recorded("predict_interactive_1click"), timeout=30)

    worker = threading.Thread(target=click)
    worker.start()
    time.sleep(0.3)
    for path, method, body in (
        ("/health", "get", None),
        ("/setup", "post", recorded("setup")),
        ("/versions", "get", None),
        ("/webhook", "post", recorded("webhook_start_training")),
    ):
        t0 = time.perf_counter()
        r = getattr(requests, method)(slow_server + path, json=body, timeout=5)
        assert r.status_code == 200 and time.perf_counter() - t0 < 0.5, path
    assert worker.is_alive()  # the prediction was still running
    worker.join(30)
    assert done["reply"].status_code == 200


# --- real engines ------------------------------------------------------------------------------


def _click_payload(points, w, h):
    """Interactive /predict body for [(row, col, positive), ...] on a w x h image."""
    body = recorded("predict_interactive_1click")
    template = body["params"]["context"]["result"][0]
    body["params"]["context"]["result"] = [
        dict(
            template,
            id=f"kp{i}",
            original_width=w,
            original_height=h,
            is_positive=pos,
            value=dict(template["value"], x=(c + 0.5) / w * 100, y=(r + 0.5) / h * 100),
        )
        for i, (r, c, pos) in enumerate(points)
    ]
    return body


def test_segmentation_engine_honours_positive_and_negative_clicks(shared_dir):
    image_path = shared_dir / "datasets" / "GrabCut" / "images" / "37073.jpg"
    if not image_path.exists():
        missing(f"{image_path} not found")
    image = decode_image(image_path.read_bytes(), 10**8).array
    h, w = image.shape[:2]
    app = make_app(engine_factory=None, image=image, model_engine=SEGMENTATION_ENGINE)
    points = [(h // 2, w // 2, True), (h // 10, w // 10, False), (h // 2, int(w * 0.6), True)]
    masks = []
    with TestClient(app) as c:
        for n in range(1, 4):
            r = c.post("/predict", json=_click_payload(points[:n], w, h))
            assert r.status_code == 200, r.text
            mask = brush_mask(r.json()["results"][0]["result"][0])
            for row, col, positive in points[:n]:
                assert mask[row, col] == (255 if positive else 0), (n, row, col)
            masks.append(mask)
    assert not np.array_equal(masks[0], masks[2])


def test_adaptiveclick_engine_with_real_predictor_and_prefix_cache(shared_dir):
    """The real Predictor (tiny golden weights, random): 2nd click = 1 forward, equal to a full replay."""
    ckpt = shared_dir / "golden" / "tiny_official.pth"
    if not ckpt.exists():
        missing(f"{ckpt} not found")
    image = synthetic_image(160, 120)
    app = make_app(
        engine_factory=None,
        image=image,
        model_engine="adaptiveclick",
        model_checkpoint=str(ckpt),
        device="cpu",
        flip=False,
    )  # no flip TTA: half the CPU time
    points = [(60, 80, True), (20, 20, False)]
    with TestClient(app) as c:
        version = c.post("/setup", json=recorded("setup")).json()["model_version"]
        assert version.startswith("adaptiveclick-tiny_official-")
        first = c.post("/predict", json=_click_payload(points[:1], 160, 120))
        assert first.status_code == 200, first.text
        second = c.post("/predict", json=_click_payload(points, 160, 120))
        assert second.headers["x-forwards"] == "1"
        served = brush_mask(second.json()["results"][0]["result"][0]) > 0
    from model.checkpoint import load_model
    from model.predictor import Predictor
    from model.refine import DEFAULT_REFINE

    predictor = Predictor(load_model(ckpt, "cpu"), device="cpu", flip=False, refine=DEFAULT_REFINE)  # as served
    predictor.set_image(image)
    expected = predictor.predict([(r, col, pos) for r, col, pos in points]) > predictor.threshold
    assert np.array_equal(served, expected)


def test_served_inference_options_default_to_the_models_and_bad_ones_name_the_variable():
    from ml_backend.interactive.engine import predictor_options
    from model.refine import DEFAULT_FLIP, DEFAULT_REFINE, Refinement

    options = predictor_options(Settings.from_env({}))
    assert options["flip"] is DEFAULT_FLIP and options["refine"] == Refinement.parse(DEFAULT_REFINE)
    options = predictor_options(Settings.from_env({"MODEL_FLIP": "true", "MODEL_REFINE": "none"}))
    assert options["flip"] is True and options["refine"] == Refinement()
    with pytest.raises(ValueError, match="MODEL_REFINE='sharp': unknown refinement 'sharp'"):
        predictor_options(Settings.from_env({"MODEL_REFINE": "sharp"}))


def test_health_says_loading_and_fails_label_studios_check_until_the_model_answers():
    """Label Studio connects any backend whose /health answers 2xx and shows only the status line of anything else:
    while the model loads, its connection check must say 503 (and the body, for scripts, LOADING)."""
    loaded = threading.Event()

    class LoadingEngine(Engine):
        def _build_factory(self):
            loaded.wait(30)
            return DiskPredictor

    settings = Settings.from_env({})
    settings.no_traffic_warning_s = 0
    app = create_app(settings, LoadingEngine(settings, name="disk"), ImageFetcher(settings, synthetic_image()))
    with TestClient(app) as client:
        reply = client.get("/health")
        assert reply.status_code == 503 and reply.headers["retry-after"] == "5"
        assert reply.json()["status"] == "LOADING" and reply.json()["model_loaded"] is False
        loaded.set()
        for _ in range(200):
            reply = client.get("/health")
            if reply.status_code == 200:
                break
            time.sleep(0.05)
        assert reply.status_code == 200 and reply.json()["status"] == "UP" and reply.json()["model_loaded"] is True


def test_a_model_that_failed_to_load_fails_label_studios_health_check(tmp_path):
    app = make_app(None, model_engine="adaptiveclick", model_checkpoint=str(tmp_path / "missing.safetensors"))
    with TestClient(app) as client:
        for _ in range(100):
            reply = client.get("/health")
            if reply.json().get("model_error"):
                break
            time.sleep(0.05)
        assert reply.status_code == 503  # Label Studio treats any 2xx as a working backend
        body = reply.json()
        assert body["status"] == "ERROR" and "missing.safetensors" in body["model_error"] and not body["model_loaded"]


def _keypoint(x: float, y: float, positive: bool, n: int) -> dict:
    region = copy.deepcopy(recorded("predict_interactive_1click")["params"]["context"]["result"][0])
    region["value"]["x"], region["value"]["y"], region["id"] = x, y, f"kp{n}"
    region["is_positive"] = positive
    return region


@pytest.mark.parametrize("policy", ["exact", "merged"])
def test_a_burst_of_clicks_skips_the_superseded_requests_and_runs_the_newest_by_the_burst_policy(policy):
    """Clicks faster than the model: requests 2 and 3 queue behind request 1; request 2 is answered at once
    without a forward (the editor shows only the reply to its newest request) and request 3 adds its two new
    clicks one forward each (BURST_CLICKS=exact, the default: the mask of the three clicks made slowly) or in one
    forward (merged)."""
    app = make_app(lambda: DiskPredictor(cost_ms=1200), burst_clicks=policy)
    clicks = [_keypoint(52.0, 48.5, True, 1), _keypoint(40.0, 45.0, True, 2), _keypoint(8.5, 10.0, False, 3)]
    replies: dict[int, requests.Response] = {}
    with running_server(app) as url:

        def send(n: int) -> None:
            payload = recorded("predict_interactive_1click")
            payload["params"]["context"]["result"] = clicks[:n]
            replies[n] = requests.post(url + "/predict", json=payload, timeout=30)

        workers = []
        for n in (1, 2, 3):
            workers.append(threading.Thread(target=send, args=(n,)))
            workers[-1].start()
            time.sleep(0.3)  # arrival order 1, 2, 3; 2 and 3 while 1 is still computing
        for worker in workers:
            worker.join(30)
    assert [replies[n].status_code for n in (1, 2, 3)] == [200, 200, 200]
    assert replies[1].headers["x-forwards"] == "1"
    assert replies[2].headers["x-forwards"] == "0" and replies[2].headers.get("x-superseded") == "1"
    assert replies[2].json()["results"][0]["result"] == []
    assert replies[3].headers["x-forwards"] == ("2" if policy == "exact" else "1")
    assert "x-superseded" not in replies[3].headers
    mask = brush_mask(replies[3].json()["results"][0]["result"][0])
    assert mask[pixel(clicks[1])] == 255 and mask[pixel(clicks[2])] == 0
    if policy == "exact":  # the stand-in's disks are the same either way: only exact's equality is the point
        with TestClient(make_app()) as client:  # the same three clicks, one at a time
            for n in (1, 2, 3):
                payload = recorded("predict_interactive_1click")
                payload["params"]["context"]["result"] = clicks[:n]
                slow = client.post("/predict", json=payload)
        assert brush_mask(slow.json()["results"][0]["result"][0]).tolist() == mask.tolist()


def test_a_polygon_project_is_answered_with_closed_percent_polygons_that_match_the_mask():
    """The clicked label's output tag is PolygonLabels: one polygonlabels region per part, points in percent; the
    polygon rasterised back is the brush mask the same clicks give (IoU >= 0.98, the tolerance's measured floor)."""
    from ml_backend.masks.polygons import polygons_to_mask

    image = synthetic_image()
    two = recorded("predict_interactive_2click")
    two["tasks"][0]["annotations"] = []  # its saved brush region would be continued by the brush project only
    with TestClient(make_app(image=image)) as client:
        brush = brush_mask(client.post("/predict", json=two).json()["results"][0]["result"][0]) > 0
    polygon_body = copy.deepcopy(two)
    polygon_body["label_config"] = polygon_body["label_config"].replace("BrushLabels", "PolygonLabels")
    with TestClient(make_app(image=image)) as client:
        reply = client.post("/predict", json=polygon_body)
    assert reply.status_code == 200
    regions = reply.json()["results"][0]["result"]
    assert regions and all(r["type"] == "polygonlabels" and r["value"]["closed"] for r in regions)
    assert all(r["value"]["polygonlabels"] == ["Object"] and r["from_name"] == "tag" for r in regions)
    h, w = regions[0]["original_height"], regions[0]["original_width"]
    assert (w, h) == (481, 321)
    points = [np.array(r["value"]["points"]) / 100.0 * [w, h] for r in regions]
    assert all(0 <= p.min() and p[:, 0].max() <= w and p[:, 1].max() <= h for p in points)
    drawn = polygons_to_mask(points, h, w)
    assert (drawn & brush).sum() / (drawn | brush).sum() >= 0.98


def _rectangle(x: float, y: float, w: float, h: float) -> dict:
    region = copy.deepcopy(recorded("predict_interactive_1click")["params"]["context"]["result"][0])
    region.update({"id": "box1", "from_name": "box", "type": "rectanglelabels"})
    region["value"] = {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": ["Object"]}
    return region


def test_a_smart_box_starts_the_object_and_later_keypoints_refine_it_even_without_the_box():
    smart_box = '<RectangleLabels name="box" toName="image" smart="true"><Label value="Object"/></RectangleLabels>'
    config = recorded("predict_interactive_1click")["label_config"].replace("</View>", smart_box + "</View>")
    rect = _rectangle(30.0, 25.0, 40.0, 50.0)
    with TestClient(make_app()) as client:
        body = recorded("predict_interactive_1click")
        body["label_config"] = config
        body["params"]["context"]["result"] = [rect]
        reply = client.post("/predict", json=body)
        assert reply.status_code == 200 and reply.headers["x-forwards"] == "1"
        region = reply.json()["results"][0]["result"][0]
        assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Object"]
        mask = brush_mask(region) > 0
        h, w = mask.shape
        rows, cols = np.nonzero(mask)
        assert abs(rows.min() - 0.25 * h) <= 1 and abs(rows.max() + 1 - 0.75 * h) <= 1  # the stand-in fills the box
        assert abs(cols.min() - 0.30 * w) <= 1 and abs(cols.max() + 1 - 0.70 * w) <= 1
        # A negative keypoint inside the box, sent without the box (as the editor may): the same object, one forward.
        body["params"]["context"]["result"] = [_keypoint(50.0, 50.0, False, 1)]
        reply = client.post("/predict", json=body)
        assert reply.headers["x-forwards"] == "1" and "session" in reply.headers["x-cache"]
        refined = brush_mask(reply.json()["results"][0]["result"][0]) > 0
        assert refined.sum() < mask.sum() and not refined[pixel(_keypoint(50.0, 50.0, False, 1))]
        assert (refined & ~mask).sum() == 0
        # A keypoint outside the remembered box starts a click-only object instead.
        body["params"]["context"]["result"] = [_keypoint(90.0, 90.0, True, 2)]
        reply = client.post("/predict", json=body)
        assert "session" not in reply.headers["x-cache"]
        far = brush_mask(reply.json()["results"][0]["result"][0]) > 0
        assert far[pixel(_keypoint(90.0, 90.0, True, 2))] and not far[int(0.5 * h), int(0.5 * w)]


# --- continuing an accepted region (issue 27 item 5) -----------------------------------------------------------


def _accepted(kind: str, region_id: str, box: tuple[int, int, int, int], w: int = 481, h: int = 321) -> dict:
    """A brush or polygon result as Label Studio stores it: the rows ``box[0]:box[1]``, columns ``box[2]:box[3]``."""
    from ml_backend.masks.rle import mask2rle

    r0, r1, c0, c1 = box
    common = {"id": region_id, "from_name": "tag", "to_name": "image", "original_width": w, "original_height": h}
    if kind == "brush":
        mask = np.zeros((h, w), np.uint8)
        mask[r0:r1, c0:c1] = 255
        value = {"format": "rle", "rle": mask2rle(mask), "brushlabels": ["Object"]}
        return {**common, "type": "brushlabels", "value": value}
    points = [[c0 / w * 100, r0 / h * 100], [c1 / w * 100, r0 / h * 100], [c1 / w * 100, r1 / h * 100]]
    points.append([c0 / w * 100, r1 / h * 100])
    value = {"points": points, "closed": True, "polygonlabels": ["Object"]}
    return {**common, "type": "polygonlabels", "value": value}


def _with_saved(body: dict, annotations: list[dict], drafts: list[dict] | None = None) -> dict:
    task = body["tasks"][0]
    task["annotations"] = [
        {"id": 10 + i, "result": result, "was_cancelled": False, "updated_at": f"2026-01-0{i + 1}T00:00:00Z"}
        for i, result in enumerate(annotations)
    ]
    task["drafts"] = [{"id": 20, "result": result, "updated_at": "2026-02-01T00:00:00Z"} for result in drafts or []]
    return body


def test_a_click_inside_an_accepted_brush_region_continues_its_mask_and_answers_with_its_id():
    """The region's mask is the previous mask of the click's object (the stand-in then cuts a disk out of it), and
    the answer keeps the region's id, so the editor replaces that region when the suggestion is accepted. Without
    the region, or with CONTINUE_REGIONS off, the same click starts a new object."""
    region = _accepted("brush", "acc1", (80, 240, 150, 350))
    inside = brush_mask(region) > 0
    negative = _keypoint(50.0, 50.0, False, 1)
    body = _with_saved(recorded("predict_interactive_1click"), [[region]])
    body["params"]["context"]["result"] = [negative]
    with TestClient(make_app()) as client:
        reply = client.post("/predict", json=body)
        assert reply.status_code == 200 and reply.headers["x-forwards"] == "1"
        [answer] = reply.json()["results"][0]["result"]
        mask = brush_mask(answer) > 0
        assert answer["id"] == "acc1" and answer["type"] == "brushlabels"
        assert not mask[pixel(negative)] and (mask & ~inside).sum() == 0 and mask.sum() > 0.8 * inside.sum()
        # The next click of the same object (the editor re-sends the first): the same session, one forward.
        body["params"]["context"]["result"] = [negative, _keypoint(90.0, 90.0, True, 2)]
        reply = client.post("/predict", json=body)
        assert reply.headers["x-forwards"] == "1" and "session" in reply.headers["x-cache"]
        [answer] = reply.json()["results"][0]["result"]
        assert answer["id"] == "acc1" and (brush_mask(answer) > 0)[pixel(_keypoint(90.0, 90.0, True, 2))]
        # A first click outside every accepted region starts a new object, with a new id.
        body["params"]["context"]["result"] = [_keypoint(10.0, 10.0, True, 3)]
        [answer] = client.post("/predict", json=body).json()["results"][0]["result"]
        assert answer["id"] != "acc1" and not (brush_mask(answer) > 0)[pixel(negative)]
    body["params"]["context"]["result"] = [negative]
    for app in make_app(continue_regions=False), make_app(engine_factory=_NoPreviousMask):
        with TestClient(app) as client:
            [answer] = client.post("/predict", json=body).json()["results"][0]["result"]
        assert answer["id"] != "acc1" and not (brush_mask(answer) > 0).any()  # a lone negative click: nothing


class _NoPreviousMask:
    """A predictor that cannot take a previous mask (like the GrabCut baseline): it never answers under a saved
    region's id, since its fresh mask would replace the region."""

    def __init__(self):
        inner = DiskPredictor()
        self.threshold = inner.threshold
        self.set_image, self.reset, self.add_click, self.prediction = (
            inner.set_image,
            inner.reset,
            inner.add_click,
            inner.prediction,
        )


def test_a_polygon_region_is_continued_and_a_newer_draft_wins_over_the_annotation():
    """Label Studio autosaves the annotation being edited as a draft: the newest holder of a region under the
    click is the one continued, and in it the last such region (the newest, drawn on top); regions of other labels,
    tags or cancelled annotations are not candidates."""
    config = recorded("predict_interactive_1click")["label_config"].replace("BrushLabels", "PolygonLabels")
    saved = _accepted("polygon", "saved", (40, 300, 60, 440))
    draft = _accepted("polygon", "draft", (80, 240, 150, 350))
    smaller = _accepted("polygon", "smaller", (120, 200, 200, 300))
    other_label = {**draft, "id": "other", "value": {**draft["value"], "polygonlabels": ["Other"]}}
    body = _with_saved(recorded("predict_interactive_1click"), [[saved]], [[smaller, draft, other_label]])
    body["label_config"] = config
    body["params"]["context"]["result"] = [_keypoint(50.0, 50.0, False, 1)]
    with TestClient(make_app()) as client:
        regions = client.post("/predict", json=body).json()["results"][0]["result"]
        assert regions[0]["id"] == "draft" and all(r["type"] == "polygonlabels" for r in regions)
        body["tasks"][0]["drafts"] = []
        body["tasks"][0]["annotations"][0]["was_cancelled"] = True
        regions = client.post("/predict", json=body).json()["results"][0]["result"]
    assert all(r["id"] not in ("saved", "draft") for r in regions)


def test_malformed_saved_regions_are_skipped_and_a_null_item_index_is_the_first_image():
    """Annotations and drafts are input like any other: whatever their shape, a click is answered (a malformed
    region is simply not continued), and ``item_index: null`` names the first image as a missing one does."""
    region = _accepted("brush", "acc1", (80, 240, 150, 350))
    broken = [
        {**region, "id": "bad-rle", "value": {**region["value"], "rle": [999, -1]}},
        {**region, "id": "bad-size", "original_width": 0},
        {**region, "id": 5},
        "not a region",
    ]
    body = recorded("predict_interactive_1click")
    body["params"]["context"]["result"] = [_keypoint(50.0, 50.0, False, 1)]
    with TestClient(make_app()) as client:
        for drafts, annotations in [("x", {"a": 1}), ([None, {"result": "x"}], [{"result": broken}])]:
            body["tasks"][0]["drafts"], body["tasks"][0]["annotations"] = drafts, annotations
            reply = client.post("/predict", json=body)
            assert reply.status_code == 200 and reply.json()["results"][0]["result"][0]["id"] not in ("acc1", "bad-rle")
        body["tasks"][0]["drafts"], body["tasks"][0]["annotations"] = [], [{"result": [{**region, "item_index": None}]}]
        body["params"]["context"]["result"] = [_keypoint(45.0, 45.0, False, 2)]  # a new object: the first is under way
        assert client.post("/predict", json=body).json()["results"][0]["result"][0]["id"] == "acc1"
