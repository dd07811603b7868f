"""Time one training step (forward + backward, input requiring grad) of LoRA layers against the floor.

    python benchmarks/lora_step.py [--device cpu|cuda] [--tokens 8192] [--features 4096 4096] [--rank 16]
                                   [--dtype bfloat16] [--steps 50] [--warmup 10]

Rows: floor (a frozen nn.Linear: forward + input grad, the least any adapter can cost), full (a
trainable nn.Linear: full fine-tuning), solutions (the reference LoRALinear), fused (the reference
FusedLoRALinear of the fused_lora kata), and peft / loralib when they are installed. Each is a median
over --steps steps after --warmup, timed with CUDA events on a GPU; ratios are to the floor measured
in the same run. Peak memory is what the step allocates beyond
its inputs (CUDA only).
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


def step_seconds(layer: nn.Module, x: torch.Tensor, steps: int, warmup: int) -> tuple[float, int]:
    """Median seconds of one forward + backward, and the peak bytes it allocated (CUDA only)."""
    upstream = torch.randn(*x.shape[:-1], layer(x).shape[-1], device=x.device, dtype=x.dtype)
    cuda = x.device.type == "cuda"
    times = []
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() if cuda else 0
    for step in range(warmup + steps):
        x.grad = None
        for parameter in layer.parameters():
            parameter.grad = None
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            layer(x).backward(upstream)
            end.record()
            torch.cuda.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            began = time.perf_counter()
            layer(x).backward(upstream)
            seconds = time.perf_counter() - began
        if step >= warmup:
            times.append(seconds)
    peak = torch.cuda.max_memory_allocated() - baseline if cuda else 0
    return statistics.median(times), peak


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
    rows = {}
    for name, make in VARIANTS.items():
        try:
            layer = make(tuple(arguments.features), arguments.rank, arguments.alpha, **placement)
        except ImportError:
            print(f"{name:<10} not installed, skipped")
            continue
        rows[name] = step_seconds(layer, x, arguments.steps, arguments.warmup)
    floor = rows["floor"][0]
    print(f"{'variant':<10} {'ms':>9} {'x floor':>8} {'peak MiB':>9}")
    for name, (seconds, peak) in rows.items():
        memory = f"{peak / 2**20:9.0f}" if arguments.device == "cuda" else f"{'n/a':>9}"
        print(f"{name:<10} {1000 * seconds:9.3f} {seconds / floor:8.2f} {memory}")


if __name__ == "__main__":
    main()
