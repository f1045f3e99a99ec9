"""What ``run_class_apt.py`` does once its flags are parsed: build the model and the loaders,
then train and test (``engine.fit``) or only test (``engine.evaluate``).

Apart from the script so that the script's module imports no torch: ``run_class_apt.py --help``
and a refused flag answer in a fraction of a second, and this module (torch, timm, the data
pipeline, the engines) is imported once the flags are read.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
from typing import Any, Dict, Optional, Tuple

import torch

import datasets
import engine
import utils
from datasets import ListFileError, TooManyBadVideos
from models import CheckpointError, cost_report
from models.config import FinetuneConfig
from models.released import released_info
from models.factory import create_model_from_config
from runs import (build_model, checkpoint_class_names, find_eval_checkpoint, load_weights,
                  read_eval_checkpoint)
from utils import deepspeed_engine
from utils.config import ConfigError, RunConfig, from_namespace
from utils.outputs import OutputWriteError
from utils.run import RunRecords, run_facts, started_run
from utils.runlock import RunLockError

logger = logging.getLogger("run_class_apt")

# Errors that end the command with a one-line message and exit status 2: known configuration
# and data errors (logged with their type), and a file that cannot be written or an output
# folder in use by another run (their message names the file or folder).
REFUSED = (ValueError, FileNotFoundError, ListFileError, CheckpointError, TooManyBadVideos,
           engine.NonFiniteLossError)
UNWRITABLE = (OutputWriteError, RunLockError)


# ---------------------------------------------------------------------------------- building
def check_data_paths(cfg: FinetuneConfig) -> None:
    """Fail early, naming the path, when the data folder or a needed list file is missing."""
    data = cfg.data
    if not data.data_path:
        raise ConfigError("--data_path is required: the folder holding train.csv, val.csv and "
                          "test.csv")
    eval_root = data.for_eval().data_path
    eval_flag = "--eval_data_path" if data.eval_data_path else "--data_path"
    needed = [] if cfg.eval else [(data.data_path, "train.csv", "--data_path")]
    if not cfg.eval and not cfg.train.disable_eval_during_finetuning:
        needed.append((eval_root, "val.csv", eval_flag))
    if not cfg.train.skip_test:
        needed.append((eval_root, "test.csv", eval_flag))
    for root, name, flag in needed:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{flag} {root}: no such folder")
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: list file not found ({flag} must hold {name})")


def build_loaders(cfg: FinetuneConfig, dist: utils.DistState) -> Dict[str, Any]:
    """Datasets, samplers and loaders of the splits this run needs (and ``sharded``)."""
    data_cfg, world, rank = cfg.data, dist.world_size, dist.rank
    budget = datasets.CacheBudget(data_cfg.cache_max_gb)  # --cache_videos: all splits together
    common = dict(num_workers=data_cfg.num_workers,
                  pin_memory=bool(data_cfg.pin_mem) and dist.device.type == "cuda",
                  worker_init_fn=datasets.seed_worker if data_cfg.num_workers > 0 else None)
    out: Dict[str, Any] = {}
    if not cfg.eval:
        ds_train, _ = datasets.build_dataset(is_train=True, test_mode=False, cfg=data_cfg,
                                             budget=budget)
        sampler = torch.utils.data.DistributedSampler(ds_train, num_replicas=world, rank=rank,
                                                      shuffle=True, seed=cfg.run.seed)
        out["train"] = torch.utils.data.DataLoader(
            ds_train, sampler=sampler, batch_size=data_cfg.batch_size, drop_last=True,
            collate_fn=datasets.collate_train, **common)
    sharded = dist.distributed and cfg.dist_eval
    out["sharded"] = sharded

    def eval_sampler(ds):
        if sharded:
            return torch.utils.data.DistributedSampler(ds, num_replicas=world, rank=rank,
                                                       shuffle=False)
        return torch.utils.data.SequentialSampler(ds)

    eval_cfg = data_cfg.for_eval()
    if not cfg.eval and not cfg.train.disable_eval_during_finetuning:
        ds_val, _ = datasets.build_dataset(is_train=False, test_mode=False, cfg=eval_cfg,
                                           budget=budget)
        out["val"] = torch.utils.data.DataLoader(
            ds_val, sampler=eval_sampler(ds_val), batch_size=data_cfg.batch_size_val,
            drop_last=False, collate_fn=datasets.collate_eval, **common)
    if cfg.train.skip_test:  # test.csv is not even parsed
        return out
    ds_test, _ = datasets.build_dataset(is_train=False, test_mode=True, cfg=eval_cfg,
                                        budget=budget)
    # About --batch_size_val clips per forward pass: each test item holds all views of a video.
    test_batch = max(1, math.ceil(data_cfg.batch_size_val / data_cfg.test_views))
    out["test"] = torch.utils.data.DataLoader(
        ds_test, sampler=eval_sampler(ds_test), batch_size=test_batch, drop_last=False,
        collate_fn=datasets.collate_eval, **common)
    return out


def run_flops(cfg: FinetuneConfig) -> Dict[str, Any]:
    """``--flops``: parameters and FLOPs of one clip, as one JSON line on stdout."""
    report = cost_report(create_model_from_config(cfg.model), cfg.model.num_frames,
                         cfg.model.input_size, cfg.model.model)
    print(json.dumps(report), flush=True)  # the command's output, not a log line
    return report


def prepare(cfg: FinetuneConfig, dist: utils.DistState,
            eval_ckpt: Optional[Dict[str, Any]] = None, eval_path: str = "") -> engine.Prepared:
    """The model (backbone loaded, checkpoint applied for ``--eval``) and the loaders."""
    model = build_model(cfg)  # before any data: bad transfer flags fail here
    utils.seed_everything(cfg.run.seed + dist.rank)
    check_data_paths(cfg)
    backbone_path, counts = load_weights(cfg, model, dist.device, eval_ckpt, eval_path)
    amp_dtype = utils.amp_dtype_for(dist.device, cfg.run.amp, cfg.run.amp_dtype)
    # A released classifier's own names (id2label) name its per-class results; otherwise the
    # engine reads the label map next to the lists (a broken one falls back to indices there).
    released = released_info(eval_ckpt) if eval_ckpt is not None else None
    names = checkpoint_class_names(cfg, eval_ckpt) if released else None
    return engine.Prepared(model, build_loaders(cfg, dist), dist, amp_dtype, backbone_path,
                           counts, names)


# -------------------------------------------------------------------------------------- main
def setup_logging() -> None:
    """Rank 0 logs (``RANK`` of the launcher), before anything else of the run."""
    utils.setup_logging(rank=int(os.environ.get("RANK", "0")))


def eval_class_count(args: argparse.Namespace) -> Optional[Tuple[str, Dict[str, Any]]]:
    """``--eval --data_set custom`` without ``--nb_classes``: the class count is the one of the
    checkpoint to evaluate (a released classifier's head, the flags a run saved), set into
    ``args`` before the settings are made; returns the checkpoint read (path, contents) for
    :func:`run`, so it is read once. Anything else: ``None``, ``args`` untouched (a missing
    count is then refused by the settings, as for training)."""
    if not args.eval or args.data_set != "custom" or args.nb_classes is not None or args.flops:
        return None
    found = find_eval_checkpoint(from_namespace(RunConfig, args))
    count = (found[1].get("args") or {}).get("nb_classes")
    if count is None:
        return None
    logger.info("--eval: %d classes, the class count of %s", int(count), found[0])
    args.nb_classes = int(count)
    return found


def run(cfg: FinetuneConfig, flops: bool = False,
        eval_found: Optional[Tuple[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Train (or with ``--eval`` only test) as ``cfg`` says; returns the final results.

    Args:
        cfg: the run's settings (``run_class_apt.make_config`` of the flags).
        flops: ``--flops``: print parameters and FLOPs of one clip and return them.
        eval_found: ``--eval``: the checkpoint :func:`eval_class_count` already read.
    """
    if flops:
        return run_flops(cfg)
    if cfg.train.compile and cfg.deepspeed and not cfg.eval:
        raise ConfigError("--compile is not supported with --enable_deepspeed")
    if cfg.eval and cfg.deepspeed:
        logger.info("--eval evaluates without the DeepSpeed engine (same numbers)")
    if cfg.deepspeed and not cfg.eval:
        # Imported before the process group exists: DeepSpeed's TorchBackend takes
        # GroupMember.WORLD as a default argument when its module is imported, a reference that
        # would keep the group (and its gloo threads) alive after the run tears it down.
        deepspeed_engine.import_deepspeed(
            torch.device(cfg.run.device or utils.default_device_name()))
    with started_run(cfg.run, force_group=cfg.deepspeed and not cfg.eval) as dist:
        path, ckpt = "", None
        if cfg.eval:
            path, ckpt, cfg = read_eval_checkpoint(cfg, eval_found)
        run = prepare(cfg, dist, ckpt, path)
        # The flags as given, and what the run resolved from them.
        resolved = {**cfg.flags, **cfg.model.architecture(), **run_facts(dist),
                    "nb_classes": cfg.model.num_classes, "backbone_loaded": run.backbone_path}
        RunRecords(cfg.run.output_dir, None, dist.rank).write_json(
            "eval_args.json" if cfg.eval else "args.json", resolved)
        return engine.evaluate(cfg, run, path) if cfg.eval else engine.fit(cfg, run)
