"""Immutable run settings: the parsed command line, split by concern and passed down read-only.

The parser of each script (``run_class_apt.py``, ``run_mae_pretraining.py``) declares the flags
with their defaults and help; a transfer type declares its own settings in its file
(``models/transfer``). After parsing, ``from_namespace`` copies each group of flags into a frozen
dataclass whose fields are named like the flags, and nothing writes into them afterwards: what a
run computes (the backbone it loaded, the epoch it resumed at, its rank) is returned, not stored
in the settings.

Each field's default is the flag's default, declared here once: the parsers read them
(``default=OptimConfig.lr``), and a run's settings are rebuilt from its saved flags without any
parser (``models.config.FinetuneConfig.from_args``). Where the two scripts differ, the fine-tuning
default is the field's and ``run_mae_pretraining.py`` passes its own to the shared flag groups
(``utils/cli.py``); the pre-training data defaults are :class:`PretrainDataConfig`'s.

Long on purpose: the settings dataclasses of both scripts, one short class per concern, kept in
one file so each flag's default is found in one place.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple, Type, TypeVar, Union

import numpy as np

from .schedule import cosine_scheduler, scale_lr

T = TypeVar("T")

logger = logging.getLogger(__name__)


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


def from_namespace(cls: Type[T], args: Union[argparse.Namespace, Mapping[str, Any]],
                   **overrides: Any) -> T:
    """``cls`` filled from the flags of the same names (lists become tuples: frozen means
    frozen all the way down); a field whose flag is absent keeps its default.

    Args:
        cls: a settings dataclass.
        args: a parsed command line, or flag name -> value (saved flags).
        overrides: field values that replace the flags'.
    """
    given = dict(args) if isinstance(args, Mapping) else vars(args)
    values: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            continue
        if f.name in given:
            value = given[f.name]
            values[f.name] = tuple(value) if isinstance(value, list) else value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag --{f.name} in the command line")
    values.update(overrides)
    return cls(**values)


def field_defaults(cls: Type[Any]) -> Dict[str, Any]:
    """Field name -> declared default of a settings dataclass (fields without one are left
    out): the flags' defaults, for code that reads saved flags."""
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def plain_dict(obj: Any) -> Dict[str, Any]:
    """A settings object (dataclass, namespace or dict) as JSON-ready plain types."""
    if dataclasses.is_dataclass(obj):
        items = dataclasses.asdict(obj).items()
    else:
        items = (obj if isinstance(obj, Mapping) else vars(obj)).items()

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
    ``--epochs 0`` passes here; whether a run may train no epoch is its script's decision.
    The defaults are fine-tuning's; ``run_mae_pretraining.py`` passes its own to the flags."""

    AT_LEAST_ONE = ("batch_size", "update_freq")
    AT_LEAST_ZERO = ("epochs", "warmup_epochs")

    opt: str = "sgd"
    opt_eps: float = 1e-8
    opt_betas: Optional[Tuple[float, ...]] = None
    momentum: float = 0.9
    weight_decay: float = 0.001
    weight_decay_end: Optional[float] = None
    clip_grad: Optional[float] = None
    lr: float = 0.1
    min_lr: float = 1e-6
    warmup_lr: float = 1e-6
    warmup_epochs: int = 10
    warmup_steps: int = -1
    epochs: int = 100
    batch_size: int = 16
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

    output_dir: str = ""
    log_dir: Optional[str] = None
    log_every: int = 10
    device: Optional[str] = None
    seed: int = 0
    resume: str = ""
    auto_resume: bool = True
    start_epoch: int = 0
    amp: Optional[bool] = None  # None: decided by the device
    amp_dtype: str = "auto"
    save_ckpt_freq: int = 10
    dist_url: str = "env://"
    dist_on_itp: bool = False
    local_rank: int = -1
    unsafe_load: bool = False
    dist_timeout: int = 30  # minutes (--dist_timeout)
    reset_optimizer: bool = False

    @property
    def tensorboard_dir(self) -> str:
        return self.log_dir or self.output_dir


# ------------------------------------------------------------------------------------- data
# Class counts of the known data sets; 'custom' takes --nb_classes.
DATASET_NUM_CLASSES: Dict[str, int] = {"Kinetics-400": 400, "SSV2": 174, "UCF101": 101,
                                       "HMDB51": 51}
DATA_SETS = tuple(DATASET_NUM_CLASSES) + ("custom",)
# Data sets whose labels depend on left/right (e.g. "pushing something from left to right"):
# they use segment sampling and are never flipped.
SEGMENT_SAMPLED = ("SSV2",)
# --sampling: 'auto' is the data set's own (segment for SEGMENT_SAMPLED, dense for the others).
SAMPLINGS = ("auto", "segment", "dense")
VIDEO_BACKENDS = ("decord", "pyav")
ERASE_MODES = ("pixel", "rand", "const")
# The clip flags both scripts have (``--batch_size`` is checked with the optimizer's).
CLIP_AT_LEAST_ONE = ("num_frames", "sampling_rate", "input_size")


def check_video_backend(name: str) -> None:
    """Refuse a ``--video_backend`` no decoder implements (naming the flag and the choices)."""
    if name not in VIDEO_BACKENDS:
        raise ValueError(f"--video_backend must be one of {VIDEO_BACKENDS}, got {name!r}")


def num_classes_for(data_set: str, nb_classes: Optional[int] = None) -> int:
    """Class count from ``--data_set``, checked against ``--nb_classes`` when that is given.

    Args:
        data_set: ``--data_set``.
        nb_classes: ``--nb_classes`` (required for 'custom').

    Raises:
        ConfigError: unknown data set, or ``--nb_classes`` missing or contradicting it.
    """
    if data_set == "custom":
        if nb_classes is None or int(nb_classes) < 1:
            raise ConfigError("--data_set custom needs --nb_classes (a positive class count)")
        return int(nb_classes)
    if data_set not in DATASET_NUM_CLASSES:
        raise ConfigError(f"unknown --data_set {data_set!r}; choose one of "
                          f"{', '.join(DATA_SETS)}")
    expected = DATASET_NUM_CLASSES[data_set]
    if nb_classes is not None and int(nb_classes) != expected:
        raise ConfigError(f"--nb_classes {nb_classes} contradicts --data_set {data_set} "
                          f"({expected} classes); use --data_set custom for another class count")
    return expected


@dataclass(frozen=True)
class DataConfig(CheckedFlags):
    """Lists, clip sampling, augmentation, views and loaders: the settings of every video data
    set (``datasets.build_dataset``, ``datasets.VideoClsDataset``, the k-NN probe's; the
    pre-training data set's extend them, :class:`PretrainDataConfig`). Named as the flags.

    ``nb_classes`` is the resolved class count once made by :meth:`from_args`. Training-only
    settings (``is_aa``/``aa``, flips, crop scale, random erasing) are ignored by the
    validation and test splits.
    """

    AT_LEAST_ONE = CLIP_AT_LEAST_ONE + ("batch_size_val", "test_num_segment", "test_num_crop",
                                        "num_sample")
    AT_LEAST_ZERO = ("num_workers",)

    data_path: Optional[str] = None
    eval_data_path: Optional[str] = None
    data_root: str = ""  # prefix of relative video paths ('': the list file's folder)
    data_set: str = "Kinetics-400"
    nb_classes: Optional[int] = None
    num_frames: int = 16
    sampling_rate: int = 4
    sampling: str = "auto"  # frame sampling: SAMPLINGS (segment_sampling says which is used)
    input_size: int = 224
    short_side_size: int = 224
    test_num_segment: int = 5
    test_num_crop: int = 3
    num_sample: int = 2  # as the original scripts' default: two augmented clips per decode
    is_aa: bool = False
    aa: str = "rand-m7-n4-mstd0.5-inc1"
    train_interpolation: str = "bicubic"
    no_flip: bool = False
    train_crop_scale: Tuple[float, float] = (0.08, 1.0)
    reprob: float = 0.0  # random erasing, applied on the device by the engine
    remode: str = "pixel"
    recount: int = 1
    video_backend: str = "decord"
    max_bad_fraction: float = 0.01
    allow_duplicates: bool = False  # read by ``datasets.parse_list_file``
    batch_size: int = OptimConfig.batch_size
    batch_size_val: int = 14
    num_workers: int = 10
    pin_mem: bool = True
    cache_videos: bool = False  # decoded frames kept once (datasets.frame_cache)
    cache_max_gb: float = 8.0
    cache_dir: str = ""  # '': the frame cache lives in memory, for this run only

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.cache_max_gb > 0:
            raise ConfigError(f"--cache_max_gb must be > 0, got {self.cache_max_gb}")
        if self.cache_dir and not self.cache_videos:
            raise ConfigError(f"--cache_dir {self.cache_dir} needs --cache_videos (it says "
                              f"where the decoded frames are kept)")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"--sampling must be one of {', '.join(SAMPLINGS)}, got "
                              f"{self.sampling!r}")

    @classmethod
    def from_args(cls: Type[T], args: Union[argparse.Namespace, Mapping[str, Any]],
                  **overrides: Any) -> T:
        """The data settings of a parsed command line (or flag name -> value), the class
        count resolved from ``--data_set``/``--nb_classes``; absent flags keep their
        defaults. The one conversion the scripts, tools and tests share.

        Raises:
            ConfigError: a flag that cannot run, naming it.
        """
        data = from_namespace(cls, args, **overrides)
        return dataclasses.replace(data, nb_classes=num_classes_for(data.data_set,
                                                                    data.nb_classes))

    def for_eval(self) -> "DataConfig":
        """The settings of the validation and test splits (``--eval_data_path`` if given)."""
        if not self.eval_data_path:
            return self
        return dataclasses.replace(self, data_path=self.eval_data_path)

    @property
    def test_views(self) -> int:
        return self.test_num_segment * self.test_num_crop

    @property
    def segment_sampling(self) -> bool:
        """One frame from each of ``num_frames`` equal segments (TSN, SSV2) instead of a dense
        window of ``num_frames`` frames ``sampling_rate`` apart (Kinetics, UCF101, HMDB51):
        ``--sampling``, whose ``auto`` is the data set's own (segment for SSV2 only)."""
        if self.sampling == "auto":
            return self.data_set in SEGMENT_SAMPLED
        return self.sampling == "segment"

    @property
    def train_flip(self) -> bool:
        """Random horizontal flips in training: never for SSV2 (left/right are part of its
        labels), nor with ``--no_flip``."""
        return self.data_set not in SEGMENT_SAMPLED and not self.no_flip

    @property
    def auto_augment(self) -> Optional[str]:
        """The RandAugment string of training, None when off: on only with ``--is_aa`` (the
        original APT scripts pass ``--is_aa --aa rand-m4-n2-mstd0.2-inc1``); ``--aa`` alone
        does nothing."""
        if self.is_aa and self.aa not in (None, "", "None", "none"):
            return self.aa
        return None

    def validate(self, mode: str = "train") -> None:
        """Refuse, naming the flag, a setting that the split ``mode`` cannot run (the counts
        are checked when the settings are made).

        Raises:
            ValueError: naming the flag.
        """
        if mode != "train" and self.short_side_size < self.input_size:
            raise ValueError(f"--short_side_size ({self.short_side_size}) must be >= "
                             f"--input_size ({self.input_size}): evaluation crops are cut from "
                             f"frames resized to the short side")
        check_video_backend(self.video_backend)
        if mode == "train" and not 0.0 <= self.reprob <= 1.0:
            raise ValueError(f"--reprob must be in [0, 1], got {self.reprob}")
        if self.remode not in ERASE_MODES:
            raise ValueError(f"--remode must be 'pixel', 'rand' or 'const', got {self.remode!r}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"--max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")


# ------------------------------------------------------------------------------ fine-tuning
@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning's loss, regularisation, EMA, validation and checkpoint choices."""

    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    cutmix_minmax: Optional[Tuple[float, ...]] = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    model_ema: bool = False
    model_ema_decay: float = 0.9999
    model_ema_force_cpu: bool = False
    disable_eval_during_finetuning: bool = False
    test_best: bool = False
    # No final test: test.csv is neither needed nor opened (the val stage of a sweep, which
    # must choose without reading the test split).
    skip_test: bool = False
    save_ckpt: bool = True
    compile: bool = False

    @property
    def mixup_active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None


@dataclass(frozen=True)
class BackboneSource:
    """Where the pre-trained weights come from (``--finetune`` and how to read it)."""

    finetune: str = ""
    model_key: str = "model|module"
    model_prefix: str = ""


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
class PretrainDataConfig(DataConfig):
    """Unlabelled videos, clip sampling and masks (read by ``datasets.pretrain_dataset``): the
    video data settings with pre-training's defaults and its masks and flips. Labels
    are not read, so there is no class count to resolve."""

    data_set: str = "custom"  # only used to refuse --flip for SSV2
    batch_size: int = 64
    tubelet_size: int = 2
    mask_type: str = "tube"
    mask_ratio: float = 0.9  # VideoMAE's Kinetics/SSv2 scripts (its parser says 0.75)
    flip: bool = False  # VideoMAE pre-training has none

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.flip and self.data_set in SEGMENT_SAMPLED:
            raise ConfigError(f"--flip with --data_set {self.data_set}: flipping changes "
                              f"Something-Something labels (left/right), so it is not allowed")

    @classmethod
    def from_args(cls: Type[T], args: Union[argparse.Namespace, Mapping[str, Any]],
                  **overrides: Any) -> T:
        """The pre-training data settings of a parsed command line (or flag name -> value);
        absent flags keep their defaults."""
        return from_namespace(cls, args, **overrides)


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
                   data=PretrainDataConfig.from_args(args),
                   optim=from_namespace(OptimConfig, args), run=from_namespace(RunConfig, args),
                   probe=from_namespace(ProbeConfig, args), flags=plain_dict(args))
