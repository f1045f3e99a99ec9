"""The VideoMAE backbone: shapes, attention paths, checkpointing, position table."""
import math

import pytest
import torch

from models import create_model, list_models
from models.vit import Block, Unadapted, sincos_position_table
from tests.helpers import tiny_clip, tiny_model


@pytest.mark.parametrize("name,dim,depth,heads", [
    ("vit_small_patch16_224", 384, 12, 6), ("vit_base_patch16_224", 768, 12, 12),
    ("vit_large_patch16_224", 1024, 24, 16), ("vit_huge_patch16_224", 1280, 32, 16)])
def test_registered_variants(name, dim, depth, heads):
    assert name in list_models()
    with torch.device("meta"):  # structure only: no need to initialise 600M parameters
        m = create_model(name, num_classes=3)
    assert (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads) == (dim, depth, heads)
    assert m.blocks[0].mlp.fc1.out_features == 4 * dim
    assert m.blocks[0].norm1.eps == 1e-6
    assert m.blocks[0].attn.q_bias is not None and "blocks.0.attn.k_bias" not in m.state_dict()


def test_sincos_table_matches_videomae_formula():
    n, d = 50, 16
    table = sincos_position_table(n, d)[0]
    for pos in (0, 7, 49):
        for j in (0, 1, 6, 15):
            angle = pos / math.pow(10000, 2 * (j // 2) / d)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert abs(table[pos, j].item() - expected) < 1e-6
    assert "pos_embed" not in create_model("vit_micro_patch16", all_frames=4, img_size=32).state_dict()


def test_position_table_is_cached_not_rebuilt():
    m = tiny_model().eval()
    x = tiny_clip()
    m(x)
    first = m.position_embedding((2, 2, 2), x.device, x.dtype)
    m(x)
    assert m.position_embedding((2, 2, 2), x.device, x.dtype) is first


@pytest.mark.parametrize("frames,size", [(8, 112), (16, 112), (8, 160), (16, 224)])
def test_input_shapes(frames, size):
    m = create_model("vit_micro_patch16", num_classes=5, all_frames=16, img_size=224).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, frames, size, size))
    assert out.shape == (1, 5)


def test_indivisible_input_is_a_clear_error():
    m = tiny_model()
    with pytest.raises(ValueError, match="--num_frames"):
        m(torch.randn(1, 3, 5, 32, 32))


@pytest.mark.parametrize("transfer_type", ["end2end", "prompt", "vpt"])
def test_sdpa_and_math_attention_agree(transfer_type):
    m = tiny_model(transfer_type, prompt_num_tokens=3).eval()
    x = tiny_clip()
    with torch.no_grad():
        fused = m(x)
        m.set_fused_attn(False)
        explicit = m(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True], ids=["math", "sdpa"])
def test_attention_math_path_is_the_textbook_formula(fused):
    m = tiny_model().eval()
    m.set_fused_attn(fused)  # SDPA is the default: the explicit-math path must be switched on
    attn = m.blocks[0].attn
    assert attn.fused_attn is fused
    with torch.no_grad():  # non-zero biases, so a bias in the wrong place shows
        attn.q_bias.normal_(0, 0.5)
        attn.v_bias.normal_(0, 0.5)
    x = torch.randn(2, 8, 64)
    with torch.no_grad():
        qkv = torch.nn.functional.linear(x, attn.qkv.weight, torch.cat((attn.q_bias, torch.zeros(64), attn.v_bias)))
        q, k, v = qkv.view(2, 8, 3, 4, 16).permute(2, 0, 3, 1, 4)
        ref = torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1) @ v  # 4 = sqrt(head_dim 16)
        ref = attn.proj(ref.transpose(1, 2).reshape(2, 8, 64))
        torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("transfer_type", ["end2end", "prompt"])
def test_gradient_checkpointing_gives_same_gradients(transfer_type):
    kwargs = dict(prompt_num_tokens=2, prompt_reparam=True) if transfer_type == "prompt" else {}
    # Dropout and drop-path on: the recomputation in the backward must replay the forward's
    # random masks, or checkpointing changes the gradients.
    kwargs.update(drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2)
    torch.manual_seed(1)
    a = tiny_model(transfer_type, **kwargs)
    b = tiny_model(transfer_type, use_checkpoint=True, **kwargs)
    b.load_state_dict(a.state_dict())
    x = tiny_clip()
    for m in (a, b):
        m.train()
        torch.manual_seed(2)  # the same masks in both forwards
        m(x).pow(2).sum().backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if pa.grad is None:
            assert pb.grad is None, name
        else:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-7, msg=name)
    # The comparison means something only if gradients reach the first checkpointed block (a
    # zero head would make every gradient zero): block 0's trainable tensor must get one.
    grads = {name: p.grad for name, p in a.named_parameters() if p.grad is not None}
    block0 = grads["prompt_embeddings_k"][0] if transfer_type == "prompt" else grads["blocks.0.attn.qkv.weight"]
    assert block0.abs().sum() > 0


def test_layer_scale_drop_path_and_dropouts_run():
    m = tiny_model(init_values=0.1, drop_path_rate=0.2, drop_rate=0.1, attn_drop_rate=0.1,
                   fc_drop_rate=0.5).train()
    assert m.blocks[0].gamma_1 is not None
    out = m(tiny_clip())
    out.sum().backward()
    assert m.blocks[0].gamma_1.grad is not None


def test_an_unadapted_block_is_videomaes_block_bit_for_bit():
    """Its hooks are parameter-free identities: the output is the pre-norm block with layer
    scale, operation for operation, and the state dict holds the block's own tensors only."""
    torch.manual_seed(0)
    blk = Block(64, 4, qkv_bias=True, init_values=0.1).eval()
    assert all(isinstance(h, Unadapted) for h in (blk.attn.qkv_delta, blk.attn_adapter,
                                                  blk.mlp_adapter))
    assert not any(k.split(".")[0] in ("attn_adapter", "mlp_adapter") or ".qkv_delta" in k
                   for k in blk.state_dict())
    x = torch.randn(2, 8, 64)
    with torch.no_grad():
        x1 = x + blk.gamma_1 * blk.attn(blk.norm1(x))
        expected = x1 + blk.gamma_2 * blk.mlp(blk.norm2(x1))
        assert torch.equal(blk(x), expected)


def test_a_block_hook_gets_its_input_and_output_and_its_return_goes_on():
    """What a transfer type relies on: each hook point is called as ``hook(input, output)``."""
    seen = {}

    class Recorder(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, inp, out):
            seen[self.name] = (inp, out)
            return 2 * out

    torch.manual_seed(0)
    blk = Block(64, 4, qkv_bias=True).eval()
    x = torch.randn(2, 8, 64)
    with torch.no_grad():
        plain = blk(x)
        for name in ("attn_adapter", "mlp_adapter"):
            setattr(blk, name, Recorder(name))
        blk.attn.qkv_delta = Recorder("qkv_delta")
        hooked = blk(x)
        h1 = blk.norm1(x)
        assert torch.equal(seen["qkv_delta"][0], h1) and seen["qkv_delta"][1].shape == (2, 8, 192)
        assert torch.equal(seen["attn_adapter"][0], h1)
        attn_out = seen["attn_adapter"][1]
        assert torch.equal(attn_out, blk.attn(h1))  # the attention output (of the hooked qkv)
        x1 = x + 2 * attn_out
        assert torch.equal(seen["mlp_adapter"][0], blk.norm2(x1))
        assert torch.equal(seen["mlp_adapter"][1], x1 + blk.mlp(blk.norm2(x1)))
        assert torch.equal(hooked, 2 * seen["mlp_adapter"][1])
        assert not torch.equal(hooked, plain)


def test_head_init_scale():
    torch.manual_seed(0)
    a = tiny_model(init_scale=1.0)
    torch.manual_seed(0)
    b = tiny_model(init_scale=0.001)
    torch.testing.assert_close(b.head.weight, a.head.weight * 0.001)


def test_use_cls_pools_first_token_through_norm():
    m = tiny_model(use_mean_pooling=False).eval()
    assert m.fc_norm is None and isinstance(m.norm, torch.nn.LayerNorm)
    x = tiny_clip()
    with torch.no_grad():
        feats = m.forward_features(x)
        tokens = m.patch_embed(x) + m.position_embedding((2, 2, 2), x.device, x.dtype)
        for blk in m.blocks:
            tokens = blk(tokens)
        torch.testing.assert_close(feats, m.norm(tokens)[:, 0])


def test_learnable_pos_embed_interpolates_for_other_inputs():
    m = tiny_model(use_learnable_pos_emb=True).eval()
    assert m.state_dict()["pos_embed"].shape == (1, 8, 64)
    with torch.no_grad():
        assert m(torch.randn(1, 3, 8, 64, 64)).shape == (1, 7)
