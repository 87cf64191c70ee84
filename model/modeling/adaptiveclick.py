"""AdaptiveClick: click-aware plain-ViT backbone, pixel decoder and CAMD, summed over queries."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .camd import ClickAwareMaskDecoder
from .click_encoding import click_disk_maps
from .ms_deform_attn import SAMPLERS, MSDeformAttn
from .pixel_decoder import PixelDecoder
from .vit import ClickViT, PatchEmbed, ReferenceAttention

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CriterionState(nn.Module):
    """Holds the class weights ``[1, no_object_weight]`` of the training criterion as a buffer,
    as the reference model does, so released checkpoints load with a strict key check."""

    def __init__(self, no_object_weight: float = 0.1) -> None:
        super().__init__()
        self.register_buffer("empty_weight", torch.tensor([1.0, no_object_weight]))


class AdaptiveClick(nn.Module):
    """Interactive segmentation network.

    ``forward(image, points)`` takes ``image`` (B, 4, H, W): RGB in [0, 1] plus the previous-mask
    probability, and ``points`` (B, 2N, 3): N positive then N negative clicks as (row, col, index),
    padded with -1. It returns a dict with ``instances`` (B, 1, H, W) logits (the product's output:
    ``sigmoid`` gives the probability map), ``pred_logits`` (B, Q, 2), ``pred_masks`` (B, Q, H/4, W/4)
    and ``aux_outputs`` (the earlier decoder layers, for deep supervision).
    """

    def __init__(
        self,
        backbone: ClickViT,
        pixel_decoder: PixelDecoder,
        click_aware_decoder: ClickAwareMaskDecoder,
        click_radius: float = 5.0,
        no_object_weight: float = 0.1,
    ) -> None:
        super().__init__()
        embed_dim = backbone.pos_embed.shape[-1]
        self.click_radius = click_radius
        self.patch_embed_coords = PatchEmbed(backbone.patch_size, 3, embed_dim)
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.click_aware_decoder = click_aware_decoder
        self.criterion = CriterionState(no_object_weight)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # The file the weights were loaded from (model.checkpoint sets it): exported runtimes are cached beside it.
        self.checkpoint_path: Path | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        """Input size the network currently expects (see :meth:`set_image_size`)."""
        grid = self.backbone.grid_size
        return grid[0] * self.backbone.patch_size, grid[1] * self.backbone.patch_size

    @property
    def native_image_size(self) -> tuple[int, int]:
        """Input size the network was trained at."""
        grid = self.backbone.native_grid
        return grid[0] * self.backbone.patch_size, grid[1] * self.backbone.patch_size

    def set_image_size(self, size: tuple[int, int]) -> None:
        """Adapt to another input size by resizing the position embedding (e.g. 672 for DAVIS)."""
        patch = self.backbone.patch_size
        if size[0] % patch or size[1] % patch:
            raise ValueError(f"input size {size} is not a multiple of the patch size {patch}")
        self.backbone.set_grid_size((size[0] // patch, size[1] // patch))

    def set_deformable_sampler(self, sampler: str) -> None:
        """Pick the pixel decoder's deformable sampling kernel: ``"grid_sample"`` (the reference's
        arithmetic), ``"gather"`` (faster CPU inference, equal up to float rounding) or ``"auto"``
        (gather for no-grad autocast runs on the CPU; the default)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown deformable sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.sampler = sampler

    def set_fused_attention(self, fused: bool) -> None:
        """``True``: the backbone's attention always uses the fused kernel (faster on the CPU, equal up to float
        rounding); ``False``: the reference's arithmetic on the CPU in fp32 (the default)."""
        for module in self.modules():
            if isinstance(module, ReferenceAttention):
                module.fused = fused

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> dict:
        if image.ndim != 4 or image.shape[1] != 4:
            raise ValueError(f"image must be (B, 4, H, W) = RGB + previous mask, got {tuple(image.shape)}")
        if points.ndim != 3 or points.shape[-1] != 3 or points.shape[1] % 2:
            raise ValueError(f"points must be (B, 2N, 3), got {tuple(points.shape)}")
        height, width = image.shape[-2:]
        disks = click_disk_maps(points, height, width, self.click_radius).to(image.dtype)
        return self.forward_disks(image, disks)

    def forward_disks(self, image: torch.Tensor, disks: torch.Tensor) -> dict:
        """:meth:`forward` after the clicks are rasterised into ``disks`` (B, 2, H, W): the part with fixed shapes,
        which an exported graph (model.export_runtime) holds; the clicks' number varies per call."""
        height, width = image.shape[-2:]
        rgb = (image[:, :3] - self.pixel_mean) / self.pixel_std
        prev_mask = image[:, 3:]
        coord_features = torch.cat([prev_mask, disks], dim=1)
        tokens = self.backbone(rgb, self.patch_embed_coords(coord_features))
        mask_features, multi_scale = self.pixel_decoder(tokens, self.backbone.grid_size)
        # The decoder always runs in fp32: it costs ~1% of a forward, and its hard (sigmoid < 0.5)
        # attention masks turn bf16 rounding into visible mask changes.
        with torch.autocast(device_type=image.device.type, enabled=False):
            outputs = self.click_aware_decoder(
                [feature.float() for feature in multi_scale], mask_features.float(), disks[:, 0].float()
            )
        outputs["instances"] = sum_over_queries(outputs["pred_logits"], outputs["pred_masks"], (height, width))
        return outputs


def sum_over_queries(class_logits: torch.Tensor, mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsample the query masks (bilinear, align_corners=True) and sum them weighted by each query's
    object probability: (B, Q, 2), (B, Q, h, w) -> (B, 1, H, W) logits."""
    masks = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=True)
    return torch.einsum("bqc,bqhw->bchw", class_logits.sigmoid()[..., 1:], masks)
