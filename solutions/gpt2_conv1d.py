"""Reference answer to the `gpt2_conv1d` kata: LoRA on GPT-2's Conv1D layers, applied and merged."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .lora_linear import LoRALinear
from .merge_weights import merge_weights


class LoRAConv1D(nn.Module):
    r"""A frozen ``transformers`` ``Conv1D`` plus a trainable low-rank update.

    .. math::  y = x W + b + \tfrac{\alpha}{r}\, \mathrm{dropout}(x) A^\top B^\top

    ``Conv1D`` stores its weight ``W`` as (in, out) ("fan in, fan out") and computes ``x W + b``, so the
    update ``dW = (alpha / r) B A`` (out, in) is the same as for an ``nn.Linear``, and is added to the
    weight transposed when merging. ``A`` (r, in) starts Kaiming-uniform, ``B`` (out, r) at zero.

    Raises:
        ValueError: ``base`` is not a ``Conv1D``, ``r < 1``, or ``dropout`` is outside [0, 1).
    """

    def __init__(self, base: Conv1D, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, Conv1D):
            raise ValueError(f"LoRAConv1D adapts a transformers Conv1D, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRAConv1D needs an integer rank r >= 1, got r={r!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRAConv1D needs dropout in [0, 1), got dropout={dropout!r}")
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        in_features, out_features = base.weight.shape  # (in, out): Conv1D's nx, nf
        same_place = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, in_features, **same_place))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, **same_place))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` (..., in) to (..., out) in the base's dtype."""
        down = F.linear(self.dropout(x), self.lora_A) * self.scaling
        return self.base(x) + F.linear(down, self.lora_B)


def apply_lora_gpt2(
    model: nn.Module,
    target_modules: Iterable[str] = ("c_attn",),
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
) -> nn.Module:
    """Wrap, in place, every targeted ``Conv1D`` in a ``LoRAConv1D`` and every targeted ``nn.Linear`` in a
    ``LoRALinear``; freeze everything else. Targets match a qualified name exactly or by suffix ("." + target).

    Raises:
        ValueError: no ``Conv1D`` or ``nn.Linear`` of ``model`` matches ``target_modules``.
    """
    targets = (target_modules,) if isinstance(target_modules, str) else tuple(target_modules)
    adaptable = (Conv1D, nn.Linear, LoRAConv1D, LoRALinear)
    # An adapter's own base is never a target, under any name (a layer shared with another block is reached outside
    # its adapter too): layers inside adapters are told by identity, never by their names.
    adapters = (LoRAConv1D, LoRALinear)
    inside = {id(m) for a in model.modules() if isinstance(a, adapters) for m in list(a.modules())[1:]}
    matched = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, adaptable) and any(name == t or name.endswith("." + t) for t in targets)
    ]
    if not matched:
        raise ValueError(f"apply_lora_gpt2: no Conv1D or nn.Linear matches target_modules={targets}")
    for name, module in matched:
        if isinstance(module, adapters) or id(module) in inside:
            continue  # already adapted, or the base inside an adapter: never wrap twice
        wrapper = LoRAConv1D if isinstance(module, Conv1D) else LoRALinear
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, wrapper(module, r, alpha, dropout))
    # Only the factors train: a base unfrozen since an earlier call is frozen again, like the rest of the model.
    linear_factors = _linear_factor_names()
    factors = {id(p) for m in model.modules() if isinstance(m, LoRAConv1D) for p in (m.lora_A, m.lora_B)}
    factors |= {
        id(p)
        for m in model.modules()
        if isinstance(m, LoRALinear)
        for n, p in m.named_parameters()
        if n in linear_factors
    }
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in factors)
    return model


def _linear_factor_names() -> set[str]:
    """The names of a LoRALinear's factors inside it, whatever its layout: the parameters a fresh one trains."""
    with torch.random.fork_rng(devices=[]):  # its random init leaves the caller's random stream as it was
        fresh = LoRALinear(nn.Linear(2, 2), r=1, alpha=1.0)
    return {name for name, parameter in fresh.named_parameters() if parameter.requires_grad}


def merge_gpt2(model: nn.Module) -> nn.Module:
    """Replace, in place, every ``LoRAConv1D`` by a ``Conv1D`` holding ``W + dW^T`` and every ``LoRALinear``
    by an ``nn.Linear`` (through ``merge_weights``). A weight shared with another layer (GPT-2's ``lm_head``
    is tied to ``wte``) is copied first, so merging never changes the layer it is shared with. An adapter registered
    under several names is replaced under each.

    Returns ``model``, or the merged layer when ``model`` is a ``LoRAConv1D`` or a ``LoRALinear`` itself.
    """
    if isinstance(model, LoRAConv1D):
        return merged_conv1d(model)
    merged: dict[int, Conv1D] = {}  # one new layer per adapter, put under every name it is registered by
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if isinstance(module, LoRAConv1D):
            if id(module) not in merged:
                merged[id(module)] = merged_conv1d(module)
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child_name, merged[id(module)])
    _untie_adapted_weights(model)
    return merge_weights(model)


@torch.inference_mode(False)  # under the caller's inference_mode too: no inference tensor
@torch.no_grad()
def merged_conv1d(layer: LoRAConv1D) -> Conv1D:
    """The ``Conv1D`` computing what ``layer`` computes in eval mode, in the base's dtype and on its device."""
    weight, bias = layer.base.weight, layer.base.bias
    # Half-precision weights drift when the update is rounded before the sum: add in float32, round once.
    accumulate = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
    update = (layer.lora_B.to(accumulate) @ layer.lora_A.to(accumulate)) * layer.scaling  # (out, in)
    with torch.device("meta"):  # no throwaway allocation: both parameters are replaced
        merged = Conv1D(weight.shape[1], weight.shape[0])
    merged.weight = nn.Parameter((weight.to(accumulate) + update.T).to(weight.dtype), requires_grad=False)
    merged.bias = bias
    return merged


def _untie_adapted_weights(model: nn.Module) -> None:
    """Give every frozen weight inside a LoRALinear that another module shares a copy of its own."""
    owners: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        owners[id(parameter)] = owners.get(id(parameter), 0) + 1
    for adapter in [m for m in model.modules() if isinstance(m, LoRALinear)]:
        for base in adapter.modules():
            weight = getattr(base, "weight", None)
            frozen = isinstance(weight, nn.Parameter) and not weight.requires_grad
            if isinstance(base, nn.Linear) and frozen and owners.get(id(weight), 0) > 1:
                base.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
