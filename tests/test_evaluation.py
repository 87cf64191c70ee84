"""Evaluation protocol end to end with simple predictors, the GrabCut baseline and dataset readers."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from cli import main as cli_main
from model.evaluation.datasets import DatasetError, DatasetNotFoundError, load_dataset, open_dataset
from model.evaluation.grabcut import GrabCutPredictor
from model.evaluation.metrics import compute_noc
from model.evaluation.runner import evaluate_dataset, evaluate_instance
from model.interactive import InteractivePredictor, prediction_from

from prerequisites import missing

MAX_CLICKS = 20


def main(argv: list[str]) -> int:
    """``adaptiveclick evaluate ARGV``."""
    return cli_main(["evaluate", *argv])


class MapPredictor:
    """Owns its threshold like every predictor; subclasses say which map a click gives."""

    threshold = 0.49
    probs = None

    def prediction(self):
        return prediction_from(self.probs, self.threshold)


class PerfectPredictor(MapPredictor):
    """Returns the ground truth object whatever the clicks."""

    def __init__(self, gt_by_shape):
        self.gt_by_shape = gt_by_shape

    def set_image(self, image):
        self.shape = image.shape[:2]

    def add_click(self, row, col, positive):
        self.probs = (self.gt_by_shape[self.shape] == 1).astype(np.float32)
        return self.probs

    def reset(self):
        pass


class ConstantPredictor(MapPredictor):
    """Returns a fixed map and records the clicks it receives."""

    def __init__(self, make_map):
        self.make_map = make_map
        self.clicks = []

    def set_image(self, image):
        self.image = image

    def add_click(self, row, col, positive):
        self.clicks.append((row, col, positive))
        self.probs = self.make_map(self.image)
        return self.probs

    def reset(self):
        self.clicks = []


@pytest.fixture(scope="module")
def data_root(shared_dir):
    root = shared_dir / "datasets"
    if not (root / "GrabCut").is_dir() or not (root / "Berkeley").is_dir():
        missing(f"GrabCut / Berkeley not found under {root}")
    return root


@pytest.fixture(scope="module")
def few_samples(data_root):
    grabcut, berkeley = load_dataset("GrabCut", data_root), load_dataset("Berkeley", data_root)
    assert (len(grabcut), len(berkeley)) == (50, 100)
    with_band = [s for s in (grabcut[i] for i in range(8)) if (s.gt == -1).any()][:3]
    return with_band + [berkeley[0], berkeley[1]]


def test_predictors_follow_protocol():
    assert isinstance(GrabCutPredictor(), InteractivePredictor)
    assert isinstance(ConstantPredictor(lambda image: None), InteractivePredictor)


def test_perfect_predictor_scores_one_click(few_samples):
    for sample in few_samples:
        result = evaluate_instance(PerfectPredictor({sample.gt.shape: sample.gt}), sample.image, sample.gt)
        assert result.ious == [1.0] and result.num_clicks == 1
        assert result.clicks[0].is_positive and sample.gt[result.clicks[0].row, result.clicks[0].col] == 1
    noc, _, nof = compute_noc([[1.0]] * len(few_samples), [0.85, 0.90])
    assert noc == [1.0, 1.0] and nof == [0, 0]


def test_empty_predictor_fails_every_instance(few_samples):
    empty = ConstantPredictor(lambda image: np.zeros(image.shape[:2], np.float32))
    results = evaluate_dataset(empty, few_samples, max_clicks=MAX_CLICKS, progress=False)
    assert all(r.num_clicks == MAX_CLICKS and max(r.ious) == 0.0 for r in results)
    noc, _, nof = compute_noc([r.ious for r in results], [0.85, 0.90], MAX_CLICKS)
    assert noc == [MAX_CLICKS, MAX_CLICKS] and nof == [len(results)] * 2


def test_ignore_pixels_never_receive_clicks(few_samples):
    def dilated_object(image):
        gt = gt_of[image.shape[:2]]
        return cv2.dilate((gt == 1).astype(np.uint8), np.ones((31, 31), np.uint8)).astype(np.float32)

    for sample in few_samples[:3]:
        assert (sample.gt == -1).any()
        gt_of = {sample.gt.shape: sample.gt}
        for make_map in (dilated_object, lambda image: np.ones(image.shape[:2], np.float32)):
            predictor = ConstantPredictor(make_map)
            evaluate_instance(predictor, sample.image, sample.gt, max_clicks=6, stop_iou=1.01)
            assert all(sample.gt[row, col] != -1 for row, col, _ in predictor.clicks)


def test_grabcut_baseline_first_click_inside_object(few_samples):
    sample = few_samples[0]
    predictor = GrabCutPredictor()
    result = evaluate_instance(predictor, sample.image, sample.gt, max_clicks=2, stop_iou=1.01)
    first = result.clicks[0]
    assert first.is_positive and sample.gt[first.row, first.col] == 1
    assert result.num_clicks == 2 and 0.0 < result.ious[0] <= 1.0
    predictor.set_image(sample.image)
    probability = predictor.add_click(first.row, first.col, True)
    assert probability.shape == sample.gt.shape and probability.dtype == np.float32
    assert set(np.unique(probability)) <= {0.0, 1.0} and probability[first.row, first.col] == 1.0


def test_berkeley_letter_suffix_shares_image(data_root):
    berkeley = load_dataset("Berkeley", data_root)
    names = {item[0]: item[1].name for item in berkeley.items}
    assert names["189011a"] == names["189011b"] == "189011.jpg"


def test_run_evaluate_writes_results_and_plot(data_root, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "--method",
        "grabcut",
        "--datasets",
        "GrabCut",
        "--data-root",
        str(data_root),
        "--limit",
        "2",
        "--max-clicks",
        "3",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "grabcut" and results["settings"]["max_clicks"] == 3
    dataset = results["datasets"]["GrabCut"]
    assert len(dataset["instances"]) == 2 and set(dataset["summary"]["noc"]) == {"85", "90"}
    for record in dataset["instances"]:
        assert 1 <= len(record["ious"]) == len(record["clicks"]) <= 3 and record["time_s"] > 0
    assert len(dataset["summary"]["mean_iou_per_click"]) == 3 and dataset["summary"]["spc_s"] > 0
    assert (out / "miou_vs_clicks.png").stat().st_size > 0
    assert "NoC@90" in capsys.readouterr().out

    compare_out = tmp_path / "compare"
    assert main(["--compare", str(out / "results.json"), str(out / "results.json"), "--out", str(compare_out)]) == 0
    assert (compare_out / "compare_miou_vs_clicks.png").is_file()


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(DatasetNotFoundError, match="Nope"):
        load_dataset("Nope", tmp_path)
    assert main(["--method", "grabcut", "--datasets", "Nope", "--data-root", str(tmp_path)]) == 2
    assert f"dataset 'Nope' not found: the data root {tmp_path} holds no dataset folder" in capsys.readouterr().err


def test_malformed_dataset_is_a_clear_error(tmp_path):
    (tmp_path / "Bad" / "images").mkdir(parents=True)
    (tmp_path / "Bad" / "masks").mkdir()
    with pytest.raises(DatasetError, match="images"):
        open_dataset(tmp_path / "Bad")
    (tmp_path / "Odd" / "stuff").mkdir(parents=True)
    with pytest.raises(DatasetError, match="unknown layout"):
        open_dataset(tmp_path / "Odd")
    _write_image(tmp_path / "Orphan" / "images" / "a.jpg")
    cv2.imwrite(str(_mkdir(tmp_path / "Orphan" / "masks") / "b.png"), np.zeros((24, 32), np.uint8))
    with pytest.raises(DatasetError, match="b.png"):
        open_dataset(tmp_path / "Orphan")


# Tiny fakes of the layouts users download.


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_image(path, shape=(24, 32)):
    _mkdir(path.parent)
    image = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


def _box(shape=(24, 32), rows=slice(5, 15), cols=slice(6, 20), value=1, dtype=np.uint8):
    mask = np.zeros(shape, dtype)
    mask[rows, cols] = value
    return mask


def test_grabcut_download_layout(tmp_path):
    _write_image(tmp_path / "data_GT" / "flower.bmp")
    mask = _box(value=255)
    mask[4, 6:20] = 128
    cv2.imwrite(str(_mkdir(tmp_path / "boundary_GT") / "flower.bmp"), mask)
    (sample,) = list(open_dataset(tmp_path, "GrabCut"))
    assert sample.name == "flower" and sample.image.shape == (24, 32, 3) and sample.gt.dtype == np.int8
    assert (sample.gt == 1).sum() == 140 and (sample.gt == -1).sum() == 14 and sample.gt[0, 0] == 0


def test_berkeley_download_layout(tmp_path):
    _write_image(tmp_path / "images" / "189011.jpg")
    mask = np.repeat(_box(value=255)[..., None], 3, axis=2)
    cv2.imwrite(str(_mkdir(tmp_path / "masks") / "189011a.png"), mask)
    cv2.imwrite(str(tmp_path / "masks" / "189011.png"), 255 - mask)
    samples = list(open_dataset(tmp_path, "Berkeley"))
    assert [s.name for s in samples] == ["189011", "189011a"]
    assert (samples[1].gt == 1).sum() == 140 and (samples[0].gt == 1).sum() == 24 * 32 - 140
    assert not (samples[0].gt == -1).any()


@pytest.mark.parametrize("name", ["DAVIS", "COCO_MVal"])
def test_davis_and_coco_mval_layout(tmp_path, name):
    _write_image(tmp_path / "img" / "bear.jpg")
    cv2.imwrite(str(_mkdir(tmp_path / "gt") / "bear.png"), _box(value=38))
    (sample,) = list(open_dataset(tmp_path, name))
    assert sample.name == "bear" and (sample.gt == 1).sum() == 140 and set(np.unique(sample.gt)) == {0, 1}


def test_sbd_layout(tmp_path):
    for stem in ("2008_000001", "2008_000002"):
        _write_image(tmp_path / "img" / f"{stem}.jpg")
    segmentation = _box() + 2 * _box(rows=slice(17, 22), cols=slice(22, 30))
    instances = {"Segmentation": segmentation, "Boundaries": np.zeros(2, object), "Categories": np.array([[15], [3]])}
    savemat(str(_mkdir(tmp_path / "inst") / "2008_000001.mat"), {"GTinst": instances})
    (tmp_path / "val.txt").write_text("2008_000001\n")
    samples = list(open_dataset(tmp_path, "SBD"))
    assert [s.name for s in samples] == ["2008_000001#1", "2008_000001#2"]
    assert (samples[0].gt == 1).sum() == 140 and (samples[1].gt == 1).sum() == 40


def test_pascal_voc_layout(tmp_path):
    _write_image(tmp_path / "JPEGImages" / "2007_000033.jpg")
    labels = _box() + 2 * _box(rows=slice(17, 22), cols=slice(22, 30))
    labels[4, 6:20] = 255
    palette_image = Image.fromarray(labels, mode="P")
    palette_image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
    palette_image.save(_mkdir(tmp_path / "SegmentationObject") / "2007_000033.png")
    _mkdir(tmp_path / "ImageSets" / "Segmentation")
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
    samples = list(open_dataset(tmp_path, "PascalVOC"))
    assert len(samples) == 2 and (samples[0].gt == 1).sum() == 140 and (samples[1].gt == 1).sum() == 40
    assert (samples[0].gt == -1).sum() == 14


def test_sstem_layout_uses_4_connected_components(tmp_path):
    _mkdir(tmp_path / "raw")
    cv2.imwrite(str(tmp_path / "raw" / "slice01.tif"), np.full((24, 32), 90, np.uint8))
    mask = _box(rows=slice(2, 6), cols=slice(2, 6), value=255) + _box(rows=slice(6, 10), cols=slice(6, 10), value=255)
    cv2.imwrite(str(_mkdir(tmp_path / "mitochondria") / "slice01.png"), mask)
    samples = list(open_dataset(tmp_path, "ssTEM"))
    assert len(samples) == 2 and all((s.gt == 1).sum() == 16 for s in samples)
    assert samples[0].image.shape == (24, 32, 3)


def test_region_label_layout(tmp_path):
    _write_image(tmp_path / "images" / "scene.jpg")
    regions = (_box(dtype=np.uint16) * 300 + _box(rows=slice(17, 22), dtype=np.uint16) * 7).astype(np.uint16)
    cv2.imwrite(str(_mkdir(tmp_path / "regions") / "scene.png"), regions)
    samples = list(open_dataset(tmp_path))
    assert [s.name for s in samples] == ["scene#7", "scene#300"]
    assert (samples[1].gt == 1).sum() == 140


def test_evaluate_adaptiveclick_at_another_size_and_precision(data_root, tmp_path, capsys):
    import torch

    from model.build import build_model
    from model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    checkpoint = save_checkpoint(build_model("starter"), tmp_path / "starter.safetensors")
    common = [
        "--checkpoint",
        str(checkpoint),
        "--datasets",
        "GrabCut",
        "--data-root",
        str(data_root),
        "--limit",
        "1",
        "--max-clicks",
        "1",
        "--no-progress",
        "--device",
        "cpu",
    ]
    # The starter's 160-px attention windows do not tile 448 px: refused up front, with the reason.
    assert main([*common, "--target-size", "448", "--out", str(tmp_path / "bad")]) == 2
    assert "multiple of 160 px" in capsys.readouterr().err
    assert main([*common, "--target-size", "480", "--dtype", "bf16", "--out", str(tmp_path / "ok")]) == 0
    settings = json.loads((tmp_path / "ok" / "results.json").read_text())["settings"]
    assert settings["target_size"] == 480 and settings["dtype"] == "bf16"
    assert settings["runtime"] == "fast"  # what was measured is recorded: the served default runtime
