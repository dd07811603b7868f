import torch

from katas.lora_linear import LoRALinear


@torch.no_grad()
def _fold(layer: LoRALinear):
    base = layer.base_layer
    delta = layer.lora_up.weight.float() @ layer.lora_down.weight.float() * layer.scaling
    base.weight.copy_(base.weight.float() + delta)
    return base


def merge_weights(model):
    if isinstance(model, LoRALinear):
        return _fold(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, _fold(child))
    return model
