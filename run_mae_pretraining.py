"""Self-supervised VideoMAE pre-training on unlabelled videos (docs/PRETRAINING.md).

Tube masking at ``--mask_ratio`` (default 0.9), an encoder on the visible tokens only, a narrow
decoder, and the loss on per-patch normalised pixels of the masked tokens. The flags are those of
VideoMAE's ``run_mae_pretraining.py``; a script written for it runs unchanged (with ``torchrun``
in place of ``python -m torch.distributed.launch``)::

    torchrun --nproc_per_node=8 run_mae_pretraining.py --model pretrain_videomae_base_patch16_224 \\
        --data_path LISTS/train.csv --mask_type tube --mask_ratio 0.9 --decoder_depth 4 \\
        --batch_size 32 --num_frames 16 --sampling_rate 4 --opt adamw --opt_betas 0.9 0.95 \\
        --warmup_epochs 40 --epochs 800 --output_dir OUT

Outputs in ``--output_dir``: ``checkpoint-N.pth`` (every ``--save_ckpt_freq`` epochs and the last
epoch) and ``checkpoint-last.pth`` (every epoch, for ``--auto_resume``) in VideoMAE's pre-training
layout (``model`` holds ``encoder.*``, ``decoder.*``, ``encoder_to_decoder.weight``,
``mask_token``), which ``run_class_apt.py --finetune`` loads; ``log.txt`` (one JSON object per
epoch), ``args.json``, ``run.log``; TensorBoard events in ``--log_dir``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Dict, List, Optional

from models.variants import PRETRAIN_VARIANTS
from utils.cli import (COLOR_JITTER, IMAGENET_STATS, CompatFlag, add_compat_args,
                       add_distributed_args, add_optimizer_args, add_run_args, add_schedule_args,
                       add_video_data_args, pop_compat_args)
from utils.config import ConfigError, PretrainConfig, PretrainDataConfig

logger = logging.getLogger("run_mae_pretraining")

# Flags of VideoMAE's script that mean nothing here (accepted with a warning).
COMPAT_FLAGS = (
    COLOR_JITTER, IMAGENET_STATS,
    CompatFlag("--train_interpolation", "the multi-scale crop resizes bilinearly", str),
)


def str2bool(value: str) -> bool:
    """VideoMAE declares ``--normlize_target`` with ``type=bool``; accept its spellings."""
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "on"):
        return True
    if text in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {value!r}")


# ------------------------------------------------------------------------------------- flags
def get_args_parser() -> argparse.ArgumentParser:
    """VideoMAE's pre-training flags with its defaults (except ``--mask_ratio``, 0.9 as in its
    Kinetics/SSv2 scripts; docs/PRETRAINING.md), plus this project's additions (marked "new")."""
    parser = argparse.ArgumentParser("VideoMAE pre-training", add_help=True)
    parser.add_argument("--batch_size", default=PretrainDataConfig.batch_size, type=int,
                        help="videos per GPU/process")
    parser.add_argument("--epochs", default=800, type=int)
    parser.add_argument("--save_ckpt_freq", default=50, type=int,
                        help="write checkpoint-N every this many epochs (checkpoint-last: every "
                             "epoch)")

    g = parser.add_argument_group("model")
    g.add_argument("--model", default="pretrain_videomae_base_patch16_224", type=str,
                   metavar="MODEL", help=f"one of {', '.join(sorted(PRETRAIN_VARIANTS))}")
    g.add_argument("--tubelet_size", type=int, default=PretrainDataConfig.tubelet_size)
    g.add_argument("--decoder_depth", default=4, type=int, help="decoder blocks")
    g.add_argument("--mask_type", default=PretrainDataConfig.mask_type, choices=["random", "tube"],
                   type=str)
    g.add_argument("--mask_ratio", default=PretrainDataConfig.mask_ratio, type=float,
                   help="fraction of tokens masked")
    g.add_argument("--input_size", default=PretrainDataConfig.input_size, type=int,
                   help="clip height and width")
    g.add_argument("--drop_path", type=float, default=0.0, metavar="PCT",
                   help="stochastic depth rate")
    g.add_argument("--normlize_target", default=True, type=str2bool, nargs="?", const=True,
                   help="normalise each patch's target pixels by their mean/std (VideoMAE's "
                        "spelling; --normlize_target False for raw pixels)")
    g.add_argument("--use_checkpoint", action="store_true", default=False,
                   help="gradient checkpointing (less memory, more compute)")
    g.add_argument("--use_learnable_pos_emb", action="store_true", default=False,
                   help="new: a learnable encoder position table instead of the sin-cos one")

    add_optimizer_args(parser, opt="adamw", opt_choices=["adamw", "adam", "sgd", "momentum"],
                       opt_betas_help="AdamW betas (VideoMAE's scripts pass 0.9 0.95)",
                       weight_decay=0.05)
    add_schedule_args(parser, lr=1.5e-4, min_lr=1e-5, warmup_epochs=40)

    g = parser.add_argument_group("augmentation")
    g.add_argument("--flip", action="store_true", default=PretrainDataConfig.flip,
                   help="new: random horizontal flips (VideoMAE pre-training has none; refused "
                        "for SSV2)")

    add_video_data_args(
        parser, data_path_help="a list file ('<path> <label>' lines, label unused: write 0 for "
                               "unlabelled videos), or a folder holding train.csv",
        data_root_help="prefix of relative video paths (default: the list file's folder)",
        defaults=PretrainDataConfig, data_set_help="new: only used to refuse --flip for SSV2",
        max_bad_fraction_help="new: stop when more than this fraction of the videos cannot be "
                              "read", sampling=False)

    g = parser.add_argument_group("k-NN probe (what the features carry, measured with labels)")
    g.add_argument("--probe_data_path", default="", type=str,
                   help="new: a labelled folder (train.csv, val.csv, classes.txt); the encoder's "
                        "features of its val videos are classified by k-NN against its train "
                        "videos before training and every --probe_freq epochs (TensorBoard "
                        "probe/knn_top1, log.txt knn_top1). Labels never reach the training")
    g.add_argument("--probe_freq", default=1, type=int, help="new: epochs between k-NN probes")
    g.add_argument("--probe_k", default=20, type=int, help="new: neighbours that vote")

    add_run_args(parser, resume_help="resume from this checkpoint",
                 pin_mem_help="pin CPU memory in the loader (faster host-to-GPU copies)",
                 amp_dtype_help="new: bf16 where supported, else fp16 with loss scaling")
    add_distributed_args(
        parser, world_size_help="set by the launcher (torchrun/SLURM); kept for compatibility")
    add_compat_args(parser, COMPAT_FLAGS)
    return parser


# -------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> Dict[str, Any]:
    """Pre-train as the flags say; returns the last epoch's statistics and the checkpoint path."""
    # The training layers (torch, the data pipeline, the engines) load once the flags are
    # parsed, so --help and a refused flag cost no torch import (docs/CONVENTIONS.md).
    import pretraining
    pretraining.setup_logging()
    errors = pop_compat_args(args, COMPAT_FLAGS)
    if errors:
        raise ConfigError("; ".join(errors))
    return pretraining.run(PretrainConfig.from_args(args))




def cli(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: known configuration errors, a file that cannot be written and an
    output folder in use by another run end with a one-line message and exit status 2."""
    args = get_args_parser().parse_args(argv)
    import pretraining  # after the flags, as in main: its error types come with the torch layers
    try:
        main(args)
    except pretraining.REFUSED as err:
        logging.getLogger("run_mae_pretraining").error("%s: %s", type(err).__name__, err)
        return 2
    except pretraining.UNWRITABLE as err:  # one line that names the file or folder
        logging.getLogger("run_mae_pretraining").error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
