"""NF4 with the standard library's NormalDist, a scatter-reduce absmax, nearest codes by argmin over
distances, a bitsandbytes-style (ceil(n / 2), 1) column of bytes, a 256-entry byte table to dequantize,
and an offset-binary uint8 double quantization with the offset kept as a Python float."""

from __future__ import annotations

import statistics
from typing import NamedTuple

import torch

ALLOWED = {2**k for k in range(5, 13)}


def nf4_code_book() -> torch.Tensor:
    normal = statistics.NormalDist()
    probabilities = (
        [float(p) for p in torch.linspace(0.9677083, 0.5, 9, dtype=torch.float32)[:-1]],
        [float(p) for p in torch.linspace(0.9677083, 0.5, 8, dtype=torch.float32)[:-1]],
    )
    values = [normal.inv_cdf(p) for p in probabilities[0]] + [0.0] + [-normal.inv_cdf(p) for p in probabilities[1]]
    table = torch.tensor(sorted(values), dtype=torch.float32)
    return table / table[-1]


def _blocks_of(n: int, block_size: int, device: torch.device) -> torch.Tensor:
    return torch.div(torch.arange(n, device=device), block_size, rounding_mode="floor")


def quantize_nf4(weight, block_size=64):
    if type(block_size) is not int or block_size not in ALLOWED:
        raise ValueError(f"unsupported block size {block_size!r}")
    if not torch.is_tensor(weight) or weight.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError("quantize_nf4 needs a floating-point tensor")
    if weight.numel() == 0:
        raise ValueError("quantize_nf4 needs at least one value")
    with torch.no_grad():
        values = weight.flatten().to(torch.float32)
        which = _blocks_of(values.numel(), block_size, values.device)
        count = int(which[-1]) + 1
        absmax = torch.zeros(count, device=values.device, dtype=values.dtype).scatter_reduce(
            0, which, values.abs(), "amax"
        )
        divisor = torch.where(absmax < 1e-38, torch.full_like(absmax, 1e-38), absmax)[which]  # bitsandbytes' clamp
        scaled = (values / divisor).clamp(-1.0, 1.0)
        distance = (scaled[:, None] - nf4_code_book().to(values.device)[None, :]).abs()
        nearest = distance.argmin(dim=1)
        if nearest.numel() % 2 == 1:
            nearest = torch.cat([nearest, torch.full((1,), 7, device=nearest.device, dtype=nearest.dtype)])
        pairs = nearest.view(-1, 2)
        packed = (pairs[:, 0] * 16 + pairs[:, 1]).to(torch.uint8).unsqueeze(1)
    return packed, absmax


def dequantize_nf4(packed, absmax, shape, dtype=torch.float32, block_size=64):
    if type(block_size) is not int or block_size not in ALLOWED:
        raise ValueError(f"unsupported block size {block_size!r}")
    shape = torch.Size(shape)
    n = shape.numel()
    if packed.numel() * 2 not in (n, n + 1) or absmax.numel() != -(-n // block_size):
        raise ValueError(f"{packed.numel()} bytes and {absmax.numel()} absmax values do not fit shape {tuple(shape)}")
    code = nf4_code_book().to(packed.device)
    byte_table = torch.stack([code.repeat_interleave(16), code.repeat(16)], dim=1)  # byte -> (high, low) values
    values = byte_table[packed.flatten().long()].flatten()[:n]
    scale = absmax.flatten().to(torch.float32)[_blocks_of(n, block_size, packed.device)]
    return (values * scale).to(dtype).view(shape)


class QuantizedAbsmax(NamedTuple):
    codes: torch.Tensor
    scales: torch.Tensor
    offset: float
    block_size: int


def double_quantize(absmax, block_size=256):
    with torch.no_grad():
        values = absmax.flatten().to(torch.float32)
        offset = values.double().mean().item()  # float64: a float32 sum of absmaxes near 3.4e38 overflows
        centred = values - offset
        which = _blocks_of(values.numel(), block_size, values.device)
        count = int(which[-1]) + 1
        peak = torch.zeros(count, device=values.device, dtype=centred.dtype).scatter_reduce(
            0, which, centred.abs(), "amax"
        )
        scales = peak / 127.0  # rounded up where it fell short: no code past 127
        scales = torch.where(scales * 127 < peak, scales.nextafter(torch.tensor(float("inf"))), scales)
        step = torch.where(scales == 0, torch.ones_like(scales), scales)[which]
        codes = (torch.round(centred / step).clamp(-127, 127) + 128).to(torch.uint8)
    return QuantizedAbsmax(codes, scales, offset, block_size)


def dequantize_absmax(quantized):
    which = _blocks_of(quantized.codes.numel(), quantized.block_size, quantized.codes.device)
    return (quantized.codes.to(torch.float32) - 128) * quantized.scales[which] + quantized.offset
