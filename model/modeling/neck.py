"""SimpleFPN: a multi-scale pyramid (strides 4/8/16/32) from the single-scale ViT map (stride 16)."""

from __future__ import annotations

import torch
from torch import nn


class SimpleFPN(nn.Module):
    """Deconvolutions up to strides 4 and 8, a 1x1 conv at 16, a strided conv down to 32.

    Every branch ends with GroupNorm(1, C) and GELU as in SimpleClick; the inner widths follow the
    reference rule so released weights load.
    """

    def __init__(self, in_dim: int, out_dims: tuple[int, int, int, int]) -> None:
        super().__init__()
        mid_4 = max(out_dims[0] * 2, in_dim // 2)
        self.down_4 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, mid_4, 2, stride=2),
            nn.GroupNorm(1, mid_4),
            nn.GELU(),
            nn.ConvTranspose2d(mid_4, mid_4 // 2, 2, stride=2),
            nn.GroupNorm(1, mid_4 // 2),
            nn.Conv2d(mid_4 // 2, out_dims[0], 1),
            nn.GroupNorm(1, out_dims[0]),
            nn.GELU(),
        )
        mid_8 = max(out_dims[1], in_dim // 2)
        self.down_8 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, mid_8, 2, stride=2),
            nn.GroupNorm(1, mid_8),
            nn.Conv2d(mid_8, out_dims[1], 1),
            nn.GroupNorm(1, out_dims[1]),
            nn.GELU(),
        )
        self.down_16 = nn.Sequential(
            nn.Conv2d(in_dim, out_dims[2], 1),
            nn.GroupNorm(1, out_dims[2]),
            nn.GELU(),
        )
        mid_32 = max(out_dims[3], in_dim * 2)
        self.down_32 = nn.Sequential(
            nn.Conv2d(in_dim, mid_32, 2, stride=2),
            nn.GroupNorm(1, mid_32),
            nn.Conv2d(mid_32, out_dims[3], 1),
            nn.GroupNorm(1, out_dims[3]),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, h, w) -> [stride 4, stride 8, stride 16, stride 32] feature maps."""
        return [self.down_4(x), self.down_8(x), self.down_16(x), self.down_32(x)]
