"""Time one training step (forward + backward, input requiring grad) of LoRA layers against the floor.

    python benchmarks/lora_step.py [--device cpu|cuda] [--tokens N] [--features IN OUT] [--rank 16]
                                   [--dtype bfloat16] [--steps N] [--warmup N]

Defaults: on a GPU the issue's case (8192 tokens, 4096 -> 4096, bfloat16, 50 steps after 10); on a CPU a small
one (1024 tokens, 1024 -> 1024, float32, 15 steps after 3) that runs in under a minute on 2 cores.

Rows: floor (a frozen nn.Linear: forward + input grad, the least any adapter can cost), full (a
trainable nn.Linear: full fine-tuning), solutions (the reference LoRALinear), fused (the reference
FusedLoRALinear of the fused_lora kata), and peft / loralib when they are installed (a row
that cannot be built is skipped with the reason). Each is a median
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
    """peft's LoRA layer around a frozen base, built the way the installed peft release wants it: since peft 0.18
    ``Linear`` takes the ``LoraConfig`` too."""
    import inspect

    from peft.tuners.lora import Linear

    base = nn.Linear(*features, **placement).requires_grad_(False)  # peft's LoraModel freezes the base
    options = {"r": rank, "lora_alpha": alpha}
    if "config" in inspect.signature(Linear.__init__).parameters:
        from peft import LoraConfig

        options["config"] = LoraConfig(r=rank, lora_alpha=alpha)
    layer = Linear(base, "default", **options).to(**placement)
    nn.init.normal_(layer.lora_B["default"].weight, std=0.01)  # as after training, like trained()
    return layer


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


CUDA_DEFAULTS = {"tokens": 8192, "features": (4096, 4096), "dtype": "bfloat16", "steps": 50, "warmup": 10}
CPU_DEFAULTS = {"tokens": 1024, "features": (1024, 1024), "dtype": "float32", "steps": 15, "warmup": 3}


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
    parser.add_argument("--tokens", type=int, help="default 8192 on cuda, 1024 on cpu")
    parser.add_argument("--features", type=int, nargs=2, metavar=("IN", "OUT"), help="default 4096 4096; cpu 1024 1024")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default bfloat16; cpu float32")
    parser.add_argument("--steps", type=int, help="default 50 on cuda, 15 on cpu")
    parser.add_argument("--warmup", type=int, help="default 10 on cuda, 3 on cpu")
    arguments = parser.parse_args()
    # The GPU case of the issue; on a CPU a smaller one, so the default run takes under a minute on 2 cores.
    defaults = CUDA_DEFAULTS if arguments.device == "cuda" else CPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(arguments, name) is None:
            setattr(arguments, name, value)
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
        except ImportError as error:
            print(f"{name:<10} skipped: not installed ({error.name or error})")
        except Exception as error:  # an installed release that builds its layer another way: say so, go on
            print(f"{name:<10} skipped: could not be built here: {type(error).__name__}: {error}")
    medians = median_steps(layers, x, arguments.steps, arguments.warmup)
    print(f"{'variant':<10} {'ms':>9} {'x floor':>8} {'peak MiB':>9}")
    for name, layer in layers.items():
        peak = peak_bytes(layer, x, torch.randn_like(layer(x)))
        memory = f"{peak / 2**20:9.0f}" if arguments.device == "cuda" else f"{'n/a':>9}"
        print(f"{name:<10} {1000 * medians[name]:9.3f} {medians[name] / medians['floor']:8.2f} {memory}")


if __name__ == "__main__":
    main()
