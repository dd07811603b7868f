"""Kata `gpt2_conv1d`: LoRA on GPT-2, whose attention and MLP layers are transformers' Conv1D, not nn.Linear.

Grade it with: pytest grader/test_gpt2_conv1d.py (needs transformers, and a working LoRALinear and merge_weights)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D  # GPT-2's layer: weight (in, out), y = x @ W + b

from .lora_linear import LoRALinear  # noqa: F401  (use the package's own LoRALinear)
from .merge_weights import merge_weights  # noqa: F401  (and its merge_weights)


class LoRAConv1D(nn.Module):
    r"""A frozen ``transformers.pytorch_utils.Conv1D`` plus a trainable low-rank update.

    .. math::  y = \mathrm{base}(x) + \tfrac{\alpha}{r}\, B A\, \mathrm{dropout}(x)

    GPT-2's ``Conv1D(nf, nx)`` is a linear layer whose weight is stored transposed: ``weight`` has shape
    (in, out) = (nx, nf), ``nf`` is out, it always has a ``bias`` (out,), and it computes ``x @ weight + bias``.
    An ``isinstance(m, nn.Linear)`` test silently skips it.

    Spec (LoRALinear's contract, for a Conv1D base):
        - ``base`` is kept as a submodule: the very object passed in, never a copy. Every parameter of it
          (weight and bias) is frozen (``requires_grad`` False).
        - Attributes ``r``, ``alpha`` and ``scaling == alpha / r``, with alpha as given (2.5 stays 2.5, never rounded).
        - Exactly two trainable tensors, the low-rank factors, r * (in + out) numbers in all, created on the
          base's device and in its dtype: ``A`` (r, in) or (in, r), and ``B`` (out, r) or (r, out). Raw
          ``nn.Parameter`` or bias-free ``nn.Linear`` submodules are both fine; the names are yours.
        - The update is ``dW = scaling * B @ A``, shape (out, in), rank <= r: the layer computes
          ``base(x) + x @ dW.T``. (Added to the Conv1D's (in, out) weight, it is ``dW.T``.)
        - At construction the layer computes exactly ``base(x)``: ``B`` is zeros and ``A`` is random
          (a fresh draw from torch's RNG for every layer: Kaiming-uniform as ``nn.Linear`` does, or Gaussian).
        - ``dropout`` zeroes inputs of the adapter branch only (never the base path), and only in train
          mode, as ``nn.Dropout`` does (survivors scaled by 1 / (1 - p)).
        - A factor the caller froze (``requires_grad_(False)``, one or both) still adds its share to y and
          to the gradient of x, and ``merge_gpt2`` folds it in all the same.

    Args:
        base: the Conv1D to adapt, weight (in, out).
        r: rank of the update.
        alpha: numerator of the scaling ``alpha / r``.
        dropout: dropout probability on the adapter branch's input.

    Raises:
        ValueError: ``base`` is not a transformers ``Conv1D`` (a subclass of it is one; an ``nn.Linear`` is
            not, nor another library's class of that name, nor an adapter: LoRA is never stacked on LoRA),
            ``r`` is not an int >= 1 (2.0 is not), or
            ``dropout`` is outside [0, 1).
    """

    def __init__(self, base: Conv1D, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        raise NotImplementedError("kata gpt2_conv1d: write LoRAConv1D.__init__ (spec in its class docstring)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` of shape (..., in) to (..., out), in the base's dtype and on its device."""
        raise NotImplementedError("kata gpt2_conv1d: write LoRAConv1D.forward (spec in its class docstring)")


def apply_lora_gpt2(
    model: nn.Module,
    target_modules: Iterable[str] = ("c_attn",),
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
) -> nn.Module:
    """Put LoRA adapters, in place, on the targeted ``Conv1D`` and ``nn.Linear`` layers of ``model`` (a GPT-2).

    Spec (apply_lora's contract, for both kinds of layer):
        - A module is targeted when it is a ``Conv1D`` or an ``nn.Linear`` (a subclass of either, as models
          define them, is one) and its qualified name (as in ``model.named_modules()``; a layer a shared
          block holds under several names may be matched by the first or, as apply_lora does, by any of
          them: both are graded right) equals a target or ends with ``"." + target``, compared as strings
          (never as glob or regex patterns, never stripped or split at commas): ``"c_proj"`` is both
          ``attn.c_proj`` and ``mlp.c_proj``, ``"attn.c_proj"`` only the first, ``"1.attn.c_attn"`` is in
          ``h.1`` and not in ``h.11``.
          ``target_modules`` is any iterable of names (a str is one name).
        - Each targeted ``Conv1D`` becomes ``LoRAConv1D(layer, r, alpha, dropout)``, each targeted
          ``nn.Linear`` this package's own ``LoRALinear(layer, r, alpha, dropout)``, wrapping the original
          layer object (no copies), with this call's r, alpha and dropout as given (r above min(in, out) too).
        - ``lm_head`` (an ``nn.Linear`` whose weight is tied to, i.e. is the very Parameter of,
          ``transformer.wte``) is adapted only when a target names it, and the tie survives: no copy of
          the weight, ever.
        - Every other parameter of the model is frozen: afterwards only the adapters' factors are
          trainable, as many numbers as peft's ``get_peft_model`` trains for the same targets and r (after
          every call: a parameter unfrozen since an earlier call is frozen again).
        - A layer that already is a ``LoRAConv1D`` or ``LoRALinear`` is never wrapped again, nor is any layer
          inside one (its base): a second call adapts only its new targets, and the adapters already there keep
          their own r, alpha, dropout and factors, trainable (after a checkpoint's reload too).
        - Returns ``model`` itself.

    Raises:
        ValueError: nothing matched; the message names the targets.
    """
    raise NotImplementedError("kata gpt2_conv1d: write apply_lora_gpt2 (spec in its docstring)")


def merge_gpt2(model: nn.Module) -> nn.Module:
    """Fold every adapter of ``model`` into a plain layer, in place, for inference.

    Spec:
        - Every ``LoRAConv1D`` becomes a ``Conv1D`` (the class itself, not a subclass, whatever the base's
          class) holding weight ``W + dW.T`` (in, out), with ``dW = scaling * B @ A`` (out, in), and the base's
          bias, in the base's dtype and on its device; every ``LoRALinear`` becomes an ``nn.Linear`` (use
          ``merge_weights``).
        - The new weights are computed without autograd: ``nn.Parameter`` leaves with no grad history, and no
          inference tensor, even when ``merge_gpt2`` is called under the caller's ``torch.inference_mode()`` (as
          ``merge_weights``): the merged model still runs under autograd.
        - With fp16/bf16 weights, W and the update are added in float32 and the sum rounded once: every
          merged number within one unit in the last place of that sum (peft's merge, with its float32
          factors, passes).
        - In eval mode the merged model computes what the adapted one did (to 1e-5 in float32, as peft's
          ``merge_and_unload`` does), whatever mode it was in when merged. That includes a tied ``lm_head``:
          merging it must not change ``wte`` (peft's ``merge_and_unload`` writes the update into the shared
          weight, so the embeddings change too: do better), so give the merged layer a weight of its own.
        - An adapter registered under several names (a shared block, an alias) is replaced under each.
        - Only the adapters are replaced: every other module is left as it was, its train or eval mode
          included (merging is no ``model.eval()``). Merging a model with nothing left to merge changes nothing.
        - Returns ``model``, or the new ``Conv1D`` when ``model`` is a ``LoRAConv1D`` itself (the merged
          ``nn.Linear`` when it is a ``LoRALinear``, as ``merge_weights`` returns it).
    """
    raise NotImplementedError("kata gpt2_conv1d: write merge_gpt2 (spec in its docstring)")
