"""Mask losses of AdaptiveClick, including the Adaptive Focal Loss (AFL).

The functional losses take ``logits`` and ``targets`` of shape (num_masks, num_pixels) and return
``sum over masks of (mean over pixels) / num_masks``, with the same arithmetic as the reference
implementation, so values and gradients match it to float32 rounding.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _probability_of_truth(logits: Tensor, targets: Tensor) -> Tensor:
    """``p_t``: the sigmoid probability given to the target."""
    prob = logits.sigmoid()
    return prob * targets + (1 - prob) * (1 - targets)


def _class_balance(targets: Tensor, weight: float) -> Tensor:
    """``weight`` on positive pixels and ``1 - weight`` on negative ones."""
    return weight * targets + (1 - weight) * (1 - targets)


def adaptive_focal_loss(
    logits: Tensor,
    targets: Tensor,
    num_masks: float,
    epsilon: float = 0.5,
    gamma: float = 2.0,
    delta: float = 0.4,
    alpha: float = 1.0,
    eps: float = 1e-12,
    *,
    adaptive: bool = True,
) -> Tensor:
    """Adaptive Focal Loss (AFL) of AdaptiveClick, one mask per row.

    Per mask: ``gamma' = gamma + 1 - mean(p_t over positive pixels)`` and
    ``m = N / ((1 + delta * gamma') * sum((1 - p_t)^gamma') + eps)``, both without gradient. The pixel
    loss ``m * CE * (1 - p_t)^gamma' + alpha * (1 - p_t)^(gamma' + 1)`` is weighted by ``epsilon`` on
    positives and ``1 - epsilon`` on negatives (no weighting when ``epsilon < 0``).

    ``adaptive=False`` keeps ``gamma' = gamma`` and ``m = 1``: with ``alpha=0`` the loss is then the
    focal loss (class weight ``epsilon``), and with ``gamma=0`` as well it is binary cross-entropy.
    """
    p_t = _probability_of_truth(logits, targets)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")

    if adaptive:
        with torch.no_grad():
            positive = targets > 0.5
            positive_p_t = torch.where(positive, p_t, 0).sum(-1, keepdim=True)
            num_positive = positive.sum(-1, keepdim=True).to(p_t.dtype)
            gamma = gamma + (1 - positive_p_t / (num_positive + eps))
        beta = (1 - p_t) ** gamma
        with torch.no_grad():
            beta_sum = (1 + delta * gamma) * beta.sum(-1, keepdim=True) + eps
            mult = beta_sum.new_tensor(p_t.shape[-1]) / beta_sum
    else:
        beta = (1 - p_t) ** gamma
        mult = 1.0

    loss = mult * ce * beta + alpha * (1 - p_t) ** (gamma + 1)
    if epsilon >= 0:
        loss = _class_balance(targets, epsilon) * loss
    return loss.mean(1).sum() / num_masks


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, num_masks: float, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Focal loss (RetinaNet); ``alpha < 0`` disables the class weighting."""
    p_t = _probability_of_truth(logits, targets)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = _class_balance(targets, alpha) * loss
    return loss.mean(1).sum() / num_masks


def normalized_focal_loss(
    logits: Tensor, targets: Tensor, num_masks: float, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Focal loss rescaled per mask so the modulating factors sum to the pixel count."""
    p_t = _probability_of_truth(logits, targets)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    beta = (1 - p_t) ** gamma
    with torch.no_grad():
        beta_sum = beta.sum(-1, keepdim=True) + 1e-12
        mult = beta_sum.new_tensor(p_t.shape[-1]) / beta_sum
    loss = mult * ce * beta
    if alpha >= 0:
        loss = _class_balance(targets, alpha) * loss
    return loss.mean(1).sum() / num_masks


def sigmoid_ce_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Binary cross-entropy on logits."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Soft dice loss ``1 - (2 |p t| + 1) / (|p| + |t| + 1)`` on sigmoid probabilities."""
    prob = logits.sigmoid().flatten(1)
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


class AdaptiveFocalLossSigmoid(nn.Module):
    """Per-image AFL on (B, ..., H, W) maps, as in the reference ``isegm/model/losses.py``.

    This formulation differs from :func:`adaptive_focal_loss`: ``p_t = 1 - |label - p|``, the
    cross-entropy is ``-log(min(p_t + eps, 1))``, there is no epsilon class weighting, ``gamma'`` and
    the normalisation are taken over the last two dimensions, and pixels equal to ``ignore_label``
    are excluded. Returns one loss per image along ``batch_axis``.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float = 1.0,
        delta: float = 0.4,
        max_mult: float = -1.0,
        eps: float = 1e-12,
        from_sigmoid: bool = False,
        detach_delimiter: bool = True,
        batch_axis: int = 0,
        weight: float | None = None,
        size_average: bool = True,
        ignore_label: int = -1,
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha
        self.delta = delta
        self.max_mult = max_mult
        self.eps = eps
        self.from_sigmoid = from_sigmoid
        self.detach_delimiter = detach_delimiter
        self.batch_axis = batch_axis
        self.weight = 1.0 if weight is None else weight
        self.size_average = size_average
        self.ignore_label = ignore_label

    def forward(self, pred: Tensor, label: Tensor) -> Tensor:
        positive = label > 0.5
        valid = label != self.ignore_label
        prob = pred if self.from_sigmoid else torch.sigmoid(pred)

        p_t = torch.where(valid, 1.0 - torch.abs(label - prob), torch.ones_like(prob))
        positive_p_t = torch.where(positive, p_t, 0).sum(dim=(-2, -1), keepdim=True)
        num_positive = positive.sum(dim=(-2, -1), keepdim=True)
        gamma = self.gamma + (1 - positive_p_t / (num_positive + self.eps))
        if self.detach_delimiter:
            gamma = gamma.detach()

        beta = (1 - p_t) ** gamma
        num_valid = valid.sum(dim=(-2, -1), keepdim=True)
        beta_sum = (1 + self.delta * gamma) * beta.sum(dim=(-2, -1), keepdim=True)
        mult = num_valid / (beta_sum + self.eps)
        if self.detach_delimiter:
            mult = mult.detach()
        if self.max_mult > 0:
            beta = torch.clamp_max(beta, self.max_mult)

        log_p_t = torch.log(torch.minimum(p_t + self.eps, p_t.new_ones(())))
        loss = -mult * beta * log_p_t + self.alpha * (1 - p_t) ** (gamma + 1)
        loss = self.weight * (loss * valid)

        reduce_dims = [d for d in range(loss.dim()) if d != self.batch_axis % loss.dim()]
        loss = loss.sum(dim=reduce_dims)
        if self.size_average:
            loss = loss / (valid.sum(dim=reduce_dims) + self.eps)
        return loss
