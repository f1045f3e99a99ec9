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

from .base import TransferMethod, register_transfer
from ..transfer_settings.vpt import VPTConfig
from .apt import prompt_init_bound


@register_transfer("vpt")
class VisualPromptTuning(TransferMethod):
    """VPT (``--transfer_type vpt``); settings in ``VPTConfig``."""

    config_class = VPTConfig
    config: VPTConfig

    def __init__(self, config: Optional[VPTConfig] = None, **settings: object) -> None:
        super().__init__(config, **settings)
        self.num_tokens = self.num_prefix_tokens = int(self.config.prompt_num_tokens)
        self.deep = self.config.vpt_mode == "deep"
        self.start = self.end = 0

    def inject(self, model: nn.Module) -> List[nn.Parameter]:
        self.start, self.end = self.config.blocks(model.depth)
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

    def no_weight_decay(self, model: nn.Module) -> List[nn.Parameter]:
        return [p for name, p in model.named_parameters(recurse=False)
                if name in ("prompt_embeddings", "deep_prompt_embeddings")]

    def before_block(self, model: nn.Module, index: int, x: torch.Tensor) -> torch.Tensor:
        if index < self.start or index > self.end:
            return x
        B, p, train = x.shape[0], self.config.prompt_dropout, model.training
        if index == self.start:  # (B, N, D) -> (B, P + N, D)
            prompts = F.dropout(model.prompt_embeddings, p, train).expand(B, -1, -1)
            return torch.cat((prompts.to(x.dtype), x), dim=1)
        prompts = model.deep_prompt_embeddings[index - self.start - 1]
        prompts = F.dropout(prompts, p, train).expand(B, -1, -1)  # replace the previous prompts
        return torch.cat((prompts.to(x.dtype), x[:, self.num_tokens:]), dim=1)
