"""Inference-time refinement: the spec parser, edge-aware upsampling, component cleaning and the cascade."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.predictor import Predictor
from model.refine import DEFAULT_REFINE, Refinement, RefineSpecError, drop_unclicked_components, guided_upsample
from model.zoom_in import Click


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("none", Refinement()),
        ("", Refinement()),
        ("guided", Refinement(guided=True)),
        ("guided8@1e-2", Refinement(guided=True, guided_radius=8, guided_eps=1e-2)),
        ("cfr2", Refinement(cascade_steps=2)),
        ("cfr4@0.02,clean", Refinement(cascade_steps=4, cascade_tol=0.02, clean=True)),
        (" Guided , Clean ", Refinement(guided=True, clean=True)),
    ],
)
def test_specs_parse_and_round_trip(spec, expected):
    refinement = Refinement.parse(spec)
    assert refinement == expected
    assert Refinement.parse(refinement.spec) == refinement
    Refinement.parse(DEFAULT_REFINE)  # the shipped default is a valid spec


@pytest.mark.parametrize(
    "spec, names",
    [
        ("sharpen", "'sharpen'"),
        ("cfr", "'cfr'"),
        ("cfr11", "0..10"),
        ("guided0", "1..32"),
        ("cfr2@1.5", "[0, 1)"),
        ("guided@x", "'guided@x'"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, names):
    with pytest.raises(RefineSpecError, match=None) as error:
        Refinement.parse(spec)
    assert names in str(error.value)


def test_guided_upsampling_puts_the_boundary_on_the_image_edge():
    # Full resolution 256 px; the object's true edge is at column 150. The network's map (64 px, i.e. 4x coarser)
    # is blurry and its 0.5 crossing sits 12 full-resolution pixels left of the edge.
    size, low = 256, 64
    guide_full = torch.zeros(1, 1, size, size)
    guide_full[..., 150:] = 1.0
    guide_low = F.interpolate(guide_full, size=(low, low), mode="area")
    cols = torch.arange(low, dtype=torch.float32) * (size - 1) / (low - 1)
    probs_low = torch.sigmoid((cols - 138) / 10).expand(1, 1, low, low).contiguous()
    bilinear = F.interpolate(probs_low, size=(size, size), mode="bilinear", align_corners=True)
    refined = guided_upsample(probs_low, guide_low, guide_full, radius=8, eps=1e-3)  # reach: 8 low-res px

    def boundary(probs):
        return int((probs[0, 0, size // 2] > 0.5).float().argmax())

    assert abs(boundary(bilinear) - 150) >= 10
    assert abs(boundary(refined) - 150) <= 1
    # Far from the boundary (certain background / object) the bilinear map is kept as it is.
    assert torch.equal(refined[..., :40], bilinear[..., :40])


def test_clean_drops_only_components_without_a_positive_click():
    probs = torch.zeros(1, 1, 40, 60)
    probs[..., 5:15, 5:15] = 0.9  # clicked object
    probs[..., 25:35, 40:55] = 0.8  # stray blob
    roi = (0, 39, 0, 59)
    cleaned = drop_unclicked_components(probs, roi, [Click(10, 10, True), Click(30, 45, False)], 0.49)
    assert torch.equal(cleaned[..., 5:15, 5:15], probs[..., 5:15, 5:15])
    assert cleaned[..., 25:35, 40:55].max() == 0
    # No positive click inside the mask: the user and the network disagree, nothing is dropped.
    assert torch.equal(drop_unclicked_components(probs, roi, [Click(20, 30, True)], 0.49), probs)


def _clean_reference(probs, roi, clicks, threshold):
    """Component cleaning labelled over the whole ROI (what the mask's bounding box must reproduce)."""
    rmin, rmax, cmin, cmax = roi
    crop = probs[0, 0, rmin : rmax + 1, cmin : cmax + 1].numpy()
    count, labels = cv2.connectedComponents((crop > threshold).astype(np.uint8), connectivity=8)
    keep = {0} | {
        int(labels[c.row - rmin, c.col - cmin])
        for c in clicks
        if c.positive and rmin <= c.row <= rmax and cmin <= c.col <= cmax
    }
    if keep == {0}:
        return probs
    out = probs.clone()
    out[0, 0, rmin : rmax + 1, cmin : cmax + 1] *= torch.from_numpy(np.isin(labels, sorted(keep)).astype(np.float32))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_clean_in_the_masks_box_equals_cleaning_the_whole_roi(seed):
    rng = np.random.default_rng(seed)
    probs = torch.zeros(1, 1, 120, 160)
    roi = (10, 109, 20, 149)  # the ROI is not at the image's origin, the blobs not at the ROI's edges
    for _ in range(rng.integers(2, 6)):
        r, c = rng.integers(15, 95), rng.integers(25, 130)
        probs[..., r : r + rng.integers(2, 15), c : c + rng.integers(2, 15)] = float(rng.uniform(0.6, 1.0))
    probs[..., 50:52, 0:5] = 0.9  # outside the ROI: never touched
    clicks = [
        Click(int(r), int(c), bool(rng.random() < 0.7))
        for r, c in zip(rng.integers(10, 110, 4), rng.integers(20, 150, 4))
    ]
    expected = _clean_reference(probs, roi, clicks, 0.5)
    assert torch.equal(drop_unclicked_components(probs, roi, clicks, 0.5), expected)


class CountingModel(torch.nn.Module):
    """Wraps a network and counts its forwards; ``constant`` answers the same map whatever the previous mask."""

    def __init__(self, inner, constant: bool = False):
        super().__init__()
        self.inner = inner
        self.constant = constant
        self.calls = 0

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, image, points):
        self.calls += 1
        if self.constant:
            logits = torch.full((image.shape[0], 1, *image.shape[-2:]), -4.0)
            logits[..., 10:40, 10:40] = 4.0
            return {"instances": logits}
        return self.inner(image, points)


def test_cascade_runs_extra_forwards_and_stops_when_the_mask_settles(tiny_model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    for spec, constant, expected_calls in (("none", False, 1), ("cfr3", False, 4), ("cfr5@0.01", True, 2)):
        model = CountingModel(tiny_model, constant)
        predictor = Predictor(model, device="cpu", flip=False, zoom_in=False, refine=spec)
        predictor.set_image(image)
        predictor.add_click(30, 40, True)
        assert model.calls == expected_calls, spec  # the constant map settles after one extra forward


def test_refinement_off_is_the_reference_path(tiny_model):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    outputs = []
    for refine in (None, "none"):
        predictor = Predictor(tiny_model, device="cpu", refine=refine)
        predictor.set_image(image)
        outputs.append(predictor.predict([(30, 40, True), (10, 12, False)]))
    assert np.array_equal(outputs[0], outputs[1])
    refined = Predictor(tiny_model, device="cpu", refine="guided,clean")
    refined.set_image(image)
    probs = refined.predict([(30, 40, True), (10, 12, False)])
    assert probs.shape == (64, 80) and np.isfinite(probs).all() and 0 <= probs.min() and probs.max() <= 1
