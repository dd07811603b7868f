"""A small transformer-shaped model whose layer names set the traps of target matching:
``fc1`` beside ``fc10``, ``proj`` beside ``q_proj``, ``layers.0`` beside ``layers.10``, and a
``router.q_proj`` that is not an ``nn.Linear``."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from grader.probes import output

WIDTH, HIDDEN, DEPTH, CLASSES = 8, 12, 11, 5


class Attention(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, seq, width) -> (batch, seq, width)."""
        scores = output(self.q_proj, x) @ output(self.k_proj, x).transpose(-1, -2) / x.shape[-1] ** 0.5
        return output(self.out_proj, scores.softmax(dim=-1) @ output(self.v_proj, x))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc10, self.fc2 = (
            nn.Linear(width, hidden),
            nn.Linear(hidden, hidden),
            nn.Linear(hidden, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return output(self.fc2, torch.tanh(output(self.fc10, torch.tanh(output(self.fc1, x)))))


class Block(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm, self.attn, self.mlp = nn.LayerNorm(width), Attention(width), MLP(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm(x))
        return x + self.mlp(self.norm(x))


class ToyTransformer(nn.Module):
    """(batch, seq, WIDTH) -> (batch, seq, CLASSES), through DEPTH blocks."""

    def __init__(self, width: int = WIDTH, hidden: int = HIDDEN, depth: int = DEPTH) -> None:
        super().__init__()
        self.router = nn.ModuleDict({"q_proj": nn.LayerNorm(width)})
        self.layers = nn.ModuleList(Block(width, hidden) for _ in range(depth))
        self.proj = nn.Linear(width, width)
        self.head = nn.Linear(width, CLASSES, bias=False)
        self.temperature = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.router["q_proj"](x)
        for layer in self.layers:
            x = layer(x)
        return output(self.head, output(self.proj, x)) * self.temperature


def inputs(batch: int = 2, seq: int = 3, **placement: object) -> torch.Tensor:
    """A random input batch for ToyTransformer."""
    return torch.randn(batch, seq, WIDTH, **placement)


def matching_linears(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """Names of the nn.Linear layers the spec targets: equal to a target or ending in '.' + target."""
    targets = tuple(targets)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    ]
