"""Checks of the `qlora` kata: NF4Linear (a base stored only in NF4), QLoRALinear (LoRA over it) and apply_qlora,
on the toy transformer, a tiny Llama (transformers) and against peft's LoRA over bitsandbytes' Linear4bit."""

from __future__ import annotations

import array
import contextlib
import copy
import gc
import itertools
import math
import re
import sys
import types
import warnings
import weakref
from collections import deque
from collections.abc import Iterable, Iterator

import numpy
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grader import nf4_reference as ref
from grader.models import MODEL_ZOO, ToyTransformer, inputs, matching_linears, zoo_inputs
from grader.nf4_checks import expect_same_codes, storage_bytes
from grader.oracles import optional
from grader.probes import (
    CUDA,
    DROP_IN,
    DROP_OUT,
    DROP_R,
    DROPOUT,
    FORWARD_FAILURES,
    GRAD_MODES,
    INVALID_ARGUMENTS,
    METADATA_NAMES,
    TRAINING_CASES,
    arguments_id,
    describe,
    dtype_name,
    expect_a_random_full_rank_A,
    expect_centred,
    expect_dropout_like_nn_dropout,
    expect_nn_linear_bound_if_uniform,
    expect_on_the_base_device,
    expect_plain_lora_with_frozen_factors,
    expect_r_alpha_and_scaling,
    expect_the_base_output_left_alone,
    expect_training_fits_a_low_rank_target,
    expect_value_error,
    factors,
    forward_in_regime,
    max_difference,
    object_bytes,
    output,
    plain_lora,
    randomize_factors,
    strided,
    trainable,
)
from grader.signatures import expect_the_stubs_signatures


@pytest.mark.points(1)
def test_takes_the_stubs_parameters(implementation, NF4Linear, nf4_works):
    """Callers pass the stub's parameters by name or by position: each definition takes them as the stub does."""
    expect_the_stubs_signatures(implementation, "qlora")
    # Then a call into the kata: an unimplemented stub, its signatures right, scores nothing here.
    nf4_works()
    NF4Linear(nn.Linear(64, 2))


SUBJECT = "QLoRALinear"  # the definition a failing check points at

IN, OUT, R, ALPHA = 96, 40, 4, 10.0  # distinct dims: a factor's shape tells which it is; 3840 weights, 60 blocks
SCALING = ALPHA / R
BLOCK = 64
TRANSFORMERS_MISSING = "transformers is not installed: pip install transformers to also grade apply_qlora on a Llama"
PEFT_MISSING = "peft or bitsandbytes is not installed: pip install peft bitsandbytes to also compare with their QLoRA"
# The oracles, imported while pytest collects this module (seconds each, over 10 s under load): never inside a check.
LLAMA = optional("transformers.models.llama.modeling_llama")
PEFT, BITSANDBYTES = optional("peft"), optional("bitsandbytes")
LOW = {torch.float32: 1e-5, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}  # relative tolerance per dtype


def gate_weight() -> torch.Tensor:
    """A (4, 100) weight with no value near a midpoint between codes: any right quantizer packs it alike."""
    for seed in range(100):
        weight = torch.randn(4, 100, generator=torch.Generator().manual_seed(seed))
        flat = weight.reshape(-1).double()
        scaled = flat / ref.absmax_per_block(flat, BLOCK).repeat_interleave(BLOCK)[: flat.numel()]
        if (scaled[:, None] - ref.MIDPOINTS.double()[None, :]).abs().min() > 1e-4:
            return weight
    raise AssertionError("grader bug: no gate weight found")


GATE = gate_weight()


def require_nf4(quantize_nf4, dequantize_nf4) -> None:
    """Fail the check as blocked unless the nf4 kata quantizes and dequantizes as NF4 does (a stub's
    NotImplementedError reads 'blocked: finish nf4 first' by itself)."""
    expected_packed, expected_absmax = ref.quantize(GATE, BLOCK)
    returned = quantize_nf4(GATE, BLOCK)
    works = isinstance(returned, tuple) and len(returned) == 2 and all(isinstance(t, torch.Tensor) for t in returned)
    works = (
        works and torch.equal(returned[0].reshape(-1), expected_packed) and torch.equal(returned[1], expected_absmax)
    )
    if works:
        restored = dequantize_nf4(expected_packed, expected_absmax, (4, 100), torch.float32, BLOCK)
        expected = ref.dequantize(expected_packed, expected_absmax, (4, 100), torch.float32, BLOCK)
        works = isinstance(restored, torch.Tensor) and restored.shape == expected.shape
        works = works and torch.equal(restored.float(), expected)
    if not works:
        pytest.fail(
            "blocked: finish nf4 first (its quantize_nf4 or dequantize_nf4 does not give NF4's results: "
            "pytest grader/test_nf4.py says what to fix)",
            pytrace=False,
        )


@pytest.fixture
def nf4_works(quantize_nf4, dequantize_nf4):
    return lambda: require_nf4(quantize_nf4, dequantize_nf4)


def walk_tensors(root: object) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor that ``root`` keeps alive, by where: whatever the garbage collector sees it refer to
    (``gc.get_referents``: attributes, containers, closures, default arguments, ``functools`` caches, bound methods,
    class attributes), and through the globals and classes of the submission's own modules (a module-level cache);
    not through other modules or classes (torch's, the grader's). Each tensor once. A numpy array counts as the tensor
    sharing its memory, and the floats of a list or tuple as a float64 tensor of them (a weight kept by .tolist()),
    but for a function's default arguments (``alpha=16.0``), which are constants of the code, not of the layer.
    Whatever can hold the weight's bytes counts as a uint8 tensor of them: bytes, bytearray, memoryview,
    array.array, a torch storage (untyped or typed), a numpy array of any kind, and the ints of a list or tuple
    (as int64, 8 bytes each: list(weight_bytes)). Any other object counts as a uint8 tensor of its own memory
    (``object_bytes``: all of a number's, any type's, wherever it sits (a float in a dict, a complex); a str's
    characters, an io.BytesIO's buffer, a ctypes array), and is walked through too (a float subclass's attributes);
    what describes code is not the layer's (a docstring, a name, annotations: ``METADATA_NAMES``; a function's own
    name and doc)."""
    package = type(root).__module__.split(".")[0]
    own = lambda name: isinstance(name, str) and name.split(".")[0] == package  # noqa: E731
    foreign = {id(vars(m)) for m in list(sys.modules.values()) if m is not None and not own(m.__name__)}
    seen: set[int] = set()
    constants: set[int] = set()  # the default-argument tuples of functions (alpha=16.0): no state of the layer's
    made: list[torch.Tensor] = []  # the tensors standing for arrays and lists, alive until the walk ends
    queue = deque([(root, type(root).__name__)])
    while queue and len(seen) < 200_000:
        value, where = queue.popleft()
        if id(value) in seen or isinstance(value, (types.ModuleType, types.CodeType)):
            continue
        if id(value) in foreign or (isinstance(value, type) and not own(value.__module__)):
            continue
        seen.add(id(value))
        if isinstance(value, types.FunctionType) and value.__defaults__ is not None:
            constants.add(id(value.__defaults__))
        if isinstance(value, torch.Tensor):
            yield where, value
        elif isinstance(value, (torch.UntypedStorage, torch.TypedStorage)):
            storage = value.untyped_storage() if isinstance(value, torch.TypedStorage) else value
            made.append(torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage))
            yield f"{where} (a torch storage)", made[-1]
        elif isinstance(value, (bytes, bytearray, memoryview, array.array)) or (
            isinstance(value, numpy.ndarray) and value.dtype.kind not in "biufc"
        ):
            size = value.nbytes if isinstance(value, (numpy.ndarray, memoryview)) else memoryview(value).nbytes
            made.append(torch.empty(size, dtype=torch.uint8))  # its size is what counts
            yield f"{where} (its bytes)", made[-1]
        elif isinstance(value, numpy.ndarray) and value.dtype.kind in "biufc":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a read-only array: the tensor is only measured
                made.append(torch.from_numpy(value))
            yield f"{where} (a numpy array)", made[-1]
        elif (
            isinstance(value, (list, tuple)) and id(value) not in constants and any(isinstance(i, float) for i in value)
        ):
            made.append(torch.tensor([item for item in value if isinstance(item, float)], dtype=torch.float64))
            yield f"{where} (its Python floats)", made[-1]
        elif isinstance(value, (list, tuple)) and id(value) not in constants:
            ints = sum(1 for item in value if isinstance(item, int) and not isinstance(item, bool))
            if ints > 16:  # a shape or a few indices cost nothing; a weight's bytes as ints do
                made.append(torch.zeros(ints, dtype=torch.int64))
                yield f"{where} (its Python ints)", made[-1]
        elif not isinstance(value, (types.FunctionType, type)) and (size := object_bytes(value)) > 0:
            made.append(torch.empty(size, dtype=torch.uint8))  # its size is what counts
            yield f"{where} (its {size} bytes as a {type(value).__name__})", made[-1]
        if isinstance(value, torch.autograd.graph.Node):
            children = graph_children(value, where)
        elif isinstance(value, types.FunctionType):  # its state, not its name, doc or annotations
            held = [value.__globals__, value.__defaults__, value.__kwdefaults__, value.__closure__, vars(value)]
            children = [(item, f"{where} (via function)") for item in held if item is not None]
        elif isinstance(value, dict):
            described = lambda key: isinstance(key, str) and key in METADATA_NAMES  # noqa: E731
            children = [(item, f"{where}[{key!r}]") for key, item in value.items() if not described(key)]
            children += [(key, f"{where} key") for key in value]
        elif isinstance(value, (list, tuple)):
            children = [(item, f"{where}[{index}]") for index, item in enumerate(value)]
        elif isinstance(getattr(value, "__dict__", None), dict) and not isinstance(value, type):
            attributes = vars(value)
            inner = {"_parameters", "_buffers", "_modules"}
            children = [
                (item, f"{where}.{key}") for name in inner & attributes.keys() for key, item in attributes[name].items()
            ]
            children += [(item, f"{where}.{name}") for name, item in attributes.items() if name not in inner]
            children += [(item, f"{where} (via {type(item).__name__})") for item in gc.get_referents(value)]
        else:
            children = [(item, f"{where} (via {type(value).__name__})") for item in gc.get_referents(value)]
        if isinstance(value, torch.Tensor) and value.grad_fn is not None:  # a kept output keeps its whole graph
            children.append((value.grad_fn, f"{where}.grad_fn"))
        queue.extend(children)


def still_training(root: nn.Module, allowed: Iterable[torch.Tensor] = ()) -> list[str]:
    """Where ``root`` holds a tensor that requires grad, but for ``allowed`` (the factors): its parameters, its
    buffers (a bias Parameter registered as a buffer escapes every parameters()-based freeze) and the rest it keeps."""
    allowed_ids = {id(t) for t in allowed}
    named = [*root.named_parameters(), *root.named_buffers()]
    found = {id(t): name for name, t in reversed(named)}
    for where, tensor in walk_tensors(root):
        found.setdefault(id(tensor), where)
    tensors = {id(t): t for _, t in named} | {id(t): t for _, t in walk_tensors(root)}
    return [found[key] for key, t in tensors.items() if t.requires_grad and t.is_leaf and key not in allowed_ids]


def expect_frozen(root: nn.Module, what: str, allowed: Iterable[torch.Tensor] = ()) -> None:
    """Fail the check unless no tensor ``root`` holds requires grad, but ``allowed``."""
    loose = still_training(root, allowed)
    assert not loose, (
        f"{what}: expected no tensor requiring grad but the factors, measured {loose[:3]} requiring grad: freeze every "
        "tensor the layer holds, buffers too (register_buffer('bias', base.bias) keeps a Parameter requiring grad)"
    )


def graph_children(node: torch.autograd.graph.Node, where: str) -> list[tuple[object, str]]:
    """What a node of an autograd graph keeps alive: the tensors it saved for backward (``_saved_mat2``; a custom
    Function's ``saved_tensors``; unreadable once a backward freed them), a custom Function's ctx attributes, the leaf
    of an AccumulateGrad node, and the nodes it leads to."""
    children = []
    for name in [n for n in dir(node) if n.startswith("_saved_")] + ["saved_tensors", "variable"]:
        try:
            children.append((getattr(node, name), f"{where}.{name}"))
        except (AttributeError, RuntimeError):  # not this kind of node, or freed by a backward
            continue
    children += [(item, f"{where}.{name}") for name, item in getattr(node, "__dict__", {}).items()]
    return children + [(next_node, f"{where}.next") for next_node, _ in node.next_functions if next_node is not None]


def nf4_buffer_tensors(
    layer: nn.Module, out_features: int, in_features: int, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The registered buffers holding the packed codes and the absmax, found by what they are: a uint8 one of
    ceil(n / 2) bytes and a float32 one of ceil(n / 64) values (the spec fixes no buffer shape: (n / 2,),
    bitsandbytes' (n / 2, 1), a row layout all hold the same bytes), the two of one module (the NF4Linear, not a
    float32 buffer of its own that a QLoRALinear keeps beside it, a 0-d scale say), an absmax with at least one
    dimension (bitsandbytes' and quantize_nf4's) before a 0-d one."""
    n = out_features * in_features
    owners: dict[str, list[torch.Tensor]] = {}
    for name, buffer in layer.named_buffers():
        owners.setdefault(name.rpartition(".")[0], []).append(buffer)
    is_packed = lambda b: b.dtype == torch.uint8 and b.numel() == math.ceil(n / 2)  # noqa: E731
    is_absmax = lambda b: b.dtype == torch.float32 and b.numel() == math.ceil(n / BLOCK)  # noqa: E731
    pairs = [  # (0-d absmax, the owner's depth from the layer's side: deepest first), packed, absmax
        ((absmax.dim() == 0, -owner.count(".") - bool(owner)), packed, absmax)
        for owner, held in owners.items()
        for packed in filter(is_packed, held)
        for absmax in filter(is_absmax, held)
    ]
    if not pairs:  # codes and absmax held by different modules: any two
        buffers = list(layer.buffers())
        packed = [b for b in buffers if is_packed(b)]
        absmax = sorted((b for b in buffers if is_absmax(b)), key=lambda b: b.dim() == 0)
        pairs = [((False, 0), packed[0], absmax[0])] if packed and absmax else []
    shapes = [(tuple(b.shape), b.dtype) for b in layer.buffers()]
    assert pairs, (
        f"{what} has registered buffers {shapes}, expected a uint8 one of ceil(out * in / 2) = {math.ceil(n / 2)} "
        f"bytes and a float32 absmax of ceil(out * in / 64) = {math.ceil(n / BLOCK)} values: keep quantize_nf4's "
        "results with self.register_buffer(...)"
    )
    _, packed, absmax = min(pairs, key=lambda pair: pair[0])
    return packed, absmax


def nf4_buffers(layer: nn.Module, out_features: int, in_features: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed codes and the absmax of the layer (``nf4_buffer_tensors``), flattened."""
    packed, absmax = nf4_buffer_tensors(layer, out_features, in_features, what)
    return packed.reshape(-1), absmax.reshape(-1)


def dequantized(layer, out_features, in_features, what, dtype=torch.float32) -> torch.Tensor:
    """The weight the layer's own NF4 buffers encode, dequantized by the grader."""
    packed, absmax = nf4_buffers(layer, out_features, in_features, what)
    return ref.dequantize(packed, absmax, (out_features, in_features), dtype, BLOCK)


def dequantized_linear(layer, base_bias, out_features, in_features, what) -> nn.Linear:
    """A plain float32 nn.Linear with the weight the layer's buffers encode and the given bias."""
    linear = nn.Linear(in_features, out_features, bias=base_bias is not None)
    with torch.no_grad():
        linear.weight.copy_(dequantized(layer, out_features, in_features, what))
        if base_bias is not None:
            linear.bias.copy_(base_bias.float())
    return linear.requires_grad_(False)


def expect_no_bias(layer: nn.Module, out_features: int, what: str) -> None:
    """Fail the check unless a layer over a bias-free base has no bias: None stays None (no zero bias)."""
    bias = getattr(layer, "bias", None)
    held = [name for name, t in [*layer.named_parameters(), *layer.named_buffers()] if t.numel() == out_features]
    assert bias is None and not held, (
        f"{what} holds a bias ({describe(bias) if bias is not None else held}) though its base has none: None stays "
        "None; a zero bias is not the missing one"
    )


def make_base(in_features=IN, out_features=OUT, dtype=torch.float32, bias=True, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias, dtype=dtype)


def tolerance(dtype, reference: torch.Tensor) -> float:
    return LOW[dtype] * (1 + reference.abs().max().item())


CONSTANTS_ALLOWED = (
    2048  # bytes of small constant tensors a layer may keep besides (the code book: 64), as the spec says
)


def memory_values(tensor: torch.Tensor) -> torch.Tensor:
    """Every value of the memory ``tensor`` keeps alive (its whole storage: a view's too), flattened, as float64."""
    try:
        whole = torch.empty(0, dtype=tensor.dtype, device=tensor.device).set_(tensor.untyped_storage())
    except (RuntimeError, NotImplementedError, TypeError):  # no storage of its own
        whole = tensor
    return whole.detach().reshape(-1).double().cpu()


def holds_the_weight(tensor: torch.Tensor, out_features: int, in_features: int, weights: list[torch.Tensor]) -> bool:
    """Whether a float tensor's memory is a copy of the weight: out * in values or more, shaped like the weight (or
    its transpose, or flattened), or holding most of the values of one of ``weights`` (the original weight, its
    NF4 dequantization) to within bfloat16 rounding. A constant table of that size (a code book per byte) is not."""
    n = out_features * in_features
    values = memory_values(tensor)
    if values.numel() < n:
        return False
    if tuple(tensor.shape) in ((out_features, in_features), (in_features, out_features)) or tensor.numel() == n:
        return True
    values = values.sort().values
    for weight in weights:
        flat = weight.detach().reshape(-1).double().cpu()
        above = torch.searchsorted(values, flat).clamp(max=values.numel() - 1)
        nearest = torch.minimum((values[above] - flat).abs(), (values[(above - 1).clamp(min=0)] - flat).abs())
        if (nearest <= 2.0**-8 * flat.abs() + 1e-12).double().mean().item() > 0.5:
            return True
    return False


def module_constants(root: object) -> set[object]:
    """The storages (``storage_bytes``' keys) of the tensors that a module-level name of the submission's own modules
    holds, directly or in a tuple (``BYTE_VALUES = ...`` made at import): one copy for every layer, which no layer
    keeps alive, so no layer's memory (a cache in a module-level dict or list is a layer's, and is charged)."""
    package = type(root).__module__.split(".")[0]
    found = set()
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", None)
        if not isinstance(name, str) or name.split(".")[0] != package:
            continue
        for value in list(vars(module).values()):
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, torch.Tensor):
                    found.add(storage_bytes(item)[0])
    return found


def expect_only_nf4_storage(layer, out_features, in_features, bias_bytes, what, allowed_extra=0, weight=None):
    """Fail the check unless the memory of the tensors the layer keeps alive, wherever (``walk_tensors``), fits NF4:
    half a byte a weight plus a float32 absmax per block, the bias, ``allowed_extra`` bytes (the adapters) and
    CONSTANTS_ALLOWED bytes of small constants (a module-level constant is no layer's: ``module_constants``); and no
    float tensor's memory, a module-level one's too, is a copy of the weight (the original ``weight`` where given,
    or the layer's own NF4 weight: ``holds_the_weight``)."""
    n = out_features * in_features
    budget = math.ceil(n / 2) + 4 * math.ceil(n / BLOCK) + bias_bytes + allowed_extra + CONSTANTS_ALLOWED
    weights = [dequantized(layer, out_features, in_features, what)] + ([] if weight is None else [weight])
    memory: dict[object, tuple[str, int]] = {}
    shared = module_constants(layer)  # checked for the weight below, but charged to no layer
    for where, tensor in walk_tensors(layer):
        key, size = storage_bytes(tensor)
        if tensor.is_floating_point() and holds_the_weight(tensor, out_features, in_features, weights):
            pytest.fail(
                f"{what} keeps {where} alive, {describe(tensor)} whose memory holds {size // tensor.element_size()} "
                f"values, a full-precision copy of the (out, in) = ({out_features}, {in_features}) weight (a cache "
                "or a view counts); keep it only as NF4 codes and absmax",
                pytrace=False,
            )
        if key not in shared:
            memory.setdefault(key, (where, size))
    total = sum(size for _, size in memory.values())
    holders: dict[str, list] = {}  # the many numbers of one dict or list count together: [bytes, largest, its bytes]
    for where, size in memory.values():
        holder = holders.setdefault(re.sub(r"\[[^\[\]]*\]$| key$", "", where.split(" (its ")[0]), [0, where, 0])
        holder[0] += size
        holder[1:] = [where, size] if size > holder[2] else holder[1:]
    name, (held, largest, _) = max(holders.items(), key=lambda item: item[1][0], default=("nothing", (0, "nothing", 0)))
    largest += f" ({held} bytes in {name})"
    assert total <= budget, (
        f"{what} keeps {total} bytes of tensors alive, expected at most {budget} (ceil(n / 2) codes + 4 bytes per "
        f"block of 64 + bias{' + adapters' if allowed_extra else ''} + {CONSTANTS_ALLOWED} of small constants); "
        f"the largest is {largest}: no full-precision copy"
    )


@pytest.mark.points(3)
@pytest.mark.subject("NF4Linear")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("in_features", "out_features"), [(IN, OUT), (9, 7)], ids=["96x40", "odd-9x7"])
def test_nf4_linear_keeps_the_weight_only_as_nf4_buffers(NF4Linear, nf4_works, dtype, in_features, out_features):
    nf4_works()
    base = make_base(in_features, out_features, dtype)
    weight = base.weight.detach().clone()
    layer = NF4Linear(base)
    what = f"NF4Linear(nn.Linear({in_features}, {out_features}, dtype={dtype}))"
    packed, absmax = nf4_buffers(layer, out_features, in_features, what)
    expected_packed, expected_absmax = ref.quantize(weight, BLOCK)
    expect_same_codes(
        packed,
        absmax,
        expected_packed,
        expected_absmax,
        weight,
        BLOCK,
        what + "'s buffers",
        "quantize_nf4(base.weight, 64)'s",
    )
    bias_bytes = base.bias.numel() * base.bias.element_size()
    expect_only_nf4_storage(layer, out_features, in_features, bias_bytes, what, weight=weight)
    assert not trainable(layer), f"{what} has trainable parameters {[tuple(p.shape) for p in trainable(layer)]}"
    assert (
        getattr(layer, "in_features", None) == in_features and getattr(layer, "out_features", None) == out_features
    ), (
        f"{what} records in_features={getattr(layer, 'in_features', None)}, out_features="
        f"{getattr(layer, 'out_features', None)}: keep the base's"
    )


@pytest.mark.points(2)
@pytest.mark.subject("NF4Linear")
def test_nf4_linear_keeps_no_reference_to_the_original_weight(NF4Linear, QLoRALinear, nf4_works):
    nf4_works()
    for make in (NF4Linear, lambda base: QLoRALinear(base, r=R, alpha=ALPHA)):
        base = nn.Linear(IN, OUT)
        # The weight's memory is a numpy array's: any tensor sharing it (.data, .detach(), a view, in an attribute
        # or a closure) keeps the array alive, which a weak reference to the array sees.
        memory = numpy.random.default_rng(0).standard_normal((OUT, IN), dtype=numpy.float32) / IN**0.5
        base.weight = nn.Parameter(torch.from_numpy(memory))
        weight, module, storage = weakref.ref(base.weight), weakref.ref(base), weakref.ref(memory)
        layer = make(base)
        name = type(layer).__name__
        del base, memory
        gc.collect()
        assert module() is None, (
            f"{name} keeps the original nn.Linear alive (as a submodule, an attribute or in a closure): it must not "
            "hold the full-precision weight; keep only the NF4 buffers and the bias"
        )
        assert weight() is None, (
            f"{name} keeps the original weight alive: an attribute, a list, or an autograd graph from quantizing "
            "base.weight without .detach() holds it; keep only the NF4 buffers"
        )
        assert storage() is None, (
            f"{name} keeps a tensor sharing the original weight's memory (weight.data, weight.detach() or a view, "
            "in an attribute, a container or a closure): keep only the NF4 buffers"
        )
        del layer


# The regime table of (base dtype, x dtype): every pair of float32, bfloat16 and float16, each way. NF4Linear
# dequantizes in x's dtype whatever the base's was, and its backward too.
FLOATS = (torch.float32, torch.bfloat16, torch.float16)
DTYPE_PAIRS = [(base, x) for base in FLOATS for x in FLOATS]
# The calls of NF4Linear's regime table, one after another on one layer: (batch dims, contiguous x, grad mode, what
# is edited in place just before). Batch dims 0 to 3, x strided (``probes.strided``: .view(-1, in) cannot flatten a
# 3-D one), each grad mode, dL/dx measured with grad on; the bias edited, then the NF4 buffers re-quantized from
# another weight: the outputs follow (nothing cast or dequantized once and kept).
GRAD_WORDS = {
    "grad on": "grad on",
    "grad off": "under torch.no_grad()",
    "inference mode": "under torch.inference_mode()",
}
NF4_CALLS = [
    ((), True, "grad off", ""),
    ((5,), False, "inference mode", ""),
    ((2, 3), False, "grad on", "bias"),
    ((2, 3, 2), False, "inference mode", "buffers"),
    ((3,), True, "grad on", ""),
]


# A word of a RuntimeError one regime only raises, and its likely cause here.
FAILURES = {**FORWARD_FAILURES, "dtype": "dequantize the weight and cast the bias to x's dtype, whatever the base's"}


def requantize_buffers(layer: nn.Module, weight: torch.Tensor, what: str, through_data: bool = False) -> None:
    """Write the NF4 codes and absmax of ``weight`` into the layer's own buffers, in place (as load_state_dict does),
    or ``through_data`` (``buffer.data.copy_``, which bumps no version)."""
    packed, absmax = ref.quantize(weight, BLOCK)
    for buffer, value in zip(nf4_buffer_tensors(layer, *weight.shape, what), (packed, absmax), strict=True):
        with torch.no_grad():
            (buffer.data if through_data else buffer).copy_(value.reshape(buffer.shape))


@pytest.mark.points(3)
@pytest.mark.subject("NF4Linear")
@pytest.mark.parametrize(("base_dtype", "x_dtype"), DTYPE_PAIRS, ids=dtype_name)
def test_nf4_linear_computes_F_linear_with_the_dequantized_weight(NF4Linear, nf4_works, base_dtype, x_dtype):
    nf4_works()
    for bias in (True, False):
        base = make_base(dtype=base_dtype, bias=bias)
        kept_bias = None if base.bias is None else base.bias.detach().clone()
        original = base.weight.detach().clone()
        layer = NF4Linear(base)
        what = f"NF4Linear(a {dtype_name(base_dtype)} base{'' if bias else ' without bias'})"
        edited = False  # after an edit, a wrong output is likely a value kept from an earlier call
        for batch, contiguous, grad, edit in NF4_CALLS:
            step = ""
            if edit == "bias" and kept_bias is not None:
                held = [t for t in [*layer.parameters(), *layer.buffers()] if t.shape == kept_bias.shape
                        and t.dtype == kept_bias.dtype and torch.equal(t.detach(), kept_bias)]  # fmt: skip
                with torch.no_grad():
                    for tensor in [*held, kept_bias]:
                        tensor.mul_(-0.5).add_(0.25)
                step = " after its bias was edited in place"
            elif edit == "buffers":
                requantize_buffers(layer, make_base(dtype=base_dtype, seed=1).weight.detach(), what)
                step = " after its NF4 buffers were re-quantized from another weight, in place"
            edited = edited or bool(step)
            weight = dequantized(layer, OUT, IN, what, x_dtype)
            x = strided((*batch, IN), contiguous).to(x_dtype)
            call = (
                f"{what} on x {dtype_name(x_dtype)} {tuple(x.shape)}{'' if contiguous else ' non-contiguous'}, "
                f"{GRAD_WORDS[grad]}{step}"
            )
            with GRAD_MODES[grad]():
                if grad == "grad on":
                    x.requires_grad_()
                y = forward_in_regime(layer, x, call, FAILURES)
            expected = F.linear(x.detach(), weight, None if kept_bias is None else kept_bias.to(x_dtype))
            assert y.dtype == x_dtype and y.shape == expected.shape, (
                f"{call} returned {describe(y)}, expected {x_dtype} of shape {tuple(expected.shape)}: dequantize in "
                "x's dtype and return F.linear(x, W, b) in it"
            )
            error = max_difference(y, expected)
            exact = F.linear(x.double(), weight.double(), None if kept_bias is None else kept_bias.double())
            assert error <= tolerance(x_dtype, expected) or max_difference(y, exact) <= tolerance(x_dtype, expected), (
                f"{call}: output off F.linear(x, dequantized W, b) by {error:.3g}: "
                + ("is the bias added (once)? " if bias else "a bias out of nowhere? ")
                + ("a bias or weight cast or dequantized at an earlier call and kept? " if edited else "")
                + "compute F.linear(x, dequantize_nf4(packed, absmax, (out, in), x.dtype), b) at every call"
            )
            if grad != "grad on":
                continue
            upstream = torch.randn(y.shape).to(x_dtype)
            y.backward(upstream)
            assert x.grad is not None, f"{call}: no gradient reached x through NF4Linear: do not detach x"
            expected = upstream.double() @ weight.double()
            off = max_difference(x.grad, expected)
            assert x.grad.dtype == x_dtype and off <= tolerance(x_dtype, expected), (
                f"{call}: dL/dx is {describe(x.grad)}, off g W by {off:.3g} where W is the weight dequantized in x's "
                f"dtype ({dtype_name(x_dtype)}): the backward of F.linear(x, dequantize_nf4(..., x.dtype), b), not of "
                "the weight in the base's dtype"
            )
        with torch.inference_mode():
            output(layer, torch.randn(2, IN).to(x_dtype))
        forward_and_backward(layer, torch.randn(2, IN).to(x_dtype))
        forward_left_unanswered(layer, torch.randn(2, IN).to(x_dtype))  # last: a kept output keeps its graph
        bias_bytes = 0 if kept_bias is None else kept_bias.numel() * kept_bias.element_size()
        expect_only_nf4_storage(
            layer,
            OUT,
            IN,
            bias_bytes,
            what + " after forwards without and with grad (one answered by a backward, one not) and under "
            "torch.inference_mode()",
            weight=original,
        )
        if kept_bias is None:
            expect_no_bias(layer, OUT, what)


# The modes a layer is called in, each on a layer of its own, in a check of its own: serving (eval mode under
# torch.inference_mode(), with no train() call after it: a cache that train() drops lives only here), an evaluation
# (eval mode, torch.no_grad()) and a training step (train mode, grad on).
MODES = [("eval", "inference mode"), ("eval", "grad off"), ("train", "grad on")]
MODE_IDS = ["eval-inference-mode", "eval-no-grad", "train-grad-on"]
# What is edited between the calls: through .data (which bumps no version: a memo keyed on _version stays stale),
# and every tensor of the layer replaced by load_state_dict(..., assign=True) (a pre-quantized checkpoint loaded
# onto a layer built on the meta device: a view or a list of the tensors kept from construction goes stale).
NF4_EDITS = ("", " after its bias was edited through .data", " after its NF4 buffers were re-written through .data",
             " after load_state_dict(..., assign=True) replaced its NF4 buffers and bias")  # fmt: skip


def held_bias(layer: nn.Module, out_features: int, in_features: int, what: str) -> torch.Tensor | None:
    """The bias a layer holds now: the float tensor of out_features values among its parameters and buffers
    (not its absmax)."""
    absmax = nf4_buffer_tensors(layer, out_features, in_features, what)[1]
    return next((t for t in [*layer.parameters(), *layer.buffers()] if t is not absmax and t.is_floating_point()
                 and t.numel() == out_features and t.dim() == 1), None)  # fmt: skip


def replaced_by_assign(layer: nn.Module, new: dict[int, torch.Tensor]) -> None:
    """``layer.load_state_dict(state, assign=True)``: new tensors in place of all of the layer's, those whose memory
    is a key of ``new`` (a data_ptr) given that value (reshaped to the key's shape), the others cloned."""
    state = {
        name: new[value.data_ptr()].reshape(value.shape).clone() if value.data_ptr() in new else value.clone()
        for name, value in layer.state_dict().items()
    }
    layer.load_state_dict(state, assign=True)


@pytest.mark.points(1)
@pytest.mark.subject("NF4Linear")
@pytest.mark.parametrize(("mode", "grad"), MODES, ids=MODE_IDS)
def test_nf4_linear_follows_its_buffers_and_bias_in_every_mode(NF4Linear, nf4_works, mode, grad):
    """Called in one mode throughout (no train() call in between), the layer computes with the buffers and the
    bias it holds now, after edits through .data and load_state_dict(assign=True); and it keeps no weight there."""
    nf4_works()
    layer = NF4Linear(make_base()).train(mode == "train")
    what = f"NF4Linear in {mode} mode, called {GRAD_WORDS[grad]}"
    for edit in NF4_EDITS:
        with torch.no_grad():
            if "bias was edited" in edit:
                held_bias(layer, OUT, IN, what).data.mul_(-0.5).add_(0.25)
            elif "through .data" in edit:
                requantize_buffers(layer, make_base(seed=1).weight.detach(), what, through_data=True)
        if "assign" in edit:
            packed, absmax = nf4_buffer_tensors(layer, OUT, IN, what)
            new_packed, new_absmax = ref.quantize(make_base(seed=2).weight.detach(), BLOCK)
            bias = held_bias(layer, OUT, IN, what)
            new = {packed.data_ptr(): new_packed, absmax.data_ptr(): new_absmax}
            new[bias.data_ptr()] = torch.randn(bias.shape).to(bias.dtype)
            replaced_by_assign(layer, new)
        for x_dtype in (torch.float32, torch.bfloat16):
            x = strided((2, 3, IN), False).to(x_dtype)
            call = f"{what}, x {dtype_name(x_dtype)} {tuple(x.shape)}{edit}"
            with GRAD_MODES[grad]():
                y = forward_in_regime(layer, x.requires_grad_(grad == "grad on"), call, FAILURES)
            bias = held_bias(layer, OUT, IN, what)
            expected = F.linear(x.detach(), dequantized(layer, OUT, IN, what, x_dtype), bias.detach().to(x_dtype))
            error = max_difference(y, expected)
            assert y.dtype == x_dtype and error <= tolerance(x_dtype, expected), (
                f"{call}: the output ({describe(y)}) is off F.linear(x, W, b) with W dequantized from the buffers the "
                f"layer holds now and b its bias now by {error:.3g}: a weight or bias kept from an earlier call (a "
                "cache made in eval mode, a memo keyed on _version, which an edit through .data leaves as it was) "
                "or views of the buffers kept from construction (load_state_dict(assign=True) puts new ones in)? "
                "read self's buffers and bias at every call"
            )
    expect_only_nf4_storage(layer, OUT, IN, OUT * 4, f"{what}, no train() call since", weight=None)


def forward_and_backward(layer: nn.Module, x: torch.Tensor) -> None:
    """A training step's forward (grad on, train mode, x requiring grad) and backward through ``layer``: what a
    layer caches only while it trains shows after it."""
    x = x.detach().clone().requires_grad_()
    with torch.enable_grad():
        output(layer.train(), x).float().square().sum().backward()


def forward_left_unanswered(layer: nn.Module, x: torch.Tensor) -> None:
    """A forward with grad on (x requiring grad) whose output the caller drops before any backward, as an evaluation
    or a saliency map with grad left on does: a layer keeping that output (``self.last_output = y``) keeps its
    autograd graph alive, and the dequantized weight the graph saved for backward with it."""
    with torch.enable_grad():
        output(layer.train(), x.detach().clone().requires_grad_())


def cancelling_weight(dtype: torch.dtype, base_dtype: torch.dtype) -> torch.Tensor:
    """A (4, 128) weight, exact in ``base_dtype``, whose NF4 dequantization has two entries of row 0 in different
    blocks, (0, 1) and (0, 65), that differ in float32 but are the same number in ``dtype`` (a half precision): for
    x = e_1 - e_65 in that dtype, W rounded to x's dtype before the product (the spec) gives exactly 0 in row 0; the
    product computed in float32 (or float64) and cast afterwards does not. For a float32 x the row is exactly
    W[0, 1] - W[0, 65] in float32, which a product computed in ``dtype`` makes 0."""
    code = ref.CODE_BOOK
    grid = torch.arange(0.5, 1.0, 2.0**-12).to(dtype).unique().float()  # block maxima exact in dtype and the base's
    grid = grid[grid.to(base_dtype).float() == grid]
    for first, second in [(12, 13), (13, 12), (12, 14), (14, 13), (11, 12), (13, 14)]:
        for a1 in grid.flip(0)[:64]:
            d1, d2 = code[first] * a1, code[second] * grid
            wide1, wide2 = code[first].double() * a1.double(), code[second].double() * grid.double()
            low = d1.to(dtype)
            fits = (d2 != d1) & (d2.to(dtype) == low) & (wide2.to(dtype) == low) & (wide1.to(dtype) == low)
            fits &= (d2 - d1).abs() > 2.0**-18  # a difference that dtype itself still resolves
            if fits.any():
                a2 = grid[int(fits.nonzero()[0])]
                weight = torch.zeros(4, 128)
                weight[0, 0], weight[0, 1], weight[0, 64], weight[0, 65] = a1, d1, a2, code[second] * a2
                weight[1:] = torch.randn(3, 128, generator=torch.Generator().manual_seed(7)) * 0.1
                weight = weight.to(base_dtype)
                restored = ref.dequantize(*ref.quantize(weight, BLOCK), (4, 128), torch.float32, BLOCK)
                low_restored = ref.dequantize(*ref.quantize(weight, BLOCK), (4, 128), dtype, BLOCK)
                assert restored[0, 1] != restored[0, 65] and low_restored[0, 1] == low_restored[0, 65], "grader bug"
                return weight
    raise AssertionError(f"grader bug: no cancelling weight in {dtype} over a {base_dtype} base")


# Every train/eval mode in every grad mode: an exact-rounding sentence holds in each (a training step's float32
# product, a serving merge in eval mode, are paths of their own).
ROUNDING_REGIMES = [(mode, grad) for mode in ("train", "eval") for grad in GRAD_MODES]
# Two rows of x in each, and real batches of no round number (a path of its own from some batch size on, a long
# product in float32, an update merged for a big batch, shows only there): 8191 rows in a training step (train mode,
# grad on), 2^17 + 3 rows of 128 in a validation pass (eval mode, grad off).
ROUNDING_CALLS = [(mode, grad, 2) for mode, grad in ROUNDING_REGIMES] + [
    ("train", "grad on", 8191),
    ("eval", "grad off", 2**17 + 3),
]


def trained_below_the_rounding(layer: nn.Module, dtype: torch.dtype) -> float:
    """Give a QLoRALinear (r=2, alpha=4, over a cancelling weight (4, 128)) trained factors whose update adds exactly
    u = eps * 2^-7 of ``dtype`` to y[:, 0] for x = e_1 - e_65, every product on the way exact (A[0] = e_1,
    B[0] = (u / 2, 0), the other rows random): u, below half a unit in the last place of W[0, 1], which a weight
    merged with the update in ``dtype`` (W + scaling B A rounded) drops."""
    update = torch.finfo(dtype).eps * 2.0**-7
    found = factors(layer, 128, 4, 2)
    generator = torch.Generator().manual_seed(8)
    A, B = torch.randn(2, 128, generator=generator) * 0.1, torch.randn(4, 2, generator=generator) * 0.1
    A[0], B[0] = 0.0, 0.0
    A[0, 1], B[0, 0] = 1.0, update / 2
    with torch.no_grad():
        found.A.copy_(A.to(dtype))
        found.B.copy_(B.to(dtype))
    return update


@pytest.mark.points(2)
@pytest.mark.subject("NF4Linear")
@pytest.mark.parametrize(("base_dtype", "x_dtype"), DTYPE_PAIRS, ids=dtype_name)
def test_nf4_linear_rounds_the_weight_to_x_dtype_before_the_product(
    NF4Linear, QLoRALinear, nf4_works, base_dtype, x_dtype
):
    """NF4Linear and QLoRALinear (at init, then with trained factors) on x = e_1 - e_65 over a weight whose two entries
    cancel in x's dtype: exact in train and eval mode, with grad on (x requiring grad), off and in inference mode."""
    nf4_works()
    half = x_dtype if x_dtype != torch.float32 else base_dtype if base_dtype != torch.float32 else torch.bfloat16
    weight = cancelling_weight(half, base_dtype)
    restored = ref.dequantize(*ref.quantize(weight, BLOCK), (4, 128), x_dtype, BLOCK)
    expected = (restored[0, 1] - restored[0, 65]).item()  # 0 for a half x; in float32 the difference
    makers = {"NF4Linear": NF4Linear}
    if base_dtype == x_dtype:
        makers["QLoRALinear"] = makers["QLoRALinear with trained factors"] = lambda b: QLoRALinear(b, r=2, alpha=4.0)
    for name, make in makers.items():
        base = nn.Linear(128, 4, bias=False, dtype=base_dtype)
        with torch.no_grad():
            base.weight.copy_(weight)
        layer, wanted, share = make(base), expected, ""
        if "trained" in name:
            update = trained_below_the_rounding(layer, x_dtype)
            wanted = (torch.tensor(expected, dtype=x_dtype) + torch.tensor(update, dtype=x_dtype)).item()
            share = f", plus the update's exact {update:.3g} (scaling B A x, below half an ulp of W[0, 1])"
        for mode, grad, rows in ROUNDING_CALLS:
            x = torch.zeros(rows, 128, dtype=x_dtype)
            x[:, 1], x[:, 65] = 1.0, -1.0
            with GRAD_MODES[grad]():
                y = output(layer.train(mode == "train"), x.requires_grad_(grad == "grad on")).detach()
            regime = f"{mode} mode, {GRAD_WORDS[grad]}" + (", x requiring grad" if grad == "grad on" else "")
            regime += f", every one of {rows} rows"
            assert y.dtype == x_dtype, f"{name} returned {describe(y)} for x {x_dtype} ({regime}): return x's dtype"
            cause = (
                "the update merged into the weight in x's dtype (W + scaling B A rounded drops it)? the spec is "
                "NF4Linear(x) + scaling B A x"
                if "trained" in name
                else f"the weight is not dequantized in x's dtype before F.linear (computed in "
                f"{'float32 and cast afterwards' if expected == 0 else dtype_name(half)}?); the spec says "
                "F.linear(x, dequantize_nf4(packed, absmax, (out, in), x.dtype), b), whatever the base's dtype"
            )
            assert bool((y[:, 0] == wanted).all()), (
                f"{name}(a {dtype_name(base_dtype)} base) on x {dtype_name(x_dtype)} = e_1 - e_65 ({regime}), whose "
                f"dequantized W[0, 1] and W[0, 65] are "
                f"{'the same number' if expected == 0 else f'{expected:.6g} apart'} in {dtype_name(x_dtype)}"
                f"{'' if expected == 0 else f' (the same in {dtype_name(half)})'}{share}, gives {y[0, 0].item():.6g} "
                f"in row 0, expected exactly {wanted:.6g}: {cause}"
            )


@pytest.mark.points(1)
@pytest.mark.subject("NF4Linear")
def test_nf4_linear_keeps_the_bias_as_it_was_and_passes_gradients_to_x(NF4Linear, nf4_works):
    nf4_works()
    base = make_base(dtype=torch.bfloat16)
    original = base.bias.detach().clone()
    layer = NF4Linear(base)
    biases = [t for where, t in walk_tensors(layer) if t.numel() == OUT and t.is_floating_point()]
    assert any(t.dtype == original.dtype and torch.equal(t.detach(), original) for t in biases), (
        f"NF4Linear holds no bias equal to the base's bfloat16 bias (found {[describe(t) for t in biases]}): keep the "
        "bias as it was, not quantized nor converted"
    )
    expect_frozen(layer, "NF4Linear(a bfloat16 base)")
    layer = NF4Linear(make_base())
    weight = dequantized(layer, OUT, IN, "NF4Linear")
    x = torch.randn(6, IN, requires_grad=True)
    upstream = torch.randn(6, OUT)
    y = output(layer, x)
    assert y.requires_grad, "NF4Linear's output does not require grad for an x that does: no torch.no_grad() inside"
    y.backward(upstream)
    assert x.grad is not None, "no gradient reached x through NF4Linear: do not detach x"
    expect_frozen(layer, "NF4Linear after a backward")
    error = max_difference(x.grad, upstream @ weight)
    assert error <= 1e-5 * (1 + x.grad.abs().max().item()), f"dL/dx through NF4Linear off g W by {error:.3g}"


class LinearLookAlike(nn.Module):
    """No nn.Linear, though it has all an nn.Linear's attributes: a 2-D (out, in) weight, a bias, in_features and
    out_features (a duck-typed test on them takes it)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_features, self.out_features = IN, OUT
        self.weight = nn.Parameter(torch.randn(OUT, IN))
        self.bias = nn.Parameter(torch.zeros(OUT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


NOT_LINEAR_BASES = {  # what is no nn.Linear: a 2-D weight (Embedding's, a look-alike's) does not make one
    "Conv1d": lambda: nn.Conv1d(IN, OUT, 1),
    "Bilinear": lambda: nn.Bilinear(IN, IN, OUT),
    "Embedding": lambda: nn.Embedding(OUT, IN),
    "a look-alike": LinearLookAlike,
}


@pytest.mark.points(1)
@pytest.mark.subject("NF4Linear")
@pytest.mark.parametrize("device", [pytest.param("meta", id="meta"), pytest.param("cuda", id="cuda", marks=CUDA)])
def test_nf4_and_qlora_layers_live_on_the_base_device(NF4Linear, QLoRALinear, nf4_works, device):
    """On a GPU the layers' tensors are due there. On the CPU the base is built on the meta device (no values, no
    memory): a tensor made without device= lands on the CPU, off the base's device, as next to a GPU base."""
    nf4_works()
    for make in (NF4Linear, lambda base: QLoRALinear(base, R, ALPHA)):
        base = make_base().to(device)
        try:
            layer = make(base)
        except (NotImplementedError, RuntimeError, TypeError) as error:
            if device != "meta" or "meta" not in str(error):
                raise
            continue  # it reads a value of the weight (.item(), .numpy()), which a meta tensor has not: cannot tell
        name = type(layer).__name__
        expect_on_the_base_device(
            [*layer.parameters(), *layer.buffers()], base.weight.device, f"{name}'s parameters and buffers are"
        )
        if device == "cuda":
            x = torch.randn(3, IN, device=device)
            with torch.no_grad():
                y = output(layer, x)
            assert y.device == x.device, f"{name} on a cuda base returned {describe(y)} on {y.device} for x on cuda"


@pytest.mark.points(1)
@pytest.mark.subject("NF4Linear")
@pytest.mark.parametrize("kind", NOT_LINEAR_BASES)
def test_nf4_linear_rejects_a_base_that_is_not_linear(NF4Linear, QLoRALinear, nf4_works, kind):
    nf4_works()
    for make in (NF4Linear, QLoRALinear):
        expect_value_error(
            lambda make=make: make(NOT_LINEAR_BASES[kind]()),
            f"{make.__name__}({kind}, no nn.Linear) (test isinstance(base, nn.Linear), not the weight's shape)",
        )


def called_by_position(make, call):
    """``make()``, a call by position as the stub's signature allows, after failing the check on a TypeError."""
    try:
        return make()
    except TypeError as error:
        pytest.fail(
            f"{call} raised TypeError ({error}): keep the stub's signature, callable by position and by keyword",
            pytrace=False,
        )


def qlora_layer(QLoRALinear, dtype=torch.float32, bias=True, seed=0, dropout=0.0):
    base = make_base(dtype=dtype, bias=bias, seed=seed)
    kept_bias = None if base.bias is None else base.bias.detach().clone()
    layer = called_by_position(
        lambda: QLoRALinear(base, R, ALPHA, dropout), f"QLoRALinear(base, {R}, {ALPHA}, {dropout})"
    )
    nf4_base = dequantized_linear(layer, kept_bias, OUT, IN, "QLoRALinear")
    return layer, nf4_base


@pytest.mark.points(2)
def test_qlora_stores_the_base_in_nf4_and_trains_two_factors(QLoRALinear, NF4Linear, nf4_works):
    nf4_works()
    for dtype in (torch.float32, torch.bfloat16):
        layer, _ = qlora_layer(QLoRALinear, dtype)
        inner = [m for m in layer.modules() if isinstance(m, NF4Linear)]
        assert len(inner) == 1, (
            f"QLoRALinear holds {len(inner)} NF4Linear submodules, expected one: the base becomes an NF4Linear "
            "submodule (self.base = NF4Linear(base)), not NF4 buffers of QLoRALinear's own"
        )
        found = factors(layer, IN, OUT, R)  # the factors' dtype first: a forward would fail on it downstream
        misplaced = [t.dtype for t in (found.stored_A, found.stored_B) if t.dtype != dtype]
        assert not misplaced, f"with a {dtype} base the factors are {misplaced}: create them in the base's dtype"
        x = torch.randn(5, IN).to(dtype)
        with torch.no_grad():
            y, expected = output(layer.eval(), x), output(inner[0], x)
        assert torch.equal(y, expected), (
            f"at construction QLoRALinear(a {dtype} base)(x) differs from its NF4Linear submodule's output by "
            f"{max_difference(y, expected):.3g}, expected exactly it (B is zero): the base is that submodule"
        )
        expect_r_alpha_and_scaling(layer, R, ALPHA)
        expect_frozen(layer, f"QLoRALinear(a {dtype} base)", (found.stored_A, found.stored_B))
        adapter_bytes = sum(t.numel() * t.element_size() for t in trainable(layer))
        expect_only_nf4_storage(layer, OUT, IN, OUT * torch.finfo(dtype).bits // 8, "QLoRALinear", adapter_bytes)


@pytest.mark.points(2)
def test_qlora_computes_the_nf4_base_at_init(QLoRALinear, nf4_works):
    nf4_works()
    layer, nf4_base = qlora_layer(QLoRALinear)
    found = factors(layer, IN, OUT, R)
    assert found.B.abs().max().item() == 0, "B is not zero at init: initialise B with zeros (A random)"
    assert found.A.abs().max().item() > 0, "A is zero at init: make A random (Kaiming-uniform or Gaussian)"
    expect_centred(found.A, f"QLoRALinear(nn.Linear({IN}, {OUT}), r={R})")
    # 4096 entries, as expect_nn_linear_bound_if_uniform wants them; distinct dims tell how A is stored
    in_features, out_features, r = 1024, 8, 4
    wide = factors(QLoRALinear(make_base(in_features, out_features), r, 8.0), in_features, out_features, r)
    expect_nn_linear_bound_if_uniform(wide.A, f"QLoRALinear(nn.Linear({in_features}, {out_features}), r={r})")
    expect_a_random_full_rank_A(  # lora_linear's contract: distinct entries, of rank r (no rows tiled from fewer)
        lambda: factors(QLoRALinear(nn.Linear(in_features, out_features), r, 8.0), in_features, out_features, r).A,
        f"QLoRALinear(nn.Linear({in_features}, {out_features}), r={r})",
    )
    for dtype in FLOATS:  # float16 too: a half path of its own (addmm, a fused kernel) is checked here
        layer, nf4_base = qlora_layer(QLoRALinear, dtype)
        x = torch.randn(4, 3, IN).to(dtype)
        with torch.no_grad():
            y, expected = output(layer, x), nf4_base(x.float())
        assert y.dtype == dtype and y.shape == expected.shape, (
            f"QLoRALinear over a {dtype} base returned {describe(y)} for x {dtype} of shape {tuple(x.shape)}, expected "
            f"{dtype} of shape {tuple(expected.shape)}: compute and return in the base's dtype"
        )
        change = max_difference(y, expected)
        assert change <= tolerance(dtype, expected), (
            f"at init ({dtype}) the output differs by {change:.3g} from F.linear(x, dequantized W, b): the base must "
            "be the NF4 weight (not the full-precision one), and B zero"
        )
        if dtype == torch.float32:
            continue
        randomize_factors(layer, std=0.2)  # B no longer zero: the adapter's share in the half dtype, as trained
        found = factors(layer, IN, OUT, R)
        with torch.no_grad():
            y = output(layer.eval(), x)
            A, B = found.A.double(), found.B.double()
            base_bias = None if nf4_base.bias is None else nf4_base.bias.double()
            expected = F.linear(x.double(), nf4_base.weight.double(), base_bias) + SCALING * (x.double() @ A.T) @ B.T
            base_share = nf4_base(x.float()).double()
        error = max_difference(y, expected)
        if error > tolerance(dtype, expected):
            adapter = expected - base_share
            ratio = ((y.double() - base_share) * adapter).sum() / adapter.square().sum()
            pytest.fail(
                f"{dtype} QLoRALinear with random factors (eval): expected F.linear(x, W_nf4, b) + scaling (x A^T) B^T "
                f"to {tolerance(dtype, expected):.3g}, measured off by {error:.3g} (the adapter's share measures "
                f"{ratio.item() * SCALING:.4g} x B A, expected alpha / r = {SCALING:g} x): a half-precision path of "
                "its own that scales the base or the adapter wrongly (addmm's beta and alpha swapped)?",
                pytrace=False,
            )


@pytest.mark.points(4)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_qlora_output_and_gradients_are_lora_over_the_dequantized_weight(QLoRALinear, nf4_works, bias):
    nf4_works()
    layer, nf4_base = qlora_layer(QLoRALinear, bias=bias)
    if not bias:
        expect_no_bias(layer, OUT, "QLoRALinear over a base without bias")
    randomize_factors(layer, std=0.2)
    found = factors(layer, IN, OUT, R)
    buffers = [b.clone() for b in layer.buffers()]
    for mode in ("train", "eval"):  # eval mode is no inference: a backward through it gives the same gradients
        for batch, contiguous in QLORA_CALLS:
            expect_lora_output_and_gradients(layer.train(mode == "train"), nf4_base, found, batch, contiguous)
    for mode in ("train", "eval"):  # serving: eval mode under torch.inference_mode() (a merged weight tempts there)
        with torch.inference_mode():
            output(layer.train(mode == "train"), torch.randn(3, IN))
        with torch.no_grad():
            output(layer, torch.randn(3, IN))
    forward_left_unanswered(layer, torch.randn(2, IN))
    touched = [where for where, t in walk_tensors(layer) if t.grad is not None and not _is_factor(t, found)]
    assert not touched, f"{touched} received gradients: only A and B train"
    assert all(torch.equal(a, b) for a, b in zip(buffers, layer.buffers(), strict=True)), "a buffer changed in forward"
    adapter_bytes = 2 * sum(t.numel() * t.element_size() for t in trainable(layer))  # the factors and their grads
    bias_bytes = OUT * 4 if bias else 0
    what = (
        "QLoRALinear after forwards with grad (answered by a backward and not), under torch.no_grad() and under "
        "torch.inference_mode(), in train and eval mode"
    )
    expect_only_nf4_storage(layer, OUT, IN, bias_bytes, what, adapter_bytes)


# (batch dims, contiguous x) of QLoRALinear's calls, in train and eval mode: x (in,) with no batch dimension too, as
# nn.Linear takes it, up to 3 batch dimensions, x strided (probes.strided) as a transpose or a slice leaves it.
QLORA_CALLS = [((), True), ((3,), False), ((2, 5), True), ((2, 5), False), ((2, 3, 2), False)]


def expect_lora_output_and_gradients(layer, nf4_base, found, batch, contiguous=True) -> None:
    """Fail the check unless the layer's output for x (*batch, IN) and the gradients of A, B and x are plain LoRA's
    over the dequantized base, in the layer's mode."""
    x = strided((*batch, IN), contiguous).requires_grad_()
    upstream = torch.randn(*batch, OUT)
    for tensor in (found.stored_A, found.stored_B):
        tensor.grad = None
    mode = "train" if layer.training else "eval"
    where = f"in {mode} mode, x {tuple(x.shape)}{'' if contiguous else ' non-contiguous'}"
    y = forward_in_regime(layer, x, f"QLoRALinear {where}", FAILURES)
    expected, grads = plain_lora(nf4_base, found, SCALING, x, upstream)
    assert y.shape == expected.shape, (
        f"for x of shape {tuple(x.shape)} the output is {describe(y)}, expected (..., out)"
    )
    assert y.requires_grad, (
        f"{where} (grad on, x requiring grad) the output requires no grad: no torch.no_grad() inside; eval mode "
        "only turns dropout off, a backward through it (a saliency map, a validation loss) still gets gradients"
    )
    size = 1 + expected.abs().max().item()
    error = max_difference(y, expected)
    ratio = ((y.detach() - nf4_base(x.detach())).double() * (expected - nf4_base(x.detach())).double()).sum() / (
        (expected - nf4_base(x.detach())).double().square().sum()
    )
    hint = f" (the adapter's share measures {ratio.item() * SCALING:.4g} x B A, expected alpha / r = {SCALING:g} x)"
    assert error <= 1e-5 * size, (
        f"{where}: output off the LoRA over the dequantized weight, F.linear(x, W_nf4, b) + scaling "
        f"(x A^T) B^T, by {error:.3g}" + (hint if not math.isclose(ratio.item(), 1.0, rel_tol=1e-3) else "")
    )
    y.backward(upstream)
    for name, measured in zip("AB", found.grads(), strict=True):
        assert measured is not None, f"factor {name} received no gradient: use it in forward, not detached"
        off = max_difference(measured, grads[name])
        assert off <= 1e-5 * (1 + grads[name].abs().max().item()), f"{where}: gradient of {name} off by {off:.3g}"
    assert x.grad is not None, "no gradient reached x: do not detach x or run the forward under no_grad"
    off = max_difference(x.grad, grads["x"])
    assert off <= 1e-5 * (1 + grads["x"].abs().max().item()), (
        f"{where}: gradient w.r.t. x off by {off:.3g}: it must flow through the NF4 base (g W_nf4) and the adapter"
    )


def _is_factor(tensor, found) -> bool:
    return tensor is found.stored_A or tensor is found.stored_B


QLORA_EDITS = ("", " after its factors were edited through .data",
               " after one entry of each factor was edited through .data",
               " after load_state_dict(..., assign=True) replaced its factors and NF4 buffers")  # fmt: skip


@pytest.mark.points(1)
@pytest.mark.parametrize(("mode", "grad"), MODES, ids=MODE_IDS)
def test_qlora_follows_its_factors_in_every_mode(QLoRALinear, nf4_works, mode, grad):
    """Called in one mode throughout (no train() call in between: serving merges tempt in eval mode under
    inference_mode), the layer computes with the factors and the NF4 base it holds now, after edits through .data and
    load_state_dict(assign=True); and it keeps no full-precision weight there."""
    nf4_works()
    layer, _ = qlora_layer(QLoRALinear)
    layer.train(mode == "train")
    randomize_factors(layer, std=0.2)
    what = f"QLoRALinear in {mode} mode, called {GRAD_WORDS[grad]}"
    for edit in QLORA_EDITS:
        found = factors(layer, IN, OUT, R)
        with torch.no_grad():
            for tensor in (found.stored_A, found.stored_B):
                if "one entry" in edit:
                    tensor.data[(-1,) * tensor.dim()].add_(1.0)
                elif "through .data" in edit:
                    tensor.data.normal_(0.0, 0.2)
        if "assign" in edit:
            packed, absmax = nf4_buffer_tensors(layer, OUT, IN, what)
            codes = ref.quantize(make_base(seed=2).weight.detach(), BLOCK)
            new = dict(zip((packed.data_ptr(), absmax.data_ptr()), codes, strict=True))
            for tensor in (found.stored_A, found.stored_B):
                new[tensor.data_ptr()] = torch.randn(tensor.shape).mul(0.2).to(tensor.dtype)
            replaced_by_assign(layer, new)
        found = factors(layer, IN, OUT, R)
        nf4_base = dequantized_linear(layer, held_bias(layer, OUT, IN, what), OUT, IN, what)
        x = strided((2, 3, IN), False)
        call = f"{what}, x {tuple(x.shape)}{edit}"
        with GRAD_MODES[grad]():
            y = forward_in_regime(layer, x.requires_grad_(grad == "grad on"), call, FAILURES)
        expected = plain_lora(nf4_base, found, SCALING, x, torch.ones(*x.shape[:-1], OUT))[0]
        error = max_difference(y, expected)
        assert error <= 1e-5 * (1 + expected.abs().max().item()), (
            f"{call}: the output is off F.linear(x, W_nf4, b) + scaling (x A^T) B^T with the factors and NF4 buffers "
            f"the layer holds now by {error:.3g}: a weight merged or cast in an earlier call (in eval mode, dropped "
            "only by train()), a memo that an edit through .data leaves as it was, or views of the factors kept from "
            "construction (load_state_dict(assign=True) puts new Parameters in)? read them off self at every call"
        )
    adapter_bytes = 2 * sum(t.numel() * t.element_size() for t in trainable(layer))  # the factors and their grads
    expect_only_nf4_storage(layer, OUT, IN, OUT * 4, f"{what}, no train() call since", adapter_bytes)


# A checkpoint moves between layers: the state_dict() of one layer, loaded (load_state_dict, strict) into another
# built from a different weight and bias (other factors; a whole model through apply_qlora), makes that one compute
# the first one's output. The NF4 buffers are the layer's only copy of its weight: registered persistent
# (register_buffer's default), they are in state_dict(). (The other reload checks write a layer's own state back into
# it, where a buffer that state_dict() leaves out still holds the right codes.) Each layer over a float32 and a
# bfloat16 base (the model in float32: a tenth of a second each), the receiving one called once before the load (a
# weight it kept from that call goes stale), then in train mode with grad on and in eval mode under inference_mode.
STATE_DICT_KINDS = ["NF4Linear", "QLoRALinear", "apply_qlora"]
STATE_DICT_CALLS = [("train", "grad on"), ("eval", "inference mode")]


def state_dict_layer(kind: str, NF4Linear, QLoRALinear, apply_qlora, dtype: torch.dtype, seed: int) -> nn.Module:
    """A layer (or a toy model through apply_qlora) of ``kind`` over weights drawn from ``seed``, factors trained."""
    torch.manual_seed(seed)
    if kind == "apply_qlora":
        layer = apply_qlora(ToyTransformer().to(dtype), ("q_proj", "v_proj"), r=2, alpha=4.0, skip=TOY_SKIP)
    elif kind == "QLoRALinear":
        layer = QLoRALinear(make_base(dtype=dtype, seed=seed), R, ALPHA)
    else:
        layer = NF4Linear(make_base(dtype=dtype, seed=seed))
    randomize_factors(layer, std=0.2)
    return layer


def left_out_of_state_dict(layer: nn.Module, what: str) -> list[str]:
    """Which of the layer's NF4 buffers and factors its state_dict() leaves out (a value there sharing the tensor's
    memory, or equal to it, counts as in)."""
    state = list(layer.state_dict().values())
    held = dict(zip(("the packed codes", "the absmax"), nf4_buffer_tensors(layer, OUT, IN, what), strict=True))
    if trainable(layer):  # a QLoRALinear
        found = factors(layer, IN, OUT, R)
        held |= {"factor A": found.stored_A, "factor B": found.stored_B}
    same = lambda v, t: v.data_ptr() == t.data_ptr() or (v.shape == t.shape and v.dtype == t.dtype  # noqa: E731
                                                         and torch.equal(v, t))  # fmt: skip
    return [name for name, tensor in held.items() if not any(same(value, tensor) for value in state)]


@pytest.mark.points(2)
@pytest.mark.parametrize(
    "kind", [pytest.param(kind, marks=pytest.mark.subject(kind), id=kind) for kind in STATE_DICT_KINDS]
)
def test_a_state_dict_loaded_into_another_layer_makes_it_compute_the_first(
    NF4Linear, QLoRALinear, apply_qlora, nf4_works, kind
):
    nf4_works()
    for dtype in (torch.float32,) if kind == "apply_qlora" else (torch.float32, torch.bfloat16):
        saved = state_dict_layer(kind, NF4Linear, QLoRALinear, apply_qlora, dtype, seed=0)
        other = state_dict_layer(kind, NF4Linear, QLoRALinear, apply_qlora, dtype, seed=3)
        what = f"{kind} over a {dtype_name(dtype)} base" if kind != "apply_qlora" else f"a {dtype_name(dtype)} model"
        if kind != "apply_qlora":
            missing = left_out_of_state_dict(saved, what)
            assert not missing, (
                f"{what}: state_dict() has keys {sorted(saved.state_dict())}, expected {' and '.join(missing)} among "
                "them too, measured none holding them: register the NF4 buffers persistent (register_buffer's "
                "default; persistent=False leaves the layer's only copy of its weight out of every checkpoint)"
            )
        x = inputs() if kind == "apply_qlora" else strided((2, 3, IN), False)
        x = x.to(dtype)
        with torch.inference_mode():
            output(other.eval(), x)  # a call before the load: whatever it kept must not outlive the load
        state = {name: value.detach().clone() for name, value in saved.state_dict().items()}
        other.load_state_dict(state)
        for mode, grad in STATE_DICT_CALLS:
            call = f"{what}, in {mode} mode {GRAD_WORDS[grad]}"
            with GRAD_MODES[grad]():
                expected = output(saved.train(mode == "train"), x.clone())
                measured = forward_in_regime(other.train(mode == "train"), x.clone(), call, FAILURES)
            error = max_difference(measured, expected)
            assert error <= tolerance(dtype, expected), (
                f"{call}: another one, built from a different weight and given the first one's state_dict() by "
                f"load_state_dict, computes the first's output ({describe(expected)}) off by {error:.3g}: is the "
                "weight kept where state_dict() does not reach (a buffer registered persistent=False, an attribute), "
                "or dequantized before the load and kept? keep it in persistent buffers and read them at every call"
            )


# The lora_linear kata's contract, which QLoRALinear inherits: a factor the caller froze (one or both:
# requires_grad_(False), LoRA-FA freezes A) still adds its share to y and to dL/dx; and a forward hook on the NF4 base
# (an activation observer) keeps the tensor the base returned, the update added into a new one.
@pytest.mark.points(2)
@pytest.mark.parametrize("grad", GRAD_MODES)
def test_qlora_keeps_lora_linears_contract_with_frozen_factors_and_the_base_output(
    QLoRALinear, NF4Linear, nf4_works, grad
):
    nf4_works()
    layer, nf4_base = qlora_layer(QLoRALinear)
    for mode in ("train", "eval"):
        regime = f"QLoRALinear in {mode} mode, called {GRAD_WORDS[grad]}"
        layer.train(mode == "train")
        expect_plain_lora_with_frozen_factors(layer, nf4_base, R, SCALING, (2, 3), False, grad, regime)
    randomize_factors(layer, std=0.5)  # an update that shows
    bases = [module for module in layer.modules() if isinstance(module, NF4Linear)]
    assert bases, f"QLoRALinear holds no NF4Linear submodule ({describe(layer)}): the base becomes an NF4Linear"
    for mode in ("train", "eval"):
        layer.train(mode == "train")
        x = torch.randn(5, IN).requires_grad_(grad == "grad on")
        where = f"QLoRALinear in {mode} mode, called {GRAD_WORDS[grad]}"
        # a base computed without its call runs no hook (False): nothing this check can see
        expect_the_base_output_left_alone(layer, bases[0], x, grad, where, "its NF4 base")


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_qlora_runs_in_half_precision_with_dropout_and_a_strided_x(QLoRALinear, nf4_works, dtype):
    """A half-precision base with dropout on, in train and eval mode, x contiguous or not: the output in the base's
    dtype, the LoRA formula's in eval mode, and gradients reaching A, B and x."""
    nf4_works()
    base = make_base(dtype=dtype)
    bias = base.bias.detach().clone()
    layer = QLoRALinear(base, R, ALPHA, DROPOUT)
    randomize_factors(layer, std=0.2)
    found = factors(layer, IN, OUT, R)
    nf4_base = dequantized_linear(layer, bias, OUT, IN, "QLoRALinear")
    for mode in ("train", "eval"):
        for contiguous in (True, False):
            x = strided((2, 5, IN), contiguous, dtype=dtype).requires_grad_()
            where = (
                f"QLoRALinear over a {dtype_name(dtype)} base with dropout={DROPOUT} in {mode} mode, x "
                f"{tuple(x.shape)}{'' if contiguous else ' non-contiguous'}"
            )
            y = forward_in_regime(layer.train(mode == "train"), x, where)
            assert y.dtype == dtype and tuple(y.shape) == (2, 5, OUT), (
                f"{where} returned {describe(y)}, expected {dtype_name(dtype)} of shape (2, 5, {OUT}): compute in "
                "the base's dtype, whatever the mode and x's layout"
            )
            if mode == "eval":
                with torch.no_grad():
                    A, B, xs = found.A.double(), found.B.double(), x.detach().double()
                    expected = F.linear(xs, nf4_base.weight.double(), bias.double()) + SCALING * (xs @ A.T) @ B.T
                error = max_difference(y, expected)
                assert error <= tolerance(dtype, expected), (
                    f"{where}: the output is off F.linear(x, W_nf4, b) + scaling (x A^T) B^T by {error:.3g}, expected "
                    f"under {tolerance(dtype, expected):.3g}: does a half-precision path of its own compute otherwise?"
                )
            for tensor in (found.stored_A, found.stored_B):
                tensor.grad = None
            y.float().square().sum().backward()
            missing = [name for name, t in zip("ABx", (*found.grads(), x.grad), strict=True) if t is None]
            assert not missing, f"{where}: no gradient reached {missing}: use them in forward, not detached"


@pytest.mark.points(1)
def test_qlora_keeps_a_rank_above_min_in_out(QLoRALinear, nf4_works):
    nf4_works()
    in_features, out_features, r, alpha = 6, 4, 8, 16.0
    base = make_base(in_features, out_features)
    bias = base.bias.detach().clone()
    layer = QLoRALinear(base, r=r, alpha=alpha)
    count, expected = sum(t.numel() for t in trainable(layer)), r * (in_features + out_features)
    recorded = (getattr(layer, "r", None), getattr(layer, "scaling", None))
    assert count == expected and recorded == (r, alpha / r), (
        f"QLoRALinear(nn.Linear({in_features}, {out_features}), r={r}, alpha={alpha}) trains {count} numbers and "
        f"records (r, scaling) = {recorded}, expected r * (in + out) = {expected} and ({r}, {alpha / r:g}): keep r as "
        f"given, even above min(in, out) = {min(in_features, out_features)} (dW's rank is then at most min(in, out))"
    )
    randomize_factors(layer, std=0.3)
    found = factors(layer, in_features, out_features, r)
    nf4_base = dequantized_linear(layer, bias, out_features, in_features, "QLoRALinear")
    x = torch.randn(5, in_features)
    with torch.no_grad():
        measured, wanted = output(layer.eval(), x), nf4_base(x) + (alpha / r) * (x @ found.A.T) @ found.B.T
    error = max_difference(measured, wanted)
    assert error <= 1e-5 * (1 + wanted.abs().max().item()), (
        f"with r={r} above min(in, out) the output is off F.linear(x, W_nf4, b) + (alpha / r) (x A^T) B^T by "
        f"{error:.3g}: keep r as given, for the factors and the scaling"
    )


@pytest.mark.points(2)
@pytest.mark.parametrize("device, dtype", TRAINING_CASES)
def test_qlora_training_reduces_the_loss_and_never_changes_the_quantized_buffers(QLoRALinear, nf4_works, device, dtype):
    nf4_works()
    made = []

    def make(base):
        made.append(QLoRALinear(base, r=4, alpha=8.0))
        made.append({name: b.clone() for name, b in made[0].named_buffers()})
        return made[0]

    expect_training_fits_a_low_rank_target(make, device, dtype)
    layer, before = made
    changed = [name for name, b in layer.named_buffers() if not torch.equal(b, before[name])]
    assert not changed, f"training changed the quantized buffers {changed}: they are frozen NF4 codes"


@pytest.mark.points(2)
def test_qlora_dropout_acts_on_the_adapter_input_in_train_mode_only(QLoRALinear, nf4_works):
    nf4_works()
    layer, nf4_base = qlora_layer(QLoRALinear, dropout=0.5)
    x = torch.randn(8, IN)
    layer.train()
    with torch.no_grad():
        change = max_difference(output(layer, x), nf4_base(x))
    assert change <= 1e-5 * (1 + nf4_base(x).abs().max().item()), (
        f"with dropout=0.5 in train mode the output at init differs from the NF4 base's by {change:.3g}: dropout "
        "belongs on the adapter branch's input only"
    )
    randomize_factors(layer, std=0.2)
    found = factors(layer, IN, OUT, R)
    layer.eval()
    with torch.no_grad():
        expected = nf4_base(x) + SCALING * (x @ found.A.T) @ found.B.T
        error = max_difference(output(layer, x), expected)
    assert error <= 1e-5 * (1 + expected.abs().max().item()), (
        f"in eval mode with dropout=0.5 the output is off the LoRA formula by {error:.3g}: dropout must be off in eval"
    )
    # The shared probe of nn.Dropout's masks (every regime, a (4, 16, in) batch), on a float32 base: NF4 has no
    # float64, so it reads the outputs to 1e-5 of their size.
    base = make_base(DROP_IN, DROP_OUT)
    layer = QLoRALinear(base, DROP_R, 2.0 * DROP_R, DROPOUT)
    expect_dropout_like_nn_dropout(layer, dequantized_linear(layer, base.bias, DROP_OUT, DROP_IN, "QLoRALinear"))


@pytest.mark.points(1)
@pytest.mark.parametrize(
    "arguments",
    INVALID_ARGUMENTS,  # lora_linear's: r=0.5 too (a rank checked as r <= 0 lets it through to a TypeError)
    ids=arguments_id,
)
def test_qlora_rejects_bad_arguments(QLoRALinear, nf4_works, arguments):
    nf4_works()
    call = ", ".join(f"{key}={value}" for key, value in arguments.items())
    cause = (
        " (NaN fails every comparison: test 0 <= dropout < 1, not dropout < 0 or dropout >= 1)"
        if call.endswith("nan")
        else ""
    )
    base = nn.Linear(IN, OUT)
    before = module_state(base)
    expect_value_error(lambda: QLoRALinear(base, **arguments), f"QLoRALinear(base, {call}){cause}")
    expect_left_as_it_was(base, before, f"QLoRALinear(base, {call})", "base")


def module_state(root: nn.Module) -> dict[str, dict[str, object]]:
    """What a refused call must leave as it was: each submodule (the very object, its mode) and each parameter and
    buffer (the very tensor, its values, its requires_grad), by name."""
    tensors = [*root.named_parameters(remove_duplicate=False), *root.named_buffers(remove_duplicate=False)]
    modules = root.named_modules(remove_duplicate=False)
    return {
        "modules": {name or "(itself)": (type(m).__name__, id(m), m.training) for name, m in modules},
        "tensors": {name: (id(t), t.detach().clone(), t.requires_grad) for name, t in tensors},
    }


def expect_left_as_it_was(root: nn.Module, before: dict[str, dict[str, object]], call: str, what: str) -> None:
    """Fail the check unless the refused ``call`` left ``root`` (the caller's ``what``) as ``module_state`` found it
    before, naming the first change."""
    after = module_state(root)
    changes = [f"{name} is gone" for name in before["modules"] if name not in after["modules"]]
    changes += [f"{name} is new" for name in after["modules"] if name not in before["modules"]]
    changes += [
        f"{name} was replaced ({before['modules'][name][0]} -> {kind})" if held != before["modules"][name][1]
        else f"{name} changed train/eval mode"
        for name, (kind, held, training) in after["modules"].items()
        if name in before["modules"] and (held, training) != before["modules"][name][1:]
    ]  # fmt: skip
    for name, (held, values, requires_grad) in before["tensors"].items():
        if name not in after["tensors"]:
            changes.append(f"tensor {name} is gone")
        elif after["tensors"][name][0] != held:
            changes.append(f"tensor {name} was replaced")
        elif after["tensors"][name][2] != requires_grad:
            changes.append(f"{name}.requires_grad went {requires_grad} -> {after['tensors'][name][2]}")
        elif not torch.equal(after["tensors"][name][1], values):
            changes.append(f"tensor {name}'s values changed")
    assert not changes, (
        f"{call} raised ValueError, as it should, but first changed the caller's {what}: {changes[0]}"
        + (f" (and {len(changes) - 1} more changes)" if len(changes) > 1 else "")
        + ", expected it left as it was: a refused call changes nothing; check every argument (and find the targets) "
        "before quantizing, freezing or replacing anything"
    )


# Every argument the stub allows, each once (r, alpha, dropout): r = 1, alpha 0 (the adapter switched off), alpha < 0,
# a whole alpha given as an int, a small fraction, dropout 0 as an int, a dropout near 1; by position and by keyword.
ALLOWED_ARGUMENTS = [
    (1, 16.0, 0.0),
    (R, 0.0, 0.0),
    (R, -ALPHA, 0.0),
    (R, 16, 0.0),
    (3, 1e-3, 0.0),
    (R, ALPHA, 0),
    (R, ALPHA, 0.99),
]


@pytest.mark.points(1)
def test_qlora_takes_every_argument_the_stub_allows(QLoRALinear, apply_qlora, nf4_works):
    nf4_works()
    for (r, alpha, dropout), positional in itertools.product(ALLOWED_ARGUMENTS, (True, False)):
        base = make_base()
        kept_bias = base.bias.detach().clone()
        call = (
            f"QLoRALinear(base, {r!r}, {alpha!r}, {dropout!r})"
            if positional
            else f"QLoRALinear(base, r={r!r}, alpha={alpha!r}, dropout={dropout!r})"
        )
        try:
            layer = (
                QLoRALinear(base, r, alpha, dropout)
                if positional
                else QLoRALinear(base, r=r, alpha=alpha, dropout=dropout)
            )
        except (TypeError, ValueError, ArithmeticError) as error:
            pytest.fail(
                f"{call} raised {type(error).__name__} ({error}), expected a layer: the stub refuses only a base that "
                "is not an nn.Linear, r < 1 and a dropout outside [0, 1); alpha is any number, 0 and negative too "
                "(scaling alpha / r)",
                pytrace=False,
            )
        expect_r_alpha_and_scaling(layer, r, alpha)
        nf4_base = dequantized_linear(layer, kept_bias, OUT, IN, "QLoRALinear")
        randomize_factors(layer, std=0.2)
        found = factors(layer, IN, OUT, r)
        x = torch.randn(3, IN, requires_grad=True)
        upstream = torch.randn(3, OUT)
        y = output(layer.eval(), x)  # eval: dropout off, whatever its probability
        expected, grads = plain_lora(nf4_base, found, alpha / r, x, upstream)
        error = max_difference(y, expected)
        assert error <= 1e-5 * (1 + expected.abs().max().item()), (
            f"{call} (eval mode): the output is off F.linear(x, W_nf4, b) + (alpha / r) (x A^T) B^T, scaling "
            f"{alpha / r:g}, by {error:.3g}"
        )
        y.backward(upstream)
        for name, measured in zip("ABx", (*found.grads(), x.grad), strict=True):
            assert measured is not None, (
                f"{call}: {name} received no gradient, expected plain LoRA's"
                f"{' (zeros at alpha 0, not None)' if alpha == 0 else ''}"
            )
            off = max_difference(measured, grads[name])
            assert off <= 1e-5 * (1 + grads[name].abs().max().item()), (
                f"{call}: the gradient of {name} is off plain LoRA's (scaling {alpha / r:g}) by {off:.3g}"
            )
    for r, alpha, dropout in ALLOWED_ARGUMENTS[:3]:  # apply_qlora passes them on as they are: alpha 0 and < 0 too
        call = f"apply_qlora(model, ('fc1', 'fc2'), {r!r}, {alpha!r}, {dropout!r}, {TOY_SKIP})"
        model = ToyTransformer()
        try:
            apply_qlora(model, ("fc1", "fc2"), r, alpha, dropout, TOY_SKIP)
        except (TypeError, ValueError, ArithmeticError) as error:
            pytest.fail(
                f"{call} raised {type(error).__name__} ({error}), expected the model adapted: alpha is any number, 0 "
                "and negative too, r any integer >= 1, handed to every QLoRALinear as given",
                pytrace=False,
            )
        for name, (layer, _) in adapted_factors(model, QLoRALinear, r).items():
            recorded = (getattr(layer, "r", None), getattr(layer, "alpha", None), getattr(layer, "scaling", None))
            assert recorded == (r, alpha, alpha / r), (
                f"after {call}, {name} records (r, alpha, scaling) = {recorded}, expected ({r}, {alpha}, {alpha / r})"
            )


@pytest.mark.points(1)
def test_qlora_defaults_are_r_8_alpha_16_and_no_dropout(QLoRALinear, nf4_works):
    nf4_works()
    layer = QLoRALinear(make_base())
    expect_r_alpha_and_scaling(layer, 8, 16.0)
    count = sum(t.numel() for t in trainable(layer))
    assert count == 8 * (IN + OUT), (
        f"QLoRALinear(base) trains {count} numbers, expected 8 * (in + out) = {8 * (IN + OUT)}"
    )
    randomize_factors(layer)
    x = torch.randn(8, IN)
    with torch.no_grad():
        repeat = max_difference(output(layer.train(), x), output(layer, x))
    assert repeat == 0, (
        f"QLoRALinear(base) in train mode varies by {repeat:.3g} between calls: the default dropout is 0"
    )


TOY_SKIP = ("head",)


def names(value):
    """A name list as the spec reads it: a plain string is one name."""
    return (value,) if isinstance(value, str) else tuple(value)


def quantized_layers(model, NF4Linear, QLoRALinear):
    """The outermost NF4Linear and QLoRALinear layers of the model, by name (not the NF4Linear inside a QLoRALinear)."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, (NF4Linear, QLoRALinear)) and not any(name.startswith(f + ".") for f in found):
            found[name] = module
    return found


def case_id(targets, skip, generators=False):
    plain = "-plain-strings" if isinstance(skip, str) else ""
    return "+".join(names(targets)) + "-skip-" + "+".join(names(skip)) + plain + ("-generators" if generators else "")


@pytest.mark.points(3)
@pytest.mark.subject("apply_qlora")
@pytest.mark.parametrize(
    ("targets", "skip", "generators"),
    [
        pytest.param(targets, skip, generators, id=case_id(targets, skip, generators))
        for targets, skip, generators in [
            (("q_proj", "v_proj"), TOY_SKIP, False),
            (("fc1",), TOY_SKIP, False),  # not fc10
            (("proj",), TOY_SKIP, False),  # not q_proj
            (("0.attn.q_proj",), TOY_SKIP, False),  # not 10.attn.q_proj
            (["out_proj", "head"], ["head"], False),  # skipped even when targeted
            ("q_proj", "head", False),  # a plain string is one name, not its characters
            # skip matches as the targets do: equal, or ending in "." + the name
            (("q_proj", "v_proj"), ("proj", "head"), False),  # skips proj, not q_proj
            (("fc1", "fc10"), ("fc1", "head"), False),  # skips fc1, not fc10
            (("q_proj",), ("layers.1.attn.q_proj", "head"), False),  # a dotted name
            (("q_proj",), ("0.attn.q_proj", "head"), False),  # layers.0, not layers.10
            # skip names nn.Linear layers: a container's name skips nothing inside it
            (("q_proj",), ("layers.1", "head"), False),
            (("fc1", "v_proj"), ("mlp", "attn", "head"), False),
            (("q_proj", "v_proj"), ("layers.2.attn.v_proj", "head"), True),  # any iterable, read once
            (("fc1", "proj"), ("head",), True),
        ]
    ],
)
def test_apply_qlora_quantizes_every_linear_and_adapts_the_targets(
    apply_qlora, NF4Linear, QLoRALinear, nf4_works, targets, skip, generators
):
    nf4_works()
    model = ToyTransformer()
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    skipped = set(matching_linears(model, names(skip)))
    adapted = set(matching_linears(model, names(targets))) - skipped
    held = [name for name, _ in model.named_modules()]
    containers = [
        s for s in names(skip) if any(n == s or n.endswith("." + s) for n in held) and not matching_linears(model, (s,))
    ]
    given = ((t for t in names(targets)), (s for s in names(skip))) if generators else (targets, skip)
    returned = apply_qlora(model, given[0], r=2, alpha=4.0, skip=given[1])
    assert returned is model, f"apply_qlora returned {describe(returned)}, expected the model itself, changed in place"
    wrong = []
    for name, original in linears.items():
        layer = model.get_submodule(name)
        expected = "nn.Linear" if name in skipped else "QLoRALinear" if name in adapted else "NF4Linear"
        kind = {nn.Linear: "nn.Linear", NF4Linear: "NF4Linear", QLoRALinear: "QLoRALinear"}.get(type(layer), "?")
        if expected != kind or (expected == "nn.Linear" and layer is not original):
            wrong.append(f"{name} is {type(layer).__name__}, expected {expected}")
    cause = "quantize every nn.Linear outside skip; QLoRALinear where the name equals a target or ends in '.' + target"
    if any("expected nn.Linear" in w for w in wrong):
        cause = "layers matched by skip stay as they are, even when targeted: " + cause
    elif any(w.split(" is ")[1].startswith("Linear") for w in wrong):
        cause = "skip matches as target_modules does (equal, or ending in '.' + a name; 'proj' is not q_proj): " + cause
    if containers:
        cause = (
            f"skip matches nn.Linear layers only: {containers[0]!r} names a container, which skips nothing: " + cause
        )
    if isinstance(skip, str) or isinstance(targets, str):
        cause = "a plain string is one name, not an iterable of its characters: " + cause
    if generators:
        cause = "target_modules and skip may be any iterable, a generator too, which can be read only once: " + cause
    shown = "generators of " if generators else ""
    assert not wrong, (
        f"targets {shown}{targets!r}, skip {shown}{skip!r}: {len(wrong)} layers wrong, {wrong[:3]}: {cause}"
    )


def adapted_factors(model, QLoRALinear, r, width=8, hidden=12):
    """name -> (layer, its factors) of every QLoRALinear of a ToyTransformer adapted on fc1 and fc2 (whose in, out
    and r all differ, so that the factors' shapes tell which is which)."""
    dims = {"fc1": (width, hidden), "fc2": (hidden, width)}
    return {
        name: (layer, factors(layer, *dims[name.rpartition(".")[2]], r))
        for name, layer in model.named_modules()
        if isinstance(layer, QLoRALinear)
    }


@pytest.mark.points(3)
@pytest.mark.subject("apply_qlora")
@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["no-dropout", "dropout-0.3"])
def test_apply_qlora_passes_r_alpha_and_dropout_to_every_adapter(
    apply_qlora, NF4Linear, QLoRALinear, nf4_works, dropout
):
    nf4_works()
    r, alpha = 3, 7.5  # scaling 2.5, not the defaults
    model = ToyTransformer()
    reference = copy.deepcopy(model)
    called_by_position(
        lambda: apply_qlora(model, ("fc1", "fc2"), r, alpha, dropout, TOY_SKIP),
        f"apply_qlora(model, ('fc1', 'fc2'), {r}, {alpha}, {dropout}, {TOY_SKIP})",
    )
    adapters = adapted_factors(model, QLoRALinear, r)
    assert len(adapters) == 2 * 11, f"{len(adapters)} QLoRALinear layers, expected the 22 fc1 and fc2 layers"
    generator = torch.Generator().manual_seed(3)
    for name, layer in quantized_layers(model, NF4Linear, QLoRALinear).items():
        linear = reference.get_submodule(name)
        with torch.no_grad():
            weight = dequantized(layer, linear.out_features, linear.in_features, name)
            if name in adapters:
                found = adapters[name][1]
                for tensor in (found.stored_A, found.stored_B):  # as training leaves them: B no longer zero
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.3)
                weight = weight + (alpha / r) * found.B.float() @ found.A.float()
            linear.weight.copy_(weight)
    x = inputs()
    with torch.no_grad():
        expected, measured = reference(x), output(model.eval(), x)
    error = max_difference(measured, expected)
    assert error <= 1e-5 * (1 + expected.abs().max().item()), (
        f"with apply_qlora(model, ('fc1', 'fc2'), r={r}, alpha={alpha}, dropout={dropout}) and random factors, the "
        f"model in eval mode is {error:.3g} off W_nf4 + (alpha / r) B A in each adapted layer: pass r, alpha and "
        "dropout on to every QLoRALinear"
    )
    name, (layer, _) = next(iter(adapters.items()))
    x = torch.randn(16, 8, generator=generator)
    with torch.no_grad():
        varied = max_difference(output(layer.train(), x), output(layer.eval(), x))
    if dropout:
        assert varied > 0, (
            f"with apply_qlora(..., dropout={dropout}), {name} in train mode gives its eval-mode output: the adapters "
            "get no dropout; pass dropout on to QLoRALinear"
        )
    else:
        assert varied == 0, f"with dropout=0, {name} in train mode differs from eval mode by {varied:.3g}"


@pytest.mark.points(2)
@pytest.mark.subject("apply_qlora")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_apply_qlora_keeps_a_half_precision_model_in_its_dtype(apply_qlora, NF4Linear, QLoRALinear, nf4_works, dtype):
    nf4_works()
    model = ToyTransformer().to(dtype)
    modules = dict(model.named_modules())
    originals = {name: t.detach().clone() for name, t in model.named_parameters()}
    linears = {name for name, m in modules.items() if isinstance(m, nn.Linear)} - {"head"}
    apply_qlora(model, ("fc1", "fc2"), r=3, alpha=6.0, skip=TOY_SKIP)
    for name, value in model.named_parameters():
        if name in originals and name.rpartition(".")[0] not in linears:
            assert value.dtype == dtype and torch.equal(value.detach(), originals[name]), (
                f"{name} changed ({describe(originals[name])} became {describe(value)}) in a {dtype} model: nothing "
                "but the linear layers outside skip changes (norms, scalars and skipped layers keep values and dtypes)"
            )
    kept = [
        name for name, m in modules.items() if name and name.rpartition(".")[0] not in linears and name not in linears
    ]
    moved = [name for name in kept if model.get_submodule(name) is not modules[name]]
    assert not moved, f"apply_qlora replaced {moved[:3]}, which are no nn.Linear outside skip: keep those objects"
    for name, (_, found) in adapted_factors(model, QLoRALinear, 3).items():
        assert found.stored_A.dtype == found.stored_B.dtype == dtype, (
            f"{name}'s factors are {found.stored_A.dtype}, expected the model's {dtype}"
        )
    y = output(model, inputs().to(dtype))
    assert y.dtype == dtype, f"the {dtype} model after apply_qlora returns {describe(y)}, expected {dtype}"


@pytest.mark.points(1)
@pytest.mark.subject("apply_qlora")
def test_apply_qlora_defaults_are_q_v_r_8_alpha_16_no_dropout_and_skip_lm_head(
    apply_qlora, NF4Linear, QLoRALinear, nf4_works
):
    nf4_works()

    class WithHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.lm_head = ToyTransformer(depth=2), nn.Linear(5, 7)

    model = WithHead()
    head = model.lm_head
    apply_qlora(model)
    kinds = {
        name: "QLoRALinear" if isinstance(m, QLoRALinear) else "NF4Linear"
        for name, m in quantized_layers(model, NF4Linear, QLoRALinear).items()
    }
    adapted = sorted(name for name, kind in kinds.items() if kind == "QLoRALinear")
    expected = sorted(matching_linears(WithHead(), ("q_proj", "v_proj")))
    assert adapted == expected and model.lm_head is head, (
        f"apply_qlora(model) adapted {adapted[:4]} and {'kept' if model.lm_head is head else 'replaced'} lm_head, "
        f"expected {expected[:4]} and lm_head kept: the defaults are target_modules=('q_proj', 'v_proj'), "
        "skip=('lm_head',)"
    )
    model = ToyTransformer(width=16, hidden=24, depth=2)  # r = 8 differs from in and out
    apply_qlora(model, ("fc1",), skip=TOY_SKIP)
    count = sum(t.numel() for t in trainable(model.get_submodule("layers.0.mlp.fc1")))
    assert count == 8 * (16 + 24), (
        f"apply_qlora(model, ('fc1',)) trains {count} numbers in a 16 -> 24 fc1, expected 8 * (16 + 24) = 320: "
        "the default r is 8"
    )
    layer, found = adapted_factors(model, QLoRALinear, 8, 16, 24)["layers.0.mlp.fc1"]
    randomize_factors(layer, std=0.3)
    x = torch.randn(6, 16)
    with torch.no_grad():
        adapter = output(layer.eval(), x) - output(layer.eval(), torch.zeros_like(x))  # W x + the adapter's share
        expected = x @ dequantized(layer, 24, 16, "fc1").T + 2.0 * (x @ found.A.T) @ found.B.T
        repeat = max_difference(output(layer.train(), x), output(layer.eval(), x))
    error = max_difference(adapter, expected)
    assert error <= 1e-5 * (1 + expected.abs().max().item()) and repeat == 0, (
        f"apply_qlora(model, ('fc1',)) gives adapters off base + 2 B A (alpha / r = 16 / 8) by {error:.3g} and "
        f"varying by {repeat:.3g} in train mode: the defaults are r=8, alpha=16.0 and dropout=0.0"
    )


@pytest.mark.points(2)
@pytest.mark.subject("apply_qlora")
def test_apply_qlora_freezes_everything_but_the_factors(apply_qlora, NF4Linear, QLoRALinear, nf4_works):
    nf4_works()
    model = ToyTransformer()
    adapted = matching_linears(model, ("q_proj", "v_proj"))
    expected = sum(2 * (m.in_features + m.out_features) for m in map(model.get_submodule, adapted))
    apply_qlora(model, ("q_proj", "v_proj"), r=2, alpha=4.0, skip=TOY_SKIP)
    still = [name for name, p in model.named_parameters() if p.requires_grad]
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count == expected, (
        f"{count} trainable numbers after apply_qlora, expected the factors' {expected} (r (in + out) per adapter): "
        f"trainable are {still[:4]}...; freeze everything else (the temperature, norms, biases, the skipped head)"
    )
    factor_tensors = [p for m in model.modules() if isinstance(m, QLoRALinear) for p in trainable(m)]
    expect_frozen(model, "the model after apply_qlora", factor_tensors)


@pytest.mark.points(1)
@pytest.mark.subject("apply_qlora")
def test_apply_qlora_changes_no_train_or_eval_mode(apply_qlora, NF4Linear, QLoRALinear, nf4_works):
    """A model with some modules in eval mode keeps every mode of the modules that stay. (A second call's freezing of
    an earlier call's adapters is left to either reading: the stub says nothing of second calls.)"""
    nf4_works()
    model = ToyTransformer().eval()
    for module in list(model.modules())[1::2]:  # a mixed model: some modules in train mode (not their children)
        module.training = True
    modes = {name: (module, module.training) for name, module in model.named_modules()}
    call = "apply_qlora(model, ('q_proj', 'v_proj'), r=2, alpha=4.0, skip=('fc1', 'head'))"
    apply_qlora(model, ("q_proj", "v_proj"), r=2, alpha=4.0, skip=("fc1", *TOY_SKIP))
    now = dict(model.named_modules())
    changed = [name or "model" for name, (module, was) in modes.items() if now.get(name) is module
               and module.training != was]  # fmt: skip
    assert not changed, (
        f"{call} on a model with some modules in eval mode changed the train/eval mode of {changed[:4]}: nothing else "
        "changes, every module that stays keeps its train/eval mode (no model.train() or .eval() inside; a "
        "Dropout would start dropping, a BatchNorm updating its statistics)"
    )


@pytest.mark.points(2)
@pytest.mark.subject("apply_qlora")
def test_apply_qlora_model_computes_with_the_dequantized_weights(apply_qlora, NF4Linear, QLoRALinear, nf4_works):
    nf4_works()
    model = ToyTransformer()
    reference = copy.deepcopy(model)
    apply_qlora(model, ("q_proj", "v_proj"), r=2, alpha=4.0, skip=TOY_SKIP)
    for name, layer in quantized_layers(model, NF4Linear, QLoRALinear).items():
        linear = reference.get_submodule(name)
        with torch.no_grad():
            linear.weight.copy_(dequantized(layer, linear.out_features, linear.in_features, name))
    x = inputs()
    with torch.no_grad():
        expected, measured = reference(x), output(model, x)
    error = max_difference(measured, expected)
    assert error <= 1e-5 * (1 + expected.abs().max().item()), (
        f"the model after apply_qlora differs by {error:.3g} from the same model with every quantized layer's weight "
        "replaced by its dequantized NF4 weight (adapters at init): each layer must compute F.linear(x, W_nf4, b)"
    )


@pytest.mark.points(1)
@pytest.mark.subject("apply_qlora")
@pytest.mark.parametrize(
    ("targets", "skip", "twice"),
    [
        (("nope",), (), False),
        (("head",), ("head",), False),
        (("router.q_proj",), (), False),  # a LayerNorm: only nn.Linear layers count
        (("attn",), (), False),  # a container of linear layers, no nn.Linear itself
        (("q_proj",), TOY_SKIP, True),  # applied a second time: the q_proj layers are QLoRALinear now
    ],
    ids=["no-match", "skipped", "a-LayerNorm", "a-container", "applied-twice"],
)
def test_apply_qlora_raises_when_no_target_is_left(apply_qlora, nf4_works, targets, skip, twice):
    nf4_works()
    model = ToyTransformer()
    if twice:
        apply_qlora(model, targets, r=2, alpha=4.0, skip=skip)
    case = "the targets already adapted by a first call" if twice else "no nn.Linear outside skip matches"
    before = module_state(model)
    call = f"apply_qlora(model, {list(targets)}, skip={list(skip)})"
    expect_value_error(
        lambda: apply_qlora(model, targets, r=2, alpha=4.0, skip=skip), f"{call} ({case}; only nn.Linear layers count)"
    )
    expect_left_as_it_was(model, before, call, "model")


def held_names(model: nn.Module) -> dict[int, list[str]]:
    """Every name under which each module of ``model`` is held, by id (named_modules() lists a shared one once)."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


QLORA_ZOO_CASES = [  # (model, targets, skip)
    ("nested", ("q_proj", "v_proj"), ()),  # heads.out_proj, a subclass of nn.Linear, becomes an NF4Linear too
    ("nested", ("out_proj", "mlp.0"), ()),  # the subclass targeted
    ("tied", ("q_proj", "v_proj"), ()),  # one block used twice, its v_proj held a third time as `alias`
    ("tied", ("q_proj", "v_proj"), ("alias",)),  # skipped under one of its names: the v_proj stays as it is
    ("tied", ("q_proj",), ("classifier",)),  # head, skipped as its second name in the same parent
    ("look-alikes", ("fc1", "q_proj"), ()),  # lora_scale and gate.lora_A are the model's own parameters: frozen
    ("look-alikes", ("Q_PROJ", "fc10"), ("fc1", "q_proj")),  # skip as written: not Fc1, nor Q_PROJ, nor qq_proj
    ("reused", ("q_proj",), ()),  # held as enc.0 first, then block.q_proj: targeted by its second name only
    ("reused", ("block.q_proj", "v_proj"), ("head",)),  # a dotted second name
    ("tied", ("q_proj",), ("unembed",)),  # embed quantized, its weight tied to unembed, which stays with those values
    ("reused-block-first", ("q_proj",), ()),  # listed first as block.q_proj: quantized once, under enc.0 too
    ("reused-block-first", ("enc.0",), ("v_proj",)),  # targeted by its second name only
    # A backbone held as base, beside the model's own layers lora_A and dropout.lora_B: layers like any other, told
    # from an adapter's parts by where they lie (inside a QLoRALinear or not), never by their names.
    ("wrapped", ("q_proj",), ()),
    ("wrapped", ("q_proj", "lora_A", "lora_B"), ()),
    # (Not "gated": NF4Linear computes F.linear alone, so the spec leaves a linear subclass holding a layer open.)
]


def zoo_case_id(model_name: str, targets: tuple[str, ...], skip: tuple[str, ...]) -> str:
    return f"{model_name}-{'+'.join(targets)}" + (f"-skip-{'+'.join(skip)}" if skip else "")


@pytest.mark.points(2)
@pytest.mark.subject("apply_qlora")
@pytest.mark.parametrize(
    ("model_name", "targets", "skip"), [pytest.param(*case, id=zoo_case_id(*case)) for case in QLORA_ZOO_CASES]
)
def test_apply_qlora_quantizes_the_model_zoo(apply_qlora, NF4Linear, QLoRALinear, nf4_works, model_name, targets, skip):
    nf4_works()
    torch.manual_seed(0)
    model = MODEL_ZOO[model_name]()
    reference = copy.deepcopy(model)  # keeps the sharing: one layer under several names stays one
    names_of = held_names(model)
    linears = {id(m): m for _, m in model.named_modules() if isinstance(m, nn.Linear)}
    matches = lambda key, patterns: any(n == t or n.endswith("." + t) for n in names_of[key] for t in patterns)  # noqa: E731
    skipped = {key for key in linears if matches(key, skip)}  # any of its names skipped: the layer is
    adapted = {key for key in linears if matches(key, targets)} - skipped
    call = f"apply_qlora({model_name} model, {list(targets)}, r=2, alpha=4.0, skip={list(skip)})"
    held = lambda: [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]  # noqa: E731
    before = {name: tensor.detach().clone() for name, tensor in held()}
    try:
        apply_qlora(model, targets, r=2, alpha=4.0, skip=skip)
    except ValueError as error:
        shared = [names_of[key] for key in adapted if len(names_of[key]) > 1]
        pytest.fail(
            f"{call} raised ValueError ({error}), though "
            f"{'a layer' if not shared else 'the layer held as ' + ' and '.join(shared[0])} outside skip matches a "
            "target: a layer held under several names is targeted when any of its names "
            "matches, not only the first that named_modules() lists",
            pytrace=False,
        )
    wrong, split, kinds = [], [], {}
    for key, original in linears.items():
        expected = QLoRALinear if key in adapted else NF4Linear
        now = {name: model.get_submodule(name) for name in names_of[key]}
        if key in skipped:
            wrong += [
                f"{n} is {type(m).__name__}, expected the very nn.Linear" for n, m in now.items() if m is not original
            ]
        else:
            wrong += [f"{n} is {type(m).__name__}, expected {expected.__name__}" for n, m in now.items() if not
                      isinstance(m, expected)]  # fmt: skip
        kinds.update(dict.fromkeys(now, key))
        if len({id(m) for m in now.values()}) > 1:
            split.append(sorted(now))
    subclassed = [n for key, m in linears.items() if type(m) is not nn.Linear for n in names_of[key]]
    cause = "quantize every nn.Linear outside skip, in place; QLoRALinear on the targets"
    wrongly = {kinds[w.partition(" is ")[0]] for w in wrong}
    folded = [  # skip names that match a layer left wrong only when the case is ignored
        s for s in skip for key in wrongly - skipped for n in names_of[key]
        if n.lower() == s.lower() or n.lower().endswith("." + s.lower())
    ]  # fmt: skip
    if any(w.startswith(tuple(subclassed)) for w in wrong):
        cause = (
            f"{subclassed[0]} is a subclass of nn.Linear, so an nn.Linear: test isinstance, not type(m) is nn.Linear"
        )
    elif any(len(names_of[key]) > 1 for key in wrongly & skipped):
        cause = (
            "a layer held under several names matches skip when any of its names does, and then stays the very "
            "nn.Linear under all of them; " + cause
        )
    elif folded:
        cause = f"skip matches names as written, case and all ({folded[0]!r} skips no other spelling); " + cause
    elif any(len(names_of[key]) > 1 for key in wrongly & adapted):
        shared = next(names_of[key] for key in wrongly & adapted if len(names_of[key]) > 1)
        cause = (
            f"a layer held under several names ({' and '.join(shared)}) is targeted when any of its names matches, "
            "not only the first that named_modules() lists; " + cause
        )
    elif any(len(names_of[key]) > 1 for key in linears):
        cause = (
            "a layer held under several names (a shared block, an alias) is replaced under all of them: "
            "named_modules() and named_children() list it once, named_modules(remove_duplicate=False) under every "
            "name; " + cause
        )
    assert not wrong, f"{call}: {len(wrong)} layers wrong, {wrong[:3]}: {cause}"
    assert not split, (
        f"{call}: the layer held as {split[0]} became different layers under its names: replace a shared layer by "
        "one new layer under all of them (it stays shared, its adapter too)"
    )
    replaced = (NF4Linear, QLoRALinear)
    for name, tensor in held():
        owner = name.rpartition(".")[0]
        parts = owner.split(".") if owner else []
        inside = any(isinstance(model.get_submodule(".".join(parts[:k])), replaced) for k in range(len(parts) + 1))
        if name in before and not inside:
            was = before[name]
            assert tensor.shape == was.shape and tensor.dtype == was.dtype and torch.equal(tensor.detach(), was), (
                f"{call}: {name}, of a module that stays, changed ({describe(was)} became {describe(tensor)}): a "
                "weight tied to a replaced layer (tied embeddings) or a skipped layer keeps its values; replace the "
                "layers, never free or edit their tensors in place (weight.data = ..., resize_)"
            )
    layers = {id(model.get_submodule(names_of[key][0])): model.get_submodule(names_of[key][0]) for key in linears}
    factor_ids = {id(p) for m in layers.values() if isinstance(m, QLoRALinear) for p in trainable(m)}
    loose = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in factor_ids]
    assert not loose, (
        f"{call}: {loose[:3]} still train: freeze every parameter that is no adapter factor, whatever its name "
        "(a model may name its own parameters lora_...): model.parameters(), not a filter on names"
    )
    for key, original in linears.items():
        layer, linear = model.get_submodule(names_of[key][0]), reference.get_submodule(names_of[key][0])
        if key in skipped:
            continue  # full precision, as the reference has it
        if isinstance(layer, QLoRALinear):
            count = sum(t.numel() for t in trainable(layer))
            assert count == 2 * (original.in_features + original.out_features), (
                f"{call}: {names_of[key][0]} trains {count} numbers, expected r (in + out) = "
                f"{2 * (original.in_features + original.out_features)}"
            )
        weight = dequantized(layer, linear.out_features, linear.in_features, names_of[key][0])
        linear.weight = nn.Parameter(weight, requires_grad=False)  # untied: a layer tied to it may stay as it was
    x = zoo_inputs()
    with torch.no_grad():
        expected, measured = reference.eval()(x), output(model.eval(), x)
    error = max_difference(measured, expected)
    assert error <= 1e-5 * (1 + expected.abs().max().item()), (
        f"{call}: the model is {error:.3g} off the same model with every linear layer's weight replaced by its NF4 "
        "dequantization (adapters at init)"
    )


def tiny_llama(tied: bool = False):
    if LLAMA is None:
        pytest.skip(TRANSFORMERS_MISSING)
    config = LLAMA.LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    with ref.library_side_effects_undone():
        model = LLAMA.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # trained-looking weights: HF's init is 0.02 std
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.05)
            else:
                parameter.uniform_(0.8, 1.2)
    return model


def logits(model, ids, grader_owned=False):
    """The model's logits for ``ids``; the side effects of transformers' code are undone for the grader's own
    models only (a submission's model is watched like any of its code)."""
    with torch.no_grad(), ref.library_side_effects_undone() if grader_owned else contextlib.nullcontext():
        return model(input_ids=ids).logits


@pytest.mark.points(3)
@pytest.mark.subject("apply_qlora")
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied-lm-head-quantized"])
def test_a_quantized_llama_keeps_half_a_byte_per_weight(apply_qlora, NF4Linear, QLoRALinear, nf4_works, tied):
    """Untied, with the default skip; tied (lm_head's weight is the embeddings'), with skip=(): lm_head is quantized
    and the embeddings, which stay, keep their values."""
    nf4_works()
    model = tiny_llama(tied)
    originals = {name: t.detach().clone() for name, t in model.state_dict().items()}
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    skip = () if tied else ("lm_head",)
    apply_qlora(model, r=4, alpha=8.0, skip=skip)
    for name, original in linears.items():
        layer = model.get_submodule(name)
        if name in skip:
            assert layer is original, "lm_head is not the original nn.Linear: the default skip=('lm_head',) keeps it"
            continue
        targeted = name.endswith((".q_proj", ".v_proj"))
        expected = QLoRALinear if targeted else NF4Linear
        assert type(layer) is expected, f"{name} is {type(layer).__name__}, expected {expected.__name__}"
        extra = 4 * 4 * (original.in_features + original.out_features) if targeted else 0
        expect_only_nf4_storage(layer, original.out_features, original.in_features, 0, name, extra)
    quantized = tuple(f"{name}." for name in linears if name not in skip)
    for name, value in model.state_dict().items():
        if name in originals and not name.startswith(quantized):  # a layer's own keys may reuse a name ("weight")
            assert value.dtype == originals[name].dtype and torch.equal(value, originals[name]), (
                f"{name} changed ({describe(originals[name])} became {describe(value)}): only the linear layers "
                "outside skip are quantized; embeddings, norms and skipped layers stay as they were, a weight tied "
                "to a quantized layer (tied embeddings) too: never free or edit the replaced layers' tensors in place"
            )
    kept = [name for name in originals if name.startswith(("model.embed_tokens", "model.norm", *skip))]
    assert all(name in model.state_dict() for name in kept), "the embeddings, the final norm or lm_head went missing"


@pytest.mark.points(2)
@pytest.mark.subject("apply_qlora")
def test_a_quantized_llama_gives_the_logits_of_its_nf4_weights(apply_qlora, NF4Linear, QLoRALinear, nf4_works):
    nf4_works()
    model = tiny_llama()
    full = copy.deepcopy(model)
    nf4 = copy.deepcopy(model)  # the grader's own NF4 model: each weight replaced by its NF4 dequantization
    with torch.no_grad():
        for name, linear in nf4.named_modules():
            if isinstance(linear, nn.Linear) and name != "lm_head":
                linear.weight.copy_(
                    ref.dequantize(*ref.quantize(linear.weight), tuple(linear.weight.shape), torch.float32)
                )
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(5))
    full_logits, nf4_logits = logits(full, ids, grader_owned=True), logits(nf4, ids, grader_owned=True)
    apply_qlora(model, r=4, alpha=8.0)
    measured = logits(model, ids)
    nf4_error = max_difference(nf4_logits, full_logits)
    bound = 1.5 * nf4_error + 1e-4
    error = max_difference(measured, full_logits)
    assert error <= bound, (
        f"the quantized Llama's logits are {error:.3g} off the full-precision model's, expected at most {bound:.3g} "
        f"(1.5 x the {nf4_error:.3g} that NF4's rounding alone moves them): is each weight's NF4 dequantized right?"
    )
    for name, layer in quantized_layers(model, NF4Linear, QLoRALinear).items():
        linear = nf4.get_submodule(name)
        with torch.no_grad():
            linear.weight.copy_(dequantized(layer, linear.out_features, linear.in_features, name))
    error = max_difference(measured, logits(nf4, ids, grader_owned=True))
    assert error <= 1e-4 * (1 + full_logits.abs().max().item()), (
        f"the quantized Llama's logits are {error:.3g} off those of the same Llama with each weight replaced by the "
        "dequantized NF4 buffers of its layer: every layer must compute F.linear(x, W_nf4, b) (adapters at init)"
    )


def peft_over_bitsandbytes(base: nn.Linear, r: int, alpha: float) -> nn.Module:
    """peft's LoRA (r, alpha, no dropout) over a bitsandbytes Linear4bit holding ``base``'s weight in NF4,
    blocks of 64 and float32 absmaxes (no double quantization)."""
    bnb, peft = BITSANDBYTES, PEFT
    if bnb is None or peft is None:
        pytest.skip(PEFT_MISSING)
    dtype = base.weight.dtype

    class Holder(nn.Module):
        is_loaded_in_4bit = True  # what peft reads to dispatch its bitsandbytes LoRA layer

        def __init__(self) -> None:
            super().__init__()
            self.q = bnb.nn.Linear4bit(
                base.in_features, base.out_features, bias=base.bias is not None, compute_dtype=dtype, quant_type="nf4"
            )
            # On a CPU with AVX512-bf16, bitsandbytes repacks the weight and its absmax in place at the first eval
            # forward, for its own kernel: keep the layout quantize_4bit gives, the same on every machine.
            self.q.support_avx512bf16_for_cpu = False
            self.q.weight = bnb.nn.Params4bit(
                base.weight.detach().clone(),
                requires_grad=False,
                quant_type="nf4",
                blocksize=BLOCK,
                compress_statistics=False,
            )
            if base.bias is not None:
                self.q.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.q(x)

    with ref.library_side_effects_undone():
        try:
            holder = Holder().to("cpu")  # quantizes the weight
            config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["q"], lora_dropout=0.0)
            model = peft.get_peft_model(holder, config)
            model.eval()(torch.zeros(1, base.in_features, dtype=dtype))
        except Exception as error:  # the oracle itself does not run on this machine
            pytest.skip(f"bitsandbytes' Linear4bit under peft does not run here ({type(error).__name__}: {error})")
    return model


@pytest.mark.points(3)
def test_qlora_agrees_with_peft_over_bitsandbytes_linear4bit(QLoRALinear, nf4_works):
    nf4_works()
    in_features, out_features, r = 128, 192, 4  # multiples of 64, as bitsandbytes' kernels want
    base = make_base(in_features, out_features, torch.bfloat16)
    theirs = peft_over_bitsandbytes(base, r, 8.0)
    layer = QLoRALinear(base, r=r, alpha=8.0)
    randomize_factors(layer, std=0.3)
    found = factors(layer, in_features, out_features, r)
    linear4bit = theirs.base_model.model.q
    packed, absmax = nf4_buffers(layer, out_features, in_features, "QLoRALinear")
    expect_same_codes(
        packed,
        absmax,
        linear4bit.base_layer.weight.data,
        linear4bit.base_layer.weight.quant_state.absmax,
        base.weight,
        BLOCK,
        "QLoRALinear's buffers",
        "bitsandbytes' Linear4bit",
    )
    with torch.no_grad():
        linear4bit.lora_A["default"].weight.copy_(found.A)
        linear4bit.lora_B["default"].weight.copy_(found.B)
    theirs.eval()
    layer.eval()
    x = torch.randn(7, in_features).to(torch.bfloat16)
    with torch.no_grad():
        with ref.library_side_effects_undone():
            expected = theirs(x)
        measured = output(layer, x)
    weight = ref.dequantize(packed, absmax, (out_features, in_features), torch.float64)
    size = x.double().abs() @ weight.abs().T + base.bias.double().abs()
    size += 2.0 * (x.double().abs() @ found.A.double().abs().T) @ found.B.double().abs().T
    bound = 2.0**-6 * size  # a few bfloat16 roundings of the terms
    off = (measured.double() - expected.double()).abs()
    worst = int((off / bound).argmax())
    assert measured.dtype == torch.bfloat16 and bool((off <= bound).all()), (
        f"with its factors copied into peft's LoRA over bitsandbytes' Linear4bit (same NF4 weight, bf16), the layer's "
        f"output ({describe(measured)}) is off theirs by {off.view(-1)[worst].item():.3g} where bf16 rounding allows "
        f"{bound.view(-1)[worst].item():.3g}: base(x) + (alpha / r) (x A^T) B^T"
    )
