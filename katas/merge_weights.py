"""Kata `merge_weights`: fold LoRA updates back into plain linear layers for inference.

Grade it with: pytest grader/test_merge_weights.py (needs a working LoRALinear first)
"""

from __future__ import annotations

from torch import nn

from .lora_linear import LoRALinear  # noqa: F401  (use the package's own LoRALinear)


def merge_weights(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` in ``model`` by an ``nn.Linear`` holding ``W + dW``, in place.

    Spec:
        - The merged layer is an ``nn.Linear``: the base layer itself with its weight replaced (its class
          kept, as peft's ``merge_and_unload`` does), or a new ``nn.Linear``. Reuse the base only where
          nothing else in ``model`` holds it: a base also registered outside its adapter (``enc.0`` and
          ``block.q_proj`` one layer, only ``block`` adapted) keeps computing ``W`` there.
        - It holds weight ``W + scaling * B @ A`` (out, in) and the base's bias
          (or no bias when the base had none), in the base's dtype and on its device.
        - The new weight is computed without autograd (``torch.no_grad()``): a leaf with no grad history,
          and no inference tensor (``torch.inference_mode()``), even when ``merge_weights`` is called under the
          caller's ``torch.inference_mode()``: the merged model still runs under autograd.
        - With fp16/bf16 weights, the sum is computed in float32 and rounded once; other dtypes add in
          their own (a float64 model keeps float64 precision). Each layer's own dtype decides, not the model's.
        - An adapter registered under several names (a shared block, an alias) is replaced under each,
          and no weight another layer shares (a tied embedding) is changed.
        - In eval mode the merged model computes what the unmerged one did (to 1e-5 in float32),
          whatever mode (train or eval) the model was in when merged. That holds where the base computes
          ``F.linear(x, weight, bias)``: a subclass with its own forward, or a layer with hooks, cannot fold
          an update into one weight, and there either merge the first sentence allows is accepted.
        - Returns ``model``, or the merged ``nn.Linear`` when ``model`` is a ``LoRALinear`` itself.
    """
    raise NotImplementedError("kata merge_weights: write merge_weights (spec in its docstring)")
