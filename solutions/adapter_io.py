"""Reference answer to the `adapter_io` kata: save LoRA adapters in peft's format, and load them back."""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .gpt2_conv1d import LoRAConv1D
from .lora_linear import LoRALinear

CONFIG, WEIGHTS, PREFIX = "adapter_config.json", "adapter_model.safetensors", "base_model.model."
ADAPTERS = (LoRALinear, LoRAConv1D)


def save_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write ``model``'s LoRA adapters to ``directory`` (created if needed) as peft's ``save_pretrained`` would:
    ``adapter_config.json`` and ``adapter_model.safetensors`` with each layer's A (r, in) and B (out, r).

    Raises:
        ValueError: the model holds no adapter, or its adapters disagree on r or alpha.
    """
    layers = adapters(model)
    if not layers:
        raise ValueError("save_adapter: the model holds no LoRALinear or LoRAConv1D: nothing to save")
    settings = {(layer.r, float(layer.alpha)) for layer in layers.values()}
    if len(settings) > 1:
        raise ValueError(f"save_adapter: the adapters disagree on (r, alpha): {sorted(settings)}; peft's file has one")
    ((r, alpha),) = settings
    tensors = {}
    for name, layer in layers.items():
        A, B = factor_views(layer)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = A.detach().contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = B.detach().contiguous()
    config = {
        "peft_type": "LORA",
        "task_type": None,  # a task type (CAUSAL_LM...) makes peft wrap the model in a class a plain model cannot serve
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": _targets(model, sorted(layers)),
        "fan_in_fan_out": any(isinstance(layer, LoRAConv1D) for layer in layers.values()),
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, directory / WEIGHTS, metadata={"format": "pt"})
    return directory


def _targets(model: nn.Module, names: list[str]) -> list[str] | str:
    """The adapted layers' qualified names as peft's target_modules: the list where peft's suffix rule matches
    them alone, else a regex of exactly these names (peft fullmatches a str against each qualified name). Any
    other module counts: peft adapts an nn.Embedding or a Conv2d a list entry names too, and refuses a kind it
    cannot adapt. The plain model holds each adapted layer's own modules too (a layer an nn.Linear subclass holds),
    under the adapted layer's name: "mlp.up_proj.gate" for the adapter's "mlp.up_proj.base.gate"."""
    inside = tuple(name + "." for name in names)  # an adapter's own parts: no module of the plain model
    modules = {name for name, _ in model.named_modules()}
    others = {name for name in modules - set(names) if not name.startswith(inside)}
    bases = {name: _base(model.get_submodule(name)) for name in names}
    others |= {f"{name}.{inner}" for name, base in bases.items() for inner, _ in base.named_modules() if inner}
    if not any(other.endswith("." + name) for other in others for name in names):
        return names
    return "|".join(re.escape(name) for name in names)


def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Put the adapters saved in ``directory`` (by ``save_adapter`` or peft's ``save_pretrained``) on ``model``,
    in place, and load their factors. Everything is checked before the model is touched.

    Raises:
        ValueError: an unsupported config, a tensor the model has no place for, an adapted layer without its
            tensors, or a tensor of the wrong shape.
    """
    directory = Path(directory)
    config = json.loads((directory / CONFIG).read_text())
    _check_config(config)
    tensors = load_file(directory / WEIGHTS)
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    targets = _targeted(model, config["target_modules"])
    expected = {}
    for name, module in targets.items():
        in_features, out_features = _dimensions(module)
        expected[f"{PREFIX}{name}.lora_A.weight"] = (r, in_features)
        expected[f"{PREFIX}{name}.lora_B.weight"] = (out_features, r)
    unplaced = sorted(tensors.keys() - expected.keys())
    if unplaced:
        raise ValueError(f"load_adapter: the model has no place for the tensor {unplaced[0]} ({len(unplaced)} in all)")
    missing = sorted(expected.keys() - tensors.keys())
    if missing:
        raise ValueError(f"load_adapter: {WEIGHTS} has no tensor {missing[0]} for an adapted layer")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"load_adapter: {key} is {tuple(tensors[key].shape)} in the file, the model needs {shape}")
    own = {module: module.training for layer in targets.values() for module in layer.modules()}
    modes = {name: module.training for name, module in targets.items()}
    _wrap(model, targets, r=r, alpha=alpha, dropout=float(config.get("lora_dropout") or 0.0))
    for name, training in modes.items():
        model.get_submodule(name).train(training)  # a new layer takes the mode of the one it replaces
    for module, training in own.items():
        module.training = training  # the replaced layer and its own children keep theirs, which train() set too
    with torch.no_grad():
        for name in targets:
            A, B = factor_views(model.get_submodule(name))
            A.copy_(tensors[f"{PREFIX}{name}.lora_A.weight"])
            B.copy_(tensors[f"{PREFIX}{name}.lora_B.weight"])
    return model


def _wrap(model: nn.Module, targets: dict[str, nn.Module], r: int, alpha: float, dropout: float) -> None:
    """Each targeted layer, by its qualified name, put in this package's LoRA layer of its kind: exactly these
    (a name matched by suffix, as apply_lora_gpt2 matches its targets, would wrap "enc.base" for "base" too)."""
    for name, module in targets.items():
        parent, _, child = name.rpartition(".")
        wrapper = LoRALinear if isinstance(module, nn.Linear) else LoRAConv1D
        setattr(model.get_submodule(parent), child, wrapper(module, r, alpha, dropout))


def adapters(model: nn.Module) -> dict[str, nn.Module]:
    """The LoRA layers of ``model`` by qualified name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, ADAPTERS)}


def factor_views(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A (r, in) and B (out, r) of a LoRA layer, as views of its own parameters, whatever their layout.

    The lora_linear kata leaves the layout free (A stored (r, in) or (in, r), raw Parameters or nn.Linear
    submodules), so the factors are found among the layer's two tensors outside its base by their shapes, and, when
    the shapes allow more than one reading (a square layer), by what the layer computes: with random values
    put in for a moment, only the right reading's ``scaling * B @ A`` is the update it adds to its base.
    """
    base = _base(layer)
    in_features, out_features = _dimensions(base)
    first, second = _outside(layer, base)
    readings = [
        (A, B)
        for one, other in itertools.permutations((first, second))
        for A in (one, one.T)
        for B in (other, other.T)
        if A.shape == (layer.r, in_features) and B.shape == (out_features, layer.r)
    ]
    if len(readings) == 1:
        return readings[0]
    return min(readings, key=lambda reading: _misfit(layer, base, reading, (first, second)))


def _base(layer: nn.Module) -> nn.Module:
    """The layer a LoRA layer adapts: the submodule with a weight that leaves two tensors of r * (in + out) numbers
    outside it, the factors, trainable or frozen (a model frozen after training still holds its adapters); one
    with nothing trainable first."""
    fitting = [
        module
        for module in layer.modules()
        if module is not layer
        and isinstance(getattr(module, "weight", None), nn.Parameter)
        and len(factors := _outside(layer, module)) == 2
        and sum(t.numel() for t in factors) == layer.r * sum(_dimensions(module))
    ]
    return min(fitting, key=lambda module: any(p.requires_grad for p in module.parameters()))


def _outside(layer: nn.Module, base: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``layer`` that are not ``base``'s."""
    held = {id(p) for p in base.parameters()}
    return [p for p in layer.parameters() if id(p) not in held]


@torch.no_grad()
def _misfit(layer: nn.Module, base: nn.Module, reading, parameters) -> float:
    """How far ``scaling * B @ A`` of a reading is from the update the layer computes, with random factors."""
    saved = [p.detach().clone() for p in parameters]
    generator = torch.Generator().manual_seed(0)  # its own: the caller's random state stays as it was
    try:
        for p in parameters:
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64))
        eye = torch.eye(_dimensions(base)[0], dtype=base.weight.dtype, device=base.weight.device)
        modes = {module: module.training for module in layer.modules()}
        layer.eval()
        update = (layer(eye) - base(eye)).T.double()
        for module, training in modes.items():
            module.training = training  # each its own mode back: layer.train() would set the base's children too
        A, B = reading
        return (update - layer.scaling * B.double() @ A.double()).abs().max().item()
    finally:
        for p, value in zip(parameters, saved, strict=True):
            p.copy_(value)


def _dimensions(module: nn.Module) -> tuple[int, int]:
    """(in, out) of an nn.Linear, or of a Conv1D, whose weight is (in, out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    in_features, out_features = module.weight.shape
    return in_features, out_features


def _check_config(config: dict) -> None:
    if config.get("peft_type") != "LORA":
        raise ValueError(f"load_adapter: peft_type {config.get('peft_type')!r} is not LORA")
    for option in ("use_dora", "use_rslora"):
        if config.get(option):
            raise ValueError(f"load_adapter: {option}=true is not supported")
    if config.get("bias", "none") != "none":
        raise ValueError(f"load_adapter: bias={config['bias']!r} is not supported, only 'none'")
    for option in ("alpha_pattern", "rank_pattern"):
        if config.get(option):
            raise ValueError(f"load_adapter: {option}={config[option]!r} (a per-layer alpha or r) is not supported")


def _targeted(model: nn.Module, target_modules: list[str] | str) -> dict[str, nn.Module]:
    """The layers peft would adapt: a list matches a name exactly or by suffix, a str is a regex fullmatch."""
    from transformers.pytorch_utils import Conv1D

    def targeted(name: str) -> bool:
        if isinstance(target_modules, str):
            return re.fullmatch(target_modules, name) is not None
        return any(name == t or name.endswith("." + t) for t in target_modules)

    found = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D)) and targeted(name)}
    if not found:
        raise ValueError(f"load_adapter: no layer of the model matches target_modules={target_modules!r}")
    return found
