"""Saving and loading one trained method on its own (docs/FORMATS.md, 'Single-method files').

A frozen-backbone run only needs to keep what it trained: the trainable tensors (prompts, scales,
adapters, LoRA factors, ``fc_norm``, ``head``) and a reference to the backbone file (path and
sha256), a few MB instead of the 300+ MB backbone. ``random``/``end2end`` keep every tensor.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

_HASH_CACHE: Dict[tuple, str] = {}


def file_sha256(path: str) -> str:
    """sha256 of a file (or of the files of a folder, in sorted order); cached by size and mtime."""
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
    key = tuple((f, os.path.getsize(f), os.path.getmtime(f)) for f in files)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        for f in files:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def backbone_reference(path: Optional[str]) -> Dict[str, Optional[str]]:
    """``{"path": ..., "sha256": ...}`` for a ``--finetune`` file (both None without one)."""
    if not path:
        return {"path": None, "sha256": None}
    return {"path": os.path.abspath(path), "sha256": file_sha256(path)}


def trains_whole_model(model: nn.Module) -> bool:
    method = getattr(model, "transfer", None)
    return method is None or method.trains_backbone


def trainable_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every tensor for whole-model types; otherwise only the parameters that train."""
    if trains_whole_model(model):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_method(path: str, model: nn.Module, backbone: Optional[Mapping[str, Any]] = None,
                **extra: Any) -> None:
    """Write ``{"model", "transfer_type", "backbone", ...extra}`` atomically (tmp + rename)."""
    method = getattr(model, "transfer", None)
    obj = {"model": trainable_state_dict(model),
           "transfer_type": method.name if method is not None else "end2end",
           "backbone": dict(backbone or {"path": None, "sha256": None}), **extra}
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def verify_backbone(ref: Mapping[str, Any], source: str, path: Optional[str] = None) -> None:
    """Raise if a backbone file differs from the one a checkpoint was trained on.

    Args:
        ref: the checkpoint's ``backbone`` entry (``path``, ``sha256``).
        source: the checkpoint's name, for the message.
        path: the backbone file to check (e.g. ``--finetune``); default: the recorded path,
            checked only while it still exists.
    """
    from .checkpoint import CheckpointError

    path, expected = path or ref.get("path"), ref.get("sha256")
    if path and expected and os.path.exists(path):
        actual = file_sha256(path)
        if actual != expected:
            raise CheckpointError(f"{source} was trained on the backbone {ref.get('path')} "
                                  f"(sha256 {expected[:12]}...), but {path} has sha256 "
                                  f"{actual[:12]}...: pass the backbone it was trained on")


def load_method(model: nn.Module, checkpoint: Any, check_backbone: bool = True) -> Dict[str, Any]:
    """Load the trainable tensors of ``checkpoint`` (a path or a loaded dict) into ``model``.

    The backbone must already be loaded. With ``check_backbone``, the sha256 recorded in the
    checkpoint must match the backbone file, when that file is still at the recorded path.
    Every trainable tensor of the model must be present; extra keys are an error.
    """
    from .checkpoint import CheckpointError, torch_load

    source = checkpoint if isinstance(checkpoint, str) else "<checkpoint>"
    obj = torch_load(checkpoint) if isinstance(checkpoint, str) else checkpoint
    if check_backbone:
        verify_backbone(obj.get("backbone") or {}, source)
    method = getattr(model, "transfer", None)
    if method is not None and obj.get("transfer_type") not in (None, method.name):
        raise CheckpointError(f"{source} holds a '{obj['transfer_type']}' model, but the model "
                              f"was built with --transfer_type {method.name}")
    state = obj["model"]
    expected = trainable_state_dict(model).keys()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit the model: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")
    model.load_state_dict(state, strict=False)
    return obj
