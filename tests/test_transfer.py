"""Transfer types (docs/METHODS.md): what trains, what stays frozen, equations, folding, costs."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import (TRANSFER_TYPES, CheckpointError, cost_report, count_forward_flops,
                    create_model, load_method, load_pretrained, save_method)
from models.transfer import (TRANSFER_ALIASES, TransferMethod, canonical_transfer_type,
                             get_transfer_class, make_config, register_transfer)
from models.transfer.apt import AttentionPromptTuning
import run_class_apt
from tests.helpers import tiny_clip, tiny_model

ALL_TYPES = sorted(TRANSFER_TYPES)
METHOD_KW = dict(prompt_num_tokens=3, prompt_reparam=True, lora_rank=2, adapter_dim=8)


def test_every_documented_type_is_registered():
    assert set(ALL_TYPES) == {"random", "end2end", "linear", "apt", "vpt", "approx", "adapter", "lora"}


def test_prompt_is_apts_former_name_everywhere_a_type_name_is_read():
    assert TRANSFER_ALIASES == {"prompt": "apt"}
    assert canonical_transfer_type("prompt") == "apt" == canonical_transfer_type("apt")
    assert canonical_transfer_type("lora") == "lora" and canonical_transfer_type(None) is None
    assert get_transfer_class("prompt") is get_transfer_class("apt") is AttentionPromptTuning
    assert make_config("prompt", {"prompt_num_tokens": 3}) == \
        make_config("apt", {"prompt_num_tokens": 3})
    old, new = tiny_model("prompt", prompt_num_tokens=3), tiny_model("apt", prompt_num_tokens=3)
    assert old.transfer.name == new.transfer.name == "apt"
    assert old.state_dict().keys() == new.state_dict().keys()
    assert "prompt" not in TRANSFER_TYPES  # listed once, under its name
    with pytest.raises(ValueError, match="'prompt' is already another type's"):
        register_transfer("prompt2", aliases=("prompt",))(type("Other", (TransferMethod,), {}))
    with pytest.raises(ValueError, match="'lora' is already another type's"):
        register_transfer("lora2", aliases=("lora",))(type("Other", (TransferMethod,), {}))
    assert "prompt2" not in TRANSFER_TYPES and "lora2" not in TRANSFER_TYPES


def test_the_transfer_type_flag_reads_the_former_name_as_apt(capsys):
    parser = run_class_apt.get_args_parser()
    assert parser.parse_args([]).transfer_type == "apt"
    assert parser.parse_args(["--transfer_type", "prompt"]).transfer_type == "apt"
    with pytest.raises(SystemExit):
        parser.parse_args(["--transfer_type", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    assert "prompt: former name of apt" in parser.format_help()


@pytest.mark.parametrize("transfer_type", ALL_TYPES)
def test_optimizer_steps_change_trainable_and_leave_frozen_bit_identical(transfer_type):
    torch.manual_seed(0)
    model = tiny_model(transfer_type, init_scale=1.0, **METHOD_KW).train()  # head not ~0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in trainable}
    x, y = tiny_clip(batch=4), torch.tensor([0, 1, 2, 3])
    # Two steps: zero-initialised factors (LoRA B, adapter/approx up) open the path to their
    # partners (A, down) only after the first update.
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    names_trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name, p in model.named_parameters():
        if name in names_trainable:
            assert not torch.equal(p, before[name]), f"{name} did not change"
        else:
            assert p.grad is None, f"frozen {name} got a gradient"
            assert torch.equal(p, before[name]), f"frozen {name} changed"
    if not TRANSFER_TYPES[transfer_type].trains_backbone:
        assert "blocks.0.attn.qkv.weight" not in names_trainable
        assert {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"} <= names_trainable


def _base(transfer_type, **kw):
    with torch.device("meta"):  # counting needs no storage
        return create_model("vit_base_patch16_224", num_classes=101, transfer_type=transfer_type, **kw)


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_trainable_parameter_counts_on_vit_base_follow_the_formulas():
    L, P, D, hd, C = 12, 400, 768, 64, 101
    head = D * C + C + 2 * D  # head + fc_norm
    assert head == 79_205
    assert _trainable(_base("linear")) == head
    assert _trainable(_base("prompt", prompt_num_tokens=P, prompt_reparam=True)) == 703_205
    assert _trainable(_base("prompt", prompt_num_tokens=P)) == 2 * L * P * hd + head
    assert _trainable(_base("vpt", prompt_num_tokens=P, vpt_mode="deep")) == L * P * D + head
    assert _trainable(_base("vpt", prompt_num_tokens=P, vpt_mode="shallow")) == P * D + head
    assert _trainable(_base("adapter", adapter_dim=64)) == L * (D * 64 + 64 + 64 * D + D) + head
    assert _trainable(_base("lora", lora_rank=8)) == L * 2 * (8 * D + D * 8) + head
    assert _trainable(_base("approx", prompt_num_tokens=P)) == L * (P * D + 2 * 4 * D + 1) + head
    full = _base("end2end")
    assert _trainable(full) == sum(p.numel() for p in full.parameters()) == 86_304_869
    assert _trainable(_base("prompt", prompt_num_tokens=P, prompt_start=4, prompt_end=7)) == 4 * 2 * P * hd + head


def _block_io(model, x):
    """Input and output of every block during one forward."""
    records = []
    hooks = [blk.register_forward_hook(lambda m, args, out: records.append((args[0], out)))
             for blk in model.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return records


@pytest.mark.parametrize("transfer_type", ["prompt", "vpt", "approx", "adapter", "lora"])
def test_blocks_outside_the_range_compute_the_frozen_function(transfer_type):
    model = tiny_model(transfer_type, depth=12, prompt_start=4, prompt_end=7, **METHOD_KW).eval()
    # Non-zero values everywhere so that an in-range block really differs from the frozen one.
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.ndim > 0 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    frozen = tiny_model("end2end", depth=12).eval()
    frozen.load_state_dict(model.state_dict(), strict=False)
    for i, (x_in, x_out) in enumerate(_block_io(model, tiny_clip())):
        with torch.no_grad():
            reference = frozen.blocks[i](x_in)
        if transfer_type == "vpt":  # VPT edits the sequence, never a block's function
            assert torch.equal(x_out, reference)
            assert x_in.shape[1] == (8 + 3 if i >= 4 else 8)
        elif 4 <= i <= 7:
            assert not torch.allclose(x_out, reference), f"block {i} should be adapted"
        else:
            assert torch.equal(x_out, reference), f"block {i} is outside the range"


def test_reparam_with_unit_scales_equals_no_reparam():
    a = tiny_model("prompt", prompt_num_tokens=4, prompt_reparam=True).eval()
    b = tiny_model("prompt", prompt_num_tokens=4, prompt_reparam=False).eval()
    b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "prompt_scale"})
    assert torch.equal(a.prompt_scale, torch.ones_like(a.prompt_scale))  # the scales start at 1
    x = tiny_clip()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        # The equality means something only if the scales act: a scale above 1 changes the output.
        a.prompt_scale[1, 1, 2] = 2.0  # one value prompt of block 1
        assert not torch.allclose(a(x), b(x))


# --- APT against an independent reference written from the equations (docs/METHODS.md, APT) --
def reference_apt_forward(sd, x, num_heads, start, end, eps=1e-6):
    """VideoMAE ViT + APT from a state dict in the original APT layout, written out by hand."""
    B = x.shape[0]
    w = sd["patch_embed.proj.weight"]
    tokens = F.conv3d(x, w, sd["patch_embed.proj.bias"], stride=w.shape[2:]).flatten(2).transpose(1, 2)
    n, d = tokens.shape[1:]
    pos = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    pos[:, 0::2], pos[:, 1::2] = np.sin(pos[:, 0::2]), np.cos(pos[:, 1::2])
    h = tokens + torch.tensor(pos, dtype=torch.float32)
    hd = d // num_heads
    for i in range(len({k.split(".")[1] for k in sd if k.startswith("blocks.")})):
        p = f"blocks.{i}."
        y = F.layer_norm(h, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros(d), sd[p + "attn.v_bias"]])
        q, k, v = (y @ sd[p + "attn.qkv.weight"].t() + bias).reshape(B, n, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
        if start <= i <= end:
            j = i - start
            s = sd["prompt_scale"][j]  # (2, P)
            pk = sd["prompt_embeddings_k"][j] * torch.maximum(s[0], torch.ones_like(s[0]))[:, None]
            pv = sd["prompt_embeddings_v"][j] * torch.maximum(s[1], torch.ones_like(s[1]))[:, None]
            k = torch.cat([k, pk.expand(B, num_heads, -1, -1)], dim=2)  # k' = [k ; s_k * Pk]
            v = torch.cat([v, pv.expand(B, num_heads, -1, -1)], dim=2)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        a = (attn @ v).transpose(1, 2).reshape(B, n, d) @ sd[p + "attn.proj.weight"].t() + sd[p + "attn.proj.bias"]
        h = h + a
        y = F.layer_norm(h, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        y = F.gelu(y @ sd[p + "mlp.fc1.weight"].t() + sd[p + "mlp.fc1.bias"])
        h = h + y @ sd[p + "mlp.fc2.weight"].t() + sd[p + "mlp.fc2.bias"]
    pooled = F.layer_norm(h.mean(1), (d,), sd["head_norm.weight"], sd["head_norm.bias"], eps)
    return pooled @ sd["head.weight"].t() + sd["head.bias"]


def _original_apt_checkpoint(depth=4, dim=64, heads=4, P=3, start=1, end=3, classes=7):
    """A checkpoint with the original APT code's keys and shapes, random values."""
    g = torch.Generator().manual_seed(3)
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    sd = {"patch_embed.proj.weight": rnd(dim, 3, 2, 16, 16), "patch_embed.proj.bias": rnd(dim)}
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": 1 + rnd(dim), p + "norm1.bias": rnd(dim),
                   p + "attn.qkv.weight": rnd(3 * dim, dim), p + "attn.q_bias": rnd(dim),
                   p + "attn.v_bias": rnd(dim), p + "attn.proj.weight": rnd(dim, dim),
                   p + "attn.proj.bias": rnd(dim), p + "norm2.weight": 1 + rnd(dim),
                   p + "norm2.bias": rnd(dim), p + "mlp.fc1.weight": rnd(4 * dim, dim),
                   p + "mlp.fc1.bias": rnd(4 * dim), p + "mlp.fc2.weight": rnd(dim, 4 * dim),
                   p + "mlp.fc2.bias": rnd(dim)})
    L = end - start + 1
    sd.update({"prompt_embeddings_k": rnd(L, P, dim // heads) * 5,
               "prompt_embeddings_v": rnd(L, P, dim // heads) * 5,
               # scales below, at and above 1: max(s, 1) must clamp, tie and pass through
               "prompt_scale": torch.tensor([0.5, 1.0, 1.7]).repeat(L, 2, 1),
               "head_norm.weight": 1 + rnd(dim), "head_norm.bias": rnd(dim),
               "head.weight": rnd(classes, dim), "head.bias": rnd(classes)})
    return sd


def test_original_apt_checkpoint_reproduces_the_reference_forward_and_gradients(tmp_path):
    sd = _original_apt_checkpoint()
    path = tmp_path / "apt_original.pth"
    torch.save({"model": sd}, path)
    model = tiny_model("prompt", prompt_num_tokens=3, prompt_start=1, prompt_end=3, prompt_reparam=True).eval()
    report = load_pretrained(model, str(path))
    assert report.missing == [] and report.dropped == [] and report.format == "apt"
    x = tiny_clip()
    out = model(x)
    ref_sd = {k: v.clone().requires_grad_(k in ("prompt_scale", "prompt_embeddings_k")) for k, v in sd.items()}
    ref = reference_apt_forward(ref_sd, x, num_heads=4, start=1, end=3)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    out.pow(2).sum().backward()
    ref.pow(2).sum().backward()
    torch.testing.assert_close(model.prompt_scale.grad, ref_sd["prompt_scale"].grad, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(model.prompt_embeddings_k.grad, ref_sd["prompt_embeddings_k"].grad, rtol=1e-3, atol=1e-6)
    assert (model.prompt_scale.grad[:, :, 0] == 0).all()  # clamped scales get no gradient
    assert (model.prompt_scale.grad[:, :, 1] != 0).any()  # ties get torch.maximum's half gradient


# --- equations of the other methods ---------------------------------------------------------
def test_vpt_deep_replaces_prompts_before_every_block_and_pools_video_tokens():
    model = tiny_model("vpt", prompt_num_tokens=3, vpt_mode="deep").eval()
    x = tiny_clip()
    io = _block_io(model, x)
    assert torch.equal(io[0][0][:, :3], model.prompt_embeddings.expand(2, -1, -1))
    for i in range(1, 4):
        assert io[i][0].shape[1] == 3 + 8
        assert torch.equal(io[i][0][:, :3], model.deep_prompt_embeddings[i - 1].expand(2, -1, -1))
        assert torch.equal(io[i][0][:, 3:], io[i - 1][1][:, 3:])
    with torch.no_grad():
        expected = model.head(model.fc_norm(io[-1][1][:, 3:].mean(1)))
        torch.testing.assert_close(model(x), expected)
    shallow = tiny_model("vpt", prompt_num_tokens=3, vpt_mode="shallow").eval()
    io = _block_io(shallow, x)
    assert torch.equal(io[1][0], io[0][1])  # shallow: prompts carried through, not replaced
    with torch.no_grad():
        torch.testing.assert_close(shallow(x), shallow.head(shallow.fc_norm(io[-1][1][:, 3:].mean(1))))


def test_approx_block_output_follows_the_equation():
    model = tiny_model("approx", prompt_num_tokens=5, depth=1).eval()
    blk = model.blocks[0]
    module = blk.attn_adapter
    with torch.no_grad():
        module.up.weight.normal_(0, 0.1)
        module.gate.fill_(0.3)
    x = torch.randn(2, 8, 64)
    with torch.no_grad():
        h = blk.norm1(x)
        a = blk.attn(h)
        pm = module.prompts
        pk = pm + pm @ module.down.weight.t() @ module.up.weight.t()
        A = torch.relu(h @ pk.t())
        expected = (a + (A @ pm) * A.max(dim=-1, keepdim=True).values) * math.exp(0.3)
        torch.testing.assert_close(module(h, a), expected)


def test_adapter_and_lora_start_as_the_frozen_model_and_follow_their_equations():
    x = tiny_clip()
    frozen = tiny_model("end2end").eval()
    for t in ("adapter", "lora"):
        m = tiny_model(t, adapter_dim=8, lora_rank=2).eval()
        m.load_state_dict(frozen.state_dict(), strict=False)
        with torch.no_grad():
            assert torch.equal(m(x), frozen(x)), t
    m = tiny_model("adapter", adapter_dim=8, adapter_scale=0.1).eval()
    ad = m.blocks[0].mlp_adapter
    with torch.no_grad():
        ad.up.weight.normal_(0, 0.1)
        h, x = torch.randn(2, 8, 64), torch.randn(2, 8, 64)
        torch.testing.assert_close(ad.branch(h), 0.1 * (torch.relu(h @ ad.down.weight.t() + ad.down.bias) @ ad.up.weight.t() + ad.up.bias))
        assert torch.equal(ad(h, x), x + ad.branch(h))  # the hook adds the branch to the block output
    m = tiny_model("lora", lora_rank=2, lora_alpha=4).eval()
    attn = m.blocks[0].attn
    lora = attn.qkv_delta
    with torch.no_grad():
        lora.lora_B_q.normal_(0, 0.1)
        lora.lora_B_v.normal_(0, 0.1)
        h = torch.randn(2, 8, 64)
        base = F.linear(h, attn.qkv.weight, attn.qkv_bias())
        out = lora(h, base)
        s = 4 / 2
        torch.testing.assert_close(out[..., :64], base[..., :64] + s * h @ lora.lora_A_q.t() @ lora.lora_B_q.t())
        torch.testing.assert_close(out[..., 64:128], base[..., 64:128])  # keys untouched
        torch.testing.assert_close(out[..., 128:], base[..., 128:] + s * h @ lora.lora_A_v.t() @ lora.lora_B_v.t())


# --- inference folding ----------------------------------------------------------------------
def test_apt_scales_fold_into_the_prompts_exactly():
    model = tiny_model("prompt", prompt_num_tokens=3, prompt_reparam=True).eval()
    # Scales below (clamped to 1), at and above 1, different for every block and for keys and
    # values, so a fold that skips the clamp, swaps keys and values or mixes up blocks shows.
    scales = torch.tensor([0.5, 1.0, 2.5]).repeat(4, 2, 1)  # (L, 2, P)
    scales[:, :, 2] += 0.5 * torch.arange(8.0).view(4, 2)
    with torch.no_grad():
        model.prompt_scale.copy_(scales)
    x = tiny_clip()
    original_k = model.prompt_embeddings_k.detach().clone()
    original_v = model.prompt_embeddings_v.detach().clone()
    with torch.no_grad():
        before = model(x)
        model.transfer.fold(model)
        folded = model(x)
        clamped = torch.maximum(scales, torch.ones_like(scales))  # (L, 2, P)
        torch.testing.assert_close(model.prompt_embeddings_k, original_k * clamped[:, 0, :, None])
        torch.testing.assert_close(model.prompt_embeddings_v, original_v * clamped[:, 1, :, None])
        model.transfer.unfold(model)
        after = model(x)
    torch.testing.assert_close(folded, before, rtol=1e-6, atol=1e-7)
    assert torch.equal(after, before) and torch.equal(model.prompt_embeddings_k, original_k)
    assert torch.equal(model.prompt_embeddings_v, original_v)


def test_lora_merges_into_qkv_and_unmerges_exactly():
    rank, alpha = 2, 3.0  # scaling alpha / rank = 1.5: a merge that drops it shows
    model = tiny_model("lora", lora_rank=rank, lora_alpha=alpha).eval()
    with torch.no_grad():  # B starts at zero, which would make the merge an identity
        for blk in model.blocks:
            blk.attn.qkv_delta.lora_B_q.normal_(0, 0.1)
            blk.attn.qkv_delta.lora_B_v.normal_(0, 0.1)
    x = tiny_clip()
    weights = [blk.attn.qkv.weight.detach().clone() for blk in model.blocks]
    with torch.no_grad():
        before = model(x)
        model.transfer.fold(model)
        for blk, w in zip(model.blocks, weights):
            lora = blk.attn.qkv_delta
            # W + (alpha / rank) [B_q A_q ; 0 ; B_v A_v], the keys' rows untouched
            expected = w + alpha / rank * torch.cat((lora.lora_B_q @ lora.lora_A_q, torch.zeros(64, 64),
                                                      lora.lora_B_v @ lora.lora_A_v))
            torch.testing.assert_close(blk.attn.qkv.weight, expected)
        merged = model(x)
        model.transfer.unfold(model)
        after = model(x)
    torch.testing.assert_close(merged, before, rtol=1e-5, atol=1e-6)
    for blk, w in zip(model.blocks, weights):
        assert torch.equal(blk.attn.qkv.weight, w)
    assert torch.equal(after, before)


# --- saving one method on its own ------------------------------------------------------------
@pytest.mark.parametrize("transfer_type", ["prompt", "lora", "vpt", "adapter", "approx", "linear"])
def test_method_checkpoint_holds_trainable_tensors_and_reloads_exactly(tmp_path, transfer_type):
    backbone = tmp_path / "backbone.pth"
    torch.save({"model": tiny_model().state_dict()}, backbone)
    trained = tiny_model(transfer_type, **METHOD_KW)
    load_pretrained(trained, str(backbone))
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    from models import backbone_reference
    save_method(str(tmp_path / "method.pth"), trained, backbone_reference(str(backbone)))
    saved = torch.load(tmp_path / "method.pth", weights_only=True)
    assert set(saved["model"]) == {n for n, p in trained.named_parameters() if p.requires_grad}
    fresh = tiny_model(transfer_type, **METHOD_KW)
    load_pretrained(fresh, str(backbone))
    load_method(fresh, str(tmp_path / "method.pth"))
    x = tiny_clip()
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), trained.eval()(x))


def test_method_checkpoint_refuses_a_changed_backbone_or_another_type(tmp_path):
    backbone = tmp_path / "backbone.pth"
    torch.save({"model": tiny_model().state_dict()}, backbone)
    from models import backbone_reference
    model = tiny_model("prompt", prompt_num_tokens=2)
    save_method(str(tmp_path / "m.pth"), model, backbone_reference(str(backbone)))
    with pytest.raises(CheckpointError, match="transfer_type lora"):
        load_method(tiny_model("lora"), str(tmp_path / "m.pth"))
    torch.save({"model": tiny_model().state_dict(), "epoch": 1}, backbone)  # the file changed
    with pytest.raises(CheckpointError, match="sha256"):
        load_method(tiny_model("prompt", prompt_num_tokens=2), str(tmp_path / "m.pth"))


# --- costs ----------------------------------------------------------------------------------
def test_gflops_of_apt_and_vpt_on_vit_base_follow_the_analytic_counts():
    N, P, D, L = 1568, 400, 768, 12
    x = torch.randn(1, 3, 16, 224, 224)
    base = count_forward_flops(create_model("vit_base_patch16_224", num_classes=0), x) / 2
    apt = count_forward_flops(create_model("vit_base_patch16_224", num_classes=0, transfer_type="prompt",
                                           prompt_num_tokens=P), x) / 2
    assert abs((apt - base) - L * 2 * N * P * D) / (L * 2 * N * P * D) < 0.02
    assert abs(L * 2 * N * P * D / 1e9 - 11.56) < 0.01
    vpt = count_forward_flops(create_model("vit_base_patch16_224", num_classes=0, transfer_type="vpt",
                                           prompt_num_tokens=P, vpt_mode="deep"), x) / 2
    n = N + P  # the backbone at N + P tokens (the embedding still sees N patches)
    expected = L * (12 * n * D * D + 2 * n * n * D) + N * D * 3 * 2 * 16 * 16
    assert abs(vpt - expected) / expected < 0.02


def test_cost_report_is_the_json_contract():
    report = cost_report(tiny_model("prompt", prompt_num_tokens=2), num_frames=4, input_size=32)
    assert {"model", "transfer_type", "params", "trainable_params", "gflops"} <= set(report)
    assert report["transfer_type"] == "apt" and report["trainable_params"] < report["params"]


# --- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(transfer_type="prompt", prompt_start=5, prompt_end=2), "--prompt_start 5 is greater than --prompt_end 2"),
    (dict(transfer_type="prompt", prompt_start=0, prompt_end=4), "--prompt_end 4 is past the last block"),
    (dict(transfer_type="vpt", prompt_end=12), "--prompt_end 12 is past the last block"),
    (dict(transfer_type="prompt", prompt_num_tokens=0), "--prompt_num_tokens must be >= 1"),
    (dict(transfer_type="approx", prompt_num_tokens=-1), "--prompt_num_tokens must be >= 1"),
    (dict(transfer_type="vpt", vpt_mode="middle"), "--vpt_mode"),
    (dict(transfer_type="prefix"), "--transfer_type 'prefix' is unknown"),
])
def test_bad_transfer_flags_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(")):
        tiny_model(**kwargs)
