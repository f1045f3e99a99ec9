"""Per-step schedules (MAE/DINO style): the whole run's values precomputed as one array."""
from __future__ import annotations

import math

import numpy as np


def cosine_scheduler(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0.0,
                     warmup_steps: int = -1) -> np.ndarray:
    """Linear warm-up from ``start_warmup_value`` to ``base_value``, then a half cosine to
    ``final_value``; one value per optimizer step, ``epochs * niter_per_ep`` in all.

    Args:
        base_value: value at the end of warm-up (the peak learning rate).
        final_value: value at the last step.
        epochs: training epochs.
        niter_per_ep: optimizer steps per epoch.
        warmup_epochs: warm-up length in epochs.
        start_warmup_value: first warm-up value (``--warmup_lr``).
        warmup_steps: warm-up length in steps; overrides ``warmup_epochs`` when > 0.
    """
    total = int(epochs) * int(niter_per_ep)
    warmup_iters = int(warmup_epochs) * int(niter_per_ep)
    if warmup_steps is not None and warmup_steps > 0:
        warmup_iters = int(warmup_steps)
    warmup_iters = min(warmup_iters, total)
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 \
        else np.array([], dtype=np.float64)
    iters = np.arange(total - warmup_iters, dtype=np.float64)
    n = max(len(iters), 1)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(math.pi * iters / n))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == total, (len(schedule), total)
    return schedule


def scale_lr(value: float, total_batch_size: int, base_batch_size: int = 256) -> float:
    """VideoMAE's linear scaling rule: ``value * total batch / 256``."""
    return value * total_batch_size / base_batch_size
