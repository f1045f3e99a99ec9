"""The one VideoMAE ViT backbone that every transfer type plugs into.

Layout and parameter names follow VideoMAE (MCG-NJU/VideoMAE, ``modeling_finetune.py``) so that its
checkpoints load unchanged: Conv3d tubelet embedding, fixed 1-D sin-cos position table, pre-norm
blocks with separate ``q_bias``/``v_bias`` (the key bias is fixed at zero), mean pooling into
``fc_norm`` and a linear ``head``.

Transfer types (``models/transfer``) change the network only through these hook points:

* ``Attention.forward(x, extra_kv, kv_mask)``: extra keys/values (APT prompts) concatenated to K
  and V; ``kv_mask`` optionally leaves some of them out per sample (padding when the samples of
  one batch have different prompt counts: ``models/multitask.py``).
* Three sub-modules, each an ``Unadapted`` hook (returns the output it is given) until a
  transfer type puts its own module there; a hook is called as ``hook(input, output)`` and
  returns the output the block goes on with:

  - ``Attention.qkv_delta(x, qkv)``: the qkv projection's output (LoRA);
  - ``Block.attn_adapter(norm1(x), attn_out)``: the attention output, before layer scale and the
    residual (Approximated Prompt Tuning);
  - ``Block.mlp_adapter(norm2(x), x)``: the block's output after the MLP residual, for a branch
    beside the MLP, outside its drop path (AdaptFormer).

  The names are those of the parameters a checkpoint stores (``blocks.3.mlp_adapter.up.weight``).
* ``VisionTransformer.transfer``: the method object; asked before every block for extra
  keys/values and for token-sequence edits (VPT), and how many prefix tokens to drop before pooling.

Long on purpose: the backbone is one concern (patch embedding, attention with its fused path,
the block with its hooks, the ViT and its registered variants), read together.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, Mlp, trunc_normal_

KV = Tuple[torch.Tensor, torch.Tensor]


def sincos_position_table(num_tokens: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed 1-D sinusoid table over the flattened token index, shape (1, N, D).

    Computed in float64 as the original numpy code does, then rounded once to float32, so the
    values are bit-identical to VideoMAE's and Hugging Face's tables.
    """
    position = torch.arange(num_tokens, dtype=torch.float64)[:, None]  # (N, 1)
    exponent = 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim  # (D,)
    angles = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.to(torch.float32).unsqueeze(0)


def interpolate_pos_embed(pos: torch.Tensor, src_grid: Tuple[int, int, int],
                          dst_grid: Tuple[int, int, int]) -> torch.Tensor:
    """Resize a learnable (1, t*h*w, D) table from ``src_grid`` to ``dst_grid`` (time and space)."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos
    t, h, w = src_grid
    dim = pos.shape[-1]
    grid = pos.reshape(1, t, h, w, dim).permute(0, 4, 1, 2, 3).float()  # (1, D, t, h, w)
    grid = F.interpolate(grid, size=tuple(dst_grid), mode="trilinear", align_corners=False)
    return grid.permute(0, 2, 3, 4, 1).reshape(1, -1, dim).to(pos.dtype)


class PatchEmbed(nn.Module):
    """Video to tubelet tokens: Conv3d with kernel = stride = (tubelet, patch, patch)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, num_frames: int = 16, tubelet_size: int = 2) -> None:
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.tubelet_size = int(tubelet_size)
        self.num_frames = num_frames
        self.proj = nn.Conv3d(in_chans, embed_dim,
                              kernel_size=(self.tubelet_size, patch_size, patch_size),
                              stride=(self.tubelet_size, patch_size, patch_size))

    def grid_size(self, frames: int, height: int, width: int) -> Tuple[int, int, int]:
        """Token grid (t, h, w) for an input of the given size; raises on indivisible sizes."""
        p = self.patch_size[0]
        if frames % self.tubelet_size or height % p or width % p:
            raise ValueError(
                f"input of {frames}x{height}x{width} (frames x height x width) does not divide into "
                f"tubelets of {self.tubelet_size}x{p}x{p}: --num_frames must be a multiple of "
                f"--tubelet_size and --input_size a multiple of {p}")
        return frames // self.tubelet_size, height // p, width // p

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid_size(self.num_frames, *self.img_size)
        return t * h * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grid_size(*x.shape[2:])  # validate with a clear message
        # (B, D, N) -> (B, N, D). Made contiguous here, once: the transposed view would otherwise
        # be inherited by every residual add (TensorIterator keeps the first operand's layout),
        # so every LayerNorm, forward and backward, would copy its input to contiguous memory
        # and every residual add would run strided (~3% of a ViT-S training step on CPU).
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()  # (B, N, D)


class Unadapted(nn.Module):
    """The hook of a block that no transfer type adapts: ``hook(input, output)`` is ``output``.

    No parameters and no tensor operation, so an unadapted block computes what VideoMAE's does,
    bit for bit. A transfer type replaces it with a module of the same call signature.
    """

    def forward(self, inp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out


class Attention(nn.Module):
    """Multi-head self-attention with VideoMAE's biases and optional extra keys/values.

    Args:
        dim: token width.
        num_heads: attention heads.
        qkv_bias: learn ``q_bias`` and ``v_bias`` (the key bias stays zero, as in VideoMAE).
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        attn_head_dim: head width if not ``dim // num_heads``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0,
                 attn_head_dim: Optional[int] = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = attn_head_dim or dim // num_heads
        all_head_dim = self.head_dim * num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = True  # SDPA; False selects the explicit softmax(q k^T) v path

        self.qkv = nn.Linear(dim, all_head_dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(all_head_dim))
            self.v_bias = nn.Parameter(torch.zeros(all_head_dim))
            # The zero key bias lives in a buffer so it is not re-allocated every forward.
            self.register_buffer("k_bias", torch.zeros(all_head_dim), persistent=False)
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(all_head_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.qkv_delta: nn.Module = Unadapted()  # hook (x, qkv) -> qkv (LoRA)

    def qkv_bias(self) -> Optional[torch.Tensor]:
        if self.q_bias is None:
            return None
        # Engines that cast parameters but not buffers (DeepSpeed bf16) must not mix dtypes here.
        return torch.cat((self.q_bias, self.k_bias.to(self.q_bias.dtype), self.v_bias))

    def _broadcast(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        """(P, hd), (H, P, hd) or (B, H, P, hd) -> a (B, H, P, hd) view, heads first."""
        if t.dim() == 2:
            t = t.expand(self.num_heads, -1, -1)
        return t.expand(batch, self.num_heads, -1, -1)

    @staticmethod
    def _key_mask(kv_mask: torch.Tensor, extra_kv: Optional[KV], batch: int, tokens: int,
                  keys: int) -> torch.Tensor:
        """(B, P) or (P,) mask of the extra keys -> (B, 1, 1, N + P) boolean mask of all keys
        (True = attend), broadcast over heads and queries; the N token keys are always kept."""
        if extra_kv is None:
            raise ValueError("Attention.forward: kv_mask masks extra keys/values, but no "
                             "extra_kv was given")
        if kv_mask.dtype != torch.bool or kv_mask.shape[-1] != keys - tokens:
            raise ValueError(f"Attention.forward: kv_mask must be a boolean (B, P) or (P,) mask "
                             f"of the P = {keys - tokens} extra keys, got {kv_mask.dtype} "
                             f"{tuple(kv_mask.shape)}")
        kv_mask = kv_mask.expand(batch, -1)
        return torch.cat((kv_mask.new_ones(batch, tokens), kv_mask), dim=1)[:, None, None, :]

    def forward(self, x: torch.Tensor, extra_kv: Optional[KV] = None,
                kv_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args:
            x: tokens (B, N, dim).
            extra_kv: optional keys and values appended along the token axis; each of shape
                (P, head_dim), (heads, P, head_dim) or (B, heads, P, head_dim) (broadcast).
            kv_mask: optional boolean (B, P) or (P,), only with ``extra_kv``: True where an
                extra key/value takes part in a sample's attention, False where it is padding
                (it then gets exactly zero weight). None: every extra key takes part, and the
                computation is the one without a mask.
        """
        B, N, _ = x.shape
        qkv = self.qkv_delta(x, F.linear(x, self.qkv.weight, self.qkv_bias()))
        # Split along the (B, N, 3, H, hd) axis and transpose each part, rather than permute the
        # 5-D view and unbind: same views, but the backward then stacks dq, dk, dv straight into
        # the qkv layout (one copy) instead of stacking them head-major and copying again.
        q, k, v = (t.transpose(1, 2) for t in
                   qkv.view(B, N, 3, self.num_heads, self.head_dim).unbind(2))  # (B, H, N, hd)
        if extra_kv is not None:  # (B, H, N, hd) -> (B, H, N + P, hd)
            # The prompts enter as broadcast views (no per-head or per-sample copies); the cat
            # is the one copy, because SDPA takes K and V as single tensors. Broadcasting over
            # heads first and then over the batch makes autograd reduce their gradient in two
            # passes (batch, then heads), each over contiguous blocks of the kernel's gradient
            # layout, in about half the time of one reduction over both strided axes.
            pk, pv = (self._broadcast(t.to(k.dtype), B) for t in extra_kv)
            k = torch.cat((k, pk), dim=2)
            v = torch.cat((v, pv), dim=2)
        keep = None if kv_mask is None else self._key_mask(kv_mask, extra_kv, B, N, k.shape[2])
        drop = self.attn_drop if self.training else 0.0
        if self.fused_attn:
            if keep is None:  # the unmasked call, unchanged
                x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
            else:
                x = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=drop)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N + P)
            if keep is not None:  # every row keeps its N token keys, so none is all -inf
                attn = attn.masked_fill(~keep, float("-inf"))
            attn = F.dropout(attn.softmax(dim=-1), p=drop)
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, -1)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block with optional layer scale (``gamma_1``, ``gamma_2``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 init_values: float = 0.0, norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
                 attn_head_dim: Optional[int] = None) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                              proj_drop=drop, attn_head_dim=attn_head_dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        # VideoMAE drops only after fc2 (the dropout after the activation is disabled there).
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=(0.0, drop))
        if init_values and init_values > 0:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None
        # The hooks a transfer type replaces (module docstring); identities until then.
        self.attn_adapter: nn.Module = Unadapted()  # (norm1(x), attn out) -> attn out
        self.mlp_adapter: nn.Module = Unadapted()  # (norm2(x), x after the MLP residual) -> x

    @staticmethod
    def _layer_scale(gamma: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``gamma * x`` with VideoMAE's layer scale (``init_values`` > 0), else ``x``."""
        return x if gamma is None else gamma * x

    def forward(self, x: torch.Tensor, extra_kv: Optional[KV] = None,
                kv_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args: x (B, N, dim); ``extra_kv`` and ``kv_mask`` as ``Attention.forward`` takes them."""
        h = self.norm1(x)
        a = self.attn_adapter(h, self.attn(h, extra_kv, kv_mask))
        x = x + self.drop_path(self._layer_scale(self.gamma_1, a))
        h = self.norm2(x)
        x = x + self.drop_path(self._layer_scale(self.gamma_2, self.mlp(h)))
        return self.mlp_adapter(h, x)


class VisionTransformer(nn.Module):
    """VideoMAE ViT for clip classification (input ``(B, 3, T, H, W)``, output logits).

    Keyword names are those of VideoMAE's ``VisionTransformer`` so its scripts and configs work.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 fc_drop_rate: float = 0.0, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_layer: Optional[Callable[..., nn.Module]] = None,
                 init_values: float = 0.0, use_learnable_pos_emb: bool = False,
                 init_scale: float = 0.0, all_frames: int = 16, tubelet_size: int = 2,
                 use_checkpoint: bool = False, use_mean_pooling: bool = True) -> None:
        super().__init__()
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.tubelet_size = tubelet_size
        self.use_checkpoint = use_checkpoint
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, all_frames,
                                      tubelet_size)
        self.grid = self.patch_embed.grid_size(all_frames, img_size, img_size)
        if use_learnable_pos_emb:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
            trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.pos_embed = None
        self._pos_cache: dict = {}  # (N, device, dtype) -> fixed sin-cos table
        self.pos_drop = nn.Dropout(p=drop_rate)

        # Stochastic depth decay rule (linspace in Python: also works when built on the meta device).
        dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i],
                  init_values, norm_layer) for i in range(depth)])
        self.norm = nn.Identity() if use_mean_pooling else norm_layer(embed_dim)
        self.fc_norm = norm_layer(embed_dim) if use_mean_pooling else None
        self.fc_dropout = nn.Dropout(p=fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        self.apply(self._init_weights)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            self.head.weight.data.mul_(init_scale)
            self.head.bias.data.mul_(init_scale)
        self.transfer = None  # set by TransferMethod.attach (a plain object, no tensors)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # --- helpers used by training code -------------------------------------------------------
    def get_num_layers(self) -> int:
        return len(self.blocks)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed"}

    def set_fused_attn(self, enabled: bool) -> None:
        """Switch every block between SDPA (True) and explicit-math attention (False)."""
        for blk in self.blocks:
            blk.attn.fused_attn = enabled

    def position_embedding(self, grid: Tuple[int, int, int], device: torch.device,
                           dtype: torch.dtype) -> torch.Tensor:
        """(1, N, D) position table for a token grid; cached so it is built once per shape."""
        if self.pos_embed is not None:
            return interpolate_pos_embed(self.pos_embed, self.grid, grid).to(dtype)
        key = (grid[0] * grid[1] * grid[2], device, dtype)
        table = self._pos_cache.get(key)
        if table is None:
            table = sincos_position_table(key[0], self.embed_dim).to(device=device, dtype=dtype)
            self._pos_cache[key] = table
        return table

    # --- forward -----------------------------------------------------------------------------
    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The video tokens after the last block and ``norm`` (an identity with mean pooling),
        prompt tokens left out: (B, N, D), what :meth:`pool` reduces."""
        grid = self.patch_embed.grid_size(*x.shape[2:])
        x = self.patch_embed(x)  # (B, N, D)
        x = self.pos_drop(x + self.position_embedding(grid, x.device, x.dtype))
        method = self.transfer
        all_kv = method.extra_kv(self) if method is not None else None  # APT: (k, v) per block
        for i, blk in enumerate(self.blocks):
            extra_kv = all_kv[i] if all_kv is not None else None
            if method is not None:
                x = method.before_block(self, i, x)  # VPT inserts / replaces prompt tokens
            if self.use_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, extra_kv, use_reentrant=False)
            else:
                x = blk(x, extra_kv)
        if method is not None and method.num_prefix_tokens:
            x = x[:, method.num_prefix_tokens:]  # pool over the video tokens only
        return self.norm(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens -> (B, D), the head's input: ``fc_norm`` of their mean (mean
        pooling), else the first token."""
        if self.fc_norm is not None:
            return self.fc_norm(tokens.mean(1))
        return tokens[:, 0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_tokens(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- registered variants ---------------------------------------------------------------------
MODEL_REGISTRY: dict = {}

VIT_VARIANTS = {
    # name: (embed_dim, depth, num_heads, patch_size)
    "vit_tiny_patch16_224": (192, 12, 3, 16),
    "vit_small_patch16_224": (384, 12, 6, 16),
    "vit_base_patch16_224": (768, 12, 12, 16),
    "vit_large_patch16_224": (1024, 24, 16, 16),
    "vit_huge_patch16_224": (1280, 32, 16, 16),
    # Small variants for tests and the demo (same architecture, fewer and narrower blocks).
    "vit_micro_patch16": (64, 2, 4, 16),
    "vit_mini_patch16": (128, 4, 4, 16),
    # The demo's backbone: 32x32 clips in 8x8 patches (a 4x4 grid per tubelet).
    "vit_mini_patch8": (128, 4, 4, 8),
}


def _register(name: str, embed_dim: int, depth: int, num_heads: int, patch_size: int) -> None:
    def build(**kwargs) -> VisionTransformer:
        cfg = dict(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                   mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
        cfg.update(kwargs)  # callers may override any architecture keyword
        return VisionTransformer(**cfg)

    build.__name__ = name
    build.__doc__ = (f"VideoMAE ViT: dim {embed_dim}, depth {depth}, heads {num_heads}, "
                     f"patch {patch_size}.")
    MODEL_REGISTRY[name] = build


for _name, _cfg in VIT_VARIANTS.items():
    _register(_name, *_cfg)


def list_models() -> list:
    return sorted(MODEL_REGISTRY)

