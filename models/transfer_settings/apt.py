"""Settings of Attention Prompt Tuning (APT); the method is ``models/transfer/apt.py``."""
from __future__ import annotations

from dataclasses import dataclass

from .base import PromptSettings, register_settings, setting


@register_settings("apt", "Attention Prompt Tuning", aliases=("prompt",))
@dataclass(frozen=True)
class APTConfig(PromptSettings):
    """APT's settings: P, the block range and dropout (``PromptSettings``) and these two."""

    prompt_reparam: bool = setting(False, "learned per-prompt scales s = max(scale, 1)")
    prompt_per_head: bool = setting(False, "new: one APT prompt set per head instead of one "
                                           "shared by all heads")
