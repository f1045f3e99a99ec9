"""Mixed precision: which dtype to use, and a GradScaler wrapper that also clips and steps."""
from __future__ import annotations

import contextlib
from typing import Iterable, Optional, Union

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether the CUDA device has bf16 tensor cores (compute capability 8.0, Ampere, or newer).

    Not ``torch.cuda.is_bf16_supported()``: by default it also counts emulation (True on V100 and
    T4, where bf16 autocast runs several times slower than fp16 with a loss scaler), and it asks
    about the current device rather than ``device``.

    Args:
        device: a CUDA device (its index, or the current device when it has none).
    """
    if torch.version.hip:  # every ROCm architecture torch supports computes in bf16
        return True
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def amp_dtype_for(device: torch.device, enabled: Optional[bool], dtype: str = "auto"
                  ) -> Optional[torch.dtype]:
    """The autocast dtype, or None for float32.

    Args:
        device: the run's device.
        enabled: ``--amp`` (True), ``--no_amp`` (False) or unset (None: on for CUDA, off on CPU).
        dtype: 'auto' (bf16 where the device computes in it natively, else fp16), 'bf16' or
            'fp16'.
    """
    if enabled is None:
        enabled = device.type == "cuda"
    if not enabled:
        return None
    if dtype == "bf16":
        return torch.bfloat16
    if dtype == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if native_bf16(device) else torch.float16
    return torch.bfloat16  # CPU autocast: bf16 (fp16 would need a loss scaler for no gain)


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``dtype``, or a no-op context for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def get_grad_norm_(parameters: Union[torch.Tensor, Iterable[torch.Tensor]],
                   norm_type: float = 2.0) -> torch.Tensor:
    """Total gradient norm of ``parameters`` (those with a gradient)."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    return torch.norm(torch.stack([torch.norm(g.detach(), norm_type).to(device) for g in grads]),
                      norm_type)


class NativeScalerWithGradNormCount:
    """Backward, optional unscale + clip, optimizer step, scaler update; returns the grad norm.

    Uses a ``torch.amp.GradScaler`` only for fp16 (bf16 and fp32 need none); the call signature
    and ``state_dict`` are VideoMAE's, so code written for it works unchanged.

    Args:
        enabled: use loss scaling (fp16 autocast).
        device: device type for the scaler ('cuda' or 'cpu').
    """

    state_dict_key = "amp_scaler"

    def __init__(self, enabled: bool = False, device: str = "cuda") -> None:
        self.enabled = bool(enabled)
        self._scaler = torch.amp.GradScaler(device, enabled=self.enabled)

    def __call__(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                 clip_grad: Optional[float] = None, parameters: Optional[Iterable] = None,
                 create_graph: bool = False, update_grad: bool = True) -> Optional[torch.Tensor]:
        self._scaler.scale(loss).backward(create_graph=create_graph)
        if not update_grad:
            return None
        return self.step(optimizer, clip_grad, parameters)

    def step(self, optimizer: torch.optim.Optimizer, clip_grad: Optional[float] = None,
             parameters: Optional[Iterable] = None) -> torch.Tensor:
        """Unscale, clip (when ``clip_grad``), step and update; returns the pre-clip norm."""
        params = [p for p in (parameters if parameters is not None else
                              (q for g in optimizer.param_groups for q in g["params"]))]
        self._scaler.unscale_(optimizer)
        if clip_grad:
            norm = torch.nn.utils.clip_grad_norm_(params, clip_grad)
        else:
            norm = get_grad_norm_(params)
        self._scaler.step(optimizer)
        self._scaler.update()
        return norm

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self._scaler.scale(loss)

    def get_scale(self) -> float:
        return float(self._scaler.get_scale()) if self.enabled else 1.0

    def state_dict(self) -> dict:
        return self._scaler.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self._scaler.load_state_dict(state_dict)
