"""Hungarian matching between predicted queries and ground-truth masks (Mask2Former style).

The batch cost functions take ``inputs`` logits (N, P) and ``targets`` (M, P) and return an (N, M)
cost matrix, with the reference implementation's arithmetic.
"""

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn


def _pairwise_sum(per_pixel: Tensor, weights: Tensor) -> Tensor:
    """``out[n, m] = sum_c per_pixel[n, c] * weights[m, c]``."""
    return torch.einsum("nc,mc->nm", per_pixel, weights)


def batch_dice_loss(inputs: Tensor, targets: Tensor) -> Tensor:
    """Dice cost ``1 - (2 |p t| + 1) / (|p| + |t| + 1)`` for every (prediction, target) pair."""
    prob = inputs.sigmoid().flatten(1)
    numerator = 2 * _pairwise_sum(prob, targets)
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_ce_loss(inputs: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy for every (prediction, target) pair."""
    ce_pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    ce_neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    loss = _pairwise_sum(ce_pos, targets) + _pairwise_sum(ce_neg, 1 - targets)
    return loss / inputs.shape[1]


def batch_sigmoid_focal_loss(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Mean focal loss for every (prediction, target) pair; ``alpha < 0`` disables weighting."""
    prob = inputs.sigmoid()
    ce_pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    ce_neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    focal_pos = ((1 - prob) ** gamma) * ce_pos
    focal_neg = (prob**gamma) * ce_neg
    if alpha >= 0:
        focal_pos = focal_pos * alpha
        focal_neg = focal_neg * (1 - alpha)
    loss = _pairwise_sum(focal_pos, targets) + _pairwise_sum(focal_neg, 1 - targets)
    return loss / inputs.shape[1]


def batch_sigmoid_adaptive_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    epsilon: float = 0.5,
    gamma: float = 2.0,
    delta: float = 0.4,
    alpha: float = 1.0,
    eps: float = 1e-12,
) -> Tensor:
    """The matcher's AFL-like cost for every (prediction, target) pair.

    This is not the AFL loss: ``p_t`` is averaged over pixels to one value per pair, ``gamma'`` uses
    the summed probability on the target, the normalisation runs over the targets of a prediction,
    and the last term is ``epsilon * alpha * ((1 - p_t)^gamma' + 1)``. ``epsilon`` must be in [0, 1].
    """
    num_pixels = inputs.shape[1]
    prob = inputs.sigmoid()
    p_t = (_pairwise_sum(prob, targets) + _pairwise_sum(1 - prob, 1 - targets)) / num_pixels
    with torch.no_grad():
        positive_prob = _pairwise_sum(prob, targets)
        num_positive = (targets > 0.5).sum(-1).to(prob.dtype)[None, :]
        gamma = gamma + (1 - positive_prob / (num_positive + eps))
        beta_sum = (1 + delta * gamma) * ((1 - p_t) ** gamma).sum(-1, keepdim=True) + eps
        mult = beta_sum.new_tensor(targets.shape[0]) / beta_sum

    ce_pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    ce_neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    ce = _pairwise_sum(ce_pos * epsilon, targets) + _pairwise_sum(ce_neg * (1 - epsilon), 1 - targets)
    modulation = (1 - p_t) ** gamma
    return mult * modulation * ce / num_pixels + epsilon * alpha * (modulation + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising a class + mask + dice cost.

    Cost = ``cost_mask * AFL-cost + cost_class * (-softmax prob of the target label) + cost_dice *
    dice-cost``, computed on all mask pixels.
    """

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("at least one matching cost must be non-zero")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice

    def cost_matrix(self, pred_logits: Tensor, pred_masks: Tensor, labels: Tensor, masks: Tensor) -> Tensor:
        """(Q, T) cost for one image: ``pred_logits`` (Q, C), ``pred_masks`` (Q, h, w), ``masks`` (T, h, w)."""
        class_prob = pred_logits.softmax(-1)
        cost_class = -class_prob[:, labels]
        pred_masks = pred_masks.flatten(1).float()
        masks = masks.to(pred_masks).flatten(1)
        cost_mask = batch_sigmoid_adaptive_focal_loss(pred_masks, masks)
        cost_dice = batch_dice_loss(pred_masks, masks)
        return self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """Match each image's queries to its targets.

        Args:
            outputs: ``pred_logits`` (B, Q, C) and ``pred_masks`` (B, Q, h, w).
            targets: per image, ``labels`` (T,) and ``masks`` (T, h, w); T may be 0.

        Returns:
            Per image, (query indices, target indices), int64, of length min(Q, T).
        """
        indices = []
        for b, target in enumerate(targets):
            cost = self.cost_matrix(
                outputs["pred_logits"][b], outputs["pred_masks"][b], target["labels"], target["masks"]
            )
            query_idx, target_idx = linear_sum_assignment(cost.cpu())
            indices.append(
                (torch.as_tensor(query_idx, dtype=torch.int64), torch.as_tensor(target_idx, dtype=torch.int64))
            )
        return indices
