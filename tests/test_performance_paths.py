"""The fast paths compute what the plain paths compute (timings live in benchmarks/, not here).

* ``torch.compile`` (the engine's ``--compile``): every transfer type is captured as one graph
  (no graph breaks), and compiled outputs and gradients equal eager ones.
* Inference folding (APT scales into prompts, LoRA into ``qkv``) equals the training model in
  eval mode.
* Frozen weights get no weight-gradient work: a training step's FLOPs equal the analytic count
  in which a frozen linear layer's backward is its input gradient only.
* The benchmark's "straightforward implementation" computes the same function as the model.
"""
import pytest
import torch
import torch.nn.functional as F

from models import TRANSFER_TYPES, count_train_step_flops, create_model
from tests.helpers import its_settings
from models.transfer import folded_for_inference
from tests.helpers import tiny_clip, tiny_model

METHOD_KW = dict(prompt_num_tokens=3, prompt_reparam=True, lora_rank=2, adapter_dim=8)
# Inductor reorders float reductions (LayerNorm, softmax, mean pooling) and fuses elementwise
# chains, so fp32 results differ from eager by rounding: a few ulps per op, ~1e-6 relative
# after a few blocks. 1e-4 relative / 1e-5 absolute on logits of size ~1 is far above that and
# far below any real difference (a missing prompt or scale changes logits by ~1e-2).
COMPILE_TOL = dict(rtol=1e-4, atol=1e-5)


def _micro(transfer_type, **kw):
    """vit_micro_patch16 at 4x32x32 (8 tokens), 2 blocks: the cheapest model to compile."""
    cfg = dict(num_classes=5, all_frames=4, img_size=32, init_scale=1.0)
    cfg.update(its_settings(transfer_type, kw))
    return create_model("vit_micro_patch16", transfer_type=transfer_type, **cfg)


@pytest.mark.parametrize("transfer_type", sorted(TRANSFER_TYPES))
def test_every_type_is_captured_as_one_graph(transfer_type):
    """No graph breaks: the method object's hooks and the position-table cache trace cleanly."""
    import torch._dynamo as dynamo

    model = _micro(transfer_type, **METHOD_KW, prompt_dropout=0.1)
    dynamo.reset()
    for mode in (True, False):  # training forward (dropout on prompts) and inference
        model.train(mode)
        explained = dynamo.explain(model)(tiny_clip())
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1


def _set_prompt_scales(model):
    with torch.no_grad():  # below, at and above 1: max(s, 1) clamps, ties and passes through
        layers = model.prompt_scale.shape[0]
        model.prompt_scale.copy_(torch.tensor([0.5, 1.0, 1.7]).repeat(layers, 2, 1))


@pytest.mark.parametrize("transfer_type", ["prompt", "end2end"])
def test_compiled_inference_equals_eager(transfer_type):
    torch.manual_seed(0)
    model = _micro(transfer_type, **METHOD_KW).eval()
    if transfer_type == "prompt":
        _set_prompt_scales(model)
    x = tiny_clip()
    compiled = torch.compile(model, dynamic=False)  # inductor, as --compile uses it
    with torch.no_grad():
        eager = model(x)
        out = compiled(x)
    torch.testing.assert_close(out, eager, **COMPILE_TOL)


def test_compiled_training_step_equals_eager():
    """Forward and backward of APT through the compiled graph (AOTAutograd's joint graph).

    The aot_eager backend runs the captured forward/backward graphs op by op: it checks the
    capture and the autograd of the traced graph (what --compile changes) without paying
    inductor's C++ compilation a second time; inductor's kernels are checked above.
    """
    torch.manual_seed(0)
    model = _micro("prompt", **METHOD_KW).train()  # prompt_dropout 0: same function in both
    _set_prompt_scales(model)
    x, y = tiny_clip(), torch.tensor([0, 3])
    F.cross_entropy(model(x), y).backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend="aot_eager", dynamic=False)
    F.cross_entropy(compiled(x), y).backward()
    for name, grad in eager.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad,
                                   **COMPILE_TOL, msg=name)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(dict(model.named_parameters())[n].grad is None for n in frozen)


# --- inference folding -----------------------------------------------------------------------
def _lora_nonzero(model):
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv_delta.lora_B_q.normal_(0, 0.1)
            blk.attn.qkv_delta.lora_B_v.normal_(0, 0.1)


@pytest.mark.parametrize("transfer_type,kw", [
    ("prompt", dict(prompt_num_tokens=3, prompt_reparam=True, prompt_dropout=0.3)),
    ("prompt", dict(prompt_num_tokens=3, prompt_reparam=True, prompt_per_head=True)),
    ("lora", dict(lora_rank=2)),
    ("vpt", dict(prompt_num_tokens=3)),  # nothing to fold: the helper must be a no-op
])
def test_folded_inference_model_equals_training_model_in_eval_mode(transfer_type, kw):
    model = tiny_model(transfer_type, init_scale=1.0, **kw)
    if transfer_type == "prompt":
        _set_prompt_scales(model)
    if transfer_type == "lora":
        _lora_nonzero(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = tiny_clip()
    model.eval()
    with torch.no_grad():
        reference = model(x)  # the training model, eval mode, scales applied every forward
        with folded_for_inference(model):
            assert model.training is False
            folded = model(x)
    torch.testing.assert_close(folded, reference, rtol=1e-5, atol=1e-6)
    # leaving the context restores the trainable tensors bit for bit
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not getattr(model.transfer, "folded", False)


def test_folding_restores_training_mode_and_gradients():
    model = tiny_model("prompt", prompt_num_tokens=3, prompt_reparam=True).train()
    with folded_for_inference(model):
        pass
    assert model.training
    F.cross_entropy(model(tiny_clip()), torch.tensor([0, 1])).backward()
    assert model.prompt_scale.grad is not None  # the scales train again after unfolding


@pytest.mark.parametrize("transfer_type", ["prompt", "lora"])
def test_nested_folding_stays_folded_until_the_outermost_exit(transfer_type):
    """An inner context (an analysis inside an evaluation) must not unfold what the outer one
    folded: the inner exit leaves the folded tensors in place, the outer exit restores them."""
    model = tiny_model(transfer_type, prompt_num_tokens=3, prompt_reparam=True, lora_rank=2,
                       init_scale=1.0).train()
    torch.manual_seed(0)
    with torch.no_grad():  # trained-looking tensors: APT scales above 1, a LoRA update not zero
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.rand_like(p) + 1.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with folded_for_inference(model):
        folded = {k: v.clone() for k, v in model.state_dict().items()}
        assert any(not torch.equal(folded[k], state[k]) for k in state)  # something folded
        with folded_for_inference(model):
            pass
        assert all(torch.equal(v, folded[k]) for k, v in model.state_dict().items())
        assert model.training is False
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.training


# --- no weight gradients for frozen weights ----------------------------------------------------
def test_frozen_weights_get_no_weight_gradient_flops():
    """Multiply-adds of forward + backward equal the count in which frozen linear layers only
    pass the input gradient on (written out here from the block structure, not counted)."""
    N, D, L, C, P = 8, 64, 4, 7, 3  # tiny_model: 4x32x32 clip -> 2*2*2 tokens
    model = tiny_model("prompt", prompt_num_tokens=P, init_scale=1.0).train()
    counted = count_train_step_flops(model, tiny_clip(batch=1)) / 2  # FLOPs -> MACs
    embed = N * D * 3 * 2 * 16 * 16  # forward only: input is data, the weight is frozen
    lin, qkv, att = 12 * N * D * D, 3 * N * D * D, 2 * N * (N + P) * D

    def block(qkv_backward):  # forward; backward: 1x for frozen linears, 2.5x for attention
        return lin + att + 2.5 * att + (lin - qkv) + (qkv if qkv_backward else 0)

    # block 0's input needs no gradient, so its qkv projection has no backward at all
    expected = embed + block(False) + (L - 1) * block(True) + 3 * D * C  # head: fwd + 2 bwd
    assert counted == expected, (counted, expected)
    e2e = tiny_model("end2end", init_scale=1.0).train()
    e2e_counted = count_train_step_flops(e2e, tiny_clip(batch=1)) / 2
    att_e2e = 2 * N * N * D
    assert e2e_counted == 2 * embed + L * (3 * lin + 3.5 * att_e2e) + 3 * D * C


# --- the benchmark's baseline ----------------------------------------------------------------
@pytest.mark.parametrize("frozen_requires_grad", [True, False])
def test_naive_apt_baseline_computes_the_same_function(frozen_requires_grad):
    from benchmarks.naive_apt import naive_from

    model = _micro("prompt", prompt_num_tokens=3, prompt_reparam=True).eval()
    _set_prompt_scales(model)
    naive = naive_from(model, frozen_requires_grad=frozen_requires_grad).eval()
    x = tiny_clip()
    torch.testing.assert_close(naive(x), model(x), rtol=1e-5, atol=1e-6)
    F.cross_entropy(naive(x), torch.tensor([0, 1])).backward()
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    torch.testing.assert_close(naive.prompt_embeddings_k.grad, model.prompt_embeddings_k.grad,
                               rtol=1e-4, atol=1e-6)
    weight = naive.blocks[1].attn.qkv.weight
    assert (weight.grad is not None) == frozen_requires_grad


# --- APT's once-per-forward prompt preparation -------------------------------------------------
@pytest.mark.parametrize("per_head", [False, True])
def test_apt_prompts_prepared_once_per_forward_equal_the_per_block_path(per_head):
    """``extra_kv`` (one dropout/scale/unbind per forward) against slicing block by block."""
    model = tiny_model("prompt", prompt_num_tokens=3, prompt_reparam=True, prompt_start=1,
                       prompt_end=2, prompt_per_head=per_head, init_scale=1.0).train()
    _set_prompt_scales(model)
    x, y = tiny_clip(), torch.tensor([0, 1])
    F.cross_entropy(model(x), y).backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    out_fast = model.eval()(x)
    model.zero_grad(set_to_none=True)
    def per_block(m):  # the straightforward path: index, drop out and scale each block's slice
        out = [None] * len(m.blocks)
        for i in range(1, 3):  # prompt_start 1 .. prompt_end 2
            s = m.prompt_scale[i - 1]
            s = torch.maximum(s, torch.ones_like(s)).unsqueeze(-1)  # (2, P, 1): broadcasts over heads
            out[i] = (F.dropout(m.prompt_embeddings_k[i - 1], 0.0, m.training) * s[0],
                      F.dropout(m.prompt_embeddings_v[i - 1], 0.0, m.training) * s[1])
        return out

    model.transfer.extra_kv = per_block
    F.cross_entropy(model.train()(x), y).backward()
    torch.testing.assert_close(model.eval()(x), out_fast, rtol=0, atol=0)
    for name, grad in fast.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad,
                                   rtol=1e-6, atol=1e-7, msg=name)
