"""Reference answer to the `apply_lora` kata: put LoRA adapters on the named linear layers of a model."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .lora_linear import LoRALinear


def apply_lora(
    model: nn.Module,
    target_modules: Iterable[str] = ("q_proj", "v_proj"),
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
) -> nn.Module:
    """Replace, in place, every targeted ``nn.Linear`` of ``model`` by a ``LoRALinear``; only the factors train.

    A module is targeted when one of its qualified names equals a target or ends with ``"." + target``
    (``"fc1"`` never matches ``"fc10"``). Layers that already are ``LoRALinear`` are left as they are.

    Raises:
        ValueError: no ``nn.Linear`` (nor ``LoRALinear``) of ``model`` matches ``target_modules``.
    """
    targets = (target_modules,) if isinstance(target_modules, str) else tuple(target_modules)
    # An adapter's own base (and factors) are never targets: wrapping them would nest adapters. A layer under several
    # names (a shared block, an alias) is targeted when any of them matches.
    inside = {id(m) for a in model.modules() if isinstance(a, LoRALinear) for m in list(a.modules())[1:]}
    matched = [
        (name, module)
        for name, module in model.named_modules(remove_duplicate=False)
        if isinstance(module, (nn.Linear, LoRALinear)) and id(module) not in inside and _is_target(name, targets)
    ]
    # A target inside another (a linear that a targeted nn.Linear subclass holds) ends up inside that one's adapter.
    held = {id(inner) for _, outer in matched if isinstance(outer, nn.Linear) for inner in list(outer.modules())[1:]}
    matched = [(name, module) for name, module in matched if id(module) not in held]
    if not matched:
        linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        raise ValueError(
            f"apply_lora: no nn.Linear matches target_modules={targets}; "
            f"the model's linear layers are {linear_names[:8]}"
        )
    adapters: dict[int, LoRALinear] = {}  # one adapter per layer, put under each of its matching names
    for name, module in matched:
        if isinstance(module, nn.Linear):
            parent_name, _, child_name = name.rpartition(".")
            if id(module) not in adapters:
                adapters[id(module)] = LoRALinear(module, r, alpha, dropout)
            setattr(model.get_submodule(parent_name), child_name, adapters[id(module)])
    # Only the factors train: a base unfrozen since an earlier call is frozen again, like the rest of the model.
    trained = _factor_names()
    factors = {
        id(p) for m in model.modules() if isinstance(m, LoRALinear) for n, p in m.named_parameters() if n in trained
    }
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in factors)
    return model


def _factor_names() -> set[str]:
    """The names of a LoRALinear's factors inside it, whatever its layout: the parameters a fresh one trains."""
    with torch.random.fork_rng(devices=[]):  # its random init leaves the caller's random stream as it was
        fresh = LoRALinear(nn.Linear(2, 2), r=1, alpha=1.0)
    return {name for name, parameter in fresh.named_parameters() if parameter.requires_grad}


def _is_target(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == target or name.endswith("." + target) for target in targets)
