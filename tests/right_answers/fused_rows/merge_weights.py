import torch
from torch import nn

from .lora_linear import LoRALinear


def to_linear(layer: LoRALinear) -> nn.Linear:
    base = layer.base
    with torch.no_grad():
        weight = base.weight.float() + (layer.B.float() @ layer.A.float()) * layer.scaling
        merged = nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        merged.weight.copy_(weight)
        if base.bias is not None:
            merged.bias.copy_(base.bias)
    return merged


def merge_weights(model: nn.Module) -> nn.Module:
    if isinstance(model, LoRALinear):
        return to_linear(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent, _, child = name.rpartition(".")
            model.get_submodule(parent).register_module(child, to_linear(module))
    return model
