"""Click encoding: the disk maps that tell the network where the user clicked."""

from __future__ import annotations

import torch


def click_disk_maps(points: torch.Tensor, height: int, width: int, radius: float = 5.0) -> torch.Tensor:
    """Rasterise clicks into binary disk maps, one channel per click kind.

    Args:
        points: (B, 2N, 3) clicks as (row, col, index); rows ``0..N-1`` are positive, ``N..2N-1``
            negative; a row is padding when ``max(row, col) < 0``.
        height, width: size of the network input.
        radius: disk radius in pixels; a pixel is set when its squared distance to a click is
            ``<= radius**2``.

    Returns:
        (B, 2, H, W) float32: channel 0 = positive disks, channel 1 = negative disks.
    """
    batch, num_rows, _ = points.shape
    num_per_kind = num_rows // 2
    coords = points[..., :2].reshape(batch * num_rows, 2)
    is_padding = coords.max(dim=1).values < 0

    # The offset is taken in the clicks' dtype (float64 after zoom-in, as in the reference),
    # then squared and summed in float32.
    grid_rows = torch.arange(height, device=points.device, dtype=torch.float32)
    grid_cols = torch.arange(width, device=points.device, dtype=torch.float32)
    d_row = (grid_rows[None, :] - coords[:, :1]).float() ** 2
    d_col = (grid_cols[None, :] - coords[:, 1:]).float() ** 2
    inside = (d_row[:, :, None] + d_col[:, None, :]) <= radius**2
    inside &= ~is_padding[:, None, None]
    inside = inside.view(batch, 2, num_per_kind, height, width).any(dim=2)
    return inside.float()
