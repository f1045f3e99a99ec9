"""Training utilities (VideoMAE/MAE names, so code written for those works unchanged).

* :mod:`utils.dist`: distributed set-up (torchrun, SLURM, Open MPI, single process), rank helpers.
* :mod:`utils.logs`: rank-0 logging, ``MetricLogger`` progress lines (clips/s, ETA), TensorBoard,
  ``log.txt``.
* :mod:`utils.schedule`: per-step cosine schedules, learning-rate scaling.
* :mod:`utils.amp`: mixed-precision dtype choice and the loss scaler.
* :mod:`utils.checkpoint`: atomic checkpoints, auto-resume, reading a checkpoint for evaluation.
* :mod:`utils.ds`: DeepSpeed config and engine.
"""
from .amp import NativeScalerWithGradNormCount, amp_dtype_for, autocast, get_grad_norm_
from .checkpoint import (args_to_dict, atomic_torch_save, auto_load_model, check_backbone,
                         find_resume_checkpoint, load_model_state, read_checkpoint, save_model)
from .dist import (all_gather_object, all_ranks_ok, barrier, default_device_name,
                   destroy_process_group, free_port, get_rank, get_world_size,
                   init_distributed_mode, is_dist_avail_and_initialized, is_main_process,
                   save_on_master, seed_everything)
from .logs import (MetricLogger, SmoothedValue, TensorboardLogger, append_json_line,
                   setup_logging, start_run_outputs)
from .schedule import cosine_scheduler, scale_lr

__all__ = [
    "NativeScalerWithGradNormCount", "amp_dtype_for", "autocast", "get_grad_norm_",
    "args_to_dict", "atomic_torch_save", "auto_load_model", "check_backbone",
    "find_resume_checkpoint", "load_model_state", "read_checkpoint", "save_model",
    "all_gather_object", "all_ranks_ok", "barrier", "default_device_name",
    "destroy_process_group", "free_port", "get_rank", "get_world_size", "init_distributed_mode",
    "is_dist_avail_and_initialized", "is_main_process", "save_on_master", "seed_everything",
    "MetricLogger", "SmoothedValue", "TensorboardLogger", "append_json_line", "setup_logging",
    "start_run_outputs",
    "cosine_scheduler", "scale_lr",
]
