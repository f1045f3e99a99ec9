"""``run_class_apt.py`` end to end on CPU: every transfer type trains, validates, tests and
evaluates its checkpoint again; resume is exact; errors name what is wrong."""
import glob
import json
import os
import shutil

import numpy as np
import pytest
import torch

import engine
import run_class_apt
from models import TRANSFER_TYPES
from tests.engine_helpers import NUM_TEST, final_record, read_log, run_main, tiny_argv


@pytest.mark.parametrize("transfer_type", sorted(TRANSFER_TYPES))
def test_every_transfer_type_trains_tests_and_evaluates_again(tmp_path, data, backbone,
                                                              transfer_type):
    out = str(tmp_path / "run")
    finetune = "" if transfer_type == "random" else backbone
    result = run_main(tiny_argv(data, out, transfer_type, finetune=finetune or None))
    records = read_log(out)
    epoch = [r for r in records if "epoch" in r]
    assert [r["epoch"] for r in epoch] == [0]
    assert {"train_loss", "train_lr", "val_acc1", "val_acc5", "train_bad_videos"} <= set(epoch[0])
    final = final_record(out)
    assert final["tested"] == "last" and final["test_videos"] == NUM_TEST
    assert 0.0 <= final["Final top-1"] <= final["Final top-5"] <= 100.0
    assert result["final"]["top1"] == final["Final top-1"]
    assert glob.glob(os.path.join(out, "events.out.tfevents.*"))
    for name in ("checkpoint-last.pth", "checkpoint-best.pth", "checkpoint-0.pth", "args.json",
                 "predictions_rank0.json"):
        assert os.path.exists(os.path.join(out, name)), name
    with open(os.path.join(out, "predictions_rank0.json")) as f:
        assert sum(1 for _ in f) == NUM_TEST
    ckpt = torch.load(os.path.join(out, "checkpoint-last.pth"), weights_only=True)
    assert ckpt["transfer_type"] == transfer_type and ckpt["epoch"] == 0
    if finetune:
        assert ckpt["backbone"]["sha256"] and ckpt["backbone"]["path"] == os.path.abspath(backbone)

    # --eval of checkpoint-last: the same numbers as the test at the end of training.
    run_main(tiny_argv(data, out, transfer_type, finetune=finetune or None, eval=True,
                       resume=os.path.join(out, "checkpoint-last.pth")))
    again = final_record(out)
    assert again["tested"] == "resume"
    assert again["Final top-1"] == final["Final top-1"]
    assert again["Final top-5"] == final["Final top-5"]


def test_eval_takes_network_and_backbone_from_the_checkpoint(tmp_path, data, backbone):
    out = str(tmp_path / "run")
    run_main(tiny_argv(data, out, "prompt", finetune=backbone, prompt_num_tokens=3))
    first = final_record(out)
    # Only data flags: the transfer type, prompt count and backbone come from the checkpoint.
    run_main(tiny_argv(data, out, "linear", prompt_num_tokens=7, prompt_reparam=None, eval=True))
    again = final_record(out)
    assert again["checkpoint"].endswith("checkpoint-last.pth")
    assert (again["Final top-1"], again["Final top-5"]) == (first["Final top-1"], first["Final top-5"])


def test_eval_warns_when_the_clip_differs_from_the_trained_one(tmp_path, data, backbone, caplog):
    """--eval tests with the command line's clip; one that differs from the run's is named."""
    out = str(tmp_path / "run")
    run_main(tiny_argv(data, out, "linear", finetune=backbone))
    last = os.path.join(out, "checkpoint-last.pth")
    caplog.clear()
    run_main(tiny_argv(data, str(tmp_path / "same"), "linear", eval=True, resume=last))
    assert "trained on other clips" not in caplog.text
    caplog.clear()
    run_main(tiny_argv(data, str(tmp_path / "other"), "linear", eval=True, resume=last,
                       sampling_rate=1))
    assert (f"--eval: {last} was trained on other clips; testing with --sampling_rate 1 "
            f"(trained with 2)") in caplog.text


def test_test_best_uses_the_best_validation_checkpoint(tmp_path, data, backbone):
    out = str(tmp_path / "run")
    run_main(tiny_argv(data, out, "linear", finetune=backbone, epochs=2, test_best=True))
    final = final_record(out)
    assert final["tested"] == "best"
    best = torch.load(os.path.join(out, "checkpoint-best.pth"), weights_only=True)
    epochs = [r for r in read_log(out) if "epoch" in r]
    assert best["best_acc"] == max(r["val_acc1"] for r in epochs)
    run_main(tiny_argv(data, str(tmp_path / "eval"), "linear", finetune=backbone, eval=True,
                       resume=os.path.join(out, "checkpoint-best.pth")))
    again = final_record(str(tmp_path / "eval"))
    assert (again["Final top-1"], again["Final top-5"]) == (final["Final top-1"], final["Final top-5"])


def _tb_scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    values = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for event in EventFileLoader(path).Load():
            for v in event.summary.value:
                if v.tag == tag:
                    values.setdefault(event.step, []).append(v.simple_value)
    return values


def test_resume_reaches_the_same_parameters_and_learning_rates(tmp_path, data, backbone,
                                                               monkeypatch):
    flags = dict(finetune=backbone, epochs=2, drop_path=0.1, is_aa=True,
                 aa="rand-m4-n2-mstd0.2-inc1", warmup_epochs=1, opt="adamw")
    full = str(tmp_path / "full")
    run_main(tiny_argv(data, full, "prompt", **flags))

    stopped = str(tmp_path / "stopped")
    real = engine.train_one_epoch

    def stop_at_epoch_1(*args, **kwargs):
        if args[3] == 1:  # the epoch argument
            raise KeyboardInterrupt("stopped after epoch 0")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", stop_at_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        run_main(tiny_argv(data, stopped, "prompt", **flags))
    assert [r["epoch"] for r in read_log(stopped)] == [0]
    monkeypatch.setattr(engine, "train_one_epoch", real)
    run_main(tiny_argv(data, stopped, "prompt", **flags))  # auto-resumes from checkpoint-last

    assert [r["epoch"] for r in read_log(stopped) if "epoch" in r] == [0, 1]
    a = torch.load(os.path.join(full, "checkpoint-last.pth"), weights_only=True)
    b = torch.load(os.path.join(stopped, "checkpoint-last.pth"), weights_only=True)
    assert a["step"] == b["step"] == 8
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    lr_full = _tb_scalars(full, "opt/lr")
    lr_resumed = _tb_scalars(stopped, "opt/lr")
    assert sorted(lr_full) == sorted(lr_resumed) == list(range(8))
    assert {k: v[-1] for k, v in lr_full.items()} == {k: v[-1] for k, v in lr_resumed.items()}
    assert final_record(full)["Final top-1"] == final_record(stopped)["Final top-1"]


def test_prompt_checkpoint_is_under_one_percent_of_end2end(tmp_path, data):
    sizes = {}
    for t in ("prompt", "end2end"):
        out = str(tmp_path / t)
        run_main(tiny_argv(data, out, t, model="vit_mini_patch16", disable_eval_during_finetuning=True))
        sizes[t] = os.path.getsize(os.path.join(out, "checkpoint-last.pth"))
    assert sizes["prompt"] < 0.01 * sizes["end2end"], sizes


def test_options_run_together(tmp_path, data, backbone):
    """EMA, accumulation, layer decay, clipping, bf16 autocast on CPU, mixup/cutmix, SGD."""
    out = str(tmp_path / "run")
    run_main(tiny_argv(data, out, "adapter", finetune=backbone, model_ema=True,
                       model_ema_decay=0.9, update_freq=2, layer_decay=0.75, clip_grad=1.0,
                       amp=True, mixup=0.8, cutmix=1.0, opt="sgd", weight_decay_end=1e-4))
    ckpt = torch.load(os.path.join(out, "checkpoint-last.pth"), weights_only=True)
    assert ckpt["model_ema"] is not None and ckpt["model_ema"].keys() == ckpt["model"].keys()
    assert ckpt["step"] == 2  # 9 videos -> 4 batches of 2 -> 2 steps of 2 micro-batches
    assert final_record(out)["test_videos"] == NUM_TEST


def test_bad_videos_are_counted_and_left_out(tmp_path, data):
    copy = str(tmp_path / "data")
    shutil.copytree(data, copy)
    first_train = open(os.path.join(copy, "train.csv")).readline().split()[0]
    first_test = open(os.path.join(copy, "test.csv")).readline().split()[0]
    for rel in (first_train, first_test):
        with open(os.path.join(copy, rel), "wb") as f:
            f.write(b"not a video")
    out = str(tmp_path / "run")
    run_main(tiny_argv(copy, out, "linear", max_bad_fraction=0.5))
    epoch = [r for r in read_log(out) if "epoch" in r][0]
    assert epoch["train_bad_videos"] == 1
    final = final_record(out)
    assert final["test_bad_videos"] == 1 and final["test_videos"] == NUM_TEST - 1


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path, data, monkeypatch):
    real = engine.build_criterion

    def nan_on_third_step(smoothing, mixup_active):
        base = real(smoothing, mixup_active)
        calls = []

        def criterion(output, target):
            calls.append(1)
            loss = base(output, target)
            return loss * float("nan") if len(calls) == 3 else loss
        return criterion

    monkeypatch.setattr(engine, "build_criterion", nan_on_third_step)
    with pytest.raises(engine.NonFiniteLossError, match=r"global step 2\b"):
        run_main(tiny_argv(data, str(tmp_path / "run"), "linear"))


def test_a_checkpoint_naming_apt_by_its_former_name_evaluates_and_resumes(tmp_path, data,
                                                                          backbone, caplog):
    """Old runs saved ``transfer_type: "prompt"`` (APT's former name) in their checkpoints and
    flags: ``--eval`` reads them as ``apt`` (same numbers, no warning of a changed type), and
    training resumes from them, saving the registered name."""
    out = str(tmp_path / "run")
    run_main(tiny_argv(data, out, "apt", finetune=backbone, disable_eval_during_finetuning=True))
    first = final_record(out)
    last = os.path.join(out, "checkpoint-last.pth")
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["transfer_type"] == "apt" == ckpt["args"]["transfer_type"]
    ckpt["transfer_type"] = ckpt["args"]["transfer_type"] = "prompt"
    torch.save(ckpt, last)
    with caplog.at_level("WARNING"):
        run_main(tiny_argv(data, str(tmp_path / "eval"), "apt", eval=True, resume=last))
    assert "--transfer_type" not in caplog.text
    again = final_record(str(tmp_path / "eval"))
    assert (again["Final top-1"], again["Final top-5"]) == \
        (first["Final top-1"], first["Final top-5"])
    run_main(tiny_argv(data, out, "prompt", finetune=backbone, epochs=2,
                       disable_eval_during_finetuning=True))  # auto-resumes from checkpoint-last
    assert [r["epoch"] for r in read_log(out) if "epoch" in r] == [0, 1]
    assert torch.load(last, weights_only=True)["transfer_type"] == "apt"


def test_eval_without_a_checkpoint_is_an_error(tmp_path, data):
    out = str(tmp_path / "empty")
    with pytest.raises(run_class_apt.ConfigError, match="--eval needs a trained checkpoint"):
        run_main(tiny_argv(data, out, "prompt", eval=True))
    assert run_class_apt.cli(tiny_argv(data, out, "prompt", eval=True)) == 2
    assert not os.path.exists(os.path.join(out, "log.txt"))  # nothing was evaluated
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        run_main(tiny_argv(data, out, "prompt", eval=True, resume=str(tmp_path / "nowhere.pth")))


def test_missing_data_path_or_list_file_names_the_path(tmp_path, data):
    out = str(tmp_path / "run")
    argv = tiny_argv(data, out)
    i = argv.index("--data_path")
    with pytest.raises(run_class_apt.ConfigError, match="--data_path"):
        run_main(argv[:i] + argv[i + 2:])
    missing = str(tmp_path / "no_such_folder")
    with pytest.raises(FileNotFoundError, match=missing):
        run_main(tiny_argv(missing, out))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(os.path.join(data, "train.csv"), partial / "train.csv")
    with pytest.raises(FileNotFoundError, match=str(partial / "val.csv")):
        run_main(tiny_argv(str(partial), out))
    assert run_class_apt.cli(tiny_argv(missing, out)) == 2


def test_bad_transfer_flag_fails_before_reading_data(tmp_path):
    with pytest.raises(ValueError, match="--prompt_end"):
        run_main(tiny_argv(str(tmp_path / "no_data"), str(tmp_path / "run"), prompt_end=5))


def test_flops_prints_one_json_line_without_data(tmp_path, capsys):
    report = run_main(tiny_argv(str(tmp_path / "no_data"), str(tmp_path / "run"), flops=True))
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    assert len(lines) == 1 and json.loads(lines[0]) == report
    assert report["trainable_params"] < report["params"] and report["gflops"] > 0
    assert report["settings"] == {"prompt_num_tokens": 2, "prompt_dropout": 0.1,
                                  "prompt_reparam": True, "prompt_per_head": False,
                                  "prompt_start": None, "prompt_end": None}


def test_ema_weights_are_validated_and_tested(tmp_path, data, backbone):
    """--model_ema: every validation and the final test also run on the EMA weights, and those
    numbers are the EMA's: ``--eval`` of a checkpoint holding the EMA tensors as its model
    predicts exactly what the run's EMA test wrote."""
    out = str(tmp_path / "run")
    run_main(tiny_argv(data, out, "prompt", finetune=backbone, model_ema=True,
                       model_ema_decay=0.5, epochs=2, lr=0.5))
    epochs = [r for r in read_log(out) if "epoch" in r]
    assert [("val_ema_acc1" in r, "val_acc1" in r) for r in epochs] == [(True, True)] * 2
    ema_final = [r for r in read_log(out) if "Final EMA top-1" in r]
    assert len(ema_final) == 1 and ema_final[0]["tested"] == "ema"
    ema_preds = engine.read_predictions(os.path.join(out, "predictions_ema_rank0.json"))
    last_preds = engine.read_predictions(os.path.join(out, "predictions_rank0.json"))

    ckpt = torch.load(os.path.join(out, "checkpoint-last.pth"), weights_only=True)
    assert any(not torch.equal(ckpt["model"][k], ckpt["model_ema"][k]) for k in ckpt["model"])
    ckpt["model"] = ckpt["model_ema"]
    swapped = os.path.join(str(tmp_path), "ema_as_model.pth")
    torch.save(ckpt, swapped)
    again = str(tmp_path / "eval")
    run_main(tiny_argv(data, again, "prompt", finetune=backbone, eval=True, resume=swapped))
    eval_preds = engine.read_predictions(os.path.join(again, "predictions_rank0.json"))
    for a, b in zip(sorted(ema_preds, key=lambda p: p["index"]),
                    sorted(eval_preds, key=lambda p: p["index"])):
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a["scores"], b["scores"], atol=1e-6)
               for a, b in zip(sorted(ema_preds, key=lambda p: p["index"]),
                               sorted(last_preds, key=lambda p: p["index"])))
