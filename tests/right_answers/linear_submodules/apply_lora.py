from torch import nn

from katas.lora_linear import LoRALinear


def apply_lora(model, target_modules=("q_proj", "v_proj"), r=8, alpha=16.0, dropout=0.0):
    targets = list(target_modules)
    replaced = []
    # An adapter's base may be registered outside it too (enc.0 and block.q_proj one layer): skip it by identity.
    inside = {id(m) for a in model.modules() if isinstance(a, LoRALinear) for m in list(a.modules())[1:]}
    # A target inside another target (a layer a targeted nn.Linear subclass holds) ends inside that one's adapter,
    # whichever of their names is listed first: skip those too.
    matched = [
        m
        for n, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, nn.Linear) and id(m) not in inside and any(n == t or n.endswith("." + t) for t in targets)
    ]
    inside |= {
        id(inner) for outer in matched if not isinstance(outer, LoRALinear) for inner in list(outer.modules())[1:]
    }

    def visit(module: nn.Module, prefix: str) -> None:
        # Every name, not named_children(): a layer (or block) held twice is listed once there, and the
        # second name may be the one a target matches.
        for child_name, child in list(module._modules.items()):
            name = f"{prefix}.{child_name}" if prefix else child_name
            if child is None or id(child) in inside:
                continue
            if isinstance(child, LoRALinear):
                if any(name == t or name.endswith("." + t) for t in targets):
                    replaced.append(name)
                continue
            if isinstance(child, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
                setattr(module, child_name, LoRALinear(child, r, alpha, dropout))
                inside.add(id(child))
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
