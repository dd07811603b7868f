"""Kata `multi_adapter`: one frozen nn.Linear with named LoRA adapters, switched, merged and deleted safely.

Grade it with: pytest grader/test_multi_adapter.py (graded against peft's own LoRA layer where peft is installed)
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class MultiLoRALinear(nn.Module):
    r"""A frozen ``nn.Linear`` holding any number of named LoRA adapters, one of them active at a time,
    as peft's LoRA layer keeps them, switched by the rules of peft's model level (``PeftModel.set_adapter``),
    which are safer than its layer's.

    .. math::  y = \mathrm{base}(x) + \tfrac{\alpha_a}{r_a}\, B_a A_a\, \mathrm{dropout}_a(x)

    for the active adapter ``a``; ``y = base(x)`` when no adapter is active, inside ``disable_adapters()``,
    and when the active adapter is merged (its update is then in the base's weight).

    Spec:
        - ``base`` is kept as a submodule (the very object, never a copy), its weight and bias frozen.
          A new layer has no adapter: ``active_adapter`` is None, ``merged_adapters`` is empty, nothing
          is trainable and the layer computes ``base(x)``.
        - Each adapter is its own pair of factors, registered as parameters of the layer (so that
          ``parameters()``, ``.to()`` and optimizers see them) and kept as the same tensors from
          ``add_adapter`` to ``delete_adapter``: ``A`` (r, in) or (in, r), ``B`` (out, r) or (r, out),
          r * (in + out) numbers, on the base's device and in its dtype; raw ``nn.Parameter``s or bias-free
          ``nn.Linear`` submodules, names and containers are yours. It has its own scaling ``alpha / r``
          and its own dropout on its input (train mode only, as ``nn.Dropout``).
        - Only the active adapter computes and is trainable (``requires_grad``): the factors of every
          other adapter, and the base, are frozen. (While it is merged, the active adapter may be
          trainable or frozen; it trains again once unmerged.)
        - Adapter names are plain identifiers such as ``"sql"``, not the name of an attribute of ``nn.Module``
          or of a dict (e.g. ``"train"``, ``"update"``, ``"to"``), which peft's ModuleDicts refuse too. An
          unknown name given to ``set_adapter`` or ``delete_adapter`` is a ValueError whose message names
          every adapter the layer holds. Every ValueError leaves the layer as it was.

    Args:
        base: the linear layer to adapt, weight (out, in).

    Raises:
        ValueError: ``base`` is not an ``nn.Linear``.
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        raise NotImplementedError("kata multi_adapter: write MultiLoRALinear.__init__ (spec in its class docstring)")

    @property
    def active_adapter(self) -> str | None:
        """The name of the active adapter, or None when there is none."""
        raise NotImplementedError("kata multi_adapter: write MultiLoRALinear.active_adapter")

    @property
    def merged_adapters(self) -> list[str]:
        """The names of the adapters whose update is in the base's weight now, in the order merged:
        ``[]``, or ``[active_adapter]`` (set_adapter, disable_adapters and delete_adapter unmerge).

        A new list at every call: a caller that changes the list it got changes nothing in the layer."""
        raise NotImplementedError("kata multi_adapter: write MultiLoRALinear.merged_adapters")

    def add_adapter(self, name: str, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        """Add the adapter ``name`` with rank ``r``, scaling ``alpha / r`` and input dropout ``dropout``.

        ``B`` starts at zero and ``A`` random (Kaiming-uniform as ``nn.Linear`` does, or Gaussian), so the
        new adapter adds nothing yet. It becomes the active adapter (and trainable) when no adapter is
        active; otherwise the active adapter stays active and the new one is frozen. Any int ``r`` >= 1 is
        taken as given (1 too, and one above min(in, out)), and so is an int ``dropout`` (0). It never
        unmerges: on a merged layer the merged adapter stays merged, its update in the weight.

        Raises:
            ValueError: an adapter ``name`` is already there (it is kept as it was), ``r`` is not an
                int >= 1 (a float such as 4.0 is refused too), or ``dropout`` is outside [0, 1). Any real
                ``alpha`` is taken, an int, 0 or a negative one too.
        """
        raise NotImplementedError("kata multi_adapter: write MultiLoRALinear.add_adapter")

    def set_adapter(self, name: str) -> None:
        """Make ``name`` the active adapter: only it computes and is trainable from now on.

        On a merged layer it first unmerges (takes the merged adapter's own update back out of the
        weight), as ``PeftModel.set_adapter`` does, even when ``name`` is already the active adapter.

        Raises:
            ValueError: no adapter is called ``name``; the message names the adapters the layer holds.
        """
        raise NotImplementedError("kata multi_adapter: write MultiLoRALinear.set_adapter")

    def disable_adapters(self) -> contextlib.AbstractContextManager[None]:
        """A context manager (``with layer.disable_adapters(): ...``) under which the layer computes
        ``base(x)`` with the base's own weight and nothing is trainable.

        A merged layer is unmerged first (when entering, or at the latest at the first forward inside).
        Every forward inside the block computes ``base(x)`` with the base's own (unmerged) weight, whatever
        was called inside it: ``merge()`` inside the block may do nothing, raise ValueError, or merge, to be
        unmerged by the next forward (as peft does). On exit, even by an exception (which goes on
        propagating), the state before returns: the same active adapter, trainable as before, but not
        merged: after the block ``merged_adapters`` is ``[]`` and the weight is the unmerged ``W``, even
        when no forward ran inside.
        """
        raise NotImplementedError("kata multi_adapter: write MultiLoRALinear.disable_adapters")

    def merge(self, safe: bool = False) -> None:
        """Fold the active adapter into the base's weight, in place: the very ``nn.Parameter``
        ``base.weight`` (not a new one) then holds ``W + scaling * B @ A``, still frozen and with no grad
        history, and ``merged_adapters`` lists the adapter; the factors are left as they are. Forward on
        a merged layer computes the base alone, which gives the same output as before (to float rounding).
        The update comes from the factors, whatever the mode (train or eval) and the dropout.

        - The sum is accumulated in float32 for fp16/bf16 weights (``W``, ``A`` and ``B`` upcast) and
          rounded to the weight's dtype once; float32 and float64 weights are summed in their own dtype.
        - A second merge of a merged adapter adds nothing and raises nothing. With no active adapter, nothing changes
          (doing nothing or raising ValueError are both fine).
        - ``safe=True`` first computes the merged weight aside, in the weight's dtype, and checks that
          every entry is finite: if one is NaN or inf it raises ValueError and leaves the weight
          untouched (same values, same Parameter) and ``merged_adapters`` unchanged. ``safe=False``
          does not check.
        """
        raise NotImplementedError("kata multi_adapter: write MultiLoRALinear.merge")

    def unmerge(self) -> None:
        """Take the merged adapter's update back out of the base's weight as it is now: subtract
        ``scaling * B @ A`` from the weight it holds (float32 accumulation for fp16/bf16, as merge), in
        place, as peft does, so that a change made to ``base.weight`` while merged stays (restoring a copy
        saved by merge would throw it away); ``merged_adapters`` is then empty. On a layer with nothing
        merged it changes nothing (doing nothing, warning, or raising ValueError are all fine)."""
        raise NotImplementedError("kata multi_adapter: write MultiLoRALinear.unmerge")

    def delete_adapter(self, name: str) -> None:
        """Remove the adapter ``name``: its factors are no longer parameters of the layer.

        A merged adapter is unmerged first, so its update leaves the weight with it (peft's layer
        would leave it there for good). Deleting the active adapter leaves no adapter active (the
        layer computes ``base(x)`` until ``set_adapter`` or ``add_adapter`` makes one active);
        deleting another leaves the active one active.

        Raises:
            ValueError: no adapter is called ``name``; the message names the adapters the layer holds.
        """
        raise NotImplementedError("kata multi_adapter: write MultiLoRALinear.delete_adapter")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` of shape (..., in) to (..., out), in the base's dtype and on its device."""
        raise NotImplementedError("kata multi_adapter: write MultiLoRALinear.forward (spec in its class docstring)")
