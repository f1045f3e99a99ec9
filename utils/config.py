"""Immutable run settings: the parsed command line, split by concern and passed down read-only.

The parser of each script (``run_class_apt.py``, ``run_mae_pretraining.py``) declares the flags
with their defaults and help; a transfer type declares its own settings in its file
(``models/transfer``). After parsing, ``from_namespace`` copies each group of flags into a frozen
dataclass whose fields are named like the flags, and nothing writes into them afterwards: what a
run computes (the backbone it loaded, the epoch it resumed at, its rank) is returned, not stored
in the settings. A dataclass field without a default must exist in the namespace; fields with a
default are flags only one of the scripts has.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Type, TypeVar

import numpy as np

from .schedule import cosine_scheduler, scale_lr

T = TypeVar("T")


class ConfigError(ValueError):
    """A command line that cannot run; the message names the flag or path."""


def require_at_least(values: Mapping[str, Any], minimum: int) -> None:
    """Refuse the first flag whose value is below ``minimum``.

    Args:
        values: flag name (without ``--``) -> value.
        minimum: the smallest value that can run.

    Raises:
        ConfigError: one line naming the flag and the value.
    """
    for name, value in values.items():
        if value < minimum:
            raise ConfigError(f"--{name} must be >= {minimum}, got {value}")


class CheckedFlags:
    """Mixin of the settings dataclasses: the counts that cannot run are refused when the
    settings are made from the command line, so a bad flag fails in one line before any data,
    model or output folder is touched (instead of a ZeroDivisionError an epoch later).

    A subclass lists its fields in ``AT_LEAST_ONE`` (counts, sizes, frequencies) and
    ``AT_LEAST_ZERO``; each flag is listed in one dataclass only.
    """

    AT_LEAST_ONE: ClassVar[Tuple[str, ...]] = ()
    AT_LEAST_ZERO: ClassVar[Tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        require_at_least({n: getattr(self, n) for n in self.AT_LEAST_ONE}, 1)
        require_at_least({n: getattr(self, n) for n in self.AT_LEAST_ZERO}, 0)


def from_namespace(cls: Type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """``cls`` filled from the flags of the same names (lists become tuples: frozen means
    frozen all the way down)."""
    values: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            continue
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag --{f.name} in the command line")
    values.update(overrides)
    return cls(**values)


def plain_dict(obj: Any) -> Dict[str, Any]:
    """A settings object (dataclass or namespace) as JSON-ready plain types."""
    items = dataclasses.asdict(obj).items() if dataclasses.is_dataclass(obj) else vars(obj).items()

    def plain(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, (str, int, float, bool, type(None))):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return str(v)
    return {k: plain(v) for k, v in items if not k.startswith("_")}


# ------------------------------------------------------------------------------ optimisation
def canonical_optimizer(opt: str) -> str:
    """The optimizer an ``--opt`` value builds: ``momentum`` is SGD with momentum, as ``sgd``
    (``optim_factory.create_optimizer``); resuming compares these names."""
    name = str(opt).lower()
    return "sgd" if name == "momentum" else name


@dataclass(frozen=True)
class Schedules:
    """The run's learning rates (scaled to the total batch) and per-step schedules."""

    lr: float
    min_lr: float
    warmup_lr: float
    total_batch: int
    steps_per_epoch: int
    lr_values: np.ndarray = field(repr=False)
    wd_values: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class OptimConfig(CheckedFlags):
    """Optimizer, learning-rate schedule and batch (``--lr`` is for a total batch of 256).
    ``--epochs 0`` passes here; whether a run may train no epoch is its script's decision."""

    AT_LEAST_ONE = ("batch_size", "update_freq")
    AT_LEAST_ZERO = ("epochs", "warmup_epochs")

    opt: str
    opt_eps: float
    opt_betas: Optional[Tuple[float, ...]]
    momentum: float
    weight_decay: float
    weight_decay_end: Optional[float]
    clip_grad: Optional[float]
    lr: float
    min_lr: float
    warmup_lr: float
    warmup_epochs: int
    warmup_steps: int
    epochs: int
    batch_size: int
    update_freq: int = 1
    layer_decay: float = 1.0
    decay_prompts: Optional[bool] = None  # None: the transfer type's decay_prompts_default

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")

    def schedules(self, world_size: int, steps_per_epoch: int) -> Schedules:
        """VideoMAE's linear scaling rule (the lr flags are for a total batch of 256), then a
        per-step cosine schedule with warm-up for the lr and one for the weight decay."""
        total_batch = self.batch_size * self.update_freq * world_size
        lr, min_lr = scale_lr(self.lr, total_batch), scale_lr(self.min_lr, total_batch)
        warmup_lr = scale_lr(self.warmup_lr, total_batch)
        lr_values = cosine_scheduler(lr, min_lr, self.epochs, steps_per_epoch,
                                     warmup_epochs=self.warmup_epochs,
                                     start_warmup_value=warmup_lr, warmup_steps=self.warmup_steps)
        wd_end = self.weight_decay if self.weight_decay_end is None else self.weight_decay_end
        wd_values = cosine_scheduler(self.weight_decay, wd_end, self.epochs, steps_per_epoch)
        return Schedules(lr, min_lr, warmup_lr, total_batch, steps_per_epoch, lr_values,
                         wd_values)

    def too_few_videos(self, videos: int, world_size: int) -> ConfigError:
        total = self.batch_size * self.update_freq * world_size
        return ConfigError(f"the training split has {videos} videos, too few for one optimizer "
                           f"step of {total} videos (--batch_size {self.batch_size} x "
                           f"--update_freq {self.update_freq} x {world_size} processes)")


# ------------------------------------------------------------------------------------- run
@dataclass(frozen=True)
class RunConfig(CheckedFlags):
    """Outputs, resumption, device, precision and the launcher (both scripts)."""

    AT_LEAST_ONE = ("save_ckpt_freq", "dist_timeout")
    AT_LEAST_ZERO = ("start_epoch",)

    output_dir: str
    log_dir: Optional[str]
    log_every: int
    device: Optional[str]
    seed: int
    resume: str
    auto_resume: bool
    start_epoch: int
    amp: Optional[bool]
    amp_dtype: str
    save_ckpt_freq: int
    dist_url: str
    dist_on_itp: bool
    local_rank: int
    unsafe_load: bool = False
    dist_timeout: int = 30  # minutes (--dist_timeout)
    reset_optimizer: bool = False

    @property
    def tensorboard_dir(self) -> str:
        return self.log_dir or self.output_dir


# ------------------------------------------------------------------------------ fine-tuning
@dataclass(frozen=True)
class ModelConfig:
    """The network: backbone variant, clip shape, regularisation and the transfer type with its
    settings. ``ARCHITECTURE`` and the method's settings define the tensors' shapes; they are
    saved in every checkpoint and ``--eval`` takes them from there."""

    ARCHITECTURE = ("model", "transfer_type", "tubelet_size", "use_mean_pooling",
                    "use_learnable_pos_emb")

    model: str
    transfer_type: str
    method: Any  # models.transfer.MethodConfig of transfer_type
    num_classes: int
    num_frames: int
    input_size: int
    tubelet_size: int
    use_mean_pooling: bool
    use_learnable_pos_emb: bool
    drop: float
    attn_drop_rate: float
    drop_path: float
    fc_drop_rate: float
    init_scale: float
    use_checkpoint: bool

    def build(self) -> Any:
        """The backbone with the transfer type attached (validates shapes, reads no data)."""
        from models import create_model
        return create_model(
            self.model, transfer_type=self.transfer_type, method_config=self.method,
            num_classes=self.num_classes, all_frames=self.num_frames, img_size=self.input_size,
            tubelet_size=self.tubelet_size, drop_rate=self.drop, drop_path_rate=self.drop_path,
            attn_drop_rate=self.attn_drop_rate, fc_drop_rate=self.fc_drop_rate,
            use_mean_pooling=self.use_mean_pooling, init_scale=self.init_scale,
            use_checkpoint=self.use_checkpoint, use_learnable_pos_emb=self.use_learnable_pos_emb)

    def architecture(self) -> Dict[str, Any]:
        """The settings that define the tensors, as flag name -> value."""
        return {**{k: getattr(self, k) for k in self.ARCHITECTURE}, **self.method.to_dict()}

    def with_architecture(self, saved: Dict[str, Any]) -> Tuple["ModelConfig", List[str]]:
        """These settings with the architecture of a checkpoint's saved flags; returns the new
        settings and one line per flag that changed."""
        from models.transfer import canonical_transfer_type, make_config, setting_fields
        transfer_type = canonical_transfer_type(saved.get("transfer_type", self.transfer_type))
        backbone = {**{k: saved[k] for k in self.ARCHITECTURE if k in saved},
                    "transfer_type": transfer_type}
        same = transfer_type == canonical_transfer_type(self.transfer_type)
        current = self.method.to_dict() if same else {}
        method = make_config(transfer_type, {k: saved.get(k, current.get(k, f.default))
                                             for k, f in setting_fields(transfer_type).items()})
        new = dataclasses.replace(self, **backbone, method=method)
        old, now = self.architecture(), new.architecture()
        changes = [f"--{k} {now[k]!r} (command line: {old.get(k)!r})" for k in now
                   if old.get(k) != now[k]]
        return new, changes


# The clip flags both scripts have (``--batch_size`` is checked with the optimizer's).
CLIP_AT_LEAST_ONE = ("num_frames", "sampling_rate", "input_size")


@dataclass(frozen=True)
class DataConfig(CheckedFlags):
    """Lists, clip sampling, augmentation, views and loaders (read by ``datasets.build``)."""

    AT_LEAST_ONE = CLIP_AT_LEAST_ONE + ("batch_size_val", "test_num_segment", "test_num_crop",
                                        "num_sample")
    AT_LEAST_ZERO = ("num_workers",)

    data_path: Optional[str]
    eval_data_path: Optional[str]
    data_root: str
    data_set: str
    nb_classes: int
    num_frames: int
    sampling_rate: int
    input_size: int
    short_side_size: int
    test_num_segment: int
    test_num_crop: int
    num_sample: int
    is_aa: bool
    aa: str
    train_interpolation: str
    no_flip: bool
    train_crop_scale: Tuple[float, float]
    reprob: float
    remode: str
    recount: int
    video_backend: str
    max_bad_fraction: float
    allow_duplicates: bool
    batch_size: int
    batch_size_val: int
    num_workers: int
    pin_mem: bool

    def for_eval(self) -> "DataConfig":
        """The settings of the validation and test splits (``--eval_data_path`` if given)."""
        if not self.eval_data_path:
            return self
        return dataclasses.replace(self, data_path=self.eval_data_path)

    @property
    def test_views(self) -> int:
        return self.test_num_segment * self.test_num_crop


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning's loss, regularisation, EMA, validation and checkpoint choices."""

    smoothing: float
    mixup: float
    cutmix: float
    cutmix_minmax: Optional[Tuple[float, ...]]
    mixup_prob: float
    mixup_switch_prob: float
    mixup_mode: str
    model_ema: bool
    model_ema_decay: float
    model_ema_force_cpu: bool
    disable_eval_during_finetuning: bool
    test_best: bool
    save_ckpt: bool
    compile: bool

    @property
    def mixup_active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None


@dataclass(frozen=True)
class BackboneSource:
    """Where the pre-trained weights come from (``--finetune`` and how to read it)."""

    finetune: str
    model_key: str
    model_prefix: str


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything ``run_class_apt.py`` was asked to do."""

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    train: TrainConfig
    run: RunConfig
    backbone: BackboneSource
    eval: bool
    dist_eval: bool
    deepspeed: bool
    deepspeed_config: Optional[str]
    flags: Dict[str, Any]  # every flag as given, for args.json and checkpoints

    def __post_init__(self) -> None:
        if not self.eval and self.optim.epochs < 1:
            raise ConfigError(f"--epochs {self.optim.epochs}: training needs at least one "
                              f"epoch (--epochs 0 only with --eval, which tests a checkpoint)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "FinetuneConfig":
        from datasets import num_classes_for
        from models.transfer import canonical_transfer_type, make_config, setting_fields
        method = make_config(args.transfer_type, {k: getattr(args, k)
                                                  for k in setting_fields(args.transfer_type)})
        num_classes = num_classes_for(args)
        return cls(  # the model's transfer type by its registered name (old runs: an alias)
            model=from_namespace(ModelConfig, args, method=method, num_classes=num_classes,
                                 transfer_type=canonical_transfer_type(args.transfer_type)),
            data=from_namespace(DataConfig, args, nb_classes=num_classes),
            optim=from_namespace(OptimConfig, args), train=from_namespace(TrainConfig, args),
            run=from_namespace(RunConfig, args), backbone=from_namespace(BackboneSource, args),
            eval=bool(args.eval), dist_eval=bool(args.dist_eval),
            deepspeed=bool(args.enable_deepspeed or args.deepspeed),
            deepspeed_config=args.deepspeed_config, flags=plain_dict(args))


# ------------------------------------------------------------------------------ pre-training
@dataclass(frozen=True)
class PretrainModelConfig:
    """The pre-training network and its masking; ``ARCHITECTURE`` must match on resume."""

    ARCHITECTURE = ("model", "decoder_depth", "tubelet_size", "use_learnable_pos_emb")

    model: str
    decoder_depth: int
    tubelet_size: int
    num_frames: int
    input_size: int
    drop_path: float
    normlize_target: bool
    use_checkpoint: bool
    use_learnable_pos_emb: bool


@dataclass(frozen=True)
class PretrainDataConfig(CheckedFlags):
    """Unlabelled videos, clip sampling and masks (read by ``datasets.pretrain_dataset``)."""

    AT_LEAST_ONE = CLIP_AT_LEAST_ONE
    AT_LEAST_ZERO = ("num_workers",)

    data_path: Optional[str]
    data_root: str
    data_set: str
    num_frames: int
    sampling_rate: int
    input_size: int
    tubelet_size: int
    mask_type: str
    mask_ratio: float
    flip: bool
    video_backend: str
    max_bad_fraction: float
    allow_duplicates: bool
    cache_videos: bool
    cache_max_gb: float
    batch_size: int
    num_workers: int
    pin_mem: bool


@dataclass(frozen=True)
class ProbeConfig(CheckedFlags):
    """The k-NN probe of the encoder's features during pre-training."""

    AT_LEAST_ONE = ("probe_freq", "probe_k")

    probe_data_path: str
    probe_freq: int
    probe_k: int


@dataclass(frozen=True)
class PretrainConfig:
    """Everything ``run_mae_pretraining.py`` was asked to do."""

    model: PretrainModelConfig
    data: PretrainDataConfig
    optim: OptimConfig
    run: RunConfig
    probe: ProbeConfig
    flags: Dict[str, Any]  # every flag as given, for args.json and checkpoints

    def __post_init__(self) -> None:
        require_at_least({"epochs": self.optim.epochs}, 1)  # pre-training has no --eval

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PretrainConfig":
        return cls(model=from_namespace(PretrainModelConfig, args),
                   data=from_namespace(PretrainDataConfig, args),
                   optim=from_namespace(OptimConfig, args), run=from_namespace(RunConfig, args),
                   probe=from_namespace(ProbeConfig, args), flags=plain_dict(args))
