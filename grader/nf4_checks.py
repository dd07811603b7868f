"""Comparisons of NF4 results with the expected ones, shared by the `nf4` and `qlora` checks: each failure is one
line naming the first broken premise (a count of blocks, an absmax, swapped nibbles, a rounding rule)."""

from __future__ import annotations

import math

import pytest
import torch

from grader import nf4_reference as ref
from grader.probes import describe, expect_instance

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
EPS32 = torch.finfo(torch.float32).eps
NEAR_MIDPOINT = 1e-6  # a scaled value this close to a midpoint may take either code (float32 rounding)


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
    except (RuntimeError, NotImplementedError):  # no storage of its own (a sparse or wrapper tensor)
        return ("tensor", id(tensor)), tensor.numel() * tensor.element_size()


def state_of(tensor: torch.Tensor) -> tuple[torch.Tensor, bool, int]:
    """What a function that leaves ``tensor`` alone keeps as it was: its values, requires_grad, its version counter
    (which any in-place write bumps, even one that writes the same values back)."""
    return tensor.detach().clone(), tensor.requires_grad, tensor._version


def expect_left_alone(tensor: torch.Tensor, before: tuple[torch.Tensor, bool, int], what: str) -> None:
    """Fail the check unless ``tensor`` still has the values, requires_grad and version ``state_of`` saw."""
    values, requires_grad, version = before
    assert torch.equal(tensor.detach(), values), f"{what} changed the values of the tensor it was given: work on a copy"
    assert tensor.requires_grad == requires_grad, (
        f"{what} turned requires_grad of the tensor it was given from {requires_grad} to {tensor.requires_grad} "
        "(requires_grad_(False) on the caller's Parameter freezes it for training): work on tensor.detach()"
    )
    assert tensor._version == version, (
        f"{what} wrote into the tensor it was given in place (its version went from {version} to "
        f"{tensor._version}): work on a copy"
    )


def swap_nibbles(packed):
    return ((packed.reshape(-1) & 0xF) << 4) | (packed.reshape(-1) >> 4)


def expect_same_codes(packed, absmax, expected_packed, expected_absmax, weight, block_size, call, source):
    """Fail the check unless ``packed`` and ``absmax`` equal the expected ones, up to the freedom the spec
    leaves: codes of values within float32 rounding of a midpoint, and a tiny absmax for an all-zero block."""
    expect_sizes(packed, absmax, weight, block_size, call)
    n = weight.numel()
    flat = weight.detach().reshape(-1).double()
    zero_blocks = ref.absmax_per_block(flat, block_size) == 0
    wrong = ~zero_blocks & (absmax != expected_absmax)
    if wrong.any():
        block = int(wrong.nonzero()[0])
        values = flat[block * block_size : (block + 1) * block_size]
        cause = "each block's absmax is max |x| over its values, in float32"
        if math.isclose(absmax[block].item(), values.max().item(), rel_tol=1e-7):
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
    scale = expected_absmax.double().clamp(min=1e-38).repeat_interleave(block_size)[:n]
    scaled = (flat / scale).clamp(-1, 1)
    midpoints = (ref.CODE_BOOK.double()[measured[:n]] + ref.CODE_BOOK.double()[expected[:n]]) / 2
    free = ((measured[:n] - expected[:n]).abs() == 1) & ((scaled - midpoints).abs() <= NEAR_MIDPOINT)
    differ = (measured[:n] != expected[:n]) & ~free
    if not differ.any():
        return
    first = int(differ.nonzero()[0])
    cause = "replace each scaled value x / absmax by the index of the nearest code, cutting at the midpoints"
    if torch.equal(swap_nibbles(packed), expected_packed.reshape(-1)):
        cause = "nibbles swapped: element 2i goes in the high nibble, 2i + 1 in the low one"
    elif (measured[:n] == floor_codes(scaled)).double().mean() > 0.99:
        cause = "rounded down (truncation, floor or searchsorted on the codes): " + cause
    elif (measured[:n] == toward_zero_codes(scaled)).double().mean() > 0.99:
        cause = "rounded towards zero: " + cause
    elif (measured[:n] == 15 - expected[:n]).float().mean() > 0.9:
        cause = "the code book runs from -1 to 1 ascending: index 0 is -1.0, 15 is 1.0"
    pytest.fail(
        f"{call}: {int(differ.sum())} of {n} codes differ from {source}, first at flat index {first}: x = "
        f"{flat[first].item():.6g}, x / absmax = {scaled[first].item():.6g}, expected code {int(expected[first])} "
        f"({ref.CODE_BOOK[expected[first]].item():.4f}), measured {int(measured[first])}: {cause}",
        pytrace=False,
    )
