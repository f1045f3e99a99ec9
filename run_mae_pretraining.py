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
import dataclasses
import datetime
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch

import datasets
import engine
import engine_for_pretraining
import engine_for_probe
import optim_factory
import utils
from datasets import ListFileError, TooManyBadVideos
from engine import NonFiniteLossError
from engine_checkpoints import TrainingCheckpoints
from models import CheckpointError
from models.method_state import saved_flags
from datasets.pretrain_dataset import build_pretraining_dataset, collate_pretrain
from models.pretrain import create_pretrain_model, finetune_model_for, list_pretrain_models
from utils.backend import PlainBackend
from utils.cli import (COLOR_JITTER, IMAGENET_STATS, CompatFlag, add_compat_args,
                       add_distributed_args, add_optimizer_args, add_run_args, add_schedule_args,
                       add_video_data_args, pop_compat_args)
from utils.config import ConfigError, PretrainConfig, PretrainDataConfig, PretrainModelConfig
from utils.outputs import OutputWriteError
from utils.run import RunRecords, run_facts, seed_epoch, started_run
from utils.runlock import RunLockError

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
                   metavar="MODEL", help=f"one of {', '.join(list_pretrain_models())}")
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
                              "read")

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


# ---------------------------------------------------------------------------------- building
def build_model(cfg: PretrainModelConfig) -> torch.nn.Module:
    """The pre-training model (its token grid must fit the clip shape)."""
    model = create_pretrain_model(
        cfg.model, drop_path_rate=cfg.drop_path, decoder_depth=cfg.decoder_depth,
        use_checkpoint=cfg.use_checkpoint, img_size=cfg.input_size, all_frames=cfg.num_frames,
        tubelet_size=cfg.tubelet_size, use_learnable_pos_emb=cfg.use_learnable_pos_emb)
    try:
        model.encoder.patch_embed.grid_size(cfg.num_frames, cfg.input_size, cfg.input_size)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return model


def videomae_shape_flags(model: torch.nn.Module, cfg: PretrainModelConfig) -> Dict[str, Any]:
    """``patch_size`` and ``window_size``, which VideoMAE's checkpoints carry in their args."""
    patch = model.encoder.patch_embed.patch_size[0]
    grid = model.encoder.patch_embed.grid_size(cfg.num_frames, cfg.input_size, cfg.input_size)
    return {"patch_size": [patch, patch], "window_size": list(grid)}


def build_loader(cfg: PretrainConfig, dist: utils.DistState, patch_size: int
                 ) -> torch.utils.data.DataLoader:
    """The pre-training loader: random clips with masks, sharded over the ranks."""
    d = cfg.data
    dataset = build_pretraining_dataset(d, patch_size)
    if d.cache_videos:
        dataset.preload(d.num_workers, datasets.CacheBudget(d.cache_max_gb), d.cache_dir)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=dist.world_size,
                                                  rank=dist.rank, shuffle=True,
                                                  seed=cfg.run.seed)
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=d.batch_size, drop_last=True,
        num_workers=d.num_workers, pin_memory=bool(d.pin_mem) and dist.device.type == "cuda",
        worker_init_fn=datasets.seed_worker if d.num_workers > 0 else None,
        collate_fn=collate_pretrain)


def resume_check(cfg: PretrainModelConfig) -> Callable[[Dict[str, Any], str], None]:
    """Refuse a checkpoint that is not a pre-training one, or of another architecture."""
    def check(ckpt: Dict[str, Any], path: str) -> None:
        state = ckpt.get("model")
        if not isinstance(state, dict) or not any(k.startswith("encoder.") for k in state):
            raise ConfigError(f"--resume {path} is not a pre-training checkpoint (no 'model' "
                              f"with encoder.* keys)")
        saved = saved_flags(ckpt)
        for key in cfg.ARCHITECTURE:
            if key in saved and saved[key] != getattr(cfg, key):
                raise ConfigError(f"--resume {path} was trained with --{key} {saved[key]!r}, "
                                  f"this run has {getattr(cfg, key)!r}: use the same value or "
                                  f"another --output_dir")
    return check


def make_probe(cfg: PretrainConfig, encoder: torch.nn.Module, device: torch.device,
               records: RunRecords) -> Callable[[int], Dict[str, float]]:
    """``probe(epoch)``: the k-NN accuracy of the encoder's features (rank 0)."""
    train, val, classes = engine_for_probe.build_probe_loaders(cfg.probe.probe_data_path,
                                                               cfg.data, cfg.data.batch_size)

    def probe(epoch: int) -> Dict[str, float]:
        result = engine_for_probe.knn_probe(encoder, train, val, device, classes,
                                            cfg.probe.probe_k)
        logger.info("k-NN probe after epoch %d: top-1 %.1f%% (%d val videos, k=%d)", epoch,
                    result["knn_top1"], int(result["knn_test_clips"]), cfg.probe.probe_k)
        records.scalars("probe", epoch + 1, knn_top1=result["knn_top1"])
        return result
    return probe


# -------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> Dict[str, Any]:
    """Pre-train as the flags say; returns the last epoch's statistics and the checkpoint path."""
    utils.setup_logging(rank=int(os.environ.get("RANK", "0")))
    errors = pop_compat_args(args, COMPAT_FLAGS)
    if errors:
        raise ConfigError("; ".join(errors))
    cfg = PretrainConfig.from_args(args)
    with started_run(cfg.run) as dist:
        return pretrain(cfg, dist)


def pretrain(cfg: PretrainConfig, dist: utils.DistState) -> Dict[str, Any]:
    """The epoch loop of pre-training (the step loop is ``engine.train_one_epoch``)."""
    rank, world, device = dist.rank, dist.world_size, dist.device
    utils.seed_everything(cfg.run.seed + rank)
    model = build_model(cfg.model)  # before any data: bad model flags fail here
    shape_flags = {**videomae_shape_flags(model, cfg.model), **run_facts(dist)}
    patch_size = shape_flags["patch_size"][0]
    loader = build_loader(cfg, dist, patch_size)
    model.to(device)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_encoder = sum(p.numel() for p in model.encoder.parameters())
    masks = loader.dataset.mask_generator
    logger.info("model %s: %d parameters (encoder %d; fine-tune it with --model %s), token grid "
                "%s, %d of %d tokens masked (%s)", cfg.model.model, n_parameters, n_encoder,
                finetune_model_for(cfg.model.model), tuple(shape_flags["window_size"]),
                masks.total_masks, masks.total_patches, cfg.data.mask_type)

    steps_per_epoch = len(loader)
    if steps_per_epoch < 1:
        raise cfg.optim.too_few_videos(len(loader.dataset), world)
    sched = cfg.optim.schedules(world, steps_per_epoch)
    logger.info("lr %.3g (= --lr %.3g x total batch %d / 256), min lr %.3g, warm-up from %.3g; "
                "%d steps per epoch", sched.lr, cfg.optim.lr, sched.total_batch, sched.min_lr,
                sched.warmup_lr, steps_per_epoch)
    optimizer = optim_factory.create_optimizer(dataclasses.replace(cfg.optim, lr=sched.lr), model)
    amp_dtype = utils.amp_dtype_for(device, cfg.run.amp, cfg.run.amp_dtype)
    backend = PlainBackend(model, optimizer, device, amp_dtype, dist.distributed,
                           clip_grad=cfg.optim.clip_grad)
    checkpoints = TrainingCheckpoints(cfg.run.output_dir, {**cfg.flags, **shape_flags},
                                      unsafe=cfg.run.unsafe_load,
                                      check_resumed=resume_check(cfg.model),
                                      reset_optimizer=cfg.run.reset_optimizer)
    meta = checkpoints.resume(cfg.run.resume, cfg.run.auto_resume and bool(cfg.run.output_dir),
                              backend)
    start_epoch = cfg.run.start_epoch if meta is None else int(meta["epoch"]) + 1

    records = RunRecords(cfg.run.output_dir, cfg.run.tensorboard_dir, rank)
    records.write_json("args.json", {**cfg.flags, **shape_flags})
    tracker = loader.dataset.make_bad_video_tracker()
    tracker.update(loader.dataset.preload_bad)  # --cache_videos: stops now if too many
    probe = None
    if cfg.probe.probe_data_path and rank == 0:
        probe = make_probe(cfg, model.encoder, device, records)
        if start_epoch == 0:  # the untrained encoder: where the curve starts
            records.log({"epoch": -1, "step": 0, **probe(-1)})

    step_fn = engine_for_pretraining.reconstruction_step(patch_size, cfg.model.tubelet_size,
                                                         cfg.model.normlize_target)
    logger.info("pre-training epochs %d..%d", start_epoch, cfg.optim.epochs - 1)
    start_time = time.time()
    train_stats: Dict[str, float] = {}
    last_path = None
    for epoch in range(start_epoch, cfg.optim.epochs):
        loader.sampler.set_epoch(epoch)
        seed_epoch(cfg.run.seed, epoch, rank)  # resumable randomness
        train_stats = engine.train_one_epoch(
            backend, step_fn, loader, epoch, sched.lr_values, sched.wd_values,
            start_steps=epoch * steps_per_epoch, steps=steps_per_epoch, bad_tracker=tracker,
            records=records, print_freq=cfg.run.log_every)
        step = (epoch + 1) * steps_per_epoch
        if cfg.run.output_dir:
            last_path = checkpoints.save("last", epoch, step, backend)
            if (epoch + 1) % cfg.run.save_ckpt_freq == 0 or epoch + 1 == cfg.optim.epochs:
                checkpoints.save(str(epoch), epoch, step, backend)
        record: Dict[str, Any] = {f"train_{k}": v for k, v in train_stats.items()}
        record.update({"epoch": epoch, "step": step, "n_parameters": n_parameters})
        if probe is not None and ((epoch + 1) % cfg.probe.probe_freq == 0
                                  or epoch + 1 == cfg.optim.epochs):
            record.update(probe(epoch))
        records.log(record)
        records.scalars("epoch", epoch, loss=train_stats.get("loss"))
        records.flush()
        utils.barrier()  # no rank starts the next epoch before the checkpoint is complete

    total = str(datetime.timedelta(seconds=int(time.time() - start_time)))
    logger.info("pre-training time %s; backbone for run_class_apt.py --finetune: %s", total,
                last_path or "(no --output_dir, nothing saved)")
    records.close()
    return {"stats": train_stats, "checkpoint": last_path, "n_parameters": n_parameters}


def cli(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: known configuration errors, a file that cannot be written and an
    output folder in use by another run end with a one-line message and exit status 2."""
    args = get_args_parser().parse_args(argv)
    try:
        main(args)
    except (ValueError, FileNotFoundError, MemoryError, ListFileError, CheckpointError,
            TooManyBadVideos, NonFiniteLossError) as err:
        logging.getLogger("run_mae_pretraining").error("%s: %s", type(err).__name__, err)
        return 2
    except (OutputWriteError, RunLockError) as err:  # one line that names the file or folder
        logging.getLogger("run_mae_pretraining").error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
