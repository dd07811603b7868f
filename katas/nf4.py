"""Kata `nf4`: QLoRA's 4-bit NormalFloat (Dettmers et al. 2023, "QLoRA"), bit for bit as bitsandbytes packs it.

Every function computes from the values its tensor arguments hold when it is called: a tensor may be a view that
starts inside a larger tensor's storage (a row slice, a split of a state dict's buffer), and one edited in place
since an earlier call (through ``.data`` too, which bumps no version counter) gives what its values now give.
Every float the spec names float32 is float32 whatever torch's default dtype is (a tensor made without ``dtype=``,
a padding, say, takes the default one).

Grade it with: pytest grader/test_nf4.py
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def nf4_code_book() -> torch.Tensor:
    """The 16 NF4 values: float32, shape (16,), ascending, from -1.0 to 1.0 with an exact 0.0 at index 7.

    The grader compares them bit for bit with bitsandbytes' table (a table typed in with every bit right passes
    too; deriving it is what the kata teaches). Each call returns a tensor of its own: a caller editing one result
    changes no later one. The values are quantiles of the standard normal at evenly spaced probabilities, with
    offset = 0.9677083:
        - 8 positive values: icdf(p) for p in ``torch.linspace(offset, 0.5, 9)[:-1]``;
        - 7 negative values: -icdf(p) for p in ``torch.linspace(offset, 0.5, 8)[:-1]``;
        - and 0.0;
    sorted, then divided by the largest. The probabilities are made in float32 (``torch.linspace``'s
    default), the inverse CDF is computed in float64 (``torch.distributions.Normal``), its results are
    rounded to float32, and the sort and the division are float32. The result is the same float32 table
    whatever torch's default dtype is: under ``torch.set_default_dtype(torch.float64)`` name float32 where
    a default would be taken.
    """
    raise NotImplementedError("kata nf4: write nf4_code_book (spec in its docstring)")


def quantize_nf4(weight: torch.Tensor, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``weight`` to NF4, exactly as ``bitsandbytes.functional.quantize_4bit(weight, blocksize=block_size,
    quant_type="nf4")`` does.

    Spec:
        - ``weight``: any shape, float32, float16 or bfloat16, contiguous or not, possibly requiring grad
          (an ``nn.Parameter``, or any tensor requiring grad, a non-leaf one with autograd history included).
          It is never modified (neither its values nor its ``requires_grad``). Its n elements are taken
          flattened in row-major order (``weight.reshape(-1)``) and converted to float32.
        - Blocks: runs of ``block_size`` consecutive elements of the flattened tensor (not of each row);
          the last block holds the remaining n % block_size elements when n is not a multiple.
        - ``absmax``: float32, shape (ceil(n / block_size),), each block's max |x|. An all-zero block's
          absmax is 0.0 (a tiny clamp, at most float32's eps, is also accepted) and its codes are those of 0.0.
        - Codes: each element is scaled by 1 / its block's absmax (in float32; an absmax below 1e-38, a float32
          subnormal, is clamped to 1e-38 for this division, as bitsandbytes does, and stored unclamped, but for a
          short last block, which bitsandbytes 0.50.2 stores clamped to 1e-38: there either is accepted; no larger
          clamp: blocks with an absmax of 1e-30, of float32's smallest normal ``torch.finfo(torch.float32).tiny``
          (1.18e-38) and of the subnormals between 1e-38 and it are graded) and replaced by the index (0..15) of the
          nearest value of ``nf4_code_book()``, i.e. rounded at the midpoints (code[i] + code[i + 1]) / 2
          between neighbouring values (a scaled value within float32 rounding of a midpoint, a few ulps, may
          take either code).
        - ``packed``: torch.uint8, shape (ceil(n / 2),) (bitsandbytes' (ceil(n / 2), 1) is accepted too),
          two codes a byte: element 2i in the high nibble, element 2i + 1 in the low nibble. For odd n the
          last low nibble is the code of 0.0 (7), as bitsandbytes pads.
        - Both results on ``weight``'s device, with no autograd history.

    Returns:
        (packed, absmax).

    Raises:
        ValueError: ``weight`` is empty or not a floating-point tensor, or ``block_size`` is not one that
            bitsandbytes takes: a power of two from 32 to 4096 (a Python int is what is graded: a numpy or 0-d
            torch integer may be taken or refused).
    """
    raise NotImplementedError("kata nf4: write quantize_nf4 (spec in its docstring)")


def dequantize_nf4(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape: tuple[int, ...] | torch.Size,
    dtype: torch.dtype = torch.float32,
    block_size: int = 64,
) -> torch.Tensor:
    """The tensor that ``quantize_nf4`` encoded as ``packed`` and ``absmax``.

    Spec:
        - ``packed``: uint8 codes as ``quantize_nf4`` packs them (any shape holding ceil(n / 2) bytes), where
          n = prod(shape); ``absmax``: float32, ceil(n / block_size) values, one per block.
        - ``shape``: a tuple, list or torch.Size; the result has exactly this shape and dtype ``dtype`` (a shape
          of no values, n = 0, takes 0 bytes and 0 absmax values and gives an empty tensor).
        - Each element is ``nf4_code_book()[code] * absmax[its block]``, computed in float32 and rounded once
          to ``dtype`` (float32, float16 or bfloat16). On ``packed``'s device.

    Raises:
        ValueError: ``packed`` does not hold ceil(n / 2) bytes or ``absmax`` not ceil(n / block_size) values,
            or ``block_size`` is not a power of two from 32 to 4096 (a Python int is what is graded: a numpy or
            0-d torch integer may be taken or refused).
    """
    raise NotImplementedError("kata nf4: write dequantize_nf4 (spec in its docstring)")


class QuantizedAbsmax(NamedTuple):
    """The absmaxes of an NF4 tensor in 8 bits each: QLoRA's double quantization. Keep these fields.

    ``codes``: one byte per absmax (torch.uint8 or torch.int8), shape (n,).
    ``scales``: float32, one per block of ``block_size`` absmaxes, shape (ceil(n / block_size),).
    ``offset``: the mean of all the absmaxes, subtracted before coding (a float32 0-d tensor or a float).
    ``block_size``: the int passed to ``double_quantize``.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    offset: torch.Tensor | float
    block_size: int


def double_quantize(absmax: torch.Tensor, block_size: int = 256) -> QuantizedAbsmax:
    """Code each absmax in 8 bits (QLoRA's double quantization, 4.127 instead of 4.5 bits per weight).

    Spec:
        - ``absmax``: float32, shape (n,) for any n >= 1 (what ``quantize_nf4`` returns); ``block_size``: any
          int >= 1 (not only bitsandbytes' 4-bit block sizes; a Python int is what is graded: a numpy or 0-d torch
          integer may be taken or refused).
        - Subtract the mean of all n absmaxes, cut the centred values into blocks of ``block_size``
          consecutive ones (the last possibly shorter), and code each value in one byte relative to a
          float32 scale of its block. The 8-bit code is yours: linear (int8 times scale / 127) or
          bitsandbytes' dynamic map both do.
        - Graded by size and error, not bit for bit: the ``QuantizedAbsmax`` holds only tensors and numbers
          (a number counts 4 bytes, a tensor all the memory it keeps alive: a slice of a padded tensor keeps the
          padding, so clone it): one byte per absmax, a float32 per block and the offset, so that a
          512 x 1024 NF4 weight takes at most 0.52 bytes per parameter (against 0.5625 with float32
          absmaxes); and ``dequantize_absmax`` gives each absmax back within 1% of its block's largest
          |absmax - mean| (or within float32's own rounding, two ulps of the absmax: at subnormals a step is more
          than 1%), whatever their size (up to 3e38: no float32 sum or product overflows; down to 1e-30 and float32
          subnormals: no eps or clamp swamps a block's scale).
        - No autograd history, whatever ``absmax`` requires (grad, as a leaf or with history of its own);
          ``absmax`` is never modified (values and ``requires_grad``).
    """
    raise NotImplementedError("kata nf4: write double_quantize (spec in its docstring)")


def dequantize_absmax(quantized: QuantizedAbsmax) -> torch.Tensor:
    """The float32 absmaxes, shape (n,), that ``double_quantize`` coded into ``quantized``: a function of its fields'
    values alone (a QuantizedAbsmax rebuilt from copies of them, as after a save and a load, gives the same)."""
    raise NotImplementedError("kata nf4: write dequantize_absmax (spec in its docstring)")
