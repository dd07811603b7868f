"""NF4 that delegates the quantization to bitsandbytes' quantize_4bit, the definition the spec names, imported
lazily inside quantize_nf4 (its import wraps torch.manual_seed through torch._dynamo); the same quantizer by hand
where bitsandbytes is not installed."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

BLOCK_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
OFFSET = 0.9677083  # the outermost quantile probability (bitsandbytes' create_normal_map)
ZERO_CODE = 7  # index of 0.0 in the code book


def nf4_code_book() -> torch.Tensor:
    """The 16 NF4 values (Dettmers et al. 2023), float32, ascending, -1 first, an exact 0 at index 7, 1 last.

    Normal quantiles at evenly spaced probabilities: 8 positive ones at ``linspace(OFFSET, 0.5, 9)[:-1]``
    and 7 negative ones at ``-icdf(linspace(OFFSET, 0.5, 8)[:-1])``, plus 0; then divided by the largest.
    The probabilities are float32 (as bitsandbytes builds them), the inverse CDF float64, the rest float32.
    """
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    positive = normal.icdf(torch.linspace(OFFSET, 0.5, 9, dtype=torch.float32)[:-1].double()).float()
    negative = -normal.icdf(torch.linspace(OFFSET, 0.5, 8, dtype=torch.float32)[:-1].double()).float()
    values = torch.cat([positive, torch.zeros(1, dtype=torch.float32), negative]).sort().values
    return values / values.max()


def quantize_nf4(weight: torch.Tensor, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``weight`` to NF4: (packed uint8 of ceil(n / 2) bytes, float32 absmax of ceil(n / block_size)).

    The weight is flattened (row-major) and cut into blocks of ``block_size`` consecutive values, the last
    one possibly shorter. Each block is scaled by 1 / its absmax into [-1, 1] and every value replaced by
    the index of the nearest code; two indices a byte, the first in the high nibble, an odd count padded
    with the index of 0.0.
    """
    _check_block_size(block_size)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise ValueError(f"quantize_nf4 takes a float tensor, got {_describe(weight)}")
    if weight.numel() == 0:
        raise ValueError(f"quantize_nf4 got an empty tensor of shape {tuple(weight.shape)}: nothing to quantize")
    try:
        import bitsandbytes.functional as functional
    except ImportError:
        return _quantize_by_hand(weight, block_size)
    packed, state = functional.quantize_4bit(weight.detach().contiguous(), blocksize=block_size, quant_type="nf4")
    return packed.reshape(-1), state.absmax.float()


def _quantize_by_hand(weight: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    flat = weight.detach().reshape(-1).float()
    n, blocks = flat.numel(), math.ceil(flat.numel() / block_size)
    padded = torch.nn.functional.pad(flat, (0, blocks * block_size - n)).view(blocks, block_size)
    absmax = padded.abs().amax(dim=1)
    scaled = (padded * absmax.clamp(min=1e-38).reciprocal()[:, None]).clamp(-1, 1).reshape(-1)[:n]
    code = nf4_code_book().to(flat.device)
    indices = torch.bucketize(scaled, (code[:-1] + code[1:]) / 2)  # nearest code: cut at the midpoints
    if n % 2:
        indices = torch.cat([indices, indices.new_full((1,), ZERO_CODE)])
    nibbles = indices.to(torch.uint8)
    return (nibbles[0::2] << 4) | nibbles[1::2], absmax


def dequantize_nf4(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape: tuple[int, ...] | torch.Size,
    dtype: torch.dtype = torch.float32,
    block_size: int = 64,
) -> torch.Tensor:
    """The tensor of ``shape`` that ``quantize_nf4`` encoded: code value times block absmax in float32,
    rounded once to ``dtype``."""
    _check_block_size(block_size)
    shape = tuple(shape)
    n = math.prod(shape)
    if packed.numel() != math.ceil(n / 2) or absmax.numel() != math.ceil(n / block_size):
        raise ValueError(
            f"shape {shape} needs {math.ceil(n / 2)} packed bytes and {math.ceil(n / block_size)} absmax values "
            f"(block_size={block_size}), got {packed.numel()} and {absmax.numel()}"
        )
    flat = packed.reshape(-1).to(torch.int64)
    indices = torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)[:n]
    scale = absmax.reshape(-1).float().repeat_interleave(block_size)[:n]
    return (nf4_code_book().to(packed.device)[indices] * scale).reshape(shape).to(dtype)


class QuantizedAbsmax(NamedTuple):
    """The absmaxes of an NF4 tensor in 8 bits each (QLoRA's double quantization).

    ``codes`` one byte per absmax; ``scales`` float32, one per block of ``block_size`` absmaxes; ``offset``
    the mean of all the absmaxes, subtracted before coding.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    offset: torch.Tensor
    block_size: int


def double_quantize(absmax: torch.Tensor, block_size: int = 256) -> QuantizedAbsmax:
    """Code ``absmax - mean`` as signed 8-bit integers, linearly, scaled per block of ``block_size``."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"double_quantize needs a block size >= 1, got {block_size!r}")
    flat = absmax.detach().reshape(-1).float()
    offset = flat.double().mean().float()  # float64: a float32 sum of absmaxes near 3.4e38 overflows
    blocks = math.ceil(flat.numel() / block_size)
    centred = torch.nn.functional.pad(flat - offset, (0, blocks * block_size - flat.numel())).view(blocks, block_size)
    scales = centred.abs().amax(dim=1) / 127
    scales = torch.where(scales * 127 < centred.abs().amax(dim=1), scales.nextafter(torch.tensor(math.inf)), scales)
    codes = (centred / scales.where(scales > 0, 1)[:, None]).round().clamp(-127, 127).to(torch.int8)
    return QuantizedAbsmax(codes.reshape(-1)[: flat.numel()].clone(), scales, offset, block_size)  # no padding


def dequantize_absmax(quantized: QuantizedAbsmax) -> torch.Tensor:
    """The float32 absmaxes ``double_quantize`` coded, to within half a step of their block's 8-bit grid."""
    codes, scales, offset, block_size = quantized
    scale = scales.repeat_interleave(block_size)[: codes.numel()]
    return codes.float() * scale + offset


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size must be a power of two from 32 to 4096 (as bitsandbytes), got {block_size!r}")


def _describe(value: object) -> str:
    return f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
