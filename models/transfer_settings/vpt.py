"""Settings of Visual Prompt Tuning (VPT); the method is ``models/transfer/vpt.py``."""
from __future__ import annotations

from dataclasses import dataclass

from .base import PromptSettings, register_settings, setting


@register_settings("vpt", "Visual Prompt Tuning")
@dataclass(frozen=True)
class VPTConfig(PromptSettings):
    """VPT's settings: P, the block range and dropout (``PromptSettings``) and the mode."""

    vpt_mode: str = setting("deep", "new: shallow (prompts before the first block of the range) "
                                    "or deep (fresh prompts before every block of it)",
                            choices=("shallow", "deep"))

    def validate(self) -> None:
        super().validate()
        if self.vpt_mode not in ("shallow", "deep"):
            raise ValueError(f"--vpt_mode must be 'shallow' or 'deep', got {self.vpt_mode!r}")
