"""Kata `qlora`: LoRA over a base whose weights live only in NF4 (Dettmers et al. 2023, "QLoRA").

Build on the `nf4` kata: ``from .nf4 import dequantize_nf4, quantize_nf4`` (its checks come first).
Grade it with: pytest grader/test_qlora.py
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class NF4Linear(nn.Module):
    """A frozen linear layer that keeps its weight only in NF4.

    Spec:
        - ``base`` is an ``nn.Linear`` with weight (out, in) in float32, float16 or bfloat16. Its weight is quantized
          with ``quantize_nf4(base.weight, 64)`` (blocks of 64) and kept only as two registered persistent buffers
          (``register_buffer``'s default, so in ``state_dict()``: another layer given this one's state_dict by
          ``load_state_dict`` computes with this one's weight): the packed uint8 codes and the float32 absmax. No
          full-precision copy is kept anywhere: no parameter, buffer, attribute, closure, cache (``functools.lru_cache``
          included) or module-level variable holds the weight or a copy of it, and nothing keeps a reference to ``base``
          or to its weight (an autograd graph would, too). The memory of every tensor the layer keeps alive counts whole
          (a view keeps all of its storage): at most ceil(n / 2) bytes of codes, 4 bytes per block of 64, the bias, and
          small constant tensors (a copy of the code book, say) of 2 KiB in all; a constant tensor a module-level name
          holds (a decoding table made at import, one for every layer) is no layer's.
        - The bias is kept as it was (values and dtype; the very parameter is fine), frozen; None stays None.
        - Attributes ``in_features`` and ``out_features``. The layer has no trainable parameter.
        - ``forward(x)``, x (..., in) in any of the three float dtypes: ``F.linear(x, W, b)`` where ``W`` is the
          weight dequantized (``dequantize_nf4``) in x's dtype, so rounded to x's dtype before the product (as
          bitsandbytes' compute_dtype: computing in float32 and casting the output is not the same), and ``b`` the
          bias in x's dtype; the output is (..., out) in x's dtype. Gradients flow to x.

    Raises:
        ValueError: ``base`` is not an ``nn.Linear``.
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        raise NotImplementedError("kata qlora: write NF4Linear.__init__ (spec in its class docstring)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("kata qlora: write NF4Linear.forward (spec in its class docstring)")


class QLoRALinear(nn.Module):
    r"""LoRA over an NF4 base: ``y = NF4Linear(base)(x) + (alpha / r) B A dropout(x)``.

    Spec: the contract of the `lora_linear` kata's ``LoRALinear`` except that the base is stored quantized:
        - The base becomes an ``NF4Linear`` submodule (so, again, no full-precision weight anywhere). Its
          ``state_dict()`` holds the factors and the NF4 buffers: loaded into another layer, it makes that one
          compute this one's output.
        - Attributes ``r``, ``alpha`` and ``scaling == alpha / r``.
        - Exactly two trainable tensors, the factors, r * (in + out) numbers, in the base weight's dtype and on
          its device: ``A`` (r, in) or (in, r), Kaiming-uniform or Gaussian; ``B`` (out, r) or (r, out), zeros.
          The update is ``dW = scaling * B @ A``.
        - At construction the layer computes exactly ``NF4Linear(base)(x)``.
        - ``dropout`` zeroes inputs of the adapter branch only, in train mode only (``nn.Dropout``).
        - ``forward(x)``, x (..., in) in the base's dtype: (..., out) in that dtype, the base's output
          ``NF4Linear(base)(x)`` plus the adapter's share, in train and eval mode and every grad mode (the update
          is not merged into the dequantized weight: rounded to x's dtype, that drops an update smaller than the
          weight's rounding). Gradients reach A, B and x only (the factors' zeros at alpha 0, not None: alpha
          is any number, 0 and negative too); training never changes the quantized buffers.

    Raises:
        ValueError: ``base`` is not an ``nn.Linear``, ``r < 1``, or ``dropout`` outside [0, 1), before anything
            changes: the refused call leaves ``base`` as it was (values, ``requires_grad``). A Python int r is what
            is graded: a numpy or 0-d torch integer may be taken or refused.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        raise NotImplementedError("kata qlora: write QLoRALinear.__init__ (spec in its class docstring)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("kata qlora: write QLoRALinear.forward (spec in its class docstring)")


def apply_qlora(
    model: nn.Module,
    target_modules: Iterable[str] = ("q_proj", "v_proj"),
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    skip: Iterable[str] = ("lm_head",),
) -> nn.Module:
    """Quantize ``model``'s linear layers to NF4 in place and put LoRA adapters on the targeted ones.

    Spec:
        - Names match as in the `apply_lora` kata: a layer matches a list of names when its qualified name
          equals one of them or ends with "." + one of them (``fc1`` is not ``fc10``); a plain string is one name.
          ``skip`` matches the same way (``"proj"`` skips ``proj``, not ``q_proj``; ``"layers.1.q_proj"`` works).
          Both may be any iterable of names, a generator too (read it once).
        - Every ``nn.Linear`` (a subclass of it too) that matches ``skip`` is left as it is (full precision), even
          when targeted. A layer held under several names (a shared block, an alias) is one layer: it matches when
          any of its names does, and is replaced by one new layer under all of them.
        - Every other ``nn.Linear`` that matches ``target_modules`` becomes ``QLoRALinear(layer, r, alpha,
          dropout)`` (with the r, alpha and dropout given), and every remaining ``nn.Linear`` becomes
          ``NF4Linear(layer)``, in place.
        - Everything but the adapters' factors is frozen (``requires_grad`` False); nothing else changes
          (embeddings, norms and skipped layers keep their values, dtypes and objects: a bfloat16 or float16
          model stays in its dtype; every module that stays keeps its train/eval mode; the new layers' train/eval
          mode is the implementation's choice).
        - Returns ``model`` itself.

    Raises:
        ValueError: no ``nn.Linear`` outside ``skip`` matches ``target_modules``, before anything changes: the
            refused call leaves ``model`` as it was (no layer quantized or replaced, nothing frozen).
    """
    raise NotImplementedError("kata qlora: write apply_qlora (spec in its docstring)")
