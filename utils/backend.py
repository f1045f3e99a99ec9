"""The two training engines behind one small interface, so the training loop has no branches.

``PlainBackend``: one process or DDP (``torch.compile`` optional), torch autocast, and a loss
scaler for fp16. ``DeepSpeedBackend``: a DeepSpeed engine (ZeRO stage 0-2 through
``--deepspeed_config``) that runs its module in its own precision and scales and steps itself.

A training step is::

    with backend.accumulating(last_micro):     # DDP: no all-reduce on accumulation micro-batches
        with backend.autocast():
            loss = criterion(backend.model(backend.cast_input(x)).float(), y)
        grad_norm = backend.backward(loss, last_micro)   # steps at the end of an accumulation
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Dict, List, Optional

import torch
import torch.nn as nn

from .amp import NativeScalerWithGradNormCount, autocast, get_grad_norm_
from .deepspeed_engine import input_dtype


class PlainBackend:
    """Plain PyTorch (one process or DDP).

    Args:
        model: the unwrapped model (its trainable parameters are the optimizer's).
        optimizer: the optimizer over the trainable parameters.
        device: the run's device.
        amp_dtype: autocast dtype, or None for float32; fp16 turns the loss scaler on.
        distributed: wrap in DistributedDataParallel.
        update_freq: micro-batches per optimizer step (the loss is divided by it).
        clip_grad: gradient-norm clipping (None or 0: off).
        compile: ``torch.compile`` the (DDP-wrapped) model.
    """

    is_deepspeed = False

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 amp_dtype: Optional[torch.dtype], distributed: bool, update_freq: int = 1,
                 clip_grad: Optional[float] = None, compile: bool = False) -> None:
        self.module = model
        net: Any = model
        self.ddp: Optional[nn.parallel.DistributedDataParallel] = None
        if distributed:
            net = self.ddp = nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None)
        if compile:  # compile(DDP(model)): PyTorch's DDPOptimizer splits graphs at DDP buckets
            net = torch.compile(net)
        self.model = net
        self.optimizer = optimizer
        self.device, self.amp_dtype = device, amp_dtype
        self.update_freq, self.clip_grad = int(update_freq), clip_grad or None
        self.scaler = NativeScalerWithGradNormCount(enabled=amp_dtype == torch.float16,
                                                    device=device.type)
        self.trainable: List[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]

    def start_epoch(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def accumulating(self, last_micro: bool) -> ContextManager:
        """DDP decides at the forward whether the backward all-reduces: skip it on micro-batches
        that only accumulate."""
        if last_micro or self.ddp is None:  # the DDP wrapper, also when compiled around it
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def autocast(self) -> ContextManager:
        return autocast(self.device, self.amp_dtype)

    def cast_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def backward(self, loss: torch.Tensor, last_micro: bool) -> Optional[float]:
        """Backward; at the end of an accumulation also unscale, clip, step and zero the
        gradients. Returns the gradient norm before clipping at a step, else None."""
        self.scaler(loss / self.update_freq, self.optimizer, parameters=self.trainable,
                    update_grad=False)
        if not last_micro:
            return None
        norm = self.scaler.step(self.optimizer, clip_grad=self.clip_grad,
                                parameters=self.trainable)
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def loss_scale(self) -> float:
        return self.scaler.get_scale()

    def state_dict(self) -> Dict[str, Any]:
        """Optimizer and scaler state for a checkpoint."""
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, ckpt: Dict[str, Any], optimizer: bool = True) -> None:
        """Optimizer (unless ``optimizer`` is False: ``--reset_optimizer``) and scaler state of
        a checkpoint."""
        if optimizer and ckpt.get("optimizer") is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])


class DeepSpeedBackend:
    """A DeepSpeed engine (``utils.deepspeed_engine.initialize``); it accumulates, clips and
    scales itself.

    Args:
        engine: the DeepSpeed engine wrapping the model.
        optimizer: the engine's optimizer (for the learning-rate schedule).
    """

    is_deepspeed = True

    def __init__(self, engine: Any, optimizer: Any) -> None:
        self.model = engine
        self.module = engine.module
        self.device = next(self.module.parameters()).device
        self.optimizer = optimizer
        self.input_dtype = input_dtype(engine)
        self.trainable = [p for p in self.module.parameters() if p.requires_grad]

    def start_epoch(self) -> None:
        """DeepSpeed zeroes the gradients itself after each step."""

    def accumulating(self, last_micro: bool) -> ContextManager:
        return contextlib.nullcontext()  # the engine all-reduces only at the boundary

    def autocast(self) -> ContextManager:
        return contextlib.nullcontext()  # the module runs in the engine's dtype

    def cast_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.input_dtype) if self.input_dtype is not None else x

    def backward(self, loss: torch.Tensor, last_micro: bool) -> Optional[float]:
        """Backward and the engine's step (it only updates at the end of an accumulation).

        Returns the unscaled gradient norm before clipping at the end of an accumulation, else
        None. Where it comes from follows DeepSpeed 0.19.8 (``DeepSpeedEngine._take_model_step``
        copies the optimizer's ``_global_grad_norm``):

        - ZeRO 1/2 (``DeepSpeedZeroOptimizer.step``): the gradients are reduced into partitions
          (``p.grad`` is None), and the engine's norm is already divided by the loss scale.
        - Stage 0 fp16 (``FP16_UnfusedOptimizer.step``, the wrapper of a client optimizer):
          the engine's norm is of the scaled gradients; it is divided here by the scale the
          backward used (read before ``step()``, which may change it).
        - Stage 0 fp32/bf16: the client optimizer keeps no norm (fp32) or one equal to the
          ``p.grad`` norm (bf16, no loss scale), so it is computed from ``p.grad`` before
          ``step()`` clears them.
        """
        self.model.backward(loss)
        if not last_micro:
            self.model.step()
            return None
        stage = int(self.model.zero_optimization_stage())
        fp16 = bool(self.model.fp16_enabled())
        norm: Optional[float] = None
        if stage == 0 and not fp16:
            norm = float(get_grad_norm_(self.trainable))
        scale = self.loss_scale() if stage == 0 and fp16 else 1.0
        self.model.step()
        if norm is None:
            value = self.model.get_global_grad_norm()  # None where ZeRO's compute_grad_norm is off
            norm = float(value) / scale if value is not None else None
        return norm

    def loss_scale(self) -> float:
        """The engine's current loss scale; 1.0 without fp16.

        DeepSpeed's fp16 optimizers expose it as the ``loss_scale`` property
        (``FP16_UnfusedOptimizer``, ``FP16_Optimizer``, ``DeepSpeedZeroOptimizer``, which also
        has ``cur_scale``); a plain client optimizer (fp32 stage 0) has neither.
        """
        optimizer = self.model.optimizer
        for name in ("loss_scale", "cur_scale"):
            value = getattr(optimizer, name, None)
            if value is not None and not callable(value):
                return float(value)
        return 1.0
