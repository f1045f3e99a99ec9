"""Transfer types: how a pre-trained backbone is adapted (``--transfer_type``).

Each type lives in its own small module and registers itself by name; ``create_model`` builds the
backbone and attaches the chosen type. Adding a type = one new file + an import here.
"""
from . import adapter, approx, full, lora, prompt, vpt  # noqa: F401  (registration side effects)
from .base import (TRANSFER_TYPES, TransferMethod, classifier_modules, folded_for_inference,
                   get_transfer_class, register_transfer, resolve_block_range)

# Keyword arguments of create_model that configure a transfer type rather than the backbone.
TRANSFER_KWARGS = (
    "prompt_num_tokens", "prompt_start", "prompt_end", "prompt_dropout", "prompt_reparam",
    "prompt_per_head", "prompt_init", "vpt_mode", "approx_rank", "adapter_dim", "adapter_scale",
    "lora_rank", "lora_alpha",
)

__all__ = ["TRANSFER_TYPES", "TRANSFER_KWARGS", "TransferMethod", "classifier_modules",
           "folded_for_inference", "get_transfer_class", "register_transfer",
           "resolve_block_range"]
