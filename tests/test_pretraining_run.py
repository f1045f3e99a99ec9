"""run_mae_pretraining.py end to end on synthetic videos: the loss falls, checkpoints have
VideoMAE's pre-training layout and load into every transfer type, resuming continues exactly."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import engine
import engine_for_pretraining
import run_mae_pretraining
import utils
from utils.backend import PlainBackend
from datasets.pretrain_dataset import build_pretraining_dataset, collate_pretrain
from utils.config import PretrainDataConfig
from models import TRANSFER_TYPES, create_model, load_pretrained
from tests.helpers import its_settings
from tests.pretrain_helpers import synthetic_videos  # noqa: F401  (fixture)
from tests.pretrain_helpers import pretrain_argv, run_pretraining_cli, tiny_pretrain_model

METHOD_KW = dict(prompt_num_tokens=2, lora_rank=2, adapter_dim=8)


class _Recorder:
    """Stands in for the TensorBoard logger and keeps every per-step loss."""

    def __init__(self):
        self.losses = {}

    def scalars(self, head, step, **kwargs):
        if head == "loss":
            self.losses[step] = kwargs["loss"]


def _run(argv):
    args = run_mae_pretraining.get_args_parser().parse_args(argv)
    return run_mae_pretraining.main(args)


def test_loss_decreases_over_steps_on_synthetic_videos(synthetic_videos):
    torch.manual_seed(0)
    np.random.seed(0)
    args = run_mae_pretraining.get_args_parser().parse_args(
        pretrain_argv(synthetic_videos, "", "--mask_ratio", "0.75"))
    dataset = build_pretraining_dataset(PretrainDataConfig.from_args(args))
    videos, masks, _ = collate_pretrain([dataset[i] for i in range(8)])
    model = tiny_pretrain_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95),
                                  weight_decay=0.0)
    recorder = _Recorder()
    # 40 steps: the synthetic videos' flat backgrounds normalise to noise, which leaves less of
    # each clip to learn than the earlier gradient backgrounds did (0.94 after 20 steps).
    steps = 40
    backend = PlainBackend(model, optimizer, torch.device("cpu"), None, distributed=False)
    step_fn = engine_for_pretraining.reconstruction_step(16, 2)
    engine.train_one_epoch(backend, step_fn, [(videos, masks, [])] * steps, epoch=0,
                           lr_values=[3e-3] * steps, records=recorder, print_freq=100)
    losses = [recorder.losses[i] for i in range(steps)]
    assert all(np.isfinite(losses))
    # Normalised targets: predicting nothing costs ~1; the model must do clearly better.
    assert 0.8 < losses[0] < 1.3
    assert np.mean(losses[-5:]) < 0.85 * losses[0], losses
    assert max(losses[1:]) < losses[0], losses


def test_pretraining_writes_videomae_checkpoints_that_load_into_every_transfer_type(
        synthetic_videos, tmp_path):
    out = str(tmp_path / "run")
    result = _run(pretrain_argv(synthetic_videos, out, "--epochs", "2", "--save_ckpt_freq", "1",
                                "--lr", "1e-2"))
    names = sorted(os.listdir(out))
    assert {"checkpoint-0.pth", "checkpoint-1.pth", "checkpoint-last.pth", "log.txt",
            "args.json"} <= set(names)
    assert not [n for n in names if ".tmp" in n]
    records = [json.loads(line) for line in open(os.path.join(out, "log.txt"))]
    assert [r["epoch"] for r in records] == [0, 1] and [r["step"] for r in records] == [4, 8]
    assert all(np.isfinite(r["train_loss"]) and r["train_bad_videos"] == 0 for r in records)
    events = [f for f in os.listdir(os.path.join(out, "tb")) if f.startswith("events.out")]
    assert events, "no TensorBoard events written to --log_dir"

    path = os.path.join(out, "checkpoint-last.pth")
    assert result["checkpoint"] == path
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # plain types only
    assert ckpt["epoch"] == 1 and ckpt["step"] == 8 and ckpt["args"]["mask_ratio"] == 0.75
    sd = ckpt["model"]
    assert {"encoder.patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight",
            "encoder.blocks.0.attn.q_bias", "encoder.blocks.0.attn.v_bias",
            "encoder.norm.weight", "encoder_to_decoder.weight", "mask_token",
            "decoder.head.weight"} <= set(sd)
    assert set(sd) == set(tiny_pretrain_model().state_dict())

    for transfer_type in sorted(TRANSFER_TYPES):
        model = create_model("vit_micro_patch16", transfer_type=transfer_type, num_classes=3,
                             img_size=32, all_frames=4,
                             **its_settings(transfer_type, METHOD_KW))
        report = load_pretrained(model, path)
        assert report.format == "videomae-pretrain"
        own = model.state_dict()
        added = model.transfer.owned_names
        backbone = [k for k in own if k.startswith(("patch_embed.", "blocks.")) and k not in added]
        assert backbone and not [k for k in backbone if k in report.missing], transfer_type
        for k in backbone:
            torch.testing.assert_close(own[k], sd["encoder." + k], rtol=0, atol=0)
        assert "mask_token" in report.dropped and "encoder_to_decoder.weight" in report.dropped


def test_auto_resume_continues_exactly_like_an_uninterrupted_run(synthetic_videos, tmp_path):
    common = ("--epochs", "3", "--lr", "1e-2", "--save_ckpt_freq", "1", "--warmup_epochs", "1")
    straight = str(tmp_path / "straight")
    _run(pretrain_argv(synthetic_videos, straight, *common))
    # A run that stopped after epoch 1: its latest checkpoint is that of epoch 1.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(os.path.join(straight, "checkpoint-1.pth"), resumed / "checkpoint-last.pth")
    _run(pretrain_argv(synthetic_videos, str(resumed), *common))  # --auto_resume is the default

    records = [json.loads(line) for line in open(resumed / "log.txt")]
    assert [(r["epoch"], r["step"]) for r in records] == [(2, 12)]
    reference = [json.loads(line) for line in open(os.path.join(straight, "log.txt"))][2]
    assert records[0]["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-6)
    a = torch.load(os.path.join(straight, "checkpoint-last.pth"), weights_only=True)
    b = torch.load(resumed / "checkpoint-last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 12
    for k in a["model"]:  # same schedule step, optimizer state, clips and masks: same weights
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=0)


def test_cli_errors_name_the_flag_or_file(synthetic_videos, tmp_path, caplog):
    missing = str(tmp_path / "nowhere.csv")
    assert run_mae_pretraining.cli(pretrain_argv(missing, str(tmp_path / "a"))) == 2
    assert missing in caplog.text
    caplog.clear()
    argv = pretrain_argv(synthetic_videos, str(tmp_path / "b"), "--batch_size", "64")
    assert run_mae_pretraining.cli(argv) == 2
    assert "--batch_size" in caplog.text
    caplog.clear()
    argv = pretrain_argv(synthetic_videos, str(tmp_path / "c"), "--input_size", "40")
    assert run_mae_pretraining.cli(argv) == 2
    assert "--input_size" in caplog.text
    caplog.clear()
    other = str(tmp_path / "other.pth")  # a checkpoint of another architecture
    torch.save({"model": tiny_pretrain_model().state_dict(), "epoch": 0,
                "args": {"model": "pretrain_videomae_mini_patch16"}}, other)
    argv = pretrain_argv(synthetic_videos, str(tmp_path / "d"), "--resume", other)
    assert run_mae_pretraining.cli(argv) == 2
    assert "--model" in caplog.text and other in caplog.text


def test_torchrun_two_processes_pretrain_and_save_one_loadable_checkpoint(synthetic_videos,
                                                                         tmp_path):
    out = str(tmp_path / "ddp")
    # 16 videos, 2 per process: 4 steps per epoch, DistributedSampler shards, gloo all-reduce.
    argv = pretrain_argv(synthetic_videos, out, "--epochs", "2", "--batch_size", "2",
                         "--lr", "1e-2", "--cache_videos")
    run_pretraining_cli(argv, nproc=2, port=utils.free_port())
    records = [json.loads(line) for line in open(os.path.join(out, "log.txt"))]
    assert [(r["epoch"], r["step"]) for r in records] == [(0, 4), (1, 8)]  # rank 0 writes once
    assert all(np.isfinite(r["train_loss"]) for r in records)
    ckpt = torch.load(os.path.join(out, "checkpoint-last.pth"), weights_only=True)
    assert ckpt["args"]["world_size"] == 2
    assert not [k for k in ckpt["model"] if k.startswith("module.")]  # saved unwrapped
    model = create_model("vit_micro_patch16", num_classes=3, img_size=32, all_frames=4)
    report = load_pretrained(model, os.path.join(out, "checkpoint-last.pth"))
    assert not [k for k in report.missing if k.startswith(("blocks.", "patch_embed."))]
