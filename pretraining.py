"""What ``run_mae_pretraining.py`` does once its flags are parsed: build the model and the
loader, then pre-train (the step loop is ``engine.train_one_epoch``).

Apart from the script so that the script's module imports no torch: its ``--help`` and a refused
flag answer in a fraction of a second, and this module is imported once the flags are read.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import time
from typing import Any, Callable, Dict

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
from models.pretrain import create_pretrain_model, finetune_model_for
from utils.backend import PlainBackend
from utils.config import ConfigError, PretrainConfig, PretrainModelConfig
from utils.outputs import OutputWriteError
from utils.run import RunRecords, run_facts, seed_epoch, started_run
from utils.runlock import RunLockError

logger = logging.getLogger("run_mae_pretraining")

# Errors that end the command with a one-line message and exit status 2: known configuration
# and data errors (logged with their type), and a file that cannot be written or an output
# folder in use by another run (their message names the file or folder).
REFUSED = (ValueError, FileNotFoundError, MemoryError, ListFileError, CheckpointError,
           TooManyBadVideos, NonFiniteLossError)
UNWRITABLE = (OutputWriteError, RunLockError)


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


def setup_logging() -> None:
    """Rank 0 logs (``RANK`` of the launcher), before anything else of the run."""
    utils.setup_logging(rank=int(os.environ.get("RANK", "0")))


def run(cfg: PretrainConfig) -> Dict[str, Any]:
    """Pre-train as ``cfg`` says; returns the last epoch's statistics and the checkpoint path."""
    with started_run(cfg.run) as dist:
        return pretrain(cfg, dist)
