import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """Adds the update as one (out, in) matrix, delta_weight(), applied in a single matmul, to base(x).

    (The rows [W; A] in one matmul would be a rounding off base(x) at init, where the stub asks exactly
    base(x), and would skip the forward of an nn.Linear subclass.)"""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"expected nn.Linear, got {type(base)}")
        if r < 1:
            raise ValueError(f"r must be >= 1, got {r}")
        if not 0 <= dropout < 1:  # NaN is outside too
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.dropout = nn.Dropout(dropout)
        w = base.weight
        self.A = nn.Parameter(torch.empty(r, base.in_features, dtype=w.dtype, device=w.device))
        self.B = nn.Parameter(torch.zeros(base.out_features, r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        return (self.B @ self.A) * self.scaling

    def forward(self, x):
        return self.base(x) + F.linear(self.dropout(x), self.delta_weight())
