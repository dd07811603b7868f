import contextlib
import warnings

import torch
from torch import nn


class MultiLoRALinear(nn.Module):
    """Factors stored transposed, (in, r) and (r, out), in two ParameterDicts; merge and unmerge write the weight
    through its transposed (in, out) view; merge and unmerge with nothing to do warn, as peft does, and so does
    merge inside disable_adapters(), where it does nothing."""

    def __init__(self, base):
        if not isinstance(base, nn.Linear):
            raise ValueError(f"expected nn.Linear, got {type(base).__name__}")
        super().__init__()
        self.linear = base.requires_grad_(False)
        self.down = nn.ParameterDict()
        self.up = nn.ParameterDict()
        self.drops = nn.ModuleDict()
        self.scales = {}
        self._active = None
        self._merged = ()
        self._off = 0  # depth of nested disable_adapters() blocks

    active_adapter = property(lambda self: self._active)
    merged_adapters = property(lambda self: list(self._merged))

    def add_adapter(self, name, r=8, alpha=16.0, dropout=0.0):
        if name in self.scales or isinstance(r, bool) or not isinstance(r, int) or r < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"cannot add adapter {name!r} (r={r}, dropout={dropout}); adapters: {list(self.scales)}")
        w = self.linear.weight
        down = torch.empty(w.shape[1], r, dtype=w.dtype, device=w.device)
        nn.init.kaiming_uniform_(down.T, a=5**0.5)
        self.down[name] = nn.Parameter(down)
        self.up[name] = nn.Parameter(torch.zeros(r, w.shape[0], dtype=w.dtype, device=w.device))
        self.drops[name] = (nn.Dropout(dropout) if dropout else nn.Identity()).train(self.training)
        self.scales[name] = alpha / r
        self._active = self._active or name
        self._grads()

    def _grads(self):
        for name in self.scales:
            on = name == self._active and not self._off
            self.down[name].requires_grad = on
            self.up[name].requires_grad = on

    def _check(self, name):
        if name not in self.scales:
            raise ValueError(f"{name!r} is not an adapter of this layer (it has: {', '.join(self.scales) or 'none'})")

    def set_adapter(self, name):
        self._check(name)
        self.unmerge()
        self._active = name
        self._grads()

    @contextlib.contextmanager
    def disable_adapters(self):
        self.unmerge()
        self._off += 1
        self._grads()
        try:
            yield
        finally:
            self._off -= 1
            self._grads()

    def _delta_t(self, name):
        """(scaling * B @ A)^T = scaling * down @ up, shape (in, out), in float32 for half precision."""
        acc = torch.float32 if self.linear.weight.dtype in (torch.float16, torch.bfloat16) else self.linear.weight.dtype
        return torch.mm(self.down[name].to(acc), self.up[name].to(acc)).mul_(self.scales[name]).detach()

    def merge(self, safe=False):
        name = self._active
        if name is None or name in self._merged or self._off:
            warnings.warn("nothing to merge" if not self._off else "adapters disabled: nothing merged", stacklevel=2)
            return
        w_t = self.linear.weight.T  # (in, out), a view of the very Parameter
        with torch.no_grad():
            delta_t = self._delta_t(name)
            merged_t = (w_t.to(delta_t.dtype) + delta_t).to(w_t.dtype)
            if safe and not bool(torch.isfinite(merged_t).all()):
                raise ValueError(f"merging {name!r} gives NaN or inf")
            w_t.copy_(merged_t)
        self._merged = (*self._merged, name)

    def unmerge(self):
        if not self._merged:
            warnings.warn("nothing merged", stacklevel=2)
            return
        w_t = self.linear.weight.T
        with torch.no_grad():
            for name in reversed(self._merged):  # from the weight as it is now
                delta_t = self._delta_t(name)
                w_t.copy_((w_t.to(delta_t.dtype) - delta_t).to(w_t.dtype))
        self._merged = ()

    def delete_adapter(self, name):
        self._check(name)
        if name in self._merged:
            self.unmerge()
        for container in (self.down, self.up, self.drops, self.scales):
            del container[name]
        if self._active == name:
            self._active = None
        self._grads()

    def forward(self, x):
        y = self.linear(x)
        name = self._active
        if self._off or name is None or self._merged:
            return y
        return y + (self.drops[name](x) @ self.down[name]) @ self.up[name] * self.scales[name]
