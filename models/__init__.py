"""VideoMAE ViT backbone, checkpoint loading, transfer types and cost reports.

    from models import create_model, load_pretrained
    model = create_model("vit_base_patch16_224", num_classes=101, all_frames=16,
                         transfer_type="prompt", prompt_num_tokens=400, prompt_reparam=True)
    report = load_pretrained(model, "videomae_vit_b_k400_pretrain.pth")
"""
from __future__ import annotations

from typing import Any

from .cost import cost_report, parameter_counts
from .method_io import (backbone_reference, file_sha256, load_method, save_method,
                        trainable_state_dict, trains_whole_model)
from .checkpoint import CheckpointError, LoadReport, load_pretrained, torch_load
from .flops import count_forward_flops, count_train_step_flops, flop_counter
from .transfer import TRANSFER_KWARGS, TRANSFER_TYPES, TransferMethod, get_transfer_class
from .pretrain import create_pretrain_model, list_pretrain_models
from .vit import MODEL_REGISTRY, Attention, Block, VisionTransformer, list_models


def create_model(name: str, pretrained: bool = False, transfer_type: str = "end2end",
                 **kwargs: Any) -> VisionTransformer:
    """Build a registered backbone and attach a transfer type.

    Args:
        name: a registered variant (``list_models()``), e.g. ``vit_base_patch16_224``.
        pretrained: must be False; weights come from ``load_pretrained`` (no hub downloads).
        transfer_type: one of ``TRANSFER_TYPES`` (``end2end`` trains everything).
        **kwargs: VideoMAE's keywords (``num_classes``, ``all_frames``, ``img_size``,
            ``tubelet_size``, ``drop_rate``, ``drop_path_rate``, ``attn_drop_rate``,
            ``fc_drop_rate``, ``use_mean_pooling``, ``init_scale``, ``init_values``,
            ``use_checkpoint``, ``use_learnable_pos_emb``; architecture keywords such as
            ``embed_dim``/``depth``/``num_heads`` override the variant) and the transfer-type
            keywords of ``TRANSFER_KWARGS``.
    """
    if name not in MODEL_REGISTRY:
        raise ValueError(f"--model {name!r} is unknown; choose one of {', '.join(list_models())}")
    if pretrained:
        raise ValueError("pretrained=True is not supported: pass a file to load_pretrained "
                         "(--finetune) instead")
    if kwargs.pop("drop_block_rate", None) is not None:
        raise ValueError("drop_block_rate is not supported by the video ViT")
    method_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in TRANSFER_KWARGS}
    prompt_init = method_kwargs.pop("prompt_init", "random")
    if prompt_init != "random":
        raise ValueError(f"--prompt_init {prompt_init!r}: only 'random' is implemented")
    method = get_transfer_class(transfer_type)(**method_kwargs)  # validates before building
    model = MODEL_REGISTRY[name](**kwargs)
    model.model_name = name
    method.attach(model)
    return model


__all__ = ["create_model", "load_pretrained", "list_models", "LoadReport", "CheckpointError",
           "VisionTransformer", "Attention", "Block", "TransferMethod", "TRANSFER_TYPES",
           "flop_counter", "count_forward_flops", "count_train_step_flops", "torch_load",
           "cost_report", "parameter_counts", "backbone_reference", "file_sha256", "load_method",
           "save_method", "trainable_state_dict", "trains_whole_model", "create_pretrain_model",
           "list_pretrain_models"]
