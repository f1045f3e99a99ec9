"""The three types with no extra modules: ``random``, ``end2end`` and ``linear``."""
from __future__ import annotations

from .base import TransferMethod, register_transfer


@register_transfer("end2end")
class EndToEnd(TransferMethod):
    """Full fine-tuning from ``--finetune``: every parameter trains (VideoMAE fine-tuning)."""

    trains_backbone = True


@register_transfer("random")
class RandomInit(TransferMethod):
    """Training from scratch: every parameter trains, no pre-trained weights are loaded."""

    trains_backbone = True
    loads_pretrained = False


@register_transfer("linear")
class LinearProbe(TransferMethod):
    """Linear probing: only the pooling norm (``fc_norm``) and ``head`` train."""
