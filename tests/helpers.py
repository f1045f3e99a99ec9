"""Small builders shared by the model tests."""
from __future__ import annotations

import argparse

import torch

from models import create_model

# init_scale=1.0: VisionTransformer's default (0.0, as VideoMAE fine-tuning) multiplies the head
# by zero, so every logit and every backbone gradient would be exactly zero and any comparison of
# two models' outputs or gradients would compare zeros with zeros. Callers may still override it.
TINY = dict(num_classes=7, all_frames=4, img_size=32, embed_dim=64, depth=4, num_heads=4,
            init_scale=1.0)


def its_settings(transfer_type: str, kwargs: dict) -> dict:
    """``kwargs`` without the settings of other transfer types (``create_model`` refuses
    those), so one set of method keywords can be shared by tests of every type."""
    from models.transfer import all_setting_fields, setting_fields
    own, every = setting_fields(transfer_type), all_setting_fields()
    return {k: v for k, v in kwargs.items() if k in own or k not in every}


def tiny_model(transfer_type: str = "end2end", **kwargs):
    """A 4-block, 64-wide ViT on 4x32x32 clips (8 tokens) with a non-zero classifier head."""
    cfg = dict(TINY)
    cfg.update(its_settings(transfer_type, kwargs))
    return create_model("vit_micro_patch16", transfer_type=transfer_type, **cfg)


def tiny_clip(batch: int = 2, frames: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size)


def videomae_args() -> argparse.Namespace:
    """The kind of Namespace VideoMAE stores under 'args' in its checkpoints."""
    return argparse.Namespace(model="vit_micro_patch16", batch_size=8, lr=1e-3, mask_ratio=0.9,
                              opt_betas=[0.9, 0.95], output_dir="/tmp/out", tubelet_size=2,
                              window_size=(2, 2, 2), resume="", normlize_target=True)
