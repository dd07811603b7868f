"""Kata `apply_lora`: put LoRA adapters on the named linear layers of a model.

Grade it with: pytest grader/test_apply_lora.py (needs a working LoRALinear first)
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .lora_linear import LoRALinear  # noqa: F401  (use the package's own LoRALinear)


def apply_lora(
    model: nn.Module,
    target_modules: Iterable[str] = ("q_proj", "v_proj"),
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
) -> nn.Module:
    """Replace, in place, every targeted ``nn.Linear`` of ``model`` by ``LoRALinear(layer, r, alpha, dropout)``.

    Spec:
        - A module is targeted when it is an ``nn.Linear`` (a subclass is one too) and one of its qualified
          names (a layer in a shared block or under an alias has several: all of them, as
          ``model.named_modules(remove_duplicate=False)`` lists them; one matching is enough) equals a target or
          ends with ``"." + target``, compared
          as strings: ``"fc1"`` never matches ``"fc10"``, ``"proj"`` never matches ``"q_proj"``,
          ``"0.q_proj"`` matches ``"layers.0.q_proj"`` but not ``"layers.10.q_proj"``, and no target is a
          pattern (``"fc*"``, ``"[qv]_proj"`` or ``"q_pro."`` name no layer).
        - The replacement wraps the original layer object (no copies) and is this package's
          own ``LoRALinear``. A layer held under several names is wrapped once: one adapter, put
          under one or more of those names, never two adapters around it.
        - Every other parameter of the model is frozen, whatever its name: afterwards only the
          adapters' factors are trainable, after every call (a backbone unfrozen in between is frozen again).
        - A layer that already is a ``LoRALinear`` is never wrapped again, nor is any layer inside
          one (its base, any layer within the base, and factors held as ``nn.Linear`` submodules): it stays
          the very same object, its factors keep their values and stay trainable (a call never freezes
          them; a factor you froze yourself between calls may stay frozen or be made trainable again: both
          are accepted). So a second call on an adapted model adapts just the new targets. (When the
          targets name only adapted layers, raising the "nothing matched" ValueError and returning the
          model as it is are both accepted.)
          Within one call too: a target inside another target (a layer that a targeted ``nn.Linear``
          subclass holds) ends inside the outer one's adapter, so only the outer one is wrapped.
        - Returns ``model`` itself.

    Raises:
        ValueError: nothing matched (on a model adapted before, too); the message names the targets.
    """
    raise NotImplementedError("kata apply_lora: write apply_lora (spec in its docstring)")
