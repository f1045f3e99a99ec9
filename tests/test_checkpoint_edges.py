"""Damaged and mistaken checkpoint files: a file that is no checkpoint at all is described
(size, first bytes, what it is) instead of answered with advice to unpickle it."""
import io
import logging
import os
import zipfile

import pytest
import torch

import run_class_apt
from models import CheckpointError, load_pretrained, torch_load
from tests.engine_helpers import make_data, tiny_argv
from tests.helpers import tiny_model

HTML = (b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
        b"<body>Google Drive can't scan this file for viruses.</body></html>\n")


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
    "random": (lambda: os.urandom(4096), "not a PyTorch checkpoint"),
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
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(str(tmp_path_factory.mktemp("synthetic")))


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
