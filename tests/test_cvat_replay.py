"""What a real CVAT v2.73.0 sent and received, replayed without CVAT (the capture of ``scripts/cvat/drive.py``,
``tests/e2e/recorded/cvat-2.73.0.json``; ``make test-cvat`` reruns the real thing).

Every interactor call CVAT's server made, through its API and through its React UI in Chromium (a box drawn first,
positive and negative clicks, "Done"; polygon mode with two parts), is sent again in the same order to the
backend's CVAT adapter with the starter model: the replies decode to the recorded masks at the recorded cost. The
capture's own facts are checked too: what the UI sends (a drawn box alone), what CVAT echoed to its users on errors
(no password), and what polygon mode kept."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml_backend.config import Settings
from ml_backend.cvat.interactor import CvatInteractor
from ml_backend.interactive.core import InteractiveCore
from ml_backend.interactive.engine import Engine
from ml_backend.interactive.sessions import RunStats
from testkit.cvat_ui import SLIDER_DEFAULT, decode_cvat_mask, shape_confidence, ui_objects

CAPTURE = json.loads((Path(__file__).parent / "e2e" / "recorded" / "cvat-2.73.0.json").read_text())
INVOCATIONS = [c for c in CAPTURE["calls"] if c["path"].startswith("/api/function_invocations")]


def union(reply: dict, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    for shape in reply.get("shapes", []):
        mask |= decode_cvat_mask(shape["points"], height, width)
    return mask


def test_the_capture_is_what_cvat_really_sent():
    assert CAPTURE["cvat"] == "2.73.0" and len(INVOCATIONS) >= 10
    for call in INVOCATIONS:
        assert call["nuclio_headers"]["x-nuclio-function-name"] == "pth-adaptiveclick"
        assert call["nuclio_headers"]["x-nuclio-path"] == "/"
        assert set(call["body"]) >= {"image", "pos_points", "neg_points", "obj_bbox"}
        assert "job" not in call["body"] and "frame" not in call["body"]  # CVAT forwards neither
    # With min_pos_points 0 the UI sent the drawn box alone, its corners fractional.
    (box_alone, *_) = [c for c in INVOCATIONS if c["body"]["obj_bbox"] and not c["body"]["pos_points"]]
    assert any(v != int(v) for corner in box_alone["body"]["obj_bbox"] for v in corner)


def test_no_reply_or_error_text_carried_the_password():
    """The dashboard's basic auth came from a netrc file on CVAT's server (a bare CVAT_NUCLIO_HOST): every call
    carried it, and the error texts CVAT showed its users (a refused click; an unknown function asked by a user of
    the worker group only) name the dashboard URL without it."""
    assert all(c["basic_auth"] for c in CAPTURE["calls"])
    assert not CAPTURE["password_anywhere_in_calls"] and not CAPTURE["api"]["password_in_any_error"]
    refused, unknown = CAPTURE["api"]["errors_seen_by_cvat_users"][:2]
    assert refused["status"] == 422 and "Client Error" in refused["text"] and "@" not in refused["text"]
    assert unknown["status"] == 404 and "for url: http://127.0.0.1:" in unknown["text"] and "@" not in unknown["text"]


def test_the_real_ui_saved_what_predict_gives_and_polygon_mode_kept_every_part():
    mask, polygon = CAPTURE["ui"]["mask_mode"], CAPTURE["ui"]["polygon_mode"]
    assert mask["iou_with_predict"] >= 0.99 and mask["forwards"] == ["1"] * len(mask["forwards"])
    assert len(polygon["parts"]) >= 2 and polygon["shapes"] == len(polygon["parts"])
    assert all(kept >= 0.9 * size for size, kept in zip(polygon["parts"], polygon["part_px_kept"]))
    assert polygon["one_shape_would_keep_px"] < sum(polygon["parts"])  # what one shape per reply lost before


@pytest.fixture(scope="module")
def interactor(shared_dir) -> CvatInteractor:
    settings = Settings.from_env({})
    engine = Engine(settings)
    engine.load()
    assert engine.error is None, engine.error
    return CvatInteractor(InteractiveCore(settings, engine))


def test_replaying_every_call_gives_the_recorded_replies_at_the_recorded_cost(interactor, shared_dir):
    images: dict[str, bytes] = {}
    for path in CAPTURE["images"]:
        data = (shared_dir / "datasets" / path).read_bytes()
        images[hashlib.sha256(data).hexdigest()] = data
    for i, call in enumerate(INVOCATIONS):
        body = dict(call["body"])
        image = body["image"]
        data = images[image["sha256"]]  # the frame CVAT sent, byte-exact, is the dataset's file
        body["image"] = base64.b64encode(data).decode()
        stats = RunStats()
        status, reply = interactor.handle(body, stats)
        assert status == call["status"], (i, reply)
        if status != 200:
            continue
        width, height = Image.open(io.BytesIO(data)).size
        got, recorded = union(reply, height, width), union(call["reply"], height, width)
        inter, total = np.count_nonzero(got & recorded), np.count_nonzero(got | recorded)
        assert total == 0 or inter / total >= 0.99, (i, inter / total)
        assert len(reply["shapes"]) == len(call["reply"]["shapes"]), i
        # Every shape showed at CVAT's slider default, as it shows now.
        assert all(shape_confidence(s) >= SLIDER_DEFAULT for s in call["reply"]["shapes"] + reply["shapes"]), i
        assert str(stats.forwards) == call["forwards"], (i, stats.forwards, call["forwards"])
        if len(reply["shapes"]) > 1:  # every part survives polygon mode, each as its own polygon
            kept = np.logical_or.reduce(ui_objects(reply, height, width, polygons=True))
            assert np.count_nonzero(got & ~kept) <= 0.02 * np.count_nonzero(got)
