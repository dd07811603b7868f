"""train_step with the micro-batches taken largest first, each one's mean loss weighted by its share of the window's
targets, backward(inputs=...), and a skipped step told by the scaler's found-inf (red team round 10)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    if not isinstance(reduction, str) or reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if logits.dim() != 3 or labels.dim() != 2 or tuple(labels.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)}: expected (b, s, v), (b, s)")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
    targets = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(shifted, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    if reduction == "sum":
        return total
    count = int((targets != IGNORE_INDEX).sum())
    if count == 0:
        raise ValueError("reduction='mean' with no target that carries loss")
    return total / count


def make_optimizer(model: nn.Module, lr: float = 3e-4, weight_decay: float = 0.0) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter")
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int):
    if warmup_steps < 0 or total_steps < 1 or warmup_steps > total_steps:
        raise ValueError(f"impossible schedule: warmup_steps {warmup_steps}, total_steps {total_steps}")

    def factor(n: int) -> float:
        if n < warmup_steps:
            return n / warmup_steps
        if n > total_steps:
            return 0.0
        return 0.5 * (1 + math.cos(math.pi * (n - warmup_steps) / max(1, total_steps - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _logits(output):
    return getattr(output, "logits", output)


def train_step(
    model, micro_batches: Sequence[dict[str, torch.Tensor]], optimizer, scheduler, max_grad_norm=1.0, scaler=None
) -> float:
    """Micro-batches largest first (the peak memory comes with the first forward, so an OOM shows at once, before any
    work is wasted; the sum of the gradients does not depend on the order); each one's mean loss weighted by its
    share of the window's targets; backward(inputs=...) onto the optimizer's trainable parameters; a skipped step told
    by the scaler's found-inf."""
    counts = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches]
    total = sum(counts)
    if not total:
        raise ValueError("the window holds no target that carries loss")
    held = [p for group in optimizer.param_groups for p in group["params"]]
    inputs = [p for p in held if p.requires_grad]
    optimizer.zero_grad(set_to_none=False)
    returned = 0.0
    order = sorted(zip(micro_batches, counts, strict=True), key=lambda pair: pair[0]["input_ids"].numel(), reverse=True)
    for batch, count in order:
        logits = _logits(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
        if count:
            share = causal_lm_loss(logits, batch["labels"], "mean") * (count / total)
        else:
            share = causal_lm_loss(logits, batch["labels"], "sum")  # 0, still a function of the logits
        returned += share.item()
        (scaler.scale(share) if scaler is not None else share).backward(inputs=inputs)
    skipped = False
    if scaler is not None:
        scaler.unscale_(optimizer)
        # a disabled scaler (GradScaler(enabled=False)) records no found-inf: it never skips
        skipped = scaler.is_enabled() and any(v.item() for v in scaler._found_inf_per_device(optimizer).values())
    if max_grad_norm is not None:
        grads = [p.grad for p in held if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
        torch.nn.utils.clip_grads_with_norm_([p for p in held if p.grad is not None], max_grad_norm, norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if not skipped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=False)
    return returned
