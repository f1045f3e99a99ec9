"""Prompt analysis (``models/attention_analysis.py``, ``prompt_analysis.py``,
``tools/analyze_prompts.py``) against references written out here: the explicit attention
reproduces the model's blocks, shares sum to 1 and equal a hand-computed softmax, removing every
APT prompt gives the frozen backbone built without them, removing one block's prompts is a
forward with zero-length prompts there, the norms are those of the folded prompts, the rollout
is the product of the blocks' (A + I) / 2, and the tool writes its files with the engine's own
test scores."""
import csv
import glob
import json
import os

import pytest
import torch

from models.attention_analysis import (AttentionRecorder, attention_output, attention_rollout,
                                       attention_weights, prompt_layout, prompts_removed,
                                       rollout_readout)
from models.transfer import folded_for_inference
import prompt_analysis
from tests.engine_helpers import run_main, tiny_argv
from tests.helpers import tiny_clip, tiny_model
from tools import analyze_prompts

APT = dict(prompt_num_tokens=3, prompt_reparam=True, prompt_start=1, prompt_end=2)
VPT = dict(prompt_num_tokens=3, vpt_mode="deep", prompt_start=1, prompt_end=2)


def trained_like(transfer_type, **settings):
    """A tiny model in eval mode whose prompts and scales are far from their initial values."""
    model = tiny_model(transfer_type, **settings).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("prompt_embeddings", "deep_prompt_embeddings")):
                p.normal_(0.0, 1.0)
            if name == "prompt_scale":
                p.uniform_(0.5, 2.0)  # some below 1: max(s, 1) must clip them
    return model


def block_io(model, clip):
    """Each block's input and output in the model's own forward (fused attention)."""
    seen = []
    handles = [blk.register_forward_hook(lambda m, args, out: seen.append((args, out)))
               for blk in model.blocks]
    with torch.no_grad():
        model(clip)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("transfer_type,settings", [("apt", APT), ("vpt", VPT)])
def test_explicit_attention_rebuilds_every_block_of_the_models_forward(transfer_type, settings):
    model, clip = trained_like(transfer_type, **settings), tiny_clip()
    for blk, (args, out) in zip(model.blocks, block_io(model, clip)):
        x, extra_kv = args[0], args[1]
        with torch.no_grad():
            h = blk.norm1(x)
            a = attention_output(blk.attn, *attention_weights(blk.attn, h, extra_kv)[::2])
            y = x + blk.attn_adapter(h, a)
            rebuilt = blk.mlp_adapter(blk.norm2(y), y + blk.mlp(blk.norm2(y)))
        torch.testing.assert_close(rebuilt, out, rtol=1e-5, atol=1e-5)
    # the model's explicit math path computes the same product, bit for bit
    model.set_fused_attn(False)
    for blk, (args, out) in zip(model.blocks, block_io(model, clip)):
        with torch.no_grad():
            h = blk.norm1(args[0])
            w, _, v = attention_weights(blk.attn, h, args[1])
            assert torch.equal(attention_output(blk.attn, w, v), blk.attn(h, args[1]))


def hand_shares(model, clip):
    """Per block (B, H) share on the prompt keys, the attention written out from the weights."""
    shares, layout = [], prompt_layout(model)
    for b, (blk, (args, _)) in enumerate(zip(model.blocks, block_io(model, clip))):
        attn, h = blk.attn, blk.norm1(args[0])
        B, N, D = h.shape
        bias = torch.cat((attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias))
        q, k, _ = (h @ attn.qkv.weight.T + bias).reshape(B, N, 3, attn.num_heads, -1).unbind(2)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, N, hd)
        p = layout.num_prompts if b in layout.blocks else 0
        if layout.kind == "apt":  # prompts appended to the keys; every query is a patch
            if p:
                k = torch.cat((k, args[1][0].expand(B, attn.num_heads, -1, -1)), dim=2)
            w = torch.softmax(q @ k.transpose(-1, -2) / attn.head_dim ** 0.5, dim=-1)
            shares.append(w[..., N:].sum(-1).mean(-1))
        else:  # prompt tokens first; only the patch queries count
            w = torch.softmax(q @ k.transpose(-1, -2) / attn.head_dim ** 0.5, dim=-1)
            shares.append(w[:, :, p:, :p].sum(-1).mean(-1))
    return shares


@pytest.mark.parametrize("transfer_type,settings", [("apt", APT), ("vpt", VPT)])
def test_shares_sum_to_one_and_are_the_softmax_written_out(transfer_type, settings):
    model, clip = trained_like(transfer_type, **settings), tiny_clip()
    with torch.no_grad():
        expected = hand_shares(model, clip)
        with AttentionRecorder(model, prompt_layout(model)) as rec:
            model(clip)
    for b, r in enumerate(rec.records):
        torch.testing.assert_close(r.prompt_share + r.token_share, torch.ones(2, 4))
        torch.testing.assert_close(r.prompt_share, expected[b], rtol=1e-5, atol=1e-6)
        assert (r.prompt_share > 0).all() == (b in prompt_layout(model).blocks)


def test_clips_measured_in_chunks_give_the_same_records(monkeypatch):
    """Big models are measured a few clips at a time; the records do not depend on it."""
    from models import attention_analysis
    model, clip = trained_like("apt", **APT), tiny_clip(batch=3)
    layout = prompt_layout(model)
    with torch.no_grad(), AttentionRecorder(model, layout, [2]) as whole:
        model(clip)
    monkeypatch.setattr(attention_analysis, "WEIGHTS_PER_CHUNK", 1)  # one clip per chunk
    with torch.no_grad(), AttentionRecorder(model, layout, [2]) as chunked:
        model(clip)
    for a, b in zip(whole.records, chunked.records):
        for name in ("prompt_share", "token_share", "patch_key_norm", "patch_value_norm",
                     "patch_attention"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name))


def frozen_backbone(model):
    """The same backbone and classifier built without any transfer type, weights copied."""
    plain = tiny_model("linear").eval()
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith(("prompt", "deep_prompt"))}
    assert set(state) == set(plain.state_dict())
    plain.load_state_dict(state)
    return plain


def test_removing_every_apt_prompt_gives_the_frozen_backbone():
    model, clip = trained_like("apt", **APT), tiny_clip()
    with torch.no_grad():
        with prompts_removed(model, prompt_layout(model).blocks):
            ablated = model(clip)
        plain = frozen_backbone(model)(clip)
        assert torch.equal(ablated, plain)
        assert not torch.allclose(model(clip), plain)  # the prompts do change the output


def test_removing_every_vpt_prompt_gives_the_frozen_backbone():
    model, clip = trained_like("vpt", **VPT), tiny_clip()
    with torch.no_grad():
        with prompts_removed(model, prompt_layout(model).blocks):
            ablated = model(clip)
        torch.testing.assert_close(ablated, frozen_backbone(model)(clip), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("removed", [1, 2])
def test_removing_one_blocks_apt_prompts_is_a_forward_with_none_there(removed):
    """The forward written out block by block, block ``removed`` given zero-length prompts."""
    model, clip = trained_like("apt", **APT), tiny_clip()
    with torch.no_grad(), folded_for_inference(model):
        with prompts_removed(model, [removed]):
            ablated = model(clip)
        x = model.patch_embed(clip)
        x = x + model.position_embedding(model.grid, x.device, x.dtype)
        kv = model.transfer.extra_kv(model)
        for b, blk in enumerate(model.blocks):
            extra = kv[b]
            if b == removed:
                extra = (extra[0][:0], extra[1][:0])  # P = 0 in this block
            x = blk(x, extra)
        by_hand = model.head(model.fc_norm(x.mean(1)))
        assert not torch.allclose(model(clip), by_hand)
    torch.testing.assert_close(ablated, by_hand, rtol=0, atol=1e-6)


def test_prompt_norms_are_those_of_the_folded_prompts():
    model = trained_like("apt", **APT)
    scale = torch.maximum(model.prompt_scale.detach(), torch.tensor(1.0))  # (L, 2, P)
    rows = prompt_analysis.prompt_norm_rows(model)
    with folded_for_inference(model):  # folded or not, the prompts the forward uses
        assert rows == prompt_analysis.prompt_norm_rows(model)
    assert [(r["block"], r["kind"]) for r in rows] == [(1, "key"), (1, "value"),
                                                        (2, "key"), (2, "value")]
    for r in rows:
        j, s = r["block"] - 1, 0 if r["kind"] == "key" else 1
        folded = (model.prompt_embeddings_k if s == 0 else model.prompt_embeddings_v)[j] \
            * scale[j, s][:, None]
        per_prompt = torch.linalg.norm(folded.detach(), dim=-1)
        assert r["mean_norm"] == pytest.approx(float(per_prompt.mean()), rel=1e-6)
        assert r["max_norm"] == pytest.approx(float(per_prompt.max()), rel=1e-6)
        assert r["frobenius"] == pytest.approx(float(torch.linalg.norm(folded.detach())),
                                               rel=1e-6)
    vpt = trained_like("vpt", **VPT)
    tokens = {1: vpt.prompt_embeddings[0].detach(), 2: vpt.deep_prompt_embeddings[0].detach()}
    for r in prompt_analysis.prompt_norm_rows(vpt):
        assert r["kind"] == "token"
        assert r["frobenius"] == pytest.approx(float(torch.linalg.norm(tokens[r["block"]])),
                                               rel=1e-6)


def test_rollout_is_the_product_of_the_blocks_with_the_residual():
    a1, a2 = (torch.rand(2, 5, 5).softmax(-1) for _ in range(2))
    eye = torch.eye(5)
    rollout = attention_rollout([a1, a2])
    torch.testing.assert_close(rollout, (0.5 * a2 + 0.5 * eye) @ (0.5 * a1 + 0.5 * eye))
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 5))
    readout = rollout_readout(rollout)
    torch.testing.assert_close(readout, rollout.mean(1))
    torch.testing.assert_close(readout.sum(-1), torch.ones(2))
    # on a model: each block's patch attention is row-stochastic, and so is the rollout
    model = trained_like("vpt", **VPT)
    with torch.no_grad(), AttentionRecorder(model, prompt_layout(model), [1]) as rec:
        model(tiny_clip())
    maps = [r.patch_attention for r in rec.records]
    assert all(m.shape == (1, 8, 8) for m in maps)
    torch.testing.assert_close(attention_rollout(maps).sum(-1), torch.ones(1, 8))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data, backbone):
    """APT on the frozen backbone, 2x2 test views, no validation: checkpoint-last is tested."""
    out = str(tmp_path_factory.mktemp("run"))
    run_main(tiny_argv(data, out, "prompt", finetune=backbone, epochs=2, lr=0.5,
                       disable_eval_during_finetuning=True, save_ckpt_freq=100))
    return out


def test_the_tool_writes_its_files_with_the_engines_test_scores(tmp_path, data, run_dir):
    out = str(tmp_path / "prompts")
    status = analyze_prompts.main(["--resume", os.path.join(run_dir, "checkpoint-last.pth"),
                                   "--list", os.path.join(data, "test.csv"), "--output_dir",
                                   out, "--device", "cpu", "--num_workers", "0",
                                   "--rollout_videos", "2", "--batch_size", "8"])
    assert status == 0
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    with open(os.path.join(run_dir, "predictions_rank0.json"), encoding="utf-8") as f:
        engine = [json.loads(line) for line in f]
    # no prompt removed: the top-1 of the engine's own multi-view test of the same checkpoint
    engine_top1 = 100.0 * sum(max(range(3), key=p["scores"].__getitem__) == p["label"]
                              for p in engine) / len(engine)
    ablation = {r["condition"]: r for r in summary["ablation"]}
    assert set(ablation) == {"none", "block 0", "block 1", "all"}  # vit_micro: 2 blocks
    assert ablation["none"]["top1"] == pytest.approx(engine_top1)
    assert summary["videos"] == len(engine) and summary["unreadable_videos"] == []
    with open(os.path.join(out, "attention_share.csv"), encoding="utf-8") as f:
        shares = list(csv.DictReader(f))
    assert len(shares) == 2 * 4  # blocks x heads
    for r in shares:
        assert float(r["prompt_share"]) + float(r["token_share"]) == pytest.approx(1.0)
    with open(os.path.join(out, "prompt_norms.csv"), encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 2 * 2  # key and value prompts of every block
    gifs = sorted(glob.glob(os.path.join(out, "rollout", "*.gif")))
    assert len(gifs) == 2
    frames = sorted(glob.glob(os.path.join(gifs[0][:-4], "frame_*.png")))
    assert len(frames) == 4  # --num_frames
    from PIL import Image
    with Image.open(gifs[0]) as gif:
        assert gif.n_frames == 4
    assert os.path.getsize(os.path.join(out, "attention_share.png")) > 0


def test_unlabelled_videos_and_refused_flags(tmp_path, data, run_dir, capsys):
    videos = sorted(glob.glob(os.path.join(data, "videos", "*", "*")))[:2]
    out = str(tmp_path / "prompts")
    assert analyze_prompts.main(["--resume", run_dir, *videos, "--output_dir", out,
                                 "--device", "cpu", "--num_workers", "0",
                                 "--rollout_videos", "0"]) == 0
    with open(os.path.join(out, "ablation.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["top1"] == "" and float(rows[0]["agreement"]) == 100.0
    assert not os.path.exists(os.path.join(out, "rollout"))
    with pytest.raises(SystemExit) as exit_:
        analyze_prompts.main(["--resume", run_dir, "--output_dir", out])
    assert exit_.value.code == 2
    assert "either --list FILE" in capsys.readouterr().err
