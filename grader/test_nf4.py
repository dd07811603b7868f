"""Checks of the `nf4` kata: the NF4 code book, quantize_nf4 / dequantize_nf4 bit for bit as bitsandbytes packs,
and QLoRA's double quantization of the absmaxes."""

from __future__ import annotations

import itertools
import math
from functools import partial

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from grader import nf4_reference as ref
from grader.nf4_checks import (
    BESIDE_A_MIDPOINT,
    CLAMP,
    DTYPES,
    EPS32,
    TINY32,
    TINY_EDIT,
    call_of,
    called,
    expect_left_alone,
    expect_same_codes,
    expect_sizes,
    expected_values_between,
    reachable_bytes,
    result_pair,
    state_of,
    swap_nibbles,
    unpack_between,
    weight_beside_midpoints,
)
from grader.oracles import optional
from grader.probes import (
    DEVICES,
    default_dtype,
    describe,
    dtype_name,
    expect_instance,
    expect_on_the_base_device,
    expect_value_error,
    made_under_a_foreign_default_device,
    swap_extremes_through_data,
)
from grader.signatures import expect_the_stubs_signatures


@pytest.mark.points(1)
def test_takes_the_stubs_parameters(implementation, nf4_code_book):
    """Callers pass the stub's parameters by name or by position: each definition takes them as the stub does."""
    expect_the_stubs_signatures(implementation, "nf4")
    # Then a call into the kata: an unimplemented stub, its signatures right, scores nothing here. It is the first
    # call of the grading, made under a float64 default dtype: what is derived once then is what later calls see.
    with default_dtype(torch.float64):
        nf4_code_book()


SUBJECT = "quantize_nf4"  # the definition a failing check points at
BITSANDBYTES = optional("bitsandbytes.functional")  # seconds: never inside a check's time limit

shapes = st.lists(st.integers(1, 80), min_size=0, max_size=3).map(tuple)  # () too: a 0-d tensor holds one value
block_sizes = st.sampled_from((32, 64, 128, 256))
dtypes = st.sampled_from(DTYPES)
# Down to float32 subnormals: blocks whose absmax is below float32's eps, below F.normalize's 1e-12 and far below (a
# divisor clamped anywhere above bitsandbytes' 1e-38 changes their codes), fp16 subnormals and fp16 underflow to zero;
# at 3e-39 block absmaxes straddle 1e-38 and float32's tiny 1.18e-38, at 3e-41 they are all subnormal below 1e-38
# (divided by 1e-38, stored as they are).
scales = st.sampled_from((3e-41, 3e-39, 1e-30, 1e-20, 1e-12, 1e-8, 1e-6, 1e-3, 0.02, 1.0, 37.0))
seeds = st.integers(0, 2**16)
# What bitsandbytes refuses: below 32, above 4096, and multiples of 32 (or 16) that are not powers of two.
REFUSED_BLOCK_SIZES = (0, -64, 8, 16, 48, 96, 100, 160, 192, 384, 3072, 4095, 8192)
# Tensors that are not floating point: every integer width, bool, complex.
NOT_FLOATS = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64)


def draw_weight(shape, dtype, scale, seed):
    """Gaussian weights (the distribution NF4 is made for) with a few planted zeros and outliers."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator) * scale
    flat = weight.view(-1)
    planted = torch.randint(0, flat.numel(), (max(1, flat.numel() // 16),), generator=generator)
    flat[planted[0::2]] = 0.0
    flat[planted[1::2]] *= 4.0
    return weight.to(dtype)


@pytest.mark.points(3)
@pytest.mark.subject("nf4_code_book")
def test_code_book_is_the_16_nf4_values_bit_for_bit(nf4_code_book):
    with default_dtype(torch.float64):  # first (a table derived once keeps the default dtype of the first call)
        under_float64 = nf4_code_book()
    code = expect_instance(nf4_code_book(), torch.Tensor, "nf4_code_book()", "a float32 tensor of 16 values")
    assert code.dtype == torch.float32 and tuple(code.shape) == (16,), (
        f"nf4_code_book() returned {describe(code)}, expected float32 of shape (16,)"
        + (
            ", the dtype of a first call under torch.set_default_dtype(torch.float64): a table derived once keeps the "
            "default dtype of its first call; name float32 in linspace and zeros"
            if isinstance(under_float64, torch.Tensor) and under_float64.dtype == code.dtype == torch.float64
            else ""
        )
    )
    assert bool((code[1:] > code[:-1]).all()), f"the code book is not ascending: {code.tolist()}: sort it"
    assert code[7].item() == 0.0 and code[0].item() == -1.0 and code[15].item() == 1.0, (
        f"the code book runs {code[0].item():.7g} .. {code[15].item():.7g} with {code[7].item():.7g} at index 7, "
        "expected -1.0 .. 1.0 with an exact 0.0 at index 7: 8 positive quantiles, 7 negative, 0, divided by the max"
    )
    off = (code.double() - ref.CODE_BOOK.double()).abs().max().item()
    cause = "derive it as the docstring says"
    rounded = torch.equal(code, code.double().mul(1e4).round().div(1e4).float())
    if rounded:
        cause = "typed in with 4 decimals? derive it as the docstring says"
    elif off < 1e-6:
        cause = "one float32 rounding off: compute the inverse CDF in float64 on float32 probabilities, then float32"
    elif off < 1e-3:
        cause = "close but not NF4's: is the offset 0.9677083, with 9 and 8 probabilities from linspace(offset, 0.5)?"
    assert off == 0, f"the code book differs from bitsandbytes' NF4 table by up to {off:.3g}: {cause}"
    assert isinstance(under_float64, torch.Tensor) and torch.equal(under_float64, ref.CODE_BOOK), (
        f"under torch.set_default_dtype(torch.float64) nf4_code_book() returned {describe(under_float64)}, expected "
        "bitsandbytes' float32 table: pass dtype=torch.float32 to linspace and zeros (their default follows torch's)"
    )
    first, second = nf4_code_book(), nf4_code_book()  # two results taken before a caller edits either
    first, second = (expect_instance(t, torch.Tensor, "nf4_code_book()", "a float32 tensor") for t in (first, second))
    shared = first is second or first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()
    saved = first.clone()
    with torch.no_grad():
        first.mul_(0.5)  # a caller scaling the result it was handed (to plot it, say)
    again = nf4_code_book()
    intact = (
        torch.equal(second, ref.CODE_BOOK) and isinstance(again, torch.Tensor) and torch.equal(again, ref.CODE_BOOK)
    )
    with torch.no_grad():
        first.copy_(saved)  # a cached table is put back for the checks that follow
    assert intact and not shared, (
        "after a caller scaled the tensor one nf4_code_book() call returned (code.mul_(0.5)), "
        + ("another result taken before it shares its memory" if shared else f"a result changed ({describe(second)})")
        + ": each call must return a tensor of its own (a cached table, functools.lru_cache, or one table refilled "
        "on each call, is handed out shared: return a clone), or every result held and quantize_nf4's codes change "
        "with it"
    )


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_quantize_returns_packed_uint8_bytes_and_float32_absmax(quantize_nf4, dtype):
    weight = draw_weight((6, 100), dtype, 1.0, 1)  # 600 values: 10 blocks of 64, the last one short; 2 per row
    call = call_of(weight, 64)
    packed, absmax = result_pair(called(quantize_nf4, weight, 64, what=call), call)
    expect_sizes(packed, absmax, weight, 64, call)
    assert packed.device == absmax.device == weight.device, (
        f"{call}: results on {packed.device} and {absmax.device}, expected {weight.device}"
    )


# What a caller hands quantize_nf4: a Parameter training or frozen, plain tensors of every dtype, a transposed view.
GIVEN_WEIGHTS = {
    "an nn.Parameter": lambda: nn.Parameter(draw_weight((4, 48), torch.float32, 1.0, 2)),
    "a frozen nn.Parameter": lambda: nn.Parameter(draw_weight((4, 48), torch.float32, 1.0, 2), requires_grad=False),
    **{
        f"a plain {dtype_name(dtype)} tensor": lambda dtype=dtype: draw_weight((4, 48), dtype, 1.0, 2)
        for dtype in DTYPES
    },
    "a bfloat16 nn.Parameter": lambda: nn.Parameter(draw_weight((4, 48), torch.bfloat16, 1.0, 2)),
    "a plain tensor requiring grad": lambda: draw_weight((4, 48), torch.float32, 1.0, 2).requires_grad_(),
    "a non-leaf tensor requiring grad (a Parameter times 1)": lambda: (
        nn.Parameter(draw_weight((4, 48), torch.float32, 1.0, 2)) * 1
    ),
    "a transposed float16 tensor": lambda: draw_weight((48, 4), torch.float16, 1.0, 2).T,
}


@pytest.mark.points(1)
@pytest.mark.parametrize("given", GIVEN_WEIGHTS)
def test_quantize_leaves_the_weight_alone_and_keeps_no_history(quantize_nf4, given):
    weight = GIVEN_WEIGHTS[given]()
    before = state_of(weight)
    packed, absmax = result_pair(quantize_nf4(weight, 64), call_of(weight, 64))
    expect_left_alone(weight, before, f"quantize_nf4({given})")
    assert absmax.grad_fn is None and not absmax.requires_grad and not packed.requires_grad, (
        f"quantize_nf4({given}) returned an absmax with autograd history: quantize weight.detach()"
    )
    expected_packed, expected_absmax = ref.quantize(before[0], 64)  # from the values given, not those left after
    expect_same_codes(packed, absmax, expected_packed, expected_absmax, before[0], 64, call_of(weight, 64), "NF4's")


@pytest.mark.points(1)
@pytest.mark.parametrize("device", DEVICES)
def test_quantize_and_dequantize_give_results_on_the_input_device(quantize_nf4, dequantize_nf4, device):
    """On a GPU the results are due there; on the CPU with meta as torch's default device, a tensor made without
    device= (a padding buffer, the code book) lands on meta, as on a GPU machine it would land on the CPU."""
    weight = draw_weight((6, 100), torch.float32, 1.0, 8).to(device)
    foreign = partial(made_under_a_foreign_default_device, reads_constants=True)  # reading a code book is fine
    run = (lambda make: make()) if device == "cuda" else foreign
    call = call_of(weight, 64) + f" on {device}"
    before = state_of(weight)
    returned = run(lambda: quantize_nf4(weight, 64))
    expect_left_alone(weight, before, call)
    expected_packed, expected_absmax = ref.quantize(weight.cpu(), 64)
    if returned is not None:
        packed, absmax = result_pair(returned, call)
        expect_on_the_base_device([packed, absmax], weight.device, f"{call}: the packed codes and absmax are")
        expect_same_codes(packed.cpu(), absmax.cpu(), expected_packed, expected_absmax, weight.cpu(), 64, call, "NF4's")
    packed, absmax = expected_packed.to(device), expected_absmax.to(device)
    call = f"dequantize_nf4(packed and absmax on {device}, (6, 100), torch.bfloat16)"
    restored = run(lambda: dequantize_nf4(packed, absmax, (6, 100), torch.bfloat16, 64))
    if restored is not None:
        restored = expect_instance(restored, torch.Tensor, call, "a bfloat16 tensor of shape (6, 100)")
        expect_on_the_base_device([restored], weight.device, f"{call}: the result is")
        expected = ref.dequantize(expected_packed, expected_absmax, (6, 100), torch.bfloat16, 64)
        assert restored.shape == expected.shape and torch.equal(restored.cpu(), expected), (
            f"{call} returned {describe(restored)}, not the codes times their absmax, on {device}"
        )


@pytest.mark.points(1)
def test_quantize_reads_a_non_contiguous_weight_in_row_major_order(quantize_nf4):
    weight = draw_weight((48, 20), torch.float32, 1.0, 3).T  # (20, 48), not contiguous
    call = "quantize_nf4(a transposed, non-contiguous (20, 48) tensor, block_size=32)"
    packed, absmax = result_pair(called(quantize_nf4, weight, 32, what=call), call)
    expected_packed, expected_absmax = ref.quantize(weight.contiguous(), 32)
    expect_same_codes(
        packed,
        absmax,
        expected_packed,
        expected_absmax,
        weight,
        32,
        call,
        "those of its contiguous copy: flatten with reshape(-1), in row-major order",
    )


@pytest.mark.points(5)
@given(shape=shapes, block_size=block_sizes, dtype=dtypes, scale=scales, seed=seeds)
@example(shape=(128, 96), block_size=64, dtype=torch.float32, scale=1.0, seed=0)  # rows cross block edges
@example(shape=(3, 5, 7), block_size=32, dtype=torch.bfloat16, scale=1.0, seed=1)  # odd n, a short last block
@example(shape=(7,), block_size=64, dtype=torch.float16, scale=0.02, seed=2)
@example(shape=(64,), block_size=64, dtype=torch.float32, scale=1.0, seed=3)
@example(shape=(), block_size=64, dtype=torch.float32, scale=1.0, seed=4)  # 0-d: one value, n = 1
@example(shape=(5, 13), block_size=32, dtype=torch.float32, scale=1e-8, seed=5)  # absmaxes below float32's eps
@example(shape=(5, 13), block_size=32, dtype=torch.float16, scale=1e-6, seed=6)  # float16 subnormals
@example(shape=(5, 13), block_size=32, dtype=torch.float32, scale=1e-12, seed=7)  # around F.normalize's eps
@example(shape=(5, 13), block_size=32, dtype=torch.float32, scale=1e-20, seed=8)
@example(shape=(5, 13), block_size=32, dtype=torch.float32, scale=1e-30, seed=9)  # above the 1e-38 clamp only
@example(shape=(9, 11), block_size=64, dtype=torch.bfloat16, scale=1e-30, seed=10)
@example(shape=(5, 13), block_size=32, dtype=torch.float32, scale=3e-39, seed=11)  # around 1e-38 and float32's tiny
@example(shape=(9, 11), block_size=32, dtype=torch.bfloat16, scale=3e-41, seed=12)  # subnormal: divided by 1e-38
@example(shape=(2**20 + 77,), block_size=64, dtype=torch.float32, scale=0.02, seed=13)  # past 2^20, no round number
def test_quantize_packs_the_nf4_codes_bit_for_bit(quantize_nf4, shape, block_size, dtype, scale, seed):
    weight = draw_weight(shape, dtype, scale, seed)
    call = call_of(weight, block_size)
    packed, absmax = result_pair(called(quantize_nf4, weight, block_size, what=call), call)
    expected_packed, expected_absmax = ref.quantize(weight, block_size)
    expect_same_codes(packed, absmax, expected_packed, expected_absmax, weight, block_size, call, "NF4's")


# Distances from each midpoint, in float32 eps relative to it: from twice the freedom float32 rounding leaves there
# (NEAR_MIDPOINT_EPS) up to 1e-3, both sides; a midpoint typed in with 6 decimals is off by hundreds near 0.04.
MIDPOINT_LADDER = tuple(sign * 2.0**k for k in range(3, 14) for sign in (-1, 1))


@pytest.mark.points(1)
@pytest.mark.parametrize("block_absmax", [1.0, 0.37, 3.0])
def test_values_a_few_ulps_from_a_midpoint_take_the_nearest_code(quantize_nf4, block_absmax):
    """Every midpoint between neighbouring codes, approached from both sides: the cut is at (code[i] + code[i+1]) / 2
    to float32 rounding, not at midpoints typed in or rounded to some decimals."""
    midpoints = ref.MIDPOINTS.double()
    ladder = (midpoints[:, None] * (1 + torch.tensor(MIDPOINT_LADDER).double() * EPS32)).reshape(-1)
    values = torch.cat([torch.ones(1, dtype=torch.float64), ladder]) * block_absmax  # one block, its absmax planted
    weight = values.float().reshape(1, -1)
    block_size = 512
    call = f"quantize_nf4({weight.numel()} values a few ulps to 1e-3 from each midpoint, block absmax {block_absmax})"
    packed, absmax = result_pair(called(quantize_nf4, weight, block_size, what=call), call)
    expected_packed, expected_absmax = ref.quantize(weight, block_size)
    source = "the nearest code's (cut at (code[i] + code[i+1]) / 2 in float32, not at midpoints typed in or rounded)"
    expect_same_codes(packed, absmax, expected_packed, expected_absmax, weight, block_size, call, source)


@pytest.mark.points(3)
@pytest.mark.skipif(BITSANDBYTES is None, reason=ref.BITSANDBYTES_MISSING)
@settings(max_examples=10)
@given(shape=shapes, block_size=block_sizes, dtype=dtypes, scale=scales, seed=seeds)
@example(shape=(128, 96), block_size=64, dtype=torch.float32, scale=1.0, seed=0)
@example(shape=(3, 5, 7), block_size=32, dtype=torch.bfloat16, scale=1.0, seed=1)
@example(shape=(5, 13), block_size=32, dtype=torch.float32, scale=3e-41, seed=13)  # a short last block, subnormal
def test_quantize_equals_bitsandbytes_quantize_4bit(quantize_nf4, shape, block_size, dtype, scale, seed):
    weight = draw_weight(shape, dtype, scale, seed)
    call = call_of(weight, block_size)
    packed, absmax = result_pair(called(quantize_nf4, weight, block_size, what=call), call)
    expected_packed, expected_absmax = ref.bitsandbytes_quantize(weight, block_size)
    expect_same_codes(
        packed, absmax, expected_packed, expected_absmax, weight, block_size, call, "bitsandbytes' quantize_4bit"
    )


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_an_all_zero_block_takes_the_code_of_zero(quantize_nf4, dequantize_nf4, dtype):
    weight = torch.randn(200).to(dtype)
    weight[64:128] = 0.0  # block 1 of 4
    weight[192:] = 0.0  # the short last block
    call = f"quantize_nf4(200 {dtype} values whose blocks 1 and 3 are all zeros)"
    packed, absmax = result_pair(called(quantize_nf4, weight, 64, what=call), call)
    expected_packed, expected_absmax = ref.quantize(weight, 64)
    expect_same_codes(packed, absmax, expected_packed, expected_absmax, weight, 64, call, "NF4's")
    restored = called(
        dequantize_nf4, packed, absmax, (200,), torch.float32, 64, what="dequantize_nf4(packed, absmax, (200,))"
    )
    assert torch.isfinite(restored).all() and torch.equal(restored[64:128], weight[64:128].float()), (
        "an all-zero block does not dequantize to zeros (NaN from 0 / 0?): clamp the absmax you divide by, "
        "not the one you store"
    )


def planted(value: float, dtype: torch.dtype) -> float:
    return torch.tensor(value, dtype=torch.float64).to(dtype).item()


# Block absmaxes around bitsandbytes' clamp of the divisor (1e-38, as float32 9.99999935e-39) and float32's smallest
# normal (finfo.tiny, 1.1754944e-38): deep subnormal, just below, at and just above 1e-38, between 1e-38 and tiny,
# tiny and its neighbours, normal ones just above; and an all-zero block.
AROUND_THE_CLAMP = (
    3e-40,
    5e-39,
    torch.nextafter(torch.tensor(CLAMP), torch.tensor(0.0)).item(),
    CLAMP,
    torch.nextafter(torch.tensor(CLAMP), torch.tensor(1.0)).item(),
    1.02e-38,
    1.1e-38,
    torch.nextafter(torch.tensor(TINY32), torch.tensor(0.0)).item(),
    TINY32,
    torch.nextafter(torch.tensor(TINY32), torch.tensor(1.0)).item(),
    1.2e-38,
    3e-38,
    0.0,
)
SHORT_LAST = 3e-40  # the absmax of a short last block of 20 values (bitsandbytes stores it clamped to 1e-38)


def weight_around_the_clamp(dtype: torch.dtype, block_size: int = 64) -> torch.Tensor:
    """One block of Gaussian values per absmax of AROUND_THE_CLAMP (rounded to ``dtype``), scaled so that its max |x|
    is that absmax exactly, then a short last block of 20 values whose absmax is SHORT_LAST."""
    generator = torch.Generator().manual_seed(17)
    blocks = []
    for size, absmax in [*((block_size, a) for a in AROUND_THE_CLAMP), (20, SHORT_LAST)]:
        values = torch.randn(size, generator=generator, dtype=torch.float64)
        values /= values.abs().max()
        values[values.abs().argmax()] = values[values.abs().argmax()].sign()  # exactly +-1
        blocks.append((values * planted(absmax, dtype)).to(dtype))  # rounded once: the max stays the planted one
    return torch.cat(blocks)


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)  # float16 holds none of them
def test_a_subnormal_or_tiny_absmax_divides_as_bitsandbytes(quantize_nf4, dtype):
    """Blocks whose absmax is a float32 subnormal (3e-40), just below, at and just above 1e-38, around float32's
    smallest normal (tiny, 1.18e-38) or just above it: the divisor is max(absmax, 1e-38) (bitsandbytes' clamp, no
    larger), the absmax stored as it is; bitsandbytes 0.50.2 stores a short last block's below 1e-38 clamped, so
    there either is taken."""
    weight = weight_around_the_clamp(dtype)
    call = (
        f"quantize_nf4({weight.numel()} {dtype} values, block_size=64, whose blocks' absmaxes run from 3e-40 to 3e-38 "
        "around 1e-38 and float32's tiny, the short last block's 3e-40)"
    )
    packed, absmax = result_pair(called(quantize_nf4, weight, 64, what=call), call)
    expected_packed, expected_absmax = ref.quantize(weight, 64)
    source = "NF4's (divided by max(absmax, 1e-38), the absmax stored as it is)"
    expect_same_codes(packed, absmax, expected_packed, expected_absmax, weight, 64, call, source)
    if BITSANDBYTES is not None:  # where it is installed, against bitsandbytes too (its short last block clamped)
        expected_packed, expected_absmax = ref.bitsandbytes_quantize(weight, 64)
        source = "bitsandbytes' quantize_4bit"
        expect_same_codes(packed, absmax, expected_packed, expected_absmax, weight, 64, call, source)


@pytest.mark.points(1)
@pytest.mark.parametrize(
    ("case", "make_weight", "block_size"),
    [
        pytest.param(case, make, size, id=case)
        for case, make, size in [
            ("empty", lambda: torch.zeros(0, 64), 64),
            ("empty (64, 0)", lambda: torch.zeros(64, 0), 64),  # len() is 64: count elements with numel()
            *((dtype_name(dtype), lambda dtype=dtype: torch.ones(128, dtype=dtype), 64) for dtype in NOT_FLOATS),
            ("a list of floats", lambda: [0.5] * 128, 64),
            *((f"block_size={size}", lambda: torch.randn(128), size) for size in REFUSED_BLOCK_SIZES),
        ]
    ],
)
def test_quantize_refuses_what_bitsandbytes_refuses(quantize_nf4, case, make_weight, block_size):
    weight = make_weight()
    call = call_of(weight, block_size) if isinstance(weight, torch.Tensor) else f"quantize_nf4({case})"
    expect_value_error(lambda: quantize_nf4(weight, block_size), f"quantize_nf4 ({case}: {call})")


@pytest.mark.points(1)
@pytest.mark.subject("dequantize_nf4")
@pytest.mark.parametrize("block_size", REFUSED_BLOCK_SIZES, ids=lambda size: f"block_size={size}")
def test_dequantize_refuses_the_block_sizes_bitsandbytes_refuses(dequantize_nf4, block_size):
    n = 8192  # as many absmax values as that block size would give: only the block size itself is wrong
    packed, absmax = torch.zeros(n // 2, dtype=torch.uint8), torch.ones(max(1, math.ceil(n / (block_size or 1))))
    expect_value_error(
        lambda: dequantize_nf4(packed, absmax, (64, 128), torch.float32, block_size),
        f"dequantize_nf4({n // 2} bytes, {absmax.numel()} absmax values, shape (64, 128), block_size={block_size}) "
        "(bitsandbytes takes powers of two from 32 to 4096 only)",
    )


def expect_taken(call, description):
    """``call()``, after failing the check if it refuses (a ValueError) what the spec accepts."""
    try:
        return call()
    except ValueError as error:
        pytest.fail(f"{description} raised ValueError ({error}); expected it taken: {TAKEN}", pytrace=False)


TAKEN = "bitsandbytes takes every power of two from 32 to 4096 (32, 64, ..., 1024, 2048, 4096), and nothing else"


@pytest.mark.points(1)
@pytest.mark.parametrize("block_size", ref.BLOCK_SIZES)
def test_every_block_size_bitsandbytes_takes_is_taken(quantize_nf4, dequantize_nf4, block_size):
    weight = draw_weight((3, 2777), torch.float32, 1.0, block_size)  # 8331 values: two blocks of 4096 and a short one
    call = call_of(weight, block_size)
    packed, absmax = result_pair(expect_taken(lambda: called(quantize_nf4, weight, block_size, what=call), call), call)
    expected_packed, expected_absmax = ref.quantize(weight, block_size)
    expect_same_codes(packed, absmax, expected_packed, expected_absmax, weight, block_size, call, "NF4's")
    call = f"dequantize_nf4(packed, absmax, (3, 2777), torch.float32, block_size={block_size})"
    restored = expect_taken(
        lambda: called(
            dequantize_nf4, expected_packed, expected_absmax, (3, 2777), torch.float32, block_size, what=call
        ),
        call,
    )
    restored = expect_instance(restored, torch.Tensor, call, "a float32 tensor of shape (3, 2777)")
    expected = ref.dequantize(expected_packed, expected_absmax, (3, 2777), torch.float32, block_size)
    assert restored.shape == expected.shape and torch.equal(restored, expected), (
        f"{call} returned {describe(restored)}, off the codes times their block's absmax by "
        f"{(restored.double() - expected.double()).abs().max().item() if restored.shape == expected.shape else 'all'}"
        f": blocks of {block_size} consecutive values"
    )


# (m,), bitsandbytes' (m, 1), (k, m / k): "any shape"; and that matrix not contiguous (stored column by column)
PACKED_LAYOUTS = ("flat", "column", "matrix", "strided")


def laid_out(packed, layout):
    """The m packed bytes as (m,), (m, 1) or a 2-D (k, m / k) with k > 1 where m has a small divisor, the same
    bytes in the same row-major order; "strided" is that matrix stored transposed (``.view`` cannot flatten it)."""
    m = packed.numel()
    if layout == "column":
        return packed.reshape(m, 1)
    if layout in ("matrix", "strided"):
        rows = next((k for k in (4, 2, 3, 5, 7) if m % k == 0 and m > k), 1)
        matrix = packed.reshape(rows, m // rows)
        return matrix.T.contiguous().T if layout == "strided" else matrix
    return packed


def random_codes(n, block_size, seed):
    """Random packed bytes for n values and a positive absmax per block (some blocks 0), as a quantizer makes."""
    generator = torch.Generator().manual_seed(seed)
    packed = torch.randint(0, 256, (math.ceil(n / 2),), generator=generator, dtype=torch.uint8)
    if n % 2:
        packed[-1] = (packed[-1] & 0xF0) | ref.ZERO_CODE
    absmax = torch.rand(math.ceil(n / block_size), generator=generator) * 3 + 0.01
    if absmax.numel() > 2:
        absmax[::5] = 0.0
        absmax[1::5] *= 4e-39  # float32 subnormals, from below 1e-38 to float32's tiny: stored as they are
    return packed, absmax


@pytest.mark.points(4)
@pytest.mark.subject("dequantize_nf4")
@given(
    shape=shapes,
    block_size=block_sizes,
    dtype=dtypes,
    seed=seeds,
    kind=st.sampled_from((tuple, list, torch.Size)),
    layout=st.sampled_from(PACKED_LAYOUTS),
)
@example(shape=(128, 96), block_size=64, dtype=torch.float32, seed=0, kind=tuple, layout="flat")
@example(shape=(128, 96), block_size=64, dtype=torch.float32, seed=0, kind=tuple, layout="matrix")
@example(shape=(3, 5, 7), block_size=32, dtype=torch.bfloat16, seed=1, kind=torch.Size, layout="column")
@example(shape=(33,), block_size=64, dtype=torch.float16, seed=2, kind=list, layout="flat")
@example(shape=(12, 20), block_size=32, dtype=torch.float32, seed=3, kind=tuple, layout="strided")
@example(shape=(), block_size=64, dtype=torch.float32, seed=4, kind=tuple, layout="flat")  # 0-d: n = prod(()) = 1
@example(shape=(), block_size=32, dtype=torch.bfloat16, seed=5, kind=torch.Size, layout="column")
def test_dequantize_gives_code_times_absmax_in_the_dtype_asked(
    dequantize_nf4, shape, block_size, dtype, seed, kind, layout
):
    n = math.prod(shape)
    packed, absmax = random_codes(n, block_size, seed)
    given_packed = laid_out(packed, layout)
    call = (
        f"dequantize_nf4(packed of shape {tuple(given_packed.shape)}, absmax, {kind(shape)!r}, {dtype}, "
        f"block_size={block_size})"
    )
    restored = expect_instance(
        called(dequantize_nf4, given_packed, absmax, kind(shape), dtype, block_size, what=call),
        torch.Tensor,
        call,
        "a tensor",
    )
    assert restored.dtype == dtype, f"{call} returned {restored.dtype}: return the dtype asked for (round once)"
    assert tuple(restored.shape) == tuple(shape), f"{call} returned shape {tuple(restored.shape)}, expected {shape}"
    expected = ref.dequantize(packed, absmax, shape, dtype, block_size)
    if torch.equal(restored, expected):
        return
    indices, blocks = ref.unpack(packed, n), torch.arange(n) // block_size
    exact = (ref.CODE_BOOK.double()[indices] * absmax.double()[blocks]).reshape(shape).to(dtype)
    if torch.equal(restored, torch.where(restored == exact, exact, expected)):
        return  # computed in float64 and rounded once: as good
    wrong = (restored != expected) & (restored != exact)
    first = tuple(int(i) for i in wrong.nonzero()[0])
    cause = "each value is nf4_code_book()[code] * absmax[block], in float32, then rounded once to dtype"
    low = (ref.CODE_BOOK.to(dtype)[indices] * absmax.to(dtype)[blocks]).reshape(shape)
    swapped = (ref.CODE_BOOK[ref.unpack(swap_nibbles(packed), n)] * absmax[blocks]).reshape(shape).to(dtype)
    per_row = None
    if len(shape) > 1 and shape[-1] % block_size:
        row_blocks = torch.arange(shape[-1]).repeat(n // shape[-1]) // block_size
        row_blocks += torch.arange(n // shape[-1]).repeat_interleave(shape[-1]) * math.ceil(shape[-1] / block_size)
        if int(row_blocks.max()) < absmax.numel():
            per_row = (ref.CODE_BOOK[indices] * absmax[row_blocks]).reshape(shape).to(dtype)
    flat = dequantize_nf4(packed, absmax, kind(shape), dtype, block_size) if layout != "flat" else None
    if isinstance(flat, torch.Tensor) and torch.equal(flat, torch.where(flat == exact, exact, expected)):
        cause = "the packed bytes read in another order when they come 2-D: read them flattened (reshape(-1))"
    elif dtype != torch.float32 and torch.equal(restored, low):
        cause = f"computed in {dtype}, rounding the codes and absmax first: " + cause
    elif torch.equal(restored, swapped):
        cause = "nibbles swapped: the high nibble holds element 2i, the low one 2i + 1"
    elif per_row is not None and torch.equal(restored, per_row):
        cause = "blocks cut within each row: blocks run over the flattened tensor"
    pytest.fail(
        f"{call}: {int(wrong.sum())} of {n} values differ, first at {first}: expected {expected[first].item():.7g}, "
        f"measured {restored[first].item():.7g}: {cause}",
        pytrace=False,
    )


# Past 2^24 values (a Llama-7B MLP weight, 4096 x 11008, holds 45M): float32 holds every integer only up to 2^24, so a
# flat index or block number computed in float32 goes wrong there. One shape ends in a short block, one in a full one.
PAST_FLOAT32_INTEGERS = ((4099, 4095), (4097, 4096))
CHECKED_AROUND = 4096  # values compared on either side of 2^24 and at each end: a full comparison doubles the cost


@pytest.mark.points(1)
@pytest.mark.subject("dequantize_nf4")
@pytest.mark.parametrize("shape", PAST_FLOAT32_INTEGERS, ids=str)
def test_dequantize_takes_a_weight_past_2_24_values(dequantize_nf4, shape):
    n, block_size = math.prod(shape), 64
    generator = torch.Generator().manual_seed(24)
    packed = torch.randint(0, 256, (math.ceil(n / 2),), generator=generator, dtype=torch.uint8)
    if n % 2:
        packed[-1] = (packed[-1] & 0xF0) | ref.ZERO_CODE
    absmax = torch.rand(math.ceil(n / block_size), generator=generator) * 3 + 0.5  # each block's differs
    call = f"dequantize_nf4(packed, absmax, {shape}) (n = 2^24 + {n - 2**24} values; a Llama-7B MLP weight has 45M)"
    cause = (
        "each element's block is its flat index // block_size in integers: float32 holds every integer only up to "
        "2^24 (a float32 arange, or an index divided in float32, rounds past it)"
    )
    try:
        restored = called(dequantize_nf4, packed, absmax, shape, torch.float32, block_size, what=call)
    except NotImplementedError:
        raise
    except (IndexError, RuntimeError) as error:
        pytest.fail(f"{call} raised {type(error).__name__} ({error}): {cause}", pytrace=False)
    restored = expect_instance(restored, torch.Tensor, call, "a float32 tensor")
    assert tuple(restored.shape) == shape and restored.dtype == torch.float32, (
        f"{call} returned {describe(restored)}, expected float32 of shape {shape}"
    )
    flat = restored.reshape(-1)
    for start, stop in (
        (0, CHECKED_AROUND),
        (2**24 - CHECKED_AROUND, 2**24 + CHECKED_AROUND),
        (n - n % 2 - CHECKED_AROUND, n),
    ):
        expected = expected_values_between(packed, absmax, start, stop, block_size, torch.float32)
        wrong = flat[start:stop] != expected
        if not wrong.any():
            continue
        first = start + int(wrong.nonzero()[0])
        code = int(unpack_between(packed, first - first % 2, first + 1)[-1])
        block = first // block_size
        taken = next(
            (f" (code x absmax of block {b}, {b - block:+d})" for b in (block + 1, block - 1) if 0 <= b < absmax.numel()
             and flat[first].item() == (ref.CODE_BOOK[code] * absmax[b]).item()),
            "",
        )  # fmt: skip
        pytest.fail(
            f"{call}: {int(wrong.sum())} of the {stop - start} values at flat indices {start} to {stop - 1} differ, "
            f"first at {first} (block {block}): expected {expected[first - start].item():.7g}, measured "
            f"{flat[first].item():.7g}{taken}: {cause}",
            pytrace=False,
        )


@pytest.mark.points(1)
@pytest.mark.subject("dequantize_nf4")
@pytest.mark.parametrize(
    ("case", "packed_bytes", "absmax_values", "shape"),
    [
        pytest.param(case, size, count, shape, id=case.replace(" ", "-"))
        for case, size, count, shape in [
            ("one byte short", 63, 2, (8, 16)),
            ("one byte over", 65, 2, (8, 16)),
            ("an absmax short", 64, 1, (8, 16)),
            ("an absmax over", 64, 3, (8, 16)),
            ("odd n, the padded byte missing", 7, 1, (3, 5)),  # 15 values need ceil(15 / 2) = 8 bytes
            ("odd n, a byte over", 9, 1, (3, 5)),
            ("a short last block, its absmax missing", 50, 1, (100,)),  # 100 values: a block of 64 and one of 36
            ("a short last block, an absmax over", 50, 3, (100,)),
            ("a short last block, 2-D", 75, 2, (10, 15)),  # 150 values: 3 blocks of 64, the last of 22
        ]
    ],
)
def test_dequantize_refuses_sizes_that_do_not_fit_the_shape(dequantize_nf4, case, packed_bytes, absmax_values, shape):
    packed, absmax = torch.zeros(packed_bytes, dtype=torch.uint8), torch.ones(absmax_values)
    expect_value_error(
        lambda: dequantize_nf4(packed, absmax, shape),
        f"dequantize_nf4({packed_bytes} bytes, {absmax_values} absmax values, shape {shape}) ({case}: "
        f"ceil(n / 2) = {math.ceil(math.prod(shape) / 2)} bytes and ceil(n / 64) = {math.ceil(math.prod(shape) / 64)} "
        "absmax values needed)",
    )


@pytest.mark.points(1)
@pytest.mark.subject("dequantize_nf4")
@pytest.mark.parametrize("shape", [(0,), (0, 64), (64, 0), (3, 0, 5)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dequantize_takes_a_shape_of_no_values(dequantize_nf4, shape, dtype):
    """A shape of n = 0 values needs ceil(0 / 2) = 0 bytes and 0 absmax values: legal (the Raises clause refuses
    sizes that do not fit the shape only), and gives an empty tensor of that shape."""
    packed, absmax = torch.zeros(0, dtype=torch.uint8), torch.zeros(0)
    call = f"dequantize_nf4(0 bytes, 0 absmax values, {shape}, {dtype})"
    try:
        restored = called(dequantize_nf4, packed, absmax, shape, dtype, 64, what=call)
    except ValueError as error:
        pytest.fail(
            f"{call} raised ValueError ({error}); expected an empty {dtype} tensor of shape {shape}: n = 0 needs "
            "0 bytes and 0 absmax values, which is what it was given",
            pytrace=False,
        )
    restored = expect_instance(restored, torch.Tensor, call, f"an empty {dtype} tensor of shape {shape}")
    assert tuple(restored.shape) == shape and restored.dtype == dtype, (
        f"{call} returned {describe(restored)}, expected an empty {dtype} tensor of shape {shape}"
    )


@pytest.mark.points(3)
@pytest.mark.subject("dequantize_nf4")
@given(shape=shapes, block_size=block_sizes, dtype=dtypes, scale=scales, seed=seeds)
@example(shape=(128, 96), block_size=64, dtype=torch.bfloat16, scale=1.0, seed=0)
@example(shape=(), block_size=64, dtype=torch.float16, scale=1.0, seed=1)
def test_round_trip_error_is_within_half_the_widest_gap(
    quantize_nf4, dequantize_nf4, shape, block_size, dtype, scale, seed
):
    weight = draw_weight(shape, dtype, scale, seed)
    packed, absmax = result_pair(
        called(quantize_nf4, weight, block_size, what=call_of(weight, block_size)), call_of(weight, block_size)
    )
    restored = expect_instance(
        called(dequantize_nf4, packed, absmax, weight.shape, torch.float32, block_size, what="dequantize_nf4(...)"),
        torch.Tensor,
        "dequantize_nf4(...)",
        "a float32 tensor",
    )
    assert restored.shape == weight.shape and restored.dtype == torch.float32, (
        f"dequantize_nf4(..., {tuple(weight.shape)}, torch.float32) returned {describe(restored)}"
    )
    n = weight.numel()
    flat = weight.reshape(-1).double()
    true_absmax = ref.absmax_per_block(flat, block_size).repeat_interleave(block_size)[:n]
    bound = ref.HALF_WIDEST_GAP * true_absmax * (1 + 1e-6) + 1e-30
    error = (restored.reshape(-1).double() - flat).abs()
    worst = int((error / bound).argmax())
    assert bool((error <= bound).all()), (
        f"round trip of {call_of(weight, block_size)}: value {flat[worst].item():.6g} came back "
        f"{restored.reshape(-1)[worst].item():.6g}, off by {error[worst].item():.3g}, expected at most half the "
        f"widest gap between codes times its block's absmax = {bound[worst].item():.3g}: quantize to the nearest code "
        "and dequantize with the same blocks"
    )


@pytest.mark.points(2)
@pytest.mark.subject("dequantize_nf4")
@pytest.mark.parametrize("block_size", [32, 64, 256])
def test_codes_times_absmax_survive_a_round_trip_exactly(quantize_nf4, dequantize_nf4, block_size):
    n, generator = 1000, torch.Generator().manual_seed(block_size)
    indices = torch.randint(0, 16, (n,), generator=generator)
    indices[::block_size] = torch.randint(0, 2, (math.ceil(n / block_size),), generator=generator) * 15  # +-1 each
    block_absmax = torch.rand(math.ceil(n / block_size), generator=generator) * 4 + 0.1
    weight = (ref.CODE_BOOK[indices] * block_absmax.repeat_interleave(block_size)[:n]).reshape(8, 125)
    packed, absmax = result_pair(
        called(quantize_nf4, weight, block_size, what=call_of(weight, block_size)), call_of(weight, block_size)
    )
    restored = called(dequantize_nf4, packed, absmax, (8, 125), torch.float32, block_size, what="dequantize_nf4(...)")
    off = (restored.double() - weight.double()).abs()
    assert off.max().item() == 0, (
        f"block_size={block_size}: weights that are a code times their block's absmax came back off by up to "
        f"{off.max().item():.3g} ({int((off > 0).sum())} of {n}), expected exactly: a value on a code keeps it"
    )


def absmax_of_a_weight(rows=512, columns=1024, seed=4):
    weight = torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed))
    return weight, ref.quantize(weight, 64)[1]


def stored_bytes(quantized, call):
    """(the bytes a QuantizedAbsmax keeps alive, what each field's path holds): every tensor memory reachable from its
    fields counted whole and once (a view keeps all its storage; a sparse tensor its indices and values; a tensor its
    attributes and .grad), and 4 bytes a number."""
    memory, parts, seen = {}, {}, set()
    fields = getattr(quantized, "_fields", [str(i) for i in range(len(quantized))])
    numbers = sum(
        reachable_bytes(value, name, memory, parts, seen, call) for name, value in zip(fields, quantized, strict=True)
    )
    return numbers + sum(memory.values()), parts


def held(parts):
    """What a QuantizedAbsmax's fields hold, largest first: "codes.source_absmax 4000, codes 1000 bytes"."""
    return ", ".join(f"{name} {size}" for name, size in sorted(parts.items(), key=lambda item: -item[1])) + " bytes"


def expect_one_scale_per_block(quantized, count, size, call, default=False):
    """Fail the check unless ``quantized.scales`` is float32 of shape (ceil(count / size),): one scale per block of
    ``size`` absmaxes, and no block of padding when ``count`` is a multiple of ``size``."""
    blocks = math.ceil(count / size)
    scales = expect_instance(quantized.scales, torch.Tensor, call + ".scales", "float32, one per block")
    cause = " (the default block size is 256)" if default else ": use the block_size given"
    if scales.numel() == blocks + 1 and count % size == 0:
        cause = f": {count} is a multiple of {size}, so no block of padding (pad by -count % block_size)"
    assert scales.dtype == torch.float32 and scales.numel() == blocks, (
        f"{call}.scales is {describe(scales)}, expected float32, one per block of {size}: ceil({count} / {size}) = "
        f"{blocks}{cause}"
    )
    assert tuple(scales.shape) == (blocks,), (
        f"{call}.scales has shape {tuple(scales.shape)}, expected ({blocks},) (keepdim=True left a dimension?)"
    )


def expect_any_block_size_taken(call, description):
    """``call()``, after failing the check if double_quantize refuses (a ValueError) a block size >= 1."""
    try:
        return call()
    except ValueError as error:
        pytest.fail(
            f"{description} raised ValueError ({error}); expected it taken: double_quantize takes any block size >= 1 "
            "(bitsandbytes' 4-bit block sizes are quantize_nf4's limit, not this one's)",
            pytrace=False,
        )


def quantized_absmax(QuantizedAbsmax, returned, call):
    quantized = expect_instance(returned, QuantizedAbsmax, call, "a QuantizedAbsmax (the stub's NamedTuple)")
    codes = expect_instance(quantized.codes, torch.Tensor, call + ".codes", "a tensor of one byte per absmax")
    return quantized, codes


@pytest.mark.points(1)
@pytest.mark.subject("double_quantize")
@pytest.mark.parametrize(
    ("count", "block_size"),
    # Any block size >= 1 (the Raises clause names none): powers of two, others, below 32 and above 4096.
    [
        (1000, None),
        (512, None),
        (700, 64),
        (704, 64),
        (700, 128),
        (700, 1024),
        (5, 256),
        (1, 32),
        (700, 100),
        (700, 16),
        (300, 1),
        (700, 8192),
        (1000, 3000),
    ],
    ids=[
        "1000-default",
        "512-default",
        "700-64",
        "704-64",
        "700-128",
        "700-1024",
        "5-256",
        "1-32",
        "700-100",
        "700-16",
        "300-1",
        "700-8192",
        "1000-3000",
    ],
)
def test_double_quantize_returns_one_byte_per_absmax(double_quantize, QuantizedAbsmax, count, block_size):
    _, absmax = absmax_of_a_weight(64, count)  # count absmax values: ceil(count / block_size) blocks (a multiple too)
    before = state_of(absmax)
    size = 256 if block_size is None else block_size
    blocks = math.ceil(count / size)
    call = f"double_quantize({count} absmax values{'' if block_size is None else f', block_size={block_size}'})"
    arguments = (absmax,) if block_size is None else (absmax, block_size)
    returned = expect_any_block_size_taken(lambda: called(double_quantize, *arguments, what=call), call)
    quantized, codes = quantized_absmax(QuantizedAbsmax, returned, call)
    assert codes.dtype in (torch.uint8, torch.int8) and tuple(codes.shape) == (count,), (
        f"{call}.codes is {describe(codes)}, expected shape ({count},): one code of one byte (torch.uint8 or "
        "torch.int8) per absmax"
    )
    expect_one_scale_per_block(quantized, count, size, call, default=block_size is None)
    assert quantized.block_size == size, f"{call}.block_size is {quantized.block_size!r}, expected {size}"
    offset = quantized.offset
    offset_values = offset.numel() if isinstance(offset, torch.Tensor) else 1 if isinstance(offset, float) else 0
    assert offset_values == 1 and not isinstance(offset, bool), (
        f"{call}.offset is {describe(offset)}, expected one number, the mean of all {count} absmaxes (a float32 "
        "0-d tensor or a float): not one per block"
    )
    mean = absmax.double().mean().item()
    assert math.isclose(float(offset), mean, rel_tol=1e-6), (
        f"{call}.offset is {float(offset):.9g}, expected the mean of all the absmaxes, {mean:.9g}"
    )
    (total, parts), budget = stored_bytes(quantized, call), count + 4 * blocks + 4 + 4
    assert total <= budget, (
        f"{call} holds {total} bytes ({held(parts)}), expected at most {budget}: {count} one-byte codes, a float32 "
        f"scale for each of the {blocks} blocks, the offset and the block size (4 bytes each); a tensor's memory "
        "counts whole (a view of a padded tensor keeps all of it: .clone() the slice; a sparse one its int64 indices; "
        "a tensor what is hung on it)"
    )
    expect_left_alone(absmax, before, call)
    leaf = absmax.clone().requires_grad_()
    for kind, tracked in {"a leaf": leaf, "a non-leaf (a leaf times 1)": leaf * 1}.items():
        before = state_of(tracked)
        quantized, _ = quantized_absmax(
            QuantizedAbsmax,
            expect_any_block_size_taken(
                lambda tracked=tracked: called(double_quantize, tracked, size, what=call), call
            ),
            call,
        )
        expect_left_alone(tracked, before, f"double_quantize(absmax requiring grad, {kind}, block_size={size})")
        history = [
            name for name, value in zip(quantized._fields, quantized, strict=True) if getattr(value, "grad_fn", None)
        ]
        assert not history, (
            f"double_quantize(absmax requiring grad, {kind}) returned {history} with autograd history: work on "
            "absmax.detach()"
        )


@pytest.mark.points(3)
@pytest.mark.subject("double_quantize")
@pytest.mark.parametrize(("blocks", "block_size"), [(8192, 256), (1000, 256), (700, 128), (1000, 100), (700, 8192)])
def test_double_quantized_absmax_comes_back_within_1_percent(
    double_quantize, dequantize_absmax, QuantizedAbsmax, blocks, block_size
):
    _, absmax = absmax_of_a_weight(blocks, 64, seed=blocks)
    call = f"double_quantize({blocks} absmax values, block_size={block_size})"
    quantized, _ = quantized_absmax(
        QuantizedAbsmax,
        expect_any_block_size_taken(lambda: called(double_quantize, absmax, block_size, what=call), call),
        call,
    )
    restored = expect_instance(
        called(dequantize_absmax, quantized, what="dequantize_absmax(...)"),
        torch.Tensor,
        "dequantize_absmax(...)",
        "float32 (n,)",
    )
    assert restored.dtype == torch.float32 and tuple(restored.shape) == (blocks,), (
        f"dequantize_absmax(...) returned {describe(restored)}, expected float32 of shape ({blocks},)"
    )
    error = expect_back_within_1_percent(restored, absmax, block_size, call)
    assert error.max().item() > 0, (
        f"{call}: dequantize_absmax gave back all {blocks} absmaxes exactly, which 8 bits each cannot hold: "
        "the float32 values are kept somewhere (a cache, a global?)"
    )


def expect_back_within_1_percent(restored, absmax, block_size, call):
    """Fail the check unless each absmax came back within 1% of its block's largest |absmax - mean|, naming the likely
    cause: a scale swamped by a clamp or an eps, a short last block coded with its padding, a float32 mean or product
    that overflows near float32's max. Two float32 ulps of the absmax are allowed too: float32's own rounding of the
    result and of the mean, which at subnormal magnitudes (a step of 1.4e-45) is more than 1% of a block (bitsandbytes'
    dynamic map, 0.7% apart near 1, lands a step away there). Returns the errors."""
    n = absmax.numel()
    centred = absmax.double() - absmax.double().mean()  # in float64: a float32 sum of 1e38s overflows
    padded = nn.functional.pad(centred.abs(), (0, math.ceil(n / block_size) * block_size - n))
    peaks = padded.view(-1, block_size).amax(dim=1)
    _, exponent = torch.frexp(absmax.abs())
    ulps = torch.ldexp(torch.ones(n, dtype=torch.float64), (exponent - 24).clamp(min=-149).double())
    allowed = torch.maximum(0.01 * peaks.repeat_interleave(block_size)[:n], 2 * ulps)
    error = (restored.double() - absmax.double()).abs()
    worst = int((error / allowed.clamp(min=1e-300)).argmax())
    block = worst // block_size
    cause = "subtract the mean of all absmaxes, then code each block relative to its own largest |value|"
    values = slice(block * block_size, min(n, (block + 1) * block_size))
    mean = absmax.double().mean()
    if not bool(torch.isfinite(restored).all()):
        cause = (
            f"{int((~torch.isfinite(restored)).sum())} absmaxes came back inf or NaN though every one is finite (up "
            f"to {absmax.abs().max().item():.3g}): a float32 sum for the mean, or a float32 code * scale before the "
            "/ 127, overflows near float32's max (3.4e38); take the mean in float64, and divide before multiplying"
        )
    failing = {index // block_size for index in (error > allowed).nonzero().flatten().tolist()}
    if n % block_size and failing == {len(peaks) - 1}:
        cause = (
            f"the last block holds {n % block_size} absmaxes, not {block_size}: the padding was coded with it (padded "
            "before subtracting the mean, its -mean counted in the block's largest |value|); pad the centred values "
            "with zeros, or leave the padding out of the block's scale"
        )
    elif torch.isfinite(restored).all() and torch.all((restored[values].double() - mean).abs() <= 0.01 * peaks[block]):
        cause = (
            f"every absmax of block {block} came back as the mean (all codes 0), though its largest |absmax - mean| is "
            f"{peaks[block].item():.3g}: a clamp of the scale or an eps added to the scale (scale + 1e-8, max(scale, "
            "1e-38)) swamps a block this small; divide by the block's own scale (only an all-zero block needs a guard)"
        )
    assert bool((error <= allowed).all()), (
        f"{call}: absmax {worst} ({absmax[worst].item():.6g}) came back {restored[worst].item():.6g}, off by "
        f"{error[worst].item():.3g}, expected within 1% of its block's largest |absmax - mean| (or 2 float32 ulps of "
        f"the absmax) = {allowed[worst].item():.3g}: {cause}"
    )
    return error


# Absmaxes of every magnitude float32 holds, up to 3e38 (a weight of huge values: a float32 sum of 1e38s for the mean,
# or a float32 code * scale before / 127, overflows to inf) and down to subnormals (3e-40,
# 1e-43), where a scale + 1e-8 or a clamp of the scale at 1e-38 swamps the block; spread over [1, 3) times it, or tight
# around it (a spread of 1e-3, as blocks of many values have), where a short last block coded with its padding (-mean)
# loses its 8 bits. Block sizes of one absmax, odd ones and large ones, each with a short last block but size 1.
DOUBLE_QUANTIZE_SIZES = (1, 7, 64, 256, 4096)


@pytest.mark.points(2)
@pytest.mark.subject("double_quantize")
@pytest.mark.parametrize(
    "magnitude", [1e38, 1e36, 1.0, 1e-8, 1e-20, 1e-30, 1e-37, 3e-40, 1e-43], ids=lambda m: f"{m:g}"
)
def test_double_quantized_absmax_comes_back_within_1_percent_at_any_magnitude(
    double_quantize, dequantize_absmax, QuantizedAbsmax, magnitude
):
    generator = torch.Generator().manual_seed(7)
    for block_size, spread in itertools.product(DOUBLE_QUANTIZE_SIZES, ("spread", "tight")):
        count = 3 * block_size + 5 if block_size < 4096 else block_size + 100
        uniform = torch.rand(count, generator=generator, dtype=torch.float64)
        absmax = ((1 + 2 * uniform if spread == "spread" else 1 + 1e-3 * uniform) * magnitude).float()
        call = (
            f"double_quantize({count} absmax values {'in [1, 3)' if spread == 'spread' else 'in [1, 1.001)'} x "
            f"{magnitude:g}, block_size={block_size})"
        )
        quantized, _ = quantized_absmax(
            QuantizedAbsmax,
            expect_any_block_size_taken(partial(called, double_quantize, absmax, block_size, what=call), call),
            call,
        )
        restored = expect_instance(
            called(dequantize_absmax, quantized, what=f"dequantize_absmax({call})"),
            torch.Tensor,
            f"dequantize_absmax({call})",
            "float32 (n,)",
        )
        assert restored.dtype == torch.float32 and tuple(restored.shape) == (count,), (
            f"dequantize_absmax({call}) returned {describe(restored)}, expected float32 of shape ({count},)"
        )
        expect_back_within_1_percent(restored, absmax, block_size, call)


@pytest.mark.points(2)
@pytest.mark.subject("double_quantize")
def test_a_512_x_1024_weight_takes_at_most_0_52_bytes_per_parameter(quantize_nf4, double_quantize, QuantizedAbsmax):
    weight, _ = absmax_of_a_weight()
    packed, absmax = result_pair(called(quantize_nf4, weight, 64, what=call_of(weight, 64)), call_of(weight, 64))
    expect_sizes(packed, absmax, weight, 64, call_of(weight, 64))
    call = "double_quantize(absmax of a 512 x 1024 weight)"
    quantized, _ = quantized_absmax(QuantizedAbsmax, called(double_quantize, absmax, what=call), call)
    expect_one_scale_per_block(quantized, absmax.numel(), 256, call, default=True)
    stored, parts = stored_bytes(quantized, call)
    total = packed.numel() + stored
    per_parameter = total / weight.numel()
    assert per_parameter <= 0.52, (
        f"the 512 x 1024 weight takes {per_parameter:.4f} bytes per parameter with double quantization (packed "
        f"{packed.numel()} + QuantizedAbsmax {stored} bytes: {held(parts)}), expected at most 0.52 (QLoRA: 4.127 "
        "bits): one byte per absmax and a float32 per block of 256"
    )


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_defaults_are_blocks_of_64_and_float32(quantize_nf4, dequantize_nf4, dtype):
    weight = draw_weight((10, 100), dtype, 1.0, 5)  # 1000 values: 16 blocks of 64, 8 of 128, 4 of 256
    call = f"quantize_nf4(a {dtype} tensor of shape (10, 100)) (no block_size)"
    packed, absmax = result_pair(called(quantize_nf4, weight, what=call), call)
    expected_packed, expected_absmax = ref.quantize(weight, 64)
    expect_sizes(packed, absmax, weight, 64, call + ": the default block_size is 64")
    expect_same_codes(packed, absmax, expected_packed, expected_absmax, weight, 64, call, "those of blocks of 64")
    call = "dequantize_nf4(packed, absmax, (10, 100)) (no dtype, no block_size)"
    try:
        restored = called(dequantize_nf4, expected_packed, expected_absmax, (10, 100), what=call)
    except ValueError as error:
        pytest.fail(f"{call} raised ValueError ({error}): the defaults are float32 and block_size=64", pytrace=False)
    restored = expect_instance(restored, torch.Tensor, call, "a float32 tensor of shape (10, 100)")
    expected = ref.dequantize(expected_packed, expected_absmax, (10, 100), torch.float32, 64)
    assert restored.dtype == torch.float32 and restored.shape == expected.shape, (
        f"{call} returned {describe(restored)}, expected float32 of shape (10, 100): the default dtype is float32"
    )
    assert torch.equal(restored, expected), (
        f"{call} does not give the codes times their absmax: blocks of 64 by default"
    )


def the_functions(quantize_nf4, dequantize_nf4, double_quantize, dequantize_absmax, QuantizedAbsmax) -> dict:
    """The kata's definitions by name, for the cases that call several of them."""
    return {
        "quantize_nf4": quantize_nf4,
        "dequantize_nf4": dequantize_nf4,
        "double_quantize": double_quantize,
        "dequantize_absmax": dequantize_absmax,
        "QuantizedAbsmax": QuantizedAbsmax,
    }


STALE = (
    "a result memoized per tensor object goes stale when the tensor is edited in place (keyed on its version too: an "
    "edit through .data counts none; on a checksum of its values too: a swap of two entries keeps their sum and sum of "
    "squares, and a float32 fingerprint misses an edit below its rounding)"
)
SWAPPED = "its largest and smallest entries swapped through .data (its sum kept)"
ON_A_GRID = "its values rounded to multiples of 2^-10 through .data"
TINY_EDIT_OF_ABSMAX = 2.0**-20  # exact on absmaxes below 4 rounded to multiples of 2^-10 (ON_A_GRID)


def round_through_data(tensor: torch.Tensor) -> None:
    """Round ``tensor``'s values to multiples of 2^-10 through .data: then any float64 sum of them, or of their
    squares, is exact in every order, and a swap of two entries keeps it bit for bit."""
    tensor.data.copy_(tensor.data.mul(1024).round().div(1024))


def quantized_again_after_an_edit(fixtures):
    """quantize_nf4 on a weight, then again after each edit of it in place (version-counted ops, then through .data,
    which counts no version, then of one entry only): the codes of its values now."""
    quantize_nf4 = fixtures["quantize_nf4"]
    weight = draw_weight((6, 100), torch.float32, 1.0, 11)
    call = call_of(weight, 64)
    result_pair(called(quantize_nf4, weight, 64, what=call), call)
    edits = {
        "w.mul_(2) and w.view(-1)[::3].neg_()": lambda: (weight.mul_(2), weight.view(-1)[::3].neg_()),
        "w.data.mul_(-0.5)": lambda: weight.data.mul_(-0.5),
        "one entry edited, w.data[5, 50:51].fill_(40.0)": lambda: weight.data[5, 50:51].fill_(40.0),
        ON_A_GRID: lambda: round_through_data(weight),
        SWAPPED: lambda: swap_extremes_through_data(weight),
    }
    for edit, apply_edit in edits.items():
        with torch.no_grad():
            apply_edit()
        call = call_of(weight, 64) + f" again, after {edit}"
        packed, absmax = result_pair(called(quantize_nf4, weight, 64, what=call), call)
        expected_packed, expected_absmax = ref.quantize(weight, 64)
        source = f"those of its values now ({STALE})"
        expect_same_codes(packed, absmax, expected_packed, expected_absmax, weight, 64, call, source)
    # Then edits too small for a float32 sum over the weight to see, each moving values across a code midpoint.
    weight = weight_beside_midpoints()
    call = call_of(weight, 64) + ", blocks 0 to 2 of absmax 1000, 3 and 4 near 1e4"
    result_pair(called(quantize_nf4, weight, 64, what=call), call)
    first, second, third = (weight.data.view(-1)[i : i + 1] for i in BESIDE_A_MIDPOINT)
    tiny = f"by {TINY_EDIT:g}, below half a float32 ulp of 1e4"
    edits = {
        f"flat element {BESIDE_A_MIDPOINT[0]} moved up {tiny} through .data, across a code midpoint": lambda: (
            first.add_(TINY_EDIT)
        ),
        f"flat elements {BESIDE_A_MIDPOINT[:2]} moved down and up {tiny} through .data, each across a code midpoint "
        "(the sum kept exactly)": lambda: (first.sub_(TINY_EDIT), second.add_(TINY_EDIT)),
        f"flat elements {BESIDE_A_MIDPOINT[1:]}, of two blocks, swapped through .data, each across a code midpoint": (
            lambda: swap_through_data(second, third)
        ),
    }
    for edit, apply_edit in edits.items():
        apply_edit()
        again = f"{call} again, after {edit}"
        packed, absmax = result_pair(called(quantize_nf4, weight, 64, what=again), again)
        expected_packed, expected_absmax = ref.quantize(weight, 64)
        source = f"those of its values now ({STALE})"
        expect_same_codes(packed, absmax, expected_packed, expected_absmax, weight, 64, again, source)


def swap_through_data(first: torch.Tensor, second: torch.Tensor) -> None:
    held = first.clone()
    first.copy_(second)
    second.copy_(held)


def dequantized_again_after_an_edit(fixtures):
    """dequantize_nf4 on packed codes and absmax, then again after other codes were copied into the same two tensors
    (as load_state_dict does into a layer's buffers), then through .data (no version counted), then after one byte
    and one absmax were edited: the values those codes encode now."""
    dequantize_nf4 = fixtures["dequantize_nf4"]
    packed, absmax = ref.quantize(draw_weight((8, 100), torch.float32, 1.0, 12), 64)
    called(dequantize_nf4, packed, absmax, (8, 100), torch.float32, 64, what="dequantize_nf4(packed, absmax, (8, 100))")
    new_packed, new_absmax = ref.quantize(draw_weight((8, 100), torch.float32, 3.0, 13), 64)
    other_packed, other_absmax = ref.quantize(draw_weight((8, 100), torch.float32, 0.5, 19), 64)
    edits = {
        "packed.copy_(...) and absmax.copy_(...) of other codes": lambda: (
            packed.copy_(new_packed),
            absmax.copy_(new_absmax),
        ),
        "packed.data.copy_(...) and absmax.data.copy_(...) of other codes": lambda: (
            packed.data.copy_(other_packed),
            absmax.data.copy_(other_absmax),
        ),
        "one byte and one absmax edited through .data": lambda: (
            packed.data[-1:].bitwise_xor_(0xFF),
            absmax.data[-1:].mul_(4),
        ),
        f"packed with {SWAPPED}": lambda: swap_extremes_through_data(packed),
        f"absmax with {ON_A_GRID}": lambda: round_through_data(absmax),
        f"absmax with {SWAPPED}": lambda: swap_extremes_through_data(absmax),
        f"absmax of blocks 0 and 1 moved up and down by {TINY_EDIT_OF_ABSMAX:g} through .data (its sum kept "
        "exactly, below a float32 sum's rounding)": lambda: (
            absmax.data[0:1].add_(TINY_EDIT_OF_ABSMAX),
            absmax.data[1:2].sub_(TINY_EDIT_OF_ABSMAX),
        ),
    }
    for edit, apply_edit in edits.items():
        held = packed.clone(), absmax.clone()
        apply_edit()
        call = f"dequantize_nf4(packed, absmax, (8, 100)) again, after {edit}"
        restored = expect_instance(
            called(dequantize_nf4, packed, absmax, (8, 100), torch.float32, 64, what=call),
            torch.Tensor,
            call,
            "a tensor",
        )
        expected = ref.dequantize(packed, absmax, (8, 100), torch.float32, 64)
        if restored.shape == expected.shape and torch.equal(restored, expected):
            continue
        before = ref.dequantize(*held, (8, 100), torch.float32, 64)
        stale = restored.shape == before.shape and torch.equal(restored, before)
        pytest.fail(
            f"{call} returned {describe(restored)}, "
            + ("the values of the codes it held before" if stale else "not the codes times their absmax now")
            + f", expected those of the codes now: {STALE} (load_state_dict copies into the same buffers)",
            pytrace=False,
        )


def double_quantized(fixtures, absmax, call):
    quantized, _ = quantized_absmax(
        fixtures["QuantizedAbsmax"], called(fixtures["double_quantize"], absmax, 256, what=call), call
    )
    restored = called(fixtures["dequantize_absmax"], quantized, what=f"dequantize_absmax({call})")
    return quantized, expect_instance(restored, torch.Tensor, f"dequantize_absmax({call})", "float32 (n,)")


def expect_same_absmaxes(measured, expected, absmax, call, cause, share=0.01):
    """Fail the check unless ``measured`` is ``expected`` to within ``share`` of each block of 256's largest
    |absmax - mean| (a second double quantization of the same values may code them otherwise, within the spec)."""
    centred = (absmax - absmax.mean()).double().abs()
    allowed = share * centred.view(-1, 256).amax(dim=1).repeat_interleave(256) + 1e-30
    assert measured.shape == expected.shape, f"{call} gave {describe(measured)}, expected {describe(expected)}"
    error = (measured.double() - expected.double()).abs()
    worst = int((error / allowed).argmax())
    assert bool((error <= allowed).all()), (
        f"{call}: absmax {worst} comes back {measured[worst].item():.6g}, expected {expected[worst].item():.6g} "
        f"(within {share:g} of its block's largest |absmax - mean|, {allowed[worst].item():.3g}): {cause}"
    )


def double_quantized_again_after_an_edit(fixtures):
    """double_quantize on absmaxes, then again after each edit of the tensor in place (absmax.mul_(2), then through
    .data, which counts no version, then of one entry, then two entries swapped): its values now (dequantize_absmax
    within 1% of its block's largest |absmax - mean|, as the spec grants)."""
    _, absmax = absmax_of_a_weight(64, 1024, seed=14)  # 1024 absmaxes: 4 blocks of 256
    double_quantized(fixtures, absmax, "double_quantize(absmax, 256)")
    edits = {
        "absmax.mul_(2)": lambda: absmax.mul_(2),
        "absmax.data.mul_(0.25)": lambda: absmax.data.mul_(0.25),
        "one entry edited, absmax.data[700:701].fill_(9.0)": lambda: absmax.data[700:701].fill_(9.0),
        ON_A_GRID: lambda: round_through_data(absmax),
        SWAPPED: lambda: swap_extremes_through_data(absmax),
    }
    for edit, apply_edit in edits.items():
        apply_edit()
        call = f"double_quantize(absmax, 256) again, after {edit}"
        quantized, restored = double_quantized(fixtures, absmax, call)
        mean = absmax.double().mean().item()
        assert math.isclose(float(quantized.offset), mean, rel_tol=1e-6), (
            f"{call}: offset {float(quantized.offset):.9g}, expected the mean of its values now, {mean:.9g}: {STALE}"
        )
        # Against its values now, not a fresh copy's result: a memo of the last call only would hold that copy's.
        expect_same_absmaxes(restored, absmax, absmax, call, f"its values now: {STALE}")


def dequantize_absmax_copies(fixtures):
    """dequantize_absmax on a QuantizedAbsmax, then on a copy rebuilt from its cloned fields (as saved and loaded),
    then on the first after other codes were copied into its tensors, in place and through .data: a function of the
    fields' values."""
    QuantizedAbsmax = fixtures["QuantizedAbsmax"]
    _, absmax = absmax_of_a_weight(64, 1024, seed=15)
    quantized, restored = double_quantized(fixtures, absmax, "double_quantize(absmax, 256)")
    cloned = QuantizedAbsmax(*(f.clone() if isinstance(f, torch.Tensor) else f for f in quantized))
    call = "dequantize_absmax(a QuantizedAbsmax rebuilt from clones of its fields, as after a save and a load)"
    copy = expect_instance(called(fixtures["dequantize_absmax"], cloned, what=call), torch.Tensor, call, "float32")
    cause = "not a function of its fields (float32 absmaxes kept aside, keyed on the object, in a cache?)"
    expect_same_absmaxes(copy, restored, absmax, call + ", against the original's result", cause, share=1e-6)
    # Another one's fields copied into its tensors, as load_state_dict copies into a layer's buffers, then a third
    # one's through .data, which bumps no version.
    for seed, how, write in ((16, "", torch.Tensor.copy_), (17, " through .data", lambda t, v: t.data.copy_(v))):
        _, other = absmax_of_a_weight(64, 1024, seed=seed)
        replacement, expected = double_quantized(fixtures, other * 3, "double_quantize(other absmax, 256)")
        fields = []
        for mine, theirs in zip(quantized, replacement, strict=True):
            if isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor) and mine.shape == theirs.shape:
                write(mine, theirs)
                fields.append(mine)
            else:
                fields.append(theirs)
        call = f"dequantize_absmax(a QuantizedAbsmax whose tensors had another one's fields copied into them{how})"
        edited = expect_instance(
            called(fixtures["dequantize_absmax"], QuantizedAbsmax(*fields), what=call), torch.Tensor, call, "float32"
        )
        expect_same_absmaxes(
            edited, expected, other * 3, call + ", against that other one's result", f"{cause}; {STALE}", 1e-6
        )
    # Then its codes with two entries swapped through .data: the same tensors, their sum kept.
    swap_extremes_through_data(expect_instance(fields[0], torch.Tensor, "QuantizedAbsmax.codes", "a tensor"))
    call = f"dequantize_absmax(that QuantizedAbsmax again, its codes with {SWAPPED})"
    edited = expect_instance(
        called(fixtures["dequantize_absmax"], QuantizedAbsmax(*fields), what=call), torch.Tensor, call, "float32"
    )
    copies = QuantizedAbsmax(*(f.clone() if isinstance(f, torch.Tensor) else f for f in fields))
    expected = called(fixtures["dequantize_absmax"], copies, what="dequantize_absmax(a copy of it)")
    expect_same_absmaxes(edited, expected, other * 3, call + ", against a copy's result", f"{cause}; {STALE}", 1e-6)


# What each kata function gives follows the values it is given, not the objects: the same tensor edited in place, the
# same fields copied into a rebuilt QuantizedAbsmax.
FOLLOWING = {  # the function a case calls again (the subject a failure points at): the case
    "quantize_nf4": quantized_again_after_an_edit,
    "dequantize_nf4": dequantized_again_after_an_edit,
    "double_quantize": double_quantized_again_after_an_edit,
    "dequantize_absmax": dequantize_absmax_copies,
}


@pytest.mark.points(1)
@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.subject(case), id=case) for case in FOLLOWING])
def test_a_result_follows_the_values_not_the_objects(
    quantize_nf4, dequantize_nf4, double_quantize, dequantize_absmax, QuantizedAbsmax, case
):
    """Each function called again on the same tensors after an in-place edit (w.mul_(2), packed.copy_(...),
    absmax.mul_(2)), or on a QuantizedAbsmax rebuilt from cloned fields, gives what those values give: a memo keyed on
    the objects (id, data_ptr, a side table) hands back stale results."""
    FOLLOWING[case](the_functions(quantize_nf4, dequantize_nf4, double_quantize, dequantize_absmax, QuantizedAbsmax))


def at_an_offset(tensor: torch.Tensor, offset: int = 37) -> torch.Tensor:
    """``tensor``'s values in a contiguous view ``offset`` elements into a larger tensor (a row slice, a state dict's
    flat buffer, a split): the same values, a storage that starts elsewhere."""
    buffer = torch.full((offset + tensor.numel() + 11,), 99, dtype=tensor.dtype)
    view = buffer[offset : offset + tensor.numel()].view(tensor.shape)
    view.copy_(tensor)
    return view


def in_a_column(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``'s values as column 1 of a larger tensor of shape (*shape, 2) (a field of a state buffer, one
    absmax column of a (blocks, 2) table): the same values, every stride doubled, a storage offset of 1."""
    buffer = torch.full((*tensor.shape, 2), 99, dtype=tensor.dtype)
    view = buffer[..., 1]
    view.copy_(tensor)
    return view


# How a tensor argument is laid out inside a larger tensor's storage: (place it, its words, what to do instead).
VIEWS = {
    "at-an-offset": (at_an_offset, "a contiguous view 37 elements into a larger tensor",
                     "read a tensor through its own view (reshape(-1)), not its storage from the start"),
    "strided": (in_a_column, "a strided view (column 1 of a (..., 2) tensor: every stride doubled)",
                "read a tensor through its own view (reshape(-1)), not its storage with strides of your own "
                "(as_strided drops the view's stride, view(-1) refuses it)"),
}  # fmt: skip


def quantized_in_a_view(fixtures, view):
    place, words, cause = VIEWS[view]
    weight = draw_weight((6, 100), torch.bfloat16, 1.0, 21)
    call = f"quantize_nf4({words}, bfloat16 (6, 100), block_size=64)"
    packed, absmax = result_pair(called(fixtures["quantize_nf4"], place(weight), 64, what=call), call)
    expected_packed, expected_absmax = ref.quantize(weight, 64)
    source = f"those of its values: {cause}"
    expect_same_codes(packed, absmax, expected_packed, expected_absmax, weight, 64, call, source)


def dequantized_in_a_view(fixtures, view):
    place, words, cause = VIEWS[view]
    packed, absmax = ref.quantize(draw_weight((8, 100), torch.float32, 1.0, 22), 64)
    # Each argument in the view alone, then both: an answer reading only one of them wrongly is named.
    for arguments, which in (((place(packed), absmax), "packed"), ((packed, place(absmax)), "absmax"),
                             ((place(packed), place(absmax)), "packed and absmax each")):  # fmt: skip
        call = f"dequantize_nf4({which} {words}, (8, 100))"
        restored = expect_instance(
            called(fixtures["dequantize_nf4"], *arguments, (8, 100), what=call),
            torch.Tensor,
            call,
            "a float32 tensor of shape (8, 100)",
        )
        expected = ref.dequantize(packed, absmax, (8, 100), torch.float32, 64)
        assert restored.shape == expected.shape and torch.equal(restored, expected), (
            f"{call} returned {describe(restored)}, not the codes times their absmax: {cause}"
        )


def double_quantized_in_a_view(fixtures, view):
    place, words, cause = VIEWS[view]
    _, absmax = absmax_of_a_weight(64, 1024, seed=23)
    call = f"double_quantize({words}, 256)"
    quantized, restored = double_quantized(fixtures, place(absmax), call)
    _, fresh = double_quantized(fixtures, absmax.clone(), "double_quantize(absmax.clone(), 256)")
    mean = absmax.double().mean().item()
    assert math.isclose(float(quantized.offset), mean, rel_tol=1e-6), (
        f"{call}: offset {float(quantized.offset):.9g}, expected the mean of its values, {mean:.9g}: {cause}"
    )
    expect_same_absmaxes(restored, fresh, absmax, call, f"those of its values: {cause}", share=0.02)


def dequantize_absmax_in_a_view(fixtures, view):
    place, words, cause = VIEWS[view]
    QuantizedAbsmax = fixtures["QuantizedAbsmax"]
    _, absmax = absmax_of_a_weight(64, 1024, seed=24)
    quantized, restored = double_quantized(fixtures, absmax, "double_quantize(absmax, 256)")
    moved = QuantizedAbsmax(*(place(f) if isinstance(f, torch.Tensor) and f.dim() else f for f in quantized))
    call = f"dequantize_absmax(a QuantizedAbsmax whose tensors are each {words})"
    copy = expect_instance(called(fixtures["dequantize_absmax"], moved, what=call), torch.Tensor, call, "float32")
    expect_same_absmaxes(copy, restored, absmax, call + ", against the original's result", cause, share=1e-6)


# Each function given its tensors as views that start inside a larger tensor's storage, contiguous or strided.
IN_VIEWS = {
    "quantize_nf4": quantized_in_a_view,
    "dequantize_nf4": dequantized_in_a_view,
    "double_quantize": double_quantized_in_a_view,
    "dequantize_absmax": dequantize_absmax_in_a_view,
}


@pytest.mark.points(1)
@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.subject(case), id=case) for case in IN_VIEWS])
def test_inputs_may_be_views_into_a_larger_tensor(
    quantize_nf4, dequantize_nf4, double_quantize, dequantize_absmax, QuantizedAbsmax, case, view
):
    """Each function given every tensor argument as a view into a larger tensor's storage, contiguous at an offset
    (a row slice, a split of a state dict's buffer) or strided (a column of a wider table), computes with their
    values, not with the storage from its start or at strides of its own."""
    fixtures = the_functions(quantize_nf4, dequantize_nf4, double_quantize, dequantize_absmax, QuantizedAbsmax)
    IN_VIEWS[case](fixtures, view)


@pytest.mark.points(1)
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, marks=pytest.mark.subject(case), id=case)
        for case in ("quantize_nf4", "dequantize_nf4", "double_quantize", "dequantize_absmax")
    ],
)
def test_every_result_is_float32_whatever_the_default_dtype(
    quantize_nf4, dequantize_nf4, double_quantize, dequantize_absmax, QuantizedAbsmax, case
):
    """Under torch.set_default_dtype(torch.float64) (a script checking in float64) every float the stub names float32
    stays float32, and the values are those of a float32 default: a tensor made without dtype= (a padding, a zero)
    takes the default dtype, and mixed with float32 promotes the result."""
    weight = draw_weight((6, 100), torch.float32, 1.0, 25)  # 600 values: a short last block, padded
    packed, absmax = ref.quantize(weight, 64)
    _, absmaxes = absmax_of_a_weight(64, 1000, seed=26)  # 1000 absmaxes: a short last block of 256
    where = "under torch.set_default_dtype(torch.float64)"
    with default_dtype(torch.float64):
        if case == "quantize_nf4":
            call = f"quantize_nf4(a float32 (6, 100) tensor) {where}"
            measured = result_pair(called(quantize_nf4, weight, 64, what=call), call)[1]
            expected = absmax
        elif case == "dequantize_nf4":
            call = f"dequantize_nf4(packed, absmax, (6, 100)) {where}"
            measured = called(dequantize_nf4, packed, absmax, (6, 100), what=call)
            expected = ref.dequantize(packed, absmax, (6, 100), torch.float32, 64)
        else:
            call = f"double_quantize(absmax, 256) {where}"
            quantized, _ = quantized_absmax(QuantizedAbsmax, called(double_quantize, absmaxes, 256, what=call), call)
            measured, expected = quantized.scales, None
            if case == "dequantize_absmax":
                call = f"dequantize_absmax(double_quantize(absmax, 256)) {where}"
                measured = called(dequantize_absmax, quantized, what=call)
    measured = expect_instance(measured, torch.Tensor, call, "a float32 tensor")
    what = {"quantize_nf4": "absmax", "double_quantize": "scales"}.get(case, "result")
    assert measured.dtype == torch.float32, (
        f"{call}: the {what} is {measured.dtype}, expected float32: a tensor made without dtype= (torch.zeros for a "
        "padding, say) takes torch's default dtype and promotes what it meets; name dtype=torch.float32 or make it "
        "like the input (new_zeros, zeros_like, F.pad)"
    )
    if expected is not None:
        assert torch.equal(measured, expected), f"{call}: the {what} differs from that of a float32 default dtype"
