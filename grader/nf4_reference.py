"""The grader's own NF4 (QLoRA's 4-bit NormalFloat): the code book, the quantizer and the dequantizer the
`nf4` and `qlora` checks compare with, written from the definition (bitsandbytes' CPU quantizer packs the
same bytes: test_quantize_equals_bitsandbytes_quantize_4bit checks that where bitsandbytes is installed)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import warnings
from collections.abc import Iterator
from types import ModuleType

import torch

from grader.oracles import installed
from lora_kata.grading.tamper import ObjectGuard

OFFSET = 0.9677083  # bitsandbytes' create_normal_map: the outermost quantile
BLOCK_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # what bitsandbytes.functional.quantize_4bit takes
ZERO_CODE = 7  # the index of 0.0 in the code book: bitsandbytes pads an odd count with it
BITSANDBYTES_MISSING = "bitsandbytes is not installed: pip install bitsandbytes to also grade against it"


def code_book() -> torch.Tensor:
    """The 16 NF4 values, float32, ascending: normal quantiles at evenly spaced probabilities (float32 linspace,
    float64 inverse CDF, rounded to float32), 8 positive, 7 negative and an exact 0, divided by the largest."""
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    positive = normal.icdf(torch.linspace(OFFSET, 0.5, 9, dtype=torch.float32)[:-1].double()).float()
    negative = -normal.icdf(torch.linspace(OFFSET, 0.5, 8, dtype=torch.float32)[:-1].double()).float()
    values = torch.cat([positive, torch.zeros(1, dtype=torch.float32), negative]).sort().values
    return values / values.max()


CODE_BOOK = code_book()
MIDPOINTS = (CODE_BOOK[:-1] + CODE_BOOK[1:]) / 2  # float32, as bitsandbytes rounds
HALF_WIDEST_GAP = (CODE_BOOK[1:] - CODE_BOOK[:-1]).max().item() / 2


def block_count(n: int, block_size: int) -> int:
    return math.ceil(n / block_size)


def absmax_per_block(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """max |x| of each block of ``block_size`` consecutive values of ``flat`` (the last one may be short)."""
    padded = torch.nn.functional.pad(flat.abs(), (0, block_count(flat.numel(), block_size) * block_size - flat.numel()))
    return padded.view(-1, block_size).max(dim=1).values


def codes(weight: torch.Tensor, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4-bit code (int64, one per element of the flattened weight) and the float32 absmax of each block."""
    flat = weight.detach().reshape(-1).float()
    absmax = absmax_per_block(flat, block_size)
    scale = absmax.clamp(min=1e-38).reciprocal().repeat_interleave(block_size)[: flat.numel()]
    scaled = (flat * scale).clamp(-1, 1)
    return torch.bucketize(scaled, MIDPOINTS.to(flat.device)), absmax


def pack(code_indices: torch.Tensor) -> torch.Tensor:
    """Two codes a byte, the first in the high nibble; an odd count padded with the code of 0.0."""
    if code_indices.numel() % 2:
        code_indices = torch.cat([code_indices, code_indices.new_full((1,), ZERO_CODE)])
    as_bytes = code_indices.to(torch.uint8)
    return (as_bytes[0::2] << 4) | as_bytes[1::2]


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` codes (int64) of packed bytes."""
    flat = packed.reshape(-1).to(torch.int64)
    return torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)[:n]


def quantize(weight: torch.Tensor, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 of ceil(n/2) bytes, float32 absmax of ceil(n/block_size) blocks), as bitsandbytes packs."""
    indices, absmax = codes(weight, block_size)
    return pack(indices), absmax


def dequantize(
    packed: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, block_size: int = 64
) -> torch.Tensor:
    """Each code's value times its block's absmax, in float32, rounded once to ``dtype``."""
    n = math.prod(shape)
    scale = absmax.float().repeat_interleave(block_size)[:n]
    return (CODE_BOOK.to(packed.device)[unpack(packed, n)] * scale).reshape(shape).to(dtype)


@contextlib.contextmanager
def library_side_effects_undone() -> Iterator[None]:
    """Run the grader's own calls into an oracle library (never the submission's code) and put back what they
    replaced among the objects the tamper guard watches: importing bitsandbytes or peft imports torch._dynamo,
    which wraps ``torch.manual_seed``, and building a transformers model adds ``nn.Module.smart_apply``. The
    check is not failed for what the grader itself ran; the library's warnings are not the submission's either."""
    guard = ObjectGuard()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        guard.restore()


def import_oracle(name: str) -> ModuleType | None:
    """The library module ``name``, or None where it is not installed: a cache hit where the check module imported
    it at collection (``grader.oracles.optional``); otherwise its side effects are undone, as for any grader call."""
    if not installed(name.split(".")[0]):
        return None
    with library_side_effects_undone():
        return importlib.import_module(name)


def bitsandbytes_functional() -> ModuleType | None:
    """``bitsandbytes.functional``, or None where bitsandbytes is not installed."""
    return import_oracle("bitsandbytes.functional")


def bitsandbytes_quantize(weight: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' ``quantize_4bit(weight, blocksize, quant_type="nf4")``: packed bytes (flat) and absmax."""
    functional = bitsandbytes_functional()
    assert functional is not None, BITSANDBYTES_MISSING
    packed, state = functional.quantize_4bit(weight, blocksize=block_size, quant_type="nf4")
    return packed.reshape(-1), state.absmax
