"""Building a backbone with a transfer type attached, from keywords or from a ``ModelConfig``."""
from __future__ import annotations

from typing import Any, Optional

from .config import ModelConfig
from .transfer import (TRANSFER_TYPES, MethodConfig, get_transfer_class, make_config,
                       setting_fields)
from .vit import MODEL_REGISTRY, VisionTransformer, list_models


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


def create_model_from_config(cfg: ModelConfig) -> VisionTransformer:
    """The backbone of ``cfg`` with its transfer type attached (validates shapes, reads no
    data).

    Args:
        cfg: the network's settings (``FinetuneConfig.model``).
    """
    return create_model(
        cfg.model, transfer_type=cfg.transfer_type, method_config=cfg.method,
        num_classes=cfg.num_classes, all_frames=cfg.num_frames, img_size=cfg.input_size,
        tubelet_size=cfg.tubelet_size, drop_rate=cfg.drop, drop_path_rate=cfg.drop_path,
        attn_drop_rate=cfg.attn_drop_rate, fc_drop_rate=cfg.fc_drop_rate,
        use_mean_pooling=cfg.use_mean_pooling, init_scale=cfg.init_scale,
        use_checkpoint=cfg.use_checkpoint, use_learnable_pos_emb=cfg.use_learnable_pos_emb)
