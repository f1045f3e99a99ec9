"""Visual Prompt Tuning (VPT, arXiv 2203.12119): prompt tokens inserted into the token sequence.

``shallow``: ``P`` tokens of width ``dim`` are prepended once, before block ``prompt_start``
(default 0). ``deep``: a fresh set replaces the previous block's prompt outputs before every block
of the range. The prompts lengthen the sequence by ``P``, so attention and MLP cost grow with it;
pooling averages the video tokens only. Names follow the VPT code: ``prompt_embeddings`` (1, P, D)
and, for deep, ``deep_prompt_embeddings`` (L - 1, P, D).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import TransferMethod, check_num_tokens, register_transfer, resolve_block_range
from .prompt import prompt_init_bound


@register_transfer("vpt")
class VisualPromptTuning(TransferMethod):
    """VPT. Args: prompt_num_tokens (P), vpt_mode ('shallow' | 'deep'), prompt_start/prompt_end,
    prompt_dropout."""

    def __init__(self, prompt_num_tokens: int = 5, vpt_mode: str = "deep",
                 prompt_start: Optional[int] = None, prompt_end: Optional[int] = None,
                 prompt_dropout: float = 0.0, **_: object) -> None:
        super().__init__(prompt_num_tokens=prompt_num_tokens, vpt_mode=vpt_mode,
                         prompt_start=prompt_start, prompt_end=prompt_end,
                         prompt_dropout=prompt_dropout)
        if vpt_mode not in ("shallow", "deep"):
            raise ValueError(f"--vpt_mode must be 'shallow' or 'deep', got {vpt_mode!r}")
        self.num_tokens = self.num_prefix_tokens = check_num_tokens(prompt_num_tokens)
        self.deep = vpt_mode == "deep"
        self.start = self.end = 0

    def inject(self, model: nn.Module) -> List[nn.Parameter]:
        self.start, self.end = resolve_block_range(model.depth, self.config["prompt_start"],
                                                   self.config["prompt_end"])
        if not self.deep:
            self.end = self.start
        bound = prompt_init_bound(model.patch_embed.patch_size[0], model.embed_dim)
        shape = (1, self.num_tokens, model.embed_dim)
        model.prompt_embeddings = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        own = [model.prompt_embeddings]
        if self.end > self.start:
            shape = (self.end - self.start, self.num_tokens, model.embed_dim)
            model.deep_prompt_embeddings = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
            own.append(model.deep_prompt_embeddings)
        return own

    def before_block(self, model: nn.Module, index: int, x: torch.Tensor) -> torch.Tensor:
        if index < self.start or index > self.end:
            return x
        B, p, train = x.shape[0], self.config["prompt_dropout"], model.training
        if index == self.start:  # (B, N, D) -> (B, P + N, D)
            prompts = F.dropout(model.prompt_embeddings, p, train).expand(B, -1, -1)
            return torch.cat((prompts.to(x.dtype), x), dim=1)
        prompts = model.deep_prompt_embeddings[index - self.start - 1]
        prompts = F.dropout(prompts, p, train).expand(B, -1, -1)  # replace the previous prompts
        return torch.cat((prompts.to(x.dtype), x[:, self.num_tokens:]), dim=1)
