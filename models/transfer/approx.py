"""Approximated Prompt Tuning (arXiv 2306.15706): prompt attention as one diffusion step.

In each block of the range, with ``h = norm1(x)`` and ``a`` the frozen attention output:
``Pk = Pm + W2(W1(Pm))`` (rank-4 bottleneck, ``W2`` zero-init), ``A = dropout(relu(h Pk^T))``
(B, N, M), ``e = A Pm``, ``w = max_M A`` (no gradient), and the block's attention output becomes
``(a + e * w) * exp(g)`` with a learned scalar ``g`` (init 0). The prompts never enter the softmax,
so the frozen attention is untouched and the extra cost is ``O(N M D)``.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn

from .base import TransferMethod, register_transfer
from ..transfer_settings.approx import ApproxConfig


class ApproxPrompt(nn.Module):
    """The per-block module placed in ``Block.attn_adapter``."""

    def __init__(self, dim: int, num_tokens: int, rank: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)  # Pm (M, D)
        self.down = nn.Linear(dim, rank, bias=False)  # W1
        self.up = nn.Linear(rank, dim, bias=False)  # W2, zero-init: Pk = Pm at the start
        nn.init.zeros_(self.up.weight)
        self.gate = nn.Parameter(torch.zeros(()))  # g
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        pm = self.prompts.to(h.dtype)
        pk = pm + self.up(self.down(pm))  # (M, D)
        weights = self.dropout(torch.relu(h @ pk.t()))  # (B, N, M)
        diffused = weights @ pm  # (B, N, D)
        strength = weights.detach().amax(dim=-1, keepdim=True)  # (B, N, 1), no gradient
        return (attn_out + diffused * strength) * self.gate.exp()


@register_transfer("approx")
class ApproximatedPromptTuning(TransferMethod):
    """Approximated Prompt Tuning (``--transfer_type approx``); settings in ``ApproxConfig``."""

    config_class = ApproxConfig
    config: ApproxConfig

    def __init__(self, config: Optional[ApproxConfig] = None, **settings: object) -> None:
        super().__init__(config, **settings)
        self.num_tokens = int(self.config.prompt_num_tokens)

    def inject(self, model: nn.Module) -> List[nn.Parameter]:
        start, end = self.config.blocks(model.depth)
        own: List[nn.Parameter] = []
        for i in range(start, end + 1):
            module = ApproxPrompt(model.embed_dim, self.num_tokens, int(self.config.approx_rank),
                                  float(self.config.prompt_dropout))
            model.blocks[i].attn_adapter = module
            own.extend(module.parameters())
        return own

    def no_weight_decay(self, model: nn.Module) -> List[nn.Parameter]:
        return [blk.attn_adapter.prompts for blk in model.blocks
                if isinstance(blk.attn_adapter, ApproxPrompt)]
