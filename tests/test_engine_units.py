"""Pieces of the training engine checked against hand-computed references: schedules, parameter
groups, gradient accumulation, the non-finite-loss stop, the prediction merge and atomic
checkpoint writes."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import engine
import optim_factory
import utils
from models import create_model
from models.run_checkpoints import find_resume_checkpoint, read_checkpoint
from tests.engine_helpers import ROOT, subprocess_env, train_epoch
from tests.helpers import tiny_model


def _micro(transfer_type="prompt", **kw):
    from models.transfer import setting_fields
    if "prompt_num_tokens" in setting_fields(transfer_type):
        kw.setdefault("prompt_num_tokens", 2)
    return create_model("vit_micro_patch16", transfer_type=transfer_type, num_classes=3,
                        all_frames=4, img_size=32, **kw)


# ----------------------------------------------------------------------------------- schedules
def test_cosine_schedule_warmup_peak_and_end():
    s = utils.cosine_scheduler(1.0, 0.1, epochs=3, niter_per_ep=4, warmup_epochs=1,
                               start_warmup_value=0.2)
    assert len(s) == 12
    np.testing.assert_allclose(s[:4], np.linspace(0.2, 1.0, 4))
    # after warm-up: 0.1 + 0.45 * (1 + cos(pi * i / 8)), i = 0..7
    ref = [0.1 + 0.45 * (1 + math.cos(math.pi * i / 8)) for i in range(8)]
    np.testing.assert_allclose(s[4:], ref)
    assert s[4] == pytest.approx(1.0)
    s2 = utils.cosine_scheduler(1.0, 0.0, epochs=2, niter_per_ep=5, warmup_epochs=1,
                                warmup_steps=2)
    np.testing.assert_allclose(s2[:2], [0.0, 1.0])  # --warmup_steps overrides --warmup_epochs
    assert utils.scale_lr(0.05, 64) == pytest.approx(0.0125)


# ------------------------------------------------------------------------------ param groups
def test_parameter_groups_only_trainable_and_no_decay_rules():
    model = _micro("prompt", prompt_reparam=True)
    groups = optim_factory.get_parameter_groups(model, 0.05, model.no_weight_decay(),
                                                decay_prompts=False)
    names = {n: g for g in groups for n in g["param_names"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(names) == trainable  # the frozen backbone is not in the optimizer
    decayed = {n for n, g in names.items() if g["weight_decay"] > 0}
    assert decayed == {"head.weight"}  # prompts, prompt_scale, fc_norm, biases: no decay
    everything = {"head.weight", "prompt_embeddings_k", "prompt_embeddings_v", "prompt_scale"}
    for decay_prompts in (True, None):  # None: APT's default, decayed as the original code
        g2 = optim_factory.get_parameter_groups(model, 0.05, (), decay_prompts=decay_prompts)
        decayed2 = {n for g in g2 if g["weight_decay"] > 0 for n in g["param_names"]}
        assert decayed2 == everything, decay_prompts
    vpt = _micro("vpt")  # VPT keeps its prompt tokens undecayed unless --decay_prompts
    g3 = optim_factory.get_parameter_groups(vpt, 0.05, ())
    assert {n for g in g3 if g["weight_decay"] > 0 for n in g["param_names"]} == {"head.weight"}


def test_layer_decay_ids_and_scales():
    model = _micro("adapter")  # depth 2: ids 0 (embeddings), 1..2 (blocks), 3 (rest)
    assigner = optim_factory.layer_decay_assigner(model, 0.5)
    assert assigner.values == [0.125, 0.25, 0.5, 1.0]
    groups = optim_factory.get_parameter_groups(model, 0.05, (), assigner.get_layer_id,
                                                assigner.get_scale)
    scale = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    assert scale["blocks.0.mlp_adapter.down.weight"] == 0.25
    assert scale["blocks.1.mlp_adapter.up.weight"] == 0.5
    assert scale["head.weight"] == 1.0 and scale["fc_norm.weight"] == 1.0
    prompt = _micro("prompt")
    a2 = optim_factory.layer_decay_assigner(prompt, 0.5)
    g2 = optim_factory.get_parameter_groups(prompt, 0.05, (), a2.get_layer_id, a2.get_scale)
    s2 = {n: g["lr_scale"] for g in g2 for n in g["param_names"]}
    assert s2["prompt_embeddings_k"] == 1.0  # spans all blocks: the last id, as the original
    end2end = _micro("end2end")
    a3 = optim_factory.layer_decay_assigner(end2end, 0.5)
    g3 = optim_factory.get_parameter_groups(end2end, 0.05, (), a3.get_layer_id, a3.get_scale)
    s3 = {n: g["lr_scale"] for g in g3 for n in g["param_names"]}
    assert s3["patch_embed.proj.weight"] == 0.125 and s3["blocks.1.attn.qkv.weight"] == 0.5


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_create_optimizer_honours_flags(opt):
    import argparse
    args = argparse.Namespace(opt=opt, lr=0.1, weight_decay=0.05, opt_eps=1e-6,
                              opt_betas=[0.8, 0.99], momentum=0.7, decay_prompts=False)
    model = _micro("linear")
    optimizer = optim_factory.create_optimizer(args, model)
    n_opt = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters() if p.requires_grad)
    g = optimizer.param_groups[0]
    if opt == "adamw":
        assert isinstance(optimizer, torch.optim.AdamW)
        assert g["betas"] == (0.8, 0.99) and g["eps"] == 1e-6
    else:
        assert isinstance(optimizer, torch.optim.SGD) and g["momentum"] == 0.7


# --------------------------------------------------------------------------- training loop
class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _batches(n, size=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 6, generator=g), torch.randint(0, 3, (size,), generator=g), [])
            for _ in range(n)]


def _sgd_by_hand(model, batches, update_freq, lrs):
    """The reference for the engine: plain mini-batch SGD, one step per ``update_freq``
    micro-batches on their concatenation, with gradients from ``torch.autograd.grad`` (which
    never reads or writes ``.grad``, so nothing accumulates across steps by construction)."""
    params = list(model.parameters())
    for step, lr in enumerate(lrs):
        group = batches[step * update_freq:(step + 1) * update_freq]
        x, y = torch.cat([b[0] for b in group]), torch.cat([b[1] for b in group])
        grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)


def test_gradient_accumulation_equals_the_large_batch_step():
    torch.manual_seed(0)
    accumulated, large_batch, reference = _Linear(), _Linear(), _Linear()
    large_batch.load_state_dict(accumulated.state_dict())
    reference.load_state_dict(accumulated.state_dict())
    initial = [p.detach().clone() for p in reference.parameters()]
    small = _batches(6)
    large = [(torch.cat([small[i][0], small[i + 1][0]]), torch.cat([small[i][1], small[i + 1][1]]), [])
             for i in (0, 2, 4)]
    # Three optimizer steps: gradients left over from one step (a missing zero_grad) would
    # change the next ones, and the engine's two ways of running must agree with the reference.
    lrs = [0.3, 0.2, 0.1]
    train_epoch(accumulated, small, lrs, update_freq=2)
    train_epoch(large_batch, large, lrs, update_freq=1)
    _sgd_by_hand(reference, small, update_freq=2, lrs=lrs)
    for pa, pb, pr, p0 in zip(accumulated.parameters(), large_batch.parameters(),
                              reference.parameters(), initial):
        assert not torch.equal(pr, p0)
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(pa, pr, rtol=1e-6, atol=1e-7)


def test_no_gradient_allreduce_on_accumulation_steps(tmp_path, monkeypatch):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        entered = []
        original = nn.parallel.DistributedDataParallel.no_sync

        def counting_no_sync(self):
            entered.append(1)
            return original(self)

        monkeypatch.setattr(nn.parallel.DistributedDataParallel, "no_sync", counting_no_sync)
        train_epoch(_Linear(), _batches(6), [0.1, 0.1], update_freq=3, distributed=True)
        assert len(entered) == 4  # micro-batches 0, 1 and 3, 4: two per optimizer step
    finally:
        dist.destroy_process_group()


def test_non_finite_loss_names_the_global_step():
    calls = []

    def criterion(out, target):
        calls.append(1)
        loss = nn.functional.cross_entropy(out, target)
        return loss * float("nan") if len(calls) == 3 else loss

    with pytest.raises(engine.NonFiniteLossError, match=r"global step 7\b"):
        train_epoch(_Linear(), _batches(4), [0.1] * 10, criterion=criterion, epoch=1,
                    start_steps=5)


# ----------------------------------------------------------------------------------- merging
def test_merge_counts_each_video_once(tmp_path):
    # 5 videos on 2 ranks: the DistributedSampler pads rank 1 with video 0 again.
    s = lambda *v: list(v)  # noqa: E731
    rank0 = [{"index": 0, "label": 0, "scores": s(0.7, 0.2, 0.1)},
             {"index": 2, "label": 2, "scores": s(0.5, 0.1, 0.4)},
             {"index": 4, "label": -1, "scores": None, "path": "bad.mp4"}]
    rank1 = [{"index": 1, "label": 1, "scores": s(0.1, 0.8, 0.1)},
             {"index": 3, "label": 0, "scores": s(0.3, 0.6, 0.1)},
             {"index": 0, "label": 0, "scores": s(0.7, 0.2, 0.1)}]
    result = engine.merge_predictions([rank0, rank1])
    assert result["videos"] == 4 and result["bad_videos"] == 1
    assert result["top1"] == pytest.approx(50.0)  # videos 0 and 1 right, 2 and 3 wrong
    assert result["top5"] == pytest.approx(100.0)  # 3 classes: top-5 = all
    for r, part in enumerate((rank0, rank1)):
        with open(engine.prediction_file(str(tmp_path), r), "w") as f:
            f.write("".join(json.dumps(p) + "\n" for p in part))
    assert engine.merge(str(tmp_path), 2) == (pytest.approx(50.0), pytest.approx(100.0))


@pytest.mark.parametrize("chunk_size", [None, 3], ids=["one-pass", "chunks-of-3"])
def test_final_test_scores_are_the_mean_of_softmax_over_views(tmp_path, chunk_size):
    # APT with non-unit scales, so the test also runs the folded model against the unfolded one;
    # a large head, so averaging logits (or taking the softmax of their mean) cannot pass as
    # averaging probabilities within the tolerance.
    model = tiny_model("prompt", prompt_num_tokens=2, prompt_reparam=True, init_scale=50.0)
    with torch.no_grad():
        model.prompt_scale.uniform_(0.5, 3.0)
    num_views, num_videos = 4, 5  # 2 segments x 2 crops; video 4 is unreadable
    views = torch.randn(num_videos, num_views, 3, 4, 32, 32)
    views[4] = 0  # what the data set returns for a video it cannot decode
    model.eval()
    with torch.no_grad():  # one clip per forward, unfolded: independent of the engine's batching
        expected = torch.stack([
            torch.stack([model(clip[None])[0].softmax(-1) for clip in video]).mean(0)
            for video in views[:4]])
    # Labels from the expected scores: two top-1 hits, one top-5 hit (rank 2 of 7 classes), one
    # miss (the lowest score), so the merge must give top-1 50% and top-5 75%.
    ranked = expected.argsort(dim=-1, descending=True)
    labels = [int(ranked[0, 0]), int(ranked[1, 0]), int(ranked[2, 1]), int(ranked[3, -1]), -1]
    indices = [10, 11, 12, 13, 14]
    loader = [(views[:2], torch.tensor(labels[:2]), torch.tensor(indices[:2]), []),
              (views[2:], torch.tensor(labels[2:]), torch.tensor(indices[2:]), ["broken.mp4"])]
    model.train()
    file = engine.prediction_file(str(tmp_path), 0)
    preds = engine.final_test(loader, model, torch.device("cpu"), file, chunk_size=chunk_size)
    assert model.training  # final_test restores the mode it found
    assert engine.read_predictions(file) == preds
    assert [(p["index"], p["label"]) for p in preds] == list(zip(indices, labels))
    assert preds[4]["scores"] is None and preds[4]["path"] == "broken.mp4"
    scores = torch.tensor([p["scores"] for p in preds[:4]])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    result = engine.merge_predictions([preds])
    assert (result["videos"], result["bad_videos"], result["bad_paths"]) == (4, 1, ["broken.mp4"])
    assert result["top1"] == pytest.approx(50.0) and result["top5"] == pytest.approx(75.0)


# ------------------------------------------------------------------------------ checkpoints
def _save_args(tmp_path):
    import argparse
    return argparse.Namespace(output_dir=str(tmp_path), finetune="", model="vit_micro_patch16",
                              opt_betas=(0.9, 0.999), lr=float("inf"))


def _save(args, model, tag, epoch, step=0, optimizer=None):
    """Write checkpoint-<tag> of ``model`` as a training run does."""
    from engine_checkpoints import TrainingCheckpoints
    from utils.backend import PlainBackend
    from utils.config import plain_dict
    optimizer = optimizer or torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                             lr=0.1)
    backend = PlainBackend(model, optimizer, torch.device("cpu"), None, distributed=False)
    return TrainingCheckpoints(args.output_dir, plain_dict(args)).save(tag, epoch, step, backend)


def test_checkpoint_is_plain_and_loads_with_weights_only(tmp_path):
    model = _micro("prompt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    path = _save(_save_args(tmp_path), model, "3", 3, step=12, optimizer=optimizer)
    obj = torch.load(path, weights_only=True)
    assert obj["epoch"] == 3 and obj["step"] == 12 and obj["transfer_type"] == "apt"
    assert obj["args"]["opt_betas"] == [0.9, 0.999] and obj["args"]["lr"] == "inf"
    assert set(obj["model"]) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert obj["backbone"] == {"path": None, "sha256": None}


def test_checkpoint_killed_mid_write_keeps_the_previous_one(tmp_path):
    """A real SIGKILL while the new checkpoint-last is half written."""
    code = textwrap.dedent(f"""
        import os, signal, sys, argparse, torch
        sys.path.insert(0, {ROOT!r})
        from models import create_model
        from tests.test_engine_units import _save
        model = create_model("vit_micro_patch16", transfer_type="linear", num_classes=3,
                             all_frames=4, img_size=32)
        args = argparse.Namespace(output_dir={str(tmp_path)!r}, finetune="")
        _save(args, model, "last", 0, step=1)
        real_save = torch.save
        def dying_save(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            f.truncate(f.tell() // 2)  # half of the bytes are on disk ...
            f.flush(); os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)  # ... when the process is killed
        torch.save = dying_save
        with torch.no_grad():
            model.head.weight.add_(1.0)
        _save(args, model, "last", 1, step=2)
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    leftovers = [n for n in os.listdir(tmp_path) if ".tmp" in n]
    assert leftovers, "the simulated kill should leave a partial temporary file"
    path = find_resume_checkpoint(str(tmp_path))
    assert path == os.path.join(str(tmp_path), "checkpoint-last.pth")
    good = read_checkpoint(path)
    assert good["epoch"] == 0 and good["step"] == 1  # the previous, complete checkpoint


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    model = _micro("linear")
    args = _save_args(tmp_path)
    _save(args, model, "last", 0)
    before = open(os.path.join(tmp_path, "checkpoint-last.pth"), "rb").read()

    def failing_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    from utils.outputs import OutputWriteError
    with pytest.raises(OutputWriteError, match=r"cannot write .*checkpoint-last\.pth: disk full"):
        _save(args, model, "last", 1)
    assert open(os.path.join(tmp_path, "checkpoint-last.pth"), "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-last.pth"]


def test_find_resume_prefers_last_then_highest_epoch(tmp_path):
    for name in ("checkpoint-2.pth", "checkpoint-10.pth", "checkpoint-best.pth",
                 "checkpoint-11.pth.tmp.5"):
        (tmp_path / name).write_bytes(b"x")
    assert find_resume_checkpoint(str(tmp_path)).endswith("checkpoint-10.pth")
    (tmp_path / "checkpoint-last.pth").write_bytes(b"x")
    assert find_resume_checkpoint(str(tmp_path)).endswith("checkpoint-last.pth")
    assert find_resume_checkpoint(str(tmp_path / "missing")) is None


# ------------------------------------------------------------------------------- launchers
def test_launcher_environments(monkeypatch):
    import argparse
    from utils import dist as udist
    args = argparse.Namespace(dist_on_itp=False, local_rank=-1)
    env = {"PATH": "/nonexistent"}  # no scontrol: the node list is expanded by hand
    monkeypatch.setattr(os, "environ", env)
    assert udist._launcher_env(args) == ""  # plain process
    env.update(SLURM_PROCID="0", SLURM_NTASKS="1")
    assert udist._launcher_env(args) == ""  # one SLURM task: no process group
    env.update(SLURM_PROCID="5", SLURM_NTASKS="16", SLURM_LOCALID="1",
               SLURM_JOB_NODELIST="gpu[03-04,07]")
    assert udist._launcher_env(args) == ""  # the sbatch script itself: no srun step, one process
    env.update(SLURM_STEP_ID="0")  # a task of an srun step (no SLURM_JOB_ID: the default port)
    assert udist._launcher_env(args) == "slurm"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("5", "16", "1")
    assert env["MASTER_ADDR"] == "gpu03" and env["MASTER_PORT"] == "29500"
    env.update(RANK="2", WORLD_SIZE="4", LOCAL_RANK="2")  # torchrun inside srun: torchrun wins
    assert udist._launcher_env(args) == "torchrun" and env["RANK"] == "2"
    assert udist._first_host("node7,node8") == "node7"
