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
    if torch.is_grad_enabled() and any(t.requires_grad for t in (value, sampling_locations, attention_weights)):
        # Training: weight and sum level by level, without the stacked copy; forward + backward ~1.6x
        # faster on the CPU, equal to the reference's form below up to the order of the sum.
        per_level = weights.view(batch * heads, 1, queries, levels, points).movedim(3, 0).contiguous()
        out = sum((sample * weight).sum(-1) for sample, weight in zip(samples, per_level))
    else:
        out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(batch, heads * head_dim, queries).transpose(1, 2).contiguous()


def ms_deform_attn_gather(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Same result as :func:`ms_deform_attn_sample` up to float rounding, for inference on the CPU.

    The bilinear corner weights (zeros padding folded in) are multiplied into the attention
    weights, and one ``embedding_bag`` gathers and sums the 4 * levels * points value rows of every
    (query, head) without materialising the samples: ~5x faster than ``grid_sample`` + stack +
    weighted sum for ViT-B at 448 px. Its gradient with respect to the locations differs from
    ``grid_sample``'s, so training uses the other.
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    # Each level with a one-pixel zero border: a neighbour outside the level reads a zero row, so no validity masks
    # are needed (the sums are the same: zero weight x value there before, weight x zero now).
    padded, starts = [], []
    for level_value, (height, width) in zip(value.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes):
        starts.append(sum(p.shape[1] for p in padded))
        level_value = level_value.reshape(batch, height, width, heads * head_dim)
        padded.append(F.pad(level_value, (0, 0, 1, 1, 1, 1)).flatten(1, 2))
    value = torch.cat(padded, 1)
    total = value.shape[1]
    # Row arithmetic in floats (exact below 2**24 rows), converted to integers once at the end (int32 then: the
    # float -> int64 conversion alone cost a third of this function).
    index_dtype = torch.float32 if batch * total * heads < 2**24 else torch.float64
    # Bags of (level, point, corner) per (b, q, head), written in place level by level.
    rows = torch.empty((batch, queries, heads, levels, points, 4), dtype=index_dtype, device=value.device)
    weights = torch.empty(
        (batch, queries, heads, levels, points, 4), dtype=attention_weights.dtype, device=value.device
    )
    for level, (height, width) in enumerate(spatial_shapes):
        # Level by level, so that each level's size is a scalar: scalar operands keep the elementwise kernels
        # vectorised (broadcast per level over the innermost 4 points, they cost more than the gather).
        x = sampling_locations[:, :, :, level, :, 0].to(index_dtype) * width - 0.5  # grid_sample's pixel coordinates
        y = sampling_locations[:, :, :, level, :, 1].to(index_dtype) * height - 0.5
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        # Padded coordinates: -1 and the size are the zero border; anything further out reads the border too.
        col0, col1 = x0.clamp(-1, width) + 1, (x0 + 1).clamp(-1, width) + 1
        row0 = starts[level] + (y0.clamp(-1, height) + 1) * (width + 2)
        row1 = starts[level] + ((y0 + 1).clamp(-1, height) + 1) * (width + 2)
        attention = attention_weights[:, :, :, level]
        weight_y0, weight_y1, weight_x0 = (1 - fy) * attention, fy * attention, 1 - fx
        level_rows, level_weights = rows[:, :, :, level], weights[:, :, :, level]
        for corner, (row, col, weight_y, weight_x) in enumerate(
            [(row0, col0, weight_y0, weight_x0), (row0, col1, weight_y0, fx), (row1, col0, weight_y1, weight_x0)]
            + [(row1, col1, weight_y1, fx)]
        ):
            torch.add(row, col, out=level_rows[..., corner])
            torch.mul(weight_y, weight_x, out=level_weights[..., corner])
    # Row of value.reshape(-1, head_dim) = (b * total + position) * heads + h.
    bag = levels * points * 4
    offset = torch.arange(batch, dtype=index_dtype, device=value.device).view(batch, 1, 1, 1, 1, 1) * (total * heads)
    offset = offset + torch.arange(heads, dtype=index_dtype, device=value.device).view(1, 1, heads, 1, 1, 1)
    rows.mul_(heads).add_(offset)
    out = F.embedding_bag(
        rows.view(-1, bag).to(torch.int32 if index_dtype == torch.float32 else torch.int64),
        value.reshape(-1, head_dim),
        per_sample_weights=weights.view(-1, bag).to(value.dtype),
        mode="sum",
    )
    return out.view(batch, queries, heads * head_dim)


SAMPLERS = ("grid_sample", "gather", "auto")


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
        # "grid_sample": the reference's arithmetic (training, parity); "gather": the embedding_bag
        # kernel (inference only); "auto": gather for no-grad reduced-precision (autocast) runs on the
        # CPU, where the fp32 sampling dominates, grid_sample otherwise.
        self.sampler = "auto"
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
        device_type = query.device.type
        sampler = self.sampler
        if sampler == "auto":
            reduced = device_type == "cpu" and torch.is_autocast_enabled(device_type)
            sampler = "gather" if reduced and not torch.is_grad_enabled() else "grid_sample"
        elif sampler == "gather" and torch.is_grad_enabled() and query.requires_grad:
            raise RuntimeError("the 'gather' deformable sampler is for inference; train with 'grid_sample'")
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward_fp32(
                query.float(), reference_points.float(), value_input.float(), spatial_shapes, sampler
            )

    def _forward_fp32(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        sampler: str,
    ) -> torch.Tensor:
        batch, num_queries, _ = query.shape
        value = self.value_proj(value_input).view(batch, value_input.shape[1], self.n_heads, -1)
        offsets = self.sampling_offsets(query).view(batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, self.n_heads, -1).softmax(-1)
        weights = weights.view(batch, num_queries, self.n_heads, self.n_levels, self.n_points)
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        sample = ms_deform_attn_gather if sampler == "gather" else ms_deform_attn_sample
        return self.output_proj(sample(value, spatial_shapes, locations, weights))


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
        self._reference_points: dict[tuple, torch.Tensor] = {}  # they depend only on the levels' sizes

    def reference_points(self, spatial_shapes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
        """Pixel centres of every level, normalised to [0, 1]: (1, S, levels, 2) as (x, y)."""
        key = (tuple(spatial_shapes), device)
        if key not in self._reference_points:
            with torch.inference_mode(False):  # a normal tensor, usable by training steps too
                self._reference_points[key] = self._centres(spatial_shapes, device)
        return self._reference_points[key]

    @staticmethod
    def _centres(spatial_shapes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
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
