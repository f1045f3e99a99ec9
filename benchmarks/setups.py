"""The transfer-type configurations every benchmark compares, and how to build them alike."""
from __future__ import annotations

from typing import Dict, Tuple

from benchmarks import common  # noqa: F401  (first: sets OpenMP's wait policy before torch)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from models import create_model  # noqa: E402


def type_configs(num_tokens: int) -> Dict[str, Tuple[str, dict]]:
    """Row name -> (``transfer_type``, keyword arguments), with the published APT settings.

    Prompt-like types get the same number of prompts ``num_tokens`` so their costs compare.
    """
    return {
        "end2end": ("end2end", {}),
        "linear": ("linear", {}),
        "prompt (APT)": ("apt", dict(prompt_num_tokens=num_tokens, prompt_reparam=True,
                                     prompt_dropout=0.1)),
        "vpt deep": ("vpt", dict(prompt_num_tokens=num_tokens, vpt_mode="deep",
                                 prompt_dropout=0.1)),
        "vpt shallow": ("vpt", dict(prompt_num_tokens=num_tokens, vpt_mode="shallow",
                                    prompt_dropout=0.1)),
        "adapter": ("adapter", dict(adapter_dim=64, adapter_scale=0.1)),
        "lora": ("lora", dict(lora_rank=8, lora_alpha=16)),
        "approx": ("approx", dict(prompt_num_tokens=num_tokens, prompt_dropout=0.1)),
    }


def build(model_name: str, row: str, num_tokens: int, frames: int, size: int,
          num_classes: int = 101, device: str = "cpu", shared: Dict[str, torch.Tensor] = None
          ) -> nn.Module:
    """One model of a comparison. ``shared``: backbone weights every model of the run gets, so
    they differ only in their transfer type (and trained weights are not all-zero, e.g. the
    zero-initialised LoRA/adapter factors get small random values so nothing is skipped)."""
    transfer_type, kwargs = type_configs(num_tokens)[row]
    model = create_model(model_name, transfer_type=transfer_type, num_classes=num_classes,
                         all_frames=frames, img_size=size, init_scale=1.0, **kwargs)
    if shared is not None:
        model.load_state_dict(shared, strict=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in model.transfer.owned_names and not p.any():
                p.normal_(0, 0.02)
    return model.to(device)


def shared_backbone(model_name: str, frames: int, size: int, num_classes: int = 101
                    ) -> Dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_model(model_name, num_classes=num_classes, all_frames=frames, img_size=size,
                        init_scale=1.0).state_dict()
