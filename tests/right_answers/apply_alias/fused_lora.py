"""fused_lora called through a functional alias of the Function's apply, as flash-attn's
``flash_attn_func = FlashAttnFunc.apply`` does: the layer never spells ``FusedLoRAFunction.apply``."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class FusedLoRAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x, weight, bias, lora_A, lora_B, scaling):
        flat = x.reshape(-1, x.shape[-1])
        u = F.linear(flat, lora_A)  # (N, r)
        y = F.linear(flat, weight, bias)
        y.addmm_(u, lora_B.T, alpha=scaling)
        ctx.set_materialize_grads(False)  # a y that never reached the loss sends None
        ctx.save_for_backward(x, weight, lora_A, lora_B, u)
        ctx.scaling = scaling
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad_y):
        if grad_y is None:
            return (None,) * 6
        x, weight, lora_A, lora_B, u = ctx.saved_tensors
        want = ctx.needs_input_grad
        g = grad_y.reshape(-1, grad_y.shape[-1])
        flat = x.reshape(-1, x.shape[-1])
        grads = [None] * 6
        g_B = torch.mm(g, lora_B).mul_(ctx.scaling) if want[0] or want[3] else None
        if want[0]:
            grads[0] = torch.addmm(torch.mm(g, weight), g_B, lora_A).view(x.shape)
        if want[1]:
            grads[1] = torch.mm(g.T, flat)
        if want[2]:
            grads[2] = g.sum(dim=0)
        if want[3]:
            grads[3] = torch.mm(g_B.T, flat)
        if want[4]:
            grads[4] = torch.mm(g.T, u).mul_(ctx.scaling)
        return tuple(grads)


# The functional entry point: callers (the layer too) write fused_lora_linear(x, weight, bias, A, B, scaling).
fused_lora_linear = FusedLoRAFunction.apply


class FusedLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"base must be an nn.Linear, got {type(base).__name__}")
        if type(r) is not int or r < 1:
            raise ValueError(f"r must be an int >= 1, got {r!r}")
        self.base = base
        for parameter in base.parameters():
            parameter.requires_grad = False
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x):
        return fused_lora_linear(x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.scaling)
