"""A right answer to the `qlora` kata: NF4Linear decodes bytes through a module-level table made at import."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .nf4 import nf4_code_book, quantize_nf4

BLOCK_SIZE = 64
# Made once at import, shared by every layer: the 16 NF4 values, and the pair of values each of the 256 bytes encodes
# (high nibble first), so that a byte decodes in one lookup (bitsandbytes keeps such tables in its kernels).
CODE_BOOK = nf4_code_book()
BYTE_VALUES = torch.stack([CODE_BOOK.repeat_interleave(16), CODE_BOOK.repeat(16)], dim=1)  # (256, 2) float32


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is kept only as NF4 codes and block absmaxes (two buffers).

    The forward dequantizes the weight in the input's dtype and applies ``F.linear``; nothing holds the
    full-precision weight, so a 4-bit base costs half a byte per weight plus 4 bytes per block of 64.

    Raises:
        ValueError: ``base`` is not an ``nn.Linear``.
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"NF4Linear quantizes an nn.Linear, got {type(base).__name__}")
        self.in_features, self.out_features = base.in_features, base.out_features
        packed, absmax = quantize_nf4(base.weight.detach(), BLOCK_SIZE)
        self.register_buffer("packed", packed)
        self.register_buffer("absmax", absmax)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach(), requires_grad=False)

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The dequantized (out, in) weight in ``dtype``."""
        n = self.out_features * self.in_features
        table = BYTE_VALUES.to(self.packed.device)
        values = table[self.packed.reshape(-1).long()].reshape(-1)[:n]  # code values, two per byte, in order
        scale = self.absmax.repeat_interleave(BLOCK_SIZE)[:n]
        return (values * scale).reshape(self.out_features, self.in_features).to(dtype)  # float32, rounded once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out), in x's dtype."""
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight(x.dtype), bias)


class QLoRALinear(nn.Module):
    r"""LoRA over an NF4 base: ``y = NF4Linear(base)(x) + (alpha / r) B A dropout(x)``.

    ``A`` (r, in) starts Kaiming-uniform and ``B`` (out, r) at zero, both in the base weight's dtype; they
    are the only trainable tensors.

    Raises:
        ValueError: ``base`` is not an ``nn.Linear``, ``r < 1``, or ``dropout`` is outside [0, 1).
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"QLoRALinear adapts an nn.Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"QLoRALinear needs an integer rank r >= 1, got r={r!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"QLoRALinear needs dropout in [0, 1), got dropout={dropout!r}")
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        same_place = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **same_place))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **same_place))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.base = NF4Linear(base)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out), in the base's dtype."""
        down = F.linear(self.dropout(x), self.lora_A) * self.scaling
        return self.base(x) + F.linear(down, self.lora_B)


def apply_qlora(
    model: nn.Module,
    target_modules: Iterable[str] = ("q_proj", "v_proj"),
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    skip: Iterable[str] = ("lm_head",),
) -> nn.Module:
    """Quantize every ``nn.Linear`` of ``model`` not in ``skip`` to NF4, in place, with LoRA on the targeted ones.

    Names match as in apply_lora: equal to a name or ending with "." + name; a layer held under several names
    matches when one of them does, and is replaced by one layer under all of them. Everything but the factors is
    frozen.

    Raises:
        ValueError: no ``nn.Linear`` outside ``skip`` matches ``target_modules``.
    """
    targets = _names(target_modules)
    skipped = _names(skip)
    held: dict[int, tuple[nn.Module, list[str]]] = {}  # a shared layer is held under several names: one entry
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.Linear):
            held.setdefault(id(module), (module, []))[1].append(name)
    linears = [(names, module) for module, names in held.values() if not _matches(names, skipped)]
    if not any(_matches(names, targets) for names, _ in linears):
        raise ValueError(f"apply_qlora: no nn.Linear outside skip={skipped} matches target_modules={targets}")
    for names, module in linears:
        layer = QLoRALinear(module, r, alpha, dropout) if _matches(names, targets) else NF4Linear(module)
        for name in names:  # one new layer under every name of the old one
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)
    adapters = {id(p) for m in model.modules() if isinstance(m, QLoRALinear) for p in (m.lora_A, m.lora_B)}
    for parameter in model.parameters():
        if id(parameter) not in adapters:
            parameter.requires_grad_(False)
    return model


def _names(names: Iterable[str] | str) -> tuple[str, ...]:
    return (names,) if isinstance(names, str) else tuple(names)


def _matches(names: list[str], patterns: tuple[str, ...]) -> bool:
    return any(name == n or name.endswith("." + n) for name in names for n in patterns)
