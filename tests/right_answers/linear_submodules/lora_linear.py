import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError("base must be an nn.Linear")
        if r < 1:
            raise ValueError("r must be at least 1")
        if not 0 <= dropout < 1:
            raise ValueError("dropout must be in [0, 1)")
        for parameter in base.parameters():
            parameter.requires_grad = False
        self.base_layer = base
        self.r, self.alpha, self.scaling, self.p = r, alpha, alpha / r, dropout
        kwargs = {"bias": False, "device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_down = nn.Linear(base.in_features, r, **kwargs)
        self.lora_up = nn.Linear(r, base.out_features, **kwargs)
        nn.init.normal_(self.lora_down.weight, std=1 / r)
        nn.init.zeros_(self.lora_up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adapter = self.lora_up(self.lora_down(F.dropout(x, self.p, self.training)))
        return self.base_layer(x) + adapter * self.scaling
