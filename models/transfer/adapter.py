"""AdaptFormer adapters (arXiv 2205.13535): a bottleneck beside each MLP of the range.

``x + mlp(norm2(x)) + s * up(relu(down(norm2(x))))`` with ``up`` zero-initialised, so the adapted
model starts as the frozen one.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from .base import TransferMethod, register_transfer
from ..transfer_settings.adapter import AdapterConfig


class Adapter(nn.Module):
    """The per-block module placed in ``Block.mlp_adapter``: ``x + branch(norm2(x))``."""

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = scale

    def branch(self, h: torch.Tensor) -> torch.Tensor:
        """The bottleneck's output ``s * up(relu(down(h)))`` for the MLP's input ``h``."""
        return self.scale * self.up(torch.relu(self.down(h)))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Args: h (B, N, dim) the MLP's input ``norm2(x)``; x the block's output after the MLP
        residual. Returns ``x`` plus the branch (added last, outside the MLP's drop path)."""
        return x + self.branch(h)


@register_transfer("adapter")
class AdaptFormer(TransferMethod):
    """AdaptFormer (``--transfer_type adapter``); settings in ``AdapterConfig``."""

    config_class = AdapterConfig
    config: AdapterConfig

    def inject(self, model: nn.Module) -> List[nn.Parameter]:
        start, end = self.config.blocks(model.depth)
        own: List[nn.Parameter] = []
        for i in range(start, end + 1):
            module = Adapter(model.embed_dim, int(self.config.adapter_dim),
                             float(self.config.adapter_scale))
            model.blocks[i].mlp_adapter = module
            own.extend(module.parameters())
        return own
