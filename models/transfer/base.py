"""The interface every transfer type implements, and the registry that names them.

A transfer type is a small object that, given a built backbone, adds its own modules or parameters
(``inject``) and answers the backbone's per-block questions (``before_block``, ``extra_kv``). Which
tensors train is decided by structure: the parameters ``inject`` returns plus the classifier's
norm and head; everything else is frozen. No parameter name is ever matched against a pattern.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Tuple, Type

import torch
import torch.nn as nn

TRANSFER_TYPES: Dict[str, Type["TransferMethod"]] = {}


def register_transfer(name: str):
    """Class decorator: make a transfer type selectable by ``--transfer_type name``."""
    def wrap(cls: Type["TransferMethod"]) -> Type["TransferMethod"]:
        cls.name = name
        TRANSFER_TYPES[name] = cls
        return cls
    return wrap


def get_transfer_class(name: str) -> Type["TransferMethod"]:
    if name not in TRANSFER_TYPES:
        raise ValueError(f"--transfer_type {name!r} is unknown; choose one of "
                         f"{', '.join(sorted(TRANSFER_TYPES))}")
    return TRANSFER_TYPES[name]


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

    Subclasses set ``trains_backbone``/``loads_pretrained`` and override ``inject`` and, where they
    change the forward pass, ``before_block``, ``extra_kv`` and ``num_prefix_tokens``.
    """

    name: str = ""
    trains_backbone: bool = False  # end2end / random: every parameter trains
    loads_pretrained: bool = True  # random: --finetune is ignored
    num_prefix_tokens: int = 0  # tokens prepended to the sequence, dropped before pooling

    def __init__(self, **kwargs) -> None:
        self.config = dict(kwargs)
        self.owned_names: set = set()

    # --- building ----------------------------------------------------------------------------
    def inject(self, model: nn.Module) -> List[nn.Parameter]:
        """Add this method's modules/parameters to ``model``; return the parameters it added."""
        return []

    def attach(self, model: nn.Module) -> "TransferMethod":
        """Inject into ``model``, make it consult this method, and freeze what does not train."""
        own = self.inject(model)
        own_ids = {id(p) for p in own}
        # Names of the tensors this method added: not backbone weights, never in a backbone file.
        self.owned_names = {n for n, p in model.named_parameters() if id(p) in own_ids}
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
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.config.items()))
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
    model.eval()
    if method is not None:
        method.fold(model)
    try:
        yield model
    finally:
        if method is not None:
            method.unfold(model)
        model.train(was_training)
