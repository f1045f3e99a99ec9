"""Mixup / CutMix for video batches, the CutMix box spanning all frames (docs/DATA.md).

timm's :class:`timm.data.Mixup` indexes the box on the last two axes of a 4-D batch
``(B, C, H, W)``. A video batch ``(B, C, T, H, W)`` is viewed as ``(B, C*T, H, W)``, so timm's
own code mixes it: the same box (and the same mixup weight) applies to every channel of every
frame of a clip. Nothing of timm is copied or patched.
"""

from __future__ import annotations

from typing import Tuple

import torch
from timm.data import Mixup as _TimmMixup


class Mixup(_TimmMixup):
    """timm's Mixup/CutMix, accepting video batches ``(B, 3, T, H, W)`` as well as images.

    Args: as :class:`timm.data.Mixup`: mixup_alpha, cutmix_alpha, cutmix_minmax, prob,
        switch_prob, mode ('batch', 'pair' or 'elem'), correct_lam, label_smoothing, num_classes.
    """

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch.

        Args:
            x: ``(B, C, T, H, W)`` or ``(B, C, H, W)`` float batch, B even.
            target: ``(B,)`` class indices.

        Returns:
            The mixed batch (same shape as ``x``) and soft targets ``(B, num_classes)``.
        """
        if x.ndim != 5:
            return super().__call__(x, target)
        b, c, t, h, w = x.shape
        flat = x.reshape(b, c * t, h, w)  # a view for contiguous x, mixed in place by timm
        flat, target = super().__call__(flat, target)
        return flat.reshape(b, c, t, h, w), target
