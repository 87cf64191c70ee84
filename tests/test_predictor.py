"""Predictor: the reference zoom-in/flip protocol, the recorded GrabCut session, and input handling."""

import numpy as np
import pytest
import torch

from model.predictor import Click, Predictor, clicks_to_points, to_rgb_uint8
from model.zoom_in import ZoomIn, clicks_inside, expand_bbox, object_roi


@pytest.fixture(scope="module")
def session(golden_dir):
    return torch.load(golden_dir / "session_grabcut.pt", weights_only=True)


@pytest.fixture()
def predictor(tiny_model):
    return Predictor(tiny_model, device="cpu")


def _iou(mask: np.ndarray, gt: np.ndarray) -> np.float32:
    valid = gt != -1
    inter = np.logical_and(mask, gt == 1)[valid].sum()
    union = np.logical_or(mask, gt == 1)[valid].sum()
    return np.float32(inter / union)


# -- zoom-in unit cases --------------------------------------------------------------------------


def test_expand_bbox_matches_reference(session):
    for case in session["zoom_in_unit_cases"]["expand_bbox"]:
        assert expand_bbox(case["bbox"], case["expansion_ratio"], case["min_crop_size"]) == tuple(case["result"])


def test_object_roi_matches_reference(session):
    for case in session["zoom_in_unit_cases"]["get_object_roi"]:
        mask = np.zeros(case["image_hw"], dtype=bool)
        if case["mask_box_rows_cols"] is not None:
            r0, r1, c0, c1 = case["mask_box_rows_cols"]
            mask[r0:r1, c0:c1] = True
        clicks = [Click(r, c, p) for r, c, p in case["clicks"]]
        assert object_roi(mask, clicks, case["expansion_ratio"], case["min_crop_size"]) == tuple(case["result"]), case[
            "name"
        ]


def test_roi_containment_matches_reference(session):
    for case in session["zoom_in_unit_cases"]["check_object_roi"]:
        clicks = [Click(r, c, p) for r, c, p in case["clicks"]]
        assert clicks_inside(case["roi"], clicks) == case["result"]


def test_zoom_in_sequence_matches_reference(session):
    seq = session["zoom_in_unit_cases"]["sequence"]
    params = seq["zoom_in_params"]
    zoom = ZoomIn(
        tuple(params["target_size"]),
        params["expansion_ratio"],
        params["min_crop_size"],
        params["recompute_thresh_iou"],
        params["prob_thresh"],
    )
    image_hw = tuple(seq["image_nd_shape"][-2:])
    roi, probs = None, None
    for step in seq["steps"]:
        clicks = [Click(r, c, p) for r, c, p in step["clicks"]]
        roi, changed = zoom.next_roi(roi, probs, clicks, image_hw)
        assert roi == tuple(step["object_roi"]) and changed == step["image_changed"]
        crop = zoom.crop(torch.zeros(seq["image_nd_shape"]), roi)
        assert list(crop.shape) == step["zoomed_image_shape"]
        transformed = [(c.row, c.col, c.positive) for c in zoom.transform_clicks(clicks, roi)]
        np.testing.assert_allclose(
            np.array([t[:2] for t in transformed]),
            np.array([t[:2] for t in step["transformed_clicks"]]),
            rtol=1e-9,
            atol=1e-9,
        )
        net_prob = torch.full((1, 1, *zoom.target_size), 0.1, dtype=torch.float64)
        r0, r1, c0, c1 = step["prob_box_in_zoomed_frame"]
        net_prob[:, :, r0:r1, c0:c1] = 0.9
        pasted = zoom.paste(net_prob, roi, image_hw)
        assert list(pasted.shape) == step["inv_transform_shape"]
        np.testing.assert_allclose(pasted.sum().item(), step["inv_transform_sum"], rtol=1e-6, atol=1e-3)
        assert (pasted > 0.5).sum().item() == step["inv_transform_pixels_gt_0.5"]
        probs = pasted[0, 0].numpy()


# -- the recorded GrabCut session ----------------------------------------------------------------


def test_session_rois_and_network_clicks_follow_the_reference(session):
    """Teacher-forced on the recorded maps: every ROI decision and every click tensor is exact."""
    zoom = ZoomIn((448, 448))
    image_hw = tuple(session["image"].shape[:2])
    roi, probs, clicks = None, None, []
    for k, (row, col, positive, _) in enumerate(session["clicks"]):
        clicks.append(Click(row, col, positive))
        roi, _ = zoom.next_roi(roi, probs, clicks, image_hw)
        assert roi == tuple(session["rois"][k]), f"click {k + 1}"
        net_clicks = zoom.transform_clicks(clicks, roi)
        flipped = [Click(c.row, 447 - c.col, c.positive) for c in net_clicks]
        points = clicks_to_points([net_clicks, flipped], torch.device("cpu"))
        expected = session["points_nd_all_clicks"][k]
        assert points.dtype == expected.dtype == torch.float64
        assert torch.equal(points, expected), f"click {k + 1}"
        probs = session["probs"][k].float().numpy()


def test_session_network_inputs_of_first_two_clicks(session, predictor):
    captured = []
    forward = predictor.model.forward
    predictor.model.forward = lambda image, points: captured.append((image, points)) or forward(image, points)
    try:
        predictor.set_image(session["image"].numpy())
        for row, col, positive, _ in session["clicks"][:2]:
            predictor.add_click(row, col, positive)
    finally:
        del predictor.model.forward
    for (image, points), expected in zip(captured, session["net_inputs_first_two_clicks"]):
        assert list(image.shape) == list(expected["image_nd_shape"])
        torch.testing.assert_close(image[:1], expected["image_nd_first_half"].float(), rtol=0, atol=1e-3)
        assert torch.equal(image[1:], image[:1].flip(-1))
        assert torch.equal(points, expected["points_nd"])


def test_session_ious_from_recorded_maps(session):
    gt = session["gt_mask"].numpy()
    for k, expected in enumerate(session["ious"]):
        assert _iou(session["probs"][k].float().numpy() > 0.49, gt) == np.float32(expected)


def test_session_first_click_probability_map(session, predictor):
    predictor.set_image(session["image"].numpy())
    row, col, positive, _ = session["clicks"][0]
    probs = predictor.add_click(row, col, positive)
    np.testing.assert_allclose(probs, session["probs"][0].float().numpy(), rtol=0, atol=2e-3)
    assert _iou(probs > 0.49, session["gt_mask"].numpy()) == np.float32(session["ious"][0])


# Clicks 1-3 are held to the README's strict rule: probabilities within (0, 2e-3), masks, ROIs and IoUs exact.
# Click 4 is judged with clicks 5-6 by the chaos rule (below): the README's perturbation table shows the reference
# itself moving click 4 by 0.20 (0.01 % of the pixels flipping) under a 1e-6 weight change, and one torch thread on
# an AVX-512 CPU does the same (max 0.20, 9 of 154,401 pixels, ROI exact), while two threads stay within 1e-3.
SESSION_PROB_ATOL = (2e-3, 2e-3, 2e-3)


def _replay(session, predictor, num_clicks):
    predictor.set_image(session["image"].numpy())
    gt = session["gt_mask"].numpy()
    for k, (row, col, positive, _) in enumerate(session["clicks"][:num_clicks]):
        probs = predictor.add_click(row, col, positive)
        recorded = session["probs"][k].float().numpy()
        assert predictor.roi == tuple(session["rois"][k]), f"click {k + 1}"
        np.testing.assert_allclose(probs, recorded, rtol=0, atol=SESSION_PROB_ATOL[k], err_msg=f"click {k + 1}")
        assert np.array_equal(probs > 0.49, recorded > 0.49), f"click {k + 1}: the mask differs"
        assert _iou(probs > 0.49, gt) == np.float32(session["ious"][k]), f"click {k + 1}"


def test_session_first_three_clicks_reproduced(session, predictor):
    _replay(session, predictor, 3)


def test_session_clicks_four_to_six_within_the_chaos_rule(session, predictor):
    """Golden README, Tolerances: clicks 4-6 are chaotic (a 1e-6 weight perturbation of the reference itself changes
    them), so, fed the recorded clicks, each mask may differ from the recording in at most 0.2 % of the image's
    pixels and each ROI may move by at most 2 px; clicks 1-3 keep the strict rule above."""
    predictor.set_image(session["image"].numpy())
    for k, (row, col, positive, _) in enumerate(session["clicks"][:6]):
        probs = predictor.add_click(row, col, positive)
        if k < 3:
            continue
        recorded = session["probs"][k].float().numpy() > 0.49
        differing = np.count_nonzero((probs > 0.49) != recorded) / recorded.size
        assert differing <= 0.002, f"click {k + 1}: {differing:.3%} of the pixels differ from the recording"
        roi_shift = max(abs(a - b) for a, b in zip(predictor.roi, session["rois"][k]))
        assert roi_shift <= 2, f"click {k + 1}: ROI {predictor.roi} vs recorded {tuple(session['rois'][k])}"


# -- behaviour -----------------------------------------------------------------------------------


def test_undo_restores_the_previous_map_and_reset_forgets_clicks(predictor):
    rng = np.random.default_rng(0)
    predictor.set_image(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    first = predictor.add_click(150, 200, True)
    predictor.add_click(100, 100, False)
    assert len(predictor.clicks) == 2
    np.testing.assert_array_equal(predictor.undo(), first)
    assert predictor.clicks == [Click(150, 200, True)]
    assert predictor.undo() is None and predictor.probs is None
    with pytest.raises(ValueError, match="no click to undo"):
        predictor.undo()
    predictor.add_click(10, 10, True)
    predictor.reset()
    assert predictor.clicks == [] and predictor.probs is None


def test_state_snapshot_replays_identically(predictor):
    rng = np.random.default_rng(1)
    predictor.set_image(rng.integers(0, 255, (256, 320, 3), dtype=np.uint8))
    predictor.add_click(100, 100, True)
    state = predictor.get_state()
    a = predictor.add_click(50, 200, False)
    predictor.set_state(state)
    b = predictor.add_click(50, 200, False)
    np.testing.assert_array_equal(a, b)


def test_flip_and_zoom_flags(tiny_model):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)
    plain = Predictor(tiny_model, device="cpu", flip=False, zoom_in=False)
    plain.set_image(image)
    calls = []
    forward = tiny_model.forward
    tiny_model.forward = lambda x, p: calls.append(x.shape) or forward(x, p)
    try:
        plain.add_click(150, 250, True)
        plain.add_click(140, 260, True)
    finally:
        del tiny_model.forward
    assert all(shape[0] == 1 for shape in calls), "no flip -> batch of one"
    assert plain.roi == (0, 299, 0, 499), "no zoom -> whole image"


@pytest.mark.parametrize(
    "image, expected_shape",
    [
        (np.zeros((20, 30), dtype=np.uint8), (20, 30, 3)),
        (np.zeros((20, 30, 1), dtype=np.uint8), (20, 30, 3)),
        (np.zeros((20, 30, 4), dtype=np.uint8), (20, 30, 3)),
        (np.full((20, 30, 3), 65535, dtype=np.uint16), (20, 30, 3)),
        (np.ones((20, 30, 3), dtype=np.float32), (20, 30, 3)),
    ],
)
def test_image_conversion(image, expected_shape):
    rgb = to_rgb_uint8(image)
    assert rgb.shape == expected_shape and rgb.dtype == np.uint8
    if image.dtype != np.uint8:
        assert rgb.max() == 255


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 10, 3), dtype=np.uint8), "empty"),
        (np.zeros((10, 10, 5), dtype=np.uint8), "shape"),
        (np.zeros((10, 10, 3), dtype=np.int64), "dtype"),
        (np.full((10, 10, 3), np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_bad_images_are_rejected_with_a_reason(predictor, image, message):
    with pytest.raises(ValueError, match=message):
        predictor.set_image(image)


def test_bad_clicks_are_rejected_with_a_reason(predictor):
    with pytest.raises(ValueError, match="no image set"):
        Predictor(predictor.model, device="cpu").add_click(1, 1)
    predictor.set_image(np.zeros((40, 60, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="outside the 40x60 image"):
        predictor.add_click(40, 10)
    with pytest.raises(ValueError, match="outside"):
        predictor.add_click(-1, 10)
    with pytest.raises(ValueError, match="finite"):
        predictor.add_click(float("nan"), 10)
    with pytest.raises(ValueError, match="no clicks"):
        predictor.predict([])


def test_target_size_must_fit_the_attention_windows():
    from model.build import build_model

    starter = build_model("starter")  # 10x10-token windows of 16-px patches: sizes in steps of 160 px
    with pytest.raises(ValueError, match="multiple of 160 px"):
        Predictor(starter, device="cpu", target_size=448)
    assert Predictor(starter, device="cpu", target_size=480).zoom.target_size == (480, 480)


def test_bf16_autocast_runs_and_fp16_needs_cuda(tiny_model):
    rng = np.random.default_rng(3)
    p = Predictor(tiny_model, device="cpu", dtype="bf16")
    p.set_image(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8))
    probs = p.add_click(100, 100, True)
    assert probs.dtype == np.float32 and np.isfinite(probs).all()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16"):
            Predictor(tiny_model, device="cpu", dtype="fp16")


def test_previous_mask_is_the_input_of_the_next_click(predictor):
    """An accepted region continued: its mask is what the network sees as the previous mask, and the zoom-in
    crops around it and the click, as after earlier clicks; a fresh object sees an empty one and the whole image."""
    rng = np.random.default_rng(2)
    predictor.set_image(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    mask = np.zeros((240, 320), bool)
    mask[60:140, 100:200] = True
    seen = []
    forward = predictor._forward
    predictor._forward = lambda prev, clicks, roi: seen.append((prev.clone(), roi)) or forward(prev, clicks, roi)
    predictor.set_previous_mask(mask)
    assert predictor.clicks == [] and np.array_equal(predictor.prediction().mask, mask)
    predictor.add_click(100, 150, False)
    predictor.reset()
    predictor.add_click(100, 150, False)
    (seeded, seeded_roi), (fresh, fresh_roi) = seen
    assert np.array_equal(seeded[0, 0].numpy() > 0.5, mask) and not fresh.any()
    assert fresh_roi == (0, 239, 0, 319)
    rmin, rmax, cmin, cmax = seeded_roi
    assert rmin <= 60 and rmax >= 139 and cmin <= 100 and cmax >= 199 and (rmax - rmin) * (cmax - cmin) < 240 * 320


def test_previous_mask_undo_and_bad_masks(predictor):
    predictor.set_image(np.zeros((64, 80, 3), np.uint8))
    mask = np.zeros((64, 80), bool)
    mask[10:30, 20:50] = True
    predictor.set_previous_mask(mask)
    predictor.add_click(20, 30, False)
    assert np.array_equal(predictor.undo() > predictor.threshold, mask)  # back to the region as it was accepted
    with pytest.raises(ValueError, match="the mask is"):
        predictor.set_previous_mask(mask[:-1])
    with pytest.raises(ValueError, match="NaN"):
        predictor.set_previous_mask(np.full((64, 80), np.nan, np.float32))
