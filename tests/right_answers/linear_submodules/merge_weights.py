import torch
from torch import nn

from katas.lora_linear import LoRALinear


@torch.inference_mode(False)  # under the caller's inference_mode too: no inference tensor
@torch.no_grad()
def _fold(layer: LoRALinear, held_outside: set[int]):
    base = layer.base_layer
    wide = torch.float32 if base.weight.dtype in (torch.float16, torch.bfloat16) else base.weight.dtype
    delta = layer.lora_up.weight.to(wide) @ layer.lora_down.weight.to(wide) * layer.scaling
    # A new weight, not copy_: the old one may be tied to another layer, which must keep it.
    weight = nn.Parameter((base.weight.to(wide) + delta).to(base.weight.dtype), requires_grad=False)
    if id(base) in held_outside:  # the base is held outside its adapter too (or by another), where it keeps W
        base = nn.Linear(base.in_features, base.out_features, bias=False, device="meta")
        base.bias = layer.base_layer.bias
    base.weight = weight
    return base


def _outside_adapters(model) -> set[int]:
    """The ids of the modules of ``model`` reached without entering a LoRALinear."""
    reached, stack = set(), [model]
    while stack:
        module = stack.pop()
        if id(module) not in reached:
            reached.add(id(module))
            stack.extend(c for c in module._modules.values() if c is not None and not isinstance(c, LoRALinear))
    return reached


def merge_weights(model):
    if isinstance(model, LoRALinear):
        return _fold(model, set())
    held_outside, folded = _outside_adapters(model), {}  # an adapter registered under several names is folded once
    adapters = {id(m): m for m in model.modules() if isinstance(m, LoRALinear)}.values()
    bases = [id(adapter.base_layer) for adapter in adapters]
    held_outside |= {base for base in bases if bases.count(base) > 1}  # a base two adapters share keeps computing W
    for module in list(model.modules()):
        # _modules, not named_children(): that lists a child held under two names of one parent once.
        for name, child in list(module._modules.items()):
            if isinstance(child, LoRALinear):
                if id(child) not in folded:
                    folded[id(child)] = _fold(child, held_outside)
                setattr(module, name, folded[id(child)])
    return model
