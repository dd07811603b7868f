"""Reference answer to the `train_step` kata: one optimizer step of LoRA fine-tuning over a window of micro-batches."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # the label F.cross_entropy skips by default


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy of each position's logits against the next position's label, -100 ignored (left out).

    Half-precision logits are upcast to float32 first (as transformers does); float32 and float64 stay.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (batch, seq, vocab) and labels (batch, seq), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    predictions = logits[:, :-1].reshape(-1, logits.shape[-1])  # position t predicts token t + 1
    targets = labels[:, 1:].reshape(-1).to(predictions.device)
    keep = targets != IGNORE_INDEX
    # only the targets enter the loss and its backward: ignore_index gives the same loss, but its backward turns NaN or
    # inf logits elsewhere (a fully masked attention row, an fp16 overflow) into NaN gradients there (0 x NaN)
    total = F.cross_entropy(predictions[keep], targets[keep], reduction="sum")
    if reduction == "sum":
        return total
    count = keep.sum()
    if count == 0:
        raise ValueError("no label carries loss after the shift: the mean would be NaN")
    return total / count


def make_optimizer(model: nn.Module, lr: float = 3e-4, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over exactly the trainable parameters, in one group, betas (0.9, 0.999)."""
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameter: apply the adapters first")
    return torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over ``warmup_steps``, then a half cosine down to 0 at ``total_steps``, then 0."""
    if warmup_steps < 0 or total_steps < 1 or warmup_steps > total_steps:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, got warmup_steps={warmup_steps}, "
            f"total_steps={total_steps}"
        )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        if step > total_steps:
            return 0.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(
    model: nn.Module,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float | None = 1.0,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One optimizer step over the window ``micro_batches``; returns the window's mean token loss.

    Each micro-batch's summed token loss is divided by the label tokens of the whole window, so every
    token weighs the same whatever micro-batch it is in (averaging per micro-batch would not).
    """
    micro_batches = list(micro_batches)
    tokens = sum(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) for batch in micro_batches)
    if tokens == 0:
        raise ValueError("the window holds no label token that carries loss: the step would be NaN")
    total = 0.0
    for batch in micro_batches:
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = outputs if isinstance(outputs, torch.Tensor) else outputs.logits
        loss = causal_lm_loss(logits, batch["labels"], reduction="sum") / tokens
        (loss if scaler is None else scaler.scale(loss)).backward()
        total += loss.item()
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    if scaler is None:
        optimizer.step()
        stepped = True
    else:
        scale = scaler.get_scale()
        scaler.step(optimizer)  # skipped when the gradients hold inf or NaN
        scaler.update()
        stepped = scaler.get_scale() >= scale  # the scale drops exactly when the step was skipped
    if stepped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total
