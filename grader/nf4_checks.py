"""Comparisons of NF4 results with the expected ones, shared by the `nf4` and `qlora` checks: each failure is one
line naming the first broken premise (a count of blocks, an absmax, swapped nibbles, a rounding rule)."""

from __future__ import annotations

import math

import pytest
import torch

from grader import nf4_reference as ref
from grader.probes import describe, expect_instance, held_items, python_bytes

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
EPS32 = torch.finfo(torch.float32).eps
TINY32 = torch.finfo(torch.float32).tiny  # the smallest normal float32, 1.18e-38: below it, subnormals
CLAMP = torch.tensor(1e-38).item()  # bitsandbytes' clamp of the divisor, as a float32 (9.99999935e-39)
# A scaled value within this many float32 eps of a midpoint, relative to it, may take either code: float32 rounding
# (x / absmax against x * (1 / absmax), the midpoint's own rounding) moves it by at most a few ulps; a midpoint typed
# in with 6 decimals is off by up to 5e-7 absolute, hundreds of ulps near 0.04, and is not free.
NEAR_MIDPOINT_EPS = 4


def result_pair(returned, call):
    """(packed, absmax) from what quantize_nf4 returned, after failing the check unless it is two tensors."""
    pair = expect_instance(returned, tuple, call, "a tuple (packed, absmax)")
    assert len(pair) == 2, f"{call} returned a tuple of {len(pair)} items, expected (packed, absmax)"
    packed = expect_instance(pair[0], torch.Tensor, call + "[0]", "the packed codes, a uint8 tensor")
    absmax = expect_instance(pair[1], torch.Tensor, call + "[1]", "the absmax, a float32 tensor")
    return packed, absmax


def call_of(weight, block_size):
    return f"quantize_nf4(a {weight.dtype} tensor of shape {tuple(weight.shape)}, block_size={block_size})"


def expect_sizes(packed, absmax, weight, block_size, call):
    n = weight.numel()
    rows = n // weight.shape[-1] if weight.dim() > 1 else 1
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n / 2), (
        f"{call}: packed is {describe(packed)}, expected uint8 with ceil(n / 2) = {math.ceil(n / 2)} bytes: "
        "two 4-bit codes a byte"
    )
    assert packed.dim() == 1 or (packed.dim() == 2 and packed.shape[1] == 1), (
        f"{call}: packed has shape {tuple(packed.shape)}, expected ({math.ceil(n / 2)},) (or bitsandbytes' column)"
    )
    blocks = math.ceil(n / block_size)
    if absmax.numel() != blocks:
        cause = "one absmax per block of block_size consecutive values of the flattened tensor"
        row_blocks = rows * math.ceil(weight.shape[-1] / block_size) if weight.dim() else 1
        if absmax.numel() == rows and rows != blocks:
            either = " (or blocks cut within each row)" if row_blocks == rows else ""
            cause = f"one absmax per row{either}? " + cause
        elif weight.dim() > 1 and absmax.numel() == row_blocks:
            cause = "blocks cut within each row? " + cause
        pytest.fail(
            f"{call}: {absmax.numel()} absmax values, expected ceil(n / block_size) = {blocks}: {cause}", pytrace=False
        )
    assert absmax.dtype == torch.float32 and absmax.dim() == 1, (
        f"{call}: absmax is {describe(absmax)}, expected float32 of shape ({blocks},): keep the absmax in float32 "
        "whatever the weight's dtype"
    )


def floor_codes(scaled):
    """The index of the largest code at or below each scaled value: rounding down instead of to the nearest."""
    return (torch.bucketize(scaled, ref.CODE_BOOK.double(), right=True) - 1).clamp(0, 15)


def toward_zero_codes(scaled):
    """The code nearest to zero of the two around each scaled value."""
    down, up = floor_codes(scaled), (floor_codes(scaled) + 1).clamp(max=15)
    at_code = ref.CODE_BOOK.double()[down] == scaled
    return torch.where((scaled >= 0) | at_code, down, up)


def storage_bytes(tensor: torch.Tensor) -> tuple[tuple[object, int], int]:
    """(a key naming the tensor's memory, the bytes of that memory): a view keeps its whole storage alive."""
    try:
        storage = tensor.untyped_storage()
        return (tensor.device, storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # no storage of its own (a wrapper tensor)
        return ("tensor", id(tensor)), tensor.numel() * tensor.element_size()


def layout_parts(tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The strided tensors a tensor of any layout keeps: itself, or a sparse one's indices and values."""
    if tensor.layout == torch.strided:
        return [("", tensor)]
    if tensor.layout == torch.sparse_coo:
        return [("._indices()", tensor._indices()), ("._values()", tensor._values())]
    if tensor.layout in (torch.sparse_csr, torch.sparse_bsr):
        return [(".crow_indices()", tensor.crow_indices()), (".col_indices()", tensor.col_indices()),
                (".values()", tensor.values())]  # fmt: skip
    if tensor.layout in (torch.sparse_csc, torch.sparse_bsc):
        return [(".ccol_indices()", tensor.ccol_indices()), (".row_indices()", tensor.row_indices()),
                (".values()", tensor.values())]  # fmt: skip
    return [("", tensor)]


def reachable_bytes(value: object, name: str, memory: dict, parts: dict, seen: set, call: str) -> int:
    """Bytes of numbers (4 each, an int's digits past 30 bits too) under ``value``; each tensor memory reachable from
    it (a sparse tensor's indices and values, a tensor's attributes and .grad, a number subclass's attributes, lists,
    tuples, sets, dicts' keys and values) goes into ``memory`` once, its bytes into ``parts`` under the path that
    reached it."""
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, bool) or value is None:
        return 4 if isinstance(value, bool) else 0
    if isinstance(value, (int, float)):
        digits = max(python_bytes(value) - 4, 0) if isinstance(value, int) else 0  # a number of 4 bytes, but a big int
        if digits:
            parts[name] = parts.get(name, 0) + 4 + digits
        return (
            4
            + digits
            + sum(  # a subclass's attributes (vars, __slots__) stay alive with it
                reachable_bytes(held, f"{name}.{attribute}", memory, parts, seen, call)
                for attribute, held in number_attributes(value)
            )
        )
    if isinstance(value, torch.Tensor):
        for suffix, part in layout_parts(value):
            key, size = storage_bytes(part)
            if key not in memory:
                memory[key] = size
                parts[name + suffix] = parts.get(name + suffix, 0) + size
        total = 0
        for attribute, held in vars(value).items():  # a tensor attribute hung on a tensor stays alive with it
            total += reachable_bytes(held, f"{name}.{attribute}", memory, parts, seen, call)
        if value.grad is not None:
            total += reachable_bytes(value.grad, name + ".grad", memory, parts, seen, call)
        return total
    if isinstance(value, (list, tuple, set, frozenset, dict)):  # a dict's keys too (held_items)
        items = held_items(value)
        if numbers := sum(isinstance(v, (int, float)) for _, v in items):
            parts[f"{name} ({numbers} numbers)"] = 4 * numbers
        return sum(reachable_bytes(v, name + step, memory, parts, seen, call) for step, v in items)
    pytest.fail(f"{call}.{name} is {describe(value)}: a QuantizedAbsmax holds tensors and numbers only", pytrace=False)


def number_attributes(value: int | float) -> list[tuple[str, object]]:
    """(name, value) of what an instance of a subclass of int or float holds besides its number: its __dict__ and
    its __slots__; nothing for a plain int or float."""
    held = list(vars(value).items()) if hasattr(value, "__dict__") else []
    for cls in type(value).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(value, slot):
                held.append((slot, getattr(value, slot)))
    return held


def state_of(tensor: torch.Tensor) -> tuple[torch.Tensor, bool, int]:
    """What a function that leaves ``tensor`` alone keeps as it was: its values, requires_grad, its version counter
    (which any in-place write bumps, even one that writes the same values back)."""
    return tensor.detach().clone(), tensor.requires_grad, tensor._version


def expect_left_alone(tensor: torch.Tensor, before: tuple[torch.Tensor, bool, int], what: str) -> None:
    """Fail the check unless ``tensor`` still has the values, requires_grad and version ``state_of`` saw."""
    values, requires_grad, version = before
    assert torch.equal(tensor.detach(), values), (
        f"{what} changed the values of the tensor it was given ({describe(tensor)}): work on a copy, never write "
        "results back into an input"
    )
    assert tensor.requires_grad == requires_grad, (
        f"{what} turned requires_grad of the tensor it was given from {requires_grad} to {tensor.requires_grad} "
        "(requires_grad_(False) on the caller's Parameter freezes it for training): work on tensor.detach()"
    )
    assert tensor._version == version, (
        f"{what} wrote into the tensor it was given in place (its version went from {version} to "
        f"{tensor._version}): work on a copy"
    )


def called(function, *args, what: str):
    """``function(*args)``, after failing the check if it changed any tensor it was given (values, requires_grad,
    in-place writes): every tensor argument is snapshot before the call and compared after, so that no expectation
    is ever computed from an input the answer rewrote."""
    before = [(arg, state_of(arg)) for arg in args if isinstance(arg, torch.Tensor)]
    returned = function(*args)
    for tensor, state in before:
        expect_left_alone(tensor, state, what)
    return returned


TINY_EDIT = 2.0**-12  # below half a float32 ulp of the values near 1e4 (2^-11): a float32 sum over them misses it
BESIDE_A_MIDPOINT = (3, 64 + 3, 128 + 3)  # flat elements, one in each of the blocks of absmax 1000


def weight_beside_midpoints() -> torch.Tensor:
    """A (5, 64) float32 weight whose blocks 0 to 2 have absmax 1000 and blocks 3, 4 values near 1e4, every value a
    multiple of 2^-14 (float64 sums of it exact in any order). The flat elements BESIDE_A_MIDPOINT lie TINY_EDIT / 2
    (to within 2^-15) below 1000 x the midpoint of codes 7 and 8: moved up by TINY_EDIT each takes code 8, and scaled
    each stays over 20 float32 ulps from the midpoint, clear of rounding's freedom."""
    generator = torch.Generator().manual_seed(18)
    weight = (torch.rand(5, 64, generator=generator) * 2 - 1) * 900
    weight[3:] = weight[3:].sign() * (9000 + 1000 * torch.rand(2, 64, generator=generator))
    weight = weight.mul(2**14).round().div(2**14)
    weight[:3, 5] = 1000.0
    below = round((ref.MIDPOINTS[7].item() * 1000 - TINY_EDIT / 2) * 2**14) / 2**14
    weight.view(-1)[list(BESIDE_A_MIDPOINT)] = below
    return weight


def expected_values_between(packed, absmax, start, stop, block_size, dtype):
    """The reference's dequantization of flat elements ``start`` to ``stop`` - 1 (``start`` even) alone, read from the
    packed bytes and absmax directly: code value times its block's absmax in float32, rounded once to ``dtype``."""
    codes = unpack_between(packed, start, stop)
    blocks = torch.arange(start, stop, device=absmax.device) // block_size
    return (ref.CODE_BOOK.to(absmax.device)[codes] * absmax.reshape(-1).float()[blocks]).to(dtype)


def unpack_between(packed, start, stop):
    """The codes of flat elements ``start`` to ``stop`` - 1 (``start`` even) of packed bytes, without the others."""
    return ref.unpack(packed.reshape(-1)[start // 2 : math.ceil(stop / 2)], stop - start)


def wrong_divisor(measured, flat, block, block_size, absmax):
    """The wrong divisor most of a subnormal or tiny block's measured codes come from ("divided by the subnormal
    absmax itself? "), or "" where neither the absmax itself nor float32's smallest normal explains them."""
    values, taken = flat[block * block_size : (block + 1) * block_size], measured[block * block_size :][:block_size]
    candidates = {f"float32's tiny {TINY32:.4g} (a clamp at finfo(float32).tiny)": TINY32}
    if absmax < CLAMP:
        candidates = {"the subnormal absmax itself": absmax, **candidates}
    for name, divisor in candidates.items():
        codes = torch.bucketize((values / divisor).clamp(-1, 1), ref.MIDPOINTS.double())
        if (codes == taken).double().mean() > 0.9:
            return f"divided by {name}? "
    return ""


def swap_nibbles(packed):
    return ((packed.reshape(-1) & 0xF) << 4) | (packed.reshape(-1) >> 4)


def expect_same_codes(packed, absmax, expected_packed, expected_absmax, weight, block_size, call, source):
    """Fail the check unless ``packed`` and ``absmax`` equal the expected ones, up to the freedom the spec
    leaves: codes of values within float32 rounding of a midpoint, and a tiny absmax for an all-zero block."""
    expect_sizes(packed, absmax, weight, block_size, call)
    n = weight.numel()
    flat = weight.detach().reshape(-1).double()
    true_absmax = ref.absmax_per_block(flat, block_size).float()
    zero_blocks = true_absmax == 0
    # bitsandbytes (0.50.2, CPU) stores a short last block's absmax below 1e-38 clamped to 1e-38, its full blocks'
    # unclamped: there either is taken, max |x| or 1e-38, whichever the expected one is.
    short_last = torch.zeros_like(zero_blocks)
    short_last[-1] = n % block_size != 0 and true_absmax[-1].item() < CLAMP
    either = short_last & ((absmax == true_absmax) | (absmax == CLAMP))
    wrong = ~zero_blocks & ~either & (absmax != expected_absmax)
    if wrong.any():
        block = int(wrong.nonzero()[0])
        values = flat[block * block_size : (block + 1) * block_size]
        cause = "each block's absmax is max |x| over its values, in float32"
        if absmax[block].item() == CLAMP and expected_absmax[block].item() < CLAMP:
            cause = (
                "the 1e-38 clamp stored? clamp only the divisor at 1e-38 and store max |x| unclamped (bitsandbytes "
                "stores the clamp for a short last block only, where either is taken)"
            )
        elif math.isclose(absmax[block].item(), values.max().item(), rel_tol=1e-7):
            cause = "max x, not max |x|: " + cause
        elif absmax[block].item() == torch.tensor(expected_absmax[block].item()).to(weight.dtype).item() != 0:
            cause = f"rounded to {weight.dtype}? " + cause
        pytest.fail(
            f"{call}: absmax of block {block} is {absmax[block].item():.9g}, expected "
            f"{expected_absmax[block].item():.9g} ({int(wrong.sum())} of {len(wrong)} blocks differ from {source}): "
            f"{cause}",
            pytrace=False,
        )
    tiny = zero_blocks & ((absmax < 0) | (absmax > EPS32))
    assert not tiny.any(), (
        f"{call}: an all-zero block's absmax is {absmax[tiny][0].item():.3g}, expected 0 (or a clamp below "
        f"float32's eps {EPS32:.3g})"
    )
    measured = ref.unpack(packed, n + n % 2)
    expected = ref.unpack(expected_packed, n + n % 2)
    if n % 2 and torch.equal(measured[:n], expected[:n]) and measured[n] != expected[n]:
        pytest.fail(
            f"{call}: n = {n} is odd and the last byte's low nibble is {int(measured[n])}, expected "
            f"{int(expected[n])}: pad an odd count with the code of 0.0 (7), as bitsandbytes does",
            pytrace=False,
        )
    scale = expected_absmax.double().clamp(min=CLAMP).repeat_interleave(block_size)[:n]
    scaled = (flat / scale).clamp(-1, 1)
    midpoints = (ref.CODE_BOOK.double()[measured[:n]] + ref.CODE_BOOK.double()[expected[:n]]) / 2
    near = (scaled - midpoints).abs() <= NEAR_MIDPOINT_EPS * EPS32 * midpoints.abs()
    free = ((measured[:n] - expected[:n]).abs() == 1) & near
    differ = (measured[:n] != expected[:n]) & ~free
    if not differ.any():
        return
    first = int(differ.nonzero()[0])
    divided_by = "1e-38" if expected_absmax[first // block_size].item() < CLAMP else "absmax"
    cause = "replace each scaled value x / absmax by the index of the nearest code, cutting at the midpoints"
    if torch.equal(swap_nibbles(packed), expected_packed.reshape(-1)):
        cause = "nibbles swapped: element 2i goes in the high nibble, 2i + 1 in the low one"
    elif (measured[:n] == floor_codes(scaled)).double().mean() > 0.99:
        cause = "rounded down (truncation, floor or searchsorted on the codes): " + cause
    elif (measured[:n] == toward_zero_codes(scaled)).double().mean() > 0.99:
        cause = "rounded towards zero: " + cause
    elif (measured[:n] == 15 - expected[:n]).float().mean() > 0.9:
        cause = "the code book runs from -1 to 1 ascending: index 0 is -1.0, 15 is 1.0"
    elif 0 < true_absmax[first // block_size].item() < TINY32:
        block = first // block_size
        divisor = wrong_divisor(measured[:n], flat, block, block_size, true_absmax[block].item())
        if true_absmax[block].item() < CLAMP:
            cause = (
                f"its block's absmax {true_absmax[block].item():.4g} is below 1e-38 (a float32 subnormal): {divisor}"
                "divide by 1e-38 instead, as bitsandbytes clamps the divisor"
            )
        else:
            cause = (
                f"its block's absmax {true_absmax[block].item():.4g} is at or above 1e-38 though below float32's "
                f"smallest normal {TINY32:.4g}: {divisor}divide by it as it is: only an absmax below 1e-38 is clamped, "
                "to 1e-38 as bitsandbytes, not at float32's tiny"
            )
    elif 0 < true_absmax[first // block_size].item() < 1e-6:
        cause = (
            f"its block's absmax is {true_absmax[first // block_size].item():.3g}: divide by it as it is (a clamp "
            "of the divisor above bitsandbytes' 1e-38, float32's tiny 1.18e-38, eps or F.normalize's 1e-12 changes "
            "tiny blocks' codes)"
        )
    pytest.fail(
        f"{call}: {int(differ.sum())} of {n} codes differ from {source}, first at flat index {first}: x = "
        f"{flat[first].item():.6g}, x / {divided_by} = {scaled[first].item():.6g}, expected code "
        f"{int(expected[first])} ({ref.CODE_BOOK[expected[first]].item():.4f}), measured {int(measured[first])}: "
        f"{cause}",
        pytrace=False,
    )
