"""Fine-tune a VideoMAE ViT for action recognition with a parameter-efficient transfer type.

Usage (one node, N GPUs; a script written for the original APT code runs unchanged, with
``torchrun`` in place of ``python -m torch.distributed.launch``)::

    torchrun --nproc_per_node=N run_class_apt.py --model vit_base_patch16_224 \\
        --transfer_type prompt --prompt_num_tokens 400 --prompt_reparam --data_set UCF101 \\
        --data_path LISTS --finetune videomae_checkpoint.pth --output_dir OUT ...

``--eval`` evaluates a checkpoint (``--resume``, or the latest in ``--output_dir``) with the
multi-view test and exits; ``--flops`` prints parameters and FLOPs as one JSON line and exits.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Dict, List, Optional

from models.config import FinetuneConfig, ModelConfig, add_method_args
from utils.cli import (COLOR_JITTER, IMAGENET_STATS, CompatFlag, add_compat_args,
                       add_distributed_args, add_optimizer_args, add_run_args, add_schedule_args,
                       add_video_data_args, pop_compat_args)
from utils.config import (BackboneSource, ConfigError, DataConfig, OptimConfig, RunConfig,
                          TrainConfig)

logger = logging.getLogger("run_class_apt")

# The flags' defaults are the fields' of the settings dataclasses, declared there once.
M, D, O, T, R, B = ModelConfig, DataConfig, OptimConfig, TrainConfig, RunConfig, BackboneSource

# Flags of the original scripts that mean nothing here (accepted with a warning).
COMPAT_FLAGS = (
    COLOR_JITTER, IMAGENET_STATS,
    CompatFlag("--crop_pct", "evaluation resizes to --short_side_size", float),
    CompatFlag("--resplit", "random erasing splits nothing in a video clip"),
    CompatFlag("--prompt_init", "prompts are initialised uniformly as in VPT and APT", str,
               lambda v: None if v == "random" else f"--prompt_init {v!r}: only 'random' "
                                                    f"(the default) is implemented"),
    CompatFlag("--num_segments", "a clip is --num_frames frames of one window", int,
               lambda v: None if int(v) == 1 else f"--num_segments {v} is not supported: clips "
                                                  f"have --num_frames frames from one window"),
)


# ------------------------------------------------------------------------------------- flags
def get_args_parser() -> argparse.ArgumentParser:
    """Every flag of the original APT/VideoMAE fine-tuning script, with the same meaning and
    defaults, plus this project's additions (marked "new" in the help)."""
    parser = argparse.ArgumentParser(
        "APT / VideoMAE parameter-efficient fine-tuning for video classification", add_help=True)
    parser.add_argument("--batch_size", default=O.batch_size, type=int,
                        help="training videos per GPU")
    parser.add_argument("--batch_size_val", default=D.batch_size_val, type=int,
                        help="validation videos per GPU (the test takes as many clips)")
    parser.add_argument("--epochs", default=O.epochs, type=int)
    parser.add_argument("--update_freq", default=O.update_freq, type=int,
                        help="gradient accumulation steps per optimizer step")
    parser.add_argument("--save_ckpt_freq", default=R.save_ckpt_freq, type=int,
                        help="write checkpoint-N every this many epochs (checkpoint-last: every epoch)")

    g = parser.add_argument_group("model")
    g.add_argument("--model", default=M.model, type=str, metavar="MODEL")
    g.add_argument("--tubelet_size", type=int, default=M.tubelet_size)
    g.add_argument("--input_size", default=D.input_size, type=int, help="clip height and width")
    g.add_argument("--fc_drop_rate", type=float, default=M.fc_drop_rate, metavar="PCT")
    g.add_argument("--drop", type=float, default=M.drop, metavar="PCT", help="dropout rate")
    g.add_argument("--attn_drop_rate", type=float, default=M.attn_drop_rate, metavar="PCT")
    g.add_argument("--drop_path", type=float, default=M.drop_path, metavar="PCT",
                   help="stochastic depth rate")
    g.add_argument("--use_learnable_pos_emb", action="store_true",
                   default=M.use_learnable_pos_emb,
                   help="new: a learnable position table instead of the fixed sin-cos one")

    g = parser.add_argument_group("EMA and evaluation during training")
    g.add_argument("--disable_eval_during_finetuning", action="store_true",
                   default=T.disable_eval_during_finetuning)
    g.add_argument("--model_ema", action="store_true", default=T.model_ema)
    g.add_argument("--model_ema_decay", type=float, default=T.model_ema_decay)
    g.add_argument("--model_ema_force_cpu", action="store_true", default=T.model_ema_force_cpu)

    g = add_optimizer_args(parser, opt_choices=["adamw", "sgd", "adam", "momentum"])
    # default None: the transfer type decides (APT decays its prompts, as the original code).
    g.add_argument("--decay_prompts", action="store_true", default=O.decay_prompts,
                   help="new: apply weight decay to the prompt tensors the transfer type exempts "
                        "(default: the type's choice; on for APT, as the original code)")
    g.add_argument("--no_decay_prompts", action="store_false", dest="decay_prompts",
                   help="new: no weight decay on the prompt tensors (and APT's prompt_scale)")

    g = add_schedule_args(parser)
    g.add_argument("--layer_decay", type=float, default=O.layer_decay)

    g = parser.add_argument_group("augmentation")
    g.add_argument("--is_aa", action="store_true", default=D.is_aa,
                   help="apply RandAugment (--aa)")
    g.add_argument("--no_flip", action="store_true", default=D.no_flip,
                   help="new: no horizontal flips in training, for data sets whose labels depend on "
                        "left/right (always off for SSV2)")
    g.add_argument("--train_crop_scale", type=float, nargs=2, default=list(D.train_crop_scale),
                   metavar=("MIN", "MAX"),
                   help="new: area range of the training random resized crop")
    g.add_argument("--num_sample", type=int, default=D.num_sample,
                   help="repeated augmentation: clips per video")
    g.add_argument("--aa", type=str, default=D.aa, metavar="NAME")
    g.add_argument("--smoothing", type=float, default=T.smoothing, help="label smoothing")
    g.add_argument("--train_interpolation", type=str, default=D.train_interpolation)

    g = parser.add_argument_group("evaluation")
    g.add_argument("--short_side_size", type=int, default=D.short_side_size)
    g.add_argument("--test_num_segment", type=int, default=D.test_num_segment)
    g.add_argument("--test_num_crop", type=int, default=D.test_num_crop)
    g.add_argument("--test_best", action="store_true", default=T.test_best,
                   help="new: run the final test on checkpoint-best (default: the last weights)")
    g.add_argument("--skip_test", action="store_true", default=T.skip_test,
                   help="new: no final test; test.csv is neither needed nor opened (choosing "
                        "settings on val without reading the test split: tools/sweep.py)")

    g = parser.add_argument_group("random erasing")
    g.add_argument("--reprob", type=float, default=D.reprob, metavar="PCT")
    g.add_argument("--remode", type=str, default=D.remode)
    g.add_argument("--recount", type=int, default=D.recount)

    g = parser.add_argument_group("mixup / cutmix (off unless --mixup or --cutmix > 0)")
    g.add_argument("--mixup", type=float, default=T.mixup)
    g.add_argument("--cutmix", type=float, default=T.cutmix)
    g.add_argument("--cutmix_minmax", type=float, nargs="+", default=T.cutmix_minmax)
    g.add_argument("--mixup_prob", type=float, default=T.mixup_prob)
    g.add_argument("--mixup_switch_prob", type=float, default=T.mixup_switch_prob)
    g.add_argument("--mixup_mode", type=str, default=T.mixup_mode,
                   choices=["batch", "pair", "elem"])

    g = parser.add_argument_group("fine-tuning")
    g.add_argument("--finetune", default=B.finetune, help="pre-trained checkpoint (VideoMAE, "
                   "APT, Hugging Face folder, DeepSpeed folder)")
    g.add_argument("--model_key", default=B.model_key, type=str)
    g.add_argument("--model_prefix", default=B.model_prefix, type=str)
    g.add_argument("--init_scale", default=M.init_scale, type=float)
    g.add_argument("--use_checkpoint", action="store_true", default=M.use_checkpoint,
                   help="gradient checkpointing")
    g.add_argument("--use_mean_pooling", action="store_true", default=M.use_mean_pooling)
    g.add_argument("--use_cls", action="store_false", dest="use_mean_pooling")
    g.add_argument("--unsafe_load", action="store_true", default=R.unsafe_load,
                   help="new: allow full unpickling of checkpoints you trust")

    add_method_args(parser)

    g = add_video_data_args(
        parser, data_path_help="folder with train.csv, val.csv and test.csv",
        data_root_help="new: prefix of relative video paths (default: the list file's folder)",
        max_bad_fraction_help="new: stop when more than this fraction of a split is unreadable")
    g.add_argument("--eval_data_path", default=D.eval_data_path, type=str,
                   help="folder with val.csv and test.csv (default: --data_path)")
    g.add_argument("--nb_classes", default=D.nb_classes, type=int,
                   help="class count (default: that of --data_set; required for custom)")

    g = add_run_args(
        parser, resume_help="resume from (or, with --eval, evaluate) this checkpoint",
        amp_dtype_help="new: auto = bf16 where supported, else fp16 with a loss scaler")
    g.add_argument("--save_ckpt", action="store_true")
    g.add_argument("--no_save_ckpt", action="store_false", dest="save_ckpt")
    parser.set_defaults(save_ckpt=T.save_ckpt)
    g.add_argument("--eval", action="store_true", default=FinetuneConfig.eval,
                   help="evaluate a checkpoint only")
    g.add_argument("--dist_eval", action="store_true", default=FinetuneConfig.dist_eval,
                   help="shard validation and test over the processes")
    g.add_argument("--flops", action="store_true", default=False,
                   help="new: print parameters and FLOPs of one clip as JSON and exit")
    g.add_argument("--compile", action="store_true", default=T.compile,
                   help="new: torch.compile the model for training")

    g = add_distributed_args(parser)
    g.add_argument("--enable_deepspeed", action="store_true", default=False)
    g.add_argument("--deepspeed", action="store_true", default=False,
                   help="DeepSpeed's own switch; same as --enable_deepspeed")
    g.add_argument("--deepspeed_config", "--deepscale_config", dest="deepspeed_config",
                   default=FinetuneConfig.deepspeed_config,
                   help="a DeepSpeed JSON config to start from")
    add_compat_args(parser, COMPAT_FLAGS)
    return parser


# -------------------------------------------------------------------------------------- main
def make_config(args: argparse.Namespace) -> FinetuneConfig:
    """The settings of a parsed command line (compatibility flags are dropped with a warning)."""
    errors = pop_compat_args(args, COMPAT_FLAGS)
    if errors:
        raise ConfigError("; ".join(errors))
    return FinetuneConfig.from_args(args)


def main(args: argparse.Namespace) -> Dict[str, Any]:
    """Train (or with ``--eval`` only test) as the flags say; returns the final results."""
    # The training layers (torch, timm, the data pipeline) load once the flags are parsed, so
    # --help and a refused flag cost no torch import (docs/CONVENTIONS.md, "Entry points").
    import finetuning
    finetuning.setup_logging()
    found = finetuning.eval_class_count(args)  # --eval of a custom set: the checkpoint's count
    return finetuning.run(make_config(args), flops=args.flops, eval_found=found)


def cli(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: known configuration errors, a file that cannot be written and an
    output folder in use by another run end with a one-line message and exit status 2."""
    args = get_args_parser().parse_args(argv)
    import finetuning  # after the flags, as in main: its error types come with the torch layers
    try:
        main(args)
    except finetuning.REFUSED as err:
        logging.getLogger("run_class_apt").error("%s: %s", type(err).__name__, err)
        return 2
    except finetuning.UNWRITABLE as err:  # one line that names the file or folder
        logging.getLogger("run_class_apt").error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
