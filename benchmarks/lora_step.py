"""Time one training step (forward + backward, input requiring grad) of LoRA layers against the floor.

    python benchmarks/lora_step.py [--device cpu|cuda] [--tokens 8192] [--features 4096 4096] [--rank 16]
                                   [--dtype bfloat16] [--steps 50] [--warmup 10]

Rows: floor (a frozen nn.Linear: forward + input grad, the least any adapter can cost), full (a
trainable nn.Linear: full fine-tuning), solutions (the reference LoRALinear), fused (the reference
FusedLoRALinear of the fused_lora kata), and peft / loralib when they are installed. Each is a median
over --steps steps after --warmup, the variants' steps taken in turn, timed with CUDA events on a GPU;
ratios are to the floor measured in the same run. Peak memory is what a step allocates beyond what is
already allocated (CUDA only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from solutions.fused_lora import FusedLoRALinear
from solutions.lora_linear import LoRALinear


def frozen_linear(features: tuple[int, int], rank: int, alpha: float, **placement: object) -> nn.Module:
    return nn.Linear(*features, **placement).requires_grad_(False)


def full_linear(features: tuple[int, int], rank: int, alpha: float, **placement: object) -> nn.Module:
    return nn.Linear(*features, **placement)


def solutions_layer(features: tuple[int, int], rank: int, alpha: float, **placement: object) -> nn.Module:
    return trained(LoRALinear(nn.Linear(*features, **placement), r=rank, alpha=alpha))


def fused_layer(features: tuple[int, int], rank: int, alpha: float, **placement: object) -> nn.Module:
    return trained(FusedLoRALinear(nn.Linear(*features, **placement), r=rank, alpha=alpha))


def trained(layer: nn.Module) -> nn.Module:
    """``layer`` with B no longer zero, as after training (a zero B could let a kernel skip work)."""
    nn.init.normal_(layer.lora_B, std=0.01)
    return layer


def peft_layer(features: tuple[int, int], rank: int, alpha: float, **placement: object) -> nn.Module:
    from peft.tuners.lora import Linear

    return Linear(nn.Linear(*features, **placement), "default", r=rank, lora_alpha=alpha)


def loralib_layer(features: tuple[int, int], rank: int, alpha: float, **placement: object) -> nn.Module:
    import loralib

    return loralib.Linear(*features, r=rank, lora_alpha=alpha).to(**placement)


VARIANTS: dict[str, Callable[..., nn.Module]] = {
    "floor": frozen_linear,
    "full": full_linear,
    "solutions": solutions_layer,
    "fused": fused_layer,
    "peft": peft_layer,
    "loralib": loralib_layer,
}


def one_step(layer: nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> float:
    """Seconds of one forward + backward, timed with CUDA events on a GPU."""
    x.grad = None
    for parameter in layer.parameters():
        parameter.grad = None
    if x.device.type != "cuda":
        began = time.perf_counter()
        layer(x).backward(upstream)
        return time.perf_counter() - began
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    layer(x).backward(upstream)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000


def peak_bytes(layer: nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> int:
    """What one step allocates beyond what is already allocated (CUDA only; 0 elsewhere)."""
    if x.device.type != "cuda":
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    one_step(layer, x, upstream)
    return torch.cuda.max_memory_allocated() - baseline


def median_steps(layers: dict[str, nn.Module], x: torch.Tensor, steps: int, warmup: int) -> dict[str, float]:
    """Each layer's median step time. Steps go round-robin, one of each layer per round, so a change in the
    machine's load or clock reaches every layer alike."""
    upstream = {name: torch.randn_like(layer(x)) for name, layer in layers.items()}
    times: dict[str, list[float]] = {name: [] for name in layers}
    for round_number in range(warmup + steps):
        for name, layer in layers.items():
            seconds = one_step(layer, x, upstream[name])
            if round_number >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--features", type=int, nargs=2, default=(4096, 4096), metavar=("IN", "OUT"))
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    arguments = parser.parse_args()
    placement = {"device": arguments.device, "dtype": getattr(torch, arguments.dtype)}
    torch.manual_seed(0)
    x = torch.randn(arguments.tokens, arguments.features[0], **placement, requires_grad=True)
    print(f"{arguments.tokens} tokens, {arguments.features[0]} -> {arguments.features[1]}, r = {arguments.rank}, "
          f"{arguments.dtype} on {torch.cuda.get_device_name() if arguments.device == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}; median of {arguments.steps} steps")  # fmt: skip
    layers = {}
    for name, make in VARIANTS.items():
        try:
            layers[name] = make(tuple(arguments.features), arguments.rank, arguments.alpha, **placement)
        except ImportError:
            print(f"{name:<10} not installed, skipped")
    medians = median_steps(layers, x, arguments.steps, arguments.warmup)
    print(f"{'variant':<10} {'ms':>9} {'x floor':>8} {'peak MiB':>9}")
    for name, layer in layers.items():
        peak = peak_bytes(layer, x, torch.randn_like(layer(x)))
        memory = f"{peak / 2**20:9.0f}" if arguments.device == "cuda" else f"{'n/a':>9}"
        print(f"{name:<10} {1000 * medians[name]:9.3f} {medians[name] / medians['floor']:8.2f} {memory}")


if __name__ == "__main__":
    main()
