"""Reading a checkpoint file safely, whatever its format.

``torch.load`` runs with ``weights_only=True``; the only non-tensor classes VideoMAE files hold
(``argparse.Namespace`` and plain containers) are allow-listed. Anything else is refused with a
message naming ``--unsafe_load``, which permits full unpickling of a file the user trusts. A file
that is no complete PyTorch checkpoint (an HTML page from a failed download, an empty or
truncated file) is described instead: its size, first bytes and what it seems to be.

The formats themselves (VideoMAE, Hugging Face, the original APT code) are read by
:mod:`models.pretrained`; this project's run checkpoints by :mod:`models.run_checkpoints`.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import pickletools
import zipfile
from typing import Any, Optional

import torch

logger = logging.getLogger(__name__)

# Classes that VideoMAE / APT / DeepSpeed checkpoints pickle besides tensors and builtins.
SAFE_GLOBALS = [argparse.Namespace]

# The file of a DeepSpeed checkpoint folder that holds the model (``module``) and client state.
DS_MODEL_FILE = "mp_rank_00_model_states.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into the model; the message names the file and keys."""


class UnreadableCheckpointError(CheckpointError):
    """A file ``torch.load`` cannot read; ``reason`` says what the file is (size, first bytes)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} cannot be loaded: {reason}")
        self.path = path
        self.reason = reason


def torch_load(path: str, unsafe: bool = False) -> Any:
    """``torch.load`` on CPU with ``weights_only=True`` and the VideoMAE allow-list.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnreadableCheckpointError: the file is no complete PyTorch checkpoint (the message says
            what it is instead).
        CheckpointError: a complete checkpoint whose pickle holds classes outside the allow-list
            (the message names ``--unsafe_load``).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if unsafe:
        # Full unpickling runs whatever the bytes say: look at the file first, so garbage (an
        # HTML page, random bytes) is described instead of executed (or exhausting memory).
        problem = diagnose_file(path)
        if problem is not None:
            raise UnreadableCheckpointError(path, f"{problem}; {_describe_bytes(path)}")
        logger.warning("loading %s with full unpickling (--unsafe_load): only for trusted files",
                       path)
    try:
        if unsafe:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (MemoryError, IsADirectoryError, PermissionError):
        raise  # about the machine or the path, not the file's content: torch's message is clear
    except Exception as err:  # torch reports bad content as RuntimeError, OSError, EOFError, ...
        problem = diagnose_file(path)
        if problem is None and isinstance(err, pickle.UnpicklingError) and not unsafe:
            # A complete checkpoint whose pickle the weights_only unpickler refused: only here
            # can full unpickling help.
            raise CheckpointError(
                f"{path} holds objects that are not tensors or allow-listed types, so it was not "
                f"unpickled ({str(err).splitlines()[0]}). If you trust the file, pass "
                f"--unsafe_load (or unsafe=True) to permit full unpickling.") from err
        if problem is None:
            first_line = (str(err).splitlines() or [""])[0][:200]
            problem = f"corrupt PyTorch checkpoint ({type(err).__name__}: {first_line})"
        raise UnreadableCheckpointError(path, f"{problem}; {_describe_bytes(path)}") from err


_HEAD_BYTES = 48


def _describe_bytes(path: str) -> str:
    """Size and first bytes of a file, printable: ``1,234 bytes, starting b'<!DOCTYPE ...'``."""
    size = os.path.getsize(path)
    if size == 0:
        return "0 bytes"
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    return f"{size:,} bytes, starting {head!r}{'...' if size > len(head) else ''}"


def diagnose_file(path: str) -> Optional[str]:
    """What a file that ``torch.load`` failed on is, or None when it looks like a complete
    PyTorch checkpoint (zip archive with ``data.pkl``, or legacy pickles that end properly).

    Only the start of the file, a zip's directory and its ``data.pkl`` are read, never the
    tensor data.
    """
    with open(path, "rb") as f:
        head = f.read(512)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not head:
        return "empty file"
    if text.startswith(b"<!doctype html") or b"<html" in text:
        return "an HTML page, not a PyTorch checkpoint (a failed download?)"
    if text.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the checkpoint itself (run `git lfs pull`?)"
    if head.startswith(b"PK\x03\x04"):  # torch >= 1.6 writes zip archives
        return _zip_problem(path)
    if head[0] == 0x80:  # a pickle: torch < 1.6 wrote raw pickles
        return None if _legacy_pickles_complete(path) else \
            "truncated or corrupt PyTorch checkpoint (legacy pickle incomplete)"
    return "not a PyTorch checkpoint"


def _zip_problem(path: str) -> Optional[str]:
    """What is wrong with a zip file as a PyTorch checkpoint, or None: a complete archive whose
    ``data.pkl`` (small: tensors are separate entries) passes its CRC check."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:  # no end-of-archive directory: cut off or overwritten
        return "truncated or corrupt PyTorch checkpoint (zip archive incomplete)"
    except Exception:  # a garbled directory (undecodable names, bad offsets)
        return "corrupt PyTorch checkpoint (zip directory unreadable)"
    with archive:
        pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pickles:
            return "a zip archive, not a PyTorch checkpoint (no data.pkl)"
        try:
            # torch does not check CRCs: a damaged pickle must not pass for a refused class
            archive.read(pickles[0])
        except Exception:  # a bad CRC or local header
            return "corrupt PyTorch checkpoint (data.pkl damaged)"
    return None


def _legacy_pickles_complete(path: str) -> bool:
    """Legacy torch files start with four pickles (magic number, protocol version, system info,
    the object) before the raw tensor bytes; all four must parse up to their STOP opcode.
    ``pickletools.genops`` only reads opcodes, it never builds objects."""
    with open(path, "rb") as f:
        try:
            for _ in range(4):
                for _ in pickletools.genops(f):
                    pass
        except Exception:  # genops raises ValueError on truncation, others on garbage
            return False
    return True
