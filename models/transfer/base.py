"""The interface every transfer type implements and the registry of the methods.

A transfer type is two small files named alike:

* ``models/transfer_settings/<name>.py``: a frozen dataclass of its settings (``MethodConfig``
  subclass, registered with ``register_settings``): each field, declared with
  ``setting(default, help)``, is the command-line flag ``--<field>``, the ``create_model`` keyword
  and an architecture setting saved in checkpoints (``--eval`` restores it); ``validate`` checks
  values that need no model. Apart, so that the flags are built without importing torch;
* ``models/transfer/<name>.py``: a ``TransferMethod`` subclass, registered by name, that adds its
  modules or parameters to a built backbone (``inject``) and answers the backbone's per-block
  questions (``before_block``, ``extra_kv``).

Which tensors train is decided by structure: the parameters ``inject`` returns plus the
classifier's norm and head; everything else is frozen. Which of them take no weight decay is
decided the same way (``no_weight_decay``), and so is whether they are decayed all the same by
default (``decay_prompts_default``, the choice of the type's original code; ``--decay_prompts`` /
``--no_decay_prompts`` override it). No parameter name is ever matched against a pattern.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn

from ..transfer_settings import (TRANSFER_ALIASES, TRANSFER_SETTINGS, BlockRange,  # noqa: F401
                                 MethodConfig, PromptSettings, all_setting_fields,
                                 canonical_transfer_type, check_num_tokens, make_config,
                                 register_settings, resolve_block_range, setting, setting_fields)

TRANSFER_TYPES: Dict[str, Type["TransferMethod"]] = {}
# Names whose settings ``register_transfer`` registered (types defined in one file, no settings
# module): a redefinition of such a type replaces them.
_SETTINGS_FROM_METHODS: set = set()


def register_transfer(name: str, aliases: Sequence[str] = ()):
    """Class decorator: make a transfer type selectable by ``--transfer_type name``.

    Its settings are those registered under ``name`` in ``models/transfer_settings`` (where the
    command lines read them without torch); a type whose settings are not registered there (one
    defined in a script or a test) registers its ``config_class`` here, under ``aliases``.

    Args:
        name: the registered name (``cls.name``, what new checkpoints store).
        aliases: former names that still select it (``canonical_transfer_type``).
    """
    def wrap(cls: Type["TransferMethod"]) -> Type["TransferMethod"]:
        taken = [a for a in aliases
                 if a in TRANSFER_SETTINGS or TRANSFER_ALIASES.get(a, name) != name]
        if name in TRANSFER_ALIASES or taken:
            raise ValueError(f"transfer type {cls.__name__}: the name "
                             f"{(taken or [name])[0]!r} is already another type's")
        if name not in TRANSFER_SETTINGS or name in _SETTINGS_FROM_METHODS:
            TRANSFER_SETTINGS.pop(name, None)
            register_settings(name, cls.__name__, aliases)(cls.config_class)
            _SETTINGS_FROM_METHODS.add(name)
        elif TRANSFER_SETTINGS[name] is not cls.config_class:
            raise ValueError(f"transfer type {cls.__name__}: config_class "
                             f"{cls.config_class.__name__} is not the settings registered as "
                             f"{name!r} ({TRANSFER_SETTINGS[name].__name__})")
        cls.name = name
        TRANSFER_TYPES[name] = cls
        return cls
    return wrap


def get_transfer_class(name: str) -> Type["TransferMethod"]:
    """The class registered as ``name`` or as the type ``name`` is a former name of."""
    canonical = canonical_transfer_type(name)
    if canonical not in TRANSFER_TYPES:
        raise ValueError(f"--transfer_type {name!r} is unknown; choose one of "
                         f"{', '.join(sorted(TRANSFER_TYPES))}")
    return TRANSFER_TYPES[canonical]


def classifier_modules(model: nn.Module) -> List[nn.Module]:
    """The modules every frozen-backbone type trains: the pooling norm and the linear head."""
    norm = model.fc_norm if model.fc_norm is not None else model.norm  # --use_cls trains `norm`
    return [norm, model.head]


class TransferMethod:
    """Base class: the identity adaptation (no extra parameters, no hooks).

    Subclasses set ``config_class`` (their settings), ``trains_backbone``/``loads_pretrained``, and
    override ``inject`` and, where they change the forward pass, ``before_block``, ``extra_kv`` and
    ``num_prefix_tokens``.

    Args:
        config: the settings; or, instead, ``**settings`` to build ``config_class(**settings)``.
    """

    name: str = ""
    config_class: Type[MethodConfig] = MethodConfig
    trains_backbone: bool = False  # end2end / random: every parameter trains
    loads_pretrained: bool = True  # random: --finetune is ignored
    num_prefix_tokens: int = 0  # tokens prepended to the sequence, dropped before pooling
    # Whether the ``no_weight_decay`` tensors take the weight decay anyway unless
    # ``--no_decay_prompts`` (True where the type's original code decays them).
    decay_prompts_default: bool = False

    def __init__(self, config: Optional[MethodConfig] = None, **settings: Any) -> None:
        if config is None:
            config = make_config(self.name, settings)
        elif settings or not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes one {self.config_class.__name__}")
        self.config = config
        self.owned_names: set = set()
        self.no_decay_ids: set = set()

    # --- building ----------------------------------------------------------------------------
    def inject(self, model: nn.Module) -> List[nn.Parameter]:
        """Add this method's modules/parameters to ``model``; return the parameters it added."""
        return []

    def no_weight_decay(self, model: nn.Module) -> List[nn.Parameter]:
        """The injected tensors that take no weight decay (prompts: they are inputs, not
        weights) unless ``decay_prompts_default`` or ``--decay_prompts`` says they do. 1-D
        tensors, biases and norms never take it anyway (``optim_factory``)."""
        return []

    def attach(self, model: nn.Module) -> "TransferMethod":
        """Inject into ``model``, make it consult this method, and freeze what does not train."""
        own = self.inject(model)
        own_ids = {id(p) for p in own}
        # Names of the tensors this method added: not backbone weights, never in a backbone file.
        self.owned_names = {n for n, p in model.named_parameters() if id(p) in own_ids}
        self.no_decay_ids = {id(p) for p in self.no_weight_decay(model)}
        model.transfer = self
        if self.trains_backbone:
            model.requires_grad_(True)
            return self
        model.requires_grad_(False)
        for p in own:
            p.requires_grad_(True)
        for module in classifier_modules(model):
            module.requires_grad_(True)
        return self

    # --- hooks called by the backbone --------------------------------------------------------
    def before_block(self, model: nn.Module, index: int, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_kv(self, model: nn.Module
                 ) -> Optional[List[Optional[Tuple[torch.Tensor, torch.Tensor]]]]:
        """Every block's extra keys/values (or None per block) for one forward, asked once before
        block 0, so a method whose per-block tensors are slices of one parameter does its tensor
        work once on the whole parameter (see APT). ``None``: no block gets any."""
        return None

    # --- inference ---------------------------------------------------------------------------
    def fold(self, model: nn.Module) -> None:
        """Fold reparameterisations into plain weights for inference (no-op by default)."""

    def unfold(self, model: nn.Module) -> None:
        """Undo ``fold`` so training can continue (no-op by default)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.config.to_dict().items()))
        return f"{type(self).__name__}({args})"


@contextlib.contextmanager
def folded_for_inference(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode with the method's reparameterisations folded (APT scales into the prompts,
    LoRA into ``qkv``), so every forward inside does no per-forward rescaling or low-rank work.

    On exit the trainable tensors are restored bit for bit (``unfold``) and the previous
    train/eval mode is back, so training can continue. Use it around evaluation::

        with folded_for_inference(model):
            evaluate(model, loader)
    """
    method = getattr(model, "transfer", None)
    was_training = model.training
    # Nested contexts (an analysis inside an evaluation) fold once: only the outermost unfolds,
    # so an inner exit does not hand unfolded tensors back to the outer context.
    depth = getattr(model, "_inference_fold_depth", 0)
    model.eval()
    if method is not None and depth == 0:
        method.fold(model)
    model._inference_fold_depth = depth + 1
    try:
        yield model
    finally:
        model._inference_fold_depth = depth
        if method is not None and depth == 0:
            method.unfold(model)
        model.train(was_training)
