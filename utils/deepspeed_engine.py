"""DeepSpeed, the second training engine (``--enable_deepspeed``).

The engine gets the torch optimizer this project builds (a "client optimizer": AdamW or SGD with
``--opt_betas``/``--opt_eps``/``--momentum`` and the parameter groups of ``optim_factory``), so no
fused CUDA/CPU optimizer op has to be compiled; ZeRO stage 0 (plain data parallelism), gradient
clipping and fp16/bf16 come from the JSON config written to ``<output_dir>/deepspeed_config.json``.

On CPU, DeepSpeed's communication layer would JIT-compile its shared-memory all-reduce op
(``deepspeed_shm_comm``, ~90 s on two cores) on first use; training only needs
``torch.distributed`` (gloo), so that op is marked unavailable before DeepSpeed starts.

ZeRO stages 1 and 2 (``"zero_optimization": {"stage": 1|2}`` in ``--deepspeed_config``) take
the client optimizer as it is: DeepSpeed partitions the flat fp32 copy of each parameter group
and calls the torch optimizer's ``step`` on it, keeping the group's other keys (``lr_scale``,
``param_names``). Stage 3 partitions the parameters themselves, which folding and validation
read whole, so it is refused.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional, Tuple

import torch

from .outputs import atomic_file, make_dirs

logger = logging.getLogger(__name__)


def import_deepspeed(device: torch.device) -> Any:
    """``import deepspeed``; on CPU, keep it from compiling its shared-memory comm op."""
    try:  # lazily: optional, slow to import, and only DeepSpeed runs need it
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
    _check_zero_stage(config, optim.opt, user_file)
    return config


# The torch class ``optim_factory.create_optimizer`` builds for each ``--opt``.
_CLIENT_OPTIMIZERS = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD", "momentum": "SGD"}


def zero_supports(opt: Optional[str]) -> bool:
    """Whether DeepSpeed lists the client optimizer of ``--opt`` as tested with ZeRO.

    DeepSpeed's own check (``is_zero_supported_optimizer``) needs its communication layer
    started, so its list ``ZERO_SUPPORTED_OPTIMIZERS`` is read here against the class that
    ``optim_factory.create_optimizer`` builds for the flag.

    Args:
        opt: ``--opt`` (None or unknown: not supported).
    """
    from deepspeed.runtime.zero.utils import ZERO_SUPPORTED_OPTIMIZERS  # lazy: optional package
    name = _CLIENT_OPTIMIZERS.get((opt or "").lower())
    cls = getattr(torch.optim, name) if name else None
    return cls is not None and cls in ZERO_SUPPORTED_OPTIMIZERS


def _check_zero_stage(config: Dict[str, Any], opt: Optional[str],
                      user_file: Optional[str]) -> None:
    """Refuse ZeRO stage 3; allow the client optimizer at stages 1 and 2.

    Without ``zero_allow_untested_optimizer`` DeepSpeed's engine asserts at start-up
    (``DeepSpeedEngine._do_optimizer_sanity_check``) for any optimizer outside its list, SGD
    included, although stages 1/2 only call the optimizer's ``step`` on flat fp32 partitions.

    Args:
        config: the config being built (edited in place).
        opt: ``--opt``.
        user_file: ``--deepspeed_config``, for the error message.
    """
    zero = config.get("zero_optimization") or {}
    try:
        stage = int(zero.get("stage", 0))
    except (TypeError, ValueError) as err:
        raise ValueError(f"--deepspeed_config {user_file}: zero_optimization.stage "
                         f"{zero.get('stage')!r} is not a number") from err
    if stage >= 3:
        raise ValueError(
            f"--deepspeed_config {user_file}: ZeRO stage {stage} is not supported (it partitions "
            "the parameters, which folding and validation read whole); use stage 0, 1 or 2")
    if stage in (1, 2) and not zero_supports(opt) and not config.get(
            "zero_allow_untested_optimizer"):
        config["zero_allow_untested_optimizer"] = True
        logger.info("DeepSpeed ZeRO stage %d with --opt %s (not in DeepSpeed's tested list): "
                    "zero_allow_untested_optimizer set", stage, opt)


def ds_config_path(output_dir: str) -> str:
    return os.path.join(output_dir or ".", "deepspeed_config.json")


def write_ds_config(output_dir: str, config: Dict[str, Any], rank: int) -> str:
    path = ds_config_path(output_dir)
    if rank == 0:
        make_dirs(os.path.dirname(path) or ".")
        with atomic_file(path) as f:
            json.dump(config, f, indent=2)
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
