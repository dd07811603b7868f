"""Kata `lora_linear`: a LoRA adapter around a frozen nn.Linear (Hu et al. 2021, "LoRA").

Grade it with: pytest grader/test_lora_linear.py
"""

from __future__ import annotations

import torch
from torch import nn


class LoRALinear(nn.Module):
    r"""A frozen ``nn.Linear`` plus a trainable low-rank update.

    .. math::  y = \mathrm{base}(x) + \tfrac{\alpha}{r}\, B A\, \mathrm{dropout}(x)

    Spec:
        - ``base`` is kept as a submodule: the very object passed in, never a copy. Every
          parameter of it (weight and bias) is frozen (``requires_grad`` False).
        - Attributes ``r``, ``alpha`` and ``scaling == alpha / r``.
        - Exactly two trainable tensors, the low-rank factors, r * (in_features + out_features)
          numbers in all, created on the base's device and in its dtype:
          ``A`` (r, in) or (in, r), and ``B`` (out, r) or (r, out). Raw ``nn.Parameter`` or
          bias-free ``nn.Linear`` submodules are both fine; the names are yours.
        - The update is ``dW = scaling * B @ A``, shape (out, in), rank <= r.
        - At construction the layer computes exactly ``base(x)``: ``B`` is zeros and ``A`` is
          random, a fresh draw from torch's RNG for every layer (Kaiming-uniform as ``nn.Linear`` does,
          or Gaussian).
        - ``dropout`` zeroes inputs of the adapter branch only (never the base path, nor the
          caller's ``x`` in place), and only in train mode, as ``nn.Dropout`` does (survivors scaled
          by 1 / (1 - p)): the LoRALinear's own mode decides, with grad on or off, whatever the
          base's mode.

    ``forward`` takes x of any number of batch dimensions (none too), contiguous or not, in any float
    dtype of the base, with grad mode on or off, and computes with the current values of the base and
    the factors (nothing cached from an earlier call). A factor the caller froze (``requires_grad_(False)``,
    one or both) still adds its share to y and to the gradient of x. The arguments may be given by position or by
    keyword: ``LoRALinear(layer, 8, 16.0)``.

    Args:
        base: the linear layer to adapt, weight (out, in).
        r: rank of the update.
        alpha: numerator of the scaling ``alpha / r``.
        dropout: dropout probability on the adapter branch's input.

    Raises:
        ValueError: ``base`` is not an ``nn.Linear``, ``r < 1``, or ``dropout`` outside [0, 1).
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        raise NotImplementedError("kata lora_linear: write LoRALinear.__init__ (spec in its class docstring)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` of shape (..., in) to (..., out), in the base's dtype and on its device."""
        raise NotImplementedError("kata lora_linear: write LoRALinear.forward (spec in its class docstring)")
