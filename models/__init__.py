"""VideoMAE ViT backbone, checkpoint loading, transfer types and cost reports.

    from models import create_model, load_pretrained
    model = create_model("vit_base_patch16_224", num_classes=101, all_frames=16,
                         transfer_type="apt", prompt_num_tokens=400, prompt_reparam=True)
    report = load_pretrained(model, "videomae_vit_b_k400_pretrain.pth")
"""
from __future__ import annotations

from typing import Any, Optional

from .cost import cost_report, parameter_counts
from .method_state import (backbone_reference, file_sha256, load_method, load_method_state,
                           save_method, trainable_state_dict, trains_whole_model)
from .pretrained import LoadReport, load_pretrained
from .run_checkpoints import read_checkpoint
from .serialization import CheckpointError, torch_load
from .flops import count_forward_flops, count_train_step_flops, flop_counter
from .transfer import (TRANSFER_TYPES, MethodConfig, TransferMethod, get_transfer_class,
                       make_config, setting_fields)
from .pretrain import create_pretrain_model, list_pretrain_models
from .vit import MODEL_REGISTRY, Attention, Block, VisionTransformer, list_models


def create_model(name: str, pretrained: bool = False, transfer_type: str = "end2end",
                 method_config: Optional[MethodConfig] = None, **kwargs: Any) -> VisionTransformer:
    """Build a registered backbone and attach a transfer type.

    Args:
        name: a registered variant (``list_models()``), e.g. ``vit_base_patch16_224``.
        pretrained: must be False; weights come from ``load_pretrained`` (no hub downloads).
        transfer_type: one of ``TRANSFER_TYPES`` (``end2end`` trains everything).
        method_config: the type's settings (its ``config_class``); or pass them as keywords.
        **kwargs: VideoMAE's keywords (``num_classes``, ``all_frames``, ``img_size``,
            ``tubelet_size``, ``drop_rate``, ``drop_path_rate``, ``attn_drop_rate``,
            ``fc_drop_rate``, ``use_mean_pooling``, ``init_scale``, ``init_values``,
            ``use_checkpoint``, ``use_learnable_pos_emb``; architecture keywords such as
            ``embed_dim``/``depth``/``num_heads`` override the variant) and the settings of
            ``transfer_type`` (e.g. ``prompt_num_tokens``); another type's setting is an error.
    """
    if name not in MODEL_REGISTRY:
        raise ValueError(f"--model {name!r} is unknown; choose one of {', '.join(list_models())}")
    if pretrained:
        raise ValueError("pretrained=True is not supported: pass a file to load_pretrained "
                         "(--finetune) instead")
    if kwargs.pop("drop_block_rate", None) is not None:
        raise ValueError("drop_block_rate is not supported by the video ViT")
    method_class = get_transfer_class(transfer_type)
    all_settings = {n for t in TRANSFER_TYPES for n in setting_fields(t)}
    settings = {k: kwargs.pop(k) for k in list(kwargs) if k in all_settings}
    if method_config is None:
        method_config = make_config(transfer_type, settings)  # validates before building
    elif settings:
        raise TypeError("create_model takes the method's settings as method_config or as "
                        f"keywords, not both ({', '.join(sorted(settings))})")
    method = method_class(method_config)
    model = MODEL_REGISTRY[name](**kwargs)
    model.model_name = name
    method.attach(model)
    return model


__all__ = ["create_model", "load_pretrained", "list_models", "LoadReport", "CheckpointError",
           "VisionTransformer", "Attention", "Block", "TransferMethod", "MethodConfig", "TRANSFER_TYPES",
           "flop_counter", "count_forward_flops", "count_train_step_flops", "torch_load",
           "cost_report", "parameter_counts", "backbone_reference", "file_sha256", "load_method",
           "save_method", "trainable_state_dict", "trains_whole_model", "load_method_state",
           "read_checkpoint", "create_pretrain_model",
           "list_pretrain_models"]
