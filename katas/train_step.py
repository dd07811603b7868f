"""Kata `train_step`: one optimizer step of LoRA fine-tuning over a window of micro-batches.

The training loop of a LoRA run: AdamW on the adapters only, a cosine schedule with warmup, gradient
accumulation over several micro-batches, clipping, mixed precision, and the loss on response tokens
only. Its bugs are silent: Adam barely notices a gradient off by a constant factor, so the final
weights and the loss curve look fine. The grader looks at the gradients the optimizer is handed.

A micro-batch is a dict of ``collate`` (kata `masked_prompt`): ``input_ids``, ``labels`` and
``attention_mask``, LongTensors of shape (batch, seq), already on the model's device; labels are -100
where no loss is due (bos, the prompt, padding). The model is called as
``model(input_ids=..., attention_mask=...)`` and returns the logits (batch, seq, vocab), or an object
with a ``.logits`` attribute, as a transformers model does.

Grade it with: pytest grader/test_train_step.py
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

IGNORE_INDEX = -100  # the label F.cross_entropy skips by default


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """The causal language-modelling loss: the logits at position t predict the label at position t + 1.

    Spec:
        - ``logits`` (batch, seq, vocab), ``labels`` (batch, seq) of token ids or ``IGNORE_INDEX``.
        - Shift by one as causal LMs do: the last position predicts nothing, the first label is never a
          target; targets equal to ``IGNORE_INDEX`` carry no loss. A position without a target (its target
          ``IGNORE_INDEX``, or the last) takes no part in the loss whatever its logits: NaN or inf there (a fully
          masked attention row, an fp16 overflow) leave the loss's value unchanged (the gradient that reaches
          such logits is not part of the contract: ``ignore_index`` cross-entropy's NaN there is fine).
        - ``reduction="sum"``: the sum of the token losses (cross-entropy, natural log) over the targets
          that carry loss; ``"mean"``: that sum divided by their count.
        - Returns a 0-dim tensor that autograd can differentiate. Half-precision logits (float16, bfloat16)
          are upcast to float32 before the loss; float32 and float64 logits keep their dtype.

    Raises:
        ValueError: ``reduction`` is neither "sum" nor "mean"; logits are not 3-D or labels are not of
            shape (batch, seq); ``"mean"`` with no target that carries loss (it would be NaN).
    """
    raise NotImplementedError("kata train_step: write causal_lm_loss (spec in its docstring)")


def make_optimizer(model: nn.Module, lr: float = 3e-4, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over exactly the trainable parameters of ``model``.

    Spec:
        - Holds every parameter of ``model`` that requires grad, each once, and no other (no frozen
          base weight), in one parameter group.
        - That group has ``lr``, ``weight_decay`` (default 0: no decay on the adapters), betas
          (0.9, 0.999) and eps 1e-8; AdamW's other options keep their defaults (plain AdamW: amsgrad
          and maximize off).

    Raises:
        ValueError: ``model`` has no trainable parameter.
    """
    raise NotImplementedError("kata train_step: write make_optimizer (spec in its docstring)")


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A learning-rate schedule: linear warmup from 0, then a half cosine down to 0 at ``total_steps``.

    Spec:
        - Returns a ``torch.optim.lr_scheduler.LambdaLR`` (or another ``LRScheduler`` that sets the same
          rates). After ``n`` calls of its ``step()``, every parameter group's lr is its initial lr times
            ``n / warmup_steps``                                            for n < warmup_steps,
            ``0.5 * (1 + cos(pi * (n - warmup_steps) / max(1, total_steps - warmup_steps)))``
                                                                           for warmup_steps <= n <= total_steps,
            ``0``                                                           for n > total_steps.
          These are the numbers of transformers' ``get_cosine_schedule_with_warmup`` up to total_steps
          (an lr of 0 before the first step when warmup_steps > 0); past it, transformers' cosine would
          rise again, this one stays at 0.

    Raises:
        ValueError: warmup_steps < 0, total_steps < 1, or warmup_steps > total_steps (transformers does
            not check). Raised before touching ``optimizer``: a refused call leaves its param_groups as
            they were (building a LambdaLR sets every lr to ``lr_lambda(0)`` and adds ``initial_lr``).
    """
    raise NotImplementedError("kata train_step: write cosine_with_warmup (spec in its docstring)")


def train_step(
    model: nn.Module,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float | None = 1.0,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One optimizer step over the window ``micro_batches`` (gradient accumulation); returns its mean token loss.

    Spec:
        - Gradients accumulate over every micro-batch of the window (one forward and one backward each)
          with every label token weighted equally across the window: each micro-batch contributes the
          sum of its token losses (``causal_lm_loss(..., reduction="sum")``) divided by N, the number of
          targets that carry loss after the shift in the whole window. Padding and prompt tokens
          (label -100) never count in N, nor in the loss: NaN or inf logits there (an fp16 model's
          overflow at padding) leave the returned loss as it would be with any other logits.
        - Then the gradients are clipped to a total L2 norm of ``max_grad_norm`` over the optimizer's
          parameters (``None``: no clipping), one ``optimizer.step()``, one ``scheduler.step()`` after
          it, and the gradients are zeroed (or set to None), ready for the next window. Entering, the
          gradients are zero or None, as the previous call left them.
        - With a ``torch.amp.GradScaler`` (``scaler``, fp16 mixed precision): backward on the scaled
          loss, ``scaler.unscale_(optimizer)`` before clipping (clip the true gradients), then
          ``scaler.step(optimizer)`` and ``scaler.update()`` once. When the scaler skips the step
          (inf or NaN gradients: its scale drops at update()), the scheduler is not stepped either, as
          transformers does.
        - Works inside ``torch.autocast`` (the caller enters it, e.g. bf16): the loss is computed in float32.
        - Returns the window's mean token loss (sum of every token loss over N, before the step) as a
          Python float.

    Raises:
        ValueError: the window holds no target that carries loss (empty, or every label -100): it
            would be a NaN step. Raised before any forward pass.
    """
    raise NotImplementedError("kata train_step: write train_step (spec in its docstring)")
