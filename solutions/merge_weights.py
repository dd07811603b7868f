"""Reference answer to the `merge_weights` kata: fold LoRA updates back into plain linear layers."""

from __future__ import annotations

import torch
from torch import nn

from .lora_linear import LoRALinear


def merge_weights(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` in ``model`` by an ``nn.Linear`` holding ``W + dW``, in place.

    Returns ``model``, or the new ``nn.Linear`` when ``model`` is a ``LoRALinear`` itself.
    """
    if isinstance(model, LoRALinear):
        return merged_linear(model)
    merged: dict[int, nn.Linear] = {}  # one new layer per adapter, put under every name it is registered by
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if isinstance(module, LoRALinear):
            parent_name, _, child_name = name.rpartition(".")
            if id(module) not in merged:
                merged[id(module)] = merged_linear(module)
            setattr(model.get_submodule(parent_name), child_name, merged[id(module)])
    return model


@torch.inference_mode(False)  # under the caller's inference_mode too: no inference tensor
@torch.no_grad()
def merged_linear(layer: LoRALinear) -> nn.Linear:
    """The ``nn.Linear`` computing what ``layer`` computes in eval mode, in the base's dtype and device."""
    base = layer.base
    weight = base.weight
    # Half-precision weights drift when the update is rounded before the sum: add in float32, round once.
    accumulate = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
    update = (layer.lora_B.to(accumulate) @ layer.lora_A.to(accumulate)) * layer.scaling
    merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
    merged.weight = nn.Parameter((weight.to(accumulate) + update).to(weight.dtype), requires_grad=False)
    if base.bias is not None:
        merged.bias = base.bias
    return merged
