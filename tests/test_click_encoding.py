"""The windowed click-disk rasteriser equals the full-image computation pixel for pixel."""

import pytest
import torch

from model.modeling.click_encoding import click_disk_maps


def full_image_disks(points: torch.Tensor, height: int, width: int, radius: float) -> torch.Tensor:
    """Oracle: the reference's formulation, every click against every pixel."""
    batch, num_rows, _ = points.shape
    coords = points[..., :2].reshape(batch * num_rows, 2)
    padding = coords.max(dim=1).values < 0
    d_row = (torch.arange(height, dtype=torch.float32)[None, :] - coords[:, :1]).float() ** 2
    d_col = (torch.arange(width, dtype=torch.float32)[None, :] - coords[:, 1:]).float() ** 2
    inside = ((d_row[:, :, None] + d_col[:, None, :]) <= radius**2) & ~padding[:, None, None]
    return inside.view(batch, 2, num_rows // 2, height, width).any(dim=2).float()


@pytest.mark.parametrize("radius", [5.0, 2.5, 1.0])
def test_windowed_disks_equal_the_full_computation(radius):
    generator = torch.Generator().manual_seed(int(radius * 10))
    for trial in range(40):
        per_kind = int(torch.randint(1, 5, (1,), generator=generator))
        height, width = (int(v) for v in torch.randint(12, 50, (2,), generator=generator))
        # float64 clicks as after zoom-in, some beyond the borders (their disks are clipped), some padding
        scale = torch.tensor([height + 16, width + 16, 1.0], dtype=torch.float64)
        points = torch.rand(2, 2 * per_kind, 3, generator=generator, dtype=torch.float64) * scale - 8
        if trial % 3 == 0:
            points[..., :2] = points[..., :2].round()  # integer clicks: distances exactly on the radius
        if trial % 4 == 0:
            points[..., :2] = points[..., :2].round() + 0.5
        points[torch.rand(2, 2 * per_kind, generator=generator) < 0.3] = -1.0
        expected = full_image_disks(points, height, width, radius)
        assert torch.equal(click_disk_maps(points, height, width, radius), expected), f"trial {trial}"


def test_positive_and_negative_disks_land_in_their_channels():
    points = torch.tensor([[[10.0, 10.0, 0.0], [-1.0, -1.0, -1.0], [30.0, 5.0, 1.0], [-1.0, -1.0, -1.0]]])
    maps = click_disk_maps(points, 40, 40, radius=2.0)
    assert maps.shape == (1, 2, 40, 40)
    assert maps[0, 0, 10, 10] == 1 and maps[0, 0, 10, 12] == 1 and maps[0, 0, 10, 13] == 0
    assert maps[0, 1, 30, 5] == 1 and maps[0, 1, 10, 10] == 0 and maps[0, 0, 30, 5] == 0
    assert maps[0, 0].sum() == 13 and maps[0, 1].sum() == 13  # lattice points within distance 2
