"""Training loss of AdaptiveClick: Mask2Former set criterion with deep supervision.

Usage, as in the reference trainer::

    criterion = build_criterion()
    mask_target = downsample_gt(gt_masks, out["pred_masks"].shape[-2:])
    loss = total_loss(criterion(out, mask_target), criterion.weight_dict)
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import adaptive_focal_loss, dice_loss
from .matcher import HungarianMatcher

LOSS_GROUPS = {"loss_ce": 0.3, "loss_dice": 0.3, "loss_mask": 0.4}


def downsample_gt(gt_masks: Tensor, size: Sequence[int]) -> Tensor:
    """Resize (B, 1, H, W) ground truth to (B, h, w) with bilinear interpolation (align_corners=False).

    The result holds fractional values on object edges, which :func:`build_targets` relies on.
    The reference trainer passes ``(w, h)`` as the size; the two agree for the square inputs it uses.
    """
    resized = F.interpolate(gt_masks.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return resized.squeeze(1)


def build_targets(gt_masks: Tensor) -> list[dict[str, Tensor]]:
    """Turn downsampled ground truth (B, h, w) into per-image ``labels`` (T,) and ``masks`` (T, h, w).

    Reproduces the reference: the labels are ``unique(mask).long()[1:]``, so every distinct value
    after the smallest adds a target, truncated to an integer class. Label 0 selects the pixels whose
    truncated value is 0 (all pixels < 1), label 1 the pixels equal to 1. A bilinearly downsampled
    object with soft edges {0, .25, .5, .75, 1} thus yields labels [0, 0, 0, 1]; an empty mask yields
    no target.
    """
    targets = []
    for mask in gt_masks:
        labels = torch.unique(mask).long()[1:]
        masks = (mask.long()[None] == labels[:, None, None]).to(torch.float32)
        targets.append({"labels": labels, "masks": masks})
    return targets


def build_weight_dict(
    class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0, num_aux_layers: int = 9
) -> dict[str, float]:
    """Loss weights for the final layer (``loss_ce`` ...) and each auxiliary layer (``loss_ce_0`` ...)."""
    final = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    weights = dict(final)
    for i in range(num_aux_layers):
        weights.update({f"{name}_{i}": value for name, value in final.items()})
    return weights


def weighted_losses(losses: dict[str, Tensor], weight_dict: dict[str, float]) -> dict[str, Tensor]:
    """Multiply each loss by its weight; losses without a weight are dropped."""
    return {name: value * weight_dict[name] for name, value in losses.items() if name in weight_dict}


def total_loss(losses: dict[str, Tensor], weight_dict: dict[str, float]) -> Tensor:
    """``0.3 * sum(class) + 0.3 * sum(dice) + 0.4 * sum(mask)`` over the weighted losses of all layers."""
    group_sums = {group: 0.0 for group in LOSS_GROUPS}
    for name, value in weighted_losses(losses, weight_dict).items():
        group = _loss_group(name)
        group_sums[group] = group_sums[group] + value
    return sum(LOSS_GROUPS[group] * group_sums[group] for group in LOSS_GROUPS)


def _loss_group(name: str) -> str:
    """``loss_ce``, ``loss_dice`` or ``loss_mask`` for a final-layer or auxiliary loss name."""
    for group in LOSS_GROUPS:
        if name == group or name.startswith(group + "_"):
            return group
    raise KeyError(f"{name!r} belongs to none of the loss groups {list(LOSS_GROUPS)}")


class SetCriterion(nn.Module):
    """Hungarian-matched class, AFL and dice losses for the final and every auxiliary layer.

    Unmatched queries are supervised towards class 0. ``class_weights`` are the cross-entropy class
    weights; the reference uses ``[1.0, 0.1]``, i.e. the 0.1 "no-object" weight falls on class 1.
    """

    def __init__(
        self, matcher: HungarianMatcher, class_weights: Sequence[float] | Tensor, weight_dict: dict[str, float]
    ) -> None:
        super().__init__()
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float32), persistent=False)

    def loss_labels(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], indices: list[tuple[Tensor, Tensor]]
    ) -> Tensor:
        """Weighted cross-entropy over all queries; matched queries get their target's label."""
        logits = outputs["pred_logits"].float()
        target_classes = torch.zeros(logits.shape[:2], dtype=torch.int64, device=logits.device)
        batch_idx, query_idx = _query_index(indices)
        matched = [target["labels"][target_idx] for target, (_, target_idx) in zip(targets, indices)]
        target_classes[batch_idx, query_idx] = torch.cat(matched).to(logits.device)
        return F.cross_entropy(logits.transpose(1, 2), target_classes, self.class_weights)

    def loss_masks(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
        indices: list[tuple[Tensor, Tensor]],
        num_masks: float,
    ) -> dict[str, Tensor]:
        """AFL and dice between matched predicted masks and their targets."""
        pred_masks = outputs["pred_masks"][_query_index(indices)]
        target_masks = torch.cat([target["masks"][target_idx] for target, (_, target_idx) in zip(targets, indices)]).to(
            pred_masks
        )
        pred_masks = pred_masks.flatten(1)
        target_masks = target_masks.flatten(1)
        return {
            "loss_mask": adaptive_focal_loss(pred_masks, target_masks, num_masks),
            "loss_dice": dice_loss(pred_masks, target_masks, num_masks),
        }

    def layer_losses(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], num_masks: float
    ) -> dict[str, Tensor]:
        """Match one layer's predictions to the targets and return its unweighted losses."""
        indices = self.matcher(outputs, targets)
        losses = {"loss_ce": self.loss_labels(outputs, targets, indices)}
        losses.update(self.loss_masks(outputs, targets, indices, num_masks))
        return losses

    def forward(self, outputs: dict, mask_target: Tensor) -> dict[str, Tensor]:
        """Unweighted losses of the final layer (``loss_ce``, ...) and aux layer i (``loss_ce_i``, ...).

        Args:
            outputs: ``pred_logits`` (B, Q, C), ``pred_masks`` (B, Q, h, w) and optionally
                ``aux_outputs``, a list of dicts with the same two keys, first to last layer.
            mask_target: ground truth downsampled to (B, h, w), see :func:`downsample_gt`.
        """
        targets = build_targets(mask_target)
        num_masks = max(float(sum(len(target["labels"]) for target in targets)), 1.0)
        losses = self.layer_losses(outputs, targets, num_masks)
        for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self.layer_losses(aux_outputs, targets, num_masks)
            losses.update({f"{name}_{i}": value for name, value in aux_losses.items()})
        return losses


def build_criterion(
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    no_object_weight: float = 0.1,
    num_aux_layers: int = 9,
) -> SetCriterion:
    """The reference training criterion: matcher costs and loss weights 2 / 5 / 5, class weights [1, 0.1]."""
    matcher = HungarianMatcher(cost_class=class_weight, cost_mask=mask_weight, cost_dice=dice_weight)
    weight_dict = build_weight_dict(class_weight, mask_weight, dice_weight, num_aux_layers)
    return SetCriterion(matcher, [1.0, no_object_weight], weight_dict)


def _query_index(indices: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """(batch indices, query indices) of all matched queries, image by image."""
    batch_idx = torch.cat([torch.full_like(query_idx, b) for b, (query_idx, _) in enumerate(indices)])
    query_idx = torch.cat([query_idx for query_idx, _ in indices])
    return batch_idx, query_idx
