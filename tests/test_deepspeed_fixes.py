"""DeepSpeed fixes: the logged gradient norm and loss scale of ``DeepSpeedBackend`` in each
stage and precision.

The fake engines below reproduce what DeepSpeed 0.19.8 does with a client optimizer
(``runtime/engine.py: DeepSpeedEngine._take_model_step`` copies the optimizer's
``_global_grad_norm``; ``runtime/zero/stage_1_and_2.py: DeepSpeedZeroOptimizer.step`` divides it
by the loss scale and keeps the gradients in partitions; ``runtime/fp16/unfused_optimizer.py:
FP16_UnfusedOptimizer.step`` keeps it scaled and exposes the scale as ``loss_scale``).
"""
import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from utils.backend import DeepSpeedBackend

pytest.importorskip("deepspeed")


# ------------------------------------------------- issue item 7: grad norm and loss scale (fakes)

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
