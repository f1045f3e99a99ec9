"""The settings of a fine-tuning run that know the networks: the model's (``ModelConfig``: backbone
variant, clip shape, the transfer type and its settings) and the whole run's (``FinetuneConfig``,
which adds the data, optimisation and run settings of ``utils.config``), and the flags the
transfer types declare (``add_method_args``).

They live here, above ``models.transfer_settings``, because a model's settings are made by the transfer
types' own settings dataclasses (their registry, ``models.transfer_settings``); ``utils.config`` holds the settings that know
no network and sits below ``models`` and ``datasets``.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from utils.cli import ArgumentGroup
from utils.config import (BackboneSource, ConfigError, DataConfig, OptimConfig, RunConfig,
                          TrainConfig, from_namespace, plain_dict)

from .transfer_settings import (TRANSFER_ALIASES, TRANSFER_SETTINGS, TRANSFER_TITLES,
                                MethodConfig, all_setting_fields, canonical_transfer_type,
                                make_config, setting_fields)

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ flags
def add_method_args(parser: argparse.ArgumentParser) -> ArgumentGroup:
    """The "transfer type" group: ``--transfer_type`` and one flag per setting that the
    registered types declare (``models/transfer``), with the declared default, type and help.

    A setting shared by several types (``--prompt_num_tokens``) is one flag; its help names the
    types that read it. Booleans are switches (``--prompt_reparam``).
    """
    g = parser.add_argument_group("transfer type (flags from each type's settings dataclass)")
    # A former name (``prompt``) becomes the registered one (``apt``) as the flag is read.
    g.add_argument("--transfer_type", default=ModelConfig.transfer_type,
                   type=canonical_transfer_type, choices=sorted(TRANSFER_SETTINGS),
                   help="how the backbone is adapted: " + ", ".join(
                       f"{n} ({TRANSFER_TITLES[n]})" for n in sorted(TRANSFER_SETTINGS))
                   + "".join(f"; {a}: former name of {n}" for a, n in
                             sorted(TRANSFER_ALIASES.items())))
    for name, (f, types) in all_setting_fields().items():
        hints = typing.get_type_hints(TRANSFER_SETTINGS[types[0]])
        kind = _flag_type(hints[name])
        help_text = f"{f.metadata.get('help', '')} [{', '.join(types)}]"
        default = None if f.default is MISSING else f.default
        if kind is bool:
            if default:
                raise TypeError(f"setting {name!r}: a boolean setting must default to False "
                                f"(it becomes the switch --{name})")
            g.add_argument(f"--{name}", action="store_true", default=False, help=help_text)
        else:
            g.add_argument(f"--{name}", type=kind, default=default, help=help_text,
                           choices=f.metadata.get("choices"))
    return g


def _flag_type(hint: Any) -> Callable:
    """``int`` for ``int`` and ``Optional[int]``; the same for float, str and bool."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint
    if base not in (int, float, str, bool):
        raise TypeError(f"a transfer-type setting must be int, float, str or bool (or Optional "
                        f"of one), got {hint!r}")
    return base


# ------------------------------------------------------------------------------ settings
def method_config(transfer_type: str, flags: Mapping[str, Any]) -> MethodConfig:
    """The ``MethodConfig`` of ``transfer_type`` from the flags of its settings; a setting
    without a flag keeps the default its type declares (the flag's default)."""
    return make_config(transfer_type, {k: flags[k] for k in setting_fields(transfer_type)
                                       if k in flags})


@dataclass(frozen=True)
class ModelConfig:
    """The network: backbone variant, clip shape, regularisation and the transfer type with its
    settings. ``ARCHITECTURE`` and the method's settings define the tensors' shapes; they are
    saved in every checkpoint and ``--eval`` takes them from there."""

    ARCHITECTURE = ("model", "transfer_type", "tubelet_size", "use_mean_pooling",
                    "use_learnable_pos_emb")

    method: MethodConfig  # the settings of transfer_type
    num_classes: int
    model: str = "vit_base_patch16_224"
    transfer_type: str = "apt"
    num_frames: int = DataConfig.num_frames
    input_size: int = DataConfig.input_size
    tubelet_size: int = 2
    use_mean_pooling: bool = True
    use_learnable_pos_emb: bool = False
    drop: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path: float = 0.0
    fc_drop_rate: float = 0.0
    init_scale: float = 0.001
    use_checkpoint: bool = False

    @classmethod
    def from_flags(cls, flags: Union[argparse.Namespace, Mapping[str, Any]],
                   num_classes: int) -> "ModelConfig":
        """The network of a parsed command line or of saved flags (absent flags: the declared
        defaults), with ``num_classes`` classes."""
        flags = dict(flags) if isinstance(flags, Mapping) else vars(flags)
        # the registered name: files of old runs may name the type by its former name
        transfer_type = canonical_transfer_type(flags.get("transfer_type", cls.transfer_type))
        return from_namespace(cls, flags, method=method_config(transfer_type, flags),
                              num_classes=num_classes, transfer_type=transfer_type)

    def architecture(self) -> Dict[str, Any]:
        """The settings that define the tensors, as flag name -> value."""
        return {**{k: getattr(self, k) for k in self.ARCHITECTURE}, **self.method.to_dict()}

    def with_architecture(self, saved: Dict[str, Any]) -> Tuple["ModelConfig", List[str]]:
        """These settings with the architecture of a checkpoint's saved flags; returns the new
        settings and one line per flag that changed."""
        transfer_type = canonical_transfer_type(saved.get("transfer_type", self.transfer_type))
        backbone = {**{k: saved[k] for k in self.ARCHITECTURE if k in saved},
                    "transfer_type": transfer_type}
        current = self.method.to_dict() if transfer_type == self.transfer_type else {}
        method = method_config(transfer_type, {**current, **saved})
        new = dataclasses.replace(self, **backbone, method=method)
        old, now = self.architecture(), new.architecture()
        changes = [f"--{k} {now[k]!r} (command line: {old.get(k)!r})" for k in now
                   if old.get(k) != now[k]]
        return new, changes


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything ``run_class_apt.py`` was asked to do."""

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    train: TrainConfig
    run: RunConfig
    backbone: BackboneSource
    flags: Dict[str, Any]  # every flag as given, for args.json and checkpoints
    eval: bool = False
    dist_eval: bool = False
    deepspeed: bool = False
    deepspeed_config: Optional[str] = None

    def __post_init__(self) -> None:
        if self.eval and self.train.skip_test:
            raise ConfigError("--eval with --skip_test: --eval is the test, nothing would run")
        if not self.eval and self.optim.epochs < 1:
            raise ConfigError(f"--epochs {self.optim.epochs}: training needs at least one "
                              f"epoch (--epochs 0 only with --eval, which tests a checkpoint)")

    @classmethod
    def from_args(cls, args: Union[argparse.Namespace, Mapping[str, Any]]
                  ) -> "FinetuneConfig":
        """The settings of a parsed command line, or of flag name -> value (a run's saved
        flags): a flag that is absent takes the default its field declares.

        Raises:
            ConfigError: a flag that cannot run, naming it.
        """
        flags = dict(args) if isinstance(args, Mapping) else dict(vars(args))
        data = DataConfig.from_args(flags)
        return cls(
            model=ModelConfig.from_flags(flags, data.nb_classes),
            data=data, optim=from_namespace(OptimConfig, flags),
            train=from_namespace(TrainConfig, flags), run=from_namespace(RunConfig, flags),
            backbone=from_namespace(BackboneSource, flags),
            eval=bool(flags.get("eval", False)), dist_eval=bool(flags.get("dist_eval", False)),
            deepspeed=bool(flags.get("enable_deepspeed") or flags.get("deepspeed")),
            deepspeed_config=flags.get("deepspeed_config"), flags=plain_dict(flags))

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any], path: str,
                        overrides: Optional[Mapping[str, Any]] = None, finetune: str = "",
                        unsafe_load: bool = False) -> "FinetuneConfig":
        """The settings of the run that wrote a training checkpoint, as ``--eval`` of it
        would run: the declared defaults, then the flags it saved, then ``overrides`` (values
        None are left out). The architecture is the checkpoint's (a changed one is warned
        of); the backbone is not the saved ``--finetune``: the checkpoint's own record of it
        is used unless ``finetune`` names one.

        Args:
            ckpt: a read training checkpoint of ``run_class_apt.py``.
            path: its path, for messages.
            overrides: flag name -> value (``num_frames``, ``test_num_crop``, ``data_set``,
                ...); ``data_set`` changes the sampling only, the class count stays the
                checkpoint's.
            finetune: ``--finetune``.
            unsafe_load: ``--unsafe_load``.

        Raises:
            ConfigError: not a fine-tuning checkpoint (no saved flags, or no
                ``transfer_type``: pre-training checkpoints have no classifier).
        """
        saved = ckpt.get("args")
        if isinstance(saved, argparse.Namespace):
            saved = vars(saved)
        if not isinstance(saved, dict) or not saved or "transfer_type" not in ckpt:
            raise ConfigError(f"--resume {path}: not a checkpoint of run_class_apt.py (no saved "
                              f"flags 'args' or no 'transfer_type'; a pre-training checkpoint "
                              f"has no classifier)")
        overrides = dict(overrides or {})
        data_set = overrides.pop("data_set", None)
        flags = {"transfer_type": ckpt["transfer_type"], **saved,
                 **{k: v for k, v in overrides.items() if v is not None},
                 "finetune": finetune, "unsafe_load": unsafe_load, "eval": True, "resume": path,
                 # a DeepSpeed layout reads without DeepSpeed
                 "enable_deepspeed": False, "deepspeed": False}
        cfg = cls.from_args(flags)
        model_cfg, changes = cfg.model.with_architecture(saved)
        for change in changes:
            logger.warning("%s: using the checkpoint's %s", path, change)
        cfg = dataclasses.replace(cfg, model=model_cfg)
        if data_set:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_set=data_set))
        return cfg
