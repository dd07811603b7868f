"""LoRALinear whose adapter product is a torch.compile'd function (importing torch._dynamo on the way)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


@torch.compile(backend="eager", dynamic=True)
def low_rank(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scaling: float) -> torch.Tensor:
    """scaling * (x down^T) up^T, traced once by dynamo and run eagerly (no C++ compiler needed)."""
    return (x @ down.T * scaling) @ up.T


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus scaling * B A, the adapter computed by a compiled function."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"LoRALinear wraps an nn.Linear, not a {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be an integer >= 1, got {r!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.base = base
        base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.p = dropout
        place = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.A = nn.Parameter(torch.empty(r, base.in_features, **place))
        self.B = nn.Parameter(torch.zeros(base.out_features, r, **place))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropped = F.dropout(x, self.p, training=self.training)
        return self.base(x) + low_rank(dropped, self.A, self.B, self.scaling)
