"""Checks of the `fused_lora` kata: FusedLoRAFunction (a hand-written backward) and FusedLoRALinear."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import re
from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.autograd.gradcheck import GradcheckError

from grader.flops import ArithmeticWork
from grader.probes import (
    DEVICES,
    FLOAT_DTYPES,
    GRAD_MODES,
    RELATIVE_TOLERANCE,
    TRAINING_CASES,
    UNROUNDED_ALPHA,
    UNROUNDED_R,
    Conv1DLike,
    ForeignLinear,
    LinearLookalike,
    PeftLoraLinearLike,
    describe,
    dtype_name,
    examples,
    expect_a_random_full_rank_A,
    expect_centred,
    expect_following_base_swaps,
    expect_instance,
    expect_nn_linear_bound_if_uniform,
    expect_on_the_base_device,
    expect_plain_lora_in_regime,
    expect_plain_lora_with_frozen_factors,
    expect_r_alpha_and_scaling,
    expect_training_fits_a_low_rank_target,
    expect_value_error,
    factors,
    made_under_a_foreign_default_device,
    max_difference,
    output,
    plain_lora,
    randomize_factors,
    reachable_memory,
    relative_error,
    scaling_ratio,
    strided,
    submission_state,
    trainable,
)
from grader.signatures import expect_the_stubs_signatures


@pytest.mark.points(1)
def test_takes_the_stubs_parameters(implementation, FusedLoRALinear):
    """Callers pass the stub's parameters by name or by position: each definition takes them as the stub does."""
    expect_the_stubs_signatures(implementation, "fused_lora")
    # Then a call into the kata: an unimplemented stub, its signatures right, scores nothing here.
    FusedLoRALinear(nn.Linear(4, 3))


SUBJECT = "FusedLoRAFunction"  # the definition a failing check points at

IN, OUT, R, ALPHA = 12, 10, 4, 10.0  # distinct dims: a factor's shape tells which it is; alpha / r not whole
SCALING = ALPHA / R
# Any Python float is a scaling: 0 (alpha 0, the adapter switched off) and negative (alpha < 0) too, where a square
# root of it put on each factor raises or gives NaN, and a shortcut at 0 drops the factors' gradients.
SCALINGS = (SCALING, 10 / 3, 0.7, 0.0, -1.75)
INPUTS = ("x", "weight", "bias", "lora_A", "lora_B")  # the tensor arguments of apply, in order
GRADIENTS = {  # each input's gradient, g = dL/dy (N, out), for the failure messages
    "x": "g W + scaling (g B) A",
    "weight": "g^T x",
    "bias": "g summed over the rows",
    "lora_A": "scaling (g B)^T x",
    "lora_B": "scaling g^T (x A^T)",
}
FROZEN_BASE = ("x", "lora_A", "lora_B")


def function_inputs(
    in_features: int = IN,
    out_features: int = OUT,
    r: int = R,
    batch_shape: tuple[int, ...] = (6,),
    bias: bool = True,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    contiguous: bool = True,
) -> dict[str, torch.Tensor | None]:
    """Random arguments for FusedLoRAFunction.apply, B non-zero (as after training), none requiring grad; when not
    ``contiguous``, x strided (probes.strided) and W, A and B stored transposed (NON_CONTIGUOUS), as a layer that keeps
    W^T, A^T or B^T hands over their ``.t()`` views."""
    place = {"dtype": dtype, "device": device}

    def matrix(rows: int, columns: int) -> torch.Tensor:
        return torch.randn(rows, columns, **place) if contiguous else torch.randn(columns, rows, **place).T

    return {
        "x": strided((*batch_shape, in_features), contiguous, **place),
        "weight": matrix(out_features, in_features) / math.sqrt(in_features),
        "bias": torch.randn(out_features, **place) if bias else None,
        "lora_A": matrix(r, in_features) / math.sqrt(in_features),
        "lora_B": matrix(out_features, r) / math.sqrt(r),
    }


NON_CONTIGUOUS = " non-contiguous, W, A and B stored transposed"  # what function_inputs(contiguous=False) lays out


def in_float64(inputs: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    """``inputs`` converted to float64, the dtype of the exact values a forward is compared with."""
    return {name: None if value is None else value.double() for name, value in inputs.items()}


def lora_formula(inputs: dict[str, torch.Tensor | None], scaling: float = SCALING) -> torch.Tensor:
    """x W^T + b + scaling (x A^T) B^T with torch's own ops, in the inputs' dtype."""
    x, weight, bias, A, B = (inputs[name] for name in INPUTS)
    y = x @ weight.T + scaling * (x @ A.T) @ B.T
    return y if bias is None else y + bias


def apply(FusedLoRAFunction, inputs: dict[str, torch.Tensor | None], scaling: float = SCALING) -> torch.Tensor:
    """FusedLoRAFunction.apply on ``inputs``, after failing the check unless it returned one tensor."""
    try:
        y = FusedLoRAFunction.apply(*(inputs[name] for name in INPUTS), scaling)
    except (ValueError, ArithmeticError) as error:
        if scaling > 0:
            raise
        pytest.fail(
            f"FusedLoRAFunction.apply raised {type(error).__name__} ({str(error).splitlines()[0]}) for scaling "
            f"{scaling!r}, expected y: scaling is any Python float, 0 and negative too (alpha may be <= 0); is "
            "sqrt(scaling) put on each factor? Scale one of the rank-r products by scaling itself",
            pytrace=False,
        )
    except RuntimeError as error:
        if isinstance(error, NotImplementedError) or inputs["x"].numel():
            raise
        pytest.fail(
            f"FusedLoRAFunction.apply raised RuntimeError ({str(error).splitlines()[0]}) for an empty batch, x "
            f"{tuple(inputs['x'].shape)}: x (..., in) may hold no rows (no tokens for an expert, an empty sequence); "
            "flatten with x.reshape(-1, x.shape[-1]) (reshape(N, -1) has no -1 to infer from 0 elements)",
            pytrace=False,
        )
    return expect_instance(y, torch.Tensor, "FusedLoRAFunction.apply", "one tensor y of shape (..., out)")


def requiring_grad(inputs: dict[str, torch.Tensor | None], names: tuple[str, ...]) -> dict[str, torch.Tensor | None]:
    """Fresh leaf copies of ``inputs``, those in ``names`` requiring grad."""
    return {
        name: None if value is None else value.detach().clone().requires_grad_(name in names)
        for name, value in inputs.items()
    }


def backward(y: torch.Tensor, upstream: torch.Tensor) -> None:
    """``y.backward(upstream)``, failing the check with a plain explanation when autograd rejects what
    the Function's backward returned."""
    try:
        y.backward(upstream)
    except RuntimeError as error:
        rejected = re.search(r"returned an (invalid gradient at index (\d)|incorrect number of gradients)", str(error))
        if rejected is None:
            raise
        index = rejected.group(2)
        which = f" for {(*INPUTS, 'scaling')[int(index)]}" if index is not None else ""
        pytest.fail(
            f"autograd rejected what backward returned{which}: {str(error).splitlines()[0]}; return six gradients, "
            "for (x, weight, bias, lora_A, lora_B, scaling), each shaped like its input or None",
            pytrace=False,
        )


def tolerance(dtype: torch.dtype, expected: torch.Tensor) -> float:
    """How far a correct answer may land from the float64 value: a few roundings of the inputs' dtype."""
    steps = 8 if dtype == torch.bfloat16 else 50
    largest = expected.abs().max().item() if expected.numel() else 0.0  # an empty batch has no largest value
    return steps * torch.finfo(dtype).eps * (1 + largest)


def forward_cause(measured: torch.Tensor, inputs: dict[str, torch.Tensor | None], scaling: float = SCALING) -> str:
    """The likely mistake behind a wrong forward, when the output matches a classic one."""
    if scaling < 0 and not bool(measured.isfinite().all()):
        return "NaN at a negative scaling: is sqrt(scaling) put on each factor? Scale one product by scaling itself"
    exact = in_float64(inputs)
    no_bias = exact | {"bias": None}
    mistakes = {
        "the adapter path is missing": lora_formula(exact, 0.0),
        "the scaling is missing": lora_formula(exact, 1.0),
        "scaled by alpha / r twice": lora_formula(exact, scaling**2),
        "the bias is missing": lora_formula(no_bias, scaling),
    }
    for cause, wrong in mistakes.items():
        if max_difference(measured, wrong) <= tolerance(measured.dtype, wrong):
            return cause
    return "is it x W^T + b + scaling (x A^T) B^T?"


@pytest.mark.points(1)
def test_is_an_autograd_function_that_autograd_records(FusedLoRAFunction):
    inputs = requiring_grad(function_inputs(), FROZEN_BASE)
    y = apply(FusedLoRAFunction, inputs)
    assert isinstance(FusedLoRAFunction, type) and issubclass(FusedLoRAFunction, torch.autograd.Function), (
        f"FusedLoRAFunction is {describe(FusedLoRAFunction)}, expected a subclass of torch.autograd.Function "
        "with static forward and backward methods"
    )
    node = type(y.grad_fn).__name__ if y.grad_fn is not None else "no grad_fn"
    assert node == f"{FusedLoRAFunction.__name__}Backward", (
        f"the output of FusedLoRAFunction.apply was made by {node}, expected {FusedLoRAFunction.__name__}Backward: "
        "return the result of forward as is, with no torch.enable_grad() or ops after apply"
    )


@pytest.mark.points(3)
@given(
    in_features=st.integers(1, 16),
    out_features=st.integers(1, 16),
    r=st.integers(1, 8),
    batch_shape=st.lists(st.integers(1, 3), max_size=3).map(tuple),
    bias=st.booleans(),
    dtype=st.sampled_from(FLOAT_DTYPES),
    contiguous=st.booleans(),
    grad=st.booleans(),
    scaling=st.sampled_from(SCALINGS),
)
@examples(
    "in_features, out_features, r, batch_shape, bias, dtype, contiguous, grad, scaling",
    (IN, OUT, R, (6,), True, torch.float32, True, False, SCALING),
    (IN, OUT, R, (), True, torch.float16, True, True, 10 / 3),
    (IN, OUT, 1, (1,), False, torch.bfloat16, False, True, 0.7),
    (IN, OUT, R, (3, 2, 2), True, torch.float32, False, True, SCALING),
    (IN, OUT, R, (130,), True, torch.float64, False, True, 10 / 3),
    (IN, OUT, R, (0,), True, torch.float32, True, True, SCALING),  # an empty batch: no rows at all
    (IN, OUT, R, (2, 0), False, torch.float64, False, False, 10 / 3),
    (IN, OUT, R, (3,), True, torch.float32, True, True, -1.75),  # alpha < 0: a negative scaling
    (IN, OUT, 1, (2, 2), False, torch.bfloat16, False, False, -1.75),
    (IN, OUT, R, (3,), True, torch.float64, False, False, 0.0),  # alpha 0
    (IN, OUT, R, (2,), True, torch.float16, True, True, 0.0),
    # real batches of no round number, narrow (a path of its own from some row count on, in chunks of a power of two)
    (8, 6, 2, (4, 500), True, torch.float64, False, True, SCALING),
    (8, 6, 2, (8191,), False, torch.float32, True, True, -1.75),
    (8, 6, 2, (2**17 + 3,), True, torch.bfloat16, True, False, SCALING),
    (8, 6, 2, (2**20 + 3,), True, torch.float32, True, False, SCALING),  # a million rows: 8 sequences of 128K
)  # fmt: skip
def test_forward_computes_the_lora_formula(
    FusedLoRAFunction, in_features, out_features, r, batch_shape, bias, dtype, contiguous, grad, scaling
):  # fmt: skip
    inputs = function_inputs(in_features, out_features, r, batch_shape, bias, dtype, contiguous=contiguous)
    with torch.set_grad_enabled(grad):
        inputs = requiring_grad(inputs, ("x", "lora_A", "lora_B") if grad else ())
        y = apply(FusedLoRAFunction, inputs, scaling)
    expected = lora_formula(in_float64(inputs), scaling)
    assert y.shape == expected.shape, (
        f"for x of shape {tuple(inputs['x'].shape)} expected y of shape {tuple(expected.shape)}, measured "
        f"{tuple(y.shape)}: flatten the batch dimensions into rows, and restore them at the end"
    )
    assert y.dtype == dtype, f"for {dtype} inputs y is {y.dtype}: return y in x's dtype (no .float() or .to())"
    error = max_difference(y, expected)
    regime = f"{dtype}, x {tuple(inputs['x'].shape)}{'' if contiguous else NON_CONTIGUOUS}, grad {grad}"
    assert error <= tolerance(dtype, expected), (
        f"forward is off the LoRA formula by {error:.3g} (bias {'given' if bias else 'None'}, scaling {scaling:.4g}, "
        f"{regime}): {forward_cause(y, inputs, scaling)}"
    )


@pytest.mark.points(4)
@pytest.mark.parametrize(
    "trained, bias",
    [
        (FROZEN_BASE, True),
        (FROZEN_BASE, False),
        (("lora_A", "lora_B"), True),
        (("x", "lora_B"), True),
        (INPUTS, True),
    ],
    ids=["frozen-base", "no-bias", "factors-only", "frozen-A", "every-input"],  # frozen A: LoRA-FA
)
@given(
    in_features=st.integers(1, 12),
    out_features=st.integers(1, 12),
    r=st.integers(1, 6),
    batch_shape=st.lists(st.integers(1, 3), max_size=3).map(tuple),
    dtype=st.sampled_from(FLOAT_DTYPES),
    contiguous=st.booleans(),
    scaling=st.sampled_from(SCALINGS),
)
@examples(
    "in_features, out_features, r, batch_shape, dtype, contiguous, scaling",
    (IN, OUT, R, (2, 3), torch.float64, True, SCALING),
    (IN, OUT, R, (3, 2, 2), torch.float32, False, SCALING),
    (IN, OUT, R, (), torch.bfloat16, True, SCALING),
    (IN, OUT, R, (1,), torch.float16, True, SCALING),
    (IN, OUT, R, (0,), torch.float64, True, SCALING),  # an empty batch: zero gradients for the parameters
    (IN, OUT, R, (2, 0), torch.float32, False, SCALING),
    (IN, OUT, R, (2, 3), torch.float64, False, 0.0),  # alpha 0: zero gradients for the factors, not None
    (IN, OUT, R, (3,), torch.float32, True, -1.75),  # alpha < 0
    # real batches of no round number, narrow (gradients summed over rows in chunks of a power of two)
    (8, 6, 2, (4, 500), torch.float64, False, SCALING),
    (8, 6, 2, (8191,), torch.float32, True, -1.75),
    (8, 6, 2, (2**17 + 3,), torch.float64, True, SCALING),
)  # fmt: skip
def test_backward_gives_each_input_its_gradient(
    FusedLoRAFunction, trained, bias, in_features, out_features, r, batch_shape, dtype, contiguous, scaling
):
    inputs = function_inputs(in_features, out_features, r, batch_shape, bias, dtype, contiguous=contiguous)
    trained = tuple(name for name in trained if inputs[name] is not None)
    measured, expected = requiring_grad(inputs, trained), requiring_grad(in_float64(inputs), trained)
    upstream = torch.randn(*batch_shape, out_features, dtype=dtype)
    backward(apply(FusedLoRAFunction, measured, scaling), upstream)
    lora_formula(expected, scaling).backward(upstream.double())
    where = f"{dtype}, x {tuple(inputs['x'].shape)}{'' if contiguous else NON_CONTIGUOUS}, scaling {scaling:.4g}"
    asked = f"with {', '.join(trained)} requiring grad ({where})"
    for name in trained:
        grad = measured[name].grad
        assert grad is not None, (
            f"backward returned None for {name} {asked}: return a gradient for each input ctx.needs_input_grad marks"
            f"{' (at scaling 0 the factors gradients are zero tensors, not None)' if scaling == 0 else ''}"
        )
        assert (grad.shape, grad.dtype) == (measured[name].shape, dtype), (
            f"backward returned {describe(grad)} for {name} {asked}, expected the shape and dtype of {name}"
        )
        error = relative_error(grad, expected[name].grad)
        assert error <= RELATIVE_TOLERANCE[dtype], (
            f"the gradient of {name} is off by {error:.3g} (relative) {asked}: expected {GRADIENTS[name]}"
        )


@pytest.mark.points(3)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("scaling", [SCALING, -1.75], ids=lambda scaling: f"scaling={scaling:g}")
def test_passes_gradcheck_in_float64(FusedLoRAFunction, bias, scaling):
    inputs = requiring_grad(function_inputs(7, 5, 3, (2, 3), bias), INPUTS)
    arguments = (*inputs.values(), scaling)
    try:
        torch.autograd.gradcheck(FusedLoRAFunction.apply, arguments, eps=1e-6, atol=1e-6, rtol=1e-5)
    except (ValueError, ArithmeticError) as error:
        if scaling > 0:
            raise
        pytest.fail(
            f"FusedLoRAFunction raised {type(error).__name__} ({str(error).splitlines()[0]}) at scaling {scaling:g}: "
            "scaling is any Python float, negative too; is sqrt(scaling) put on each factor?",
            pytrace=False,
        )
    except GradcheckError as error:
        first_line = str(error).strip().splitlines()[0]
        index = re.search(r"with respect to input (\d)", first_line)
        which = f" (input {index.group(1)} is {INPUTS[int(index.group(1))]})" if index else ""
        pytest.fail(f"torch.autograd.gradcheck failed at scaling {scaling:g}: {first_line}{which}", pytrace=False)


@pytest.mark.points(1)
@pytest.mark.parametrize(
    "gradient",
    [
        pytest.param(lambda y: y.sum(), id="stride-0"),  # y.sum() sends backward an expanded gradient
        pytest.param(lambda y: (y * torch.randn(OUT, 3, 2, dtype=y.dtype).permute(2, 1, 0)).sum(), id="permuted"),
    ],
)
def test_takes_non_contiguous_inputs_and_gradients(FusedLoRAFunction, gradient):
    inputs = function_inputs()
    inputs["x"] = torch.randn(IN, 3, 2, dtype=torch.float64).permute(2, 1, 0)  # .view() cannot flatten it
    measured, expected = requiring_grad(inputs, FROZEN_BASE), requiring_grad(inputs, FROZEN_BASE)
    assert not measured["x"].is_contiguous(), "grader bug: x must be non-contiguous here"
    torch.manual_seed(1)
    gradient(apply(FusedLoRAFunction, measured)).backward()
    torch.manual_seed(1)
    gradient(lora_formula(expected)).backward()
    for name in FROZEN_BASE:
        grad = measured[name].grad
        assert grad is not None and max_difference(grad, expected[name].grad) <= 1e-9, (
            f"with a non-contiguous x and incoming gradient the gradient of {name} is wrong: "
            "use reshape, not view, and never write into grad_output"
        )


@pytest.mark.points(1)
@pytest.mark.parametrize("grad", GRAD_MODES)  # no grad at all: a frozen model serving, as merge-in-place tempts
def test_leaves_its_inputs_untouched(FusedLoRAFunction, grad):
    for dtype, trained, bias in itertools.product(FLOAT_DTYPES, (FROZEN_BASE, ()), (True, False)):
        inputs = requiring_grad(function_inputs(dtype=dtype, bias=bias), trained)
        upstream = torch.randn(6, OUT, dtype=dtype)
        given = {name: value for name, value in {**inputs, "g": upstream}.items() if value is not None}
        before = {name: (value.detach().clone(), value._version) for name, value in given.items()}
        with GRAD_MODES[grad]():
            y = apply(FusedLoRAFunction, inputs)
        if y.grad_fn is not None:
            backward(y, upstream)
        changed = [  # a write undone after (B scaled in place, then unscaled) still moves the version counter
            name
            for name, value in given.items()
            if name != "g" and (value._version != before[name][1] or not torch.equal(value.detach(), before[name][0]))
        ]
        requiring = ", ".join(trained) or "nothing"
        regime = f"{grad}, {dtype_name(dtype)}, {'a' if bias else 'no'} bias, {requiring} requiring grad"
        assert not changed, (
            f"forward or backward changed {changed} in place ({regime}): even a write undone after (the update merged "
            "into the weight and out again) moves the tensor's version counter, which autograd checks for every "
            "other use of it, and rounds the weight off in low precision; compute into new tensors"
        )
        assert torch.equal(upstream, before["g"][0]) and upstream._version == before["g"][1], (
            f"backward changed the incoming gradient in place ({regime}): it belongs to autograd"
        )


# Who trains, with the base frozen (weight and bias), every non-empty choice of x, A and B; a trained bias with
# the weight frozen; then everything.
TRAINABLE_CHOICES = [
    ("x", "lora_A", "lora_B"), ("lora_A", "lora_B"), ("x", "lora_B"), ("x", "lora_A"),
    ("x",), ("lora_A",), ("lora_B",), ("x", "bias", "lora_A", "lora_B"), INPUTS,
]  # fmt: skip
EVERY_CHOICE = [choice for n in range(1, len(INPUTS) + 1) for choice in itertools.combinations(INPUTS, n)]
# (rows, in, out, r); in every size the rows differ from in, out and r (fewer rows than r in few-rows), so that a
# product shaped like a factor's gradient is one, and the check of unasked gradients runs at each size. One token
# (x 1-D, one row) is wide, so that an (out, in) outer product there outgrows the element-wise room.
# A training step's rows too (8 sequences of 1024 tokens), narrow to stay cheap: a path taken only from some batch
# size up ("for large batches") shows there. It is counted in one layout, dtype and bias (COUNTED_IN), the others at
# the sizes before it.
COST_SIZES = {
    "many-rows": (64, 48, 40, 2), "few-rows": (2, 48, 40, 3), "one-token": (1, 96, 80, 2),
    "a-training-batch": (8 * 1024, 12, 10, 3),
}  # fmt: skip
COUNTED_IN = {"a-training-batch": (["x 3-D, g permuted"], (torch.float32,), (True,))}  # (layouts, dtypes, biases)
Layout = tuple[Callable[[int], tuple[int, ...]], bool, Callable[[tuple[int, ...], torch.dtype], torch.Tensor]]
# How x and the incoming gradient g are laid out: (x's batch shape for N rows, x contiguous, g from its shape and
# dtype).
LAYOUTS: dict[str, Layout] = {
    "x 2-D, g dense": (lambda rows: (rows,), True, lambda shape, dtype: torch.randn(shape, dtype=dtype)),
    f"x 3-D{NON_CONTIGUOUS}, g of stride 0 as y.sum() sends": (
        lambda rows: (2, rows // 2),
        False,
        lambda shape, dtype: torch.ones((), dtype=dtype).expand(shape),
    ),
    "x 3-D, g permuted": (
        lambda rows: (2, rows // 2),
        True,
        lambda shape, dtype: torch.randn(shape[::-1], dtype=dtype).permute(*reversed(range(len(shape)))),
    ),
}
# The layouts a step's cost and its Nones are checked in: those above, and x of no batch dimension (one token).
STEP_LAYOUTS: dict[str, Layout] = {
    **LAYOUTS,
    "x 1-D, g dense": (lambda rows: (), True, lambda shape, dtype: torch.randn(shape, dtype=dtype)),
}


def layouts_for(rows: int) -> list[str]:
    """The layouts of STEP_LAYOUTS that lay out ``rows`` rows (x 1-D one, x 3-D an even number)."""
    return [layout for layout, (batch_shape, _, _) in STEP_LAYOUTS.items() if math.prod(batch_shape(rows)) == rows]


@pytest.mark.points(1)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_forward_saves_only_what_backward_needs(FusedLoRAFunction, layout, dtype):
    rows, in_features, out_features, r = COST_SIZES["many-rows"]
    batch_shape, contiguous, _ = LAYOUTS[layout]
    given = function_inputs(in_features, out_features, r, batch_shape(rows), dtype=dtype, contiguous=contiguous)
    size = given["x"].element_size()
    allowed = size * (rows * r + r * (in_features + out_features))  # u = scaling x A^T (N, r), a factor's copy
    state = submission_state(FusedLoRAFunction)  # a module-level dict of the submission keeps memory too
    for trained in EVERY_CHOICE:  # x frozen too: the first adapted layer over frozen embeddings
        inputs = requiring_grad(given, trained)
        before = reachable_memory(state)  # by identity: a constant or a docstring there is not new
        node = apply(FusedLoRAFunction, inputs).grad_fn
        after = reachable_memory((getattr(node, "saved_tensors", ()), vars(node), state), "ctx")
        own = {("storage", str(v.device), v.untyped_storage().data_ptr()) for v in inputs.values() if v is not None}
        extra = {key: found for key, found in after.items() if key not in before and key not in own}
        held = sum(size for _, size, _ in extra.values())
        kept_as = [
            f"{where}: {(tuple(t.shape), dtype_name(t.dtype)) if isinstance(t, torch.Tensor) else type(t).__name__}"
            for where, _, t in sorted(extra.values(), key=lambda found: -found[1])[:4]
        ]
        assert held <= allowed, (
            f"forward keeps {held} bytes alive for backward besides its inputs (with only {', '.join(trained)} "
            f"requiring grad, {layout}, {dtype}, {rows} rows, in={in_features}, out={out_features}, r={r}; the "
            f"largest: {kept_as}), expected at most N r + r (in + out) numbers of x's dtype = {allowed} bytes: "
            "save x, W, A, B themselves (x as given, whichever inputs train: flattening a non-contiguous x copies it; "
            "no float32 copy of a half-precision x) and the rank-r u = x A^T, not y, copies or [W; A], on ctx, in an "
            "object on it or at module level (a module-level dict; a dict's key, a Python number; a Python buffer "
            "such as a bytearray counts too)"
        )


@pytest.mark.points(1)
@pytest.mark.parametrize("trained", [FROZEN_BASE, INPUTS], ids=["frozen-base", "every-input"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])  # bias-free: Llama's q, k, v, o
def test_forward_and_backward_create_nothing_on_the_default_device(FusedLoRAFunction, trained, bias):
    inputs = requiring_grad(function_inputs(bias=bias), trained)
    upstream = torch.randn(6, OUT, dtype=torch.float64)

    def step() -> tuple:
        y = apply(FusedLoRAFunction, inputs)
        gradients = y.grad_fn.apply(upstream)  # backward(ctx, g) on this thread, as autograd calls it
        return (y, *(gradients if isinstance(gradients, tuple) else (gradients,)))

    made = made_under_a_foreign_default_device(step)
    if made is not None:
        tensors = [t for t in made if isinstance(t, torch.Tensor)]
        expect_on_the_base_device(tensors, inputs["x"].device, "y and the gradients of FusedLoRAFunction were made")


def needed_work(rows: int, in_features: int, out_features: int, r: int, trained: tuple[str, ...]) -> int:
    """The matrix-product flops of a forward + backward that computes only the gradients ``trained`` asks for."""
    work = 2 * rows * (in_features * out_features + r * (in_features + out_features))  # x W^T, u = x A^T, u B^T
    if "x" in trained or "lora_A" in trained:
        work += 2 * rows * out_features * r  # g_B = scaling g B
    if "x" in trained:
        work += 2 * rows * in_features * (out_features + r)  # g W + g_B A
    if "lora_A" in trained:
        work += 2 * rows * r * in_features  # g_B^T x
    if "lora_B" in trained:
        work += 2 * rows * out_features * r  # g^T u
    if "weight" in trained:
        work += 2 * rows * out_features * in_features  # g^T x
    return work


def counted_step(
    FusedLoRAFunction,
    rows: int,
    in_features: int,
    out_features: int,
    r: int,
    trained: tuple[str, ...],
    layout: str = "x 2-D, g dense",
    dtype: torch.dtype = torch.float64,
    counting: bool = True,
    given: list | None = None,
    bias: bool = True,
):
    """One forward and one backward (``backward(ctx, g)`` called as autograd calls it) of x and g laid out as
    ``layout`` (of STEP_LAYOUTS) says, in ``dtype``, under ArithmeticWork: the counter, what backward returned (a
    tuple) and the ``needs_input_grad`` it saw (no counter, None, unless ``counting``: the count costs time). The
    inputs and g are appended to ``given``, where one is passed; ``bias`` False calls it with None for the bias."""
    batch_shape, contiguous, gradient = STEP_LAYOUTS[layout]
    shape = batch_shape(rows)
    inputs = function_inputs(in_features, out_features, r, shape, bias, dtype, contiguous=contiguous)
    inputs = requiring_grad(inputs, trained)
    upstream = gradient((*shape, out_features), dtype)
    if given is not None:
        given.append((inputs, upstream))
    with ArithmeticWork() if counting else contextlib.nullcontext() as counter:
        y = apply(FusedLoRAFunction, inputs)
        node = y.grad_fn
        assert node is not None and hasattr(node, "needs_input_grad"), (
            f"the output of FusedLoRAFunction.apply was made by {type(node).__name__}, not the Function: "
            "see test_is_an_autograd_function_that_autograd_records"
        )
        gradients = node.apply(upstream)
    return counter, gradients if isinstance(gradients, tuple) else (gradients,), node.needs_input_grad


@pytest.mark.points(2)
def test_backward_returns_None_where_no_gradient_is_needed(FusedLoRAFunction):
    # Every dtype (a low-precision path of its own is no licence), every layout of x, one token (x 1-D) included.
    regimes = [(rows, layout) for rows in (1, 6) for layout in layouts_for(rows)]
    for dtype, (rows, layout), trained in itertools.product(FLOAT_DTYPES, regimes, EVERY_CHOICE):
        _, gradients, needs = counted_step(FusedLoRAFunction, rows, IN, OUT, R, trained, layout, dtype, counting=False)
        asked = f"with only {', '.join(trained)} requiring grad ({dtype_name(dtype)}, {layout})"
        assert len(gradients) == 6, f"backward returned {len(gradients)} values {asked}, expected 6, one per input"
        named = list(zip((*INPUTS, "scaling"), needs, gradients, strict=True))
        unasked = [name for name, needed, gradient in named if not needed and gradient is not None]
        assert not unasked, (
            f"backward returned a gradient for {', '.join(unasked)} {asked}: return None where "
            "ctx.needs_input_grad is False (autograd throws such a gradient away; computing it was wasted work)"
        )
        missing = [name for name, needed, gradient in named if needed and gradient is None]
        assert not missing, (
            f"backward returned None for {', '.join(missing)} {asked}: each input ctx.needs_input_grad marks gets "
            "its gradient, whichever others are asked for (is one computed only inside another's branch?)"
        )


# x of one to three dimensions (the 3-D one non-contiguous, W, A and B transposed), for the checks run over every
# choice of inputs.
X_BATCH_SHAPES = {"x 1-D": ((), True), "x 2-D": ((6,), True), f"x 3-D{NON_CONTIGUOUS}": ((2, 3), False)}


def for_every_choice(x_layout: str) -> Iterator[tuple[tuple[str, ...], str, dict[str, torch.Tensor | None]]]:
    """For each choice of inputs requiring grad (EVERY_CHOICE): the choice, its description for a failure
    message, and float64 inputs laid out as ``x_layout`` says, the chosen ones requiring grad."""
    batch_shape, contiguous = X_BATCH_SHAPES[x_layout]
    inputs = function_inputs(batch_shape=batch_shape, contiguous=contiguous)
    for trained in EVERY_CHOICE:
        yield trained, f"with only {', '.join(trained)} requiring grad, {x_layout}", requiring_grad(inputs, trained)


@pytest.mark.points(2)
@pytest.mark.parametrize("x_layout", X_BATCH_SHAPES)
def test_backward_gives_the_right_gradients_for_every_choice_of_inputs(FusedLoRAFunction, x_layout):
    for trained, asked, measured in for_every_choice(x_layout):
        expected = requiring_grad(measured, trained)
        upstream = torch.randn(*measured["x"].shape[:-1], OUT, dtype=torch.float64)
        backward(apply(FusedLoRAFunction, measured), upstream)
        lora_formula(expected).backward(upstream)
        for name in trained:
            grad = measured[name].grad
            assert grad is not None, (
                f"backward returned None for {name} {asked}: return a gradient for each input ctx.needs_input_grad "
                "marks"
            )
            error = relative_error(grad, expected[name].grad)
            assert error <= RELATIVE_TOLERANCE[torch.float64], (
                f"the gradient of {name} is off by {error:.3g} (relative) {asked} (float64): expected "
                f"{GRADIENTS[name]}, whichever other inputs train (is a term computed only in another's branch?)"
            )


# Two calls of the Function alive at once, of different shapes, scalings, biases and trained inputs, in float64:
# what a backward reads from the class or a module global instead of ctx is the last forward's, the other call's.
TWO_CALLS = (  # (in, out, r, x's batch shape, bias, x contiguous, trained, scaling) of each call
    (IN, OUT, R, (2, 3), True, False, FROZEN_BASE, SCALING),
    (OUT, 7, 2, (2, 3), False, True, ("x", "weight", "lora_A", "lora_B"), 0.7),
)
# How the two calls meet: the second fed the first's y (one graph), or two graphs, forwarded one after the other,
# then backpropagated last in first out, or first in first out (a stack of states on the class gets one right).
TWO_CALL_ORDERS = ("chained in one graph", "two graphs, backward in reverse order", "two graphs, backward in order")


@pytest.mark.points(2)
@pytest.mark.parametrize("order", TWO_CALL_ORDERS)
def test_backward_keeps_each_calls_state_apart(FusedLoRAFunction, order):
    calls = [function_inputs(*call[:5], contiguous=call[5]) for call in TWO_CALLS]
    measured = [requiring_grad(inputs, call[6]) for inputs, call in zip(calls, TWO_CALLS, strict=True)]
    expected = [requiring_grad(inputs, call[6]) for inputs, call in zip(calls, TWO_CALLS, strict=True)]
    scalings = [call[7] for call in TWO_CALLS]
    chained = order == TWO_CALL_ORDERS[0]
    outputs = []  # (y, the reference's y) of each graph, in the order they were forwarded
    for inputs, reference, scaling in zip(measured, expected, scalings, strict=True):
        if chained and outputs:  # the second call's x is the first's y: one graph, backpropagated from its end
            inputs["x"], reference["x"] = outputs.pop()
        outputs.append((apply(FusedLoRAFunction, inputs, scaling), lora_formula(reference, scaling)))
    for y, reference_y in outputs if order == TWO_CALL_ORDERS[2] else outputs[::-1]:
        upstream = torch.randn(y.shape, dtype=torch.float64)
        backward(y, upstream)
        reference_y.backward(upstream)
    for which, (call, got, want) in enumerate(zip(TWO_CALLS, measured, expected, strict=True)):
        for name in call[6]:
            if chained and which == 1 and name == "x":
                continue  # the first call's y: no leaf, its gradient flowed on into the first call
            grad = got[name].grad
            error = None if grad is None else relative_error(grad, want[name].grad)
            assert error is not None and error <= RELATIVE_TOLERANCE[torch.float64], (
                f"with two calls alive at once ({order}, scalings {scalings[0]:g} and {scalings[1]:g}) the gradient "
                f"of {name} of the {('first', 'second')[which]} is "
                f"{'None' if error is None else f'off by {error:.3g} (relative)'}, expected {GRADIENTS[name]} with "
                "its own call's values: state kept outside ctx between forward and backward (on the class, a global) "
                "is the other call's"
            )


@pytest.mark.points(1)
@pytest.mark.parametrize("x_layout", X_BATCH_SHAPES)
def test_backward_returns_each_gradient_shaped_like_its_input(FusedLoRAFunction, x_layout):
    # Autograd sums a gradient shaped (..., out) down to the bias's (out,): only backward's own values show it.
    for _, asked, inputs in for_every_choice(x_layout):
        y = apply(FusedLoRAFunction, inputs)
        gradients = y.grad_fn.apply(torch.randn_like(y))  # backward(ctx, g) as autograd calls it
        gradients = gradients if isinstance(gradients, tuple) else (gradients,)
        misshapen = [
            f"a gradient of shape {tuple(gradient.shape)} for {name} {tuple(inputs[name].shape)}"
            for name, gradient in zip(INPUTS, gradients, strict=False)  # scaling's slot: see the None check
            if isinstance(gradient, torch.Tensor) and gradient.shape != inputs[name].shape
        ]
        assert not misshapen, (
            f"backward returned {', '.join(misshapen)} {asked}: return each gradient shaped like its input "
            "(sum the bias's and the factors' gradients over every row, whatever x's batch dimensions)"
        )


@pytest.mark.points(2)
@pytest.mark.parametrize("size", COST_SIZES)
def test_a_step_does_only_the_matrix_work_lora_needs(FusedLoRAFunction, size):
    rows, in_features, out_features, r = COST_SIZES[size]
    frozen_layer = 4 * rows * in_features * out_features  # x W^T forward, g W backward
    assert rows not in (in_features, out_features, r), f"grader bug: {size} has as many rows as a factor's side"
    factor_shapes = {"weight": (out_features, in_features), "lora_A": (r, in_features), "lora_B": (out_features, r)}
    regimes = itertools.product(
        TRAINABLE_CHOICES, *COUNTED_IN.get(size, (layouts_for(rows), FLOAT_DTYPES, (True, False)))
    )
    for trained, layout, dtype, bias in regimes:
        if "bias" in trained and not bias:
            continue
        given: list = []
        step = (rows, in_features, out_features, r, trained, layout, dtype)
        counter, gradients, _ = counted_step(FusedLoRAFunction, *step, given=given, bias=bias)
        regime = f"{layout}, {dtype_name(dtype)}{'' if bias else ', no bias'}"
        size_in_words = f"{rows} row{'s' * (rows != 1)}, in={in_features}, out={out_features}, r={r}"
        expect_gradient_values(gradients, *given[0], trained, f"{regime}, {size_in_words}")
        unseen = sorted(counter.uncounted | counter.exits)
        assert not unseen, (
            f"a forward + backward with only {', '.join(trained)} requiring grad, {regime}, ran {', '.join(unseen)}: "
            "work the grader cannot count (an op with no flop formula here, values handed to numpy or Python or "
            "brought back from them, or work handed to another thread, which the counter does not see); compute with "
            "torch's dense ops (mm, addmm, matmul, einsum, element-wise ops) on the calling thread"
        )
        unasked = [
            name
            for name, shape in factor_shapes.items()
            if name not in trained and any(made[-2:] in (shape, shape[::-1]) for made in counter.product_shapes)
        ]
        assert not unasked, (
            f"a forward + backward with only {', '.join(trained)} requiring grad, {regime} ({size_in_words}), "
            "computed a product shaped like the gradient of "
            f"{', '.join(unasked)}: a gradient that ctx.needs_input_grad does not ask for (compute each gradient only "
            "in its own branch)" + (", or a full (out, in) product like B A" if "weight" in unasked else "")
        )
        needed = needed_work(rows, in_features, out_features, r, trained)
        for what, measured, allowed in work_budgets(rows, in_features, out_features, r, trained, layout, counter):
            assert measured <= allowed, (
                f"a forward + backward with only {', '.join(trained)} requiring grad, {regime} ({size_in_words}) "
                f"did {measured / 1e3:.4g} kFLOP of {what}, expected at "
                f"most {allowed / 1e3:.4g} (the products it needs: {needed / 1e3:.4g}; the frozen layer alone does "
                f"{frozen_layer / 1e3:.4g}): is a gradient computed that ctx.needs_input_grad does not ask for, or a "
                "full (out, in) product like g^T x or B A?"
            )


def expect_gradient_values(
    gradients: tuple, inputs: dict[str, torch.Tensor | None], upstream: torch.Tensor, trained: tuple, where: str
) -> None:
    """Fail the check unless each gradient backward returned for a trained input is the float64 one (to the dtype's
    relative tolerance): every choice of trained inputs in every dtype, x alone too (a frozen adapter, saliency)."""
    exact = requiring_grad(in_float64(inputs), trained)
    lora_formula(exact).backward(upstream.double())
    for name, measured in zip(INPUTS, gradients, strict=False):
        if name not in trained or not isinstance(measured, torch.Tensor) or measured.shape != inputs[name].shape:
            continue  # a missing or misshapen gradient: test_backward_returns_None_where_no_gradient_is_needed
        error = relative_error(measured, exact[name].grad)
        dtype = inputs["x"].dtype
        assert error <= RELATIVE_TOLERANCE[dtype], (
            f"the gradient of {name} is off by {error:.3g} (relative, expected <= {RELATIVE_TOLERANCE[dtype]:g}) with "
            f"only {', '.join(trained)} requiring grad ({where}): expected {GRADIENTS[name]}; is a term computed only "
            "when another input trains (g_B only for the factors)?"
        )


def work_budgets(
    rows: int, in_features: int, out_features: int, r: int, trained: tuple[str, ...], layout: str, counter
) -> list[tuple[str, int, int]]:
    """(kind of work, flops measured, flops allowed) for the matrix products, the element-wise ops and the
    reductions of a counted step. The products are budgeted to what the trained inputs need plus two rank-r
    products (the spec's O(N r (in + out)) lets x A^T be recomputed in backward, g B computed always);
    element-wise work and reductions get room of their own."""
    batches = math.prod(STEP_LAYOUTS[layout][0](rows)[:-1])  # x's leading batch entries: 1 when x is 1-D or 2-D
    sizes = {"weight": out_features * in_features, "bias": out_features, "lora_A": r * in_features}
    sizes["lora_B"] = out_features * r
    small = 4 * (rows + r) * (in_features + out_features)  # scaling, reshapes' casts, and the like
    # Over one row a parameter's gradient (g^T x, g_B^T x, g^T u) is an outer product, which einsum computes as a
    # broadcast multiply: one element-wise op per entry of each gradient asked for.
    outer = sum(sizes[name] for name in trained if name in sizes) if rows == 1 else 0
    return [  # room for the products: two rank-r products, the bias gradient as a product with a vector of ones
        ("matrix products", counter.products, needed_work(rows, in_features, out_features, r, trained)
         + 2 * rows * (r * (in_features + out_features) + out_features)),
        # Less than one (out, in) or (N, in, out) product: a product spelled as multiply-and-sum shows.
        ("element-wise work", counter.elementwise, rows * in_features * out_features // 2 + small + outer),
        # Summing g over the rows for the bias, and per-batch parameter gradients over the batch dimensions.
        ("reductions", counter.reductions,
         rows * out_features + batches * sum(sizes[name] for name in trained if name in sizes) + small),
    ]  # fmt: skip


def graph_nodes(y: torch.Tensor) -> Iterator[str]:
    """The type names of the autograd nodes that produced ``y``."""
    seen, pending = set(), [y.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield type(node).__name__
        pending.extend(next_node for next_node, _ in node.next_functions)


# The bases the layer takes: nn.Linear and a subclass of it (the class of nn.MultiheadAttention's out_proj).
LINEAR_KINDS = (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear)


def make_layer(FusedLoRALinear, dtype=torch.float64, device="cpu", **kwargs):
    base = nn.Linear(IN, OUT, dtype=dtype, device=device)
    return base, FusedLoRALinear(base, **{"r": R, "alpha": ALPHA, **kwargs})


@pytest.mark.points(1)
@pytest.mark.subject("FusedLoRALinear")
def test_the_layer_runs_through_the_function(FusedLoRALinear, FusedLoRAFunction):
    _, layer = make_layer(FusedLoRALinear)
    y = output(layer, torch.randn(5, IN, dtype=torch.float64, requires_grad=True))
    nodes = set(graph_nodes(y))
    assert f"{FusedLoRAFunction.__name__}Backward" in nodes, (
        f"FusedLoRALinear's output was computed by {sorted(nodes)}, not FusedLoRAFunction: "
        "forward must return FusedLoRAFunction.apply(x, weight, bias, A, B, scaling)"
    )


def recorded_calls(FusedLoRAFunction, monkeypatch) -> list[tuple]:
    """The arguments (x, weight, bias, lora_A, lora_B, scaling) of each call of the Function from now on, recorded
    at its forward: torch looks forward up on the class at every apply, however apply was reached (through
    FusedLoRAFunction.apply, or an alias bound at import, flash-attn's `f = FlashAttnFunc.apply`)."""
    calls, original = [], FusedLoRAFunction.forward
    takes_ctx = FusedLoRAFunction.setup_context is torch.autograd.Function.setup_context  # not the new-style split

    @functools.wraps(original)  # the signature torch binds a new-style forward's defaults by
    def recording(*args, **kwargs):
        calls.append(args[1:] if takes_ctx else args)
        return original(*args, **kwargs)

    monkeypatch.setattr(FusedLoRAFunction, "forward", staticmethod(recording))
    return calls


@pytest.mark.points(1)
@pytest.mark.subject("FusedLoRALinear")
@pytest.mark.parametrize("grad", GRAD_MODES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_the_layer_passes_scaling_as_a_python_float(FusedLoRALinear, FusedLoRAFunction, monkeypatch, grad, train):
    _, layer = make_layer(FusedLoRALinear)
    x = torch.randn(5, IN, dtype=torch.float64, requires_grad=grad == "grad on")
    calls = recorded_calls(FusedLoRAFunction, monkeypatch)
    with GRAD_MODES[grad]():
        output(layer.train(train), x)
    assert calls, (
        f"the layer never ran FusedLoRAFunction ({'train' if train else 'eval'} mode, {grad}): forward calls "
        "FusedLoRAFunction.apply in every mode, under torch.no_grad() and torch.inference_mode() too (no plain-ops "
        "shortcut)"
    )
    arguments = calls[-1]
    scaling = arguments[5] if len(arguments) > 5 else None
    assert isinstance(scaling, float) and scaling == SCALING, (
        f"FusedLoRALinear passed scaling={describe(scaling)} to FusedLoRAFunction.apply, expected the Python float "
        f"alpha / r = {SCALING!r}: pass self.scaling, not a tensor or buffer (the Function's spec takes a float)"
    )


@pytest.mark.points(1)
@pytest.mark.subject("FusedLoRALinear")
def test_the_layer_draws_a_uniform_A_within_nn_linears_bound(FusedLoRALinear):
    # 4096 entries; a Gaussian's largest |entry| is over 3 std, one truncated at 2 std still over 2.2 std.
    in_features, out_features, r = 256, 24, 16
    layer = FusedLoRALinear(nn.Linear(in_features, out_features), r, 16.0)
    expect_nn_linear_bound_if_uniform(
        factors(layer, in_features, out_features, r).A,
        f"FusedLoRALinear(nn.Linear({in_features}, {out_features}), r={r})",
    )


@pytest.mark.points(1)
@pytest.mark.subject("FusedLoRALinear")
def test_the_layer_starts_A_centred_on_zero(FusedLoRALinear):
    in_features, out_features, r = 64, 48, 8
    layer = FusedLoRALinear(nn.Linear(in_features, out_features), r, 16.0)
    expect_centred(
        factors(layer, in_features, out_features, r).A, f"FusedLoRALinear(nn.Linear({in_features}, {out_features}))"
    )


@pytest.mark.points(1)
@pytest.mark.subject("FusedLoRALinear")
def test_the_layer_draws_a_random_full_rank_A(FusedLoRALinear):
    in_features, out_features, r = 256, 24, 16  # 4096 entries, as lora_linear's contract checks them
    expect_a_random_full_rank_A(
        lambda: factors(FusedLoRALinear(nn.Linear(in_features, out_features), r, 16.0), in_features, out_features, r).A,
        f"FusedLoRALinear(nn.Linear({in_features}, {out_features}), r={r})",
    )


@pytest.mark.points(2)
@pytest.mark.subject("FusedLoRALinear")
def test_the_layer_keeps_the_very_base_frozen(FusedLoRALinear):
    base, layer = make_layer(FusedLoRALinear)
    assert any(module is base for module in layer.modules()), (
        "the nn.Linear passed in is not a submodule of the FusedLoRALinear: keep the object itself (self.base = base)"
    )
    still_trainable = [name for name, parameter in base.named_parameters() if parameter.requires_grad]
    assert not still_trainable, f"base parameters {still_trainable} still require grad: freeze the base"
    with torch.no_grad():
        base.weight.add_(1.0)
        x = torch.randn(5, IN, dtype=torch.float64)
        change = max_difference(output(layer, x), base(x))
    assert change < 1e-9, (
        f"after editing the base's weight the layer's output differs from base(x) by {change:.3g}: "
        "it computes with a copy; pass the base's own weight and bias to the Function"
    )
    # A base whose parameters are replaced, not edited (base.weight = nn.Parameter(...), load_state_dict(...,
    # assign=True), weight tying, to_empty): the layer computes with the base as it is now, not handles taken once.
    replacements = {
        "base.weight = nn.Parameter(...)": lambda: setattr(base, "weight", nn.Parameter(base.weight.detach() * 2.0)),
        "base.load_state_dict(..., assign=True)": lambda: base.load_state_dict(
            {name: tensor.detach().clone() - 0.5 for name, tensor in base.state_dict().items()}, assign=True
        ),
    }
    for how, replace in replacements.items():
        replace()
        base.requires_grad_(False)
        with torch.no_grad():
            change = max_difference(output(layer, x), base(x))
        assert change < 1e-9, (
            f"after the base's parameters were replaced ({how}) the layer's output differs from base(x) by "
            f"{change:.3g}, expected 0: it computes with the tensors it took at construction; read self.base.weight "
            "and self.base.bias at each forward"
        )


@pytest.mark.points(1)
@pytest.mark.subject("FusedLoRALinear")
def test_the_layer_records_r_alpha_and_scaling(FusedLoRALinear):
    _, layer = make_layer(FusedLoRALinear)
    expect_r_alpha_and_scaling(layer, R, ALPHA)


@pytest.mark.points(2)
@pytest.mark.subject("FusedLoRALinear")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_the_layer_trains_two_factors_in_the_base_dtype_and_device(FusedLoRALinear, device, dtype):
    base, layer = make_layer(FusedLoRALinear, dtype=dtype, device=device)
    tensors = trainable(layer)
    count, expected = sum(t.numel() for t in tensors), R * (IN + OUT)
    assert count == expected and len(tensors) == 2, (
        f"expected 2 trainable factors with r*(in+out) = {expected} numbers, measured {len(tensors)} tensors "
        f"{[tuple(t.shape) for t in tensors]} = {count}: only A and B train"
    )
    factors(layer, IN, OUT, R)
    misplaced = [(tuple(t.shape), t.dtype, str(t.device)) for t in tensors]
    misplaced = [m for m in misplaced if m[1] != dtype or m[2] != str(base.weight.device)]
    assert not misplaced, (
        f"factors must be created on the base's device and dtype ({device}, {dtype}), measured {misplaced}"
    )
    x = torch.randn(2, 3, IN, dtype=dtype, device=device)
    y = output(layer, x)
    assert (y.shape, y.dtype, y.device) == ((2, 3, OUT), dtype, base.weight.device), (
        f"for x of shape (2, 3, {IN}) expected output (2, 3, {OUT}) {dtype} on {device}, "
        f"measured {tuple(y.shape)} {y.dtype} on {y.device}"
    )


@pytest.mark.points(1)
@pytest.mark.subject("FusedLoRALinear")
def test_the_layer_creates_its_factors_on_the_base_device(FusedLoRALinear):
    base = nn.Linear(IN, OUT, dtype=torch.float64)
    layer = made_under_a_foreign_default_device(lambda: FusedLoRALinear(base, R, ALPHA))
    if layer is not None:
        expect_on_the_base_device(trainable(layer), base.weight.device, "the factors were created")


@pytest.mark.points(2)
@pytest.mark.subject("FusedLoRALinear")
def test_the_layer_computes_the_base_at_init(FusedLoRALinear):
    base, layer = make_layer(FusedLoRALinear)
    largest_B = factors(layer, IN, OUT, R).B.abs().max().item()
    assert largest_B == 0, (
        f"B is not zero at init: max |B| = {largest_B:.3g}, expected exactly 0, so that the layer first computes "
        "exactly base(x) (a tiny B moves the output and gives A a gradient): is B initialised to zeros (A random)?"
    )
    x = torch.randn(3, 5, IN, dtype=torch.float64)
    with torch.no_grad():
        change = max_difference(output(layer, x), base(x))
    assert change <= 1e-12 * (1 + base(x).abs().max().item()), (
        f"output changed at init by {change:.3g}: is B initialised to zeros?"
    )
    zero = nn.Linear(IN, OUT, bias=False, dtype=torch.float64)  # base(x) is exactly 0: any adapter share shows
    nn.init.zeros_(zero.weight)
    with torch.no_grad():
        y = output(FusedLoRALinear(zero, R, ALPHA), x)
    assert torch.equal(y, torch.zeros_like(y)), (
        f"over a zeroed bias-free base the layer's output at init is {y.abs().max().item():.3g} off base(x) = 0, "
        "expected exactly base(x): B starts as exact zeros, not merely small ones"
    )
    assert factors(layer, IN, OUT, R).A.abs().sum().item() > 0, (
        "A is all zeros at init: with B zero too, neither factor gets a gradient; initialise A randomly"
    )


@pytest.mark.points(2)
@pytest.mark.subject("FusedLoRALinear")
@pytest.mark.parametrize("r", [1, R], ids=lambda r: f"r={r}")
def test_the_layer_adds_scaling_times_B_at_A(FusedLoRALinear, r):
    base, layer = make_layer(FusedLoRALinear, r=r, alpha=SCALING * r)
    randomize_factors(layer)
    ratio, proportional = scaling_ratio(layer, base, factors(layer, IN, OUT, r))
    assert proportional, "the update read off the outputs is not proportional to B @ A: is it x A^T B^T?"
    assert math.isclose(ratio, SCALING, rel_tol=1e-6), (
        f"update dW measured {ratio:.4g} x B @ A, expected alpha / r = {SCALING:g} x: pass scaling = alpha / r"
    )


@pytest.mark.points(3)
@pytest.mark.subject("FusedLoRALinear")
def test_the_layer_matches_plain_lora_forward_and_backward(FusedLoRALinear):
    base, layer = make_layer(FusedLoRALinear)
    randomize_factors(layer)
    found = factors(layer, IN, OUT, R)
    x = torch.randn(2, 3, IN, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 3, OUT, dtype=torch.float64)
    y = output(layer, x)
    backward(y, upstream)
    plain, expected = plain_lora(base, found, SCALING, x, upstream)
    assert max_difference(y, plain) <= 1e-9, f"output differs from plain LoRA by {max_difference(y, plain):.3g}"
    for name, measured in zip("ABx", (*found.grads(), x.grad), strict=True):
        assert measured is not None, f"{name} received no gradient through the layer: is it passed to the Function?"
        error = max_difference(measured, expected[name])
        assert error <= 1e-9, f"the gradient of {name} through the layer differs from plain LoRA's by {error:.3g}"
    touched = [name for name, parameter in base.named_parameters() if parameter.grad is not None]
    assert not touched, f"the base's {touched} received a gradient: the base must stay frozen"


@pytest.mark.points(2)
@pytest.mark.subject("FusedLoRALinear")
@given(
    r=st.integers(1, 4),
    alpha=st.sampled_from([1.0, 7.0, 10.0, 16.0, 0.0, -8.0]),  # alpha 0 and < 0 allowed: scaling 0, negative
    positional=st.booleans(),
    dtype=st.sampled_from(FLOAT_DTYPES),
    batch_shape=st.lists(st.integers(1, 3), max_size=3).map(tuple),
    contiguous=st.booleans(),
    grad=st.sampled_from(list(GRAD_MODES)),
    train=st.booleans(),
    bias=st.booleans(),
    linear=st.sampled_from(LINEAR_KINDS),
)
@examples(
    "r, alpha, positional, dtype, batch_shape, contiguous, grad, train, bias, linear",
    (R, ALPHA, True, torch.float32, (1,), True, "grad on", True, True, nn.Linear),
    (3, 10.0, True, torch.float16, (2, 3, 2), False, "grad on", False, False, LINEAR_KINDS[1]),
    (R, ALPHA, False, torch.bfloat16, (), True, "grad on", True, True, nn.Linear),
    (UNROUNDED_R, UNROUNDED_ALPHA, True, torch.float64, (3,), True, "grad on", False, False, nn.Linear),
    (R, ALPHA, True, torch.float32, (2, 0), False, "grad on", True, True, nn.Linear),  # an empty batch
    (R, 0.0, False, torch.float32, (3,), True, "grad on", True, True, nn.Linear),  # alpha 0
    (2, -8.0, True, torch.float64, (2, 2), False, "grad on", False, False, nn.Linear),  # alpha < 0
)  # fmt: skip
def test_the_layer_matches_plain_lora_in_every_regime(
    FusedLoRALinear, r, alpha, positional, dtype, batch_shape, contiguous, grad, train, bias, linear
):  # fmt: skip
    base = linear(IN, OUT, bias=bias, dtype=dtype)
    call = "FusedLoRALinear(base, r, alpha)" if positional else "FusedLoRALinear(base=base, alpha=alpha, r=r)"
    try:
        layer = FusedLoRALinear(base, r, alpha) if positional else FusedLoRALinear(base=base, alpha=alpha, r=r)
    except (TypeError, ValueError) as error:
        hint = (
            "keep the stub's signature FusedLoRALinear(base, r=8, alpha=16.0), callable by position and by keyword"
            if linear is nn.Linear
            else "a subclass of nn.Linear is an nn.Linear: test isinstance(base, nn.Linear), not type(base)"
        )
        pytest.fail(
            f"{call} with r={r}, alpha={alpha}, base a {linear.__name__}, raised {type(error).__name__} ({error}): "
            f"{hint}",
            pytrace=False,
        )
    layer.train(train)
    regime = f"{call} with r={r}, alpha={alpha}, {dtype}, {'train' if train else 'eval'} mode, {grad}"
    expect_plain_lora_in_regime(layer, base, r, alpha / r, batch_shape, contiguous, grad, regime)
    expect_following_base_swaps(layer, base, r, alpha / r, batch_shape, contiguous, grad, regime)


# The lora_linear kata's contract, which the layer inherits: a factor the caller froze (one or both, by
# requires_grad_(False)) still adds its share to y and to dL/dx (a frozen adapter is no switched-off one), in every
# grad mode and both modes.
@pytest.mark.points(1)
@pytest.mark.subject("FusedLoRALinear")
@pytest.mark.parametrize("grad", GRAD_MODES)
def test_the_layer_keeps_lora_linears_contract_with_frozen_factors(FusedLoRALinear, grad):
    base, layer = make_layer(FusedLoRALinear, dtype=torch.float32)
    for train in (True, False):
        layer.train(train)
        regime = f"FusedLoRALinear(base, {R}, {ALPHA}), float32, {'train' if train else 'eval'} mode, {grad}"
        expect_plain_lora_with_frozen_factors(layer, base, R, SCALING, (2, 3), False, grad, regime)


# A layer built in one dtype and moved to another after construction (layer.to(dtype), as model.double() or .half()
# do): it computes in the dtype its base holds now, not the one recorded at construction.
CONVERSIONS = [(torch.float32, torch.float64), (torch.float64, torch.float32), (torch.float32, torch.bfloat16)]


@pytest.mark.points(1)
@pytest.mark.subject("FusedLoRALinear")
@pytest.mark.parametrize(("built", "dtype"), CONVERSIONS, ids=lambda d: str(d).removeprefix("torch."))
def test_the_layer_computes_in_the_dtype_it_was_moved_to(FusedLoRALinear, built, dtype):
    base, layer = make_layer(FusedLoRALinear, dtype=built)
    layer.to(dtype)
    regime = f"FusedLoRALinear built in {built} and converted by .to({dtype})"
    expect_plain_lora_in_regime(layer, base, R, SCALING, (3,), True, "grad on", regime, built_in=built)


# Every argument the stub allows, each once: r = 1, r above in and out, alpha 0 (the adapter switched off), alpha < 0,
# a whole alpha given as an int, and a fraction; by position and by keyword.
ALLOWED_ARGUMENTS = [(1, 16.0), (R, 0.0), (R, -ALPHA), (R, 16), (16, 8.0), (3, 1e-3)]


@pytest.mark.points(1)
@pytest.mark.subject("FusedLoRALinear")
def test_the_layer_takes_every_argument_the_stub_allows(FusedLoRALinear):
    for (r, alpha), positional in itertools.product(ALLOWED_ARGUMENTS, (True, False)):
        base = nn.Linear(IN, OUT, dtype=torch.float64)
        call = (
            f"FusedLoRALinear(base, {r!r}, {alpha!r})"
            if positional
            else f"FusedLoRALinear(base, r={r!r}, alpha={alpha!r})"
        )
        try:
            layer = FusedLoRALinear(base, r, alpha) if positional else FusedLoRALinear(base, r=r, alpha=alpha)
        except (TypeError, ValueError, ArithmeticError) as error:
            pytest.fail(
                f"{call} raised {type(error).__name__} ({error}), expected a layer: the stub refuses only a base that "
                "is not an nn.Linear and an r that is not an integer >= 1; alpha is any number, 0 and negative too "
                "(scaling alpha / r), r any integer >= 1, above in and out too",
                pytrace=False,
            )
        expect_r_alpha_and_scaling(layer, r, alpha)
        randomize_factors(layer)
        found = factors(layer, IN, OUT, r)
        x = torch.randn(2, 3, IN, dtype=torch.float64, requires_grad=True)
        upstream = torch.randn(2, 3, OUT, dtype=torch.float64)
        y = output(layer, x)
        backward(y, upstream)
        plain, expected = plain_lora(base, found, alpha / r, x, upstream)
        error = max_difference(y, plain)
        assert error <= 1e-9, f"{call}: the output differs from plain LoRA's (scaling {alpha / r:g}) by {error:.3g}"
        for name, measured in zip("ABx", (*found.grads(), x.grad), strict=True):
            assert measured is not None, (
                f"{call}: {name} received no gradient through the layer, expected plain LoRA's"
                f"{' (zeros at alpha 0, not None)' if alpha == 0 else ''}"
            )
            error = max_difference(measured, expected[name])
            assert error <= 1e-9, (
                f"{call}: the gradient of {name} differs from plain LoRA's (scaling {alpha / r:g}) by {error:.3g}"
            )


@pytest.mark.points(1)
@pytest.mark.subject("FusedLoRALinear")
# 2.0: a float, even whole; None, "4" and [4]: no number at all, which a bare `r < 1` meets with a TypeError
@pytest.mark.parametrize("r", [0, -2, 2.5, 2.0, None, "4", [4]], ids=lambda r: f"r={r!r}")
def test_the_layer_rejects_a_rank_that_is_not_a_positive_integer(FusedLoRALinear, r):
    expect_value_error(lambda: FusedLoRALinear(nn.Linear(IN, OUT), r=r), f"FusedLoRALinear(base, r={r!r})")


@pytest.mark.points(1)
@pytest.mark.subject("FusedLoRALinear")
@pytest.mark.parametrize(  # an Embedding's weight and a Conv1D's (stored (in, out)) are 2-D too, yet no nn.Linear;
    "make_base",  # the look-alikes even say in_features and out_features and hold an (out, in) weight
    [
        lambda: nn.Conv1d(IN, OUT, 1),
        lambda: nn.Embedding(OUT, IN),
        Conv1DLike,
        LinearLookalike,
        PeftLoraLinearLike,
        ForeignLinear,
    ],
    ids=["Conv1d", "Embedding", "Conv1D", "Linear-look-alike", "peft-lora.Linear-like", "another-librarys-Linear"],
)
def test_the_layer_rejects_a_base_that_is_not_linear(FusedLoRALinear, make_base):
    base = make_base()
    looks_linear = hasattr(base, "in_features") and hasattr(base, "out_features")
    called = f"FusedLoRALinear({type(base).__name__}(...))" + (
        ", no nn.Linear though it has in_features, out_features and an (out, in) weight (check isinstance(base, "
        "nn.Linear), not the attributes),"
        if looks_linear
        else ""
    )
    expect_value_error(lambda: FusedLoRALinear(base, r=R), called)


@pytest.mark.points(3)
@pytest.mark.subject("FusedLoRALinear")
@pytest.mark.parametrize("device, dtype", TRAINING_CASES)
def test_training_reduces_the_loss_and_leaves_the_base_untouched(FusedLoRALinear, device, dtype):
    expect_training_fits_a_low_rank_target(lambda base: FusedLoRALinear(base, r=4, alpha=8.0), device, dtype)


@pytest.mark.points(1)
@pytest.mark.subject("FusedLoRALinear")
@pytest.mark.parametrize("r", [None, 4], ids=["FusedLoRALinear(base)", "FusedLoRALinear(base, 4)"])
def test_the_layer_defaults_to_r_8_alpha_16(FusedLoRALinear, r):
    base = nn.Linear(IN, OUT, dtype=torch.float64)
    layer = FusedLoRALinear(base) if r is None else FusedLoRALinear(base, r)
    rank = 8 if r is None else r
    randomize_factors(layer)
    ratio, _ = scaling_ratio(layer, base, factors(layer, IN, OUT, rank))
    call = "FusedLoRALinear(base)" if r is None else f"FusedLoRALinear(base, {r})"
    assert math.isclose(ratio, 16.0 / rank, rel_tol=1e-6), (
        f"{call} adds {ratio:.4g} x B @ A, expected alpha / r = 16 / {rank} = {16 / rank:g} x: "
        "keep the stub's defaults, FusedLoRALinear(base, r=8, alpha=16.0) (alpha is 16 whatever r is, not 2 r)"
    )
