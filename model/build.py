"""Named AdaptiveClick configurations and their builders.

The configs differ only in dimensions and in which ViT blocks attend globally; everything else is
the reference architecture. ``vit_b_448`` and ``vit_h_448`` are the released models' configs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .modeling.adaptiveclick import AdaptiveClick
from .modeling.camd import ClickAwareMaskDecoder
from .modeling.pixel_decoder import PixelDecoder
from .modeling.vit import ClickViT


@dataclass(frozen=True)
class AdaptiveClickConfig:
    """Every hyper-parameter that shapes the network."""

    name: str
    image_size: int = 448
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    global_attn_indexes: tuple[int, ...] = (5, 11)
    window_pixels: int = 224
    fpn_dims: tuple[int, int, int, int] = (256, 512, 1024, 2048)
    conv_dim: int = 256
    mask_dim: int = 256
    encoder_heads: int = 8
    encoder_ffn_dim: int = 1024
    encoder_layers: int = 4
    hidden_dim: int = 256
    num_queries: int = 10
    decoder_heads: int = 8
    decoder_ffn_dim: int = 2048
    decoder_layers: int = 9
    click_radius: float = 5.0
    no_object_weight: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AdaptiveClickConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        data = dict(data)
        for key in ("global_attn_indexes", "fpn_dims"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


CONFIGS: dict[str, AdaptiveClickConfig] = {
    "vit_b_448": AdaptiveClickConfig(name="vit_b_448"),
    "vit_l_448": AdaptiveClickConfig(
        name="vit_l_448",
        embed_dim=1024,
        depth=24,
        num_heads=16,
        global_attn_indexes=(5, 11, 17, 23),
        fpn_dims=(384, 768, 1536, 3072),
    ),
    "vit_h_448": AdaptiveClickConfig(
        name="vit_h_448",
        patch_size=14,
        embed_dim=1280,
        depth=32,
        num_heads=16,
        global_attn_indexes=(7, 15, 23, 31),
        fpn_dims=(512, 1024, 2048, 4096),
    ),
    # The golden-parity config: ViT-B layout at toy widths (random weights, arithmetic only).
    "tiny": AdaptiveClickConfig(
        name="tiny",
        embed_dim=48,
        num_heads=3,
        fpn_dims=(32, 64, 96, 128),
        conv_dim=64,
        mask_dim=64,
        encoder_ffn_dim=64,
        hidden_dim=64,
        decoder_ffn_dim=128,
    ),
    # Sized to train and run on a laptop CPU: ViT-Ti widths, 8 blocks, 2 of them global, 320 px input
    # (20x20 tokens in 2x2 windows of 10x10, the reference's layout; ~1.8x cheaper per sample than 448).
    "starter": AdaptiveClickConfig(
        name="starter",
        image_size=320,
        window_pixels=160,
        embed_dim=192,
        depth=8,
        num_heads=3,
        global_attn_indexes=(3, 7),
        fpn_dims=(64, 128, 192, 256),
        conv_dim=96,
        mask_dim=96,
        encoder_ffn_dim=192,
        encoder_layers=2,
        hidden_dim=96,
        decoder_heads=4,
        decoder_ffn_dim=384,
        decoder_layers=6,
    ),
}


def build_adaptiveclick(config: AdaptiveClickConfig) -> AdaptiveClick:
    """Instantiate the network for ``config`` with fresh (reference-style) initialisation."""
    if config.window_pixels % config.patch_size:
        raise ValueError(f"window of {config.window_pixels}px is not a multiple of patch {config.patch_size}")
    backbone = ClickViT(
        img_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        global_attn_indexes=config.global_attn_indexes,
        window_size=config.window_pixels // config.patch_size,
    )
    pixel_decoder = PixelDecoder(
        in_dim=config.embed_dim,
        fpn_dims=config.fpn_dims,
        conv_dim=config.conv_dim,
        mask_dim=config.mask_dim,
        n_heads=config.encoder_heads,
        d_ffn=config.encoder_ffn_dim,
        num_layers=config.encoder_layers,
    )
    decoder = ClickAwareMaskDecoder(
        in_channels=config.conv_dim,
        hidden_dim=config.hidden_dim,
        num_queries=config.num_queries,
        n_heads=config.decoder_heads,
        dim_feedforward=config.decoder_ffn_dim,
        num_layers=config.decoder_layers,
        mask_dim=config.mask_dim,
    )
    model = AdaptiveClick(backbone, pixel_decoder, decoder, config.click_radius, config.no_object_weight)
    model.config = config
    return model


def build_model(name: str) -> AdaptiveClick:
    """Build a named config (``vit_b_448``, ``vit_l_448``, ``vit_h_448``, ``tiny``, ``starter``)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model config {name!r}; choose one of {', '.join(CONFIGS)}")
    return build_adaptiveclick(CONFIGS[name])


def build_vit_b_448() -> AdaptiveClick:
    return build_model("vit_b_448")


def build_vit_l_448() -> AdaptiveClick:
    return build_model("vit_l_448")


def build_vit_h_448() -> AdaptiveClick:
    return build_model("vit_h_448")
