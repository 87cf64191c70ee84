"""A box as the first prompt: the mask it gives, clicks after it, its state, bad boxes, evaluation and CLI."""

import json

import cv2
import numpy as np
import pytest

from cli import main
from ml_backend.interactive.sessions import box_prompt
from model.box_prompt import BoxStrategy, box_from_corners, clip_to_box, inner_click
from model.evaluation.datasets import load_dataset
from model.evaluation.grabcut import GrabCutPredictor
from model.evaluation.metrics import iou
from model.evaluation.runner import evaluate_instance, gt_box
from model.predictor import Predictor
from model.state_codec import StateFormatError
from model.weights import STARTER_WEIGHTS
from model.zoom_in import Click

from prerequisites import missing


@pytest.fixture(scope="module")
def starter_model():
    from model.checkpoint import load_model

    if not STARTER_WEIGHTS.is_file():
        missing(f"{STARTER_WEIGHTS} not found")
    return load_model(STARTER_WEIGHTS, "cpu")


@pytest.fixture(scope="module")
def grabcut_sample(shared_dir):
    """One GrabCut object. Read only to check behaviour: nothing is tuned on it."""
    root = shared_dir / "datasets"
    if not (root / "GrabCut").is_dir():
        missing(f"GrabCut not found under {root}")
    return load_dataset("GrabCut", root)[0]


@pytest.fixture()
def served(starter_model):
    """The starter with the served settings (flip off, guided,clean) and the default box strategy."""
    return Predictor(starter_model, "cpu", flip=False, refine="guided,clean")


@pytest.fixture()
def tiny(tiny_model):
    predictor = Predictor(tiny_model, "cpu", flip=False, refine="guided,clean")
    predictor.set_image(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    return predictor


def _box_only_mask(gt: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = gt_box(gt)
    filled = np.zeros(gt.shape, bool)
    filled[y0:y1, x0:x1] = True
    return filled


def test_box_mask_follows_the_object(served, grabcut_sample):
    served.set_image(grabcut_sample.image)
    served.set_box(*gt_box(grabcut_sample.gt))
    mask = served.prediction().mask
    # Better than the box itself (the mask follows the outline, not the rectangle) and a usable mask on its own.
    assert iou(grabcut_sample.gt, mask) > iou(grabcut_sample.gt, _box_only_mask(grabcut_sample.gt)) + 0.05
    assert iou(grabcut_sample.gt, mask) > 0.75


def test_clicks_after_a_box_refine_the_same_object(served, grabcut_sample):
    served.set_image(grabcut_sample.image)
    box_probs = served.set_box(*gt_box(grabcut_sample.gt)).copy()
    box_mask = box_probs > served.threshold
    inside = inner_click(box_probs, served.box, served.threshold)
    served.add_click(inside.row, inside.col, positive=False)
    after = served.mask
    assert after.sum() < box_mask.sum() and not after[inside.row, inside.col]
    assert served.clicks == [Click(inside.row, inside.col, False)] and served.box is not None
    assert served.undo() is not None and np.array_equal(served.probs, box_probs)
    assert served.undo() is None and served.box is None


def test_box_then_robot_clicks_improve_iou(served, grabcut_sample):
    result = evaluate_instance(served, grabcut_sample.image, grabcut_sample.gt, max_clicks=4, first="box")
    assert result.box == gt_box(grabcut_sample.gt) and len(result.clicks) == len(result.ious) - 1
    assert max(result.ious) >= result.ious[0]


def test_state_round_trips_with_a_box(tiny):
    tiny.set_box(20, 10, 80, 70)
    box_state = tiny.get_state()
    restored = tiny.import_state(tiny.export_state())
    assert restored.box == box_state.box and not restored.clicks
    assert np.array_equal(restored.probs, box_state.probs)
    tiny.add_click(40, 50, True)
    blob, clicked = tiny.export_state(), tiny.get_state()
    tiny.reset()
    tiny.set_state(tiny.import_state(blob))
    assert tiny.box == (10, 69, 20, 79) and tiny.clicks == [Click(40, 50, True)]
    assert np.array_equal(tiny.probs, clicked.probs)
    tiny.add_click(30, 30, False)  # continues the same object after the import
    assert tiny.box == (10, 69, 20, 79) and len(tiny.clicks) == 2
    tiny.set_state(box_state)
    assert tiny.clicks == [] and tiny.box == (10, 69, 20, 79)


def test_imported_box_outside_the_image_is_rejected(tiny, tiny_model):
    tiny.set_box(20, 10, 80, 70)
    blob = tiny.export_state()
    smaller = Predictor(tiny_model, "cpu", flip=False, refine="guided,clean")
    smaller.set_image(np.zeros((90, 120, 3), np.uint8))
    head_len = int.from_bytes(blob[5:9], "little")
    header = json.loads(blob[9 : 9 + head_len])
    header["box"]["box"] = [10, 200, 20, 79]
    head = json.dumps(header, separators=(",", ":")).encode()
    with pytest.raises(StateFormatError, match="box"):
        smaller.import_state(blob[:5] + len(head).to_bytes(4, "little") + head + blob[9 + head_len :])


def test_reset_and_set_image_clear_the_box(tiny):
    tiny.set_box(20, 10, 80, 70)
    tiny.reset()
    assert tiny.box is None and tiny.probs is None
    tiny.set_box(20, 10, 80, 70)
    tiny.set_image(np.zeros((50, 50, 3), np.uint8))
    assert tiny.box is None


@pytest.mark.parametrize(
    "corners, message",
    [
        ((80, 10, 20, 70), "inverted"),
        ((20, 10, 20, 70), "empty"),
        ((20, 10, 80, float("nan")), "finite"),
        ((500, 500, 600, 600), "outside"),
        ((-50, -40, -1, -1), "outside"),
    ],
)
def test_bad_boxes_are_clear_errors(tiny, corners, message):
    with pytest.raises(ValueError, match=message):
        tiny.set_box(*corners)
    assert tiny.box is None


def test_box_over_the_edge_is_clipped_to_the_image():
    assert box_from_corners(-10.5, 5.2, 130, 89.5, (90, 120)) == (5, 89, 0, 119)
    assert box_from_corners(3, 4, 4, 5, (90, 120)) == (4, 4, 3, 3)  # a one-pixel box


def test_set_box_needs_an_image(tiny_model):
    with pytest.raises(ValueError, match="no image"):
        Predictor(tiny_model, "cpu").set_box(0, 0, 10, 10)


def test_strategy_derives_clicks_roi_and_clip_from_the_box():
    box = (20, 59, 30, 89)
    prompt = BoxStrategy(corner_negatives=True, clip_margin=0.1, roi_ratio=1.5, roi_min_size=10).prompt(box, (100, 200))
    rows, cols = zip(*[(c.row, c.col) for c in prompt.clicks if not c.positive])
    assert prompt.clicks[0] == Click(39, 59, True) and len(rows) == 4
    assert all(not (20 <= r <= 59 and 30 <= c <= 89) for r, c in zip(rows, cols))
    assert prompt.roi[0] < 20 and prompt.roi[1] > 59 and prompt.roi[2] < 30 and prompt.roi[3] > 89
    margin_rows, margin_cols = 0.1 * 40, 0.1 * 60
    assert prompt.clip[0] <= 20 - margin_rows and prompt.clip[1] >= 59 + margin_rows
    assert prompt.clip[2] <= 30 - margin_cols and prompt.clip[3] >= 89 + margin_cols
    assert prompt.clip[0] > prompt.roi[0] and prompt.clip[3] < prompt.roi[3]  # the clip is tighter than the ROI


def test_priors_cover_the_box():
    import torch

    box = (10, 29, 20, 59)
    ellipse = BoxStrategy(prior="ellipse", prior_value=0.7).prior_map(box, (50, 80), torch.device("cpu"))[0, 0]
    filled = BoxStrategy(prior="box").prior_map(box, (50, 80), torch.device("cpu"))[0, 0]
    assert float(ellipse[20, 40]) == pytest.approx(0.7) and float(ellipse[10, 20]) == 0.0
    assert float(filled.sum()) == pytest.approx(0.5 * 20 * 40) and float(filled[9, 40]) == 0.0
    assert float(BoxStrategy(prior="none").prior_map(box, (50, 80), torch.device("cpu")).abs().sum()) == 0.0


def test_clip_is_lifted_by_a_positive_click_outside_the_box():
    import torch

    prompt = BoxStrategy(clip_margin=0.0).prompt((10, 19, 10, 19), (40, 40))
    probs = torch.ones((1, 1, 40, 40))
    assert float(clip_to_box(probs, prompt, ()).sum()) == 100.0
    assert float(clip_to_box(probs, prompt, (Click(30, 30, False),)).sum()) == 100.0
    assert float(clip_to_box(probs, prompt, (Click(30, 30, True),)).sum()) == 1600.0


def test_inner_click_is_the_deepest_mask_pixel_in_the_box():
    probs = np.zeros((40, 60), np.float32)
    probs[5:16, 10:41] = 1.0  # 11 x 31: the centre row 10, deepest around columns 15..35
    click = inner_click(probs, (0, 39, 0, 59), 0.49)
    assert click.positive and click.row == 10 and 15 <= click.col <= 35
    assert inner_click(probs, (20, 39, 0, 59), 0.49) is None


def test_invalid_strategy_is_rejected():
    with pytest.raises(ValueError, match="placement"):
        BoxStrategy(click="corner")
    with pytest.raises(ValueError, match="prior"):
        BoxStrategy(prior="circle")


def test_box_evaluation_needs_a_box_predictor(grabcut_sample):
    with pytest.raises(ValueError, match="takes no box"):
        evaluate_instance(GrabCutPredictor(), grabcut_sample.image, grabcut_sample.gt, max_clicks=2, first="box")


def test_evaluate_cli_runs_both_protocols_in_one_run(shared_dir, golden_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["evaluate", "--datasets", "GrabCut", "--data-root", str(shared_dir / "datasets"), "--limit", "1"]
    argv += ["--max-clicks", "2", "--first", "click,box", "--checkpoint", str(golden_dir / "tiny_official.pth")]
    assert main([*argv, "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["datasets"]) == {"GrabCut", "GrabCut [box first]"}
    boxed = results["datasets"]["GrabCut [box first]"]["instances"][0]
    assert len(boxed["box"]) == 4 and len(boxed["clicks"]) == len(boxed["ious"]) - 1
    assert "IoU@1" in capsys.readouterr().out


def test_evaluate_cli_rejects_unknown_first_interaction(shared_dir, capsys):
    argv = ["evaluate", "--datasets", "GrabCut", "--data-root", str(shared_dir / "datasets")]
    assert main([*argv, "--first", "lasso"]) == 2
    assert "--first" in capsys.readouterr().err
    assert main([*argv, "--first", "box", "--method", "grabcut"]) == 2
    assert "takes no box" in capsys.readouterr().err


def test_predict_cli_takes_a_box(shared_dir, golden_dir, tmp_path, capsys):
    image = shared_dir / "datasets" / "GrabCut" / "images" / "37073.jpg"
    if not image.is_file():
        missing(f"{image} not found")
    out = tmp_path / "mask.png"
    argv = ["predict", str(image), "--checkpoint", str(golden_dir / "tiny_official.pth"), "--device", "cpu"]
    assert main([*argv, "--box", "150,50,300,200", "--click", "100,220,neg", "--out", str(out)]) == 0
    assert cv2.imread(str(out), cv2.IMREAD_GRAYSCALE).shape == cv2.imread(str(image)).shape[:2]
    assert "a box and 1 click(s)" in capsys.readouterr().out
    assert main([*argv, "--box", "300,50,150,200", "--out", str(out)]) == 2
    assert "inverted" in capsys.readouterr().err
    assert main([*argv, "--out", str(out)]) == 2
    assert "--click or a --box" in capsys.readouterr().err


def test_gt_box_is_the_tight_box_of_object_pixels():
    gt = np.zeros((50, 80), np.int8)
    gt[10:20, 30:70] = 1
    gt[0:5, 0:5] = -1  # ignore pixels are not object
    assert gt_box(gt) == (30, 10, 70, 20)
    assert gt_box(gt, pad=0.1) == (26, 9, 74, 21)
    assert gt_box(gt, pad=1.0) == (0, 0, 80, 30)  # clipped to the image
    with pytest.raises(ValueError, match="no object"):
        gt_box(np.zeros((5, 5), np.int8))


def test_fractional_box_edges_round_to_the_nearest_pixel_edge():
    """One rule for a box everywhere (CVAT's fractional corners, Label Studio's percentages): the nearest pixel
    edge, halves up; a box thinner than a pixel keeps the pixels it touches."""
    assert box_from_corners(10.4, 5.6, 50.5, 40.49, (100, 100)) == (6, 39, 10, 50)
    assert box_from_corners(10.5, 11.5, 20.5, 21.5, (100, 100)) == (12, 21, 11, 20)
    assert box_from_corners(10.6, 5.0, 10.9, 8.0, (100, 100)) == (5, 7, 10, 10)
    assert box_prompt(10.4, 5.6, 50.5, 40.49) == ("box", 10, 6, 51, 40)  # the session key is the box the model sees
