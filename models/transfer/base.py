"""The interface every transfer type implements, its settings, and the registry that names them.

A transfer type is one file holding two things:

* a frozen dataclass of its settings (``MethodConfig`` subclass): each field, declared with
  ``setting(default, help)``, is the command-line flag ``--<field>``, the ``create_model`` keyword
  and an architecture setting saved in checkpoints (``--eval`` restores it); ``validate`` checks
  values that need no model;
* a ``TransferMethod`` subclass, registered by name, that adds its modules or parameters to a built
  backbone (``inject``) and answers the backbone's per-block questions (``before_block``,
  ``extra_kv``).

Which tensors train is decided by structure: the parameters ``inject`` returns plus the
classifier's norm and head; everything else is frozen. Which of them take no weight decay is
decided the same way (``no_weight_decay``), and so is whether they are decayed all the same by
default (``decay_prompts_default``, the choice of the type's original code; ``--decay_prompts`` /
``--no_decay_prompts`` override it). No parameter name is ever matched against a pattern.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn

TRANSFER_TYPES: Dict[str, Type["TransferMethod"]] = {}
# Former names of registered types, still accepted wherever a type name is read (old commands and
# checkpoints saved by old runs): alias -> registered name. ``canonical_transfer_type`` reads it.
TRANSFER_ALIASES: Dict[str, str] = {}


def setting(default: Any, help: str, choices: Optional[Sequence[Any]] = None) -> Any:
    """A transfer-type setting: a dataclass field whose metadata makes it a flag ``--<name>``."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class MethodConfig:
    """Settings of a transfer type (none for this base). Values are checked on construction."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the flag for a value no model could take."""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BlockRange(MethodConfig):
    """Settings of types that adapt a range of blocks (flags named after APT's, as in its code)."""

    prompt_start: Optional[int] = setting(None, "first block adapted (default: 0)")
    prompt_end: Optional[int] = setting(None, "last block adapted, inclusive (default: the last)")

    def validate(self) -> None:
        for name in ("prompt_start", "prompt_end"):
            value = getattr(self, name)
            if value is not None and int(value) < 0:
                raise ValueError(f"--{name} {value}: block indices must be >= 0")
        if self.prompt_start is not None and self.prompt_end is not None and \
                self.prompt_start > self.prompt_end:
            raise ValueError(f"--prompt_start {self.prompt_start} is greater than --prompt_end "
                             f"{self.prompt_end}")

    def blocks(self, depth: int) -> Tuple[int, int]:
        """The inclusive block range in a model of ``depth`` blocks."""
        return resolve_block_range(depth, self.prompt_start, self.prompt_end)


@dataclass(frozen=True)
class PromptSettings(BlockRange):
    """Settings shared by the prompt types (APT, VPT, Approximated Prompt Tuning)."""

    prompt_num_tokens: int = setting(5, "prompt tokens per adapted block (P)")
    prompt_dropout: float = setting(0.0, "dropout on the prompt tokens while training")

    def validate(self) -> None:
        super().validate()
        check_num_tokens(self.prompt_num_tokens)
        if not 0.0 <= float(self.prompt_dropout) < 1.0:
            raise ValueError(f"--prompt_dropout must be in [0, 1), got {self.prompt_dropout}")


def register_transfer(name: str, aliases: Sequence[str] = ()):
    """Class decorator: make a transfer type selectable by ``--transfer_type name``.

    Args:
        name: the registered name (``cls.name``, what new checkpoints store).
        aliases: former names that still select it (``canonical_transfer_type``).
    """
    def wrap(cls: Type["TransferMethod"]) -> Type["TransferMethod"]:
        taken = [a for a in aliases
                 if a in TRANSFER_TYPES or TRANSFER_ALIASES.get(a, name) != name]
        if name in TRANSFER_ALIASES or taken:
            raise ValueError(f"transfer type {cls.__name__}: the name "
                             f"{(taken or [name])[0]!r} is already another type's")
        cls.name = name
        TRANSFER_TYPES[name] = cls
        TRANSFER_ALIASES.update({alias: name for alias in aliases})
        return cls
    return wrap


def canonical_transfer_type(name: str) -> str:
    """The registered name that transfer type ``name`` stands for: a former name (``prompt``
    for ``apt``) becomes the current one; any other name comes back unchanged (an unknown one
    is refused by ``get_transfer_class``). Every comparison of type names goes through it."""
    return TRANSFER_ALIASES.get(name, name)


def get_transfer_class(name: str) -> Type["TransferMethod"]:
    """The class registered as ``name`` or as the type ``name`` is a former name of."""
    canonical = canonical_transfer_type(name)
    if canonical not in TRANSFER_TYPES:
        raise ValueError(f"--transfer_type {name!r} is unknown; choose one of "
                         f"{', '.join(sorted(TRANSFER_TYPES))}")
    return TRANSFER_TYPES[canonical]


def resolve_block_range(depth: int, start: Optional[int], end: Optional[int]) -> Tuple[int, int]:
    """Inclusive block range ``[start, end]``; defaults to every block. Bad ranges name the flags."""
    start = 0 if start is None else int(start)
    end = depth - 1 if end is None else int(end)
    if start < 0 or end < 0:
        raise ValueError(f"--prompt_start {start} / --prompt_end {end}: block indices must be >= 0")
    if start > end:
        raise ValueError(f"--prompt_start {start} is greater than --prompt_end {end}")
    if end >= depth:
        raise ValueError(f"--prompt_end {end} is past the last block: the model has {depth} blocks "
                         f"(0..{depth - 1})")
    return start, end


def check_num_tokens(num_tokens: int, flag: str = "--prompt_num_tokens") -> int:
    if int(num_tokens) < 1:
        raise ValueError(f"{flag} must be >= 1 for this transfer type, got {num_tokens}")
    return int(num_tokens)


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


def setting_fields(name: str) -> Dict[str, dataclasses.Field]:
    """The settings of transfer type ``name``: field name -> dataclass field."""
    return {f.name: f for f in dataclasses.fields(get_transfer_class(name).config_class)}


def all_setting_fields() -> Dict[str, Tuple[dataclasses.Field, List[str]]]:
    """Every registered type's settings: name -> (its one declaration, the types that use it).

    A setting shared by several types must be one declaration (a common base dataclass such as
    ``PromptSettings``), so its default and help exist once; two different declarations of one
    name are an error.
    """
    out: Dict[str, Tuple[dataclasses.Field, List[str]]] = {}
    for type_name in sorted(TRANSFER_TYPES):
        for f in dataclasses.fields(TRANSFER_TYPES[type_name].config_class):
            if f.name in out and out[f.name][0] is not f:
                raise TypeError(f"transfer types {out[f.name][1][0]!r} and {type_name!r} declare "
                                f"the setting {f.name!r} twice: declare it once in a shared base "
                                f"dataclass")
            out.setdefault(f.name, (f, []))[1].append(type_name)
    return out


def make_config(name: str, settings: Dict[str, Any]) -> MethodConfig:
    """``config_class(**settings)`` of type ``name``; a setting it does not have is an error
    that names the type and its settings."""
    fields = setting_fields(name)
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ValueError(f"--transfer_type {name} has no setting {', '.join(unknown)} (its "
                         f"settings: {', '.join(sorted(fields)) or 'none'})")
    return get_transfer_class(name).config_class(**settings)


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
    model.eval()
    if method is not None:
        method.fold(model)
    try:
        yield model
    finally:
        if method is not None:
            method.unfold(model)
        model.train(was_training)
