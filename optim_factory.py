"""Optimizer and parameter groups (VideoMAE's ``optim_factory`` interface).

Rules:

* Only trainable tensors (``requires_grad``) are given to the optimizer; a frozen backbone is
  invisible to it (no state, no weight decay, no work).
* No weight decay for 1-D tensors and scalars (biases, norm scales), names ending in ``.bias``,
  parameters of normalisation layers, names in ``model.no_weight_decay()`` and the tensors the
  transfer type exempts by structure (``TransferMethod.no_weight_decay``: APT's
  ``prompt_embeddings_k/v`` and ``prompt_scale``, VPT's prompt tokens, Approximated Prompt
  Tuning's ``prompts``), unless they are decayed: ``decay_prompts`` (``--decay_prompts`` /
  ``--no_decay_prompts``), by default the type's ``decay_prompts_default`` (APT: yes, as the
  original APT code, whose VideoMAE groups decay every tensor of more than one dimension).
* Layer decay (``--layer_decay`` < 1) as VideoMAE's ``LayerDecayValueAssigner``: layer id 0 for
  the patch and position embeddings, ``i + 1`` for ``blocks.i`` (adapters and LoRA factors live
  inside their block and take its id), ``num_layers + 1`` for everything else (norms, head).
  Prompt tensors that span several blocks (``prompt_embeddings_k`` is (L, P, head_dim)) are
  top-level parameters and take the last id, i.e. scale 1, exactly as in the original APT code
  where they fell through to the same rule.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn

from utils.config import canonical_optimizer

logger = logging.getLogger(__name__)

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def get_num_layer_for_vit(var_name: str, num_max_layer: int) -> int:
    """VideoMAE's layer id of a parameter name (``num_max_layer`` = num_layers + 2)."""
    if var_name in ("cls_token", "mask_token", "pos_embed"):
        return 0
    if var_name.startswith("patch_embed"):
        return 0
    if var_name.startswith("rel_pos_bias"):
        return num_max_layer - 1
    if var_name.startswith("blocks."):
        return int(var_name.split(".")[1]) + 1
    return num_max_layer - 1


class LayerDecayValueAssigner:
    """Learning-rate scale per layer id: ``values[i] = layer_decay ** (num_layers + 1 - i)``."""

    def __init__(self, values: Sequence[float]) -> None:
        self.values = list(values)

    def get_scale(self, layer_id: int) -> float:
        return self.values[layer_id]

    def get_layer_id(self, var_name: str) -> int:
        return get_num_layer_for_vit(var_name, len(self.values))


def layer_decay_assigner(model: nn.Module, layer_decay: float) -> Optional[LayerDecayValueAssigner]:
    """The assigner for ``--layer_decay`` (None when it is 1, i.e. off)."""
    if layer_decay >= 1.0:
        return None
    num_layers = model.get_num_layers()
    return LayerDecayValueAssigner([layer_decay ** (num_layers + 1 - i) for i in range(num_layers + 2)])


def _norm_param_names(model: nn.Module) -> set:
    names = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            for p_name, _ in module.named_parameters(recurse=False):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def method_no_decay_ids(model: nn.Module, decay_prompts: Optional[bool] = None) -> set:
    """ids of the tensors the model's transfer type exempts from weight decay.

    Args:
        model: the model (its ``transfer`` answers; none: nothing exempt).
        decay_prompts: True/False from ``--decay_prompts``/``--no_decay_prompts``; None: the
            type's ``decay_prompts_default``.
    """
    method = getattr(model, "transfer", None)
    if method is None:
        return set()
    decay = method.decay_prompts_default if decay_prompts is None else decay_prompts
    return set() if decay else set(method.no_decay_ids)


def get_parameter_groups(model: nn.Module, weight_decay: float = 1e-5,
                         skip_list: Iterable[str] = (),
                         get_num_layer: Optional[Callable[[str], int]] = None,
                         get_layer_scale: Optional[Callable[[int], float]] = None,
                         decay_prompts: Optional[bool] = None) -> List[Dict]:
    """Parameter groups of the trainable tensors: (layer id) x (decay / no decay).

    Each group carries ``weight_decay``, ``lr_scale`` (layer decay, 1 without it) and the names
    of its parameters (``param_names``, for logs; optimizers ignore extra keys).

    Args:
        decay_prompts: decay the tensors the transfer type exempts (None: the type's default,
            see ``method_no_decay_ids``).
    """
    skip = set(skip_list)
    norms = _norm_param_names(model)
    exempt = method_no_decay_ids(model, decay_prompts)
    groups: Dict[str, Dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = (param.ndim <= 1 or name.endswith(".bias") or name in skip or name in norms
                    or id(param) in exempt)
        layer_id = get_num_layer(name) if get_num_layer is not None else None
        group_name = ("no_decay" if no_decay else "decay") + \
            (f"_layer_{layer_id}" if layer_id is not None else "")
        if group_name not in groups:
            scale = get_layer_scale(layer_id) if get_layer_scale is not None and layer_id is not None else 1.0
            groups[group_name] = {"params": [], "param_names": [], "lr_scale": scale,
                                  "weight_decay": 0.0 if no_decay else weight_decay,
                                  "group_name": group_name}
        groups[group_name]["params"].append(param)
        groups[group_name]["param_names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameters: check --transfer_type")
    logger.debug("parameter groups: %s", json.dumps(
        {k: {"lr_scale": g["lr_scale"], "weight_decay": g["weight_decay"],
             "params": g["param_names"]} for k, g in groups.items()}, indent=1))
    return list(groups.values())


def _log_prompt_decay(model: nn.Module, decay_prompts: Optional[bool]) -> None:
    """One line saying whether the transfer type's prompt tensors take weight decay, and why."""
    method = getattr(model, "transfer", None)
    if method is None or not method.no_decay_ids:
        return
    decayed = not method_no_decay_ids(model, decay_prompts)
    why = (f"the {method.name} default" if decay_prompts is None else
           "--decay_prompts" if decay_prompts else "--no_decay_prompts")
    logger.info("weight decay on the %s prompt tensors: %s (%s)", method.name,
                "yes" if decayed else "no", why)


def create_optimizer(args: Any, model: nn.Module,
                     get_num_layer: Optional[Callable[[str], int]] = None,
                     get_layer_scale: Optional[Callable[[int], float]] = None
                     ) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameter groups.

    Args:
        args: the optimisation settings (``OptimConfig`` or a namespace): ``opt`` ('adamw' |
            'sgd' | 'adam'), ``lr``, ``weight_decay``, ``opt_eps``, ``opt_betas``, ``momentum``,
            ``decay_prompts`` (None: the transfer type's default).
        model: the unwrapped model; names in ``model.no_weight_decay()`` take no decay.
        get_num_layer / get_layer_scale: layer decay (``LayerDecayValueAssigner``).
    """
    opt = canonical_optimizer(args.opt)
    skip_list = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    decay_prompts = args.decay_prompts
    params = get_parameter_groups(model, args.weight_decay, skip_list, get_num_layer,
                                  get_layer_scale, decay_prompts)
    _log_prompt_decay(model, decay_prompts)
    kwargs = {"lr": args.lr, "weight_decay": 0.0}
    if opt in ("adamw", "adam"):
        if args.opt_eps is not None:
            kwargs["eps"] = args.opt_eps
        if args.opt_betas is not None:
            if len(args.opt_betas) != 2:
                raise ValueError(f"--opt_betas takes two values, got {args.opt_betas}")
            kwargs["betas"] = tuple(args.opt_betas)
        cls = torch.optim.AdamW if opt == "adamw" else torch.optim.Adam
        optimizer = cls(params, **kwargs)
    elif opt == "sgd":
        optimizer = torch.optim.SGD(params, momentum=args.momentum, nesterov=True, **kwargs)
    else:
        raise ValueError(f"--opt {args.opt!r} is not supported; use adamw or sgd")
    return optimizer


def build_optimizer(args: Any, model: nn.Module) -> torch.optim.Optimizer:
    """The fine-tuning run's optimizer: ``create_optimizer`` with the layer decay of
    ``args.layer_decay`` (the one place both are put together, for the engine and the tests
    that compare the recipes' groups with the original code's).

    Args:
        args: the optimisation settings (``OptimConfig``), ``layer_decay`` included.
        model: the unwrapped model.
    """
    assigner = layer_decay_assigner(model, float(args.layer_decay))
    return create_optimizer(args, model,
                            get_num_layer=assigner.get_layer_id if assigner else None,
                            get_layer_scale=assigner.get_scale if assigner else None)
