"""Checks of the `multi_adapter` kata: MultiLoRALinear(base) with named adapters, switched by peft's model-level rules.

The focused checks compute what each rule must give in float64 themselves; the last check drives the layer and
a peft ``lora.Linear`` holding the same factors through random sequences of calls (hypothesis's stateful testing)
and compares them after every step. Adapters are found by behaviour: the parameters that ``add_adapter``
registers, whatever their names, containers and layouts.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grader.flops import ArithmeticWork
from grader.models import GatedLinear, ReLULinear
from grader.oracles import load
from grader.probes import (
    DEVICES,
    DROP_IN,
    DROP_OUT,
    DROP_R,
    DROPOUT,
    EMPTY_BATCHES,
    EXACT_IN,
    EXACT_OUT,
    EXACT_R,
    FLOAT_DTYPES,
    FOREIGN_DEFAULT_DTYPES,
    GRAD_MODES,
    HALF_DTYPES,
    MANY_ROW_BATCHES,
    MASK_ROWS,
    RELATIVE_TOLERANCE,
    UNROUNDED_ALPHA,
    UNROUNDED_R,
    Conv1DLike,
    Factors,
    ForeignLinear,
    LinearLookalike,
    PeftLoraLinearLike,
    an_in_place_update_named,
    default_dtype,
    describe,
    dtype_name,
    exact_dropout_multipliers,
    expect_a_fraction_p_zeroed,
    expect_a_fresh_mask_for_every_element_and_call,
    expect_a_fresh_mask_for_every_row,
    expect_centred,
    expect_dropout_like_nn_dropout,
    expect_following_base_swaps,
    expect_merged_weight,
    expect_nn_linear_bound_if_uniform,
    expect_no_row_or_column_left_out,
    expect_on_the_base_device,
    expect_one_plain_lora_call,
    expect_plain_lora_in_regime,
    expect_value_error,
    factors,
    made_under_a_foreign_default_device,
    max_difference,
    output,
    plain_lora,
    relative_error,
    rounded_once_from_float64,
    strided,
)
from grader.signatures import expect_the_stubs_signatures
from lora_kata.grading.implementation import KataUnavailable


@pytest.mark.points(1)
def test_takes_the_stubs_parameters(implementation, MultiLoRALinear):
    """Callers pass the stub's parameters by name or by position: each definition takes them as the stub does."""
    expect_the_stubs_signatures(implementation, "multi_adapter")
    # Then a call into the kata: an unimplemented stub, its signatures right, scores nothing here.
    MultiLoRALinear(nn.Linear(4, 3))


SUBJECT = "MultiLoRALinear"  # the definition a failing check points at
load("peft:LoraConfig", "peft.tuners.lora")  # the last check's oracle, imported while collecting (seconds)

IN, OUT = 12, 10  # distinct from each other and from every rank used: a factor's shape tells which it is
X = (5, IN)  # the batch the checks compare outputs on
UNKNOWN = "poetry"  # a name no check ever adds
NEAR_MISS = "sqll"  # an unknown name one letter off a name the checks add
MANY_NAMES = [  # added after sql and chat: past any first-8 cut, and the cut ones are inside names listed before them
    "mysql", "nosql", "sql_v2", "chatbot", "chat_v2", "math2", "codex", "mathematics", "math", "code",
]  # fmt: skip
CUSTOMER_NAMES = [f"customer{number}" for number in range(284)]  # between them: 300 names, as a server of per-customer
# adapters holds, past any cut of the list (to the first 100, say)
LOOK_ALIKES = ["SQL", "Chat", "sql "]  # unknown: names equal to one the layer holds but for case, or a trailing space
LONG_NAMES = [  # added before them: plain identifiers as long as real ones, so no cut of the list (to a width) passes
    f"{task}_adapter_finetuned_on_{data}_v{version}"
    for version, (task, data) in enumerate([("customer_support", "tickets"), ("sql_generation", "spider"),
                                            ("summarization", "news_articles"), ("translation", "europarl")])
]  # fmt: skip


@dataclass
class Adapter:
    """One adapter of the layer under grade: its factors (the very tensors it registered) and its scaling."""

    name: str
    factors: Factors
    scaling: float

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.factors.stored_A, self.factors.stored_B

    def delta(self) -> torch.Tensor:
        """``scaling * B @ A`` (out, in) in float64."""
        return self.scaling * self.factors.B.detach().double() @ self.factors.A.detach().double()

    def delta_scaled_in_float32(self) -> torch.Tensor:
        """``delta()`` with the scaling rounded to float32, as a float32 tensor holding alpha / r gives."""
        return self.delta() * (torch.tensor(self.scaling, dtype=torch.float32).item() / self.scaling)

    def randomize(self, std: float = 0.3, through_data: bool = False) -> None:
        """Random values in both factors, as training would give (B stops being zero); ``through_data``: written
        through ``.data``, which bumps no version."""
        with torch.no_grad():
            for tensor in self.tensors:
                target = tensor.data if through_data else tensor
                target.copy_(torch.randn(tensor.shape, dtype=torch.float64).mul_(std).to(tensor.dtype))


def add(
    layer: nn.Module,
    name: str,
    r: int,
    alpha: float = 16.0,
    dropout: float = 0.0,
    in_features: int = IN,
    out_features: int = OUT,
) -> Adapter:
    """``layer.add_adapter(name, r=r, alpha=alpha, dropout=dropout)``, and the two factors it registered."""
    assert len({in_features, out_features, r}) == 3, "grader bug: add() needs distinct dimensions"
    before = {id(parameter) for parameter in layer.parameters()}
    layer.add_adapter(name, r=r, alpha=alpha, dropout=dropout)
    new = [parameter for parameter in layer.parameters() if id(parameter) not in before]
    shapes = [tuple(tensor.shape) for tensor in new]
    A = next((t for t in new if tuple(t.shape) in ((r, in_features), (in_features, r))), None)
    B = next((t for t in new if tuple(t.shape) in ((out_features, r), (r, out_features))), None)
    assert len(new) == 2 and A is not None and B is not None, (
        f"add_adapter({name!r}, r={r}) registered {len(new)} new parameters shaped {shapes}, expected two factors "
        f"(r, in)=({r}, {in_features}) and (out, r)=({out_features}, {r}) (either orientation): register them as "
        "parameters of the layer (nn.ParameterDict, nn.ModuleDict), not in a plain dict or list"
    )
    found = Factors(A, B, tuple(A.shape) == (in_features, r), tuple(B.shape) == (r, out_features))
    return Adapter(name, found, alpha / r)


BASE_KINDS: dict[str, tuple[Callable[..., nn.Linear], str]] = {  # the bases an answer must take: builder, trap
    "nn.Linear": (nn.Linear, ""),
    "bias-free nn.Linear": (
        lambda *dims, **place: nn.Linear(*dims, bias=False, **place),
        "a base may have no bias (base.bias is None): freeze it with base.requires_grad_(False)",
    ),
    "nn.Linear subclass": (  # as nn.MultiheadAttention's out_proj is
        nn.modules.linear.NonDynamicallyQuantizableLinear,
        "accept any nn.Linear, subclasses too: isinstance(base, nn.Linear), not type(base) is nn.Linear",
    ),
    "nn.Linear subclass with its own forward": (  # its output is not F.linear(x, weight, bias)
        lambda *dims, **place: GatedLinear(*dims, (0.5, 2.0), **place),
        "accept any nn.Linear, subclasses too: isinstance(base, nn.Linear), not type(base) is nn.Linear",
    ),
    "nn.Linear with a forward hook": (  # as hooks of a profiler, an activation cache or a quantizer
        lambda *dims, **place: hooked(nn.Linear(*dims, **place)),
        "",
    ),
}
CALLED_BASES = ["nn.Linear subclass with its own forward", "nn.Linear with a forward hook"]  # base(x) != F.linear


def hooked(base: nn.Linear) -> nn.Linear:
    """``base`` with a forward hook that changes its output: only a call of the module itself, base(x), runs it."""
    base.register_forward_hook(lambda module, inputs, y: 2.0 * y - 1.0)
    return base


def make(MultiLoRALinear, dtype=torch.float64, device="cpu", kind="nn.Linear", in_features=IN, out_features=OUT):
    """A base of the ``BASE_KINDS`` ``kind`` and the layer adapting it; a layer that cannot take that base fails
    the check with one line naming the kind."""
    build, trap = BASE_KINDS[kind]
    base = build(in_features, out_features, dtype=dtype, device=device)
    try:
        return base, MultiLoRALinear(base)
    except (NotImplementedError, KataUnavailable):
        raise
    except Exception as error:
        pytest.fail(f"MultiLoRALinear({kind}) raised {type(error).__name__} ({error})" + (f": {trap}" if trap else ""),
                    pytrace=False)  # fmt: skip


def two_adapters(MultiLoRALinear, dtype=torch.float64):
    """A layer holding "sql" (active, r=3, alpha=16: a scaling of 16/3, which float32 does not hold) and "chat"
    (r=4, alpha=6), both with random factors."""
    base, layer = make(MultiLoRALinear, dtype=dtype)
    sql, chat = add(layer, "sql", r=3, alpha=16.0), add(layer, "chat", r=4, alpha=6.0)
    sql.randomize()
    chat.randomize()
    return base, layer, sql, chat


def batch(dtype=torch.float64, device="cpu") -> torch.Tensor:
    return torch.randn(*X, dtype=dtype, device=device)


def computed(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's eval-mode output for ``x``, without autograd."""
    was_training = layer.training
    layer.eval()
    try:
        with torch.no_grad():
            return output(layer, x)
    finally:
        layer.train(was_training)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b`` in float64."""
    return F.linear(x.double(), weight.detach().double(), None if bias is None else bias.detach().double())


def update(layer: nn.Module, base: nn.Linear, weight: torch.Tensor) -> torch.Tensor:
    """What the layer adds to ``x W^T + b`` (W the given weight), as an (out, in) matrix read off eval-mode
    outputs for one-hot inputs."""
    identity = torch.eye(base.in_features, dtype=base.weight.dtype)
    return (computed(layer, identity).double() - linear(identity, weight, base.bias)).T


def trainable_ids(layer: nn.Module) -> set[int]:
    return {id(parameter) for parameter in layer.parameters() if parameter.requires_grad}


def registered(layer: nn.Module, adapter: Adapter) -> bool:
    ids = {id(parameter) for parameter in layer.parameters()}
    return all(id(tensor) in ids for tensor in adapter.tensors)


def describe_trainable(layer: nn.Module, adapters: list[Adapter]) -> str:
    """Which adapters' factors train, in words: "sql's", "nothing", "chat's and 2 other tensors"."""
    ids = trainable_ids(layer)
    names = [adapter.name for adapter in adapters if all(id(t) in ids for t in adapter.tensors)]
    known = {id(t) for adapter in adapters for t in adapter.tensors if id(t) in ids}
    others = len(ids - known) + sum(
        1 for adapter in adapters if adapter.name not in names for t in adapter.tensors if id(t) in ids
    )
    words = [f"{name}'s" for name in names] + ([f"{others} other tensor(s)"] if others else [])
    return " and ".join(words) or "nothing"


def expect_trainable(layer: nn.Module, adapters: list[Adapter], active: Adapter | None, when: str, cause: str) -> None:
    """Fail the check unless exactly the factors of ``active`` (nothing when None) require grad."""
    expected = {id(t) for t in active.tensors} if active is not None else set()
    for adapter in adapters:
        assert registered(layer, adapter), (
            f"{when}, the factors that add_adapter({adapter.name!r}) registered are no longer parameters of the "
            "layer: keep each adapter's tensors from add_adapter to delete_adapter (an optimizer holds them)"
        )
    assert trainable_ids(layer) == expected, (
        f"{when}, {describe_trainable(layer, adapters)} trains, expected "
        f"{f'{active.name}' + chr(39) + 's factors only' if active else 'nothing'}: {cause}"
    )


def expect_update(layer: nn.Module, base: nn.Linear, weight: torch.Tensor, expected: torch.Tensor, when: str,
                  causes: dict[str, torch.Tensor]) -> None:  # fmt: skip
    """Fail the check unless the layer adds ``expected`` (out, in) to ``x W^T + b``; ``causes`` maps a likely
    cause to the update a mistake would give."""
    measured = update(layer, base, weight)
    error = max_difference(measured, expected)
    tolerance = 1e-9 * (1 + expected.abs().max().item())
    if error <= tolerance:
        return
    cause = next((text for text, wrong in causes.items() if max_difference(measured, wrong) <= tolerance), "")
    assert error <= tolerance, (
        f"{when}, the layer adds an update that differs by {error:.3g} from the one expected: "
        + (
            cause
            or "it must be base(x) + scaling * B @ A dropout(x), with the active adapter's own factors and scaling"
        )
    )


def expect_weight(base: nn.Linear, expected: torch.Tensor, when: str, causes: dict[str, torch.Tensor],
                  slack: torch.Tensor | None = None) -> None:  # fmt: skip
    """Fail the check unless the base's weight holds ``expected`` (float64, to 1e-9; or entry by entry to
    ``slack``, the rounding a narrower weight's dtype allows)."""
    tolerance = 1e-9 * (1 + expected.abs().max().item())
    slack = torch.full_like(expected, tolerance) if slack is None else slack

    def within(target: torch.Tensor) -> bool:
        return bool(((base.weight.detach().double() - target).abs() <= slack).all())

    if within(expected):
        return
    error = max_difference(base.weight, expected)
    cause = next((text for text, wrong in causes.items() if within(wrong)), "")
    if not cause and base.weight.dtype == torch.float64 and error <= 1e-5 * (1 + expected.abs().max().item()):
        cause = "off by float32 rounding: a float64 weight is merged and unmerged in float64 (upcast only fp16/bf16)"
    pytest.fail(f"{when}, the base's weight differs by {error:.3g} from the one expected" + (
        f": {cause}" if cause else ""), pytrace=False)  # fmt: skip


def expect_the_very_weight(base: nn.Linear, weight: torch.Tensor, storage: int, when: str) -> None:
    """Fail the check unless ``base.weight`` is still ``weight``, the nn.Parameter it was, in its dtype, holding
    its values in the memory it held them in (``storage``, its ``data_ptr()`` then): written in place."""
    assert base.weight is weight, (
        f"{when} the base's weight is another object: change the very Parameter in place "
        "(with torch.no_grad(): base.weight.copy_(merged)), so references to it (an optimizer, tied weights) follow"
    )
    assert weight.dtype == base.weight.dtype, f"{when} the weight is {base.weight.dtype}, expected {weight.dtype}"
    assert base.weight.data_ptr() == storage, (
        f"{when} the base's weight Parameter holds new memory (weight.data = ... ?), so a view of the weight taken "
        "before sees the old values: write the values in place (with torch.no_grad(): base.weight.copy_(merged))"
    )


def merged_list(layer: nn.Module, when: str) -> list[str]:
    value = getattr(layer, "merged_adapters", None)
    assert isinstance(value, list), (
        f"{when}, layer.merged_adapters is {type(value).__name__}, expected a list of names (a property or attribute"
        " giving a new list(...) at every call)"
    )
    return list(value)


def active(layer: nn.Module) -> object:
    """``layer.active_adapter``, after failing the check unless it is a name or None."""
    value = getattr(layer, "active_adapter", "<no attribute active_adapter>")
    assert value is None or isinstance(value, str), (
        f"layer.active_adapter is {describe(value)}, expected the active adapter's name or None: "
        + ("make it a @property" if callable(value) else "hold the name, a str")
    )
    return value


@contextlib.contextmanager
def disabled(layer: nn.Module) -> Iterator[None]:
    """``with layer.disable_adapters():``, after failing the check unless it gives a context manager."""
    manager = layer.disable_adapters()
    assert hasattr(manager, "__enter__") and hasattr(manager, "__exit__"), (
        f"layer.disable_adapters() returned {type(manager).__name__}, expected a context manager "
        "(with layer.disable_adapters(): ...): decorate it with @contextlib.contextmanager and yield"
    )
    with manager:
        yield


def names_in(message: str) -> set[str]:
    """The whole identifiers in ``message``: 'sql' is named by "sql, mysql" but not by "mysql" alone."""
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message))


def expect_error_naming(call: Callable[[], object], description: str, known: list[str]) -> None:
    """Fail the check unless ``call()`` raises a ValueError whose message names every adapter in ``known``, each as
    a whole name."""
    listed = ", ".join(map(repr, known)) if len(known) <= 16 else f"{', '.join(map(repr, known[:6]))}, ..."
    try:
        call()
    except (NotImplementedError, KataUnavailable):
        raise
    except ValueError as error:
        missing = [name for name in known if name not in names_in(str(error))]
        shown = str(error) if len(str(error)) <= 300 else f"{str(error)[:300]}..."
        assert not missing, (
            f"{description} raised ValueError({shown!r}), which does not name the adapters "
            f"{', '.join(map(repr, missing[:6]))}{f', ... ({len(missing)} in all)' if len(missing) > 6 else ''}: say "
            "which names the layer "
            f"holds, all {len(known)} (no cut of the list), each whole ({listed}), so the typo shows"
        )
        return
    except Exception as error:
        pytest.fail(f"{description} raised {type(error).__name__} ({error}); expected a ValueError", pytrace=False)
    pytest.fail(
        f"{description} raised nothing; expected a ValueError naming the {len(known)} adapters ({listed}): "
        "no adapter has that very name (names are compared exactly, case and spaces too)",
        pytrace=False,
    )


def merge_allowing_value_error(layer: nn.Module, **kwargs: object) -> None:
    """``layer.merge(**kwargs)`` where the spec leaves doing nothing or raising ValueError open."""
    with contextlib.suppress(ValueError):
        layer.merge(**kwargs)


def unmerge_allowing_value_error(layer: nn.Module) -> None:
    with contextlib.suppress(ValueError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer.unmerge()


def observable_state(layer: nn.Module) -> dict[str, object]:
    """Everything a caller can see of the layer: active and merged adapters, its parameters (which, their values,
    which train), its submodules (a dropout's p) and what it computes in train mode (the active adapter's dropout and
    scaling), read under a seed of its own."""
    return {
        "active_adapter": active(layer),
        "merged_adapters": merged_list(layer, "reading the layer's state"),
        "parameters": [id(parameter) for parameter in layer.parameters()],
        "values": [parameter.detach().clone() for parameter in layer.parameters()],
        "trainable": [parameter.requires_grad for parameter in layer.parameters()],
        "submodules (a dropout's p?)": [(name, repr(module)) for name, module in layer.named_modules()],
        "train-mode output (the active adapter's dropout or scaling?)": [seeded_train_output(layer)],
    }


def seeded_train_output(layer: nn.Module) -> torch.Tensor:
    """The layer's train-mode output for a fixed batch under a fixed seed, every module's mode and the caller's random
    state left as they were."""
    modes = {module: module.training for module in layer.modules()}
    weight = next(parameter for parameter in layer.parameters())
    x = torch.randn(*X, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(weight)
    try:
        with torch.random.fork_rng(devices=[weight.device] if weight.is_cuda else []), torch.no_grad():
            torch.manual_seed(11)
            layer.train()
            return output(layer, x).detach().clone()
    finally:
        for module, training in modes.items():
            module.training = training


def same_tensors(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes and values, NaN where NaN was."""
    return a.shape == b.shape and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def expect_state_unchanged(layer: nn.Module, before: dict[str, object], when: str) -> None:
    """Fail the check unless ``observable_state(layer)`` is still ``before``: every ValueError leaves the layer
    as it was."""
    after = observable_state(layer)
    same_values = len(after["values"]) == len(before["values"]) and all(
        same_tensors(a, b) for a, b in zip(after["values"], before["values"], strict=True)
    )
    outputs = "train-mode output (the active adapter's dropout or scaling?)"
    changed = [key for key in before if key not in ("values", outputs) and after[key] != before[key]]
    changed += [] if same_values else ["parameter values"]
    changed += [] if same_tensors(after[outputs][0], before[outputs][0]) else [outputs]
    assert not changed, (
        f"{when}, the layer's {' and '.join(changed)} changed: every ValueError leaves the layer as it was (check "
        "first, then change anything)"
    )


# ---------------------------------------------------------------------------------------------------------------
# A new layer, add_adapter


@pytest.mark.points(2)
def test_a_new_layer_holds_the_very_base_frozen_and_no_adapter(MultiLoRALinear):
    base, layer = make(MultiLoRALinear)
    assert isinstance(layer, nn.Module), f"MultiLoRALinear(...) is a {type(layer).__name__}: subclass nn.Module"
    assert any(module is base for module in layer.modules()), (
        "the nn.Linear passed in is not a submodule of the MultiLoRALinear: keep the object itself (self.base = base)"
    )
    still_trainable = [name for name, parameter in base.named_parameters() if parameter.requires_grad]
    assert not still_trainable, f"base parameters {still_trainable} still require grad: base.requires_grad_(False)"
    assert not trainable_ids(layer), "a new MultiLoRALinear has trainable parameters: it holds no adapter yet"
    assert active(layer) is None, f"a new layer's active_adapter is {active(layer)!r}, expected None: no adapter yet"
    assert merged_list(layer, "on a new layer") == [], "a new layer lists merged adapters: expected []"
    x = batch()
    error = max_difference(computed(layer, x), base(x))
    assert error < 1e-12, f"a layer with no adapter computes base(x) off by {error:.3g}: return base(x)"


@pytest.mark.points(1)
@pytest.mark.parametrize(
    "make_base",
    [
        lambda: nn.Conv1d(IN, OUT, 1),
        lambda: nn.Bilinear(IN, IN, OUT),
        lambda: nn.Embedding(IN, OUT),  # a 2-D weight, and no nn.Linear
        lambda: Conv1DLike(IN, OUT),
        # in_features, out_features and an (out, in) weight, yet no nn.Linear: duck typing takes them, and wrapping
        # peft's lora.Linear (what get_peft_model leaves) would drop its adapter
        lambda: LinearLookalike(IN, OUT),
        lambda: PeftLoraLinearLike(IN, OUT),
        lambda: ForeignLinear(IN, OUT),  # another library's class named Linear
    ],
    ids=["Conv1d", "Bilinear", "Embedding", "Conv1DLike", "LinearLookalike", "PeftLoraLinearLike", "ForeignLinear"],
)
def test_rejects_a_base_that_is_not_linear(MultiLoRALinear, make_base):
    base = make_base()
    expect_value_error(lambda: MultiLoRALinear(base), f"MultiLoRALinear({type(base).__name__}(...)), which is no "
                       "nn.Linear (a 2-D weight is not enough, nor in_features and out_features, nor a class "
                       "named Linear: isinstance(base, nn.Linear))")  # fmt: skip


@pytest.mark.points(1)
@pytest.mark.parametrize("kind", CALLED_BASES)
def test_the_base_runs_its_own_forward_and_hooks(MultiLoRALinear, kind):
    base, layer = make(MultiLoRALinear, kind=kind)
    x = batch()
    with torch.no_grad():
        expected = base(x)
    cause = "call the base itself, self.base(x), not F.linear(x, base.weight, base.bias), so its forward and hooks run"
    error = max_difference(computed(layer, x), expected)
    assert error < 1e-12, f"with an {kind} as base and no adapter, the output is off base(x) by {error:.3g}: {cause}"
    sql = add(layer, "sql", r=3, alpha=6.0)
    sql.randomize()
    error = max_difference(computed(layer, x), expected + x @ sql.delta().T)
    assert error < 1e-9, (
        f"with an {kind} as base and 'sql' active, the output is off base(x) + scaling B A x by {error:.3g}: {cause}"
    )
    with disabled(layer):
        error = max_difference(computed(layer, x), expected)
    assert error < 1e-12, f"with an {kind} as base, inside disable_adapters() the output is off base(x) by " + (
        f"{error:.3g}: {cause}"
    )
    layer.merge()  # the stub: y = base(x) when the active adapter is merged, the base called with the merged weight
    with torch.no_grad():
        merged = base(x)
    error = max_difference(computed(layer, x), merged)
    assert error < 1e-12, f"with an {kind} as base and 'sql' merged, the output is off base(x) (the merged weight " + (
        f"in it) by {error:.3g}: {cause}, merged too"
    )


REGIME_BASES: dict[str, Callable[..., nn.Linear]] = {  # bases whose output is not F.linear(x, W, b)
    "nn.Linear subclass with a gain parameter and its own forward": lambda *dims, **place: GatedLinear(
        *dims, (0.5, 2.0), **place
    ),
    "nn.Linear with a forward hook": lambda *dims, **place: hooked(nn.Linear(*dims, **place)),
    "nn.Linear subclass ending in a ReLU": ReLULinear,
}
REGIME_SHAPES = {"grad on": ((2, 3), False), "grad off": ((5,), True), "inference mode": ((2, 3), True)}


@pytest.mark.points(1)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("grad", GRAD_MODES)
@pytest.mark.parametrize("kind", REGIME_BASES)
def test_every_base_computes_plain_lora_in_every_grad_mode_and_after_edits(MultiLoRALinear, kind, grad, mode):
    """base(x) + scaling B A dropout(x) of the active adapter, its gradients with grad on, in every grad mode (the
    layer called in the others first), after edits of the base and the factors in place, through .data and by
    load_state_dict(..., assign=True): nothing cached between calls, the factors read off the layer at every call,
    the base's own call (its hooks, its forward, its parameters frozen)."""
    base = REGIME_BASES[kind](IN, OUT, dtype=torch.float64)
    layer = MultiLoRALinear(base)
    r, alpha = 3, 6.0
    layer.add_adapter("sql", r=r, alpha=alpha, dropout=DROPOUT)
    layer.add_adapter("chat", r=4, alpha=2.0)  # beside it, frozen
    layer.train(mode == "train")
    regime = f"on an {kind} base, 'sql' (r={r}, alpha={alpha:g}, dropout={DROPOUT}) active, {mode} mode, {grad}"
    batch_shape, contiguous = REGIME_SHAPES[grad]
    with an_in_place_update_named(regime):
        expect_plain_lora_in_regime(layer, base, r, alpha / r, batch_shape, contiguous, grad, regime,
                                    DROPOUT if mode == "train" else 0.0)  # fmt: skip
        if mode == "eval":  # the swaps compare with dropout off
            built_as = regime.removesuffix(f", {grad}")  # the probe names the grad mode itself
            expect_following_base_swaps(layer, base, r, alpha / r, batch_shape, contiguous, grad, built_as)


ROW_COUNTS = [*EMPTY_BATCHES, *MANY_ROW_BATCHES]  # batches of no rows and of a real model's many


@pytest.mark.points(1)
@pytest.mark.parametrize("batch_shape", ROW_COUNTS, ids=lambda shape: "x".join(map(str, shape)))
@pytest.mark.parametrize("kind", REGIME_BASES)
def test_many_rows_and_no_rows_compute_plain_lora_on_every_base(MultiLoRALinear, kind, batch_shape):
    """base(x) + scaling B A x at every batch size, on each base whose output is not F.linear(x, W, b): an empty batch
    maps to an empty output (with its gradients), and a large one (a prefill, an eval pass) calls the base itself as a
    small one does; in eval mode, 'sql' active with trained-looking factors, grad on up to 16384 rows."""
    base = REGIME_BASES[kind](IN, OUT, dtype=torch.float32)
    layer = MultiLoRALinear(base)
    sql = add(layer, "sql", r=3, alpha=6.0)
    add(layer, "chat", r=4, alpha=2.0)  # beside it, frozen
    sql.randomize()
    layer.eval()
    rows = math.prod(batch_shape)
    grad = "grad on" if rows <= 16384 else "inference mode"
    regime = f"on an {kind} base, 'sql' (r=3, alpha=6) active, eval mode, {grad}, a batch of {rows} rows"
    cause = (": a batch of any size computes what a small one does, the base's own call base(x) (its forward, its "
             "hooks) plus the update: no fast path from some row count on (the update folded into the weight, "
             "F.linear(x, W + dW, b))")  # fmt: skip
    expect_one_plain_lora_call(layer, base, sql.factors, sql.scaling, batch_shape, True, grad, regime, cause)


BASE_PATHS = ["with no adapter active", "inside disable_adapters()", "on a merged layer"]  # forward = base(x) alone


@pytest.mark.points(1)
@pytest.mark.parametrize("path", BASE_PATHS)
def test_the_base_alone_passes_the_gradient_on_to_x(MultiLoRALinear, path):
    base, layer, _, _ = two_adapters(MultiLoRALinear)
    if path == BASE_PATHS[0]:
        layer.delete_adapter("sql")
    elif path == BASE_PATHS[2]:
        layer.merge()
    x, upstream = batch().requires_grad_(), torch.randn(X[0], OUT, dtype=torch.float64)
    with disabled(layer) if path == BASE_PATHS[1] else contextlib.nullcontext():
        y = output(layer, x)
    assert y.requires_grad, (
        f"{path}, the output does not require grad though x does: compute base(x) in the graph, never under "
        "torch.no_grad() (nothing of the layer trains there, but the layers before it do, through x)"
    )
    y.backward(upstream)
    error = max_difference(x.grad, upstream @ base.weight.detach())
    assert error < 1e-9, f"{path}, dL/dx is off dL/dy W by {error:.3g}: return base(x), in the graph"


@pytest.mark.points(3)
def test_the_first_adapter_becomes_active_trainable_and_adds_nothing(MultiLoRALinear):
    base, layer = make(MultiLoRALinear)
    sql = add(layer, "sql", r=3, alpha=6.0)
    A, B = sql.factors.A, sql.factors.B
    assert not (A.abs().max() == 0 and B.abs().max() > 0), "a new adapter has A zero and B random: swap them"
    assert B.abs().max().item() == 0, "a new adapter's B is not zero: start B at zeros, so it adds nothing yet"
    assert A.abs().max().item() > 0 and torch.isfinite(A).all(), (
        "a new adapter's A is zero or not finite: make it random"
    )
    assert active(layer) == "sql", (
        f"after add_adapter('sql') on a layer with no adapter, active_adapter is {active(layer)!r}, expected 'sql': "
        "the first adapter becomes active when none is"
    )
    expect_trainable(layer, [sql], sql, "after the first add_adapter('sql')", "the new active adapter trains")
    x = batch()
    error = max_difference(computed(layer, x), base(x))
    assert error < 1e-12, f"a new adapter changes the output by {error:.3g}: is its B zeros?"


@pytest.mark.points(2)
def test_a_second_adapter_leaves_the_active_one_active_and_frozen_itself(MultiLoRALinear):
    base, layer = make(MultiLoRALinear)
    sql = add(layer, "sql", r=2, alpha=5.0)
    sql.randomize()
    chat = add(layer, "chat", r=4, alpha=6.0)
    assert active(layer) == "sql", (
        f"after add_adapter('sql'), add_adapter('chat'), active_adapter is {active(layer)!r}, expected 'sql': "
        "a new adapter becomes active only when no adapter is"
    )
    expect_trainable(layer, [sql, chat], sql, "after add_adapter('sql'), add_adapter('chat')",
                     "a new adapter added beside an active one stays frozen")  # fmt: skip
    expect_update(layer, base, base.weight, sql.delta(), "after add_adapter('chat') beside the active 'sql'",
                  {"it computes with chat's factors: the active adapter must not change": chat.delta()})  # fmt: skip


@pytest.mark.points(1)
def test_adding_an_adapter_to_a_merged_layer_keeps_it_merged(MultiLoRALinear):
    base, layer, sql, _ = two_adapters(MultiLoRALinear)
    W0, x = base.weight.detach().double().clone(), batch()
    layer.merge()
    before = computed(layer, x)
    math_ = add(layer, "math", r=2, alpha=5.0)
    when = "after merge() of 'sql', add_adapter('math')"
    listed = merged_list(layer, when)
    assert listed == ["sql"], (
        f"{when}, merged_adapters is {listed}, expected ['sql']: add_adapter never unmerges (only set_adapter, "
        "disable_adapters, delete_adapter and unmerge do, as peft's model level does)"
    )
    expect_weight(base, W0 + sql.delta(), when, {"add_adapter unmerged sql: it never unmerges": W0})
    assert active(layer) == "sql", f"{when}, active_adapter is {active(layer)!r}, expected 'sql'"
    assert math_.factors.B.abs().max().item() == 0 and not any(t.requires_grad for t in math_.tensors), (
        f"{when}, the new adapter's B is not zero or it trains: it is added frozen beside the active one"
    )
    error = max_difference(computed(layer, x), before)
    assert error < 1e-9, f"{when}, the output changed by {error:.3g}: nothing but a frozen adapter was added"
    layer.unmerge()
    expect_weight(base, W0, f"{when}, unmerge()", {"sql's update is still in the weight": W0 + sql.delta()})
    expect_update(layer, base, W0, sql.delta(), f"{when}, unmerge()", {})


@pytest.mark.points(2)
def test_adding_a_name_already_there_is_a_value_error_that_keeps_it(MultiLoRALinear):
    base, layer = make(MultiLoRALinear)
    sql = add(layer, "sql", r=2, alpha=5.0, dropout=0.5)
    sql.randomize()
    kept = [tensor.detach().clone() for tensor in sql.tensors]
    count, state = len(list(layer.parameters())), observable_state(layer)
    expect_value_error(lambda: layer.add_adapter("sql", r=4, alpha=8.0, dropout=0.0),
                       "add_adapter('sql', dropout=0.0) when 'sql' (dropout=0.5) is there")  # fmt: skip
    expect_state_unchanged(layer, state, "after a failed add_adapter('sql', dropout=0.0) when 'sql' is there")
    chat = add(layer, "chat", r=4, alpha=6.0)  # inactive, dropout 0: a refused call must not touch it either
    chat.randomize()
    state = observable_state(layer)
    expect_value_error(lambda: layer.add_adapter("chat", r=3, dropout=0.5), "add_adapter('chat') when 'chat' is there")
    expect_state_unchanged(layer, state, "after a failed add_adapter('chat', dropout=0.5) when 'chat' is there")
    layer.eval()
    for adapter, p in (("chat", 0.0), ("sql", 0.5)):
        layer.set_adapter(adapter)
        zeroed = zeroed_fraction(layer, base)
        assert abs(zeroed - p) < 0.1, (
            f"after failed add_adapter calls for the names there (with other dropouts), {adapter!r} zeroes "
            f"{zeroed:.0%} of its inputs in train mode, expected about {p:.0%} (its own dropout={p}): the refused call "
            "replaced the kept adapter's dropout; check the name before making anything"
        )
    layer.delete_adapter("chat")
    assert registered(layer, sql) and len(list(layer.parameters())) == count, (
        "a failed add_adapter('sql') replaced or added parameters: check the name before creating anything"
    )
    changed = not all(torch.equal(t, k) for t, k in zip(sql.tensors, kept, strict=True))
    assert not changed, "a failed add_adapter('sql') changed the existing adapter's factors: raise before touching them"
    expect_update(layer, base, base.weight, sql.delta(), "after a failed add_adapter('sql')",
                  {"the layer's scaling changed to the failed call's alpha / r": 2.0 / 2.5 * sql.delta()})  # fmt: skip
    try:  # a name equal to 'sql' but for case is another name
        add(layer, "SQL", r=4)
    except ValueError as error:
        pytest.fail(f"add_adapter('SQL') beside 'sql' raised ValueError ({error}), expected a new adapter: names are "
                    "compared exactly, case too (only 'sql' itself is already there)", pytrace=False)  # fmt: skip
    assert registered(layer, sql), "add_adapter('SQL') replaced the adapter 'sql': names are compared exactly, case too"


@pytest.mark.points(1)
@pytest.mark.parametrize(
    "arguments",
    [
        {"r": 0},
        {"r": -2},
        {"r": 2.5},
        {"r": 4.0},
        {"r": None},
        {"r": "4"},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"dropout": math.nan},
    ],
    ids=lambda arguments: ",".join(f"{k}={v!r}" for k, v in arguments.items()),
)
def test_add_adapter_rejects_invalid_arguments(MultiLoRALinear, arguments):
    _, layer = make(MultiLoRALinear)
    call = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
    expect_value_error(lambda: layer.add_adapter("sql", **arguments), f"add_adapter('sql', {call})")
    assert not list(layer.parameters())[2:] and active(layer) is None, (
        f"a failed add_adapter('sql', {call}) left an adapter behind: check the arguments before creating anything"
    )
    try:
        layer.add_adapter("sql", r=2)
    except ValueError as error:
        pytest.fail(f"after a failed add_adapter('sql', {call}), add_adapter('sql', r=2) raised ValueError ({error}): "
                    "the failed call left the name behind; check every argument before recording anything",
                    pytrace=False)  # fmt: skip
    assert active(layer) == "sql", (
        f"after a failed add_adapter('sql', {call}), add_adapter('sql', r=2) left active_adapter {active(layer)!r}"
    )
    state = observable_state(layer)
    expect_value_error(lambda: layer.add_adapter("chat", **arguments), f"add_adapter('chat', {call}) beside 'sql'")
    expect_state_unchanged(layer, state, f"after a failed add_adapter('chat', {call}) beside the active 'sql'")


@pytest.mark.points(1)
def test_add_adapter_defaults_are_r_8_alpha_16_and_no_dropout(MultiLoRALinear):
    base = nn.Linear(IN, OUT, dtype=torch.float64)
    layer = MultiLoRALinear(base)
    before = {id(parameter) for parameter in layer.parameters()}
    layer.add_adapter("sql")
    new = [parameter for parameter in layer.parameters() if id(parameter) not in before]
    count = sum(parameter.numel() for parameter in new)
    assert count == 8 * (IN + OUT), (
        f"add_adapter('sql') registered {count} numbers, expected r*(in+out) = {8 * (IN + OUT)} with the default "
        "r=8: keep the stub's defaults add_adapter(name, r=8, alpha=16.0, dropout=0.0)"
    )
    sql = Adapter("sql", _factors_of(new, 8), 16.0 / 8)
    expect_centred(sql.factors.A, "after add_adapter('sql') with r=8")
    sql.randomize()
    expect_update(layer.train(), base, base.weight, sql.delta(), "with add_adapter's defaults",
                  {"the default alpha is 16 and r 8, so the scaling is 2": sql.delta() / 2})  # fmt: skip
    x = batch()
    with torch.no_grad():
        repeat = max_difference(output(layer.train(), x), output(layer, x))
    assert repeat == 0, f"with the default dropout train-mode outputs vary by {repeat:.3g}: the default is 0.0"


@pytest.mark.points(1)
def test_add_adapter_takes_positional_and_keyword_arguments_and_alpha_zero(MultiLoRALinear):
    base, layer = make(MultiLoRALinear)
    before = {id(parameter) for parameter in layer.parameters()}
    layer.add_adapter("sql", 8, 0.5)  # positional, in the stub's order: name, r, alpha, dropout
    sql = Adapter("sql", _factors_of([p for p in layer.parameters() if id(p) not in before], 8), 0.5 / 8)
    sql.randomize()
    expect_update(layer, base, base.weight, sql.delta(), "after add_adapter('sql', 8, 0.5) (positional)",
                  {"0.5 was taken for the dropout, not alpha: keep the stub's order add_adapter(name, r, alpha, "
                   "dropout)": sql.delta() * 32})  # fmt: skip
    try:
        by_keyword(lambda: layer.add_adapter(name="chat", r=8, alpha=0.0), "add_adapter(name='chat', r=8, alpha=0.0)")
    except ValueError as error:
        pytest.fail(f"add_adapter(name='chat', r=8, alpha=0.0) raised ValueError ({error}): the stub's Raises do not "
                    "list alpha; alpha = 0 is a scaling of 0, an adapter that adds nothing", pytrace=False)  # fmt: skip
    by_keyword(lambda: layer.set_adapter(name="chat"), "set_adapter(name='chat')")
    with torch.no_grad():
        for parameter in layer.parameters():
            if parameter.requires_grad:
                parameter.normal_()
    expect_update(layer, base, base.weight, torch.zeros_like(sql.delta()), "with 'chat' (alpha=0) active", {})
    by_keyword(lambda: layer.delete_adapter(name="sql"), "delete_adapter(name='sql')")
    assert not registered(layer, sql), "after delete_adapter(name='sql'), sql's factors are still parameters"


REAL_ALPHAS = {  # (r, alpha): a float, and ints whose alpha / r is no int (r dividing an int alpha hides alpha // r)
    "alpha=-8.0": (4, -8.0),
    "alpha=16 (an int)": (4, 16),
    "alpha=10 (an int), r=4: a scaling of 2.5": (4, 10),
    "alpha=16 (an int), r=3: a scaling of 16/3": (3, 16),
    "alpha=-10 (a negative int), r=4: a scaling of -2.5": (4, -10),
}


def alpha_causes(adapter: Adapter, r: int, alpha: float) -> dict[str, torch.Tensor]:
    """The likely causes of a wrong scaling for an adapter of ``r`` and ``alpha``, each with the update it gives."""
    causes, expected = {}, f"not alpha / r = {alpha / r:.6g}"
    for cause, wrong in (
        (f"its scaling is alpha // r = {alpha // r!r} (floor division of an int alpha), {expected}", alpha // r),
        (f"its scaling is int(alpha / r) = {int(alpha / r)!r} (truncated to an int), {expected}", int(alpha / r)),
    ):
        if wrong != alpha / r:
            causes.setdefault(cause, adapter.delta() * (wrong / adapter.scaling))
    return causes


@pytest.mark.points(1)
@pytest.mark.parametrize("case", REAL_ALPHAS)
def test_add_adapter_takes_any_real_alpha(MultiLoRALinear, case):
    """Any real alpha gives the scaling alpha / r, a float, on every path an adapter takes: added active, merged and
    unmerged, added beside the active one and switched to with set_adapter."""
    r, alpha = REAL_ALPHAS[case]
    base, layer = make(MultiLoRALinear)
    W0 = base.weight.detach().double().clone()
    call = f"add_adapter('sql', r={r}, alpha={alpha!r})"
    try:
        sql = add(layer, "sql", r=r, alpha=alpha)
    except ValueError as error:
        pytest.fail(f"{call} raised ValueError ({error}): the stub's Raises name only the name, r and dropout; any "
                    "real alpha is taken, the scaling alpha / r", pytrace=False)  # fmt: skip
    sql.randomize()
    expect_update(layer, base, base.weight, sql.delta(), f"after {call}", alpha_causes(sql, r, alpha))
    layer.merge()
    expect_weight(base, W0 + sql.delta(), f"after {call}, merge()",
                  {cause: W0 + wrong for cause, wrong in alpha_causes(sql, r, alpha).items()})  # fmt: skip
    layer.unmerge()
    left = {cause: W0 + sql.delta() - wrong for cause, wrong in alpha_causes(sql, r, alpha).items()}
    expect_weight(base, W0, f"after {call}, merge(), unmerge()", left)
    other_r = 5 if r != 5 else 3  # another rank, the same alpha: added beside the active sql, then switched to
    chat = add(layer, "chat", r=other_r, alpha=alpha)
    chat.randomize()
    layer.set_adapter("chat")
    when = f"after {call}, add_adapter('chat', r={other_r}, alpha={alpha!r}) and set_adapter('chat')"
    expect_update(layer, base, base.weight, chat.delta(), when, alpha_causes(chat, other_r, alpha))
    layer.merge()
    expect_weight(base, W0 + chat.delta(), f"{when}, merge()",
                  {cause: W0 + wrong for cause, wrong in alpha_causes(chat, other_r, alpha).items()})  # fmt: skip


VALID_EDGES = {  # (in, out, r, dropout): arguments at the edges of the valid domain, each taken as given
    "r=1 (the smallest rank)": (IN, OUT, 1, 0.0),
    "r=8 on nn.Linear(4, 3) (a rank above min(in, out))": (4, 3, 8, 0.0),
    "dropout=0 (an int)": (IN, OUT, 3, 0),
}


@pytest.mark.points(1)
@pytest.mark.parametrize("case", VALID_EDGES)
def test_add_adapter_takes_every_valid_rank_and_an_int_dropout(MultiLoRALinear, case):
    in_features, out_features, r, dropout = VALID_EDGES[case]
    base, layer = make(MultiLoRALinear, in_features=in_features, out_features=out_features)
    call = f"add_adapter('sql', r={r}, alpha=4.0, dropout={dropout!r}) on nn.Linear({in_features}, {out_features})"
    before = {id(parameter) for parameter in layer.parameters()}
    try:
        layer.add_adapter("sql", r=r, alpha=4.0, dropout=dropout)
    except ValueError as error:
        pytest.fail(
            f"{call} raised ValueError ({error}), expected the adapter added: ValueError only for an r that "
            "is no int >= 1 or a dropout outside [0, 1); 1 is a rank, and 0 a dropout",
            pytrace=False,
        )
    new = [parameter for parameter in layer.parameters() if id(parameter) not in before]
    count = sum(parameter.numel() for parameter in new)
    assert count == r * (in_features + out_features), (
        f"{call} registered {count} numbers, shaped {[tuple(t.shape) for t in new]}, expected r * (in + out) = "
        f"{r * (in_features + out_features)}: take the rank as given (B @ A has rank at most min(in, out), but "
        "capping r changes the scaling alpha / r and the shapes an optimizer or a checkpoint expects)"
    )
    A = next(t for t in new if tuple(t.shape) in ((r, in_features), (in_features, r)))
    B = next(t for t in new if tuple(t.shape) in ((out_features, r), (r, out_features)))
    sql = Adapter("sql", Factors(A, B, tuple(A.shape) == (in_features, r), tuple(B.shape) == (r, out_features)),
                  4.0 / r)  # fmt: skip
    assert active(layer) == "sql", f"after {call}, active_adapter is {active(layer)!r}, expected 'sql'"
    sql.randomize()
    expect_update(
        layer,
        base,
        base.weight,
        sql.delta(),
        f"after {call}",
        {"the scaling is not alpha / r of the r given": sql.delta() * r / min(r, in_features, out_features)},
    )
    x = torch.randn(5, in_features, dtype=torch.float64)
    with torch.no_grad():
        repeat = max_difference(output(layer.train(), x), output(layer, x))
    assert repeat == 0, f"after {call}, train-mode outputs vary by {repeat:.3g}: dropout 0 drops nothing"


def by_keyword(call: Callable[[], object], description: str) -> None:
    """``call()``, a method called with its arguments by the stub's names, failing the check in one line when the
    method names them otherwise."""
    try:
        call()
    except TypeError as error:
        if "keyword argument" not in str(error):
            raise
        pytest.fail(f"{description} raised TypeError ({error}): keep the stub's parameter names, add_adapter(name, r, "
                    "alpha, dropout), set_adapter(name), delete_adapter(name)", pytrace=False)  # fmt: skip


def _factors_of(tensors: list[torch.Tensor], r: int) -> Factors:
    A = next((t for t in tensors if tuple(t.shape) in ((r, IN), (IN, r))), None)
    B = next((t for t in tensors if tuple(t.shape) in ((OUT, r), (r, OUT))), None)
    assert A is not None and B is not None, (
        f"add_adapter('sql') registered tensors shaped {[tuple(t.shape) for t in tensors]}, expected (r, in) and "
        f"(out, r) with the default r=8 (either orientation)"
    )
    return Factors(A, B, tuple(A.shape) == (IN, r), tuple(B.shape) == (r, OUT))


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_adapters_live_on_the_base_device_and_dtype(MultiLoRALinear, device, dtype):
    # built elsewhere, then moved: new factors follow the base where it is now, not where it was built
    base, layer = make(MultiLoRALinear, dtype=torch.float32 if dtype == torch.float64 else torch.float64)
    layer.to(device=device, dtype=dtype)
    sql = add(layer, "sql", r=3, alpha=6.0)
    misplaced = [(tuple(t.shape), t.dtype, str(t.device)) for t in sql.tensors]
    misplaced = [m for m in misplaced if m[1] != dtype or m[2] != str(base.weight.device)]
    assert not misplaced, (
        f"an adapter's factors must be created on the base's device and dtype ({device}, {dtype}), measured "
        f"{misplaced}, after layer.to({device!r}, {dtype}): read device= and dtype= off base.weight when adding "
        "(not cached in __init__)"
    )
    sql.randomize()
    for batch_shape in [(), (5,), (2, 3)]:
        for contiguous in (True, False):
            x = strided((*batch_shape, IN), contiguous, dtype=dtype, device=device)
            where = f"for x of shape {(*batch_shape, IN)}{'' if contiguous else ' (non-contiguous)'}"
            y = output(layer, x)
            assert (y.shape, y.dtype, y.device) == ((*batch_shape, OUT), dtype, base.weight.device), (
                f"{where} expected output {(*batch_shape, OUT)} {dtype} on {device}, "
                f"measured {tuple(y.shape)} {y.dtype} on {y.device}"
            )
            error = relative_error(y, output(layer, x.contiguous()))
            assert error <= RELATIVE_TOLERANCE[dtype], (
                f"{where} the output differs from the one for x.contiguous() by {error:.2g} (relative): use "
                "reshape, not view, on inputs of any layout"
            )
    chat = add(layer, "chat", r=4, alpha=2.0, dropout=DROPOUT)  # a train-mode forward with dropout: its mask too
    chat.randomize()
    layer.set_adapter("chat")
    x = strided((2, 3, IN), False, dtype=dtype, device=device)
    y = output(layer.train(), x)
    assert (y.shape, y.dtype, y.device) == ((2, 3, OUT), dtype, base.weight.device), (
        f"with 'chat' (dropout={DROPOUT}) active in train mode, expected output {(2, 3, OUT)} {dtype} on {device}, "
        f"measured {tuple(y.shape)} {y.dtype} on {y.device}: make the dropout mask like x (nn.Dropout, rand_like)"
    )


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_every_dtype_drops_like_nn_dropout_and_trains_the_active_adapter(MultiLoRALinear, device, dtype):
    """Behaviour, not just rounding, in every dtype of the base (a half-precision path of its own shows there only):
    train-mode dropout read exactly (lora_linear's dtype-aware probe, dL/dx through the mask with grad on), then a
    training step whose gradients (A's, B's, x's) are the float64 ones of the same values, to the dtype's rounding."""
    base = nn.Linear(EXACT_IN, EXACT_OUT, device=device, dtype=dtype).eval()
    layer = MultiLoRALinear(base)
    layer.add_adapter("sql", r=EXACT_R, alpha=float(EXACT_R), dropout=DROPOUT)
    layer.add_adapter("chat", r=3, alpha=6.0)  # beside it, frozen
    where = f"a {dtype_name(dtype)} MultiLoRALinear on {device} with 'sql' (dropout={DROPOUT}) active"
    try:
        multipliers = exact_dropout_multipliers(layer, base)
        expect_a_fresh_mask_for_every_element_and_call(multipliers)
        expect_a_fraction_p_zeroed(multipliers, DROPOUT)
    except AssertionError as error:
        raise AssertionError(f"{where}: {error}") from None
    torch.manual_seed(0)
    found = factors(layer, EXACT_IN, EXACT_OUT, EXACT_R)
    with torch.no_grad():
        base.weight.copy_(torch.randn(EXACT_OUT, EXACT_IN))
        found.A.copy_(torch.randn_like(found.A, dtype=torch.float32) * 0.5)
        found.B.copy_(torch.randn_like(found.B, dtype=torch.float32) * 0.5)
        found.stored_A.grad = found.stored_B.grad = None
    layer.eval()  # no dropout: the gradients are those of plain LoRA
    x = torch.randn(4, EXACT_IN).to(device, dtype).requires_grad_()
    upstream = torch.randn(4, EXACT_OUT).to(device, dtype)
    output(layer, x).backward(upstream)
    x64, A64, B64 = (t.detach().double().requires_grad_() for t in (x, found.A, found.B))
    y64 = F.linear(x64, base.weight.detach().double(), base.bias.detach().double())
    (y64 + F.linear(F.linear(x64, A64), B64)).backward(upstream.double())  # scaling alpha / r = 1
    when = f"{where}, eval mode, after y.backward(dL/dy)"
    grads = (*found.grads(), x.grad)
    for name, grad, expected in zip("ABx", grads, (A64.grad, B64.grad, x64.grad), strict=True):
        assert grad is not None, (
            f"{when}: {name}.grad is None, expected the float64 gradient of the same values: the {dtype_name(dtype)} "
            "branch is computed off the graph (a detached update, as merge's under torch.no_grad()): compute "
            "B A dropout(x) from the factors in the graph, in every dtype"
        )
        error = relative_error(grad, expected)
        assert error <= 2 * RELATIVE_TOLERANCE[dtype], (
            f"{when}: {name}.grad is off the float64 gradient of the same values by {error:.2g} (relative), expected "
            f"within {2 * RELATIVE_TOLERANCE[dtype]:g}: the {dtype_name(dtype)} branch leaves the graph somewhere "
            "(a detached update or input): compute B A dropout(x) from the factors in the graph, in every dtype"
        )


@pytest.mark.points(1)
def test_factors_follow_the_base_device_not_the_default_one(MultiLoRALinear):
    base, layer = make(MultiLoRALinear)
    sql = made_under_a_foreign_default_device(lambda: add(layer, "sql", r=3, alpha=6.0, dropout=DROPOUT))
    if sql is None:
        return
    expect_on_the_base_device(list(sql.tensors), base.weight.device, "add_adapter's factors were created")
    # Every call after add_adapter too, under the same default device: a train-mode forward with dropout (its mask),
    # an eval-mode one, a safe merge, a forward inside disable_adapters(), unmerge and a switch.
    sql.randomize()
    chat = add(layer, "chat", r=4, alpha=2.0)
    x = batch()

    def calls() -> list[torch.Tensor]:
        results = [output(layer.train(), x), output(layer.eval(), x)]
        layer.merge(safe=True)
        results.append(output(layer, x))
        with disabled(layer):
            results.append(output(layer, x))
        layer.merge()
        layer.unmerge()
        layer.set_adapter("chat")
        results.append(output(layer.train(), x))
        return results

    with torch.no_grad():
        results = made_under_a_foreign_default_device(calls)
    if results is not None:
        expect_on_the_base_device(results, base.weight.device, "the outputs (train mode with dropout, eval mode, "
                                  "merged, disabled, after a switch) were computed")  # fmt: skip
    assert registered(layer, chat) and active(layer) == "chat", "after set_adapter('chat'), 'chat' is not active"


@pytest.mark.points(1)
def test_a_uniform_A_has_nn_linears_bound(MultiLoRALinear):
    in_features, out_features, r = 256, 24, 16  # 4096 entries in A: see expect_nn_linear_bound_if_uniform
    _, layer = make(MultiLoRALinear, in_features=in_features, out_features=out_features)
    sql = add(layer, "sql", r=r, in_features=in_features, out_features=out_features)
    expect_nn_linear_bound_if_uniform(sql.factors.A, f"after add_adapter('sql', r={r}) on nn.Linear({in_features}, "
                                      f"{out_features})")  # fmt: skip


LIFECYCLE_CASES = [  # (kind of base, dtype): each trap of BASE_KINDS, and each dtype whose merge differs
    ("bias-free nn.Linear", torch.float64),
    ("nn.Linear subclass", torch.float64),
    ("bias-free nn.Linear", torch.float16),
    ("nn.Linear", torch.bfloat16),
    ("nn.Linear subclass", torch.float32),
]


@pytest.mark.points(1)
@pytest.mark.parametrize(("kind", "dtype"), LIFECYCLE_CASES, ids=[f"{k}-{d}" for k, d in LIFECYCLE_CASES])
def test_every_kind_of_base_goes_through_add_merge_disable_switch_and_delete(MultiLoRALinear, kind, dtype):
    base, layer = make(MultiLoRALinear, dtype=dtype, kind=kind)
    sql, chat = add(layer, "sql", r=2, alpha=5.0), add(layer, "chat", r=4, alpha=6.0, dropout=0.5)
    sql.randomize()
    chat.randomize()
    weight, storage, W0, x = base.weight, base.weight.data_ptr(), base.weight.detach().double().clone(), batch(dtype)
    tolerance, case = RELATIVE_TOLERANCE[dtype], f"on a {dtype} {kind}"

    def expect_output(adapter: Adapter | None, when: str) -> None:
        """The eval-mode output is x W0^T + b plus the adapter's update, in the base's dtype."""
        y = computed(layer, x)
        assert y.dtype == dtype, f"{case}, {when}, the output is {y.dtype}: compute and return in the base's dtype"
        expected = linear(x, W0, base.bias) + (0 if adapter is None else x.double() @ adapter.delta().T)
        error = relative_error(y, expected)
        assert error <= tolerance, (
            f"{case}, {when}, the output is off x W^T + b + scaling x A^T B^T by {error:.2g} (relative), expected "
            f"under {tolerance:.0e}"
        )

    expect_output(sql, "with 'sql' active")
    layer.merge()
    expect_the_very_weight(base, weight, storage, f"{case}, after merge(),")
    error = relative_error(weight, W0 + sql.delta())
    assert error <= tolerance, (
        f"{case}, after merge() the weight is off W + scaling * B @ A by {error:.2g} (relative), expected under "
        f"{tolerance:.0e}: sum in float32 for fp16/bf16 weights, in the weight's own dtype for float32/float64"
    )
    expect_output(sql, "after merge()")
    with disabled(layer):
        expect_output(None, "inside disable_adapters() on the merged layer")
        expect_trainable(layer, [sql, chat], None, f"{case}, inside disable_adapters()", "nothing trains there")
    assert merged_list(layer, case) == [] and relative_error(weight, W0) <= tolerance, (
        f"{case}, after disable_adapters() on the merged layer, the weight or merged_adapters still holds sql"
    )
    layer.set_adapter("chat")
    expect_output(chat, "after set_adapter('chat')")
    expect_trainable(layer, [sql, chat], chat, f"{case}, after set_adapter('chat')", "the active adapter trains")
    y = output(layer.train(), x)  # chat's dropout=0.5 at work
    assert (y.dtype, tuple(y.shape)) == (dtype, (X[0], OUT)), (
        f"{case}, a train-mode forward with chat's dropout=0.5 returned {y.dtype} {tuple(y.shape)}, expected {dtype} "
        f"{(X[0], OUT)}: drop x in its own dtype (nn.Dropout(p), or a mask made with dtype=x.dtype)"
    )
    layer.delete_adapter("sql")
    layer.delete_adapter("chat")
    expect_output(None, "after deleting both adapters")
    assert not registered(layer, sql) and not registered(layer, chat), f"{case}, deleted factors are still registered"


# ---------------------------------------------------------------------------------------------------------------
# set_adapter


COST_SHAPE = (64, 48, 4, 32)  # in, out, the active adapter's r, each inactive one's: an inactive branch costs 8x it
COST_ROWS, INACTIVE = 6, 5
COST_PATHS = {  # (how the layer computes then, whether the active adapter's branch runs)
    "grad on, train mode": (True, "train", True),
    "grad off, eval mode": (False, "eval", True),
    "grad on, eval mode": (True, "eval", True),
    "inside disable_adapters()": (False, "eval", False),
    "merged": (False, "eval", False),
    "no adapter active": (False, "eval", False),  # the last: 'sql' deleted
}


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_forward_costs_the_active_adapter_alone(MultiLoRALinear, dtype):
    """A forward's arithmetic (counted at torch's dispatcher) is base(x) and the active adapter's branch: a budget
    that does not grow with the number of adapters the layer holds."""
    in_features, out_features, r, r_inactive = COST_SHAPE
    _, layer = make(MultiLoRALinear, dtype=dtype, in_features=in_features, out_features=out_features)
    sql = add(layer, "sql", r=r, in_features=in_features, out_features=out_features)
    sql.randomize()
    for index in range(INACTIVE):
        add(layer, f"other{index}", r=r_inactive, in_features=in_features, out_features=out_features).randomize()
    x = torch.randn(COST_ROWS, in_features, dtype=dtype)
    products = 2 * COST_ROWS * in_features * out_features
    slack = 8 * COST_ROWS * (in_features + out_features + r)  # element-wise work: dropout, scaling, sums, a bias
    for path, (grad, mode, branch) in COST_PATHS.items():
        # The active branch as B (A x) or as (B A) x: the order of the products is the answer's; their count is not.
        active = max(2 * COST_ROWS * r * (in_features + out_features), 2 * r * in_features * out_features + products)
        ideal = products + (active if branch else 0)
        budget = ideal * 5 // 4 + slack
        inactive_branch = 2 * COST_ROWS * r_inactive * (in_features + out_features)
        layer.train(mode == "train")
        context = contextlib.ExitStack()
        if path == "inside disable_adapters()":
            context.enter_context(disabled(layer))
        elif path == "merged":
            layer.merge()
        elif path == "no adapter active":
            layer.delete_adapter("sql")
        with context, torch.set_grad_enabled(grad):
            for call in ("first", "second"):
                with ArithmeticWork() as counter:
                    output(layer, x)
                described = f"base(x) ({products} flops)" + (
                    f" and the active 'sql' (r={r}) branch (at most {active})" if branch else " alone"
                )
                assert counter.flops <= budget, (
                    f"{dtype_name(dtype)}, {path}, {call} forward, beside {INACTIVE} inactive adapters "
                    f"(r={r_inactive}, {inactive_branch} flops a branch): the forward costs {counter.flops} flops, "
                    f"expected at most {budget} ({described}): "
                    + ("only the active adapter computes: it computes the inactive adapters' branches (and throws them "
                       "away?); compute the active one's alone" if counter.flops - budget >= inactive_branch
                       else "it does more than base(x) and one adapter's branch")
                )  # fmt: skip
                unseen = sorted(counter.uncounted | counter.exits)
                assert not unseen, (
                    f"{dtype_name(dtype)}, {path}, {call} forward ran {', '.join(unseen)}: work the grader cannot "
                    "count (values handed to numpy or Python, work on another thread, an op with no flop formula "
                    "here); compute with torch's tensor ops on the calling thread"
                )
        if path == "merged":
            layer.unmerge()


@pytest.mark.points(3)
def test_each_adapter_computes_with_its_own_factors_and_scaling(MultiLoRALinear):
    base, layer, sql, chat = two_adapters(MultiLoRALinear)
    both = sql.delta() + chat.delta()
    float32_scaling = "the scaling was rounded to float32 (a float32 tensor?): keep alpha / r a Python float"
    expect_update(layer, base, base.weight, sql.delta(), "with 'sql' (r=3, alpha=16) active",
                  {"every adapter computes: only the active one must": both,
                   "scaled by alpha instead of alpha / r?": sql.delta() * sql.factors.A.shape[0],
                   float32_scaling: sql.delta_scaled_in_float32()})  # fmt: skip
    layer.set_adapter("chat")
    assert active(layer) == "chat", f"after set_adapter('chat'), active_adapter is {active(layer)!r}, expected 'chat'"
    expect_update(layer, base, base.weight, chat.delta(), "after set_adapter('chat') (r=4, alpha=6)",
                  {"it still computes with sql's factors: set_adapter must switch": sql.delta(),
                   "every adapter computes: only the active one must": both,
                   "chat is scaled with sql's alpha / r: keep a scaling per adapter":
                       chat.delta() * sql.scaling / chat.scaling,
                   "chat is scaled by r / alpha?": chat.delta() / chat.scaling**2})  # fmt: skip
    with torch.no_grad():
        sql.factors.B[0, 0] = math.inf
    y = computed(layer, batch())
    assert torch.isfinite(y).all(), (
        "with sql's B holding inf and 'chat' active, the output holds NaN or inf: an inactive adapter computed "
        "(0 * inf is NaN): compute the active adapter only"
    )


@pytest.mark.points(3)
def test_set_adapter_trains_only_the_active_adapter(MultiLoRALinear):
    base, layer = make(MultiLoRALinear)
    named = (("sql", 2), ("sql2", 3), ("mysql", 5), ("chat", 4))  # 'sql' begins 'sql2' and ends 'mysql'
    adapters = [add(layer, name, r=r, alpha=6.0) for name, r in named]
    for adapter in adapters:
        adapter.randomize()
    for adapter in (*adapters[1:], adapters[0]):
        layer.set_adapter(adapter.name)
        when = f"after set_adapter({adapter.name!r})"
        expect_trainable(layer, adapters, adapter, when, "set_adapter makes the new active adapter trainable and "
                         "freezes every other, each by its exact name ('sql' begins 'sql2', ends 'mysql')")  # fmt: skip
        for tensor in layer.parameters():
            tensor.grad = None
        x = torch.randn(6, IN, dtype=torch.float64, requires_grad=True)
        upstream = torch.randn(6, OUT, dtype=torch.float64)
        (output(layer, x) * upstream).sum().backward()
        touched = [other.name for other in adapters if other is not adapter and any(
            t.grad is not None and t.grad.abs().max() > 0 for t in other.tensors)]  # fmt: skip
        assert not touched, f"{when}, the inactive adapters {touched} received gradients: only the active one computes"
        assert base.weight.grad is None, f"{when}, the base's weight received a gradient: keep it frozen"
        _, expected = plain_lora(base, adapter.factors, adapter.scaling, x, upstream)
        for name, measured in zip("ABx", (*adapter.factors.grads(), x.grad), strict=True):
            assert measured is not None, f"{when}, {name} received no gradient: is it used in forward, not detached?"
            error = max_difference(measured, expected[name])
            cause = ": the base's share is missing (base(x) under torch.no_grad()?)" if name == "x" else ""
            assert error < 1e-9, f"{when}, the gradient of {name} is off by {error:.3g}{cause}"


@pytest.mark.points(3)
def test_set_adapter_on_a_merged_layer_unmerges_first(MultiLoRALinear):
    base, layer, sql, chat = two_adapters(MultiLoRALinear)
    W0 = base.weight.detach().double().clone()
    layer.merge()
    layer.set_adapter("chat")
    when = "after merge() of 'sql', set_adapter('chat')"
    expect_weight(base, W0, when, {
        "sql's update is still in the weight: set_adapter must unmerge first": W0 + sql.delta(),
        "unmerge subtracted chat's update instead of sql's, the merged one: unmerge before switching the active "
        "adapter, and take out what merged_adapters names": W0 + sql.delta() - chat.delta(),
        "chat was merged in: set_adapter unmerges, it never merges": W0 + chat.delta(),
    })  # fmt: skip
    assert merged_list(layer, when) == [], f"{when}, merged_adapters is {merged_list(layer, when)}, expected []"
    expect_update(layer, base, W0, chat.delta(), when, {"it computes the base alone: forward must add chat's "
                  "update once nothing is merged": torch.zeros_like(W0)})  # fmt: skip
    layer.merge()
    layer.set_adapter("chat")
    when = "after merge() of 'chat', set_adapter('chat') (the same name)"
    expect_weight(base, W0, when, {"chat's update is still in the weight: set_adapter unmerges a merged layer "
                                   "even when the name is the active one": W0 + chat.delta()})  # fmt: skip
    assert merged_list(layer, when) == [], f"{when}, merged_adapters is {merged_list(layer, when)}, expected []"


@pytest.mark.points(2)
@pytest.mark.parametrize("method", ["set_adapter", "delete_adapter"])
def test_unknown_names_are_value_errors_naming_the_known_adapters(MultiLoRALinear, method):
    base, layer = make(MultiLoRALinear)
    expect_value_error(lambda: getattr(layer, method)(UNKNOWN), f"{method}({UNKNOWN!r}) on a layer with no adapter")
    sql, chat = add(layer, "sql", r=2, alpha=5.0), add(layer, "chat", r=4, alpha=6.0)
    sql.randomize()
    chat.randomize()
    others = LONG_NAMES + CUSTOMER_NAMES + MANY_NAMES  # the last ones shorter
    for name in others:
        layer.add_adapter(name, r=3)
    factors = {id(parameter) for parameter in layer.parameters()}  # sql's, chat's and the others'
    layer.merge()
    W, state = base.weight.detach().clone(), observable_state(layer)
    known = ["sql", "chat", *LONG_NAMES, *CUSTOMER_NAMES, *MANY_NAMES]
    for unknown in (UNKNOWN, NEAR_MISS, *LOOK_ALIKES):  # far from every name, a typo, a look-alike: none is there
        description = f"{method}({unknown!r}) on a layer holding 'sql' (merged), 'chat' and {len(others)} more"
        expect_error_naming(lambda name=unknown: getattr(layer, method)(name), description, known)
        when = f"after a failed {method}({unknown!r})"
        assert torch.equal(base.weight, W) and merged_list(layer, when) == ["sql"], (
            f"{when} the merged layer was unmerged or its weight changed: check the name before changing anything"
        )
        assert active(layer) == "sql", f"{when} active_adapter is {active(layer)!r}, expected 'sql', as before"
        assert {id(parameter) for parameter in layer.parameters()} == factors, (
            f"{when} an adapter's factors were removed or replaced"
        )
        expect_state_unchanged(layer, state, when)


# ---------------------------------------------------------------------------------------------------------------
# disable_adapters


@pytest.mark.points(2)
def test_disable_adapters_computes_the_base_with_nothing_trainable(MultiLoRALinear):
    base, layer, sql, chat = two_adapters(MultiLoRALinear)
    x, kept = batch(), sql.factors.B.detach().clone()
    manager, when = layer.disable_adapters(), "after layer.disable_adapters() was called but not entered (no with)"
    at_the_call = "disable the adapters when the block is entered (__enter__), not when disable_adapters() is called"
    expect_trainable(layer, [sql, chat], sql, when, at_the_call)
    expect_update(layer, base, base.weight, sql.delta(), when, {at_the_call: torch.zeros_like(sql.delta())})
    del manager
    with disabled(layer):
        inside = computed(layer, x)
        trains = describe_trainable(layer, [sql, chat])
        with torch.no_grad():
            sql.factors.B[0, 0] = math.inf  # a broken active adapter: a disabled layer does not compute it at all
            broken = computed(layer, x)
            sql.factors.B.copy_(kept)
    error = max_difference(inside, base(x))
    assert error < 1e-12, f"inside disable_adapters() the output differs from base(x) by {error:.3g}: compute base(x)"
    assert torch.isfinite(broken).all() and max_difference(broken, base(x)) < 1e-12, (
        "inside disable_adapters() with the active adapter's B holding inf, the output is not base(x) (it holds NaN "
        "or inf): the adapter computed, scaled by 0 (0 * inf is NaN); return base(x) without computing the adapter"
    )
    assert trains == "nothing", f"inside disable_adapters(), {trains} trains, expected nothing: freeze every adapter"
    assert active(layer) == "sql", f"after disable_adapters() active_adapter is {active(layer)!r}, expected 'sql'"
    expect_trainable(layer, [sql, chat], sql, "after leaving disable_adapters()",
                     "on exit the active adapter trains again")  # fmt: skip
    expect_update(
        layer,
        base,
        base.weight,
        sql.delta(),
        "after leaving disable_adapters()",
        {"the adapter no longer computes: on exit the previous state returns": torch.zeros_like(sql.delta())},
    )


@pytest.mark.points(2)
def test_disable_adapters_unmerges_a_merged_layer_and_does_not_merge_again(MultiLoRALinear):
    base, layer, sql, _ = two_adapters(MultiLoRALinear)
    W0 = base.weight.detach().double().clone()
    x = batch()
    layer.merge()
    layer.merge()
    with disabled(layer):
        inside = computed(layer, x)
    error = max_difference(inside, linear(x, W0, base.bias))
    causes = {"it computes with the merged weight: unmerge first": linear(x, W0 + sql.delta(), base.bias)}
    cause = next((text for text, wrong in causes.items() if max_difference(inside, wrong) < 1e-9), "")
    assert error < 1e-9, (
        f"inside disable_adapters() on a merged layer the output differs from the base's own by {error:.3g}"
        + (f": {cause}" if cause else "")
    )
    when = "after disable_adapters() on a merged layer"
    expect_weight(base, W0, when, {"sql was merged again on exit: the previous state returns, but unmerged":
                                   W0 + sql.delta()})  # fmt: skip
    assert merged_list(layer, when) == [], f"{when}, merged_adapters is {merged_list(layer, when)}, expected []"
    expect_update(layer, base, W0, sql.delta(), when, {})


class Sentinel(Exception):
    """Raised inside a disable_adapters() block by the checks."""


class Interrupt(BaseException):
    """Raised inside a disable_adapters() block by a check, as KeyboardInterrupt is: no Exception."""


@pytest.mark.points(2)
@pytest.mark.parametrize("merging", [False, True], ids=["", "after merge() inside"])
@pytest.mark.parametrize("raised", [Sentinel, Interrupt], ids=["Exception", "BaseException"])
def test_disable_adapters_restores_the_state_after_an_exception(MultiLoRALinear, raised, merging):
    base, layer, sql, chat = two_adapters(MultiLoRALinear)
    layer.set_adapter("chat")
    W0 = base.weight.detach().double().clone()
    propagated = False
    try:
        with disabled(layer):
            if merging:  # which may merge, until the next forward or the exit
                merge_allowing_value_error(layer)
            raise raised("raised inside the block")
    except raised:
        propagated = True
    kind = "an Exception" if raised is Sentinel else "a BaseException (as KeyboardInterrupt is)"
    assert propagated, (
        f"{kind} raised inside disable_adapters() did not come out of the block: the context manager swallows "
        "it; restore the state in a finally clause and let the exception go on"
    )
    when = f"after {kind} inside disable_adapters()" + (", raised after a merge() there" if merging else "")
    assert active(layer) == "chat", f"{when}, active_adapter is {active(layer)!r}, expected 'chat', as before"
    listed = merged_list(layer, when)
    assert listed == [], (
        f"{when}, merged_adapters is {listed}, expected []: the exit leaves the layer unmerged even when an "
        "exception ends the block: unmerge in the finally clause, not after it"
    )
    expect_weight(base, W0, when, {"chat's update is still in the weight: unmerge in the finally clause, not after "
                                   "it (an exception skips what follows the yield)": W0 + chat.delta()})  # fmt: skip
    expect_trainable(
        layer,
        [sql, chat],
        chat,
        when,
        "restore the state in a finally clause (try: yield finally: ...), so it returns even then",
    )
    expect_update(
        layer,
        base,
        base.weight,
        chat.delta(),
        when,
        {"the layer stays disabled: restore the state in a finally clause": torch.zeros_like(chat.delta())},
    )


@pytest.mark.points(1)
def test_disable_adapters_takes_the_state_when_the_block_is_entered(MultiLoRALinear):
    base, layer, sql, chat = two_adapters(MultiLoRALinear)
    W0 = base.weight.detach().double().clone()
    outer = layer.disable_adapters()  # called now, entered later: the state it restores is the one at entry
    layer.set_adapter("chat")
    layer.merge()
    when = "after manager = disable_adapters(), set_adapter('chat'), merge(), with manager: ..."
    with outer:
        inner_trains = describe_trainable(layer, [sql, chat])
        with disabled(layer):
            pass
        trains = describe_trainable(layer, [sql, chat])
        x = batch()
        error = max_difference(computed(layer, x), linear(x, W0, base.bias))
    assert error < 1e-9, f"{when}, inside the block the output differs from the unmerged base's by {error:.3g}"
    at_entry = "take the state to restore when the block is entered (__enter__), not when disable_adapters() is called"
    assert inner_trains == trains == "nothing", (
        f"{when}, inside the block (before and after an inner block) {inner_trains}, then {trains} trains, expected "
        f"nothing: {at_entry}"
    )
    assert active(layer) == "chat", f"{when}, after the block active_adapter is {active(layer)!r}, expected 'chat' " + (
        f"(active when the block was entered): {at_entry}"
    )
    listed = merged_list(layer, when)
    assert listed == [], f"{when}, after the block merged_adapters is {listed}, expected []"
    expect_weight(base, W0, f"{when}, after the block", {})
    expect_trainable(layer, [sql, chat], chat, f"{when}, after the block", at_entry)
    expect_update(layer, base, W0, chat.delta(), f"{when}, after the block", {at_entry: sql.delta()})


DISABLED_BLOCKS = [  # what a disable_adapters() block holds besides a forward: the state it must still keep
    "a nested disable_adapters()",
    "set_adapter('chat')",
    "delete_adapter('sql') of the active adapter",
    "nothing else, on a merged layer",
    "delete_adapter('sql') of the active adapter, add_adapter('math'), which becomes active",
    "merge() twice, a forward (if any) between",
]
FORWARDS = {"a forward": True, "no forward": False}  # the block's forward, the only call that unmerges lazily


@pytest.mark.points(1)
@pytest.mark.parametrize("forward", FORWARDS)
@pytest.mark.parametrize("inside", DISABLED_BLOCKS)
def test_disable_adapters_holds_through_calls_inside_the_block_and_exits_consistent(MultiLoRALinear, inside, forward):
    base, layer, sql, chat = two_adapters(MultiLoRALinear)
    held = {"sql": sql, "chat": chat}
    W0, x = base.weight.detach().double().clone(), batch()
    if inside == DISABLED_BLOCKS[3]:
        layer.merge()
    with disabled(layer):
        if inside == DISABLED_BLOCKS[0]:
            with disabled(layer):
                pass
        elif inside == DISABLED_BLOCKS[1]:
            layer.set_adapter("chat")
        elif inside in (DISABLED_BLOCKS[2], DISABLED_BLOCKS[4]):
            layer.delete_adapter("sql")
            del held["sql"]
        elif inside == DISABLED_BLOCKS[5]:
            merge_allowing_value_error(layer)
        if inside == DISABLED_BLOCKS[4]:
            held["math"] = add(layer, "math", r=3, alpha=6.0)
            held["math"].randomize()
        y = computed(layer, x) if FORWARDS[forward] else None
        trains = describe_trainable(layer, list(held.values()))
        if inside == DISABLED_BLOCKS[5]:
            merge_allowing_value_error(layer)
    when = f"inside disable_adapters(), after {inside}"
    causes = {
        DISABLED_BLOCKS[0]: "an inner block's exit restores the state it found, disabled: save and restore the flag, "
        "never set False",
        DISABLED_BLOCKS[5]: "the forward used the weight merge() changed inside the block: while disabled, merge() "
        "does nothing, raises ValueError, or is undone by the next forward (as peft's is)",
    }
    if y is not None:
        error = max_difference(y, linear(x, W0, base.bias))
        assert error < 1e-9, f"{when}, the output differs from the base's own by {error:.3g}: " + causes.get(
            inside, "the block computes base(x) until it exits"
        )
    assert trains == "nothing", f"{when}, {trains} trains, expected nothing until the block exits"
    when = f"after a disable_adapters() block holding {inside}, with {forward} inside"
    name = active(layer)
    assert name in (None, *held) and not (inside == DISABLED_BLOCKS[2] and name is not None), (
        f"{when}, active_adapter is {name!r}, expected None: deleting the active adapter leaves none active, and the "
        "exit must not bring back a name that is gone"
    )
    listed = merged_list(layer, when)
    assert listed == [], (
        f"{when}, merged_adapters is {listed}, expected []: the layer leaves the block unmerged, forward or not "
        "(unmerge on entering, or at the latest on exit)"
    )
    expect_weight(base, W0, when, {})
    adapter = held.get(name) if name is not None else None
    cause = "on exit the active adapter, whichever it is now, trains: set the flags from the state, not a saved copy"
    expect_trainable(layer, list(held.values()), adapter, when, cause)
    expect_update(layer, base, W0, torch.zeros_like(W0) if adapter is None else adapter.delta(), when, {})


# ---------------------------------------------------------------------------------------------------------------
# merge, unmerge


@pytest.mark.points(3)
def test_merge_folds_the_active_adapter_into_the_very_base_weight(MultiLoRALinear):
    base, layer, sql, chat = two_adapters(MultiLoRALinear)
    weight, storage = base.weight, base.weight.data_ptr()
    W0, d_sql, d_chat = weight.detach().double().clone(), sql.delta(), chat.delta()
    kept = [tensor.detach().clone() for adapter in (sql, chat) for tensor in adapter.tensors]
    x = batch()
    before = computed(layer, x)
    layer.merge()
    when = "after merge() with 'sql' active"
    unchanged = all(torch.equal(t, k) for t, k in zip([t for a in (sql, chat) for t in a.tensors], kept, strict=True))
    assert unchanged, (
        f"{when}, an adapter's factors changed: merging writes the base's weight and leaves them as they are"
    )
    expect_the_very_weight(base, weight, storage, "after merge()")
    assert not weight.requires_grad and weight.grad_fn is None, (
        "after merge() the base's weight requires grad or has grad history: merge under torch.no_grad()"
    )
    expect_weight(base, W0 + d_sql, when, {
        "chat's update was merged: merge the active adapter": W0 + d_chat,
        "every adapter was merged: merge the active one only": W0 + d_sql + d_chat,
        "the weight did not change: write the merged weight into base.weight itself": W0,
        "the update was subtracted": W0 - d_sql,
        "the update is unscaled: W + scaling * B @ A": W0 + d_sql / sql.scaling,
        "the scaling was rounded to float32 (a float32 tensor?): keep alpha / r a Python float":
            W0 + sql.delta_scaled_in_float32(),
    })  # fmt: skip
    assert merged_list(layer, when) == ["sql"], (
        f"{when}, merged_adapters is {merged_list(layer, when)}, expected ['sql']"
    )
    after = computed(layer, x)
    error = max_difference(after, before)
    cause = ""
    if max_difference(after, before + x @ d_sql.T) < 1e-9:
        cause = ": it adds sql's update on top of the merged weight; on a merged layer forward computes the base alone"
    assert error < 1e-9, f"{when}, the output changed by {error:.3g}{cause}"
    # The base's Parameter replaced between calls (a model built on the meta device, then loaded): merge and unmerge
    # write the Parameter base.weight is when they run, not the one it was when the layer was built.
    layer.unmerge()
    W1 = W0 + torch.randn_like(W0)
    state = {"weight": W1.to(base.weight.dtype, copy=True), "bias": base.bias.detach().clone()}
    base.load_state_dict(state, assign=True)
    base.requires_grad_(False)
    layer.merge()
    when = "after base.load_state_dict(..., assign=True) (a new weight Parameter W1) and merge()"
    expect_weight(base, W1 + d_sql, when, {
        "the new weight did not change: merge the Parameter base.weight is now, not one held since the layer was "
        "built (read self.base.weight at each call)": W1,
    })  # fmt: skip
    error = max_difference(computed(layer, x), x @ (W1 + d_sql).T + base.bias.detach().double())
    assert error < 1e-9, f"{when}, the output differs by {error:.3g} from the merged layer's x @ (W1 + s B A).T + b"
    layer.unmerge()
    expect_weight(base, W1, f"{when} and unmerge()", {
        "the new weight still holds sql's update: unmerge the Parameter base.weight is now": W1 + d_sql,
    })  # fmt: skip


FACTOR_EDITS = ["in place", "through .data", "one entry of each through .data", "by load_state_dict(assign=True)"]


def edit_factors(layer: nn.Module, adapter: Adapter, edit: str) -> None:
    """Change ``adapter``'s factors as ``edit`` (of FACTOR_EDITS) says, as training, a loaded checkpoint or a
    hand-made fix does: in place (a version bump), through .data (no version bump), one entry of each through .data
    (a checksum of a few entries misses it), or new Parameters put in their place by load_state_dict(assign=True)
    (``adapter`` then holds the new ones)."""
    if edit == "by load_state_dict(assign=True)":
        names = {id(parameter): name for name, parameter in layer.named_parameters()}
        A_name, B_name = (names[id(tensor)] for tensor in adapter.tensors)
        state = {name: value.clone() for name, value in layer.state_dict().items()}
        for name in (A_name, B_name):
            state[name].normal_(0.0, 0.3)
        layer.load_state_dict(state, assign=True)
        now = dict(layer.named_parameters())
        adapter.factors = Factors(now[A_name], now[B_name], adapter.factors.A_transposed, adapter.factors.B_transposed)
        return
    with torch.no_grad():
        for tensor in adapter.tensors:
            if edit == "in place":
                tensor.normal_(0.0, 0.3)
            elif edit == "through .data":
                tensor.data.normal_(0.0, 0.3)
            else:
                tensor.data[(-1,) * tensor.dim()] += 1.0  # a view of one entry, whatever the layout


@pytest.mark.points(1)
@pytest.mark.parametrize("edit", FACTOR_EDITS)
def test_merge_and_unmerge_read_the_factors_as_they_are_now(MultiLoRALinear, edit):
    base, layer, sql, _ = two_adapters(MultiLoRALinear)
    W0, x = base.weight.detach().double().clone(), batch()
    for safe in (False, True):  # merges before the edit: a memo of scaling * B @ A, keyed on anything, is made here
        layer.merge(safe=safe)
        layer.unmerge()
    earlier = sql.delta()
    edit_factors(layer, sql, edit)
    base.requires_grad_(False)
    with torch.no_grad():  # the base's weight changes alike (one entry, so a checksum of a few misses it too)
        if edit == "in place":
            base.weight.mul_(0.5)
        elif edit == "through .data":
            base.weight.data.mul_(0.5)
        elif edit.startswith("one entry"):
            base.weight.data[-1, -1] += 1.0
    W0 = base.weight.detach().double().clone()
    when = f"after merge(), unmerge() twice, sql's factors and the base's weight changed {edit}, merge()"
    layer.merge()
    expect_weight(base, W0 + sql.delta(), when, {
        "the merged update is scaling * B @ A of the factors as they were at an earlier merge (a memo keyed on "
        "versions, ids or data_ptrs, which edits through .data and new Parameters leave as they were; or factors "
        "held from add_adapter): compute it from the factors the layer holds now, at every merge": W0 + earlier,
    })  # fmt: skip
    error = max_difference(computed(layer, x), linear(x, W0 + sql.delta(), base.bias))
    assert error < 1e-9, f"{when}, the output differs by {error:.3g} from x (W + scaling B A)^T + b"
    layer.unmerge()
    expect_weight(base, W0, f"{when}, unmerge()", {
        "unmerge subtracted scaling * B @ A of the factors as they were at an earlier merge: compute it from the "
        "factors as they are now": W0 + sql.delta() - earlier,
    })  # fmt: skip
    layer.merge()  # the same edit while merged: unmerge takes out the update of the factors the layer holds then
    at_merge = sql.delta()
    edit_factors(layer, sql, edit)
    base.requires_grad_(False)
    layer.unmerge()
    expect_weight(base, W0 + at_merge - sql.delta(), f"{when}, unmerge(), merge(), the factors changed {edit} while "
                  "merged, unmerge()", {
        "unmerge subtracted the update of the factors as they were at merge (Parameters held since merge, which "
        "new ones put in while merged leave as they were): subtract scaling * B @ A of the factors the layer holds "
        "now, read at unmerge": W0,
    })  # fmt: skip


@pytest.mark.points(1)
def test_train_and_eval_switch_dropout_only_never_merging(MultiLoRALinear):
    base, layer, sql, _ = two_adapters(MultiLoRALinear)
    W0 = base.weight.detach().double().clone()
    for merged in (False, True):
        if merged:
            layer.merge()
        for mode in (False, True, False):
            layer.train(mode)
            when = f"after {'merge(), ' if merged else ''}{'train()' if mode else 'eval()'}"
            listed, expected = merged_list(layer, when), ["sql"] if merged else []
            assert listed == expected, (
                f"{when}, merged_adapters is {listed}, expected {expected}: train() and eval() switch dropout only, "
                "they never merge or unmerge (loralib merges on eval(); this kata does not)"
            )
            expect_weight(base, W0 + sql.delta() if merged else W0, when, {})


@pytest.mark.points(1)
def test_merge_in_train_mode_ignores_dropout(MultiLoRALinear):
    base, layer = make(MultiLoRALinear)
    sql = add(layer, "sql", r=3, alpha=6.0, dropout=0.5)
    sql.randomize()
    W0, delta = base.weight.detach().double().clone(), sql.delta()
    layer.train()
    layer.merge()
    error = max_difference(base.weight, W0 + delta)
    assert error < 1e-9, (
        f"after merge() in train mode with dropout=0.5 the weight is off by {error:.3g}: compute scaling * B @ A from "
        "the factors, not from a forward pass (dropout is random in train mode)"
    )
    x = torch.randn(64, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        error = max_difference(layer(x), base(x))  # still in train mode, dropout 0.5
    assert error < 1e-9, (
        f"a merged layer in train mode with dropout=0.5: forward differs from base(x) by {error:.3g}, expected "
        "y = base(x) (the update is in the weight): a merged adapter's branch, dropout included, is not run"
    )


@pytest.mark.points(2)
def test_merging_twice_adds_nothing(MultiLoRALinear):
    base, layer, sql, _ = two_adapters(MultiLoRALinear)
    W0 = base.weight.detach().double().clone()
    layer.merge()
    layer.merge()
    layer.merge(safe=True)
    when = "after merge(), merge(), merge(safe=True)"
    expect_weight(base, W0 + sql.delta(), when, {
        "the update was added twice: a second merge of a merged adapter adds nothing": W0 + 2 * sql.delta(),
        "the update was added three times: a merged adapter is not merged again": W0 + 3 * sql.delta(),
    })  # fmt: skip
    listed = merged_list(layer, when)
    assert listed == ["sql"], f"{when}, merged_adapters is {listed}, expected ['sql']: list each merged adapter once"
    layer.unmerge()
    expect_weight(base, W0, "after merging three times and one unmerge()",
                  {"the weight still holds sql's update": W0 + sql.delta()})  # fmt: skip


@pytest.mark.points(3)
@pytest.mark.parametrize(
    ("broken", "positional", "fresh"),
    [("nan-in-A", False, False), ("inf-in-B", False, False), ("inf-in-B", True, False), ("nan-in-W", False, False),
     ("inf-in-W", False, False), ("nan-in-W", False, True), ("inf-in-W", False, True)],
    ids=["nan-in-A", "inf-in-B", "inf-in-B-merge(True)", "nan-in-W", "inf-in-W", "nan-in-W-B-zeros",
         "inf-in-W-B-zeros"],
)  # fmt: skip
def test_safe_merge_of_a_broken_adapter_raises_and_leaves_the_weight_untouched(
    MultiLoRALinear, broken, positional, fresh
):  # fmt: skip
    """``fresh``: the adapter as add_adapter made it, B zeros: a zero update, whose merged weight is W itself."""
    base, layer, sql, _ = two_adapters(MultiLoRALinear)
    with torch.no_grad():
        if broken == "nan-in-A":
            sql.factors.A[0, 0] = float("nan")
        elif broken == "inf-in-B":
            sql.factors.B[1, 0] = float("inf")
        else:  # the weight itself (a checkpoint gone bad): the merged weight holds it, the update is finite
            base.weight[2, 1] = float("nan" if broken == "nan-in-W" else "-inf")
        if fresh:
            sql.factors.B.zero_()
    weight, kept, state = base.weight, base.weight.detach().clone(), observable_state(layer)
    call = "merge(True)" if positional else "merge(safe=True)"
    where = f"an adapter with {broken.replace('-', ' ')}" if broken.endswith(("A", "B")) else (
        f"a {'fresh' if fresh else 'sound'} adapter onto a weight holding {broken.split('-')[0]} ("
        + ("B still zeros, a zero update: the weight itself may hold NaN or inf; " if fresh else "")
        + "check every entry of the merged weight, not the update alone nor overflows only)")  # fmt: skip
    expect_value_error(
        (lambda: layer.merge(True)) if positional else (lambda: layer.merge(safe=True)),
        f"{call} of {where}"
        + (" (safe positional, as the stub's signature merge(self, safe=False) allows)" if positional else ""),
    )
    assert base.weight is weight, "a failed safe merge replaced the base's weight Parameter: leave it untouched"
    same = torch.equal(base.weight.isnan(), kept.isnan()) and torch.equal(base.weight.nan_to_num(), kept.nan_to_num())
    changed = int((base.weight.nan_to_num() != kept.nan_to_num()).sum())
    assert same, (
        f"a failed merge(safe=True) changed the weight ({changed} entries): it wrote first "
        "and checked after; compute the merged weight aside, check torch.isfinite(merged).all(), and write only then"
    )
    when = "after a failed merge(safe=True)"
    assert merged_list(layer, when) == [], (
        f"{when}, merged_adapters is {merged_list(layer, when)}, expected []: list an adapter only once merged"
    )
    expect_state_unchanged(layer, state, when)
    when = f"merge(safe=False) of {where.split(' (')[0]}"
    try:
        layer.merge(safe=False)
    except ValueError as error:
        pytest.fail(f"{when} raised ValueError ({error}): safe=False does not check, it merges", pytrace=False)
    assert merged_list(layer, when) == ["sql"] and not torch.isfinite(base.weight).all(), (
        f"after {when}, merged_adapters is {merged_list(layer, when)} and the weight finite: safe=False does not "
        "check, it merges (NaN or inf and all)"
    )


OVERFLOWS = {  # a weight and finite factors A, B (r=2, alpha=4: the update is 4 A B) whose merged weight is inf in
    # the weight's dtype, though a wider dtype holds it
    # fp16: the update alone, 4 * 200 * 200 = 160000, exceeds fp16's 65504
    "an update beyond fp16's max": (torch.float16, None, 200.0, 200.0),
    # fp16: the update, 4 * 50 * 50 = 10000, is finite; the weight it lands on, 60000 + 10000, is not
    "a weight near fp16's max": (torch.float16, 60000.0, 50.0, 50.0),
    # the same below: -60000 - 10000 is -inf, and nothing is +inf
    "a weight near fp16's lowest": (torch.float16, -60000.0, 50.0, -50.0),
    # bf16 has float32's range but not its precision: max + 1e36 is finite in float32 and rounds to inf in bf16
    "a weight at bf16's max": (torch.bfloat16, torch.finfo(torch.bfloat16).max, 5e17, 5e17),
    # float32: 3e38 + 1e38 is finite in float64 only
    "a weight near float32's max": (torch.float32, 3e38, 5e18, 5e18),
    # at the rounding edge: 65504 + 16 = 65520, half an ulp past fp16's max, rounds (to even) to inf
    "an fp16 sum of 65520, which rounds to inf": (torch.float16, 65504.0, 2.0, 2.0),
    # bf16's max + 8e35, past half its last ulp (2^119, about 6.6e35), rounds to inf
    "a bf16 sum of its max + 8e35, which rounds to inf": (torch.bfloat16, torch.finfo(torch.bfloat16).max, 2e17, 1e18),
}
SOUND_MERGES = {  # finite in the weight's dtype (None: two_adapters' random float64 factors)
    "random factors": None,
    # 1e300 + 1 is finite in float64 and inf in float32: the check must not be made after a cast to float32
    "a float64 weight beyond float32's max": (torch.float64, 1e300, 0.5, 0.5),
    # every entry finite, their sum not: a check of one reduction (torch.isfinite(merged.sum())) raises
    "an fp16 weight of 8000s (finite; their sum is not)": (torch.float16, 8000.0, 1.0, 1.0),
    "a float32 weight of 1e37s (finite; their sum is not)": (torch.float32, 1e37, 0.5, 0.5),
    # the update alone, 4 * 125 * 200 = 100000, exceeds fp16's 65504; the merged weight, -60000 + 100000, does not:
    # the check is of the merged weight, not of the update cast to the weight's dtype
    "an fp16 update beyond fp16's max, the merged weight finite": (torch.float16, -60000.0, 125.0, 200.0),
    # float32 sums past the dtype's max but short of half an ulp past it round to the max itself: finite
    "an fp16 sum of 65519, which rounds to fp16's max 65504": (torch.float16, 65504.0, 1.5, 2.5),
    "a bf16 sum of its max + 4e35, which rounds to bf16's max": (
        torch.bfloat16,
        torch.finfo(torch.bfloat16).max,
        1e17,
        1e18,
    ),
}


def adapter_on_filled_weight(MultiLoRALinear, dtype, weight_value, A_value, B_value):
    """A layer over a ``dtype`` base holding "sql" (r=2, alpha=4), its factors filled with ``A_value`` and
    ``B_value``, its weight with ``weight_value`` (None: left as made)."""
    base, layer = make(MultiLoRALinear, dtype=dtype)
    sql = add(layer, "sql", r=2, alpha=4.0)
    with torch.no_grad():
        if weight_value is not None:
            base.weight.fill_(weight_value)
        sql.factors.A.fill_(A_value)
        sql.factors.B.fill_(B_value)
    return base, layer, sql


@pytest.mark.points(1)
@pytest.mark.parametrize("case", OVERFLOWS)
def test_safe_merge_checks_the_merged_weight_in_its_own_dtype(MultiLoRALinear, case):
    base, layer, _ = adapter_on_filled_weight(MultiLoRALinear, *OVERFLOWS[case])
    dtype = dtype_name(base.weight.dtype)
    kept = base.weight.detach().clone()
    expect_value_error(lambda: layer.merge(safe=True),
                       f"merge(safe=True) of {case}, whose merged weight is inf or -inf in {dtype}, the weight's "
                       "dtype (check W + scaling * B @ A itself, rounded to the weight's dtype, not the update alone "
                       "nor a wider sum, with torch.isfinite)")  # fmt: skip
    assert torch.equal(base.weight, kept), f"a failed merge(safe=True) changed the {dtype} weight: check before writing"


@pytest.mark.points(1)
@pytest.mark.parametrize("case", SOUND_MERGES)
def test_safe_merge_of_a_sound_adapter_merges_as_merge_does(MultiLoRALinear, case):
    filled = SOUND_MERGES[case]
    if filled is None:
        base, layer, sql, _ = two_adapters(MultiLoRALinear)
    else:
        base, layer, sql = adapter_on_filled_weight(MultiLoRALinear, *filled)
    broken = add(layer, "broken", r=5)  # inactive: merge never reads it, so its NaN and inf must not matter
    with torch.no_grad():
        broken.factors.A.fill_(float("nan"))
        broken.factors.B.fill_(float("inf"))
    dtype = dtype_name(base.weight.dtype)
    W0 = base.weight.detach().double().clone()
    when = f"after merge(safe=True) of {case} (an inactive adapter 'broken' beside it holding NaN and inf)"
    try:
        layer.merge(safe=True)
    except ValueError as error:
        layer.delete_adapter("broken")
        try:
            layer.merge(safe=True)
        except ValueError:
            cause = f"though the merged weight is finite in {dtype}, the weight's dtype: check it in that dtype, " \
                "after rounding the sum to it (a sum just past finfo.max rounds to it), not after a cast"  # fmt: skip
        else:
            cause = "raised for the inactive adapter 'broken' (its merge(safe=True) passed once it was deleted): " \
                "only the active adapter merges, check its merged weight alone"  # fmt: skip
        pytest.fail(f"{when}: ValueError ({error}), {cause}", pytrace=False)
    merged = (W0 + sql.delta()).to(base.weight.dtype).double()  # rounded to the weight's dtype, as merge does
    expect_weight(base, merged, when, {"safe merge did not write the weight": W0})
    assert merged_list(layer, when) == ["sql"], (
        f"{when}, merged_adapters is {merged_list(layer, when)}, expected ['sql']"
    )


TWICE_OVERFLOWS = {  # (dtype, weight, A, B) with r=2, alpha=4 (an update of 4 A B): W + update finite, W + 2 update
    # inf in the weight's dtype, so a second merge that checks (or adds) before noticing the merge shows
    "float16": (torch.float16, 40000.0, 61.0, 61.0),  # 40000 + 14884 < 65504 < 40000 + 2 * 14884
    "bfloat16": (torch.bfloat16, 2e38, 5e18, 5e18),  # 2e38 + 1e38 < 3.39e38 < 2e38 + 2e38 (float32's range too)
    "float32": (torch.float32, 2e38, 5e18, 5e18),
    "float64": (torch.float64, 1.2e308, 3.2e153, 3.2e153),  # 1.2e308 + 4.1e307 < 1.8e308 < 1.2e308 + 8.2e307
}


@pytest.mark.points(1)
@pytest.mark.parametrize("case", TWICE_OVERFLOWS)
def test_a_second_merge_adds_nothing_where_adding_twice_would_overflow(MultiLoRALinear, case):
    base, layer, _ = adapter_on_filled_weight(MultiLoRALinear, *TWICE_OVERFLOWS[case])
    layer.merge()
    merged = base.weight.detach().clone()
    assert torch.isfinite(merged).all(), "grader bug: the first merge of TWICE_OVERFLOWS must be finite"
    for call, second in (("merge(safe=True)", lambda: layer.merge(safe=True)), ("merge()", layer.merge)):
        when = f"a second {call} of the merged 'sql' on a {case} weight whose first merge is finite"
        try:
            second()
        except (NotImplementedError, KataUnavailable):
            raise
        except Exception as error:
            pytest.fail(f"{when} raised {type(error).__name__} ({error}), expected nothing raised and nothing added: "
                        "W + 2 * update overflows, so the check (or the sum) ran before noticing the adapter is "
                        "merged; return first when it is", pytrace=False)  # fmt: skip
        changed = int((base.weight != merged).sum())
        assert changed == 0, f"{when} changed {changed} weights, expected none: a merged adapter adds nothing again"
        assert merged_list(layer, when) == ["sql"], f"{when}, merged_adapters is {merged_list(layer, when)}"


def empty_disabled_block(layer: nn.Module) -> None:
    """``with layer.disable_adapters(): pass``: a block that ends unmerged without a forward inside."""
    with disabled(layer):
        pass


UNMERGING: dict[str, Callable[[nn.Module], None]] = {  # every call that unmerges, and how to make it
    "unmerge()": lambda layer: layer.unmerge(),
    "set_adapter('chat')": lambda layer: layer.set_adapter("chat"),
    "delete_adapter('sql')": lambda layer: layer.delete_adapter("sql"),
    "a disable_adapters() block": empty_disabled_block,
}


PRECISION_SHAPE = (64, 48, 8)  # in, out, r of the rounding checks: 3072 weights, so a rounding shows in many
CHAT_RANK = 4  # of the adapter 'chat' beside 'sql', which set_adapter('chat') switches to


MERGES = {"merge()": False, "merge(safe=True)": True}  # a safe merge sums as merge does, it only checks first


@pytest.mark.points(1)
@pytest.mark.parametrize("unmerging", UNMERGING)
@pytest.mark.parametrize("merging", MERGES)
@pytest.mark.parametrize(
    ("dtype", "moves"),
    [(torch.bfloat16, ()), (torch.float16, ()), (torch.bfloat16, (torch.bfloat16,)),
     (torch.float16, (torch.bfloat16, torch.float64, torch.float16))],
    ids=["bfloat16", "float16", "float64 moved to bfloat16", "float64 moved to bfloat16, float64, float16"],
)  # fmt: skip
def test_half_precision_merge_and_unmerge_accumulate_in_float32(MultiLoRALinear, dtype, moves, merging, unmerging):
    in_features, out_features, _ = PRECISION_SHAPE
    r, alpha = UNROUNDED_R, UNROUNDED_ALPHA  # scaling 10 / 3, which no half dtype holds: one rounded to it shows
    built = torch.float64 if moves else dtype  # moved by layer.to() while it holds its adapters
    base, layer = make(MultiLoRALinear, dtype=built, in_features=in_features, out_features=out_features)
    sql = add(layer, "sql", r=r, alpha=alpha, in_features=in_features, out_features=out_features)
    add(layer, "chat", r=CHAT_RANK, in_features=in_features, out_features=out_features)
    for move in moves:
        layer.to(move)
    assert sql.tensors[0].dtype == dtype, (
        f"after layer.to({dtype}) of a layer holding adapters, the factors are {sql.tensors[0].dtype}: register them "
        "as nn.Parameters (in an nn.ParameterDict) so that .to() moves them with the base"
    )
    sql.randomize(std=0.2)
    W0, delta = base.weight.detach().double().clone(), sql.delta()
    half_scaling = torch.tensor(alpha / r, dtype=dtype).double()  # alpha / r rounded to the weight's dtype
    half_delta = delta / sql.scaling * half_scaling
    cause = "upcast W, A and B to float32, add (or subtract), then round once to the weight's dtype"
    weight, storage = base.weight, base.weight.data_ptr()
    layer.merge(safe=MERGES[merging])
    merged = base.weight.detach().double().clone()
    expect_the_very_weight(base, weight, storage, f"after {merging} of a {dtype} weight")
    off = (merged != (W0 + delta).to(dtype).double()).float().mean().item()
    twice = (merged != (W0 + delta.to(dtype).double()).to(dtype).double()).float().mean().item()
    scaled_in_half = (merged != (W0 + half_delta).to(dtype).double()).float().mean().item()
    assert off < 0.01, (
        f"after {merging} {off:.0%} of the {dtype} weights differ from W + scaling B @ A computed exactly and rounded "
        "once: "
        + (f"the update was rounded to {dtype} before the sum: " if twice < min(off, scaled_in_half) else "")
        + (
            f"the scaling alpha / r was rounded to {dtype} (weight.new_tensor(scaling)? a buffer cast by layer.to()?), "
            "keep it a Python float: "
            if scaled_in_half < min(off, twice)
            else ""
        )
        + cause
    )
    UNMERGING[unmerging](layer)
    expect_the_very_weight(base, weight, storage, f"after {unmerging} of a {dtype} weight")
    # Either reading is right: the merged weight minus the update, rounded once, or the original weight restored.
    off = (base.weight.double() != (merged - delta).to(dtype).double()).float().mean().item()
    restored = (base.weight.double() != W0).float().mean().item()
    twice = (base.weight.double() != (merged - delta.to(dtype).double()).to(dtype).double()).float().mean().item()
    assert min(off, restored) < 0.01, (
        f"after {unmerging} {off:.0%} of the {dtype} weights differ from the merged weight minus the update computed "
        f"exactly and rounded once (and {restored:.0%} from the original weight): "
        + (f"the update was rounded to {dtype} before the difference: " if twice < off else "")
        + cause
    )


@pytest.mark.points(1)
@pytest.mark.parametrize("unmerging", UNMERGING)
@pytest.mark.parametrize("merging", MERGES)
def test_float32_merge_and_unmerge_are_summed_in_float32(MultiLoRALinear, merging, unmerging):
    in_features, out_features, r = PRECISION_SHAPE
    # built in float64 and moved: the sum follows the weight's dtype at merge time, not the one the layer was made in
    base, layer = make(MultiLoRALinear, dtype=torch.float64, in_features=in_features, out_features=out_features)
    layer.to(torch.float32)
    sql = add(layer, "sql", r=r, alpha=16.0, in_features=in_features, out_features=out_features)
    add(layer, "chat", r=CHAT_RANK, in_features=in_features, out_features=out_features)
    sql.randomize(std=1.0)
    with torch.no_grad():
        base.weight.mul_(1e-3)  # an update far larger than W: its float32 rounding shows in the sum
    W0 = base.weight.detach().double().clone()
    layer.merge(safe=MERGES[merging])
    merged = base.weight.detach().double()
    error = relative_error(merged, W0 + sql.delta())
    assert error <= RELATIVE_TOLERANCE[torch.float32], (
        f"after {merging} of a float32 weight, it is off W + scaling * B @ A by {error:.2g} (relative)"
    )
    assert not rounded_once_from_float64(base.weight, W0 + sql.delta()), (
        f"after {merging} of a float32 weight, all {merged.numel()} entries equal W + scaling * B @ A summed in "
        "float64 and rounded once, which float32 arithmetic does not give: float32 weights are summed in their own "
        "dtype (upcast only fp16/bf16; read the dtype off the weight at merge time, after layer.to(torch.float32))"
    )
    UNMERGING[unmerging](layer)
    unmerged = base.weight.detach().double()
    error = max_difference(unmerged, merged - sql.delta()) / (1 + sql.delta().abs().max().item())
    assert error <= RELATIVE_TOLERANCE[torch.float32], (
        f"after {unmerging} of a float32 weight, it is off the merged weight minus scaling * B @ A by {error:.2g} "
        "(relative to the update)"
    )
    assert not rounded_once_from_float64(base.weight, merged - sql.delta()), (
        f"after {unmerging} of a float32 weight, all {unmerged.numel()} entries equal the merged weight minus scaling "
        "* B @ A computed in float64 and rounded once, which float32 arithmetic does not give: float32 weights are "
        "unmerged in their own dtype (upcast only fp16/bf16)"
    )


# Moves by layer.to() before merge and while merged, in every direction between a half dtype and float32 or float64:
# each call sums in the dtype the weight has when it runs (float32 for fp16/bf16, else its own).
DTYPE_MOVES = {
    "float16 moved to float64, merged": (torch.float16, (torch.float64,), ()),
    "bfloat16 moved to float32, merged": (torch.bfloat16, (torch.float32,), ()),
    "float16 merged, moved to float64 while merged": (torch.float16, (), (torch.float64,)),
    "bfloat16 merged, moved to float32 while merged": (torch.bfloat16, (), (torch.float32,)),
    "float64 merged, moved to float16 while merged": (torch.float64, (), (torch.float16,)),
}


def expect_summed_in_its_dtype(base: nn.Linear, exact: torch.Tensor, update: torch.Tensor, when: str) -> None:
    """Fail the check unless the base's weight is ``exact`` (the sum of a weight and ``update``) to the rounding of
    the dtype the weight has now (relative to the larger of the two): float32 arithmetic on a float64 weight, or a
    half one, shows."""
    dtype = base.weight.dtype
    error = relative_error(base.weight.detach().double(), exact, scale=update)
    assert error <= RELATIVE_TOLERANCE[dtype], (
        f"{when}, the {dtype} weight is off the exact sum by {error:.2g} (relative), expected at most "
        f"{RELATIVE_TOLERANCE[dtype]:.0e}: sum in the dtype the weight has at the call (float32 only for fp16/bf16), "
        "read off base.weight each time, not decided at __init__ or kept from the merge"
    )


@pytest.mark.points(1)
@pytest.mark.parametrize("unmerging", UNMERGING)
@pytest.mark.parametrize("case", list(DTYPE_MOVES))
def test_merge_and_unmerge_sum_in_the_dtype_the_weight_has_at_each_call(MultiLoRALinear, case, unmerging):
    built, before, during = DTYPE_MOVES[case]
    in_features, out_features, r = PRECISION_SHAPE
    base, layer = make(MultiLoRALinear, dtype=built, in_features=in_features, out_features=out_features)
    sql = add(layer, "sql", r=r, alpha=16.0, in_features=in_features, out_features=out_features)
    add(layer, "chat", r=CHAT_RANK, in_features=in_features, out_features=out_features)
    for move in before:
        layer.to(move)
    sql.randomize(std=1.0)
    with torch.no_grad():
        base.weight.mul_(1e-3)  # an update far larger than W: a rounding of the sum shows
    W0 = base.weight.detach().double().clone()
    layer.merge()
    expect_summed_in_its_dtype(base, W0 + sql.delta(), sql.delta(), f"{case}: after merge()")
    for move in during:
        layer.to(move)
    merged = base.weight.detach().double().clone()
    UNMERGING[unmerging](layer)
    expect_summed_in_its_dtype(
        base,
        merged - sql.delta(),
        sql.delta(),
        f"{case}: after {unmerging}"
        + (f" (the weight {base.weight.dtype} now, moved while merged: not the merge's dtype)" if during else ""),
    )


def expect_unmerged(base: nn.Linear, merged: torch.Tensor, update: torch.Tensor, original: torch.Tensor, when: str,
                    cause: str, hint: str = "") -> None:  # fmt: skip
    """Fail the check unless the base's weight after an unmerge is ``original`` restored, or the ``merged`` weight
    minus ``update`` (float64) to the rounding of its dtype (either reading is right)."""
    if not torch.equal(base.weight.detach().double(), original):
        where = f"{when} (W the merged weight, the update subtracted)"
        expect_merged_weight(base.weight, merged - update, where, cause, hint)


DEFAULT_DTYPE_CAUSE = (
    "the weight's own dtype decides (fp16/bf16 upcast to float32, summed there and rounded once; float32 and float64 "
    "in their own), never torch.get_default_dtype(), which a script may set to anything"
)


@pytest.mark.points(1)
@pytest.mark.parametrize("default", FOREIGN_DEFAULT_DTYPES, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_merge_and_unmerge_sum_in_float32_under_every_default_dtype(MultiLoRALinear, dtype, default):
    in_features, out_features, _ = PRECISION_SHAPE
    base, layer = make(MultiLoRALinear, dtype=dtype, in_features=in_features, out_features=out_features)
    sql = add(layer, "sql", r=UNROUNDED_R, alpha=UNROUNDED_ALPHA, in_features=in_features, out_features=out_features)
    sql.randomize(std=0.2)
    W0, delta = base.weight.detach().double().clone(), sql.delta()
    regime = f"a {dtype_name(dtype)} weight, under torch.set_default_dtype({default})"
    hint = f"summed in torch's default dtype {default}, not float32? " if dtype in HALF_DTYPES else ""
    with default_dtype(default):
        layer.merge()
    expect_merged_weight(base.weight, W0 + delta, f"after merge() of {regime}", DEFAULT_DTYPE_CAUSE, hint)
    merged = base.weight.detach().double().clone()
    with default_dtype(default):
        layer.unmerge()
    expect_unmerged(base, merged, delta, W0, f"after unmerge() of {regime}", DEFAULT_DTYPE_CAUSE, hint)


# (in, out, r, dtype): one dimension a real model's and no multiple of a block size (256, 1024, ...), the other narrow
REAL_SIZED_MERGES = {
    "out 4103 (4096 + 7), float64": (16, 4103, 2, torch.float64),
    "out 1031 (1024 + 7), float16": (24, 1031, 3, torch.float16),
    "in 4103 (4096 + 7), float32": (4103, 16, 2, torch.float32),
}


@pytest.mark.points(1)
@pytest.mark.parametrize("case", REAL_SIZED_MERGES)
def test_merge_and_unmerge_reach_every_entry_of_a_real_sized_weight(MultiLoRALinear, case):
    in_features, out_features, r, dtype = REAL_SIZED_MERGES[case]
    base, layer = make(MultiLoRALinear, dtype=dtype, in_features=in_features, out_features=out_features)
    sql = add(layer, "sql", r=r, alpha=4.0, in_features=in_features, out_features=out_features)
    sql.randomize()
    W0, delta = base.weight.detach().double().clone(), sql.delta()
    cause = "merge writes W + scaling B @ A into every entry of the weight, whatever its size"
    layer.merge()
    weight = f"{out_features} x {in_features} {dtype_name(dtype)} weight"
    where = f"after merge() of a {weight}"
    expect_no_row_or_column_left_out(base.weight, W0, W0 + delta, where)
    expect_merged_weight(base.weight, W0 + delta, where, cause)
    merged = base.weight.detach().double().clone()
    layer.unmerge()
    expect_unmerged(base, merged, delta, W0, f"after unmerge() of a {weight}", cause)


@pytest.mark.points(2)
def test_unmerge_takes_the_merged_adapter_out(MultiLoRALinear):
    base, layer, sql, chat = two_adapters(MultiLoRALinear)
    W0 = base.weight.detach().double().clone()
    layer.merge()
    layer.unmerge()
    when = "after merge(), unmerge()"
    expect_weight(base, W0, when, {
        "unmerge left the update in the weight": W0 + sql.delta(),
        "unmerge subtracted the update twice": W0 - sql.delta(),
        "unmerge subtracted chat's update, not the merged sql's": W0 + sql.delta() - chat.delta(),
    })  # fmt: skip
    assert merged_list(layer, when) == [], f"{when}, merged_adapters is {merged_list(layer, when)}, expected []"
    expect_update(layer, base, W0, sql.delta(), when,
                  {"the adapter no longer computes once unmerged": torch.zeros_like(W0)})  # fmt: skip
    expect_trainable(layer, [sql, chat], sql, when, "once unmerged, the active adapter trains again")
    unmerge_allowing_value_error(layer)
    expect_weight(base, W0, "after a second unmerge() with nothing merged",
                  {"unmerge on an unmerged layer subtracted the update again": W0 - sql.delta()})  # fmt: skip


@pytest.mark.points(1)
@pytest.mark.parametrize("edits", ["in place", "through .data"])
@pytest.mark.parametrize("unmerging", UNMERGING)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_unmerge_subtracts_the_update_from_the_weight_as_it_is_now(MultiLoRALinear, dtype, unmerging, edits):
    # every dtype: an answer restoring a saved copy in the narrow ones (for its exact rounding) throws the change away;
    # the changes made in place bump the tensors' versions, those through .data do not (a copy restored when the
    # versions are those merge saw throws them away)
    base, layer, sql, _ = two_adapters(MultiLoRALinear, dtype=dtype)
    W0 = base.weight.detach().double().clone()
    layer.merge()
    change = 0.1 * torch.randn_like(W0)  # as a load_state_dict of a tuned base, or a tied weight, would make
    with torch.no_grad():
        (base.weight if edits == "in place" else base.weight.data).add_(change.to(base.weight.dtype))
    now = base.weight.detach().double().clone()  # the merged weight as the change left it, rounded to its dtype
    merged_delta = sql.delta()
    # the factors change while merged too (a load_state_dict of the adapter): unmerge uses them now
    sql.randomize(through_data=edits != "in place")
    UNMERGING[unmerging](layer)
    expected = now - sql.delta()
    # float64: to 1e-9; narrower: to a few roundings of the dtype, entry by entry, of the sum's terms' size (B @ A
    # of r products, summed in any order, fused or not; the change made while merged is ~10 of them in bf16)
    size = now.abs() + abs(sql.scaling) * sql.factors.B.detach().double().abs() @ sql.factors.A.detach().double().abs()
    slack = None if dtype == torch.float64 else 4 * torch.finfo(dtype).eps * size + 1e-30
    when = (
        f"after merge() of a {dtype_name(dtype)} weight, a change to base.weight and to sql's factors {edits}, "
        f"{unmerging}"
    )
    expect_weight(base, expected, when, slack=slack, causes={
        "unmerge restored the weight saved by merge, throwing the change made while merged away (changes through "
        ".data bump no version): subtract the update from the weight as it is now": W0,
        "the update is still in the weight": now,
        "unmerge subtracted the update saved at merge time: subtract scaling * B @ A of the factors as they are "
        "now": now - merged_delta,
    })  # fmt: skip


@pytest.mark.points(1)
def test_merged_adapters_is_a_new_list_the_caller_may_change(MultiLoRALinear):
    base, layer, sql, _ = two_adapters(MultiLoRALinear)
    W0 = base.weight.detach().double().clone()
    layer.merge()
    given = merged_list(layer, "after merge()")
    value = layer.merged_adapters
    if isinstance(value, list):
        value.clear()  # a caller's own business: the layer must not see it
    listed = merged_list(layer, "after merge() and clearing the list merged_adapters gave")
    assert listed == given == ["sql"], (
        f"after merge() and clearing the list merged_adapters gave, merged_adapters is {listed}, expected ['sql']: "
        "return a new list at every call (list(self._merged)), never the layer's own"
    )
    layer.unmerge()
    expect_weight(base, W0, "after merge(), clearing the list merged_adapters gave, unmerge()",
                  {"unmerge found nothing merged: the caller emptied the layer's list": W0 + sql.delta()})  # fmt: skip


@pytest.mark.points(1)
def test_merge_and_unmerge_without_an_active_adapter_change_nothing(MultiLoRALinear):
    base, layer = make(MultiLoRALinear)
    kept = base.weight.detach().clone()
    merge_allowing_value_error(layer)
    unmerge_allowing_value_error(layer)
    assert torch.equal(base.weight, kept) and merged_list(layer, "after merge() with no adapter") == [], (
        "merge() or unmerge() on a layer with no adapter changed the weight or listed a merged adapter"
    )
    sql, chat = add(layer, "sql", r=2, alpha=5.0), add(layer, "chat", r=4, alpha=6.0)
    sql.randomize()
    chat.randomize()
    layer.delete_adapter("sql")
    merge_allowing_value_error(layer)
    when = "after delete_adapter('sql') of the active adapter, merge()"
    expect_weight(base, kept.double(), when, {"chat was merged though no adapter is active": kept + chat.delta()})
    assert merged_list(layer, when) == [], f"{when}, merged_adapters is {merged_list(layer, when)}, expected []"


# ---------------------------------------------------------------------------------------------------------------
# delete_adapter


@pytest.mark.points(3)
def test_delete_adapter_unmerges_a_merged_adapter_first(MultiLoRALinear):
    base, layer, sql, chat = two_adapters(MultiLoRALinear)
    W0 = base.weight.detach().double().clone()
    layer.merge()
    layer.delete_adapter("sql")
    when = "after merge() of 'sql', delete_adapter('sql')"
    expect_weight(base, W0, when, {
        "the deleted adapter's update stayed in the weight for good (as peft's layer leaves it): unmerge it before "
        "deleting": W0 + sql.delta(),
    })  # fmt: skip
    assert merged_list(layer, when) == [], f"{when}, merged_adapters is {merged_list(layer, when)}, expected []"
    assert not registered(layer, sql), f"{when}, sql's factors are still parameters of the layer: remove them"
    expect_trainable(layer, [chat], None, when, "with no adapter active nothing trains")
    x = batch()
    error = max_difference(computed(layer, x), linear(x, W0, base.bias))
    assert error < 1e-9, f"{when}, the output differs from the base's own by {error:.3g}: no adapter is active"


@pytest.mark.points(2)
def test_deleting_the_active_adapter_leaves_none_active(MultiLoRALinear):
    base, layer, sql, chat = two_adapters(MultiLoRALinear)
    layer.delete_adapter("sql")
    when = "after delete_adapter('sql') of the active adapter"
    picked = ": another adapter was made active (peft's layer does that; its model-level rules leave none active)"
    assert active(layer) is None, f"{when}, active_adapter is {active(layer)!r}, expected None" + (
        picked if active(layer) == "chat" else ""
    )
    assert not registered(layer, sql), f"{when}, sql's factors are still parameters of the layer: remove them"
    expect_trainable(layer, [chat], None, when, "with no adapter active nothing trains")
    x = batch()
    error = max_difference(computed(layer, x), base(x))
    assert error < 1e-12, (
        f"{when}, the output differs from base(x) by {error:.3g}: with no active adapter compute base(x)"
    )
    layer.set_adapter("chat")
    expect_update(layer, base, base.weight, chat.delta(), "after that, set_adapter('chat')", {})
    expect_trainable(layer, [chat], chat, "after that, set_adapter('chat')", "the active adapter trains")


@pytest.mark.points(1)
def test_deleting_another_adapter_keeps_the_active_one_and_its_merge(MultiLoRALinear):
    base, layer, sql, chat = two_adapters(MultiLoRALinear)
    W0, d_sql = base.weight.detach().double().clone(), sql.delta()
    layer.merge()
    layer.delete_adapter("chat")
    when = "after merge() of 'sql', delete_adapter('chat')"
    assert active(layer) == "sql", f"{when}, active_adapter is {active(layer)!r}, expected 'sql'"
    assert not registered(layer, chat), f"{when}, chat's factors are still parameters of the layer: remove them"
    assert merged_list(layer, when) == ["sql"], (
        f"{when}, merged_adapters is {merged_list(layer, when)}, expected ['sql']: delete_adapter unmerges only the "
        "adapter it deletes; another merged adapter stays merged"
    )
    expect_weight(base, W0 + d_sql, when, {"sql was unmerged: delete_adapter unmerges only the adapter it deletes": W0})
    layer.unmerge()
    expect_trainable(layer, [sql], sql, f"{when}, unmerge()", "the active adapter still trains")
    expect_update(layer, base, base.weight, d_sql, f"{when}, unmerge()", {})
    expect_value_error(lambda: layer.delete_adapter("chat"), "delete_adapter('chat') a second time")


@pytest.mark.points(1)
def test_a_deleted_name_can_be_added_again_and_becomes_active(MultiLoRALinear):
    base, layer, _, _ = two_adapters(MultiLoRALinear)
    layer.delete_adapter("sql")
    again = add(layer, "sql", r=3, alpha=6.0)
    when = "after delete_adapter('sql') of the active adapter, add_adapter('sql', r=3)"
    assert active(layer) == "sql", (
        f"{when}, active_adapter is {active(layer)!r}, expected 'sql': with none active the new adapter becomes active"
    )
    expect_trainable(layer, [again], again, when, "the new active adapter trains")
    x = batch()
    error = max_difference(computed(layer, x), base(x))
    assert error < 1e-12, f"{when}, the output differs from base(x) by {error:.3g}: a new adapter's B is zero"


@pytest.mark.points(1)
def test_an_adapter_may_be_named_like_the_layer_s_own_attributes(MultiLoRALinear):
    base, layer = make(MultiLoRALinear)
    named_base = add(layer, "base", r=2, alpha=5.0)
    named_base.randomize()
    when = "after add_adapter('base') (the stub's own attribute name)"
    assert any(module is base for module in layer.modules()), (
        f"{when}, the nn.Linear passed in is no longer a submodule of the layer: keep adapters in containers of "
        "their own (nn.ParameterDict, nn.ModuleDict), never as attributes of the layer named after the adapter"
    )
    assert active(layer) == "base", f"{when}, active_adapter is {active(layer)!r}, expected 'base'"
    expect_trainable(layer, [named_base], named_base, when, "only the active adapter's own factors train, found by "
                     "its exact name, not as a part of a parameter's name (the base's is 'base.weight')")  # fmt: skip
    expect_update(layer, base, base.weight, named_base.delta(), when, {})
    layer.delete_adapter("base")
    expect_update(layer, base, base.weight, torch.zeros_like(named_base.delta()), "after delete_adapter('base')", {})


@pytest.mark.points(1)
def test_each_adapter_has_its_own_dropout(MultiLoRALinear):
    base, layer = make(MultiLoRALinear)
    sql, chat = add(layer, "sql", r=2, alpha=5.0), add(layer, "chat", r=4, alpha=6.0, dropout=0.5)
    sql.randomize()
    chat.randomize()
    x = batch()
    layer.train()
    with torch.no_grad():
        repeat = max_difference(output(layer, x), output(layer, x))
        assert repeat == 0, (
            f"with 'sql' (dropout=0) active, train-mode outputs vary by {repeat:.3g}: chat's dropout=0.5 is applied "
            "to sql too; keep a dropout per adapter"
        )
        layer.set_adapter("chat")
        varies = max_difference(output(layer, x), output(layer, x))
        assert varies > 0, (
            "with 'chat' (dropout=0.5) active, train-mode outputs do not vary: apply each adapter's own dropout"
        )
    expect_update(layer, base, base.weight, chat.delta(), "with 'chat' (dropout=0.5) active, in eval mode", {})


@pytest.mark.points(2)
def test_dropout_drops_the_adapter_input_and_rescales_it_in_every_regime(MultiLoRALinear):
    base, layer = make(MultiLoRALinear, in_features=DROP_IN, out_features=DROP_OUT)
    layer.add_adapter("sql", r=DROP_R, alpha=2.0 * DROP_R, dropout=DROPOUT)  # r = in: the probe reads x back
    expect_dropout_like_nn_dropout(layer, base, DROPOUT)


@pytest.mark.points(1)
@pytest.mark.parametrize(
    "rows", [MASK_ROWS, (1 << 17) + 5]
)  # past a tiled block of 2048 rows, and of 16384 (a prefill)
def test_dropout_draws_a_fresh_mask_for_every_row_of_a_large_batch(MultiLoRALinear, rows):
    base, layer = make(MultiLoRALinear, in_features=EXACT_IN, out_features=EXACT_OUT)
    layer.add_adapter("sql", r=EXACT_R, alpha=float(EXACT_R), dropout=DROPOUT)  # scaling 1: the probe reads x back
    expect_a_fresh_mask_for_every_row(layer, base, DROPOUT, rows)


@pytest.mark.points(1)
def test_an_adapter_added_in_eval_mode_drops_nothing_until_train(MultiLoRALinear):
    base, layer = make(MultiLoRALinear)
    layer.eval()
    sql = add(layer, "sql", r=3, alpha=6.0, dropout=0.5)
    sql.randomize()
    x = batch()
    with torch.no_grad():  # no layer.eval() again: the new adapter's dropout follows the mode the layer is in
        error = max_difference(output(layer, x), linear(x, base.weight, base.bias) + x @ sql.delta().T)
    assert error < 1e-9, (
        f"after layer.eval(), add_adapter('sql', dropout=0.5), the eval-mode output is off base(x) + scaling B A x "
        f"by {error:.3g}: the new nn.Dropout is in train mode (a new module is); put it in the layer's mode, "
        "nn.Dropout(p).train(self.training), or call F.dropout(x, p, self.training)"
    )
    layer.train()
    with torch.no_grad():
        varies = max_difference(output(layer, x), output(layer, x))
    assert varies > 0, "after that, layer.train(): train-mode outputs with dropout=0.5 do not vary: dropout is off"


def zeroed_fraction(layer: nn.Module, base: nn.Linear, repeats: int = 100) -> float:
    """The fraction of the active adapter's inputs that train-mode dropout zeroes: each one-hot row's change from
    base(x), read as a multiple of that input's column of the (eval-mode) update."""
    eye = torch.eye(base.in_features, dtype=base.weight.dtype).repeat(repeats, 1)
    with torch.no_grad():
        columns = computed(layer, eye) - base(eye)
        layer.train()
        changes = output(layer, eye) - base(eye)
        layer.eval()
    multipliers = (changes * columns).sum(dim=1) / (columns * columns).sum(dim=1)
    return (multipliers.abs() < 1e-6).double().mean().item()


# Adds and deletes of every kind between them: a later adapter's position shifts, a name comes back with another p.
DROPOUT_STEPS = [("add", "sql", 0.5), ("add", "chat", 0.0), ("add", "math", 0.25), ("delete", "sql", None),
                 ("add", "sql", 0.0), ("delete", "chat", None), ("add", "chat", 0.5)]  # fmt: skip


@pytest.mark.points(1)
def test_each_adapter_keeps_its_own_dropout_through_delete_and_add(MultiLoRALinear):
    base, layer = make(MultiLoRALinear)
    layer.eval()
    held: dict[str, float] = {}
    done = []
    for step, name, p in DROPOUT_STEPS:
        if step == "add":
            add(layer, name, r=3, alpha=6.0, dropout=p).randomize()
            held[name] = p
        else:
            layer.delete_adapter(name)
            del held[name]
        done.append(f"{step}_adapter({name!r}" + (f", dropout={p})" if step == "add" else ")"))
        for adapter, expected in held.items():
            layer.set_adapter(adapter)
            zeroed = zeroed_fraction(layer, base)
            assert abs(zeroed - expected) < 0.1, (
                f"after {', '.join(done)}: {adapter!r} zeroes {zeroed:.0%} of its inputs in train mode, expected about "
                f"{expected:.0%} (its own dropout={expected}): each adapter's dropout is made at its add_adapter and "
                "removed at its delete_adapter, kept by name (one kept by position shifts at a delete; one left "
                "behind at a delete comes back with the name)"
            )


# ---------------------------------------------------------------------------------------------------------------
# Against peft: random sequences of calls, compared after every step


SEQUENCE_NAMES = ("sql", "chat", "math")
SEQUENCE_IN, SEQUENCE_OUT = 7, 5  # ranks 2, 3, 4: every factor's shape tells which it is
SEQUENCE_TOLERANCE = 1e-5  # float32, relative to the size of what is compared; peft's own drift is about 1e-7 here


def relative_difference(measured: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference over 1 + the largest magnitude expected: float32 rounding grows with the values."""
    return max_difference(measured, expected) / (1 + expected.detach().double().abs().max().item())


CAUSES = {  # the rule a mismatch right after a step most likely breaks
    "add_adapter": "a new adapter starts with B zero and becomes active only when none is (trainable then)",
    "set_adapter": "from set_adapter on, only the new active adapter computes (its own factors and scaling) and trains",
    "set_adapter when merged": "set_adapter on a merged layer first unmerges the merged adapter (its own update)",
    "disable_adapters": "on leaving disable_adapters() the previous state returns",
    "disable_adapters when merged": "disable_adapters() unmerges a merged layer; the state returns unmerged on exit",
    "merge": "merge folds the active adapter in once (a second merge adds nothing); a merged layer computes the base",
    "unmerge": "unmerge takes out exactly what merge put in, of the adapter that merged_adapters lists",
    "delete_adapter": "deleting the active adapter leaves none active; deleting another leaves the rest as it was",
    "delete_adapter when merged": "delete_adapter unmerges the adapter it deletes if that one is merged (its update "
    "leaves the weight with it), and leaves another merged adapter merged",
    "train step": "only the active adapter computes and trains",
    "train": "train()/eval() changes nothing but dropout: no merging on eval()",
}


def peft_lora():
    """peft's LoraConfig and its LoRA layer for nn.Linear, or the check skips with one line."""
    try:
        from peft import LoraConfig
        from peft.tuners.lora import Linear
    except ImportError:
        pytest.skip("peft is not installed: pip install peft to grade multi_adapter against peft's own LoRA layer")
    return LoraConfig, Linear


def machine_class(MultiLoRALinear, LoraConfig, PeftLinear):
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

    names = st.sampled_from(SEQUENCE_NAMES)

    class AgreesWithPeft(RuleBasedStateMachine):
        """The layer under grade and a peft lora.Linear with the same base and factors, driven alike: the oracle
        calls peft's unmerge wherever the model-level rules unmerge."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.base = nn.Linear(SEQUENCE_IN, SEQUENCE_OUT)
            self.weight, self.storage = self.base.weight, self.base.weight.data_ptr()
            self.W0 = self.base.weight.detach().clone()
            oracle_base = copy.deepcopy(self.base).requires_grad_(False)
            self.layer = MultiLoRALinear(self.base)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = LoraConfig(r=1, lora_alpha=1)
                self.oracle = PeftLinear(oracle_base, "placeholder", config=config, r=1, lora_alpha=1)
                self.oracle.delete_adapter("placeholder")
            self.adapters: dict[str, Adapter] = {}
            self.history: list[str] = []
            self.merged_before = False
            self.x = torch.randn(4, SEQUENCE_IN)

        # what the oracle does, by the model-level rules
        def peft(self, method: str, *args: object, **kwargs: object) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                getattr(self.oracle, method)(*args, **kwargs)

        def unmerge_oracle(self) -> None:
            if self.oracle.merged:
                self.peft("unmerge")

        def oracle_active(self) -> str | None:
            return self.oracle.active_adapters[0] if self.oracle.active_adapters else None

        def copy_factors_to_oracle(self, adapter: Adapter) -> None:
            with torch.no_grad():
                self.oracle.lora_A[adapter.name].weight.copy_(adapter.factors.A)
                self.oracle.lora_B[adapter.name].weight.copy_(adapter.factors.B)

        def step(self, text: str) -> None:
            """Record a step of the sequence, and whether the layer was merged when it began."""
            self.history.append(text)
            self.merged_before = bool(self.oracle.merged)

        def where(self, before_this_step: bool = False) -> str:
            steps = (self.history[:-1] if before_this_step else self.history)[-4:]
            return ("after " + ", ".join(steps)) if steps else "on a new layer"

        def cause(self) -> str:
            last = self.history[-1].split("(")[0] if self.history else ""
            if self.merged_before and f"{last} when merged" in CAUSES:
                return CAUSES[f"{last} when merged"]
            return CAUSES.get(last, "")

        def unknown(self, method: str, name: str) -> None:
            call = f"{self.where(before_this_step=True)}, {method}({name!r})"
            expect_error_naming(lambda: getattr(self.layer, method)(name), call, sorted(self.adapters))

        # the rules
        @initialize(count=st.integers(1, 3))
        def add_adapters(self, count: int) -> None:
            """Start from a layer holding adapters, so that every sequence switches between some."""
            for name, r, alpha in list(zip(SEQUENCE_NAMES, (2, 3, 4), (4.0, 6.0, 4.0), strict=True))[:count]:
                self.add_adapter(name, r, alpha)

        @rule(name=names, r=st.sampled_from((2, 3, 4)), alpha=st.sampled_from((4.0, 6.0)))
        def add_adapter(self, name: str, r: int, alpha: float) -> None:
            self.step(f"add_adapter({name!r}, r={r}, alpha={alpha:g})")
            if name in self.adapters:
                call = f"{self.where(before_this_step=True)}, {self.history[-1]} (a name already there)"
                expect_value_error(lambda: self.layer.add_adapter(name, r=r, alpha=alpha), call)
                return
            adapter = add(self.layer, name, r, alpha, in_features=SEQUENCE_IN, out_features=SEQUENCE_OUT)
            assert adapter.factors.B.abs().max().item() == 0, f"{self.where()}: the new adapter's B is not zero"
            self.peft("update_layer", name, r, lora_alpha=alpha, config=LoraConfig(r=r, lora_alpha=alpha))
            if self.oracle_active() is None:
                self.peft("set_adapter", name)
            adapter.randomize()
            self.copy_factors_to_oracle(adapter)
            self.adapters[name] = adapter

        def merge_first(self, merged: bool) -> None:
            """Merge before the step when ``merged``: the switches matter most on a merged layer."""
            if merged:
                self.merge(safe=False)
                self.agrees_with_peft()

        @rule(name=st.sampled_from((*SEQUENCE_NAMES, UNKNOWN)), merged=st.booleans())
        def set_adapter(self, name: str, merged: bool) -> None:
            self.merge_first(merged)
            self.step(f"set_adapter({name!r})")
            if name not in self.adapters:
                return self.unknown("set_adapter", name)
            self.layer.set_adapter(name)
            self.unmerge_oracle()
            self.peft("set_adapter", name)

        @rule(raise_inside=st.booleans(), merged=st.booleans())
        def disable_adapters(self, raise_inside: bool, merged: bool) -> None:
            self.merge_first(merged)
            self.step("disable_adapters()" + (" left by an exception" if raise_inside else ""))
            self.peft("enable_adapters", False)
            self.unmerge_oracle()
            propagated = False
            try:
                with disabled(self.layer):
                    with torch.no_grad():
                        inside = output(self.layer, self.x)
                    trains = describe_trainable(self.layer, list(self.adapters.values()))
                    if raise_inside:
                        raise Sentinel("raised inside the block")
            except Sentinel:
                propagated = True
            finally:
                self.peft("enable_adapters", True)
            assert propagated or not raise_inside, (
                f"{self.where()}: the exception raised inside the block did not come out of it: the context manager "
                "swallows it; restore the state in a finally clause and let the exception go on"
            )
            with torch.no_grad():
                error = relative_difference(inside, self.oracle.base_layer(self.x))
            assert error <= SEQUENCE_TOLERANCE, (
                f"{self.where()}: inside the block the output differs from the unmerged base's by {error:.3g} "
                "(relative): compute base(x) with the base's own weight (unmerge a merged layer first)"
            )
            assert trains == "nothing", f"{self.where()}: inside the block {trains} trains, expected nothing"

        @rule(safe=st.booleans())
        def merge(self, safe: bool) -> None:
            self.step(f"merge(safe={safe})")
            if self.oracle_active() is None:
                merge_allowing_value_error(self.layer, safe=safe)
                return
            self.layer.merge(safe=safe)
            self.peft("merge", safe_merge=safe)

        @rule()
        def unmerge(self) -> None:
            self.step("unmerge()")
            if not self.oracle.merged:
                unmerge_allowing_value_error(self.layer)
                return
            self.layer.unmerge()
            self.unmerge_oracle()
            drift = max_difference(self.base.weight, self.W0)
            peft_drift = max_difference(self.oracle.base_layer.weight, self.W0)
            assert drift <= max(SEQUENCE_TOLERANCE, 10 * peft_drift), (
                f"{self.where()}: the weight is {drift:.3g} away from the base's original weight (peft's: "
                f"{peft_drift:.3g}): {CAUSES['unmerge']}"
            )

        @rule(name=st.sampled_from((*SEQUENCE_NAMES, UNKNOWN)), merged=st.booleans())
        def delete_adapter(self, name: str, merged: bool) -> None:
            self.merge_first(merged)
            self.step(f"delete_adapter({name!r})")
            if name not in self.adapters:
                return self.unknown("delete_adapter", name)
            gone = self.adapters.pop(name)
            self.layer.delete_adapter(name)
            if name in self.oracle.merged_adapters:
                self.unmerge_oracle()
            was_active = name in self.oracle.active_adapters
            self.peft("delete_adapter", name)
            if was_active:
                self.peft("set_adapter", [])
            assert not registered(self.layer, gone), (
                f"{self.where()}: the deleted adapter's factors are still parameters of the layer: remove them"
            )

        @precondition(lambda self: self.oracle_active() is not None)
        @rule(merged=st.booleans())
        def delete_the_active_adapter(self, merged: bool) -> None:
            self.delete_adapter(self.oracle_active(), merged)

        @precondition(lambda self: any(name not in self.oracle.active_adapters for name in self.adapters))
        @rule(merged=st.booleans())
        def delete_an_inactive_adapter(self, merged: bool) -> None:
            name = next(name for name in self.adapters if name not in self.oracle.active_adapters)
            self.delete_adapter(name, merged)

        @precondition(lambda self: self.oracle_active() is not None and not self.oracle.merged)
        @rule()
        def train_step(self) -> None:
            self.step("train step")
            adapter = self.adapters[self.oracle_active()]
            x, upstream = torch.randn(3, SEQUENCE_IN), torch.randn(3, SEQUENCE_OUT)
            y = output(self.layer, x)
            assert y.requires_grad, (
                f"{self.where()}: the output does not depend on the active adapter's factors: is forward under no_grad?"
            )
            (y * upstream).sum().backward()
            (self.oracle(x) * upstream).sum().backward()
            name = adapter.name
            expected = {"A": self.oracle.lora_A[name].weight.grad, "B": self.oracle.lora_B[name].weight.grad}
            for factor, measured in zip("AB", adapter.factors.grads(), strict=True):
                assert measured is not None, f"{self.where()}: the active adapter's {factor} received no gradient"
                error = relative_difference(measured, expected[factor])
                assert error <= SEQUENCE_TOLERANCE, (
                    f"{self.where()}: the gradient of {name}'s {factor} differs from peft's by {error:.3g} (relative)"
                )
            others = [other.name for other in self.adapters.values() if other is not adapter
                      and any(t.grad is not None and t.grad.abs().max() > 0 for t in other.tensors)]  # fmt: skip
            assert not others and self.base.weight.grad is None, (
                f"{self.where()}: {others or 'the base'} received gradients: only the active adapter trains"
            )
            with torch.no_grad():
                for tensor in adapter.tensors:
                    tensor.sub_(0.05 * tensor.grad)
            for tensor in [*self.layer.parameters(), *self.oracle.parameters()]:
                tensor.grad = None
            self.copy_factors_to_oracle(adapter)

        @rule(training=st.booleans())
        def train(self, training: bool) -> None:
            self.step(f"train({training})")
            self.layer.train(training)
            self.oracle.train(training)

        @invariant()
        def agrees_with_peft(self) -> None:
            where = self.where()
            cause = f": {self.cause()}" if self.cause() else ""
            expected_active = self.oracle_active()
            assert active(self.layer) == expected_active, (
                f"{where}: active_adapter is {active(self.layer)!r}, expected {expected_active!r}{cause}"
            )
            listed = merged_list(self.layer, where)
            assert listed == list(self.oracle.merged_adapters), (
                f"{where}: merged_adapters is {listed}, expected {list(self.oracle.merged_adapters)}{cause}"
            )
            assert self.base.weight is self.weight, f"{where}: the base's weight was replaced by another Parameter"
            assert self.base.weight.data_ptr() == self.storage, (
                f"{where}: the base's weight holds new memory (weight.data = ... ?): write it in place (copy_)"
            )
            error = relative_difference(self.base.weight, self.oracle.base_layer.weight)
            assert error <= SEQUENCE_TOLERANCE, (
                f"{where}: the base's weight differs from peft's by {error:.3g} (relative){cause}"
            )
            adapters = list(self.adapters.values())
            for adapter in adapters:
                assert registered(self.layer, adapter), (
                    f"{where}: {adapter.name}'s factors are no longer parameters of the layer: keep each adapter's "
                    "tensors from add_adapter to delete_adapter"
                )
            trains = describe_trainable(self.layer, adapters)
            expected = [name for name in self.adapters if self.oracle.lora_A[name].weight.requires_grad]
            readings = {" and ".join(f"{name}'s" for name in expected) or "nothing"}
            if self.oracle.merged:
                readings.add("nothing")  # a merged adapter may be frozen until unmerged
            assert trains in readings, f"{where}: {trains} trains, expected {' or '.join(sorted(readings))}{cause}"
            with torch.no_grad():
                error = relative_difference(output(self.layer, self.x), self.oracle(self.x))
            assert error <= SEQUENCE_TOLERANCE, (
                f"{where}: the output differs from peft's by {error:.3g} (relative){cause}"
            )

    return AgreesWithPeft


ADD_CHAT, ADD_MATH = {"name": "chat", "r": 3, "alpha": 6.0}, {"name": "math", "r": 4, "alpha": 4.0}
EXPLICIT_SEQUENCES = [  # steps of the machine that its random sequences reach rarely or never: on a merged layer,
    # add_adapter (new and existing names), a second merge, unknown names, deleting an inactive adapter, a disabled
    # block left by an exception, a training step after a merge and unmerge; with no adapter active, merge
    [
        ("add_adapters", {"count": 1}), ("merge", {"safe": False}), ("add_adapter", ADD_CHAT),
        ("merge", {"safe": True}), ("add_adapter", {"name": "sql", "r": 2, "alpha": 4.0}),
        ("set_adapter", {"name": UNKNOWN, "merged": False}), ("unmerge", {}), ("unmerge", {}),
        ("set_adapter", {"name": "chat", "merged": True}), ("merge", {"safe": False}), ("add_adapter", ADD_MATH),
        ("delete_an_inactive_adapter", {"merged": False}), ("disable_adapters", {"raise_inside": True, "merged": True}),
        ("train", {"training": True}), ("train_step", {}), ("merge", {"safe": True}), ("unmerge", {}),
        ("train_step", {}), ("train", {"training": False}), ("delete_the_active_adapter", {"merged": True}),
        ("merge", {"safe": True}), ("unmerge", {}), ("set_adapter", {"name": "math", "merged": False}),
    ],
    [
        ("add_adapters", {"count": 3}), ("merge", {"safe": False}),
        ("delete_adapter", {"name": UNKNOWN, "merged": False}),
        ("disable_adapters", {"raise_inside": False, "merged": False}),
        ("set_adapter", {"name": "math", "merged": True}),
        ("delete_an_inactive_adapter", {"merged": True}), ("delete_the_active_adapter", {"merged": False}),
        ("add_adapter", ADD_MATH), ("merge", {"safe": True}), ("add_adapter", {"name": "sql", "r": 2, "alpha": 6.0}),
        ("delete_adapter", {"name": "chat", "merged": False}), ("unmerge", {}), ("train_step", {}),
        ("disable_adapters", {"raise_inside": True, "merged": False}),
        ("set_adapter", {"name": "math", "merged": True}),
    ],
]  # fmt: skip


@pytest.mark.points(6)
def test_agrees_with_peft_over_random_sequences_of_calls(MultiLoRALinear):
    MultiLoRALinear(nn.Linear(SEQUENCE_IN, SEQUENCE_OUT))  # a stub fails here, before peft is imported
    LoraConfig, PeftLinear = peft_lora()
    from hypothesis import Phase, settings
    from hypothesis.stateful import run_state_machine_as_test

    machine = machine_class(MultiLoRALinear, LoraConfig, PeftLinear)
    for sequence in EXPLICIT_SEQUENCES:  # the rare transitions first, each compared with peft after every step
        state = machine()
        try:
            for method, arguments in sequence:
                getattr(state, method)(**arguments)
                state.agrees_with_peft()
        finally:
            state.teardown()
    # No explain phase: tracing every replay costs more than the whole search. Shrinking stays: it makes the
    # verdict's "after ..." the shortest sequence of calls that shows the mistake.
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]
    run_state_machine_as_test(machine, settings=settings(max_examples=30, stateful_step_count=20, phases=phases))
