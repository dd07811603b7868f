import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base, r=8, alpha=16.0, dropout=0.0):
        if not isinstance(base, nn.Linear) or r < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"invalid LoRALinear arguments: base={type(base).__name__}, r={r}, dropout={dropout}")
        super().__init__()
        self.linear = base
        for parameter in self.linear.parameters():  # every one, a subclass's own too, not just weight and bias
            parameter.requires_grad_(False)
        self.r = r
        self.alpha = alpha
        factory = dict(dtype=base.weight.dtype, device=base.weight.device)
        down = torch.empty(base.in_features, r, **factory)
        bound = 1 / math.sqrt(base.in_features)
        nn.init.uniform_(down, -bound, bound)
        self.adapter = nn.ParameterDict(
            {"down": nn.Parameter(down), "up": nn.Parameter(torch.zeros(r, base.out_features, **factory))}
        )
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def forward(self, x):
        return self.linear(x) + (self.drop(x) @ self.adapter["down"]) @ self.adapter["up"] * self.scaling
