import json
import re
from pathlib import Path

import safetensors.torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from katas.gpt2_conv1d import LoRAConv1D
from katas.lora_linear import LoRALinear

# In-memory state_dict suffixes of this package's layers -> peft's, and whether the tensor is stored transposed.
# LoRALinear (the reference layout) keeps lora_A (r, in) and lora_B (out, r); this LoRAConv1D keeps
# down.weight (r, in) and up.weight (out, r).
RENAMES = {LoRALinear: {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight"},
           LoRAConv1D: {"down.weight": "lora_A.weight", "up.weight": "lora_B.weight"}}  # fmt: skip


def _renames(module):
    """The RENAMES of a LoRA layer (a subclass of one is one), None for any other module."""
    return next((renames for kind, renames in RENAMES.items() if isinstance(module, kind)), None)


def _lora_layers(model):
    return [(n, m) for n, m in model.named_modules() if _renames(m)]


def save_adapter(model, directory):
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("no LoRA layers in this model")
    if len({(m.r, m.alpha) for _, m in layers}) != 1:
        raise ValueError("all adapters must share r and alpha")
    state = model.state_dict()
    out = {}
    for name, module in layers:
        for mine, theirs in _renames(module).items():
            out[f"base_model.model.{name}.{theirs}"] = state[f"{name}.{mine}"].contiguous()
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(out, str(path / "adapter_model.safetensors"), {"format": "pt"})
    first = layers[0][1]
    config = dict(peft_type="LORA", r=first.r, lora_alpha=first.alpha, bias="none",
                  target_modules="|".join(re.escape(name) for name, _ in layers),  # a regex: exactly these
                  fan_in_fan_out=any(isinstance(m, LoRAConv1D) for _, m in layers))  # fmt: skip
    with open(path / "adapter_config.json", "w") as handle:
        json.dump(config, handle)
    return path


def load_adapter(model, directory):
    path = Path(directory)
    with open(path / "adapter_config.json") as handle:
        config = json.load(handle)
    if config.get("peft_type") != "LORA":
        raise ValueError(f"unsupported peft_type {config.get('peft_type')}")
    if config.get("use_dora") or config.get("use_rslora") or config.get("bias", "none") != "none":
        raise ValueError("DoRA, rsLoRA and LoRA biases are not supported")
    file = safetensors.torch.load_file(str(path / "adapter_model.safetensors"))
    targets = config["target_modules"]
    if isinstance(targets, str):
        wanted = lambda name: re.fullmatch(targets, name) is not None  # noqa: E731
    else:
        wanted = lambda name: any(name == t or name.endswith("." + t) for t in targets)  # noqa: E731
    if config.get("rank_pattern"):
        raise ValueError("a per-layer rank (rank_pattern) is not supported")
    r, alpha, dropout = config["r"], config["lora_alpha"], config.get("lora_dropout") or 0.0
    alphas = config.get("alpha_pattern") or {}  # honoured as peft does: (.*\.)?(key)$

    def alpha_of(name):
        return next((a for key, a in alphas.items() if re.match(rf"(.*\.)?({key})$", name)), alpha)

    plan, shapes = [], {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)) and wanted(name):
            fan_in, fan_out = module.weight.shape[::-1] if isinstance(module, nn.Linear) else module.weight.shape
            shapes[f"base_model.model.{name}.lora_A.weight"] = (r, fan_in)
            shapes[f"base_model.model.{name}.lora_B.weight"] = (fan_out, r)
            plan.append((name, module))
    if not plan:
        raise ValueError(f"nothing in the model matches {targets}")
    for key in sorted(set(file) | set(shapes)):
        if key not in shapes:
            raise ValueError(f"unexpected tensor {key}")
        if key not in file:
            raise ValueError(f"missing tensor {key}")
        if tuple(file[key].shape) != shapes[key]:
            raise ValueError(f"{key}: file has shape {tuple(file[key].shape)}, model wants {shapes[key]}")
    renamed = {}
    for name, module in plan:
        kind = LoRAConv1D if isinstance(module, Conv1D) else LoRALinear
        parent, _, child = name.rpartition(".")
        own = {inner: inner.training for inner in module.modules()}
        layer = kind(module, r=r, alpha=alpha_of(name), dropout=dropout).train(module.training)  # the mode it replaces
        for inner, training in own.items():
            inner.training = training  # the replaced layer's own children keep theirs, which train() set too
        model.get_submodule(parent).register_module(child, layer)
        for mine, theirs in RENAMES[kind].items():
            renamed[f"{name}.{mine}"] = file[f"base_model.model.{name}.{theirs}"]
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    assert not unexpected and not set(renamed) & set(missing)
    return model
