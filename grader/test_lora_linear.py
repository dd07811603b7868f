"""Checks of the `lora_linear` kata: LoRALinear(base, r, alpha, dropout)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn

from grader.models import GAINS, GatedLinear, GatedProjection, ReLULinear, with_forward_hooks
from grader.probes import (
    ALPHAS_AS_GIVEN,
    ALPHAS_BEYOND_FLOAT32,
    DEVICES,
    DROP_IN,
    DROP_OUT,
    DROP_R,
    DROPOUT,
    EXACT_IN,
    EXACT_OUT,
    EXACT_R,
    FLOAT_DTYPES,
    GRAD_MODES,
    INVALID_ARGUMENTS,
    MANY_ROWS_CASES,
    PREFILL_MASK_ROWS,
    REAL_RANK_LAYER,
    TRAINING_CASES,
    UNROUNDED_ALPHA,
    UNROUNDED_R,
    WIDE_IN,
    WIDE_OUT,
    Conv1DLike,
    ForeignLinear,
    PeftLoraLinearLike,
    adapter_input_multipliers,
    an_in_place_update_named,
    arguments_id,
    dtype_name,
    exact_dropout_multipliers,
    examples,
    expect_a_fraction_p_zeroed,
    expect_a_fresh_A_for_every_layer,
    expect_a_fresh_mask_for_every_element_and_call,
    expect_a_fresh_mask_for_every_row,
    expect_a_uniform_or_gaussian_draw,
    expect_alpha_as_given,
    expect_alpha_exactly_as_given,
    expect_base_precision,
    expect_centred,
    expect_dropout_drawn_from_torchs_rng,
    expect_exactly_the_base,
    expect_following_a_checksum_keeping_edit,
    expect_following_base_swaps,
    expect_following_its_base_after_to,
    expect_kept_inputs_rescaled,
    expect_nn_linear_bound_if_uniform,
    expect_on_the_base_device,
    expect_on_the_base_device_and_dtype,
    expect_plain_lora_at_many_rows,
    expect_plain_lora_gradients,
    expect_plain_lora_in_regime,
    expect_plain_lora_with_frozen_factors,
    expect_r_alpha_and_scaling,
    expect_the_base_at_a_million_rows,
    expect_the_base_dtype_under_every_default_dtype,
    expect_the_base_output_left_alone,
    expect_the_scaling_at_real_ranks,
    expect_training_fits_a_low_rank_target,
    expect_value_error,
    factors,
    made_under_a_foreign_default_device,
    make_a_subclass_instance,
    max_difference,
    measured_update,
    output,
    randomize_factors,
    scaling_ratio,
    strided,
    trainable,
    trained_numbers,
)
from grader.signatures import expect_the_stubs_signatures


@pytest.mark.points(1)
def test_takes_the_stubs_parameters(implementation, LoRALinear):
    """Callers pass the stub's parameters by name or by position: each definition takes them as the stub does."""
    expect_the_stubs_signatures(implementation, "lora_linear")
    # Then a call into the kata: an unimplemented stub, its signatures right, scores nothing here.
    LoRALinear(nn.Linear(4, 3))


SUBJECT = "LoRALinear"  # the definition a failing check points at

IN, OUT, R, ALPHA = 12, 10, 4, 10.0  # distinct dims: a factor's shape tells which it is; alpha / r not whole
SCALING = ALPHA / R
# The bases "computes exactly base(x)" is checked on: a subclass with its own forward (GAINS: its output is not
# F.linear(x, weight, bias)), and one with hooks (gpt2_conv1d checks the same two for a Conv1D).
BASE_KINDS = {
    "Linear": lambda i, o, dtype: nn.Linear(i, o, dtype=dtype),
    "GatedLinear": lambda i, o, dtype: GatedLinear(i, o, GAINS, dtype=dtype),
    "hooked Linear": lambda i, o, dtype: with_forward_hooks(nn.Linear(i, o, dtype=dtype)),
    "ReLULinear": lambda i, o, dtype: ReLULinear(i, o, dtype=dtype),  # its backward reads its output
}


def make_layer(LoRALinear, dtype=torch.float32, device="cpu", bias=True, **kwargs):
    base = nn.Linear(IN, OUT, bias=bias, dtype=dtype, device=device)
    return base, LoRALinear(base, **{"r": R, "alpha": ALPHA, **kwargs})


@pytest.mark.points(1)
def test_is_a_module_holding_the_very_base_layer(LoRALinear):
    base, layer = make_layer(LoRALinear)
    assert isinstance(layer, nn.Module), f"LoRALinear(...) is a {type(layer).__name__}: subclass nn.Module"
    assert any(module is base for module in layer.modules()), (
        "the nn.Linear passed in is not a submodule of the LoRALinear: keep the object itself (self.base = base)"
    )


# Ways a training loop or a user edits a weight between calls: through .data neither bumps the tensor's _version
# nor, when assigned, keeps its storage, so a cache keyed on either misses the edit.
EDITS = {
    "in place": lambda tensor: tensor.add_(1.0),
    "in place through .data": lambda tensor: tensor.data.add_(1.0),
    "by assigning .data": lambda tensor: setattr(tensor, "data", tensor.data + 1.0),
}


@pytest.mark.points(2)
def test_computes_with_the_base_it_was_given(LoRALinear):
    base, layer = make_layer(LoRALinear)
    x = torch.randn(5, IN)
    # eval mode with grad off, or in inference mode, after a first call: an inference cache would show
    for mode, grad in [(mode, grad) for mode in ("train", "eval") for grad in ("grad off", "inference mode")]:
        layer.train(mode == "train")
        for edit, apply in EDITS.items():
            with GRAD_MODES[grad]():
                output(layer, x)
            with torch.no_grad():
                apply(base.weight)
                apply(base.bias)
            with GRAD_MODES[grad]():
                change = max_difference(output(layer, x), base(x))
            assert change < 1e-5, (
                f"in {mode} mode, {grad}, after editing the base's weights {edit} following a call, the layer's "
                f"output differs from base(x) by {change:.3g}: it computes with a copy or a weight cached from an "
                "earlier call; use the very base passed in, as it is now"
            )


@pytest.mark.points(1)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("grad", GRAD_MODES)
def test_leaves_the_tensor_the_base_returned_alone(LoRALinear, grad, mode):
    """A forward hook on the base (an activation observer, a feature cache) keeps the tensor base(x) returned: the
    layer adds its update into a new tensor, never into that one ("never the base path")."""
    base, layer = make_layer(LoRALinear)
    randomize_factors(layer, std=0.5)  # an update that shows
    layer.train(mode == "train")
    where = f"{mode} mode, {grad}"
    assert expect_the_base_output_left_alone(layer, base, torch.randn(5, IN), grad, where), (
        f"{where}: a forward hook on the base never ran: call base(x), which runs its hooks"
    )


@pytest.mark.points(1)
def test_records_r_alpha_and_scaling(LoRALinear):
    _, layer = make_layer(LoRALinear)
    expect_r_alpha_and_scaling(layer, R, ALPHA)


@pytest.mark.points(2)
@pytest.mark.parametrize(
    "make_base",
    [lambda: nn.Linear(IN, OUT), lambda: GatedLinear(IN, OUT), lambda: GatedProjection(IN, OUT)],
    ids=["Linear", "GatedLinear", "GatedProjection"],  # the last holds a layer of its own, a gate
)
def test_freezes_every_base_parameter(LoRALinear, make_base):
    base = make_base()
    LoRALinear(base, r=R, alpha=ALPHA)
    still_trainable = [name for name, parameter in base.named_parameters() if parameter.requires_grad]
    assert not still_trainable, (
        f"the {type(base).__name__} base's parameters {still_trainable} still require grad: freeze every parameter "
        "of the base, whatever its name, with base.requires_grad_(False)"
    )


@pytest.mark.points(3)
def test_trains_exactly_two_low_rank_factors(LoRALinear):
    _, layer = make_layer(LoRALinear)
    tensors = trainable(layer)
    count, expected = sum(t.numel() for t in tensors), R * (IN + OUT)
    assert count == expected and len(tensors) == 2, (
        f"expected 2 trainable factors with r*(in+out) = {expected} numbers, measured {len(tensors)} tensors "
        f"{[tuple(t.shape) for t in tensors]} = {count}: only A and B train (no bias, base frozen)"
    )
    factors(layer, IN, OUT, R)


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_lives_on_the_base_device_and_dtype(LoRALinear, device, dtype):
    base, layer = make_layer(LoRALinear, dtype=dtype, device=device, dropout=0.25)  # train mode: dropout computes too
    expect_on_the_base_device_and_dtype(layer, base.weight, IN, OUT, device, dtype)
    base, layer = make_layer(LoRALinear, dropout=0.25)  # built in float32 on the CPU, then converted
    expect_following_its_base_after_to(layer, base, IN, OUT, device, dtype, "LoRALinear")


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_factors_follow_the_base_dtype_not_the_default_one(LoRALinear, dtype):
    """The spec's "in its dtype" under every default dtype a script may set (float64, float16, bfloat16)."""

    def make(dtype):
        base, layer = make_layer(LoRALinear, dtype=dtype, dropout=0.25)  # train mode: dropout computes too
        return base.weight, layer

    expect_the_base_dtype_under_every_default_dtype(make, IN, OUT, dtype, "LoRALinear")


@pytest.mark.points(1)
def test_factors_follow_the_base_device_not_the_default_one(LoRALinear):
    base = nn.Linear(IN, OUT, dtype=torch.float64)
    x = torch.randn(3, IN, dtype=torch.float64)

    def made_and_called() -> nn.Module:  # a train-mode call with dropout: a mask made without device= shows too
        layer = LoRALinear(base, R, ALPHA, 0.25).train()
        output(layer, x)
        return layer

    layer = made_under_a_foreign_default_device(made_and_called)
    if layer is not None:
        expect_on_the_base_device(trainable(layer), base.weight.device, "the factors were created")


@pytest.mark.points(4)
@given(
    in_features=st.integers(1, 24),
    out_features=st.integers(1, 24),
    r=st.integers(1, 8),
    alpha=st.sampled_from([1.0, 8.0, 16.0, 32.0]),
    batch_shape=st.lists(st.integers(1, 3), max_size=3).map(tuple),
    dtype=st.sampled_from(FLOAT_DTYPES),  # every dtype: a half-precision path of its own skips base(x) there only
    kind=st.sampled_from(list(BASE_KINDS)),
    contiguous=st.booleans(),
)
@example(in_features=IN, out_features=OUT, r=R, alpha=ALPHA, batch_shape=(3,), dtype=torch.float32, kind="Linear",
         contiguous=True)  # fmt: skip
@example(in_features=IN, out_features=OUT, r=R, alpha=ALPHA, batch_shape=(2, 3), dtype=torch.float32,
         kind="GatedLinear", contiguous=False)  # fmt: skip
@example(in_features=IN, out_features=OUT, r=R, alpha=ALPHA, batch_shape=(2, 3), dtype=torch.float32, kind="Linear",
         contiguous=False)  # fmt: skip
@example(in_features=IN, out_features=OUT, r=R, alpha=ALPHA, batch_shape=(3,), dtype=torch.float32,
         kind="hooked Linear", contiguous=True)  # fmt: skip
@example(in_features=IN, out_features=OUT, r=R, alpha=ALPHA, batch_shape=(2, 3), dtype=torch.bfloat16,
         kind="GatedLinear", contiguous=False)  # fmt: skip
@example(in_features=IN, out_features=OUT, r=R, alpha=ALPHA, batch_shape=(3,), dtype=torch.float16,
         kind="hooked Linear", contiguous=True)  # fmt: skip
# Large batches on the trap bases too (a prefill, an eval pass): a fast path from some row count on (a fold of dW into
# W, one matmul) skips base(x) there only. Row counts from 300 to 16384, in every dtype, each trap kind.
@example(in_features=IN, out_features=OUT, r=R, alpha=ALPHA, batch_shape=(4, 75), dtype=torch.float32,
         kind="hooked Linear", contiguous=True)  # fmt: skip
@example(in_features=IN, out_features=OUT, r=R, alpha=ALPHA, batch_shape=(2, 1100), dtype=torch.float64,
         kind="GatedLinear", contiguous=False)  # fmt: skip
@example(in_features=IN, out_features=OUT, r=R, alpha=ALPHA, batch_shape=(4100,), dtype=torch.bfloat16,
         kind="ReLULinear", contiguous=True)  # fmt: skip
@example(in_features=IN, out_features=OUT, r=R, alpha=ALPHA, batch_shape=(8, 2048), dtype=torch.float16,
         kind="hooked Linear", contiguous=True)  # fmt: skip
@example(in_features=IN, out_features=OUT, r=R, alpha=ALPHA, batch_shape=(16384,), dtype=torch.float32,
         kind="GatedLinear", contiguous=True)  # fmt: skip
def test_output_equals_the_base_at_init(
    LoRALinear, in_features, out_features, r, alpha, batch_shape, dtype, kind, contiguous
):  # fmt: skip
    base = BASE_KINDS[kind](in_features, out_features, dtype)
    layer = LoRALinear(base, r=r, alpha=alpha)
    expect_base_precision(layer, base)
    x = strided((*batch_shape, in_features), contiguous, dtype=dtype)
    rows = math.prod(batch_shape)  # a fast path for many rows shows at its size only
    where = f"a {kind} base in {dtype_name(dtype)} and x {tuple(x.shape)} ({rows} rows)"
    expect_exactly_the_base(layer, base, x, where)


@pytest.mark.points(1)
@pytest.mark.parametrize("kind, dtype", [("GatedLinear", torch.float32), ("hooked Linear", torch.bfloat16)])
def test_output_equals_the_base_at_init_for_a_million_tokens(LoRALinear, kind, dtype):
    """ "At construction the layer computes exactly base(x)" for a million rows (8 x 131072 tokens, a real batch) on
    the trap bases, narrow: a fast path from some row count on (dW folded into W) skips base(x) there only."""
    base = BASE_KINDS[kind](4, 3, dtype)
    layer = LoRALinear(base, r=2, alpha=ALPHA)
    expect_the_base_at_a_million_rows(layer, base, f"a {kind} base in {dtype_name(dtype)}")


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype, batch_shape", MANY_ROWS_CASES)
def test_trained_factors_compute_plain_lora_for_a_million_tokens(LoRALinear, dtype, batch_shape):
    """ "y = base(x) + alpha/r B A dropout(x)" with trained factors (B != 0) for a million rows and 3, and 16384 and 1,
    narrow, in every dtype: a loop over blocks of rows that drops the last partial block shows there only."""
    base = nn.Linear(4, 3, dtype=dtype)
    layer = LoRALinear(base, r=2, alpha=ALPHA)
    expect_plain_lora_at_many_rows(
        layer, base, 2, ALPHA / 2, batch_shape, f"LoRALinear(nn.Linear(4, 3), r=2) in {dtype_name(dtype)}"
    )


# Every way the signature LoRALinear(base, r=8, alpha=16.0, dropout=0.0) may be called.
CALL_STYLES = {
    "LoRALinear(base, r, alpha)": lambda LoRALinear, base, r, alpha, p: (
        LoRALinear(base, r, alpha) if p == 0 else LoRALinear(base, r, alpha, p)
    ),
    "LoRALinear(base, r, alpha, dropout)": lambda LoRALinear, base, r, alpha, p: LoRALinear(base, r, alpha, p),
    "LoRALinear(base, r=r, alpha=alpha, dropout=p)": lambda LoRALinear, base, r, alpha, p: LoRALinear(
        base, r=r, alpha=alpha, dropout=p
    ),
    "LoRALinear(base=base, dropout=p, alpha=alpha, r=r)": lambda LoRALinear, base, r, alpha, p: LoRALinear(
        base=base, dropout=p, alpha=alpha, r=r
    ),
    "LoRALinear(base, r, alpha=alpha, dropout=p)": lambda LoRALinear, base, r, alpha, p: LoRALinear(
        base, r, alpha=alpha, dropout=p
    ),
}


@pytest.mark.points(4)
@given(
    in_features=st.integers(5, 12),
    out_features=st.integers(13, 20),
    wide=st.booleans(),
    r=st.integers(1, 4),
    alpha=st.sampled_from([1.0, 7.0, 10.0, 16.0]),
    call=st.sampled_from(list(CALL_STYLES)),
    dtype=st.sampled_from(FLOAT_DTYPES),
    batch_shape=st.lists(st.integers(1, 3), max_size=3).map(tuple),
    contiguous=st.booleans(),
    grad=st.sampled_from(list(GRAD_MODES)),
    mode=st.sampled_from(["train", "eval", "eval-with-dropout", "train-with-dropout"]),
    bias=st.booleans(),
    converted=st.just(False),  # the explicit examples convert: the drawn cases stay those of before
    kind=st.sampled_from(list(BASE_KINDS)),  # a subclass with its own forward, hooks: output base(x) + the update
)
@examples(
    "in_features, out_features, wide, r, alpha, call, dtype, batch_shape, contiguous, grad, mode, bias, "
    "converted, kind",
    (IN, OUT, False, R, ALPHA, "LoRALinear(base, r, alpha)",
    torch.float32, (1,), True, "grad on", "train", True, False, "Linear"),
    (IN, OUT, True, 3, 10.0, "LoRALinear(base, r, alpha, dropout)",
     torch.float16, (2, 1, 3), False, "grad on", "eval-with-dropout", True, False, "hooked Linear"),
    (IN, OUT, False, R, ALPHA, "LoRALinear(base, r, alpha)",
    torch.bfloat16, (), True, "grad on", "train", False, False, "Linear"),
    (IN, OUT, False, 3, 16.0, "LoRALinear(base, r, alpha)",
    torch.float32, (130,), False, "grad on", "eval", True, False, "Linear"),
    (IN, OUT, False, R, ALPHA, "LoRALinear(base, r, alpha)",
    torch.float64, (2, 3), True, "grad off", "train", True, False, "GatedLinear"),
    (IN, OUT, False, UNROUNDED_R, UNROUNDED_ALPHA, "LoRALinear(base, r, alpha)",
     torch.float64, (3,), True, "grad on", "eval", False, False, "Linear"),
    (IN, OUT, True, R, ALPHA, "LoRALinear(base, r=r, alpha=alpha, dropout=p)",
     torch.float32, (3,), True, "grad off", "eval", True, False, "Linear"),
    (IN, OUT, False, R, ALPHA, "LoRALinear(base, r, alpha, dropout)",
     torch.float16, (2, 3), False, "grad on", "train-with-dropout", True, False, "Linear"),
    (IN, OUT, True, 3, 16.0, "LoRALinear(base, r=r, alpha=alpha, dropout=p)",
     torch.bfloat16, (3, 2, 2), False, "grad off", "train-with-dropout", False, False, "Linear"),
    (IN, OUT, False, R, ALPHA, "LoRALinear(base, r, alpha=alpha, dropout=p)",
     torch.float32, (2, 3), True, "inference mode", "eval", True, False, "hooked Linear"),
    (IN, OUT, False, R, ALPHA, "LoRALinear(base, r, alpha)",  # a base whose backward reads its own output
     torch.float32, (2, 3), True, "grad on", "train", True, False, "ReLULinear"),
    # Large batches on the trap bases, with trained-looking factors: a fast path from some row count on skips base(x).
    (IN, OUT, False, R, ALPHA, "LoRALinear(base, r, alpha)",
     torch.float32, (4, 75), True, "grad off", "eval", True, False, "GatedLinear"),
    (IN, OUT, True, R, ALPHA, "LoRALinear(base, r, alpha)",
     torch.float64, (2100,), False, "inference mode", "eval", True, False, "hooked Linear"),
    (IN, OUT, False, R, ALPHA, "LoRALinear(base, r, alpha)",
     torch.float32, (2, 260), True, "grad on", "train", True, False, "ReLULinear"),
    # Built in another dtype and converted (model.double() for gradcheck, model.half()): the same comparison as one
    # built in that dtype, float64 to 1e-10 with alpha / r = 10 / 3, which float32 does not hold.
    (IN, OUT, False, UNROUNDED_R, UNROUNDED_ALPHA, "LoRALinear(base, r, alpha)",
     torch.float64, (3,), True, "grad on", "eval", True, True, "GatedLinear"),
    (IN, OUT, False, UNROUNDED_R, UNROUNDED_ALPHA, "LoRALinear(base, r, alpha, dropout)",
     torch.bfloat16, (2, 3), True, "grad off", "train-with-dropout", True, True, "Linear"),
    # Empty batches: 0 rows, and sequences of 0 tokens (a reshape(*lead, -1) of 0 elements fails on them).
    (IN, OUT, False, R, ALPHA, "LoRALinear(base, r, alpha, dropout)",
     torch.float32, (0,), True, "grad on", "train-with-dropout", True, False, "Linear"),
    (IN, OUT, True, 3, 10.0, "LoRALinear(base, r, alpha)",
     torch.float64, (2, 0), False, "grad off", "eval", False, False, "GatedLinear"),
)  # fmt: skip
def test_matches_plain_lora_in_every_regime(
    LoRALinear, in_features, out_features, wide, r, alpha, call, dtype, batch_shape, contiguous, grad, mode, bias,
    converted, kind,
):  # fmt: skip
    if wide:
        in_features, out_features = out_features, in_features
    dropout = 0.3 if mode.endswith("with-dropout") else 0.0
    # converted: built in float32 (float64 for a float32 case), then layer.to(dtype), as model.double() or .half() do
    built_in = (torch.float64 if dtype == torch.float32 else torch.float32) if converted else dtype
    base = (
        GatedLinear(in_features, out_features, GAINS, dtype=built_in)  # a gain besides weight and bias, which it keeps
        if kind == "GatedLinear"
        else ReLULinear(in_features, out_features, bias=bias, dtype=built_in)
        if kind == "ReLULinear"
        else nn.Linear(in_features, out_features, bias=bias, dtype=built_in)
    )
    base = with_forward_hooks(base) if kind == "hooked Linear" else base
    try:
        layer = CALL_STYLES[call](LoRALinear, base, r, alpha, dropout)
    except (TypeError, ValueError) as error:
        pytest.fail(
            f"{call} with r={r}, alpha={alpha}, dropout={dropout} raised {type(error).__name__} ({error}): keep the "
            "stub's signature LoRALinear(base, r=8, alpha=16.0, dropout=0.0), callable by position and by keyword",
            pytrace=False,
        )
    layer.train(mode.startswith("train"))
    built = f"built in {built_in} and converted by .to({dtype})" if converted else str(dtype)
    if converted:
        layer.to(dtype)
    regime = f"{call} on a {kind} base, r={r}, alpha={alpha}, dropout={dropout}, {built}, {mode} mode, {grad}"
    active = dropout if layer.training else 0.0
    with an_in_place_update_named(regime):
        expect_plain_lora_in_regime(
            layer, base, r, alpha / r, batch_shape, contiguous, grad, regime, active, built_in if converted else None
        )
        if not active:  # the swaps compare with dropout off
            built_as = regime.removesuffix(f", {grad}")  # the probe names the grad mode itself
            expect_following_base_swaps(layer, base, r, alpha / r, batch_shape, contiguous, grad, built_as)
        # The factors' requires_grad is a regime too: A frozen (LoRA-FA), B frozen, both (a frozen adapter)
        expect_plain_lora_with_frozen_factors(layer, base, r, alpha / r, batch_shape, contiguous, grad, regime, active)


@pytest.mark.points(2)
def test_B_starts_at_zero_and_A_random(LoRALinear):
    _, layer = make_layer(LoRALinear)
    found = factors(layer, IN, OUT, R)
    A_size, B_size = found.A.abs().max().item(), found.B.abs().max().item()
    assert not (A_size == 0 and B_size > 0), (
        "A is zero and B random at init: swap them, B = zeros and A random (Kaiming-uniform or Gaussian)"
    )
    assert B_size == 0, f"B is not zero at init (max |B| = {B_size:.3g}): initialise B with zeros"
    assert A_size > 0, "A is zero at init: with A and B both zero no gradient reaches either; make A random"


@pytest.mark.points(1)
def test_A_is_random_and_full_rank(LoRALinear):
    draws = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        draws.append(factors(make_layer(LoRALinear)[1], IN, OUT, R).A.detach().double())
    assert torch.isfinite(draws[0]).all(), "A holds NaN or inf at init: initialise it (torch.empty is not)"
    assert not torch.equal(*draws), "A is the same for every seed: initialise it randomly"
    rank = torch.linalg.matrix_rank(draws[0]).item()
    assert rank == R, f"A has rank {rank} at init, expected r = {R}: are its rows copies of one another?"
    expect_a_fresh_A_for_every_layer(
        lambda base: factors(LoRALinear(base, R, ALPHA), IN, OUT, R).A, lambda: nn.Linear(IN, OUT), "LoRALinear"
    )


@pytest.mark.points(1)
def test_A_starts_centred_on_zero(LoRALinear):
    in_features, out_features, r = 64, 48, 8  # 512 entries: their mean is within 0.05 std of 0 for any centred init
    layer = LoRALinear(nn.Linear(in_features, out_features), r=r, alpha=16.0)
    expect_centred(
        factors(layer, in_features, out_features, r).A, f"LoRALinear(nn.Linear({in_features}, {out_features}))"
    )


@pytest.mark.points(1)
def test_a_uniform_A_has_nn_linears_bound(LoRALinear):
    # 4096 entries; a Gaussian's largest |entry| is over 3 std, one truncated at 2 std still over 2.2 std.
    in_features, out_features, r = 256, 24, 16
    A = factors(LoRALinear(nn.Linear(in_features, out_features), r=r, alpha=16.0), in_features, out_features, r)
    expect_nn_linear_bound_if_uniform(A.A, f"LoRALinear(nn.Linear({in_features}, {out_features}), r={r})")


@pytest.mark.points(1)
def test_A_is_drawn_uniform_or_gaussian(LoRALinear):
    in_features, out_features, r = 256, 24, 16  # 4096 entries: a continuous draw's are all distinct
    A = factors(LoRALinear(nn.Linear(in_features, out_features), r=r, alpha=16.0), in_features, out_features, r)
    expect_a_uniform_or_gaussian_draw(A.A, f"LoRALinear(nn.Linear({in_features}, {out_features}), r={r})")


@pytest.mark.points(1)
def test_a_rank_above_min_in_out_is_kept(LoRALinear):
    in_features, out_features, r, alpha = 3, 2, 8, 16.0
    base = nn.Linear(in_features, out_features, dtype=torch.float64)
    layer = LoRALinear(base, r=r, alpha=alpha)
    count, expected = trained_numbers(layer, base), r * (in_features + out_features)
    assert count == expected, (
        f"LoRALinear(nn.Linear({in_features}, {out_features}), r={r}) trains {count} numbers, expected "
        f"r*(in+out) = {expected}: keep r as given, even above min(in, out) (dW's rank is then at most min(in, out))"
    )
    randomize_factors(layer)
    ratio, proportional = scaling_ratio(layer, base, factors(layer, in_features, out_features, r))
    assert proportional and math.isclose(ratio, alpha / r, rel_tol=1e-6), (
        f"with r={r} above min(in, out) = {min(in_features, out_features)} the update dW is "
        + (f"{ratio:.4g} x B @ A" if proportional else "not proportional to B @ A")
        + f", expected alpha / r = {alpha / r:g} x: use r as given, for the factors and the scaling"
    )


@pytest.mark.points(1)
def test_a_fractional_alpha_is_kept(LoRALinear):
    r, alpha = 2, 2.5
    base = nn.Linear(IN, OUT, dtype=torch.float64)
    layer = LoRALinear(base, r=r, alpha=alpha)
    randomize_factors(layer)
    ratio, proportional = scaling_ratio(layer, base, factors(layer, IN, OUT, r))
    assert proportional, "the update dW is not proportional to B @ A: fix test_update_is_scaling_times_B_at_A first"
    cause = "use alpha / r, with alpha as given"
    if math.isclose(ratio, round(ratio), rel_tol=1e-6):
        cause = "rounded to a whole number (int(alpha), alpha // r, int(alpha / r)?): keep alpha a float, " + cause
    assert math.isclose(ratio, alpha / r, rel_tol=1e-6), (
        f"with r={r}, alpha={alpha} the update dW is {ratio:.4g} x B @ A, expected alpha / r = {alpha / r:g} x: {cause}"
    )
    recorded, scaling = getattr(layer, "alpha", None), getattr(layer, "scaling", None)
    assert recorded == alpha and scaling is not None and math.isclose(float(scaling), alpha / r), (
        f"with alpha={alpha}, r={r} the layer records alpha={recorded}, scaling={scaling}, "
        f"expected alpha={alpha}, scaling={alpha / r:g}: store alpha as given, not rounded"
    )


@pytest.mark.points(1)
@pytest.mark.parametrize("alpha", ALPHAS_AS_GIVEN.values(), ids=ALPHAS_AS_GIVEN)
def test_a_zero_or_negative_alpha_is_kept(LoRALinear, alpha):
    """scaling == alpha / r with alpha as given: 0 (a muted adapter) and a negative alpha too."""
    base = nn.Linear(IN, OUT, dtype=torch.float64)
    expect_alpha_as_given(lambda: LoRALinear(base, R, alpha), base, R, alpha, f"LoRALinear(base, {R}, {alpha})")


@pytest.mark.points(1)
@pytest.mark.parametrize("alpha", ALPHAS_BEYOND_FLOAT32.values(), ids=ALPHAS_BEYOND_FLOAT32)
def test_an_alpha_float32_cannot_hold_is_kept_exactly(LoRALinear, alpha):
    """ "alpha as given, never rounded": alpha, scaling and the update's ratio to B @ A in float64, to 1e-12."""
    base = nn.Linear(IN, OUT, dtype=torch.float64)
    call = f"LoRALinear(base, {R}, {alpha})"
    expect_alpha_exactly_as_given(lambda: LoRALinear(base, R, alpha), base, R, alpha, call)


@pytest.mark.points(1)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("grad", GRAD_MODES)
def test_follows_a_factor_edit_that_keeps_its_checksums(LoRALinear, grad, mode):
    """ "Nothing cached from an earlier call": after an edit through .data that keeps every cheap checksum of a
    factor (its version, sums, weighted sums, sum of squares), the next output follows the edited values."""
    base, layer = make_layer(LoRALinear)
    layer.train(mode == "train")
    expect_following_a_checksum_keeping_edit(layer, base, R, SCALING, grad, f"{mode} mode, a float32 base")


@pytest.mark.points(1)
@pytest.mark.parametrize("grad", ["grad off", "inference mode"])  # grad on: a cached dW's graph dies at backward
def test_follows_a_factor_edit_that_keeps_its_checksums_on_a_wide_layer(LoRALinear, grad):
    """ "Nothing cached from an earlier call" on a real model's layer (4096 wide, a few rows of x): a cache of dW for
    wide layers only (where folding it pays) shows there."""
    base = nn.Linear(WIDE_IN, WIDE_OUT)
    layer = LoRALinear(base, r=R, alpha=ALPHA).eval()
    regime = f"eval mode, a float32 nn.Linear({WIDE_IN}, {WIDE_OUT})"
    expect_following_a_checksum_keeping_edit(layer, base, R, SCALING, grad, regime)


@pytest.mark.points(4)
def test_update_is_scaling_times_B_at_A(LoRALinear):
    base, layer = make_layer(LoRALinear, dtype=torch.float64)
    randomize_factors(layer)
    ratio, proportional = scaling_ratio(layer, base, factors(layer, IN, OUT, R))
    causes = {
        ALPHA: "scaled by alpha instead of alpha / r?",
        R / ALPHA: "scaled by r / alpha, upside down?",
        ALPHA // R: "alpha // r rounds down: use alpha / r",
        1.0: "the scaling alpha / r is missing",
        ALPHA / math.sqrt(R): "alpha / sqrt(r) is rsLoRA: use alpha / r",
    }
    cause = next((text for value, text in causes.items() if math.isclose(ratio, value, rel_tol=1e-6)), "")
    assert proportional, (
        "the update dW, read off the outputs, is not proportional to B @ A: "
        "is it x A^T B^T, with nothing (no activation) between A and B?"
    )
    assert math.isclose(ratio, SCALING, rel_tol=1e-6), (
        f"update dW measured {ratio:.4g} x B @ A, expected alpha / r = {SCALING:g} x: {cause or 'check the scaling'}"
    )


@pytest.mark.points(1)
def test_the_scaling_holds_at_real_ranks(LoRALinear):
    """ "scaling == alpha / r" and "dW = scaling * B @ A" at the ranks real fine-tunes use (64 to 256)."""
    base = nn.Linear(*REAL_RANK_LAYER, dtype=torch.float64)
    call = f"LoRALinear(nn.Linear{REAL_RANK_LAYER}, r={{r}}, alpha={ALPHA})"
    expect_the_scaling_at_real_ranks(lambda r: LoRALinear(base, r, ALPHA), base, ALPHA, call)


@pytest.mark.points(2)
@given(
    in_features=st.integers(2, 16),
    out_features=st.integers(2, 16),
    r=st.integers(1, 8),
)
@example(in_features=IN, out_features=OUT, r=R)
def test_update_has_rank_at_most_r(LoRALinear, in_features, out_features, r):
    base = nn.Linear(in_features, out_features, dtype=torch.float64)
    layer = LoRALinear(base, r=r, alpha=2.0 * r)
    randomize_factors(layer, std=1.0)
    rank = torch.linalg.matrix_rank(measured_update(layer, base)).item()
    assert rank <= r, f"the update dW has rank {rank}, expected at most r = {r}: dW must be B @ A"


@pytest.mark.points(4)
def test_gradients_reach_the_factors_and_input_but_not_the_base(LoRALinear):
    base, layer = make_layer(LoRALinear, dtype=torch.float64)
    randomize_factors(layer)
    found = factors(layer, IN, OUT, R)
    expect_base_precision(layer, base)
    expect_plain_lora_gradients(layer, base, found, SCALING, "the base")


@pytest.mark.points(2)
def test_dropout_never_touches_the_base_path(LoRALinear):
    base, layer = make_layer(LoRALinear, dropout=0.5)
    x = torch.randn(8, IN)
    with torch.no_grad():
        layer.eval()  # the first premise: with dropout off the output at init is base(x) (B starts at zero)
        change = max_difference(output(layer, x), base(x))
        assert change < 1e-5, (
            f"even in eval mode, with dropout off, the output at init differs from base(x) by {change:.3g}: is B "
            "initialised to zeros? (see test_output_equals_the_base_at_init)"
        )
        layer.train()
        change = max_difference(output(layer, x), base(x))
    assert change < 1e-5, (
        f"with dropout in train mode the output at init differs from base(x) by {change:.3g}: "
        "dropout belongs on the adapter branch's input only"
    )


@pytest.mark.points(1)
def test_dropout_is_off_in_eval_mode(LoRALinear):
    base = nn.Linear(IN, OUT, dtype=torch.float64)
    without, layer = (LoRALinear(base, r=R, alpha=ALPHA, dropout=p) for p in (0.0, 0.5))
    shapes = [[tuple(t.shape) for t in trainable(module)] for module in (without, layer)]
    assert shapes[0] == shapes[1], (
        f"LoRALinear(base, dropout=0.5) trains tensors shaped {shapes[1]}, with dropout=0 {shapes[0]}: "
        "dropout must not change the layer's parameters"
    )
    randomize_factors(without)
    with torch.no_grad():  # the same factors in both: only the dropout probability differs
        for mine, theirs in zip(trainable(layer), trainable(without), strict=True):
            mine.copy_(theirs)
    layer.eval()
    x = torch.randn(8, IN, dtype=torch.float64)
    with torch.no_grad():
        repeat = max_difference(output(layer, x), output(layer, x))
    assert repeat == 0, (
        f"in eval mode with dropout=0.5, outputs vary by {repeat:.3g} between calls: "
        "dropout must be off in eval mode (nn.Dropout, or F.dropout(..., training=self.training))"
    )
    update = measured_update(layer, base)
    off = max_difference(update, measured_update(without, base))
    assert off < 1e-12, (
        f"in eval mode the layer with dropout=0.5 adds an update dW that differs by {off:.3g} from the one the same "
        "factors give with dropout=0: eval mode still drops or rescales adapter inputs (a mask drawn in __init__?)"
    )
    with torch.no_grad():
        error = max_difference(output(layer, x), base(x) + x @ update.T)
    assert error < 1e-9, (
        f"in eval mode (dropout=0.5) the output for a batch differs by {error:.3g} from base(x) + x dW^T, with dW "
        "read off the outputs for one-hot inputs: it must be base(x) plus a linear map of x, with nothing random, "
        "nonlinear or batch-dependent"
    )


@pytest.mark.points(1)
@pytest.mark.parametrize("last", ["eval", "train"], ids=["the-other-put-in-eval-last", "the-other-put-in-train-last"])
def test_dropout_follows_its_own_mode(LoRALinear, last):
    """Two LoRALinears with the same dropout p, one in train mode, one in eval mode (a frozen tower beside a trained
    one): each layer's own mode decides whether it drops, whichever was set last."""
    layers = {}
    for mode in ("train", "eval"):
        base = nn.Linear(IN, OUT, dtype=torch.float64)
        layers[mode] = LoRALinear(base, r=R, alpha=ALPHA, dropout=0.5)
        randomize_factors(layers[mode], std=0.5)
    first = "train" if last == "eval" else "eval"
    for mode in (first, last):
        layers[mode].train(mode == "train")
    x = torch.randn(16, IN, dtype=torch.float64)
    with torch.no_grad():
        varies = {mode: max_difference(output(layer, x), output(layer, x)) for mode, layer in layers.items()}
    assert varies["train"] > 0, (
        "a LoRALinear in train mode with dropout=0.5 gave the same output twice (no dropout) once another "
        "LoRALinear with the same p was put in eval mode after it: its own mode decides (an nn.Dropout of its "
        "own per layer, or F.dropout(..., training=self.training)), never one shared by layers"
    )
    assert varies["eval"] == 0, (
        f"a LoRALinear in eval mode with dropout=0.5 gave outputs that vary by {varies['eval']:.3g} between calls "
        "once another LoRALinear with the same p was put in train mode after it: its own mode decides (an "
        "nn.Dropout of its own per layer, or F.dropout(..., training=self.training)), never one shared by layers"
    )


def dropout_multipliers(LoRALinear, p: float = DROPOUT) -> torch.Tensor:
    """probes.adapter_input_multipliers of a LoRALinear made with dropout ``p`` on a float64 base built in eval
    mode (as a frozen base often is: dropout follows the LoRALinear's own mode)."""
    base = nn.Linear(DROP_IN, DROP_OUT, dtype=torch.float64).eval()
    return adapter_input_multipliers(LoRALinear(base, r=DROP_R, alpha=2.0 * DROP_R, dropout=p), base, p)


@pytest.mark.points(2)
def test_dropout_zeroes_adapter_inputs_in_train_mode(LoRALinear):
    expect_kept_inputs_rescaled(dropout_multipliers(LoRALinear), DROPOUT)


@pytest.mark.points(1)
def test_dropout_zeroes_a_fraction_p_of_the_adapter_inputs(LoRALinear):
    expect_a_fraction_p_zeroed(dropout_multipliers(LoRALinear), DROPOUT)


@pytest.mark.points(1)
def test_dropout_draws_a_fresh_mask_for_every_input_and_call(LoRALinear):
    expect_a_fresh_mask_for_every_element_and_call(dropout_multipliers(LoRALinear))


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_dropout_acts_as_nn_dropout_in_every_dtype(LoRALinear, device, dtype):
    """The fraction zeroed, the 1/(1-p) rescale and a fresh, independent mask for every element and call, read in
    every float dtype of the base (a half-precision path of its own shows there only)."""
    base = nn.Linear(EXACT_IN, EXACT_OUT, device=device, dtype=dtype).eval()
    multipliers = exact_dropout_multipliers(LoRALinear(base, EXACT_R, float(EXACT_R), DROPOUT), base)
    try:
        expect_a_fresh_mask_for_every_element_and_call(multipliers)
        expect_a_fraction_p_zeroed(multipliers, DROPOUT)
    except AssertionError as error:
        raise AssertionError(f"a {dtype_name(dtype)} LoRALinear on {device}: {error}") from None


@pytest.mark.points(1)
def test_dropout_draws_a_fresh_mask_for_every_row_of_a_large_batch(LoRALinear):
    """As nn.Dropout, one draw per element of the whole batch, up to a prefill's many rows: no mask drawn for a block
    of rows and tiled down the batch."""
    base = nn.Linear(EXACT_IN, EXACT_OUT)
    layer = LoRALinear(base, EXACT_R, float(EXACT_R), DROPOUT)
    expect_a_fresh_mask_for_every_row(layer, base, DROPOUT, PREFILL_MASK_ROWS)


@pytest.mark.points(1)
def test_dropout_masks_come_from_torchs_rng(LoRALinear):
    """As nn.Dropout: two layers draw independent masks; torch.manual_seed reproduces a mask, another seed another."""

    def make() -> tuple[nn.Module, nn.Module]:
        base = nn.Linear(EXACT_IN, EXACT_OUT)
        return LoRALinear(base, EXACT_R, float(EXACT_R), DROPOUT), base

    expect_dropout_drawn_from_torchs_rng(make, DROPOUT)


@pytest.mark.points(1)
@pytest.mark.parametrize("arguments", INVALID_ARGUMENTS, ids=arguments_id)
def test_rejects_invalid_arguments(LoRALinear, arguments):
    call = ", ".join(f"{k}={v}" for k, v in arguments.items())
    expect_value_error(lambda: LoRALinear(nn.Linear(IN, OUT), **arguments), f"LoRALinear(base, {call})")


@pytest.mark.points(1)
@pytest.mark.parametrize("kind", ["LoRALinear", "a subclass of it"])
def test_rejects_an_adapter_as_its_base(LoRALinear, kind):
    """LoRALinear(LoRALinear(...)): stacked adapters are refused, as any base that is no nn.Linear."""
    inner = LoRALinear(nn.Linear(IN, OUT), r=R, alpha=ALPHA)
    if kind != "LoRALinear":
        make_a_subclass_instance(inner, LoRALinear)
    expect_value_error(
        lambda: LoRALinear(inner, r=R),
        f"LoRALinear({type(inner).__name__}(...)) of an adapter, which holds an nn.Linear but is none "
        "(test isinstance(base, nn.Linear) alone),",
    )


class DenseLike(nn.Module):
    """A hand-written dense layer with nn.Linear's attributes (in_features, out_features, weight (out, in), bias), as
    a quantized or third-party Linear has, that is no nn.Linear: a duck-typed check accepts it."""

    def __init__(self) -> None:
        super().__init__()
        self.in_features, self.out_features = IN, OUT
        self.weight = nn.Parameter(torch.randn(OUT, IN))
        self.bias = nn.Parameter(torch.zeros(OUT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


@pytest.mark.points(1)
@pytest.mark.parametrize(
    "make_base",
    [
        lambda: nn.Conv1d(IN, OUT, 1),
        lambda: nn.Bilinear(IN, IN, OUT),
        lambda: nn.Embedding(OUT, IN),
        Conv1DLike,
        DenseLike,
        lambda: ForeignLinear(IN, OUT),
        lambda: PeftLoraLinearLike(IN, OUT),
    ],
    ids=["Conv1d", "Bilinear", "Embedding", "Conv1D", "DenseLike", "another-librarys-Linear", "peft-lora.Linear-like"],
)
def test_rejects_a_base_that_is_not_linear(LoRALinear, make_base):
    base = make_base()
    expect_value_error(lambda: LoRALinear(base, r=R), f"LoRALinear({type(base).__name__}(...))")


@pytest.mark.points(1)
@pytest.mark.parametrize(
    "make_base",
    # nn.MultiheadAttention's out_proj is one: an isinstance test accepts it, `type(base) is nn.Linear` does not. A
    # subclass with its own forward is computed by calling it, base(x), not by F.linear with its weight and bias.
    [lambda: nn.modules.linear.NonDynamicallyQuantizableLinear(IN, OUT), lambda: GatedLinear(IN, OUT, GAINS)],
    ids=["NonDynamicallyQuantizableLinear", "GatedLinear"],
)
def test_accepts_a_subclass_of_nn_linear(LoRALinear, make_base):
    base = make_base()
    name = type(base).__name__
    try:
        layer = LoRALinear(base, r=R, alpha=ALPHA)
    except ValueError as error:
        raise AssertionError(
            f"LoRALinear({name}(...)) raised ValueError ({error}): a subclass of nn.Linear is "
            "an nn.Linear; test isinstance(base, nn.Linear), not type(base) is nn.Linear"
        ) from None
    x = torch.randn(3, IN)
    with torch.no_grad():
        measured, expected = output(layer, x), base(x)
        change = max_difference(measured, expected)
        skipped = change > 0 and torch.equal(measured, nn.functional.linear(x, base.weight, base.bias))
    cause = "F.linear(x, base.weight, base.bias) skips the subclass's own forward: call base(x)" if skipped else ""
    assert change == 0, (
        f"on the nn.Linear subclass {name} the output at init differs from base(x) by {change:.3g}, expected 0"
        + (f": {cause}" if cause else "")
    )


@pytest.mark.points(3)
@pytest.mark.parametrize("device, dtype", TRAINING_CASES)
def test_training_reduces_the_loss_and_leaves_the_base_untouched(LoRALinear, device, dtype):
    expect_training_fits_a_low_rank_target(lambda base: LoRALinear(base, r=4, alpha=8.0), device, dtype)


@pytest.mark.points(1)
def test_defaults_are_r_8_alpha_16_and_no_dropout(LoRALinear):
    base = nn.Linear(IN, OUT, dtype=torch.float64)
    layer = LoRALinear(base)
    count = trained_numbers(layer, base)
    assert count == 8 * (IN + OUT), (
        f"LoRALinear(base) trains {count} numbers, expected r*(in+out) = {8 * (IN + OUT)} with the default r=8: "
        "keep the stub's defaults, LoRALinear(base, r=8, alpha=16.0, dropout=0.0)"
    )
    randomize_factors(layer)
    ratio, proportional = scaling_ratio(layer, base, factors(layer, IN, OUT, 8))
    assert proportional, (
        "LoRALinear(base)'s update is not proportional to B @ A: fix test_update_is_scaling_times_B_at_A first"
    )
    assert math.isclose(ratio, 16.0 / 8, rel_tol=1e-6), (
        f"LoRALinear(base) adds {ratio:.4g} x B @ A, expected alpha / r = 16 / 8 = 2 x with the defaults: "
        "keep the stub's defaults alpha=16.0 and r=8"
    )
    x = torch.randn(8, IN, dtype=torch.float64)
    with torch.no_grad():
        repeat = max_difference(output(layer.train(), x), output(layer, x))
    assert repeat == 0, (
        f"LoRALinear(base) in train mode gives outputs varying by {repeat:.3g} between calls, expected none: "
        "the default dropout is 0.0"
    )
    calls = {
        "LoRALinear(base, 4)": (4, lambda: LoRALinear(base, 4)),
        "LoRALinear(base, r=32)": (32, lambda: LoRALinear(base, r=32)),
    }
    for call, (r, make) in calls.items():  # alpha keeps its default 16.0 whatever r is given, by position or name
        layer = make()
        count = trained_numbers(layer, base)
        assert count == r * (IN + OUT), (
            f"{call} trains {count} numbers, expected r*(in+out) = {r * (IN + OUT)}: use the r given, by position or "
            "by name"
        )
        randomize_factors(layer)
        ratio, proportional = scaling_ratio(layer, base, factors(layer, IN, OUT, r))
        cause = "alpha follows r (alpha = 2r?)" if math.isclose(ratio, 2.0, rel_tol=1e-6) else "check the scaling"
        assert proportional and math.isclose(ratio, 16.0 / r, rel_tol=1e-6), (
            f"{call} adds "
            + (f"{ratio:.4g} x B @ A" if proportional else "an update not proportional to B @ A")
            + f", expected alpha / r = 16 / {r} = {16.0 / r:g} x: the default alpha is 16.0 whatever r: {cause}"
        )
