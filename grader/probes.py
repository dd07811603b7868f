"""Behavioural probes of a LoRA layer: they find its factors through its trainable parameters and
its outputs, never through private names, so every sane layout can be graded."""

from __future__ import annotations

import contextlib
import functools
import math
import re
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest
import torch
from hypothesis import example
from torch import nn

from lora_kata.grading.implementation import PACKAGE, KataUnavailable

CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here: grade on a GPU machine to run the cuda cases"
)
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA)]
FOREIGN_DEFAULT = "meta"  # the default device while the checks below build layers next to a CPU base
MOVED_OFF_THE_DEFAULT_DEVICE = "Cannot copy out of meta tensor"  # the one failure a right answer has there
TRAINING_CASES = [  # (device, dtype) of the toy regression: bf16 too, as LoRA is trained in practice
    pytest.param(device, dtype, id=f"{device}-{dtype}", marks=() if device == "cpu" else CUDA)
    for device in ("cpu", "cuda")
    for dtype in (torch.float32, torch.bfloat16)
]
T = TypeVar("T")


def examples(fields: str, *rows: tuple) -> Callable:
    """One hypothesis ``@example`` per row of values, named by ``fields`` ("a, b, c"), run in the order written, as
    stacked ``@example`` lines are: a property's explicit cases as a table."""
    names = [name.strip() for name in fields.split(",")]

    def decorate(test: Callable) -> Callable:
        for row in reversed(rows):  # decorators apply bottom-up
            test = example(**dict(zip(names, row, strict=True)))(test)
        return test

    return decorate


def describe(value: object) -> str:
    """How a value the implementation returned reads in a verdict: its type, never its repr (which may
    hold a memory address or a grad_fn)."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def dtype_name(dtype: object) -> str:
    """A dtype as a verdict or a case id writes it: ``float16`` for ``torch.float16`` (any other value as ``str``)."""
    return str(dtype).removeprefix("torch.")


def expect_instance(value: object, expected: type[T], call: str, wanted: str) -> T:
    """``value``, after failing the check with what ``call`` returned unless it is an ``expected``."""
    assert isinstance(value, expected), f"{call} returned {describe(value)}, expected {wanted}"
    return value


def output(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, after failing the check unless the forward returned a tensor and left ``x`` as it was."""
    call = f"the {type(layer).__name__}'s forward"
    before = x.detach().clone()
    y = expect_instance(layer(x), torch.Tensor, call, "one torch.Tensor of shape (..., out)")
    changed = not torch.equal(x.detach(), before)
    assert not changed, (
        f"{call} changed its input x in place (measured max change {max_difference(x, before):.3g}, expected none): "
        "leave the caller's tensor alone, no in-place op on x (dropout(..., inplace=True), x.mul_(...))"
    )
    return y


def trainable(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that require grad, in registration order."""
    return [parameter for parameter in module.parameters() if parameter.requires_grad]


def expect_on_the_base_device_and_dtype(
    layer: nn.Module, weight: torch.Tensor, in_features: int, out_features: int, device: str, dtype: torch.dtype
) -> None:
    """The layer's factors live where its base's ``weight`` does, and it computes there for 0 to 2 batch dims."""
    misplaced = [(tuple(t.shape), t.dtype, str(t.device)) for t in trainable(layer)]
    misplaced = [m for m in misplaced if m[1] != dtype or m[2] != str(weight.device)]
    assert not misplaced, (
        f"factors must be created on the base's device and dtype ({device}, {dtype}), "
        f"measured {misplaced}: pass device= and dtype= from base.weight when creating them"
    )
    for batch_shape in [(), (5,), (2, 3)]:
        x = torch.randn(*batch_shape, in_features, dtype=dtype, device=device)
        y = output(layer, x)
        assert (y.shape, y.dtype, y.device) == ((*batch_shape, out_features), dtype, weight.device), (
            f"for x of shape {(*batch_shape, in_features)} expected output {(*batch_shape, out_features)} {dtype} "
            f"on {device}, measured {tuple(y.shape)} {y.dtype} on {y.device}"
        )


def expect_following_its_base_after_to(
    layer: nn.Module, base: nn.Module, in_features: int, out_features: int, device: str, dtype: torch.dtype, what: str
) -> None:
    """``layer`` (``what``, built on a float32 CPU ``base``) converted as model.to(device, dtype) or model.half()
    after adapting converts it: its factors and output follow its base there too, nothing kept from construction
    time (a dtype, a device, a tensor)."""
    layer.to(device=device, dtype=dtype)
    try:
        expect_on_the_base_device_and_dtype(layer, base.weight, in_features, out_features, device, dtype)
    except AssertionError as error:
        raise AssertionError(
            f"after layer.to({device}, {dtype}) of a {what} built on a float32 CPU base: {error}; the output "
            "must follow the base as it is now (no dtype or device stored at construction)"
        ) from None


def trained_numbers(layer: nn.Module, base: nn.Module) -> int:
    """How many numbers ``layer`` trains, after the first premise of any such count: its base is frozen."""
    loose = [name for name, parameter in base.named_parameters() if parameter.requires_grad]
    assert not loose, (
        f"the base's {loose} still require grad, so the layer trains them too and no count of its factors can be "
        "right: freeze the base first (base.requires_grad_(False))"
    )
    return sum(tensor.numel() for tensor in trainable(layer))


@dataclass
class Factors:
    """The two trainable factors of a LoRA layer, seen in the canonical layout A (r, in), B (out, r)."""

    stored_A: torch.Tensor
    stored_B: torch.Tensor
    A_transposed: bool
    B_transposed: bool

    @property
    def A(self) -> torch.Tensor:
        return self.stored_A.T if self.A_transposed else self.stored_A

    @property
    def B(self) -> torch.Tensor:
        return self.stored_B.T if self.B_transposed else self.stored_B

    def grads(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The gradients of A and B in the canonical layout (None where none was computed)."""
        grad_A, grad_B = self.stored_A.grad, self.stored_B.grad
        if grad_A is not None and self.A_transposed:
            grad_A = grad_A.T
        if grad_B is not None and self.B_transposed:
            grad_B = grad_B.T
        return grad_A, grad_B


def factors(layer: nn.Module, in_features: int, out_features: int, r: int) -> Factors:
    """Identify A and B among the layer's trainable tensors by their shapes.

    The caller picks ``in_features``, ``out_features`` and ``r`` all different, so that each shape
    says which factor it is and in which orientation it is stored.
    """
    assert len({in_features, out_features, r}) == 3, "grader bug: factors() needs distinct dimensions"
    tensors = trainable(layer)
    shapes = [tuple(t.shape) for t in tensors]
    A = B = None
    for tensor, shape in zip(tensors, shapes, strict=True):
        if shape in ((r, in_features), (in_features, r)):
            A = Factors(tensor, tensor, shape == (in_features, r), False)
        elif shape in ((out_features, r), (r, out_features)):
            B = Factors(tensor, tensor, False, shape == (r, out_features))
    assert len(tensors) == 2 and A is not None and B is not None, (
        f"expected two trainable factors shaped (r, in)=({r}, {in_features}) and (out, r)=({out_features}, {r}) "
        f"(either orientation), measured trainable shapes {shapes}: is the base frozen, with no extra parameters?"
    )
    return Factors(A.stored_A, B.stored_B, A.A_transposed, B.B_transposed)


def make_a_subclass_instance(layer: nn.Module, LoRALinear: type) -> nn.Module:
    """Turn ``layer`` (a LoRALinear) into an instance of a user's subclass of the package's LoRALinear, the very
    object kept: code that finds adapters by ``type(m) is LoRALinear`` misses it, ``isinstance`` does not."""
    layer.__class__ = type(f"Logging{LoRALinear.__name__}", (LoRALinear,), {"__module__": __name__})
    return layer


def randomize_factors(layer: nn.Module, std: float = 0.1) -> None:
    """Give every trainable tensor of ``layer`` random values, as training would (B stops being zero)."""
    with torch.no_grad():
        for tensor in trainable(layer):
            tensor.normal_(0.0, std)


def rounded_once_from_float64(measured: torch.Tensor, exact: torch.Tensor) -> bool:
    """Whether every entry of ``measured`` (a float32 weight) equals ``exact`` (float64) rounded once to its dtype:
    what a sum carried out in float64 gives, and float32 arithmetic, rounding each product and sum, does not over
    thousands of entries of an update far larger than the weight (whatever the order of its sums)."""
    return torch.equal(measured.detach(), exact.to(measured.dtype))


HALF_DTYPES = (torch.float16, torch.bfloat16)
HALF_MERGE_MISMATCH = 0.01  # of a half-precision merge's weights, the float32 sum rounds the other way near a midpoint
MERGED_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}  # float64's relative to the sum's largest entry


def expect_merged_weight(merged: torch.Tensor, exact: torch.Tensor, where: str, cause: str, hint: str = "") -> None:
    """A merged weight against ``exact``, W + scaling B @ A computed in float64, by the merged weight's own dtype: in
    fp16/bf16 under 1% of the entries differ from ``exact`` rounded once (W, A and B upcast to float32, summed there,
    cast back once); float32 within 1e-5; float64 within 1e-12 of the sum's largest entry (float32 is 1e-7 off).
    The verdict names ``where``, then the likely cause (a NaN weight first, then ``hint``), then ``cause``."""
    new = merged.detach()
    assert new.shape == exact.shape, f"{where}: the weight is {tuple(new.shape)}, expected {tuple(exact.shape)}"
    dtype = new.dtype
    if torch.isnan(new).any():
        hint = "NaN weights (a sqrt of a negative scaling?): "
    if dtype in HALF_DTYPES:
        off = (new != exact.to(dtype)).float().mean().item()
        assert off < HALF_MERGE_MISMATCH, (
            f"{where}: {off:.0%} of its weights differ from W + scaling B @ A computed exactly and rounded once, "
            f"expected under {HALF_MERGE_MISMATCH:.0%}: {hint}{cause}"
        )
        return
    error = max_difference(new, exact)
    tolerance = MERGED_TOLERANCE[dtype] * (1 + exact.abs().max().item() if dtype == torch.float64 else 1)
    if not hint and dtype == torch.float64 and error < MERGED_TOLERANCE[torch.float32]:
        hint = "summed in float32 (a working dtype chosen once for the model?): "
    assert error <= tolerance, (
        f"{where} differs from W + scaling B @ A by {error:.3g}, expected under {tolerance:.1g}: {hint}{cause}"
    )


NUDGE_GAIN = 4096.0  # the larger change of x, which float32 resolves, is this many times the nudge


def expect_base_precision(layer: nn.Module, base: nn.Linear) -> None:
    """Fail the check, saying so, unless the layer's eval-mode output is a tensor in the base's dtype and,
    for a float64 base, computed in float64 throughout.

    An output upcast, or a forward that computes in float32 internally, would otherwise meet the 1e-9
    comparisons of the float64 checks and be blamed on some other cause. The test: nudge x by less than
    float32 resolves. A float64 layer's output, and its adapter's share of it, move by about 1/NUDGE_GAIN of
    what a NUDGE_GAIN times larger change moves them; one that rounds x to float32 does not move at all.
    """
    dtype, device = base.weight.dtype, base.weight.device
    generator = torch.Generator().manual_seed(20211016)  # its own: the checks' random draws stay the same
    x = torch.randn(8, base.in_features, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    was_training = layer.training
    layer.eval()
    try:
        with torch.no_grad():
            y = output(layer, x)
            assert y.dtype == dtype, (
                f"for {dtype} inputs and a {dtype} base the layer returned {y.dtype}: "
                "compute and return in the base's dtype (no .float() or .to(...) on the way)"
            )
            if dtype != torch.float64:
                return
            coarse = x.float().double()
            far = coarse + NUDGE_GAIN * (x - coarse)
            start = output(layer, coarse)
            total = [y - start, output(layer, far) - start]  # the layer's response to the nudge, to the larger change
            adapter = [change - (base(moved) - base(coarse)) for change, moved in zip(total, (x, far), strict=True)]
    finally:
        layer.train(was_training)
    floor = 1e-12 * (1 + y.abs().max().item())  # a response below this is float64 rounding, not the layer's
    for near, larger in (total, adapter):
        predicted = larger.abs().max().item() / NUDGE_GAIN
        measured = near.abs().max().item()
        assert larger.abs().max().item() <= floor or measured >= 1e-3 * predicted, (
            f"with a float64 base the layer's output ignores changes of x below float32 resolution (it moves "
            f"{measured:.2g} where {predicted:.2g} was due): it computes in float32 internally; compute in x's "
            "dtype, with no .float()"
        )


def measured_update(layer: nn.Module, base: nn.Linear) -> torch.Tensor:
    """The (out, in) matrix the layer adds to the base's weight, read off its eval-mode outputs; fails the
    check first when those outputs are not in the base's dtype and precision (expect_base_precision)."""
    expect_base_precision(layer, base)
    was_training = layer.training
    layer.eval()
    try:
        with torch.no_grad():
            identity = torch.eye(base.in_features, dtype=base.weight.dtype, device=base.weight.device)
            return (output(layer, identity) - base(identity)).T
    finally:
        layer.train(was_training)


def plain_lora(
    base: nn.Linear, found: Factors, scaling: float, x: torch.Tensor, upstream: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """What plain LoRA with the layer's factors computes, ``base(x) + scaling (x A^T) B^T``, and the
    gradients of A, B and x for ``upstream`` (dL/dy), by autograd on copies of them."""
    A, B = found.A.detach().clone().requires_grad_(), found.B.detach().clone().requires_grad_()
    x = x.detach().clone().requires_grad_()
    y = base(x) + scaling * (x @ A.T) @ B.T
    y.backward(upstream)
    return y.detach(), {"A": A.grad, "B": B.grad, "x": x.grad}


def expect_plain_lora_gradients(layer: nn.Module, frozen: nn.Module, found: Factors, scaling: float, what: str) -> None:
    """Fail the check, saying so, unless a float64 backward through ``layer`` gives A, B and x plain LoRA's
    gradients (to 1e-9) and none to the parameters of ``frozen``, its base (an nn.Linear or a Conv1D; ``what``: how
    a verdict names the base)."""
    out_features, in_features = linear_weight(frozen).shape
    x = torch.randn(6, in_features, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(6, out_features, dtype=torch.float64)
    (output(layer, x) * upstream).sum().backward()
    touched = [name for name, parameter in frozen.named_parameters() if parameter.grad is not None]
    assert not touched, f"{what}'s {touched} received a gradient: the base must stay frozen"
    _, expected = lora_in_float64(frozen, found, scaling, x, upstream)
    for name, measured in zip("AB", found.grads(), strict=True):
        assert measured is not None, f"factor {name} received no gradient: is it used in forward, not detached?"
        error = max_difference(measured, expected[name])
        assert error < 1e-9, f"gradient of {name} off by {error:.3g}: is the forward exactly base(x) + scaling B A x?"
    error = max_difference(x.grad, expected["x"])
    assert error < 1e-9, (
        f"gradient w.r.t. the input off by {error:.3g}: does a path use x.detach(), or run under torch.no_grad()?"
    )


def scaling_ratio(layer: nn.Module, base: nn.Linear, found: Factors) -> tuple[float, bool]:
    """How many times B @ A the layer adds to the base's weight (least squares), and whether the update
    is proportional to B @ A at all."""
    product = (found.B @ found.A).detach().to(torch.float64)
    measured = measured_update(layer, base).to(torch.float64)
    ratio = ((measured * product).sum() / (product * product).sum()).item()
    proportional = max_difference(measured, ratio * product) <= 1e-9 * (1 + product.abs().max().item())
    return ratio, proportional


def max_difference(measured: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference, computed in float64."""
    for value in (measured, expected):
        expect_instance(value, torch.Tensor, "the implementation", "a torch.Tensor")
    difference = (measured.double() - expected.double()).abs()
    if difference.numel() == 0:  # an empty batch differs nowhere, unless an empty result stands for a full one
        return 0.0 if measured.shape == expected.shape else math.inf
    return difference.max().item()


def train(
    parameters: list[nn.Parameter], loss_fn: Callable[[], torch.Tensor], steps: int, lr: float = 1e-2
) -> list[float]:
    """Run Adam on every parameter that receives a gradient, as an optimizer over
    ``model.parameters()`` does; returns the losses. (``torch.optim`` would import
    torch._dynamo on first use, which costs the grader two seconds.)"""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    moments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    losses = []
    for step in range(1, steps + 1):
        for parameter in parameters:
            parameter.grad = None
        loss = loss_fn()
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            for parameter in parameters:
                if parameter.grad is None:
                    continue
                grad = parameter.grad.float()
                mean, square = moments.get(id(parameter), (torch.zeros_like(grad), torch.zeros_like(grad)))
                mean.lerp_(grad, 1 - beta1)
                square.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                moments[id(parameter)] = (mean, square)
                step_size = lr / (1 - beta1**step)
                update = mean / ((square / (1 - beta2**step)).sqrt() + eps)
                parameter.sub_((step_size * update).to(parameter.dtype))
    return losses


def expect_training_fits_a_low_rank_target(
    make_layer: Callable[[nn.Linear], nn.Module], device: str, dtype: torch.dtype, steps: int = 150
) -> None:
    """Fail the check unless Adam on ``make_layer(base)``'s parameters brings the mean squared error to a
    rank-2 change of the base's outputs below 10% of its start, leaving the base untouched."""
    in_features, out_features = 16, 8
    base = nn.Linear(in_features, out_features, device=device, dtype=dtype)
    frozen = {name: value.clone() for name, value in base.state_dict().items()}
    teacher = 0.5 * torch.randn(out_features, 2, device=device) @ torch.randn(2, in_features, device=device)
    x = torch.randn(64, in_features, device=device, dtype=dtype)
    with torch.no_grad():
        target = base(x) + (x.float() @ teacher.T).to(dtype)
    layer = make_layer(base)

    def loss() -> torch.Tensor:
        return nn.functional.mse_loss(output(layer, x).float(), target.float())

    losses = train(list(layer.parameters()), loss, steps)
    assert losses[-1] < 0.1 * losses[0], (
        f"training loss went from {losses[0]:.3g} to {losses[-1]:.3g} in {steps} Adam steps, expected below 10%: "
        "does the gradient reach both factors?"
    )
    assert all(parameter.grad is None for parameter in base.parameters()), "the base received gradients"
    changed = [name for name, value in base.state_dict().items() if not torch.equal(value, frozen[name])]
    assert not changed, f"training changed the base's {changed}: the base must be frozen"


def expect_r_alpha_and_scaling(layer: nn.Module, r: int, alpha: float) -> None:
    """Fail the check unless the layer records ``r``, ``alpha`` and ``scaling == alpha / r`` as attributes."""
    measured = {name: getattr(layer, name, None) for name in ("r", "alpha", "scaling")}
    assert measured["r"] == r and measured["alpha"] == alpha, (
        f"expected attributes r={r}, alpha={alpha}, measured r={measured['r']}, alpha={measured['alpha']}: "
        "store the constructor's arguments as self.r and self.alpha"
    )
    scaling = measured["scaling"]
    assert scaling is not None and math.isclose(float(scaling), alpha / r), (
        f"expected scaling = alpha / r = {alpha / r:g}, measured {scaling}: set self.scaling = alpha / r"
    )


def expect_centred(A: torch.Tensor, what: str) -> None:
    """Fail the check unless the entries of a factor A drawn at init average near 0 (within half their std, which
    any centred init over a few hundred entries meets): Kaiming-uniform or Gaussian, not torch.rand."""
    A = A.detach().double()
    mean, spread = A.mean().item(), A.std().item()
    assert abs(mean) <= 0.5 * spread, (
        f"{what}: A's {A.numel()} entries average {mean:.3g} at init, with a spread (std) of only {spread:.3g}: draw "
        "them centred on 0, Kaiming-uniform as nn.Linear does or Gaussian with mean 0 (torch.rand draws from [0, 1))"
    )


UNIFORM_LARGEST = 1.8  # a uniform draw's largest |entry| is sqrt(3) = 1.73 std; a bell-shaped one's is above 1.8


def expect_nn_linear_bound_if_uniform(A: torch.Tensor, what: str) -> None:
    """Fail the check unless a factor A (r, in) drawn at init, when uniform, has nn.Linear's Kaiming-uniform
    bound 1/sqrt(in), whichever way it is stored. Give it a few thousand entries: a uniform draw's largest
    |entry| is then within 0.1% of its bound and under UNIFORM_LARGEST std; a Gaussian A may have any spread."""
    r, in_features = A.shape
    A = A.detach().double()
    largest, spread = A.abs().max().item(), A.std().item()
    if largest > UNIFORM_LARGEST * spread:
        return  # Gaussian (or another bell-shaped draw)
    bound = 1 / math.sqrt(in_features)
    cause = "nn.init.kaiming_uniform_(A, a=math.sqrt(5)) on A shaped (r, in), as nn.Linear(in, r) is"
    if math.isclose(largest, 1 / math.sqrt(r), rel_tol=0.01):
        cause = "the fan-in was taken from A stored (in, r), which is r: run kaiming_uniform_ on A.T, or use " + cause
    assert math.isclose(largest, bound, rel_tol=0.01), (
        f"{what}: A (r={r}, in={in_features}) starts uniform within +-{largest:.3g} (max / std = "
        f"{largest / spread:.2f}, a uniform's sqrt(3)), expected nn.Linear's Kaiming-uniform bound 1/sqrt(in) = "
        f"{bound:.3g}: {cause}; or draw A Gaussian (truncated at 2 std or wider is fine), the other init accepted"
    )


def expect_a_random_full_rank_A(make_A: Callable[[], torch.Tensor], what: str) -> None:
    """Fail the check unless the factor A (r, in), r <= in, that ``make_A()`` draws at init is random as the
    lora_linear kata's contract has it, for the katas that inherit that contract: finite, different for another
    seed of torch's RNG, of rank r (rows copied or tiled from fewer random rows get, with B zero, the same gradients
    forever, so the adapter never learns an update of higher rank) and a uniform or Gaussian draw
    (expect_a_uniform_or_gaussian_draw: give it a few thousand entries). Leaves torch's RNG as it found it."""
    draws = []
    with torch.random.fork_rng(devices=[]):
        for seed in (1, 2):
            torch.manual_seed(seed)
            draws.append(make_A().detach().double())
    A = draws[0]
    assert bool(A.isfinite().all()), f"{what}: A holds NaN or inf at init: initialise it (torch.empty is not)"
    assert not torch.equal(*draws), (
        f"{what}: A is the same under torch.manual_seed(1) and (2): draw it from torch's RNG, not a fixed seed"
    )
    rank, r = torch.linalg.matrix_rank(A).item(), min(A.shape)
    assert rank == r, (
        f"{what}: A ({A.shape[0]}, {A.shape[1]}) has rank {rank} at init, expected r = {r}: are its rows copies of "
        "one another (a few random rows tiled or repeated)? With B zero, equal rows get equal gradients forever; "
        "draw every entry, nn.init.kaiming_uniform_(A, a=math.sqrt(5)) or a Gaussian"
    )
    expect_a_uniform_or_gaussian_draw(A, what)


SHAPE_DISTANCE = 0.1  # Kolmogorov-Smirnov distance from Uniform(0, 1): a uniform draw of 4096 is about 0.02 off


def expect_a_uniform_or_gaussian_draw(A: torch.Tensor, what: str) -> None:
    """Fail the check unless a factor A drawn at init (give it a few thousand entries) comes from a continuous
    distribution, uniform or bell-shaped (Gaussian, truncated or not): nearly all its entries distinct and, when
    uniform (its largest |entry| under UNIFORM_LARGEST std), its |entries| spread evenly over [0, largest] (within
    SHAPE_DISTANCE of Uniform(0, largest)). Random signs times a bound, or a few levels, are neither."""
    A = A.detach().double().flatten()
    values = torch.unique(A)
    assert values.numel() >= A.numel() // 2, (
        f"{what}: A's {A.numel()} entries take only {values.numel()} distinct values at init "
        f"({', '.join(f'{v:.3g}' for v in values[:3].tolist())}{', ...' if values.numel() > 3 else ''}), expected "
        "nearly all distinct, as a draw from a continuous distribution gives: random signs or a few levels times a "
        "bound are neither uniform nor Gaussian; use nn.init.kaiming_uniform_(A, a=math.sqrt(5)) or a Gaussian"
    )
    largest, spread = A.abs().max().item(), A.std().item()
    if largest > UNIFORM_LARGEST * spread:
        return  # bell-shaped: its tails tell it from a uniform draw
    magnitudes = (A.abs() / largest).sort().values
    evenly = torch.arange(1, A.numel() + 1, dtype=torch.float64) / A.numel()
    distance = (evenly - magnitudes).abs().max().item()
    assert distance <= SHAPE_DISTANCE, (
        f"{what}: A starts within +-{largest:.3g} (max / std = {largest / spread:.2f}, a uniform's sqrt(3)), but its "
        f"|entries| are {distance:.2f} off Uniform(0, {largest:.3g}) (Kolmogorov-Smirnov distance, expected under "
        f"{SHAPE_DISTANCE}): not uniform, nor Gaussian; use nn.init.kaiming_uniform_(A, a=math.sqrt(5)) or a Gaussian"
    )


def expect_value_error(call: Callable[[], object], description: str) -> None:
    """Fail the check unless ``call()`` raises a ValueError that has a message."""
    try:
        call()
    except (NotImplementedError, KataUnavailable):
        raise
    except ValueError as error:
        assert str(error).strip(), f"{description} raised a ValueError without a message: say what is wrong"
        return
    except Exception as error:
        pytest.fail(f"{description} raised {type(error).__name__} ({error}); expected a ValueError", pytrace=False)
    pytest.fail(f"{description} raised nothing; expected a ValueError saying what is wrong", pytrace=False)


# Relative error (Frobenius norm) a correct answer stays under, per dtype: a few roundings of that dtype.
RELATIVE_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 8e-3, torch.bfloat16: 5e-2}
# r and alpha whose alpha / r (10 / 3) float32 does not hold: a float64 case with them sees a float32-rounded scaling
# (off by 2.4e-8 relative), which a dyadic one (10 / 4) hides.
UNROUNDED_R, UNROUNDED_ALPHA = 3, 10.0
FLOAT32_ROUNDING_IN_FLOAT64 = (
    ": off by float32 rounding: a float64 layer computes in float64 throughout (a scaling alpha / r kept as a "
    "float32 tensor, torch.tensor(alpha / r), rounds it): keep it a Python float or in the base's dtype"
)
FLOAT32_ROUNDING_KEPT_FROM_CONSTRUCTION = (
    ": off by float32 rounding, in a layer built in torch.float32 and converted by .to(torch.float64): something "
    "made at construction kept float32's rounding (a scaling alpha / r kept as a tensor in the base's dtype of then "
    "rounds it, and .to() only upcasts the rounded value): keep alpha / r a Python float"
)
FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Within the block torch's default dtype is ``dtype`` (a training script that set float64, say), restored after."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def relative_error(measured: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    """||measured - expected|| / ||expected|| in float64 (the absolute error when expected is 0); with ``scale``
    (the same sums over the terms' magnitudes, lora_in_float64(..., absolute=True)), over the larger of the two."""
    difference = (measured.detach().double() - expected.detach().double()).norm().item()
    reference = expected.detach().double().norm().item()
    if scale is not None:
        reference = max(reference, scale.detach().double().norm().item())
    return difference / max(reference, 1e-30)


def linear_weight(base: nn.Module) -> torch.Tensor:
    """The weight of ``base`` as an nn.Linear stores it, (out, in): a Conv1D (GPT-2's) stores it (in, out)."""
    return base.weight if isinstance(base, nn.Linear) else base.weight.T


def lora_in_float64(
    base: nn.Module,
    found: Factors,
    scaling: float,
    x: torch.Tensor,
    upstream: torch.Tensor | None,
    kept: torch.Tensor | None = None,
    absolute: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Plain LoRA computed exactly (float64) from the current values of the base, the factors and x:
    ``base(x) + scaling (x A^T) B^T``, and with ``upstream`` the gradients of A, B and x. With ``kept``, a dropout
    mask (0, or 1 / (1 - p)) broadcast over x, the adapter's input is ``kept * x``. ``base`` is an nn.Linear or a
    Conv1D, or a subclass with a forward of its own, or one with hooks: base(x) is the base's own call (its forward
    and hooks run) with its parameters in float64, and the update is added to it, from the layer's own input x.
    ``absolute``: the same sums over the absolute values of every term, the scale a rounding error of
    each result is relative to (where terms cancel, the result itself is far smaller)."""
    magnitude = torch.Tensor.abs if absolute else (lambda tensor: tensor)
    parameters = {name: magnitude(p.detach().double()) for name, p in base.named_parameters(remove_duplicate=False)}
    A = magnitude(found.A.detach().double()).requires_grad_()
    B = magnitude(found.B.detach().double()).requires_grad_()
    x = magnitude(x.detach().double()).requires_grad_()
    with torch.enable_grad():
        z = x if kept is None else x * kept.double()
        own = torch.func.functional_call(base, parameters, (x,))  # base(x): its own forward and hooks, in float64
        y = own + (abs(scaling) if absolute else scaling) * (z @ A.T) @ B.T
        if upstream is None:
            return y.detach(), {}
        y.backward(magnitude(upstream.double()))
    return y.detach(), {"A": A.grad, "B": B.grad, "x": x.grad}


def strided(shape: tuple[int, ...], contiguous: bool, **placement: object) -> torch.Tensor:
    """A random tensor of ``shape``; when not ``contiguous``, a view of a larger one taking every other
    element of the last dimension, its first two batch dimensions (if any) swapped: then ``.view(-1, in)``
    cannot flatten it."""
    if contiguous:
        return torch.randn(*shape, **placement)
    if len(shape) >= 3:
        swapped = (shape[1], shape[0], *shape[2:-1], 2 * shape[-1])
        return torch.randn(*swapped, **placement).transpose(0, 1)[..., ::2]
    return torch.randn(*shape[:-1], 2 * shape[-1], **placement)[..., ::2]


# The grad modes a forward is called in, by their words in a verdict: a training step, torch.no_grad(), and
# torch.inference_mode() (generation, serving), which a cache or a branch on torch.is_inference_mode_enabled() tells
# apart from no_grad.
GRAD_MODES = {"grad on": torch.enable_grad, "grad off": torch.no_grad, "inference mode": torch.inference_mode}


def expect_exactly_the_base(layer: nn.Module, base: nn.Module, x: torch.Tensor, where: str) -> None:
    """Fail the check unless ``layer(x)`` is ``base(x)`` bit for bit in every grad mode ("at construction the layer
    computes exactly base(x)": a training step and inference alike), naming the likely cause: the base's arithmetic
    written out (F.linear, x @ W + b), which skips the forward of a subclass (models.GatedForward) or the base's hooks
    (models.with_forward_hooks); base(x) computed another way (a merged weight); or B not zero. ``base`` is an
    nn.Linear or a Conv1D (weight (in, out)); ``where`` describes the base and x ("a Linear base and x (3, 12)")."""
    rounding = 10 * torch.finfo(x.dtype).eps
    for grad in GRAD_MODES:
        with GRAD_MODES[grad]():
            expected, measured = base(x), output(layer, x)
        here = f"with {grad}, {where}"
        assert measured.shape == expected.shape, (
            f"{here}: output shape {tuple(measured.shape)}, expected {tuple(expected.shape)}: map (..., in) to "
            "(..., out), with in and out read off the base's weight"
        )
        if torch.equal(measured, expected):
            continue
        change = max_difference(measured, expected)
        with torch.no_grad():
            unhooked = base.forward(x)  # base(x) without the base's hooks
            arithmetic = nn.functional.linear(x, linear_weight(base), base.bias)  # without its own forward, too
        scale = rounding * (1 + expected.abs().max().item())  # a few roundings of x's dtype
        hooked = bool(base._forward_hooks or base._forward_pre_hooks)
        if hooked and max_difference(measured, unhooked) <= scale:
            cause = ("it computes base.forward(x) (or the base's arithmetic, F.linear or x @ W + b), skipping the "
                     "base's forward hooks and pre-hooks (accelerate's offloading runs there): "
                     "call base(x)")  # fmt: skip
        elif max_difference(measured, arithmetic) <= scale < max_difference(unhooked, arithmetic):
            cause = ("it computes the base's arithmetic (F.linear(x, base.weight, base.bias), x @ W + b for a "
                     "Conv1D), skipping the subclass's own forward: call base(x)")  # fmt: skip
        elif change <= scale:
            cause = ("a rounding apart: base(x) is computed another way (a merged or fused weight?); add the adapter's "
                     "share to base(x) itself")  # fmt: skip
        else:
            cause = "is B initialised to zeros?"
        raise AssertionError(f"{here}: the output at init differs from base(x) by {change:.3g}, expected 0: {cause}")


# A word of a RuntimeError the forward raises in one regime only, and its likely cause.
FORWARD_FAILURES = {
    "view": "x may be non-contiguous: use reshape, not view",
    "dtype": "a tensor made on the way (a dropout mask?) is not in x's dtype: make it like x (torch.rand_like(x))",
    "of 0 elements": "x may hold no rows (an empty batch): flatten with x.reshape(-1, x.shape[-1]) and restore with "
    "reshape(*x.shape[:-1], out), never a -1 beside a 0 (reshape(N, -1), reshape(*lead, -1))",
    "Inference tensors": "a tensor an earlier call made under torch.inference_mode() is kept (a constant cached at the "
    "first call, say) and autograd refuses it: nothing a call makes may outlive it",
}


OWN_FORWARD_OR_HOOKS = (
    ": the base has hooks or a forward of its own (a subclass's gain); the output is base(x), the base's own call "
    "with its hooks, plus scaling (x A^T) B^T of the layer's own input x: the update is not computed inside the base "
    "(a hook on it sees the input its pre-hooks changed) nor put into its weight (W + dW^T run through the base's "
    "forward is scaled by the subclass's gain, fed the pre-hooked input)"
)


def own_forward_or_hooks(base: nn.Module) -> bool:
    """Whether ``base`` has forward hooks or pre-hooks, or parameters besides weight and bias (a subclass's own
    forward uses them: models.gated's gain): its output is not its layer's arithmetic, and an update that goes
    through the base shows."""
    hooked = bool(base._forward_hooks or base._forward_pre_hooks)
    return hooked or bool({name for name, _ in base.named_parameters()} - {"weight", "bias"})


def forward_in_regime(
    layer: nn.Module, x: torch.Tensor, where: str, failures: dict[str, str] = FORWARD_FAILURES
) -> torch.Tensor:
    """``layer(x)``, failing the check with the likely cause when the forward raises a RuntimeError one of
    ``failures`` (a word of its message: the cause) explains."""
    try:
        return output(layer, x)
    except RuntimeError as error:
        message = str(error).splitlines()[0]
        cause = next((text for word, text in failures.items() if word in message), None)
        if cause is None:
            raise
        pytest.fail(f"{where}: the forward raised RuntimeError ({message}), expected a {x.dtype} output: {cause}",
                    pytrace=False)  # fmt: skip


def expect_plain_lora_in_regime(
    layer: nn.Module,
    base: nn.Module,
    r: int,
    scaling: float,
    batch_shape: tuple[int, ...],
    contiguous: bool,
    grad: str,
    regime: str,
    dropout: float = 0.0,
    built_in: torch.dtype | None = None,
) -> None:
    """Fail the check unless ``layer`` (factors made trained-looking here) computes plain LoRA, and with
    ``grad`` "grad on" its gradients, in the grad mode ``grad`` (of GRAD_MODES) and the regime the caller set up
    (dtype, mode, call style: described by ``regime``), the layer called in the other grad modes first, then again
    after its base is edited in place, then one entry of the base through .data, then its factors through .data,
    then one entry of each, then two entries of each swapped (a factor's sum kept), then after
    load_state_dict(..., assign=True) put new Parameters in place of all of its own (as loading onto a model built on
    the meta device does): nothing may be cached between calls, nor a factor held from construction. With
    ``dropout``, the layer's probability, active in this regime: each row of x holds one nonzero feature, so the
    mask can be told from the output, each row's adapter share dropped (0) or kept (1 / (1 - p)). ``base`` is an
    nn.Linear or a Conv1D (weight (in, out)). ``built_in``: the dtype the layer was built in, when the caller
    converted it to the base's dtype since (layer.to(dtype))."""
    dtype = base.weight.dtype
    out_features, in_features = linear_weight(base).shape
    found = factors(layer, in_features, out_features, r)
    # Each call after the first edits one thing: a cache keyed on the other (say on the factors' versions, while the
    # base changed) computes with stale values; an edit through .data bumps no version at all, and one of a single
    # entry leaves a checksum of a few entries as it was; a swap of two entries keeps even a factor's sum.
    steps = ("", " after its base was edited in place", " after one entry of its base was edited through .data",
             " after its factors were edited through .data",
             " after one entry of each factor was edited through .data",
             " after two entries of each factor were swapped through .data",
             " after load_state_dict(..., assign=True) replaced its Parameters")  # fmt: skip
    # The layer is called in every other grad mode first (an evaluation under inference_mode before training): what
    # a call keeps from another mode (a tensor made at the first call) must not change this one.
    earlier = [mode for mode in reversed(GRAD_MODES) if mode != grad]  # inference mode first
    for mode in earlier:
        with GRAD_MODES[mode]():
            forward_in_regime(layer, strided((*batch_shape, in_features), contiguous, dtype=dtype), f"{regime}, {mode}")
    regime = f"{regime}, the layer called under {' and '.join(earlier)} first"
    for step in steps:
        with torch.no_grad():
            if "base was edited in place" in step:
                base.weight.mul_(-0.5).add_(0.25)
            elif "base" in step:
                base.weight.data[-1, -1] += 1.0
            elif "assign" in step:
                factor_storage = {found.stored_A.data_ptr(), found.stored_B.data_ptr()}
                state = {
                    name: value.clone().normal_(0.0, 0.5) if value.data_ptr() in factor_storage else value.clone()
                    for name, value in layer.state_dict().items()
                }
                layer.load_state_dict(state, assign=True)
                found = factors(layer, in_features, out_features, r)
            elif "one entry" in step:
                for tensor in (found.stored_A, found.stored_B):
                    tensor.data[(-1,) * tensor.dim()].add_(1.0)  # a view of one entry, whatever the layout
            elif "swapped" in step:
                for tensor in (found.stored_A, found.stored_B):  # views of single entries, whatever the layout
                    first, last = tensor.data[(0,) * tensor.dim()], tensor.data[(-1,) * tensor.dim()]
                    if tensor.numel() < 2 or torch.equal(first, last):  # nothing to swap with: a change of one entry
                        last.add_(1.0)
                    else:  # two entries swapped: the factor's sum (a checksum a cache may key on) stays as it was
                        held = first.clone()
                        first.copy_(last)
                        last.copy_(held)
            else:
                for tensor in (found.stored_A, found.stored_B):
                    tensor.data.normal_(0.0, 0.5)
        if "assign" in step:
            cause = (": does the forward compute with the Parameters it was built with (a tuple or list of them, kept "
                     "at construction)? read them off the module at every call")  # fmt: skip
        elif own_forward_or_hooks(base):
            cause = OWN_FORWARD_OR_HOOKS
        else:
            cause = ": does the forward depend on the mode, the call style, or a value cached from an earlier call?"
        expect_one_plain_lora_call(layer, base, found, scaling, batch_shape, contiguous, grad, regime + step, cause,
                                   dropout=dropout, built_in=built_in)  # fmt: skip


def expect_one_plain_lora_call(
    layer: nn.Module,
    base: nn.Module,
    found: Factors,
    scaling: float,
    batch_shape: tuple[int, ...],
    contiguous: bool,
    grad: str,
    where: str,
    cause: str,
    dropout: float = 0.0,
    built_in: torch.dtype | None = None,
    frozen: tuple[bool, bool] = (False, False),
) -> None:
    """Fail the check unless one call of ``layer`` on a fresh x (batch ``batch_shape``, ``contiguous`` or not), in
    grad mode ``grad``, computes plain LoRA with the factors ``found`` and, with "grad on" (x requiring grad), its
    gradients of x and of each factor not ``frozen`` (A, B), against float64. ``where`` describes the regime,
    ``cause`` (": ...") is the likely cause of an output off plain LoRA; ``dropout`` and ``built_in`` are
    ``expect_plain_lora_in_regime``'s. A forward never unfreezes a frozen factor."""
    dtype = base.weight.dtype
    tolerance = RELATIVE_TOLERANCE[dtype]
    out_features, in_features = linear_weight(base).shape
    x = strided((*batch_shape, in_features), contiguous, dtype=dtype)
    told = torch.ones_like(x)  # where dL/dx is known: with dropout, only where x is nonzero (the mask is seen)
    if dropout:  # one nonzero feature per row, written in place: x stays as (non-)contiguous as it was
        rows = torch.arange(x[..., 0].numel()).view(x.shape[:-1])
        told = nn.functional.one_hot(rows % in_features, in_features).to(dtype)
        x.mul_(told)
    training_step = grad == "grad on"
    upstream = torch.randn(*batch_shape, out_features, dtype=dtype) if training_step else None
    where = f"{where}, x {tuple(x.shape)}{'' if contiguous else ' non-contiguous'}"
    with GRAD_MODES[grad]():
        if training_step:
            x.requires_grad_()
        y = forward_in_regime(layer, x, where)
    pair = (found.stored_A, found.stored_B)
    unfrozen = [name for name, tensor, held in zip("AB", pair, frozen, strict=True) if held and tensor.requires_grad]
    assert not unfrozen, (
        f"{where}: the forward set requires_grad back on factor {unfrozen}, expected it left frozen: the caller's "
        "requires_grad_(False) is theirs to keep"
    )
    kept = None
    if dropout:
        plain, share = (lora_in_float64(base, found, s, x, None)[0] for s in (scaling, 0.0))
        plain, measured = plain - share, y.detach().double() - share  # each row's adapter share
        ratio = (measured * plain).sum(-1, keepdim=True) / (plain * plain).sum(-1, keepdim=True).clamp_min(1e-30)
        kept = (ratio > 0.5 / (1 - dropout)).double() / (1 - dropout)
    expected, gradients = lora_in_float64(base, found, scaling, x, upstream, kept)
    # In half precision, a sum whose terms nearly cancel is far smaller than its rounding: errors are measured
    # against the sum of the terms' magnitudes there (float32 and float64 keep the plain relative error).
    half = dtype in (torch.float16, torch.bfloat16)
    scale, scales = lora_in_float64(base, found, scaling, x, upstream, kept, absolute=True) if half else (None, {})
    assert (tuple(y.shape), y.dtype) == (tuple(expected.shape), dtype), (
        f"{where}: the output is {y.dtype} {tuple(y.shape)}, expected {dtype} {tuple(expected.shape)}: "
        "map (..., in) to (..., out) in the base's dtype, for any number of batch dimensions"
    )
    error = relative_error(y, expected, scale)
    if any(frozen):
        cause = f": {FROZEN_CAUSE}"
    elif built_in == torch.float32 and dtype == torch.float64 and error <= RELATIVE_TOLERANCE[torch.float32]:
        cause = FLOAT32_ROUNDING_KEPT_FROM_CONSTRUCTION
    elif dtype == torch.float64 and error <= RELATIVE_TOLERANCE[torch.float32]:
        cause = FLOAT32_ROUNDING_IN_FLOAT64
    assert error <= tolerance, (
        f"{where}: the output is off plain LoRA base(x) + scaling (x A^T) B^T by {error:.2g} (relative), "
        f"expected under {tolerance:.0e}"
        + (f" for any dropout mask (p={dropout}), each input zeroed or scaled by 1/(1-p)" if dropout else "")
        + cause
    )
    if not training_step:
        return
    y.backward(upstream)
    grad_cause = FROZEN_CAUSE if any(frozen) else "is a constant factor or a detach on the way in this regime?"
    unused_cause = FROZEN_CAUSE if any(frozen) else "is it used in forward, not detached?"
    assert x.grad is not None, f"{where}: x received no gradient: {unused_cause}"
    measured_x, expected_x = x.grad * told, gradients["x"] * told.double()
    error = relative_error(measured_x, expected_x, scales.get("x"))
    base_alone = lora_in_float64(base, found, 0.0, x, upstream)[1]["x"] * told.double()
    only_the_base = relative_error(measured_x, base_alone, scales.get("x")) <= tolerance
    assert error <= tolerance, (
        f"{where}: dL/dx is off plain LoRA's g W + scaling (g B) A by {error:.2g} (relative), expected under "
        f"{tolerance:.0e}" + (" (it is the base's alone: the adapter's share is lost)" if only_the_base else "")
        + f": {grad_cause}"
    )  # fmt: skip
    for name, measured, held in zip("AB", found.grads(), frozen, strict=True):
        if held:
            continue
        assert measured is not None, f"{where}: factor {name} received no gradient: {unused_cause}"
        error = relative_error(measured, gradients[name], scales.get(name))
        assert error <= tolerance, (
            f"{where}: the gradient of {name} is off plain LoRA's by {error:.2g} (relative), expected under "
            f"{tolerance:.0e}: {grad_cause}"
        )
    for tensor in pair:
        tensor.grad = None


def made_under_a_foreign_default_device(make: Callable[[], T], reads_constants: bool = False) -> T | None:
    """``make()`` run with ``meta`` as torch's default device, for a CPU base built before: what it creates
    without saying where lands on ``meta``, as it would land on the CPU next to a GPU base. This shows on any
    machine what only a GPU showed. None when ``make()`` could not run so because it created a tensor on the
    default device and moved it (``.to(base.weight)``, ``copy_``), which is right, and cannot be told apart here;
    any other failure there (``.item()`` of such a tensor, or such a tensor meeting the inputs in one op) fails
    the check, unless ``reads_constants``: where the spec lets an answer read a constant it made on the default
    device (``.item()``, ``.numpy()`` of a code book: on a GPU machine that is the CPU, and works), any failure on
    a meta tensor gives None, and only results left on the default device tell a tensor made without device=.

    Only when the answer leaves something on the default device is a meta tensor made at all (the first meta
    op costs torch seconds of imports): a right answer pays nothing.
    """
    try:
        with torch.device(FOREIGN_DEFAULT):
            return make()
    except (NotImplementedError, RuntimeError, TypeError) as error:
        if FOREIGN_DEFAULT not in str(error):
            raise
        if MOVED_OFF_THE_DEFAULT_DEVICE in str(error) or reads_constants:
            return None
        if re.search(r"not on the expected device|Expected all tensors to be on the same device", str(error)):
            cause = "a tensor made without a device met the inputs'"
        else:
            cause = f"the answer raised {type(error).__name__}: it read a tensor it created without device="
        pytest.fail(
            f"with {FOREIGN_DEFAULT} as torch's default device (a CPU base), {cause} ({str(error).splitlines()[0]}): "
            "a tensor made without device= lands on torch's default device, not the base's (under "
            "torch.set_default_device('cuda') a CUDA one next to a CPU base, which PyTorch refuses even 0-dim); create "
            "every tensor with device= (and dtype=) of the base or an input",
            pytrace=False,
        )


def expect_on_the_base_device(tensors: list[torch.Tensor], base_device: torch.device, what: str) -> None:
    """Fail the check unless every tensor of ``tensors`` is on ``base_device`` (after made_under_a_foreign...)."""
    misplaced = sorted({str(t.device) for t in tensors if t.device != base_device})
    assert not misplaced, (
        f"{what} on {misplaced[0]}, the default device of this check, not on the base's {base_device}: create "
        "them with device=base.weight.device (on a GPU they would land on the CPU)"
    )


# Train-mode dropout, read back off a LoRA layer's outputs (a LoRALinear, or a LoRAConv1D measured through an
# nn.Linear computing what its Conv1D does). With r = in < out the eval-mode update dW (out, in) has full column
# rank, so a train-mode output minus base(x), dW z, gives back the adapter's input z: no factor or scaling is
# assumed, so a wrong scaling is not blamed on dropout.
DROPOUT = 0.25  # not 0.5, where 1/p = 1/(1-p) and a drop probability reads the same as a keep probability
DROP_IN, DROP_OUT, DROP_R = 8, 12, 8  # the float64 base and rank a probed layer is built with
DROP_SHAPE = (4, 16)  # a (4, 16, in) batch, one train-mode call in each regime below: 2560 mask entries
# (grad mode of GRAD_MODES, the base's own mode) of each call: the wrapper is in train mode in all, and dropout
# follows it alone (torch.inference_mode() is no eval mode).
DROP_REGIMES = (
    ("grad off", True), ("grad on", True), ("grad off", False), ("grad on", False), ("inference mode", True)
)  # fmt: skip
DROP_CALLS = len(DROP_REGIMES)
DROP_TOLERANCE = 0.06  # on the zeroed fraction: 7 standard deviations over 2560 draws at p = 0.25
# How closely a probed layer's outputs are read, relative to their size, by its base's dtype: float64, or float32
# for a base that has no float64 (an NF4 one); a multiplier within 1000 times that of 0 is a zeroed input.
DROP_PRECISION = {torch.float64: 1e-9, torch.float32: 1e-5}


def dropout_regimes(call: int | None = None) -> str:
    """The regime of train-mode call ``call`` of DROP_REGIMES, or of all of them, in words."""
    words = [f"{grad}, base in {'train' if t else 'eval'} mode" for grad, t in DROP_REGIMES]
    return "; ".join(words) if call is None else words[call]


def frozen_submodules(layer: nn.Module) -> list[nn.Module]:
    """The submodules of ``layer`` holding parameters of their own, none of them trainable: its base."""
    return [
        module
        for module in layer.modules()
        if module is not layer
        and list(module.parameters(recurse=False))
        and not any(p.requires_grad for p in module.parameters(recurse=False))
    ]


def _train_mode_change(
    layer: nn.Module, linear: nn.Linear, x: torch.Tensor, grad: str, base_training: bool, upstream: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``layer(x) - linear(x)`` for the layer in train mode, in the grad mode ``grad`` (of GRAD_MODES), its base put
    in ``base_training``, and with grad on dL/dx for dL/dy = ``upstream``. With grad on, x reaches the layer as an
    intermediate activation (it has a grad_fn), as inside a model: ``output`` then sees an in-place dropout of it."""
    layer.train()
    for module in frozen_submodules(layer):
        module.train(base_training)
    training_step = grad == "grad on"
    leaf = x.detach().clone().requires_grad_(training_step)
    with GRAD_MODES[grad]():
        y = output(layer, leaf * 1.0 if training_step else leaf)
        if training_step:
            y.backward(upstream)
    with torch.no_grad():
        return y.detach() - linear(x), leaf.grad


def adapter_input_multipliers(layer: nn.Module, linear: nn.Linear, p: float = DROPOUT) -> torch.Tensor:
    """What train-mode dropout multiplied each adapter input of ``layer`` by, over one call in each of DROP_REGIMES
    on one batch: shape (calls, *DROP_SHAPE, in), 0 where an input was zeroed and 1 / (1 - p) where it was kept,
    for nn.Dropout. ``layer`` was made with dropout ``p`` and r = in < out on a float64 base (float32 for an NF4
    one) that computes what ``linear`` computes (``linear`` itself for a LoRALinear). Fails the check unless eval
    mode drops nothing, every call zeroed some inputs and every input came out zeroed or multiplied by one common
    factor; the multipliers come back as exactly 0 and that factor."""
    dtype = linear.weight.dtype
    precision, zero = DROP_PRECISION[dtype], 1e3 * DROP_PRECISION[dtype]
    randomize_factors(layer, std=0.5)
    update = measured_update(layer, linear)
    repeat = max_difference(update, measured_update(layer, linear))
    assert repeat == 0, (
        f"in eval mode with dropout={p}, outputs vary by {repeat:.3g} between calls: "
        "dropout must be off in eval mode (this check reads the update off eval-mode outputs)"
    )
    in_features, out_features = linear.in_features, linear.out_features
    ignored = [i for i in range(in_features) if not update[:, i].any()]
    assert not ignored, (
        f"in eval mode (dropout={p}) the output ignores inputs {ignored} of {in_features}: "
        "eval mode still drops adapter inputs (a mask drawn in __init__?); dropout must be off in eval mode"
    )
    rank = torch.linalg.matrix_rank(update).item()
    assert rank == in_features, (
        f"with random factors and r = in = {in_features}, the update dW has rank {rank}, expected {in_features}: "
        "dW must be scaling B @ A (see test_update_is_scaling_times_B_at_A)"
    )
    x = (1 + torch.rand(*DROP_SHAPE, in_features, dtype=dtype)) * torch.randn(*DROP_SHAPE, in_features).sign()
    with torch.no_grad():
        nonlinear = max_difference(output(layer.eval(), x), linear(x) + x @ update.T)
    upstream = torch.randn(*DROP_SHAPE, out_features, dtype=dtype)
    calls = [_train_mode_change(layer, linear, x, *regime, upstream) for regime in DROP_REGIMES]
    changes, input_grads = torch.stack([change for change, _ in calls]), [grad for _, grad in calls]
    size = 1 + changes.abs().max().item()
    assert nonlinear <= precision * size, (
        f"in eval mode the output differs by {nonlinear:.3g} from base(x) + x dW^T, with dW read off one-hot inputs: "
        "the update must be linear in x (see test_update_is_scaling_times_B_at_A); this check reads masks through it"
    )
    kind = type(layer).__name__
    assert max_difference(changes, torch.broadcast_to(x @ update.T, changes.shape)) > precision * size, (
        f"dropout={p} changed nothing over {DROP_CALLS} train-mode calls ({dropout_regimes()}): apply nn.Dropout(p) "
        f"to the adapter's input, on whenever the {kind} is in train mode"
    )
    idle = [
        dropout_regimes(i) for i in range(DROP_CALLS) if max_difference(changes[i], x @ update.T) <= precision * size
    ]
    assert not idle, (
        f"dropout={p} changed nothing in the train-mode call with {idle[0]}, but did in others: dropout follows "
        f"the {kind}'s train mode alone (self.training), whatever the grad mode or the base's own mode"
    )
    inputs = changes.double() @ torch.linalg.pinv(update.double()).T
    residual = max_difference(inputs @ update.T.double(), changes)
    assert residual <= precision * size, (
        f"a train-mode output (dropout={p}) minus base(x) is dW applied to no input at all (off by {residual:.3g}): "
        "drop the adapter's input x, not its output"
    )
    multipliers = inputs / x.double()
    kept = multipliers[multipliers.abs() > zero]
    assert kept.numel() > 0, f"dropout={p} zeroed every adapter input in train mode: it must drop a fraction p"
    assert (kept.max() - kept.min()).item() <= zero * kept.abs().max().item(), (
        f"a train-mode output (dropout={p}) matches no input-dropout mask: each adapter input must come out zeroed "
        "or multiplied by one common factor 1/(1-p); is dropout applied to x, before A, and not between A and B?"
    )
    multipliers = torch.where(multipliers.abs() > zero, kept.mean(), 0.0)  # rounding gone: exactly 0 or the factor
    for call, measured in enumerate(input_grads):
        if measured is None:
            continue
        expected = upstream @ linear.weight.detach() + (upstream @ update) * multipliers[call]
        error = max_difference(measured, expected)
        assert error <= precision * (1 + expected.abs().max().item()), (
            f"in the train-mode call with {dropout_regimes(call)}, dL/dx is off by {error:.3g} from the base's share "
            "plus the adapter's through the dropout mask: is the adapter fed x.data or x.detach()? use dropout(x), "
            "in the graph"
        )
    return multipliers


def expect_kept_inputs_rescaled(multipliers: torch.Tensor, p: float) -> None:
    """Fail the check unless the inputs dropout kept (``adapter_input_multipliers``) were scaled by 1 / (1 - p)."""
    kept = multipliers[multipliers.abs() > 1e-6]
    scale, expected = kept.mean().item(), 1 / (1 - p)
    causes = {
        1.0: "the 1/(1-p) rescale of the kept inputs is missing; nn.Dropout does it",
        1 / p: "that is 1/p: is p taken as the keep probability, nn.Dropout(1 - p)?",
    }
    cause = next((text for value, text in causes.items() if math.isclose(scale, value, rel_tol=1e-6)), "")
    assert math.isclose(scale, expected, rel_tol=1e-6), (
        f"with dropout={p} the kept adapter inputs are multiplied by {scale:.4g}, expected 1/(1-p) = {expected:.4g}: "
        + (cause or "scale the kept inputs by 1/(1-p), as nn.Dropout does")
    )


def expect_a_fraction_p_zeroed(multipliers: torch.Tensor, p: float) -> None:
    """Fail the check unless dropout zeroed a fraction p of the inputs (within DROP_TOLERANCE)."""
    zeroed = (multipliers.abs() <= 1e-6).double().mean().item()
    cause = "zero each input independently with probability p, as nn.Dropout(p) does"
    if abs(zeroed - (1 - p)) <= DROP_TOLERANCE:
        cause = "p is the probability of zeroing an input, not of keeping it: " + cause
    assert abs(zeroed - p) <= DROP_TOLERANCE, (
        f"with dropout={p} train mode zeroed {zeroed:.1%} of {multipliers.numel()} adapter inputs, "
        f"expected {p:.0%} (within {DROP_TOLERANCE:.0%}): {cause}"
    )


def expect_a_fresh_mask_for_every_element_and_call(multipliers: torch.Tensor) -> None:
    """Fail the check unless each call drew its own mask, one independent entry per element of x, as nn.Dropout
    does: no call repeats another's mask, no index along any dimension (batch, position, feature) gets the very
    mask of index 0 in every call, and the number of inputs kept varies from call to call (no exact fraction)."""
    kept = multipliers.abs() > 1e-6  # (calls, *DROP_SHAPE, in)
    calls = range(kept.shape[0])
    repeats = [(first, then) for then in calls for first in range(then) if torch.equal(kept[first], kept[then])]
    assert not repeats, (
        f"train-mode calls {repeats[0][0] + 1} and {repeats[0][1] + 1} on the same batch zeroed the very same "
        "adapter inputs: draw a fresh dropout mask on every call, not once in __init__"
    )
    shape, last = tuple(kept.shape[1:]), kept.dim() - 1
    copies = {  # per dim of x: the indices whose mask is the very mask of index 0, in every call
        dim: [i for i in range(1, kept.shape[dim]) if torch.equal(kept.select(dim, i), kept.select(dim, 0))]
        for dim in range(1, kept.dim())
    }
    dim = next((dim for dim, indices in copies.items() if indices), None)
    what = "feature" if dim == last else "item"
    cause = (
        "the inputs of a row are zeroed or kept together: drop each element of x on its own, with a mask shaped like "
        "x, not like (..., 1)"
        if dim == last
        else "they share one dropout mask: draw a mask shaped like x, one entry per element, as nn.Dropout does"
    )
    assert dim is None, (
        f"along dim {dim - 1} of a {shape} input, {len(copies[dim])} of the {kept.shape[dim] - 1} other {what}s got "
        f"the very mask of {what} 0 in every train-mode call: {cause}"
    )
    counts = sorted({int(call.sum()) for call in kept})
    assert len(counts) > 1, (
        f"each of {len(calls)} train-mode calls kept exactly {counts[0]} of {kept[0].numel()} adapter inputs: "
        "nn.Dropout zeroes each input on its own with probability p, so the count varies from call to call; "
        "do not drop an exact fraction (randperm)"
    )


def expect_dropout_like_nn_dropout(layer: nn.Module, linear: nn.Linear, p: float = DROPOUT) -> None:
    """Fail the check unless ``layer`` (made as ``adapter_input_multipliers`` says) drops its adapter's inputs in
    train mode as nn.Dropout(p) does, in every regime: survivors scaled by 1 / (1 - p), a fraction p zeroed, a
    fresh mask for every element and call. The fraction is looked at last: only independent entries tell it."""
    multipliers = adapter_input_multipliers(layer, linear, p)
    expect_kept_inputs_rescaled(multipliers, p)
    expect_a_fresh_mask_for_every_element_and_call(multipliers)
    expect_a_fraction_p_zeroed(multipliers, p)


# The rank and dims of a layer probed in any dtype: in < r < out, so that A = [I; 0] and B = [I; 0] pass the input
# through unchanged, which no dtype rounds.
EXACT_IN, EXACT_R, EXACT_OUT = 6, 8, 12


def show_the_dropped_inputs(layer: nn.Module, base: nn.Module) -> None:
    """Set ``layer`` (r = alpha = EXACT_R on ``base``, EXACT_IN -> EXACT_OUT) up so that its output is the adapter's
    input after dropout, padded with zeros: the base zeroed, A = [I; 0], B = [I; 0]."""
    found = factors(layer, EXACT_IN, EXACT_OUT, EXACT_R)
    with torch.no_grad():
        for parameter in base.parameters():
            parameter.zero_()
        found.A.copy_(torch.eye(EXACT_R, EXACT_IN))
        found.B.copy_(torch.eye(EXACT_OUT, EXACT_R))


def exact_dropout_multipliers(layer: nn.Module, base: nn.Module, p: float = DROPOUT) -> torch.Tensor:
    """What train-mode dropout multiplied each adapter input of ``layer`` by, in its base's dtype and device (half
    precision too), over one call in each of DROP_REGIMES on one batch: shape (calls, *DROP_SHAPE, EXACT_IN), exactly 0
    or 1 / (1 - p). ``layer`` was made with dropout ``p``, r = alpha = EXACT_R on ``base`` (EXACT_IN -> EXACT_OUT, an
    nn.Linear or a Conv1D); the base is zeroed and the factors set to A = [I; 0], B = [I; 0], so that the output is the
    adapter's input after dropout, padded with zeros: only dropout's own rounding shows. Fails the check unless every
    call zeroed some inputs, every input came out zeroed or scaled by one common factor 1 / (1 - p) (to the dtype's
    rounding), and with grad on, dL/dx is dL/dy through the same mask."""
    weight = base.weight
    dtype, device = weight.dtype, weight.device
    tolerance = RELATIVE_TOLERANCE[dtype]
    show_the_dropped_inputs(layer, base)
    x = ((1 + torch.rand(*DROP_SHAPE, EXACT_IN)) * torch.randn(*DROP_SHAPE, EXACT_IN).sign()).to(device, dtype)
    upstream = torch.randn(*DROP_SHAPE, EXACT_OUT).to(device, dtype)
    calls = [_train_mode_change(layer, base, x, *regime, upstream) for regime in DROP_REGIMES]
    where = f"a {dtype_name(dtype)} {type(layer).__name__} with dropout={p} in train mode"
    multipliers = torch.stack([change[..., :EXACT_IN] for change, _ in calls]).double() / x.double()
    zeroed = multipliers.abs() <= tolerance
    idle = [dropout_regimes(i) for i in range(DROP_CALLS) if not zeroed[i].any()]
    assert not idle, (
        f"{where} zeroed no adapter input in the call with {idle[0]} ({dropout_regimes()} tried): dropout follows "
        "the layer's train mode alone, in every dtype, whatever the grad mode or the base's own mode"
    )
    kept = multipliers[~zeroed]
    assert kept.numel() > 0, f"{where} zeroed every adapter input: it must drop a fraction p"
    scale = kept.mean().item()
    assert ((kept - scale).abs() <= 2 * tolerance * abs(scale)).all(), (
        f"{where}: an adapter input came out multiplied by {kept.min().item():.4g} and another by "
        f"{kept.max().item():.4g}, expected each zeroed or multiplied by one common factor 1/(1-p)"
    )
    causes = {
        1.0: "the 1/(1-p) rescale of the kept inputs is missing; nn.Dropout does it",
        1 / p: "that is 1/p: is p taken as the keep probability?",
    }
    cause = next((text for value, text in causes.items() if math.isclose(scale, value, rel_tol=2 * tolerance)), "")
    assert math.isclose(scale, 1 / (1 - p), rel_tol=2 * tolerance), (
        f"{where}: the kept adapter inputs are multiplied by {scale:.4g}, expected 1/(1-p) = {1 / (1 - p):.4g}: "
        + (cause or "scale the kept inputs by 1/(1-p), as nn.Dropout does")
    )
    multipliers = (~zeroed).double() / (1 - p)  # rounding gone: exactly 0 or 1 / (1 - p)
    for call, (_, measured) in enumerate(calls):
        if measured is None:
            continue
        expected = upstream[..., :EXACT_IN].double() * multipliers[call]
        error = relative_error(measured, expected)
        assert error <= tolerance, (
            f"{where}, in the call with {dropout_regimes(call)}: dL/dx is off dL/dy through the dropout mask by "
            f"{error:.2g} (relative): is the adapter fed x.data or x.detach()? use dropout(x), in the graph"
        )
    return multipliers


# Arguments every LoRA layer refuses with a ValueError (gpt2_conv1d's LoRAConv1D adds a rank that is no int).
# r=0.5 is < 1 yet > 0: a check written `r <= 0` lets it through (to a TypeError from torch.empty).
INVALID_ARGUMENTS = [
    {"r": 0},
    {"r": -2},
    {"r": 0.5},
    {"dropout": 1.0},
    {"dropout": -0.1},
    {"dropout": 1.5},
    {"dropout": math.nan},
]


def arguments_id(arguments: dict[str, object]) -> str:
    """A test id for keyword arguments: 'r=0', 'dropout=nan'."""
    return ",".join(f"{k}={v}" for k, v in arguments.items())


class Conv1DLike(nn.Module):
    """What transformers' Conv1D (GPT-2) is, without importing transformers: a 2-D weight stored (in, out), and
    no nn.Linear."""

    def __init__(self, in_features: int = 12, out_features: int = 10) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class LinearLookalike(nn.Module):
    """An nn.Linear in all but type: in_features, out_features, an (out, in) weight and a bias, F.linear in forward
    (a wrapper of a linear layer, another library's Linear). A base check by duck typing takes it."""

    def __init__(self, in_features: int = 12, out_features: int = 10) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / in_features**0.5)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


# Another library's layer that is named Linear (a quantized Linear, Megatron's ColumnParallelLinear keeps the word):
# no nn.Linear, though its class name, or a name in its MRO, says Linear. A check by name takes it.
ForeignLinear = type("Linear", (LinearLookalike,), {"__module__": "another_library"})


class PeftLoraLinearLike(nn.Module):
    """What peft's ``lora.Linear`` is (what get_peft_model leaves in a model), without importing peft (seconds of
    CPU): an nn.Linear kept as ``base_layer``, in_features and out_features, ``weight`` and ``bias`` properties
    reading the base's, and its own factors in ModuleDicts; no nn.Linear itself. Wrapping it drops its adapter."""

    def __init__(self, in_features: int = 12, out_features: int = 10, r: int = 4) -> None:
        super().__init__()
        self.base_layer = nn.Linear(in_features, out_features)
        self.in_features, self.out_features = in_features, out_features
        self.lora_A = nn.ModuleDict({"default": nn.Linear(in_features, r, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, out_features, bias=False)})
        self.scaling = {"default": 2.0}

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.lora_B["default"](self.lora_A["default"](x))
        return self.base_layer(x) + self.scaling["default"] * update


def swap_extremes_through_data(tensor: torch.Tensor) -> None:
    """Swap ``tensor``'s largest and smallest entries through .data (a view of one entry each): its version, its sum
    and any other symmetric checksum of its values stay as they were, its values do not."""
    high, low = (
        tensor.data[tuple(int(i) for i in torch.unravel_index(where, tensor.shape))]
        for where in (tensor.argmax(), tensor.argmin())
    )
    held = high.clone()
    high.copy_(low)
    low.copy_(held)


# A million tokens (8 sequences of 131072): a fast path from some row count on (dW folded into W, one matmul) skips
# base(x), its forward and its hooks, at that size only. Narrow features keep it cheap.
MILLION_ROWS = (8, 131072)


def expect_the_base_at_a_million_rows(layer: nn.Module, base: nn.Module, where: str) -> None:
    """Fail the check unless ``layer`` (at init, around ``base``: a trap base, with its own forward or hooks, narrow)
    computes exactly base(x) for x of MILLION_ROWS rows in every grad mode (expect_exactly_the_base); ``where``
    describes the base ("a GatedLinear base in float32")."""
    in_features = linear_weight(base).shape[1]
    x = torch.randn(*MILLION_ROWS, in_features, dtype=base.weight.dtype, device=base.weight.device)
    expect_exactly_the_base(layer, base, x, f"{where} and x {tuple(x.shape)} ({math.prod(MILLION_ROWS)} rows)")


# Batches of a real model's many rows for trained factors (B != 0: at init B = 0 hides the adapter branch), of row
# counts no power of two past 4 divides (a million tokens and 3, a 16k prefill and 1): a loop over blocks of rows that
# stops at the last full block leaves the tail rows with base(x) alone. Narrow features keep them cheap.
MILLION_ROWS_AND_3, PREFILL_ROWS_AND_1 = ((1 << 20) + 3,), ((1 << 14) + 1,)
# (dtype, batch) of expect_plain_lora_at_many_rows: every dtype at the prefill's rows, the two common ones at a million.
MANY_ROWS_CASES = [
    pytest.param(dtype, batch, id=f"{dtype_name(dtype)}-{math.prod(batch)}-rows")
    for dtype, batch in [
        *((dtype, MILLION_ROWS_AND_3) for dtype in (torch.float32, torch.bfloat16)),
        *((dtype, PREFILL_ROWS_AND_1) for dtype in FLOAT_DTYPES),
    ]
]


def expect_plain_lora_at_many_rows(
    layer: nn.Module, base: nn.Module, r: int, scaling: float, batch_shape: tuple[int, ...], where: str
) -> None:
    """Fail the check unless ``layer`` (rank ``r``, around ``base``: an nn.Linear or a Conv1D, narrow), its factors
    randomized here, computes plain LoRA row by row in eval mode for x of ``batch_shape`` (grad off past 2^17 rows,
    grad on below), each row to its dtype's tolerance (relative to the sum of its terms' magnitudes in half
    precision): a few rows wrong among a million show, in every dtype. ``where`` describes the layer."""
    dtype, device = base.weight.dtype, base.weight.device
    out_features, in_features = linear_weight(base).shape
    found = factors(layer, in_features, out_features, r)
    randomize_factors(layer, std=1.0)
    layer.eval()
    rows, tolerance = math.prod(batch_shape), RELATIVE_TOLERANCE[dtype]
    grad = "grad off" if rows > 1 << 17 else "grad on"
    x = torch.randn(*batch_shape, in_features, dtype=dtype, device=device)
    regime = f"{where}, trained factors, eval mode, {grad}, x {tuple(x.shape)} ({rows} rows)"
    with GRAD_MODES[grad]():
        y = forward_in_regime(layer, x, regime)
    assert (tuple(y.shape), y.dtype) == ((*batch_shape, out_features), dtype), (
        f"{regime}: the output is {y.dtype} {tuple(y.shape)}, expected {dtype} {(*batch_shape, out_features)}: "
        "map (..., in) to (..., out) in the base's dtype, at every batch size"
    )
    measured = y.detach().double().reshape(rows, out_features)
    expected, alone = (lora_in_float64(base, found, s, x, None)[0].reshape(rows, out_features) for s in (scaling, 0))
    scale = (
        lora_in_float64(base, found, scaling, x, None, absolute=True)[0].reshape(rows, out_features)
        if dtype in HALF_DTYPES
        else expected
    ).norm(dim=1)
    off = (measured - expected).norm(dim=1) / scale.clamp_min(1e-30)
    wrong = (off > tolerance).nonzero().flatten()
    if not len(wrong):
        return
    base_alone = bool(((measured[wrong] - alone[wrong]).norm(dim=1) <= tolerance * scale[wrong]).all())
    cause = (
        "their adapter share is lost (base(x) alone there): a loop over blocks of rows must cover the last partial "
        "block too (range(0, rows, block)), or compute the whole batch at once"
        if base_alone
        else "does a batch of many rows take a path of its own? compute what a small batch does"
    )
    raise AssertionError(
        f"{regime}: {len(wrong)} of its rows (rows {wrong[0].item()} to {wrong[-1].item()}) are off plain LoRA "
        f"base(x) + scaling (x A^T) B^T by up to {off.max().item():.2g} (relative), expected under {tolerance:.0e} "
        f"in every row: {cause}"
    )


# A prefill's many rows for the per-row mask check (expect_a_fresh_mask_for_every_row), narrow (EXACT_IN features):
# a mask drawn for a block of up to 2^16 rows and tiled down the batch repeats in 2^17 + 5 rows.
PREFILL_MASK_ROWS = (1 << 17) + 5

# A real model's layer width (Llama-7B's hidden size): a path of its own for wide layers only (dW cached for layers
# of 2048 x 2048 and up) shows there. Out 8 wider than in, so that A's and B's shapes tell them apart (factors()).
WIDE_IN, WIDE_OUT = 4096, 4104


# alphas float32 cannot hold (nor bfloat16): "alpha as given (2.5 stays 2.5, never rounded)" read in float64 to 1e-12
# shows an alpha kept in a float32 tensor or buffer, which every whole or half alpha hides.
ALPHAS_BEYOND_FLOAT32 = {"alpha-0.3": 0.3, "alpha-7.3": 7.3, "alpha-minus-0.1": -0.1}


def expect_alpha_exactly_as_given(
    make: Callable[[], nn.Module], base: nn.Module, r: int, alpha: float, call: str
) -> None:
    """Fail the check unless ``make()`` (``call``, a layer of rank ``r`` on a float64 base computing what ``base``, an
    nn.Linear, computes) records alpha exactly as given and scaling == alpha / r, and adds alpha / r x B @ A, both
    to 1e-12 relative: for an ``alpha`` of ALPHAS_BEYOND_FLOAT32, which a float32 (or bfloat16) copy rounds."""
    layer = make()
    randomize_factors(layer)
    rounded = {float(torch.tensor(alpha, dtype=dtype)): dtype_name(dtype) for dtype in (torch.float32, torch.bfloat16)}

    def cause(measured_alpha: float) -> str:
        held = next((name for value, name in rounded.items() if math.isclose(measured_alpha, value, rel_tol=1e-12)), "")
        return f"alpha rounded to {held} (kept in a {held} tensor or buffer?): " if held else ""

    recorded, scaling = (
        None if value is None else float(value)
        for value in (getattr(layer, "alpha", None), getattr(layer, "scaling", None))
    )
    assert recorded == alpha and scaling is not None and math.isclose(scaling, alpha / r, rel_tol=1e-12), (
        f"{call} records alpha={recorded!r}, scaling={scaling!r}, expected alpha={alpha!r}, scaling = alpha / r = "
        f"{alpha / r!r}: {cause(recorded) if recorded is not None else ''}"
        "keep alpha the Python float given (self.alpha = alpha, self.scaling = alpha / r)"
    )
    found = factors(layer, base.in_features, base.out_features, r)
    ratio, proportional = scaling_ratio(layer, base, found)
    assert proportional and math.isclose(ratio, alpha / r, rel_tol=1e-12), (
        f"{call} adds "
        + (f"{ratio!r} x B @ A" if proportional else "an update not proportional to B @ A")
        + f" in float64, expected alpha / r = {alpha / r!r} x (to 1e-12): "
        + cause(ratio * r)
        + "scale by the alpha as given, a Python float, in forward too"
    )


# Ranks of real fine-tunes (QLoRA's 64, and up to 256) on a layer wider than each: a scaling switched at some rank
# (rsLoRA's alpha / sqrt(r) from r = 64 on, `scaling` still saying alpha / r) shows only there.
REAL_RANKS = (64, 128, 256)
REAL_RANK_LAYER = (320, 288)  # (in, out): above every rank and all distinct, so that a factor's shape says which


def expect_the_scaling_at_real_ranks(
    make: Callable[[int], nn.Module], twin: nn.Linear, alpha: float, call: str
) -> None:
    """Fail the check unless ``make(r)`` (``call`` with {r} for the rank: a layer of rank r, alpha ``alpha``, on a
    float64 base computing what ``twin``, an nn.Linear of REAL_RANK_LAYER, computes) records r, alpha and
    scaling == alpha / r and, with trained factors, adds alpha / r x B @ A (to 1e-9 relative) at every rank of
    REAL_RANKS."""
    for r in REAL_RANKS:
        layer = make(r)
        expect_r_alpha_and_scaling(layer, r, alpha)
        randomize_factors(layer)
        ratio, proportional = scaling_ratio(layer, twin, factors(layer, twin.in_features, twin.out_features, r))
        causes = {alpha / math.sqrt(r): "alpha / sqrt(r) is rsLoRA", alpha: "scaled by alpha", 1.0: "no scaling"}
        cause = next((text for value, text in causes.items() if math.isclose(ratio, value, rel_tol=1e-6)), "")
        assert proportional and math.isclose(ratio, alpha / r, rel_tol=1e-9), (
            f"{call.format(r=r)} adds "
            + (f"{ratio:.6g} x B @ A" if proportional else "an update not proportional to B @ A")
            + f" (trained factors, float64), expected alpha / r = {alpha / r:.6g} x: "
            + (f"{cause} at r = {r}: " if cause else "")
            + "scale by alpha / r at every rank, in forward as in self.scaling"
        )


def expect_a_fresh_A_for_every_layer(
    make_A: Callable[[nn.Module], torch.Tensor], make_base: Callable[[], nn.Module], what: str
) -> None:
    """Fail the check unless two adapters built one after the other under one seed of torch's RNG, each on a base of
    ``make_base()`` (of one shape, built beforehand), start with different A (``make_A(base)`` builds one and returns
    its A), and building one moves torch's RNG: as nn.Linear's init draws every layer's weight afresh from it. A
    generator of its own, seeded by torch.initial_seed() or a constant, gives every adapter of a shape the very same
    A (q_proj's and v_proj's alike in every block). Leaves torch's RNG as it found it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bases = make_base(), make_base()
        before = torch.get_rng_state()
        first = make_A(bases[0]).detach().clone()
        moved = not torch.equal(before, torch.get_rng_state())
        second = make_A(bases[1]).detach().clone()
    use = "draw A from torch's RNG: nn.init.kaiming_uniform_(A, a=math.sqrt(5)) or a Gaussian, no generator of its own"
    assert not torch.equal(first, second), (
        f"{what}: two adapters built one after the other under torch.manual_seed(0) start with the very same A, "
        f"expected a fresh draw for each, as nn.Linear's init gives (a generator seeded by torch.initial_seed()?): "
        + use
    )
    assert moved, (
        f"{what}: building the adapter left torch's RNG state as it was, expected A drawn from it (it moves, as "
        f"nn.Linear's init moves it): {use}"
    )


def checkerboard_through_data(tensor: torch.Tensor) -> None:
    """Add d [[1, -1], [-1, 1]] to a 2 x 2 block of ``tensor`` (2-d, of dyadic entries, so that every sum stays exact)
    through .data, d = (b + c - a - e) / 2 for the block [[a, b], [c, e]], d != 0: its version, its total, row and
    column sums, any position-weighted sum f(row) + g(col) (arange over its entries) and its sum of squares all stay
    as they were; its values do not."""
    assert tensor.dim() == 2 and min(tensor.shape) >= 2, "grader bug: a checkerboard needs a 2-d tensor of 2 x 2"
    rows, cols = tensor.shape
    for i, j in ((i, j) for i in range(rows - 1) for j in range(cols - 1)):
        block = tensor.data[i : i + 2, j : j + 2]
        d = (block[0, 1] + block[1, 0] - block[0, 0] - block[1, 1]).item() / 2
        if d != 0:
            block.add_(torch.tensor([[d, -d], [-d, d]], dtype=tensor.dtype, device=tensor.device))
            return
    raise AssertionError("grader bug: no 2 x 2 block of the factor to edit (all of its entries alike?)")


def expect_following_a_checksum_keeping_edit(
    layer: nn.Module, base: nn.Module, r: int, scaling: float, grad: str, regime: str
) -> None:
    """Fail the check unless ``layer`` (rank ``r`` >= 2, around ``base``: an nn.Linear or a Conv1D) computes plain
    LoRA with its factors as they are now in grad mode ``grad``, after each factor (given dyadic values first) was
    edited through .data by checkerboard_through_data, the layer called in every grad mode before: an edit that keeps
    the version and every cheap checksum (sums, weighted sums, sum of squares) a cache of dW may key on. ``regime``
    describes the one set up (mode, dtype)."""
    dtype = base.weight.dtype
    out_features, in_features = linear_weight(base).shape
    found = factors(layer, in_features, out_features, r)
    generator = torch.Generator().manual_seed(18)
    with torch.no_grad():
        for tensor in (found.stored_A, found.stored_B):  # multiples of 1/16 in [-1/2, 1/2]: exact in every dtype
            values = torch.randint(-8, 9, tuple(tensor.shape), generator=generator) / 16
            tensor.data.copy_(values.to(dtype=tensor.dtype, device=tensor.device))
    for mode in GRAD_MODES:
        with GRAD_MODES[mode]():
            forward_in_regime(layer, torch.randn(5, in_features, dtype=dtype), f"{regime}, {mode}")
    with torch.no_grad():
        for tensor in (found.stored_A, found.stored_B):
            checkerboard_through_data(tensor)
    x = torch.randn(5, in_features, dtype=dtype)
    where = (
        f"{regime}, {grad}, after a 2 x 2 block of each factor was edited through .data by +d, -d, -d, +d (its "
        "version, sums, row and column sums, weighted sums and sum of squares kept)"
    )
    with GRAD_MODES[grad]():
        y = forward_in_regime(layer, x, where)
    expected, _ = lora_in_float64(base, found, scaling, x, None)
    error = relative_error(y, expected)
    assert error <= RELATIVE_TOLERANCE[dtype], (
        f"{where}: the output is off plain LoRA base(x) + scaling (x A^T) B^T by {error:.2g} (relative), expected "
        f"under {RELATIVE_TOLERANCE[dtype]:.0e}: dW (or a factor) cached from an earlier call, keyed on a checksum "
        "of the factors? nothing is cached: compute with the factors' current values at every call"
    )


def expect_following_base_swaps(
    layer: nn.Module,
    base: nn.Module,
    r: int,
    scaling: float,
    batch_shape: tuple[int, ...],
    contiguous: bool,
    grad: str,
    regime: str,
) -> None:
    """Fail the check unless ``layer`` computes plain LoRA over its base as it is now, and with ``grad`` "grad on"
    gives x its gradient, after two entries of the base's weight, then of its bias, were swapped through .data (the
    base's version and every checksum of its values kept, as loading a permuted checkpoint into .data does), the
    layer called in every grad mode before each swap: nothing of the base may be cached between calls. The other
    edits of the base and the factors are ``expect_plain_lora_in_regime``'s; ``regime`` describes the one set up."""
    dtype = base.weight.dtype
    out_features, in_features = linear_weight(base).shape
    found = factors(layer, in_features, out_features, r)
    swapped = [("weight", base.weight)] + ([("bias", base.bias)] if base.bias is not None else [])
    for name, tensor in swapped:
        for mode in GRAD_MODES:
            with GRAD_MODES[mode]():
                forward_in_regime(
                    layer, strided((*batch_shape, in_features), contiguous, dtype=dtype), f"{regime}, {mode}"
                )
        with torch.no_grad():
            swap_extremes_through_data(tensor)
        x = strided((*batch_shape, in_features), contiguous, dtype=dtype)
        where = (
            f"{regime}, {grad}, x {tuple(x.shape)}{'' if contiguous else ' non-contiguous'}, after the largest and the "
            f"smallest entries of its base's {name} were swapped through .data (its version and sum kept)"
        )
        upstream = torch.randn(*batch_shape, out_features, dtype=dtype) if grad == "grad on" else None
        with GRAD_MODES[grad]():
            y = forward_in_regime(layer, x.requires_grad_(upstream is not None), where)
        expected, gradients = lora_in_float64(base, found, scaling, x, upstream)
        half = dtype in (torch.float16, torch.bfloat16)
        scale, scales = lora_in_float64(base, found, scaling, x, upstream, absolute=True) if half else (None, {})
        error = relative_error(y, expected, scale)
        cause = "the base's weight or bias (or a layout of it) cached from an earlier call, keyed on a checksum?"
        assert error <= RELATIVE_TOLERANCE[dtype], (
            f"{where}: the output is off plain LoRA base(x) + scaling (x A^T) B^T by {error:.2g} (relative), expected "
            f"under {RELATIVE_TOLERANCE[dtype]:.0e}: {cause} read them off the base at every call"
        )
        if upstream is None:
            continue
        y.backward(upstream)
        error = relative_error(x.grad, gradients["x"], scales.get("x"))
        assert error <= RELATIVE_TOLERANCE[dtype], (
            f"{where}: the gradient of x is off plain LoRA's g W + scaling (g B) A by {error:.2g} (relative): {cause}"
        )
        for tensor in (found.stored_A, found.stored_B):
            tensor.grad = None


def expect_each_adapter_following_its_own_mode(
    layers: dict[str, nn.Module], x: torch.Tensor, call: str, fix: str
) -> None:
    """Fail the check unless each adapter of ``layers`` (by name; dropout on, factors random, modes set per block
    after the call described by ``call``) drops inputs of ``x`` exactly when it is in train mode itself, as a layer of
    its own does: a frozen block in eval mode beside trained ones, or one block trained. ``fix`` says how."""
    with torch.no_grad():
        drops = {name: max_difference(layer(x), layer(x)) > 0 for name, layer in layers.items()}
    wrong = [name for name, layer in layers.items() if drops[name] != layer.training]
    name = next(iter(wrong), "")
    assert not wrong, (
        f"{call}: the adapter {name}, in {'train' if layers[name].training else 'eval'} mode, "
        + ("drops nothing" if layers[name].training else "still drops inputs")
        + f": each adapter follows its own mode; {fix}, never one dropout module shared by adapters"
    )


def expect_every_layer_in_its_dtype(
    model: nn.Module, adapt: Callable[[], object], targeted: list[str], call: str, what: str, wrap: str
) -> None:
    """Fail the check unless ``adapt()`` (``call`` on ``model``, described by ``what``: a model of several dtypes)
    leaves every parameter of ``model`` in its dtype and gives each adapter put on a layer of ``targeted`` (their
    names) parameters in that layer's dtype: ``wrap`` (the adapter's constructor) as it is, no conversion after."""
    before = {id(p): p.dtype for p in model.parameters()}
    originals = {name: model.get_submodule(name).weight.dtype for name in targeted}
    adapt()
    misplaced = sorted({str(p.dtype) for p in model.parameters() if id(p) in before and p.dtype != before[id(p)]})
    misplaced += sorted(
        f"{name}: {p.dtype} (its base {dtype})"
        for name, dtype in originals.items()
        for p in model.get_submodule(name).parameters()
        if p.dtype != dtype
    )[:1]
    assert not misplaced, (
        f"after {call} on {what} some parameters are {misplaced}: leave every layer in its dtype ({wrap} as it is, "
        "no .float() or .to(...) after the model's first parameter)"
    )


def expect_factor_layers_left_alone(
    model: nn.Module, originals: set[int], adapter_classes: tuple[type, ...], again: Callable[[list[str]], object],
    call: str, raised_by_the_call: Callable[[ValueError], bool],
) -> None:  # fmt: skip
    """Fail the check unless ``again(names)``, a second apply call on ``model`` whose targets name the factor layers
    its adapters hold (bias-free nn.Linear submodules, a layout the LoRALinear spec allows; any module not among
    ``originals``, the ids of the model's modules before the first call, ``call``), wraps nothing there. With raw
    nn.Parameter factors there is nothing to target, and the check passes. A ValueError the apply function raised
    itself (``raised_by_the_call``: "nothing matched") is a fair answer."""
    factor_layers = {
        name: module
        for name, module in model.named_modules(remove_duplicate=False)
        if isinstance(module, nn.Linear) and not isinstance(module, adapter_classes) and id(module) not in originals
    }
    if not factor_layers:
        return  # factors as raw parameters
    before = dict(model.named_modules(remove_duplicate=False))
    where = f"{call.split('(')[0]}(model, {sorted(factor_layers)[:2]}...) after {call}"
    failure: Exception | None = None
    try:
        again(sorted(factor_layers))
    except NotImplementedError:
        raise
    except Exception as error:  # a model left half-adapted may raise: what was wrapped tells why
        failure = error
    replaced = [name for name, module in before.items() if model.get_submodule(name) is not module]
    raised = f", then raised {type(failure).__name__}" if failure is not None else ""
    assert not replaced, (
        f"{where}: {replaced[:2]} are no longer the modules they were{raised}, expected every one unchanged: "
        f"{replaced[0]} is a factor layer inside an adapter, and no layer inside an adapter is wrapped (skip every "
        "module in adapter.modules(), not only those within its base)"
    )
    if failure is not None and not (isinstance(failure, ValueError) and raised_by_the_call(failure)):
        raise failure


# Targets that name no layer when compared as strings (a name equal to one, or ending with "." + one), built from two
# layer names of the model at hand, and that match layers when misread: as glob or regex patterns, stripped of
# whitespace, split at commas, as peft's "all-linear"; and no target at all. apply_lora's contract, for any model.
NAMED_AS_STRINGS = (
    "targets are compared as strings (a name equal to one or ending with '.' + one), never read as glob or regex "
    "patterns, nor as peft's 'all-linear', nor stripped of whitespace or split at commas (a str is one name)"
)


def targets_that_name_no_layer(first: str, second: str) -> dict[str, tuple[str, ...]]:
    """By case id, targets made of the layer names ``first`` and ``second`` that, compared as strings, name no layer."""
    return {
        "glob-patterns": (f"{first[:-1]}*", f"{second[:-1]}?", f"[{first[0]}]{first[1:]}"),
        "regex-patterns": (f"{first[:-1]}.", f"{first}|{second}", f"{second[:-1]}[{second[-1]}]"),
        "off-by-whitespace": (f" {first}", f"{second} "),
        "comma-joined": (f"{first},{second}", f"{first}, {second}"),
        "all-linear": ("all-linear",),
        "no-targets": (),
    }


REAL_MODEL_WIDTH = 4096  # in and out of Llama-7B's attention projections: a layer of 2**24 weights, as merges meet


def expect_a_real_models_layer_merged_in_float32(
    base: nn.Module, adapter: nn.Module, merge: Callable[[nn.Module], nn.Module], r: int, scaling: float, where: str
) -> None:
    """Fail the check unless ``merge(adapter)``, for a fresh ``adapter`` (B zero) of a half-precision ``base``
    REAL_MODEL_WIDTH square, adds W and the update in float32 and rounds once (``expect_merged_weight``): a merge that
    saves the float32 copy of a large weight, summing in its own half dtype, shows only at a real model's size."""
    tensors = trainable(adapter)
    zero = [tensor for tensor in tensors if not tensor.detach().any()]
    assert len(tensors) == 2 and len(zero) == 1, (
        f"{where}: expected two trainable factors, B all zero at construction, measured shapes "
        f"{[tuple(tensor.shape) for tensor in tensors]} ({len(zero)} all zero)"
    )
    stored_B = zero[0]
    stored_A = next(tensor for tensor in tensors if tensor is not stored_B)
    found = Factors(
        stored_A, stored_B, stored_A.shape == (REAL_MODEL_WIDTH, r), stored_B.shape == (r, REAL_MODEL_WIDTH)
    )
    with torch.no_grad():
        stored_B.normal_(0.0, 0.02)
    # the float32 sum itself (what float64's rounds to but for a rare midpoint), faster than float64 at this size
    exact = torch.addmm(linear_weight(base).float(), found.B.float(), found.A.float(), alpha=scaling)
    merged = merge(adapter)
    expect_merged_weight(
        linear_weight(merged),
        exact,
        f"{where}, a {REAL_MODEL_WIDTH} x {REAL_MODEL_WIDTH} {dtype_name(base.weight.dtype)} layer (Llama-7B's)",
        "upcast W, A and B to float32 and add there at every size (a real model's layers are this large or larger), "
        "then cast back once",
    )


# Llama-3-8B's k_proj and v_proj (1024 x 4096, 2**22 weights), each size off a power of two: a blocked loop's tail
REAL_MODEL_ROWS, REAL_MODEL_COLUMNS = REAL_MODEL_WIDTH // 4 + 7, REAL_MODEL_WIDTH + 3


def expect_a_real_models_layer_merged_in_every_row_and_column(
    base: nn.Module, adapter: nn.Module, merge: Callable[[nn.Module], nn.Module], r: int, scaling: float, where: str
) -> None:
    """Fail the check unless ``merge(adapter)``, with trained factors (B drawn, not zero), of a ``base`` of a real
    model's size in any float dtype (REAL_MODEL_ROWS x REAL_MODEL_COLUMNS as nn.Linear stores it, sizes no block
    divides), holds W + scaling B @ A in every row and column (``expect_no_row_or_column_left_out``) and within its
    dtype's bound (``expect_merged_weight``; the sum in float64 for float64, float32's addmm for the others)."""
    weight = linear_weight(base).detach().clone()
    out_features, in_features = weight.shape
    found = factors(adapter, in_features, out_features, r)
    randomize_factors(adapter, std=0.02)
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    exact = torch.addmm(weight.to(work), found.B.detach().to(work), found.A.detach().to(work), alpha=scaling)
    merged = linear_weight(merge(adapter))
    what = f"{where}, a {out_features} x {in_features} {dtype_name(weight.dtype)} layer (a real model's size)"
    expect_no_row_or_column_left_out(merged, weight, exact, what)
    expect_merged_weight(
        merged, exact, what, "merge the whole weight in every dtype and at every size, large full-precision layers too"
    )


def dotted_target_cut_to_its_last_part(targets: Iterable[str], wrong: Iterable[str]) -> str:
    """Why ``wrong`` (layers adapted that no target names) were adapted, if a dotted target of ``targets`` was matched
    by its last part alone (``"layers.0.mlp.down_proj"`` adapting every block's down_proj), else ""."""
    targets = tuple(targets)
    for name in wrong:
        for target in (t for t in targets if "." in t):
            if name.rpartition(".")[2] == target.rpartition(".")[2] and target not in name:
                return (
                    f"the dotted target {target!r} was matched by its last part alone ({name!r} adapted), with "
                    f"{len(targets)} targets: compare each whole target with the end of the name, for a list of any "
                    "length (Llama's all-linear list has 7)"
                )
    return ""


def targets_off_by_case(first: str, second: str) -> dict[str, tuple[str, ...]]:
    """By case id, targets that differ from the layer names ``first`` and ``second`` by case only: compared as strings
    they name no layer; lower-cased (names read as case-insensitive) they match ``first`` and ``second``."""
    return {"off-by-case": (first.upper(), second.capitalize())}


def case_folded(targets: Iterable[str], adapted: Iterable[str]) -> str:
    """The likely cause when a layer of ``adapted``, which ``targets`` do not name, matches one of them but for case:
    names read as case-insensitive; else ""."""
    folded = [(name, t) for name in adapted for t in targets if f".{name}".lower().endswith(f".{t}".lower())]
    if not folded:
        return ""
    name, t = folded[0]
    return f"{t!r} matches {name!r} but for case: names are compared as strings, case and all (never lower-cased)"


# Another library's nn.Linear subclass whose class is named LoRALinear (loralib's, a fork's): an nn.Linear, so a
# target to wrap, and no adapter of this package, though its name says so. A check by class name skips it.
ForeignLoRALinear = type("LoRALinear", (nn.Linear,), {"__module__": "another_library"})


def adapter_namesakes(kinds: dict[str, type], *adapters: type) -> str:
    """The likely cause when layers of the classes ``kinds`` (by name), left unwrapped, are of another library's
    classes named like one of ``adapters`` (this package's adapter classes): adapters told by class name; else ""."""
    names = {adapter.__name__ for adapter in adapters}
    namesakes = [name for name, kind in kinds.items() if kind.__name__ in names and not issubclass(kind, adapters)]
    if not namesakes:
        return ""
    kind = kinds[namesakes[0]]
    return (
        f"{namesakes[0]} is of class {kind.__module__}.{kind.__name__}, another library's layer (a subclass of "
        f"{kind.__mro__[1].__name__}) and no adapter of this package: tell adapters by isinstance with this "
        "package's classes, never by class name"
    )


def expect_the_adapters_bases_left_alone(
    model: nn.Module,
    part: str,
    first: tuple[str, ...],
    second: tuple[str, ...],
    apply: Callable[[nn.Module, tuple[str, ...]], object],
    matching: Callable[[nn.Module, tuple[str, ...]], list[str]],
    adapter: type | tuple[type, ...],
    raised_by_apply: Callable[[BaseException], bool],
    call: str,
) -> None:
    """Fail the check unless ``apply(model, second)``, after ``apply(model.get_submodule(part), first)``, leaves every
    module inside the first call's adapters (their bases, the layers within them) as it was, under each of its names
    (a layer held outside its adapter too, registered before it or after), and adapts the new targets (``matching``
    names the layers targets name, ``adapter`` is the adapter class or classes). A ValueError for which
    ``raised_by_apply`` is true ("nothing left to adapt") is let pass: the checks below judge what was left."""
    adapted_first = model.get_submodule(part)
    bases = [adapted_first.get_submodule(name) for name in matching(adapted_first, first)]
    inside = {id(module) for base in bases for module in base.modules()}  # the bases and the layers within them
    expected_new = {name for name in matching(model, second) if id(model.get_submodule(name)) not in inside}
    apply(adapted_first, first)
    names_of: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(module), []).append(name)
    held = {  # their names inside the adapters and outside
        name: module for base in bases for module in base.modules() for name in names_of.get(id(module), [])
    }
    try:
        apply(model, second)
    except ValueError as error:
        if not raised_by_apply(error):
            raise
    replaced = {name: model.get_submodule(name) for name, base in held.items() if model.get_submodule(name) is not base}
    name, layer = next(iter(replaced.items()), ("", None))
    others = [other for other in names_of[id(held[name])] if other != name] if replaced else []
    assert not replaced, (
        f"{call}: {name} is now a {type(layer).__name__}, expected the very module it was: it lies inside an adapter "
        f"(its base, or a layer within that base){f', registered as {others[:2]} too' if others else ''}: skip "
        "every module inside an adapter by identity (id(module) of each in adapter.modules()), not by a name prefix, "
        "nor only the base itself"
    )
    missed = sorted(name for name in expected_new if not isinstance(model.get_submodule(name), adapter))
    assert not missed, f"{call} left {missed[:3]} unadapted: the new targets get adapters"


def expect_a_fractional_alpha_kept(layer: nn.Module, base: nn.Linear, found: Factors, r: int, alpha: float) -> None:
    """Fail the check unless ``layer`` (made with ``r`` and a fractional ``alpha``, on a base computing what ``base``
    computes) scales B @ A by alpha / r and records alpha as given: no int(alpha), alpha // r, int(alpha / r)."""
    ratio, proportional = scaling_ratio(layer, base, found)
    assert proportional, "the update dW is not proportional to B @ A: fix test_update_is_scaling_times_B_at_A first"
    cause = "use alpha / r, with alpha as given"
    if math.isclose(ratio, round(ratio), rel_tol=1e-6):
        cause = "rounded to a whole number (int(alpha), alpha // r, int(alpha / r)?): keep alpha a float, " + cause
    assert math.isclose(ratio, alpha / r, rel_tol=1e-6), (
        f"with r={r}, alpha={alpha} the update dW is {ratio:.4g} x B @ A, expected alpha / r = {alpha / r:g} x: {cause}"
    )
    recorded, scaling = getattr(layer, "alpha", None), getattr(layer, "scaling", None)
    assert recorded == alpha and scaling is not None and math.isclose(float(scaling), alpha / r), (
        f"with r={r}, alpha={alpha} the layer records alpha={recorded}, scaling={scaling}, expected alpha={alpha}, "
        f"scaling={alpha / r:g}: store alpha as given, not rounded"
    )


# Batch sizes past the toy ones, for a layer's forward: no rows at all (an empty batch, sequences of 0 tokens, which a
# reshape(*lead, -1) of 0 elements refuses), and row counts from 300 to 2^17 (a prefill, an eval pass over a corpus),
# where a fast path from some row count on (the update folded into the weight, one matmul) shows at its size only.
# Narrow features keep the largest cheap.
EMPTY_BATCHES = ((0,), (2, 0))
MANY_ROW_BATCHES = ((4, 75), (2100,), (8, 1025), (16384,), (1 << 17,))
MASK_ROWS = 8193  # four blocks of 2048 rows and one more: a mask drawn for a block of rows and tiled repeats in it
MASK_WINDOW = (
    16  # rows compared at once: two independent windows of MASK_WINDOW x EXACT_IN entries agree at odds ~1e-20
)


def expect_a_fresh_mask_for_every_row(
    layer: nn.Module, base: nn.Module, p: float = DROPOUT, rows: int = MASK_ROWS
) -> None:
    """Fail the check unless one train-mode call of ``layer`` on ``rows`` rows of x draws every row's dropout mask on
    its own, as nn.Dropout does: no MASK_WINDOW consecutive rows get the very mask of MASK_WINDOW others (a mask drawn
    for a block of rows and tiled down the batch, fewer random draws). ``layer`` was made as
    ``exact_dropout_multipliers`` says (dropout ``p``, r = alpha = EXACT_R on ``base``, EXACT_IN -> EXACT_OUT)."""
    show_the_dropped_inputs(layer, base)
    weight = base.weight
    layer.train()
    with torch.no_grad():
        y = output(layer, torch.ones(rows, EXACT_IN, dtype=weight.dtype, device=weight.device))
    kept = y[:, :EXACT_IN].abs().cpu() > 0.5  # each input 1 / (1 - p) or 0
    where = f"with dropout={p}, a train-mode call on x of {rows} rows x {EXACT_IN} features"
    assert not kept.all(), f"{where} zeroed no adapter input: drop a fraction p of them in train mode, at every size"
    windows = kept.unfold(0, MASK_WINDOW, 1).reshape(rows - MASK_WINDOW + 1, -1).to(torch.uint8)
    _, inverse, counts = torch.unique(windows, dim=0, return_inverse=True, return_counts=True)
    repeated = int((counts > 1).sum())
    if repeated:
        first, then = (inverse == inverse[counts[inverse] > 1][0]).nonzero().flatten()[:2].tolist()
        raise AssertionError(
            f"{where}: rows {first}-{first + MASK_WINDOW - 1} and rows {then}-{then + MASK_WINDOW - 1} got the very "
            f"same dropout mask ({repeated} windows of {MASK_WINDOW} rows repeat, expected none: independent masks "
            f"agree there with odds of about 1e-20): one mask entry per element of the whole batch, nn.Dropout on x "
            f"itself, not a block of {then - first} rows drawn once and tiled down it"
        )


def expect_no_row_or_column_left_out(
    merged: torch.Tensor, weight: torch.Tensor, exact: torch.Tensor, where: str
) -> None:
    """Fail the check unless each row and each column of ``merged`` that ``exact`` (W + scaling B @ A in float64)
    changes, in the merged weight's dtype, was written: a row or column still holding ``weight``'s values everywhere
    the sum changes them was left out (a loop over blocks of rows that stops at the last full block). Finer errors are
    ``expect_merged_weight``'s."""
    new, old = merged.detach().double(), weight.detach().double()
    changes = exact.to(merged.dtype).double() != old
    stale = changes & (new == old)
    for dim, what in ((1, "row"), (0, "column")):
        left = ((stale.sum(dim) == changes.sum(dim)) & (changes.sum(dim) > 1)).nonzero().flatten().tolist()
        assert not left, (
            f"{where}: {len(left)} of its {changes.shape[1 - dim]} {what}s ({what}s {left[0]} to {left[-1]}) kept W's "
            f"values, expected W + scaling B @ A there too: merge every {what}, past the last full block of a blocked "
            f"loop too (range(0, {changes.shape[1 - dim]}, block))"
        )


# Train-mode dropout read in the layer's own dtype, half precision included: with in < r < out, alpha = r (scaling 1)
# and a base computing zero, the factors A = [I; 0] (r, in) and B = [I, 0] (out, r) make dW pick the input out
# (dW[:in] = I), so the output's first ``in`` entries are the dropped input itself, rounded by dropout alone.
SELECT_IN, SELECT_R, SELECT_OUT = 8, 10, 12


def dropout_multipliers_in_its_dtype(layer: nn.Module, p: float = DROPOUT) -> torch.Tensor:
    """What train-mode dropout multiplied each adapter input of ``layer`` by, over one call in each of DROP_REGIMES:
    shape (calls, *DROP_SHAPE, SELECT_IN), 0 where an input was zeroed, and where it was kept one common factor,
    1 / (1 - p) for nn.Dropout (exactly, when within the dtype's rounding of it, or of 1 or 1 / p). ``layer`` was
    made with dropout ``p``, r = alpha = SELECT_R, on a SELECT_IN -> SELECT_OUT base whose weight and bias are zero,
    in any float dtype. Fails the check unless eval mode gives the input back and every train-mode input came out
    zeroed or multiplied by one common factor."""
    found = factors(layer, SELECT_IN, SELECT_OUT, SELECT_R)
    dtype, device = found.A.dtype, found.A.device
    with torch.no_grad():
        found.A.copy_(torch.eye(SELECT_R, SELECT_IN, dtype=dtype, device=device))
        found.B.copy_(torch.eye(SELECT_OUT, SELECT_R, dtype=dtype, device=device))
    zero = nn.Linear(SELECT_IN, SELECT_OUT, dtype=dtype, device=device).requires_grad_(False)
    with torch.no_grad():
        zero.weight.zero_()
        zero.bias.zero_()
    x = ((1 + torch.rand(*DROP_SHAPE, SELECT_IN)) * torch.randn(*DROP_SHAPE, SELECT_IN).sign()).to(dtype)
    x = x.to(device)
    tolerance = RELATIVE_TOLERANCE[dtype]
    with torch.no_grad():
        given_back = relative_error(output(layer.eval(), x)[..., :SELECT_IN], x)
    assert given_back <= tolerance, (
        f"a {dtype_name(dtype)} layer with A = [I; 0], B = [I, 0], alpha = r and a zero base, in eval mode, gives "
        f"its input back off by {given_back:.3g} (relative), expected <= {tolerance:g}: the output must be base(x) + "
        "(alpha / r) x A^T B^T, with dropout off in eval mode (see test_update_is_scaling_times_B_at_A)"
    )
    upstream = torch.randn(*DROP_SHAPE, SELECT_OUT, dtype=dtype, device=device)
    changes = torch.stack([_train_mode_change(layer, zero, x, *regime, upstream)[0] for regime in DROP_REGIMES])
    multipliers = changes[..., :SELECT_IN].double() / x.double()
    kept = multipliers[multipliers.abs() > 1e-3]
    assert kept.numel() > 0, f"dropout={p} zeroed every adapter input in train mode: it must drop a fraction p"
    spread = (kept.max() - kept.min()).item()
    assert spread <= 2 * tolerance * kept.abs().max().item(), (
        f"in {dtype_name(dtype)}, a train-mode output (dropout={p}) matches no input-dropout mask: kept adapter inputs "
        f"came out multiplied by {kept.min().item():.4g} to {kept.max().item():.4g}, expected one common factor "
        "1/(1-p); is dropout applied to x, before A, and not between A and B?"
    )
    scale = kept.mean().item()
    scale = next((value for value in (1 / (1 - p), 1.0, 1 / p) if math.isclose(scale, value, rel_tol=tolerance)), scale)
    return torch.where(multipliers.abs() > 1e-3, scale, 0.0)


def expect_dropout_like_nn_dropout_in_its_dtype(layer: nn.Module, p: float = DROPOUT) -> None:
    """Fail the check unless ``layer`` (made as ``dropout_multipliers_in_its_dtype`` says) drops its adapter's inputs
    in train mode as nn.Dropout(p) does, in its own dtype: survivors scaled by 1 / (1 - p), a fresh mask for every
    element and call, a fraction p zeroed."""
    multipliers = dropout_multipliers_in_its_dtype(layer, p)
    expect_kept_inputs_rescaled(multipliers, p)
    expect_a_fresh_mask_for_every_element_and_call(multipliers)
    expect_a_fraction_p_zeroed(multipliers, p)


# The factors a user froze, each state of the pair: LoRA-FA trains B alone, a first-stage adapter is kept whole while
# the layers before it train. A frozen factor still computes its share of y and of the input gradient.
FROZEN_FACTORS = {"A frozen": (True, False), "B frozen": (False, True), "both frozen": (True, True)}
FROZEN_CAUSE = (
    "a frozen factor (requires_grad False) still computes its share of y and of dL/dx: no branch on the factors' "
    "requires_grad (a torch.no_grad() block, x.detach() or .detach() of the branch when a factor is frozen)"
)


def expect_plain_lora_with_frozen_factors(
    layer: nn.Module,
    base: nn.Module,
    r: int,
    scaling: float,
    batch_shape: tuple[int, ...],
    contiguous: bool,
    grad: str,
    regime: str,
    dropout: float = 0.0,
) -> None:
    """Fail the check unless ``layer`` computes plain LoRA, and with ``grad`` "grad on" (x requiring grad) its
    gradients of x and of the factor that still trains, with each of FROZEN_FACTORS set by requires_grad_(False), in
    the regime the caller set up (``regime`` describes it, as for ``expect_plain_lora_in_regime``, whose arguments
    these are); a forward never unfreezes a factor. The factors are found while both train (``factors`` sees only
    trainable tensors), given trained-looking values, and left trainable again at the end."""
    out_features, in_features = linear_weight(base).shape
    found = factors(layer, in_features, out_features, r)
    pair = (found.stored_A, found.stored_B)
    with torch.no_grad():
        for tensor in pair:
            tensor.normal_(0.0, 0.5)
    try:
        for state, flags in FROZEN_FACTORS.items():
            for tensor, frozen in zip(pair, flags, strict=True):
                tensor.requires_grad_(not frozen)
                tensor.grad = None
            state = f"{regime}, {state} by requires_grad_(False){', x requiring grad' if grad == 'grad on' else ''}"
            expect_one_plain_lora_call(layer, base, found, scaling, batch_shape, contiguous, grad, state, "",
                                       dropout=dropout, frozen=flags)  # fmt: skip
    finally:
        for tensor in pair:
            tensor.requires_grad_(True)
            tensor.grad = None


# Names of a dict (a module's globals, a class's or a wrapper's __dict__) whose values describe code, not state: a
# docstring, a name, annotations, the import machinery's records. Memory walks charge them to nothing.
METADATA_NAMES = frozenset(
    {"__doc__", "__name__", "__qualname__", "__module__", "__annotations__", "__file__", "__cached__", "__spec__",
     "__loader__", "__package__", "__path__", "__builtins__"}
)  # fmt: skip


def python_bytes(value: object) -> int:
    """The bytes a Python object holds beyond its type's fixed part, as the memory walks charge them: an int's digits,
    a str's characters, a bytes' or an io.BytesIO's buffer (its ``__sizeof__`` less ``__basicsize__``), or what it
    exposes through the buffer protocol (a ctypes array, an mmap), whichever is more; 0 for what Python shares (None,
    bools, the small ints -5 to 256) and for a container (its items are walked and charged one by one)."""
    if value is None or isinstance(value, (bool, dict, list, tuple, set, frozenset)):
        return 0
    if type(value) is int and -5 <= value <= 256:
        return 0
    try:
        exposed = memoryview(value).nbytes
    except (TypeError, ValueError, BufferError):  # no buffer, or a released one
        exposed = 0
    return max(exposed, type(value).__sizeof__(value) - type(value).__basicsize__, 0)


def object_bytes(value: object) -> int:
    """The memory a Python object holds on its own, as every memory walk charges it: all of it (``sys.getsizeof``)
    for a number of any type (an int past the small ints, a float, a complex, a subclass of one), else what it holds
    beyond its type's fixed part (``python_bytes``: a str's characters, a bytes' buffer; a container's items are
    charged one by one); 0 for what the world shares (None, bools, the small ints) and for a tensor (its storage is
    charged once, by the walk)."""
    if isinstance(value, torch.Tensor):
        return 0
    if isinstance(value, (float, complex)) or (isinstance(value, int) and python_bytes(value) > 0):
        return sys.getsizeof(value)
    return python_bytes(value)


def held_items(value: object) -> list[tuple[str, object]]:
    """(where, item) of what ``value`` refers to on its own, as every memory walk enters it: a dict's keys AND values,
    the items of a list, tuple, set or frozenset, an object's __dict__ and __slots__, a closure's cells, a bound
    method's object and function, a functools.partial's arguments; nothing of a module, a class or code (shared)."""
    if isinstance(value, (types.ModuleType, type, types.CodeType)):
        return []
    if isinstance(value, dict):
        named = lambda key: f"[{key!r}]" if isinstance(key, (str, int)) else f"[a {type(key).__name__} key]"  # noqa: E731
        return [(named(key), item) for key, item in value.items()] + [(f"{named(key)} (the key)", key) for key in value]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [(f"[{index}]", item) for index, item in enumerate(value)]
    attributes = getattr(value, "__dict__", None)
    held = [(f".{name}", item) for name, item in attributes.items()] if isinstance(attributes, dict) else []
    for cls in type(value).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            with contextlib.suppress(AttributeError):
                held.append((f".{slot}", getattr(value, slot)))
    for cell in getattr(value, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            held.append((" (a closure's cell)", cell.cell_contents))
    if isinstance(value, types.MethodType):
        held += [(".__self__", value.__self__), (".__func__", value.__func__)]
    if isinstance(value, functools.partial):
        held += [(".func", value.func), (".args", value.args), (".keywords", value.keywords)]
    return held


def reachable_memory(root: object, where: str = "") -> dict[object, tuple[str, int, object]]:
    """The memory ``root`` keeps alive, each piece once: key -> (where, bytes, the object). A tensor's storage (key
    ("storage", device, data_ptr)) counts whole, reached through ``held_items`` (a dict's keys too) and its .grad;
    every other object (key its id) counts ``object_bytes``. Modules, classes and functions' code are not entered."""
    memory: dict[object, tuple[str, int, object]] = {}
    seen: set[int] = set()
    pending = [(root, where)]
    while pending and len(seen) < 200_000:
        value, at = pending.pop()
        if id(value) in seen or isinstance(value, (types.ModuleType, type, types.CodeType)):
            continue
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            memory.setdefault(("storage", str(storage.device), storage.data_ptr()), (at, storage.nbytes(), value))
            if value.grad is not None:
                pending.append((value.grad, at + ".grad"))
        elif isinstance(value, torch.UntypedStorage):
            memory.setdefault(("storage", str(value.device), value.data_ptr()), (at, value.nbytes(), value))
        elif isinstance(value, torch.TypedStorage):
            pending.append((value.untyped_storage(), at))
        elif (size := object_bytes(value)) > 0:
            memory[id(value)] = (at, size, value)
        pending += [(item, at + step) for step, item in held_items(value)]
    return memory


def submission_state(source: type | Callable) -> list[dict]:
    """What the submission keeps at module level, as dicts to walk: the globals of every loaded module of the package
    ``source`` (a class or a function of the submission) comes from, and the attributes of the classes defined there
    (a class-level cache). Memory a call leaves there is memory the call keeps alive."""
    package = source.__module__.split(".")[0]
    if package != PACKAGE:  # a stand-in for an object the submission lacks: the grader's own modules are not its state
        return []
    state = []
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", None)
        if not isinstance(name, str) or name.split(".")[0] != package:
            continue
        state.append(vars(module))
        classes = [value for value in list(vars(module).values()) if isinstance(value, type)]
        state += [dict(vars(cls)) for cls in classes if cls.__module__ == name]
    return state


# alpha values outside the comfortable positive range, which the stubs take as given: 0 mutes the adapter (scaling 0,
# the layer computes its base), a negative alpha subtracts the update. `alpha or r` turns 0 into r, abs(alpha) or a
# clamp to a positive floor changes the other.
ALPHAS_AS_GIVEN = {"alpha-zero": 0.0, "alpha-negative": -8.0}


def expect_alpha_as_given(make: Callable[[], nn.Module], base: nn.Module, r: int, alpha: float, call: str) -> None:
    """Fail the check unless ``make()`` (``call``, a layer of rank ``r`` on a float64 base computing what ``base``, an
    nn.Linear, computes) takes ``alpha`` as given: records alpha and scaling == alpha / r, and adds alpha / r x B @ A,
    for a zero or negative alpha too (ALPHAS_AS_GIVEN)."""
    try:
        layer = make()
    except (TypeError, ValueError) as error:
        pytest.fail(
            f"{call} raised {type(error).__name__} ({error}), expected a layer: the stub takes any alpha (0 mutes "
            "the adapter, a negative alpha subtracts the update); only base, r and dropout are checked",
            pytrace=False,
        )
    randomize_factors(layer)
    likely = {
        1.0: "alpha = alpha or r? 0 is falsy, and alpha=0 is a muted adapter, not a missing alpha",
        abs(alpha) / r: "abs(alpha)? a negative alpha subtracts the update",
    }
    recorded, scaling = getattr(layer, "alpha", None), getattr(layer, "scaling", None)
    measured = None if scaling is None else float(scaling)
    cause = next((text for value, text in likely.items() if measured is not None and math.isclose(measured, value)), "")
    assert recorded == alpha and measured is not None and math.isclose(measured, alpha / r, abs_tol=1e-12), (
        f"{call} records alpha={recorded}, scaling={scaling}, expected alpha={alpha}, scaling = alpha / r = "
        f"{alpha / r:g}: {cause or 'store alpha as given'}; self.alpha = alpha, self.scaling = alpha / r"
    )
    found = factors(layer, base.in_features, base.out_features, r)
    ratio, proportional = scaling_ratio(layer, base, found)
    cause = next((text for value, text in likely.items() if math.isclose(ratio, value, rel_tol=1e-6)), "")
    assert proportional and math.isclose(ratio, alpha / r, rel_tol=1e-6, abs_tol=1e-9), (
        f"{call} adds "
        + (f"{ratio:.4g} x B @ A" if proportional else "an update not proportional to B @ A")
        + f", expected alpha / r = {alpha / r:g} x (its scaling attribute is right): "
        + (cause or "scale by the alpha as given, in forward too")
    )


@contextlib.contextmanager
def a_merge_of_any_alpha(call: str, cause: str = "") -> Iterator[None]:
    """Inside the block, a merge that raises (ArithmeticError, RuntimeError, ValueError: a sqrt of a negative scaling,
    a test of its sign) fails the check in one line: ``call`` raised, a negative alpha is merged as given, then
    ``cause`` ("; ..."). A stub's NotImplementedError goes on up, for its own one-line message."""
    try:
        yield
    except NotImplementedError:
        raise
    except (ArithmeticError, RuntimeError, ValueError) as error:
        message = str(error).splitlines()[0][:120]
        pytest.fail(
            f"{call}: raised {type(error).__name__} ({message}): a negative alpha is merged as given (scaling = "
            f"alpha / r < 0), no sqrt of the scaling nor a test of its sign{cause}",
            pytrace=False,
        )


# How a user freezes an adapter before merging it: one factor, the other, both, or the whole model (for export).
FROZEN_BEFORE_MERGING = (
    "one factor frozen",
    "the other factor frozen",
    "both factors frozen",
    "model.requires_grad_(False)",
)


def freeze_before_merging(model: nn.Module, adapters: list[nn.Module], how: str) -> None:
    """Freeze, as ``how`` (one of FROZEN_BEFORE_MERGING) says, the factors of each of ``adapters`` (their trainable
    tensors, in registration order), or every parameter of ``model``."""
    if how == "model.requires_grad_(False)":
        model.requires_grad_(False)
        return
    for adapter in adapters:
        pair = trainable(adapter)
        chosen = pair if how.startswith("both") else pair[:1] if how.startswith("one") else pair[1:]
        for tensor in chosen:
            tensor.requires_grad_(False)


def expect_merged_like_the_adapted(merged: torch.Tensor, adapted: torch.Tensor, base_alone: torch.Tensor, how: str,
                                   tolerance: float = 1e-5) -> None:  # fmt: skip
    """Fail the check unless the outputs of a model merged after its adapters were frozen (``how``) are what the
    adapted model computed, saying so where they are the outputs of its bases alone (``base_alone``)."""
    error = max_difference(merged, adapted)
    skipped = max_difference(merged, base_alone) < tolerance
    assert error < tolerance, (
        f"with {how} before merging, the merged model's outputs differ from the adapted model's by "
        f"{error:.3g}, expected < {tolerance:g}"
        + (": they are the bases' alone, the frozen adapters' updates left out" if skipped else "")
        + ": a frozen adapter still computes W + scaling B @ A, and merging folds that in whatever the factors' "
        "requires_grad (no branch on it)"
    )


def expect_the_base_output_left_alone(
    layer: nn.Module, base: nn.Module, x: torch.Tensor, grad: str, where: str, the_base: str = "the base"
) -> bool:
    """Fail the check if ``layer``'s forward on ``x`` (in grad mode ``grad``) changes the tensor its ``base``
    submodule returned, which a forward hook (an activation observer, a feature cache) keeps: the update goes into
    a new tensor ("never the base path"). Returns whether the hook ran (``base`` was called as a module)."""
    kept = []
    handle = base.register_forward_hook(lambda module, args, result: kept.append((result, result.detach().clone())))
    try:
        with GRAD_MODES[grad]():
            output(layer, x)
    finally:
        handle.remove()
    if not kept:
        return False
    held, made = kept[-1]
    change = max_difference(held, made)
    assert change == 0, (
        f"{where}: a forward hook on {the_base} kept the tensor it returned, which changed by {change:.3g} during "
        "the layer's call, expected unchanged: the update was added into base(x) in place (y += ..., y.add_(...)); "
        "return base(x) + update, a new tensor"
    )
    return True


@contextlib.contextmanager
def an_in_place_update_named(regime: str) -> Iterator[None]:
    """Inside the block, autograd's "modified by an inplace operation" RuntimeError (a training step through a base
    whose backward needs its output, as a ReLU's does) fails the check with its cause: the update added into base(x)
    in place. Any other RuntimeError goes on up."""
    try:
        yield
    except RuntimeError as error:
        message = str(error).splitlines()[0]
        if "inplace" not in message:
            raise
        pytest.fail(
            f"{regime}: a training step raised RuntimeError ({message[:120]}): the update was added into base(x) in "
            "place (y += ...), and the base's backward needs its output (a ReLU's does): return base(x) + update, "
            "a new tensor",
            pytrace=False,
        )


FOREIGN_DEFAULT_DTYPES = (torch.float64, torch.float16, torch.bfloat16)  # a script's set_default_dtype, not float32


def expect_the_base_dtype_under_every_default_dtype(
    make: Callable[[torch.dtype], tuple[torch.Tensor, nn.Module]], in_features: int, out_features: int,
    dtype: torch.dtype, what: str,
) -> None:  # fmt: skip
    """Built and run while torch's default dtype is each of float64, float16 and bfloat16 (a training script that set
    one), a layer on a ``dtype`` base keeps its factors in the base's dtype and computes there: ``make(dtype)`` returns
    (the base's weight, the layer). A factor made in the default dtype (torch.empty(r, in) cast only for some base
    dtypes) fails with its cause."""
    for default in FOREIGN_DEFAULT_DTYPES:
        regime = f"{what} on a {dtype_name(dtype)} base, built under torch.set_default_dtype({default})"
        cause = "create the factors with dtype=base.weight.dtype (never torch's default dtype, nor cast only for some)"
        with default_dtype(default):
            try:
                weight, layer = make(dtype)
                expect_on_the_base_device_and_dtype(layer, weight, in_features, out_features, "cpu", dtype)
            except AssertionError as error:
                pytest.fail(f"{regime}: {str(error).splitlines()[0]}; {cause}", pytrace=False)
            except NotImplementedError:  # a stub: its own one-line message
                raise
            except RuntimeError as error:
                message = str(error).splitlines()[0][:160]
                pytest.fail(f"{regime}: building it or its forward raised RuntimeError ({message}): {cause}", False)


def _dropout_mask(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Which adapter inputs one train-mode call of ``layer`` (as ``expect_dropout_drawn_from_torchs_rng`` set it up)
    zeroed: the output is the adapter's input after dropout, padded with zeros."""
    with torch.no_grad():
        return layer.train()(x)[..., :EXACT_IN] == 0


def expect_dropout_drawn_from_torchs_rng(make: Callable[[], tuple[nn.Module, nn.Module]], p: float = DROPOUT) -> None:
    """Fail the check unless the masks of layers built by ``make`` (a fresh (layer, its base) on each call: dropout
    ``p``, r = alpha = EXACT_R, EXACT_IN -> EXACT_OUT, float32) come from torch's global RNG, as nn.Dropout's do: two
    layers called one after the other draw different masks, torch.manual_seed(s) before a call reproduces its mask,
    and another seed gives another mask (no private generator, no seed fixed at construction)."""
    layers = [make() for _ in range(2)]
    for layer, base in layers:
        show_the_dropped_inputs(layer, base)
    (first, _), (second, _) = layers
    where = f"two {type(first).__name__}s with dropout={p} in train mode"
    x = (1 + torch.rand(64, EXACT_IN)) * torch.randn(64, EXACT_IN).sign()
    with torch.random.fork_rng(devices=[]):  # the re-seeding below leaves the check's random stream as it was
        torch.manual_seed(1234)
        masks = [_dropout_mask(first, x), _dropout_mask(second, x)]
        torch.manual_seed(1234)
        again = _dropout_mask(first, x)
        torch.manual_seed(4321)
        other = _dropout_mask(first, x)
    private = "draw masks from torch's global RNG (nn.Dropout, F.dropout), not from a generator of the layer's own"
    assert not torch.equal(*masks), (
        f"{where}, called one after the other on the same batch, zeroed the very same {x.numel()} adapter inputs, "
        f"expected independent masks: every layer replays one mask sequence (a generator seeded at construction?): "
        + private
    )
    assert torch.equal(again, masks[0]), (
        f"{where}: torch.manual_seed(1234) before a call did not reproduce its dropout mask, as it does for "
        f"nn.Dropout: the mask ignores torch's seed: " + private
    )
    assert not torch.equal(other, masks[0]), (
        f"{where}: torch.manual_seed(1234) and torch.manual_seed(4321) gave the very same dropout mask, expected "
        f"another mask for another seed: the mask ignores torch's seed: " + private
    )
