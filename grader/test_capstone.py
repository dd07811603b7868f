"""The capstone: the learner's katas fine-tune a real (tiny) model together, the way a LoRA run does.

A ``LlamaForCausalLM`` built from a config (seeded, nothing downloaded), the grader's BPE wrapped as a
``PreTrainedTokenizerFast`` and the instruction set in ``grader/capstone.json`` (animals and their sounds:
"The cow says moo.", a pattern a tiny model picks up in seconds) go through the learner's ``apply_lora``
(q_proj and v_proj), ``build_example`` and ``collate``, ``make_optimizer``, ``cosine_with_warmup`` and
``train_step`` for STEPS windows; then ``merge_weights``, and ``save_adapter``'s files are loaded by peft's
``PeftModel.from_pretrained`` on the plain Llama. The run happens once per grading session (the
``run`` fixture); each check reads one of its outcomes. A kata that is still a stub blocks the checks that
need it: they say ``blocked: finish KATA first``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from grader.hf import peft_loaded, quiet
from grader.oracles import installed, load, missing
from grader.probes import max_difference
from grader.tokenizer import TRANSFORMERS_MISSING, transformers_tokenizer
from grader.training import SpyOptimizer, SpyScheduler, holding_gradients, relative_difference

SUBJECT = "train_step:train_step"  # what a failing check points at when no frame of the learner's code is to blame
DATA = Path(__file__).with_name("capstone.json")
IGNORE = -100
TARGETS = ("q_proj", "v_proj")
STEPS, WARMUP, LR, R, ALPHA = 24, 3, 3e-2, 8, 16.0
MICRO_BATCH, MICRO_BATCHES = 6, 2  # a window of 2 micro-batches of 6 examples: 12 examples per step
MARGIN = 1 / 3  # the response loss must fall by at least this share of where it started
MISSING = TRANSFORMERS_MISSING.replace("PreTrainedTokenizerFast", "the capstone (LlamaForCausalLM)")
# transformers' Llama and fast tokenizer, and peft, imported while the checks are collected (they skip without them).
load("transformers:LlamaForCausalLM", "transformers:PreTrainedTokenizerFast", "peft:PeftModel")


def template(instruction: str, input: str) -> str:
    return f"[INST] {instruction}\n{input} [/INST] " if input else f"[INST] {instruction} [/INST] "


def enc(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class Run:
    """What the learner's pipeline did to the model, and what the grader measured around it."""

    model: nn.Module
    tokenizer: Any
    rows: list[dict[str, str]]
    loss_before: float
    loss_after: float
    returned: list[float]  # what train_step returned, window by window
    measured: list[float]  # the grader's mean token loss of each window, just before train_step took it
    lrs: list[list[float]]  # every parameter group's lr before the first window, then after each window
    adapted_state: dict[str, torch.Tensor]  # the state_dict right after apply_lora
    originals: dict[str, tuple[torch.Tensor, torch.Tensor]]  # the Llama's own tensors before apply_lora, and copies
    trainable: set[str]  # names of the parameters that required grad after apply_lora


def llama(tokenizer: Any) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,  # logits large enough that a pattern can be learned in a few steps
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        attention_bias=True,  # base biases too: only the adapters may train, whatever a parameter's name
        use_cache=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    # Llama's init zeroes every bias: seeded non-zero ones, or a merge (or a forward) that drops them changes nothing
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model


def grader_batch(tokenizer: Any, rows: list[dict[str, str]], pad: int | None = None) -> dict[str, torch.Tensor]:
    """The grader's own batch of ``rows``: [bos] + prompt + response + [eos], labels -100 on bos and the prompt,
    padded with ``pad`` (the tokenizer's pad id when None)."""
    sequences, labels = [], []
    for row in rows:
        prefix = [tokenizer.bos_token_id, *enc(tokenizer, template(row["instruction"], row["input"]))]
        response = [*enc(tokenizer, row["output"]), tokenizer.eos_token_id]
        sequences.append(prefix + response)
        labels.append([IGNORE] * len(prefix) + response)
    longest = max(map(len, sequences))
    pad = tokenizer.pad_token_id if pad is None else pad
    return {
        "input_ids": torch.tensor([s + [pad] * (longest - len(s)) for s in sequences]),
        "labels": torch.tensor([s + [IGNORE] * (longest - len(s)) for s in labels]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in sequences]),
    }


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        model.train(was_training)


def summed_loss(model: nn.Module, batch: dict[str, torch.Tensor], attention_mask: bool = True) -> torch.Tensor:
    """The summed response-token loss of ``batch`` (the model called with its attention_mask, or without)."""
    mask = batch["attention_mask"] if attention_mask else None
    logits = model(input_ids=batch["input_ids"], attention_mask=mask).logits.float()
    return nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE, reduction="sum"
    )


def label_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def window_loss(model: nn.Module, window: list[dict[str, torch.Tensor]]) -> float:
    """The window's mean token loss, as train_step returns it: every token loss of the window over its label tokens."""
    with torch.no_grad():
        return sum(summed_loss(model, batch).item() for batch in window) / max(1, sum(map(label_tokens, window)))


def schedule(step: int) -> float:
    """cosine_with_warmup's factor after ``step`` calls of its step(), for the run's WARMUP and STEPS."""
    if step < WARMUP:
        return step / WARMUP
    if step > STEPS:
        return 0.0
    return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / max(1, STEPS - WARMUP)))


def response_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """The mean loss over the response tokens (and eos), measured by the grader in eval mode."""
    logits = logits_of(model, batch).float()
    return nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE
    ).item()


@pytest.fixture(scope="module")
def run(apply_lora, build_example, collate, make_optimizer, cosine_with_warmup, train_step) -> Run:
    """The learner's pipeline, once: adapters on a tiny Llama, STEPS windows of training."""
    if importlib.util.find_spec("transformers") is None:
        pytest.skip(MISSING)
    tokenizer = transformers_tokenizer()
    rows = json.loads(DATA.read_text())
    model = llama(tokenizer)
    originals = {
        name: (tensor, tensor.detach().clone()) for name, tensor in [*model.named_parameters(), *model.named_buffers()]
    }
    returned_model = apply_lora(model, TARGETS, r=R, alpha=ALPHA, dropout=0.0)
    model = returned_model if isinstance(returned_model, nn.Module) else model
    adapted_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    batch = grader_batch(tokenizer, rows)
    loss_before = response_loss(model, batch)
    examples = [build_example(tokenizer, row["instruction"], row["input"], row["output"]) for row in rows]
    optimizer = make_optimizer(model, lr=LR)
    scheduler = cosine_with_warmup(optimizer, WARMUP, STEPS)
    order = torch.Generator().manual_seed(0)
    returned, measured, lrs = [], [], [[group["lr"] for group in optimizer.param_groups]]
    model.train()
    for _ in range(STEPS):
        chosen = torch.randperm(len(examples), generator=order)[: MICRO_BATCH * MICRO_BATCHES].tolist()
        window = [
            collate([examples[i] for i in chosen[start : start + MICRO_BATCH]], tokenizer.pad_token_id)
            for start in range(0, len(chosen), MICRO_BATCH)
        ]
        measured.append(window_loss(model, window))
        returned.append(train_step(model, window, optimizer, scheduler, max_grad_norm=1.0))
        lrs.append([group["lr"] for group in optimizer.param_groups])
    after = response_loss(model, batch)
    return Run(model, tokenizer, rows, loss_before, after, returned, measured, lrs, adapted_state, originals, trainable)


@pytest.mark.points(4)
def test_the_response_loss_falls(run):
    target = (1 - MARGIN) * run.loss_before
    assert run.loss_after < target, (
        f"after {STEPS} steps (AdamW lr {LR:g}, cosine with {WARMUP} warmup steps, windows of {MICRO_BATCHES} x "
        f"{MICRO_BATCH} examples) the response loss went from {run.loss_before:.3f} to {run.loss_after:.3f}, "
        f"expected below {target:.3f} (a fall of {MARGIN:.0%} at least; train_step returned "
        f"{run.returned[0]:.3f} first, {run.returned[-1]:.3f} last): do the adapters get gradients, and the "
        "optimizer a non-zero lr?"
    )


@pytest.mark.points(3)
@pytest.mark.subject("masked_prompt:build_example")
def test_the_prompt_never_carries_loss_and_the_response_does(run, build_example, collate):
    rows = run.rows[:MICRO_BATCH]
    tokenizer = run.tokenizer
    examples = [build_example(tokenizer, r["instruction"], r["input"], r["output"]) for r in rows]
    learner = collate(examples, tokenizer.pad_token_id)
    expected = grader_batch(tokenizer, rows)
    assert torch.equal(learner["input_ids"], expected["input_ids"]), (
        "the pipeline's input_ids are not [bos] + prompt + response + [eos], right-padded: pass the masked_prompt "
        "checks first"
    )
    labels, wanted = learner["labels"], expected["labels"]
    assert labels.shape == wanted.shape, (
        f"the pipeline's labels have shape {tuple(labels.shape)}, expected {tuple(wanted.shape)}, as its input_ids"
    )
    prompt = torch.zeros_like(wanted, dtype=torch.bool)
    for row_number, row in enumerate(rows):
        prompt[row_number, : 1 + len(enc(tokenizer, template(row["instruction"], row["input"])))] = True
    padding = expected["attention_mask"] == 0
    answer = ~prompt & ~padding  # the response and eos: the model must learn them, and to stop
    wrong = labels != wanted  # every position: a label carries loss unless it is -100
    carried = wrong & prompt
    assert not carried.any(), (
        f"{int(carried.sum())} prompt tokens (bos included) of the pipeline's batch carry a label other than -100: "
        "the prompt carried loss; build_example must label bos and every prompt token -100"
    )
    unlabelled = wrong & answer
    eos = unlabelled & (expected["input_ids"] == tokenizer.eos_token_id)
    assert not unlabelled.any(), (
        f"{int(unlabelled.sum())} response tokens of the pipeline's batch do not carry their own id as label"
        + (f" ({int(eos.sum())} of them eos): label eos too, or the model never learns to stop" if eos.any() else "")
        + ": build_example labels every response token and eos with its id"
    )
    padded = wrong & padding
    assert not padded.any(), (
        f"{int(padded.sum())} padding positions of the pipeline's batch carry a label other than -100 (label "
        f"{int(labels[padded][0])}): the padding carried loss; collate pads the labels with -100"
    )
    mask, wanted_mask = learner["attention_mask"], expected["attention_mask"]
    assert mask.shape == wanted_mask.shape, (
        f"the pipeline's attention_mask has shape {tuple(mask.shape)}, expected {tuple(wanted_mask.shape)}, as its "
        "input_ids"
    )
    off = mask != wanted_mask
    on_padding = off & padding
    assert not off.any(), (
        f"the pipeline's attention_mask differs from the grader's at {int(off.sum())} positions, "
        f"{int(on_padding.sum())} of them padding"
        + (f" (given {int(mask[on_padding][0])})" if on_padding.any() else "")
        + ": build_example's attention_mask is all ones, and collate pads the attention_mask with 0 (nothing "
        "attends to padding)"
    )


def reference_gradients(
    model: nn.Module, window: list[dict[str, torch.Tensor]], attention_mask: bool = True
) -> list[list[torch.Tensor]]:
    """d(summed response-token loss)/d(trainable parameters) of each micro-batch, on a copy of ``model`` (called
    with each micro-batch's attention_mask, or without)."""
    model = copy.deepcopy(model)
    held = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return [list(torch.autograd.grad(summed_loss(model, batch, attention_mask), held)) for batch in window]


def masked_inside(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` with 0 in attention_mask on tokens 2 and 3 of every row (prompt tokens, labelled -100): a mask that
    is not all ones before the padding, which a causal model sees, unlike right padding."""
    mask = batch["attention_mask"].clone()
    mask[:, 2:4] = 0
    return {**batch, "attention_mask": mask}


def weighted(per_batch: list[list[torch.Tensor]], weights: list[float]) -> list[torch.Tensor]:
    return [sum(w * grads[i] for w, grads in zip(weights, per_batch, strict=True)) for i in range(len(per_batch[0]))]


@pytest.mark.points(3)
def test_the_optimizer_is_handed_the_reference_gradients(run, train_step):
    left = holding_gradients(run.model)
    assert not left, (
        f"after the last train_step of the run {left[:3]} still hold gradients: zero them after optimizer.step(), "
        "or every window adds the previous ones' gradients"
    )
    model = copy.deepcopy(run.model)
    eos = run.tokenizer.eos_token_id
    model.config.pad_token_id = eos  # pad = eos, as GPT-2's and many Llama set-ups have it: eos still carries loss
    spy = SpyOptimizer([p for p in model.parameters() if p.requires_grad], lr=0.0)  # lr 0: the model stays put
    rows = run.rows
    no_targets = grader_batch(run.tokenizer, rows[:2], pad=eos)
    no_targets["labels"] = torch.full_like(no_targets["labels"], IGNORE)  # a micro-batch of prompts only
    windows = [  # micro-batches of 2 and 6 examples, then 5 and 1: a mean per micro-batch weighs tokens unequally
        [grader_batch(run.tokenizer, rows[:2]), grader_batch(run.tokenizer, rows[2:8])],
        [grader_batch(run.tokenizer, rows[8:13]), grader_batch(run.tokenizer, rows[13:14])],
        [masked_inside(grader_batch(run.tokenizer, rows[14:20]))],
        [grader_batch(run.tokenizer, rows[20:24], pad=eos), no_targets],  # padded with eos; then no target at all
    ]
    previous = None
    for number, window in enumerate(windows, start=1):
        per_batch = reference_gradients(model, window)
        counts = [int((batch["labels"][:, 1:] != IGNORE).sum()) for batch in window]
        expected = weighted(per_batch, [1 / sum(counts)] * len(window))
        means = [1 / c if c else 0.0 for c in counts]
        mistakes = {
            "each micro-batch's mean loss over the number of micro-batches: divide each micro-batch's summed loss "
            "by the label tokens of the whole window": weighted(per_batch, [m / len(window) for m in means]),
            "each micro-batch's mean loss, summed: divide each micro-batch's summed loss by the window's label "
            "tokens": weighted(per_batch, means),
        }
        unpadded = [{**b, "labels": b["labels"].masked_fill(b["labels"] == eos, IGNORE)} for b in window]
        mistakes[
            f"the labels equal to model.config.pad_token_id ({eos}, eos here) carried no loss: only -100 marks a label "
            "without loss; with pad = eos, eos must still be learned"
        ] = weighted(reference_gradients(model, unpadded), [1 / sum(map(label_tokens, unpadded))] * len(window))
        if any(bool((batch["attention_mask"][:, 1:] < batch["attention_mask"][:, :-1]).any()) for batch in window):
            mistakes[
                "the model was not handed the micro-batch's attention_mask (here 0 on prompt tokens, as collate "
                "keeps an example's own mask): pass attention_mask, model(input_ids=..., attention_mask=...)"
            ] = weighted(reference_gradients(model, window, attention_mask=False), [1 / sum(counts)] * len(window))
        if previous is not None:
            mistakes["the previous window's gradients were still there: zero them after optimizer.step()"] = [
                e + p for e, p in zip(expected, previous, strict=True)
            ]
        train_step(model, window, spy, SpyScheduler(spy.events, optimizer=spy), max_grad_norm=None)
        assert len(spy.handed) == number, f"train_step called optimizer.step() {len(spy.handed) - number + 1} times"
        handed = spy.handed[-1]
        missing = sum(grad is None for grad in handed)
        assert not missing, f"window {number}: optimizer.step() got no gradient for {missing} adapter parameters"
        assert all(bool(grad.isfinite().all()) for grad in handed), (
            f"window {number} of the Llama ({counts} label tokens per micro-batch): optimizer.step() was handed "
            "NaN or inf gradients, expected finite ones: a micro-batch without targets adds exactly 0 whatever its "
            "logits (sum the token losses with causal_lm_loss; never weight them by 0)"
        )
        error = relative_difference(handed, expected)
        cause = next((c for c, g in mistakes.items() if relative_difference(handed, g) < 1e-3), None)
        assert error < 1e-4, (
            f"window {number} of the Llama ({counts} label tokens per micro-batch, no clipping): the gradients "
            f"handed to optimizer.step() differ from the grader's by {error:.3g} of the largest, expected < 1e-4: "
            + (cause or "each micro-batch's summed token loss over the window's label tokens, one backward each")
        )
        previous = expected


@pytest.mark.points(2)
def test_train_step_returns_the_window_mean_token_loss(run, train_step):
    model = copy.deepcopy(run.model)
    spy = SpyOptimizer([p for p in model.parameters() if p.requires_grad], lr=0.0)  # lr 0: the model stays put
    window = [grader_batch(run.tokenizer, run.rows[:2]), grader_batch(run.tokenizer, run.rows[2:8])]
    counts = [label_tokens(batch) for batch in window]
    with torch.no_grad():
        sums = [summed_loss(model, batch).item() for batch in window]
    expected = sum(sums) / sum(counts)
    mistakes = {
        "the mean of the micro-batches' mean losses: sum every token loss of the window, divide by its label "
        "tokens": sum(s / c for s, c in zip(sums, counts, strict=True)) / len(window),
        "the sum of the micro-batches' mean losses": sum(s / c for s, c in zip(sums, counts, strict=True)),
        "the last micro-batch's loss alone: add up the whole window's": sums[-1] / sum(counts),
        "the last micro-batch's mean loss alone: the whole window's token losses over its label tokens": sums[-1]
        / counts[-1],
        "the summed token loss, not divided by the label tokens": sum(sums),
    }
    got = float(train_step(model, window, spy, SpyScheduler(spy.events, optimizer=spy), max_grad_norm=None))
    cause = next((c for c, v in mistakes.items() if math.isclose(got, v, rel_tol=1e-4)), None)
    assert math.isclose(got, expected, rel_tol=1e-4), (
        f"train_step on a window of 2 and 6 examples ({counts} label tokens) returned {got:.6g}, expected the "
        f"window's mean token loss {expected:.6g}: "
        + (cause or "every token loss of the window over its label tokens, measured before the step")
    )
    eos = run.tokenizer.eos_token_id
    no_targets = grader_batch(run.tokenizer, run.rows[:2], pad=eos)
    no_targets["labels"] = torch.full_like(no_targets["labels"], IGNORE)  # a micro-batch of prompts only
    window = [grader_batch(run.tokenizer, run.rows[20:24], pad=eos), no_targets]
    expected = window_loss(model, window)
    got = float(train_step(model, window, spy, SpyScheduler(spy.events, optimizer=spy), max_grad_norm=None))
    assert math.isclose(got, expected, rel_tol=1e-4), (
        f"train_step on a window of 4 examples and 2 without targets returned {got:.6g}, expected the window's mean "
        f"token loss {expected:.6g}: the micro-batch without targets adds 0"
        + (" (the model's own .loss is a mean, NaN over no target: sum the token losses)" if math.isnan(got) else "")
    )
    off = [
        (number, value, want)
        for number, (value, want) in enumerate(zip(run.returned, run.measured, strict=True), start=1)
        if not math.isclose(float(value), want, rel_tol=1e-4)
    ]
    assert not off, (
        f"in the run, train_step returned {float(off[0][1]):.6g} for window {off[0][0]}, whose mean token loss the "
        f"grader measured {off[0][2]:.6g} just before ({len(off)} of {STEPS} windows off by more than 1e-4): return "
        "every token loss of the window over its label tokens, measured before the step"
    )


@pytest.mark.points(2)
@pytest.mark.subject("train_step:cosine_with_warmup")
def test_the_learning_rate_follows_the_schedule(run):
    expected = [LR * schedule(n) for n in range(STEPS + 1)]
    off = [
        (n, lrs, want)
        for n, (lrs, want) in enumerate(zip(run.lrs, expected, strict=True))
        if not lrs or not all(math.isclose(lr, want, rel_tol=1e-6, abs_tol=1e-12) for lr in lrs)
    ]
    n, lrs, want = off[0] if off else (0, [], 0.0)
    flat = [group[0] if group else float("nan") for group in run.lrs]
    if len({*flat}) == 1:
        cause = "the lr never changed: train_step calls scheduler.step() once per window, after optimizer.step()"
    elif all(math.isclose(flat[k], LR * schedule(2 * k), abs_tol=1e-12) for k in range(STEPS + 1)):
        cause = "the scheduler stepped twice a window: train_step calls scheduler.step() once, after optimizer.step()"
    elif n > WARMUP and lrs and math.isclose(lrs[0], LR):
        cause = "after warmup the lr stays at its peak: then a half cosine down to 0 at total_steps"
    else:
        cause = "linear warmup from 0 over warmup_steps, then a half cosine down to 0 at total_steps"
    assert not off, (
        f"in the run (cosine_with_warmup(optimizer, {WARMUP}, {STEPS}), lr {LR:g}) the lr after {n} windows was "
        f"{lrs[0] if lrs else 'missing'}, expected {want:.6g} ({len(off)} of {STEPS + 1} off): {cause}"
    )


def adapted_layers(run: Run) -> dict[str, list[str]]:
    """The names of the trainable parameters under each adapted layer (the Llama's q_proj and v_proj), by layer."""
    layers = sorted(
        {
            name.removesuffix(".weight")
            for name in run.originals
            if name.endswith(tuple(f".{t}.weight" for t in TARGETS))
        }
    )
    return {layer: sorted(n for n in run.trainable if n.startswith(layer + ".")) for layer in layers}


def lora_factors(run: Run, layer: str, names: list[str]) -> bool:
    """Whether the trainable parameters ``names`` of the adapted ``layer`` are its two factors alone: A (r, in) or
    (in, r) and B (out, r) or (r, out), for the (out, in) weight the layer had."""
    out_features, in_features = run.originals[f"{layer}.weight"][1].shape
    shapes = [tuple(run.model.get_parameter(name).shape) for name in names]
    as_A, as_B = {(R, in_features), (in_features, R)}, {(out_features, R), (R, out_features)}
    return len(shapes) == 2 and any(a in as_A and b in as_B for a, b in (shapes, shapes[::-1]))


@pytest.mark.points(3)
def test_only_the_adapters_changed(run):
    frozen_changed = [name for name, (tensor, saved) in run.originals.items() if not torch.equal(tensor, saved)]
    assert not frozen_changed, (
        f"training changed the base model's {frozen_changed[:3]}: freeze everything but the adapters"
    )
    outside = sorted(name for name in run.trainable if not any(f".{t}." in f".{name}" for t in TARGETS))
    assert not outside, f"parameters outside q_proj and v_proj were trainable: {outside[:3]}"
    wrong = {layer: names for layer, names in adapted_layers(run).items() if not lora_factors(run, layer, names)}
    assert not wrong, (
        f"trainable in {len(wrong)} adapted layers were {dict(list(wrong.items())[:2])}, expected each layer's two "
        f"LoRA factors alone, (r, in) and (out, r) in either orientation with r = {R}: freeze everything but the "
        "adapters' factors (the base's bias too, even a copy of it)"
    )
    state = run.model.state_dict()
    changed = {name for name, value in state.items() if not torch.equal(value, run.adapted_state.get(name, value))}
    stray = sorted(changed - run.trainable)
    assert not stray, f"training changed {stray[:3]}, which are not adapter parameters"
    assert changed, "training changed no tensor of the model: did the optimizer step?"


@pytest.mark.points(3)
@pytest.mark.subject("merge_weights:merge_weights")
def test_the_merged_model_gives_the_same_logits(run, merge_weights):
    batch = grader_batch(run.tokenizer, run.rows)
    expected = logits_of(run.model, batch)
    merged = merge_weights(copy.deepcopy(run.model))
    assert isinstance(merged, nn.Module), f"merge_weights returned a {type(merged).__name__}, expected the model"
    scale = expected.abs().max().item()  # float32 logits of up to ~scale: compare relative to it
    error = max_difference(logits_of(merged, batch), expected) / max(1.0, scale)
    biased = sum(name.endswith(".bias") for name in run.originals)
    dropped = biased - sum(name.endswith(".bias") for name in merged.state_dict())
    cause = (
        f"the merged Llama has no bias in {dropped} of its {biased} biased layers: keep the base's bias"
        if dropped > 0
        else "W + (alpha / r) B @ A for every adapter, the base's bias kept (by the merge, and by LoRALinear's forward)"
    )
    assert error < 1e-5, (
        f"the merged Llama's logits differ from the adapted one's by {error:.3g} of the largest logit "
        f"({scale:.3g}), expected < 1e-5: {cause}"
    )


@pytest.mark.points(3)
@pytest.mark.subject("adapter_io:save_adapter")
def test_peft_loads_the_saved_adapter_and_gives_the_same_logits(run, save_adapter, tmp_path):
    if not installed("peft"):
        pytest.skip(missing("peft"))
    batch = grader_batch(run.tokenizer, run.rows)
    expected = logits_of(run.model, batch)
    save_adapter(copy.deepcopy(run.model), tmp_path)
    peft = peft_loaded(llama(run.tokenizer), tmp_path)
    theirs = logits_of(peft, batch)
    with quiet(), peft.disable_adapter():
        base = logits_of(peft, batch)
    scale = expected.abs().max().item()
    error = max_difference(theirs, expected) / max(1.0, scale)
    if max_difference(theirs, base) == 0:
        cause = (
            "peft loaded no factor (it only warns about missing keys): are the keys "
            "base_model.model.<name>.lora_A.weight, with no adapter name?"
        )
    else:
        cause = "are lora_A (r, in) and lora_B (out, r) the trained factors, and lora_alpha alpha, not alpha / r?"
    assert error < 1e-5, (
        f"PeftModel.from_pretrained on the plain Llama and save_adapter's files of the trained one gives logits "
        f"{error:.3g} of the largest ({scale:.3g}) away from the trained Llama's, expected < 1e-5: {cause}"
    )
