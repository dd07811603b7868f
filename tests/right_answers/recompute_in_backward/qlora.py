"""QLoRA as the paper runs it: the base's weight is dequantized in forward and again in backward by an
autograd.Function, so no full-size weight is saved between them; codes kept as bitsandbytes' (n / 2, 1)
column under other names, the bias as a buffer, peft-style bias-free nn.Linear factors with Gaussian init,
F.dropout, and apply_qlora recursing through every module's children."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from katas.nf4 import dequantize_nf4, quantize_nf4


class _DequantizedMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, codes, scales, shape):
        ctx.save_for_backward(codes, scales)
        ctx.shape = shape
        return x @ dequantize_nf4(codes, scales, shape, x.dtype).T

    @staticmethod
    def backward(ctx, grad):
        codes, scales = ctx.saved_tensors
        return grad @ dequantize_nf4(codes, scales, ctx.shape, grad.dtype), None, None, None


class NF4Linear(nn.Module):
    def __init__(self, base):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError("NF4Linear wants an nn.Linear")
        self.in_features = base.in_features
        self.out_features = base.out_features
        with torch.no_grad():
            codes, scales = quantize_nf4(base.weight)
        self.register_buffer("weight_codes", codes.reshape(-1, 1))
        self.register_buffer("weight_scales", scales)
        self.register_buffer("bias_values", None if base.bias is None else base.bias.detach().clone())

    def forward(self, x):
        y = _DequantizedMatmul.apply(x, self.weight_codes, self.weight_scales, (self.out_features, self.in_features))
        return y if self.bias_values is None else y + self.bias_values.to(x.dtype)


class QLoRALinear(nn.Module):
    def __init__(self, base, r=8, alpha=16.0, dropout=0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError("QLoRALinear wants an nn.Linear")
        if type(r) is not int or r <= 0:
            raise ValueError(f"bad rank {r!r}")
        if not 0 <= dropout < 1:  # NaN too
            raise ValueError(f"bad dropout {dropout!r}")
        self.r, self.alpha, self.scaling, self.p = r, alpha, alpha / r, dropout
        kind = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Linear(base.in_features, r, bias=False, **kind)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, **kind)
        nn.init.normal_(self.lora_A.weight, std=1 / r)
        nn.init.zeros_(self.lora_B.weight)
        self.base_layer = NF4Linear(base)

    def forward(self, x):
        adapter = self.lora_B(self.lora_A(F.dropout(x, self.p, self.training)))
        return self.base_layer(x) + adapter * self.scaling


def _hit(name, names):
    return any(name == n or name.endswith("." + n) for n in names)


def apply_qlora(model, target_modules=("q_proj", "v_proj"), r=8, alpha=16.0, dropout=0.0, skip=("lm_head",)):
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    skipped = [skip] if isinstance(skip, str) else list(skip)
    adapted = []
    names = {}  # id -> every name of the module: a shared layer is targeted or skipped by any of them
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    replaced = {}  # id of an nn.Linear -> its one replacement, met again under another name

    def visit(module, prefix):
        for child_name, child in list(module._modules.items()):  # named_children() skips a second name
            if child is None:
                continue
            name = f"{prefix}{child_name}"
            held = names.get(id(child), [name])
            if any(child is layer for layer in replaced.values()):
                continue  # a shared block met again: its layers are replaced already (their factors are no targets)
            if isinstance(child, nn.Linear) and not any(_hit(n, skipped) for n in held):
                if id(child) not in replaced:
                    if any(_hit(n, targets) for n in held):
                        replaced[id(child)] = QLoRALinear(child, r, alpha, dropout)
                        adapted.append(replaced[id(child)])
                    else:
                        replaced[id(child)] = NF4Linear(child)
                setattr(module, child_name, replaced[id(child)])
            else:
                visit(child, name + ".")

    linears = [
        held for key, held in names.items() if key in {id(m) for m in model.modules() if isinstance(m, nn.Linear)}
    ]
    linears = [held for held in linears if not any(_hit(n, skipped) for n in held)]
    if not any(_hit(n, targets) for held in linears for n in held):
        raise ValueError(f"nothing outside {skipped} matches {targets}")
    visit(model, "")
    model.requires_grad_(False)
    for layer in adapted:
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    return model
