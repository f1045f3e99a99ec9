"""The training side of a run's checkpoints: writing ``checkpoint-<tag>`` and resuming from it.

``TrainingCheckpoints`` is what ``engine.fit`` and ``run_mae_pretraining`` save and resume
through: model (``models.method_state.trainable_state_dict``), optimizer, loss scaler, EMA and
metadata, on the plain/DDP backend and on DeepSpeed. Plain runs write ``checkpoint-<tag>.pth`` to
a temporary name first and rename it (``utils.outputs.atomic_torch_save``), so a crash mid-write
never replaces a good file. DeepSpeed runs write the engine's own folder under
``checkpoint-<tag>.tmp`` and rename it, keeping the previous folder as ``.old`` until the new one
is in place; frozen parameters are left out. Every rank learns whether a write worked
(``utils.dist.all_ranks_ok``), so a failed save stops all ranks together.

Resuming refuses what cannot continue: another backbone file, another transfer type or shapes,
another optimizer (unless ``--reset_optimizer``). The file layout, and the search for the newest
readable checkpoint of a run folder, are ``models.run_checkpoints``.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
from typing import Any, Callable, Dict, Mapping, Optional

import torch
import torch.nn as nn

from models.method_state import (backbone_reference, check_backbone, check_fits,
                                 load_method_state, saved_flags, trainable_state_dict,
                                 trains_whole_model)
from models.run_checkpoints import (BEST_NAMES, is_checkpoint, load_newest_readable,
                                    read_checkpoint, read_named_checkpoint)
from models.serialization import DS_MODEL_FILE, CheckpointError
from utils.config import canonical_optimizer
from utils.dist import all_ranks_ok, is_main_process
from utils.outputs import OutputWriteError, atomic_torch_save, writing

logger = logging.getLogger(__name__)


class TrainingCheckpoints:
    """The ``checkpoint-<tag>`` files of one run: writing them and resuming from them.

    Args:
        output_dir: ``--output_dir``.
        flags: the run's flags (saved as ``args``; VideoMAE's pre-training layout also keeps
            ``patch_size``/``window_size`` there).
        backbone_path: the backbone file the model was built on (None: none, or not needed).
        unsafe: ``--unsafe_load``.
        check_resumed: called with a read checkpoint before it is loaded (pre-training refuses
            one of another architecture); raises to refuse it.
        reset_optimizer: ``--reset_optimizer``: on resume, keep the fresh optimizer (the
            weights, epoch and schedule step still come from the checkpoint).
    """

    def __init__(self, output_dir: str, flags: Mapping[str, Any],
                 backbone_path: Optional[str] = None, unsafe: bool = False,
                 check_resumed: Optional[Callable[[Dict[str, Any], str], None]] = None,
                 reset_optimizer: bool = False) -> None:
        self.output_dir = output_dir
        self.flags = dict(flags)
        self.backbone_path = backbone_path
        self.unsafe = unsafe
        self.check_resumed = check_resumed
        self.reset_optimizer = reset_optimizer

    # --- writing -------------------------------------------------------------------------------
    def metadata(self, model: nn.Module, epoch: int, step: int, best_acc: Optional[float],
                 model_ema: Any = None) -> Dict[str, Any]:
        """Everything of a checkpoint except the model, optimizer and scaler states."""
        method = getattr(model, "transfer", None)
        if method is None:  # pre-training: VideoMAE's layout, which --finetune reads as such
            return {"epoch": int(epoch), "step": int(step), "args": self.flags}
        loads = method.loads_pretrained
        return {"epoch": int(epoch), "step": int(step), "args": self.flags,
                "transfer_type": method.name,
                "backbone": backbone_reference(self.backbone_path if loads else None),
                "best_acc": None if best_acc is None else float(best_acc),
                "model_ema": _ema_state(model_ema, model)}

    def save(self, tag: str, epoch: int, step: int, backend: Any, model_ema: Any = None,
             best_acc: Optional[float] = None) -> str:
        """Write ``checkpoint-<tag>``; call on every rank (DeepSpeed saves collectively, plain
        runs write on rank 0 while the others wait). Returns the path written (a file, or a
        DeepSpeed folder)."""
        meta = self.metadata(backend.module, epoch, step, best_acc, model_ema)
        if backend.is_deepspeed:
            return self._save_deepspeed(backend.model, tag, meta)
        path = os.path.join(self.output_dir, f"checkpoint-{tag}.pth")
        error: Optional[BaseException] = None
        if is_main_process():
            try:
                atomic_torch_save({"model": trainable_state_dict(backend.module),
                                   **backend.state_dict(), **meta}, path)
                logger.info("saved %s (%.2f MB)", path, os.path.getsize(path) / 2 ** 20)
            except Exception as err:  # raised below, once every rank knows
                error = err
        # The other ranks wait for the file: `load_best` (--test_best) must read the same,
        # complete checkpoint on every rank, or ranks test different weights.
        _agree(error, path, backend.device)
        return path

    def _save_deepspeed(self, engine: Any, tag: str, meta: Dict[str, Any]) -> str:
        final = os.path.join(self.output_dir, f"checkpoint-{tag}")
        tmp_tag = f"checkpoint-{tag}.tmp"
        device = next(engine.module.parameters()).device
        error: Optional[BaseException] = None
        try:  # every rank writes its part (ZeRO: its optimizer shard)
            with writing(os.path.join(self.output_dir, tmp_tag)):
                engine.save_checkpoint(self.output_dir, tag=tmp_tag, client_state=meta,
                                       save_latest=False,
                                       exclude_frozen_parameters=not trains_whole_model(
                                           engine.module))
        except Exception as err:  # raised below, once every rank knows
            error = err
        _agree(error, final, device, "another rank could not write its part (its log says why)")
        if is_main_process():
            try:
                with writing(final):
                    _put_in_place(os.path.join(self.output_dir, tmp_tag), final)
            except Exception as err:  # raised below, once every rank knows
                error = err
        _agree(error, final, device)
        return final

    # --- reading -------------------------------------------------------------------------------
    def resume(self, resume: str, auto_resume: bool, backend: Any,
               model_ema: Any = None) -> Optional[Dict[str, Any]]:
        """Resume from ``--resume``, or with ``--auto_resume`` the newest checkpoint of the
        output folder: model, optimizer, scaler, EMA. Returns the checkpoint's metadata
        (``epoch``, ``step``, ``best_acc``, ...; training continues at ``epoch + 1``) or None
        when there is nothing to resume from."""
        ckpt: Optional[Dict[str, Any]] = None
        if resume:  # named by the user: used or refused, never replaced by another file
            path = resume
            if not os.path.exists(path):
                raise FileNotFoundError(f"--resume {path}: no such checkpoint")
        elif auto_resume:
            found = load_newest_readable(self.output_dir,
                                         lambda p: read_checkpoint(p, unsafe=self.unsafe))
            if found is None:
                return None
            path, ckpt = found
        else:
            return None
        if backend.is_deepspeed:
            meta = self._resume_deepspeed(backend.model, path, ckpt)
        else:
            ckpt = ckpt or read_named_checkpoint(path, "--resume", self.unsafe)
            self._check(ckpt, backend.module, path)
            load_method_state(backend.module, ckpt)
            self._load_optimizer(backend, ckpt, path)
            meta = ckpt
        if model_ema is not None and meta.get("model_ema"):
            model_ema.module.load_state_dict(meta["model_ema"], strict=False)
        if self.reset_optimizer:
            logger.warning("--reset_optimizer: a fresh %s optimizer; %s gave the weights, the "
                           "epoch and the schedule step", self.flags.get("opt"), path)
        logger.info("resumed from %s (epoch %s, step %s); training continues at epoch %s", path,
                    meta.get("epoch"), meta.get("step"), int(meta.get("epoch", -1)) + 1)
        return meta

    def _check(self, ckpt: Dict[str, Any], model: nn.Module, path: str) -> None:
        if self.check_resumed is not None:
            self.check_resumed(ckpt, path)
        if not trains_whole_model(model):  # a frozen backbone must be the one trained on
            check_backbone(ckpt, self.backbone_path, path)
        self._check_optimizer(ckpt, path)

    def _check_optimizer(self, ckpt: Dict[str, Any], path: str) -> None:
        """Refuse to continue another optimizer's state (AdamW's moments in SGD end in a
        ``KeyError: 'momentum'`` at the first step) unless ``--reset_optimizer``."""
        saved, current = saved_flags(ckpt).get("opt"), self.flags.get("opt")
        if self.reset_optimizer or not saved or not current:
            return  # nothing to compare (a checkpoint without saved flags loads as before)
        if canonical_optimizer(saved) != canonical_optimizer(current):
            raise CheckpointError(f"--opt {current} but {path} was trained with --opt {saved}: "
                                  f"its optimizer state cannot continue in another optimizer. "
                                  f"Resume with --opt {saved}, or pass --reset_optimizer to "
                                  f"start a fresh {current} optimizer from its weights")

    def _load_optimizer(self, backend: Any, ckpt: Dict[str, Any], path: str) -> None:
        """The optimizer and loss-scaler states of ``ckpt`` (only the scaler's with
        ``--reset_optimizer``)."""
        try:
            backend.load_state_dict(ckpt, optimizer=not self.reset_optimizer)
        except (ValueError, KeyError) as err:  # torch: other parameter groups or sizes
            raise CheckpointError(f"{path}: its optimizer state does not fit this run's "
                                  f"optimizer ({err}){self._group_hint(ckpt)}; pass "
                                  f"--reset_optimizer to start a fresh one from its "
                                  f"weights") from err

    def _group_hint(self, ckpt: Dict[str, Any]) -> str:
        """Why the weight-decay groups may differ: runs saved before APT's prompts took weight
        decay by default (the original code's groups) recorded ``decay_prompts`` False."""
        saved, current = saved_flags(ckpt).get("decay_prompts"), self.flags.get("decay_prompts")
        if saved is None or saved == current:
            return ""
        switch = "--decay_prompts" if saved else "--no_decay_prompts"
        return (f"; it was trained with decay_prompts={saved}, this run has "
                f"{'the transfer type default' if current is None else current}, so the "
                f"weight-decay groups differ: pass {switch} to resume it as it was trained")

    def _resume_deepspeed(self, engine: Any, path: str,
                          ckpt: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """``ckpt``: what auto-resume already read of the folder (checked, not read again)."""
        ckpt_dir = path[:-len(DS_MODEL_FILE) - 1] if path.endswith(DS_MODEL_FILE) else path
        ckpt_dir = ckpt_dir.rstrip(os.sep)
        if os.path.isfile(ckpt_dir):
            raise ValueError(f"--resume {path}: DeepSpeed runs resume from a DeepSpeed "
                             f"checkpoint folder (checkpoint-<tag>/), not a .pth file")
        ckpt = ckpt or read_named_checkpoint(ckpt_dir, "--resume", self.unsafe)
        self._check(ckpt, engine.module, ckpt_dir)
        check_fits(engine.module, ckpt, ckpt_dir)
        load_dir, tag = os.path.split(ckpt_dir)
        _, client = engine.load_checkpoint(load_dir, tag=tag, load_module_strict=False,
                                           load_optimizer_states=not self.reset_optimizer,
                                           load_lr_scheduler_states=False)
        if client is None:
            raise RuntimeError(f"DeepSpeed could not load {ckpt_dir}")
        return client

    def load_best(self, model: nn.Module) -> bool:
        """Load ``checkpoint-best``'s tensors into ``model``; False when there is none."""
        for name in BEST_NAMES:
            path = os.path.join(self.output_dir or ".", name)
            if is_checkpoint(path):
                load_method_state(model, read_checkpoint(path, self.unsafe))
                return True
        return False


def _ema_state(model_ema: Any, model: nn.Module) -> Optional[Dict[str, torch.Tensor]]:
    """The EMA's copies of the tensors the checkpoint keeps for ``model``."""
    if model_ema is None:
        return None
    ema_sd = model_ema.module.state_dict()
    return {k: ema_sd[k].detach().clone() for k in trainable_state_dict(model) if k in ema_sd}


def _agree(error: Optional[BaseException], path: str, device: torch.device,
           elsewhere: str = "rank 0 could not write it (its log says why)") -> None:
    """Every rank learns whether the write of ``path`` worked on all ranks (this takes the
    place of a barrier), so a failed save stops all ranks instead of leaving them waiting in the
    next collective. A rank that failed raises its own error, the others an
    ``OutputWriteError`` naming ``path`` and saying ``elsewhere``."""
    if all_ranks_ok(error is None, device):
        return
    if error is not None:
        raise error
    raise OutputWriteError(path, elsewhere)


def _put_in_place(tmp: str, final: str) -> None:
    """Rename the DeepSpeed folder ``tmp`` to ``final``, keeping the previous ``final`` as
    ``.old`` until the new one is in place (auto-resume takes ``.old`` after a crash)."""
    old = f"{final}.old"
    if os.path.exists(final):
        if os.path.exists(old):
            shutil.rmtree(old)
        os.replace(final, old)  # a crash from here on leaves `.old`; resume takes it
    os.replace(tmp, final)
    if os.path.exists(old):
        shutil.rmtree(old)
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(final, "*")))
    logger.info("saved DeepSpeed checkpoint %s (%.2f MB)", final, size / 2 ** 20)
