"""train_step written by hand: the loss by log_softmax and gather, the schedule as an LRScheduler subclass with
a closed form, clipping by hand, a skipped step told by the scale, the micro-batches read from any iterable."""

from __future__ import annotations

import math

import torch

IGNORE_INDEX = -100


def causal_lm_loss(logits, labels, reduction="sum"):
    if reduction not in {"sum", "mean"} or logits.ndim != 3 or tuple(labels.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"bad arguments: reduction={reduction!r}, logits {logits.shape}, labels {labels.shape}")
    if logits.dtype in {torch.float16, torch.bfloat16}:
        logits = logits.to(torch.float32)
    targets = labels[..., 1:]
    keep = targets.ne(IGNORE_INDEX)
    log_probs = torch.log_softmax(logits[..., :-1, :], dim=-1)
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    total = -torch.where(keep, picked, torch.zeros_like(picked)).sum()
    if reduction == "mean":
        if not keep.any():
            raise ValueError("mean over zero targets")
        total = total / keep.sum()
    return total


def make_optimizer(model, lr=3e-4, weight_decay=0.0):
    chosen = {id(p): p for p in model.parameters() if p.requires_grad}
    if len(chosen) == 0:
        raise ValueError("nothing to train")
    return torch.optim.AdamW([{"params": list(chosen.values())}], lr=lr, weight_decay=weight_decay)


class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
    def __init__(self, optimizer, warmup_steps, total_steps):
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        super().__init__(optimizer)

    def get_lr(self):
        n, w, t = self.last_epoch, self.warmup_steps, self.total_steps
        if n < w:
            f = n / w
        elif n <= t:
            f = (1 + math.cos(math.pi * (n - w) / max(1, t - w))) / 2
        else:
            f = 0.0
        return [base * f for base in self.base_lrs]


def cosine_with_warmup(optimizer, warmup_steps, total_steps):
    if not 0 <= warmup_steps <= total_steps or total_steps < 1:
        raise ValueError(f"bad schedule: warmup {warmup_steps}, total {total_steps}")
    return WarmupCosine(optimizer, warmup_steps, total_steps)


def train_step(model, micro_batches, optimizer, scheduler, max_grad_norm=1.0, scaler=None):
    window = tuple(micro_batches)
    count = 0
    for mb in window:
        count += int(mb["labels"][:, 1:].ne(IGNORE_INDEX).sum().item())
    if count == 0:
        raise ValueError("no targets in this window")
    running = torch.zeros((), dtype=torch.float64)
    for mb in window:
        out = model(attention_mask=mb["attention_mask"], input_ids=mb["input_ids"])
        logits = getattr(out, "logits", out)
        part = causal_lm_loss(logits, mb["labels"]) / count
        running += part.detach().double()
        torch.autograd.backward(scaler.scale(part) if scaler else part)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if scaler:
        scaler.unscale_(optimizer)
    if max_grad_norm is not None and params:
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
        if norm > max_grad_norm:  # exactly to max_grad_norm (torch divides by norm + 1e-6)
            for p in params:
                p.grad.mul_(max_grad_norm / norm)
    skipped = False
    if scaler:
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped = scaler.get_scale() < before
    else:
        optimizer.step()
    if not skipped:
        scheduler.step()
    for p in params:
        p.grad = None
    return float(running)
