"""Damaged and mistaken checkpoint files: auto-resume falls back to the newest readable
checkpoint, and a file that is no checkpoint at all is described (size, first bytes, what it is)
instead of answered with advice to unpickle it."""
import io
import logging
import random
import os
import zipfile

import pytest
import torch

import run_class_apt
import pretraining
import run_mae_pretraining
from engine_checkpoints import TrainingCheckpoints
from models import CheckpointError, create_model, load_pretrained, read_checkpoint, torch_load
from models.run_checkpoints import load_newest_readable
from models.serialization import DS_MODEL_FILE
from utils.backend import PlainBackend
from utils.config import PretrainConfig
from tests.engine_helpers import read_log, tiny_argv
from tests.helpers import tiny_model
from tests.pretrain_helpers import tiny_pretrain_model

HTML = (b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
        b"<body>Google Drive can't scan this file for viruses.</body></html>\n")


def _micro(transfer_type: str = "linear"):
    return create_model("vit_micro_patch16", transfer_type=transfer_type, num_classes=3,
                        all_frames=4, img_size=32)


def _backend(model, optimizer=None) -> PlainBackend:
    optimizer = optimizer or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    return PlainBackend(model, optimizer, torch.device("cpu"), None, distributed=False)


def _resume(out, model, resume="", optimizer=None):
    """Resume ``model`` as a training run does (auto-resume on); returns the metadata."""
    return TrainingCheckpoints(str(out), {}).resume(resume, True, _backend(model, optimizer))


def _garbage(n: int) -> bytes:
    """``n`` fixed pseudo-random bytes (seeded: a random first byte of 0x80 or b"P" would look
    like the start of a pickle or a zip 1 time in 128 and change the diagnosis)."""
    return random.Random(n).randbytes(n)


def _damage(path: str, how: str) -> None:
    """Replace a good file by its first half, or by as many random bytes."""
    data = open(path, "rb").read()
    damaged = data[:len(data) // 2] if how == "truncated" else _garbage(len(data))
    with open(path, "wb") as f:
        f.write(damaged)


def _two_checkpoints(out, transfer_type: str = "linear"):
    """checkpoint-1.pth (epoch 1) and checkpoint-last.pth (epoch 2) of another model state."""
    model = _micro(transfer_type)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    TrainingCheckpoints(str(out), {}).save("1", 1, 4, _backend(model, optimizer))
    epoch1 = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.head.weight.add_(1.0)
    TrainingCheckpoints(str(out), {}).save("last", 2, 8, _backend(model, optimizer))
    return epoch1


# --------------------------------------------------------------------- auto-resume fallback
@pytest.mark.parametrize("transfer_type", ["linear", "end2end"])  # files under/over 64 KiB
@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_auto_resume_skips_an_unreadable_checkpoint_last(tmp_path, caplog, how, transfer_type):
    epoch1 = _two_checkpoints(tmp_path, transfer_type)
    last = os.path.join(tmp_path, "checkpoint-last.pth")
    _damage(last, how)

    model = _micro(transfer_type)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    with caplog.at_level(logging.WARNING):
        meta = _resume(tmp_path, model, optimizer=optimizer)

    first = os.path.join(tmp_path, "checkpoint-1.pth")
    assert meta["epoch"] == 1 and meta["step"] == 4  # training continues at epoch 2
    assert meta["source"] == first
    torch.testing.assert_close(model.head.weight, epoch1["head.weight"], rtol=0, atol=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    why = "truncated or corrupt" if how == "truncated" else "not a PyTorch checkpoint"
    assert last in warnings[0] and first in warnings[0] and why in warnings[0]


def test_each_candidate_is_read_once(tmp_path, monkeypatch):
    _two_checkpoints(tmp_path)
    _damage(os.path.join(tmp_path, "checkpoint-last.pth"), "truncated")
    import models.run_checkpoints
    reads = []
    real = models.run_checkpoints.torch_load

    def counting(path, unsafe=False):
        reads.append(os.path.basename(path))
        return real(path, unsafe=unsafe)

    monkeypatch.setattr(models.run_checkpoints, "torch_load", counting)
    _resume(tmp_path, _micro())
    assert reads == ["checkpoint-last.pth", "checkpoint-1.pth"]


def test_newest_readable_in_order_with_deepspeed_folders(tmp_path, caplog):
    """checkpoint-last (a DeepSpeed folder here), then checkpoint-N by descending N."""
    good = {"model": {"w": torch.ones(2)}, "epoch": 2}
    ds_last = tmp_path / "checkpoint-last"
    ds_last.mkdir()
    (ds_last / DS_MODEL_FILE).write_bytes(b"")
    (tmp_path / "checkpoint-3.pth").write_bytes(HTML)
    torch.save(good, tmp_path / "checkpoint-2.pth")
    torch.save({**good, "epoch": 1}, tmp_path / "checkpoint-1.pth")
    with caplog.at_level(logging.WARNING):
        path, ckpt = load_newest_readable(str(tmp_path), read_checkpoint)
    assert path == str(tmp_path / "checkpoint-2.pth") and ckpt["epoch"] == 2
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(ds_last / DS_MODEL_FILE) in message and "empty file" in message
    assert str(tmp_path / "checkpoint-3.pth") in message and "HTML page" in message
    assert str(tmp_path / "checkpoint-2.pth") in message
    assert load_newest_readable(str(tmp_path / "nothing_here"), read_checkpoint) is None


def test_no_readable_checkpoint_is_an_error_listing_the_files(tmp_path):
    _two_checkpoints(tmp_path)
    for name in ("checkpoint-last.pth", "checkpoint-1.pth"):
        _damage(os.path.join(tmp_path, name), "truncated")
    with pytest.raises(CheckpointError) as err:
        _resume(tmp_path, _micro())
    msg = str(err.value)
    assert "no readable checkpoint" in msg and str(tmp_path) in msg
    assert "checkpoint-last.pth" in msg and "checkpoint-1.pth" in msg
    assert "truncated or corrupt" in msg and "unsafe_load" not in msg


def test_explicit_resume_of_an_unreadable_file_fails_naming_it(tmp_path, caplog):
    _two_checkpoints(tmp_path)
    last = os.path.join(tmp_path, "checkpoint-last.pth")
    _damage(last, "truncated")
    with pytest.raises(CheckpointError) as err:
        _resume(tmp_path, _micro(), resume=last)
    assert f"--resume {last}" in str(err.value) and "truncated or corrupt" in str(err.value)
    # No fallback to checkpoint-1 was offered (its "saved" INFO line, captured when an earlier
    # test of the same process left the root logger at INFO, is not one).
    assert not [r for r in caplog.records
                if r.levelno >= logging.WARNING and "checkpoint-1.pth" in r.getMessage()]


def test_pretraining_resume_skips_an_unreadable_checkpoint_last(tmp_path, caplog):
    model = tiny_pretrain_model()
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1,
                "step": 3}, tmp_path / "checkpoint-1.pth")
    (tmp_path / "checkpoint-last.pth").write_bytes(b"")
    args = run_mae_pretraining.get_args_parser().parse_args(
        ["--model", "pretrain_videomae_micro_patch16"])
    check = pretraining.resume_check(PretrainConfig.from_args(args).model)
    with caplog.at_level(logging.WARNING):
        ckpt = TrainingCheckpoints(str(tmp_path), {}, check_resumed=check).resume(
            "", True, _backend(tiny_pretrain_model()))
    assert ckpt["epoch"] == 1  # training continues at epoch 2
    assert any("checkpoint-last.pth" in r.getMessage() and "checkpoint-1.pth" in r.getMessage()
               and "empty file" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ files that are no checkpoint
def _real_checkpoint_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"model": tiny_model().state_dict()}, buf)
    return buf.getvalue()


def _legacy_checkpoint_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _not_a_zip_of_torch() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hello")
    return buf.getvalue()


def _damaged_pickle() -> bytes:
    """A complete archive whose data.pkl names a class that does not exist (one byte changed):
    the weights_only unpickler refuses it like a custom class, the CRC tells it apart."""
    data = _real_checkpoint_bytes()
    assert data.count(b"collections\nOrderedDict") == 1
    return data.replace(b"collections\nOrderedDict", b"collectionz\nOrderedDict")


NOT_CHECKPOINTS = {
    "html": (lambda: HTML, "an HTML page, not a PyTorch checkpoint (a failed download?)"),
    "empty": (lambda: b"", "empty file"),
    "truncated": (lambda: _real_checkpoint_bytes()[:300_000],
                  "truncated or corrupt PyTorch checkpoint (zip archive incomplete)"),
    "truncated_small": (lambda: _real_checkpoint_bytes()[:20_000],
                        "truncated or corrupt PyTorch checkpoint (zip archive incomplete)"),
    "random": (lambda: _garbage(4096), "not a PyTorch checkpoint"),
    "other_zip": (_not_a_zip_of_torch, "a zip archive, not a PyTorch checkpoint"),
    "legacy_truncated": (lambda: _legacy_checkpoint_bytes({"w": torch.ones(3)})[:60],
                         "truncated or corrupt PyTorch checkpoint (legacy pickle incomplete)"),
    "damaged_pickle": (_damaged_pickle,
                       "corrupt PyTorch checkpoint (data.pkl damaged)"),
    "git_lfs_pointer": (lambda: b"version https://git-lfs.github.com/spec/v1\noid sha256:"
                                b"4d7a2146\nsize 377564241\n", "a Git LFS pointer"),
}


@pytest.mark.parametrize("unsafe", [False, True])
@pytest.mark.parametrize("kind", sorted(NOT_CHECKPOINTS))
def test_a_file_that_is_no_checkpoint_is_described(tmp_path, kind, unsafe):
    make, diagnosis = NOT_CHECKPOINTS[kind]
    data = make()
    path = tmp_path / "vit_b_k400_pretrain.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tiny_model(), str(path), unsafe=unsafe)
    msg = str(err.value)
    assert str(path) in msg and diagnosis in msg
    assert f"{len(data):,} bytes" in msg
    assert "unsafe_load" not in msg and "unsafe=True" not in msg
    if data:
        assert repr(data[:16])[:-1] in msg  # the first bytes, printable


def test_html_message_shows_the_page_start(tmp_path):
    path = tmp_path / "download.pth"
    path.write_bytes(HTML)
    with pytest.raises(CheckpointError, match=r"starting b'<!DOCTYPE html><html><head>"):
        torch_load(str(path))


class NotAllowListed:
    pass


@pytest.mark.parametrize("legacy", [False, True])
def test_a_checkpoint_with_a_custom_class_still_names_unsafe_load(tmp_path, legacy):
    obj = {"model": {"w": torch.ones(2)}, "extra": NotAllowListed()}
    path = tmp_path / "custom.pth"
    if legacy:
        path.write_bytes(_legacy_checkpoint_bytes(obj))
    else:
        torch.save(obj, path)
    with pytest.raises(CheckpointError, match="--unsafe_load"):
        torch_load(str(path))
    assert isinstance(torch_load(str(path), unsafe=True)["extra"], NotAllowListed)


# ------------------------------------------------------------------------ the CLI end to end
def test_cli_auto_resumes_past_a_truncated_checkpoint_last(tmp_path, data, caplog):
    out = str(tmp_path / "run")
    assert run_class_apt.cli(tiny_argv(data, out, "linear", epochs=1,
                                       disable_eval_during_finetuning=True)) == 0
    last, first = os.path.join(out, "checkpoint-last.pth"), os.path.join(out, "checkpoint-0.pth")
    _damage(last, "truncated")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert run_class_apt.cli(tiny_argv(data, out, "linear", epochs=2,
                                           disable_eval_during_finetuning=True)) == 0
    assert any(last in r.getMessage() and first in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)
    assert [r["epoch"] for r in read_log(out) if "epoch" in r] == [0, 1]
    assert read_checkpoint(last)["epoch"] == 1

    # Nothing readable left: exit status 2 with a message listing the files tried.
    for name in ("checkpoint-last.pth", "checkpoint-0.pth", "checkpoint-1.pth"):
        _damage(os.path.join(out, name), "garbage")
    caplog.clear()
    assert run_class_apt.cli(tiny_argv(data, out, "linear", epochs=3)) == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "no readable checkpoint" in error and "checkpoint-0.pth" in error


def test_cli_finetune_html_page_exits_2_with_the_diagnosis(tmp_path, data, caplog):
    page = tmp_path / "videomae_vit_b.pth"
    page.write_bytes(HTML)
    with caplog.at_level(logging.ERROR):
        status = run_class_apt.cli(tiny_argv(data, str(tmp_path / "run"), "linear",
                                             finetune=str(page)))
    assert status == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "an HTML page, not a PyTorch checkpoint (a failed download?)" in error
    assert str(page) in error and f"{len(HTML):,} bytes" in error and "unsafe_load" not in error
