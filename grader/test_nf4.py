"""Checks of the `nf4` kata: the NF4 code book, quantize_nf4 / dequantize_nf4 bit for bit as bitsandbytes packs,
and QLoRA's double quantization of the absmaxes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from grader import nf4_reference as ref
from grader.nf4_checks import (
    DTYPES,
    call_of,
    expect_same_codes,
    expect_sizes,
    result_pair,
    swap_nibbles,
)
from grader.probes import describe, expect_instance, expect_value_error

SUBJECT = "quantize_nf4"  # the definition a failing check points at

shapes = st.lists(st.integers(1, 80), min_size=1, max_size=3).map(tuple)
block_sizes = st.sampled_from((32, 64, 128, 256))
dtypes = st.sampled_from(DTYPES)
scales = st.sampled_from((1e-3, 0.02, 1.0, 37.0))
seeds = st.integers(0, 2**16)


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
    code = expect_instance(nf4_code_book(), torch.Tensor, "nf4_code_book()", "a float32 tensor of 16 values")
    assert code.dtype == torch.float32 and tuple(code.shape) == (16,), (
        f"nf4_code_book() returned {describe(code)}, expected float32 of shape (16,)"
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


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_quantize_returns_packed_uint8_bytes_and_float32_absmax(quantize_nf4, dtype):
    weight = draw_weight((6, 100), dtype, 1.0, 1)  # 600 values: 10 blocks of 64, the last one short; 2 per row
    call = call_of(weight, 64)
    packed, absmax = result_pair(quantize_nf4(weight, 64), call)
    expect_sizes(packed, absmax, weight, 64, call)
    assert packed.device == absmax.device == weight.device, (
        f"{call}: results on {packed.device} and {absmax.device}, expected {weight.device}"
    )


@pytest.mark.points(1)
def test_quantize_leaves_the_weight_alone_and_keeps_no_history(quantize_nf4):
    parameter = nn.Parameter(draw_weight((4, 48), torch.float32, 1.0, 2))
    before = parameter.detach().clone()
    packed, absmax = result_pair(quantize_nf4(parameter, 64), call_of(parameter, 64))
    assert torch.equal(parameter.detach(), before), "quantize_nf4 changed the weight it was given: work on a copy"
    assert absmax.grad_fn is None and not absmax.requires_grad and not packed.requires_grad, (
        "quantize_nf4(an nn.Parameter) returned an absmax with autograd history: quantize weight.detach()"
    )


@pytest.mark.points(1)
def test_quantize_reads_a_non_contiguous_weight_in_row_major_order(quantize_nf4):
    weight = draw_weight((48, 20), torch.float32, 1.0, 3).T  # (20, 48), not contiguous
    call = "quantize_nf4(a transposed, non-contiguous (20, 48) tensor, block_size=32)"
    packed, absmax = result_pair(quantize_nf4(weight, 32), call)
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
def test_quantize_packs_the_nf4_codes_bit_for_bit(quantize_nf4, shape, block_size, dtype, scale, seed):
    weight = draw_weight(shape, dtype, scale, seed)
    call = call_of(weight, block_size)
    packed, absmax = result_pair(quantize_nf4(weight, block_size), call)
    expected_packed, expected_absmax = ref.quantize(weight, block_size)
    expect_same_codes(packed, absmax, expected_packed, expected_absmax, weight, block_size, call, "NF4's")


@pytest.mark.points(3)
@pytest.mark.skipif(not ref.installed("bitsandbytes"), reason=ref.BITSANDBYTES_MISSING)
@settings(max_examples=10)
@given(shape=shapes, block_size=block_sizes, dtype=dtypes, scale=scales, seed=seeds)
@example(shape=(128, 96), block_size=64, dtype=torch.float32, scale=1.0, seed=0)
@example(shape=(3, 5, 7), block_size=32, dtype=torch.bfloat16, scale=1.0, seed=1)
def test_quantize_equals_bitsandbytes_quantize_4bit(quantize_nf4, shape, block_size, dtype, scale, seed):
    weight = draw_weight(shape, dtype, scale, seed)
    call = call_of(weight, block_size)
    packed, absmax = result_pair(quantize_nf4(weight, block_size), call)
    expected_packed, expected_absmax = ref.bitsandbytes_quantize(weight, block_size)
    expect_same_codes(
        packed, absmax, expected_packed, expected_absmax, weight, block_size, call, "bitsandbytes' quantize_4bit"
    )


@pytest.mark.points(1)
def test_an_all_zero_block_takes_the_code_of_zero(quantize_nf4, dequantize_nf4):
    weight = torch.randn(200)
    weight[64:128] = 0.0  # block 1 of 4
    weight[192:] = 0.0  # the short last block
    call = "quantize_nf4(200 values whose blocks 1 and 3 are all zeros)"
    packed, absmax = result_pair(quantize_nf4(weight, 64), call)
    expected_packed, expected_absmax = ref.quantize(weight, 64)
    expect_same_codes(packed, absmax, expected_packed, expected_absmax, weight, 64, call, "NF4's")
    restored = dequantize_nf4(packed, absmax, (200,))
    assert torch.isfinite(restored).all() and torch.equal(restored[64:128], weight[64:128]), (
        "an all-zero block does not dequantize to zeros (NaN from 0 / 0?): clamp the absmax you divide by, "
        "not the one you store"
    )


@pytest.mark.points(1)
@pytest.mark.parametrize(
    ("case", "make_weight", "block_size"),
    [
        pytest.param(case, make, size, id=case)
        for case, make, size in [
            ("empty", lambda: torch.zeros(0, 64), 64),
            ("int64", lambda: torch.arange(128), 64),
            ("bool", lambda: torch.ones(128, dtype=torch.bool), 64),
            ("block_size=16", lambda: torch.randn(128), 16),
            ("block_size=48", lambda: torch.randn(128), 48),
            ("block_size=8192", lambda: torch.randn(128), 8192),
            ("block_size=0", lambda: torch.randn(128), 0),
        ]
    ],
)
def test_quantize_refuses_what_bitsandbytes_refuses(quantize_nf4, case, make_weight, block_size):
    weight = make_weight()
    expect_value_error(
        lambda: quantize_nf4(weight, block_size), f"quantize_nf4 ({case}: {call_of(weight, block_size)})"
    )


def random_codes(n, block_size, seed):
    """Random packed bytes for n values and a positive absmax per block (some blocks 0), as a quantizer makes."""
    generator = torch.Generator().manual_seed(seed)
    packed = torch.randint(0, 256, (math.ceil(n / 2),), generator=generator, dtype=torch.uint8)
    if n % 2:
        packed[-1] = (packed[-1] & 0xF0) | ref.ZERO_CODE
    absmax = torch.rand(math.ceil(n / block_size), generator=generator) * 3 + 0.01
    if absmax.numel() > 2:
        absmax[::5] = 0.0
    return packed, absmax


@pytest.mark.points(4)
@pytest.mark.subject("dequantize_nf4")
@given(shape=shapes, block_size=block_sizes, dtype=dtypes, seed=seeds, kind=st.sampled_from((tuple, list, torch.Size)))
@example(shape=(128, 96), block_size=64, dtype=torch.float32, seed=0, kind=tuple)
@example(shape=(3, 5, 7), block_size=32, dtype=torch.bfloat16, seed=1, kind=torch.Size)
@example(shape=(33,), block_size=64, dtype=torch.float16, seed=2, kind=list)
def test_dequantize_gives_code_times_absmax_in_the_dtype_asked(dequantize_nf4, shape, block_size, dtype, seed, kind):
    n = math.prod(shape)
    packed, absmax = random_codes(n, block_size, seed)
    call = f"dequantize_nf4(packed, absmax, {kind(shape)!r}, {dtype}, block_size={block_size})"
    restored = expect_instance(
        dequantize_nf4(packed, absmax, kind(shape), dtype, block_size), torch.Tensor, call, "a tensor"
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
    if dtype != torch.float32 and torch.equal(restored, low):
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


@pytest.mark.points(1)
@pytest.mark.subject("dequantize_nf4")
@pytest.mark.parametrize(
    ("case", "packed_bytes", "absmax_values"),
    [
        pytest.param(case, size, count, id=case.replace(" ", "-"))
        for case, size, count in [
            ("one byte short", 63, 2),
            ("one byte over", 65, 2),
            ("an absmax short", 64, 1),
            ("an absmax over", 64, 3),
        ]
    ],
)
def test_dequantize_refuses_sizes_that_do_not_fit_the_shape(dequantize_nf4, case, packed_bytes, absmax_values):
    packed, absmax = torch.zeros(packed_bytes, dtype=torch.uint8), torch.ones(absmax_values)
    expect_value_error(
        lambda: dequantize_nf4(packed, absmax, (8, 16)),
        f"dequantize_nf4({packed_bytes} bytes, {absmax_values} absmax values, shape (8, 16)) ({case})",
    )


@pytest.mark.points(3)
@pytest.mark.subject("dequantize_nf4")
@given(shape=shapes, block_size=block_sizes, dtype=dtypes, scale=scales, seed=seeds)
@example(shape=(128, 96), block_size=64, dtype=torch.bfloat16, scale=1.0, seed=0)
def test_round_trip_error_is_within_half_the_widest_gap(
    quantize_nf4, dequantize_nf4, shape, block_size, dtype, scale, seed
):
    weight = draw_weight(shape, dtype, scale, seed)
    packed, absmax = result_pair(quantize_nf4(weight, block_size), call_of(weight, block_size))
    restored = expect_instance(
        dequantize_nf4(packed, absmax, weight.shape, torch.float32, block_size),
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
    packed, absmax = result_pair(quantize_nf4(weight, block_size), call_of(weight, block_size))
    restored = dequantize_nf4(packed, absmax, (8, 125), torch.float32, block_size)
    off = (restored.double() - weight.double()).abs()
    assert off.max().item() == 0, (
        f"block_size={block_size}: weights that are a code times their block's absmax came back off by up to "
        f"{off.max().item():.3g} ({int((off > 0).sum())} of {n}), expected exactly: a value on a code keeps it"
    )


def absmax_of_a_weight(rows=512, columns=1024, seed=4):
    weight = torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed))
    return weight, ref.quantize(weight, 64)[1]


def stored_bytes(quantized, call):
    total = 0
    for name, value in zip(getattr(quantized, "_fields", range(len(quantized))), quantized, strict=True):
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, (int, float)):
            total += 4
        else:
            pytest.fail(
                f"{call}.{name} is {describe(value)}: a QuantizedAbsmax holds tensors and numbers only", pytrace=False
            )
    return total


def quantized_absmax(QuantizedAbsmax, returned, call):
    quantized = expect_instance(returned, QuantizedAbsmax, call, "a QuantizedAbsmax (the stub's NamedTuple)")
    codes = expect_instance(quantized.codes, torch.Tensor, call + ".codes", "a tensor of one byte per absmax")
    return quantized, codes


@pytest.mark.points(1)
@pytest.mark.subject("double_quantize")
def test_double_quantize_returns_one_byte_per_absmax(double_quantize, QuantizedAbsmax):
    _, absmax = absmax_of_a_weight(64, 1000)  # 1000 blocks: three and a bit blocks of 256
    before = absmax.clone()
    call = "double_quantize(1000 absmax values)"
    quantized, codes = quantized_absmax(QuantizedAbsmax, double_quantize(absmax), call)
    assert codes.dtype in (torch.uint8, torch.int8) and codes.numel() == 1000, (
        f"{call}.codes is {describe(codes)}, expected 1000 codes of one byte (torch.uint8 or torch.int8)"
    )
    scales = expect_instance(quantized.scales, torch.Tensor, call + ".scales", "float32, one per block")
    assert scales.dtype == torch.float32 and scales.numel() == 4, (
        f"{call}.scales is {describe(scales)}, expected float32, one per block of 256: ceil(1000 / 256) = 4"
    )
    assert quantized.block_size == 256, f"{call}.block_size is {quantized.block_size!r}, expected 256 (the default)"
    assert torch.equal(absmax, before), "double_quantize changed the absmax it was given: work on a copy"
    tracked = absmax.clone().requires_grad_()
    quantized, _ = quantized_absmax(QuantizedAbsmax, double_quantize(tracked), call)
    history = [
        name for name, value in zip(quantized._fields, quantized, strict=True) if getattr(value, "grad_fn", None)
    ]
    assert not history, (
        f"double_quantize(absmax requiring grad) returned {history} with autograd history: work on absmax.detach()"
    )


@pytest.mark.points(3)
@pytest.mark.subject("double_quantize")
@pytest.mark.parametrize(("blocks", "block_size"), [(8192, 256), (1000, 256), (700, 128)])
def test_double_quantized_absmax_comes_back_within_1_percent(
    double_quantize, dequantize_absmax, QuantizedAbsmax, blocks, block_size
):
    _, absmax = absmax_of_a_weight(blocks, 64, seed=blocks)
    call = f"double_quantize({blocks} absmax values, block_size={block_size})"
    quantized, _ = quantized_absmax(QuantizedAbsmax, double_quantize(absmax, block_size), call)
    restored = expect_instance(dequantize_absmax(quantized), torch.Tensor, "dequantize_absmax(...)", "float32 (n,)")
    assert restored.dtype == torch.float32 and tuple(restored.shape) == (blocks,), (
        f"dequantize_absmax(...) returned {describe(restored)}, expected float32 of shape ({blocks},)"
    )
    centred = (absmax - absmax.mean()).double()
    padded = nn.functional.pad(centred.abs(), (0, math.ceil(blocks / block_size) * block_size - blocks))
    allowed = 0.01 * padded.view(-1, block_size).amax(dim=1).repeat_interleave(block_size)[:blocks]
    error = (restored.double() - absmax.double()).abs()
    worst = int((error / allowed).argmax())
    cause = "subtract the mean of all absmaxes, then code each block relative to its own largest |value|"
    assert bool((error <= allowed).all()), (
        f"{call}: absmax {worst} ({absmax[worst].item():.6g}) came back {restored[worst].item():.6g}, off by "
        f"{error[worst].item():.3g}, expected within 1% of its block's largest |absmax - mean| = "
        f"{allowed[worst].item():.3g}: {cause}"
    )
    assert error.max().item() > 0, (
        f"{call}: dequantize_absmax gave back all {blocks} absmaxes exactly, which 8 bits each cannot hold: "
        "the float32 values are kept somewhere (a cache, a global?)"
    )


@pytest.mark.points(2)
@pytest.mark.subject("double_quantize")
def test_a_512_x_1024_weight_takes_at_most_0_52_bytes_per_parameter(quantize_nf4, double_quantize, QuantizedAbsmax):
    weight, _ = absmax_of_a_weight()
    packed, absmax = result_pair(quantize_nf4(weight, 64), call_of(weight, 64))
    expect_sizes(packed, absmax, weight, 64, call_of(weight, 64))
    call = "double_quantize(absmax of a 512 x 1024 weight)"
    quantized, _ = quantized_absmax(QuantizedAbsmax, double_quantize(absmax), call)
    total = packed.numel() + stored_bytes(quantized, call)
    per_parameter = total / weight.numel()
    assert per_parameter <= 0.52, (
        f"the 512 x 1024 weight takes {per_parameter:.4f} bytes per parameter with double quantization (packed "
        f"{packed.numel()} + QuantizedAbsmax {total - packed.numel()} bytes), expected at most 0.52 (QLoRA: 4.127 "
        "bits): one byte per absmax and a float32 per block of 256"
    )
