"""Parameter and FLOP report of one model at one clip shape (``run_class_apt.py --flops``)."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn as nn

from .flops import count_forward_flops


def parameter_counts(model: nn.Module) -> Dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": total, "trainable_params": trainable}


def cost_report(model: nn.Module, num_frames: int, input_size: int,
                model_name: str = "") -> Dict[str, Any]:
    """Counts for one clip ``(1, 3, num_frames, input_size, input_size)``.

    ``gflops`` counts a multiply-add as 2 FLOPs (``torch.utils.flop_counter``); ``gmacs`` is half
    of it, the number most video papers print as "GFLOPs". Inference folding is applied first
    (APT scales, LoRA merges), as a deployed model would run.
    """
    method = getattr(model, "transfer", None)
    device = next(model.parameters()).device
    if method is not None:
        method.fold(model)
    try:
        flops = count_forward_flops(model, torch.zeros(1, 3, num_frames, input_size, input_size,
                                                       device=device))
    finally:
        if method is not None:
            method.unfold(model)
    return {"model": model_name or getattr(model, "model_name", type(model).__name__),
            "transfer_type": method.name if method is not None else "end2end",
            # The type's settings as its dataclass declares them (P, blocks, rank, ...).
            "settings": method.config.to_dict() if method is not None else {},
            **parameter_counts(model),
            # 6 decimals: the tiny test/demo models cost a few MFLOPs.
            "gflops": round(flops / 1e9, 6), "gmacs": round(flops / 2e9, 6),
            "input": [3, num_frames, input_size, input_size]}
