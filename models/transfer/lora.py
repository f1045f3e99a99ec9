"""LoRA (arXiv 2106.09685) on the query and value projections inside the fused ``qkv``.

``delta_q = s * B_q A_q x`` and ``delta_v = s * B_v A_v x`` with ``s = alpha / rank`` and ``B``
zero-initialised; keys are not adapted. ``fold`` merges ``s * B A`` into the frozen ``qkv.weight``
for inference (no extra work per forward) and ``unfold`` restores the exact original weight.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import TransferMethod, register_transfer
from ..transfer_settings.lora import LoRAConfig


class LoRAQKV(nn.Module):
    """The per-block module placed in ``Attention.qkv_delta``."""

    def __init__(self, dim: int, all_head_dim: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.rank, self.scaling = rank, alpha / rank
        self.lora_A_q = nn.Parameter(torch.empty(rank, dim))
        self.lora_A_v = nn.Parameter(torch.empty(rank, dim))
        for a in (self.lora_A_q, self.lora_A_v):  # as nn.Linear / PEFT initialise A
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_B_q = nn.Parameter(torch.zeros(all_head_dim, rank))
        self.lora_B_v = nn.Parameter(torch.zeros(all_head_dim, rank))
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """``s * [B_q A_q ; 0 ; B_v A_v]``, shape (3 * all_head_dim, dim)."""
        dq = self.lora_B_q @ self.lora_A_q  # (all, dim)
        dv = self.lora_B_v @ self.lora_A_v
        return self.scaling * torch.cat((dq, torch.zeros_like(dq), dv), 0)

    def forward(self, x: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
        """Args: x (B, N, dim) the attention input; qkv (B, N, 3 * all) the frozen projection."""
        if self.merged:  # the update already sits in qkv.weight
            return qkv
        low = F.linear(x, torch.cat((self.lora_A_q, self.lora_A_v), 0))  # (B, N, 2r)
        q, v = low.split(self.rank, dim=-1)
        q_out, k_out, v_out = qkv.chunk(3, dim=-1)
        return torch.cat((q_out + self.scaling * F.linear(q, self.lora_B_q), k_out,
                          v_out + self.scaling * F.linear(v, self.lora_B_v)), dim=-1)


@register_transfer("lora")
class LoRA(TransferMethod):
    """LoRA on q and v (``--transfer_type lora``); settings in ``LoRAConfig``."""

    config_class = LoRAConfig
    config: LoRAConfig

    def __init__(self, config: Optional[LoRAConfig] = None, **settings: object) -> None:
        super().__init__(config, **settings)
        self._original: dict = {}

    def inject(self, model: nn.Module) -> List[nn.Parameter]:
        start, end = self.config.blocks(model.depth)
        own: List[nn.Parameter] = []
        for i in range(start, end + 1):
            attn = model.blocks[i].attn
            module = LoRAQKV(model.embed_dim, attn.num_heads * attn.head_dim,
                             int(self.config.lora_rank), float(self.config.lora_alpha))
            attn.qkv_delta = module
            own.extend(module.parameters())
        return own

    def _modules(self, model: nn.Module):
        for i, blk in enumerate(model.blocks):
            if isinstance(blk.attn.qkv_delta, LoRAQKV):
                yield i, blk.attn

    @torch.no_grad()
    def fold(self, model: nn.Module) -> None:
        """Merge every LoRA update into its frozen ``qkv.weight``."""
        for i, attn in self._modules(model):
            if attn.qkv_delta.merged:
                continue
            self._original[i] = attn.qkv.weight.detach().clone()
            attn.qkv.weight.add_(attn.qkv_delta.delta_weight().to(attn.qkv.weight.dtype))
            attn.qkv_delta.merged = True

    @torch.no_grad()
    def unfold(self, model: nn.Module) -> None:
        for i, attn in self._modules(model):
            if attn.qkv_delta.merged:
                attn.qkv.weight.copy_(self._original.pop(i))
                attn.qkv_delta.merged = False
