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
import datetime
import json
import logging
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch

import engine
import optim_factory
import utils
from models import TRANSFER_TYPES, create_model, load_pretrained, parameter_counts
from utils.cli import (add_distributed_args, add_optimizer_args, add_run_args, add_schedule_args,
                       add_video_data_args)

logger = logging.getLogger("run_class_apt")

# Flags that define the network: ``--eval`` takes them from the checkpoint it evaluates.
ARCH_KEYS = ("model", "transfer_type", "tubelet_size", "use_mean_pooling", "use_learnable_pos_emb",
             "prompt_num_tokens", "prompt_start", "prompt_end", "prompt_reparam",
             "prompt_per_head", "vpt_mode", "approx_rank", "adapter_dim", "adapter_scale",
             "lora_rank", "lora_alpha")


class ConfigError(ValueError):
    """A command line that cannot run; the message names the flag or path."""


# ------------------------------------------------------------------------------------- flags
def get_args_parser() -> argparse.ArgumentParser:
    """Every flag of the original APT/VideoMAE fine-tuning script, with the same meaning and
    defaults, plus this project's additions (marked "new" in the help)."""
    parser = argparse.ArgumentParser(
        "APT / VideoMAE parameter-efficient fine-tuning for video classification", add_help=True)
    parser.add_argument("--batch_size", default=16, type=int, help="training videos per GPU")
    parser.add_argument("--batch_size_val", default=14, type=int,
                        help="validation videos per GPU (the test takes as many clips)")
    parser.add_argument("--epochs", default=100, type=int)
    parser.add_argument("--update_freq", default=1, type=int,
                        help="gradient accumulation steps per optimizer step")
    parser.add_argument("--save_ckpt_freq", default=10, type=int,
                        help="write checkpoint-N every this many epochs (checkpoint-last: every epoch)")

    g = parser.add_argument_group("model")
    g.add_argument("--model", default="vit_base_patch16_224", type=str, metavar="MODEL")
    g.add_argument("--tubelet_size", type=int, default=2)
    g.add_argument("--input_size", default=224, type=int, help="clip height and width")
    g.add_argument("--fc_drop_rate", type=float, default=0.0, metavar="PCT")
    g.add_argument("--drop", type=float, default=0.0, metavar="PCT", help="dropout rate")
    g.add_argument("--attn_drop_rate", type=float, default=0.0, metavar="PCT")
    g.add_argument("--drop_path", type=float, default=0.0, metavar="PCT",
                   help="stochastic depth rate")
    g.add_argument("--use_learnable_pos_emb", action="store_true", default=False,
                   help="new: a learnable position table instead of the fixed sin-cos one")

    g = parser.add_argument_group("EMA and evaluation during training")
    g.add_argument("--disable_eval_during_finetuning", action="store_true", default=False)
    g.add_argument("--model_ema", action="store_true", default=False)
    g.add_argument("--model_ema_decay", type=float, default=0.9999)
    g.add_argument("--model_ema_force_cpu", action="store_true", default=False)

    g = add_optimizer_args(parser, opt="sgd", opt_choices=["adamw", "sgd", "adam", "momentum"],
                           weight_decay=0.001)
    g.add_argument("--decay_prompts", action="store_true", default=False,
                   help="new: apply weight decay to prompt tensors too (the original code did)")

    g = add_schedule_args(parser, lr=0.1, min_lr=1e-6, warmup_epochs=10)
    g.add_argument("--layer_decay", type=float, default=1.0)

    g = parser.add_argument_group("augmentation")
    g.add_argument("--is_aa", action="store_true", default=False, help="apply RandAugment (--aa)")
    g.add_argument("--no_flip", action="store_true", default=False,
                   help="new: no horizontal flips in training, for data sets whose labels depend on "
                        "left/right (always off for SSV2)")
    g.add_argument("--train_crop_scale", type=float, nargs=2, default=[0.08, 1.0],
                   metavar=("MIN", "MAX"), help="new: area range of the training random resized crop")
    g.add_argument("--color_jitter", type=float, default=0.4, metavar="PCT",
                   help="accepted for compatibility; the video pipeline does not use it")
    g.add_argument("--num_sample", type=int, default=2, help="repeated augmentation: clips per video")
    g.add_argument("--aa", type=str, default="rand-m7-n4-mstd0.5-inc1", metavar="NAME")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--train_interpolation", type=str, default="bicubic")

    g = parser.add_argument_group("evaluation")
    g.add_argument("--crop_pct", type=float, default=None,
                   help="accepted for compatibility; evaluation resizes to --short_side_size")
    g.add_argument("--short_side_size", type=int, default=224)
    g.add_argument("--test_num_segment", type=int, default=5)
    g.add_argument("--test_num_crop", type=int, default=3)
    g.add_argument("--test_best", action="store_true", default=False,
                   help="new: run the final test on checkpoint-best (default: the last weights)")

    g = parser.add_argument_group("random erasing")
    g.add_argument("--reprob", type=float, default=0.0, metavar="PCT")
    g.add_argument("--remode", type=str, default="pixel")
    g.add_argument("--recount", type=int, default=1)
    g.add_argument("--resplit", action="store_true", default=False,
                   help="accepted for compatibility; has no effect on video clips")

    g = parser.add_argument_group("mixup / cutmix (off unless --mixup or --cutmix > 0)")
    g.add_argument("--mixup", type=float, default=0.0)
    g.add_argument("--cutmix", type=float, default=0.0)
    g.add_argument("--cutmix_minmax", type=float, nargs="+", default=None)
    g.add_argument("--mixup_prob", type=float, default=1.0)
    g.add_argument("--mixup_switch_prob", type=float, default=0.5)
    g.add_argument("--mixup_mode", type=str, default="batch", choices=["batch", "pair", "elem"])

    g = parser.add_argument_group("fine-tuning")
    g.add_argument("--finetune", default="", help="pre-trained checkpoint (VideoMAE, APT, Hugging "
                   "Face folder, DeepSpeed folder)")
    g.add_argument("--model_key", default="model|module", type=str)
    g.add_argument("--model_prefix", default="", type=str)
    g.add_argument("--init_scale", default=0.001, type=float)
    g.add_argument("--use_checkpoint", action="store_true", default=False,
                   help="gradient checkpointing")
    g.add_argument("--use_mean_pooling", action="store_true", default=True)
    g.add_argument("--use_cls", action="store_false", dest="use_mean_pooling")
    g.add_argument("--unsafe_load", action="store_true", default=False,
                   help="new: allow full unpickling of checkpoints you trust")

    g = parser.add_argument_group("transfer type")
    g.add_argument("--transfer_type", default="prompt", choices=sorted(TRANSFER_TYPES),
                   help="random, end2end, linear, prompt (APT), vpt, approx, adapter, lora")
    g.add_argument("--prompt_num_tokens", type=int, default=5)
    g.add_argument("--prompt_start", type=int, default=None, help="first block with prompts")
    g.add_argument("--prompt_end", type=int, default=None, help="last block with prompts (inclusive)")
    g.add_argument("--prompt_dropout", type=float, default=0.0)
    g.add_argument("--prompt_init", default="random", choices=["random"], type=str)
    g.add_argument("--prompt_reparam", action="store_true", default=False)
    g.add_argument("--prompt_per_head", action="store_true", default=False,
                   help="new: one APT prompt set per head instead of one shared by all heads")
    g.add_argument("--vpt_mode", default="deep", choices=["shallow", "deep"], help="new")
    g.add_argument("--approx_rank", type=int, default=4, help="new: Approximated Prompt Tuning rank")
    g.add_argument("--adapter_dim", type=int, default=64, help="new: AdaptFormer bottleneck")
    g.add_argument("--adapter_scale", type=float, default=0.1, help="new: AdaptFormer scale")
    g.add_argument("--lora_rank", type=int, default=8, help="new")
    g.add_argument("--lora_alpha", type=float, default=16.0, help="new")

    g = add_video_data_args(
        parser, data_path_help="folder with train.csv, val.csv and test.csv",
        data_root_help="new: prefix of relative video paths (default: the list file's folder)",
        data_set="Kinetics-400",
        max_bad_fraction_help="new: stop when more than this fraction of a split is unreadable")
    g.add_argument("--eval_data_path", default=None, type=str,
                   help="folder with val.csv and test.csv (default: --data_path)")
    g.add_argument("--nb_classes", default=None, type=int,
                   help="class count (default: that of --data_set; required for custom)")
    g.add_argument("--num_segments", type=int, default=1)

    g = add_run_args(
        parser, resume_help="resume from (or, with --eval, evaluate) this checkpoint",
        amp_dtype_help="new: auto = bf16 where supported, else fp16 with a loss scaler")
    g.add_argument("--save_ckpt", action="store_true")
    g.add_argument("--no_save_ckpt", action="store_false", dest="save_ckpt")
    parser.set_defaults(save_ckpt=True)
    g.add_argument("--eval", action="store_true", help="evaluate a checkpoint only")
    g.add_argument("--dist_eval", action="store_true", default=False,
                   help="shard validation and test over the processes")
    g.add_argument("--flops", action="store_true", default=False,
                   help="new: print parameters and FLOPs of one clip as JSON and exit")
    g.add_argument("--compile", action="store_true", default=False,
                   help="new: torch.compile the model for training")

    g = add_distributed_args(parser)
    g.add_argument("--enable_deepspeed", action="store_true", default=False)
    g.add_argument("--deepspeed", action="store_true", default=False,
                   help="DeepSpeed's own switch; same as --enable_deepspeed")
    g.add_argument("--deepspeed_config", "--deepscale_config", dest="deepspeed_config",
                   default=None, help="a DeepSpeed JSON config to start from")
    return parser


# ---------------------------------------------------------------------------------- building
def build_model(args: argparse.Namespace) -> torch.nn.Module:
    """The backbone with the transfer type attached (validates transfer flags, no data read)."""
    return create_model(
        args.model, transfer_type=args.transfer_type, num_classes=args.nb_classes,
        all_frames=args.num_frames * args.num_segments, img_size=args.input_size,
        tubelet_size=args.tubelet_size, drop_rate=args.drop, drop_path_rate=args.drop_path,
        attn_drop_rate=args.attn_drop_rate, fc_drop_rate=args.fc_drop_rate,
        use_mean_pooling=args.use_mean_pooling, init_scale=args.init_scale,
        use_checkpoint=args.use_checkpoint, use_learnable_pos_emb=args.use_learnable_pos_emb,
        prompt_num_tokens=args.prompt_num_tokens, prompt_start=args.prompt_start,
        prompt_end=args.prompt_end, prompt_dropout=args.prompt_dropout,
        prompt_reparam=args.prompt_reparam, prompt_per_head=args.prompt_per_head,
        prompt_init=args.prompt_init, vpt_mode=args.vpt_mode, approx_rank=args.approx_rank,
        adapter_dim=args.adapter_dim, adapter_scale=args.adapter_scale,
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha)


def build_criterion(args: argparse.Namespace, mixup_active: bool) -> torch.nn.Module:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    if mixup_active:
        return SoftTargetCrossEntropy()  # smoothing is applied to the mixed targets
    if args.smoothing > 0.0:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return torch.nn.CrossEntropyLoss()


def resolve_num_classes(args: argparse.Namespace) -> None:
    from datasets import num_classes_for
    args.nb_classes = num_classes_for(args)


def check_data_paths(args: argparse.Namespace) -> None:
    """Fail early, naming the path, when the data folder or a needed list file is missing."""
    if not args.data_path:
        raise ConfigError("--data_path is required: the folder holding train.csv, val.csv and "
                          "test.csv")
    eval_root = args.eval_data_path or args.data_path
    needed = [] if args.eval else [(args.data_path, "train.csv", "--data_path")]
    if not args.eval and not args.disable_eval_during_finetuning:
        needed.append((eval_root, "val.csv", "--eval_data_path" if args.eval_data_path else "--data_path"))
    needed.append((eval_root, "test.csv", "--eval_data_path" if args.eval_data_path else "--data_path"))
    for root, name, flag in needed:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{flag} {root}: no such folder")
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: list file not found ({flag} must hold {name})")


def _eval_args(args: argparse.Namespace) -> argparse.Namespace:
    if not args.eval_data_path:
        return args
    copy = argparse.Namespace(**vars(args))
    copy.data_path = args.eval_data_path
    return copy


def build_loaders(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """Datasets, samplers and loaders of the splits this run needs."""
    import datasets as data
    out: Dict[str, Any] = {}
    world, rank = utils.get_world_size(), utils.get_rank()
    pin = bool(args.pin_mem) and device.type == "cuda"
    common = dict(num_workers=args.num_workers, pin_memory=pin,
                  worker_init_fn=data.seed_worker if args.num_workers > 0 else None)
    if not args.eval:
        ds_train, _ = data.build_dataset(is_train=True, test_mode=False, args=args)
        sampler = torch.utils.data.DistributedSampler(ds_train, num_replicas=world, rank=rank,
                                                      shuffle=True, seed=args.seed)
        out["train"] = torch.utils.data.DataLoader(
            ds_train, sampler=sampler, batch_size=args.batch_size, drop_last=True,
            collate_fn=data.collate_train, **common)
    eval_args = _eval_args(args)
    sharded = args.distributed and args.dist_eval
    out["sharded"] = sharded

    def eval_sampler(ds):
        if sharded:
            return torch.utils.data.DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
        return torch.utils.data.SequentialSampler(ds)

    if not args.eval and not args.disable_eval_during_finetuning:
        ds_val, _ = data.build_dataset(is_train=False, test_mode=False, args=eval_args)
        out["val"] = torch.utils.data.DataLoader(
            ds_val, sampler=eval_sampler(ds_val), batch_size=args.batch_size_val,
            drop_last=False, collate_fn=data.collate_eval, **common)
    ds_test, _ = data.build_dataset(is_train=False, test_mode=True, args=eval_args)
    views = args.test_num_segment * args.test_num_crop
    # About --batch_size_val clips per forward pass: each test item holds all views of a video.
    test_batch = max(1, math.ceil(args.batch_size_val / views))
    out["test"] = torch.utils.data.DataLoader(
        ds_test, sampler=eval_sampler(ds_test), batch_size=test_batch, drop_last=False,
        collate_fn=data.collate_eval, **common)
    return out


def _tracker(loader: Any, split: str, args: argparse.Namespace) -> Any:
    from datasets import BadVideoTracker
    ds = loader.dataset
    if hasattr(ds, "make_bad_video_tracker"):
        return ds.make_bad_video_tracker()
    return BadVideoTracker(split, len(ds), args.max_bad_fraction)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


# -------------------------------------------------------------------------------------- main
def run_flops(args: argparse.Namespace) -> Dict[str, Any]:
    """``--flops``: parameters and FLOPs of one clip, as one JSON line on stdout."""
    from models import cost_report
    if args.nb_classes is None:
        resolve_num_classes(args)
    model = build_model(args)
    report = cost_report(model, args.num_frames * args.num_segments, args.input_size, args.model)
    print(json.dumps(report), flush=True)  # the command's output, not a log line
    return report


def _prepare_eval_checkpoint(args: argparse.Namespace) -> Dict[str, Any]:
    """``--eval``: find and read the checkpoint to evaluate; take its architecture flags."""
    path = args.resume or (utils.find_resume_checkpoint(args.output_dir) if args.auto_resume else None)
    if not path:
        where = f"no checkpoint-last or checkpoint-N in --output_dir {args.output_dir!r}" \
            if args.output_dir and args.auto_resume else "no --resume given"
        raise ConfigError(f"--eval needs a trained checkpoint to evaluate ({where}); pass "
                          f"--resume PATH. The untrained model is never evaluated.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--resume {path}: no such checkpoint")
    ckpt = utils.read_checkpoint(path, unsafe=args.unsafe_load)
    saved = ckpt.get("args") or {}
    for key in ARCH_KEYS:
        if key in saved and saved[key] != getattr(args, key, None):
            logger.warning("--eval: using the checkpoint's --%s %r (command line: %r)", key,
                           saved[key], getattr(args, key, None))
            setattr(args, key, saved[key])
    args.resume = path
    return ckpt


def _load_backbone(args: argparse.Namespace, model: torch.nn.Module,
                   eval_ckpt: Optional[Dict[str, Any]]) -> Optional[str]:
    """Load ``--finetune`` (or, for ``--eval`` without it, the backbone the checkpoint names)."""
    from models import trains_whole_model
    method = model.transfer
    if not method.loads_pretrained:
        if args.finetune:
            logger.warning("--transfer_type %s trains from scratch: --finetune %s is ignored",
                           method.name, args.finetune)
        return None
    path = args.finetune
    if eval_ckpt is not None and trains_whole_model(model):
        return None  # the checkpoint holds every tensor
    if not path and eval_ckpt is not None:
        ref = eval_ckpt.get("backbone") or {}
        path = ref.get("path")
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"{args.resume} was trained on the backbone {path}, which is "
                                    f"no longer there: pass it with --finetune")
        if path:
            logger.info("--eval: loading the backbone recorded in the checkpoint: %s", path)
    if not path:
        logger.warning("no --finetune checkpoint: the %s backbone keeps its random "
                       "initialisation", args.model)
        return None
    report = load_pretrained(model, path, model_key=args.model_key,
                             model_prefix=args.model_prefix, unsafe=args.unsafe_load)
    logger.info("backbone: %s", report.summary())
    return path


def main(args: argparse.Namespace) -> Dict[str, Any]:
    """Train (or with ``--eval`` only test) as the flags say; returns the final results."""
    utils.setup_logging(rank=int(os.environ.get("RANK", "0")))
    if args.flops:
        return run_flops(args)
    if args.deepspeed:
        args.enable_deepspeed = True
    if args.compile and args.enable_deepspeed and not args.eval:
        raise ConfigError("--compile is not supported with --enable_deepspeed")
    if args.eval and args.enable_deepspeed:
        logger.info("--eval evaluates without the DeepSpeed engine (same numbers)")
    device = utils.init_distributed_mode(args, force=args.enable_deepspeed and not args.eval)
    try:
        return _run(args, device)
    finally:
        utils.destroy_process_group(args)


def _run(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    rank, world = utils.start_run_outputs(args), utils.get_world_size()
    if args.crop_pct is not None or args.resplit:
        logger.warning("--crop_pct / --resplit are accepted for compatibility but have no effect")
    resolve_num_classes(args)
    eval_ckpt = _prepare_eval_checkpoint(args) if args.eval else None
    utils.seed_everything(args.seed)  # the same initial model on every rank

    model = build_model(args)  # before any data: bad transfer flags fail here
    utils.seed_everything(args.seed + rank)
    check_data_paths(args)
    backbone_path = _load_backbone(args, model, eval_ckpt)
    if eval_ckpt is not None:
        utils.check_backbone(eval_ckpt, backbone_path, args.resume)
        utils.load_model_state(model, eval_ckpt)
        logger.info("evaluating %s (epoch %s)", args.resume, eval_ckpt.get("epoch"))
    if backbone_path and not args.finetune:
        args.finetune = backbone_path
    model.to(device)
    counts = parameter_counts(model)
    logger.info("model %s, transfer type %s: %d parameters, %d trainable (%.3f%%)", args.model,
                args.transfer_type, counts["params"], counts["trainable_params"],
                100.0 * counts["trainable_params"] / max(counts["params"], 1))

    amp_dtype = utils.amp_dtype_for(device, args.amp, args.amp_dtype)
    loaders = build_loaders(args, device)
    if args.output_dir and rank == 0:
        name = "eval_args.json" if args.eval else "args.json"
        with open(os.path.join(args.output_dir, name), "w", encoding="utf-8") as f:
            json.dump(utils.args_to_dict(args), f, indent=2)

    if args.eval:
        result = run_final_test(args, model, loaders, device, amp_dtype, None, tested="resume")
        return {"final": result, "counts": counts}
    return train(args, model, loaders, device, amp_dtype, counts)


def train(args: argparse.Namespace, model: torch.nn.Module, loaders: Dict[str, Any],
          device: torch.device, amp_dtype: Optional[torch.dtype], counts: Dict[str, int]
          ) -> Dict[str, Any]:
    """The training loop: epochs of training, validation, checkpoints, then the final test."""
    from datasets import Mixup
    rank, world = utils.get_rank(), utils.get_world_size()
    loader_train = loaders["train"]
    steps_per_epoch = len(loader_train) // args.update_freq
    total_batch = args.batch_size * args.update_freq * world
    if steps_per_epoch < 1:
        raise ConfigError(f"the training split has {len(loader_train.dataset)} videos, too few "
                          f"for one optimizer step of {total_batch} videos (--batch_size "
                          f"{args.batch_size} x --update_freq {args.update_freq} x {world} "
                          f"processes)")
    lr = utils.scale_lr(args.lr, total_batch)
    min_lr = utils.scale_lr(args.min_lr, total_batch)
    warmup_lr = utils.scale_lr(args.warmup_lr, total_batch)
    logger.info("lr %.3g (= --lr %.3g x total batch %d / 256), min lr %.3g, warm-up from %.3g; "
                "%d steps per epoch, accumulation %d", lr, args.lr, total_batch, min_lr,
                warmup_lr, steps_per_epoch, args.update_freq)

    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix,
                         cutmix_minmax=args.cutmix_minmax, prob=args.mixup_prob,
                         switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=args.nb_classes)
    criterion = build_criterion(args, mixup_fn is not None)

    assigner = optim_factory.layer_decay_assigner(model, args.layer_decay)
    optimizer = optim_factory.create_optimizer(
        args, model, get_num_layer=assigner.get_layer_id if assigner else None,
        get_layer_scale=assigner.get_scale if assigner else None)
    model_ema = None
    if args.model_ema:
        from timm.utils import ModelEmaV3
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay,
                               device=torch.device("cpu") if args.model_ema_force_cpu else None)
        logger.info("EMA of the weights with decay %.6f", args.model_ema_decay)

    model_without_ddp = model
    train_model: Any = torch.compile(model) if args.compile else model
    loss_scaler = None
    ds_dtype = None
    if args.enable_deepspeed:
        from utils import ds
        config = ds.create_ds_config(args, amp_dtype, world)
        ds.write_ds_config(args, config, rank)
        train_model, optimizer = ds.initialize(args, train_model, optimizer, config, device)
        ds_dtype = ds.input_dtype(train_model)
    else:
        if args.distributed:
            train_model = torch.nn.parallel.DistributedDataParallel(
                train_model, device_ids=[device.index] if device.type == "cuda" else None)
        loss_scaler = utils.NativeScalerWithGradNormCount(
            enabled=amp_dtype == torch.float16, device=device.type)

    lr_schedule = utils.cosine_scheduler(lr, min_lr, args.epochs, steps_per_epoch,
                                         warmup_epochs=args.warmup_epochs,
                                         start_warmup_value=warmup_lr,
                                         warmup_steps=args.warmup_steps)
    wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
    wd_schedule = utils.cosine_scheduler(args.weight_decay, wd_end, args.epochs, steps_per_epoch)

    meta = utils.auto_load_model(args, train_model, model_without_ddp, optimizer, loss_scaler,
                                 model_ema)
    best_acc = float((meta or {}).get("best_acc") or 0.0)
    has_best = bool(meta) and (meta.get("best_acc") is not None)

    log_writer = None
    log_dir = args.log_dir or args.output_dir
    if rank == 0 and log_dir:
        os.makedirs(log_dir, exist_ok=True)
        log_writer = utils.TensorboardLogger(log_dir)
    log_txt = os.path.join(args.output_dir, "log.txt") if args.output_dir else None
    trackers = {"train": _tracker(loader_train, "train", args)}
    if "val" in loaders:
        trackers["val"] = _tracker(loaders["val"], "val", args)

    logger.info("training epochs %d..%d", args.start_epoch, args.epochs - 1)
    start_time = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        loader_train.sampler.set_epoch(epoch)
        utils.seed_everything(_epoch_seed(args.seed, epoch, rank))  # resumable randomness
        train_stats = engine.train_one_epoch(
            train_model, criterion, loader_train, optimizer, device, epoch, loss_scaler,
            args.clip_grad, model_ema, mixup_fn, log_writer=log_writer,
            start_steps=epoch * steps_per_epoch, lr_schedule_values=lr_schedule,
            wd_schedule_values=wd_schedule, num_training_steps_per_epoch=steps_per_epoch,
            update_freq=args.update_freq, amp_dtype=amp_dtype, bad_tracker=trackers["train"],
            print_freq=args.log_every, deepspeed_engine=args.enable_deepspeed,
            ds_input_dtype=ds_dtype, model_without_ddp=model_without_ddp)
        step = (epoch + 1) * steps_per_epoch
        record: Dict[str, Any] = {f"train_{k}": v for k, v in train_stats.items()}
        if "val" in loaders:
            val_stats = engine.validation_one_epoch(
                loaders["val"], model_without_ddp, device, amp_dtype, ds_dtype,
                sharded=loaders["sharded"], bad_tracker=trackers["val"], print_freq=args.log_every)
            record.update({f"val_{k}": v for k, v in val_stats.items()})
            improved = val_stats["acc1"] > best_acc or not has_best
            if improved:
                best_acc, has_best = val_stats["acc1"], True
                if args.output_dir and args.save_ckpt:
                    utils.save_model(args, epoch, train_model, model_without_ddp, optimizer,
                                     loss_scaler, model_ema, tag="best", step=step,
                                     best_acc=best_acc)
            logger.info("val top-1 %.2f%% (best %.2f%%)", val_stats["acc1"], best_acc)
            if log_writer is not None:
                log_writer.update(val_acc1=val_stats["acc1"], val_acc5=val_stats["acc5"],
                                  val_loss=val_stats["loss"], head="perf", step=epoch)
        if args.output_dir and args.save_ckpt:
            utils.save_model(args, epoch, train_model, model_without_ddp, optimizer, loss_scaler,
                             model_ema, tag="last", step=step, best_acc=best_acc if has_best else None)
            if (epoch + 1) % args.save_ckpt_freq == 0 or epoch + 1 == args.epochs:
                utils.save_model(args, epoch, train_model, model_without_ddp, optimizer,
                                 loss_scaler, model_ema, step=step,
                                 best_acc=best_acc if has_best else None)
        record.update({"epoch": epoch, "step": step, "n_parameters": counts["trainable_params"]})
        if log_txt:
            utils.append_json_line(log_txt, record)
        if log_writer is not None:
            log_writer.flush()

    tested = "last"
    if args.test_best:
        best_path = os.path.join(args.output_dir or ".", "checkpoint-best" +
                                 ("" if args.enable_deepspeed else ".pth"))
        if os.path.exists(best_path):
            utils.load_model_state(model_without_ddp, utils.read_checkpoint(best_path, args.unsafe_load))
            tested = "best"
            logger.info("--test_best: testing %s (val top-1 %.2f%%)", best_path, best_acc)
        else:
            logger.warning("--test_best: no %s (no validation, or checkpoints off); testing the "
                           "last weights", best_path)
    result = run_final_test(args, model_without_ddp, loaders, device, amp_dtype, ds_dtype,
                            tested=tested, log_writer=log_writer)
    total = str(datetime.timedelta(seconds=int(time.time() - start_time)))
    logger.info("training time %s", total)
    if log_writer is not None:
        log_writer.close()
    return {"final": result, "best_acc": best_acc if has_best else None, "counts": counts}


def run_final_test(args: argparse.Namespace, model: torch.nn.Module, loaders: Dict[str, Any],
                   device: torch.device, amp_dtype: Optional[torch.dtype],
                   input_dtype: Optional[torch.dtype], tested: str,
                   log_writer: Any = None) -> Optional[Dict[str, Any]]:
    """Multi-view test, merge of all ranks' predictions, ``Final top-1/top-5`` in ``log.txt``."""
    rank, world = utils.get_rank(), utils.get_world_size()
    sharded = loaders["sharded"]
    result = None
    if args.output_dir and rank == 0:
        engine.remove_stale_predictions(args.output_dir, world if sharded else 1)
    if sharded or rank == 0:  # unsharded: every rank would test everything; rank 0 does it
        file = engine.prediction_file(args.output_dir, rank) if args.output_dir else None
        preds = engine.final_test(loaders["test"], model, device, file, amp_dtype, input_dtype,
                                  print_freq=args.log_every)
        parts: List[Any] = utils.all_gather_object(preds) if sharded else [preds]
        result = engine.merge_predictions(parts)
    error: Optional[BaseException] = None
    if result is not None and result["bad_paths"]:
        try:  # the same data on every testing rank, so they all stop together
            _tracker(loaders["test"], "test", args).update(result["bad_paths"])
        except Exception as err:  # re-raised below once every rank knows
            error = err
    if not utils.all_ranks_ok(error is None, device):
        raise error if error is not None else engine.RunStopped("rank 0 stopped the final test")
    if rank == 0 and result is not None:
        logger.info("Accuracy of the network on the %d test videos: top-1 %.2f%%, top-5 "
                    "%.2f%% (%d unreadable videos left out; %s weights)", result["videos"],
                    result["top1"], result["top5"], result["bad_videos"], tested)
        record = {"Final top-1": result["top1"], "Final top-5": result["top5"],
                  "test_videos": result["videos"], "test_bad_videos": result["bad_videos"],
                  "test_views": args.test_num_segment * args.test_num_crop, "tested": tested}
        if args.eval:
            record["checkpoint"] = args.resume
        if args.output_dir:
            utils.append_json_line(os.path.join(args.output_dir, "log.txt"), record)
        if log_writer is not None:
            log_writer.update(test_acc1=result["top1"], test_acc5=result["top5"], head="perf",
                              step=args.epochs)
            log_writer.flush()
    utils.barrier()
    return result


def cli(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: known configuration errors end with a message and exit status 2."""
    from datasets import ListFileError, TooManyBadVideos
    from models import CheckpointError
    args = get_args_parser().parse_args(argv)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
    try:
        main(args)
    except (ValueError, FileNotFoundError, ListFileError, CheckpointError, TooManyBadVideos,
            engine.NonFiniteLossError) as err:
        logging.getLogger("run_class_apt").error("%s: %s", type(err).__name__, err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
