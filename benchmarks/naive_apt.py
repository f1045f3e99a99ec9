"""A straightforward APT implementation: the baseline of the "naive vs ours" training-step row.

It is what one writes first from the paper and the VideoMAE code: attention as explicit
``softmax(q k^T) v`` with the prompts expanded over batch and heads and concatenated to K and V
every forward, the reparameterisation scales applied every forward, the position table copied
into every forward (VideoMAE's ``pos_embed.expand(...).clone()``), the same prompt dropout as the
model's, and the frozen weights left out of the optimizer. ``frozen_requires_grad`` chooses how
they are kept from training:

* ``True`` (the straightforward baseline): they are only left out of the optimizer, so
  autograd still computes their weight gradients, which are then never used;
* ``False``: ``requires_grad=False`` as well, so only the attention implementation differs.

It takes the state dict of ``models.create_model(..., transfer_type="apt")`` (same names), and
computes the same function (``tests/test_performance_paths.py`` checks that).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F


def _sincos(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    angles = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64),
                             2 * (torch.arange(d, dtype=torch.float64) // 2) / d)
    angles[:, 0::2] = torch.sin(angles[:, 0::2])
    angles[:, 1::2] = torch.cos(angles[:, 1::2])
    return angles.float()[None]


class NaiveAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pk=None, pv=None) -> torch.Tensor:
        B, N, C = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.heads, self.hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if pk is not None:
            k = torch.cat((k, pk.expand(B, self.heads, -1, -1)), dim=2)
            v = torch.cat((v, pv.expand(B, self.heads, -1, -1)), dim=2)
        attn = (q * self.hd ** -0.5) @ k.transpose(-2, -1)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class NaiveBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = NaiveAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(dim, 4 * dim)
        self.mlp.act = nn.GELU()
        self.mlp.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x, pk=None, pv=None):
        x = x + self.attn(self.norm1(x), pk, pv)
        return x + self.mlp(self.norm2(x))


class NaiveAPT(nn.Module):
    """VideoMAE ViT + APT on every block, written the straightforward way."""

    def __init__(self, dim: int, depth: int, heads: int, num_classes: int, num_tokens: int,
                 num_patches: int, tubelet: int = 2, frozen_requires_grad: bool = True,
                 prompt_dropout: float = 0.0) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(3, dim, (tubelet, 16, 16), (tubelet, 16, 16))
        self.register_buffer("pos_embed", _sincos(num_patches, dim), persistent=False)
        self.blocks = nn.ModuleList(NaiveBlock(dim, heads) for _ in range(depth))
        hd = dim // heads
        self.prompt_embeddings_k = nn.Parameter(torch.zeros(depth, num_tokens, hd))
        self.prompt_embeddings_v = nn.Parameter(torch.zeros(depth, num_tokens, hd))
        self.prompt_scale = nn.Parameter(torch.ones(depth, 2, num_tokens))
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self.frozen_requires_grad = frozen_requires_grad
        self.prompt_dropout = nn.Dropout(prompt_dropout)

    def trainable(self) -> List[nn.Parameter]:
        """What the optimizer gets: prompts, scales and the classifier."""
        return [self.prompt_embeddings_k, self.prompt_embeddings_v, self.prompt_scale,
                *self.fc_norm.parameters(), *self.head.parameters()]

    def freeze(self) -> "NaiveAPT":
        train_ids = {id(p) for p in self.trainable()}
        for p in self.parameters():
            p.requires_grad_(self.frozen_requires_grad or id(p) in train_ids)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        B = x.shape[0]
        x = x + self.pos_embed.expand(B, -1, -1).type_as(x).to(x.device).clone().detach()
        for i, blk in enumerate(self.blocks):
            s = torch.maximum(self.prompt_scale[i], torch.ones_like(self.prompt_scale[i]))
            pk = self.prompt_dropout(self.prompt_embeddings_k[i]) * s[0][:, None]
            pv = self.prompt_dropout(self.prompt_embeddings_v[i]) * s[1][:, None]
            x = blk(x, pk, pv)
        return self.head(self.fc_norm(x.mean(1)))


def naive_from(model: nn.Module, frozen_requires_grad: bool = True) -> NaiveAPT:
    """A ``NaiveAPT`` with the weights of an APT model of ``models.create_model`` (all blocks)."""
    attn = model.blocks[0].attn
    n = model.patch_embed.num_patches
    naive = NaiveAPT(model.embed_dim, len(model.blocks), attn.num_heads, model.head.out_features,
                     model.prompt_embeddings_k.shape[1], n, model.tubelet_size,
                     frozen_requires_grad, model.transfer.config.prompt_dropout)
    sd = {k: v for k, v in model.state_dict().items()}
    missing, unexpected = naive.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "pos_embed"]
    if missing or unexpected:
        raise ValueError(f"naive APT does not match the model: missing {missing}, "
                         f"unexpected {unexpected} (APT must cover every block)")
    return naive.freeze()


__all__ = ["NaiveAPT", "naive_from"]
