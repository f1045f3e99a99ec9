"""A method's trained tensors: which tensors a model keeps, writing them, loading them back.

A frozen-backbone model keeps only what it trained (prompts, scales, adapters, LoRA factors,
``fc_norm``, ``head``) and a reference to the backbone file (path and sha256), a few MB instead
of the 300+ MB backbone; ``random``/``end2end`` and pre-training keep every tensor. Loading
checks that the tensors fit the model (transfer type, class count, shapes) and that the backbone
file is the one they were trained on. Used by training (``engine_checkpoints``), evaluation and
the tools alike; the run checkpoint files that hold these tensors are read by
:mod:`models.run_checkpoints`.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn

from utils.outputs import atomic_torch_save

from .serialization import CheckpointError, torch_load
from .transfer import canonical_transfer_type

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
    """True when ``model`` trains (and its checkpoints keep) every tensor: pre-training models,
    ``random``/``end2end``; False for a frozen backbone."""
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
    atomic_torch_save(obj, path)


def verify_backbone(ref: Mapping[str, Any], source: str, path: Optional[str] = None) -> None:
    """Raise if a backbone file differs from the one a checkpoint was trained on.

    Args:
        ref: the checkpoint's ``backbone`` entry (``path``, ``sha256``).
        source: the checkpoint's name, for the message.
        path: the backbone file to check (e.g. ``--finetune``); default: the recorded path,
            checked only while it still exists.
    """
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
    if isinstance(checkpoint, str):
        source, obj = checkpoint, torch_load(checkpoint)
    else:  # read_checkpoint records the file it read
        source, obj = str(checkpoint.get("source") or "<checkpoint>"), checkpoint
    if check_backbone:
        verify_backbone(obj.get("backbone") or {}, source)
    check_fits(model, obj, source)
    state = obj["model"]
    expected = trainable_state_dict(model).keys()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit the model: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")
    model.load_state_dict(state, strict=False)
    return obj


def check_fits(model: nn.Module, ckpt: Mapping[str, Any], source: str) -> None:
    """Refuse a training checkpoint of another transfer type or other tensor shapes than
    ``model``, naming the file (a head of another class count names ``--nb_classes``).

    Args:
        model: the model the checkpoint is to be loaded into.
        ckpt: a read training checkpoint (``model``, ``transfer_type``).
        source: its path, for the messages.

    Raises:
        CheckpointError: the message names the file and what differs.
    """
    method = getattr(model, "transfer", None)
    if method is not None and canonical_transfer_type(ckpt.get("transfer_type")) not in (
            None, method.name):  # files of old runs may name the type by its former name
        raise CheckpointError(f"{source} holds a '{ckpt['transfer_type']}' model, but the model "
                              f"was built with --transfer_type {method.name}")
    own, state = model.state_dict(), ckpt["model"]
    head = "head.weight"
    if head in own and head in state and own[head].shape[0] != state[head].shape[0]:
        mine, theirs = own[head].shape[0], state[head].shape[0]
        raise CheckpointError(f"--nb_classes {mine} (or the count of --data_set) but {source} "
                              f"has a {theirs}-class head: pass --nb_classes {theirs}, the "
                              f"class count it was trained with")
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise CheckpointError(f"{source}: {len(mismatched)} tensors do not fit the model (it was "
                              f"trained with other flags; they are saved under 'args'): "
                              + "; ".join(mismatched[:10]))


def saved_flags(ckpt: Mapping[str, Any]) -> Dict[str, Any]:
    """The flags a checkpoint saved under ``args`` (VideoMAE's files: a Namespace), or {}."""
    saved = ckpt.get("args") or {}
    return dict(vars(saved) if isinstance(saved, argparse.Namespace) else saved)


def load_method_state(model: nn.Module, ckpt: Dict[str, Any]) -> None:
    """Load a training checkpoint's tensors into ``model`` (its backbone already loaded)."""
    load_method(model, ckpt, check_backbone=not trains_whole_model(model))


def check_backbone(ckpt: Dict[str, Any], finetune: Optional[str], source: str) -> None:
    """Refuse a checkpoint trained on another backbone file than ``--finetune``."""
    if finetune:
        verify_backbone(ckpt.get("backbone") or {}, source, path=finetune)

