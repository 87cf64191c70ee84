"""CVAT: the nuclio function (through nuclio-sdk's test platform), the dashboard routes of ``adaptiveclick serve``
(over HTTP, called the way CVAT's lambda manager calls them), and the reply decoded by cvat-core's rules.

These pin the exact wire format of ``../shared/docs/cvat.md`` and what CVAT's UI does with a reply
(``testkit/cvat_ui.py``); a real CVAT v2.73.0 drove the backend too (``make test-cvat``), and its capture is replayed by
``test_cvat_replay.py``."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from ml_backend.config import Settings
from ml_backend.cvat.interactor import (
    FUNCTION_ANNOTATIONS,
    FUNCTION_NAME,
    CvatInteractor,
    encode_cvat_mask,
    mask_parts,
    slider_confidence,
)
from ml_backend.interactive.core import InteractiveCore
from ml_backend.interactive.engine import Engine
from ml_backend.interactive.sessions import RunStats
from testkit.cvat_ui import SLIDER_DEFAULT, decode_cvat_mask, polygon_mode_mask, shape_confidence, ui_objects
from testkit.standins import DiskPredictor

from backend_helpers import make_app, running_server, synthetic_image

REPO = Path(__file__).resolve().parents[1]
FUNCTION_DIR = REPO / "serverless" / "adaptiveclick" / "nuclio"


def png_b64(image: np.ndarray, fmt: str = "PNG", **save) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **save)
    return base64.b64encode(buf.getvalue()).decode()


def reply_mask(reply: dict, height: int, width: int) -> np.ndarray:
    """The union of the reply's mask shapes (one per part of the mask), each checked by cvat-core's rules."""
    mask = np.zeros((height, width), bool)
    for shape in reply["shapes"]:
        assert shape["type"] == "mask"
        (attribute,) = shape["attributes"]
        assert attribute["spec_id"] == 0 and isinstance(attribute["value"], str)
        assert 0.0 <= float(attribute["value"]) <= 1.0
        part = decode_cvat_mask(shape["points"], height, width)
        assert part.any() and not (mask & part).any(), "parts are disjoint and not empty"
        mask |= part
    return mask


def body(image_b64: str, pos=(), neg=(), **extra) -> dict:
    return {"image": image_b64, "pos_points": [list(p) for p in pos], "neg_points": [list(p) for p in neg], **extra}


# --- the reply's RLE -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_cvat_rle_round_trips_through_a_cvat_core_decoder(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 40, 2)
    mask = rng.random((h, w)) > rng.uniform(0.2, 0.9)
    if seed == 0:
        mask[:] = True  # the whole image: first run 0, bounds at the borders
    if seed == 1:
        mask[:] = False
        mask[h // 2, w // 2] = True  # one pixel
    points = encode_cvat_mask(mask).tolist()
    assert np.array_equal(decode_cvat_mask(points, h, w), mask)
    if mask.any():
        *_, left, top, right, bottom = points
        assert mask[top].any() and mask[bottom].any() and mask[:, left].any() and mask[:, right].any()  # tight


def test_cvat_rle_examples_from_cvat_core():
    # Runs over the tight box, row-major, a zero run first: [[0,0,1],[1,0,0]] is 0,0,1,1,0,0 -> 2,2,2 + bounds
    assert encode_cvat_mask(np.array([[0, 0, 1], [1, 0, 0]], bool)).tolist() == [2, 2, 2, 0, 0, 2, 1]
    assert encode_cvat_mask(np.array([[0, 0, 0, 1]], bool)).tolist() == [0, 1, 3, 0, 3, 0]  # the box is one pixel
    assert encode_cvat_mask(np.array([[1, 1], [0, 1]], bool)).tolist() == [0, 2, 1, 1, 0, 0, 1, 1]
    assert encode_cvat_mask(np.zeros((5, 5), bool)).tolist() == []


# --- the function folder -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["function.yaml", "function-gpu.yaml"])
def test_function_yaml_declares_what_cvat_reads(name):
    spec = yaml.safe_load((FUNCTION_DIR / name).read_text())
    annotations = spec["metadata"]["annotations"]
    assert annotations == FUNCTION_ANNOTATIONS  # one source: the dashboard routes list the same
    assert all(isinstance(v, str) for v in annotations.values()), "nuclio keeps annotations as strings"
    assert "startswith_box" not in annotations  # bool("false") is True in CVAT: never written
    assert annotations["startswith_box_optional"] == "true"  # a box is allowed, not required
    assert int(annotations["version"]) >= 2 and int(annotations["min_neg_points"]) == 0
    assert spec["metadata"]["name"] == FUNCTION_NAME
    assert spec["spec"]["description"] and spec["spec"]["handler"] == "main:handler"
    trigger = next(iter(spec["spec"]["triggers"].values()))
    assert trigger["kind"] == "http" and trigger["attributes"]["maxRequestBodySize"] >= 32 * 2**20
    assert spec["spec"]["eventTimeout"] == "30s"
    env = {e["name"]: e["value"] for e in spec["spec"]["env"]}
    assert {"MODEL_CHECKPOINT", "MODEL_DIR", "SESSION_STORE"} <= set(env)
    gpu = name == "function-gpu.yaml"
    assert env["DEVICE"] == ("cuda" if gpu else "cpu")
    assert ("resources" in spec["spec"]) == gpu and spec["spec"]["build"]["baseImage"] == "adaptiveclick:latest"


def test_deploy_script_deploys_both_variants_into_cvats_network():
    script = (REPO / "serverless" / "deploy.sh").read_text()
    assert "nuctl deploy" in script and "--project-name cvat" in script and "cvat_cvat" in script
    assert "function-gpu.yaml" in script and "function.yaml" in script
    assert subprocess.run(["bash", "-n", str(REPO / "serverless" / "deploy.sh")]).returncode == 0


# --- the nuclio handler --------------------------------------------------------------------------


@pytest.fixture()
def nuclio_handler(monkeypatch):
    """main.py's handler under nuclio-sdk's test platform (init_context runs on the first call), serving the
    stand-in model through the same settings ``serve`` reads."""
    sdk = pytest.importorskip("nuclio_sdk")
    from nuclio_sdk.test import Platform

    monkeypatch.setenv("MODEL_ENGINE", "testkit.standins:DiskPredictor")
    for name in ("MODEL_DIR", "SESSION_STORE", "MODEL_CHECKPOINT"):
        monkeypatch.delenv(name, raising=False)
    name = f"cvat_main_{time.monotonic_ns()}"  # a fresh module each test: init_context runs again
    spec = importlib.util.spec_from_file_location(name, FUNCTION_DIR / "main.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # the platform finds init_context through sys.modules
    spec.loader.exec_module(module)
    platform = Platform()

    def call(payload, content_type="application/json"):
        response = platform.call_handler(module.handler, sdk.Event(body=payload, content_type=content_type))
        return response.status_code, json.loads(response.body)

    return call


def test_handler_answers_cvat_clicks_one_forward_each(nuclio_handler):
    image = synthetic_image(160, 120)
    b64 = png_b64(image)
    clicks = [(80, 60, True), (50, 40, True), (100, 80, False)]
    for n in range(1, len(clicks) + 1):
        before = DiskPredictor.forwards
        pos = [(x, y) for x, y, p in clicks[:n] if p]
        neg = [(x, y) for x, y, p in clicks[:n] if not p]
        status, reply = nuclio_handler(body(b64, pos, neg))
        assert status == 200, reply
        assert DiskPredictor.forwards - before == 1  # continues the previous mask: one forward per new click
        mask = reply_mask(reply, 120, 160)
        for x, y, positive in clicks[:n]:
            assert mask[y, x] == positive  # the stand-in draws a disk at each click
    repeat_before = DiskPredictor.forwards
    assert nuclio_handler(body(b64, [(80, 60), (50, 40)], [(100, 80)]))[0] == 200
    assert DiskPredictor.forwards == repeat_before  # the same clicks again: the cached answer


def test_handler_takes_json_bytes_too_and_reports_bad_bodies_with_4xx(nuclio_handler):
    image = synthetic_image(64, 48)
    b64 = png_b64(image)
    status, reply = nuclio_handler(json.dumps(body(b64, [(10, 10)])).encode(), content_type="application/octet-stream")
    assert status == 200 and reply["shapes"]
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")  # 144 MP of nothing, a few kB compressed
    cases = {
        "empty body": (b"", "empty request body"),
        "not an object": ([1, 2], "JSON object"),
        "no image": ({"pos_points": [[1, 1]], "neg_points": []}, 'no "image"'),
        "not base64": (body("!!not base64!!", [(1, 1)]), "not valid base64"),
        "not an image": (body(base64.b64encode(b"hello").decode(), [(1, 1)]), "could not be decoded"),
        "bomb": (body(base64.b64encode(bomb.getvalue()).decode(), [(1, 1)]), "refusing"),
        "outside": (body(b64, [(64.5, 10)]), "outside the 64x48 image"),
        "negative": (body(b64, [(10, 10)], [(-3, 5)]), "neg_points[0] = [-3, 5] is outside"),
        "not numbers": (body(b64, [("a", 1)]), "pos_points[0].x must be a finite number"),
        "nan": ({**body(b64, [(1, 1)]), "pos_points": [[1, float("nan")]]}, "finite number"),
        "not pairs": (body(b64, [(1, 2, 3)]), "must be an [x, y] pair"),
        "points not a list": ({**body(b64), "pos_points": "1,2"}, "must be a list"),
    }
    for name, (payload, message) in cases.items():
        status, reply = nuclio_handler(payload)
        assert 400 <= status < 500, (name, status, reply)
        assert message in reply["error"], (name, reply)
    # A right-click first (the box option off) or the last click removed (min_pos_points 0 lets the UI send
    # both): no object, not an error notification.
    assert nuclio_handler(body(b64, [], [(5, 5)])) == (200, {"shapes": []})
    assert nuclio_handler(body(b64, [], [])) == (200, {"shapes": []})


def _call(interactor: CvatInteractor, payload: dict) -> tuple[dict, RunStats]:
    stats = RunStats()
    return interactor.invoke(payload, stats), stats


def _interactor(settings: Settings | None = None) -> CvatInteractor:
    settings = settings or Settings.from_env({})
    return CvatInteractor(InteractiveCore(settings, Engine(settings, factory=DiskPredictor, name="disk")))


@pytest.mark.parametrize("policy", ["exact", "merged"])
def test_two_new_clicks_in_one_request_run_by_the_burst_policy_in_a_documented_order(policy):
    """BURST_CLICKS=exact (the default): one forward per new click, as if each had been answered; merged: one."""
    settings = Settings.from_env({"BURST_CLICKS": policy})
    cvat = _interactor(settings)
    b64 = png_b64(synthetic_image(200, 150))
    first, stats = _call(cvat, body(b64, [(100, 75)]))
    assert stats.forwards == 1
    # The user clicked twice while the first request was in flight: a negative and a positive arrive together.
    reply, stats = _call(cvat, body(b64, [(100, 75), (60, 70)], [(150, 40)]))
    assert stats.forwards == (2 if policy == "exact" else 1)
    assert stats.restored_prefix == 1  # continued the first click's mask
    session = next(iter(cvat.core.cache._sessions.values()))
    # positives before negatives, each in CVAT's list order, after the sequence already computed
    assert session.applied == ((75, 100, True), (70, 60, True), (40, 150, False))
    mask = reply_mask(reply, 150, 200)
    assert mask[70, 60] and not mask[40, 150] and mask[75, 100]


def test_a_removed_click_continues_from_the_longest_sequence_without_it():
    cvat = _interactor()
    b64 = png_b64(synthetic_image(200, 150))
    a, b, c = (100, 75), (60, 70), (150, 40)
    for pos, neg in (([a], []), ([a, b], []), ([a, b], [c])):
        _call(cvat, body(b64, pos, neg))
    reply, stats = _call(cvat, body(b64, [a], [c]))  # the user removed b
    assert stats.forwards == 1 and stats.restored_prefix == 1  # from (a), then c: no replay from scratch
    fresh = _interactor()
    _call(fresh, body(b64, [a]))
    expected, _ = _call(fresh, body(b64, [a], [c]))
    assert reply == expected
    again, stats = _call(cvat, body(b64, [a, b], [c]))  # b put back: the answer computed before, no forward
    assert stats.forwards == 0 and stats.result_hit


def test_a_box_first_starts_the_object_and_clicks_refine_it():
    cvat = _interactor()
    b64 = png_b64(synthetic_image(200, 150))
    box = [[40, 30], [160, 120]]
    reply, stats = _call(cvat, body(b64, obj_bbox=box))  # the box alone (startswith_box_optional)
    assert stats.forwards == 1
    mask = reply_mask(reply, 150, 200)
    assert mask[30:120, 40:160].all() and not mask[:30].any() and not mask[:, 160:].any()
    reply, stats = _call(cvat, body(b64, [], [(100, 75)], obj_bbox=box))
    assert stats.forwards == 1 and stats.session_hit  # continues the box's state
    assert not reply_mask(reply, 150, 200)[75, 100]
    for bad, message in (([[40, 30]], "two [x, y] corners"), ([[40, 30], [40, 90]], "is empty"), ("x", "obj_bbox")):
        status, error = cvat.handle(body(b64, [(100, 75)], obj_bbox=bad))
        assert status == 422 and message in error["error"], (bad, error)


def test_a_region_of_interest_crop_is_its_own_object_in_its_own_pixels():
    cvat = _interactor()
    image = synthetic_image(200, 150)
    _call(cvat, body(png_b64(image), [(100, 75)]))
    crop = image[30:130, 40:180]  # CVAT v2.70+ sends the ROI's bytes with points shifted into it
    reply, stats = _call(cvat, body(png_b64(crop), [(60, 45)]))
    assert stats.forwards == 1 and not stats.session_hit
    mask = reply_mask(reply, 100, 140)
    assert mask[45, 60] and not mask[0, 0] and len(cvat.core.cache._sessions) == 2


def test_a_two_megapixel_jpeg_is_decoded_once_and_answered_in_its_own_pixels():
    cvat = _interactor()
    image = synthetic_image(1920, 1080)
    b64 = png_b64(image, "JPEG", quality=90)
    reply, stats = _call(cvat, body(b64, [(1000, 540)]))
    assert not stats.image_hit
    reply, stats = _call(cvat, body(b64, [(1000, 540), (700, 500)]))
    assert stats.image_hit and stats.forwards == 1  # the same bytes: decoded image and session reused
    mask = reply_mask(reply, 1080, 1920)
    assert mask[540, 1000] and mask[500, 700]


def test_every_part_is_its_own_shape_so_polygon_mode_keeps_it():
    """CVAT's "Convert masks to polygons" keeps the longest outline of each shape: two parts in one shape lost one
    (issue 34: 26,436 of 80,299 px on a GrabCut image). One shape per part keeps every part in both modes."""
    cvat = _interactor()
    b64 = png_b64(synthetic_image(240, 160))
    reply, stats = _call(cvat, body(b64, [(50, 50), (190, 110), (120, 40)]))  # three disks apart
    mask = reply_mask(reply, 160, 240)
    assert len(reply["shapes"]) == 3 and stats.forwards == 1
    for polygons in (False, True):
        objects = ui_objects(reply, 160, 240, polygons=polygons)
        assert len(objects) == 3
        kept = np.logical_or.reduce(objects)
        assert np.count_nonzero(mask & ~kept) == 0, f"polygon mode={polygons} dropped pixels"
    sizes = [np.count_nonzero(decode_cvat_mask(s["points"], 160, 240)) for s in reply["shapes"]]
    assert sizes == sorted(sizes, reverse=True)  # the largest part first
    # Pixels one pixel apart are one outline for CVAT: they stay one shape (no needless splitting).
    touching = np.zeros((20, 20), bool)
    touching[2:8, 2:8] = touching[2:8, 9:15] = True  # a one-pixel gap
    assert len(mask_parts(touching)) == 1 and len(polygon_mode_masks_of(touching)) == 1


def polygon_mode_masks_of(mask: np.ndarray) -> list[np.ndarray]:
    return [p for p in (polygon_mode_mask(part) for part in mask_parts(mask)) if p.any()]


@pytest.mark.parametrize("threshold", [None, "0.3", "0.05"])
def test_a_mask_we_answer_is_not_hidden_by_cvats_confidence_slider(threshold):
    """CVAT's slider (default 0.5) hides a shape below it and "Done" then saves nothing; with MASK_THRESHOLD=0.3
    2 of 5 first masks scored 0.458/0.461 through the real CVAT. The stand-in's map is 0.9 inside its disks, 0.1
    outside: at 0.05 the mask is the whole image, its mean probability about 0.1."""
    cvat = _interactor(Settings.from_env({} if threshold is None else {"MASK_THRESHOLD": threshold}))
    reply, _ = _call(cvat, body(png_b64(synthetic_image(200, 150)), [(100, 75)]))
    assert reply["shapes"]
    assert len(ui_objects(reply, 150, 200, polygons=False)) == len(reply["shapes"])
    assert all(shape_confidence(s) >= SLIDER_DEFAULT for s in reply["shapes"])
    # The slider still ranks: a surer mask reads higher, a certain one 1.
    assert slider_confidence(0.6, 0.49) < slider_confidence(0.9, 0.49) < slider_confidence(1.0, 0.49) == 1.0
    assert slider_confidence(0.49, 0.49) == 0.5


def test_clicks_above_max_clicks_are_refused():
    settings = Settings.from_env({"MAX_CLICKS": "3"})
    cvat = _interactor(settings)
    status, reply = cvat.handle(body(png_b64(synthetic_image(64, 48)), [(1, 1), (2, 2), (3, 3), (4, 4)]))
    assert status == 422 and "MAX_CLICKS=3" in reply["error"]


def test_states_are_shared_through_the_session_store_across_workers(redis_server):
    settings = Settings.from_env({"SESSION_STORE": redis_server.url})
    a, b = _interactor(settings), _interactor(settings)
    b64 = png_b64(synthetic_image(200, 150))
    p1, p2, n1 = (100, 75), (60, 70), (150, 40)
    _call(a, body(b64, [p1]))
    _call(a, body(b64, [p1], [n1]))  # worker a ran (p1, n1)
    reply, stats = _call(b, body(b64, [p1, p2], [n1]))  # worker b never saw this image
    assert stats.store_hit and stats.forwards == 1 and stats.restored_prefix == 2  # order learnt from the store
    expected, _ = _call(a, body(b64, [p1, p2], [n1]))
    assert reply == expected


# --- the masks equal `adaptiveclick predict` -------------------------------------------------------


def test_masks_equal_adaptiveclick_predict_for_the_same_clicks_in_the_same_order(tmp_path):
    """The starter model, one click per request (as CVAT sends a careful annotator's clicks), against the
    command line given the same clicks in the same order."""
    image = synthetic_image(240, 180)
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    clicks = [(120, 90, True), (60, 90, True), (200, 40, False)]  # (x, y, positive)
    out = tmp_path / "mask.png"
    args = [sys.executable, "-m", "cli", "predict", str(path), "--out", str(out)]
    for x, y, p in clicks:
        args += ["--click", f"{y},{x}" + ("" if p else ",neg")]
    subprocess.run(args, cwd=REPO, check=True, capture_output=True, timeout=300)
    expected = np.asarray(Image.open(out)) > 0
    settings = Settings.from_env({})
    engine = Engine(settings)
    engine.load()
    assert engine.error is None, engine.error
    cvat = CvatInteractor(InteractiveCore(settings, engine))
    b64 = png_b64(image)
    for n in range(1, len(clicks) + 1):
        reply, stats = _call(
            cvat, body(b64, [(x, y) for x, y, p in clicks[:n] if p], [(x, y) for x, y, p in clicks[:n] if not p])
        )
        assert stats.forwards == 1
    mask = reply_mask(reply, 180, 240)
    assert mask.any() and np.array_equal(mask, expected)


def test_a_fractional_box_gives_what_predict_gives_for_the_same_corners(tmp_path):
    """CVAT's box corners are fractional; ``serve`` and ``predict --box`` follow one rule (the nearest pixel edge,
    ``model.interactive.nearest_edge``): through the real CVAT box + click gave IoU 0.989 with ``predict`` before."""
    image = synthetic_image(240, 180)
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    (x0, y0), (x1, y1) = corners = [[40.5, 30.4], [190.5, 150.6]]
    out = tmp_path / "mask.png"
    args = [sys.executable, "-m", "cli", "predict", str(path), "--out", str(out), "--box", f"{x0},{y0},{x1},{y1}"]
    subprocess.run([*args, "--click", "90,120"], cwd=REPO, check=True, capture_output=True, timeout=300)
    expected = np.asarray(Image.open(out)) > 0
    settings = Settings.from_env({})
    engine = Engine(settings)
    engine.load()
    cvat = CvatInteractor(InteractiveCore(settings, engine))
    reply, stats = _call(cvat, body(png_b64(image), [(120, 90)], obj_bbox=corners))  # the UI sends both at once
    mask = reply_mask(reply, 180, 240)
    assert mask.any() and np.array_equal(mask, expected)


# --- the dashboard routes, called the way CVAT's lambda manager calls them ----------------------------


@pytest.fixture()
def dashboard():
    """``adaptiveclick serve``'s app on a real port, with basic auth (the stand-in model)."""
    with running_server(make_app(basic_auth_user="cvat", basic_auth_pass="s3cret")) as url:
        yield int(url.rsplit(":", 1)[1])


def lambda_gateway(port: int, host: str = "cvat:s3cret@127.0.0.1", invoke_method: str = "dashboard"):
    """CVAT's LambdaGateway._http: the URL from CVAT_NUCLIO_SCHEME/HOST/PORT, nuclio's headers, no auth object:
    credentials travel through requests' own netrc support (or, leaking into CVAT's error texts, in the host)."""
    gateway = f"http://{host}:{port}"
    headers = {
        "x-nuclio-project-name": "cvat",
        "x-nuclio-function-namespace": "nuclio",
        "x-nuclio-invoke-via": "domain-name",
    }

    def http(method="get", url="", data=None, extra=None):
        with requests.Session() as session:
            reply = session.request(method, gateway + url, headers={**headers, **(extra or {})}, timeout=120, json=data)
            return reply

    return http


def test_cvat_lists_the_function_as_an_interactor_and_invokes_it(dashboard):
    http = lambda_gateway(dashboard)
    listing = http(url="/api/functions")
    assert listing.status_code == 200
    (item,) = listing.json().values()
    # What CVAT's LambdaFunction reads, and how: keys it indexes must exist; annotations converted with int()/bool().
    assert item["metadata"]["name"] == FUNCTION_NAME and item["spec"]["description"]
    annotations = item["metadata"]["annotations"]
    assert annotations["type"] == "interactor" and int(annotations["version"]) == 2
    assert int(annotations["min_pos_points"]) == 0 and int(annotations["min_neg_points"]) == 0
    assert item["status"]["state"] == "ready"
    assert http(url=f"/api/functions/{FUNCTION_NAME}").json() == item
    assert http(url="/api/functions/other-function").status_code == 404

    b64 = png_b64(synthetic_image(160, 120))
    invoke = {"x-nuclio-function-name": FUNCTION_NAME, "x-nuclio-path": "/"}
    reply = http("post", "/api/function_invocations", body(b64, [(80, 60)]), invoke)
    assert reply.status_code == 200 and reply.headers["X-Forwards"] == "1"
    assert reply_mask(reply.json(), 120, 160)[60, 80]
    reply = http("post", "/api/function_invocations", body(b64, [(80, 60)], [(20, 20)]), invoke)
    assert reply.headers["X-Forwards"] == "1" and "session" in reply.headers["X-Cache"]

    bad = http("post", "/api/function_invocations", body(b64, [(500, 60)]), invoke)
    assert bad.status_code == 422 and "outside" in bad.json()["error"]
    other = http("post", "/api/function_invocations", body(b64, [(8, 6)]), {"x-nuclio-function-name": "sam"})
    assert other.status_code == 404 and FUNCTION_NAME in other.json()["error"]


def test_dashboard_routes_are_behind_the_backends_basic_auth(dashboard):
    for host in ("127.0.0.1", "cvat:wrong@127.0.0.1"):
        http = lambda_gateway(dashboard, host=host)
        assert http(url="/api/functions").status_code == 401
        reply = http("post", "/api/function_invocations", {"image": "x"}, {"x-nuclio-function-name": FUNCTION_NAME})
        assert reply.status_code == 401


def test_the_documented_dashboard_set_up_keeps_the_password_out_of_cvats_error_texts(dashboard, tmp_path, monkeypatch):
    """Issue 34: CVAT answers its clients ``str(HTTPError)`` on any dashboard error, the dashboard URL included; with
    the password in ``CVAT_NUCLIO_HOST`` every CVAT user could read it. The set-up docs/cvat.md gives (route B) is
    followed here to the letter, and the calls are made as CVAT's lambda manager makes them."""
    doc = (REPO / "docs" / "cvat.md").read_text()
    section = doc[doc.index("## B.") : doc.index("## C.")]
    blocks = section.split("```")[1::2]
    (compose,) = [b for b in blocks if b.startswith("yaml")]
    env = yaml.safe_load(compose.removeprefix("yaml"))["services"]["cvat_server"]["environment"]
    fill = {"<backend host>": "127.0.0.1", "<password>": "s3cret"}

    def filled(text: str) -> str:
        for placeholder, value in fill.items():
            text = text.replace(placeholder, value)
        return text

    for block in blocks:
        if block.lstrip("\n").startswith("machine "):
            netrc_file = tmp_path / "netrc"
            netrc_file.write_text(filled(block))
            monkeypatch.setenv("NETRC", str(netrc_file))  # what the compose file points CVAT's server at
    http = lambda_gateway(dashboard, host=filled(env["CVAT_NUCLIO_HOST"]))
    assert http(url="/api/functions").status_code == 200  # the credentials still reach the backend
    invoke = {"x-nuclio-function-name": FUNCTION_NAME, "x-nuclio-path": "/"}
    outside = body(png_b64(synthetic_image(64, 48)), [(500, 5)])
    for reply in (
        http(url="/api/functions/no-such-function"),
        http("post", "/api/function_invocations", outside, invoke),
    ):
        assert reply.status_code in (404, 422)
        with pytest.raises(requests.HTTPError) as error:
            reply.raise_for_status()  # CVAT's LambdaGateway; its views answer str(error) to the user
        assert "s3cret" not in str(error.value) and "for url: http://127.0.0.1:" in str(error.value)
