"""fused_lora as one GEMM over the rows [W; A] forward and one over the columns [g, g_B] backward,
with the new-style setup_context, and factors kept as bias-free nn.Linear submodules."""

import torch
import torch.nn.functional as F
from torch import nn


class FusedLoRAFunction(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, bias, lora_A, lora_B, scaling):
        out_features = weight.shape[0]
        both = F.linear(x, torch.cat([weight, lora_A]))  # (..., out + r): base and down-projection in one pass
        y, down = both.split([out_features, lora_A.shape[0]], dim=-1)
        y = y + (down * scaling) @ lora_B.T
        return y if bias is None else y + bias

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, lora_A, lora_B, scaling = inputs
        ctx.save_for_backward(x, weight, lora_A, lora_B)
        ctx.scaling = scaling
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, lora_A, lora_B = ctx.saved_tensors
        g = grad_output.flatten(0, -2) if grad_output.dim() > 1 else grad_output.unsqueeze(0)
        rows = x.flatten(0, -2) if x.dim() > 1 else x.unsqueeze(0)
        g_B = scaling_times(g @ lora_B, ctx.scaling)
        grads = [None] * 6
        if ctx.needs_input_grad[0]:
            grads[0] = (torch.cat([g, g_B], dim=1) @ torch.cat([weight, lora_A])).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            grads[1] = g.T @ rows
        if ctx.needs_input_grad[2] and ctx.has_bias:
            grads[2] = g.sum(0)
        if ctx.needs_input_grad[3]:
            grads[3] = g_B.T @ rows
        if ctx.needs_input_grad[4]:
            grads[4] = g.T @ scaling_times(rows @ lora_A.T, ctx.scaling)
        return tuple(grads)


def scaling_times(tensor, scaling):
    return tensor * scaling


class FusedLoRALinear(nn.Module):
    def __init__(self, base, r=8, alpha=16.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError("base must be an nn.Linear")
        if not isinstance(r, int) or r <= 0:
            raise ValueError(f"r must be a positive integer, got {r}")
        self.base_layer = base
        for parameter in base.parameters():
            parameter.requires_grad = False
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.down = nn.Linear(base.in_features, r, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.up = nn.Linear(r, base.out_features, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        nn.init.zeros_(self.up.weight)

    def forward(self, x):
        base = self.base_layer
        return FusedLoRAFunction.apply(x, base.weight, base.bias, self.down.weight, self.up.weight, self.scaling)
