"""Click encoding: the disk maps that tell the network where the user clicked."""

from __future__ import annotations

import math

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

    # Only pixels within ``radius`` rows and columns of a click can be inside its disk, so the sum is
    # formed on a small window around each click (the same float32 values the full H x W sum would
    # hold there) instead of on B x 2N x H x W pixels.
    reach = math.ceil(radius)
    window = torch.arange(-reach, reach + 2, device=points.device)
    finite = torch.nan_to_num(coords.float(), nan=-1.0).clamp(-2.0 * (reach + 1), float(max(height, width) + reach + 1))
    rows = finite[:, :1].floor().long() + window  # (P, w)
    cols = finite[:, 1:].floor().long() + window
    row_ok, col_ok = (rows >= 0) & (rows < height), (cols >= 0) & (cols < width)
    rows, cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)
    window_sum = d_row.gather(1, rows)[:, :, None] + d_col.gather(1, cols)[:, None, :]
    inside = (window_sum <= radius**2) & row_ok[:, :, None] & col_ok[:, None, :] & ~is_padding[:, None, None]

    channel = torch.arange(batch * num_rows, device=points.device) // num_per_kind  # = b * 2 + kind
    flat = (channel[:, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]
    maps = torch.zeros(batch * 2 * height * width, device=points.device)
    maps[flat[inside]] = 1.0
    return maps.view(batch, 2, height, width)
