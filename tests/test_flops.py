"""FLOP counting: attention counted on CPU, totals against the analytic formula."""
import torch

from models import count_forward_flops, create_model, flop_counter
from tests.helpers import tiny_clip, tiny_model


def vit_macs(n: int, d: int, depth: int, frames: int, size: int, patch: int = 16, tubelet: int = 2) -> float:
    """Multiply-adds of a ViT: per block 12*N*D^2 (qkv 3, proj 1, MLP 8) + 2*N^2*D (qk^T, av),
    plus the tubelet embedding (N * D * 3 * tubelet * patch^2)."""
    return depth * (12 * n * d * d + 2 * n * n * d) + n * d * 3 * tubelet * patch * patch


def test_vit_base_16x224_flops_match_the_formula():
    model = create_model("vit_base_patch16_224", num_classes=0)
    flops = count_forward_flops(model, torch.randn(1, 3, 16, 224, 224))
    expected = 2 * vit_macs(1568, 768, 12, 16, 224)
    assert abs(expected / 2 - 180.34e9) < 0.01e9
    assert abs(flops - expected) / expected < 0.01, (flops, expected)


def test_cpu_sdpa_is_counted():
    """Without the extra formula, the attention matmuls would count zero on CPU."""
    m = tiny_model().eval()
    x = tiny_clip(batch=1)
    fused = count_forward_flops(m, x)
    m.set_fused_attn(False)
    explicit = count_forward_flops(m, x)
    assert fused == explicit  # softmax etc. are not counted by either path
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as plain:
        m.set_fused_attn(True)
        m(x)
    n, d, depth = 8, 64, 4
    assert fused - plain.get_total_flops() == depth * 2 * (2 * n * n * d)


def test_backward_attention_is_counted():
    m = tiny_model()
    with flop_counter() as counter:
        m(tiny_clip(batch=1)).sum().backward()
    ops = {str(op) for op in counter.get_flop_counts()["Global"]}
    assert any("flash_attention_for_cpu_backward" in op for op in ops), ops
