"""A small transformer-shaped model whose layer names set the traps of target matching:
``fc1`` beside ``fc10``, ``proj`` beside ``q_proj``, ``layers.0`` beside ``layers.10``, and a
``router.q_proj`` that is not an ``nn.Linear``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn

from grader.probes import ForeignLinear, ForeignLoRALinear, output

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


def matching_linears(model: nn.Module, targets: Iterable[str], every_name: bool = False) -> list[str]:
    """Names of the nn.Linear layers the spec targets: equal to a target or ending in '.' + target; with
    ``every_name``, among all the names of a layer registered under several (as apply_lora's spec reads them)."""
    targets = tuple(targets)
    return [
        name
        for name, module in model.named_modules(remove_duplicate=not every_name)
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    ]


# The model zoo: the structures real models have, and the odd ones the spec allows. Each maps
# (batch, WIDTH) to (batch, CLASSES), calling its layers through the containers that hold them.
def _linear(fan_in: int, fan_out: int, bias: bool = True) -> nn.Linear:
    return nn.Linear(fan_in, fan_out, bias=bias)


GAINS = (0.5, 2.0)  # a gated base's gains, spread over its outputs: its output is not x W^T + b, skipping base(x) shows


class GatedForward(nn.Module):
    """A mixin for a layer class (nn.Linear, transformers' Conv1D): a subclass with a parameter of its own besides
    weight and bias (``gain``, one per output) and its own forward, the layer's output times the gain, as model code
    has. With gains other than 1 its output is not the layer's arithmetic (F.linear(x, weight, bias), x @ W + b for
    a Conv1D), so an adapter that writes that arithmetic out instead of calling base(x) shows."""

    gain: nn.Parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.gain


class GatedLinear(GatedForward, nn.Linear):
    """An nn.Linear subclass with its own forward (GatedForward): with gains other than 1 its output is not
    F.linear(x, weight, bias), so a layer that skips base(x) shows (the zoo's keep 1: a quantized copy computes
    F.linear, as NF4Linear's spec says)."""

    def __init__(
        self, in_features: int, out_features: int, gains: tuple[float, float] = (1.0, 1.0), **placement: object
    ) -> None:
        super().__init__(in_features, out_features, **placement)
        self.gain = nn.Parameter(torch.linspace(*gains, out_features, **placement))


class ReLULinear(nn.Linear):
    """An nn.Linear subclass ending in a ReLU (a fused activation, as model code has): its backward reads its own
    output, so an answer that adds the update into base(x) in place breaks a training step through it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


GATED_CLASSES: dict[type, type] = {}  # a layer class: its GatedForward subclass, made once


def gated(layer: nn.Module, out_features: int, gains: tuple[float, float] = GAINS) -> nn.Module:
    """``layer`` made, in place, an instance of a GatedForward subclass of its class (``Gated<its class name>``, a
    model's own), its gain spread from ``gains[0]`` to ``gains[1]`` over its ``out_features`` outputs, on its
    weight's device and in its dtype: GatedLinear for a class imported elsewhere (transformers' Conv1D)."""
    kind = type(layer)
    if kind not in GATED_CLASSES:
        GATED_CLASSES[kind] = type(f"Gated{kind.__name__}", (GatedForward, kind), {"__module__": "a_model"})
    layer.__class__ = GATED_CLASSES[kind]
    weight = layer.weight
    layer.gain = nn.Parameter(torch.linspace(*gains, out_features, device=weight.device, dtype=weight.dtype))
    return layer


def with_forward_hooks(layer: nn.Module) -> nn.Module:
    """``layer`` with a forward pre-hook (doubling its input) and a forward hook (adding 1 to its output), as
    accelerate's offloading hooks or a quantization observer attach them: base(x) runs them, base.forward(x) and
    the layer's arithmetic written out do not."""
    layer.register_forward_pre_hook(lambda module, args: (2 * args[0], *args[1:]))
    layer.register_forward_hook(lambda module, args, result: result + 1)
    return layer


class Nested(nn.Module):
    """Linears at depth 4 inside ModuleList > ModuleDict > Sequential, named as in transformers' models,
    a ModuleDict whose keys are also target names ("heads.q_proj"), and subclasses of nn.Linear
    ("heads.out_proj", the class of nn.MultiheadAttention's out_proj; "mlp.0", a GatedLinear whose gain
    is frozen like every parameter but the factors)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "attn": nn.Sequential(
                        OrderedDict(q_proj=_linear(WIDTH, WIDTH), act=nn.Tanh(), v_proj=_linear(WIDTH, WIDTH))
                    ),
                    "mlp": nn.Sequential(GatedLinear(WIDTH, HIDDEN), nn.Tanh(), _linear(HIDDEN, WIDTH, bias=False)),
                }
            )
            for _ in range(2)
        )
        self.heads = nn.ModuleDict(
            {
                "q_proj": _linear(WIDTH, WIDTH),
                "out_proj": nn.modules.linear.NonDynamicallyQuantizableLinear(WIDTH, WIDTH),
                "out": nn.Sequential(_linear(WIDTH, CLASSES)),
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block["attn"](x)
            x = x + block["mlp"](x)
        x = torch.tanh(self.heads["out_proj"](torch.tanh(self.heads["q_proj"](x))))
        return self.heads["out"](x)


class Tied(nn.Module):
    """One block applied twice (ALBERT's layer sharing: ``layers.0`` and ``layers.1`` are one object, which
    ``named_modules()`` lists once), an alias of a linear under a second name, another under a second name of
    the same parent (``head`` and ``classifier``, which ``named_children()`` lists once), and an output layer
    whose weight is the input layer's (tied embeddings)."""

    def __init__(self) -> None:
        super().__init__()
        shared = nn.Sequential(OrderedDict(q_proj=_linear(WIDTH, WIDTH), act=nn.Tanh(), v_proj=_linear(WIDTH, WIDTH)))
        self.embed = _linear(WIDTH, WIDTH, bias=False)
        self.layers = nn.ModuleList([shared, shared])
        self.unembed = _linear(WIDTH, WIDTH, bias=False)
        self.unembed.weight = self.embed.weight
        self.head = _linear(WIDTH, CLASSES)
        self.classifier = self.head  # the same layer under a second name of the same parent
        self.alias = shared.v_proj  # the same layer again, under another name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.layers:
            x = x + layer(x)
        return self.head(torch.tanh(self.unembed(x)))


class LookAlikes(nn.Module):
    """Names that are prefixes, suffixes and substrings of one another (proj, q_proj, qq_proj, proj_q; fc1,
    fc10, fc1_gate; o, oo), names differing only by case (Fc1, Q_PROJ), names a regular expression confuses
    (attn.q and attn_q: "." matches any character), a LayerNorm named like a target, another library's layer whose
    class is named Linear (``k_proj``, no nn.Linear), another library's nn.Linear whose class is named LoRALinear
    (``up_proj``, no adapter: a target), and parameters named like
    LoRA factors (``lora_scale``, ``gate.lora_A``) that are the model's own and must be frozen."""

    NAMES = ("proj", "q_proj", "qq_proj", "proj_q", "fc1", "fc10", "fc1_gate", "o", "oo", "attn_q", "Fc1", "Q_PROJ")

    def __init__(self) -> None:
        super().__init__()
        for name in self.NAMES:
            self.add_module(name, _linear(WIDTH, WIDTH))
        self.attn = nn.Module()
        self.attn.q = _linear(WIDTH, WIDTH)
        self.norms = nn.ModuleDict({"v_proj": nn.LayerNorm(WIDTH)})
        self.k_proj = ForeignLinear(WIDTH, WIDTH)  # another library's layer named Linear: no nn.Linear
        self.gate = nn.Module()
        self.gate.lora_A = nn.Parameter(torch.ones(WIDTH))
        self.lora_scale = nn.Parameter(torch.ones(()))
        self.v_proj = _linear(WIDTH, CLASSES)
        self.up_proj = ForeignLoRALinear(WIDTH, WIDTH)  # another library's nn.Linear named LoRALinear: no adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.NAMES:
            x = torch.tanh(getattr(self, name)(x))
        x = torch.tanh(self.up_proj(torch.tanh(self.k_proj(torch.tanh(self.attn.q(x))))))
        return self.v_proj(self.norms["v_proj"](x) * self.gate.lora_A) * self.lora_scale


class Reused(nn.Module):
    """One projection held by two containers: an encoder list registered first (``enc.0``) and a block after it
    (``block.q_proj``). ``named_modules()`` lists it once, as ``enc.0``, so once the block alone is adapted
    (``apply_lora(model.block, ...)``) the adapter's base is still reached under a name outside the adapter."""

    def __init__(self) -> None:
        super().__init__()
        shared = _linear(WIDTH, WIDTH)
        self.enc = nn.ModuleList([shared, _linear(WIDTH, WIDTH)])
        self.block = nn.Module()
        self.block.q_proj, self.block.v_proj = shared, _linear(WIDTH, WIDTH)
        self.head = _linear(WIDTH, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.enc[1](torch.tanh(self.enc[0](x))))
        x = x + self.block.v_proj(torch.tanh(self.block.q_proj(x)))
        return self.head(x)


class ReusedBlockFirst(Reused):
    """Reused with the other registration order: the block first (``block.q_proj``), the encoder list after it
    (``enc.0``). ``named_modules()`` lists the shared layer once, as ``block.q_proj``: once the block is adapted, a
    deduplicated walk never shows the base under its outside name ``enc.0``."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        shared = _linear(WIDTH, WIDTH)
        self.block = nn.Module()
        self.block.q_proj, self.block.v_proj = shared, _linear(WIDTH, WIDTH)
        self.enc = nn.ModuleList([shared, _linear(WIDTH, WIDTH)])
        self.head = _linear(WIDTH, CLASSES)


class GatedProjection(nn.Linear):
    """An nn.Linear subclass holding a layer of its own, a gate (``nn.Linear`` too), as GLU-style projections do."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.gate = _linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * torch.sigmoid(self.gate(x))


class Gated(nn.Module):
    """A targeted layer with a linear inside it (``up_proj.gate``): once ``up_proj`` is adapted, its gate lies inside
    the adapter, and a later call targeting ``gate`` must leave it alone."""

    def __init__(self) -> None:
        super().__init__()
        self.up_proj, self.down_proj = GatedProjection(WIDTH, HIDDEN), _linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.tanh(self.up_proj(x)))


class GatedGateFirst(Gated):
    """Gated with the gate of ``up_proj`` also registered first, at the top (``gate``, then ``up_proj``, then
    ``up_proj.gate``): a walk in listing order meets that inner target before the outer one that holds it."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        up_proj = GatedProjection(WIDTH, HIDDEN)
        self.gate = up_proj.gate  # a second name of the inner layer, listed before its holder
        self.up_proj, self.down_proj = up_proj, _linear(HIDDEN, CLASSES)


class Wrapped(nn.Module):
    """A backbone held by a wrapper as ``base`` (a value head around a model), beside layers named like an adapter's
    own parts (``lora_A``, ``dropout.lora_B``): a name says nothing about lying inside an adapter."""

    def __init__(self) -> None:
        super().__init__()
        self.base = Nested()
        self.lora_A = _linear(CLASSES, CLASSES)
        self.dropout = nn.Sequential(OrderedDict(lora_B=_linear(CLASSES, CLASSES)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.tanh(self.lora_A(self.base(x))))


MODEL_ZOO = {
    "nested": Nested,
    "tied": Tied,
    "look-alikes": LookAlikes,
    "reused": Reused,
    "gated": Gated,
    "reused-block-first": ReusedBlockFirst,
    "gated-gate-first": GatedGateFirst,
    "wrapped": Wrapped,
}


def zoo_inputs(batch: int = 3, **placement: object) -> torch.Tensor:
    """A random input batch for the zoo's models, (batch, WIDTH)."""
    return torch.randn(batch, WIDTH, **placement)
