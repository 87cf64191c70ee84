"""Parity of the training criterion with the reference (golden ``criterion_case.pt``)."""

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from model.training.criterion import (
    build_criterion,
    build_targets,
    downsample_gt,
    total_loss,
    weighted_losses,
)

from prerequisites import missing

# Tolerances recommended by the golden README.
SYNTHETIC_LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
SYNTHETIC_GRAD_TOL = dict(rtol=1e-4, atol=1e-6)
MODEL_LOSS_TOL = dict(rtol=1e-4, atol=1e-5)
PRED_LOGITS_TOL = dict(rtol=1e-4, atol=1e-4)

SYNTHETIC_CASES = ["ellipse_and_grid_aligned_box", "ellipse_and_empty"]
NUM_AUX_LAYERS = 9


@pytest.fixture(scope="module")
def golden_dir(shared_dir: Path) -> Path:
    path = shared_dir / "golden"
    if not (path / "criterion_case.pt").is_file():
        missing(f"golden file {path / 'criterion_case.pt'} not found")
    return path


@pytest.fixture(scope="module")
def criterion_case(golden_dir: Path) -> dict:
    return torch.load(golden_dir / "criterion_case.pt", weights_only=True)


def _synthetic_case(criterion_case: dict, name: str) -> dict:
    return next(case for case in criterion_case["synthetic_cases"] if case["name"] == name)


def _layered_outputs(pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> dict:
    """Golden layer stacks (index 0..8 aux, 9 final) -> the network's output dict."""
    return {
        "pred_logits": pred_logits[-1],
        "pred_masks": pred_masks[-1],
        "aux_outputs": [{"pred_logits": pred_logits[i], "pred_masks": pred_masks[i]} for i in range(NUM_AUX_LAYERS)],
    }


def _assert_targets_equal(targets: list[dict], expected: list[dict]) -> None:
    assert len(targets) == len(expected)
    for target, golden in zip(targets, expected):
        assert torch.equal(target["labels"], golden["labels"])
        assert torch.equal(target["masks"], golden["masks"])


def _assert_indices_equal(indices: list[tuple], expected: list[tuple]) -> None:
    assert len(indices) == len(expected)
    for (query_idx, target_idx), (golden_query_idx, golden_target_idx) in zip(indices, expected):
        assert torch.equal(query_idx, golden_query_idx)
        assert torch.equal(target_idx, golden_target_idx)


def _assert_losses_close(losses: dict, case: dict, criterion, tol: dict) -> None:
    assert criterion.weight_dict == case["weight_dict"]
    assert list(losses) == list(case["losses_unweighted"])
    for name, value in case["losses_unweighted"].items():
        assert_close(losses[name], torch.tensor(value), **tol, msg=lambda m, n=name: f"{n}: {m}")
    for name, value in weighted_losses(losses, criterion.weight_dict).items():
        assert_close(value, torch.tensor(case["losses_weighted"][name]), **tol, msg=lambda m, n=name: f"{n}: {m}")


def test_golden_cases_are_all_covered(criterion_case: dict) -> None:
    assert [case["name"] for case in criterion_case["synthetic_cases"]] == SYNTHETIC_CASES


@pytest.mark.parametrize("case_name", SYNTHETIC_CASES)
def test_synthetic_targets(criterion_case: dict, case_name: str) -> None:
    case = _synthetic_case(criterion_case, case_name)
    mask_target = downsample_gt(case["gt_mask"], case["predictions"]["pred_masks"].shape[-2:])
    assert torch.equal(mask_target, case["mask_target"])

    targets = build_targets(mask_target)
    _assert_targets_equal(targets, case["targets"])
    assert max(sum(len(t["labels"]) for t in targets), 1) == case["num_masks"]


@pytest.mark.parametrize("case_name", SYNTHETIC_CASES)
def test_synthetic_matcher_indices(criterion_case: dict, case_name: str) -> None:
    case = _synthetic_case(criterion_case, case_name)
    outputs = _layered_outputs(case["predictions"]["pred_logits"], case["predictions"]["pred_masks"])
    targets = build_targets(case["mask_target"])
    matcher = build_criterion().matcher

    _assert_indices_equal(matcher(outputs, targets), case["matcher_indices"]["final"])
    for aux_outputs, expected in zip(outputs["aux_outputs"], case["matcher_indices"]["aux"], strict=True):
        _assert_indices_equal(matcher(aux_outputs, targets), expected)


@pytest.mark.parametrize("case_name", SYNTHETIC_CASES)
def test_synthetic_losses_and_gradients(criterion_case: dict, case_name: str) -> None:
    case = _synthetic_case(criterion_case, case_name)
    pred_logits = case["predictions"]["pred_logits"].clone().requires_grad_(True)
    pred_masks = case["predictions"]["pred_masks"].clone().requires_grad_(True)
    criterion = build_criterion()

    losses = criterion(_layered_outputs(pred_logits, pred_masks), case["mask_target"])
    loss = total_loss(losses, criterion.weight_dict)
    loss.backward()

    _assert_losses_close(losses, case, criterion, SYNTHETIC_LOSS_TOL)
    assert_close(loss, torch.tensor(case["loss"]), **SYNTHETIC_LOSS_TOL)
    assert_close(pred_logits.grad, case["grad_pred_logits"], **SYNTHETIC_GRAD_TOL)
    assert_close(pred_masks.grad, case["grad_pred_masks"], **SYNTHETIC_GRAD_TOL)


def test_total_loss_combines_weighted_group_sums(criterion_case: dict) -> None:
    case = _synthetic_case(criterion_case, SYNTHETIC_CASES[0])
    losses = {name: torch.tensor(value) for name, value in case["losses_unweighted"].items()}
    weighted = weighted_losses(losses, case["weight_dict"])
    for group, expected in case["group_sums_weighted"].items():
        group_sum = sum(v for k, v in weighted.items() if k == group or k.startswith(group + "_"))
        assert_close(group_sum, torch.tensor(expected), **SYNTHETIC_LOSS_TOL)
    assert_close(total_loss(losses, case["weight_dict"]), torch.tensor(case["loss"]), **SYNTHETIC_LOSS_TOL)


def test_model_case_targets(criterion_case: dict) -> None:
    case = criterion_case["model_case"]
    mask_target = downsample_gt(case["batch"]["instances"].float(), case["predictions"]["pred_masks_shape"][-2:])
    assert torch.equal(mask_target, case["mask_target"])

    targets = build_targets(mask_target)
    _assert_targets_equal(targets, case["targets"])
    assert [t["labels"].tolist() for t in targets] == [[0, 0, 0, 1]]
    assert sum(len(t["labels"]) for t in targets) == case["num_masks"] == 4


def test_model_case_through_network(criterion_case: dict, golden_dir: Path) -> None:
    """One reference training step on the tiny model: no extra clicks, zero prev mask."""
    from model.checkpoint import load_official_checkpoint

    case = criterion_case["model_case"]
    batch = case["batch"]
    net = load_official_checkpoint(golden_dir / "tiny_official.pth").train()
    criterion = build_criterion()

    image = batch["images"].float()
    image_4ch = torch.cat([image, torch.zeros_like(image[:, :1])], dim=1)
    out = net(image_4ch, batch["points"])
    assert_close(out["pred_logits"], case["predictions"]["pred_logits"], **PRED_LOGITS_TOL)
    aux_logits = torch.stack([aux["pred_logits"] for aux in out["aux_outputs"]])
    assert_close(aux_logits, case["predictions"]["aux_pred_logits"], **PRED_LOGITS_TOL)
    assert list(out["pred_masks"].shape) == case["predictions"]["pred_masks_shape"]

    mask_target = downsample_gt(batch["instances"].float(), out["pred_masks"].shape[-2:])
    assert torch.equal(mask_target, case["mask_target"])
    targets = build_targets(mask_target)
    _assert_indices_equal(criterion.matcher(out, targets), case["matcher_indices"]["final"])
    for aux_outputs, expected in zip(out["aux_outputs"], case["matcher_indices"]["aux"], strict=True):
        _assert_indices_equal(criterion.matcher(aux_outputs, targets), expected)

    losses = criterion(out, mask_target)
    loss = total_loss(losses, criterion.weight_dict)
    _assert_losses_close(losses, case, criterion, MODEL_LOSS_TOL)
    assert_close(loss, torch.tensor(case["loss"]), **MODEL_LOSS_TOL)

    loss.backward()
    params = dict(net.named_parameters())
    for name, expected in case["param_grads"].items():
        assert name in params, f"network has no parameter {name}"
        atol = 1e-3 * expected.abs().max().item()
        assert_close(params[name].grad, expected, rtol=1e-3, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
