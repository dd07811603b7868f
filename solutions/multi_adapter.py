"""Reference answer to the `multi_adapter` kata: one frozen nn.Linear with named adapters to switch between."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class MultiLoRALinear(nn.Module):
    r"""A frozen ``nn.Linear`` with any number of named LoRA adapters, one of them active at a time.

    .. math::  y = \mathrm{base}(x) + \tfrac{\alpha_a}{r_a}\, B_a A_a\, \mathrm{dropout}_a(x)

    for the active adapter ``a`` (just ``base(x)`` when none is active, when adapters are disabled, or when
    the active adapter is merged into the base's weight). Adapter ``n`` keeps ``A`` (r, in), ``B`` (out, r),
    its scaling and its dropout under its name; only the active adapter's factors are trainable.
    Switching follows peft's model-level rules: set_adapter and delete_adapter unmerge first, and
    disable_adapters is a context manager that restores the previous state on exit.
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"MultiLoRALinear adapts an nn.Linear, got {type(base).__name__}")
        self.base = base.requires_grad_(False)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self._active: str | None = None
        self._merged: list[str] = []
        self._disabled = False

    @property
    def active_adapter(self) -> str | None:
        """The name of the adapter that computes and trains, or None."""
        return self._active

    @property
    def merged_adapters(self) -> list[str]:
        """The adapters folded into the base's weight (a new list at every call: at most the active one)."""
        return list(self._merged)

    def add_adapter(self, name: str, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        """Add adapter ``name``: A Kaiming-uniform (r, in), B zeros (out, r), scaling alpha / r.

        It becomes the active adapter when none is active. Raises ValueError for a name already there,
        ``r < 1`` or ``dropout`` outside [0, 1), changing nothing.
        """
        if name in self.lora_A:
            raise ValueError(f"an adapter named {name!r} already exists (adapters: {self._names()})")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"add_adapter needs an integer rank r >= 1, got r={r!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"add_adapter needs dropout in [0, 1), got dropout={dropout!r}")
        weight = self.base.weight
        same_place = {"device": weight.device, "dtype": weight.dtype}
        self.lora_A[name] = nn.Parameter(torch.empty(r, self.base.in_features, **same_place))
        self.lora_B[name] = nn.Parameter(torch.zeros(self.base.out_features, r, **same_place))
        nn.init.kaiming_uniform_(self.lora_A[name], a=math.sqrt(5))
        self.lora_dropout[name] = nn.Dropout(dropout).train(self.training)  # in the layer's mode, as it is now
        self.scaling[name] = alpha / r
        if self._active is None:
            self._active = name
        self._refresh_trainable()

    def set_adapter(self, name: str) -> None:
        """Make ``name`` the active adapter, unmerging a merged layer first."""
        self._expect_known(name)
        if self._merged:
            self.unmerge()
        self._active = name
        self._refresh_trainable()

    @contextlib.contextmanager
    def disable_adapters(self) -> Iterator[None]:
        """Compute ``base(x)`` with the unmerged weight and nothing trainable inside the block; the state before
        returns on exit (even by an exception), except that the layer leaves it unmerged, even after a merge()
        inside that no forward undid."""
        if self._merged:
            self.unmerge()
        was_disabled, self._disabled = self._disabled, True
        self._refresh_trainable()
        try:
            yield
        finally:
            self._disabled = was_disabled
            if self._merged:
                self.unmerge()
            self._refresh_trainable()

    @torch.no_grad()
    def merge(self, safe: bool = False) -> None:
        """Fold the active adapter into the base's weight, in place; a merged or absent adapter adds nothing.

        With ``safe=True`` the merged weight is computed aside and checked finite first: ValueError, and
        the weight untouched, when it is not.
        """
        name = self._active
        if name is None or name in self._merged:
            return
        weight = self.base.weight
        merged = (weight.to(self._accumulation()) + self._delta(name)).to(weight.dtype)
        if safe and not torch.isfinite(merged).all():
            raise ValueError(f"merging adapter {name!r} gives a weight with NaN or inf: the adapter is broken")
        weight.copy_(merged)  # the very Parameter, changed in place
        self._merged.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract every merged adapter's update from the base's weight as it is now (a change made to it while
        merged stays); nothing to do on an unmerged layer."""
        weight = self.base.weight
        while self._merged:
            name = self._merged.pop()
            weight.copy_((weight.to(self._accumulation()) - self._delta(name)).to(weight.dtype))

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name``, unmerging it first if merged; deleting the active one leaves none active."""
        self._expect_known(name)
        if name in self._merged:
            self.unmerge()
        del self.lora_A[name], self.lora_B[name], self.lora_dropout[name], self.scaling[name]
        if self._active == name:
            self._active = None
        self._refresh_trainable()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` (..., in) to (..., out) in the base's dtype; inside disable_adapters() a merge() made there is
        undone first, as peft's forward does."""
        if self._disabled and self._merged:
            self.unmerge()
        name = self._active
        if name is None or self._disabled or self._merged:
            return self.base(x)
        down = F.linear(self.lora_dropout[name](x), self.lora_A[name]) * self.scaling[name]
        return self.base(x) + F.linear(down, self.lora_B[name])

    def _delta(self, name: str) -> torch.Tensor:
        """``scaling * B @ A`` of adapter ``name``, (out, in), in the accumulation dtype."""
        accumulate = self._accumulation()
        return (self.lora_B[name].to(accumulate) @ self.lora_A[name].to(accumulate)) * self.scaling[name]

    def _accumulation(self) -> torch.dtype:
        """float32 for half-precision weights (sum in float32, round once), else the weight's own dtype."""
        dtype = self.base.weight.dtype
        return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def _refresh_trainable(self) -> None:
        for name in self.lora_A:
            trains = name == self._active and not self._disabled
            self.lora_A[name].requires_grad_(trains)
            self.lora_B[name].requires_grad_(trains)

    def _names(self) -> str:
        return ", ".join(repr(name) for name in self.lora_A) or "none yet"

    def _expect_known(self, name: str) -> None:
        if name not in self.lora_A:
            raise ValueError(f"no adapter named {name!r}: the adapters are {self._names()}")
