import torch
import torch.nn.functional as F
from torch import nn


class _Adapter(nn.Module):
    """One adapter: bias-free nn.Linear factors, Gaussian init, its own dropout probability and scaling."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        kwargs = {"bias": False, "device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_down = nn.Linear(base.in_features, r, **kwargs)
        self.lora_up = nn.Linear(r, base.out_features, **kwargs)
        nn.init.normal_(self.lora_down.weight, std=1 / r)
        nn.init.zeros_(self.lora_up.weight)
        self.p = dropout
        self.scale = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_up(self.lora_down(F.dropout(x, self.p, self.training))) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """In float32 or wider: half precision is upcast, float64 stays float64."""
        wide = torch.promote_types(self.lora_up.weight.dtype, torch.float32)
        return (self.lora_up.weight.to(wide) @ self.lora_down.weight.to(wide)) * self.scale


class _Disabled:
    """disable_adapters() as a class: the merged layer is unmerged lazily, by the first forward inside, or at the
    latest on exit."""

    def __init__(self, layer: "MultiLoRALinear") -> None:
        self.layer = layer

    def __enter__(self) -> None:
        self.saved = self.layer.adapters_enabled
        self.layer.adapters_enabled = False
        self.layer.freeze_all()

    def __exit__(self, *exc_info: object) -> bool:
        self.layer.adapters_enabled = self.saved
        self.layer.unmerge()  # nothing to do when a forward inside unmerged already
        return False


class MultiLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError("base must be an nn.Linear")
        for parameter in base.parameters():
            parameter.requires_grad = False
        self.base_layer = base
        self.lora = nn.ModuleDict()
        self.active_adapter = None  # a plain attribute, not a property
        self._merged = []
        self.adapters_enabled = True

    def add_adapter(self, name, r=8, alpha=16.0, dropout=0.0):
        if name in self.lora:
            raise ValueError(f"adapter {name!r} exists already; adapters: {list(self.lora)}")
        if not isinstance(r, int) or r < 1 or not 0 <= dropout < 1:
            raise ValueError(f"bad adapter arguments r={r}, dropout={dropout}")
        self.lora[name] = _Adapter(self.base_layer, r, alpha, dropout).train(self.training)
        if self.active_adapter is None:
            self.active_adapter = name
        self.freeze_all()

    @property
    def merged_adapters(self) -> list:
        return list(self._merged)  # a copy: a caller's changes stay the caller's

    def freeze_all(self) -> None:
        """Only the active adapter trains, and only while enabled and not merged (this answer's reading)."""
        for name, adapter in self.lora.items():
            trains = name == self.active_adapter and self.adapters_enabled and not self._merged
            adapter.requires_grad_(trains)

    def _known(self, name):
        if name not in self.lora:
            raise ValueError(f"unknown adapter {name!r}, this layer has {sorted(self.lora)}")

    def set_adapter(self, name):
        self._known(name)
        self.unmerge()
        self.active_adapter = name
        self.freeze_all()

    def disable_adapters(self):
        return _Disabled(self)

    def merge(self, safe=False):
        if self.active_adapter is None:
            raise ValueError("no active adapter to merge")
        if self.active_adapter in self._merged:
            return
        weight = self.base_layer.weight
        delta = self.lora[self.active_adapter].delta_weight().detach()
        merged = torch.add(weight.detach().to(delta.dtype), delta)
        merged = merged.to(weight.dtype)
        if safe and not merged.isfinite().all():
            raise ValueError(f"adapter {self.active_adapter!r} would make the weight non-finite")
        weight.detach().copy_(merged)  # in place: the same Parameter and memory, so views follow
        self._merged.append(self.active_adapter)
        self.freeze_all()

    def unmerge(self):
        while self._merged:
            name = self._merged.pop()
            weight = self.base_layer.weight
            delta = self.lora[name].delta_weight().detach()
            weight.detach().copy_((weight.detach().to(delta.dtype) - delta).to(weight.dtype))
        self.freeze_all()

    def delete_adapter(self, name):
        self._known(name)
        if name in self._merged:
            self.unmerge()
        del self.lora[name]
        if self.active_adapter == name:
            self.active_adapter = None
        self.freeze_all()

    def forward(self, x):
        if not self.adapters_enabled:
            self.unmerge()
            return self.base_layer(x)
        if self.active_adapter is None or self._merged:
            return self.base_layer(x)
        return self.base_layer(x) + self.lora[self.active_adapter](x)
