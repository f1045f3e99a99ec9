"""DeepSpeed, the second training engine (``--enable_deepspeed``).

The engine gets the torch optimizer this project builds (a "client optimizer": AdamW or SGD with
``--opt_betas``/``--opt_eps``/``--momentum`` and the parameter groups of ``optim_factory``), so no
fused CUDA/CPU optimizer op has to be compiled; ZeRO stage 0 (plain data parallelism), gradient
clipping and fp16/bf16 come from the JSON config written to ``<output_dir>/deepspeed_config.json``.

On CPU, DeepSpeed's communication layer would JIT-compile its shared-memory all-reduce op
(``deepspeed_shm_comm``, ~90 s on two cores) on first use; training only needs
``torch.distributed`` (gloo), so that op is marked unavailable before DeepSpeed starts.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional, Tuple

import torch

logger = logging.getLogger(__name__)


def import_deepspeed(device: torch.device) -> Any:
    """``import deepspeed``; on CPU, keep it from compiling its shared-memory comm op."""
    try:
        import deepspeed
        import deepspeed.ops
    except ImportError as err:
        raise RuntimeError("--enable_deepspeed needs the deepspeed package "
                           "(pip install deepspeed)") from err
    if device.type == "cpu":
        # Editing the probed table is how DeepSpeed itself lets ops be switched off at run time.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def create_ds_config(optim: Any, user_file: Optional[str], output_dir: str,
                     amp_dtype: Optional[torch.dtype], world_size: int) -> Dict[str, Any]:
    """The DeepSpeed config of this run, written to ``<output_dir>/deepspeed_config.json``.

    A user file given with ``--deepspeed_config`` is the base; the batch sizes, accumulation,
    clipping and precision always follow the command-line flags (the flags are honoured the
    same way with or without DeepSpeed).

    Args:
        optim: ``OptimConfig`` (``batch_size``, ``update_freq``, ``clip_grad``).
        user_file: ``--deepspeed_config`` or None.
        output_dir: where this run's config is written.
        amp_dtype: fp16 or bf16 turn DeepSpeed's precision on.
        world_size: processes.
    """
    config: Dict[str, Any] = {}
    if user_file and os.path.abspath(user_file) != os.path.abspath(ds_config_path(output_dir)):
        with open(user_file, encoding="utf-8") as f:
            config = json.load(f)
    fp16 = amp_dtype == torch.float16
    bf16 = amp_dtype == torch.bfloat16
    config.update({
        "train_batch_size": optim.batch_size * optim.update_freq * world_size,
        "train_micro_batch_size_per_gpu": optim.batch_size,
        "gradient_accumulation_steps": optim.update_freq,
        "gradient_clipping": float(optim.clip_grad) if optim.clip_grad else 0.0,
        "steps_per_print": 10 ** 9,  # progress is logged by the engine loop
        "wall_clock_breakdown": False,
        "prescale_gradients": False,
        "zero_optimization": config.get("zero_optimization", {"stage": 0}),
        "fp16": {"enabled": fp16, "loss_scale": 0, "initial_scale_power": 7,
                 "loss_scale_window": 128, "hysteresis": 2, "min_loss_scale": 1},  # VideoMAE's
        "bf16": {"enabled": bf16},
    })
    if fp16 or bf16:
        # DeepSpeed casts parameters but (since 0.17) leaves buffers in fp32; the backbone's
        # zero key-bias buffer must follow the parameters or the qkv projection mixes dtypes.
        config.setdefault("data_types", {})["buffer_dtype"] = "fp16" if fp16 else "bf16"
    config.pop("optimizer", None)  # the client optimizer (see module docstring) is used
    config.pop("scheduler", None)  # learning rate and weight decay follow the per-step schedule
    return config


def ds_config_path(output_dir: str) -> str:
    return os.path.join(output_dir or ".", "deepspeed_config.json")


def write_ds_config(output_dir: str, config: Dict[str, Any], rank: int) -> str:
    path = ds_config_path(output_dir)
    if rank == 0:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        os.replace(tmp, path)
    return path


def initialize(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               config: Dict[str, Any], device: torch.device, update_freq: int,
               output_dir: str) -> Tuple[Any, Any]:
    """Wrap ``model`` and the client ``optimizer`` in a DeepSpeed engine.

    The process group must already exist (``init_distributed_mode(run, force=True)``).
    """
    deepspeed = import_deepspeed(device)
    engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                      config=config, dist_init_required=False)
    if engine.gradient_accumulation_steps() != update_freq:
        raise RuntimeError(f"DeepSpeed accumulates {engine.gradient_accumulation_steps()} steps "
                           f"but --update_freq is {update_freq}")
    logger.info("DeepSpeed %s engine: ZeRO stage %d, fp16 %s, bf16 %s, clipping %s, "
                "accumulation %d, config %s", deepspeed.__version__,
                engine.zero_optimization_stage(), engine.fp16_enabled(), engine.bfloat16_enabled(),
                config.get("gradient_clipping"), engine.gradient_accumulation_steps(),
                ds_config_path(output_dir))
    return engine, ds_optimizer


def input_dtype(engine: Any) -> Optional[torch.dtype]:
    """The dtype a DeepSpeed engine's module runs in (inputs must be cast to it)."""
    if engine is None:
        return None
    if engine.fp16_enabled():
        return torch.float16
    if engine.bfloat16_enabled():
        return torch.bfloat16
    return None
