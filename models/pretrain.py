"""VideoMAE masked-autoencoder pre-training model (docs/PRETRAINING.md, 'Model').

Layout and parameter names follow VideoMAE's ``modeling_pretrain.py`` (MCG-NJU/VideoMAE), so a
checkpoint written here has VideoMAE's pre-training layout (docs/FORMATS.md) and
``load_pretrained`` (i.e. ``--finetune``) loads its encoder into any fine-tuning backbone::

    encoder.patch_embed.proj.{weight,bias}    encoder.blocks.N.*    encoder.norm.{weight,bias}
    encoder_to_decoder.weight    mask_token    decoder.blocks.N.*    decoder.{norm,head}.*

The encoder *is* a :class:`models.vit.VisionTransformer` without a classifier (``num_classes=0``,
final ``norm`` instead of mean pooling), so its names cannot drift from the fine-tuning
backbone's; only its forward differs: it runs on the visible tokens alone. The decoder reuses
:class:`models.vit.Block` and the fixed sin-cos table.

Forward: ``model(videos (B,3,T,H,W), mask (B,N) bool, True = masked)`` ->
``(B, N_masked, 3 * tubelet * patch * patch)`` predicted pixels of the masked tokens, in the
order the tokens appear in the flattened ``t h w`` grid, each patch laid out as
``(tubelet, patch, patch, channel)`` (VideoMAE's ``(p0 p1 p2 c)``).
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import trunc_normal_

from .variants import PRETRAIN_VARIANTS
from .vit import VIT_VARIANTS, Block, VisionTransformer, sincos_position_table

logger = logging.getLogger(__name__)


def _xavier_init(m: nn.Module) -> None:
    """VideoMAE's pre-training init: xavier-uniform linear weights, zero biases, unit norms."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _check_mask(mask: torch.Tensor, batch: int, num_tokens: int) -> int:
    """Validate a (B, N) bool mask with the same number of masked tokens in every sample.

    Returns:
        The number of masked tokens per sample.
    """
    if mask.dtype != torch.bool or mask.shape != (batch, num_tokens):
        raise ValueError(f"mask must be bool of shape ({batch}, {num_tokens}) (batch, tokens), "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    counts = mask.sum(1)
    if batch and bool((counts != counts[0]).any()):
        # The visible tokens are gathered into one dense (B, N_vis, D) tensor, which needs an
        # equal count per sample (tube and random masking at a fixed ratio guarantee it).
        raise ValueError(f"every sample must mask the same number of tokens, got "
                         f"{counts.tolist()}")
    return int(counts[0]) if batch else 0


class PretrainVisionTransformerEncoder(VisionTransformer):
    """The fine-tuning backbone (same parameters and names) applied to visible tokens only.

    Args:
        **kwargs: ``VisionTransformer`` keywords (``img_size``, ``patch_size``, ``embed_dim``,
            ``depth``, ``num_heads``, ``all_frames``, ``tubelet_size``, ``drop_path_rate``,
            ``init_values``, ``use_learnable_pos_emb``, ``use_checkpoint``, ...). ``num_classes``
            is forced to 0 and ``use_mean_pooling`` to False: the pre-training encoder ends with
            ``norm`` and has no head, as VideoMAE's.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.update(num_classes=0, use_mean_pooling=False)
        super().__init__(**kwargs)
        self.apply(_xavier_init)  # VideoMAE pre-trains from xavier, not trunc-normal, weights

    def embed_visible(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Patch embedding (plus position) of the visible tubelets only.

        The Conv3d of ``patch_embed`` has kernel = stride, so it is a linear map of each
        tubelet's pixels; applying that map to the visible tubelets alone gives the same tokens
        as the convolution followed by selection, for about a tenth of the work (forward and
        weight gradient) at a 90% mask.

        Args:
            x: videos (B, C, T, H, W).
            mask: (B, N) bool, True = masked.

        Returns:
            (B, N_vis, D) visible tokens in grid order, position embedding added.
        """
        B, C, T, H, W = x.shape
        t, h, w = self.patch_embed.grid_size(T, H, W)
        tub, p = self.patch_embed.tubelet_size, self.patch_embed.patch_size[0]
        _check_mask(mask, B, t * h * w)
        # (B, t, h, w, C, tub, p, p) view; the boolean index copies the visible tubelets only.
        cubes = x.reshape(B, C, t, tub, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        visible = cubes[~mask.view(B, t, h, w)].flatten(1)  # (B*N_vis, C*tub*p*p)
        proj = self.patch_embed.proj
        tokens = F.linear(visible, proj.weight.flatten(1), proj.bias)  # (B*N_vis, D)
        D = tokens.shape[-1]
        pos = self.position_embedding((t, h, w), tokens.device, tokens.dtype)  # (1, N, D)
        pos = pos.expand(B, -1, -1)[~mask]  # (B*N_vis, D)
        return (tokens + pos).view(B, -1, D)

    def forward(self, x: torch.Tensor,  # type: ignore[override]
                mask: torch.Tensor) -> torch.Tensor:
        """Encode the visible tokens.

        Args:
            x: videos (B, 3, T, H, W).
            mask: (B, N) bool, True where a token is masked (hidden from the encoder).

        Returns:
            Encoded visible tokens (B, N_vis, D), in grid order.
        """
        # Only the visible tokens enter the blocks: what makes a 90% mask cheap.
        visible = self.pos_drop(self.embed_visible(x, mask))  # (B, N_vis, D)
        for blk in self.blocks:
            if self.use_checkpoint and self.training:
                visible = torch.utils.checkpoint.checkpoint(blk, visible, use_reentrant=False)
            else:
                visible = blk(visible)
        return self.norm(visible)


class PretrainVisionTransformerDecoder(nn.Module):
    """Narrow transformer that predicts the pixels of masked tokens.

    Args:
        out_dim: pixels per token (``3 * tubelet * patch * patch``).
        embed_dim: decoder width.
        depth: decoder blocks (``--decoder_depth``).
        num_heads: decoder heads.
        mlp_ratio: MLP expansion.
        qkv_bias: learn ``q_bias``/``v_bias``.
        drop_path_rate: stochastic depth, linearly increasing over the blocks.
        norm_layer: normalisation layer.
        init_values: layer-scale init (0 = off).
        use_checkpoint: gradient checkpointing of the blocks in training.
    """

    def __init__(self, out_dim: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6),
                 init_values: float = 0.0, use_checkpoint: bool = False) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"decoder width {embed_dim} is not divisible by its "
                             f"{num_heads} heads")
        self.embed_dim = embed_dim
        self.use_checkpoint = use_checkpoint
        # Stochastic depth rising linearly over the blocks (plain Python: works on 'meta' too).
        dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=dpr[i],
                  init_values=init_values, norm_layer=norm_layer) for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, out_dim)
        self.apply(_xavier_init)

    def forward(self, x: torch.Tensor, return_token_num: int) -> torch.Tensor:
        """Args:
            x: (B, N_vis + N_mask, D_dec), the mask tokens last.
            return_token_num: how many trailing tokens to predict pixels for.

        Returns:
            (B, return_token_num, out_dim).
        """
        for blk in self.blocks:
            if self.use_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        # Only the mask tokens are predicted (the loss is on masked tokens only).
        return self.head(self.norm(x[:, x.shape[1] - return_token_num:]))


class PretrainVisionTransformer(nn.Module):
    """VideoMAE: tube-masked video autoencoder with an asymmetric encoder/decoder.

    Keyword names are those of VideoMAE's ``PretrainVisionTransformer``; ``all_frames`` and
    ``tubelet_size`` set the clip shape the learnable position table (if any) is made for (the
    fixed sin-cos tables follow any input shape).

    Args:
        img_size: frame side the model is built for.
        patch_size: spatial patch side.
        encoder_in_chans: input channels.
        encoder_embed_dim: encoder width (the fine-tuning backbone's ``embed_dim``).
        encoder_depth: encoder blocks.
        encoder_num_heads: encoder heads.
        decoder_embed_dim: decoder width (narrow: VideoMAE uses half the encoder's).
        decoder_depth: decoder blocks (``--decoder_depth``, VideoMAE default 4).
        decoder_num_heads: decoder heads.
        decoder_num_classes: pixels per token; default ``3 * tubelet * patch * patch``.
        mlp_ratio: MLP expansion of all blocks.
        qkv_bias: VideoMAE's ``q_bias``/``v_bias``.
        drop_rate: dropout after the position embedding and projections (encoder).
        attn_drop_rate: attention dropout (encoder).
        drop_path_rate: stochastic depth (``--drop_path``), encoder and decoder.
        norm_layer: normalisation layer.
        init_values: layer-scale init (0 = off).
        use_learnable_pos_emb: learnable encoder position table instead of the sin-cos one.
        use_checkpoint: gradient checkpointing (``--use_checkpoint``).
        all_frames: clip length (``--num_frames``).
        tubelet_size: frames per token (``--tubelet_size``).
        **unused: VideoMAE keywords without effect here (``num_classes``, ``in_chans``,
            ``encoder_num_classes``, ``qk_scale``), accepted so its configs work.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, encoder_in_chans: int = 3,
                 encoder_embed_dim: int = 768, encoder_depth: int = 12,
                 encoder_num_heads: int = 12, decoder_embed_dim: int = 384,
                 decoder_depth: int = 4, decoder_num_heads: int = 6,
                 decoder_num_classes: Optional[int] = None, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_layer: Optional[Callable[..., nn.Module]] = None,
                 init_values: float = 0.0, use_learnable_pos_emb: bool = False,
                 use_checkpoint: bool = False, all_frames: int = 16, tubelet_size: int = 2,
                 **unused: Any) -> None:
        super().__init__()
        for key in ("qk_scale",):
            if unused.get(key) is not None:
                raise ValueError(f"{key} is not supported by this VideoMAE implementation")
        unknown = set(unused) - {"num_classes", "in_chans", "encoder_num_classes", "qk_scale",
                                 "drop_block_rate"}
        if unknown:
            raise TypeError(f"unexpected keyword arguments for the pre-training model: "
                            f"{sorted(unknown)}")
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        pixels_per_token = encoder_in_chans * tubelet_size * patch_size * patch_size
        if decoder_num_classes is not None and decoder_num_classes != pixels_per_token:
            raise ValueError(f"decoder_num_classes {decoder_num_classes} must equal "
                             f"{encoder_in_chans} * tubelet {tubelet_size} * {patch_size}^2 = "
                             f"{pixels_per_token}")
        self.encoder = PretrainVisionTransformerEncoder(
            img_size=img_size, patch_size=patch_size, in_chans=encoder_in_chans,
            embed_dim=encoder_embed_dim, depth=encoder_depth, num_heads=encoder_num_heads,
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, norm_layer=norm_layer,
            init_values=init_values, use_learnable_pos_emb=use_learnable_pos_emb,
            all_frames=all_frames, tubelet_size=tubelet_size, use_checkpoint=use_checkpoint)
        self.decoder = PretrainVisionTransformerDecoder(
            pixels_per_token, decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio,
            qkv_bias, drop_path_rate, norm_layer, init_values, use_checkpoint)
        self.encoder_to_decoder = nn.Linear(encoder_embed_dim, decoder_embed_dim, bias=False)
        nn.init.xavier_uniform_(self.encoder_to_decoder.weight)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        trunc_normal_(self.mask_token, std=0.02)
        # Fixed decoder position tables, one per (N, device, dtype): not weights, not saved.
        self._dec_pos_cache: Dict[Tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def pixels_per_token(self) -> int:
        return self.decoder.head.out_features

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"encoder.pos_embed", "mask_token"}

    def get_num_layers(self) -> int:
        return len(self.encoder.blocks)

    def token_grid(self, videos: torch.Tensor) -> Tuple[int, int, int]:
        """Token grid (t, h, w) of a (B, 3, T, H, W) batch."""
        return self.encoder.patch_embed.grid_size(*videos.shape[2:])

    def _decoder_pos(self, num_tokens: int, device: torch.device,
                     dtype: torch.dtype) -> torch.Tensor:
        key = (num_tokens, device, dtype)
        table = self._dec_pos_cache.get(key)
        if table is None:
            table = sincos_position_table(num_tokens, self.decoder.embed_dim).to(device=device,
                                                                                dtype=dtype)
            self._dec_pos_cache[key] = table
        return table  # (1, N, D_dec)

    def forward(self, videos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Reconstruct the masked tokens.

        Args:
            videos: normalised clips (B, 3, T, H, W).
            mask: (B, N) bool, True = masked, the same count in every sample.

        Returns:
            Predicted pixels (B, N_masked, 3 * tubelet * patch * patch).
        """
        visible = self.encoder_to_decoder(self.encoder(videos, mask))  # (B, N_vis, D_dec)
        B, n_vis, C = visible.shape
        N = mask.shape[1]
        pos = self._decoder_pos(N, visible.device, visible.dtype).expand(B, -1, -1)  # (B, N, C)
        pos_vis = pos[~mask].reshape(B, n_vis, C)
        pos_mask = pos[mask].reshape(B, N - n_vis, C)
        # Visible tokens first, then one shared mask token per hidden position (VideoMAE order).
        full = torch.cat([visible + pos_vis, self.mask_token + pos_mask], dim=1)  # (B, N, C)
        return self.decoder(full, pos_mask.shape[1])


# --- registered variants ---------------------------------------------------------------------
PRETRAIN_MODEL_REGISTRY: Dict[str, Callable[..., PretrainVisionTransformer]] = {}

def _register(name: str, enc_dim: int, enc_depth: int, enc_heads: int, dec_dim: int,
              dec_heads: int, finetune_name: str) -> None:
    def build(**kwargs: Any) -> PretrainVisionTransformer:
        cfg: Dict[str, Any] = dict(patch_size=VIT_VARIANTS[finetune_name][3],
                                   encoder_embed_dim=enc_dim,
                                   encoder_depth=enc_depth, encoder_num_heads=enc_heads,
                                   decoder_embed_dim=dec_dim, decoder_num_heads=dec_heads,
                                   mlp_ratio=4, qkv_bias=True,
                                   norm_layer=partial(nn.LayerNorm, eps=1e-6))
        cfg.update(kwargs)  # callers may override any architecture keyword
        return PretrainVisionTransformer(**cfg)

    build.__name__ = name
    build.__doc__ = (f"VideoMAE pre-training model: encoder {enc_dim}/{enc_depth}/{enc_heads} "
                     f"(fine-tune with --model {finetune_name}), decoder {dec_dim} wide, "
                     f"{dec_heads} heads.")
    PRETRAIN_MODEL_REGISTRY[name] = build


for _name, _cfg in PRETRAIN_VARIANTS.items():
    _register(_name, *_cfg)


def list_pretrain_models() -> list:
    """Names accepted by :func:`create_pretrain_model` (``--model`` of run_mae_pretraining.py)."""
    return sorted(PRETRAIN_MODEL_REGISTRY)


def finetune_model_for(name: str) -> str:
    """The fine-tuning ``--model`` whose backbone a pre-training variant's encoder matches."""
    if name not in PRETRAIN_VARIANTS:
        raise ValueError(f"--model {name!r} is not a pre-training variant; choose one of "
                         f"{', '.join(list_pretrain_models())}")
    return PRETRAIN_VARIANTS[name][-1]


def create_pretrain_model(name: str, pretrained: bool = False,
                          **kwargs: Any) -> PretrainVisionTransformer:
    """Build a registered VideoMAE pre-training model.

    Args:
        name: one of :func:`list_pretrain_models`, e.g. ``pretrain_videomae_base_patch16_224``.
        pretrained: must be False (no hub downloads; resume with ``--resume`` instead).
        **kwargs: :class:`PretrainVisionTransformer` keywords, e.g. ``decoder_depth``,
            ``drop_path_rate``, ``img_size``, ``all_frames``, ``tubelet_size``,
            ``use_checkpoint``; architecture keywords override the variant.
    """
    if name not in PRETRAIN_MODEL_REGISTRY:
        raise ValueError(f"--model {name!r} is not a pre-training model; choose one of "
                         f"{', '.join(list_pretrain_models())}")
    if pretrained:
        raise ValueError("pretrained=True is not supported for pre-training models")
    model = PRETRAIN_MODEL_REGISTRY[name](**kwargs)
    model.model_name = name
    return model


__all__ = ["PretrainVisionTransformer", "PretrainVisionTransformerEncoder",
           "PretrainVisionTransformerDecoder", "PRETRAIN_MODEL_REGISTRY", "PRETRAIN_VARIANTS",
           "create_pretrain_model", "list_pretrain_models", "finetune_model_for"]
