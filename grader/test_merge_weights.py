"""Checks of the `merge_weights` kata: merge_weights(model) folds every LoRALinear into an nn.Linear."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn

from grader.models import MODEL_ZOO, ToyTransformer, inputs, matching_linears, zoo_inputs
from grader.probes import (
    DEVICES,
    FLOAT_DTYPES,
    FROZEN_BEFORE_MERGING,
    GRAD_MODES,
    HALF_DTYPES,
    REAL_MODEL_COLUMNS,
    REAL_MODEL_ROWS,
    REAL_MODEL_WIDTH,
    RELATIVE_TOLERANCE,
    UNROUNDED_ALPHA,
    UNROUNDED_R,
    a_merge_of_any_alpha,
    default_dtype,
    describe,
    dtype_name,
    expect_a_real_models_layer_merged_in_every_row_and_column,
    expect_a_real_models_layer_merged_in_float32,
    expect_instance,
    expect_merged_like_the_adapted,
    expect_merged_weight,
    expect_on_the_base_device,
    factors,
    freeze_before_merging,
    made_under_a_foreign_default_device,
    make_a_subclass_instance,
    max_difference,
    measured_update,
    randomize_factors,
    relative_error,
    rounded_once_from_float64,
    trainable,
)
from grader.signatures import expect_the_stubs_signatures


@pytest.mark.points(1)
def test_takes_the_stubs_parameters(implementation, LoRALinear, merge_weights):
    """Callers pass the stub's parameters by name or by position: each definition takes them as the stub does."""
    expect_the_stubs_signatures(implementation, "merge_weights")
    # Then a call into the kata: an unimplemented stub, its signatures right, scores nothing here.
    merge_weights(nn.Sequential(LoRALinear(nn.Linear(4, 3))))


SUBJECT = "merge_weights"  # the definition a failing check points at

TARGETS = ("q_proj", "v_proj", "fc1", "head")  # "head" has no bias
FLOAT64_TOLERANCE = 1e-12  # on a float64 W + dW, relative to the sizes of W and dW: float32 is 1e-7 off


def adapted_model(LoRALinear, dropout=0.0, **placement):
    """A ToyTransformer whose targeted layers the grader itself wrapped and gave trained-looking factors."""
    model = ToyTransformer().to(**placement)
    for name in matching_linears(model, TARGETS):
        parent, _, child = name.rpartition(".")
        layer = LoRALinear(model.get_submodule(name), r=2, alpha=4.0, dropout=dropout)
        randomize_factors(layer, std=0.3)
        setattr(model.get_submodule(parent), child, layer)
    return model


def returned_model(returned: object) -> nn.Module:
    """What merge_weights returned for a model, after failing the check unless it is a model."""
    return expect_instance(returned, nn.Module, "merge_weights(model)", "the model itself, merged in place")


def returned_linear(returned: object) -> nn.Linear:
    """What merge_weights returned for a single LoRALinear, after failing the check unless it is an nn.Linear."""
    return expect_instance(returned, nn.Linear, "merge_weights(a LoRALinear)", "the new nn.Linear")


def expect_a_merged_linear(layer: object, LoRALinear: type, call: str) -> None:
    """Fail unless ``layer`` is an nn.Linear computing nn.Linear's own forward, and no adapter: a subclass of nn.Linear
    that keeps that forward (one that records what was merged, say) is an nn.Linear, as the stub allows."""
    assert not isinstance(layer, LoRALinear), (
        f"{call} is {describe(layer)}, still a LoRALinear, expected the merged nn.Linear: find adapters with "
        "isinstance(module, LoRALinear) (a subclass of LoRALinear is a LoRALinear too) and replace each"
    )
    assert isinstance(layer, nn.Linear), f"{call} is {describe(layer)}, expected the merged nn.Linear"
    assert type(layer).forward is nn.Linear.forward, (
        f"{call} is a {type(layer).__name__}, an nn.Linear subclass with its own forward, expected one computing "
        "nn.Linear's forward, F.linear(x, W + dW, bias): a new nn.Linear (or the base itself, its class kept)"
    )


def expect_usable_with_autograd(model: nn.Module, x: torch.Tensor, call: str) -> None:
    """Fail unless the merged ``model`` holds no inference tensor and backpropagates to an input that requires grad."""
    made = [name for name, tensor in model.state_dict(keep_vars=True).items() if tensor.is_inference()]
    assert not made, (
        f"{call}: {made[:2]} are inference tensors (made under torch.inference_mode()), which autograd refuses: "
        "the merged model fails with an input that requires grad, and load_state_dict into it raises: merge under "
        "torch.no_grad()"
    )
    x = x.detach().requires_grad_()
    try:
        model.eval()(x).sum().backward()
    except RuntimeError as error:
        pytest.fail(
            f"{call}: a backward pass from the merged model in eval mode to its input raised {error}: the merged "
            "layers must work under autograd (merge under torch.no_grad(), not torch.inference_mode())",
            pytrace=False,
        )
    assert x.grad is not None, f"{call}: no gradient reached the input through the merged model"


def eval_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.points(4)
@pytest.mark.parametrize("device", DEVICES)
def test_merged_model_computes_what_the_adapted_one_did(LoRALinear, merge_weights, device):
    model, x = adapted_model(LoRALinear, device=device), inputs(device=device)
    expected = eval_outputs(model, x)
    error = max_difference(eval_outputs(returned_model(merge_weights(model)), x), expected)
    assert error < 1e-5, f"merged model's outputs differ from the adapted model's by {error:.3g}, expected < 1e-5"
    expect_usable_with_autograd(model, x, "merge_weights(model) of a model in eval mode")  # eval mode, as for serving


@pytest.mark.points(1)
@pytest.mark.parametrize("how", FROZEN_BEFORE_MERGING)
def test_merges_adapters_whose_factors_are_frozen(LoRALinear, merge_weights, how):
    """A frozen adapter (a factor frozen in training, or the model frozen for export) is merged all the same."""
    model, x = adapted_model(LoRALinear), inputs()
    expected = eval_outputs(model, x)
    muted = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in (t for m in muted.modules() if isinstance(m, LoRALinear) for t in trainable(m)):
            tensor.zero_()  # the adapters' factors: the bases alone
    freeze_before_merging(model, [m for m in model.modules() if isinstance(m, LoRALinear)], how)
    expect_merged_like_the_adapted(
        eval_outputs(returned_model(merge_weights(model)), x), expected, eval_outputs(muted, x), how
    )


@pytest.mark.points(4)
@given(
    in_features=st.integers(1, 16),
    out_features=st.integers(1, 16),
    r=st.integers(1, 6),
    alpha=st.sampled_from([1.0, 2.5, 4.0, 16.0, -2.5]),  # a negative alpha is merged as given
    bias=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
@example(in_features=8, out_features=8, r=2, alpha=4.0, bias=False, dtype=torch.float32)  # a transposed update fits
@example(in_features=12, out_features=10, r=4, alpha=8.0, bias=True, dtype=torch.float32)
@example(in_features=12, out_features=10, r=4, alpha=8.0, bias=True, dtype=torch.float64)
@example(in_features=12, out_features=10, r=4, alpha=-2.5, bias=True, dtype=torch.float32)  # alpha < 0
def test_merged_weight_is_W_plus_the_update(
    LoRALinear, merge_weights, in_features, out_features, r, alpha, bias, dtype
):  # fmt: skip
    base = nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
    layer = LoRALinear(base, r=r, alpha=alpha)
    randomize_factors(layer, std=0.3)
    weight, update = base.weight.detach().clone(), measured_update(layer, base)
    expected_bias = None if base.bias is None else base.bias.detach().clone()
    model = nn.Sequential(nn.LayerNorm(2, dtype=torch.bfloat16), layer)  # a half-precision first parameter
    returned_model(merge_weights(model))
    new = model[1]
    expect_a_merged_linear(new, LoRALinear, "the merged layer")
    declared = (new.in_features, new.out_features)
    assert declared == (in_features, out_features), (
        f"the merged layer says in_features={declared[0]}, out_features={declared[1]}, expected {in_features} and "
        f"{out_features} (its weight is (out, in)): nn.Linear(base.in_features, base.out_features), in first"
    )
    error = max_difference(new.weight, weight + update)
    transposed = in_features == out_features and max_difference(new.weight, weight + update.T) < 1e-5
    assert error < 1e-5, f"merged weight differs from W + scaling B @ A by {error:.3g}" + (
        ": the update is transposed, (B @ A).T" if transposed else ": check the scaling and the order B @ A"
    )
    tolerance = FLOAT64_TOLERANCE * (1 + weight.abs().max().item() + update.abs().max().item())
    assert dtype != torch.float64 or error <= tolerance, (
        f"the merged {dtype} weight differs from W + scaling B @ A by {error:.3g}, expected under {tolerance:.1g}: "
        "summed in float32? Only fp16/bf16 weights are summed in float32 (each layer's own dtype decides, not the "
        "model's first parameter, bfloat16 here); add in the base's dtype otherwise"
    )
    if expected_bias is None:
        assert new.bias is None, "the base had no bias but the merged layer has one: keep bias=None"
    else:
        assert new.bias is not None, "the merged layer lost the base's bias: keep it"
        assert torch.equal(new.bias.detach(), expected_bias), "the merged bias differs from the base's: keep it as is"


@pytest.mark.points(3)
def test_replaces_every_adapter_by_a_plain_linear(LoRALinear, merge_weights):
    model = adapted_model(LoRALinear)
    subclassed = matching_linears(ToyTransformer(), ["head"])[0]
    make_a_subclass_instance(model.get_submodule(subclassed), LoRALinear)  # a user's subclass: an adapter too
    returned = merge_weights(model)
    assert returned is model, f"merge_weights returned {describe(returned)}, expected the model itself"
    left = [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    assert not left, f"{len(left)} LoRALinear left after merging, e.g. {left[:3]}: replace every one, at any depth" + (
        f" ({subclassed} is an instance of a subclass of LoRALinear: find adapters with isinstance, not "
        "type(m) is LoRALinear)"
        if subclassed in left
        else ""
    )
    for name in matching_linears(ToyTransformer(), TARGETS):
        layer = model.get_submodule(name)
        expect_a_merged_linear(layer, LoRALinear, f"{name} after merging")
        weight = layer.weight
        assert weight.grad_fn is None, (
            f"{name}.weight has grad history (autograd recorded the sum W + scaling B @ A): "
            "compute the merge under torch.no_grad()"
        )
        assert isinstance(weight, nn.Parameter), (
            f"{name}.weight is {describe(weight)}, not an nn.Parameter, so model.parameters() and state_dict() "
            "miss it: store it as nn.Parameter(merged, requires_grad=False)"
        )
    expect_usable_with_autograd(model, inputs(), "merge_weights(model)")


# Adapters whose update is zero, among trained ones: B all zeros (just applied, never trained) and alpha 0 (muted).
def muted(LoRALinear, base: nn.Linear) -> nn.Module:
    layer = LoRALinear(base, r=2, alpha=0.0)
    randomize_factors(layer, std=0.3)  # trained factors, scaling 0
    return layer


ZERO_UPDATES = {
    "B zeros (never trained)": lambda LoRALinear, base: LoRALinear(base, r=2, alpha=4.0),
    "alpha 0 (muted)": muted,
}


@pytest.mark.points(1)
@pytest.mark.parametrize("zero", ZERO_UPDATES)
def test_merges_adapters_with_a_zero_update(LoRALinear, merge_weights, zero):
    """ "Replace every LoRALinear": one whose update is zero too, which merges to W (no adapter, no factor left)."""
    model = ToyTransformer()
    names = matching_linears(model, TARGETS)
    zeroed = [name for name in names if name.endswith(("v_proj", "head"))]
    for name in names:  # the adapters the grader makes, each wrapping the model's own layer
        parent, _, child = name.rpartition(".")
        base = model.get_submodule(name)
        if name in zeroed:
            layer = ZERO_UPDATES[zero](LoRALinear, base)
        else:
            layer = LoRALinear(base, r=2, alpha=4.0)
            randomize_factors(layer, std=0.3)
        setattr(model.get_submodule(parent), child, layer)
    x = inputs()
    expected = eval_outputs(model, x)
    merge_weights(model)
    left = [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    assert not left, (
        f"with {zero} on {zeroed[:3]}, {left[:3]} are still LoRALinear after merging, expected every adapter replaced: "
        "an adapter with a zero update merges too (into W alone); skipping it as nothing to fold leaves its "
        "factors, dropout and lora keys in the model"
    )
    for name in matching_linears(ToyTransformer(), TARGETS):
        expect_a_merged_linear(model.get_submodule(name), LoRALinear, f"{name} after merging")
    error = max_difference(eval_outputs(model, x), expected)
    assert error < 1e-5, (
        f"with {zero} on {zeroed[:3]}, the merged model's outputs differ by {error:.3g}, expected < 1e-5"
    )
    alone = merge_weights(ZERO_UPDATES[zero](LoRALinear, nn.Linear(12, 10)))
    expect_a_merged_linear(alone, LoRALinear, f"merge_weights(a LoRALinear with {zero})")


@pytest.mark.points(1)
@pytest.mark.parametrize("kind", ["LoRALinear", "a subclass of it"])
def test_merging_a_single_layer_returns_the_linear(LoRALinear, merge_weights, kind):
    base = nn.Linear(12, 10)
    layer = LoRALinear(base, r=4, alpha=8.0)
    if kind != "LoRALinear":
        make_a_subclass_instance(layer, LoRALinear)
    randomize_factors(layer)
    x = torch.randn(5, 12)
    expected = eval_outputs(layer, x)
    returned = merge_weights(layer)
    call = f"merge_weights({type(layer).__name__}" + (", a subclass of LoRALinear)" if kind != "LoRALinear" else ")")
    if kind != "LoRALinear" and isinstance(returned, LoRALinear):  # the adapter itself, or a model around it
        pytest.fail(
            f"{call} returned {describe(returned)}, expected the merged nn.Linear: a subclass of LoRALinear is a "
            "LoRALinear, test isinstance(model, LoRALinear)",
            pytrace=False,
        )
    expect_a_merged_linear(returned, LoRALinear, f"what {call} returned")
    error = max_difference(returned(x), expected)
    assert error < 1e-5, f"{call}: the merged layer's outputs differ from the adapter's by {error:.3g}"


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_merges_adapters_that_share_a_base(LoRALinear, merge_weights, dtype):
    """Two adapters on one base (two tasks trained on one frozen layer), of any dtype: each merged layer computes
    what its own adapter did, so neither may fold its update into the base both hold."""
    base = nn.Linear(12, 10, dtype=dtype)
    model = nn.ModuleDict({"task_a": LoRALinear(base, r=4, alpha=8.0), "task_b": LoRALinear(base, r=2, alpha=6.0)})
    for layer in model.values():
        randomize_factors(layer, std=0.5)
    x = torch.randn(5, 12, dtype=dtype)
    expected = {name: eval_outputs(layer, x) for name, layer in model.items()}
    returned_model(merge_weights(model))
    exact = dtype in (torch.float32, torch.float64)
    tolerance = 1e-5 if exact else 4 * RELATIVE_TOLERANCE[dtype]  # relative, in half precision
    for name, layer in model.items():
        merged = expect_instance(layer, nn.Linear, f"the merged model[{name!r}]", "an nn.Linear")
        y = eval_outputs(merged, x)
        error = max_difference(y, expected[name]) if exact else relative_error(y, expected[name])
        assert error < tolerance, (
            f"two {dtype} adapters that share one base, merged: model[{name!r}] differs from what its adapter "
            f"computed by {error:.3g}, expected < {tolerance:.0e}: the base is held by the other adapter too, so "
            "folding an update into it changes both (in every dtype); "
            "build a new nn.Linear (or reuse the base only where nothing else holds it)"
        )


@pytest.mark.points(1)
@pytest.mark.parametrize("grad", GRAD_MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_merges_under_every_grad_mode(LoRALinear, merge_weights, dtype, grad):
    """merge_weights called under any grad mode of the caller's (a serving script under torch.inference_mode()):
    the merged model computes what the adapted one did, holds no inference tensor and runs under autograd."""
    model = nn.Sequential(
        LoRALinear(nn.Linear(12, 10, dtype=dtype), r=2, alpha=2.5),  # a fractional alpha: scaling 1.25
        LoRALinear(nn.Linear(10, 8, bias=False, dtype=dtype), r=2, alpha=2.5),
    )
    for layer in model:
        randomize_factors(layer, std=0.3)
    x = torch.randn(5, 12, dtype=dtype)
    expected = eval_outputs(model, x)
    with GRAD_MODES[grad]():
        returned_model(merge_weights(model))
    call = f"merge_weights(model) of a {dtype} model, called under {grad}"
    y = eval_outputs(model, x)
    exact = dtype in (torch.float32, torch.float64)
    error = max_difference(y, expected) if exact else relative_error(y, expected)
    tolerance = 1e-5 if exact else 4 * RELATIVE_TOLERANCE[dtype]
    assert error < tolerance, (
        f"{call}: the outputs differ from the adapted model's by {error:.3g}, expected < {tolerance:.0e}: fold in "
        "scaling * B @ A with the adapter's own scaling alpha / r (alpha as given, never rounded)"
    )
    made = [name for name, tensor in model.state_dict(keep_vars=True).items() if tensor.is_inference()]
    assert not made, (
        f"{call}: {made[:2]} are inference tensors, which autograd refuses (a later fine-tune, or load_state_dict "
        "into the model, raises): the caller's inference mode reached the merge; compute the new weights under "
        "torch.inference_mode(False) and torch.no_grad(), whatever the caller's mode"
    )
    expect_usable_with_autograd(model, x, call)


@pytest.mark.points(2)
def test_merges_the_same_in_train_mode_with_dropout(LoRALinear, merge_weights):
    model, x = adapted_model(LoRALinear, dropout=0.5), inputs()
    expected = eval_outputs(model, x)
    model.train()
    error = max_difference(eval_outputs(returned_model(merge_weights(model)), x), expected)
    assert error < 1e-5, (
        f"merged in train mode (dropout=0.5), the outputs differ by {error:.3g}: compute W + scaling B @ A "
        "from the factors, not from a forward pass"
    )


@pytest.mark.points(1)
def test_merging_twice_changes_nothing(LoRALinear, merge_weights):
    model, x = adapted_model(LoRALinear), inputs()
    once = eval_outputs(returned_model(merge_weights(model)), x)
    error = max_difference(eval_outputs(returned_model(merge_weights(model)), x), once)
    assert error == 0, f"a second merge_weights changed the outputs by {error:.3g}: merging must be idempotent"


@pytest.mark.points(1)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("alone", [True, False], ids=["alone", "after-a-float32-layernorm"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_merges_in_float32_and_rounds_once(LoRALinear, merge_weights, device, dtype, alone, bias):
    # scaling 10 / 3, which no half dtype (nor float32) holds: a scaling, or a factor scaled, in half precision rounds
    r, alpha = UNROUNDED_R, UNROUNDED_ALPHA
    base = nn.Linear(64, 48, bias=bias, device=device, dtype=dtype)
    layer = LoRALinear(base, r=r, alpha=alpha)
    randomize_factors(layer, std=0.2)
    found = factors(layer, 64, 48, r)
    exact = base.weight.double() + alpha / r * found.B.double() @ found.A.double()
    x = torch.randn(5, 64, device=device, dtype=dtype)
    expected = eval_outputs(layer, x)
    if alone:
        merged, where = returned_linear(merge_weights(layer)), ""
    else:  # the model's first parameter is float32, its adapted layer half precision: the layer's dtype decides
        model = nn.Sequential(nn.LayerNorm(64, device=device), layer)
        returned_model(merge_weights(model))
        merged, where = expect_instance(model[1], nn.Linear, "the merged model[1]", "an nn.Linear"), " of model[1]"
    assert merged.weight.dtype == dtype and merged.weight.device.type == device, (
        f"merged weight is {merged.weight.dtype} on {merged.weight.device}, expected {dtype} on {device}"
    )
    half_scaling = torch.tensor(alpha / r, dtype=dtype).double()  # alpha / r rounded to the weight's dtype
    scaled_in_half = (base.weight.double() + half_scaling * found.B.double() @ found.A.double()).to(dtype)
    differing = (merged.weight != exact.to(dtype)).float().mean().item()
    rounded_scaling = (merged.weight != scaled_in_half).float().mean().item() < differing
    own_dtype = (
        ""
        if alone
        else " (after a float32 LayerNorm: each layer's own dtype decides, whatever the model's first parameter)"
    )
    expect_merged_weight(
        merged.weight,
        exact,
        f"the merged {dtype} weight{where}",
        f"upcast W, A and B to float32, scale and add there, then cast back once{own_dtype}",
        f"the scaling alpha / r was rounded to {dtype} (W.new_tensor(scaling)?), keep it a Python float: "
        if rounded_scaling
        else "",
    )
    if alone and bias:  # and one layer of a real model's size, where a merge may save the float32 copy
        big = nn.Linear(REAL_MODEL_WIDTH, REAL_MODEL_WIDTH, device=device, dtype=dtype)
        expect_a_real_models_layer_merged_in_float32(
            big,
            LoRALinear(big, r=r, alpha=alpha),
            lambda adapter: returned_linear(merge_weights(adapter)),
            r,
            alpha / r,
            "the merged weight",
        )
    bias = merged.bias
    assert bias is None or base.bias is not None, (
        f"the base had no bias but the merged {dtype} layer{where} has one: keep bias=None (nn.Linear(..., "
        "bias=base.bias is not None)), in every dtype"
    )
    assert base.bias is None or (bias is not None and (bias.dtype, bias.device) == (dtype, base.weight.device)), (
        f"the merged layer's bias is {describe(bias) if bias is None else f'{bias.dtype} on {bias.device}'}, "
        f"expected the base's bias, {dtype} on {base.weight.device}: keep the bias as it is, not in float32"
    )
    with torch.no_grad():
        y = merged(x)
    error = relative_error(y, expected)
    assert y.dtype == dtype and error <= RELATIVE_TOLERANCE[dtype], (
        f"the merged {dtype} layer computes {y.dtype} outputs off the LoRALinear's by {error:.2g} (relative), "
        f"expected {dtype} within {RELATIVE_TOLERANCE[dtype]:.0e}"
    )
    expect_usable_with_autograd(merged, x, f"merge_weights of a {dtype} LoRALinear in eval mode{where}")


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_a_real_models_layer_merges_every_row_and_column_in_every_dtype(LoRALinear, merge_weights, dtype):
    # trained factors, a real model's layer (2**22 weights) in full precision too, sizes no block divides
    base = nn.Linear(REAL_MODEL_COLUMNS, REAL_MODEL_ROWS, dtype=dtype)
    expect_a_real_models_layer_merged_in_every_row_and_column(
        base,
        LoRALinear(base, r=UNROUNDED_R, alpha=UNROUNDED_ALPHA),
        lambda adapter: returned_linear(merge_weights(adapter)),
        UNROUNDED_R,
        UNROUNDED_ALPHA / UNROUNDED_R,
        "the merged weight",
    )


@pytest.mark.points(1)
@pytest.mark.parametrize(
    "alone, default", [(True, None), (False, None), (True, torch.float64)],
    ids=["alone", "after-a-float64-layernorm", "alone-under-a-float64-default-dtype"],
)  # fmt: skip
def test_float32_weights_are_summed_in_float32(LoRALinear, merge_weights, alone, default):
    in_features, out_features, r = 64, 48, 8  # 3072 weights: a float32 rounding shows in many
    base = nn.Linear(in_features, out_features)
    layer = LoRALinear(base, r=r, alpha=20.0)
    randomize_factors(layer, std=1.0)
    with torch.no_grad():
        base.weight.mul_(1e-3)  # an update far larger than W: its float32 rounding shows in the sum
    found = factors(layer, in_features, out_features, r)
    exact = base.weight.double() + layer.scaling * found.B.double() @ found.A.double()
    if alone:
        with default_dtype(default) if default else contextlib.nullcontext():
            merged = returned_linear(merge_weights(layer))
        where = " (merged under torch.set_default_dtype(torch.float64))" if default else ""
    else:  # the model's first parameter is float64, its adapted layer float32: the layer's dtype decides
        model = nn.Sequential(nn.LayerNorm(in_features, dtype=torch.float64), layer)
        returned_model(merge_weights(model))
        merged, where = expect_instance(model[1], nn.Linear, "the merged model[1]", "an nn.Linear"), " of model[1]"
    error = relative_error(merged.weight, exact)
    assert merged.weight.dtype == torch.float32 and error <= RELATIVE_TOLERANCE[torch.float32], (
        f"the merged weight{where} is {merged.weight.dtype}, off W + scaling * B @ A by {error:.2g} (relative), "
        f"expected float32 within {RELATIVE_TOLERANCE[torch.float32]:.0e}"
    )
    assert not rounded_once_from_float64(merged.weight, exact), (
        f"all {merged.weight.numel()} entries of the merged float32 weight{where} equal W + scaling * B @ A summed in "
        "float64 and rounded once, which float32 arithmetic does not give: only fp16/bf16 weights are upcast (to "
        "float32); float32 weights add in float32"
        + ("" if alone else " (each layer's own dtype decides, not the model's first parameter, float64 here)")
        + (" (each layer's own dtype decides, not torch's default dtype)" if default else "")
    )


MIXED_ADAPTERS = [  # (the base's dtype, the sign of alpha): every half dtype and float64, a negative alpha among them
    (torch.float16, -1.0),
    (torch.float64, 1.0),
    (torch.float32, -1.0),
    (torch.bfloat16, 1.0),
]
OWN_DTYPE = (
    "each layer's own dtype decides (fp16/bf16 add in float32 and round once, float32 and float64 add in their own), "
    "never torch's default dtype nor the model's first adapter; a negative alpha is merged as given (scaling < 0)"
)


@pytest.mark.points(1)
@pytest.mark.parametrize("order", ["half first", "bf16 first, signs flipped"])
@pytest.mark.parametrize("default", [None, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_each_adapter_merges_in_its_own_dtype(LoRALinear, merge_weights, default, order):
    """A model of adapters in four dtypes (the first one half precision) and of both signs of alpha, merged under
    each default dtype a script may set: every layer is summed in the precision of its own dtype."""
    r, in_features, out_features = UNROUNDED_R, 24, 16
    adapters = MIXED_ADAPTERS if order == "half first" else [(d, -sign) for d, sign in reversed(MIXED_ADAPTERS)]
    model, exact = nn.Sequential(), []
    for dtype, sign in adapters:
        base = nn.Linear(in_features, out_features, dtype=dtype)
        layer = LoRALinear(base, r=r, alpha=sign * UNROUNDED_ALPHA)
        randomize_factors(layer, std=0.3)
        found = factors(layer, in_features, out_features, r)
        weight = base.weight.detach().double()
        exact.append((weight, weight + sign * UNROUNDED_ALPHA / r * found.B.double() @ found.A.double()))
        model.append(layer)
    what = ", ".join(f"{dtype_name(d)} (alpha {sign * UNROUNDED_ALPHA:g})" for d, sign in adapters)
    regime = f"merge_weights of a model of {what} adapters" + (
        f", under torch.set_default_dtype({default})" if default else ""
    )
    setting = default_dtype(default) if default else contextlib.nullcontext()
    with a_merge_of_any_alpha(regime, f"; {OWN_DTYPE}"), setting:
        returned_model(merge_weights(model))
    for index, ((dtype, sign), (weight, expected)) in enumerate(zip(adapters, exact, strict=True)):
        merged = expect_instance(model[index], nn.Linear, f"the merged model[{index}]", "an nn.Linear")
        new = merged.weight.detach()
        where = f"{regime}: the merged {dtype_name(dtype)} model[{index}] (alpha {sign * UNROUNDED_ALPHA:g})"
        assert new.dtype == dtype, f"{where} is {new.dtype}, expected {dtype}: keep the base's dtype"
        hint = "W alone, the update dropped: " if torch.equal(new.double(), weight) else ""
        if not hint and dtype in HALF_DTYPES and default in HALF_DTYPES:
            hint = f"summed in torch's default dtype {default}, not float32? "
        expect_merged_weight(new, expected, where, OWN_DTYPE, hint)


ZOO_CASES = {  # id: the zoo model, the part of it the grader adapts before merging (the model: ""), the targets
    "nested": ("nested", "", ("q_proj", "v_proj", "mlp.2", "out.0", "out_proj")),  # depth 4, no bias, a subclass
    "tied": ("tied", "", ("q_proj", "v_proj", "head", "embed")),  # a block used twice, an alias; a tied embed
    "look-alikes": ("look-alikes", "", ("proj", "fc1", "o", "v_proj")),
    "reused-block-only": ("reused", "block", ("q_proj",)),  # the base of block.q_proj is enc.0 too
    # the same, registered block first: named_modules() lists the shared layer as block.q_proj alone
    "reused-block-first": ("reused-block-first", "block", ("q_proj",)),
}


def adapted_zoo_model(LoRALinear, case: str, **placement) -> nn.Module:
    """A zoo model whose targeted layers (in its part) the grader wrapped, under every name each is registered by
    in that part (aliases too)."""
    name, part_name, targets = ZOO_CASES[case]
    torch.manual_seed(0)
    model = MODEL_ZOO[name]().to(**placement)
    part = model.get_submodule(part_name)
    for target in matching_linears(part, targets):
        original = part.get_submodule(target)
        registered = [alias for alias, module in part.named_modules(remove_duplicate=False) if module is original]
        layer = LoRALinear(original, r=2, alpha=4.0)
        randomize_factors(layer, std=0.3)
        for alias in registered:
            parent, _, child = alias.rpartition(".")
            setattr(part.get_submodule(parent), child, layer)
    return model


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)  # float64 on its own path too
@pytest.mark.parametrize("name", ZOO_CASES)
def test_merges_the_model_zoo(LoRALinear, merge_weights, name, dtype):
    model, x = adapted_zoo_model(LoRALinear, name, dtype=dtype), zoo_inputs().to(dtype)
    expected = eval_outputs(model, x)
    adapted = [n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, LoRALinear)]
    returned = merge_weights(model)
    assert returned is model, f"merge_weights({name} model) returned {describe(returned)}, expected the model itself"
    left = [n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, LoRALinear)]
    assert not left, (
        f"merge_weights({name} model) left {len(left)} LoRALinear, e.g. {left[:3]}: replace every one under every "
        "name it is held by (named_modules(remove_duplicate=False); named_modules() and named_children() list a "
        "module once), inside ModuleList, ModuleDict and Sequential too, at any depth"
    )
    merged = {n: model.get_submodule(n) for n in adapted}  # a subclass of nn.Linear among the bases: out_proj
    other = [f"{n}: {type(layer).__name__}" for n, layer in merged.items() if not isinstance(layer, nn.Linear)]
    assert not other, (
        f"merge_weights({name} model) put what is no nn.Linear where adapters were ({other[:2]}), expected an "
        "nn.Linear: the base layer itself, its weight replaced by W + dW, or a new nn.Linear"
    )
    bases = {id(m) for n, m in model.named_modules(remove_duplicate=False) if n not in merged} & {
        id(layer) for layer in merged.values()
    }  # merged layers that are also registered where no adapter was: the bases reused
    error = max_difference(eval_outputs(model, x), expected)
    assert error < 1e-5, f"the merged {dtype} {name} model's outputs differ from the adapted one's by {error:.3g}: " + (
        "a merged layer is also registered where no adapter was (a base held outside its adapter, computing W there "
        "before): reuse the base as the merged layer only when nothing else holds it, else build a new nn.Linear"
        if bases
        else "fold each update into its own layer, and change no weight another layer shares"
    )


@pytest.mark.points(1)
@pytest.mark.parametrize("alone", [False, True], ids=["part", "alone"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_merging_a_part_leaves_what_it_shares_outside_alone(LoRALinear, merge_weights, dtype, alone):
    """Merging nn.Sequential(adapter), or the adapter alone (merge_weights(model.lm_head)), of any dtype: the base's
    weight, tied to a layer outside, stays W (a half-precision merge folded in place is no exception)."""
    outside, base = nn.Linear(12, 10, dtype=dtype), nn.Linear(12, 10, dtype=dtype)
    base.weight = outside.weight  # tied to a layer that is not in the merged part
    layer = LoRALinear(base, r=4, alpha=10.0)
    randomize_factors(layer, std=0.3)
    expected = base.weight.detach().float() + measured_update(layer, base).float()
    before = outside.weight.detach().clone()
    bases = {id(parameter) for parameter in base.parameters()}  # the base itself may become the merged layer
    held = {  # the factors (and buffers): an adapter another model may hold too, a teacher say
        name: tensor.detach().clone()
        for name, tensor in layer.state_dict(keep_vars=True).items()
        if id(tensor) not in bases
    }
    call = f"merging a {dtype} adapter " + ("alone (merge_weights(adapter))" if alone else "in nn.Sequential(adapter)")
    if alone:
        merged = returned_linear(merge_weights(layer))
    else:
        part = nn.Sequential(layer)
        returned_model(merge_weights(part))
        merged = part[0]
    change = max_difference(outside.weight, before)
    assert change == 0, (
        f"{call}: expected the weight its base shares with a layer outside unchanged, measured a change of "
        f"{change:.3g}: merge_weights sees only the module given; build a new weight, never write into the base's "
        "(in every dtype)"
    )
    now = layer.state_dict()
    written = [name for name, value in held.items() if name not in now or not torch.equal(now[name], value)]
    assert not written, (
        f"{call} changed the adapter's own {written[:2]}, which a model holding the same adapter outside that part "
        "still computes with: read the factors, never scale or write them in place (W + scaling * (B @ A) into a "
        "new tensor)"
    )
    error = max_difference(merged.weight.float(), expected)
    exact = dtype in (torch.float32, torch.float64)
    tolerance = 1e-5 if exact else 4 * RELATIVE_TOLERANCE[dtype] * (1 + expected.abs().max().item())
    assert error < tolerance, (
        f"{call}: the merged layer's weight differs from W + scaling B @ A by {error:.3g}, expected < {tolerance:.1g}"
    )


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_merged_layers_follow_the_base_device_and_dtype(LoRALinear, merge_weights, dtype):
    if dtype == torch.float64:
        model, x, names = (
            adapted_model(LoRALinear, dtype=dtype),
            inputs(dtype=dtype),
            matching_linears(ToyTransformer(), TARGETS),
        )
    else:  # half precision, which merges on its own path (summed in float32): a layer with a bias, one without
        model = nn.Sequential(
            LoRALinear(nn.Linear(12, 10, dtype=dtype), r=2, alpha=4.0),
            LoRALinear(nn.Linear(10, 8, bias=False, dtype=dtype), r=2, alpha=4.0),
        )
        for layer in model:
            randomize_factors(layer, std=0.3)
        x, names = torch.randn(5, 12, dtype=dtype), ["0", "1"]
    expected = eval_outputs(model, x)
    merged = made_under_a_foreign_default_device(lambda: returned_model(merge_weights(model)))
    if merged is None:  # it made the new layers on the default device and moved them: right, not decidable here
        return
    layers = [merged.get_submodule(name) for name in names]
    weights = [layer.weight for layer in layers]
    expect_on_the_base_device(
        weights + [layer.bias for layer in layers if layer.bias is not None], torch.device("cpu"),
        f"the merged {dtype} weights and biases are",
    )  # fmt: skip
    biases = [layer.bias for layer in layers]
    dtypes = sorted({str(t.dtype) for t in weights + biases if t is not None} - {str(dtype)})
    assert not dtypes, (
        f"merging a {dtype} model gave weights or biases in {dtypes}: the new layer holds W + dW and the base's "
        "bias in the base's dtype (nn.Linear(..., dtype=base.weight.dtype), or the merged tensor itself)"
    )
    y = eval_outputs(merged, x)
    error = max_difference(y, expected) if dtype == torch.float64 else relative_error(y, expected)
    tolerance = 1e-5 if dtype == torch.float64 else 4 * RELATIVE_TOLERANCE[dtype]
    assert error < tolerance, (
        f"the merged {dtype} model's outputs differ from the adapted one's by {error:.3g}, expected < {tolerance:.0e}"
    )
