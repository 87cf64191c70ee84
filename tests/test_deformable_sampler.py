"""The two deformable-attention kernels: the reference's grid_sample and the faster embedding_bag gather."""

import pytest
import torch

from model.build import build_model
from model.modeling import ms_deform_attn
from model.modeling.ms_deform_attn import MSDeformAttn, ms_deform_attn_gather, ms_deform_attn_sample
from model.predictor import Predictor


def _inputs(batch: int, shapes: list[tuple[int, int]], queries: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in shapes)
    value = torch.randn(batch, total, 4, 8, generator=generator)
    # Locations up to 30% outside [0, 1]: corners beyond the border must read zeros, as grid_sample pads.
    locations = torch.rand(batch, queries, 4, len(shapes), 3, 2, generator=generator) * 1.6 - 0.3
    weights = torch.rand(batch, queries, 4, len(shapes), 3, generator=generator).softmax(-1)
    return value, locations, weights


@pytest.mark.parametrize("batch,shapes", [(1, [(12, 12), (6, 6), (3, 3)]), (3, [(7, 9), (4, 5), (2, 3)])])
def test_gather_equals_grid_sample(batch, shapes):
    value, locations, weights = _inputs(batch, shapes, queries=40)
    expected = ms_deform_attn_sample(value, shapes, locations, weights)
    result = ms_deform_attn_gather(value, shapes, locations, weights)
    assert result.shape == expected.shape
    torch.testing.assert_close(result, expected, atol=2e-6, rtol=1e-5)


def test_gather_reads_zeros_outside_every_level():
    shapes = [(4, 4), (2, 2)]
    value = torch.ones(1, 20, 1, 2)
    weights = torch.full((1, 3, 1, 2, 1), 0.5)
    locations = torch.tensor([-0.5, 1.5, 0.5]).view(1, 3, 1, 1, 1, 1).expand(1, 3, 1, 2, 1, 2).contiguous()
    result = ms_deform_attn_gather(value, shapes, locations, weights)
    assert result[0, :2].abs().max() == 0  # both points far outside: nothing sampled
    torch.testing.assert_close(result[0, 2], torch.ones(2))  # the centre of both levels: weight 0.5 + 0.5


def _record_kernels(monkeypatch) -> list[str]:
    used: list[str] = []
    for name in ("ms_deform_attn_sample", "ms_deform_attn_gather"):
        original = getattr(ms_deform_attn, name)

        def recording(*args, _original=original, _name=name):
            used.append(_name)
            return _original(*args)

        monkeypatch.setattr(ms_deform_attn, name, recording)
    return used


def test_auto_uses_gather_only_for_no_grad_autocast_on_cpu(monkeypatch):
    used = _record_kernels(monkeypatch)
    layer = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2)
    shapes = [(4, 4), (2, 2)]
    query, value = torch.randn(1, 20, 32), torch.randn(1, 20, 32)
    reference = torch.rand(1, 20, 2, 2)
    with torch.no_grad():
        layer(query, reference, value, shapes)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(query, reference, value, shapes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(query, reference, value, shapes)  # training under autocast keeps grid_sample's gradient
    assert used == ["ms_deform_attn_sample", "ms_deform_attn_gather", "ms_deform_attn_sample"]


def test_gather_refuses_to_train():
    layer = MSDeformAttn(d_model=32, n_levels=1, n_heads=4, n_points=2)
    layer.sampler = "gather"
    with pytest.raises(RuntimeError, match="for inference"):
        layer(torch.randn(1, 16, 32, requires_grad=True), torch.rand(1, 16, 1, 2), torch.randn(1, 16, 32), [(4, 4)])


def test_unknown_sampler_is_refused_by_name():
    model = build_model("tiny")
    with pytest.raises(ValueError, match="'bilinear'"):
        model.set_deformable_sampler("bilinear")
    with pytest.raises(ValueError, match="'bilinear'"):
        Predictor(model, device="cpu", sampler="bilinear")


def test_gather_forward_of_the_whole_network_matches():
    torch.manual_seed(0)
    tiny_model = build_model("tiny").eval()
    image = torch.rand(1, 4, 448, 448)
    points = torch.tensor([[[200.0, 150.0, 0.0], [-1.0, -1.0, -1.0]]])
    with torch.no_grad():
        tiny_model.set_deformable_sampler("grid_sample")
        expected = tiny_model(image, points)["pred_masks"]
        tiny_model.set_deformable_sampler("gather")
        result = tiny_model(image, points)["pred_masks"]
    torch.testing.assert_close(result, expected, atol=1e-4, rtol=1e-4)


def test_training_form_of_grid_sample_equals_the_reference_form():
    """Under autograd the levels are weighted and summed one by one; without it, stacked as the reference does."""
    shapes = [(8, 8), (4, 4), (2, 2)]
    value, locations, weights = _inputs(2, shapes, queries=30)
    with torch.no_grad():
        expected = ms_deform_attn_sample(value, shapes, locations, weights)
    trained = ms_deform_attn_sample(value.requires_grad_(True), shapes, locations, weights)
    torch.testing.assert_close(trained, expected, rtol=1e-5, atol=1e-6)
    trained.sum().backward()
    assert value.grad is not None and value.grad.abs().sum() > 0
