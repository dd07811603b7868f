import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from katas.lora_linear import LoRALinear
from katas.merge_weights import merge_weights


class LoRAConv1D(nn.Module):
    """Keeps the update in the Conv1D's own (in, out) orientation: factors as bias-free nn.Linear submodules,
    Gaussian init, functional dropout, and the base called 'conv'."""

    def __init__(self, base, r=8, alpha=16.0, dropout=0.0):
        super().__init__()
        if not isinstance(base, Conv1D):
            raise ValueError("LoRAConv1D wants a transformers Conv1D")
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise ValueError("r must be a positive int")
        if not (0 <= dropout < 1):
            raise ValueError("dropout must be in [0, 1)")
        for p in base.parameters():
            p.requires_grad = False
        self.conv = base
        self.r, self.alpha, self.p = r, alpha, dropout
        nx, nf = base.weight.shape
        kw = {"bias": False, "device": base.weight.device, "dtype": base.weight.dtype}
        self.down, self.up = nn.Linear(nx, r, **kw), nn.Linear(r, nf, **kw)
        nn.init.normal_(self.down.weight, std=1.0 / r)
        nn.init.zeros_(self.up.weight)

    @property
    def scaling(self):
        return self.alpha / self.r

    def delta_fan_in_fan_out(self, dtype):
        """The update in the Conv1D's (in, out) orientation."""
        return (self.down.weight.to(dtype).T @ self.up.weight.to(dtype).T) * self.scaling

    def forward(self, x):
        return self.conv(x) + self.up(self.down(F.dropout(x, self.p, self.training))) * self.scaling


def _walk(module, prefix=""):
    # _modules, not named_children(): that lists a child held under two names of one parent once.
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        full = f"{prefix}.{name}" if prefix else name
        yield module, name, full, child
        if not isinstance(child, (LoRAConv1D, LoRALinear)):
            yield from _walk(child, full)


def apply_lora_gpt2(model, target_modules=("c_attn",), r=8, alpha=16.0, dropout=0.0):
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    # An adapter's base may be held outside it too (a shared layer): told by identity, under every name.
    inside = {id(m) for a in model.modules() if isinstance(a, (LoRAConv1D, LoRALinear)) for m in list(a.modules())[1:]}
    hits = [
        (parent, name, child)
        for parent, name, full, child in _walk(model)
        if isinstance(child, (Conv1D, nn.Linear, LoRAConv1D, LoRALinear))
        and id(child) not in inside
        and any(full == t or full.endswith("." + t) for t in targets)
    ]
    if not hits:
        raise ValueError(f"no Conv1D or Linear layer is called {targets}")
    for parent, name, child in hits:
        if isinstance(child, Conv1D):
            parent.register_module(name, LoRAConv1D(child, r, alpha, dropout))
        elif isinstance(child, nn.Linear):
            parent.register_module(name, LoRALinear(child, r, alpha, dropout))
    with torch.random.fork_rng(devices=[]):  # a LoRALinear's base, whatever its layout: what a fresh one freezes
        frozen = {n for n, p in LoRALinear(nn.Linear(1, 1), 1).named_parameters() if not p.requires_grad}
    keep = set()
    for m in model.modules():
        if isinstance(m, LoRAConv1D):
            keep |= {id(m.down.weight), id(m.up.weight)}
        elif isinstance(m, LoRALinear):
            keep |= {id(p) for n, p in m.named_parameters() if n not in frozen}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return model


@torch.no_grad()
def _fold(layer, shared=False, held_elsewhere=False):
    """Folds the update into the Conv1D itself and hands that very Conv1D back (into a plain Conv1D copy of a
    model's own subclass of Conv1D, the merged layer being Conv1D itself, or of a Conv1D ``held_elsewhere``, a
    module the model uses outside its adapter too, which keeps computing W there). A weight ``shared`` with another
    holder is copied first, so that holder keeps W."""
    conv = layer.conv
    if type(conv) is not Conv1D or held_elsewhere:
        plain = Conv1D(conv.nf, conv.weight.shape[0]).to(conv.weight)
        plain.load_state_dict(conv.state_dict())
        conv = plain.requires_grad_(False)
    elif shared:
        conv.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
    wide = torch.float32 if conv.weight.dtype in (torch.float16, torch.bfloat16) else conv.weight.dtype
    conv.weight.copy_(conv.weight.to(wide) + layer.delta_fan_in_fan_out(wide))
    return conv


def merge_gpt2(model):
    if isinstance(model, LoRAConv1D):
        return _fold(model)
    folded = {}  # an adapter registered under several names is folded once
    holders = {}  # how many names hold each parameter: a weight held twice may be another layer's too
    for _, parameter in model.named_parameters(remove_duplicate=False):
        holders[id(parameter)] = holders.get(id(parameter), 0) + 1
    slots = {}  # how many parents' slots hold each module: a Conv1D held outside its adapter too is used there
    for module in model.modules():
        for held in module._modules.values():
            if held is not None:
                slots[id(held)] = slots.get(id(held), 0) + 1
    for parent, name, _, child in list(_walk(model)):
        if isinstance(child, LoRAConv1D):
            if id(child) not in folded:
                shared = holders.get(id(child.conv.weight), 0) > 1
                folded[id(child)] = _fold(child, shared, held_elsewhere=slots.get(id(child.conv), 0) > 1)
            parent.register_module(name, folded[id(child)])
        elif isinstance(child, LoRALinear):
            base = next(m for m in child.modules() if isinstance(m, nn.Linear) and not m.weight.requires_grad)
            base.weight = nn.Parameter(base.weight.detach().clone(), requires_grad=False)  # never share a merge
    return merge_weights(model)
