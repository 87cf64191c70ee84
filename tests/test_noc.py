"""NoC / NoF against the reference's compute_noc_metric (golden/noc_cases.json)."""

import json

import numpy as np
import pytest

from model.evaluation.metrics import (
    DEFAULT_IOU_THRESHOLDS,
    compute_noc,
    iou,
    mean_iou_per_click,
    noc_of_instance,
    seconds_per_click,
    threshold_label,
)

from prerequisites import missing


@pytest.fixture(scope="module")
def noc_cases(shared_dir):
    path = shared_dir / "golden" / "noc_cases.json"
    if not path.is_file():
        missing(f"{path} not found")
    return json.loads(path.read_text())


def test_default_thresholds_are_the_reference_ones(noc_cases):
    assert list(DEFAULT_IOU_THRESHOLDS) == noc_cases["iou_thrs"]


def test_noc_matches_reference(noc_cases):
    assert len(noc_cases["cases"]) == 7
    for case in noc_cases["cases"]:
        all_ious = [np.array(ious, dtype=np.float32) for ious in case["all_ious"]]
        noc, noc_std, nof = compute_noc(all_ious, noc_cases["iou_thrs"], case["max_clicks"])
        assert noc == case["noc"], case["name"]
        assert nof == case["nof"], case["name"]
        np.testing.assert_allclose(noc_std, case["noc_std"], rtol=1e-12, atol=1e-12, err_msg=case["name"])


def test_float32_comparison():
    assert noc_of_instance([0.5, float(np.float32(0.9))], 0.9000000000000001) == 2
    assert noc_of_instance([0.5, 0.6], 0.9, max_clicks=20) == 20


def test_iou_excludes_ignore():
    gt = np.array([[1, 1, -1, 0]], dtype=np.int8)
    pred = np.array([[1, 0, 1, 0]], dtype=bool)
    assert iou(gt, pred) == 0.5
    assert iou(np.zeros((2, 2), np.int8), np.zeros((2, 2), bool)) == 1.0


def test_mean_iou_per_click_pads_with_last_value():
    assert mean_iou_per_click([[0.5, 0.9], [0.2, 0.4, 0.6]], max_clicks=4) == pytest.approx([0.35, 0.65, 0.75, 0.75])


def test_spc_and_labels():
    assert seconds_per_click([1.0, 2.0], [2, 4]) == 0.5
    assert [threshold_label(t) for t in DEFAULT_IOU_THRESHOLDS] == ["80", "85", "90"]
