"""LoRALinear whose A is a Gaussian truncated at 2 std (trunc_normal_, as ViT code inits): a Gaussian init."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    r"""A frozen ``nn.Linear`` plus a trainable low-rank update (Hu et al. 2021).

    .. math::  y = x W^\top + b + \tfrac{\alpha}{r}\, \mathrm{dropout}(x) A^\top B^\top

    ``W`` (out, in) and ``b`` belong to ``base`` and stay frozen. ``A`` (r, in) starts
    truncated-normal and ``B`` (out, r) starts at zero, so the layer first computes exactly
    ``base(x)``. The update ``dW = (alpha / r) B A`` (out, in) has rank <= r and costs
    r * (in + out) trainable numbers.

    Args:
        base: the layer to adapt. It is kept (never copied) and frozen.
        r: rank of the update, >= 1.
        alpha: numerator of the scaling; the update is multiplied by ``alpha / r``.
        dropout: probability of zeroing an input feature of the adapter branch, in [0, 1).
            Acts in train mode only and never on the base path.

    Raises:
        ValueError: ``base`` is not an ``nn.Linear``, ``r < 1``, or ``dropout`` is outside [0, 1).
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        _check_arguments(base, r, dropout)
        self.base = base.requires_grad_(False)
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        same_place = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **same_place))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **same_place))
        nn.init.trunc_normal_(self.lora_A, std=1.0, a=-2.0, b=2.0)  # ViT-style: a normal cut at 2 std
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` (..., in) to (..., out) in the base's dtype."""
        # Scale the rank-r activation, the smallest tensor on the adapter path.
        down = F.linear(self.dropout(x), self.lora_A) * self.scaling
        return self.base(x) + F.linear(down, self.lora_B)


def _check_arguments(base: nn.Module, r: int, dropout: float) -> None:
    if not isinstance(base, nn.Linear):
        raise ValueError(f"LoRALinear adapts an nn.Linear, got {type(base).__name__}: pass the linear layer itself")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRALinear needs an integer rank r >= 1, got r={r!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRALinear needs dropout in [0, 1), got dropout={dropout!r}")
