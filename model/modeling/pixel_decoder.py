"""Pixel decoder: SimpleFPN neck + Mask2Former's multi-scale deformable-attention encoder + FPN to stride 4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ms_deform_attn import DeformableEncoder, DeformableEncoderLayer
from .neck import SimpleFPN
from .position_encoding import PositionEmbeddingSine


class DeformableTransformer(nn.Module):
    """Level embeddings + deformable encoder over the flattened stride-32/16/8 maps."""

    def __init__(self, d_model: int, n_heads: int, d_ffn: int, num_layers: int, n_levels: int = 3) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self.encoder = DeformableEncoder(
            [DeformableEncoderLayer(d_model, d_ffn, n_levels, n_heads) for _ in range(num_layers)]
        )
        nn.init.normal_(self.level_embed)
        for layer in self.encoder.layers:
            for name, param in layer.named_parameters():
                if param.dim() > 1 and not name.startswith("self_attn."):
                    nn.init.xavier_uniform_(param)

    def forward(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]) -> list[torch.Tensor]:
        """Maps (B, C, H_l, W_l) and their position encodings -> encoded maps of the same shapes."""
        spatial_shapes = [(src.shape[-2], src.shape[-1]) for src in srcs]
        flat_src = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        flat_pos = torch.cat(
            [
                pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
                for level, pos in enumerate(pos_embeds)
            ],
            1,
        )
        memory = self.encoder(flat_src, flat_pos, spatial_shapes)
        batch = memory.shape[0]
        outs = memory.split([h * w for h, w in spatial_shapes], dim=1)
        return [out.transpose(1, 2).view(batch, -1, h, w) for out, (h, w) in zip(outs, spatial_shapes)]


def _conv_gn(in_dim: int, out_dim: int, kernel_size: int, relu: bool) -> nn.Sequential:
    conv = nn.Conv2d(in_dim, out_dim, kernel_size, padding=kernel_size // 2)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    layers: list[nn.Module] = [conv, nn.GroupNorm(32, out_dim)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class PixelDecoder(nn.Module):
    """ViT tokens -> (mask features at stride 4, [encoded maps at strides 32, 16, 8]).

    Under autocast the projections and FFNs run in reduced precision, but the deformable sampling
    itself (offsets, locations, bilinear sampling, weighting) always runs in float32.
    """

    def __init__(
        self,
        in_dim: int,
        fpn_dims: tuple[int, int, int, int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        n_heads: int = 8,
        d_ffn: int = 1024,
        num_layers: int = 4,
    ) -> None:
        super().__init__()
        # Projections of strides 32, 16, 8 (low to high resolution).
        self.input_proj = nn.ModuleList()
        for channels in fpn_dims[1:][::-1]:
            proj = nn.Sequential(nn.Conv2d(channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
            self.input_proj.append(proj)
        self.transformer = DeformableTransformer(conv_dim, n_heads, d_ffn, num_layers)
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.zeros_(self.mask_features.bias)
        # One FPN step from stride 8 to stride 4. The reference registers these modules under two
        # names each, so released checkpoints hold both; keep both so they load strictly.
        lateral = _conv_gn(fpn_dims[0], conv_dim, 1, relu=True)
        output = _conv_gn(conv_dim, conv_dim, 3, relu=True)
        self.adapter_1 = lateral
        self.layer_1 = output
        self.lateral_convs = nn.ModuleList([lateral])
        self.output_convs = nn.ModuleList([output])
        self.neck = SimpleFPN(in_dim, fpn_dims)

    def forward(self, tokens: torch.Tensor, grid_size: tuple[int, int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, _, channels = tokens.shape
        feature_map = tokens.transpose(1, 2).view(batch, channels, grid_size[0], grid_size[1])
        stride4, stride8, stride16, stride32 = self.neck(feature_map)

        srcs, pos = [], []
        for proj, feature in zip(self.input_proj, (stride32, stride16, stride8)):
            feature = feature.float()
            srcs.append(proj(feature))
            pos.append(self.pe_layer(feature))
        encoded = self.transformer(srcs, pos)

        lateral = self.lateral_convs[0](stride4.float())
        upsampled = F.interpolate(encoded[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        return self.mask_features(self.output_convs[0](lateral + upsampled)), encoded
