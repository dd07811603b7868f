"""Checks of the `apply_lora` kata: apply_lora(model, target_modules, r, alpha, dropout)."""

from __future__ import annotations

import contextlib
import math
import re
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn

from grader.models import DEPTH, MODEL_ZOO, WIDTH, ToyTransformer, inputs, matching_linears, zoo_inputs
from grader.probes import (
    DEVICES,
    adapter_namesakes,
    case_folded,
    describe,
    dotted_target_cut_to_its_last_part,
    expect_each_adapter_following_its_own_mode,
    expect_every_layer_in_its_dtype,
    expect_factor_layers_left_alone,
    expect_instance,
    expect_the_adapters_bases_left_alone,
    factors,
    make_a_subclass_instance,
    max_difference,
    randomize_factors,
    scaling_ratio,
    targets_off_by_case,
    train,
    trainable,
)
from grader.signatures import expect_the_stubs_signatures
from lora_kata.grading.implementation import KataUnavailable


@pytest.mark.points(1)
def test_takes_the_stubs_parameters(implementation, apply_lora):
    """Callers pass the stub's parameters by name or by position: each definition takes them as the stub does."""
    expect_the_stubs_signatures(implementation, "apply_lora")
    # Then a call into the kata: an unimplemented stub, its signatures right, scores nothing here.
    apply_lora(ToyTransformer())


SUBJECT = "apply_lora"  # the definition a failing check points at

DEFAULT_TARGETS = ("q_proj", "v_proj")
TARGET_CASES = [
    DEFAULT_TARGETS,
    ("fc1",),  # not fc10
    ("proj",),  # not q_proj, k_proj, v_proj or out_proj
    ("0.attn.q_proj",),  # layers.0, not layers.10
    ("layers.3.mlp.fc10", "head"),  # a full qualified name, and a layer without bias
    ["out_proj"],  # any iterable of names
    # Lists of a real model's length: every linear of a block, as Llama's all-linear 7, one of them dotted; then dotted
    # targets only, to every depth; then one full name per block, as a list built for chosen layers reads.
    ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc10", "layers.0.mlp.fc2"),
    ("layers.0.attn.q_proj", "1.attn.k_proj", "attn.v_proj", "10.attn.out_proj", "mlp.fc1", "3.mlp.fc10", "proj"),
    (*(f"layers.{i}.{('attn.q_proj', 'attn.v_proj', 'mlp.fc1', 'mlp.fc2')[i % 4]}" for i in range(DEPTH)), "head"),
]


ONCE = (
    "target_modules is any iterable of names (Iterable[str]), and a generator can be read only once: "
    "take list(target_modules) first"
)


def adapters(model: nn.Module, LoRALinear: type) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def adapted(returned: object) -> nn.Module:
    """What apply_lora returned, after failing the check unless it is a model."""
    return expect_instance(returned, nn.Module, "apply_lora(model, ...)", "the model itself, adapted in place")


def raised_by_apply_lora(error: BaseException) -> bool:
    """Whether apply_lora raised ``error`` itself ("nothing matched"), not something it called (LoRALinear)."""
    return Path(traceback.extract_tb(error.__traceback__)[-1].filename).stem == SUBJECT


def matching_cause(targets: tuple[str, ...], wrong: list[str], missed: list[str], adapted_none: bool) -> str:
    """The likely mistake behind adapting ``wrong`` and missing ``missed`` for ``targets``."""
    rule = "match a name when it equals a target or ends with '.' + target"
    containers = [(name, t) for name in wrong for t in targets if f".{t}." in f".{name}"]
    if containers:
        name, t = containers[0]
        return (
            f"{name} lies inside a module that {t!r} names, which is no nn.Linear: a target names the layer itself "
            "(by the end of its qualified name), never the layers inside a container; " + rule
        )
    cut = dotted_target_cut_to_its_last_part(targets, wrong)
    if cut:
        return f"{cut}: {rule}"
    if any(t in name for name in wrong for t in targets):
        return "substring or bare endswith matching: " + rule
    if any(re.search(t, name) for name in wrong for t in targets):
        return "a target read as a regular expression ('.' matches any character): compare names as strings: " + rule
    prefixed = [(name, t) for name in missed for t in targets if name != t and name.startswith(t)]
    if prefixed and not wrong:
        name, t = prefixed[0]
        return (
            f"{name} was skipped, as if inside the adapter of {t}: a layer inside another has a name starting with "
            f"that name + '.', not a name merely starting with it; " + rule
        )
    for name in missed:
        for t in (t for t in targets if "." in t):
            if name == t:
                return f"a target may be a whole qualified name ({t!r} is a layer's name): " + rule
            if name.endswith("." + t):
                return f"a dotted target matches the end of the qualified name ({t!r} matches {name!r}): " + rule
    if adapted_none and all("." in name for name in missed):
        return rule + ", at any depth (walk model.named_modules())"
    return rule


@pytest.mark.points(2)
@pytest.mark.parametrize("targets", TARGET_CASES, ids=lambda targets: "+".join(targets))
def test_adapts_exactly_the_linears_whose_names_match(apply_lora, LoRALinear, targets):
    model = ToyTransformer()
    expected = set(matching_linears(model, targets))
    try:
        apply_lora(model, targets, r=2, alpha=4.0)
    except ValueError as error:
        if not raised_by_apply_lora(error):
            raise  # LoRALinear refusing its arguments, say: reported as it is, at the call
        refused = True
    else:
        refused = False
    found = set(adapters(model, LoRALinear))
    wrong, missed = sorted(found - expected), sorted(expected - found)
    cause = matching_cause(tuple(targets), wrong, missed, adapted_none=not found)
    assert not refused, (
        f"targets {list(targets)}: apply_lora raised ValueError (nothing matched?), expected LoRALinear on "
        f"{len(expected)} layers, e.g. {sorted(expected)[:2]}: {cause}"
    )
    assert not wrong and not missed, (
        f"targets {list(targets)}: expected LoRALinear on {len(expected)} layers, got {len(found)}; "
        f"wrongly adapted {wrong[:3]}, missed {missed[:3]}: {cause}"
    )


@pytest.mark.points(1)
def test_accepts_any_iterable_of_target_names(apply_lora, LoRALinear):
    model = ToyTransformer()
    expected = sorted(matching_linears(model, DEFAULT_TARGETS))
    call = "apply_lora(model, (name for name in ['q_proj', 'v_proj']))"
    try:
        apply_lora(model, (name for name in DEFAULT_TARGETS), r=2, alpha=4.0)
    except ValueError as error:
        if not raised_by_apply_lora(error):
            raise
        pytest.fail(f"{call} raised ValueError, expected LoRALinear on {len(expected)} layers: {ONCE}", pytrace=False)
    found = sorted(adapters(model, LoRALinear))
    assert found == expected, (
        f"{call} adapted {len(found)} layers, expected {len(expected)}, missed e.g. "
        f"{sorted(set(expected) - set(found))[:2]}: {ONCE}"
    )


@pytest.mark.points(2)
def test_wraps_the_original_layers_in_place(apply_lora, LoRALinear):
    model = ToyTransformer()
    originals = {name: model.get_submodule(name) for name in matching_linears(model, DEFAULT_TARGETS)}
    returned = apply_lora(model, DEFAULT_TARGETS, r=2, alpha=4.0)
    assert returned is model, f"apply_lora returned {describe(returned)}, expected the model itself, adapted in place"
    for name, original in originals.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, LoRALinear), f"{name} is a {type(layer).__name__}, expected the package's LoRALinear"
        assert any(module is original for module in layer.modules()), (
            f"{name}: the LoRALinear does not hold the model's original nn.Linear: wrap the layer object itself"
        )


R_ALPHA_CASES = {  # id: (targets, r, alpha): the call's own values, each adapter LoRALinear(layer, r, alpha, dropout)
    "a-fractional-alpha": (("fc1",), 3, 7.5),  # alpha / r = 2.5; int(alpha) gives 2
    "r-above-min-in-out": (("fc1", "head"), 10, 2.5),  # fc1 is 8 -> 12, head 8 -> 5: r kept as given, above both
    "alpha-zero": (("fc1",), 2, 0.0),  # a muted adapter: `alpha or r` makes it r
    "alpha-negative": (("fc1",), 2, -8.0),  # the update subtracted: abs(alpha) adds it
}


@pytest.mark.points(1)
@pytest.mark.parametrize("targets, r, alpha", R_ALPHA_CASES.values(), ids=R_ALPHA_CASES)
def test_passes_r_and_alpha_to_every_adapter(apply_lora, LoRALinear, targets, r, alpha):
    model = ToyTransformer().double()  # float64: the scaling read off the outputs to 1e-6
    originals = {name: model.get_submodule(name) for name in matching_linears(model, targets)}
    adapted(apply_lora(model, targets, r=r, alpha=alpha))
    call = f"apply_lora(model, {list(targets)}, r={r}, alpha={alpha})"
    for name, base in originals.items():
        layer = model.get_submodule(name)
        count, expected = sum(t.numel() for t in trainable(layer)), r * (base.in_features + base.out_features)
        recorded = (getattr(layer, "r", None), getattr(layer, "alpha", None))
        smallest = min(base.in_features, base.out_features)
        cause = (
            f"r was clamped to min(in, out) = {smallest} (dW's rank is at most that anyway): keep r as given"
            if recorded == (smallest, alpha) != (r, alpha)
            else f"alpha was rounded to a whole number ({recorded[1]}: int(alpha), as peft's LoraConfig types it): "
            "keep alpha as given"
            if recorded == (r, int(alpha)) != (r, alpha)
            else "alpha = alpha or r? 0 is falsy, and alpha=0 is a muted adapter: keep alpha as given"
            if alpha == 0 and recorded == (r, r)
            else "pass r and alpha on"
        )
        assert (*recorded, count) == (r, alpha, expected), (
            f"{call}: {name} ({base.in_features} -> {base.out_features}) has r={recorded[0]}, alpha={recorded[1]}, "
            f"{count} trainable numbers, expected r={r}, alpha={alpha}, {expected}: {cause}, "
            "LoRALinear(layer, r, alpha, dropout)"
        )
        randomize_factors(layer)
        ratio, proportional = scaling_ratio(layer, base, factors(layer, base.in_features, base.out_features, r))
        assert proportional and math.isclose(ratio, alpha / r, rel_tol=1e-6), (
            f"{call}: {name} adds "
            + (f"{ratio:.4g} x B @ A" if proportional else "an update not proportional to B @ A")
            + f", expected alpha / r = {alpha / r:g} x: pass r and alpha on as given, LoRALinear(layer, r, alpha, "
            "dropout)"
        )


@pytest.mark.points(1)
def test_passes_dropout_to_every_adapter(apply_lora, LoRALinear):
    x = inputs()
    outputs = {}
    for dropout in (0.0, 0.5):
        torch.manual_seed(0)
        model = adapted(apply_lora(ToyTransformer(), DEFAULT_TARGETS, r=2, alpha=4.0, dropout=dropout))
        for layer in adapters(model, LoRALinear).values():
            randomize_factors(layer, std=0.5)
        model.train()
        with torch.no_grad():
            outputs[dropout] = max_difference(model(x), model(x))
    assert outputs[0.0] == 0, f"with dropout=0 two train-mode calls differ by {outputs[0.0]:.3g}: dropout was not 0"
    assert outputs[0.5] > 0, "with dropout=0.5 two train-mode calls gave the same output: pass dropout on to LoRALinear"


def factor_names(LoRALinear: type) -> list[str]:
    """The names, inside a fresh LoRALinear of the implementation, of its factors (the parameters it trains)."""
    with torch.random.fork_rng(devices=[]):  # its random init leaves the check's random stream as it was
        fresh = LoRALinear(nn.Linear(2, 2), r=1, alpha=1.0)
    return [name for name, parameter in fresh.named_parameters() if parameter.requires_grad]


def plant_factor_names(model: nn.Module, LoRALinear: type) -> list[str]:
    """Give ``model`` parameters of its own named like the implementation's factors (``planted.lora_A``, say),
    under a plain module: the model's, frozen like every parameter that is no adapter's factor. Returns their names."""
    planted = nn.Module()
    names = factor_names(LoRALinear)
    for name in names:
        *path, leaf = name.split(".")
        holder = planted
        for part in path:
            if part not in dict(holder.named_children()):
                holder.add_module(part, nn.Module())
            holder = holder.get_submodule(part)
        holder.register_parameter(leaf, nn.Parameter(torch.ones(2)))
    model.add_module("planted", planted)
    return [f"planted.{name}" for name in names]


@pytest.mark.points(3)
def test_freezes_everything_but_the_adapters(apply_lora, LoRALinear):
    model = ToyTransformer()
    try:
        planted = plant_factor_names(model, LoRALinear)
    except (NotImplementedError, KataUnavailable):  # no working LoRALinear yet: the call to apply_lora says why below
        planted = []
    adapted(apply_lora(model, DEFAULT_TARGETS, r=2, alpha=4.0))
    inside = {id(p) for layer in adapters(model, LoRALinear).values() for p in trainable(layer)}
    loose = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in inside]
    named_alike = [name for name in loose if name in planted]
    assert not loose, (
        f"{len(loose)} parameters outside the adapters still train, e.g. {loose[:3]}: "
        + (f"{named_alike[0]} is the model's own parameter, named like a factor: " if named_alike else "")
        + "freeze every parameter that is no adapter's factor, whatever its name (by identity, not by name)"
    )
    measured = sum(p.numel() for p in trainable(model))
    reference = ToyTransformer()
    expected = sum(
        2 * (reference.get_submodule(name).in_features + reference.get_submodule(name).out_features)
        for name in matching_linears(reference, DEFAULT_TARGETS)
    )
    assert measured == expected, (
        f"expected r*(in+out) summed over the adapted layers = {expected} trainable numbers, measured {measured}"
    )


@pytest.mark.points(1)
def test_leaves_the_output_unchanged(apply_lora):
    model, x = ToyTransformer(), inputs()
    with torch.no_grad():
        before = model(x)
        change = max_difference(adapted(apply_lora(model, DEFAULT_TARGETS, r=2, alpha=4.0))(x), before)
    assert change < 1e-5, f"the model's output changed by {change:.3g} right after apply_lora: adapters start at zero"


NO_MATCH_CASES = {  # id: (targets, the model they are looked for in, given by a generator)
    "no-such-name": (("nonexistent_proj", "qproj"), "toy", False),
    "not-linear": (("router.q_proj",), "toy", False),
    "the-model-is-a-linear": (("q_proj",), "linear", False),
    "given-by-a-generator": (("qproj",), "toy", True),
    "glob-patterns": (("[qv]_proj", "?_proj", "fc*"), "toy", False),  # compared as strings, they name no layer
    "regex-patterns": (("q_pro.", "fc1|fc2", "v_pro[j]"), "toy", False),
    "on-an-adapted-model": (("nonexistent_proj",), "adapted on q_proj", False),  # adapters there: still no match
    "no-targets": ((), "toy", False),  # an empty list names no layer
    "all-linear": (("all-linear",), "toy", False),  # peft's keyword is no target here: it names a layer so called
    "off-by-whitespace": ((" q_proj", "v_proj "), "toy", False),  # compared as strings: never stripped
    "comma-joined": (("q_proj,v_proj", "q_proj, fc1"), "toy", False),  # one string names one layer: never split
    **{case: (targets, "toy", False) for case, targets in targets_off_by_case("q_proj", "fc1").items()},
}


@pytest.mark.points(1)
@pytest.mark.parametrize("targets, model_kind, generator", NO_MATCH_CASES.values(), ids=NO_MATCH_CASES)
def test_raises_naming_the_targets_when_nothing_matches(apply_lora, LoRALinear, targets, model_kind, generator):
    model = nn.Linear(WIDTH, WIDTH) if model_kind == "linear" else ToyTransformer()
    if model_kind == "adapted on q_proj":
        adapted(apply_lora(model, ["q_proj"], r=2, alpha=4.0))
    before = set(adapters(model, LoRALinear))
    try:
        apply_lora(model, (t for t in targets) if generator else targets, r=2, alpha=4.0)
    except ValueError as error:
        unnamed = [t for t in targets if t not in str(error)]
        assert not unnamed, f"the ValueError does not name the targets {unnamed}: say what was looked for ({error})" + (
            ": a generator's repr names no target; name list(target_modules)" if generator else ""
        )
    else:
        new = sorted(set(adapters(model, LoRALinear)) - before)
        cause = (
            f"it adapted {new[:3]}: "
            + (
                case_folded(targets, new)
                or "targets are compared as strings (a name equal to one or ending with '.' + one), never read as "
                "glob or regex patterns, nor as peft's 'all-linear', nor stripped of whitespace or split at commas "
                "(an empty list names no layer either)"
            )
            if new
            else "on a model already adapted (on q_proj) a target naming no layer is an error too"
            if model_kind == "adapted on q_proj"
            else "expected a ValueError naming the targets"
        )
        pytest.fail(
            f"apply_lora with targets {list(targets)}, which name no nn.Linear, raised nothing: {cause}", pytrace=False
        )


@pytest.mark.points(1)
def test_never_wraps_an_adapter_again(apply_lora, LoRALinear):
    model = adapted(apply_lora(ToyTransformer(), DEFAULT_TARGETS, r=2, alpha=4.0))
    first = set(adapters(model, LoRALinear))
    with contextlib.suppress(ValueError):  # "nothing left to adapt" is a fair answer too
        apply_lora(model, DEFAULT_TARGETS, r=2, alpha=4.0)
    nested = [
        name
        for name, layer in adapters(model, LoRALinear).items()
        if any(isinstance(m, LoRALinear) for m in list(layer.modules())[1:])
    ]
    assert not nested and set(adapters(model, LoRALinear)) == first, (
        f"applying LoRA twice wrapped adapters again (nested in {nested[:3]}): skip layers that are LoRALinear already"
    )


@pytest.mark.points(2)
@pytest.mark.parametrize("device", DEVICES)
def test_training_changes_only_the_adapters(apply_lora, LoRALinear, device):
    model = ToyTransformer().to(device)
    apply_lora(model, DEFAULT_TARGETS, r=2, alpha=4.0)
    misplaced = [t.device for t in trainable(model) if t.device.type != device]
    assert not misplaced, f"adapters of a model on {device} were created on {misplaced[0]}: follow the base's device"
    inside = {id(p) for layer in adapters(model, LoRALinear).values() for p in trainable(layer)}
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if id(p) not in inside}
    x, target = inputs(device=device), torch.randn(2, 3, 5, device=device)
    losses = train(list(model.parameters()), lambda: nn.functional.mse_loss(model(x), target), steps=20)
    assert losses[-1] < losses[0], f"training did not lower the loss ({losses[0]:.3g} -> {losses[-1]:.3g})"
    changed = [name for name, p in model.named_parameters() if name in frozen and not torch.equal(p, frozen[name])]
    assert not changed, f"training changed {len(changed)} parameters outside the adapters, e.g. {changed[:3]}"


@pytest.mark.points(1)
def test_defaults_are_q_proj_v_proj_r_8_alpha_16_and_no_dropout(apply_lora, LoRALinear):
    model = ToyTransformer()
    originals = {name: model.get_submodule(name) for name in matching_linears(model, DEFAULT_TARGETS)}
    apply_lora(model)
    adapted = sorted(adapters(model, LoRALinear))
    assert adapted == sorted(originals), (
        f"apply_lora(model) adapted {len(adapted)} layers, e.g. {adapted[:2]}, expected the {len(originals)} "
        "q_proj and v_proj: keep the stub's default target_modules=('q_proj', 'v_proj')"
    )
    for name, base in originals.items():
        layer = model.get_submodule(name)
        count, expected = sum(t.numel() for t in trainable(layer)), 8 * (base.in_features + base.out_features)
        measured = (getattr(layer, "r", None), getattr(layer, "alpha", None), count)
        assert measured == (8, 16.0, expected), (
            f"apply_lora(model) made {name} with r={measured[0]}, alpha={measured[1]}, {count} trainable numbers, "
            f"expected r=8, alpha=16.0, {expected}: keep the stub's defaults r=8, alpha=16.0"
        )
        randomize_factors(layer, std=0.5)
    x = inputs()
    with torch.no_grad():
        repeat = max_difference(model.train()(x), model(x))
    assert repeat == 0, (
        f"apply_lora(model) in train mode gives outputs varying by {repeat:.3g} between calls, expected none: "
        "the default dropout is 0.0"
    )


ZOO_CASES = [  # (model, targets): every layer one of whose names matches (named_modules(remove_duplicate=False))
    ("nested", ("q_proj", "v_proj")),
    ("nested", ("mlp.0", "out.0")),  # Sequential members are named by index
    ("nested", ("1.attn.v_proj", "heads.q_proj")),
    ("nested", ("out_proj",)),  # a subclass of nn.Linear is an nn.Linear
    ("tied", ("q_proj", "v_proj")),  # in the block used twice
    ("tied", ("embed",)),  # not unembed, which shares its weight
    ("tied", ("unembed", "head")),
    ("look-alikes", ("proj", "o")),  # not q_proj, qq_proj, proj_q or oo
    ("look-alikes", ("fc1", "q_proj")),  # not fc10, fc1_gate, Fc1 or Q_PROJ
    ("look-alikes", ("fc1", "fc10", "o", "oo")),  # a name that starts another is adapted with it, not instead
    ("nested", ("attn", "blocks.0", "out", "heads.q_proj")),  # containers named, not their layers: heads.q_proj only
    ("look-alikes", ("v_proj",)),  # the nn.Linear, not the LayerNorm norms.v_proj
    ("look-alikes", ("k_proj", "v_proj")),  # not k_proj, whose class is named Linear but is no nn.Linear
    ("look-alikes", ("attn.q",)),  # not attn_q: a target is a name, not a regular expression
    ("look-alikes", ("up_proj", "q_proj")),  # another library's nn.Linear named LoRALinear: no adapter, wrapped
    ("tied", ("v_proj", "alias")),  # both names of one layer: one adapter (under both, or under v_proj only)
    ("tied", ("alias",)),  # only a second name matches: named_modules() (deduplicated) lists layers.0.v_proj alone
    ("tied", ("classifier",)),  # a second name of the same parent as head
    ("tied", ("1.q_proj",)),  # the shared block's second name, layers.1
    ("gated", ("up_proj", "gate")),  # up_proj.gate lies inside up_proj: adapting up_proj puts it inside the adapter
    # The inner target listed first (its alias gate registered before up_proj): the outcome is that of any order.
    ("gated-gate-first", ("up_proj", "gate")),
    ("gated-gate-first", ("gate",)),  # the inner layer alone: wrapped, under both its names (or one)
    ("wrapped", ("q_proj", "lora_A", "lora_B")),  # a backbone named base, layers named like an adapter's own parts
]


def zoo_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return MODEL_ZOO[name](), zoo_inputs()


def aliases(model: nn.Module) -> dict[int, list[str]]:
    """Every name under which each module of ``model`` is registered, by id (named_modules lists one)."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


@pytest.mark.points(1)
@pytest.mark.parametrize(
    "model_name, targets", ZOO_CASES, ids=lambda value: value if isinstance(value, str) else "+".join(value)
)
def test_adapts_the_model_zoo(apply_lora, LoRALinear, model_name, targets):
    model, x = zoo_model(model_name)
    names_of = aliases(model)
    expected: dict[str, nn.Module] = {}  # each layer one of whose names matches, by its first matching name
    for name in matching_linears(model, targets, every_name=True):
        layer = model.get_submodule(name)
        if all(other is not layer for other in expected.values()):
            expected[name] = layer
    # A target inside another (a linear that a targeted nn.Linear subclass holds) lies inside that one's adapter.
    within = {id(inner) for layer in expected.values() for inner in list(layer.modules())[1:]}
    expected = {name: layer for name, layer in expected.items() if id(layer) not in within}
    allowed = {alias for module in expected.values() for alias in names_of[id(module)]}  # a tied layer's aliases too
    listed_once = {name for name, _ in model.named_modules()}  # the names a deduplicating walk sees
    holder = {id(inner): name for name, layer in expected.items() for inner in list(layer.modules())[1:]}
    held_by = {name: holder[id(m)] for name, m in model.named_modules(remove_duplicate=False) if id(m) in holder}
    with torch.no_grad():
        before = model.eval()(x)
    call = f"apply_lora({model_name} model, {list(targets)}, 2, 4.0)"
    try:
        returned = apply_lora(model, targets, 2, 4.0)
    except ValueError as error:
        if not raised_by_apply_lora(error):
            pytest.fail(
                f"{call}: apply_lora wrapped a module its LoRALinear refuses ({str(error).splitlines()[0]}): a target "
                "is an nn.Linear (isinstance(module, nn.Linear)), not a module whose class name says Linear, such "
                "as another library's k_proj here",
                pytrace=False,
            )
        returned = model  # "nothing matched": reported below by the layers it missed
    assert returned is model, f"{call} returned {describe(returned)}, expected the model itself, adapted in place"
    found = {name for name, module in model.named_modules(remove_duplicate=False) if isinstance(module, LoRALinear)}
    missed = sorted(name for name, layer in expected.items() if not found & set(names_of[id(layer)]))
    wrong = sorted(found - allowed)
    subclassed = [name for name in missed if type(expected[name]) is not nn.Linear]
    inner = [(name, outer) for name in wrong for outer in sorted(allowed) if name.startswith(outer + ".")]
    # or a name, outside it, of a layer inside it (an alias registered before the outer target, listed first)
    own_parts = {n.split(".")[0] for n in factor_names(LoRALinear)} | {"base", "lora_A", "lora_B", "dropout"}
    parts = [(name, part) for name in missed for part in name.split(".") if part in own_parts]
    inner = inner or [
        (f"{name} (a name of {held_by[name]}'s inner layer)", held_by[name]) for name in wrong if name in held_by
    ]
    cause = adapter_namesakes({name: type(expected[name]) for name in missed}, LoRALinear) or (
        f"{inner[0][0]} lies inside {inner[0][1]}, a target adapted in the same call: it is inside that adapter (in "
        "its base), and no layer inside an adapter is wrapped: adapt the outer target only"
        if inner
        else f"{subclassed[0]} is a {type(expected[subclassed[0]]).__name__}, a subclass of nn.Linear and so an "
        "nn.Linear: test isinstance(module, nn.Linear), not type(module) is nn.Linear"
        if subclassed
        else f"{missed[0]} is a second name of a layer that named_modules() lists once, under "
        f"{names_of[id(expected[missed[0]])][0]}: match every name, as named_modules(remove_duplicate=False) lists them"
        if missed and missed[0] not in listed_once
        else f"{parts[0][0]} was skipped for its name part {parts[0][1]!r}, as if inside an adapter: a model's own "
        "modules may be named like an adapter's parts; find the layers inside adapters by identity (the modules of "
        "each LoRALinear), never by name"
        if parts
        else matching_cause(tuple(targets), wrong, missed, adapted_none=not found)
    )
    assert not missed and not wrong, (
        f"{call}: expected LoRALinear on {sorted(expected)}, wrongly adapted {wrong[:3]}, missed {missed[:3]}: {cause}"
    )
    layers = {id(m): m for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, LoRALinear)}
    for layer in layers.values():
        inner = [m for m in list(layer.modules())[1:] if isinstance(m, LoRALinear)]
        assert not inner, f"{call} nested a LoRALinear inside another: wrap each nn.Linear once"
        assert any(m is original for m in layer.modules() for original in expected.values()), (
            f"{call}: a LoRALinear holds none of the model's original layers: wrap the layer objects themselves"
        )
    for name, original in expected.items():
        holders = [layer for layer in layers.values() if any(m is original for m in layer.modules())]
        assert len(holders) <= 1, (
            f"{call}: {len(holders)} adapters wrap the one layer {name} (registered as {names_of[id(original)]}), "
            "two adapters of one base: wrap each layer once and put that adapter under every name targeted (or "
            "leave the other names alone)"
        )
    held = {id(p): name for name, original in expected.items() for p in original.parameters()}  # the bases' own
    inside = {id(p) for layer in layers.values() for p in trainable(layer)} - held.keys()  # the factors
    loose = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in inside]
    of_bases = [name for name, p in model.named_parameters() if p.requires_grad and id(p) in held]
    assert not loose, f"{call}: parameters other than the adapters' factors still train: {loose[:3]}: " + (
        f"{of_bases[0]} is a parameter of the adapted layer itself (its nn.Linear subclass's own, beside weight and "
        "bias): freeze every parameter but the factors, by identity, not by name"
        if of_bases
        else "freeze every parameter of the model that is not an adapter's factor, whatever its name "
        "(model.parameters(), not a filter on names)"
    )
    assert inside, f"{call}: no adapter factor is trainable"
    with torch.no_grad():
        change = max_difference(model.eval()(x), before)
    assert change < 1e-5, f"{call}: the model's output changed by {change:.3g} right after apply_lora"


INNER_BASE = "<the adapters' own base>"  # stands for the name, inside an adapter, of the layer it wraps


@pytest.mark.points(2)
@pytest.mark.parametrize(
    "targets",
    [("q_proj", "fc1"), ("fc1",), (INNER_BASE, "fc1")],
    ids=["old-and-new-targets", "new-targets-only", "an-adapter's-base-and-new-targets"],
)
@pytest.mark.parametrize("reloaded", [False, True], ids=["", "reloaded-in-between"])
def test_a_second_call_adds_new_targets_and_keeps_the_trained_adapters(apply_lora, LoRALinear, targets, reloaded):
    model = ToyTransformer()
    originals = {name: model.get_submodule(name) for name in matching_linears(model, ["q_proj"])}
    adapted(apply_lora(model, ["q_proj"], r=2, alpha=4.0))
    first = adapters(model, LoRALinear)
    subclassed = next(iter(first))
    make_a_subclass_instance(first[subclassed], LoRALinear)  # a user's subclass of LoRALinear is an adapter too
    if reloaded:  # a checkpoint loaded between the calls puts new Parameters in place of all of them
        model.load_state_dict({name: value.clone() for name, value in model.state_dict().items()}, assign=True)
    trained = {}
    for name, layer in first.items():
        randomize_factors(layer, std=0.5)  # as after training
        trained[name] = [(p, p.detach().clone()) for p in trainable(layer)]  # the factors, seen before unfreezing
    if INNER_BASE in targets:
        name, layer = next(iter(first.items()))
        inner = next((inner for inner, module in layer.named_modules() if module is originals[name]), "")
        assert inner, f"the adapter at {name} does not hold the model's original nn.Linear: wrap the layer itself"
        targets = tuple(inner if target == INNER_BASE else target for target in targets)
    model.requires_grad_(True)  # as a user who unfroze the whole model (backbone, the adapters' bases) in between
    call = (
        f"a second apply_lora(model, {list(targets)}, r=3, alpha=4.5, dropout=0.25) on a model adapted on "
        f"['q_proj'] with r=2, alpha=4.0, dropout=0.0 (the one at {subclassed} then made an instance of a subclass of "
        "LoRALinear), "
        + (
            "then reloaded by load_state_dict(..., assign=True), which puts new Parameters in place, "
            if reloaded
            else ""
        )
        + "then unfrozen whole (model.requires_grad_(True))"
    )
    adapted(apply_lora(model, targets, r=3, alpha=4.5, dropout=0.25))  # another config than the first call's
    now = adapters(model, LoRALinear)
    nested = [name for name, layer in now.items() if any(isinstance(m, LoRALinear) for m in list(layer.modules())[1:])]
    assert not nested, (
        f"{call} wrapped adapters or their own base again (nested in {nested[:3]}): skip layers that are "
        "LoRALinear already (isinstance: a subclass's instance is one too), and every layer inside them"
    )
    for name, layer in first.items():
        assert now.get(name) is layer, (
            f"{call} replaced the adapter at {name}: keep LoRALinear layers as they are (the very objects), "
            "and adapt only the nn.Linear layers not yet adapted"
        )
        same = all(p.requires_grad and torch.equal(p.detach(), value) for p, value in trained[name])
        assert same, (
            f"{call} froze or changed the trained factors of {name}: the adapters already there keep their "
            "values and stay trainable"
            + (
                " (find the factors on the adapters at each call, never remember Parameters from an earlier one)"
                if reloaded
                else ""
            )
        )
    expected_new = set(matching_linears(ToyTransformer(), ["fc1"]))
    missed = sorted(expected_new - set(now))
    assert not missed, f"{call} left {missed[:3]} unadapted: the new targets get adapters"
    inside = {id(p) for factors in trained.values() for p, _ in factors}
    inside |= {id(p) for name, layer in now.items() if name not in first for p in trainable(layer)}
    bases = {id(p) for base in originals.values() for p in base.parameters()}  # held since before the first call
    loose = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in inside | bases]
    assert not loose, (
        f"{call}: parameters other than the adapters' factors train again: {loose[:3]}: every call freezes all "
        "the model's parameters but the adapters' factors, not just the first one"
    )
    loose_bases = [  # found on the very nn.Linear objects, whatever the wrapper's layout
        f"{name}'s base {parameter_name}"
        for name, base in originals.items()
        for parameter_name, parameter in base.named_parameters()
        if parameter.requires_grad
    ]
    assert not loose_bases, (
        f"{call}: expected only the factors trainable, measured the adapters' own bases training again "
        f"({loose_bases[:2]}): every call freezes all the model's parameters but the factors, the layers inside "
        "the adapters included (not only those outside them)"
    )
    assert len(inside) == 2 * len(now), (
        f"{call}: {len(inside)} trainable factors in {len(now)} adapters, expected 2 each: the old adapters "
        "stay trainable"
    )
    shapes = ToyTransformer()
    for name, layer in now.items():
        new = name not in first
        r, alpha, dropout = (3, 4.5, 0.25) if new else (2, 4.0, 0.0)
        base = shapes.get_submodule(name)
        count, numbers = sum(t.numel() for t in trainable(layer)), r * (base.in_features + base.out_features)
        if new:
            randomize_factors(layer, std=0.5)  # B is zero at init: dropout on the branch shows once it is not
        x = torch.randn(4, base.in_features)
        with torch.no_grad():
            varies = max_difference(layer.train()(x), layer(x)) > 0
        measured = (getattr(layer, "r", None), getattr(layer, "alpha", None), count, varies)
        whose = "new adapter" if new else "first call's adapter"
        assert measured == (r, alpha, numbers, dropout > 0), (
            f"{call}: the {whose} {name}: expected r={r}, alpha={alpha}, {numbers} "
            f"trainable numbers, {'a' if dropout else 'no'} dropout, measured r={measured[0]}, alpha={measured[1]}, "
            f"{count}, {'a' if varies else 'no'} dropout: "
            + (
                "a new adapter takes the r, alpha and dropout of the call that makes it, not those of the "
                "adapters already there"
                if new
                else "an adapter already there keeps its own r, alpha and dropout"
            )
        )


SECOND_CALL_CASES = [  # (zoo model, the part adapted first, its targets, the whole model's targets next)
    ("reused", "block", ("q_proj",), ("0", "v_proj")),  # enc.0, listed first, is block.q_proj's base
    ("tied", "layers", ("v_proj",), ("alias", "q_proj")),  # alias, listed after it, is layers.0.v_proj's base
    ("gated", "", ("up_proj",), ("gate", "down_proj")),  # up_proj.gate lies inside the base of up_proj's adapter
    ("gated-gate-first", "", ("up_proj",), ("gate", "down_proj")),  # and is listed first, as gate, outside it
]


@pytest.mark.points(1)
@pytest.mark.parametrize(
    "model_name, part, first, second",
    SECOND_CALL_CASES,
    ids=lambda value: (value or "model") if isinstance(value, str) else "+".join(value),
)
def test_a_second_call_leaves_the_adapters_bases_alone_under_every_name(
    apply_lora, LoRALinear, model_name, part, first, second
):  # fmt: skip
    model, _ = zoo_model(model_name)
    call = (
        f"apply_lora({model_name} model, {list(second)}) after apply_lora({'model.' + part if part else 'model'}, "
        f"{list(first)})"
    )
    expect_the_adapters_bases_left_alone(
        model, part, first, second, lambda module, targets: adapted(apply_lora(module, targets, 2, 4.0)),
        matching_linears, LoRALinear, raised_by_apply_lora, call,
    )  # fmt: skip


@pytest.mark.points(1)
def test_a_second_call_leaves_factor_layers_alone(apply_lora, LoRALinear):
    """Factors held as bias-free nn.Linear submodules (a layout the LoRALinear spec allows) are layers inside an
    adapter too: a later call whose targets name them wraps nothing there. (Raw nn.Parameter factors: nothing to
    target, and the check passes.)"""
    model = ToyTransformer()
    originals = {id(module) for module in model.modules()}
    apply_lora(model, ["q_proj"], 2, 4.0)
    expect_factor_layers_left_alone(
        model,
        originals,
        (LoRALinear,),
        lambda names: apply_lora(model, names, 2, 4.0),
        "apply_lora(model, ['q_proj'])",
        raised_by_apply_lora,
    )


@pytest.mark.points(1)
def test_adapters_stay_on_their_layers_devices(apply_lora, LoRALinear):
    model = ToyTransformer()
    model.temperature = nn.Parameter(torch.ones((), device="meta"))  # the model's first parameters on meta
    for module in [model.router, *model.layers[1::2]]:  # layers.0 on cpu
        module.to("meta")
    placed = {name: model.get_submodule(name).weight.device for name in matching_linears(model, DEFAULT_TARGETS)}
    apply_lora(model, DEFAULT_TARGETS, 2, 4.0)
    misplaced = [
        (name, parameter.device, device)
        for name, device in placed.items()
        for parameter in model.get_submodule(name).parameters()
        if parameter.device != device
    ]
    assert not misplaced, (
        f"after apply_lora on a model spread over two devices (its first parameters on meta, layers.0 on cpu), "
        f"{misplaced[0][0]} has parameters on {misplaced[0][1]}, its layer was on {misplaced[0][2]}: leave each "
        "adapter where its layer is (LoRALinear(layer, ...) as it is, no .to(the model's device))"
    )


@pytest.mark.points(1)
@pytest.mark.parametrize(
    "call",
    ["positional", "keyword"],
)
def test_passes_r_alpha_and_dropout_by_position_and_keyword(apply_lora, LoRALinear, call):
    model = ToyTransformer()
    originals = {name: model.get_submodule(name) for name in matching_linears(model, ["fc1"])}
    try:
        if call == "positional":
            apply_lora(model, ["fc1"], 3, 7.5, 0.25)
        else:
            apply_lora(model=model, dropout=0.25, alpha=7.5, r=3, target_modules=["fc1"])
    except (TypeError, ValueError) as error:
        pytest.fail(
            f"apply_lora called by {call} raised {type(error).__name__} ({error}): keep the stub's signature "
            "apply_lora(model, target_modules, r, alpha, dropout)",
            pytrace=False,
        )
    for name, base in originals.items():
        layer = model.get_submodule(name)
        count, expected = sum(t.numel() for t in trainable(layer)), 3 * (base.in_features + base.out_features)
        measured = (getattr(layer, "r", None), getattr(layer, "alpha", None), count)
        assert measured == (3, 7.5, expected), (
            f"apply_lora(model, ['fc1'], r=3, alpha=7.5, dropout=0.25) called by {call}: {name} has r={measured[0]}, "
            f"alpha={measured[1]}, {count} trainable numbers, expected r=3, alpha=7.5, {expected}: keep the order "
            "(model, target_modules, r, alpha, dropout) and pass each on to LoRALinear"
        )
        randomize_factors(layer, std=0.5)
        x = torch.randn(64, base.in_features)
        with torch.no_grad():
            varies = max_difference(layer.train()(x), layer(x)) > 0
        assert varies, (
            f"apply_lora(..., dropout=0.25) called by {call}: {name} gives the same train-mode output twice: "
            "pass dropout on to LoRALinear"
        )


@pytest.mark.points(1)
@pytest.mark.parametrize("last", ["eval", "train"], ids=["a-block-put-in-eval-last", "a-block-put-in-train-last"])
def test_each_adapter_follows_its_own_mode(apply_lora, LoRALinear, last):
    """A model adapted with dropout, then one block switched on its own (a frozen tower in eval mode beside the
    trained ones, or one block trained): each adapter's own mode decides whether it drops, as a LoRALinear of its
    own does."""
    model = adapted(apply_lora(ToyTransformer(), DEFAULT_TARGETS, r=2, alpha=4.0, dropout=0.5))
    layers = adapters(model, LoRALinear)
    for layer in layers.values():
        randomize_factors(layer, std=0.5)
    first = "train" if last == "eval" else "eval"
    model.train(first == "train")
    model.layers[0].train(last == "train")
    call = f"apply_lora(model, {list(DEFAULT_TARGETS)}, dropout=0.5), then model.{first}() and model.layers[0].{last}()"
    fix = "give each its own LoRALinear(layer, r, alpha, dropout)"
    expect_each_adapter_following_its_own_mode(layers, torch.randn(16, WIDTH), call, fix)


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, None], ids=["float64", "bfloat16", "mixed"])
def test_adapters_follow_the_model_dtype(apply_lora, LoRALinear, dtype):
    model = ToyTransformer().to(dtype=dtype or torch.float64)
    if dtype is None:  # float32 first (model.parameters() starts with the temperature), float64 layers after it
        model.temperature.data = model.temperature.data.float()
    what = f"a {dtype} model" if dtype else "a model whose first parameters are float32, its linears float64"
    expect_every_layer_in_its_dtype(
        model,
        lambda: apply_lora(model, DEFAULT_TARGETS, r=2, alpha=4.0),
        matching_linears(model, DEFAULT_TARGETS),
        "apply_lora",
        what,
        "LoRALinear(layer, r, alpha, dropout)",
    )
    if dtype is None:
        return
    with torch.no_grad():
        y = model(torch.randn(2, 3, WIDTH, dtype=dtype))
    assert y.dtype == dtype, f"the adapted {dtype} model computes in {y.dtype}"
