"""What the train_step checks grade with: a tiny causal LM, micro-batches with traps, spies on the optimizer and
the scheduler, and the grader's own reference step, which also computes what the classic mistakes would give."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch._dynamo
import torch.nn.functional as F  # it now, before the tamper guard records torch, or the first check looks tampered)
from torch import nn

IGNORE = -100
PAD = 0
VOCAB, WIDTH, RANK = 11, 6, 2


@dataclass
class Output:
    """What a transformers causal LM returns: ``.logits``, and ``.loss`` (its own mean over the batch) with labels."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class TinyLM(nn.Module):
    """A causal LM small enough to grade in float64: a frozen embedding and projection with a trainable
    low-rank adapter beside it and a trainable head bias. Each position sees the mean of the attended
    embeddings up to it, so both the shift and the attention mask change the gradients.

    ``returns="object"`` gives an ``Output`` (and, with ``labels``, transformers' per-batch mean loss);
    ``"tensor"`` gives the logits and takes no labels.
    ``stray``, ``idle`` and ``outside`` add the parameters of ``rig``'s options of those names.
    """

    def __init__(
        self,
        returns: str = "object",
        dtype: torch.dtype = torch.float64,
        stray: bool = False,
        idle: bool = False,
        outside: bool = False,
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.returns = returns
        self.embed = nn.Embedding(VOCAB, WIDTH, dtype=dtype)
        self.weight = nn.Parameter(torch.randn(WIDTH, WIDTH, generator=generator, dtype=dtype) / WIDTH**0.5)
        self.lora_A = nn.Parameter(0.5 * torch.randn(RANK, WIDTH, generator=generator, dtype=dtype))
        self.lora_B = nn.Parameter(0.5 * torch.randn(WIDTH, RANK, generator=generator, dtype=dtype))
        self.head = nn.Linear(WIDTH, VOCAB, dtype=dtype)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(VOCAB, WIDTH, generator=generator, dtype=dtype))
            self.head.weight.copy_(3 * torch.randn(VOCAB, WIDTH, generator=generator, dtype=dtype))
            self.head.bias.copy_(0.3 * torch.randn(VOCAB, generator=generator, dtype=dtype))
        for frozen in (self.embed.weight, self.weight, self.head.weight):
            frozen.requires_grad_(False)
        # stray: a trainable logit bias that the optimizer does not hold (zero: the logits are the same)
        self.stray = nn.Parameter(torch.zeros(VOCAB, dtype=dtype)) if stray else None
        # idle: a second adapter's factor, trainable, that this forward never reaches (its gradient stays None)
        self.idle = nn.Parameter(torch.zeros(RANK, WIDTH, dtype=dtype)) if idle else None
        # outside: a logit bias the forward uses, held in a plain list, so that no model.parameters() walk sees it
        self.outside = [nn.Parameter(torch.zeros(VOCAB, dtype=dtype))] if outside else []
        self.forwards = 0  # calls of the model (model(...)), counted by a hook: model.forward(...) skips hooks
        self.backward_passes: list[int] = []  # the autograd graph task of every backward through the logits
        self.masks: list[torch.Tensor | None] = []  # the attention_mask of every call
        self.inputs: list[torch.Tensor | None] = []  # the input_ids of every call
        self.grad_factor = 1.0  # every backward through the logits multiplies their gradient by it (inf: poisoned)
        # (token, value): every position's logit of that token is value, as a vocabulary mask leaves it (-inf); a
        # token that is never a target leaves the loss and the gradients as they are, one that is makes them inf/NaN
        self.fill_token: tuple[int, float] | None = None
        self.register_forward_pre_hook(self._count_call, with_kwargs=True)
        # as a transformers model of a GPT-2 or Llama set-up: pad = eos, a token whose labels carry loss
        self.config = SimpleNamespace(pad_token_id=PAD, eos_token_id=PAD)

    def _count_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """What peft's and accelerate's hooks see: only a call of the model, not of its forward, runs them."""
        self.forwards += 1
        self.masks.append(kwargs.get("attention_mask"))
        self.inputs.append(kwargs.get("input_ids"))

    def forward(
        self,
        *positional: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ):
        if positional or input_ids is None:  # a forward(self, *, input_ids, attention_mask), as the spec allows
            raise TypeError("this model takes keyword arguments only: call model(input_ids=..., attention_mask=...)")
        if labels is not None and self.returns == "tensor":
            raise TypeError("this model takes input_ids and attention_mask only: pass no labels")
        if attention_mask is None:  # as transformers models: attend to everything
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.to(self.embed.weight.dtype).unsqueeze(-1)
        hidden = self.embed(input_ids) * mask
        context = hidden.cumsum(1) / (mask.cumsum(1) + 1)
        z = torch.tanh(context @ self.weight.T + (context @ self.lora_A.T) @ self.lora_B.T)
        logits = self.head(z) if self.stray is None else self.head(z) + self.stray
        for bias in self.outside:
            logits = logits + bias
        if self.fill_token is not None:
            token, value = self.fill_token
            logits = logits.index_fill(-1, torch.tensor([token]), value)
        if logits.requires_grad:
            logits.register_hook(self._count_backward)
        if self.grad_factor != 1 and logits.requires_grad:
            logits.register_hook(lambda grad: grad * self.grad_factor)
        if self.returns == "tensor":
            return logits
        loss = None
        if labels is not None:  # transformers' own loss: the mean over this batch's targets
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE)
        return Output(logits, loss)

    def _count_backward(self, grad: torch.Tensor) -> None:
        self.backward_passes.append(torch._C._current_graph_task_id())

    @property
    def backwards(self) -> int:
        """How many backward passes (``backward()`` or ``autograd.grad`` calls) went through the logits."""
        return len(set(self.backward_passes))

    def trainable(self) -> list[nn.Parameter]:
        """The parameters the rig's optimizer holds first (not ``stray``; ``idle`` and ``outside`` come after)."""
        return [self.lora_A, self.lora_B, self.head.bias]

    def reached(self) -> list[nn.Parameter]:
        """What the reference step differentiates: the trainable parameters the forward reaches, and the
        ``outside`` one (not ``stray``, which the optimizer does not hold, nor ``idle``, which no forward reaches)."""
        return [*self.trainable(), *self.outside]

    def reached_names(self) -> list[str]:
        return [*PARAMETER_NAMES, *(OUTSIDE_NAME for _ in self.outside)]


def holding_gradients(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
    """The parameters of ``model``, and those ``optimizer`` holds outside it, whose gradient is neither None nor all
    zeros (NaN and inf count as held)."""
    named = dict(model.named_parameters())
    own = {id(p) for p in named.values()}
    if optimizer is not None:
        held = [p for group in optimizer.param_groups for p in group["params"] if id(p) not in own]
        named |= {f"a parameter the optimizer holds outside the model ({i})": p for i, p in enumerate(held)}
    return [name for name, p in named.items() if p.grad is not None and not bool((p.grad == 0).all())]


PARAMETER_NAMES = ("lora_A", "lora_B", "head.bias")
OUTSIDE_NAME = "the logit bias the optimizer holds outside the model"


def micro_batch(lengths: list[int], labelled: list[int], raw: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """A right-padded micro-batch as collate makes it: row i holds ``lengths[i]`` tokens whose last
    ``labelled[i]`` carry labels; ``raw`` labels every token, the first too (plain language modelling).
    Token ids are drawn from the whole vocabulary: the pad id also occurs as a labelled token, as when a
    tokenizer pads with eos."""
    generator = torch.Generator().manual_seed(seed)
    seq = max(lengths)
    input_ids = torch.full((len(lengths), seq), PAD, dtype=torch.long)
    labels = torch.full((len(lengths), seq), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(lengths), seq), dtype=torch.long)
    for row, (length, count) in enumerate(zip(lengths, labelled, strict=True)):
        input_ids[row, :length] = torch.randint(0, VOCAB, (length,), generator=generator)  # PAD is a token too
        attention_mask[row, :length] = 1
        start = 0 if raw else length - count
        labels[row, start:length] = input_ids[row, start:length]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def unequal_window() -> list[dict[str, torch.Tensor]]:
    """Three micro-batches of very different label counts (3, 12, 6 targets), padding, and one raw row whose
    first label is not -100: every way of counting the normaliser wrong gives another number. Two labelled tokens
    have an attention_mask of 0 (an example's own mask zeros, which collate keeps): one inside the batch, one the
    last column of every row (no padding to trim); they still carry loss."""
    second = micro_batch([5, 5, 5], [4, 4, 4], seed=2)
    second["attention_mask"][1, 3] = 0
    third = micro_batch([7], [7], raw=True, seed=3)
    third["attention_mask"][:, -1] = 0
    return [micro_batch([9, 4], [1, 2], seed=1), second, third]


def targets(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


class Events(list):
    """What happened, in order: "forward", "optimizer.step", "scheduler.step", "zero_grad"."""


class SpyOptimizer(torch.optim.SGD):
    """Plain SGD that records, at each ``step()``, the gradients it is handed and its learning rates."""

    def __init__(self, parameters: list, lr: float = 0.1, events: Events | None = None) -> None:
        super().__init__(parameters, lr=lr)  # a list of parameters, or of parameter groups
        self.events = Events() if events is None else events
        self.handed: list[list[torch.Tensor | None]] = []
        self.stepped: list[list[torch.Tensor]] = []  # the parameters it held at each step, in handed's order
        self.lrs: list[float] = []

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        self.events.append("optimizer.step")
        parameters = [p for group in self.param_groups for p in group["params"]]
        self.handed.append([None if p.grad is None else p.grad.detach().clone() for p in parameters])
        self.stepped.append(parameters)
        self.lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)

    def forget(self) -> None:
        """Forget the steps taken so far (the gradients handed and the parameters held then)."""
        self.handed.clear()
        self.stepped.clear()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.events.append("zero_grad")
        super().zero_grad(set_to_none)


class SpyScheduler(torch.optim.lr_scheduler.LRScheduler):
    """A real LRScheduler (the type the spec promises: ``last_epoch``, ``get_last_lr()``, ``state_dict()`` ...) that
    records its ``step()`` calls and keeps the optimizer's learning rates as they are; with ``inner`` (a real
    LRScheduler) it also steps that, and its lrs are inner's."""

    def __init__(
        self,
        events: Events,
        inner: torch.optim.lr_scheduler.LRScheduler | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.events, self.inner, self.steps, self._recording = events, inner, 0, False
        if optimizer is None:
            optimizer = inner.optimizer if inner is not None else torch.optim.SGD([torch.zeros(1, requires_grad=True)])
        super().__init__(optimizer)  # takes its initial step, which is not recorded
        self._recording = True

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self, *args: object) -> None:
        if not self._recording:
            super().step()
            return
        self.events.append("scheduler.step")
        self.steps += 1
        if self.inner is not None:
            self.inner.step(*args)
        with warnings.catch_warnings():  # a step before any optimizer.step() (a skipped one) is the checks' to judge
            warnings.simplefilter("ignore", UserWarning)
            super().step()


@dataclass
class Rig:
    """A model with a spy optimizer and scheduler sharing one event log."""

    model: TinyLM
    optimizer: SpyOptimizer
    scheduler: SpyScheduler
    events: Events = field(default_factory=Events)


def rig(
    returns: str = "object",
    dtype: torch.dtype = torch.float64,
    lr: float = 0.1,
    groups: bool = False,
    stray: bool = False,
    idle: bool = False,
    outside: bool = False,
) -> Rig:
    """``groups``: the optimizer holds the factors and the head bias in two parameter groups; ``stray``: the model
    also has a trainable parameter that the optimizer does not hold. The optimizer also holds, after the model's
    three (``PARAMETER_NAMES``), with ``idle`` a trainable parameter of the model that no forward reaches, and with
    ``outside`` one the forward uses that is no parameter of the model."""
    events = Events()
    model = TinyLM(returns, dtype, stray, idle, outside)
    held = model.trainable()
    extra = [p for p in (model.idle, *model.outside) if p is not None]
    parameters = [{"params": held[:2]}, {"params": held[2:] + extra}] if groups else held + extra
    optimizer = SpyOptimizer(parameters, lr=lr, events=events)
    return Rig(model, optimizer, SpyScheduler(events, optimizer=optimizer), events)


# The reference step, and the gradients of the classic mistakes.


def token_loss_sum(model: TinyLM, batch: dict[str, torch.Tensor], shifted: bool = True) -> torch.Tensor:
    """The summed token loss of one micro-batch, computed in float32 or better (unshifted: the mistake)."""
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = output if isinstance(output, torch.Tensor) else output.logits
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    labels = batch["labels"]
    if shifted:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")


def batch_grads(model: TinyLM, batch: dict[str, torch.Tensor], shifted: bool = True) -> list[torch.Tensor]:
    """d(summed token loss)/d(the parameters it reaches) of one micro-batch, on a copy of the model."""
    model = copy.deepcopy(model)
    model.grad_factor = 1.0
    return list(torch.autograd.grad(token_loss_sum(model, batch, shifted), model.reached()))


def clipped(grads: list[torch.Tensor], max_norm: float | None) -> list[torch.Tensor]:
    """``grads`` clipped as ``clip_grad_norm_`` does: one total L2 norm over all of them."""
    if max_norm is None:
        return grads
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    factor = min(1.0, max_norm / (norm.item() + 1e-6))
    return [g * factor for g in grads]


def combine(per_batch: list[list[torch.Tensor]], weights: list[float]) -> list[torch.Tensor]:
    return [sum(w * grads[i] for w, grads in zip(weights, per_batch, strict=True)) for i in range(len(per_batch[0]))]


def total_norm(grads: list[torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads])).item()


def expected_and_mistakes(
    model: TinyLM, window: list[dict[str, torch.Tensor]], max_norm: float | None
) -> tuple[list[torch.Tensor], dict[str, list[torch.Tensor]]]:
    """The gradients the reference step hands the optimizer, and what each classic mistake would hand it."""
    per_batch = [batch_grads(model, batch) for batch in window]
    counts = [targets(batch) for batch in window]
    total = sum(counts)
    k = len(window)
    padded = sum(int(batch["attention_mask"].sum()) for batch in window)
    unshifted = sum(int((batch["labels"] != IGNORE).sum()) for batch in window)
    mean_of = [1 / count if count else 0.0 for count in counts]
    expected = clipped(combine(per_batch, [1 / total] * k), max_norm)
    mistakes = {
        "each micro-batch's mean loss divided by the number of micro-batches weights tokens unequally (the bug "
        "transformers fixed in 2024): divide each micro-batch's summed loss by the label tokens of the whole "
        "window": clipped(combine(per_batch, [m / k for m in mean_of]), max_norm),
        "each micro-batch's mean loss summed over the window: divide each micro-batch's summed loss by the "
        "label tokens of the whole window": clipped(combine(per_batch, mean_of), max_norm),
        "the summed token loss was never divided by the window's label tokens": clipped(
            combine(per_batch, [1.0] * k), max_norm
        ),
        "only the last micro-batch's gradients reached the optimizer: zero_grad inside the loop? zero the "
        "gradients once, after optimizer.step()": clipped([g / total for g in per_batch[-1]], max_norm),
        "padding was counted in the normaliser (attention_mask.sum()): count the labels that are not -100": clipped(
            combine(per_batch, [1 / padded] * k), max_norm
        ),
        "the normaliser counted labels before the shift (the first label is never a target): count "
        "labels[:, 1:] != -100": clipped(combine(per_batch, [1 / unshifted] * k), max_norm),
        "the loss was not shifted (position t scored against label t): logits[:, :-1] predict labels[:, 1:]": clipped(
            combine([batch_grads(model, batch, shifted=False) for batch in window], [1 / unshifted] * k), max_norm
        ),
    }
    unattended = [
        {**batch, "labels": batch["labels"].masked_fill(batch["attention_mask"] == 0, IGNORE)} for batch in window
    ]
    if any(not torch.equal(a["labels"], b["labels"]) for a, b in zip(unattended, window, strict=True)):
        mistakes[
            "the labels where attention_mask is 0 carried no loss: only -100 marks a label without loss (collate "
            "keeps an example's own mask zeros under its labels, the last column's too: no column is padding to trim)"
        ] = clipped(
            combine([batch_grads(model, b) for b in unattended], [1 / sum(map(targets, unattended))] * k), max_norm
        )
    trimmed = [_trimmed(batch) for batch in window]
    if any(a["labels"].shape != b["labels"].shape for a, b in zip(trimmed, window, strict=True)):
        mistakes[
            "the columns past every row's last attended token were dropped (trimmed as padding): their attention_mask "
            "is 0 but their labels carry loss; only -100 marks a label without loss, keep every column"
        ] = clipped(combine([batch_grads(model, b) for b in trimmed], [1 / total] * k), max_norm)
    unpadded = [{**batch, "labels": batch["labels"].masked_fill(batch["labels"] == PAD, IGNORE)} for batch in window]
    mistakes[
        f"the labels equal to the pad id ({PAD}) carried no loss: only -100 marks a label without loss (the pad id "
        "is a token too, eos for many tokenizers)"
    ] = clipped(
        combine([batch_grads(model, batch) for batch in unpadded], [1 / sum(map(targets, unpadded))] * k), max_norm
    )
    if max_norm is not None and model.outside:
        whole = combine(per_batch, [1 / total] * k)
        mistakes[
            "the norm left out the parameter the optimizer holds outside the model (clipped over model.parameters()?): "
            "clip every parameter of the optimizer's param_groups under one norm"
        ] = [*clipped(whole[: len(PARAMETER_NAMES)], max_norm), *whole[len(PARAMETER_NAMES) :]]
    if max_norm is not None:
        mistakes["each micro-batch's gradients were clipped on their own: clip once, after the last backward"] = (
            _clipped_per_batch(per_batch, total, max_norm)
        )
        mistakes["each parameter was clipped to max_grad_norm on its own: clip_grad_norm_ takes one norm over all"] = [
            clipped([g], max_norm)[0] for g in combine(per_batch, [1 / total] * k)
        ]
    return expected, mistakes


def _trimmed(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` without the columns past every row's last attended token (the mistake)."""
    attended = batch["attention_mask"].bool().any(0).nonzero()
    width = int(attended.max()) + 1 if attended.numel() else batch["input_ids"].shape[1]
    return {key: value[:, :width] for key, value in batch.items()}


def _clipped_per_batch(per_batch: list[list[torch.Tensor]], total: int, max_norm: float) -> list[torch.Tensor]:
    accumulated = [torch.zeros_like(g) for g in per_batch[0]]
    for grads in per_batch:
        accumulated = clipped([a + g / total for a, g in zip(accumulated, grads, strict=True)], max_norm)
    return accumulated


def relative_difference(measured: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """max |measured - expected| over max |expected|, over every parameter, in float64."""
    scale = max(g.double().abs().max().item() for g in expected) or 1.0
    return max((m.double() - e.double()).abs().max().item() for m, e in zip(measured, expected, strict=True)) / scale


CLIP_FORMULAS = 1e-5  # torch's clip scales by max_norm / (norm + 1e-6), a hand-written one by max_norm / norm


def clipped_alike(handed: list[torch.Tensor], expected: list[torch.Tensor], max_norm: float, tolerance: float) -> bool:
    """``handed`` points as ``expected`` does and its total norm is ``max_norm`` (or expected's) up to
    CLIP_FORMULAS: the same clip by another formula."""
    norm, reference = total_norm(handed), total_norm(expected)
    if not norm or not any(math.isclose(norm, n, rel_tol=CLIP_FORMULAS) for n in (max_norm, reference)):
        return False
    return relative_difference([g / norm for g in handed], [g / reference for g in expected]) <= tolerance


def expect_handed(
    r: Rig,
    expected: list[torch.Tensor],
    mistakes: dict[str, list[torch.Tensor]],
    tolerance: float,
    what: str,
    clip_to: float | None = None,
) -> None:
    """Fail the check unless the optimizer's single step was handed ``expected`` (the gradients of
    ``r.model.reached()``) and no gradient for ``idle``; name the mistake that explains what it was handed when one
    does. ``clip_to``: ``expected`` was clipped to that norm, and any clipping formula that lands there is right."""
    optimizer, model = r.optimizer, r.model
    steps = len(optimizer.handed)
    assert steps == 1, f"optimizer.step() was called {steps} times in one train_step, expected once: " + (
        "step once per window, after every micro-batch's backward" if steps else "call optimizer.step()"
    )
    by_id = {id(p): grad for p, grad in zip(optimizer.stepped[0], optimizer.handed[0], strict=True)}
    reached, names = model.reached(), model.reached_names()
    assert all(id(p) in by_id for p in reached), "grader bug: the optimizer does not hold every parameter compared"
    handed = [by_id[id(p)] for p in reached]  # every gradient the optimizer was handed, in expected's order
    missing = [name for name, grad in zip(names, handed, strict=True) if grad is None]
    assert not missing, f"{what}: optimizer.step() was handed no gradient for {missing}: " + (
        "the backward reached only the model's parameters (backward(inputs=...) or autograd.grad over "
        "model.parameters()?): every parameter the optimizer holds that the loss depends on gets its gradient"
        if missing == [OUTSIDE_NAME]
        else "was backward() called?"
    )
    idle = by_id.get(id(model.idle)) if model.idle is not None else None
    assert idle is None or not bool((idle != 0).any()), (
        f"{what}: optimizer.step() was handed a nonzero gradient for a parameter that no forward reaches (an "
        "inactive adapter's): its gradient stays None"
    )
    error = relative_difference(handed, expected)
    if error <= tolerance or (clip_to and clipped_alike(handed, expected, clip_to, tolerance)):
        return
    loose = max(10 * tolerance, 1e-4)  # a mistake may come with a harmless extra (a second clip)
    for cause, grads in mistakes.items():  # one that this rig cannot tell from the right answer is never named
        if relative_difference(grads, expected) > loose and relative_difference(handed, grads) <= loose:
            raise AssertionError(f"{what}: the gradients handed to optimizer.step() are off by {error:.2g}: {cause}")
    ratio = total_norm(handed) / total_norm(expected)
    raise AssertionError(
        f"{what}: the gradients handed to optimizer.step() differ from the reference step's by {error:.2g} "
        f"(their norm is {ratio:.3g} x the reference's): each micro-batch's summed token loss over the window's "
        "label tokens, one backward each, clipped once after the last"
    )
