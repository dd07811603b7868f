"""train_step that backpropagates each micro-batch's summed loss and divides the accumulated gradients by the
window's target count once, after the last backward: the same gradients in another order of operations, which
under bf16 autocast round otherwise than the reference's. Under a GradScaler (fp16) the count goes into the loss
instead, so the scaled gradients stay within float16's range."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # the label F.cross_entropy skips by default


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy of each position's logits against the next position's label, -100 ignored.

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
    total = F.cross_entropy(predictions, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    if reduction == "sum":
        return total
    count = (targets != IGNORE_INDEX).sum()
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
    """One optimizer step over ``micro_batches``; the gradients are divided by the target count after the backward."""
    window = list(micro_batches)
    counts = [int(batch["labels"][:, 1:].ne(IGNORE_INDEX).sum()) for batch in window]
    tokens = sum(counts)
    if tokens == 0:
        raise ValueError("no target in the window: nothing to learn from")
    held = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    # fp16: a summed loss's gradients (times the scale, or over many targets after a spike) could overflow
    divide_first = scaler is not None or any(parameter.dtype == torch.float16 for parameter in held)
    summed = 0.0
    for batch in window:
        outputs = model(attention_mask=batch["attention_mask"], input_ids=batch["input_ids"])
        logits = getattr(outputs, "logits", outputs)
        loss = causal_lm_loss(logits, batch["labels"])
        summed += loss.item()
        if divide_first:
            (loss / tokens if scaler is None else scaler.scale(loss / tokens)).backward()
        else:
            loss.backward()
    if not divide_first:
        for parameter in held:
            if parameter.grad is not None:
                parameter.grad.div_(tokens)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(held, max_grad_norm)
    stepped = True
    if scaler is None:
        optimizer.step()
    else:
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        stepped = scaler.get_scale() >= before
    if stepped:
        scheduler.step()
    for parameter in held:
        parameter.grad = None
    return summed / tokens
