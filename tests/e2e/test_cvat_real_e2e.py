"""A real CVAT v2.73.0 (server and React UI, ``scripts/cvat/``) drives ``adaptiveclick serve`` as its nuclio
dashboard: ``scripts/cvat/drive.py`` clicks through CVAT's API and, in headless Chromium, its UI; this checks what
it recorded. Opt-in (``make test-cvat``: sets ``ADAPTIVECLICK_CVAT=1`` once CVAT runs); CI replays the committed
capture instead (``tests/test_cvat_replay.py``). ``ADAPTIVECLICK_CVAT_RECORD=1`` also rewrites that capture and
``docs/cvat_ui.png``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECORDED = REPO / "tests" / "e2e" / "recorded" / "cvat-2.73.0.json"
SCREENSHOT = REPO / "docs" / "cvat_ui.png"

pytestmark = [
    pytest.mark.cvat_real,
    pytest.mark.skipif(os.environ.get("ADAPTIVECLICK_CVAT") != "1", reason="needs a running real CVAT: make test-cvat"),
]


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> dict:
    record = os.environ.get("ADAPTIVECLICK_CVAT_RECORD") == "1"
    tmp = tmp_path_factory.mktemp("cvat-drive")
    out, shot = (RECORDED, SCREENSHOT) if record else (tmp / "capture.json", tmp / "cvat_ui.png")
    cache = os.environ.get("CVAT_CACHE", str(REPO / ".cache" / "cvat"))
    args = [sys.executable, "scripts/cvat/drive.py", "--cache", cache, "--out", str(out), "--screenshot", str(shot)]
    subprocess.run(args, cwd=REPO, check=True, timeout=1800)
    return json.loads(out.read_text())


def test_masks_through_cvats_api_equal_predict_one_forward_a_click(capture):
    for step in capture["api"]["steps"]:
        assert step["iou_with_predict"] >= 0.99, step
        assert step["forwards"] == ["1"], step  # one request, one forward
        assert step["polygon_mode_kept_px"] == step["mask_px"], step  # every part kept in polygon mode
    listed = capture["api"]["function_as_cvat_lists_it"]
    assert listed["kind"] == "interactor" and listed["startswith_box_optional"] and listed["min_pos_points"] == 0


def test_the_ui_box_clicks_and_done_save_what_predict_gives(capture):
    mask = capture["ui"]["mask_mode"]
    assert mask["shapes"] == 1 and mask["iou_with_predict"] >= 0.99, mask
    assert mask["forwards"] == ["1", "1", "1"], mask  # the box alone, then each click: one forward each
    assert mask["box"] and len(mask["clicks"]) == 2


def test_polygon_mode_keeps_every_part(capture):
    polygon = capture["ui"]["polygon_mode"]
    assert len(polygon["parts"]) >= 2 and polygon["shapes"] == len(polygon["parts"]), polygon
    for size, kept in zip(polygon["parts"], polygon["part_px_kept"]):
        assert kept >= 0.9 * size, polygon  # a polygon per part (outline approximated by CVAT)
    assert polygon["forwards"] == ["1", "1"], polygon


def test_the_ui_sends_a_drawn_box_alone(capture):
    invocations = [c for c in capture["calls"] if c["path"].startswith("/api/function_invocations")]
    boxes_alone = [c for c in invocations if c["body"]["obj_bbox"] and not c["body"]["pos_points"]]
    assert boxes_alone, "with min_pos_points 0 the UI sends the box as soon as it is drawn"


def test_no_reply_or_error_carries_the_password(capture):
    assert not capture["api"]["password_in_any_error"] and not capture["password_anywhere_in_calls"]
    assert all(c["basic_auth"] for c in capture["calls"])  # the netrc still sent the credentials
    for error in capture["api"]["errors_seen_by_cvat_users"][:2]:
        assert error["status"] in (404, 422) and "@" not in error["text"], error
