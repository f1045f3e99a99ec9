"""FLOP counting on ``torch.utils.flop_counter`` with attention counted on every backend.

PyTorch registers formulas for the CUDA SDPA kernels only; on CPU, SDPA dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which would count as zero. We pass the same
formula for it (forward and backward) through ``FlopCounterMode(custom_mapping=...)`` instead of
registering globally, so importing this module changes nothing for anyone else.

Convention: one multiply-add = 2 FLOPs (``FlopCounterMode``'s), so ViT-B at 16x224x224 counts
2 x 180.3 G. Reports also give GMACs (= FLOPs / 2), the unit most video papers call "GFLOPs".
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args,
                            out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _extra_formulas() -> Dict:
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if backward is not None:
        mapping[backward] = _cpu_sdpa_backward_flop
    return mapping


def flop_counter(display: bool = False, depth: Optional[int] = None) -> FlopCounterMode:
    """A ``FlopCounterMode`` that also counts CPU SDPA. Use as a context manager."""
    return FlopCounterMode(display=display, depth=depth, custom_mapping=_extra_formulas())


def count_forward_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs (2 per multiply-add) of one forward pass of ``model`` in eval mode on ``inputs``."""
    was_training = model.training
    # requires_grad is switched off rather than using no_grad: under no_grad, views of trainable
    # parameters (per-block prompts) keep requires_grad without a grad_fn, which the counter's
    # module tracker cannot handle.
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with flop_counter() as counter:
            model(inputs)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return counter.get_total_flops()


def count_train_step_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs of forward + backward of ``model(inputs).sum()`` (frozen weights get no gradient)."""
    with flop_counter() as counter:
        model(inputs).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()
