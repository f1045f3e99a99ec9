"""DeepSpeed fixes: ZeRO 1/2 with the SGD client optimizer, ZeRO 3 refused, and the logged
gradient norm and loss scale of ``DeepSpeedBackend`` in each stage and precision.

The fake engines below reproduce what DeepSpeed 0.19.8 does with a client optimizer
(``runtime/engine.py: DeepSpeedEngine._take_model_step`` copies the optimizer's
``_global_grad_norm``; ``runtime/zero/stage_1_and_2.py: DeepSpeedZeroOptimizer.step`` divides it
by the loss scale and keeps the gradients in partitions; ``runtime/fp16/unfused_optimizer.py:
FP16_UnfusedOptimizer.step`` keeps it scaled and exposes the scale as ``loss_scale``). The real
engine runs in a subprocess (one process, gloo, CPU) for ZeRO 2 and stage 0.
"""
import copy
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import utils
from tests.engine_helpers import ROOT, subprocess_env
from utils import deepspeed_engine
from utils.backend import DeepSpeedBackend

pytest.importorskip("deepspeed")


def _optim(opt: str = "sgd") -> SimpleNamespace:
    return SimpleNamespace(batch_size=2, update_freq=1, clip_grad=None, opt=opt)


def _user_file(tmp_path, stage: int) -> str:
    path = str(tmp_path / "user_ds.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"zero_optimization": {"stage": stage}}, f)
    return path


# ----------------------------------------------------------------------------- ZeRO and SGD

@pytest.mark.parametrize("stage", [1, 2])
def test_zero12_config_allows_the_sgd_client_optimizer(tmp_path, stage):
    config = deepspeed_engine.create_ds_config(_optim("sgd"), _user_file(tmp_path, stage),
                                               str(tmp_path / "out"), None, 1)
    assert config["zero_optimization"]["stage"] == stage
    assert config["zero_allow_untested_optimizer"] is True
    # AdamW is in DeepSpeed's tested list: nothing is loosened for it
    config = deepspeed_engine.create_ds_config(_optim("adamw"), _user_file(tmp_path, stage),
                                               str(tmp_path / "out"), None, 1)
    assert "zero_allow_untested_optimizer" not in config


def test_zero12_config_passes_deepspeeds_own_optimizer_check(tmp_path, monkeypatch):
    """The assertion DeepSpeed raises at start-up (``_do_optimizer_sanity_check``), run on the
    config this project builds, without starting an engine."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.engine import DeepSpeedEngine
    config = deepspeed_engine.create_ds_config(_optim("sgd"), _user_file(tmp_path, 2),
                                               str(tmp_path / "out"), None, 1)
    fake = SimpleNamespace(_config=DeepSpeedConfig(config), global_rank=0)
    for name in ("zero_optimization", "zero_optimization_stage", "zero_allow_untested_optimizer",
                 "get_data_types", "zero_cpu_offload", "zero_compute_grad_norm"):
        setattr(fake, name, getattr(DeepSpeedEngine, name).__get__(fake))
    fake.bfloat16_enabled = lambda: False
    fake.fp16_enabled = lambda: False
    sgd = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    import deepspeed.runtime.zero.utils as zero_utils
    # is_zero_supported_optimizer logs with the rank of DeepSpeed's (unstarted) comm layer
    monkeypatch.setattr(zero_utils, "dist", SimpleNamespace(get_rank=lambda: 0))
    DeepSpeedEngine._do_optimizer_sanity_check(fake, sgd)  # raised AssertionError before the fix


def test_zero3_is_refused_naming_the_flag_and_stage(tmp_path):
    with pytest.raises(ValueError, match=r"--deepspeed_config .*ZeRO stage 3 is not supported"):
        deepspeed_engine.create_ds_config(_optim("adamw"), _user_file(tmp_path, 3),
                                          str(tmp_path / "out"), None, 1)


# -------------------------------------------------------------- grad norm and loss scale (fakes)

class _FakeOptimizer:
    """The fp16 optimizers' scale lives behind the ``loss_scale`` property (no ``cur_scale``
    on ``FP16_UnfusedOptimizer``)."""

    def __init__(self, scale: float) -> None:
        self._scale = scale

    @property
    def loss_scale(self) -> float:
        return self._scale


class _FakeEngine:
    """A DeepSpeed engine reduced to what ``DeepSpeedBackend`` calls.

    Args:
        module: the model.
        stage: ZeRO stage.
        precision: 'fp32', 'fp16' or 'bf16'.
        scale: fp16 loss scale (doubled by the step, as a dynamic scaler does after its window).
    """

    def __init__(self, module: nn.Module, stage: int, precision: str, scale: float = 1.0) -> None:
        self.module = module
        self.stage, self.precision = stage, precision
        self.optimizer = _FakeOptimizer(scale) if precision == "fp16" else torch.optim.SGD(
            module.parameters(), lr=0.0)
        self._global_grad_norm = None
        self._partition = None

    def zero_optimization_stage(self) -> int:
        return self.stage

    def fp16_enabled(self) -> bool:
        return self.precision == "fp16"

    def bfloat16_enabled(self) -> bool:
        return self.precision == "bf16"

    def _scale(self) -> float:
        return self.optimizer.loss_scale if self.precision == "fp16" else 1.0

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self._scale()).backward()
        if self.stage in (1, 2):  # reduced into partitions: the parameters keep no .grad
            self._partition = [p.grad.clone() for p in self.module.parameters()]
            for p in self.module.parameters():
                p.grad = None

    def step(self) -> None:
        grads = self._partition if self.stage else [p.grad for p in self.module.parameters()]
        scaled = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
        if self.stage in (1, 2):
            self._global_grad_norm = scaled / self._scale()  # DeepSpeedZeroOptimizer.step
        elif self.precision in ("fp16", "bf16"):
            self._global_grad_norm = scaled  # FP16_UnfusedOptimizer.step: scaled
        if self.precision == "fp16":
            self.optimizer._scale *= 2.0  # _update_scale runs inside step
        for p in self.module.parameters():
            p.grad = None
        self._partition = None

    def get_global_grad_norm(self):
        return self._global_grad_norm


def _model_and_hand_norm():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 1])
    ref = copy.deepcopy(model)
    nn.functional.cross_entropy(ref(x), y).backward()
    norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in ref.parameters()))
    assert norm > 0
    return model, x, y, norm


@pytest.mark.parametrize("stage,precision,scale", [
    (2, "bf16", 1.0), (1, "bf16", 1.0), (2, "fp32", 1.0), (2, "fp16", 64.0),
    (0, "fp16", 128.0), (0, "fp32", 1.0), (0, "bf16", 1.0)])
def test_grad_norm_is_the_unscaled_global_norm(stage, precision, scale):
    model, x, y, norm = _model_and_hand_norm()
    backend = DeepSpeedBackend(_FakeEngine(model, stage, precision, scale), None)
    loss = nn.functional.cross_entropy(backend.model.module(x), y)
    got = backend.backward(loss, last_micro=True)
    assert got == pytest.approx(norm, rel=1e-6)


@pytest.mark.parametrize("stage,precision,scale", [
    (0, "fp16", 128.0), (2, "fp16", 64.0), (0, "fp32", 1.0), (2, "bf16", 1.0)])
def test_loss_scale_is_read_from_the_fp16_optimizer(stage, precision, scale):
    model, _, _, _ = _model_and_hand_norm()
    assert DeepSpeedBackend(_FakeEngine(model, stage, precision, scale), None).loss_scale() == scale


def test_grad_norm_is_none_between_steps():
    model, x, y, _ = _model_and_hand_norm()
    backend = DeepSpeedBackend(_FakeEngine(model, 2, "bf16"), None)
    assert backend.backward(nn.functional.cross_entropy(model(x), y), last_micro=False) is None


# ------------------------------------------------------------------ the real engine, one process

_SCRIPT = r'''
import copy, json, math, os, sys
import torch, torch.distributed as dist, torch.nn as nn
from types import SimpleNamespace
from utils import deepspeed_engine
from utils.backend import DeepSpeedBackend

dist.init_process_group("gloo", rank=0, world_size=1)
out, results = sys.argv[1], {}


def one_case(name, stage, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3))
    x, y = torch.randn(2, 6), torch.tensor([0, 2])
    ref = copy.deepcopy(model).to(dtype or torch.float32)
    nn.functional.cross_entropy(ref(x.to(dtype or torch.float32)).float(), y).backward()
    hand = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in ref.parameters()))
    weights, biases = [model[0].weight, model[2].weight], [model[0].bias, model[2].bias]
    # this project's groups carry lr_scale and param_names beside the params
    groups = [{"params": weights, "lr": 0.1, "lr_scale": 1.0,
               "param_names": ["0.weight", "2.weight"]},
              {"params": biases, "lr": 0.05, "lr_scale": 0.5, "param_names": ["0.bias", "2.bias"]}]
    lrs = {id(p): g["lr"] for g in groups for p in g["params"]}  # before ZeRO flattens them
    sgd = torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0)
    user = os.path.join(out, name + ".json")
    with open(user, "w") as f:
        json.dump({"zero_optimization": {"stage": stage}}, f)
    optim = SimpleNamespace(batch_size=2, update_freq=1, clip_grad=None, opt="sgd")
    config = deepspeed_engine.create_ds_config(optim, user, os.path.join(out, name), dtype, 1)
    engine, ds_opt = deepspeed_engine.initialize(model, sgd, config, torch.device("cpu"), 1,
                                                 os.path.join(out, name))
    backend = DeepSpeedBackend(engine, ds_opt)
    before = [p.detach().double().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(backend.model(backend.cast_input(x)).float(), y)
    norm = backend.backward(loss, last_micro=True)
    # first nesterov SGD step: p - lr * (1 + momentum) * g
    err = max(float((p.detach().double() - (b - lrs[id(p)] * 1.9 * r.grad.double())).abs().max())
              for p, b, r in zip(model.parameters(), before, ref.parameters()))
    return {"norm": norm, "hand": hand, "update_err": err, "loss_scale": backend.loss_scale(),
            "optimizer": type(ds_opt).__name__,
            "allow_untested": config.get("zero_allow_untested_optimizer", False)}


for name, stage, dtype in (("zero2_fp32", 2, None), ("stage0_fp32", 0, None),
                           ("stage0_bf16", 0, torch.bfloat16)):
    try:
        results[name] = one_case(name, stage, dtype)
    except Exception as err:  # reported per case, so one failure does not hide the others
        results[name] = {"error": repr(err)[:500]}
print("RESULTS " + json.dumps(results))
'''


@pytest.fixture(scope="module")
def real_engine_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ds_real")
    script = tmp / "one_step.py"
    script.write_text(_SCRIPT)
    ext = str(tmp / "torch_extensions")
    env = subprocess_env({"TORCH_EXTENSIONS_DIR": ext, "MASTER_ADDR": "127.0.0.1",
                          "MASTER_PORT": str(utils.free_port()), "RANK": "0", "WORLD_SIZE": "1",
                          "LOCAL_RANK": "0"})
    proc = subprocess.run([sys.executable, str(script), str(tmp)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert not os.path.exists(ext) or not os.listdir(ext), "a DeepSpeed op was compiled"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")][-1]
    return json.loads(line[len("RESULTS "):])


def test_real_zero2_sgd_trains_one_step_with_the_true_grad_norm(real_engine_results):
    r = real_engine_results["zero2_fp32"]
    assert "error" not in r, r
    assert r["optimizer"] == "DeepSpeedZeroOptimizer" and r["allow_untested"] is True
    assert r["update_err"] < 1e-6  # per-group lr honoured on the flat partitions
    assert r["norm"] == pytest.approx(r["hand"], rel=1e-5)  # p.grad is None here: was 0
    assert r["loss_scale"] == 1.0


def test_real_stage0_grad_norm_equals_the_hand_norm(real_engine_results):
    fp32, bf16 = real_engine_results["stage0_fp32"], real_engine_results["stage0_bf16"]
    assert "error" not in fp32 and "error" not in bf16, (fp32, bf16)
    assert fp32["update_err"] < 1e-6 and fp32["norm"] == pytest.approx(fp32["hand"], rel=1e-5)
    assert bf16["norm"] == pytest.approx(bf16["hand"], rel=1e-2)
    assert fp32["loss_scale"] == bf16["loss_scale"] == 1.0
