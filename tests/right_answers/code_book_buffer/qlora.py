"""QLoRA whose NF4Linear keeps the 16-value code book as a third, non-persistent buffer (it follows the layer in
``.to(device)``, as bitsandbytes' quant_state.code does) and decodes the bytes with it itself; the factors stored
transposed, (in, r) and (r, out); apply_qlora that walks ``named_modules`` once and matches with sets of suffixes."""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from .nf4 import nf4_code_book, quantize_nf4


class NF4Linear(nn.Module):
    def __init__(self, base):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"NF4Linear quantizes an nn.Linear, not a {type(base).__name__}")
        self.in_features, self.out_features = base.in_features, base.out_features
        packed, absmax = quantize_nf4(base.weight.detach(), 64)
        self.register_buffer("packed", packed)
        self.register_buffer("absmax", absmax)
        self.register_buffer("code", nf4_code_book().to(packed.device), persistent=False)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        n = self.out_features * self.in_features
        byte = self.packed.reshape(-1).long()
        index = torch.stack([byte >> 4, byte & 15], dim=1).reshape(-1)[:n]
        weight = (self.code[index] * self.absmax.repeat_interleave(64)[:n]).view(self.out_features, -1)
        return F.linear(x, weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class QLoRALinear(nn.Module):
    def __init__(self, base, r=8, alpha=16.0, dropout=0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError("QLoRALinear adapts an nn.Linear")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be a positive int, got {r!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        where = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.A_t = nn.Parameter(torch.empty(base.in_features, r, **where))  # (in, r)
        self.B_t = nn.Parameter(torch.zeros(r, base.out_features, **where))  # (r, out)
        nn.init.kaiming_uniform_(self.A_t.T, a=math.sqrt(5))
        self.base = NF4Linear(base)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.base(x) + (self.drop(x) @ self.A_t @ self.B_t) * self.scaling


def apply_qlora(model, target_modules=("q_proj", "v_proj"), r=8, alpha=16.0, dropout=0.0, skip=("lm_head",)):
    targets = {target_modules} if isinstance(target_modules, str) else set(target_modules)
    skipped = {skip} if isinstance(skip, str) else set(skip)

    def hit(name, names):
        parts = name.split(".")
        return any(".".join(parts[i:]) in names for i in range(len(parts)))

    places = defaultdict(list)  # a layer held under several names (shared, aliased) is one layer
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.Linear):
            places[module].append(name)
    chosen = {m: names for m, names in places.items() if not any(hit(n, skipped) for n in names)}
    if not any(hit(n, targets) for names in chosen.values() for n in names):
        raise ValueError(f"no nn.Linear outside {sorted(skipped)} matches {sorted(targets)}")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for module, names in chosen.items():
        layer = QLoRALinear(module, r, alpha, dropout) if any(hit(n, targets) for n in names) else NF4Linear(module)
        for name in names:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)
    return model
