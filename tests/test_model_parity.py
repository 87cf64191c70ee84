"""Parity of the network with the reference implementation, on the golden outputs."""

import json

import pytest
import torch

from model.build import CONFIGS, build_model
from model.modeling.click_encoding import click_disk_maps

CASES = ["a_one_click", "b_two_pos_one_neg", "c_batch2", "d_border_corners", "e_672_davis"]


@pytest.fixture(scope="module")
def forward_cases(golden_dir):
    return torch.load(golden_dir / "tiny_forward.pt", weights_only=True)


@pytest.fixture(scope="module")
def captured_forward(tiny_model, forward_cases):
    """Run every case once, capturing the tokens and pixel-decoder outputs on the way."""
    results = {}
    captured = {}
    hooks = [
        tiny_model.backbone.register_forward_hook(lambda m, i, o: captured.__setitem__("tokens", o)),
        tiny_model.pixel_decoder.register_forward_hook(lambda m, i, o: captured.__setitem__("pixel", o)),
    ]
    try:
        for name in CASES:
            case = forward_cases[name]
            image = case["inputs"]["image"].float()
            tiny_model.set_image_size(tuple(image.shape[-2:]))
            with torch.no_grad():
                outputs = tiny_model(image, case["inputs"]["points"])
            results[name] = (outputs, dict(captured), tiny_model.backbone.position_embedding().detach().clone())
    finally:
        for hook in hooks:
            hook.remove()
        tiny_model.set_image_size((448, 448))
    return results


def test_tiny_checkpoint_config_is_inferred_from_tensors(tiny_model):
    assert tiny_model.config == CONFIGS["tiny"]
    assert tiny_model.backbone.global_attn_indexes == (5, 11)


@pytest.mark.parametrize("name", CASES)
def test_forward_outputs_match_reference(name, forward_cases, captured_forward):
    expected = forward_cases[name]["outputs"]
    outputs, _, _ = captured_forward[name]
    torch.testing.assert_close(outputs["pred_logits"], expected["pred_logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs["pred_masks"], expected["pred_masks"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(outputs["instances"], expected["instances"], rtol=1e-4, atol=5e-3)
    assert torch.equal(outputs["instances"] > 0, expected["instances"] > 0), "mask-sign flips in instances"
    assert len(outputs["aux_outputs"]) == 9


@pytest.mark.parametrize("name", CASES)
def test_intermediates_match_reference(name, forward_cases, captured_forward):
    case = forward_cases[name]
    inter = case["intermediates"]
    _, captured, pos_embed = captured_forward[name]
    image = case["inputs"]["image"]

    disks = click_disk_maps(case["inputs"]["points"], image.shape[-2], image.shape[-1])
    assert list(disks.shape) == [image.shape[0], 2, *image.shape[-2:]]
    assert torch.equal(torch.nonzero(disks).int(), inter["coord_disk_pixels"])

    torch.testing.assert_close(captured["tokens"], inter["backbone_tokens"].float(), rtol=2e-3, atol=5e-3)
    mask_features, multi_scale = captured["pixel"]
    assert list(mask_features.shape) == list(inter["mask_features_shape"])
    torch.testing.assert_close(mask_features[:, :4], inter["mask_features"].float(), rtol=2e-3, atol=5e-3)
    for ours, theirs, shape in zip(multi_scale, inter["multi_scale_features"], inter["multi_scale_features_shapes"]):
        assert list(ours.shape) == list(shape)
        torch.testing.assert_close(ours[:, :4], theirs.float(), rtol=2e-3, atol=5e-3)
    if "pos_embed_interpolated" in inter:
        torch.testing.assert_close(pos_embed, inter["pos_embed_interpolated"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config_name, key_file", [("vit_b_448", "vit_b_keys.json"), ("vit_h_448", "vit_h_keys.json")])
def test_state_dict_names_and_shapes_match_released_models(config_name, key_file, golden_dir):
    expected = json.loads((golden_dir / key_file).read_text())
    with torch.device("meta"):
        model = build_model(config_name)
    state = model.state_dict()
    ours = {name: list(t.shape) for name, t in state.items()}
    theirs = {entry["name"]: entry["shape"] for entry in expected["keys"]}
    assert sorted(set(ours) - set(theirs)) == [] and sorted(set(theirs) - set(ours)) == []
    assert ours == theirs
    assert len(state) == expected["num_state_dict_entries"]
    assert sum(p.numel() for p in model.parameters()) == expected["num_parameters"]
    for first, second in expected["aliases"]:
        assert state[first] is state[second] or state[first].data_ptr() == state[second].data_ptr()
