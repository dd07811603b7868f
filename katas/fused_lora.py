"""Kata `fused_lora`: a LoRA linear layer with its backward written by hand, wasting no pass.

The plain LoRALinear leaves the backward to autograd, which builds a full-size temporary for each
path (base and adapter) and adds them, in forward (y) and again in backward (dL/dx). An interviewer's
"now make it fast" wants the rank-r products accumulated into the big matrix products instead, and
no gradient computed that the step does not need.

Grade it with: pytest grader/test_fused_lora.py
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FusedLoRAFunction(torch.autograd.Function):
    r"""``y = x W^T + b + scaling (x A^T) B^T``, forward and backward written by hand.

    Spec:
        - A subclass of ``torch.autograd.Function``, called as
          ``FusedLoRAFunction.apply(x, weight, bias, lora_A, lora_B, scaling)`` with
          ``x`` (..., in) of any number of batch dimensions, contiguous or not; ``weight`` (out, in);
          ``bias`` (out,) or None; ``lora_A`` (r, in); ``lora_B`` (out, r); ``scaling`` a Python float, any
          (0, as alpha 0 gives, and negative too).
          The tensors share one dtype and one device (mixed dtypes are the caller's to cast, as for ``F.linear``).
        - Returns ``y`` (..., out) in x's dtype and on its device; changes none of its inputs.
        - ``backward`` returns one gradient per input of forward, in order, each shaped like that
          input: a tensor for every input ``ctx.needs_input_grad`` marks (zeros where none flows, as to the
          factors at scaling 0), None for the others (and
          None for ``scaling``). A frozen base needs no gradient of ``weight``: computing it anyway
          doubles the step's matrix work. The gradient it receives may be non-contiguous (that of
          ``y.sum()`` has stride 0).
        - Exact in float64: ``torch.autograd.gradcheck`` passes with every tensor input requiring grad.
        - Matrix work of one forward + backward with a frozen base: that of the frozen layer alone
          (x W^T and g W, 4 N in out flops for N rows of x) plus O(N r (in + out)) for the adapter.
          Build on the identities (g = dL/dy, u = scaling x A^T, g_B = scaling g B):
          ``dL/dx = g W + g_B A``, ``dL/dA = g_B^T x``, ``dL/dB = g^T u``.

    Ideas: one GEMM over the rows [W; A] computes base and down-projection in one pass over x;
    ``torch.addmm`` / ``Tensor.addmm_`` accumulate a rank-r product into an existing result instead
    of adding a second full-size tensor.
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
        """Map ``x`` (..., in) to (..., out); save for backward only what backward needs (the inputs themselves:
        flattening a non-contiguous ``x`` makes a copy)."""
        raise NotImplementedError("kata fused_lora: write FusedLoRAFunction.forward (spec in its class docstring)")

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """Six gradients, for (x, weight, bias, lora_A, lora_B, scaling); ``grad_output`` is (..., out)."""
        raise NotImplementedError("kata fused_lora: write FusedLoRAFunction.backward (spec in its class docstring)")


class FusedLoRALinear(nn.Module):
    r"""A frozen ``nn.Linear`` plus a trainable low-rank update, computed by ``FusedLoRAFunction``.

    .. math::  y = \mathrm{base}(x) + \tfrac{\alpha}{r}\, B A x

    Spec (the ``lora_linear`` kata's layer, without dropout):
        - ``base`` is kept as a submodule, the very object passed in, with every parameter frozen.
        - Attributes ``r``, ``alpha`` and ``scaling == alpha / r``.
        - Exactly two trainable tensors, the factors, r * (in + out) numbers on the base's device
          and in its dtype: ``A`` (r, in) random (Kaiming-uniform as ``nn.Linear(in, r)`` draws its
          weight, within 1/sqrt(in), or Gaussian) and ``B`` (out, r) zeros, so that the layer first
          computes exactly ``base(x)``. Names and storage layout are yours, as long as forward hands
          FusedLoRAFunction A as (r, in) and B as (out, r).
        - ``forward`` calls ``FusedLoRAFunction.apply``: the grader checks the layer runs through it.

    The arguments may be given by position or by keyword: ``FusedLoRALinear(layer, 8, 16.0)``.

    Args:
        base: the linear layer to adapt, weight (out, in).
        r: rank of the update.
        alpha: numerator of the scaling ``alpha / r``: any number, 0 and negative too.

    Raises:
        ValueError: ``base`` is not an ``nn.Linear`` (an ``nn.Embedding`` or GPT-2's Conv1D, whose weights are
            2-D too, is not), or ``r`` is not an integer >= 1 (None, "4" and 2.0 are not; a Python int is what is
            graded: a numpy or 0-d torch integer may be taken or refused).
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        raise NotImplementedError("kata fused_lora: write FusedLoRALinear.__init__ (spec in its class docstring)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` of shape (..., in), in the base's dtype and on its device, to (..., out) in the same."""
        raise NotImplementedError("kata fused_lora: write FusedLoRALinear.forward (spec in its class docstring)")
