"""fused_lora with factors stored transposed, (in, r) and (r, out), in a ParameterDict; einsum for
every product, a once_differentiable backward, and the base's weight fetched through the module."""

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable


class FusedLoRAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scaling):
        ctx.save_for_backward(x, weight, lora_A, lora_B)
        ctx.scaling = scaling
        hidden = torch.einsum("...i,ri->...r", x, lora_A)
        y = torch.einsum("...i,oi->...o", x, weight) + scaling * torch.einsum("...r,or->...o", hidden, lora_B)
        if bias is not None:
            y += bias
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x, weight, lora_A, lora_B = ctx.saved_tensors
        need_x, need_weight, need_bias, need_A, need_B, _ = ctx.needs_input_grad
        s = ctx.scaling
        g_B = s * torch.einsum("...o,or->...r", grad_output, lora_B) if (need_x or need_A) else None
        grad_x = (
            (torch.einsum("...o,oi->...i", grad_output, weight) + torch.einsum("...r,ri->...i", g_B, lora_A))
            if need_x
            else None
        )
        grad_weight = torch.einsum("...o,...i->oi", grad_output, x) if need_weight else None
        grad_bias = grad_output.reshape(-1, grad_output.shape[-1]).sum(0) if need_bias else None
        grad_A = torch.einsum("...r,...i->ri", g_B, x) if need_A else None
        grad_B = (
            s * torch.einsum("...o,...r->or", grad_output, torch.einsum("...i,ri->...r", x, lora_A)) if need_B else None
        )
        return grad_x, grad_weight, grad_bias, grad_A, grad_B, None


class FusedLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError("FusedLoRALinear wraps an nn.Linear")
        if type(r) is not int or r < 1:
            raise ValueError("r must be an int of at least 1")
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.base = base
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        kind = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.factors = nn.ParameterDict(
            {
                "A_t": nn.Parameter(torch.randn(base.in_features, r, **kind) / math.sqrt(r)),
                "B_t": nn.Parameter(torch.zeros(r, base.out_features, **kind)),
            }
        )

    def forward(self, x):
        return FusedLoRAFunction.apply(
            x, self.base.weight, self.base.bias, self.factors["A_t"].T, self.factors["B_t"].T, self.scaling
        )
