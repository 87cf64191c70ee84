"""Parity of the mask losses and matcher costs with the reference (golden ``afl_cases.pt``)."""

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from model.training.losses import (
    AdaptiveFocalLossSigmoid,
    adaptive_focal_loss,
    dice_loss,
    normalized_focal_loss,
    sigmoid_ce_loss,
    sigmoid_focal_loss,
)
from model.training.matcher import (
    HungarianMatcher,
    batch_dice_loss,
    batch_sigmoid_adaptive_focal_loss,
    batch_sigmoid_ce_loss,
    batch_sigmoid_focal_loss,
)

from prerequisites import missing

# Tolerances recommended by the golden README.
VALUE_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-7)
MODULE_VALUE_TOL = dict(rtol=1e-5, atol=1e-6)
MODULE_GRAD_TOL = dict(rtol=1e-4, atol=1e-5)

FUNCTIONAL_CASES = [
    "default_params",
    "default_params_num_masks_2",
    "nondefault_params",
    "epsilon_negative_no_poly",
    "gamma_zero",
    "extreme_logits",
    "soft_targets",
    "single_row_no_positive",
]
MODULE_CASES = [
    "binary_default",
    "soft_labels",
    "ignore_label",
    "nondefault_params",
    "no_size_average",
    "from_sigmoid_probabilities",
    "max_mult",
]
# golden key prefix -> (function, golden key of its keyword arguments)
FUNCTIONAL_LOSSES = {
    "afl": (adaptive_focal_loss, "afl_params"),
    "focal": (sigmoid_focal_loss, "focal_params"),
    "normalized_focal": (normalized_focal_loss, "normalized_focal_params"),
    "ce": (sigmoid_ce_loss, None),
    "dice": (dice_loss, None),
}
MATCHER_COSTS = {
    "batch_sigmoid_adaptive_focal_loss": batch_sigmoid_adaptive_focal_loss,
    "batch_dice_loss": batch_dice_loss,
    "batch_sigmoid_ce_loss": batch_sigmoid_ce_loss,
    "batch_sigmoid_focal_loss": batch_sigmoid_focal_loss,
}


@pytest.fixture(scope="module")
def afl_cases(shared_dir: Path) -> dict:
    path = shared_dir / "golden" / "afl_cases.pt"
    if not path.is_file():
        missing(f"golden file {path} not found")
    return torch.load(path, weights_only=True)


def _case(cases: list[dict], name: str) -> dict:
    return next(case for case in cases if case["name"] == name)


def _module_kwargs(params: dict) -> dict:
    """Reference constructor arguments -> ours (no unused ``axis``; spelling of detach_delimiter)."""
    kwargs = {key: value for key, value in params.items() if key not in ("axis", "detach_delimeter")}
    kwargs["detach_delimiter"] = params["detach_delimeter"]
    return kwargs


def test_golden_cases_are_all_covered(afl_cases: dict) -> None:
    assert [case["name"] for case in afl_cases["functional"]] == FUNCTIONAL_CASES
    assert [case["name"] for case in afl_cases["module"]] == MODULE_CASES


@pytest.mark.parametrize("loss_name", list(FUNCTIONAL_LOSSES))
@pytest.mark.parametrize("case_name", FUNCTIONAL_CASES)
def test_functional_loss_matches_reference(afl_cases: dict, case_name: str, loss_name: str) -> None:
    case = _case(afl_cases["functional"], case_name)
    loss_fn, params_key = FUNCTIONAL_LOSSES[loss_name]
    kwargs = case[params_key] if params_key else {}
    logits = case["logits"].clone().requires_grad_(True)

    loss = loss_fn(logits, case["targets"], case["num_masks"], **kwargs)
    loss.backward()

    assert_close(loss, case[f"{loss_name}_loss"], **VALUE_TOL)
    assert_close(logits.grad, case[f"{loss_name}_grad"], **GRAD_TOL)


@pytest.mark.parametrize("case_name", MODULE_CASES)
def test_module_afl_matches_reference(afl_cases: dict, case_name: str) -> None:
    case = _case(afl_cases["module"], case_name)
    criterion = AdaptiveFocalLossSigmoid(**_module_kwargs(case["params"]))
    pred = case["pred"].clone().requires_grad_(True)

    loss = criterion(pred, case["label"])
    loss.sum().backward()

    assert loss.shape == (pred.shape[0],)
    assert_close(loss, case["loss"], **MODULE_VALUE_TOL)
    assert_close(pred.grad, case["grad_of_sum"], **MODULE_GRAD_TOL)


@pytest.mark.parametrize("cost_name", list(MATCHER_COSTS))
def test_matcher_cost_matches_reference(afl_cases: dict, cost_name: str) -> None:
    costs = afl_cases["matcher_costs"]
    cost = MATCHER_COSTS[cost_name](costs["inputs"], costs["targets"])
    assert_close(cost, costs[cost_name], **VALUE_TOL)


def test_matcher_adaptive_cost_without_targets(afl_cases: dict) -> None:
    costs = afl_cases["matcher_costs"]
    no_targets = costs["targets"][:0]
    cost = batch_sigmoid_adaptive_focal_loss(costs["inputs"], no_targets)
    assert cost.shape == costs["batch_sigmoid_adaptive_focal_loss_no_targets"].shape == (10, 0)


def test_matcher_handles_image_without_targets() -> None:
    generator = torch.Generator().manual_seed(0)
    outputs = {
        "pred_logits": torch.randn(2, 10, 2, generator=generator),
        "pred_masks": torch.randn(2, 10, 8, 8, generator=generator),
    }
    masks = (torch.rand(3, 8, 8, generator=generator) > 0.5).float()
    targets = [
        {"labels": torch.tensor([0, 0, 1]), "masks": masks},
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)},
    ]

    (query_idx, target_idx), (empty_query_idx, empty_target_idx) = HungarianMatcher()(outputs, targets)

    assert sorted(target_idx.tolist()) == [0, 1, 2]
    assert len(set(query_idx.tolist())) == 3
    assert empty_query_idx.dtype == empty_target_idx.dtype == torch.int64
    assert empty_query_idx.numel() == empty_target_idx.numel() == 0


def _random_masks(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(5, 300, generator=generator)
    targets = (torch.rand(5, 300, generator=generator) < torch.linspace(0.05, 0.9, 5)[:, None]).float()
    return logits, targets


@pytest.mark.parametrize("epsilon", [0.25, 0.5, -1.0])
def test_afl_without_adaptive_terms_is_focal_loss(epsilon: float) -> None:
    logits, targets = _random_masks(1)
    afl_logits = logits.clone().requires_grad_(True)
    focal_logits = logits.clone().requires_grad_(True)

    afl = adaptive_focal_loss(afl_logits, targets, 3.0, epsilon=epsilon, gamma=2.0, alpha=0.0, adaptive=False)
    focal = sigmoid_focal_loss(focal_logits, targets, 3.0, alpha=epsilon, gamma=2.0)
    afl.backward()
    focal.backward()

    assert_close(afl, focal, **VALUE_TOL)
    assert_close(afl_logits.grad, focal_logits.grad, **GRAD_TOL)


def test_afl_without_adaptive_terms_and_gamma_zero_is_bce() -> None:
    logits, targets = _random_masks(2)
    afl_logits = logits.clone().requires_grad_(True)
    bce_logits = logits.clone().requires_grad_(True)

    afl = adaptive_focal_loss(afl_logits, targets, 3.0, epsilon=-1.0, gamma=0.0, alpha=0.0, adaptive=False)
    bce = sigmoid_ce_loss(bce_logits, targets, 3.0)
    afl.backward()
    bce.backward()

    assert_close(afl, bce, **VALUE_TOL)
    assert_close(afl_logits.grad, bce_logits.grad, **GRAD_TOL)


def test_afl_gamma_stays_at_base_when_positives_are_certain() -> None:
    """gamma' = gamma + 1 - mean(p_t on positives): with p_t = 1 there, only the normalisation remains."""
    logits, targets = _random_masks(3)
    logits = torch.where(targets > 0.5, torch.full_like(logits, 100.0), logits)

    afl = adaptive_focal_loss(logits, targets, 2.0, epsilon=-1.0, gamma=2.0, delta=0.0, alpha=0.0)
    normalized = normalized_focal_loss(logits, targets, 2.0, alpha=-1.0, gamma=2.0)

    assert_close(afl, normalized, **VALUE_TOL)
