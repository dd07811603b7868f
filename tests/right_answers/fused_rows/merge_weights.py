import torch
from torch import nn

from .lora_linear import LoRALinear


@torch.inference_mode(False)  # under the caller's inference_mode too: no inference tensor
def to_linear(layer: LoRALinear) -> nn.Linear:
    base = layer.base
    with torch.no_grad():
        wide = torch.float32 if base.weight.dtype in (torch.float16, torch.bfloat16) else base.weight.dtype
        weight = base.weight.to(wide) + (layer.B.to(wide) @ layer.A.to(wide)) * layer.scaling
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
    for name, module in list(model.named_modules(remove_duplicate=False)):  # aliases too
        if isinstance(module, LoRALinear):
            parent, _, child = name.rpartition(".")
            model.get_submodule(parent).register_module(child, to_linear(module))
    return model
