"""Settings of Approximated Prompt Tuning; the method is ``models/transfer/approx.py``."""
from __future__ import annotations

from dataclasses import dataclass

from .base import PromptSettings, register_settings, setting


@register_settings("approx", "Approximated Prompt Tuning")
@dataclass(frozen=True)
class ApproxConfig(PromptSettings):
    """Settings: M (``--prompt_num_tokens``), the block range, dropout, and the bottleneck rank."""

    approx_rank: int = setting(4, "new: Approximated Prompt Tuning bottleneck rank")

    def validate(self) -> None:
        super().validate()
        if int(self.approx_rank) < 1:
            raise ValueError(f"--approx_rank must be >= 1, got {self.approx_rank}")
