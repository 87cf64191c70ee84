"""The ViT attention's explicit CPU path (parity, bf16 training) against timm's fused attention."""

import torch
from timm.models.vision_transformer import Attention

from model.modeling.vit import ReferenceAttention


def _pair(dim: int = 48, heads: int = 3) -> tuple[ReferenceAttention, Attention]:
    torch.manual_seed(0)
    explicit = ReferenceAttention(dim, num_heads=heads, qkv_bias=True)
    fused = Attention(dim, num_heads=heads, qkv_bias=True)
    fused.load_state_dict(explicit.state_dict())
    return explicit, fused


def test_float32_explicit_path_matches_the_fused_kernel():
    explicit, fused = _pair()
    x = torch.randn(4, 100, 48)
    with torch.no_grad():
        torch.testing.assert_close(explicit(x), fused(x), rtol=1e-5, atol=1e-5)


def test_bf16_training_path_gives_the_fused_values_and_gradients():
    explicit, fused = _pair()
    x = torch.randn(4, 100, 48)
    grads = []
    for module in (explicit, fused):
        inputs = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(inputs)
        out.float().square().sum().backward()
        grads.append((out.float().detach(), inputs.grad, module.qkv.weight.grad))
    for mine, theirs in zip(*grads):
        scale = theirs.abs().max()
        assert (mine - theirs).abs().max() <= 0.03 * scale, (mine - theirs).abs().max() / scale
