import torch
from torch import nn

from katas.lora_linear import LoRALinear


@torch.no_grad()
def _fold(layer: LoRALinear):
    base = layer.base_layer
    wide = torch.float32 if base.weight.dtype in (torch.float16, torch.bfloat16) else base.weight.dtype
    delta = layer.lora_up.weight.to(wide) @ layer.lora_down.weight.to(wide) * layer.scaling
    # A new weight, not copy_: the old one may be tied to another layer, which must keep it.
    base.weight = nn.Parameter((base.weight.to(wide) + delta).to(base.weight.dtype), requires_grad=False)
    return base


def merge_weights(model):
    if isinstance(model, LoRALinear):
        return _fold(model)
    folded = {}  # an adapter registered under several names is folded once
    for module in list(model.modules()):
        # _modules, not named_children(): that lists a child held under two names of one parent once.
        for name, child in list(module._modules.items()):
            if isinstance(child, LoRALinear):
                if id(child) not in folded:
                    folded[id(child)] = _fold(child)
                setattr(module, name, folded[id(child)])
    return model
