"""Command-line flag groups shared by ``run_class_apt.py`` and ``run_mae_pretraining.py``.

Each ``add_*_args`` function adds one argument group to a parser and returns it, so a script can
append its own flags to the same group. Where the two scripts differ (a default, the choices'
order, a help text), the difference is a keyword argument: each script passes its own values and
every flag keeps the default, type, choices and help it had. The defaults are the fields' of
the settings dataclasses (``utils/config.py``), declared there once.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Type

from .config import DATA_SETS, SAMPLINGS, VIDEO_BACKENDS, DataConfig, OptimConfig, RunConfig

ArgumentGroup = argparse._ArgumentGroup  # argparse does not export the class under a public name

logger = logging.getLogger(__name__)


def flags_to_argv(flags: Dict[str, Any]) -> List[str]:
    """``{"name": value}`` -> ``["--name", "value", ...]``: ``True`` is a bare switch, ``None``
    and ``False`` leave the flag out, a list or tuple gives several values."""
    argv: List[str] = []
    for key, value in flags.items():
        if value is None or value is False:
            continue
        argv.append(f"--{key}")
        if value is not True:
            argv.extend(str(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return argv


@dataclass(frozen=True)
class CompatFlag:
    """A flag the original scripts pass that means nothing for this code: accepted, and a
    one-line warning says why it is ignored; ``check`` may refuse values that would matter."""

    flag: str
    why: str
    kind: Any = None  # argparse type; None: a switch
    check: Optional[Callable[[Any], Optional[str]]] = None  # an error message, or None


def add_compat_args(parser: argparse.ArgumentParser, flags: Sequence[CompatFlag]) -> None:
    g = parser.add_argument_group("accepted for compatibility with the original scripts (no "
                                  "effect)")
    for c in flags:
        kwargs: Dict[str, Any] = {"action": "store_true"} if c.kind is None else {"type": c.kind}
        g.add_argument(c.flag, default=argparse.SUPPRESS, help=f"ignored: {c.why}", **kwargs)


def pop_compat_args(args: argparse.Namespace, flags: Sequence[CompatFlag]) -> List[str]:
    """Remove the compatibility flags that were given from ``args`` (the parse result, before
    any settings are made from it), warning once per flag; returns the error messages of
    values that cannot be ignored."""
    errors: List[str] = []
    for c in flags:
        dest = c.flag.lstrip("-")
        if not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        delattr(args, dest)
        problem = c.check(value) if c.check is not None else None
        if problem:
            errors.append(problem)
        else:
            logger.warning("%s is accepted for compatibility and ignored: %s", c.flag, c.why)
    return errors


def add_optimizer_args(parser: argparse.ArgumentParser, *, opt: str = OptimConfig.opt,
                       opt_choices: Sequence[str] = ("adamw", "adam", "sgd", "momentum"),
                       opt_betas_help: Optional[str] = None,
                       weight_decay: float = OptimConfig.weight_decay) -> ArgumentGroup:
    """The "optimizer" group: ``--opt``, ``--opt_eps``, ``--opt_betas``, ``--clip_grad``,
    ``--momentum``, ``--weight_decay``, ``--weight_decay_end`` (defaults: ``OptimConfig``'s,
    or the script's ``opt`` and ``weight_decay``)."""
    o = OptimConfig
    g = parser.add_argument_group("optimizer")
    g.add_argument("--opt", default=opt, type=str, metavar="OPTIMIZER", choices=list(opt_choices))
    g.add_argument("--opt_eps", default=o.opt_eps, type=float, metavar="EPSILON")
    g.add_argument("--opt_betas", default=o.opt_betas, type=float, nargs="+", metavar="BETA",
                   help=opt_betas_help)
    g.add_argument("--clip_grad", type=float, default=o.clip_grad, metavar="NORM",
                   help="clip the gradient norm (default: no clipping)")
    g.add_argument("--momentum", type=float, default=o.momentum, metavar="M", help="SGD momentum")
    g.add_argument("--weight_decay", type=float, default=weight_decay)
    g.add_argument("--weight_decay_end", type=float, default=o.weight_decay_end,
                   help="final weight decay of the cosine schedule (default: --weight_decay)")
    return g


def add_schedule_args(parser: argparse.ArgumentParser, *, lr: float = OptimConfig.lr,
                      min_lr: float = OptimConfig.min_lr,
                      warmup_epochs: int = OptimConfig.warmup_epochs,
                      warmup_lr: float = OptimConfig.warmup_lr) -> ArgumentGroup:
    """The "learning-rate schedule" group: ``--lr`` (for a total batch of 256), ``--warmup_lr``,
    ``--min_lr``, ``--warmup_epochs``, ``--warmup_steps`` (defaults: ``OptimConfig``'s, or the
    script's)."""
    g = parser.add_argument_group("learning-rate schedule")
    g.add_argument("--lr", type=float, default=lr, metavar="LR",
                   help="learning rate for a total batch of 256 (scaled by total batch / 256)")
    g.add_argument("--warmup_lr", type=float, default=warmup_lr, metavar="LR")
    g.add_argument("--min_lr", type=float, default=min_lr, metavar="LR")
    g.add_argument("--warmup_epochs", type=int, default=warmup_epochs, metavar="N")
    g.add_argument("--warmup_steps", type=int, default=OptimConfig.warmup_steps, metavar="N",
                   help="warm-up steps; overrides --warmup_epochs when > 0")
    return g


def add_video_data_args(parser: argparse.ArgumentParser, *, data_path_help: str,
                        data_root_help: str, max_bad_fraction_help: str,
                        defaults: Type[DataConfig] = DataConfig,
                        data_set_help: Optional[str] = None,
                        sampling: bool = True) -> ArgumentGroup:
    """The "data" group: ``--data_path``, ``--data_root``, ``--data_set``, ``--num_frames``,
    ``--sampling_rate``, ``--sampling`` (unless ``sampling`` is False: pre-training always
    samples a dense window), ``--video_backend``, ``--max_bad_fraction``,
    ``--allow_duplicates``, ``--cache_videos``, ``--cache_max_gb``, ``--cache_dir``, with the
    defaults of ``defaults`` (``DataConfig`` or ``PretrainDataConfig``)."""
    g = parser.add_argument_group("data")
    g.add_argument("--data_path", default=defaults.data_path, type=str, help=data_path_help)
    g.add_argument("--data_root", default=defaults.data_root, type=str, help=data_root_help)
    g.add_argument("--data_set", default=defaults.data_set, choices=DATA_SETS, type=str,
                   help=data_set_help)
    g.add_argument("--num_frames", type=int, default=defaults.num_frames)
    g.add_argument("--sampling_rate", type=int, default=defaults.sampling_rate)
    if sampling:
        g.add_argument("--sampling", default=defaults.sampling, choices=SAMPLINGS,
                       help="new: frame sampling of the clips (training, validation, test "
                            "views): 'dense' = --num_frames frames --sampling_rate apart in one "
                            "window (Kinetics, UCF101, HMDB51), 'segment' = one frame from each "
                            "of --num_frames equal segments (TSN, SSV2; --sampling_rate unused); "
                            "'auto' = the --data_set's own (segment for SSV2 only)")
    g.add_argument("--video_backend", default=defaults.video_backend, choices=VIDEO_BACKENDS,
                   help="new")
    g.add_argument("--max_bad_fraction", type=float, default=defaults.max_bad_fraction,
                   help=max_bad_fraction_help)
    g.add_argument("--allow_duplicates", action="store_true", default=defaults.allow_duplicates,
                   help="new: keep videos listed more than once in a list file (one warning "
                        "counts them); by default a repeated video is an error naming its lines")
    g.add_argument("--cache_videos", action="store_true", default=defaults.cache_videos,
                   help="new: decode every frame of each listed video once and keep them "
                        "(uint8); every epoch still samples, crops and augments as without it "
                        "(small data sets: later epochs decode nothing)")
    g.add_argument("--cache_max_gb", type=float, default=defaults.cache_max_gb,
                   help="new: stop when the frames of --cache_videos would take more than this")
    g.add_argument("--cache_dir", default=defaults.cache_dir, type=str,
                   help="new: with --cache_videos, keep the decoded frames in this folder (one "
                        "uint8 .npy per list, keyed by the videos' paths, sizes and times), "
                        "decoded by the first run and mapped by the later ones")
    return g


def add_run_args(parser: argparse.ArgumentParser, *, resume_help: str,
                 amp_dtype_help: str, pin_mem_help: Optional[str] = None,
                 num_workers: int = DataConfig.num_workers) -> ArgumentGroup:
    """The "output and run" group: ``--output_dir``, ``--log_dir``, ``--log_every``,
    ``--device``, ``--seed``, ``--resume``, ``--auto_resume``/``--no_auto_resume`` (default on),
    ``--start_epoch``, ``--reset_optimizer``, ``--num_workers``, ``--pin_mem``/``--no_pin_mem``
    (default on), ``--amp``/``--no_amp`` (default: decided by the device), ``--amp_dtype``
    (defaults: ``RunConfig``'s and ``DataConfig``'s)."""
    r = RunConfig
    g = parser.add_argument_group("output and run")
    g.add_argument("--output_dir", default=r.output_dir,
                   help="where to save; empty for no saving")
    g.add_argument("--log_dir", default=r.log_dir,
                   help="TensorBoard folder (default: --output_dir)")
    g.add_argument("--log_every", type=int, default=r.log_every,
                   help="new: progress line every N steps")
    g.add_argument("--device", default=r.device,
                   help="cuda or cpu (default: cuda when available)")
    g.add_argument("--seed", default=r.seed, type=int)
    g.add_argument("--resume", default=r.resume, help=resume_help)
    g.add_argument("--auto_resume", action="store_true")
    g.add_argument("--no_auto_resume", action="store_false", dest="auto_resume")
    parser.set_defaults(auto_resume=r.auto_resume)
    g.add_argument("--start_epoch", default=r.start_epoch, type=int, metavar="N")
    g.add_argument("--reset_optimizer", action="store_true", default=r.reset_optimizer,
                   help="new: on resume, start a fresh optimizer (e.g. another --opt); the "
                        "weights, epoch and schedule step still come from the checkpoint")
    g.add_argument("--num_workers", default=num_workers, type=int)
    g.add_argument("--pin_mem", action="store_true", help=pin_mem_help)
    g.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    parser.set_defaults(pin_mem=DataConfig.pin_mem)
    g.add_argument("--amp", action="store_true", default=r.amp,
                   help="new: mixed precision (default: on for CUDA, off on CPU)")
    g.add_argument("--no_amp", action="store_false", dest="amp")
    g.add_argument("--amp_dtype", default=r.amp_dtype, choices=["auto", "bf16", "fp16"],
                   help=amp_dtype_help)
    return g


def add_distributed_args(parser: argparse.ArgumentParser, *,
                         world_size_help: Optional[str] = None) -> ArgumentGroup:
    """The "distributed" group: ``--world_size``, ``--local_rank``/``--local-rank``,
    ``--dist_on_itp``, ``--dist_url`` (the launcher's environment normally sets these) and
    ``--dist_timeout``."""
    g = parser.add_argument_group("distributed")
    g.add_argument("--world_size", default=1, type=int, help=world_size_help)
    g.add_argument("--local_rank", "--local-rank", dest="local_rank",
                   default=RunConfig.local_rank, type=int)
    g.add_argument("--dist_on_itp", action="store_true", default=RunConfig.dist_on_itp)
    g.add_argument("--dist_url", default=RunConfig.dist_url)
    g.add_argument("--dist_timeout", default=RunConfig.dist_timeout, type=int, metavar="MINUTES",
                   help="new: minutes a rank waits for the others (process group start and "
                        "every collective) before it fails")
    return g


# Flags of VideoMAE's and APT's scripts that this code accepts but does not use.
IMAGENET_STATS = CompatFlag("--imagenet_default_mean_and_std",
                            "clips are always normalised with the ImageNet mean and std")
COLOR_JITTER = CompatFlag("--color_jitter", "the video pipeline has no colour jitter", float)
