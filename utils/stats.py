"""The statistics of a method comparison (``utils/sweep.py``, ``tools/compare_runs.py``): mean and
sample standard deviation over seeds, the fraction of the linear-to-full-fine-tuning gap a method
recovers, and a paired bootstrap confidence interval of the difference between two methods on the
same test videos. numpy only; formulas in docs/EVALUATION.md ('Comparing methods fairly')."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``: the spread of seeds, not of a population).

    Args:
        values: one number per seed; at least one.

    Returns:
        ``(mean, std)``; ``std`` is NaN for a single value (no spread can be estimated).
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("mean_std of no values")
    std = float(data.std(ddof=1)) if data.size > 1 else math.nan
    return float(data.mean()), std


def gap_recovered(method: float, linear: float, full: float) -> Optional[float]:
    """``(method - linear) / (full - linear)``: 0 at linear probing, 1 at full fine-tuning.

    Args:
        method: the method's top-1.
        linear: linear probing's top-1 (frozen pre-trained backbone).
        full: full fine-tuning's top-1.

    Returns:
        The fraction, or None when ``full == linear`` (no gap to recover).
    """
    if full == linear:
        return None
    return (method - linear) / (full - linear)


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` in percentage points over the same videos, with its bootstrap interval."""

    diff: float
    low: float
    high: float
    level: float
    resamples: int
    videos: int


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int, seed: int,
                     level: float = 0.95) -> PairedDifference:
    """Paired bootstrap of the difference of mean accuracy between two methods.

    The videos are resampled with replacement (the same draw for both methods, which is what
    pairs them), ``resamples`` times; the interval is the percentile interval of the resampled
    differences. Per-video accuracies are in [0, 1] (correct or not, or the fraction of a
    method's seeds that got the video right); the result is in percentage points.

    Args:
        a: per-video accuracy of the first method.
        b: per-video accuracy of the second method, the same videos in the same order.
        resamples: bootstrap resamples (>= 1).
        seed: seed of the resampling (the same seed gives the same interval).
        level: coverage of the interval (0.95: the 2.5th to 97.5th percentiles).

    Raises:
        ValueError: different lengths, no videos, or a bad count or level.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length, non-empty per-video "
                         f"series, got shapes {x.shape} and {y.shape}")
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"paired_bootstrap: resamples {resamples} must be >= 1 and level "
                         f"{level} in (0, 1)")
    d = 100.0 * (x - y)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 2 ** 22 // d.size)  # bounded memory: at most ~4M indices at a time
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        means[start:start + n] = d[rng.integers(0, d.size, size=(n, d.size))].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return PairedDifference(float(d.mean()), float(low), float(high), level, resamples, d.size)
