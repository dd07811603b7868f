"""Checks of the `gpt2_conv1d` kata: LoRAConv1D, apply_lora_gpt2 and merge_gpt2, graded on a tiny
GPT2LMHeadModel built from a config, with peft (``fan_in_fan_out=True``) as the oracle."""

from __future__ import annotations

import contextlib
import copy
import math
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st
from torch import nn

from grader.hf import (
    base_of,
    copy_factors_into_peft,
    dimensions,
    logits,
    lora_factors,
    own_class,
    peft_model,
    quiet,
    randomize,
    tiny_gpt2,
    token_ids,
    with_own_layer_classes,
)
from grader.models import gated, with_forward_hooks
from grader.oracles import requires
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
    FLOAT32_ROUNDING_IN_FLOAT64,
    FLOAT_DTYPES,
    FROZEN_BEFORE_MERGING,
    GRAD_MODES,
    INVALID_ARGUMENTS,
    MANY_ROWS_CASES,
    NAMED_AS_STRINGS,
    PREFILL_MASK_ROWS,
    REAL_MODEL_COLUMNS,
    REAL_MODEL_ROWS,
    REAL_MODEL_WIDTH,
    REAL_RANK_LAYER,
    RELATIVE_TOLERANCE,
    SELECT_IN,
    SELECT_OUT,
    SELECT_R,
    UNROUNDED_ALPHA,
    UNROUNDED_R,
    WIDE_IN,
    WIDE_OUT,
    Conv1DLike,
    ForeignLoRALinear,
    a_merge_of_any_alpha,
    adapter_namesakes,
    an_in_place_update_named,
    arguments_id,
    case_folded,
    describe,
    dotted_target_cut_to_its_last_part,
    dtype_name,
    examples,
    expect_a_fractional_alpha_kept,
    expect_a_fresh_A_for_every_layer,
    expect_a_fresh_mask_for_every_row,
    expect_a_real_models_layer_merged_in_every_row_and_column,
    expect_a_real_models_layer_merged_in_float32,
    expect_a_uniform_or_gaussian_draw,
    expect_alpha_as_given,
    expect_alpha_exactly_as_given,
    expect_centred,
    expect_dropout_drawn_from_torchs_rng,
    expect_dropout_like_nn_dropout,
    expect_dropout_like_nn_dropout_in_its_dtype,
    expect_each_adapter_following_its_own_mode,
    expect_every_layer_in_its_dtype,
    expect_exactly_the_base,
    expect_factor_layers_left_alone,
    expect_following_a_checksum_keeping_edit,
    expect_following_its_base_after_to,
    expect_instance,
    expect_merged_like_the_adapted,
    expect_merged_weight,
    expect_nn_linear_bound_if_uniform,
    expect_on_the_base_device,
    expect_on_the_base_device_and_dtype,
    expect_plain_lora_at_many_rows,
    expect_plain_lora_gradients,
    expect_plain_lora_in_regime,
    expect_plain_lora_with_frozen_factors,
    expect_r_alpha_and_scaling,
    expect_the_adapters_bases_left_alone,
    expect_the_base_at_a_million_rows,
    expect_the_base_dtype_under_every_default_dtype,
    expect_the_base_output_left_alone,
    expect_the_scaling_at_real_ranks,
    expect_value_error,
    factors,
    freeze_before_merging,
    made_under_a_foreign_default_device,
    max_difference,
    measured_update,
    output,
    randomize_factors,
    relative_error,
    scaling_ratio,
    targets_off_by_case,
    targets_that_name_no_layer,
    trainable,
    trained_numbers,
)
from grader.signatures import expect_the_stubs_signatures


@pytest.mark.points(1)
def test_takes_the_stubs_parameters(implementation, LoRAConv1D, Conv1D):
    """Callers pass the stub's parameters by name or by position: each definition takes them as the stub does."""
    expect_the_stubs_signatures(implementation, "gpt2_conv1d")
    # Then a call into the kata: an unimplemented stub, its signatures right, scores nothing here.
    LoRAConv1D(Conv1D(3, 4))


SUBJECT = "LoRAConv1D"  # the definition a failing check points at
pytestmark = requires("transformers:GPT2LMHeadModel", "transformers.pytorch_utils")
(PEFT,) = requires("peft:get_peft_model")

IN, OUT, R, ALPHA = 12, 10, 4, 10.0  # distinct dims: a factor's shape tells which it is; alpha / r not whole
SCALING = ALPHA / R
ATTENTION = ("c_attn",)
EVERYWHERE = ("c_attn", "c_proj", "c_fc")  # attn.c_proj is square (16 -> 16), mlp.c_proj 64 -> 16


@pytest.fixture(scope="session")
def Conv1D():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def conv1d_twin(linear: nn.Linear):
    """A Conv1D computing what ``linear`` computes: weight ``linear.weight.T`` (in, out), the same bias."""
    from transformers.pytorch_utils import Conv1D

    weight = linear.weight.detach()
    conv = Conv1D(linear.out_features, linear.in_features).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight.T)
        conv.bias.copy_(linear.bias.detach() if linear.bias is not None else torch.zeros_like(conv.bias))
    return conv


def make_layer(LoRAConv1D, dtype=torch.float32, device="cpu", in_features=IN, out_features=OUT, **kwargs):
    """(twin nn.Linear, its Conv1D, LoRAConv1D on the Conv1D)."""
    twin = nn.Linear(in_features, out_features, dtype=dtype, device=device)
    conv = conv1d_twin(twin)
    return twin, conv, LoRAConv1D(conv, **{"r": R, "alpha": ALPHA, **kwargs})


def gpt2(n_layer: int = 2, classifier: bool = False) -> nn.Module:
    """A tiny GPT-2 (``tiny_gpt2``) with trained-looking biases: GPT-2 starts every Conv1D and LayerNorm bias at
    zero, where a merge that drops or zeroes a bias computes the same; random ones, the same on every call, show it."""
    model = tiny_gpt2(n_layer=n_layer, classifier=classifier)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def adapters(model: nn.Module, *classes: type) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules() if isinstance(module, classes)}


def matching(model: nn.Module, targets, Conv1D) -> list[str]:
    """The Conv1D and nn.Linear layers the spec targets: a name equal to a target or ending in '.' + target."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (Conv1D, nn.Linear)) and any(name == t or name.endswith("." + t) for t in targets)
    ]


def adapted(returned: object) -> nn.Module:
    return expect_instance(returned, nn.Module, "apply_lora_gpt2(model, ...)", "the model itself, adapted in place")


def merged(returned: object) -> nn.Module:
    return expect_instance(returned, nn.Module, "merge_gpt2(model)", "the model itself, merged in place")


# LoRAConv1D: LoRALinear's contract for a Conv1D base.


@pytest.mark.points(1)
def test_holds_the_very_conv1d_and_freezes_it(LoRAConv1D):
    _, conv, layer = make_layer(LoRAConv1D)
    assert isinstance(layer, nn.Module), f"LoRAConv1D(...) is a {type(layer).__name__}: subclass nn.Module"
    assert any(module is conv for module in layer.modules()), (
        "the Conv1D passed in is not a submodule of the LoRAConv1D: keep the object itself (self.base = base)"
    )
    loose = [name for name, parameter in conv.named_parameters() if parameter.requires_grad]
    assert not loose, f"the Conv1D's {loose} still require grad: freeze the base with base.requires_grad_(False)"
    gated_conv = CONV1D_KINDS["GatedConv1D"](IN, OUT, torch.float32)  # a parameter of its own besides weight and bias
    layer = LoRAConv1D(gated_conv, r=R, alpha=ALPHA)
    loose = [name for name, parameter in gated_conv.named_parameters() if parameter.requires_grad]
    assert not loose, (
        f"on a GatedConv1D base (a model's own Conv1D subclass with a parameter gain), its {loose} still require "
        "grad: freeze every parameter of the base (base.requires_grad_(False)), not weight and bias alone"
    )
    count = sum(t.numel() for t in trainable(layer))
    assert count == R * (IN + OUT), (
        f"on a GatedConv1D base the layer trains {count} numbers, expected r*(in+out) = {R * (IN + OUT)}: only A and B"
    )


@pytest.mark.points(1)
def test_computes_with_the_conv1d_it_was_given(LoRAConv1D):
    _, conv, layer = make_layer(LoRAConv1D)
    with torch.no_grad():
        conv.weight.add_(1.0)
        conv.bias.add_(1.0)
        x = torch.randn(5, IN)
        change = max_difference(output(layer, x), conv(x))
    assert change < 1e-5, (
        f"after editing the Conv1D's weights the layer's output differs from base(x) by {change:.3g}: "
        "it computes with a copy; use the very base passed in"
    )


def as_the_stub_allows(call: Callable[[], nn.Module], description: str) -> nn.Module:
    """``call()``, a call the stub's signature allows (r, alpha and dropout by position, any parameter by its
    name); fails the check with a clear verdict when the signature refuses it (keyword-only or renamed parameters)."""
    try:
        return call()
    except TypeError as error:
        pytest.fail(
            f"{description} raised TypeError ({error}): keep the stub's signature, its parameters' names and order: "
            "r, alpha and dropout may be passed by position, target_modules by name",
            pytrace=False,
        )


@pytest.mark.points(1)
def test_records_r_alpha_and_scaling(LoRAConv1D):
    expect_r_alpha_and_scaling(make_layer(LoRAConv1D)[2], R, ALPHA)
    conv = make_layer(LoRAConv1D)[1]
    layer = as_the_stub_allows(lambda: LoRAConv1D(conv, R, ALPHA, 0.0), f"LoRAConv1D(conv, {R}, {ALPHA}, 0.0)")
    expect_r_alpha_and_scaling(layer, R, ALPHA)


@pytest.mark.points(1)
def test_a_fractional_alpha_is_kept(LoRAConv1D):
    r, alpha = 2, 2.5
    twin, _, layer = make_layer(LoRAConv1D, torch.float64, r=r, alpha=alpha)
    randomize_factors(layer)
    expect_a_fractional_alpha_kept(layer, twin, factors(layer, IN, OUT, r), r, alpha)


@pytest.mark.points(1)
@pytest.mark.parametrize("alpha", ALPHAS_AS_GIVEN.values(), ids=ALPHAS_AS_GIVEN)
def test_a_zero_or_negative_alpha_is_kept(LoRAConv1D, alpha):
    """scaling == alpha / r with alpha as given: 0 (a muted adapter) and a negative alpha too."""
    twin = nn.Linear(IN, OUT, dtype=torch.float64)
    conv = conv1d_twin(twin)
    expect_alpha_as_given(lambda: LoRAConv1D(conv, R, alpha), twin, R, alpha, f"LoRAConv1D(conv, {R}, {alpha})")


@pytest.mark.points(1)
@pytest.mark.parametrize("alpha", ALPHAS_BEYOND_FLOAT32.values(), ids=ALPHAS_BEYOND_FLOAT32)
def test_an_alpha_float32_cannot_hold_is_kept_exactly(LoRAConv1D, alpha):
    """ "alpha as given (2.5 stays 2.5, never rounded)": alpha, scaling and the update's ratio to B @ A in float64,
    to 1e-12, for alphas float32 rounds."""
    twin = nn.Linear(IN, OUT, dtype=torch.float64)
    conv = conv1d_twin(twin)
    call = f"LoRAConv1D(conv, {R}, {alpha})"
    expect_alpha_exactly_as_given(lambda: LoRAConv1D(conv, R, alpha), twin, R, alpha, call)


@pytest.mark.points(1)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("grad", GRAD_MODES)
def test_follows_a_factor_edit_that_keeps_its_checksums(LoRAConv1D, grad, mode):
    """LoRALinear's "nothing cached from an earlier call" for a Conv1D base: after an edit through .data that keeps
    every cheap checksum of a factor (version, sums, weighted sums, sum of squares), the output follows it."""
    _, conv, layer = make_layer(LoRAConv1D)
    layer.train(mode == "train")
    expect_following_a_checksum_keeping_edit(layer, conv, R, SCALING, grad, f"{mode} mode, a float32 Conv1D")


@pytest.mark.points(1)
@pytest.mark.parametrize("grad", ["grad off", "inference mode"])  # grad on: a cached dW's graph dies at backward
def test_follows_a_factor_edit_that_keeps_its_checksums_on_a_wide_layer(LoRAConv1D, Conv1D, grad):
    """The same on a real model's layer (4096 wide, a few rows of x): a cache of dW for wide layers only (where
    folding it pays) shows there."""
    conv = Conv1D(WIDE_OUT, WIDE_IN)
    layer = LoRAConv1D(conv, r=R, alpha=ALPHA).eval()
    regime = f"eval mode, a float32 Conv1D({WIDE_OUT}, {WIDE_IN})"
    expect_following_a_checksum_keeping_edit(layer, conv, R, SCALING, grad, regime)


@pytest.mark.points(3)
def test_trains_two_factors_shaped_by_the_conv1d_in_and_out(LoRAConv1D):
    _, _, layer = make_layer(LoRAConv1D)
    tensors = trainable(layer)
    count, expected = sum(t.numel() for t in tensors), R * (IN + OUT)
    shapes = [tuple(t.shape) for t in tensors]
    assert count == expected and len(tensors) == 2, (
        f"expected 2 trainable factors with r*(in+out) = {expected} numbers, measured {len(tensors)} tensors "
        f"{shapes} = {count}: only A and B train (no bias, base frozen)"
    )
    factors_message = (
        f"a Conv1D's weight is (in, out) = ({IN}, {OUT}): in is weight.shape[0] (nx), out weight.shape[1] (nf); "
        f"measured factors {shapes}: in and out read the wrong way round?"
    )
    try:
        factors(layer, IN, OUT, R)
    except AssertionError:
        pytest.fail(factors_message, pytrace=False)
    try:  # (r, out) and (in, r) pass for factors stored transposed: the forward tells
        output(layer, torch.randn(5, IN))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        pytest.fail(f"a forward on x of shape (5, {IN}) raised {first_line!r}: {factors_message}", pytrace=False)


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_lives_on_the_base_device_and_dtype(LoRAConv1D, device, dtype):
    _, conv, layer = make_layer(LoRAConv1D, dtype=dtype, device=device)
    expect_on_the_base_device_and_dtype(layer, conv.weight, IN, OUT, device, dtype)
    _, conv, layer = make_layer(LoRAConv1D, dropout=0.25)  # built in float32 on the CPU, then converted
    expect_following_its_base_after_to(layer, conv, IN, OUT, device, dtype, "LoRAConv1D")


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_name)
def test_factors_follow_the_base_dtype_not_the_default_one(LoRAConv1D, dtype):
    """The spec's "in its dtype" under every default dtype a script may set (float64, float16, bfloat16)."""

    def make(dtype):
        _, conv, layer = make_layer(LoRAConv1D, dtype=dtype, dropout=0.25)
        return conv.weight, layer

    expect_the_base_dtype_under_every_default_dtype(make, IN, OUT, dtype, "LoRAConv1D")


@pytest.mark.points(1)
def test_factors_follow_the_base_device_not_the_default_one(LoRAConv1D):
    conv = conv1d_twin(nn.Linear(IN, OUT, dtype=torch.float64))
    x = torch.randn(3, IN, dtype=torch.float64)

    def made_and_called() -> tuple[nn.Module, torch.Tensor]:  # a train-mode call with dropout: a mask made without
        layer = LoRAConv1D(conv, R, ALPHA, 0.25).train()  # device= shows too
        return layer, output(layer, x)

    made = made_under_a_foreign_default_device(made_and_called)
    if made is not None:
        layer, y = made
        expect_on_the_base_device(trainable(layer), conv.weight.device, "the factors were created")
        expect_on_the_base_device([y], conv.weight.device, "a train-mode forward with dropout computed its output")


# The bases "computes exactly base(x)" is checked on, as LoRALinear's are: a model's own Conv1D subclass with its own
# forward (its output is not x @ W + b), and a Conv1D with hooks; each with a random bias (a Conv1D's starts at 0).
CONV1D_KINDS = {
    "Conv1D": lambda i, o, dtype: conv1d_twin(nn.Linear(i, o, dtype=dtype)),
    "GatedConv1D": lambda i, o, dtype: gated(conv1d_twin(nn.Linear(i, o, dtype=dtype)), o),
    "hooked Conv1D": lambda i, o, dtype: with_forward_hooks(conv1d_twin(nn.Linear(i, o, dtype=dtype))),
}
RELU_CLASSES: dict[type, type] = {}  # a Conv1D class: its subclass ending in a ReLU, made once


def relu_ending(conv: nn.Module) -> nn.Module:
    """``conv`` made, in place, an instance of a subclass of its class ending in a ReLU (models.ReLULinear's twin):
    its backward reads its own output, so an update added into base(x) in place breaks a training step through it."""
    kind = type(conv)
    if kind not in RELU_CLASSES:
        forward = kind.forward
        RELU_CLASSES[kind] = type(
            f"ReLU{kind.__name__}",
            (kind,),
            {"forward": lambda self, x: torch.relu(forward(self, x)), "__module__": "a_model"},
        )
    conv.__class__ = RELU_CLASSES[kind]
    return conv


# The drawn cases sample CONV1D_KINDS; the explicit examples may name these too (ReLULinear's twin for a Conv1D).
CONV1D_TRAPS = {
    **CONV1D_KINDS,
    "ReLUConv1D": lambda i, o, dtype: relu_ending(conv1d_twin(nn.Linear(i, o, dtype=dtype))),
}


@pytest.mark.points(3)
@given(
    in_features=st.integers(1, 24),
    out_features=st.integers(1, 24),
    r=st.integers(1, 8),
    alpha=st.sampled_from([1.0, 2.5, 8.0, 16.0]),
    batch_shape=st.lists(st.integers(1, 3), max_size=3).map(tuple),
    dtype=st.sampled_from(FLOAT_DTYPES),
    kind=st.sampled_from(list(CONV1D_KINDS)),
)
@examples(
    "in_features, out_features, r, alpha, batch_shape, dtype, kind",
    (IN, OUT, R, ALPHA, (2, 3), torch.float32, "GatedConv1D"),
    (IN, OUT, R, ALPHA, (3,), torch.float32, "hooked Conv1D"),
    (IN, OUT, R, ALPHA, (3,), torch.float32, "Conv1D"),
    (16, 48, 8, 16.0, (2, 5), torch.float32, "Conv1D"),  # c_attn
    (IN, OUT, R, ALPHA, (3,), torch.float64, "GatedConv1D"),
    (IN, OUT, R, ALPHA, (2, 3), torch.bfloat16, "hooked Conv1D"),
    (IN, OUT, R, ALPHA, (3,), torch.float16, "GatedConv1D"),
    # Large batches on the trap bases too (a GPT-2 prefill): a fast path from some token count on (dW.T folded into W,
    # one matmul) skips base(x) there only. Row counts from 300 to 16384, in every dtype, each trap kind.
    (IN, OUT, R, ALPHA, (4, 75), torch.float32, "hooked Conv1D"),
    (IN, OUT, R, ALPHA, (2, 1100), torch.float64, "GatedConv1D"),
    (IN, OUT, R, ALPHA, (4100,), torch.bfloat16, "ReLUConv1D"),
    (IN, OUT, R, ALPHA, (8, 2048), torch.float16, "hooked Conv1D"),
    (IN, OUT, R, ALPHA, (16384,), torch.float32, "GatedConv1D"),
)  # fmt: skip
def test_output_equals_the_base_at_init(LoRAConv1D, in_features, out_features, r, alpha, batch_shape, dtype, kind):
    """The spec's "at construction the layer computes exactly base(x)": bit for bit, in every dtype and grad mode,
    whatever the base's class computes and whatever hooks it carries (LoRALinear's check, for a Conv1D base)."""
    base = CONV1D_TRAPS[kind](in_features, out_features, dtype)
    layer = LoRAConv1D(base, r=r, alpha=alpha)
    x = torch.randn(*batch_shape, in_features, dtype=dtype)
    rows = math.prod(batch_shape)  # a fast path for many rows shows at its size only
    expect_exactly_the_base(
        layer, base, x, f"a {kind} base in {dtype_name(dtype)} and x {tuple(x.shape)} ({rows} rows)"
    )


@pytest.mark.points(1)
@pytest.mark.parametrize("kind, dtype", [("GatedConv1D", torch.float32), ("hooked Conv1D", torch.bfloat16)])
def test_output_equals_the_base_at_init_for_a_million_tokens(LoRAConv1D, kind, dtype):
    """LoRALinear's check for a Conv1D base: exactly base(x) for a million rows (8 x 131072 tokens, a GPT-2 prefill
    batch) on the trap bases, narrow: a fast path from some row count on (dW.T folded into W) skips base(x)."""
    base = CONV1D_TRAPS[kind](4, 3, dtype)
    layer = LoRAConv1D(base, r=2, alpha=ALPHA)
    expect_the_base_at_a_million_rows(layer, base, f"a {kind} base in {dtype_name(dtype)}")


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype, batch_shape", MANY_ROWS_CASES)
def test_trained_factors_compute_plain_lora_for_a_million_tokens(LoRAConv1D, dtype, batch_shape):
    """LoRALinear's check for a Conv1D base: base(x) + x @ dW.T with trained factors (B != 0) for a million rows and
    3, and 16384 and 1, narrow, in every dtype: a loop over blocks of rows that drops the last partial block."""
    _, conv, layer = make_layer(LoRAConv1D, dtype=dtype, in_features=4, out_features=3, r=2)
    expect_plain_lora_at_many_rows(
        layer, conv, 2, ALPHA / 2, batch_shape, f"LoRAConv1D(Conv1D(3, 4), r=2) in {dtype_name(dtype)}"
    )


@pytest.mark.points(1)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("grad", GRAD_MODES)
def test_leaves_the_tensor_the_base_returned_alone(LoRAConv1D, grad, mode):
    """LoRALinear's check, on a Conv1D base: a forward hook on the base (an activation observer, a feature cache)
    keeps the tensor base(x) returned; the layer adds its update into a new tensor, never into that one."""
    _, conv, layer = make_layer(LoRAConv1D)
    randomize_factors(layer, std=0.5)  # an update that shows
    layer.train(mode == "train")
    where = f"{mode} mode, {grad}"
    assert expect_the_base_output_left_alone(layer, conv, torch.randn(5, IN), grad, where, "the Conv1D"), (
        f"{where}: a forward hook on the Conv1D never ran: call base(x), which runs its hooks"
    )


@pytest.mark.points(1)
def test_B_starts_at_zero_and_A_random(LoRAConv1D):
    found = factors(make_layer(LoRAConv1D)[2], IN, OUT, R)
    A_size, B_size = found.A.abs().max().item(), found.B.abs().max().item()
    assert not (A_size == 0 and B_size > 0), "A is zero and B random at init: swap them, B = zeros and A random"
    assert B_size == 0, f"B is not zero at init (max |B| = {B_size:.3g}): initialise B with zeros"
    assert A_size > 0, "A is zero at init: with A and B both zero no gradient reaches either; make A random"
    rank = torch.linalg.matrix_rank(found.A.detach().double()).item()
    assert rank == R, (
        f"A ({R}, {IN}) has rank {rank} at init, expected r = {R}: are its rows copies of one another? Draw every "
        "entry (kaiming_uniform_ on the whole (r, in) tensor): rows that start equal get equal updates and stay equal"
    )
    # 4096 entries, as expect_nn_linear_bound_if_uniform wants them; distinct dims tell how A is stored
    in_features, out_features, r = 256, 24, 16
    layer = make_layer(LoRAConv1D, in_features=in_features, out_features=out_features, r=r)[2]
    wide = factors(layer, in_features, out_features, r)
    what = f"LoRAConv1D on a Conv1D of in={in_features}, out={out_features}, r={r}"
    expect_centred(wide.A, what)
    expect_nn_linear_bound_if_uniform(wide.A, what)
    expect_a_uniform_or_gaussian_draw(wide.A, what)  # lora_linear's: not random signs times the bound
    expect_a_fresh_A_for_every_layer(  # lora_linear's: A drawn afresh from torch's RNG for every layer
        lambda base: factors(LoRAConv1D(base, R, ALPHA), IN, OUT, R).A,
        lambda: conv1d_twin(nn.Linear(IN, OUT)),
        "LoRAConv1D",
    )


@pytest.mark.points(4)
@given(
    in_features=st.integers(2, 20),
    out_features=st.integers(2, 20),
    r=st.integers(1, 8),
    alpha=st.sampled_from([1.0, 2.5, 10.0, 16.0]),
)
@example(in_features=IN, out_features=OUT, r=R, alpha=ALPHA)
@example(in_features=16, out_features=48, r=8, alpha=16.0)  # c_attn
@example(in_features=IN, out_features=OUT, r=UNROUNDED_R, alpha=UNROUNDED_ALPHA)  # float32 would round alpha / r
def test_update_is_scaling_times_B_at_A(LoRAConv1D, in_features, out_features, r, alpha):
    assume(len({in_features, out_features, r}) == 3)  # then the shapes say which factor is which
    twin, _, layer = make_layer(
        LoRAConv1D, torch.float64, in_features=in_features, out_features=out_features, r=r, alpha=alpha
    )
    randomize_factors(layer)
    found = factors(layer, in_features, out_features, r)
    ratio, proportional = scaling_ratio(layer, twin, found)
    assert proportional, (
        "the update dW (out, in), read off the outputs, is not proportional to B @ A: "
        "is it x A^T B^T, with nothing between A and B? (the Conv1D's (in, out) weight is the base's business)"
    )
    causes = {
        alpha: "scaled by alpha instead of alpha / r?",
        1.0: "the scaling alpha / r is missing",
        alpha / r: FLOAT32_ROUNDING_IN_FLOAT64.removeprefix(": "),
    }
    cause = next((text for value, text in causes.items() if abs(ratio - value) <= 1e-6 * value), "check the scaling")
    # The ratio is read in float64 from a float64 layer: to 1e-9, so a float32-rounded alpha / r (2.4e-8 off) shows.
    assert abs(ratio - alpha / r) <= 1e-9 * alpha / r, (
        f"update dW measured {ratio:.10g} x B @ A (float64), expected alpha / r = {alpha / r:.10g} x: {cause}"
    )


@pytest.mark.points(1)
def test_the_scaling_holds_at_real_ranks(LoRAConv1D):
    """LoRALinear's check, on a Conv1D base: scaling == alpha / r and dW = scaling * B @ A at real ranks (64 to 256)."""
    twin = nn.Linear(*REAL_RANK_LAYER, dtype=torch.float64)
    conv = conv1d_twin(twin)
    call = f"LoRAConv1D(Conv1D({REAL_RANK_LAYER[1]}, {REAL_RANK_LAYER[0]}), r={{r}}, alpha={ALPHA})"
    expect_the_scaling_at_real_ranks(lambda r: LoRAConv1D(conv, r, ALPHA), twin, ALPHA, call)


@pytest.mark.points(3)
def test_gradients_reach_the_factors_and_input_but_not_the_base(LoRAConv1D):
    _, conv, layer = make_layer(LoRAConv1D, dtype=torch.float64)
    randomize_factors(layer)
    expect_plain_lora_gradients(layer, conv, factors(layer, IN, OUT, R), SCALING, "the Conv1D")


@pytest.mark.points(2)
@given(
    in_features=st.integers(5, 12),
    out_features=st.integers(13, 20),
    r=st.integers(1, 4),
    dtype=st.sampled_from(FLOAT_DTYPES),
    batch_shape=st.lists(st.integers(0, 3), max_size=3).map(tuple),
    grad=st.sampled_from(list(GRAD_MODES)),
    mode=st.sampled_from(["train", "eval", "eval-with-dropout", "train-with-dropout"]),
    converted=st.booleans(),
    kind=st.sampled_from(list(CONV1D_KINDS)),
)
@examples(
    "in_features, out_features, r, dtype, batch_shape, grad, mode, converted, kind",
    (IN, OUT, R, torch.float32, (3,), "grad off", "eval", False, "Conv1D"),  # validation, then the factors change
    (IN, OUT, R, torch.float32, (2, 3), "inference mode", "eval-with-dropout", False, "hooked Conv1D"),
    (IN, OUT, R, torch.float16, (2, 1, 3), "grad on", "train-with-dropout", False, "GatedConv1D"),
    (IN, OUT, R, torch.bfloat16, (), "grad on", "train", False, "Conv1D"),
    (IN, OUT, UNROUNDED_R, torch.float64, (2, 3), "grad on", "eval", True, "GatedConv1D"),  # model.double() after
    (IN, OUT, R, torch.bfloat16, (3,), "grad off", "train-with-dropout", True, "hooked Conv1D"),  # model.to(bf16)
    (IN, OUT, R, torch.float32, (0,), "grad on", "train-with-dropout", False, "Conv1D"),  # an empty batch
    (IN, OUT, R, torch.float64, (2, 0), "grad off", "eval", False, "GatedConv1D"),  # sequences of no tokens
    (IN, OUT, R, torch.float32, (2, 3), "grad on", "train", False, "ReLUConv1D"),  # its backward reads its output
    # Large batches on the trap bases, with trained-looking factors: a fast path from some row count on skips base(x).
    (IN, OUT, R, torch.float32, (4, 75), "grad off", "eval", False, "GatedConv1D"),
    (IN, OUT, R, torch.float64, (2100,), "inference mode", "eval", False, "hooked Conv1D"),
    (IN, OUT, R, torch.float32, (2, 260), "grad on", "train", False, "ReLUConv1D"),
)  # fmt: skip
def test_matches_plain_lora_in_every_regime(
    LoRAConv1D, in_features, out_features, r, dtype, batch_shape, grad, mode, converted, kind
):  # fmt: skip
    """LoRALinear's every-regime property, on a Conv1D base: dtype, train or eval mode, grad mode, and the base, then
    the factors, edited between calls (an optimizer step after a validation pass), then the Parameters replaced.
    The layer is built in its dtype, or ``converted``: built in float32, then ``.to(dtype)`` (model.half() after
    adapting), and meets the same comparison (float64 to 1e-9, alpha / r unrounded). Inputs are contiguous:
    transformers' Conv1D itself views x as (-1, in). The base is any of CONV1D_KINDS: with a subclass's own forward
    or hooks, the output is base(x) (its own call) plus the update of x, with trained-looking factors; a batch may be
    empty (0 rows, or sequences of 0 tokens). Then the same regime with A, B, or both frozen by the caller."""
    dropout = 0.3 if mode.endswith("with-dropout") else 0.0
    conv = CONV1D_TRAPS[kind](in_features, out_features, torch.float32 if converted else dtype)
    layer = LoRAConv1D(conv, r, ALPHA, dropout).train(mode.startswith("train"))
    built = f"built in float32, then .to({dtype_name(dtype)})" if converted else dtype_name(dtype)
    if converted:
        layer.to(dtype)
    regime = f"LoRAConv1D(a {kind}, r={r}, alpha={ALPHA}, dropout={dropout}), {built}, {mode} mode, {grad}"
    with an_in_place_update_named(regime):
        expect_plain_lora_in_regime(
            layer, conv, r, ALPHA / r, batch_shape, True, grad, regime, dropout * layer.training
        )
        # The factors' requires_grad is a regime too: A frozen (LoRA-FA), B frozen, both (a frozen adapter)
        expect_plain_lora_with_frozen_factors(
            layer, conv, r, ALPHA / r, batch_shape, True, grad, regime, dropout * layer.training
        )


@pytest.mark.points(2)
@pytest.mark.parametrize("in_features, out_features", [(16, 48), (16, 16), (64, 16)], ids=["c_attn", "square", "mlp"])
@PEFT
def test_outputs_and_gradients_equal_peft_with_fan_in_fan_out(LoRAConv1D, in_features, out_features):
    _, conv, layer = make_layer(LoRAConv1D, in_features=in_features, out_features=out_features, r=4, alpha=8.0)
    randomize(layer)
    oracle = peft_model(nn.ModuleDict({"c_attn": copy.deepcopy(conv)}), ["c_attn"], 4, 8.0, fan_in_fan_out=True)
    copy_factors_into_peft({"c_attn": layer}, oracle, 4, 8.0)
    theirs = oracle.base_model.model["c_attn"]
    x = torch.randn(3, 5, in_features)
    mine_x, their_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = torch.randn(3, 5, out_features)
    layer.train()
    mine = output(layer, mine_x)
    with quiet():
        expected = theirs(their_x)
    error = max_difference(mine, expected)
    assert error < 1e-5, (
        f"a {in_features} -> {out_features} LoRAConv1D's output differs from peft's (fan_in_fan_out=True, the same "
        f"factors) by {error:.3g}: the update is x A^T B^T scaled by alpha / r, on top of base(x)"
    )
    (mine * upstream).sum().backward()
    (expected * upstream).sum().backward()
    error = max_difference(mine_x.grad, their_x.grad)
    assert error < 1e-5, f"the input's gradient differs from peft's by {error:.3g}: does a path use x.detach()?"


@pytest.mark.points(1)
def test_dropout_never_touches_the_base_path(LoRAConv1D):
    _, conv, layer = make_layer(LoRAConv1D, dropout=0.5)
    layer.train()
    x = torch.randn(8, IN)
    with torch.no_grad():
        change = max_difference(output(layer, x), conv(x))
    assert change < 1e-5, (
        f"with dropout in train mode the output at init differs from base(x) by {change:.3g}: "
        "dropout belongs on the adapter branch's input only"
    )


@pytest.mark.points(2)
def test_dropout_zeroes_adapter_inputs_in_train_mode_only(LoRAConv1D):
    twin, _, layer = make_layer(
        LoRAConv1D, torch.float64, in_features=DROP_IN, out_features=DROP_OUT, r=DROP_R, alpha=2.0 * DROP_R,
        dropout=DROPOUT,
    )  # fmt: skip
    expect_dropout_like_nn_dropout(layer, twin, DROPOUT)


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_name)
def test_dropout_is_nn_dropouts_in_every_dtype(LoRAConv1D, dtype):
    """The float64 probe above, read in the layer's own dtype (half precision too): the same fraction p zeroed, the
    same 1 / (1 - p) rescale, a fresh mask for every element and call, whatever path a dtype takes."""
    zero = conv1d_twin(nn.Linear(SELECT_IN, SELECT_OUT, dtype=dtype))
    with torch.no_grad():
        zero.weight.zero_()
        zero.bias.zero_()
    layer = LoRAConv1D(zero, r=SELECT_R, alpha=float(SELECT_R), dropout=DROPOUT)
    expect_dropout_like_nn_dropout_in_its_dtype(layer, DROPOUT)


@pytest.mark.points(1)
def test_dropout_draws_a_fresh_mask_for_every_row_of_a_large_batch(LoRAConv1D):
    """As nn.Dropout, one draw per element of the whole batch, up to a prefill's many rows: no mask drawn for a block
    of rows and tiled down the batch."""
    conv = conv1d_twin(nn.Linear(EXACT_IN, EXACT_OUT))
    layer = LoRAConv1D(conv, r=EXACT_R, alpha=float(EXACT_R), dropout=DROPOUT)
    expect_a_fresh_mask_for_every_row(layer, conv, DROPOUT, PREFILL_MASK_ROWS)


@pytest.mark.points(1)
def test_dropout_masks_come_from_torchs_rng(LoRAConv1D):
    """As nn.Dropout: two layers draw independent masks; torch.manual_seed reproduces a mask, another seed another."""

    def make() -> tuple[nn.Module, nn.Module]:
        conv = conv1d_twin(nn.Linear(EXACT_IN, EXACT_OUT))
        return LoRAConv1D(conv, r=EXACT_R, alpha=float(EXACT_R), dropout=DROPOUT), conv

    expect_dropout_drawn_from_torchs_rng(make, DROPOUT)


@pytest.mark.points(1)
@pytest.mark.parametrize(
    "arguments", [*INVALID_ARGUMENTS, {"r": 2.5}, {"r": 2.0}], ids=arguments_id
)  # r is "an int >= 1": 2.0 is a float, even if a whole one
def test_rejects_invalid_arguments(LoRAConv1D, Conv1D, arguments):
    call = ", ".join(f"{k}={v}" for k, v in arguments.items())
    expect_value_error(lambda: LoRAConv1D(Conv1D(OUT, IN), **arguments), f"LoRAConv1D(base, {call})")


# Another library's layer named Conv1D, computing x @ weight + bias as transformers' does: not one, by the stub.
ForeignConv1D = type("Conv1D", (Conv1DLike,), {"__module__": "another_library"})


NOT_CONV1D = {  # id: a base that is no transformers Conv1D, made from the kata's LoRAConv1D and LoRALinear
    "Linear": lambda LoRAConv1D, LoRALinear: nn.Linear(IN, OUT),
    "torch-Conv1d": lambda LoRAConv1D, LoRALinear: nn.Conv1d(IN, OUT, 1),
    "another-library-Conv1D": lambda LoRAConv1D, LoRALinear: ForeignConv1D(),
    "a-LoRAConv1D": lambda LoRAConv1D, LoRALinear: make_layer(LoRAConv1D)[2],  # an adapter holds a Conv1D: is none
    "a-LoRALinear": lambda LoRAConv1D, LoRALinear: LoRALinear(nn.Linear(IN, OUT), r=R, alpha=ALPHA),
}


@pytest.mark.points(1)
@pytest.mark.parametrize("kind", list(NOT_CONV1D))
def test_rejects_a_base_that_is_not_a_transformers_conv1d(LoRAConv1D, LoRALinear, kind):
    LoRAConv1D(conv1d_twin(nn.Linear(IN, OUT)), r=R)  # the kata's own layer first: an unfinished one says so here
    base = NOT_CONV1D[kind](LoRAConv1D, LoRALinear)
    made = type(base)
    expect_value_error(
        lambda: LoRAConv1D(base, r=R),
        f"LoRAConv1D({made.__module__}.{made.__qualname__}(...))"
        + (", an adapter: LoRA is never stacked on LoRA; a base is a Conv1D itself," if kind.startswith("a-") else ""),
    )


@pytest.mark.points(1)
def test_accepts_a_subclass_of_transformers_conv1d(LoRAConv1D, Conv1D):
    base = type("ModelConv1D", (Conv1D,), {"__module__": "a_model"})(OUT, IN)  # a model's own Conv1D
    try:
        layer = LoRAConv1D(base, r=R, alpha=ALPHA)
    except ValueError as error:
        pytest.fail(
            f"LoRAConv1D(a subclass of transformers' Conv1D) raised ValueError ({error}): a subclass of Conv1D is a "
            "Conv1D; test isinstance(base, Conv1D), not type(base) is Conv1D",
            pytrace=False,
        )
    x = torch.randn(3, IN)
    with torch.no_grad():
        change = max_difference(output(layer, x), base(x))
    assert change < 1e-5, f"on a Conv1D subclass the output at init differs from base(x) by {change:.3g}"


@pytest.mark.points(1)
def test_defaults_are_r_8_alpha_16_and_no_dropout(LoRAConv1D):
    twin = nn.Linear(IN, OUT, dtype=torch.float64)
    base = conv1d_twin(twin)
    layer = LoRAConv1D(base)
    count = trained_numbers(layer, base)
    assert count == 8 * (IN + OUT), (
        f"LoRAConv1D(base) trains {count} numbers, expected r*(in+out) = {8 * (IN + OUT)} with the default r=8: "
        "keep the stub's defaults, LoRAConv1D(base, r=8, alpha=16.0, dropout=0.0)"
    )
    randomize_factors(layer)
    ratio, _ = scaling_ratio(layer, twin, factors(layer, IN, OUT, 8))
    assert abs(ratio - 2.0) <= 1e-6, f"LoRAConv1D(base) scales B @ A by {ratio:.4g}, expected 16 / 8 = 2"
    x = torch.randn(4, IN, dtype=torch.float64)
    with torch.no_grad():
        repeat = max_difference(output(layer.train(), x), output(layer, x))
    assert repeat == 0, f"LoRAConv1D(base) in train mode varies by {repeat:.3g} between calls: default dropout is 0.0"


# apply_lora_gpt2 on a tiny GPT2LMHeadModel, and on a GPT-2 of a model's own layer classes.


def own_classifier() -> nn.Module:
    """A tiny GPT2ForSequenceClassification of a model's own layer classes: every Conv1D a subclass of it, and
    ``score``, an nn.Linear subclass; no lm_head, so an nn.Linear other than lm_head is adapted and merged."""
    return with_own_layer_classes(gpt2(classifier=True))


class ValueHead(nn.Module):
    """A GPT-2 held by a wrapper as ``base`` (a value head or reward model around the LM), beside a layer named like
    an adapter's factor (``lora_A``): a name says nothing about lying inside an adapter."""

    def __init__(self) -> None:
        super().__init__()
        self.base = gpt2()
        self.lora_A = nn.Linear(self.base.config.n_embd, 1)


ADAPTER_PARTS = ("base", "lora_A", "lora_B", "dropout")  # what an adapter calls its own parts; models may too


def named_like_adapter_parts(missed: list[str]) -> str:
    """The cause of missing layers one of whose name parts an adapter uses for its own (``base``), or ""."""
    parts = [(name, part) for name in missed for part in name.split(".") if part in ADAPTER_PARTS]
    if not parts:
        return ""
    return (
        f"{parts[0][0]} was skipped for its name part {parts[0][1]!r}, as if inside an adapter: a model's own modules "
        "may be named like an adapter's parts (a wrapper holding GPT-2 as base); find the layers inside adapters by "
        "their type (a LoRA layer above them), never by name"
    )


def with_adapter_namesakes() -> nn.Module:
    """A tiny GPT-2 whose mlp.c_fc layers are of another library's Conv1D subclass named LoRAConv1D, and lm_head of
    another library's nn.Linear subclass named LoRALinear (loralib's, a fork's): layers to wrap, no adapters of this
    package, though their class names say so. The same weights, outputs and tie."""
    from transformers.pytorch_utils import Conv1D

    foreign = type("LoRAConv1D", (Conv1D,), {"__module__": "another_library"})
    model = gpt2()
    for name, module in model.named_modules():
        if name.endswith("mlp.c_fc"):
            module.__class__ = foreign
    model.lm_head.__class__ = ForeignLoRALinear
    return model


GPT2_MODELS = {
    "GPT2LMHeadModel": lambda: gpt2(n_layer=12),
    "own classes": own_classifier,
    "wrapped": ValueHead,
    "adapter namesakes": with_adapter_namesakes,
}
TARGET_CASES = [
    ("GPT2LMHeadModel", ATTENTION),
    ("GPT2LMHeadModel", ("c_proj",)),  # attn.c_proj and mlp.c_proj
    ("GPT2LMHeadModel", ("attn.c_proj",)),  # not mlp.c_proj
    ("GPT2LMHeadModel", ("1.attn.c_attn",)),  # h.1, not h.11
    ("GPT2LMHeadModel", ("c_fc", "lm_head")),  # a Conv1D and an nn.Linear
    ("GPT2LMHeadModel", ["transformer.h.11.mlp.c_proj"]),  # a whole qualified name
    ("GPT2LMHeadModel", ("c_attn", "q_proj")),  # q_proj names nothing in GPT-2: no error, as c_attn matches
    ("GPT2LMHeadModel", ("c_attn", "C_FC", "LM_head")),  # not c_fc or lm_head: names are compared case and all
    ("own classes", ("c_fc", "score")),  # subclasses of Conv1D and nn.Linear, an nn.Linear that is not lm_head
    ("wrapped", ("c_attn",)),  # a GPT-2 held as base by a wrapper: base.transformer.h.0.attn.c_attn is a target
    ("wrapped", ("c_proj", "lora_A")),  # and a layer of the wrapper's named like an adapter's factor
    ("adapter namesakes", ("c_fc", "lm_head")),  # another library's LoRAConv1D and LoRALinear: no adapters, wrapped
    # Lists of a real model's length (Llama's all-linear has 7), dotted targets among them; then one per block.
    ("GPT2LMHeadModel", ("c_attn", "attn.c_proj", "h.0.mlp.c_fc", "h.11.mlp.c_proj", "lm_head")),
    (
        "GPT2LMHeadModel",
        (
            "h.0.attn.c_attn",
            "1.attn.c_attn",
            "h.2.attn.c_proj",
            "h.3.mlp.c_fc",
            "h.4.mlp.c_proj",
            "transformer.h.11.attn.c_attn",
            "h.10.mlp.c_fc",
            "lm_head",
        ),
    ),
    (
        "GPT2LMHeadModel",
        tuple(f"h.{i}.{('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj')[i % 4]}" for i in range(12)),
    ),
]
SUBCLASSES = "a subclass of Conv1D or nn.Linear is one (models define their own): test isinstance, not type(m)"


def missed_cause(missed: list[str], kinds: dict[str, type], Conv1D) -> str:
    """Why the layers ``missed``, of those named (``kinds``: their classes), were left as they were, as far as
    their classes tell, or ""."""
    subclassed = [name for name in missed if kinds[name] not in (Conv1D, nn.Linear)]
    if not missed:
        return ""
    if len(subclassed) == len(kinds) or (subclassed and all(issubclass(kinds[n], Conv1D) for n in missed)):
        return SUBCLASSES
    if all(kinds[name] is Conv1D for name in missed):
        return "GPT-2's c_attn, c_proj and c_fc are transformers' Conv1D, not nn.Linear: adapt both kinds"
    if all(issubclass(kinds[name], nn.Linear) and name != "lm_head" for name in missed):
        return "adapt every nn.Linear a target names, a subclass of it too, not lm_head alone"
    return ""


@pytest.mark.points(1)
@pytest.mark.subject("apply_lora_gpt2")
@pytest.mark.parametrize(
    "model_name, targets", TARGET_CASES, ids=lambda value: value if isinstance(value, str) else "+".join(value)
)
def test_adapts_exactly_the_conv1d_and_linear_layers_named(
    apply_lora_gpt2, LoRAConv1D, LoRALinear, Conv1D, model_name, targets
):
    model = GPT2_MODELS[model_name]()
    expected = set(matching(model, targets, Conv1D))
    kinds = {name: type(model.get_submodule(name)) for name in expected}
    call = f"apply_lora_gpt2(model, target_modules={list(targets)}, r=2, alpha=4.0)"
    try:
        adapted(as_the_stub_allows(lambda: apply_lora_gpt2(model, target_modules=targets, r=2, alpha=4.0), call))
    except ValueError as error:
        cause = "raise only when nothing matches; a target that names no layer is no error while another one does"
        if all(kind not in (Conv1D, nn.Linear) for kind in kinds.values()):
            cause = SUBCLASSES
        cause = named_like_adapter_parts(sorted(expected)) or adapter_namesakes(kinds, LoRAConv1D, LoRALinear) or cause
        pytest.fail(f"{call} raised ValueError ({error}) though {len(expected)} layers match: {cause}", pytrace=False)
    found = set(adapters(model, LoRAConv1D, LoRALinear))
    wrong, missed = sorted(found - expected), sorted(expected - found)
    cause = (
        named_like_adapter_parts(missed)
        or adapter_namesakes({name: kinds[name] for name in missed}, LoRAConv1D, LoRALinear)
        or missed_cause(missed, kinds, Conv1D)
    )
    if not cause:
        cause = "match a name when it equals a target or ends with '.' + target"
        if dotted_target_cut_to_its_last_part(targets, wrong):
            cause = f"{dotted_target_cut_to_its_last_part(targets, wrong)}: {cause}"
        elif case_folded(targets, wrong):
            cause = case_folded(targets, wrong)
        elif any(t in name for name in wrong for t in targets):
            cause = "substring or bare endswith matching: " + cause
    assert not wrong and not missed, (
        f"{model_name}, targets {list(targets)}: expected adapters on {len(expected)} layers, got {len(found)}; "
        f"wrongly adapted {wrong[:3]}, missed {missed[:3]}: {cause}"
    )
    for name in expected:
        layer = model.get_submodule(name)
        wanted = LoRAConv1D if issubclass(kinds[name], Conv1D) else LoRALinear
        assert isinstance(layer, wanted), (
            f"{name} (a {kinds[name].__name__}) became a {type(layer).__name__}, expected {wanted.__name__}: "
            "Conv1D layers get LoRAConv1D, nn.Linear layers the package's LoRALinear"
        )


TARGET_FORMS = {  # what the stub allows for target_modules besides a tuple or list, built afresh for each call
    "one str": lambda: "c_proj",
    "a one-shot iterator": lambda: iter(["attn.c_proj", "c_fc", "lm_head"]),
}


@pytest.mark.points(1)
@pytest.mark.subject("apply_lora_gpt2")
@pytest.mark.parametrize("form", list(TARGET_FORMS))
def test_takes_one_str_or_any_iterable_of_targets(apply_lora_gpt2, LoRAConv1D, LoRALinear, Conv1D, form):
    model = gpt2()
    names = [TARGET_FORMS[form]()] if form == "one str" else list(TARGET_FORMS[form]())
    expected = sorted(matching(model, names, Conv1D))
    cause = (
        "a str is one name, not an iterable of one-letter targets"
        if form == "one str"
        else "an iterator is used up by the first module's test: turn target_modules into a tuple once"
    )
    try:
        adapted(apply_lora_gpt2(model, TARGET_FORMS[form](), r=2, alpha=4.0))
    except ValueError as error:
        pytest.fail(f"target_modules as {form} {names}: raised ValueError ({error}): {cause}", pytrace=False)
    found = sorted(adapters(model, LoRAConv1D, LoRALinear))
    assert found == expected, (
        f"target_modules as {form} {names}: expected adapters on {len(expected)} layers, got {len(found)} "
        f"(e.g. {found[:2]}): {cause}"
    )


@pytest.mark.points(2)
@pytest.mark.subject("apply_lora_gpt2")
def test_wraps_the_original_layers_in_place(apply_lora_gpt2, LoRAConv1D, LoRALinear, Conv1D):
    model = gpt2()
    originals = {name: model.get_submodule(name) for name in matching(model, (*EVERYWHERE, "lm_head"), Conv1D)}
    returned = apply_lora_gpt2(model, (*EVERYWHERE, "lm_head"), r=2, alpha=4.0)
    assert returned is model, f"apply_lora_gpt2 returned {describe(returned)}, expected the model itself"
    for name, original in originals.items():
        layer = model.get_submodule(name)
        assert any(module is original for module in layer.modules()), (
            f"{name}: the adapter does not hold the model's original layer: wrap the layer object itself"
        )


@pytest.mark.points(2)
@pytest.mark.subject("apply_lora_gpt2")
@pytest.mark.parametrize("targets", [ATTENTION, ("c_attn", "lm_head")], ids=["c_attn", "c_attn+lm_head"])
def test_lm_head_stays_tied_to_wte(apply_lora_gpt2, LoRALinear, targets):
    model = gpt2()
    embedding = model.transformer.wte.weight
    adapted(apply_lora_gpt2(model, targets, r=2, alpha=4.0))
    head = model.lm_head
    if "lm_head" not in targets:
        assert isinstance(head, nn.Linear) and not isinstance(head, LoRALinear), (
            f"targets {list(targets)} do not name lm_head, yet it became a {type(head).__name__}: adapt only the "
            "layers a target names"
        )
    assert model.transformer.wte.weight is embedding, "wte's weight was replaced: leave the embedding alone"
    tied = [m for m in head.modules() if isinstance(m, nn.Linear) and m.weight is embedding]
    assert tied, (
        f"with targets {list(targets)} lm_head's weight is no longer wte's Parameter: the tie is broken "
        "(a copy of the layer or of its weight?); wrap the very layer, whose weight is wte's"
    )
    assert not embedding.requires_grad, "wte's weight (shared with lm_head) still trains: freeze it"


@pytest.mark.points(1)
@pytest.mark.subject("apply_lora_gpt2")
@pytest.mark.parametrize(
    "model_name, targets, r",
    [("GPT2LMHeadModel", ATTENTION, 2), ("GPT2LMHeadModel", ("c_attn", "c_proj", "lm_head"), 24),  # r > 16 = min dims
     ("GPT2ForSequenceClassification", ATTENTION, 8), ("GPT2ForSequenceClassification", ("c_fc", "score"), 2)],
    ids=lambda value: value if isinstance(value, str) else "+".join(value) if isinstance(value, tuple) else f"r{value}",
)  # fmt: skip
@PEFT
def test_trains_as_many_numbers_as_peft(apply_lora_gpt2, model_name, targets, r):
    """A classifier's head (``score``) sits outside ``transformer`` and shares nothing with it: frozen unless a
    target names it, as every parameter outside the factors is."""
    model = gpt2(classifier=model_name == "GPT2ForSequenceClassification")
    oracle = peft_model(copy.deepcopy(model), targets, r, 2.0 * r, fan_in_fan_out=True)
    expected_trainable, expected_all = oracle.get_nb_trainable_parameters()
    adapted(apply_lora_gpt2(model, targets, r=r, alpha=2.0 * r))
    measured_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    measured_all = sum(p.numel() for p in model.parameters())
    outside = [name for name, p in model.named_parameters() if p.requires_grad and not name.startswith("transformer.")]
    loose = [name for name in outside if not any(name.startswith(f"{t}.") for t in targets)]  # not a factor there
    assert measured_trainable == expected_trainable, (
        f"{model_name}, targets {list(targets)}, r={r}: {measured_trainable} trainable numbers, peft trains "
        f"{expected_trainable} (r*(in+out) per adapted layer, nothing else): freeze everything but the factors"
        + (f", {loose[:2]} too (outside model.transformer: freeze the whole model, not its body)" if loose else "")
    )
    assert measured_all == expected_all, (
        f"{model_name}, targets {list(targets)}, r={r}: the model holds {measured_all} numbers, peft's "
        f"{expected_all}: a copied base or a broken lm_head tie counts twice"
    )


@pytest.mark.points(2)
@pytest.mark.subject("apply_lora_gpt2")
@pytest.mark.parametrize("targets", [ATTENTION, EVERYWHERE, ("c_attn", "lm_head")], ids="+".join)
@PEFT
def test_logits_equal_peft_with_the_same_factors(apply_lora_gpt2, LoRAConv1D, LoRALinear, targets):
    model, ids = gpt2(), token_ids()
    oracle = peft_model(copy.deepcopy(model), targets, 4, 8.0, fan_in_fan_out=True)
    plain = logits(model, ids)
    adapted(apply_lora_gpt2(model, targets, r=4, alpha=8.0))
    change = max_difference(logits(model, ids), plain)
    assert change < 1e-5, f"the logits changed by {change:.3g} right after apply_lora_gpt2: adapters start at zero"
    layers = adapters(model, LoRAConv1D, LoRALinear)
    randomize(model, std=0.2)
    copy_factors_into_peft(layers, oracle, 4, 8.0)
    error = max_difference(logits(model, ids), logits(oracle, ids))
    assert error < 1e-5, (
        f"targets {list(targets)}: with the same factors the logits differ from peft's by {error:.3g}: "
        "each adapted layer computes base(x) + (alpha / r) x A^T B^T"
    )


@pytest.mark.points(2)
@pytest.mark.subject("apply_lora_gpt2")
def test_freezes_everything_but_the_adapters(apply_lora_gpt2, LoRAConv1D, LoRALinear, Conv1D):
    model = gpt2()
    first, second = ("c_attn", "lm_head"), ("c_proj", "c_fc")  # a Conv1D and the tied nn.Linear, then new targets
    originals = {name: model.get_submodule(name) for name in matching(model, (*first, *second), Conv1D)}

    def loose(model: nn.Module) -> list[str]:
        """What trains besides the factors: found on the very layers wrapped, whatever the adapter's layout."""
        bases = [
            f"{name}'s base {parameter_name}"
            for name, base in originals.items()
            for parameter_name, parameter in base.named_parameters()
            if parameter.requires_grad
        ]
        held = {id(p) for base in originals.values() for p in base.parameters()}
        inside = {id(p) for layer in adapters(model, LoRAConv1D, LoRALinear).values() for p in trainable(layer)}
        rest = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in inside | held]
        return bases + rest

    adapted(apply_lora_gpt2(model, first, r=2, alpha=4.0))
    after_first = loose(model)
    assert not after_first, f"{len(after_first)} parameters besides the factors train, e.g. {after_first[:3]}"
    model.requires_grad_(True)  # as a user who unfroze the whole model (backbone, the adapters' bases) in between
    after_second = loose(adapted(apply_lora_gpt2(model, second, r=2, alpha=4.0)))
    assert not after_second, (
        f"expected only the factors trainable after a second call (adding {list(second)}) on a model unfrozen "
        f"since the first, measured {after_second[:3]} training: every call freezes all but the factors (the "
        "bases inside the adapters too), not only on the first call"
    )
    expected = sum(2 * sum(dimensions(base)) for base in originals.values())
    measured = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert measured == expected, f"after two calls {measured} numbers train, expected r*(in+out) per layer: {expected}"


@pytest.mark.points(1)
@pytest.mark.subject("apply_lora_gpt2")
def test_passes_r_alpha_and_dropout_on(apply_lora_gpt2, LoRAConv1D, LoRALinear):
    """r, alpha and dropout reach every adapter as given, out of the comfortable range too: r above every targeted
    layer's min(in, out) (16; peft trains r * (in + out) all the same) and a fractional alpha."""
    targets, r, alpha = (*ATTENTION, "lm_head"), 20, 7.5
    model = adapted(
        as_the_stub_allows(
            lambda: apply_lora_gpt2(gpt2(), targets, r, alpha, 0.5),
            f"apply_lora_gpt2(model, {targets}, {r}, {alpha}, 0.5)",
        )
    )
    for name, layer in adapters(model, LoRAConv1D, LoRALinear).items():
        count, dims = sum(t.numel() for t in trainable(layer)), dimensions(base_of(layer))
        measured = (getattr(layer, "r", None), getattr(layer, "alpha", None), count)
        cause = f"pass r and alpha on to {type(layer).__name__} as given"
        if measured[0] == min(dims) or count == min(dims) * sum(dims):
            cause = f"r clamped to min(in, out) = {min(dims)}? a rank above it is the caller's to choose: " + cause
        elif measured[1] == int(alpha):
            cause = f"alpha rounded to {int(alpha)} (int(alpha), as peft's LoraConfig types it?): " + cause
        assert measured == (r, alpha, r * sum(dims)), (
            f"{name}: expected r={r}, alpha={alpha} and {r * sum(dims)} trainable numbers, measured r={measured[0]}, "
            f"alpha={measured[1]}, {count}: {cause}"
        )
    randomize(model, std=0.5)
    model.train()
    x = torch.randn(2, 5, 16)
    for name, kind in (("transformer.h.0.attn.c_attn", "LoRAConv1D"), ("lm_head", "LoRALinear")):
        layer = model.get_submodule(name)
        with torch.no_grad():
            varies = max_difference(output(layer, x), output(layer, x))
        assert varies > 0, (
            f"{name}: with dropout=0.5 two train-mode calls gave the same output: pass dropout on to {kind}"
        )


@pytest.mark.points(1)
@pytest.mark.subject("apply_lora_gpt2")
@pytest.mark.parametrize("alpha", ALPHAS_AS_GIVEN.values(), ids=ALPHAS_AS_GIVEN)
def test_passes_a_zero_or_negative_alpha_on(apply_lora_gpt2, LoRAConv1D, LoRALinear, alpha):
    """alpha reaches every adapter as given, 0 (muted adapters) and a negative alpha too."""
    targets, r = (*ATTENTION, "lm_head"), 2
    call = f"apply_lora_gpt2(model, {targets}, {r}, {alpha})"
    model = adapted(as_the_stub_allows(lambda: apply_lora_gpt2(gpt2(n_layer=1), targets, r, alpha), call))
    for name, layer in adapters(model, LoRAConv1D, LoRALinear).items():
        measured = (getattr(layer, "alpha", None), getattr(layer, "scaling", None))
        cause = (
            "alpha = alpha or r? 0 is falsy, and alpha=0 is a muted adapter, not a missing alpha: " if not alpha else ""
        )
        kept = measured[1] is not None and math.isclose(float(measured[1]), alpha / r, abs_tol=1e-12)
        assert measured[0] == alpha and kept, (
            f"{call}: {name} records alpha={measured[0]}, scaling={measured[1]}, expected alpha={alpha}, "
            f"scaling={alpha / r:g}: {cause}pass alpha on to {type(layer).__name__} as given"
        )


NO_MATCH_CASES = {  # id: (targets, as what they are given: a tuple, one str of targets[0], a one-shot iterator, or
    # a tuple on a model adapted on c_attn already)
    "q_proj+v_proj": (("q_proj", "v_proj"), "a tuple"),
    "wte": (("wte",), "a tuple"),  # an nn.Embedding
    "attn": (("attn",), "a tuple"),  # a container of Conv1D layers, no layer itself
    "wte-as-one-str": (("wte",), "one str"),
    "q_proj+v_proj-as-an-iterator": (("q_proj", "v_proj"), "a one-shot iterator"),
    **{case: (targets, "a tuple") for case, targets in targets_that_name_no_layer("c_attn", "c_fc").items()},
    **{case: (targets, "a tuple") for case, targets in targets_off_by_case("c_attn", "c_fc").items()},
    "comma-joined-as-one-str": (("c_fc,c_proj",), "one str"),  # one str is one name, as on no command line
    "regex-as-one-str": (("c_.ttn",), "one str"),
    "on-an-adapted-model": (("q_proj",), "a tuple on an adapted model"),  # adapters there: still no match
}


@pytest.mark.points(1)
@pytest.mark.subject("apply_lora_gpt2")
@pytest.mark.parametrize("targets, form", NO_MATCH_CASES.values(), ids=NO_MATCH_CASES)
def test_raises_naming_the_targets_when_nothing_matches(apply_lora_gpt2, LoRAConv1D, LoRALinear, targets, form):
    model = gpt2()
    if form == "a tuple on an adapted model":
        adapted(apply_lora_gpt2(model, ATTENTION, r=2, alpha=4.0))
    before = set(adapters(model, LoRAConv1D, LoRALinear))
    given = targets[0] if form == "one str" else iter(targets) if form == "a one-shot iterator" else targets
    try:
        apply_lora_gpt2(model, given, r=2, alpha=4.0)
    except ValueError as error:
        unnamed = [t for t in targets if t not in str(error)]
        assert not unnamed, (
            f"with target_modules as {form} the ValueError does not name the targets {unnamed}: say what was looked "
            f"for, the names themselves, not the object holding them ({error})"
        )
    else:
        new = sorted(set(adapters(model, LoRAConv1D, LoRALinear)) - before)
        cause = (
            f"it adapted {len(new)} layers, e.g. {new[:2]}: {case_folded(targets, new) or NAMED_AS_STRINGS}"
            if new
            else "on a model already adapted (on c_attn) a target naming no layer is an error too"
            if form == "a tuple on an adapted model"
            else "expected a ValueError naming the targets"
        )
        pytest.fail(
            f"apply_lora_gpt2 with targets {list(targets)} as {form}, which name no Conv1D or nn.Linear, raised "
            f"nothing: {cause}",
            pytrace=False,
        )


@pytest.mark.points(1)
@pytest.mark.subject("apply_lora_gpt2")
def test_never_wraps_an_adapter_again(apply_lora_gpt2, LoRAConv1D, LoRALinear):
    model = adapted(apply_lora_gpt2(gpt2(), ("c_attn", "lm_head"), r=2, alpha=4.0))
    randomize(model, std=0.2)  # trained values, which applying again must keep
    first = adapters(model, LoRAConv1D, LoRALinear)
    values = {name: [t.detach().clone() for t in trainable(layer)] for name, layer in first.items()}
    with contextlib.suppress(ValueError):  # "nothing left to adapt" is a fair answer too
        apply_lora_gpt2(model, ("c_attn", "lm_head"), r=2, alpha=4.0)
    adapted(apply_lora_gpt2(model, ("c_attn", "lm_head", "c_fc"), r=2, alpha=4.0))  # c_fc is new: no error
    found = adapters(model, LoRAConv1D, LoRALinear)
    nested = [
        n for n, m in found.items() if any(isinstance(s, (LoRAConv1D, LoRALinear)) for s in list(m.modules())[1:])
    ]
    new = sorted(set(found) - set(first))
    assert not nested and new == [f"transformer.h.{i}.mlp.c_fc" for i in range(2)], (
        f"applying LoRA again wrapped adapters again (nested in {nested[:3]}) or adapted {new[:3]}, expected only "
        "the two mlp.c_fc: skip layers that are adapters already"
    )
    replaced = [name for name, layer in first.items() if found.get(name) is not layer]
    assert not replaced, (
        f"applying LoRA again replaced the adapters {replaced[:2]} by new ones: their trained factors are lost; "
        "keep every LoRAConv1D and LoRALinear as it is"
    )
    for name, layer in first.items():
        now = trainable(layer)
        kept = len(now) == len(values[name]) and all(torch.equal(a, b) for a, b in zip(now, values[name], strict=True))
        assert kept, (
            f"applying LoRA again changed the factors of {name} or froze them ({len(now)} trainable tensors): "
            "leave an adapter's factors and their requires_grad alone"
        )


INNER_BASE = "<the adapters' own base>"  # stands for c_attn's name inside its adapter: c_attn.base, say
FIRST, SECOND = ((2, 4.0, 0.0), (3, 7.5, 0.25))  # (r, alpha, dropout) of each call: all three differ


def with_a_shared_c_proj(adapted_block: int, alias_block: int) -> nn.Module:
    """A tiny GPT-2 whose block ``alias_block`` holds the very mlp.c_proj of block ``adapted_block`` (a shared
    layer): once that block alone is adapted, the adapter's base is still reached under a name outside the adapter."""
    model = gpt2()
    blocks = model.transformer.h
    blocks[alias_block].mlp.c_proj = blocks[adapted_block].mlp.c_proj
    return model


GPT2_SECOND_CALL_CASES = {  # id: (adapted block, its alias's block): the alias registered after the adapter, or before
    "alias-after": (0, 1),
    "alias-first": (1, 0),
}


@pytest.mark.points(1)
@pytest.mark.subject("apply_lora_gpt2")
@pytest.mark.parametrize("adapted_block, alias_block", GPT2_SECOND_CALL_CASES.values(), ids=GPT2_SECOND_CALL_CASES)
def test_a_second_call_leaves_the_adapters_bases_alone_under_every_name(
    apply_lora_gpt2, LoRAConv1D, LoRALinear, Conv1D, adapted_block, alias_block
):
    """apply_lora's check of the same name, on GPT-2: a Conv1D adapted in one block, held by another too."""
    model = with_a_shared_c_proj(adapted_block, alias_block)
    part, first, second = f"transformer.h.{adapted_block}", ("mlp.c_proj",), ("c_proj",)
    expect_the_adapters_bases_left_alone(
        model, part, first, second, lambda module, targets: adapted(apply_lora_gpt2(module, targets, 2, 4.0)),
        lambda module, targets: matching(module, targets, Conv1D), (LoRAConv1D, LoRALinear),
        lambda error: True,  # the second call has new targets: what it left is judged, whatever it raised
        f"apply_lora_gpt2(model, {list(second)}) after apply_lora_gpt2(model.{part}, {list(first)}), "
        f"h.{alias_block}.mlp.c_proj being h.{adapted_block}'s",
    )  # fmt: skip


@pytest.mark.points(2)
@pytest.mark.subject("apply_lora_gpt2")
@pytest.mark.parametrize(
    "targets",
    [("c_attn", "c_fc"), ("c_fc",), (INNER_BASE, "c_fc")],
    ids=["old-and-new-targets", "new-targets-only", "an-adapter's-base-and-new-targets"],
)
@pytest.mark.parametrize("reloaded", [False, True], ids=["", "reloaded-in-between"])
def test_a_second_call_adds_new_targets_and_keeps_the_trained_adapters(
    apply_lora_gpt2, LoRAConv1D, LoRALinear, Conv1D, targets, reloaded
):
    """apply_lora's second-call contract for GPT-2: a call of another r, alpha and dropout, after training, perhaps a
    checkpoint loaded (new Parameters in place of all of them) and the whole model unfrozen, adapts only the new
    targets, with its own r, alpha and dropout; it never wraps an adapter or a layer inside one (its base); the
    first call's adapters keep their factors, trainable, and their own r, alpha and dropout; all else is frozen."""
    model = gpt2()
    originals = {name: model.get_submodule(name) for name in matching(model, ("c_attn", "lm_head", "c_fc"), Conv1D)}
    adapted(apply_lora_gpt2(model, ("c_attn", "lm_head"), *FIRST))
    first = adapters(model, LoRAConv1D, LoRALinear)
    if reloaded:
        model.load_state_dict({name: value.clone() for name, value in model.state_dict().items()}, assign=True)
    trained = {}
    for name, layer in first.items():
        randomize_factors(layer, std=0.5)  # as after training
        trained[name] = [(p, p.detach().clone()) for p in trainable(layer)]  # the factors, seen before unfreezing
    if INNER_BASE in targets:
        name = "transformer.h.0.attn.c_attn"
        inner = next((inner for inner, m in first[name].named_modules() if m is originals[name]), "")
        assert inner, f"the adapter at {name} does not hold the model's original Conv1D: wrap the layer itself"
        targets = tuple(f"c_attn.{inner}" if target == INNER_BASE else target for target in targets)
    model.requires_grad_(True)  # as a user who unfroze the whole model (backbone, the adapters' bases) in between
    call = (
        f"a second apply_lora_gpt2(model, {list(targets)}, r={SECOND[0]}, alpha={SECOND[1]}, dropout={SECOND[2]}) on "
        f"a model adapted on ['c_attn', 'lm_head'] with r={FIRST[0]}, alpha={FIRST[1]}, dropout={FIRST[2]}, "
        + (
            "then reloaded by load_state_dict(..., assign=True), which puts new Parameters in place, "
            if reloaded
            else ""
        )
        + "then unfrozen whole"
    )
    adapted(apply_lora_gpt2(model, targets, *SECOND))
    now = adapters(model, LoRAConv1D, LoRALinear)
    kinds = (LoRAConv1D, LoRALinear)
    nested = [name for name, layer in now.items() if any(isinstance(m, kinds) for m in list(layer.modules())[1:])]
    assert not nested, (
        f"{call} wrapped an adapter or its own base again (nested in {nested[:2]}): skip every LoRAConv1D and "
        "LoRALinear, and every layer inside one"
    )
    for name, layer in first.items():
        assert now.get(name) is layer, f"{call} replaced the adapter at {name}: keep adapters as they are"
        same = all(p.requires_grad and torch.equal(p.detach(), value) for p, value in trained[name])
        assert same, (
            f"{call} froze or changed the trained factors of {name}: the adapters already there keep their values "
            "and stay trainable"
            + (
                " (find the factors on the adapters at each call, never remember Parameters from an earlier one)"
                if reloaded
                else ""
            )
        )
    expected_new = set(matching(gpt2(), ("c_fc",), Conv1D))
    missed = sorted(expected_new - set(now))
    assert not missed, f"{call} left {missed[:2]} unadapted: the new targets get adapters"
    inside = {id(p) for layer in now.values() for p in trainable(layer)}
    loose = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in inside]
    loose += [
        f"{name}'s base {parameter_name}"
        for name, base in originals.items()
        for parameter_name, parameter in base.named_parameters()
        if parameter.requires_grad
    ]
    assert not loose, (
        f"{call}: parameters other than the adapters' factors train again: {loose[:3]}: every call freezes all the "
        "model's parameters but the factors, the layers inside the adapters included"
    )
    for name, layer in now.items():
        new = name not in first
        r, alpha, dropout = SECOND if new else FIRST
        count, numbers = sum(t.numel() for t in trainable(layer)), r * sum(dimensions(originals[name]))
        randomize_factors(layer, std=0.5)  # B is zero at init: dropout on the branch shows once it is not
        x = torch.randn(64, dimensions(originals[name])[0])
        with torch.no_grad():
            varies = max_difference(output(layer.train(), x), output(layer, x)) > 0
        measured = (getattr(layer, "r", None), getattr(layer, "alpha", None), count, varies)
        whose = "new adapter" if new else "first call's adapter"
        assert measured == (r, alpha, numbers, dropout > 0), (
            f"{call}: the {whose} {name}: expected r={r}, "
            f"alpha={alpha}, {numbers} trainable numbers, {'a' if dropout else 'no'} dropout, measured "
            f"r={measured[0]}, alpha={measured[1]}, {count}, {'a' if varies else 'no'} dropout: "
            + (
                "a new adapter takes the r, alpha and dropout of the call that makes it, not an earlier call's"
                if new
                else "an adapter already there keeps its own r, alpha and dropout"
            )
        )


@pytest.mark.points(1)
@pytest.mark.subject("apply_lora_gpt2")
def test_defaults_are_c_attn_r_8_alpha_16(apply_lora_gpt2, LoRAConv1D, LoRALinear):
    model = gpt2()
    adapted(apply_lora_gpt2(model))
    names = sorted(adapters(model, LoRAConv1D, LoRALinear))
    expected = [f"transformer.h.{i}.attn.c_attn" for i in range(2)]
    assert names == expected, f"apply_lora_gpt2(model) adapted {names}, expected {expected}: keep the stub's defaults"
    layer = model.get_submodule(expected[0])
    measured = (getattr(layer, "r", None), getattr(layer, "alpha", None), sum(t.numel() for t in trainable(layer)))
    assert measured == (8, 16.0, 8 * 64), (
        f"apply_lora_gpt2(model) made r={measured[0]}, alpha={measured[1]}, {measured[2]} trainable numbers, "
        "expected r=8, alpha=16.0, 512: keep the stub's defaults"
    )


# merge_gpt2


@pytest.mark.points(1)
@pytest.mark.subject("apply_lora_gpt2")
@pytest.mark.parametrize("last", ["eval", "train"], ids=["a-block-put-in-eval-last", "a-block-put-in-train-last"])
def test_each_adapter_follows_its_own_mode(apply_lora_gpt2, LoRAConv1D, LoRALinear, last):
    """apply_lora's check on GPT-2: adapted with dropout, then one block switched on its own; each adapter's own mode
    decides whether it drops, as a LoRAConv1D or LoRALinear of its own does."""
    targets = ("c_attn", "c_fc", "lm_head")  # Conv1D and nn.Linear adapters, all taking n_embd inputs
    model = adapted(apply_lora_gpt2(gpt2(), targets, r=2, alpha=4.0, dropout=0.5))
    layers = adapters(model, LoRAConv1D, LoRALinear)
    randomize(model, std=0.5)
    first = "train" if last == "eval" else "eval"
    model.train(first == "train")
    model.transformer.h[0].train(last == "train")
    call = f"apply_lora_gpt2(model, {list(targets)}, dropout=0.5), then model.{first}() and transformer.h.0.{last}()"
    fix = "give each its own LoRAConv1D(layer, r, alpha, dropout) or LoRALinear(layer, r, alpha, dropout)"
    expect_each_adapter_following_its_own_mode(layers, torch.randn(16, model.config.n_embd), call, fix)


MIXED_DTYPES = {"h.1-float64": "transformer.h.1", "wte-float64": "transformer.wte"}  # the second: the first parameter


@pytest.mark.points(1)
@pytest.mark.subject("apply_lora_gpt2")
@pytest.mark.parametrize("part", MIXED_DTYPES.values(), ids=MIXED_DTYPES)
def test_adapters_follow_their_layers_dtypes(apply_lora_gpt2, LoRAConv1D, LoRALinear, Conv1D, part):
    """apply_lora's mixed-dtype model on GPT-2: one part in float64, the rest float32; each adapter is made in its
    layer's dtype and left there, whatever dtype the model's first parameter has."""
    model = gpt2()
    model.get_submodule(part).to(torch.float64)
    targets = ("c_attn", "c_fc", "lm_head")
    expect_every_layer_in_its_dtype(
        model,
        lambda: apply_lora_gpt2(model, targets, r=2, alpha=4.0),
        matching(model, targets, Conv1D),
        f"apply_lora_gpt2(model, {list(targets)})",
        f"a GPT-2 whose {part} is float64, the rest float32",
        "LoRAConv1D(layer, r, alpha, dropout) or LoRALinear(layer, r, alpha, dropout)",
    )


@pytest.mark.points(1)
@pytest.mark.subject("apply_lora_gpt2")
def test_a_second_call_leaves_factor_layers_alone(apply_lora_gpt2, LoRAConv1D, LoRALinear):
    """apply_lora's check on GPT-2: factors held as bias-free nn.Linear submodules are layers inside an adapter too,
    whatever their names (lora_A, say, a target a second call may name): a later call wraps nothing there."""
    model = gpt2()
    originals = {id(module) for module in model.modules()}
    adapted(apply_lora_gpt2(model, ("c_attn", "lm_head"), r=2, alpha=4.0))
    expect_factor_layers_left_alone(
        model,
        originals,
        (LoRAConv1D, LoRALinear),
        lambda names: apply_lora_gpt2(model, names, r=2, alpha=4.0),
        "apply_lora_gpt2(model, ['c_attn', 'lm_head'])",
        lambda error: Path(traceback.extract_tb(error.__traceback__)[-1].filename).stem == "gpt2_conv1d",
    )


def adapted_gpt2(apply_lora_gpt2, targets, dtype=torch.float32, **placement) -> nn.Module:
    model = gpt2().to(dtype=dtype, **placement)
    adapted(apply_lora_gpt2(model, targets, r=4, alpha=8.0))
    randomize(model, std=0.2)
    return model


@pytest.mark.points(4)
@pytest.mark.subject("merge_gpt2")
@pytest.mark.parametrize("device", DEVICES)
@PEFT
def test_merged_logits_equal_peft_merged(apply_lora_gpt2, merge_gpt2, LoRAConv1D, LoRALinear, Conv1D, device):
    ids = token_ids().to(device)
    oracle = peft_model(gpt2().to(device), EVERYWHERE, 4, 8.0, fan_in_fan_out=True)
    model = adapted_gpt2(apply_lora_gpt2, EVERYWHERE, device=device)
    copy_factors_into_peft(adapters(model, LoRAConv1D, LoRALinear), oracle, 4, 8.0)
    with quiet():
        expected = logits(oracle.merge_and_unload(), ids)
    returned = merged(merge_gpt2(model))
    assert returned is model, f"merge_gpt2 returned {describe(returned)}, expected the model itself"
    left = sorted(adapters(model, LoRAConv1D, LoRALinear))
    assert not left, f"{len(left)} adapters left after merge_gpt2, e.g. {left[:2]}: replace every one, at any depth"
    error = max_difference(logits(model, ids), expected)
    assert error < 1e-5, (
        f"merged logits differ from peft's merge_and_unload by {error:.3g}: a Conv1D's weight is (in, out), "
        "so it takes W + dW.T, with dW = scaling * B @ A (out, in)"
    )


@pytest.mark.points(3)
@pytest.mark.subject("merge_gpt2")
@given(
    in_features=st.integers(1, 12),
    out_features=st.integers(1, 12),
    r=st.integers(1, 5),
    alpha=st.sampled_from([1.0, 2.5, 4.0, 16.0, -2.5]),  # a negative alpha is merged as given
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
@example(in_features=8, out_features=8, r=2, alpha=4.0, dtype=torch.float32)  # square: a transposed update fits
@example(in_features=12, out_features=10, r=4, alpha=-2.5, dtype=torch.float32)  # alpha < 0: no sign test
@example(in_features=16, out_features=48, r=8, alpha=16.0, dtype=torch.float32)
@example(in_features=16, out_features=48, r=8, alpha=16.0, dtype=torch.float64)  # summed in float64, not float32
def test_merged_conv1d_holds_W_plus_the_update_transposed(
    LoRAConv1D, merge_gpt2, Conv1D, in_features, out_features, r, alpha, dtype
):
    twin, conv, layer = make_layer(
        LoRAConv1D, dtype, in_features=in_features, out_features=out_features, r=r, alpha=alpha
    )
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    randomize_factors(layer, std=0.3)
    weight, bias, update = conv.weight.detach().clone(), conv.bias.detach().clone(), measured_update(layer, twin)
    model = nn.Sequential(layer)
    merged(merge_gpt2(model))
    new = model[0]
    assert type(new) is Conv1D, f"the merged layer is a {type(new).__name__}, expected transformers' Conv1D itself"
    assert tuple(new.weight.shape) == (in_features, out_features), (
        f"the merged Conv1D's weight is {tuple(new.weight.shape)}, expected (in, out) = {(in_features, out_features)}"
    )
    error = max_difference(new.weight, weight + update.T)
    flipped = in_features == out_features and max_difference(new.weight, weight + update) < tolerance
    assert error < tolerance, f"the merged (in, out) {dtype} weight differs from W + dW.T by {error:.3g}" + (
        ": the update is not transposed (a Conv1D stores its weight (in, out), dW is (out, in))"
        if flipped
        else ": a float64 base is summed in float64, not float32"
        if dtype == torch.float64 and error < 1e-5
        else f": it is W alone, the update dropped for a negative alpha ({alpha}): merge scaling = alpha / r as given"
        if alpha < 0 and max_difference(new.weight, weight) < tolerance
        else ": check the scaling, the order B @ A and the transpose"
    )
    assert torch.equal(new.bias.detach(), bias), "the merged bias differs from the base's: keep it as is"
    assert (new.nf, getattr(new, "nx", in_features)) == (out_features, in_features), (
        f"the merged Conv1D has nf={new.nf}, expected out = {out_features}: build Conv1D(nf=out, nx=in)"
    )
    x = torch.randn(3, in_features, dtype=dtype)
    with torch.no_grad():
        error = max_difference(new(x), twin(x) + x @ update.T)
    assert error < tolerance, f"the merged Conv1D's outputs differ from the adapted layer's by {error:.3g}"


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
def test_merged_conv1d_follows_the_base_device_not_the_default_one(apply_lora_gpt2, merge_gpt2, Conv1D):
    """The spec's "in the base's dtype and on its device", on any machine: merged with meta as torch's default
    device, a float64 model on the CPU (as a GPU model merged with the CPU the default)."""
    model, ids = adapted_gpt2(apply_lora_gpt2, EVERYWHERE, torch.float64), token_ids()
    expected = logits(model, ids)
    returned = made_under_a_foreign_default_device(lambda: merged(merge_gpt2(model)))
    if returned is None:  # it made the new layers on the default device and moved them: right, not decidable here
        return
    names = matching(gpt2(), EVERYWHERE, Conv1D)
    layers = [model.get_submodule(name) for name in names]
    tensors = [t for layer in layers for t in (layer.weight, layer.bias) if t is not None]
    expect_on_the_base_device(tensors, torch.device("cpu"), "the merged Conv1D weights and biases are")
    dtypes = sorted({str(t.dtype) for t in tensors} - {"torch.float64"})
    assert not dtypes, (
        f"merging a float64 GPT-2 gave Conv1D weights or biases in {dtypes}: the merged Conv1D holds W + dW.T and "
        "the base's bias in the base's dtype"
    )
    error = max_difference(logits(model, ids), expected)
    assert error < 1e-9, f"the merged float64 model's logits differ from the adapted one's by {error:.3g}"


@pytest.mark.points(2)
@pytest.mark.subject("merge_gpt2")
def test_merged_weights_are_parameters_without_grad_history(apply_lora_gpt2, merge_gpt2, Conv1D):
    model = adapted_gpt2(apply_lora_gpt2, (*EVERYWHERE, "lm_head"))
    merged(merge_gpt2(model))
    for name in matching(gpt2(), (*EVERYWHERE, "lm_head"), Conv1D):
        layer = model.get_submodule(name)
        wanted = nn.Linear if name == "lm_head" else Conv1D
        kept = isinstance(layer, wanted) and type(layer).forward is wanted.forward  # a subclass keeping its forward
        assert kept, f"{name} is a {type(layer).__name__} after merging, expected {wanted.__name__}"
        weight = layer.weight
        assert weight.grad_fn is None, (
            f"{name}.weight has grad history (autograd recorded W + dW.T): compute the merge under torch.no_grad()"
        )
        assert isinstance(weight, nn.Parameter), (
            f"{name}.weight is {describe(weight)}, not an nn.Parameter, so state_dict() misses it: "
            "store it as nn.Parameter(merged, requires_grad=False)"
        )


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
@pytest.mark.parametrize("grad", GRAD_MODES)
def test_merge_gpt2_under_every_grad_mode(LoRAConv1D, LoRALinear, merge_gpt2, grad):
    """merge_gpt2 called under any grad mode of the caller's (a serving script under torch.inference_mode()): the
    merged model computes what the adapted one did, holds no inference tensor and runs under autograd."""
    _, _, conv = make_layer(LoRAConv1D, r=2, alpha=-2.5)  # a negative alpha: scaling -1.25
    model = nn.Sequential(conv, LoRALinear(nn.Linear(OUT, 8), r=2, alpha=2.5))
    for layer in model:
        randomize_factors(layer, std=0.3)
    x = torch.randn(5, IN)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    with GRAD_MODES[grad]():
        merged(merge_gpt2(model))
    call = f"merge_gpt2 of a LoRAConv1D and a LoRALinear, called under {grad}"
    made = [name for name, tensor in model.state_dict(keep_vars=True).items() if tensor.is_inference()]
    assert not made, (
        f"{call}: {made[:2]} are inference tensors, which autograd refuses (a forward with an input that requires "
        "grad, or load_state_dict into the model, raises): compute the new weights under torch.inference_mode(False) "
        "and torch.no_grad(), whatever the caller's mode"
    )
    with torch.no_grad():
        error = max_difference(model(x), expected)
    assert error < 1e-5, f"{call}: the merged outputs differ from the adapted model's by {error:.3g}, expected < 1e-5"
    x = x.detach().requires_grad_()
    try:
        model(x).sum().backward()
    except RuntimeError as error:
        pytest.fail(f"{call}: a backward pass from the merged model to its input raised {error}", pytrace=False)
    assert x.grad is not None, f"{call}: no gradient reached the input through the merged model"


@pytest.mark.points(2)
@pytest.mark.subject("merge_gpt2")
def test_merging_a_tied_lm_head_leaves_wte_alone(apply_lora_gpt2, merge_gpt2):
    """Two weights shared with a layer not adapted: lm_head's with wte, and one Conv1D weight Parameter held by
    h.0.mlp.c_fc (adapted) and h.1.mlp.c_fc (not), as models that share layers' weights hold them."""
    model, ids = gpt2(), token_ids()
    blocks = model.transformer.h
    blocks[1].mlp.c_fc.weight = blocks[0].mlp.c_fc.weight
    adapted(apply_lora_gpt2(model, ("c_attn", "lm_head", "h.0.mlp.c_fc"), r=4, alpha=8.0))
    randomize(model, std=0.2)
    expected, embedding = logits(model, ids), model.transformer.wte.weight.detach().clone()
    shared = blocks[1].mlp.c_fc.weight.detach().clone()
    merged(merge_gpt2(model))
    drift = max_difference(model.transformer.wte.weight, embedding)
    assert drift == 0, (
        f"merging lm_head changed wte's weight by {drift:.3g}: the two share one Parameter, so an in-place merge "
        "(peft's merge_and_unload does it) changes the embeddings too; give the merged lm_head a weight of its own"
    )
    drift = max_difference(blocks[1].mlp.c_fc.weight, shared)
    assert drift == 0, (
        f"merging h.0.mlp.c_fc changed the weight of h.1.mlp.c_fc (not adapted) by {drift:.3g}: the two share one "
        "Parameter, so W + dW.T written into it in place changes the other layer too; give the merged Conv1D a "
        "weight of its own"
    )
    error = max_difference(logits(model, ids), expected)
    assert error < 1e-5, f"the merged model's logits differ from the adapted one's by {error:.3g}"


def left_outside(model: nn.Module, LoRAConv1D, LoRALinear) -> dict[str, nn.Module]:
    """The modules of ``model`` under every name that is no adapter's nor inside one (a module registered both
    inside an adapter and elsewhere is listed under its other name)."""
    named = list(model.named_modules(remove_duplicate=False))
    held = [name for name, module in named if isinstance(module, (LoRAConv1D, LoRALinear))]
    return {name: module for name, module in named if not any(name == a or name.startswith(a + ".") for a in held)}


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
def test_merging_leaves_what_the_adapters_share_alone(apply_lora_gpt2, merge_gpt2, LoRAConv1D, LoRALinear):
    """The spec's "only the adapters are replaced: every other module is left as it was", where an adapter shares
    with it: a base Conv1D module registered outside its adapter too (h.1.mlp.c_proj is h.0.mlp.c_proj's base, as
    models that share layers hold them), and wte, whose weight the tied lm_head's base holds. Each module left
    in place keeps its very Parameters (a new Parameter is a change, even with the same values: an optimizer or a
    tie holding the old one no longer reaches the model), their values and requires_grad."""
    model, ids = gpt2(), token_ids()
    adapted(apply_lora_gpt2(model, ("c_attn", "lm_head", "h.0.mlp.c_proj"), r=4, alpha=8.0))
    blocks = model.transformer.h
    blocks[1].mlp.c_proj = base_of(blocks[0].mlp.c_proj)  # the same Conv1D, unadapted there
    randomize(model, std=0.2)
    expected = logits(model, ids)
    bases = {id(base_of(m)) for m in adapters(model, LoRAConv1D, LoRALinear).values()}
    before = {
        name: (module, [(n, p, p.requires_grad, p.detach().clone()) for n, p in module.named_parameters(recurse=False)])
        for name, module in left_outside(model, LoRAConv1D, LoRALinear).items()
    }
    merged(merge_gpt2(model))
    for name, (module, parameters) in before.items():
        if model.get_submodule(name) is not module:
            continue  # replaced: test_merging_twice_changes_nothing says so
        shared = id(module) in bases
        for parameter_name, parameter, requires_grad, value in parameters:
            now = getattr(module, parameter_name, None)
            where = f"{name}.{parameter_name}"
            if shared:
                assert now is parameter and torch.equal(now.detach(), value), (
                    f"merging changed {where} (max change {max_difference(now, value):.3g}), a {type(module).__name__} "
                    "that is an adapter's base and is registered outside its adapter too, where it is no adapter: "
                    "the update went into the base module itself; build a new Conv1D for the merged layer, so that "
                    "the base keeps computing W wherever else it is used"
                )
            assert now is parameter, (
                f"merging gave {where} (not an adapter) a new Parameter"
                + (f", requires_grad {requires_grad} -> {now.requires_grad}" if isinstance(now, torch.Tensor)
                   and now.requires_grad != requires_grad else "")
                + ": every module but the adapters is left as it was, its very Parameters; to merge a tied lm_head "
                "without changing wte, give the merged layer a weight of its own, not wte"
            )  # fmt: skip
            assert now.requires_grad == requires_grad and torch.equal(now.detach(), value), (
                f"merging changed {where} (not an adapter): requires_grad {requires_grad} -> {now.requires_grad}, "
                f"values by {max_difference(now, value):.3g}: leave every module but the adapters as it was"
            )
    error = max_difference(logits(model, ids), expected)
    assert error < 1e-5, f"the merged model's logits differ from the adapted one's by {error:.3g}"


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
@pytest.mark.parametrize("how", FROZEN_BEFORE_MERGING)
def test_merges_adapters_whose_factors_are_frozen(apply_lora_gpt2, merge_gpt2, LoRAConv1D, LoRALinear, how):
    """A frozen adapter (a factor frozen in training, or the model frozen for export) is merged all the same."""
    model, ids = adapted_gpt2(apply_lora_gpt2, EVERYWHERE), token_ids()  # LoRAConv1D adapters only
    expected = logits(model, ids)
    muted = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in (t for m in adapters(muted, LoRAConv1D, LoRALinear).values() for t in trainable(m)):
            tensor.zero_()  # the adapters' factors: the bases alone
    freeze_before_merging(model, list(adapters(model, LoRAConv1D, LoRALinear).values()), how)
    expect_merged_like_the_adapted(logits(merged(merge_gpt2(model)), ids), expected, logits(muted, ids), how)


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
def test_an_unadapted_lm_head_stays_tied_after_merging(apply_lora_gpt2, merge_gpt2):
    model = adapted_gpt2(apply_lora_gpt2, EVERYWHERE)
    merged(merge_gpt2(model))
    assert model.lm_head.weight is model.transformer.wte.weight, (
        "after merging, lm_head (not adapted) no longer shares wte's weight: rebuild only the adapted layers"
    )


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
def test_merges_the_same_in_train_mode_with_dropout(apply_lora_gpt2, merge_gpt2):
    model = gpt2()
    adapted(apply_lora_gpt2(model, EVERYWHERE, r=4, alpha=8.0, dropout=0.5))
    randomize(model, std=0.2)
    ids = token_ids()
    expected = logits(model, ids)
    model.transformer.ln_f.requires_grad_(True)  # the user trains the final LayerNorm too
    modes = [(name, module, module.training) for name, module in model.train().named_modules()]
    trains = {id(p): (name, p.requires_grad) for name, p in model.named_parameters()}
    merged(merge_gpt2(model))
    kept = {id(module) for module in model.modules()}  # the modules merging left in place
    flipped = [name or "the model" for name, module, mode in modes if id(module) in kept and module.training != mode]
    assert not flipped, (
        f"merging a model in train mode put {flipped[:3]} in eval mode: merge_gpt2 replaces the adapters and leaves "
        "every other module as it was (no model.eval())"
    )
    frozen = [trains[id(p)][0] for p in model.parameters() if id(p) in trains and p.requires_grad != trains[id(p)][1]]
    assert not frozen, (
        f"merging changed requires_grad of {frozen[:3]}, parameters of modules no adapter holds: merge_gpt2 "
        "replaces the adapters and leaves every other module as it was (no model.requires_grad_(False))"
    )
    error = max_difference(logits(model, ids), expected)
    assert error < 1e-5, (
        f"merged in train mode (dropout=0.5), the logits differ by {error:.3g}: compute W + dW.T from the factors, "
        "not from a forward pass"
    )


def zero_update_conv(LoRAConv1D, conv: nn.Module, zero: str) -> nn.Module:
    """A LoRAConv1D on ``conv`` whose update is zero: B all zeros (just made, never trained) or alpha 0 (muted)."""
    if zero.startswith("B zeros"):
        return LoRAConv1D(conv, 4, 8.0)
    layer = LoRAConv1D(conv, 4, 0.0)
    randomize_factors(layer, std=0.2)  # trained factors, scaling 0
    return layer


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
@pytest.mark.parametrize("zero", ["B zeros (never trained)", "alpha 0 (muted)"])
def test_merges_adapters_with_a_zero_update(apply_lora_gpt2, merge_gpt2, LoRAConv1D, LoRALinear, Conv1D, zero):
    """ "Every LoRAConv1D becomes a Conv1D": one whose update is zero too, among trained ones, and alone."""
    model, ids = gpt2(), token_ids()
    zeroed = {name: module for name, module in model.named_modules() if name.endswith("attn.c_attn")}  # the bases
    adapted(apply_lora_gpt2(model, EVERYWHERE, r=4, alpha=8.0))
    randomize(model, std=0.2)
    for name, conv in zeroed.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, zero_update_conv(LoRAConv1D, conv, zero))
    expected = logits(model, ids)
    merged(merge_gpt2(model))
    left = sorted(adapters(model, LoRAConv1D, LoRALinear))
    assert not left, (
        f"with {zero} on {list(zeroed)}, {left[:3]} are still adapters after merge_gpt2, expected every one "
        "replaced: an adapter with a zero update merges too (into W alone); skipping it as nothing to fold leaves "
        "its factors, dropout and lora keys in the model"
    )
    error = max_difference(logits(model, ids), expected)
    assert error < 1e-5, f"with {zero} on {list(zeroed)}, the merged logits differ by {error:.3g}, expected < 1e-5"
    alone = merge_gpt2(zero_update_conv(LoRAConv1D, conv1d_twin(nn.Linear(IN, OUT)), zero))
    assert type(alone) is Conv1D, (
        f"merge_gpt2(a LoRAConv1D with {zero}) returned {describe(alone)}, expected the merged Conv1D: an adapter "
        "with a zero update merges too"
    )


# Models in mixed modes: the model in eval with one block in train (a block fine-tuned with dropout on), and in train
# with one block in eval (a frozen block, its dropout off); no mode of the tree is the model's own flag alone.
MIXED_MODES = {
    "eval, h.0 in train": (False, "transformer.h.0", True),
    "train, h.1 in eval": (True, "transformer.h.1", False),
}


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
@pytest.mark.parametrize("modes", MIXED_MODES)
def test_merging_keeps_every_modules_mode(apply_lora_gpt2, merge_gpt2, modes):
    """ "Every other module is left as it was, its train or eval mode included": in a model in mixed modes, and in a
    second merge with nothing left to merge ("changes nothing")."""
    model = adapted_gpt2(apply_lora_gpt2, EVERYWHERE)
    whole, block, block_mode = MIXED_MODES[modes]
    model.train(whole).get_submodule(block).train(block_mode)
    for merge in ("merging", "a second merge (nothing left to merge)"):
        before = [(name, module, module.training) for name, module in model.named_modules()]
        merged(merge_gpt2(model))
        kept = {id(module) for module in model.modules()}  # the modules merging left in place
        flipped = [
            f"{name or 'the model'} ({'train' if mode else 'eval'} -> {'train' if module.training else 'eval'})"
            for name, module, mode in before
            if id(module) in kept and module.training != mode
        ]
        assert not flipped, (
            f"{merge} a model in {modes} mode changed the mode of {len(flipped)} modules, e.g. {flipped[:2]}, "
            "expected each as it was: merge_gpt2 replaces the adapters alone; saving model.training, calling "
            "model.eval() and restoring with model.train(was_training) sets every module to the model's one flag"
        )


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
def test_merging_twice_changes_nothing(apply_lora_gpt2, merge_gpt2, LoRAConv1D, LoRALinear):
    model, ids = adapted_gpt2(apply_lora_gpt2, ("c_attn", "h.0.mlp.c_fc")), token_ids()  # c_proj, h.1's c_fc not
    inside = {id(m) for a in adapters(model, LoRAConv1D, LoRALinear).values() for m in a.modules()}
    kept = {name: module for name, module in model.named_modules() if id(module) not in inside}
    once = logits(merged(merge_gpt2(model)), ids)
    replaced = [name or "the model" for name, module in kept.items() if model.get_submodule(name) is not module]
    assert not replaced, (
        f"merging replaced {len(replaced)} modules no adapter held, e.g. {replaced[:3]}: each must be the same object "
        "after merge_gpt2, which replaces the adapters alone (no copy of an unadapted Conv1D or of the rest)"
    )
    before = dict(model.named_modules())
    error = max_difference(logits(merged(merge_gpt2(model)), ids), once)
    assert error == 0, f"a second merge_gpt2 changed the logits by {error:.3g}: merging must be idempotent"
    replaced = [name or "the model" for name, module in before.items() if model.get_submodule(name) is not module]
    assert not replaced, (
        f"a second merge_gpt2 (no adapter left) replaced {replaced[:3]}: each module must be the same object after "
        "it, as nothing is left to merge"
    )


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
@pytest.mark.parametrize("kind", ["LoRAConv1D", "LoRALinear"])
def test_merging_a_single_layer_returns_the_conv1d(LoRAConv1D, LoRALinear, merge_gpt2, Conv1D, kind):
    twin, _, layer = make_layer(LoRAConv1D)
    layer = layer if kind == "LoRAConv1D" else LoRALinear(twin, r=R, alpha=ALPHA)
    randomize_factors(layer)
    x = torch.randn(5, IN)
    with torch.no_grad():
        expected = output(layer.eval(), x)
    returned = merge_gpt2(layer)
    if kind == "LoRAConv1D":
        assert type(returned) is Conv1D, f"merge_gpt2(a LoRAConv1D) returned {describe(returned)}, expected a Conv1D"
    else:
        assert isinstance(returned, nn.Linear) and not isinstance(returned, LoRALinear), (
            f"merge_gpt2(a LoRALinear) returned {describe(returned)}, expected the merged nn.Linear, as "
            "merge_weights(a LoRALinear) returns it"
        )
    error = max_difference(returned(x), expected)
    assert error < 1e-5, f"the layer merge_gpt2 returned computes outputs {error:.3g} away from the {kind}'s"


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
def test_merges_an_adapter_registered_under_two_names(apply_lora_gpt2, merge_gpt2, LoRAConv1D, LoRALinear):
    model, ids = adapted_gpt2(apply_lora_gpt2, ("c_attn", "lm_head")), token_ids()
    blocks = model.transformer.h
    blocks[1].attn.c_attn = blocks[0].attn.c_attn  # two blocks share one adapter (ALBERT shares whole layers)
    model.transformer.add_module("output_head", model.lm_head)  # a second handle on the adapted lm_head
    blocks[0].attn.add_module("qkv", blocks[0].attn.c_attn)  # and one beside it, in the same parent
    expected = logits(model, ids)
    merged(merge_gpt2(model))
    left = [n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, (LoRAConv1D, LoRALinear))]
    assert not left, (
        f"merge_gpt2 left {len(left)} adapters under a second name, e.g. {left[:2]}: named_modules() and "
        "named_children() list a module registered twice only once; walk named_modules(remove_duplicate=False), "
        "as merge_weights does"
    )
    error = max_difference(logits(model, ids), expected)
    assert error < 1e-5, f"the merged model's logits differ from the adapted one's by {error:.3g}"


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
def test_merges_a_negative_alpha_in_every_dtype(LoRAConv1D, LoRALinear, merge_gpt2):
    """alpha is kept as given, its sign too: a negative alpha (scaling < 0) merged in every dtype, the fp16/bf16
    paths included (a sqrt of the scaling, or a sign test that skips the fold, fails here), Conv1D and nn.Linear."""
    r, alpha = UNROUNDED_R, -UNROUNDED_ALPHA
    bases = {f"Conv1D_{dtype_name(dtype)}": conv1d_twin(nn.Linear(IN, OUT, dtype=dtype)) for dtype in FLOAT_DTYPES}
    bases["Linear_float16"] = nn.Linear(IN, OUT, dtype=torch.float16)
    wrapper = {name: LoRALinear if name.startswith("Linear") else LoRAConv1D for name in bases}
    model = nn.ModuleDict({name: wrapper[name](base, r=r, alpha=alpha) for name, base in bases.items()})
    exact = {}
    for name, layer in model.items():
        randomize_factors(layer, std=0.3)
        found = factors(layer, IN, OUT, r)
        update = alpha / r * found.B.double() @ found.A.double()  # (out, in)
        weight = bases[name].weight.detach().double()
        exact[name] = weight + (update.T if name.startswith("Conv1D") else update)
    call = f"merge_gpt2 of adapters with alpha {alpha:g} (r={r})"
    with a_merge_of_any_alpha(call):
        merged(merge_gpt2(model))
    for name, expected in exact.items():
        where = f"{call}: the merged {name} ({dtype_name(model[name].weight.dtype)})"
        expect_merged_weight(
            model[name].weight, expected, where, "a negative alpha is merged as given (scaling = alpha / r < 0)"
        )


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
@pytest.mark.parametrize("shared", ["one Conv1D", "one weight"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_name)
def test_merges_adapters_that_share_a_conv1d(LoRAConv1D, merge_gpt2, dtype, shared):
    """merge_weights' shared-base case for Conv1D, in every dtype: two adapters (two tasks trained on one frozen
    layer) on one Conv1D, or on two Conv1D that share one weight Parameter (tied layers). Each merged layer computes
    what its own adapter did, so neither may fold its update into the weight both hold."""
    conv = conv1d_twin(nn.Linear(IN, OUT, dtype=dtype))
    other = conv if shared == "one Conv1D" else conv1d_twin(nn.Linear(IN, OUT, dtype=dtype))
    other.weight = conv.weight
    model = nn.ModuleDict({"task_a": LoRAConv1D(conv, r=4, alpha=8.0), "task_b": LoRAConv1D(other, r=2, alpha=6.0)})
    for layer in model.values():
        randomize_factors(layer, std=0.5)
    x = torch.randn(5, IN, dtype=dtype)
    with torch.no_grad():
        expected = {name: output(layer.eval(), x) for name, layer in model.items()}
    merged(merge_gpt2(model))
    tolerance = 4 * RELATIVE_TOLERANCE[dtype] if dtype != torch.float32 else 1e-5
    for name, layer in model.items():
        with torch.no_grad():
            y = output(layer, x)
        error = relative_error(y, expected[name]) if dtype != torch.float32 else max_difference(y, expected[name])
        assert error < tolerance, (
            f"two {dtype_name(dtype)} adapters on {shared} (two tasks, or tied layers), merged: model[{name!r}] "
            f"differs from what its adapter computed by {error:.3g}, expected < {tolerance:.0e}: "
            "the weight is held by the other adapter too, so an update folded into it in place changes both and both "
            "wrote into it; build a new Conv1D (or reuse the base only where nothing else holds its weight)"
        )


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
def test_merges_a_model_of_its_own_layer_classes(merge_gpt2, LoRAConv1D, LoRALinear, Conv1D):
    model, ids = own_classifier().requires_grad_(False), token_ids()
    targets = (*EVERYWHERE, "score")  # score: an nn.Linear subclass that is not lm_head (the classifier has none)
    names = matching(model, targets, Conv1D)
    for name in names:  # the grader's own wrapping: what apply_lora_gpt2 does is checked above
        parent, _, child = name.rpartition(".")
        layer = model.get_submodule(name)
        wrapper = LoRAConv1D if isinstance(layer, Conv1D) else LoRALinear
        if name.startswith("transformer.h.1.") and wrapper is LoRAConv1D:  # a model's own subclass of the adapter
            wrapper = own_class(LoRAConv1D)  # (peft's layers are subclassed too): each one is a LoRAConv1D
        setattr(model.get_submodule(parent), child, wrapper(layer, r=4, alpha=8.0))
    randomize(model, std=0.2)
    expected = logits(model, ids)
    merged(merge_gpt2(model))
    left = [n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, (LoRAConv1D, LoRALinear))]
    subclassed = [n for n in left if type(model.get_submodule(n)) is own_class(LoRAConv1D)]
    assert not subclassed, (
        f"merge_gpt2 left {subclassed[:2]}, of a model's own subclass of LoRAConv1D, unmerged: a subclass of "
        "LoRAConv1D is one; tell adapters by isinstance, not type(m) is LoRAConv1D"
    )
    assert not left, (
        f"merge_gpt2 left {left[:2]} adapted on a GPT2ForSequenceClassification: merge every LoRALinear, not lm_head "
        "alone (merge_weights(model) finds them all)"
    )
    lone = own_class(LoRAConv1D)(conv1d_twin(nn.Linear(IN, OUT)), r=R, alpha=ALPHA)
    returned = merge_gpt2(lone)
    assert type(returned) is Conv1D, (
        f"merge_gpt2(a model's own subclass of LoRAConv1D) returned {describe(returned)}, expected the merged "
        "Conv1D: a subclass of LoRAConv1D is one; test isinstance(model, LoRAConv1D)"
    )
    kinds = {name: type(model.get_submodule(name)) for name in names if name != "score"}
    subclassed = {name: f"{kind.__module__}.{kind.__qualname__}" for name, kind in kinds.items() if kind is not Conv1D}
    assert not subclassed, (
        f"merged, {next(iter(subclassed))} is of class {next(iter(subclassed.values()))} (its base's), expected "
        "transformers' Conv1D itself: build a new Conv1D(nf, nx), not a copy of the base or the base itself"
    )
    error = max_difference(logits(model, ids), expected)
    assert error < 1e-5, f"the merged model's logits differ from the adapted one's by {error:.3g}"


HALF_MERGED = ("transformer.h.0.mlp.c_fc", "lm_head")  # a Conv1D 16 -> 64 and the tied nn.Linear 16 -> 64
# alpha / r = 10 / 3, which no half dtype holds: a scaling rounded to the weight's dtype before the float32 sum
# shows (a power of two, 16 / 8, hides it)
HALF_R, HALF_ALPHA = UNROUNDED_R, UNROUNDED_ALPHA


def nearly_cancelling(layer: nn.Module, r: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Give the base of ``layer`` (random factors) a weight that nearly cancels the update in every other row,
    where a sum rounded twice is off by many units in the last place; return W + update added in float32 and
    rounded once, in the base's layout ((in, out) for a Conv1D, (out, in) for an nn.Linear), and the same sum with
    the scaling rounded to the weight's dtype first (what a scaling taken as W.new_tensor(scaling) gives)."""
    base = base_of(layer)
    A, B = lora_factors(layer, r, scaling)
    dtype = base.weight.dtype
    with torch.no_grad():
        product = B.float() @ A.float()  # (out, in)
        product = product if isinstance(base, nn.Linear) else product.T
        update = scaling * product
        weight = torch.randn(update.shape, device=update.device) * 0.02
        weight[::2] = -update[::2] + 1e-3 * torch.randn_like(update[::2])
        base.weight.copy_(weight)
        rounded_scaling = torch.tensor(scaling, dtype=dtype).item()
        return (base.weight.float() + update).to(dtype), (base.weight.float() + rounded_scaling * product).to(dtype)


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_merges_in_float32_and_rounds_once(
    apply_lora_gpt2, merge_gpt2, LoRAConv1D, Conv1D, device, dtype
):
    model = gpt2().to(device=device, dtype=dtype)
    adapted(apply_lora_gpt2(model, HALF_MERGED, r=HALF_R, alpha=HALF_ALPHA))
    randomize(model, std=0.2)
    scaling = HALF_ALPHA / HALF_R
    rounded_once = {name: nearly_cancelling(model.get_submodule(name), HALF_R, scaling) for name in HALF_MERGED}
    biases = {name: base_of(model.get_submodule(name)).bias for name in HALF_MERGED}  # trained: none is all zero
    biases = {name: None if bias is None else bias.detach().clone() for name, bias in biases.items()}
    merged(merge_gpt2(model))
    for name, (expected, with_rounded_scaling) in rounded_once.items():
        weight = model.get_submodule(name).weight
        assert weight.dtype == dtype and weight.device.type == device, (
            f"{name}: merged weight is {weight.dtype} on {weight.device}, expected {dtype} on {device}"
        )
        assert weight.shape == expected.shape, (
            f"{name}: merged weight is {tuple(weight.shape)}, expected {tuple(expected.shape)}"
        )
        ulp = (torch.nextafter(expected, torch.full_like(expected, float("inf"))) - expected).float().abs()
        off = ((weight.float() - expected.float()).abs() / ulp).max().item()
        scaling_rounded = torch.equal(weight.detach(), with_rounded_scaling)
        assert off <= 1, (
            f"{name}: merged {dtype} weights are up to {off:.3g} units in the last place from W + dW summed in "
            f"float32 and rounded once (r={HALF_R}, alpha={HALF_ALPHA}): "
            + (
                f"the scaling alpha / r was rounded to {dtype_name(dtype)} before the sum (a tensor in the weight's "
                "dtype, W.new_tensor(scaling)?): multiply the float32 product by the Python float alpha / r"
                if scaling_rounded
                else "upcast W, A and B to float32, add, then cast back, for Conv1D and nn.Linear layers alike"
            )
        )
        bias = model.get_submodule(name).bias
        assert bias is None or bias.dtype == dtype, (
            f"{name}: merged bias is {bias.dtype}, expected {dtype}: keep the base's bias as it is"
        )
        if biases[name] is not None:
            change = max_difference(bias, biases[name]) if bias is not None else float("inf")
            zeroed = bias is not None and not bias.detach().any()
            assert change == 0, (
                f"{name}: the merged {dtype_name(dtype)} bias differs from the base's (trained, non-zero) by "
                f"{change:.3g}: "
                + ("it is all zero, a fresh Conv1D's own: " if zeroed else "")
                + "give the merged layer the base's bias, in every dtype (in the half-precision path too)"
            )
    try:
        logits(model, token_ids().to(device))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        pytest.fail(f"the merged {dtype} model's forward raised {first_line!r}: keep every tensor in {dtype}", False)
    big = Conv1D(REAL_MODEL_WIDTH, REAL_MODEL_WIDTH).to(device=device, dtype=dtype)  # and a real model's layer
    expect_a_real_models_layer_merged_in_float32(
        big,
        LoRAConv1D(big, r=HALF_R, alpha=HALF_ALPHA),
        lambda adapter: expect_instance(merge_gpt2(adapter), Conv1D, "merge_gpt2(a LoRAConv1D)", "the new Conv1D"),
        HALF_R,
        HALF_ALPHA / HALF_R,
        "merge_gpt2(a LoRAConv1D)'s weight",
    )


@pytest.mark.points(1)
@pytest.mark.subject("merge_gpt2")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_a_real_models_conv1d_merges_every_row_and_column_in_every_dtype(merge_gpt2, LoRAConv1D, Conv1D, dtype):
    # trained factors, a real model's layer (2**22 weights) in full precision too, sizes no block divides
    big = Conv1D(REAL_MODEL_ROWS, REAL_MODEL_COLUMNS).to(dtype)
    expect_a_real_models_layer_merged_in_every_row_and_column(
        big,
        LoRAConv1D(big, r=HALF_R, alpha=HALF_ALPHA),
        lambda adapter: expect_instance(merge_gpt2(adapter), Conv1D, "merge_gpt2(a LoRAConv1D)", "the new Conv1D"),
        HALF_R,
        HALF_ALPHA / HALF_R,
        "merge_gpt2(a LoRAConv1D)'s weight",
    )
