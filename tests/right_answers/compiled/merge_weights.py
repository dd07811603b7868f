"""merge_weights for the compiled layout's LoRALinear (factors A, B), the fold itself compiled as well."""

from __future__ import annotations

import torch
from torch import nn

from .lora_linear import LoRALinear


@torch.compile(backend="eager", dynamic=True)
def folded(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """W + scaling B A, summed in float32 for half-precision weights, rounded once to W's dtype."""
    wide = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
    return (weight.to(wide) + scaling * (B.to(wide) @ A.to(wide))).to(weight.dtype)


@torch.inference_mode(False)  # under the caller's inference_mode too: no inference tensor
def plain(layer: LoRALinear) -> nn.Linear:
    base = layer.base
    with torch.no_grad():
        weight = folded(base.weight, layer.A, layer.B, layer.scaling)
    merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
    merged.weight = nn.Parameter(weight, requires_grad=False)
    merged.bias = base.bias
    return merged


def merge_weights(model: nn.Module) -> nn.Module:
    if isinstance(model, LoRALinear):
        return plain(model)
    for name, module in list(model.named_modules(remove_duplicate=False)):  # aliases too
        if isinstance(module, LoRALinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, plain(module))
    return model
