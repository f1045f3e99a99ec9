"""Fault injection, flags and checkpoint mismatches: each bad input is run through the real
command line and must end with exit status 2 and one line naming the flag (and file), before any
data or model is loaded, with every good file left as it was."""
import hashlib
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

import run_class_apt
import run_mae_pretraining
from tests.engine_helpers import (ROOT, SYNTH, read_log, subprocess_env, tiny_argv,
                                  write_tiny_backbone)
from tests.pretrain_helpers import pretrain_argv, synthetic_videos  # noqa: F401  (fixture)


# --------------------------------------------------------------------------------- helpers
def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _checkpoints(folder: str) -> dict:
    """sha256 of each checkpoint file in ``folder`` (what a refused run must leave as it was;
    args.json and TensorBoard files are rewritten by every start, as before)."""
    return {n: _digest(os.path.join(folder, n)) for n in sorted(os.listdir(folder))
            if n.startswith("checkpoint")}


def _error(caplog) -> str:
    """The one ERROR record of a refused run; it is one line."""
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "\n" not in error
    return error


def _refused(cli, argv, caplog) -> str:
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert cli(argv) == 2
    return _error(caplog)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data, backbone):
    """A finished 1-epoch linear run (AdamW, 3 classes): its output folder, never modified."""
    out = str(tmp_path_factory.mktemp("trained") / "run")
    assert run_class_apt.cli(tiny_argv(data, out, "linear", finetune=backbone,
                                       disable_eval_during_finetuning=True)) == 0
    return out


def _copy(trained: str, tmp_path) -> str:
    out = str(tmp_path / "run")
    shutil.copytree(trained, out)
    return out


@pytest.fixture
def nothing_built(monkeypatch):
    """Fails the test if a model or a data set is built."""
    import datasets
    import finetuning
    import pretraining

    def refuse(*args, **kwargs):
        raise AssertionError("a model or data set was built before the flags were checked")
    # the scripts' run modules (imported by their main once the flags are parsed) build them
    monkeypatch.setattr(finetuning, "build_model", refuse)
    monkeypatch.setattr(pretraining, "build_model", refuse)
    monkeypatch.setattr(datasets, "build_dataset", refuse)


# ------------------------------------------------------------------------- flags up front
FINETUNE_BAD = [("epochs", -1), ("batch_size", 0), ("batch_size_val", 0), ("update_freq", 0),
                ("save_ckpt_freq", 0), ("num_frames", 0), ("sampling_rate", 0),
                ("test_num_segment", 0), ("test_num_crop", 0), ("num_sample", 0),
                ("input_size", 0), ("warmup_epochs", -1), ("num_workers", -1), ("lr", 0),
                ("lr", -0.1), ("lr", "nan"), ("start_epoch", -1), ("dist_timeout", 0)]


@pytest.mark.parametrize("flag,value", FINETUNE_BAD)
def test_finetune_bad_flag_is_refused_before_anything_is_loaded(tmp_path, caplog, nothing_built,
                                                                flag, value):
    out = str(tmp_path / "run")
    argv = tiny_argv(str(tmp_path / "no_such_data"), out, "linear", **{flag: value})
    error = _refused(run_class_apt.cli, argv, caplog)
    assert f"--{flag}" in error and str(value) in error
    assert not os.path.exists(out)  # not even the output folder was made


PRETRAIN_BAD = [("epochs", 0), ("batch_size", 0), ("save_ckpt_freq", 0), ("num_frames", 0),
                ("sampling_rate", 0), ("input_size", 0), ("warmup_epochs", -1),
                ("num_workers", -1), ("lr", 0), ("probe_freq", 0)]


@pytest.mark.parametrize("flag,value", PRETRAIN_BAD)
def test_pretrain_bad_flag_is_refused_before_anything_is_loaded(tmp_path, caplog, nothing_built,
                                                                flag, value):
    out = str(tmp_path / "run")
    argv = pretrain_argv(str(tmp_path / "no_such_data"), out, f"--{flag}", str(value))
    error = _refused(run_mae_pretraining.cli, argv, caplog)
    assert f"--{flag}" in error and str(value) in error
    assert not os.path.exists(out)


def test_epochs_0_trains_nothing_so_it_needs_eval(tmp_path, caplog, nothing_built):
    error = _refused(run_class_apt.cli, tiny_argv(str(tmp_path / "none"), str(tmp_path / "run"),
                                                  "linear", epochs=0), caplog)
    assert "--epochs 0" in error and "--eval" in error


def test_epochs_0_with_eval_tests_the_checkpoint(tmp_path, data, trained):
    out = str(tmp_path / "eval")
    ckpt = os.path.join(trained, "checkpoint-last.pth")
    assert run_class_apt.cli(tiny_argv(data, out, "linear", epochs=0, eval=True,
                                       resume=ckpt)) == 0
    (final,) = [r for r in read_log(out) if "Final top-1" in r]
    assert final["tested"] == "resume" and final["checkpoint"] == ckpt


def test_bad_flag_exit_status_of_the_real_process(tmp_path):
    out = str(tmp_path / "run")
    argv = tiny_argv(str(tmp_path / "no_such_data"), out, "linear", update_freq=0)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "run_class_apt.py"), *argv],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "--update_freq must be >= 1, got 0" in errors[0]
    assert "Traceback" not in proc.stderr and not os.path.exists(out)


# ------------------------------------------------------------------------------ divergence
def test_a_diverging_lr_stops_naming_lr_and_keeps_the_checkpoints(tmp_path, data, backbone,
                                                                  trained, caplog):
    out = _copy(trained, tmp_path)
    before = _checkpoints(out)
    # Resumes after epoch 0; the second epoch blows up within a few steps (loss ~1e13).
    error = _refused(run_class_apt.cli, tiny_argv(data, out, "linear", finetune=backbone,
                                                  epochs=2, lr=1e9,
                                                  disable_eval_during_finetuning=True), caplog)
    assert "NonFiniteLossError" in error and "diverged" in error and "--lr" in error
    assert "learning rate" in error and "global step" in error
    assert _checkpoints(out) == before  # checkpoint-last and -0 unchanged, no checkpoint-1


def test_a_diverging_pretraining_stops_naming_lr(tmp_path, synthetic_videos, caplog):
    out = str(tmp_path / "pretrain")
    error = _refused(run_mae_pretraining.cli, pretrain_argv(synthetic_videos, out, "--epochs", "1",
                                                            "--lr", "1e9"), caplog)
    assert "NonFiniteLossError" in error and "diverged" in error and "--lr" in error
    assert not [n for n in os.listdir(out) if n.startswith("checkpoint")]


def test_a_healthy_run_never_reaches_the_divergence_bound(trained):
    import engine
    losses = [r["train_loss"] for r in read_log(trained) if "train_loss" in r]
    assert losses and max(losses) < engine.DIVERGED_LOSS / 1000


# ------------------------------------------------------------------- against the checkpoint
def test_eval_with_another_class_count_names_both_and_the_file(tmp_path, data, trained, caplog):
    ckpt = os.path.join(trained, "checkpoint-last.pth")
    before = _digest(ckpt)
    error = _refused(run_class_apt.cli, tiny_argv(data, str(tmp_path / "eval"), "linear",
                                                  eval=True, resume=ckpt, nb_classes=5), caplog)
    assert "--nb_classes 5" in error and "3-class head" in error and ckpt in error
    assert "--nb_classes 3" in error
    assert _digest(ckpt) == before


@pytest.fixture(scope="module")
def five_classes(tmp_path_factory):
    """A 5-class variant of the synthetic data set (a new task in the same folder)."""
    from datasets.synthetic import make_synthetic_dataset
    folder = str(tmp_path_factory.mktemp("five"))
    make_synthetic_dataset(folder, **{**SYNTH, "num_classes": 5, "videos_per_class": 4,
                                      "splits": {"train": 2, "val": 1, "test": 1}})
    return folder


def test_resume_with_another_class_count_names_both_and_the_file(tmp_path, five_classes,
                                                                 backbone, trained, caplog):
    out = _copy(trained, tmp_path)
    before = _checkpoints(out)
    error = _refused(run_class_apt.cli, tiny_argv(five_classes, out, "linear", finetune=backbone,
                                                  epochs=2, nb_classes=5,
                                                  disable_eval_during_finetuning=True), caplog)
    assert "--nb_classes 5" in error and "3-class head" in error
    assert os.path.join(out, "checkpoint-last.pth") in error
    assert _checkpoints(out) == before


def test_finetune_of_another_class_count_still_drops_the_head(tmp_path, five_classes, trained):
    # A fine-tuned 3-class file as --finetune of a 5-class task: a new task, the head is new.
    out = str(tmp_path / "new_task")
    assert run_class_apt.cli(tiny_argv(five_classes, out, "linear", nb_classes=5,
                                       finetune=os.path.join(trained, "checkpoint-last.pth"),
                                       disable_eval_during_finetuning=True)) == 0
    assert torch.load(os.path.join(out, "checkpoint-last.pth"),
                      weights_only=True)["model"]["head.weight"].shape[0] == 5


def test_resume_with_another_optimizer_is_refused_then_reset_on_request(tmp_path, data,
                                                                        backbone, trained,
                                                                        caplog):
    out = _copy(trained, tmp_path)
    before = _checkpoints(out)
    argv = tiny_argv(data, out, "linear", finetune=backbone, epochs=2, opt="sgd",
                     disable_eval_during_finetuning=True)
    error = _refused(run_class_apt.cli, argv, caplog)
    last = os.path.join(out, "checkpoint-last.pth")
    assert "--opt sgd" in error and "--opt adamw" in error and last in error
    assert "--reset_optimizer" in error
    assert _checkpoints(out) == before

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert run_class_apt.cli(argv + ["--reset_optimizer"]) == 0
    assert any("--reset_optimizer" in r.getMessage() and last in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    assert [r["epoch"] for r in read_log(out) if "epoch" in r] == [0, 1]  # resumed, not restarted
    resumed = torch.load(last, weights_only=True)
    assert resumed["epoch"] == 1 and resumed["args"]["opt"] == "sgd"
    assert "momentum_buffer" in next(iter(resumed["optimizer"]["state"].values()))


def test_resume_of_an_apt_run_with_undecayed_prompts_names_the_switch(tmp_path, data, backbone,
                                                                      caplog):
    """Runs saved before APT's prompts took weight decay by default have other weight-decay
    groups: resuming one under the new default is refused naming --no_decay_prompts, and
    resumes with it."""
    out = str(tmp_path / "run")
    argv = tiny_argv(data, out, "prompt", finetune=backbone, disable_eval_during_finetuning=True)
    assert run_class_apt.cli(argv + ["--no_decay_prompts"]) == 0
    before = _checkpoints(out)
    again = tiny_argv(data, out, "prompt", finetune=backbone, epochs=2,
                      disable_eval_during_finetuning=True)
    error = _refused(run_class_apt.cli, again, caplog)
    assert os.path.join(out, "checkpoint-last.pth") in error
    assert "decay_prompts=False" in error and "pass --no_decay_prompts" in error
    assert _checkpoints(out) == before
    assert run_class_apt.cli(again + ["--no_decay_prompts"]) == 0
    assert [r["epoch"] for r in read_log(out) if "epoch" in r] == [0, 1]


def test_resume_into_another_transfer_type_names_the_file(tmp_path, data, backbone, trained,
                                                          caplog):
    out = _copy(trained, tmp_path)
    before = _checkpoints(out)
    error = _refused(run_class_apt.cli, tiny_argv(data, out, "prompt", finetune=backbone, epochs=2,
                                                  disable_eval_during_finetuning=True), caplog)
    assert os.path.join(out, "checkpoint-last.pth") in error and "<checkpoint>" not in error
    assert "'linear' model" in error and "--transfer_type apt" in error
    assert _checkpoints(out) == before


def test_finetune_file_without_weights_names_file_keys_and_flags(tmp_path, data, caplog):
    source = write_tiny_backbone(str(tmp_path))
    weights = torch.load(source, weights_only=True)["model"]
    bad = str(tmp_path / "renamed.pth")
    torch.save({"state": weights, "epoch": 10}, bad)  # the weights under an unknown key
    before = _digest(bad)
    error = _refused(run_class_apt.cli, tiny_argv(data, str(tmp_path / "run"), "linear",
                                                  finetune=bad), caplog)
    assert bad in error and "--finetune" in error and "--model_key" in error
    assert "['epoch', 'state']" in error
    assert _digest(bad) == before
    # ... and --model_key naming that entry loads it.
    assert run_class_apt.cli(tiny_argv(data, str(tmp_path / "run2"), "linear", finetune=bad,
                                       model_key="state", disable_eval_during_finetuning=True)) == 0
