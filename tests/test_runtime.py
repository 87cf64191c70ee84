"""The inference runtime setting and the fast paths it selects: the same predictions as the reference's arithmetic up
to float rounding, and the refinement's region-restricted filters equal to their whole-map forms."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ml_backend.config import Settings
from model.modeling.ms_deform_attn import ms_deform_attn_gather, ms_deform_attn_sample
from model.predictor import Predictor
from model.refine import _box, guided_upsample
from model.runtime import DEFAULT_RUNTIME
from model.zoom_in import place_on_zeros


def test_served_runtime_defaults_to_the_models_and_a_bad_one_names_the_variable():
    from ml_backend.interactive.engine import predictor_options

    assert predictor_options(Settings.from_env({}))["runtime"] == DEFAULT_RUNTIME
    assert predictor_options(Settings.from_env({"MODEL_RUNTIME": " Torch "}))["runtime"] == "torch"
    assert predictor_options(Settings.from_env({"MODEL_RUNTIME": "onnx"}))["runtime"] == "onnx"
    with pytest.raises(ValueError, match="MODEL_RUNTIME='tensorrt': unknown runtime 'tensorrt'"):
        predictor_options(Settings.from_env({"MODEL_RUNTIME": "tensorrt"}))


def test_predictor_rejects_an_unknown_runtime(tiny_model):
    with pytest.raises(ValueError, match="unknown runtime 'jit'"):
        Predictor(tiny_model, device="cpu", runtime="jit")


def test_fast_runtime_predicts_the_reference_maps_up_to_rounding(tiny_model):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    clicks = [(45, 60, True), (20, 30, False), (60, 90, True)]
    maps = {}
    for runtime in ("torch", "fast"):
        predictor = Predictor(tiny_model, device="cpu", flip=False, runtime=runtime)
        predictor.set_image(image)
        maps[runtime] = predictor.predict(clicks)
    # Rounding differences feed back through the previous mask click after click: close, not equal.
    np.testing.assert_allclose(maps["fast"], maps["torch"], atol=2e-3)
    assert np.count_nonzero((maps["fast"] > 0.49) != (maps["torch"] > 0.49)) <= 0.001 * image[..., 0].size
    # The reference runtime leaves the model as the reference: a later default predictor is not affected.
    reference = Predictor(tiny_model, device="cpu", flip=False)
    reference.set_image(image)
    assert np.array_equal(reference.predict(clicks), maps["torch"])


def test_gather_sampler_matches_grid_sample_inside_and_outside_the_levels():
    torch.manual_seed(0)
    shapes = [(5, 6), (10, 12), (20, 24)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 4, 8)
    locations = torch.rand(2, 50, 4, 3, 4, 2) * 1.4 - 0.2  # some neighbours, some whole points, off the map
    weights = torch.rand(2, 50, 4, 3, 4).softmax(-1)
    expected = ms_deform_attn_sample(value, shapes, locations, weights)
    torch.testing.assert_close(ms_deform_attn_gather(value, shapes, locations, weights), expected)


def test_separable_box_filter_is_the_clipped_window_mean():
    x = torch.rand(1, 3, 37, 53)
    expected = F.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False)
    torch.testing.assert_close(_box(x, 4), expected)


def _guided_on_the_whole_map(probs_low, guide_low, guide_full, radius, eps):
    """The guided filter evaluated at every full-resolution pixel (the arithmetic before the band window)."""
    box = lambda t: F.avg_pool2d(t, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)  # noqa: E731
    mean_i, mean_p = box(guide_low), box(probs_low)
    a = (box(guide_low * probs_low) - mean_i * mean_p) / (box(guide_low * guide_low) - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    size = tuple(guide_full.shape[-2:])
    coeffs = F.interpolate(torch.cat([box(a), box(b)], 1), size=size, mode="bilinear", align_corners=True)
    refined = (coeffs[:, :1] * guide_full + coeffs[:, 1:]).clamp(0, 1)
    undecided = ((probs_low > 0.01) & (probs_low < 0.99)).float()
    band_low = F.max_pool2d(undecided, 2 * radius + 1, stride=1, padding=radius) > 0
    rows = torch.arange(size[0]) * probs_low.shape[-2] // size[0]
    cols = torch.arange(size[1]) * probs_low.shape[-1] // size[1]
    band = band_low[0, 0][rows][:, cols]
    coarse = F.interpolate(probs_low, size=size, mode="bilinear", align_corners=True)
    return torch.where(band, refined, coarse)


@pytest.mark.parametrize("full_size", [(300, 410), (97, 131)])
def test_guided_filter_in_the_band_window_equals_the_whole_map_evaluation(full_size):
    torch.manual_seed(1)
    low = (64, 80)
    rows, cols = torch.meshgrid(torch.arange(low[0]), torch.arange(low[1]), indexing="ij")
    probs_low = torch.sigmoid((18 - ((rows - 30.0) ** 2 + (cols - 44.0) ** 2).sqrt()) / 2)[None, None]
    guide_full = torch.rand(1, 1, *full_size)
    guide_low = F.interpolate(guide_full, size=low, mode="area")
    expected = _guided_on_the_whole_map(probs_low, guide_low, guide_full, 4, 1e-3)
    refined = guided_upsample(probs_low, guide_low, guide_full, 4, 1e-3)
    torch.testing.assert_close(refined, expected, atol=1e-4, rtol=0)  # sums in another order
    assert not torch.equal(refined, F.interpolate(probs_low, size=full_size, mode="bilinear", align_corners=True))


def test_place_on_zeros_keeps_the_patch_and_zeroes_the_rest():
    patch = torch.rand(1, 1, 4, 5)
    canvas = place_on_zeros(patch, (2, 5, 3, 7), (9, 11))
    expected = torch.zeros(1, 1, 9, 11)
    expected[..., 2:6, 3:8] = patch
    assert torch.equal(canvas, expected)
