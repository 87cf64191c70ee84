"""Normalised sine position encoding (DETR / Mask2Former)."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """2-D sine/cosine encoding of normalised pixel positions; (B, C, H, W) -> (B, 2*num_feats, H, W)."""

    def __init__(self, num_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature
        self.scale = scale
        # The encoding depends only on the map's size: computed once per (height, width, device), not per forward
        # (at 320 px it was a sixth of the pixel decoder's small operations).
        self._cache: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        key = (height, width, x.device)
        if key not in self._cache:
            with torch.inference_mode(False):  # a normal tensor, usable by training steps too
                self._cache[key] = self._encode(height, width, x.device)
        return self._cache[key].expand(batch, -1, -1, -1)

    def _encode(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        ones = torch.ones(1, height, width, device=device, dtype=torch.float32)
        y_embed = ones.cumsum(1)
        x_embed = ones.cumsum(2)
        y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * self.scale

        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_feats)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
