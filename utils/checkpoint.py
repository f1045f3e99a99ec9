"""Checkpoints of training runs (SPEC §8): atomic writes, small files for frozen backbones,
auto-resume, and reading a checkpoint back for evaluation.

A checkpoint is a dict of tensors and plain types only (it loads with ``weights_only=True``)::

    {"model": trainable tensors (every tensor for random/end2end), "optimizer", "scaler",
     "epoch": last finished epoch, "step": optimizer steps done, "args": vars(args) as plain
     types, "transfer_type", "backbone": {"path", "sha256"} of --finetune, "best_acc",
     "model_ema": EMA of the trainable tensors or None}

Plain runs write ``checkpoint-<tag>.pth`` files (tag: epoch number, ``best`` or ``last``) to a
temporary name first and rename them, so a crash mid-write never replaces a good file. DeepSpeed
runs write the engine's own folders ``checkpoint-<tag>/`` (``mp_rank_00_model_states.pt`` holds
``module`` plus the same keys as above); frozen parameters are left out
(``exclude_frozen_parameters``), and the folder is written under ``<tag>.tmp`` then renamed.
"""
from __future__ import annotations

import argparse
import glob
import logging
import math
import os
import re
import shutil
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import torch
import torch.nn as nn

from .dist import barrier, is_main_process

logger = logging.getLogger(__name__)

_PLAIN = (str, int, float, bool, type(None))
DS_MODEL_FILE = "mp_rank_00_model_states.pt"
_TAG_RE = re.compile(r"^checkpoint-(\d+)(\.pth)?$")
Loaded = TypeVar("Loaded")


def args_to_dict(args: argparse.Namespace) -> Dict[str, Any]:
    """``vars(args)`` with plain types only (tuples become lists, other objects strings);
    private run state (names starting with ``_``) is left out."""
    def plain(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, _PLAIN):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return str(v)
    return {k: plain(v) for k, v in vars(args).items() if not k.startswith("_")}


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same folder and a rename.

    The temporary file is flushed to disk before the rename, so at any moment ``path`` is either
    the previous complete file or the new complete file, never a partial one.
    """
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def is_deepspeed_engine(model: Any) -> bool:
    return hasattr(model, "save_checkpoint") and hasattr(model, "load_checkpoint") and \
        hasattr(model, "module")


def _trainable_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    from models import trainable_state_dict
    return trainable_state_dict(model)


def ema_state(model_ema: Any, model: nn.Module) -> Optional[Dict[str, torch.Tensor]]:
    """The EMA's copies of the tensors the checkpoint keeps for ``model``."""
    if model_ema is None:
        return None
    keys = _trainable_state(model).keys()
    ema_sd = model_ema.module.state_dict()
    return {k: ema_sd[k].detach().clone() for k in keys if k in ema_sd}


def checkpoint_metadata(args: argparse.Namespace, model: nn.Module, epoch: int, step: int,
                        best_acc: Optional[float], model_ema: Any = None) -> Dict[str, Any]:
    """Everything of a checkpoint except the model, optimizer and scaler states."""
    from models import backbone_reference
    method = getattr(model, "transfer", None)
    return {"epoch": int(epoch), "step": int(step), "args": args_to_dict(args),
            "transfer_type": method.name if method is not None else "end2end",
            "backbone": backbone_reference(getattr(args, "finetune", "") or None)
            if getattr(method, "loads_pretrained", True) else {"path": None, "sha256": None},
            "best_acc": None if best_acc is None else float(best_acc),
            "model_ema": ema_state(model_ema, model)}


def save_model(args: argparse.Namespace, epoch: int, model: Any, model_without_ddp: nn.Module,
               optimizer: Any, loss_scaler: Any, model_ema: Any = None,
               tag: Optional[str] = None, step: int = 0, best_acc: Optional[float] = None) -> str:
    """Write ``checkpoint-<tag>`` (tag defaults to the epoch number) to ``args.output_dir``.

    Call on every rank: DeepSpeed saves collectively; plain runs write on rank 0 only.

    Returns:
        The path written (a ``.pth`` file, or a folder for DeepSpeed).
    """
    tag = str(epoch if tag is None else tag)
    meta = checkpoint_metadata(args, model_without_ddp, epoch, step, best_acc, model_ema)
    if is_deepspeed_engine(model):
        return _save_deepspeed(args, model, model_without_ddp, tag, meta)
    path = os.path.join(args.output_dir, f"checkpoint-{tag}.pth")
    if is_main_process():
        obj = {"model": _trainable_state(model_without_ddp),
               "optimizer": optimizer.state_dict() if optimizer is not None else None,
               "scaler": loss_scaler.state_dict() if loss_scaler is not None else None, **meta}
        atomic_torch_save(obj, path)
        logger.info("saved %s (%.2f MB)", path, os.path.getsize(path) / 2 ** 20)
    return path


def _save_deepspeed(args: argparse.Namespace, engine: Any, model: nn.Module, tag: str,
                    meta: Dict[str, Any]) -> str:
    from models import trains_whole_model
    final = os.path.join(args.output_dir, f"checkpoint-{tag}")
    tmp_tag = f"checkpoint-{tag}.tmp"
    engine.save_checkpoint(args.output_dir, tag=tmp_tag, client_state=meta, save_latest=False,
                           exclude_frozen_parameters=not trains_whole_model(model))
    barrier()
    if is_main_process():
        tmp = os.path.join(args.output_dir, tmp_tag)
        old = f"{final}.old"
        if os.path.exists(final):
            if os.path.exists(old):
                shutil.rmtree(old)
            os.replace(final, old)  # a crash from here on leaves `.old`; find_resume takes it
        os.replace(tmp, final)
        if os.path.exists(old):
            shutil.rmtree(old)
        size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(final, "*")))
        logger.info("saved DeepSpeed checkpoint %s (%.2f MB)", final, size / 2 ** 20)
    barrier()
    return final


def _whole(model: nn.Module) -> bool:
    from models import trains_whole_model
    return trains_whole_model(model)


def _epoch_of(name: str) -> Optional[int]:
    m = _TAG_RE.match(name)
    return int(m.group(1)) if m else None


def resume_candidates(output_dir: str) -> List[str]:
    """Every checkpoint auto-resume may take in ``output_dir``, newest first: ``checkpoint-last``
    (file or DeepSpeed folder), then ``checkpoint-N`` by descending N. Temporary files are never
    taken; a DeepSpeed folder counts only with its model-states file."""
    if not output_dir or not os.path.isdir(output_dir):
        return []
    numbered = sorted(((e, n) for n in os.listdir(output_dir) if (e := _epoch_of(n)) is not None),
                      reverse=True)
    names = ["checkpoint-last.pth", "checkpoint-last", "checkpoint-last.old"]
    paths = [os.path.join(output_dir, n) for n in names + [n for _, n in numbered]]
    return [p for p in paths if os.path.isfile(p) or os.path.isfile(os.path.join(p, DS_MODEL_FILE))]


def find_resume_checkpoint(output_dir: str) -> Optional[str]:
    """The checkpoint to auto-resume from in ``output_dir``: ``checkpoint-last`` (file or
    DeepSpeed folder), else the one of the highest epoch. Temporary files are never taken.
    The file is not read: ``load_newest_readable`` also skips one that cannot be loaded."""
    candidates = resume_candidates(output_dir)
    return candidates[0] if candidates else None


def load_newest_readable(output_dir: str, load: Callable[[str], Loaded]
                         ) -> Optional[Tuple[str, Loaded]]:
    """``(path, load(path))`` for the newest checkpoint in ``output_dir`` that ``load`` can read.

    A crash, a full disk or an interrupted copy can leave ``checkpoint-last`` unreadable while an
    older ``checkpoint-N`` is intact; resuming from that one loses a few epochs instead of the
    run. Each candidate is read once, and the object is returned, so a big file is not read again
    to load it. Unreadable newer files are named in one warning together with the one taken.

    Returns:
        None when ``output_dir`` holds no checkpoint.

    Raises:
        CheckpointError: there are checkpoints but none can be read; the message lists each file
            and why it failed.
    """
    from models import CheckpointError
    failed: List[str] = []
    for path in resume_candidates(output_dir):
        try:
            loaded = load(path)
        # torch_load turns any bad content into a CheckpointError; read_checkpoint raises
        # ValueError for a dict of another layout; OSError: no permission, I/O error, removed.
        except (CheckpointError, ValueError, OSError) as err:
            failed.append(_why_unreadable(err, path))
            continue
        if failed:
            logger.warning("auto-resume: skipping unreadable %s; resuming from %s instead",
                           "; ".join(failed), path)
        return path, loaded
    if failed:
        raise CheckpointError(f"--auto_resume: no readable checkpoint in {output_dir}; tried "
                              f"{'; '.join(failed)}. Move the damaged files away, pass --resume "
                              f"PATH, or start afresh with --no_auto_resume or another "
                              f"--output_dir")
    return None


def _why_unreadable(err: BaseException, path: str) -> str:
    """``<file> (<reason>)`` of a failed read, brief: one line of the message."""
    # UnreadableCheckpointError names the file itself (for a DeepSpeed folder: the file in it)
    # and keeps the reason apart; other errors are summed up by their first line.
    reason = getattr(err, "reason", None) or \
        f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
    return f"{getattr(err, 'path', None) or path} ({reason})"


def read_checkpoint(path: str, unsafe: bool = False) -> Dict[str, Any]:
    """Load a checkpoint of this project (file, or DeepSpeed folder/file) as the §8 dict."""
    from models import torch_load
    if os.path.isdir(path):
        model_file = os.path.join(path, DS_MODEL_FILE)
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f"{path} is a folder without {DS_MODEL_FILE}: not a "
                                    f"DeepSpeed checkpoint of this project")
        path = model_file
    obj = torch_load(path, unsafe=unsafe)
    if not isinstance(obj, dict) or ("model" not in obj and "module" not in obj):
        raise ValueError(f"{path} is not a checkpoint of this project (no 'model' or 'module')")
    if "model" not in obj:  # DeepSpeed layout: the module under 'module', client keys on top
        obj = dict(obj)
        obj["model"] = obj.pop("module")
        obj["deepspeed"] = True
    obj["source"] = path
    return obj


def check_backbone(ckpt: Dict[str, Any], finetune: Optional[str], source: str) -> None:
    """Refuse a checkpoint trained on another backbone file than ``--finetune``."""
    from models.method_io import verify_backbone
    if finetune:
        verify_backbone(ckpt.get("backbone") or {}, source, path=finetune)


def load_model_state(model: nn.Module, ckpt: Dict[str, Any]) -> None:
    """Load the checkpoint's tensors into ``model`` (its backbone must already be loaded)."""
    from models import load_method, trains_whole_model
    load_method(model, ckpt, check_backbone=not trains_whole_model(model))


def auto_load_model(args: argparse.Namespace, model: Any, model_without_ddp: nn.Module,
                    optimizer: Any, loss_scaler: Any, model_ema: Any = None
                    ) -> Optional[Dict[str, Any]]:
    """Resume from ``--resume`` or (with ``--auto_resume``) the latest checkpoint in
    ``--output_dir``: model, optimizer, scaler, EMA, epoch and step.

    Sets ``args.start_epoch`` (the epoch after the saved one) and ``args.resumed_from``.

    Returns:
        The checkpoint's metadata (``epoch``, ``step``, ``best_acc``, ...) or None if none.
    """
    unsafe = getattr(args, "unsafe_load", False)
    deepspeed = is_deepspeed_engine(model)
    args.resumed_from = None

    def read(candidate: str) -> Dict[str, Any]:
        ckpt = read_checkpoint(candidate, unsafe=unsafe)
        # A DeepSpeed engine reads its own files: keep only what the backbone check needs.
        return {"backbone": ckpt.get("backbone")} if deepspeed else ckpt

    ckpt: Optional[Dict[str, Any]] = None
    if args.resume:  # named by the user: used or refused, never replaced by another file
        path = args.resume
        if not os.path.exists(path):
            raise FileNotFoundError(f"--resume {path}: no such checkpoint")
    elif getattr(args, "auto_resume", False):
        found = load_newest_readable(args.output_dir, read)
        if found is None:
            return None
        path, ckpt = found
    else:
        return None
    if deepspeed:
        meta = _load_deepspeed(args, model, path, ckpt)
    else:
        if ckpt is None:
            ckpt = _read_named_resume(path, unsafe)
        if not _whole(model_without_ddp):  # a frozen backbone must be the one trained on
            check_backbone(ckpt, getattr(args, "finetune", ""), path)
        load_model_state(model_without_ddp, ckpt)
        if optimizer is not None and ckpt.get("optimizer") is not None and not args.eval:
            optimizer.load_state_dict(ckpt["optimizer"])
        if loss_scaler is not None and ckpt.get("scaler") and not args.eval:
            loss_scaler.load_state_dict(ckpt["scaler"])
        meta = ckpt
    if model_ema is not None and meta.get("model_ema"):
        model_ema.module.load_state_dict(meta["model_ema"], strict=False)
    epoch = meta.get("epoch")
    if isinstance(epoch, int):
        args.start_epoch = epoch + 1
    args.resumed_from = path
    logger.info("resumed from %s (epoch %s, step %s); training continues at epoch %d", path,
                epoch, meta.get("step"), args.start_epoch)
    return meta


def _read_named_resume(path: str, unsafe: bool) -> Dict[str, Any]:
    """``read_checkpoint`` of the file ``--resume`` names; an unreadable one is an error that
    names the flag (an older checkpoint is never taken in its place)."""
    from models.checkpoint import CheckpointError, UnreadableCheckpointError
    try:
        return read_checkpoint(path, unsafe=unsafe)
    except UnreadableCheckpointError as err:
        raise CheckpointError(f"--resume {err}") from err


def _load_deepspeed(args: argparse.Namespace, engine: Any, path: str,
                    ckpt: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Load a DeepSpeed checkpoint folder into ``engine``. ``ckpt``: what auto-resume already
    read of it (at least ``backbone``), so the backbone check does not read it again."""
    ckpt_dir = path[:-len(DS_MODEL_FILE) - 1] if path.endswith(DS_MODEL_FILE) else path
    ckpt_dir = ckpt_dir.rstrip(os.sep)
    if os.path.isfile(ckpt_dir):
        raise ValueError(f"--resume {path}: DeepSpeed runs resume from a DeepSpeed checkpoint "
                         f"folder (checkpoint-<tag>/), not a .pth file")
    if not _whole(engine.module):
        if ckpt is None:
            ckpt = _read_named_resume(ckpt_dir, getattr(args, "unsafe_load", False))
        check_backbone(ckpt, getattr(args, "finetune", ""), ckpt_dir)
    load_dir, tag = os.path.split(ckpt_dir)
    _, client = engine.load_checkpoint(load_dir, tag=tag, load_module_strict=False,
                                       load_optimizer_states=not args.eval,
                                       load_lr_scheduler_states=False)
    if client is None:
        raise RuntimeError(f"DeepSpeed could not load {ckpt_dir}")
    return client


def list_checkpoints(output_dir: str) -> List[str]:
    """Checkpoint files/folders in ``output_dir`` (for logs and tests)."""
    return sorted(n for n in os.listdir(output_dir) if n.startswith("checkpoint-")
                  and ".tmp" not in n)
