"""Plain ViT backbone with a click/previous-mask patch embedding and window/global attention."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention, Block
from torch import nn


class ReferenceAttention(Attention):
    """timm's attention with the reference's arithmetic on the CPU.

    ``softmax((q @ k^T) * scale) @ v`` in that order reproduces the released model bit for bit in
    float32; the fused kernel reorders the scaling and differs by rounding, which the hard attention
    masks of the decoder can amplify. Reduced-precision inference uses the fused kernel (it keeps the
    probabilities in float32), and so does CUDA. Reduced-precision training on the CPU uses the
    explicit form too: for these short sequences (100-800 tokens) the fused CPU kernel's backward is
    3-5x slower.
    """

    # True: the fused kernel in every case (AdaptiveClick.set_fused_attention, the "fast" runtime).
    fused = False

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        reduced_precision = x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type)
        training = torch.is_grad_enabled() and x.requires_grad
        if self.fused or x.is_cuda or (reduced_precision and not training) or attn_mask is not None or is_causal:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(batch, tokens, channels))


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: conv with kernel = stride = patch size, flattened to tokens."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def window_partition(x: torch.Tensor, grid: tuple[int, int], window: int) -> torch.Tensor:
    """(B, H*W, C) row-major tokens -> (B * nH * nW, window*window, C) non-overlapping windows."""
    batch, _, channels = x.shape
    grid_h, grid_w = grid
    num_h, num_w = grid_h // window, grid_w // window
    x = x.view(batch, num_h, window, num_w, window, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch * num_h * num_w, window * window, channels)


def window_unpartition(x: torch.Tensor, grid: tuple[int, int], window: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`."""
    grid_h, grid_w = grid
    num_h, num_w = grid_h // window, grid_w // window
    channels = x.shape[-1]
    x = x.view(-1, num_h, num_w, window, window, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, grid_h * grid_w, channels)


class ClickViT(nn.Module):
    """Plain ViT (MAE layout) whose patch tokens also carry the embedded click maps.

    Blocks listed in ``global_attn_indexes`` attend over all tokens; the others attend within
    non-overlapping windows of ``window_size`` x ``window_size`` tokens. No final norm is applied
    to the tokens. ``cls_token``, ``fc_norm`` and ``head`` exist only so MAE and released
    checkpoints load strictly; the forward never uses them.
    """

    def __init__(
        self,
        img_size: int = 448,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        global_attn_indexes: tuple[int, ...] = (5, 11),
        window_size: int = 14,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.window_size = window_size
        self.global_attn_indexes = tuple(global_attn_indexes)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self._resized_key: tuple | None = None
        self._resized: torch.Tensor | None = None
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], embed_dim))
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                norm_layer=norm_layer,
                mlp_layer=Mlp,
                attn_layer=ReferenceAttention,
            )
            for _ in range(depth)
        )
        self.fc_norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        weight = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))

    def set_grid_size(self, grid_size: tuple[int, int]) -> None:
        """Run on another token grid: the position embedding is resized bicubically from the trained
        one (as the reference does at inference). The parameter itself keeps its trained grid."""
        if grid_size[0] % self.window_size or grid_size[1] % self.window_size:
            side = self.window_size * self.patch_size
            raise ValueError(
                f"a {tuple(grid_size)} token grid does not split into the {self.window_size}x{self.window_size}-token "
                f"attention windows: use an input size that is a multiple of {side} px"
            )
        self.grid_size = tuple(grid_size)

    @property
    def native_grid(self) -> tuple[int, int]:
        """Token grid the position embedding was trained for."""
        side = int(round((self.pos_embed.shape[1] - 1) ** 0.5))
        return side, side

    def position_embedding(self) -> torch.Tensor:
        """(1, 1 + H*W, C) position embedding for the current grid, cls entry included."""
        native = self.native_grid
        if self.grid_size == native:
            return self.pos_embed
        if torch.is_grad_enabled() and self.pos_embed.requires_grad or torch.compiler.is_exporting():
            # An export traces the resize into the graph (its tensors have no data pointer to key a cache by).
            return resize_pos_embed(self.pos_embed, native, self.grid_size)
        key = (self.grid_size, self.pos_embed._version, self.pos_embed.data_ptr())
        if self._resized_key != key:
            self._resized = resize_pos_embed(self.pos_embed.detach(), native, self.grid_size)
            self._resized_key = key
        return self._resized

    def forward(self, image: torch.Tensor, click_tokens: torch.Tensor) -> torch.Tensor:
        """Normalised image (B, 3, H, W) + click tokens (B, N, C) -> tokens (B, N, C)."""
        grid = (image.shape[-2] // self.patch_size, image.shape[-1] // self.patch_size)
        if grid != self.grid_size:
            raise ValueError(
                f"input {tuple(image.shape[-2:])} gives a {grid} token grid but the position embedding is "
                f"{self.grid_size}; call set_grid_size({grid}) first"
            )
        if grid[0] % self.window_size or grid[1] % self.window_size:
            raise ValueError(f"token grid {grid} is not a multiple of the attention window {self.window_size}")
        x = self.patch_embed(image) + click_tokens + self.position_embedding()[:, 1:]
        windowed = False
        for index, block in enumerate(self.blocks):
            is_global = index in self.global_attn_indexes
            if is_global and windowed:
                x = window_unpartition(x, grid, self.window_size)
                windowed = False
            elif not is_global and not windowed:
                x = window_partition(x, grid, self.window_size)
                windowed = True
            x = block(x)
        if windowed:
            x = window_unpartition(x, grid, self.window_size)
        return x


def resize_pos_embed(
    pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Bicubically resize (1, prefix + H*W, C) position embeddings to a new grid, keeping prefix tokens."""
    prefix, grid_tokens = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    channels = pos_embed.shape[-1]
    grid_tokens = grid_tokens.reshape(1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2)
    grid_tokens = F.interpolate(grid_tokens, size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid_tokens = grid_tokens.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], channels)
    return torch.cat([prefix, grid_tokens], dim=1)
