"""Right answer to the `train_step` kata: train_step logs each window as a trainer does (round 15, team B, 09)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
log = logging.getLogger(__name__)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    if not isinstance(reduction, str) or reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if logits.dim() != 3:
        raise ValueError(f"logits must be 3-D (batch, seq, vocab), got shape {tuple(logits.shape)}")
    if labels.dim() != 2 or tuple(labels.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"labels must have shape {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    targets = labels[:, 1:].reshape(-1)
    keep = targets != IGNORE_INDEX
    count = int(keep.sum())
    if reduction == "mean" and count == 0:
        raise ValueError("reduction='mean' with no target that carries loss (the mean would be NaN)")
    # select the targets: positions without one never enter the computation (NaN/inf there is harmless)
    selected = shifted_logits[keep]
    total = F.cross_entropy(selected, targets[keep], reduction="sum")
    if reduction == "mean":
        return total / count
    return total


def make_optimizer(model: nn.Module, lr: float = 3e-4, weight_decay: float = 0.0) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() deduplicates by identity
    if not params:
        raise ValueError("the model has no trainable parameter")
    return torch.optim.AdamW([{"params": params}], lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps {warmup_steps} > total_steps {total_steps}")

    def factor(n: int) -> float:
        if n < warmup_steps:
            return n / warmup_steps
        if n > total_steps:
            return 0.0
        progress = (n - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _logits(output):
    return output if isinstance(output, torch.Tensor) else output.logits


def train_step(
    model: nn.Module,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float | None = 1.0,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    micro_batches = list(micro_batches)
    n = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
    if n == 0:
        raise ValueError("the window holds no target that carries loss (empty, or every label -100)")
    total = 0.0
    for batch in micro_batches:
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = causal_lm_loss(_logits(output), batch["labels"], reduction="sum") / n
        total += loss.item()
        (scaler.scale(loss) if scaler is not None else loss).backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_grad_norm)
    if scaler is not None:
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped = scaler.get_scale() < before
    else:
        optimizer.step()
        skipped = False
    if not skipped:
        scheduler.step()
    # STYLE: log the window like a trainer does: its loss and the lr the next window will use
    log.debug("step %d: loss %.4f, lr %.3g", scheduler.last_epoch, total, scheduler.get_last_lr()[0])
    optimizer.zero_grad(set_to_none=True)
    return float(total)
