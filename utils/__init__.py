"""Training utilities (VideoMAE/MAE names, so code written for those works unchanged).

* :mod:`utils.dist`: distributed set-up (torchrun, SLURM, Open MPI, single process), rank helpers.
* :mod:`utils.logs`: rank-0 logging, ``MetricLogger`` progress lines (clips/s, ETA), TensorBoard,
  ``log.txt``.
* :mod:`utils.schedule`: per-step cosine schedules, learning-rate scaling.
* :mod:`utils.amp`: mixed-precision dtype choice and the loss scaler.
* :mod:`utils.config`: the immutable settings a command line becomes.
* :mod:`utils.run`: what every training script does around its loop (start, seeds, records).
* :mod:`utils.backend`: the plain/DDP and DeepSpeed training engines behind one interface.
* :mod:`utils.deepspeed_engine`: DeepSpeed config and engine.

Checkpoints: foreign weights are read by :mod:`models.pretrained`, a method's tensors by
:mod:`models.method_state`, run checkpoint files by :mod:`models.run_checkpoints`; training
writes and resumes them through :mod:`engine_checkpoints`. Atomic writes:
:func:`utils.outputs.atomic_torch_save`.

The names below are re-exported lazily (:func:`utils.lazy.lazy_exports`): importing
``utils.config`` or ``utils.cli`` (the flags of every command line) imports no torch, so
``--help`` answers at once; ``utils.setup_logging`` imports :mod:`utils.logs` when first used.
"""
from .lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".amp": ["NativeScalerWithGradNormCount", "amp_dtype_for", "autocast", "get_grad_norm_"],
    ".dist": ["all_gather_object", "all_ranks_ok", "barrier", "default_device_name",
              "destroy_process_group", "free_port", "get_rank", "get_world_size",
              "init_distributed_mode", "is_dist_avail_and_initialized", "is_main_process",
              "seed_everything", "DistState"],
    ".logs": ["MetricLogger", "SmoothedValue", "TensorboardLogger", "append_json_line",
              "setup_logging"],
    ".schedule": ["cosine_scheduler", "scale_lr"],
})
