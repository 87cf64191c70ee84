"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch, via ``grid_sample``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn_sample(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinearly sample each level at the given locations and mix the samples by attention weight.

    Args:
        value: (B, S, heads, head_dim) flattened multi-level values, levels in ``spatial_shapes`` order.
        spatial_shapes: (H, W) of each level.
        sampling_locations: (B, Q, heads, levels, points, 2) as (x, y) in [0, 1].
        attention_weights: (B, Q, heads, levels, points), already softmax-normalised.

    Returns:
        (B, Q, heads * head_dim).
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    samples = []
    for level, (height, width) in enumerate(spatial_shapes):
        level_value = values[level].flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, height, width)
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(
            F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(batch, heads * head_dim, queries).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Each query attends to ``n_points`` learned offsets around its reference point on every level."""

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        offsets = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        offsets *= torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(offsets.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """query (B, Q, C), reference_points (B, Q, levels, 2) in [0, 1], value_input (B, S, C) -> (B, Q, C).

        Always computed in float32, also under autocast: sampling locations need the precision.
        """
        with torch.autocast(device_type=query.device.type, enabled=False):
            return self._forward_fp32(query.float(), reference_points.float(), value_input.float(), spatial_shapes)

    def _forward_fp32(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        batch, num_queries, _ = query.shape
        value = self.value_proj(value_input).view(batch, value_input.shape[1], self.n_heads, -1)
        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        weights = self.attention_weights(query).view(batch, num_queries, self.n_heads, -1).softmax(-1)
        weights = weights.view(batch, num_queries, self.n_heads, self.n_levels, self.n_points)
        normalizer = torch.tensor(
            [[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device
        )
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn_sample(value, spatial_shapes, locations, weights))


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention over all levels, then a ReLU FFN."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int = 4) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DeformableEncoder(nn.Module):
    """Stack of deformable encoder layers over flattened multi-level features."""

    def __init__(self, layers: list[DeformableEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def reference_points(spatial_shapes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
        """Pixel centres of every level, normalised to [0, 1]: (1, S, levels, 2) as (x, y)."""
        points = []
        for height, width in spatial_shapes:
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=device),
                torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=device),
                indexing="ij",
            )
            points.append(torch.stack((ref_x.reshape(-1) / width, ref_y.reshape(-1) / height), -1))
        return torch.cat(points, 0)[None, :, None].expand(-1, -1, len(spatial_shapes), -1)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        reference_points = self.reference_points(spatial_shapes, src.device)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes)
        return src
