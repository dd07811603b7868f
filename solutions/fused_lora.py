"""Reference answer to the `fused_lora` kata: LoRA with a hand-written backward that wastes no pass."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class FusedLoRAFunction(torch.autograd.Function):
    r"""``y = x W^T + b + s (x A^T) B^T`` with its backward written by hand.

    With ``N`` rows of ``x`` (every batch dimension flattened), ``u = s x A^T`` (N, r) kept from
    forward and ``g = dL/dy`` (N, out), backward needs ``g_B = s g B`` (N, r) and then

    .. math::
        \partial x = g W + g_B A, \quad \partial A = g_B^\top x, \quad \partial B = g^\top u,
        \quad \partial W = g^\top x, \quad \partial b = \textstyle\sum_N g

    Autograd of the plain layer makes a full-size temporary for each path and adds them (one for
    ``y``, one for ``dL/dx``); here the rank-r products accumulate into the big GEMMs' results with
    ``addmm_``. A frozen base asks for neither ``dW`` (a GEMM as large as the forward's) nor ``db``,
    so they are computed only when ``ctx.needs_input_grad`` says so.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_A: torch.Tensor,
        lora_B: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        """Map ``x`` (..., in) to (..., out) with ``weight`` (out, in), ``bias`` (out,) or None,
        ``lora_A`` (r, in), ``lora_B`` (out, r) and the float ``scaling``."""
        rows = x.reshape(-1, x.shape[-1])  # a copy when x is non-contiguous: forward's own, not saved
        down = (rows @ lora_A.T).mul_(scaling)  # (N, r): the scaled rank-r activation u
        y = rows @ weight.T if bias is None else torch.addmm(bias, rows, weight.T)
        y.addmm_(down, lora_B.T)
        ctx.save_for_backward(x, weight, lora_A, lora_B, down)  # x itself, as given: no copy outlives forward
        ctx.scaling, ctx.x_shape = scaling, x.shape
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """Gradients for (x, weight, bias, lora_A, lora_B, scaling): None where none is needed."""
        x, weight, lora_A, lora_B, down = ctx.saved_tensors
        need_x, need_weight, need_bias, need_A, need_B, _ = ctx.needs_input_grad
        g = grad_output.reshape(-1, grad_output.shape[-1])  # reshape: y.sum() sends a stride-0 gradient
        rows = x.reshape(-1, x.shape[-1])  # flattened again: a copy, if any, lives only through backward
        grad_x = grad_weight = grad_bias = grad_A = grad_B = None
        if need_x or need_A:
            g_B = (g @ lora_B).mul_(ctx.scaling)  # (N, r)
            if need_x:
                grad_x = (g @ weight).addmm_(g_B, lora_A).reshape(ctx.x_shape)
            if need_A:
                grad_A = g_B.T @ rows
        if need_B:
            grad_B = g.T @ down
        if need_weight:
            grad_weight = g.T @ rows
        if need_bias:
            grad_bias = g.sum(0)
        return grad_x, grad_weight, grad_bias, grad_A, grad_B, None


class FusedLoRALinear(nn.Module):
    r"""A frozen ``nn.Linear`` plus a trainable low-rank update, computed by ``FusedLoRAFunction``.

    .. math::  y = x W^\top + b + \tfrac{\alpha}{r}\, x A^\top B^\top

    The layer of the ``lora_linear`` kata without dropout: dropout would give the two paths
    different inputs. ``A`` (r, in) starts Kaiming-uniform and ``B`` (out, r) at zero.

    Args:
        base: the layer to adapt. It is kept (never copied) and frozen.
        r: rank of the update, >= 1.
        alpha: numerator of the scaling ``alpha / r``.

    Raises:
        ValueError: ``base`` is not an ``nn.Linear`` or ``r`` is not an integer >= 1.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"FusedLoRALinear adapts an nn.Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"FusedLoRALinear needs an integer rank r >= 1, got r={r!r}")
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        same_place = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **same_place))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **same_place))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` (..., in) to (..., out) in the base's dtype."""
        return FusedLoRAFunction.apply(x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.scaling)
