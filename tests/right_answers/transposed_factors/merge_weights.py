import torch
from torch import nn

from .lora_linear import LoRALinear


@torch.inference_mode(False)  # under the caller's inference_mode too: no inference tensor
def _merged(layer):
    base = layer.linear
    new = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None).to(base.weight.device)
    new = new.to(base.weight.dtype)
    with torch.no_grad():
        wide = torch.float32 if base.weight.dtype in (torch.float16, torch.bfloat16) else base.weight.dtype
        delta = (layer.adapter["down"].to(wide) @ layer.adapter["up"].to(wide)).T * (layer.alpha / layer.r)
        new.weight.copy_(base.weight.to(wide) + delta)
        if base.bias is not None:
            new.bias.copy_(base.bias)
    return new


def merge_weights(model):
    if isinstance(model, LoRALinear):
        return _merged(model)
    names = [name for name, module in model.named_modules(remove_duplicate=False) if isinstance(module, LoRALinear)]
    for name in names:
        *path, last = name.split(".")
        parent = model
        for part in path:
            parent = getattr(parent, part)
        if isinstance(getattr(parent, last), LoRALinear):  # a shared parent's child may be merged already
            setattr(parent, last, _merged(getattr(parent, last)))
    return model
