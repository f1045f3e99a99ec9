"""The fine-tuning engine: one training loop for both training engines (plain/DDP and DeepSpeed,
behind ``utils.backend``), the epoch loop with validation and checkpoints (``fit``), and the
multi-view test (``evaluate``). Pre-training runs the same ``train_one_epoch`` with its own step.

``run_class_apt.py`` parses the flags into a ``FinetuneConfig``; ``finetuning.py`` builds the model
and loaders and calls ``fit`` or ``evaluate``; nothing here writes into the settings.

Long on purpose: one concern, the fine-tuning loop (step, epoch, ``fit``, ``evaluate``, the
final test) for both training engines; splitting it would scatter one epoch over files.
"""
from __future__ import annotations

import datetime
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3

import optim_factory
import utils
from engine_checkpoints import TrainingCheckpoints
from engine_eval import (final_test, merge, merge_predictions, prediction_file,  # noqa: F401
                         read_predictions, remove_stale_predictions, validation_one_epoch)
from datasets import BadVideoTracker, Mixup
from datasets.transforms import ToModelInput, normalize_video
from utils import deepspeed_engine
from utils.backend import DeepSpeedBackend, PlainBackend
from models.config import FinetuneConfig
from runs import default_class_names
from utils.class_results import ClassResults, write_class_results
from utils.config import ConfigError, Schedules
from utils.run import RunRecords, global_bad_count, run_facts, seed_epoch

logger = logging.getLogger(__name__)

# One training step: (model, the batch without its bad-video paths, backend) ->
# (loss, clips in the batch, extra metrics such as class_acc).
StepFn = Callable[[Any, Sequence[Any], Any], Tuple[torch.Tensor, int, Dict[str, Optional[float]]]]


# A training loss above this stops the run as diverged. Both losses trained here are means of
# per-clip terms that start small: cross-entropy at ln(classes) (< 7 for 1000 classes; label
# smoothing and mixup only lower its maximum), the MAE loss near 1 on per-patch normalised
# targets and on raw [0, 1] pixels. Healthy training only lowers them, so 1e4 (> 1000x any
# start) is never reached unless the weights blow up, as with a learning rate far too high
# (--lr 1e9 reaches ~1e16 within a few steps).
DIVERGED_LOSS = 1e4
TOP_CONFUSIONS = 10  # confused class pairs listed in the log after the final test


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite, or exploded past ``DIVERGED_LOSS``; the
    message names the global step and the learning rate (``--lr``)."""


class RunStopped(RuntimeError):
    """Another rank stopped the run (its own error is in its log)."""


def stop_together(loss_value: float, stop_error: Optional[BaseException], device: torch.device,
                  it: int, epoch: int, step: int, lr: Optional[float] = None) -> None:
    """Raise on every rank if the loss is not finite or above ``DIVERGED_LOSS``, or any rank hit
    an error, on any rank.

    Every rank must stop together, or the others would wait forever in the next all-reduce.
    ``it`` is the global step, ``step`` the iteration within ``epoch``, ``lr`` the step's
    learning rate (``--lr`` scaled by the total batch and the schedule), for the message.
    """
    healthy = math.isfinite(loss_value) and loss_value <= DIVERGED_LOSS
    if utils.all_ranks_ok(healthy and stop_error is None, device):
        return
    if stop_error is not None:
        raise stop_error
    if not healthy:
        what = "not finite" if not math.isfinite(loss_value) else f"above {DIVERGED_LOSS:g}"
        at_lr = "" if lr is None else (f" at learning rate {lr:.3g} (this step's --lr, scaled "
                                       f"by the total batch / 256 and the schedule)")
        raise NonFiniteLossError(
            f"loss is {loss_value:.4g} ({what}) at global step {it} (epoch {epoch}, iteration "
            f"{step} of the epoch): training diverged{at_lr}. Lower --lr, set --clip_grad, or "
            f"check the data")
    raise RunStopped(f"another rank stopped the run at global step {it}; see its log")


# ------------------------------------------------------------------------------------ training
def set_schedules(optimizer: Any, it: int, lr_values: Optional[Sequence[float]],
                  wd_values: Optional[Sequence[float]]) -> None:
    """Per-step learning rate (times each group's layer-decay scale) and weight decay (groups
    without decay keep 0)."""
    for group in optimizer.param_groups:
        if lr_values is not None:
            group["lr"] = float(lr_values[it]) * group.get("lr_scale", 1.0)
        if wd_values is not None and group["weight_decay"] > 0:
            group["weight_decay"] = float(wd_values[it])


def classification_step(criterion: Callable, mixup_fn: Optional[Callable] = None,
                        to_input: Callable[[torch.Tensor], torch.Tensor] = normalize_video
                        ) -> StepFn:
    """The fine-tuning step: uint8 clips to the device, normalised (and randomly erased) by
    ``to_input``, (mixed), through the model; loss on float32 logits."""
    def step(model: Any, batch: Sequence[Any], backend: Any
             ) -> Tuple[torch.Tensor, int, Dict[str, Optional[float]]]:
        samples, targets = batch
        samples = to_input(samples.to(backend.device, non_blocking=True))
        targets = targets.to(backend.device, non_blocking=True)
        hard_targets = targets
        if mixup_fn is not None:
            samples, targets = mixup_fn(samples, targets)
        with backend.autocast():
            output = model(backend.cast_input(samples))
            loss = criterion(output.float(), targets)
        class_acc = None
        if mixup_fn is None:
            class_acc = float((output.detach().argmax(-1) == hard_targets).float().mean())
        return loss, samples.shape[0], {"class_acc": class_acc}
    return step


def train_one_epoch(backend: Any, step_fn: StepFn, data_loader: Iterable, epoch: int,
                    lr_values: Optional[Sequence[float]] = None,
                    wd_values: Optional[Sequence[float]] = None, start_steps: int = 0,
                    steps: Optional[int] = None, update_freq: int = 1, model_ema: Any = None,
                    bad_tracker: Any = None, records: Optional[RunRecords] = None,
                    print_freq: int = 10) -> Dict[str, float]:
    """Train for one epoch (fine-tuning and pre-training alike).

    Args:
        backend: ``PlainBackend`` or ``DeepSpeedBackend`` (model, optimizer, precision, steps).
        step_fn: computes one micro-batch's loss (``classification_step``, or pre-training's).
        data_loader: yields batches whose last element is the list of unreadable videos.
        epoch: epoch index (for logs and messages).
        lr_values / wd_values: per-optimizer-step schedules (None: leave the optimizer's).
        start_steps: optimizer steps done before this epoch (index into the schedules).
        steps: optimizer steps in this epoch (default: ``len(data_loader) // update_freq``).
        update_freq: micro-batches per optimizer step (``--update_freq``).
        model_ema: ``timm.utils.ModelEmaV3`` updated after every optimizer step, or None.
        bad_tracker: ``BadVideoTracker`` of the split; past ``--max_bad_fraction`` it stops.
        records: TensorBoard/log.txt writer (rank 0) or None.
        print_freq: progress line every this many micro-batches.

    Returns:
        Epoch averages over all ranks (``loss``, ``lr``, ``min_lr``, ``weight_decay``,
        ``grad_norm``, ``loss_scale`` and the step's metrics) and ``bad_videos``.

    Raises:
        NonFiniteLossError: the loss is NaN/inf or above ``DIVERGED_LOSS`` on some rank;
            names the global step and the learning rate.
    """
    backend.model.train(True)
    metric_logger = utils.MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", utils.SmoothedValue(window_size=1, fmt="{value:.6f}"))
    metric_logger.add_meter("min_lr", utils.SmoothedValue(window_size=1, fmt="{value:.6f}"))
    steps = steps or (len(data_loader) // update_freq)  # type: ignore[arg-type]
    device = next(backend.module.parameters()).device
    backend.start_epoch()
    for micro, batch in enumerate(metric_logger.log_every(data_loader, print_freq,
                                                          f"Epoch: [{epoch}]",
                                                          total=steps * update_freq)):
        step = micro // update_freq
        if step >= steps:
            break
        it = start_steps + step  # global optimizer step
        if micro % update_freq == 0:
            set_schedules(backend.optimizer, it, lr_values, wd_values)
        *inputs, bad_paths = batch
        stop_error: Optional[BaseException] = None
        if bad_tracker is not None and bad_paths:
            try:
                bad_tracker.update(bad_paths)
            except Exception as err:  # raised again below, after all ranks agree to stop
                stop_error = err
        last_micro = (micro + 1) % update_freq == 0
        with backend.accumulating(last_micro):
            loss, clips, metrics = step_fn(backend.model, inputs, backend)
            loss_value = loss.item()
            stop_together(loss_value, stop_error, device, it, epoch, micro,
                          lr=max(g["lr"] for g in backend.optimizer.param_groups))
            grad_norm = backend.backward(loss, last_micro)
        if last_micro and model_ema is not None:
            model_ema.update(backend.module, step=it)

        lrs = [g["lr"] for g in backend.optimizer.param_groups]
        wd = max((g["weight_decay"] for g in backend.optimizer.param_groups), default=0.0)
        loss_scale = backend.loss_scale()
        metric_logger.count_clips(clips)
        metric_logger.update(loss=loss_value, loss_scale=loss_scale, lr=max(lrs), min_lr=min(lrs),
                             weight_decay=wd, grad_norm=grad_norm, **metrics)
        if records is not None and last_micro:
            records.scalars("loss", it, loss=loss_value, **metrics)
            records.scalars("opt", it, lr=max(lrs), min_lr=min(lrs), weight_decay=wd,
                            grad_norm=grad_norm, loss_scale=loss_scale)

    metric_logger.synchronize_between_processes()
    logger.info("Averaged stats: %s", metric_logger)
    stats = {k: meter.global_avg for k, meter in metric_logger.meters.items()}
    if bad_tracker is not None:
        stats["bad_videos"] = global_bad_count(bad_tracker)
    return stats


# ------------------------------------------------------------------------------ fine-tuning
@dataclass(frozen=True)
class Prepared:
    """What the CLI built for a run: the model on its device and the loaders of its splits."""

    model: nn.Module
    loaders: Dict[str, Any]
    dist: utils.DistState
    amp_dtype: Optional[torch.dtype]
    backbone_path: Optional[str]  # the backbone file loaded (recorded in checkpoints)
    counts: Dict[str, int]
    # --eval: the checkpoint's class names (a Hugging Face folder's id2label; else the label map
    # next to the lists); None: the label map's (runs.default_class_names).
    class_names: Optional[List[str]] = None


def build_criterion(smoothing: float, mixup_active: bool) -> nn.Module:
    if mixup_active:
        return SoftTargetCrossEntropy()  # smoothing is applied to the mixed targets
    if smoothing > 0.0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


def build_backend(cfg: FinetuneConfig, run: Prepared, optimizer: torch.optim.Optimizer) -> Any:
    """The training engine the flags ask for (DeepSpeed or plain/DDP)."""
    if cfg.deepspeed:
        config = deepspeed_engine.create_ds_config(cfg.optim, cfg.deepspeed_config,
                                                   cfg.run.output_dir, run.amp_dtype,
                                                   run.dist.world_size)
        deepspeed_engine.write_ds_config(cfg.run.output_dir, config, run.dist.rank)
        engine_, ds_optimizer = deepspeed_engine.initialize(
            run.model, optimizer, config, run.dist.device, cfg.optim.update_freq,
            cfg.run.output_dir)
        return DeepSpeedBackend(engine_, ds_optimizer)
    return PlainBackend(run.model, optimizer, run.dist.device, run.amp_dtype,
                        run.dist.distributed, cfg.optim.update_freq, cfg.optim.clip_grad,
                        cfg.train.compile)


def fit(cfg: FinetuneConfig, run: Prepared) -> Dict[str, Any]:
    """Epochs of training with validation and checkpoints, then the final multi-view test.

    Returns:
        ``{"final": test result, "best_acc": best validation top-1 or None, "counts": ...}``
        (and ``"final_ema"`` with ``--model_ema``).
    """
    rank, world = run.dist.rank, run.dist.world_size
    loader_train = run.loaders["train"]
    steps_per_epoch = len(loader_train) // cfg.optim.update_freq
    if steps_per_epoch < 1:
        raise cfg.optim.too_few_videos(len(loader_train.dataset), world)
    sched: Schedules = cfg.optim.schedules(world, steps_per_epoch)
    logger.info("lr %.3g (= --lr %.3g x total batch %d / 256), min lr %.3g, warm-up from %.3g; "
                "%d steps per epoch, accumulation %d", sched.lr, cfg.optim.lr, sched.total_batch,
                sched.min_lr, sched.warmup_lr, steps_per_epoch, cfg.optim.update_freq)

    mixup_fn = None
    if cfg.train.mixup_active:
        t = cfg.train
        mixup_fn = Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix,
                         cutmix_minmax=list(t.cutmix_minmax) if t.cutmix_minmax else None,
                         prob=t.mixup_prob, switch_prob=t.mixup_switch_prob, mode=t.mixup_mode,
                         label_smoothing=t.smoothing, num_classes=cfg.model.num_classes)
    # Random erasing runs here, on the device, after normalisation (as timm: erased pixels
    # are noise in normalised units), before mixup.
    to_input = ToModelInput.for_training(cfg.data.reprob, cfg.data.remode, cfg.data.recount)
    step_fn = classification_step(build_criterion(cfg.train.smoothing, mixup_fn is not None),
                                  mixup_fn, to_input)
    optimizer = optim_factory.build_optimizer(cfg.optim, run.model)
    model_ema = None
    if cfg.train.model_ema:
        model_ema = ModelEmaV3(run.model, decay=cfg.train.model_ema_decay,
                               device=torch.device("cpu") if cfg.train.model_ema_force_cpu
                               else None)
        logger.info("EMA of the weights with decay %.6f", cfg.train.model_ema_decay)
    backend = build_backend(cfg, run, optimizer)

    checkpoints = TrainingCheckpoints(cfg.run.output_dir, {**cfg.flags, **run_facts(run.dist)},
                                      run.backbone_path, unsafe=cfg.run.unsafe_load,
                                      reset_optimizer=cfg.run.reset_optimizer)
    meta = checkpoints.resume(cfg.run.resume, cfg.run.auto_resume, backend, model_ema)
    start_epoch = cfg.run.start_epoch if meta is None else int(meta["epoch"]) + 1
    best_acc = float((meta or {}).get("best_acc") or 0.0)
    has_best = bool(meta) and meta.get("best_acc") is not None
    saving = bool(cfg.run.output_dir) and cfg.train.save_ckpt

    records = RunRecords(cfg.run.output_dir, cfg.run.tensorboard_dir, rank)
    trackers = {split: bad_video_tracker(loader, split, cfg.data.max_bad_fraction)
                for split, loader in run.loaders.items() if split in ("train", "val")}
    logger.info("training epochs %d..%d", start_epoch, cfg.optim.epochs - 1)
    start_time = time.time()
    for epoch in range(start_epoch, cfg.optim.epochs):
        loader_train.sampler.set_epoch(epoch)
        seed_epoch(cfg.run.seed, epoch, rank)  # resumable randomness
        train_stats = train_one_epoch(
            backend, step_fn, loader_train, epoch, sched.lr_values, sched.wd_values,
            start_steps=epoch * steps_per_epoch, steps=steps_per_epoch,
            update_freq=cfg.optim.update_freq, model_ema=model_ema,
            bad_tracker=trackers["train"], records=records, print_freq=cfg.run.log_every)
        step = (epoch + 1) * steps_per_epoch
        record: Dict[str, Any] = {f"train_{k}": v for k, v in train_stats.items()}
        if "val" in run.loaders:
            val = validate(cfg, run, run.model, backend, trackers["val"])
            record.update({f"val_{k}": v for k, v in val.items()})
            if val["acc1"] > best_acc or not has_best:
                best_acc, has_best = val["acc1"], True
                if saving:
                    checkpoints.save("best", epoch, step, backend, model_ema, best_acc)
            logger.info("val top-1 %.2f%% (best %.2f%%)", val["acc1"], best_acc)
            records.scalars("perf", epoch, val_acc1=val["acc1"], val_acc5=val["acc5"],
                            val_loss=val["loss"])
            if model_ema is not None:
                ema = validate(cfg, run, model_ema.module, None, None)
                record.update({f"val_ema_{k}": v for k, v in ema.items()})
                logger.info("val top-1 of the EMA weights %.2f%%", ema["acc1"])
                records.scalars("perf", epoch, val_ema_acc1=ema["acc1"])
        if saving:
            best = best_acc if has_best else None
            checkpoints.save("last", epoch, step, backend, model_ema, best)
            if (epoch + 1) % cfg.run.save_ckpt_freq == 0 or epoch + 1 == cfg.optim.epochs:
                checkpoints.save(str(epoch), epoch, step, backend, model_ema, best)
        record.update({"epoch": epoch, "step": step,
                       "n_parameters": run.counts["trainable_params"]})
        records.log(record)
        records.flush()

    if cfg.train.skip_test:
        logger.info("--skip_test: no final test (the test split was not read); training time %s",
                    datetime.timedelta(seconds=int(time.time() - start_time)))
        records.close()
        return {"final": None, "best_acc": best_acc if has_best else None, "counts": run.counts}
    tested = "last"
    if cfg.train.test_best:
        if checkpoints.load_best(run.model):
            tested = "best"
            logger.info("--test_best: testing checkpoint-best (val top-1 %.2f%%)", best_acc)
        else:
            logger.warning("--test_best: no checkpoint-best (no validation, or checkpoints off); "
                           "testing the last weights")
    result = run_final_test(cfg, run, run.model, tested, records,
                            getattr(backend, "input_dtype", None))
    out = {"final": result, "best_acc": best_acc if has_best else None, "counts": run.counts}
    if model_ema is not None:
        out["final_ema"] = run_final_test(cfg, run, model_ema.module, "ema", records, None)
    logger.info("training time %s", datetime.timedelta(seconds=int(time.time() - start_time)))
    records.close()
    return out


def evaluate(cfg: FinetuneConfig, run: Prepared, checkpoint: str) -> Dict[str, Any]:
    """``--eval``: the multi-view test of the loaded checkpoint."""
    records = RunRecords(cfg.run.output_dir, None, run.dist.rank)
    result = run_final_test(cfg, run, run.model, "resume", records, None, checkpoint=checkpoint)
    return {"final": result, "counts": run.counts}


def validate(cfg: FinetuneConfig, run: Prepared, model: nn.Module, backend: Any,
             tracker: Any) -> Dict[str, float]:
    """Validation of ``model`` (the trained weights, or the EMA's on their own device)."""
    return validation_one_epoch(run.loaders["val"], model, next(model.parameters()).device,
                                run.amp_dtype, getattr(backend, "input_dtype", None),
                                sharded=run.loaders["sharded"], bad_tracker=tracker,
                                print_freq=cfg.run.log_every)


def bad_video_tracker(loader: Any, split: str, max_bad_fraction: float) -> Any:
    ds = loader.dataset
    if hasattr(ds, "make_bad_video_tracker"):
        return ds.make_bad_video_tracker()
    return BadVideoTracker(split, len(ds), max_bad_fraction)


def class_results(cfg: FinetuneConfig, classes: ClassResults, prefix: str,
                  tested: str, names: Optional[Sequence[str]] = None) -> ClassResults:
    """The test's per-class results named by ``names`` (None: the label map,
    ``runs.default_class_names``),
    written to ``{prefix}_per_class.csv``, ``{prefix}_confusion.csv`` and ``.png`` in the output
    folder, and the most confused classes logged (rank 0). Nothing here changes a number."""
    try:
        names = list(names) if names is not None else default_class_names(cfg)
    except ConfigError as err:  # a broken label map must not lose the test: indices instead
        logger.warning("class names: %s; classes are shown by index", err)
        names = [str(i) for i in range(cfg.model.num_classes)]
    classes = classes.with_names(names)
    logger.info("most confused classes (true -> predicted: videos, share of the true class): "
                "%s", classes.describe_confusions(TOP_CONFUSIONS))
    if cfg.run.output_dir:
        views = f"{cfg.data.test_num_segment}x{cfg.data.test_num_crop} views"
        paths = write_class_results(classes, cfg.run.output_dir, prefix,
                                    title=f"{cfg.data.data_set} test, {tested} weights, {views}")
        logger.info("per-class top-1 and confusion matrix: %s", ", ".join(paths))
    return classes


def run_final_test(cfg: FinetuneConfig, run: Prepared, model: nn.Module, tested: str,
                   records: RunRecords, input_dtype: Optional[torch.dtype],
                   checkpoint: Optional[str] = None) -> Dict[str, Any]:
    """Multi-view test, merge of all ranks' predictions, ``Final top-1/top-5/mean-class top-1``
    in ``log.txt``, and the per-class results (``class_results``: ``test_per_class.csv``,
    ``test_confusion.csv``, ``test_confusion.png``) written by rank 0.

    ``tested`` names the weights ('last', 'best', 'resume' or 'ema'); the EMA's predictions go
    to ``predictions_ema_rank*.json``, its per-class files are ``test_ema_*`` and its line reads
    ``Final EMA top-1``.
    """
    rank, world = run.dist.rank, run.dist.world_size
    sharded = run.loaders["sharded"]
    out_dir = cfg.run.output_dir
    tag = "ema" if tested == "ema" else ""
    device = next(model.parameters()).device
    if out_dir and rank == 0:
        remove_stale_predictions(out_dir, world if sharded else 1, tag)
    # Unsharded (no --dist_eval), every rank tests all videos itself, as the original VideoMAE
    # code does: a rank that waited in a collective while rank 0 tested alone would be killed
    # by the process-group timeout (NCCL's watchdog) after a long test, and the run lost.
    # Only rank 0 writes the predictions file and the log line.
    file = prediction_file(out_dir, rank, tag) if out_dir and (sharded or rank == 0) else None
    preds = final_test(run.loaders["test"], model, device, file, run.amp_dtype, input_dtype,
                       print_freq=cfg.run.log_every)
    parts: List[Any] = utils.all_gather_object(preds) if sharded else [preds]
    result = merge_predictions(parts, cfg.model.num_classes)
    error: Optional[BaseException] = None
    if result["bad_paths"]:
        try:  # the same merged data on every rank, so they all stop together
            bad_video_tracker(run.loaders["test"], "test",
                              cfg.data.max_bad_fraction).update(result["bad_paths"])
        except Exception as err:  # sharded: re-raised below once every rank knows
            error = err
    if not sharded and error is not None:
        raise error  # every rank tested the same videos and raises the same error
    if sharded and not utils.all_ranks_ok(error is None, run.dist.device):
        raise error if error is not None else RunStopped("another rank stopped the final test")
    if rank == 0:
        name = "Final EMA" if tag else "Final"
        mean_class = result["mean_class"] if math.isfinite(result["mean_class"]) else None
        logger.info("Accuracy of the network on the %d test videos: top-1 %.2f%%, top-5 "
                    "%.2f%%, mean-class top-1 %.2f%% (%d unreadable videos left out; %s weights)",
                    result["videos"], result["top1"], result["top5"], result["mean_class"],
                    result["bad_videos"], tested)
        record = {f"{name} top-1": result["top1"], f"{name} top-5": result["top5"],
                  f"{name} mean-class top-1": mean_class,
                  "test_videos": result["videos"], "test_bad_videos": result["bad_videos"],
                  "test_views": cfg.data.test_views, "tested": tested}
        if checkpoint:
            record["checkpoint"] = checkpoint
        records.log(record)
        key = "test_ema" if tag else "test"
        records.scalars("perf", cfg.optim.epochs, **{f"{key}_acc1": result["top1"],
                                                     f"{key}_acc5": result["top5"]})
        records.flush()
        result["classes"] = class_results(cfg, result["classes"], key, tested,
                                              run.class_names)
    if sharded:  # unsharded, the ranks finish on their own and nothing waits for rank 0's test
        utils.barrier()
    return result
