"""Attention Prompt Tuning (APT, arXiv 2403.06978): prompts appended to keys and values.

In each block ``i`` of ``[prompt_start, prompt_end]``, ``P`` key prompts and ``P`` value prompts of
size ``head_dim`` (shared by all heads, as the original code does) are concatenated to K and V:
``k' = [k ; s_k * dropout(Pk_i)]``, ``v' = [v ; s_v * dropout(Pv_i)]``. Queries, and with them the
token count and the MLP cost, are unchanged. With ``prompt_reparam``,
``s = torch.maximum(prompt_scale[i], 1)`` per prompt token; otherwise ``s = 1``.

The parameters sit on the model under the original code's names (``prompt_embeddings_k``,
``prompt_embeddings_v`` of shape (L, P, head_dim), ``prompt_scale`` (L, 2, P)) so its
checkpoints load unchanged.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import TransferMethod, register_transfer
from ..transfer_settings.apt import APTConfig


def prompt_init_bound(patch_size: int, width: int) -> float:
    """VPT's uniform init bound ``sqrt(6 / (3 * patch * patch + width))``."""
    return math.sqrt(6.0 / float(3 * patch_size * patch_size + width))


@register_transfer("apt", aliases=("prompt",))
class AttentionPromptTuning(TransferMethod):
    """APT (``--transfer_type apt``; ``prompt``, its former name, is accepted too); settings in
    ``APTConfig``."""

    config_class = APTConfig
    config: APTConfig
    # The original APT code (wgcban/apt) builds its groups with VideoMAE's get_parameter_groups:
    # no decay only for 1-D tensors, '.bias' names and {'pos_embed', 'cls_token'}, so the prompts
    # (L, P, head_dim) and prompt_scale (L, 2, P) take the base weight decay. The recipes
    # reproduce the paper, hence on by default; --no_decay_prompts exempts them.
    decay_prompts_default = True

    def __init__(self, config: Optional[APTConfig] = None, **settings: object) -> None:
        super().__init__(config, **settings)
        self.num_tokens = int(self.config.prompt_num_tokens)
        self.reparam = bool(self.config.prompt_reparam)
        self.per_head = bool(self.config.prompt_per_head)
        self.start = self.end = 0
        self.folded = False
        self._unfolded: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def inject(self, model: nn.Module) -> List[nn.Parameter]:
        self.start, self.end = self.config.blocks(model.depth)
        layers = self.end - self.start + 1
        attn = model.blocks[0].attn
        shape = (layers, self.num_tokens, attn.head_dim)
        if self.per_head:
            shape = (layers, attn.num_heads, self.num_tokens, attn.head_dim)
        bound = prompt_init_bound(model.patch_embed.patch_size[0], attn.head_dim)
        model.prompt_embeddings_k = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        model.prompt_embeddings_v = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        own = [model.prompt_embeddings_k, model.prompt_embeddings_v]
        if self.reparam:
            model.prompt_scale = nn.Parameter(torch.ones(layers, 2, self.num_tokens))
            own.append(model.prompt_scale)
        return own

    def no_weight_decay(self, model: nn.Module) -> List[nn.Parameter]:
        own = [model.prompt_embeddings_k, model.prompt_embeddings_v]
        return own + ([model.prompt_scale] if self.reparam else [])

    def extra_kv(self, model: nn.Module) -> List[Optional[Tuple[torch.Tensor, torch.Tensor]]]:
        """Dropout and scales applied once to the whole (L, P, hd) tensors, then split per block.

        Same function as slicing block by block (dropout is element-wise, the scale is per
        layer and prompt), but one kernel per step instead of one per block, and in the backward
        one ``unbind`` gathers the L blocks' gradients into a single (L, P, hd) tensor, where
        per-block indexing would zero-fill and accumulate a full-size gradient for every block.
        """
        p, train = self.config.prompt_dropout, model.training
        pk = F.dropout(model.prompt_embeddings_k, p, train)  # (L, P, hd) or (L, H, P, hd)
        pv = F.dropout(model.prompt_embeddings_v, p, train)
        if self.reparam and not self.folded:
            scale = model.prompt_scale  # (L, 2, P)
            scale = torch.maximum(scale, torch.ones_like(scale)).unsqueeze(-1)  # (L, 2, P, 1)
            if self.per_head:
                scale = scale.unsqueeze(2)  # (L, 2, 1, P, 1)
            pk, pv = pk * scale[:, 0], pv * scale[:, 1]
        out: List[Optional[Tuple[torch.Tensor, torch.Tensor]]] = [None] * len(model.blocks)
        for j, kv in enumerate(zip(pk.unbind(0), pv.unbind(0))):
            out[self.start + j] = kv
        return out

    @torch.no_grad()
    def fold(self, model: nn.Module) -> None:
        """Multiply the scales into the prompts once, so inference does no per-forward scaling."""
        if not self.reparam or self.folded:
            return
        self._unfolded = (model.prompt_embeddings_k.detach().clone(),
                          model.prompt_embeddings_v.detach().clone())
        scale = torch.maximum(model.prompt_scale, torch.ones_like(model.prompt_scale))
        scale = scale.unsqueeze(-1)  # (L, 2, P, 1)
        if self.per_head:
            scale = scale.unsqueeze(2)  # (L, 2, 1, P, 1)
        model.prompt_embeddings_k.mul_(scale[:, 0])
        model.prompt_embeddings_v.mul_(scale[:, 1])
        self.folded = True

    @torch.no_grad()
    def unfold(self, model: nn.Module) -> None:
        if not self.folded:
            return
        model.prompt_embeddings_k.copy_(self._unfolded[0])
        model.prompt_embeddings_v.copy_(self._unfolded[1])
        self._unfolded = None
        self.folded = False
