from torch import nn

from katas.lora_linear import LoRALinear


def apply_lora(model, target_modules=("q_proj", "v_proj"), r=8, alpha=16.0, dropout=0.0):
    targets = list(target_modules)
    replaced = []

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            if isinstance(child, LoRALinear):
                if any(name == t or name.endswith("." + t) for t in targets):
                    replaced.append(name)
                continue
            if isinstance(child, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
                setattr(module, child_name, LoRALinear(child, r, alpha, dropout))
                replaced.append(name)
            else:
                visit(child, name)

    visit(model, "")
    if not replaced:
        raise ValueError(f"no layer matched {targets}")
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.lora_down.requires_grad_(True)
            module.lora_up.requires_grad_(True)
    return model
