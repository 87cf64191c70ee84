"""Training: data adapters, click simulation, the trainer (loss, exact resume) and DDP on CPU."""

from __future__ import annotations

import argparse
import json
import pickle
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cli import main as cli_main
from cli.train import config_from_args
from model.build import AdaptiveClickConfig
from model.evaluation.datasets import validation_dataset
from model.training.click_sampler import (
    MultiPointSampler,
    add_error_clicks,
    empty_points,
    erode,
    error_click,
    insert_click,
)
from model.training.data import (
    AugmentConfig,
    ClickTrainDataset,
    StreamSampler,
    TrainDataError,
    hold_out_validation,
    in_validation_split,
    open_train_source,
    split_ignore,
)
from model.training.trainer import TrainConfig, Trainer

MICRO = AdaptiveClickConfig(
    name="micro",
    image_size=64,
    window_pixels=32,
    embed_dim=32,
    depth=2,
    num_heads=2,
    global_attn_indexes=(1,),
    fpn_dims=(16, 16, 32, 32),
    conv_dim=32,
    mask_dim=32,
    encoder_ffn_dim=32,
    encoder_layers=1,
    hidden_dim=32,
    num_queries=4,
    decoder_heads=2,
    decoder_ffn_dim=32,
    decoder_layers=3,
)


# ---------------------------------------------------------------------------------------------
# Fake data sets


def _blob_image(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with a bright ellipse; returns (RGB image, object mask)."""
    image = rng.integers(0, 90, size=(height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    center = (int(rng.integers(width // 3, 2 * width // 3)), int(rng.integers(height // 3, 2 * height // 3)))
    axes = (int(rng.integers(width // 8, width // 4)), int(rng.integers(height // 8, height // 4)))
    cv2.ellipse(mask, center, axes, 0, 0, 360, 1, -1)
    image[mask == 1] = (220, 180, 60)
    return image, mask


def make_mask_dataset(root: Path, count: int = 4, seed: int = 0, ignore_band: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        image, mask = _blob_image(rng, 72, 96)
        if ignore_band:
            band = cv2.dilate(mask, np.ones((3, 3), np.uint8)) - cv2.erode(mask, np.ones((3, 3), np.uint8))
            mask[band == 1] = 255
        cv2.imwrite(str(root / "images" / f"im{i}.jpg"), image[:, :, ::-1])
        cv2.imwrite(str(root / "masks" / f"im{i}.png"), mask)
    return root


def make_regions_dataset(root: Path, count: int = 3, with_masks: bool = False) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "regions").mkdir()
    if with_masks:
        (root / "masks").mkdir()
    for i in range(count):
        labels = np.zeros((64, 80), np.uint16)
        labels[8:40, 8:40] = 1
        labels[8:40, 40:72] = 2  # touches region 1
        labels[44:60, 10:30] = 3
        labels[0:2, 0:2] = 4  # tiny: never an object
        image = np.full((64, 80, 3), 30, np.uint8)
        image[labels == 1] = (200, 50, 50)
        image[labels == 2] = (50, 200, 50)
        image[labels == 3] = (50, 50, 200)
        cv2.imwrite(str(root / "images" / f"r{i}.jpg"), image)
        cv2.imwrite(str(root / "regions" / f"r{i}.png"), labels)
        if with_masks:
            cv2.imwrite(str(root / "masks" / f"r{i}.png"), (labels > 0).astype(np.uint8))
    return root


def make_sbd_dataset(root: Path) -> Path:
    from scipy.io import savemat

    (root / "img").mkdir(parents=True)
    (root / "inst").mkdir()
    for stem in ("2008_000001", "2008_000002"):
        labels = np.zeros((60, 70), np.uint8)
        labels[10:40, 10:40] = 1
        labels[20:50, 45:65] = 2
        cv2.imwrite(str(root / "img" / f"{stem}.jpg"), np.full((60, 70, 3), 99, np.uint8))
        savemat(
            str(root / "inst" / f"{stem}.mat"),
            {"GTinst": {"Segmentation": labels, "Boundaries": [], "Categories": [1, 2]}},
        )
    (root / "train.txt").write_text("2008_000001\n")
    return root


def make_cocolvis_dataset(root: Path) -> Path:
    split = root / "train"
    (split / "images").mkdir(parents=True)
    (split / "masks").mkdir()
    layer0 = np.zeros((64, 64), np.uint8)
    layer0[5:30, 5:30] = 1
    layer0[35:60, 35:60] = 2
    layer1 = np.zeros((64, 64), np.uint8)
    layer1[10:20, 10:20] = 1  # a child of object 0, overlapping it
    layer1[40:64, 0:30] = 2  # stuff
    encoded = [cv2.imencode(".png", layer)[1] for layer in (layer0, layer1)]
    with open(split / "masks" / "000001.pickle", "wb") as handle:
        pickle.dump((encoded, [(0, 1), (0, 2), (1, 1), (1, 2)]), handle)
    cv2.imwrite(str(split / "images" / "000001.jpg"), np.full((64, 64, 3), 128, np.uint8))
    hierarchy = {0: {"parent": None, "children": [2]}, 1: None, 2: {"parent": 0, "children": []}}
    with open(split / "hannotation.pickle", "wb") as handle:
        pickle.dump({"000001": {"num_instance_masks": 3, "hierarchy": hierarchy}}, handle)
    return root


# ---------------------------------------------------------------------------------------------
# Adapters


def test_mask_layout_reads_objects_and_ignore(tmp_path):
    source = open_train_source(make_mask_dataset(tmp_path / "blobs", count=2))
    assert len(source) == 2
    annotated = source.records[0].load(np.random.default_rng(0))
    assert annotated.objects == [(0, 1)]
    assert annotated.layers.shape[:2] == annotated.image.shape[:2] and annotated.ignore is not None
    assert annotated.ignore.any() and not (annotated.layers[..., 0][annotated.ignore]).any()


def test_regions_and_masks_in_one_folder(tmp_path):
    source = open_train_source(make_regions_dataset(tmp_path / "Clothing-like", count=2, with_masks=True))
    kinds = sorted(type(r).__name__ for r in source.records)
    assert kinds == ["MaskRecord", "MaskRecord", "RegionRecord", "RegionRecord"]
    region = next(r for r in source.records if type(r).__name__ == "RegionRecord").load(np.random.default_rng(0))
    assert region.objects == [(0, 1), (0, 2), (0, 3), (0, 4)] and region.touching_union


def test_tiny_regions_are_never_chosen_and_touching_union_happens(tmp_path):
    source = open_train_source(make_regions_dataset(tmp_path / "regions", count=1))
    dataset = ClickTrainDataset(
        [source],
        AugmentConfig(
            crop_size=64,
            scale_range=(1.0, 1.0),
            flip_prob=0,
            touching_union_prob=1.0,
            merge_objects_prob=0,
            color_prob=0,
            shift_prob=0,
        ),
        MultiPointSampler(4),
    )
    areas = {int(dataset[g]["gt"].sum()) for g in range(12)}
    assert 4 not in areas  # region 4 (2x2 px) is below the size limit
    assert any(a > 32 * 32 for a in areas)  # regions 1 + 2 united


def test_sbd_layout_uses_train_list(tmp_path):
    source = open_train_source(make_sbd_dataset(tmp_path / "SBD"))
    assert len(source) == 1
    annotated = source.records[0].load(np.random.default_rng(0))
    assert annotated.objects == [(0, 1), (0, 2)]


def test_cocolvis_layout_roots_and_stuff(tmp_path):
    source = open_train_source(make_cocolvis_dataset(tmp_path / "cocolvis"))
    record = source.records[0]
    assert record.root_ids == (0, 1) and record.num_instance_masks == 3
    objects = {tuple(record.load(np.random.default_rng(seed)).objects) for seed in range(20)}
    assert ((0, 1), (0, 2)) in objects and ((0, 1), (0, 2), (1, 2)) in objects
    dataset = ClickTrainDataset([source], AugmentConfig(crop_size=64), MultiPointSampler(4))
    assert dataset[0]["gt"].shape == (1, 64, 64)


def test_pickle_with_code_is_refused(tmp_path):
    root = make_cocolvis_dataset(tmp_path / "evil")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(root / "train" / "hannotation.pickle", "wb") as handle:
        pickle.dump({"x": Evil()}, handle)
    with pytest.raises(TrainDataError, match="refusing"):
        open_train_source(root)


def test_missing_and_malformed_folders_give_clear_errors(tmp_path):
    with pytest.raises(TrainDataError, match="does not exist"):
        open_train_source(tmp_path / "nope")
    (tmp_path / "odd" / "pictures").mkdir(parents=True)
    with pytest.raises(TrainDataError, match="unknown layout.*pictures/"):
        open_train_source(tmp_path / "odd")
    root = make_mask_dataset(tmp_path / "orphan", count=1)
    cv2.imwrite(str(root / "masks" / "stray.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(TrainDataError, match="no image named stray"):
        open_train_source(root)
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(TrainDataError, match="found no"):
        open_train_source(tmp_path / "empty")
    make_mask_dataset(tmp_path / "GrabCut", count=1)
    with pytest.raises(TrainDataError, match="evaluation set"):
        open_train_source(tmp_path / "GrabCut")


def test_samples_are_deterministic_and_keep_the_object(tmp_path):
    source = open_train_source(make_mask_dataset(tmp_path / "blobs", count=3))
    dataset = ClickTrainDataset([source], AugmentConfig(crop_size=64, base_scale=1.2), MultiPointSampler(6), seed=3)
    for position in range(6):
        a, b = dataset[position], dataset[position]
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert a["image"].shape == (3, 64, 64) and a["image"].dtype == torch.uint8
        assert a["gt"].sum() >= 1 and a["points"].shape == (12, 3)
    assert not torch.equal(dataset[0]["image"], dataset[1]["image"])
    sampler = iter(StreamSampler(rank=1, world_size=2, start=3))
    assert [next(sampler) for _ in range(3)] == [7, 9, 11]


def test_zoom_in_crops_frame_a_small_object_like_the_predictor(tmp_path):
    """A 40x60 object in a 400x600 image: a zoom-in sample shows all of it, centred, filling the share of the
    crop that a 160..240 px ROI gives it (the predictor's zoom-in: box x1.4, at least 200 px)."""
    from model.training.finetune import memory_source

    image = np.random.default_rng(0).integers(0, 90, size=(400, 600, 3), dtype=np.uint8)
    mask = np.zeros((400, 600), bool)
    mask[100:140, 300:360] = True
    image[mask] = (220, 180, 60)
    source = memory_source([(image, [mask])])
    zoomed = ClickTrainDataset(
        [source],
        AugmentConfig(crop_size=64, zoom_in_prob=1.0, color_prob=0, shift_prob=0, merge_objects_prob=0),
        MultiPointSampler(4),
        seed=1,
    )
    for position in range(8):
        sample = zoomed[position]
        assert torch.equal(sample["image"], zoomed[position]["image"])
        gt = sample["gt"][0].numpy() > 0.5
        rows, cols = np.flatnonzero(gt.any(1)), np.flatnonzero(gt.any(0))
        assert rows[0] > 0 and cols[0] > 0 and rows[-1] < 63 and cols[-1] < 63  # the whole object is inside
        assert abs(0.5 * (rows[0] + rows[-1]) - 31.5) < 12 and abs(0.5 * (cols[0] + cols[-1]) - 31.5) < 12
        assert 2400 / 240**2 * 0.8 < gt.mean() < 2400 / 160**2 * 1.2
        assert (sample["image"][:, gt].float().mean(1) > 150).any()  # the object's colour, not padding
    with pytest.raises(ValueError, match="zoom_in_prob"):
        TrainConfig(data=["x"], zoom_in_prob=1.5).validate()


def test_split_ignore_takes_the_nearer_label():
    target = np.zeros((1, 9), bool)
    target[0, :3] = True
    ignore = np.zeros_like(target)
    ignore[0, 3:7] = True
    resolved = split_ignore(target, ignore)
    assert resolved[0].tolist() == [True] * 5 + [False] * 4


# ---------------------------------------------------------------------------------------------
# Click simulation


def test_sampler_positives_in_eroded_object_negatives_outside():
    mask = np.zeros((60, 60), bool)
    mask[15:45, 10:40] = True
    others = np.zeros_like(mask)
    others[50:58, 45:58] = True
    valid = np.ones_like(mask)
    valid[20:25, 20:25] = False  # ignore inside the object
    valid[0:10, :] = False  # ignore in the background
    sampler = MultiPointSampler(max_num_points=24, positive_erode_prob=1.0, positive_erode_iters=3)
    eroded = erode(mask, 3)
    num_pos = num_neg = 0
    for seed in range(40):
        points = sampler.sample([mask], others, valid, np.random.default_rng(seed))
        positives = points[:24][points[:24, 0] >= 0].astype(int)
        negatives = points[24:][points[24:, 0] >= 0].astype(int)
        assert len(positives) >= 1
        assert eroded[positives[:, 0], positives[:, 1]].all()
        assert not mask[negatives[:, 0], negatives[:, 1]].any() if len(negatives) else True
        clicked = np.concatenate([positives, negatives])
        assert valid[clicked[:, 0], clicked[:, 1]].all()
        num_pos, num_neg = num_pos + len(positives), num_neg + len(negatives)
    assert num_neg > 0 and num_pos > 40


def test_sampler_merged_parts_each_get_a_click():
    a = np.zeros((40, 40), bool)
    a[2:10, 2:10] = True
    b = np.zeros_like(a)
    b[25:35, 25:35] = True
    points = MultiPointSampler(8).sample([a, b], np.zeros_like(a), np.ones_like(a), np.random.default_rng(1))
    positives = points[:8][points[:8, 0] >= 0].astype(int)
    assert a[positives[:, 0], positives[:, 1]].any() and b[positives[:, 0], positives[:, 1]].any()


def test_error_click_lands_deep_in_the_larger_error_region():
    gt = np.zeros((50, 50), bool)
    gt[5:45, 5:45] = True
    prob = np.zeros((50, 50), np.float32)
    prob[5:45, 5:25] = 1.0  # right half missed: false negatives
    prob[47:50, 0:10] = 1.0  # a thin false positive
    valid = np.ones_like(gt)
    for seed in range(10):
        row, col, positive = error_click(prob, gt, valid, np.random.default_rng(seed))
        assert positive and gt[row, col] and prob[row, col] < 0.49
        assert 25 <= col < 45 and 10 <= row < 40  # deeper than half of the region's max distance
    # Mostly false positive now.
    prob = np.zeros((50, 50), np.float32)
    prob[0:50, 0:50] = 1.0
    gt[:] = False
    gt[0:5, 0:5] = True
    row, col, positive = error_click(prob, gt, valid, np.random.default_rng(0))
    assert not positive and not gt[row, col]
    assert error_click(gt.astype(np.float32), gt, valid, np.random.default_rng(0)) is None  # no error left


def test_add_error_clicks_fills_a_free_slot():
    points = torch.from_numpy(empty_points(3))[None].repeat(2, 1, 1)
    points[:, 0] = torch.tensor([1.0, 1.0, 0.0])
    gt = torch.zeros(2, 1, 20, 20)
    gt[:, :, 5:15, 5:15] = 1
    probs = torch.zeros(2, 1, 20, 20)
    updated = add_error_clicks(probs, gt, torch.ones_like(gt, dtype=torch.bool), points, np.random.default_rng(0), 5)
    assert torch.equal(updated[:, 0], points[:, 0])  # the initial click stays
    assert (updated[:, 1, 2] == 5).all() and (gt[0, 0, updated[0, 1, 0].long(), updated[0, 1, 1].long()] == 1)
    full = torch.arange(18, dtype=torch.float32).view(6, 3)
    insert_click(full, 7, 8, False, 9)
    assert full[5].tolist() == [7, 8, 9]  # all negative rows taken: the last one is replaced


# ---------------------------------------------------------------------------------------------
# Trainer


def _micro_config(tmp_path: Path, data: Path, **overrides) -> TrainConfig:
    model_json = tmp_path / "micro.json"
    model_json.write_text(json.dumps(MICRO.to_dict()))
    settings = dict(
        data=[str(data)],
        out=str(tmp_path / "run"),
        model=str(model_json),
        steps=6,
        batch_size=2,
        lr=1e-3,
        workers=0,
        threads=1,
        base_scale=1.0,
        max_points=6,
        log_every=1,
        save_every_min=1e9,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    data = make_mask_dataset(tmp_path / "blobs", count=2, ignore_band=False)
    trainer = Trainer(_micro_config(tmp_path, data, max_extra_clicks=0, steps=40))
    batch = next(iter(trainer._loader()))
    losses = [trainer.train_step(batch)["loss"] for _ in range(12)]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses


def test_resume_continues_bit_identically(tmp_path):
    data = make_mask_dataset(tmp_path / "blobs", count=3)
    straight = _micro_config(tmp_path, data, out=str(tmp_path / "straight"))
    result_a = Trainer(straight).run()
    halves = _micro_config(tmp_path, data, out=str(tmp_path / "halves"))
    assert not Trainer(halves).run(until=3)["finished"]
    result_b = Trainer(halves, resume=True).run()
    assert result_a["finished"] and result_b["finished"] and result_b["step"] == 6
    assert result_a["loss"] == result_b["loss"]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "straight" / "final.safetensors"))
    b = load_file(str(tmp_path / "halves" / "final.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = (tmp_path / "straight" / "log.csv").read_text().splitlines()
    log_b = (tmp_path / "halves" / "log.csv").read_text().splitlines()
    strip = lambda lines: [",".join(line.split(",")[:9]) for line in lines]  # noqa: E731 - timing columns differ
    assert strip(log_a) == strip(log_b)
    from model.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "halves" / "final.safetensors").image_size == (64, 64)


def test_stopping_the_process_group_saves_the_run(tmp_path):
    """`kill -- -PGID` (or Ctrl-C in a terminal) reaches the DataLoader workers too; the run must still save."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data = make_mask_dataset(tmp_path / "blobs", count=3)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(asdict(_micro_config(tmp_path, data, steps=100_000, workers=1))))
    script = (
        "import json, sys; from model.training.trainer import TrainConfig, train; "
        "train(TrainConfig(**json.load(open(sys.argv[1]))))"
    )
    run = subprocess.Popen(
        [sys.executable, "-c", script, str(config)],
        cwd=Path(__file__).resolve().parents[1],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = tmp_path / "run" / "log.csv"
    try:
        deadline = time.monotonic() + 120
        while not (log.is_file() and len(log.read_text().splitlines()) >= 4):
            assert run.poll() is None and time.monotonic() < deadline, "the run did not start training"
            time.sleep(0.2)
        os.killpg(run.pid, signal.SIGTERM)
        _, errors = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 0, errors[-2000:]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] >= 3


def test_a_loader_worker_leaves_the_process_group_without_stopping_on_terminal_writes():
    """A worker in its own group must not be stopped by SIGTTOU when it prints to a `tostop` terminal."""
    import subprocess
    import sys

    script = (
        "import os, signal; from model.training.trainer import _worker_init; _worker_init(0); "
        "print(os.getpgid(0) == os.getpid(), signal.getsignal(signal.SIGTTOU) == signal.SIG_IGN)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True"]


def test_periodic_evaluation_writes_noc(tmp_path):
    data = make_mask_dataset(tmp_path / "blobs", count=2)
    evaluation = make_mask_dataset(tmp_path / "heldout", count=2, seed=5)
    Trainer(_micro_config(tmp_path, data, steps=2, eval_every=2, eval_data=[str(evaluation)], eval_limit=2)).run()
    rows = (tmp_path / "run" / "eval.csv").read_text().splitlines()
    assert rows[0] == "step,dataset,weights,instances,noc85,noc90,iou1"
    assert rows[1].startswith("0,heldout,last,2,") and rows[2].startswith("2,heldout,last,2,")  # the start, then step 2


def test_final_weights_are_validated_even_off_the_evaluation_schedule(tmp_path):
    data = make_mask_dataset(tmp_path / "blobs", count=2)
    evaluation = make_mask_dataset(tmp_path / "heldout", count=1, seed=5)
    cfg = _micro_config(tmp_path, data, steps=3, eval_every=2, eval_data=[str(evaluation)], eval_limit=1)
    Trainer(cfg).run()
    eval_csv = tmp_path / "run" / "eval.csv"
    assert [line.split(",")[0] for line in eval_csv.read_text().splitlines()[1:]] == ["0", "2", "3"]
    # A run that finished before this rule (no row at its last step) gets one on resume, and only once.
    eval_csv.write_text("\n".join(eval_csv.read_text().splitlines()[:-1]) + "\n")
    Trainer(cfg, resume=True).run()
    Trainer(cfg, resume=True).run()
    assert [line.split(",")[0] for line in eval_csv.read_text().splitlines()[1:]] == ["0", "2", "3"]


def test_validation_split_is_held_out_of_training_and_is_what_is_evaluated(tmp_path):
    data = make_mask_dataset(tmp_path / "blobs", count=40)
    source = open_train_source(data)
    kept = hold_out_validation(source, 0.25)
    validation = validation_dataset(data, 0.25)
    train_names = {r.mask_path.stem for r in kept.records}
    val_names = {name for name, _, _ in validation.items}
    assert train_names.isdisjoint(val_names) and train_names | val_names == {r.mask_path.stem for r in source.records}
    assert 4 <= len(val_names) <= 16  # about a quarter of 40
    assert val_names == {n for n in train_names | val_names if in_validation_split("blobs", n, 0.25)}
    assert hold_out_validation(source, 0.25).records == kept.records  # the same split every time
    trained_on = validation_dataset(data, 0.25, part="train")  # what `evaluate --datasets blobs:train` measures
    assert {name for name, _, _ in trained_on.items} == train_names and trained_on.name == "blobs:train"

    cfg = _micro_config(tmp_path, data, steps=2, eval_every=2, eval_limit=2, holdout=["blobs"], holdout_fraction=0.25)
    trainer = Trainer(cfg)
    assert {r.mask_path.stem for r in trainer.dataset.records} == train_names
    trainer.run()
    rows = (tmp_path / "run" / "eval.csv").read_text().splitlines()
    assert rows[1].startswith("0,blobs:val,last,2,")
    with pytest.raises(ValueError, match="not in --data"):
        _micro_config(tmp_path, data, holdout=["COCO-MVal"]).validate()
    for watched in ("GrabCut", "/data/Berkeley", "GrabCut:val"):
        with pytest.raises(ValueError, match="evaluation sets are measured for the report"):
            _micro_config(tmp_path, data, eval_data=[watched]).validate()
    _micro_config(tmp_path, data, eval_data=["GrabCut"], allow_eval_data=True).validate()


def test_ema_weights_are_saved_evaluated_and_resumed(tmp_path):
    from safetensors.torch import load_file

    data = make_mask_dataset(tmp_path / "blobs", count=3)
    evaluation = make_mask_dataset(tmp_path / "heldout", count=1, seed=5)
    cfg = _micro_config(tmp_path, data, ema_decay=0.9, eval_every=3, eval_data=[str(evaluation)], eval_limit=1)
    trainer = Trainer(cfg)
    trainer.run(until=3)
    ema, last = (
        load_file(str(tmp_path / "run" / "model_ema.safetensors")),
        load_file(str(tmp_path / "run" / "model_last.safetensors")),
    )
    weight = "backbone.blocks.0.mlp.fc1.weight"
    assert not torch.equal(ema[weight], last[weight])  # an average, not a copy
    resumed = Trainer(cfg, resume=True)
    assert all(torch.equal(resumed.ema[k].cpu(), trainer.ema[k].cpu()) for k in trainer.ema)
    resumed.run()
    assert (tmp_path / "run" / "final_ema.safetensors").is_file()
    weights = [line.split(",")[2] for line in (tmp_path / "run" / "eval.csv").read_text().splitlines()[1:]]
    assert weights == ["last", "ema"] * 3  # steps 0, 3 and 6
    with pytest.raises(ValueError, match="ema_decay"):
        _micro_config(tmp_path, data, ema_decay=1.0).validate()


def test_command_line_config_and_errors(tmp_path, capsys):
    data = make_mask_dataset(tmp_path / "blobs", count=1)
    cfg_file = tmp_path / "cfg.json"
    cfg = asdict(_micro_config(tmp_path, data))
    cfg_file.write_text(json.dumps(cfg))
    args = argparse.Namespace(config=str(cfg_file), steps=9, lr_milestones="0.5,0.9", zoom_in_prob=0.3, resume=False)
    merged, resume = config_from_args(args)
    assert merged.steps == 9 and merged.lr_milestones == (0.5, 0.9) and merged.data == [str(data)] and not resume
    assert merged.zoom_in_prob == 0.3
    assert cli_main(["train", "--steps", "2", "--out", str(tmp_path / "x")]) == 2
    assert "no training data" in capsys.readouterr().err
    assert cli_main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) != 0


def _ddp_worker(rank: int, world_size: int, cfg_dict: dict, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        cfg = TrainConfig.from_dict(cfg_dict)
        trainer = Trainer(cfg)
        batch = next(iter(trainer._loader()))
        trainer.run()
        flat = torch.cat([p.detach().flatten() for p in trainer.net.parameters()])
        torch.save({"params": flat, "first_image": batch["image"][0]}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_on_cpu_keep_replicas_identical(tmp_path):
    import torch.multiprocessing as mp

    data = make_mask_dataset(tmp_path / "blobs", count=4)
    cfg = asdict(_micro_config(tmp_path, data, steps=2, max_extra_clicks=1))
    mp.spawn(_ddp_worker, args=(2, cfg, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(rank0["params"], rank1["params"])
    assert not torch.equal(rank0["first_image"], rank1["first_image"])  # each rank sees its own shard
    assert (tmp_path / "run" / "final.safetensors").is_file()
