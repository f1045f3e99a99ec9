"""Settings of AdaptFormer adapters; the method is ``models/transfer/adapter.py``."""
from __future__ import annotations

from dataclasses import dataclass

from .base import BlockRange, register_settings, setting


@register_settings("adapter", "AdaptFormer adapters")
@dataclass(frozen=True)
class AdapterConfig(BlockRange):
    """Settings: the block range, the bottleneck width and the output scale."""

    adapter_dim: int = setting(64, "new: AdaptFormer bottleneck")
    adapter_scale: float = setting(0.1, "new: AdaptFormer scale")

    def validate(self) -> None:
        super().validate()
        if int(self.adapter_dim) < 1:
            raise ValueError(f"--adapter_dim must be >= 1, got {self.adapter_dim}")
