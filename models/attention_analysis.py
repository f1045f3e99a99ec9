"""What the prompts of an APT or VPT model do, read off its own forward pass (analysis only).

Nothing here changes what the model computes: the forward that runs is the model's own (the
fused SDPA path included), and the analysis hangs on it with PyTorch hooks, removed on exit.

* :func:`attention_weights`: the attention weights that SDPA does not return, computed
  explicitly from the inputs of an ``Attention`` call, as its math path does
  (``softmax(q k^T / sqrt(d))`` over the token keys and the extra keys, the mask applied);
  :func:`attention_output` turns them back into the module's output. :class:`AttentionRecorder`
  computes them on every block during a forward and checks each time that
  ``proj(weights @ v)`` reproduces what the block's attention returned, so the numbers cannot
  silently drift from the model if ``Attention.forward`` changes.
* :func:`prompts_removed`: the same model with the prompts of some blocks taken out of their
  attention. APT: the block runs with no extra keys/values (a forward pre-hook drops them).
  VPT: the patch tokens of the block attend to the patch tokens only (the block is run on them
  alone, which is the same thing: norms, attention rows and the MLP are per token); the prompt
  tokens go on as before.
* :func:`prompt_tensors`: the prompts each block's attention uses, as the eval forward uses
  them (APT: ``extra_kv``, reparameterisation scales ``max(s, 1)`` folded in; VPT: the tokens
  inserted before the block).
* :func:`attention_rollout` and :func:`rollout_readout`: Abnar & Zuidema's attention rollout
  over the patch tokens and the relevance of each input token to the pooled feature.

Token layouts: APT appends its P prompts after the N token keys (queries are the N patch
tokens); VPT puts P prompt tokens first in the sequence, from its first prompted block on
(queries and keys), and drops them before pooling.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vit import KV, Attention

# Largest |proj(weights @ v) - attention output| accepted, relative to 1 + max|output|: float32
# SDPA and the explicit product differ by ~1e-6 here; a mismatch means the analysis no longer
# computes what Attention.forward does.
CHECK_TOLERANCE = 1e-3
# Attention weights computed at once (values; 4 bytes each in float32): the clips of a forward
# are measured in chunks of about this size, so a ViT-B batch does not hold every block's
# (clips, heads, 1568, 1568) weights at the same time.
WEIGHTS_PER_CHUNK = 1 << 26


@dataclass(frozen=True)
class PromptLayout:
    """Where a model's prompts are.

    Args:
        kind: ``apt`` (extra keys/values) or ``vpt`` (prompt tokens in the sequence).
        num_prompts: P, prompts per block.
        blocks: the blocks whose attention sees prompts (APT: its block range; VPT: every block
            from the first prompted one on, since the prompt tokens stay in the sequence).
        inserted: the blocks that get their own prompt parameters (APT: ``blocks``; VPT: the
            first block, and for deep VPT each block of its range).
    """

    kind: str
    num_prompts: int
    blocks: Tuple[int, ...]
    inserted: Tuple[int, ...]

    def prefix(self, block: int) -> int:
        """Prompt tokens at the start of the sequence entering ``block`` (VPT), else 0."""
        return self.num_prompts if self.kind == "vpt" and block in self.blocks else 0

    def key_slices(self, block: int, tokens: int, keys: int) -> Tuple[slice, slice, slice]:
        """``(patch queries, patch keys, prompt keys)`` of an attention call of ``block`` with
        ``tokens`` queries and ``keys`` keys."""
        if self.kind == "apt":  # keys: [N tokens ; P prompts (or none)]
            return slice(0, tokens), slice(0, tokens), slice(tokens, keys)
        p = self.prefix(block)  # keys = queries: [p prompts ; patches]
        return slice(p, tokens), slice(p, tokens), slice(0, p)


def prompt_layout(model: nn.Module) -> PromptLayout:
    """The :class:`PromptLayout` of an APT or VPT model.

    Raises:
        ValueError: the model's transfer type has no prompts (names it).
    """
    method = getattr(model, "transfer", None)
    name = getattr(method, "name", "")
    depth = len(model.blocks)
    if name == "apt":
        blocks = tuple(range(method.start, method.end + 1))
        return PromptLayout("apt", method.num_tokens, blocks, blocks)
    if name == "vpt":
        return PromptLayout("vpt", method.num_tokens, tuple(range(method.start, depth)),
                            tuple(range(method.start, method.end + 1)))
    raise ValueError(f"--transfer_type {name or 'none'}: prompt analysis needs an APT or VPT "
                     f"run (prompts on keys/values or prompt tokens)")


# ----------------------------------------------------------------------------- attention
def attention_weights(attn: Attention, x: torch.Tensor, extra_kv: Optional[KV] = None,
                      kv_mask: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The attention weights, keys and values of ``attn(x, extra_kv, kv_mask)``, computed as
    ``Attention``'s explicit math path does (same projections, hooks and broadcasting).

    Args:
        attn: a block's attention module.
        x: its input (B, N, dim) (``norm1`` of the block input).
        extra_kv: the extra keys/values of the call (APT prompts), or None.
        kv_mask: the call's mask of the extra keys, or None.

    Returns:
        ``weights`` (B, H, N, N + P), rows summing to 1, keys ordered as the module orders
        them; ``k`` and ``v`` (B, H, N + P, head_dim).
    """
    B, N, _ = x.shape
    qkv = attn.qkv_delta(x, F.linear(x, attn.qkv.weight, attn.qkv_bias()))
    q, k, v = (t.transpose(1, 2) for t in
               qkv.view(B, N, 3, attn.num_heads, attn.head_dim).unbind(2))
    if extra_kv is not None:
        pk, pv = (attn._broadcast(t.to(k.dtype), B) for t in extra_kv)
        k, v = torch.cat((k, pk), dim=2), torch.cat((v, pv), dim=2)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if kv_mask is not None:
        keep = attn._key_mask(kv_mask, extra_kv, B, N, k.shape[2])
        logits = logits.masked_fill(~keep, float("-inf"))
    return logits.softmax(dim=-1), k, v


def attention_output(attn: Attention, weights: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``attn``'s output (B, N, dim) from the weights and values of :func:`attention_weights`."""
    B, _, N, _ = weights.shape
    return attn.proj((weights @ v).transpose(1, 2).reshape(B, N, -1))


@dataclass
class BlockRecord:
    """What one block's attention did in one forward (B clips).

    Args:
        prompt_share: (B, H), per head the weight the patch queries put on the prompt keys,
            averaged over the queries (0 where the block has no prompts).
        token_share: (B, H), the same for the patch keys (``prompt_share + token_share`` = 1).
        patch_token_norm: (B,), mean L2 norm of the patch tokens entering the block.
        patch_key_norm: (B,), mean L2 norm of the patch tokens' keys (over heads and tokens).
        patch_value_norm: (B,), the same for their values.
        patch_attention: (R, N, N) for the clips asked for (``rollout_rows``): the head-mean
            attention of the patch queries over the patch keys, each row divided by its sum
            (the share that did not go to prompts); None when none was asked for.
        max_error: largest |proj(weights @ v) - the attention's output| of the forward.
    """

    prompt_share: torch.Tensor
    token_share: torch.Tensor
    patch_token_norm: torch.Tensor
    patch_key_norm: torch.Tensor
    patch_value_norm: torch.Tensor
    patch_attention: Optional[torch.Tensor]
    max_error: float


def _call_args(args: tuple, kwargs: dict) -> Tuple[torch.Tensor, Optional[KV],
                                                   Optional[torch.Tensor]]:
    """``(x, extra_kv, kv_mask)`` of an ``Attention`` / ``Block`` call, however passed."""
    names = ("x", "extra_kv", "kv_mask")
    values = dict(zip(names, args), **{k: v for k, v in kwargs.items() if k in names})
    return values["x"], values.get("extra_kv"), values.get("kv_mask")


class AttentionRecorder:
    """Records a :class:`BlockRecord` per block for every forward run inside the ``with``.

    Args:
        model: an APT or VPT model (eval mode for analysis: dropout would be recorded too).
        layout: its :func:`prompt_layout`.
        rollout_rows: the clips of each batch whose patch attention is kept for the rollout
            (None: none; the (N, N) maps of every block are large for big models).

    After a forward, ``records[b]`` is block b's record; each forward replaces them.

    Raises:
        RuntimeError: (in the forward) the explicit weights do not reproduce an attention
            output (the analysis no longer matches ``Attention.forward``).
    """

    def __init__(self, model: nn.Module, layout: PromptLayout,
                 rollout_rows: Optional[Sequence[int]] = None) -> None:
        self.model = model
        self.layout = layout
        self.rollout_rows = list(rollout_rows) if rollout_rows is not None else None
        self.records: List[Optional[BlockRecord]] = [None] * len(model.blocks)
        self._token_norm: Dict[int, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "AttentionRecorder":
        for i, blk in enumerate(self.model.blocks):
            self._handles.append(blk.register_forward_pre_hook(
                partial(self._block_input, i), with_kwargs=True))
            self._handles.append(blk.attn.register_forward_hook(
                partial(self._attention, i), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _block_input(self, block: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = _call_args(args, kwargs)[0]
        self._token_norm[block] = x[:, self.layout.prefix(block):].norm(dim=-1).mean(dim=1)

    @torch.no_grad()
    def _attention(self, block: int, module: Attention, args: tuple, kwargs: dict,
                   output: torch.Tensor) -> None:
        x, extra_kv, kv_mask = _call_args(args, kwargs)
        B, N, _ = x.shape
        keys = N + (extra_kv[0].shape[-2] if extra_kv is not None else 0)
        # Clips a chunk, so the (chunk, H, N, N + P) weights stay near WEIGHTS_PER_CHUNK values.
        step = max(1, WEIGHTS_PER_CHUNK // (module.num_heads * N * keys))
        parts = []
        for s in range(0, B, step):
            e = min(s + step, B)
            kv = None if extra_kv is None else tuple(_per_clip(t, s, e, 4) for t in extra_kv)
            rows = [r - s for r in self.rollout_rows or () if s <= r < e]
            parts.append(self._measure(block, module, x[s:e], kv, _per_clip(kv_mask, s, e, 2),
                                       output[s:e], rows))
        maps = [p["patch_attention"] for p in parts if p["patch_attention"] is not None]
        self.records[block] = BlockRecord(
            patch_token_norm=self._token_norm.pop(block),
            patch_attention=torch.cat(maps) if maps else None,
            max_error=max(p["max_error"] for p in parts),
            **{name: torch.cat([p[name] for p in parts]) for name in (
                "prompt_share", "token_share", "patch_key_norm", "patch_value_norm")})

    def _measure(self, block: int, module: Attention, x: torch.Tensor, extra_kv: Optional[KV],
                 kv_mask: Optional[torch.Tensor], output: torch.Tensor,
                 rollout_rows: List[int]) -> Dict[str, object]:
        """The record's fields for one chunk of clips (``rollout_rows`` indexed in it)."""
        weights, k, v = attention_weights(module, x, extra_kv, kv_mask)
        error = float((attention_output(module, weights, v) - output).abs().max())
        if error > CHECK_TOLERANCE * (1.0 + float(output.abs().max())):
            raise RuntimeError(f"block {block}: the explicit attention weights give an output "
                               f"{error:.3g} away from the model's (models/attention_analysis.py "
                               f"no longer computes what Attention.forward does)")
        rows, patch, prompt = self.layout.key_slices(block, x.shape[1], weights.shape[-1])
        w = weights[:, :, rows]  # (B, H, patch queries, K)
        kept = None
        if rollout_rows:
            a = w[rollout_rows][..., patch].mean(dim=1)  # (R, N', N') head mean
            kept = a / a.sum(dim=-1, keepdim=True)
        return {"prompt_share": w[..., prompt].sum(-1).mean(-1),
                "token_share": w[..., patch].sum(-1).mean(-1),
                "patch_key_norm": k[:, :, patch].norm(dim=-1).mean(dim=(1, 2)),
                "patch_value_norm": v[:, :, patch].norm(dim=-1).mean(dim=(1, 2)),
                "patch_attention": kept, "max_error": error}


def _per_clip(t: Optional[torch.Tensor], start: int, stop: int, per_clip_dims: int
              ) -> Optional[torch.Tensor]:
    """Clips ``start:stop`` of a tensor that has a batch axis when it has ``per_clip_dims``
    dimensions (extra keys (B, H, P, hd), a mask (B, P)); a broadcast one as it is."""
    return t[start:stop] if t is not None and t.dim() == per_clip_dims else t


# ------------------------------------------------------------------------ removing prompts
def _without_extra_kv(module: nn.Module, args: tuple, kwargs: dict) -> Tuple[tuple, dict]:
    """Block pre-hook: the block is called as an unprompted one, ``block(x)``."""
    return (_call_args(args, kwargs)[0],), {}


def _patches_alone(prefix: int, module: nn.Module, args: tuple, kwargs: dict,
                   output: torch.Tensor) -> torch.Tensor:
    """Block hook: the patch rows of the output recomputed from the patch tokens alone (they
    attend to no prompt); the prompt rows are the block's own."""
    x, extra_kv, kv_mask = _call_args(args, kwargs)
    patches = module.forward(x[:, prefix:], extra_kv, kv_mask)  # forward(): no hooks again
    return torch.cat((output[:, :prefix], patches), dim=1)


@contextlib.contextmanager
def prompts_removed(model: nn.Module, blocks: Sequence[int]) -> Iterator[nn.Module]:
    """The model with the prompts of ``blocks`` taken out of their attention (module
    docstring); as it was on exit.

    Args:
        model: an APT or VPT model.
        blocks: blocks of its :attr:`PromptLayout.blocks`.

    Raises:
        ValueError: a block without prompts.
    """
    layout = prompt_layout(model)
    handles = []
    try:
        for b in blocks:
            if b not in layout.blocks:
                raise ValueError(f"block {b} has no prompts (prompted blocks: "
                                 f"{list(layout.blocks)})")
            blk = model.blocks[b]
            if layout.kind == "apt":
                handles.append(blk.register_forward_pre_hook(_without_extra_kv,
                                                             with_kwargs=True))
            else:
                handles.append(blk.register_forward_hook(
                    partial(_patches_alone, layout.prefix(b)), with_kwargs=True))
        yield model
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------------- prompts
@torch.no_grad()
def prompt_tensors(model: nn.Module) -> Dict[int, Dict[str, torch.Tensor]]:
    """The prompts of each block that gets its own, as the eval forward uses them.

    Returns:
        ``{block: {"key": ..., "value": ...}}`` for APT (each (P, head_dim), or (H, P,
        head_dim) with ``--prompt_per_head``; ``max(scale, 1)`` multiplied in, as
        ``extra_kv`` does, whether or not the model is folded), ``{block: {"token": (P, dim)}}``
        for VPT.
    """
    layout = prompt_layout(model)
    was_training = model.training
    model.eval()  # no prompt dropout
    try:
        if layout.kind == "apt":
            kv = model.transfer.extra_kv(model)
            return {b: {"key": kv[b][0].detach().clone(), "value": kv[b][1].detach().clone()}
                    for b in layout.inserted}
        first, *deep = layout.inserted
        out = {first: {"token": model.prompt_embeddings[0].detach().clone()}}
        for j, b in enumerate(deep):
            out[b] = {"token": model.deep_prompt_embeddings[j].detach().clone()}
        return out
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------- rollout
def attention_rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema's rollout: ``R = Â_L ... Â_2 Â_1`` with ``Â_l = (A_l + I) / 2``.

    Args:
        attentions: per block, in order, row-stochastic (B, N, N) attention (queries x keys),
            e.g. :attr:`BlockRecord.patch_attention`. The identity stands for the residual.

    Returns:
        (B, N, N), rows summing to 1: ``R[i, j]`` is how much output token i draws from input
        token j through the blocks.
    """
    rollout = None
    for a in attentions:
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a_hat = 0.5 * a + 0.5 * eye
        rollout = a_hat if rollout is None else a_hat @ rollout
    if rollout is None:
        raise ValueError("attention_rollout needs at least one block's attention")
    return rollout


def rollout_readout(rollout: torch.Tensor, mean_pooling: bool = True) -> torch.Tensor:
    """Relevance (B, N) of each input patch token to the model's pooled feature.

    VideoMAE classifies ``fc_norm(mean of the output patch tokens)``: the readout is the mean of
    the rollout's rows, ``r_j = (1/N) sum_i R[i, j]`` (sums to 1). Without mean pooling
    (``--use_cls``-style models pool the first token) it is the first row.
    """
    return rollout.mean(dim=1) if mean_pooling else rollout[:, 0]
