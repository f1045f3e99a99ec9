"""AdaptFormer adapters (arXiv 2205.13535): a bottleneck beside each MLP of the range.

``x + mlp(norm2(x)) + s * up(relu(down(norm2(x))))`` with ``up`` zero-initialised, so the adapted
model starts as the frozen one.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn

from .base import TransferMethod, register_transfer, resolve_block_range


class Adapter(nn.Module):
    """The per-block module placed in ``Block.mlp_adapter``."""

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(torch.relu(self.down(h)))


@register_transfer("adapter")
class AdaptFormer(TransferMethod):
    """Args: adapter_dim (bottleneck, 64), adapter_scale (0.1), prompt_start/prompt_end."""

    def __init__(self, adapter_dim: int = 64, adapter_scale: float = 0.1,
                 prompt_start: Optional[int] = None, prompt_end: Optional[int] = None,
                 **_: object) -> None:
        super().__init__(adapter_dim=adapter_dim, adapter_scale=adapter_scale,
                         prompt_start=prompt_start, prompt_end=prompt_end)
        if int(adapter_dim) < 1:
            raise ValueError(f"--adapter_dim must be >= 1, got {adapter_dim}")

    def inject(self, model: nn.Module) -> List[nn.Parameter]:
        start, end = resolve_block_range(model.depth, self.config["prompt_start"],
                                         self.config["prompt_end"])
        own: List[nn.Parameter] = []
        for i in range(start, end + 1):
            module = Adapter(model.embed_dim, int(self.config["adapter_dim"]),
                             float(self.config["adapter_scale"]))
            model.blocks[i].mlp_adapter = module
            own.extend(module.parameters())
        return own
