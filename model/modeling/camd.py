"""Clicks-aware mask-adaptive decoder (CAMD): Mask2Former's masked-attention decoder whose
attention masks keep the positive-click regions open to the queries that predict the object."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .position_encoding import PositionEmbeddingSine


class CrossAttentionLayer(nn.Module):
    """Post-norm masked cross-attention from queries to one feature level."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, n_heads)
        self.norm = nn.LayerNorm(d_model)
        _xavier(self)

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        attn_mask: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        attended = self.multihead_attn(query + query_pos, memory + pos, memory, attn_mask=attn_mask)[0]
        return self.norm(query + attended)


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention between queries."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads)
        self.norm = nn.LayerNorm(d_model)
        _xavier(self)

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        q = k = query + query_pos
        return self.norm(query + self.self_attn(q, k, query)[0])


class FFNLayer(nn.Module):
    """Post-norm ReLU feed-forward block."""

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        _xavier(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    """Plain MLP with ReLU between layers."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def _xavier(module: nn.Module) -> None:
    for param in module.parameters():
        if param.dim() > 1:
            nn.init.xavier_uniform_(param)


def pooled_click_map(click_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Positive-click disks (B, H, W) brought to an attention resolution as the reference does:
    3x3/stride-2 max-pooling ``log2(W / w)`` times, then a bilinear resize. Returns (B, h*w)."""
    pooled = click_map[:, None]
    for _ in range(int(math.log(click_map.shape[-1] / size[-1], 2))):
        pooled = F.max_pool2d(pooled, kernel_size=3, stride=2, padding=1)
    pooled = F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)
    return pooled.flatten(1)


class ClickAwareMaskDecoder(nn.Module):
    """Learnable queries cross-attend to the 3 scales in turn (masked by their own previous mask
    prediction, kept open at positive clicks), then self-attend, then an FFN.

    Returns the class logits and mask logits of the last layer plus those after the initial queries
    and every layer but the last (``aux_outputs``), for deep supervision.
    """

    num_feature_levels = 3

    def __init__(
        self,
        in_channels: int = 256,
        hidden_dim: int = 256,
        num_queries: int = 10,
        n_heads: int = 8,
        dim_feedforward: int = 2048,
        num_layers: int = 9,
        mask_dim: int = 256,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        if in_channels != hidden_dim:
            raise ValueError(f"pixel-decoder width {in_channels} must equal the decoder width {hidden_dim}")
        self.n_heads = n_heads
        self.num_layers = num_layers
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, n_heads) for _ in range(num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, n_heads) for _ in range(num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, dim_feedforward) for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(
        self, features: list[torch.Tensor], mask_features: torch.Tensor, click_map: torch.Tensor
    ) -> dict[str, torch.Tensor | list[dict[str, torch.Tensor]]]:
        """features: maps at strides 32, 16, 8; mask_features (B, C, H/4, W/4); click_map (B, H, W)
        positive-click disks at input resolution."""
        sizes = [tuple(f.shape[-2:]) for f in features]
        srcs, pos = [], []
        for level, feature in enumerate(features):
            # Sequence-first and contiguous, so the attention projections are plain GEMMs.
            pos.append(self.pe_layer(feature).flatten(2).permute(2, 0, 1).to(feature.dtype).contiguous())
            src = feature.flatten(2) + self.level_embed.weight[level][None, :, None]
            srcs.append(src.permute(2, 0, 1).contiguous())
        click_maps = {size: pooled_click_map(click_map, size) for size in set(sizes)}

        batch = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)

        classes, masks = [], []
        logits, mask, attn_mask = self._predict(output, mask_features, sizes[0], click_maps[sizes[0]])
        classes.append(logits)
        masks.append(mask)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            attn_mask[attn_mask.all(-1)] = False
            output = self.transformer_cross_attention_layers[i](output, srcs[level], attn_mask, pos[level], query_pos)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            next_size = sizes[(i + 1) % self.num_feature_levels]
            logits, mask, attn_mask = self._predict(output, mask_features, next_size, click_maps[next_size])
            classes.append(logits)
            masks.append(mask)

        return {
            "pred_logits": classes[-1],
            "pred_masks": masks[-1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in zip(classes[:-1], masks[:-1])],
        }

    def _predict(
        self, output: torch.Tensor, mask_features: torch.Tensor, attn_size: tuple[int, int], click_map: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heads on the current queries: class logits (B, Q, 2), mask logits (B, Q, h, w) and the
        boolean attention mask (B*heads, Q, h'*w') for the next layer (True = blocked)."""
        decoded = self.decoder_norm(output).transpose(0, 1)
        class_logits = self.class_embed(decoded)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)

        resized = F.interpolate(mask_logits, size=attn_size, mode="bilinear", align_corners=False)
        blocked = resized.sigmoid().flatten(2) < 0.5
        # Clicks-aware part: queries that predict the object may always look at the positive clicks.
        is_object = class_logits.argmax(-1).to(click_map.dtype)
        clicked = (is_object[:, :, None] * click_map[:, None, :]) >= 0.5
        blocked = (blocked & ~clicked).detach()
        attn_mask = blocked.unsqueeze(1).repeat(1, self.n_heads, 1, 1).flatten(0, 1)
        return class_logits, mask_logits, attn_mask
