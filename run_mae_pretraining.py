"""Self-supervised VideoMAE pre-training on unlabelled videos (SPEC §10).

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
import datetime
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch

import engine_for_pretraining
import optim_factory
import utils
from models.pretrain import create_pretrain_model, finetune_model_for, list_pretrain_models
from utils.cli import (add_distributed_args, add_optimizer_args, add_run_args, add_schedule_args,
                       add_video_data_args)

logger = logging.getLogger("run_mae_pretraining")

# Flags that define the network: a checkpoint resumed with other values would not fit.
ARCH_KEYS = ("model", "decoder_depth", "tubelet_size", "use_learnable_pos_emb")


class ConfigError(ValueError):
    """A command line that cannot run; the message names the flag or path."""


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
    """VideoMAE's pre-training flags with its defaults (except ``--mask_ratio`` 0.9, SPEC §10),
    plus this project's additions (marked "new")."""
    parser = argparse.ArgumentParser("VideoMAE pre-training", add_help=True)
    parser.add_argument("--batch_size", default=64, type=int, help="videos per GPU/process")
    parser.add_argument("--epochs", default=800, type=int)
    parser.add_argument("--save_ckpt_freq", default=50, type=int,
                        help="write checkpoint-N every this many epochs (checkpoint-last: every "
                             "epoch)")

    g = parser.add_argument_group("model")
    g.add_argument("--model", default="pretrain_videomae_base_patch16_224", type=str,
                   metavar="MODEL", help=f"one of {', '.join(list_pretrain_models())}")
    g.add_argument("--tubelet_size", type=int, default=2)
    g.add_argument("--decoder_depth", default=4, type=int, help="decoder blocks")
    g.add_argument("--mask_type", default="tube", choices=["random", "tube"], type=str)
    g.add_argument("--mask_ratio", default=0.9, type=float, help="fraction of tokens masked")
    g.add_argument("--input_size", default=224, type=int, help="clip height and width")
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
    g.add_argument("--color_jitter", type=float, default=0.0, metavar="PCT",
                   help="accepted for compatibility; VideoMAE pre-training does not use it")
    g.add_argument("--train_interpolation", type=str, default="bicubic",
                   help="accepted for compatibility; the multi-scale crop resizes bilinearly")
    g.add_argument("--flip", action="store_true", default=False,
                   help="new: random horizontal flips (VideoMAE pre-training has none; refused "
                        "for SSV2)")

    g = add_video_data_args(
        parser, data_path_help="a list file ('<path> <label>' lines, label unused: write 0 for "
                               "unlabelled videos), or a folder holding train.csv",
        data_root_help="prefix of relative video paths (default: the list file's folder)",
        data_set="custom", data_set_help="new: only used to refuse --flip for SSV2",
        max_bad_fraction_help="new: stop when more than this fraction of the videos cannot be "
                              "read")
    g.add_argument("--cache_videos", action="store_true", default=False,
                   help="new: decode every video once and keep its frames in memory (small data "
                        "sets: later epochs only crop)")
    g.add_argument("--cache_max_gb", type=float, default=8.0,
                   help="new: stop when --cache_videos would take more memory than this")

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
    return parser


# ---------------------------------------------------------------------------------- building
def build_model(args: argparse.Namespace) -> torch.nn.Module:
    """The pre-training model for the flags (records VideoMAE's ``patch_size``/``window_size``)."""
    model = create_pretrain_model(
        args.model, drop_path_rate=args.drop_path, decoder_depth=args.decoder_depth,
        use_checkpoint=args.use_checkpoint, img_size=args.input_size,
        all_frames=args.num_frames, tubelet_size=args.tubelet_size,
        use_learnable_pos_emb=args.use_learnable_pos_emb)
    patch = model.encoder.patch_embed.patch_size[0]
    try:
        grid = model.encoder.patch_embed.grid_size(args.num_frames, args.input_size,
                                                   args.input_size)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    # VideoMAE stores these in args (its checkpoints carry them).
    args.patch_size = [patch, patch]
    args.window_size = list(grid)
    return model


def build_loader(args: argparse.Namespace, device: torch.device, patch_size: int
                 ) -> torch.utils.data.DataLoader:
    """The pre-training loader: random clips with masks, sharded over the ranks."""
    import datasets as data
    from datasets.pretrain_dataset import build_pretraining_dataset, collate_pretrain
    dataset = build_pretraining_dataset(args, patch_size)
    if args.cache_videos:
        dataset.preload(num_workers=args.num_workers, max_bytes=int(args.cache_max_gb * 2 ** 30))
    world, rank = utils.get_world_size(), utils.get_rank()
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank,
                                                  shuffle=True, seed=args.seed)
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=args.batch_size, drop_last=True,
        num_workers=args.num_workers, pin_memory=bool(args.pin_mem) and device.type == "cuda",
        worker_init_fn=data.seed_worker if args.num_workers > 0 else None,
        collate_fn=collate_pretrain)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


# ---------------------------------------------------------------------------------- checkpoints
def save_checkpoint(args: argparse.Namespace, tag: str, epoch: int, step: int,
                    model_without_ddp: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    loss_scaler: Any) -> Optional[str]:
    """Write ``checkpoint-<tag>.pth`` atomically (rank 0) in VideoMAE's pre-training layout.

    The file holds tensors and plain types only (``args`` as a dict), so it loads with
    ``torch.load(weights_only=True)``.
    """
    if not args.output_dir or not utils.is_main_process():
        return None
    path = os.path.join(args.output_dir, f"checkpoint-{tag}.pth")
    obj = {"model": model_without_ddp.state_dict(), "optimizer": optimizer.state_dict(),
           "scaler": loss_scaler.state_dict(), "epoch": int(epoch), "step": int(step),
           "args": utils.args_to_dict(args)}
    utils.atomic_torch_save(obj, path)
    logger.info("saved %s (%.2f MB)", path, os.path.getsize(path) / 2 ** 20)
    return path


def resume_checkpoint(args: argparse.Namespace, model_without_ddp: torch.nn.Module,
                      optimizer: torch.optim.Optimizer,
                      loss_scaler: Any) -> Optional[Dict[str, Any]]:
    """Resume from ``--resume`` or (``--auto_resume``) the latest checkpoint in ``--output_dir``.

    Restores the model, optimizer, loss scaler and epoch; sets ``args.start_epoch``.
    """
    from models import torch_load
    from utils.checkpoint import load_newest_readable
    if args.resume:
        path = args.resume
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--resume {path}: no such checkpoint file")
        ckpt = torch_load(path)
    else:  # the newest checkpoint that can be read; unreadable newer ones are skipped, warned of
        found = load_newest_readable(args.output_dir, torch_load) \
            if args.auto_resume and args.output_dir else None
        if found is None:
            return None
        path, ckpt = found
    state = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not any(k.startswith("encoder.") for k in state):
        raise ConfigError(f"--resume {path} is not a pre-training checkpoint (no 'model' with "
                          f"encoder.* keys)")
    saved = ckpt.get("args") or {}
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    for key in ARCH_KEYS:
        if key in saved and saved[key] != getattr(args, key):
            raise ConfigError(f"--resume {path} was trained with --{key} {saved[key]!r}, this run "
                              f"has {getattr(args, key)!r}: use the same value or another "
                              f"--output_dir")
    try:
        model_without_ddp.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"--resume {path} does not fit --model {args.model}: "
                          f"{str(err).splitlines()[0]}") from err
    if ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        loss_scaler.load_state_dict(ckpt["scaler"])
    epoch = ckpt.get("epoch")
    if isinstance(epoch, int):
        args.start_epoch = epoch + 1
    logger.info("resumed from %s (epoch %s, step %s); training continues at epoch %d", path,
                epoch, ckpt.get("step"), args.start_epoch)
    return ckpt


# -------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> Dict[str, Any]:
    """Pre-train as the flags say; returns the last epoch's statistics and the checkpoint path."""
    utils.setup_logging(rank=int(os.environ.get("RANK", "0")))
    device = utils.init_distributed_mode(args)
    try:
        return _run(args, device)
    finally:
        utils.destroy_process_group(args)


def _run(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    rank, world = utils.start_run_outputs(args), utils.get_world_size()
    utils.seed_everything(args.seed + rank)

    model = build_model(args)  # before any data: bad model flags fail here
    patch_size = model.encoder.patch_embed.patch_size[0]
    loader = build_loader(args, device, patch_size)
    model.to(device)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_encoder = sum(p.numel() for p in model.encoder.parameters())
    logger.info("model %s: %d parameters (encoder %d; fine-tune it with --model %s), token grid "
                "%s, %d of %d tokens masked (%s)", args.model, n_parameters, n_encoder,
                finetune_model_for(args.model), tuple(args.window_size),
                loader.dataset.mask_generator.total_masks,
                loader.dataset.mask_generator.total_patches, args.mask_type)

    steps_per_epoch = len(loader)
    total_batch = args.batch_size * world
    if steps_per_epoch < 1:
        raise ConfigError(f"{len(loader.dataset)} videos are too few for one step of "
                          f"{total_batch} videos (--batch_size {args.batch_size} x {world} "
                          f"processes); lower --batch_size")
    # VideoMAE's linear scaling rule: the flags are for a total batch of 256.
    lr = utils.scale_lr(args.lr, total_batch)
    warmup_lr = utils.scale_lr(args.warmup_lr, total_batch)
    min_lr = utils.scale_lr(args.min_lr, total_batch)
    logger.info("lr %.3g (= --lr %.3g x total batch %d / 256), min lr %.3g, warm-up from %.3g; "
                "%d steps per epoch", lr, args.lr, total_batch, min_lr, warmup_lr,
                steps_per_epoch)

    opt_args = argparse.Namespace(**vars(args))
    opt_args.lr = lr
    optimizer = optim_factory.create_optimizer(opt_args, model)
    amp_dtype = utils.amp_dtype_for(device, args.amp, args.amp_dtype)
    loss_scaler = utils.NativeScalerWithGradNormCount(enabled=amp_dtype == torch.float16,
                                                      device=device.type)
    lr_schedule = utils.cosine_scheduler(lr, min_lr, args.epochs, steps_per_epoch,
                                         warmup_epochs=args.warmup_epochs,
                                         start_warmup_value=warmup_lr,
                                         warmup_steps=args.warmup_steps)
    wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
    wd_schedule = utils.cosine_scheduler(args.weight_decay, wd_end, args.epochs, steps_per_epoch)

    model_without_ddp = model
    train_model: Any = model
    if args.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    resume_checkpoint(args, model_without_ddp, optimizer, loss_scaler)

    log_writer = None
    log_dir = args.log_dir or args.output_dir
    if rank == 0 and log_dir:
        os.makedirs(log_dir, exist_ok=True)
        log_writer = utils.TensorboardLogger(log_dir)
    log_txt = os.path.join(args.output_dir, "log.txt") if args.output_dir else None
    if args.output_dir and rank == 0:
        with open(os.path.join(args.output_dir, "args.json"), "w", encoding="utf-8") as f:
            json.dump(utils.args_to_dict(args), f, indent=2)
    tracker = loader.dataset.make_bad_video_tracker()
    tracker.update(loader.dataset.preload_bad)  # --cache_videos: stops now if too many

    probe = None
    if args.probe_data_path and rank == 0:
        import engine_for_probe
        probe_train, probe_val, probe_classes = engine_for_probe.build_probe_loaders(
            args.probe_data_path, args, args.batch_size)

        def probe(epoch: int) -> Dict[str, float]:
            result = engine_for_probe.knn_probe(model_without_ddp.encoder, probe_train,
                                                probe_val, device, probe_classes, args.probe_k)
            logger.info("k-NN probe after epoch %d: top-1 %.1f%% (%d val videos, k=%d)", epoch,
                        result["knn_top1"], int(result["knn_test_clips"]), args.probe_k)
            if log_writer is not None:
                log_writer.update(knn_top1=result["knn_top1"], head="probe", step=epoch + 1)
            return result

        if args.start_epoch == 0:  # the untrained encoder: where the curve starts
            first = probe(-1)
            if log_txt:
                utils.append_json_line(log_txt, {"epoch": -1, "step": 0, **first})

    logger.info("pre-training epochs %d..%d", args.start_epoch, args.epochs - 1)
    start_time = time.time()
    train_stats: Dict[str, float] = {}
    last_path = None
    for epoch in range(args.start_epoch, args.epochs):
        loader.sampler.set_epoch(epoch)
        utils.seed_everything(_epoch_seed(args.seed, epoch, rank))  # resumable randomness
        train_stats = engine_for_pretraining.train_one_epoch(
            train_model, loader, optimizer, device, epoch, loss_scaler, args.clip_grad,
            patch_size=patch_size, tubelet_size=args.tubelet_size,
            normlize_target=args.normlize_target, log_writer=log_writer,
            start_steps=epoch * steps_per_epoch, lr_schedule_values=lr_schedule,
            wd_schedule_values=wd_schedule, num_training_steps_per_epoch=steps_per_epoch,
            amp_dtype=amp_dtype, bad_tracker=tracker, print_freq=args.log_every)
        step = (epoch + 1) * steps_per_epoch
        if args.output_dir:
            last_path = save_checkpoint(args, "last", epoch, step, model_without_ddp, optimizer,
                                        loss_scaler)
            if (epoch + 1) % args.save_ckpt_freq == 0 or epoch + 1 == args.epochs:
                save_checkpoint(args, str(epoch), epoch, step, model_without_ddp, optimizer,
                                loss_scaler)
        record: Dict[str, Any] = {f"train_{k}": v for k, v in train_stats.items()}
        record.update({"epoch": epoch, "step": step, "n_parameters": n_parameters})
        if probe is not None and ((epoch + 1) % args.probe_freq == 0 or epoch + 1 == args.epochs):
            record.update(probe(epoch))
        if log_txt:
            utils.append_json_line(log_txt, record)
        if log_writer is not None:
            log_writer.update(loss=train_stats.get("loss"), head="epoch", step=epoch)
            log_writer.flush()
        utils.barrier()  # no rank starts the next epoch before the checkpoint is complete

    total = str(datetime.timedelta(seconds=int(time.time() - start_time)))
    logger.info("pre-training time %s; backbone for run_class_apt.py --finetune: %s", total,
                last_path or "(no --output_dir, nothing saved)")
    if log_writer is not None:
        log_writer.close()
    return {"stats": train_stats, "checkpoint": last_path, "n_parameters": n_parameters}


def cli(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: known configuration errors end with a message and exit status 2."""
    from datasets import ListFileError, TooManyBadVideos
    from engine import NonFiniteLossError
    from models import CheckpointError
    args = get_args_parser().parse_args(argv)
    try:
        main(args)
    except (ValueError, FileNotFoundError, MemoryError, ListFileError, CheckpointError,
            TooManyBadVideos, NonFiniteLossError) as err:
        logging.getLogger("run_mae_pretraining").error("%s: %s", type(err).__name__, err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
