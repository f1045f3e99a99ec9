"""Settings of LoRA; the method is ``models/transfer/lora.py``."""
from __future__ import annotations

from dataclasses import dataclass

from .base import BlockRange, register_settings, setting


@register_settings("lora", "LoRA")
@dataclass(frozen=True)
class LoRAConfig(BlockRange):
    """Settings: the block range, the rank and alpha (the update is scaled by alpha / rank)."""

    lora_rank: int = setting(8, "new: LoRA rank")
    lora_alpha: float = setting(16.0, "new: LoRA alpha (scale alpha / rank)")

    def validate(self) -> None:
        super().validate()
        if int(self.lora_rank) < 1:
            raise ValueError(f"--lora_rank must be >= 1, got {self.lora_rank}")
