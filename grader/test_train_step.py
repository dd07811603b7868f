"""Checks of the `train_step` kata: causal_lm_loss, make_optimizer, cosine_with_warmup and train_step.

train_step is graded in float64 against the grader's own reference step (grader/training.py): a spy optimizer
records the gradients it is handed at step(), a spy scheduler its calls, so mistakes that Adam would hide
(a gradient off by a constant factor) still show, and each verdict names the mistake the gradients match.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn

from grader.oracles import load
from grader.probes import default_dtype, describe, expect_value_error
from grader.signatures import expect_the_stubs_signatures
from grader.training import (
    CLIP_FORMULAS,
    IGNORE,
    VOCAB,
    SpyOptimizer,
    SpyScheduler,
    TinyLM,
    batch_grads,
    clipped,
    combine,
    expect_handed,
    expected_and_mistakes,
    holding_gradients,
    micro_batch,
    rig,
    targets,
    token_loss_sum,
    total_norm,
    unequal_window,
)


@pytest.mark.points(1)
def test_takes_the_stubs_parameters(implementation, causal_lm_loss):
    """Callers pass the stub's parameters by name or by position: each definition takes them as the stub does."""
    expect_the_stubs_signatures(implementation, "train_step")
    # Then a call into the kata: an unimplemented stub, its signatures right, scores nothing here.
    causal_lm_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long))


SUBJECT = "train_step"  # the definition a failing check points at
TRANSFORMERS_MISSING = "transformers is not installed: pip install transformers to also compare with its schedule"
load("transformers:get_cosine_schedule_with_warmup")  # the schedule's oracle, imported while collecting
EXACT = 1e-9  # float64: the reference and a right answer differ by rounding only
FLOAT32 = 1e-5  # float32 likewise; float16 rounding (autocast) is off by 1e-3


# causal_lm_loss


def reference_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str, shifted: bool = True) -> torch.Tensor:
    logits = logits.double()
    if shifted:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction=reduction)


def random_case(batch: int, seq: int, vocab: int, masked: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 logits and labels with a share ``masked`` of -100, at least one target left after the shift."""
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(batch, seq, vocab, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, vocab, (batch, seq), generator=generator)
    labels[torch.rand(batch, seq, generator=generator) < masked] = IGNORE
    labels[0, -1] = 1 % vocab  # one target at least
    labels[0, 0] = 0  # the first label is a token id: it must still not be a target
    return logits, labels


def loss_cause(measured: float, logits: torch.Tensor, labels: torch.Tensor, reduction: str) -> str:
    """The likely mistake behind a loss that differs from the reference."""
    shifted_count = int((labels[:, 1:] != IGNORE).sum())
    total = reference_loss(logits, labels, "sum").item()
    candidates = {
        "not shifted (position t scored against label t): logits[:, :-1] predict labels[:, 1:]": reference_loss(
            logits, labels, reduction, shifted=False
        ).item(),
        "the -100 labels were not ignored": F.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels[:, 1:].clamp(min=0).flatten(), reduction=reduction
        ).item(),
    }
    if reduction == "mean":
        candidates["the mean was taken over every position, ignored ones too: divide by the targets' count"] = (
            total / labels[:, 1:].numel()
        )
        candidates["the mean counted labels before the shift: count labels[:, 1:] != -100"] = total / max(
            1, int((labels != IGNORE).sum())
        )
        candidates["a mean per row, then over rows: the mean is over every target of the batch"] = sum(
            reference_loss(logits[i : i + 1], labels[i : i + 1], "sum").item()
            / max(1, int((labels[i, 1:] != IGNORE).sum()))
            for i in range(labels.shape[0])
            if (labels[i, 1:] != IGNORE).any()
        ) / sum(bool((labels[i, 1:] != IGNORE).any()) for i in range(labels.shape[0]))
    else:
        candidates["this is the mean, reduction='sum' asks for the sum"] = total / shifted_count
    for cause, value in candidates.items():
        if math.isclose(measured, value, rel_tol=1e-9, abs_tol=1e-12):
            return cause
    keep = labels[:, 1:].flatten() != IGNORE
    token_losses = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).double()[keep], labels[:, 1:].flatten()[keep], reduction="none"
    )
    partial = token_losses.cumsum(0) / (shifted_count if reduction == "mean" else 1)
    stops = ((partial - measured).abs() <= 1e-9 * abs(measured) + 1e-12).nonzero()
    if len(stops):
        return (
            f"the sum stops after the first {int(stops[0]) + 1} of the {shifted_count} targets: a loop over chunks of "
            "rows dropped the last, partial one (range(0, count, chunk) takes every chunk)"
        )
    return "the sum of -log softmax(logits[:, t])[labels[:, t + 1]] over the targets that are not -100"


def loss_value(returned: object, call: str) -> torch.Tensor:
    assert isinstance(returned, torch.Tensor) and returned.dim() == 0, (
        f"{call} returned {describe(returned)}, expected a 0-dim tensor"
    )
    return returned


@pytest.mark.points(4)
@pytest.mark.subject("causal_lm_loss")
@given(
    batch=st.integers(1, 3),
    seq=st.integers(2, 7),
    vocab=st.integers(2, 9),
    masked=st.sampled_from([0.0, 0.3, 0.7]),
    seed=st.integers(0, 1000),
)
@example(batch=2, seq=6, vocab=5, masked=0.5, seed=0)
@example(batch=2, seq=2**16 + 1, vocab=3, masked=0.0, seed=0)  # 2**17 targets, a long window's: past any chunk of rows
@example(batch=2, seq=2**16 + 1, vocab=3, masked=0.3, seed=1)  # about 92,000 targets, not a round count
@example(batch=1, seq=4, vocab=128_256, masked=0.0, seed=0)  # Llama-3's vocabulary
def test_loss_is_the_shifted_cross_entropy_of_the_targets(causal_lm_loss, batch, seq, vocab, masked, seed):
    logits, labels = random_case(batch, seq, vocab, masked, seed)
    for reduction in ("sum", "mean"):
        call = f"causal_lm_loss(logits {tuple(logits.shape)}, labels, reduction={reduction!r})"
        measured = loss_value(causal_lm_loss(logits.clone(), labels.clone(), reduction=reduction), call)
        expected = reference_loss(logits, labels, reduction).item()
        assert math.isclose(measured.item(), expected, rel_tol=1e-9, abs_tol=1e-12), (
            f"{call} = {measured.item():.6g}, expected {expected:.6g}: "
            + loss_cause(measured.item(), logits, labels, reduction)
        )
    default = loss_value(causal_lm_loss(logits, labels), "causal_lm_loss(logits, labels)").item()
    assert math.isclose(default, reference_loss(logits, labels, "sum").item(), rel_tol=1e-9), (
        "causal_lm_loss(logits, labels) without reduction did not give the sum: the default is reduction='sum'"
    )


# The upcast check's cases, (batch, seq, vocab, share masked): about 125 targets; 2097, a count past 2048 that neither
# float16 nor bfloat16 holds (both round it to 2096), as a mean whose count is summed in the logits' dtype would see;
# real vocabularies (Llama-3's 128,256, Gemma's 256,000) at a few positions: no size of model is left in half.
UPCAST_CASES = {
    "125-targets": (4, 40, 200, 0.2),
    "2097-targets": (3, 700, 8, 0.0),
    "llama-3-vocab": (1, 4, 128_256, 0.0),
    "gemma-vocab": (1, 3, 256_000, 0.0),
}
# Every grad mode a loss is computed under: training, an evaluation loop's no_grad and inference_mode.
GRAD_MODES = {"enable_grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@pytest.mark.points(2)
@pytest.mark.subject("causal_lm_loss")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", UPCAST_CASES)
def test_loss_upcasts_half_precision_and_keeps_float32_and_float64(causal_lm_loss, dtype, case):
    """Half-precision logits are upcast, float32 and float64 kept, at every size of ``UPCAST_CASES`` and under every
    grad mode (an evaluation under torch.no_grad() upcasts too)."""
    logits, labels = random_case(*UPCAST_CASES[case], seed=7)
    count = int((labels[:, 1:] != IGNORE).sum())
    assert case != "2097-targets" or count == 2097, f"grader bug: {count} targets, expected 2097"
    logits = (4 * logits).to(dtype)
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    # every path of the loss, the mean's division too, under every grad mode
    for reduction, grad_mode in itertools.product(("sum", "mean"), GRAD_MODES):
        call = f"causal_lm_loss({dtype} logits, vocab {logits.shape[-1]}, labels ({count} targets), reduction="
        call += f"{reduction!r}) under torch.{grad_mode}()"
        with GRAD_MODES[grad_mode]():
            measured = loss_value(causal_lm_loss(logits, labels, reduction=reduction), call)
        assert measured.dtype == expected_dtype, f"{call} is {measured.dtype}, expected {expected_dtype}: " + (
            "keep float64 (logits.float() would round it)"
            if dtype == torch.float64
            else "upcast with logits.float()"
            if measured.dtype == dtype
            else "divide by the count as an int or a tensor of the loss's dtype"
        )
        expected = reference_loss(logits.to(expected_dtype), labels, reduction).item()
        tolerance = 1e-12 if dtype == torch.float64 else 1e-6
        halves = sorted((torch.float16, torch.bfloat16), key=lambda d: d != dtype)  # the logits' own dtype first
        rounded = {d: torch.tensor(float(count), dtype=d).item() for d in halves}
        held_in = [
            d
            for d in halves
            if rounded[d] != count and math.isclose(measured.item() * rounded[d], expected * count, rel_tol=1e-6)
        ]
        assert math.isclose(measured.item(), expected, rel_tol=tolerance), (
            f"{call} = {measured.item():.8g}, expected {expected:.8g} (computed in {expected_dtype}): "
            + (
                f"it is the sum over a count of {rounded[held_in[0]]:g}, not {count}: the targets were counted in "
                f"{held_in[0]} (a mask summed in the logits' dtype?), which holds integers exactly only up to "
                f"{256 if held_in[0] == torch.bfloat16 else 2048}: count them as an int64 tensor or a Python int"
                if reduction == "mean" and held_in
                else f"compute the loss in float32, not in {dtype}"
            )
        )
    for default in (
        torch.float64,
        torch.bfloat16,
    ):  # a session's default dtype: neither the result nor a count takes it
        for reduction in ("sum", "mean"):
            call = (
                f"under torch.set_default_dtype({default}), causal_lm_loss({dtype} logits, labels ({count} targets), "
                f"reduction={reduction!r})"
            )
            with default_dtype(default):
                measured = loss_value(causal_lm_loss(logits, labels, reduction=reduction), call)
            assert measured.dtype == expected_dtype, (
                f"{call} is {measured.dtype}, expected {expected_dtype}: keep float32 and upcast half precision to "
                "float32 itself (logits.float()), not to torch.get_default_dtype() nor by promotion with a tensor of "
                "the default dtype (torch.tensor(0.0), count * 1.0)"
            )
            expected = reference_loss(logits.to(expected_dtype), labels, reduction).item()
            held = torch.tensor(float(count), dtype=default).item()  # the count, held in a default-dtype tensor
            assert math.isclose(measured.item(), expected, rel_tol=1e-12 if dtype == torch.float64 else 1e-6), (
                f"{call} = {measured.item():.8g}, expected {expected:.8g}, as under the float32 default: "
                + (
                    f"it is the sum over a count of {held:g}, not {count}: the count was held in a tensor of the "
                    f"default dtype (count * 1.0, torch.tensor(...)): divide by the int64 count or a Python int"
                    if reduction == "mean"
                    and held != count
                    and math.isclose(measured.item() * held, expected * count, rel_tol=1e-6)
                    else "no value may depend on the default dtype"
                )
            )


# Past 2**22 logits, as any real batch is (42 targets at Llama-3's vocabulary: 5.4M logits): a path chosen by the
# logits' count (chunks of about 2**20 logits, the upcast or the float64 skipped past 2**22 "to save memory")
# is taken here.
# 42 targets: no multiple of the rows of a 2**20-logit chunk (8 at 128,256), so a dropped partial chunk shows.
MANY_LOGITS = (2, 22, 128_256)


@functools.cache
def many_logits_case() -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 case of ``MANY_LOGITS``, made once (0.2 s); each dtype hands a loss its own copy."""
    return random_case(*MANY_LOGITS, 0.0, seed=13)


@pytest.mark.points(1)
@pytest.mark.subject("causal_lm_loss")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_loss_of_millions_of_logits_keeps_its_value_and_dtype(causal_lm_loss, dtype):
    truth, labels = many_logits_case()
    logits, labels = truth.to(dtype, copy=True), labels.clone()
    count = int((labels[:, 1:] != IGNORE).sum())
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    total = reference_loss(logits.to(expected_dtype), labels, "sum").item()  # the mean's is total / count
    for reduction in ("sum", "mean"):
        call = f"causal_lm_loss({dtype} logits {tuple(logits.shape)} ({logits.numel() / 2**20:.1f}M), {count} targets, "
        call += f"reduction={reduction!r})"
        measured = loss_value(causal_lm_loss(logits, labels, reduction=reduction), call)
        assert measured.dtype == expected_dtype, (
            f"{call} is {measured.dtype}, expected {expected_dtype}, as at any size: "
            + (
                "keep float64 however many logits (logits.float() rounds it)"
                if dtype == torch.float64
                else "upcast half precision to float32 however many logits"
            )
        )
        expected = total if reduction == "sum" else total / count
        assert math.isclose(measured.item(), expected, rel_tol=1e-12 if dtype == torch.float64 else 1e-6), (
            f"{call} = {measured.item():.10g}, expected {expected:.10g} (computed in {expected_dtype}): "
            + loss_cause(measured.item(), logits.to(expected_dtype), labels, reduction)
        )


# logits far from 0 in every dtype: exp() of them overflows (or underflows to 0) in that dtype, the loss does not
LARGE_LOGITS = [
    pytest.param(torch.float64, 1000.0, id="float64-+1000"),
    pytest.param(torch.float64, -1000.0, id="float64--1000"),
    pytest.param(torch.float32, 100.0, id="float32-+100"),
    pytest.param(torch.float32, -110.0, id="float32--110"),
    pytest.param(torch.bfloat16, 100.0, id="bfloat16-+100"),
    pytest.param(torch.float16, 100.0, id="float16-+100"),
]


@pytest.mark.points(1)
@pytest.mark.subject("causal_lm_loss")
@pytest.mark.parametrize(("dtype", "offset"), LARGE_LOGITS)
def test_loss_of_large_logits_is_finite(causal_lm_loss, dtype, offset):
    logits, labels = random_case(3, 6, 7, 0.3, seed=11)
    logits = (logits + offset).to(dtype)  # the loss depends only on the differences of the logits: a few units
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for reduction in ("sum", "mean"):
        call = f"causal_lm_loss({dtype} logits about {offset:g}, reduction={reduction!r})"
        measured = loss_value(causal_lm_loss(logits, labels, reduction=reduction), call).item()
        expected = reference_loss(logits.to(expected_dtype), labels, reduction).item()
        assert math.isclose(measured, expected, rel_tol=1e-5), f"{call} = {measured:.6g}, expected {expected:.6g}" + (
            f": exp() of the logits overflowed {expected_dtype}, or fell to 0 (log(sum(exp(z))) is inf or -inf): "
            "subtract the max before exp, as logsumexp and F.cross_entropy do"
            if not math.isfinite(measured)
            else f": compute the loss in {expected_dtype} by a log-softmax (F.cross_entropy)"
        )


@pytest.mark.points(2)
@pytest.mark.subject("causal_lm_loss")
def test_loss_gradient_reaches_the_logits(causal_lm_loss):
    logits, labels = random_case(2, 5, 6, 0.3, seed=3)
    # every reduction takes contiguous and non-contiguous logits and labels (as slices and transposes give them)
    for reduction in ("sum", "mean"):
        for layout in ("contiguous", "non-contiguous"):
            mine, reference, these = logits.clone().requires_grad_(), logits.clone().requires_grad_(), labels
            if layout == "non-contiguous":
                mine = mine.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
                these = labels.T.contiguous().T
            call = f"causal_lm_loss({layout} logits and labels, reduction={reduction!r})"
            try:
                loss = loss_value(causal_lm_loss(mine, these, reduction=reduction), "causal_lm_loss")
            except NotImplementedError:
                raise
            except RuntimeError as error:
                if layout == "contiguous":
                    raise
                raise AssertionError(
                    f"{call} raised RuntimeError ({str(error)[:80]}), expected a loss"
                    + (": .view() needs contiguous memory, use .reshape()" if "view" in str(error) else "")
                ) from None
            assert loss.requires_grad, f"{call} is detached from the logits: no .item()"
            loss.backward()
            reference_loss(reference, these, reduction).backward()
            assert mine.grad is not None, f"{call}: no gradient reached the logits"
            error = (mine.grad - reference.grad).abs().max().item()
            assert error < 1e-12, (
                f"d loss / d logits of {call} differs from cross-entropy's by {error:.3g}: "
                "the last position predicts nothing, so its logits get no gradient"
            )


# The vocabularies the loss's poison and error checks run at: a tiny one, Llama-2's and Mistral's, Llama-3's (a path
# chosen by the vocabulary's size keeps every contract of the small one)
VOCABULARIES = (6, 32_000, 128_256)
# What the logits of a position without a target may hold: "nan" a fully masked attention row's, "-inf" a vocabulary
# mask's (one entry), "all--inf" a row masked whole, "overflow" an fp16 model's past 65504 (+inf and -inf).
NO_TARGET_POISONS = {
    "nan": lambda vocab: torch.full((vocab,), math.nan),
    "-inf": lambda vocab: torch.zeros(vocab).index_fill(0, torch.tensor([0]), -math.inf),
    "all--inf": lambda vocab: torch.full((vocab,), -math.inf),
    "overflow": lambda vocab: (
        torch.zeros(vocab).index_fill(0, torch.tensor([0]), math.inf).index_fill(0, torch.tensor([1]), -math.inf)
    ),
}


@pytest.mark.points(1)
@pytest.mark.subject("causal_lm_loss")
@pytest.mark.parametrize("poison", NO_TARGET_POISONS)
def test_loss_ignores_the_logits_of_positions_without_a_target(causal_lm_loss, poison):
    for vocab in VOCABULARIES:
        logits, labels = random_case(*((3, 8) if vocab < 1000 else (2, 5)), vocab, 0.4, seed=5)  # few real-vocab rows
        no_target = F.pad(labels[:, 1:] == IGNORE, (0, 1), value=True)  # the position predicts -100, or nothing
        poisoned = logits.clone()
        poisoned[no_target] = NO_TARGET_POISONS[poison](logits.shape[-1]).double()
        for reduction in ("sum", "mean"):
            call = (
                f"causal_lm_loss(logits at vocab {vocab} with {poison} where the target is -100 or none, "
                f"reduction={reduction!r})"
            )
            measured = loss_value(causal_lm_loss(poisoned, labels, reduction=reduction), call).item()
            expected = reference_loss(logits, labels, reduction).item()
            assert math.isclose(measured, expected, rel_tol=1e-9), (
                f"{call} = {measured:.6g}, expected {expected:.6g}, as with any other logits there: a -100 target "
                "carries no loss whatever its logits, at any vocabulary; leave it out (select the targets), never "
                "weight it by 0 (NaN or -inf times 0 is NaN)"
            )


@pytest.mark.points(1)
@pytest.mark.subject("causal_lm_loss")
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_loss_takes_a_vocabulary_mask_at_the_targets(causal_lm_loss, dtype):
    """-inf at vocabulary entries no target names, at every position (targets' too), as a vocabulary mask leaves it:
    the loss and its gradient are those of the cross-entropy, finite."""
    logits, labels = random_case(3, 8, 7, 0.3, seed=9)
    labels[labels >= 4] = 3  # entries 4, 5, 6 are never a target: masked everywhere
    masked = logits.clone()
    masked[..., 4:] = -math.inf
    for reduction in ("sum", "mean"):
        given = masked.to(dtype).requires_grad_()
        call = f"causal_lm_loss({dtype} logits -inf at vocabulary entries no target names, reduction={reduction!r})"
        loss = loss_value(causal_lm_loss(given, labels, reduction=reduction), call)
        expected = reference_loss(masked.to(dtype), labels, reduction).item()
        assert math.isclose(loss.item(), expected, rel_tol=1e-9 if dtype == torch.float64 else 1e-5), (
            f"{call} = {loss.item():.6g}, expected {expected:.6g}: a target's loss is -log softmax at its own entry; "
            "-inf at other entries is a probability of 0 there, never to be weighted by 0 (a one-hot times -inf is "
            "NaN): use cross_entropy, or gather the target's log-probability"
        )
        loss.backward()
        assert bool(given.grad.isfinite().all()), f"{call}: its gradient is not finite (NaN from -inf times 0?)"


@pytest.mark.points(1)
@pytest.mark.subject("causal_lm_loss")
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_loss_without_targets_is_zero_summed_and_refused_as_a_mean(causal_lm_loss, dtype):
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    # seq 1: one position, which predicts nothing (a valid input, not an error); seq 4: every target -100
    # and an empty batch: (batch, seq) with batch 0; at every vocabulary of VOCABULARIES
    for (batch, seq), vocab in itertools.product(((2, 4), (3, 1), (1, 1), (0, 4)), VOCABULARIES):
        logits = torch.randn(batch, seq, vocab, dtype=torch.float64)
        logits[..., 0] = -math.inf  # a vocabulary mask: no position is a target, so no logit counts, -inf neither
        logits = logits.to(dtype).requires_grad_()
        labels = torch.full((batch, seq), IGNORE)
        labels[:, 0] = 3  # the first label is never a target
        call = (
            f"causal_lm_loss({dtype} logits {tuple(logits.shape)} with no target after the shift, -inf at a masked "
            "vocabulary entry, 'sum')"
        )
        try:
            total = causal_lm_loss(logits, labels, reduction="sum")
        except ValueError as error:
            raise AssertionError(
                f"{call} raised ValueError ({error}): a sum over no target is 0, only the mean is refused"
                + (" (seq 1 is valid: its one position predicts nothing)" if seq == 1 else "")
            ) from None
        total = loss_value(total, call)
        assert total.item() == 0, f"{call} = {total.item():.4g}, expected 0" + (
            ": a sum over no target is 0 whatever the logits; never weight the logits by 0 (-inf times 0 is NaN), "
            "keep the cross-entropy's sum (ignore_index) over no target"
            if not math.isfinite(total.item())
            else ""
        )
        assert total.dtype == expected_dtype, f"{call} is {total.dtype}, expected {expected_dtype}, as with targets"
        assert total.requires_grad, (
            f"{call} does not require grad: a micro-batch without targets still takes its backward; "
            "keep it a function of the logits (the cross-entropy's sum), not a new zeros() tensor"
        )
        total.backward()
        assert logits.grad is not None and (logits.grad == 0).all(), f"{call}: its gradient is not zero"
        expect_value_error(
            lambda logits=logits, labels=labels: causal_lm_loss(logits, labels, reduction="mean"),
            f"causal_lm_loss(logits {tuple(logits.shape)}, reduction='mean') with no target after the shift "
            "(the mean would be NaN)",
        )


@pytest.mark.points(1)
@pytest.mark.subject("causal_lm_loss")
def test_loss_rejects_bad_arguments(causal_lm_loss):
    for vocab in VOCABULARIES:  # a path taken at a real vocabulary checks its arguments too
        logits, labels = random_case(2, 4, vocab, 0.0, seed=1)
        # only the exact "sum" and "mean": their substrings and a string holding both too (`reduction in "sum mean"`)
        # and objects that are no string at all: None is no default here (the default is "sum"), nor 0, False, bytes
        bad = ("none", "avg", "SUM", "Mean", "MEAN", "sum ", "", "um", "me", "m", "an", "sum|mean")
        for reduction in (*bad, None, 0, False, b"sum", ("sum",)):
            expect_value_error(
                lambda x=logits, y=labels, reduction=reduction: causal_lm_loss(x, y, reduction=reduction),
                f"causal_lm_loss(vocab {vocab}, reduction={reduction!r}) (only 'sum' and 'mean', exactly)",
            )
        expect_value_error(
            lambda x=logits, y=labels: causal_lm_loss(x, y, "avg"),
            f"causal_lm_loss(vocab {vocab} logits, labels, 'avg')",
        )
        # labels of logits.shape[:2] for 2-D logits: still not (batch, seq, vocab)
        square = torch.randint(0, vocab, (4, vocab))
        # as many targets after the shift as logits[:, :-1] has positions (6), in another shape: shape (batch, seq) only
        # and labels of the same seq but another batch, which a gather or a product would broadcast
        sizes, seq = "their shifted sizes match", "their seq matches: a gather would broadcast them"
        cases = {
            "2-D logits, 1-D labels": (logits[0], labels[0]),
            f"2-D logits (4, {vocab}), labels (4, {vocab})": (logits[0], square),
            f"4-D logits (2, 4, {vocab}, 1)": (logits[..., None], labels),
            "labels shorter than logits": (logits, labels[:, :3]),
            "3-D labels (2, 4, 1)": (logits, labels[..., None]),
        }
        for shape, when in (((3, 3), sizes), ((1, 7), sizes), ((6, 2), sizes), ((1, 4), seq), ((3, 4), seq)):
            case = f"logits (2, 4, {vocab}), labels {shape} (labels must be (batch, seq) = (2, 4), even when {when})"
            cases[case] = (logits, torch.randint(0, vocab, shape))
        for reduction in ("sum", "mean"):  # every path of the loss checks the shapes, the mean's too
            for case, (bad_logits, bad_labels) in cases.items():
                expect_value_error(
                    lambda x=bad_logits, y=bad_labels, reduction=reduction: causal_lm_loss(x, y, reduction=reduction),
                    f"causal_lm_loss({case}, reduction={reduction!r})",
                )


# make_optimizer


class Adapted(nn.Module):
    """Frozen layers, trainable factors at several depths, one trainable module registered twice, and one
    trainable parameter tied between two modules (as embeddings and heads are)."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(4, 4)
        self.base.requires_grad_(False)
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        self.blocks[0].requires_grad_(False)
        self.blocks[1].weight.requires_grad_(False)  # its bias stays trainable
        self.lora_A = nn.Parameter(torch.randn(2, 4))
        self.lora_B = nn.Parameter(torch.zeros(4, 2))
        self.shared = nn.Linear(4, 2, bias=False)
        self.tied = self.shared  # the same module under two names
        self.sharing = nn.Linear(4, 2, bias=False)
        self.sharing.weight = self.lora_A  # another module holding the same parameter
        # a distinct parameter on the same storage (nn.Parameter(t.detach())), and two empty ones (data_ptr 0 both):
        # each is a parameter of its own, which a deduplication by data_ptr() merges
        self.on_b_storage = nn.Parameter(self.lora_B.detach())
        self.empty = nn.ParameterList([nn.Parameter(torch.empty(0)), nn.Parameter(torch.empty(0, 4))])


SET_OPTIONS = ("lr", "weight_decay", "betas", "eps")  # what make_optimizer sets; AdamW's other options keep defaults


def held(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [parameter for group in optimizer.param_groups for parameter in group["params"]]


def returned_adamw(optimizer: object, call: str) -> torch.optim.AdamW:
    assert isinstance(optimizer, torch.optim.AdamW), (
        f"{call} returned {describe(optimizer)}, expected torch.optim.AdamW"
    )
    return optimizer


# Every way make_optimizer is called: the default, and lr and weight_decay given by position and by keyword, with and
# without decay (a path taken only when weight_decay > 0, nanoGPT's no-decay group or a by-name listing, is checked too)
OPTIMIZER_CALLS = {
    "make_optimizer(model)": ((), {}),
    **{f"make_optimizer(model, 1e-3, {wd})": ((1e-3, wd), {}) for wd in (0.0, 0.01, 0.1)},
    **{
        f"make_optimizer(model, lr=2e-4, weight_decay={wd})": ((), {"lr": 2e-4, "weight_decay": wd})
        for wd in (0.0, 0.1)
    },
}


@pytest.mark.points(3)
@pytest.mark.subject("make_optimizer")
def test_optimizer_holds_exactly_the_trainable_parameters_in_one_group(make_optimizer):
    for call, (args, kwargs) in OPTIMIZER_CALLS.items():
        model = Adapted()
        optimizer = returned_adamw(make_optimizer(model, *args, **kwargs), call)
        decays = [group.get("weight_decay") for group in optimizer.param_groups]
        assert len(optimizer.param_groups) == 1, (
            f"{call}: the optimizer has {len(optimizer.param_groups)} parameter groups (weight_decay {decays}), "
            "expected one: no decay split (nanoGPT's no-decay group for biases and norms is not this kata's)"
        )
        ids = [id(parameter) for parameter in held(optimizer)]
        frozen = [name for name, p in model.named_parameters() if not p.requires_grad and id(p) in ids]
        assert not frozen, (
            f"{call}: the optimizer holds frozen parameters {frozen}: give it only those that require grad"
            + (", on the weight_decay > 0 path too" if args[1:] or kwargs.get("weight_decay") else "")
        )
        assert len(ids) == len(set(ids)), f"{call}: the optimizer holds a parameter twice (a tied one?): list each once"
        wanted = {id(p): name for name, p in model.named_parameters() if p.requires_grad}
        missing = [name for key, name in wanted.items() if key not in ids]
        assert not missing, f"{call}: the optimizer lacks the trainable parameters {missing}: give it every one" + (
            " (parameters are told apart by identity: two may share a storage, or be empty with data_ptr() 0)"
            * any(name.startswith(("on_b_storage", "empty")) for name in missing)
        )
        own = {id(p) for p in model.parameters()}
        others = [tuple(p.shape) for p in held(optimizer) if id(p) not in own]
        assert not others, (
            f"{call}: the optimizer also holds parameters that are not the model's (of shapes {others}): hold the "
            "model's trainable parameters, each once, and no other"
        )


@pytest.mark.points(1)
@pytest.mark.subject("make_optimizer")
def test_optimizer_reads_the_trainable_parameters_at_each_call(make_optimizer):
    """One model, two phases: between the calls, adapters frozen, a frozen weight thawed, a new adapter added."""
    model = Adapted()
    make_optimizer(model)
    model.lora_A.requires_grad_(False)  # the shared module's weight as well: it is the same parameter
    model.base.weight.requires_grad_(True)
    model.extra = nn.Parameter(torch.zeros(2))
    optimizer = returned_adamw(make_optimizer(model), "make_optimizer(model), a second time")
    ids = {id(parameter) for parameter in held(optimizer)}
    names = {id(p): name for name, p in model.named_parameters()}
    wanted = {id(p) for p in model.parameters() if p.requires_grad}
    stale, missing = sorted(names[i] for i in ids - wanted), sorted(names[i] for i in wanted - ids)
    assert not stale and not missing, (
        f"make_optimizer(model) called again after its trainable parameters changed holds the frozen {stale} and "
        f"lacks the trainable {missing}: the trainable parameters of an earlier call (cached per model?); read "
        "requires_grad of the model as it is at each call"
    )


@pytest.mark.points(2)
@pytest.mark.subject("make_optimizer")
def test_optimizer_has_the_learning_rate_no_decay_and_adams_betas(make_optimizer):
    cases = {
        "make_optimizer(model)": (make_optimizer(Adapted()), 3e-4, 0.0),
        "make_optimizer(model, 0.01, 0.1)": (make_optimizer(Adapted(), 0.01, 0.1), 0.01, 0.1),
        "make_optimizer(model, lr=2e-3, weight_decay=0.05)": (
            make_optimizer(Adapted(), lr=2e-3, weight_decay=0.05),
            2e-3,
            0.05,
        ),
        # 0.0 is a value, not a missing one: `lr or 3e-4` would turn it into the default (as max_grad_norm=0.0)
        "make_optimizer(model, lr=0.0, weight_decay=0.1)": (
            make_optimizer(Adapted(), lr=0.0, weight_decay=0.1),
            0.0,
            0.1,
        ),
        "make_optimizer(model, 0.0, 0.0)": (make_optimizer(Adapted(), 0.0, 0.0), 0.0, 0.0),
    }
    plain = torch.optim.AdamW([nn.Parameter(torch.zeros(1))]).defaults  # the options of a plain AdamW
    for call, (optimizer, lr, weight_decay) in cases.items():
        for index, group in enumerate(returned_adamw(optimizer, call).param_groups):  # every group
            where = f"{call}, parameter group {index}"
            assert group["lr"] == lr, f"{where}: lr {group['lr']}, expected {lr}: " + (
                "lr=0.0 was taken as unset (`lr or 3e-4`?): 0.0 is a learning rate, only a missing lr takes the default"
                if lr == 0
                else "pass lr to AdamW"
            )
            assert group["weight_decay"] == weight_decay, (
                f"{where}: weight_decay {group['weight_decay']}, expected {weight_decay}"
                + (": AdamW's own default is 0.01, pass weight_decay" if weight_decay == 0 else "")
            )
            assert tuple(group["betas"]) == (0.9, 0.999), f"{where}: betas {group['betas']}, expected (0.9, 0.999)"
            assert group["eps"] == 1e-8, f"{where}: eps {group['eps']}, expected 1e-8"
            off = {k: group.get(k) for k, v in plain.items() if k not in SET_OPTIONS and group.get(k) != v}
            defaults = {k: plain[k] for k in off}
            assert not off, f"{where}: {off}, expected plain AdamW's {defaults}: leave them at AdamW's defaults"


@pytest.mark.points(1)
@pytest.mark.subject("make_optimizer")
def test_optimizer_refuses_a_model_without_trainable_parameters(make_optimizer):
    model = nn.Linear(3, 3).requires_grad_(False)
    expect_value_error(lambda: make_optimizer(model), "make_optimizer(a model with every parameter frozen)")


# cosine_with_warmup


def factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / warmup
    if step > total:
        return 0.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def schedule_cause(measured: float, step: int, warmup: int, total: int) -> str:
    progress = (step - warmup) / max(1, total - warmup)
    candidates = {
        "rises again past total_steps (transformers' formula): the lr stays 0 after total_steps": 0.5
        * (1 + math.cos(math.pi * progress)),
        "the warmup is one step ahead ((n + 1) / warmup_steps): it starts at 0": (step + 1) / max(1, warmup),
        "a full cosine period: the cosine falls once, from 1 at warmup_steps to 0 at total_steps": 0.5
        * (1 + math.cos(2 * math.pi * progress)),
        "the cosine ran over total_steps, not over total_steps - warmup_steps": 0.5
        * (1 + math.cos(math.pi * step / total)),
    }
    for cause, value in candidates.items():
        if math.isclose(measured, value, rel_tol=1e-9, abs_tol=1e-12):
            return cause
    phase = "warmup" if step < warmup else "after total_steps" if step > total else "cosine"
    return f"see the {phase} formula in the spec"


@pytest.mark.points(4)
@pytest.mark.subject("cosine_with_warmup")
@given(warmup=st.integers(0, 8), extra=st.integers(0, 12))
@example(warmup=0, extra=1)
@example(warmup=3, extra=7)
@example(warmup=4, extra=0)
def test_schedule_warms_up_linearly_then_falls_as_a_cosine_to_zero(cosine_with_warmup, warmup, extra):
    total = max(1, warmup + extra)
    parameters = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": parameters[:1], "lr": 0.1}, {"params": parameters[1:], "lr": 0.02}])
    scheduler = cosine_with_warmup(optimizer, warmup, total)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler), (
        f"cosine_with_warmup returned {describe(scheduler)}, expected a torch.optim.lr_scheduler.LambdaLR"
    )
    # a second schedule, of other steps, built before the first is run (two runs in one process, a sweep): each is
    # stepped in turn, and each keeps its own warmup_steps and total_steps
    other = (warmup + 1, total + 3)
    second_optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    second = cosine_with_warmup(second_optimizer, *other)
    runs = [
        (optimizer, scheduler, (warmup, total), (0.1, 0.02), other, "a second schedule built after it"),
        (second_optimizer, second, other, (0.5,), (warmup, total), "the schedule built before it"),
    ]
    measured = [[] for _ in runs]  # each schedule's lr / initial lr, per group, after 0, 1, ... steps
    for step in range(total + 3):
        for (optimizer_, scheduler_, _, initials, _, _), lrs in zip(runs, measured, strict=True):
            if step:
                optimizer_.step()
                scheduler_.step()
            lrs.append(
                [group["lr"] / initial for group, initial in zip(optimizer_.param_groups, initials, strict=True)]
            )
    for (_, _, (w, t), _, (ow, ot), neighbour), lrs in zip(runs, measured, strict=True):
        for step, ratios in enumerate(lrs):
            for ratio in ratios:
                if math.isclose(ratio, factor(step, w, t), rel_tol=1e-9, abs_tol=1e-14):
                    continue
                cause = schedule_cause(ratio, step, w, t)
                if all(
                    math.isclose(r, factor(n, ow, ot), rel_tol=1e-9, abs_tol=1e-12)
                    for n, rs in enumerate(lrs)
                    if n
                    for r in rs
                ):  # step 0's lr was set when the schedule was built, before the other one
                    cause = (
                        f"it is the lr of {neighbour} (warmup_steps={ow}, total_steps={ot}) at every step since: each "
                        "schedule keeps its own steps (a closure, or functools.partial), never module or class state "
                        "that the last call of cosine_with_warmup set"
                    )
                pytest.fail(
                    f"cosine_with_warmup(warmup_steps={w}, total_steps={t}), one of two schedules (the other of "
                    f"warmup_steps={ow}, total_steps={ot}) built before either is run, stepped in turn: after {step} "
                    f"steps the lr is {ratio:.6g} x the initial lr, expected {factor(step, w, t):.6g}: {cause}",
                    pytrace=False,
                )


@pytest.mark.points(1)
@pytest.mark.subject("cosine_with_warmup")
def test_schedule_gives_transformers_numbers_up_to_total_steps(cosine_with_warmup):
    cases = ((0, 5), (2, 9), (5, 5), (3, 40))
    mine = {case: lrs_of(lambda optimizer, case=case: cosine_with_warmup(optimizer, *case), case[1]) for case in cases}
    if importlib.util.find_spec("transformers") is None:
        pytest.skip(TRANSFORMERS_MISSING)
    from transformers import get_cosine_schedule_with_warmup  # imported when this module was collected

    for (warmup, total), measured in mine.items():
        theirs = lrs_of(lambda optimizer, w=warmup, t=total: get_cosine_schedule_with_warmup(optimizer, w, t), total)
        for step, (lr, expected) in enumerate(zip(measured, theirs, strict=True)):
            assert math.isclose(lr, expected, rel_tol=1e-9, abs_tol=1e-15), (
                f"warmup_steps={warmup}, total_steps={total}: after {step} steps the lr is {lr:.6g}, "
                f"transformers' get_cosine_schedule_with_warmup gives {expected:.6g}"
            )


def lrs_of(make_schedule, total: int, lr: float = 0.5) -> list[float]:
    """The lr of an SGD optimizer after 0, 1, ... total steps of the schedule ``make_schedule`` builds for it."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    schedule = make_schedule(optimizer)
    lrs = []
    for _ in range(total + 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


@pytest.mark.points(1)
@pytest.mark.subject("cosine_with_warmup")
def test_schedule_refuses_impossible_steps(cosine_with_warmup):
    # one optimizer through every refused call: a refusal leaves the caller's optimizer as it was (its lr, no
    # initial_lr added), so the scheduler must not be built before the arguments are checked
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    for warmup, total in ((11, 10), (-1, 10), (0, 0), (1, 0)):
        call = f"cosine_with_warmup(warmup_steps={warmup}, total_steps={total})"
        before = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        expect_value_error(lambda warmup=warmup, total=total: cosine_with_warmup(optimizer, warmup, total), call)
        after = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        changed = {
            key: (b.get(key, "absent"), a.get(key, "absent"))
            for b, a in zip(before, after, strict=True)
            for key in sorted({*b, *a})
            if b.get(key, "absent") != a.get(key, "absent")
        }
        assert not changed, (
            f"{call} raised but changed the optimizer's param_groups (key: (before, after)) {changed}: validate the "
            "arguments before building the LambdaLR (building it sets lr to lr_lambda(0) and adds initial_lr)"
        )


# train_step


# Every check of what train_step does with a good window (the gradients, their clipping, the step order, the lrs,
# the forward and backward passes, the returned loss) runs on each of its paths: without a GradScaler, with one
# (at a power-of-two scale, which changes no float64 gradient once unscaled), and with a disabled one
# (GradScaler(enabled=False), what a script passes as GradScaler(enabled=use_fp16): scale() returns the loss, step()
# steps, get_scale() is 1.0, and none of an enabled scaler's internals exist).
SCALER_PATHS = [
    pytest.param(False, id="no-scaler"),
    pytest.param(True, id="gradscaler"),
    pytest.param("disabled", id="disabled-gradscaler"),
]


def on_the_path(with_scaler: bool | str) -> tuple[torch.amp.GradScaler | None, str]:
    """The GradScaler of that path (None without one), and the words a failure message gives the path."""
    if with_scaler == "disabled":
        return disabled_scaler(), ", under a disabled GradScaler (enabled=False)"
    return (scaler(), ", under a GradScaler") if with_scaler else (None, ", without a GradScaler")


def disabled_scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", enabled=False)


@pytest.mark.points(4)
@pytest.mark.parametrize("with_scaler", SCALER_PATHS)
@pytest.mark.parametrize("returns", ["object", "tensor"])
def test_gradients_weight_every_token_of_the_window_equally(train_step, returns, with_scaler):
    r, window = rig(returns), unequal_window()
    grad_scaler, path = on_the_path(with_scaler)
    expected, mistakes = expected_and_mistakes(r.model, window, None)
    mistakes["the gradients were clipped though max_grad_norm is None (no clipping)"] = clipped(expected, 1.0)
    window = window if returns == "object" else tuple(window)
    train_step(r.model, window, r.optimizer, r.scheduler, None, grad_scaler)
    expect_handed(r, expected, mistakes, EXACT, f"micro-batches of 3, 12 and 6 targets, no clipping{path}")


@pytest.mark.points(1)
@pytest.mark.parametrize("with_scaler", SCALER_PATHS)
def test_max_grad_norm_defaults_to_one(train_step, with_scaler):
    r, window = rig(outside=True), unequal_window()  # outside: the optimizer holds a parameter the model does not
    grad_scaler, path = on_the_path(with_scaler)
    expected, mistakes = expected_and_mistakes(r.model, window, 1.0)
    unclipped, _ = expected_and_mistakes(r.model, window, None)
    assert total_norm(unclipped) > 2, "grader bug: the window's gradient norm must exceed the default max_grad_norm"
    mistakes["train_step(model, window, optimizer, scheduler) did not clip: max_grad_norm defaults to 1.0"] = unclipped
    train_step(r.model, window, r.optimizer, r.scheduler, scaler=grad_scaler)
    expect_handed(r, expected, mistakes, EXACT, f"max_grad_norm left at its default{path}", clip_to=1.0)


@pytest.mark.points(2)
@pytest.mark.parametrize("with_scaler", SCALER_PATHS)
def test_clipping_changes_nothing_below_max_grad_norm(train_step, with_scaler):
    r, window = rig(outside=True), unequal_window()
    grad_scaler, path = on_the_path(with_scaler)
    expected, mistakes = expected_and_mistakes(r.model, window, None)
    norm = total_norm(expected)
    mistakes["the gradients were clipped though their norm is below max_grad_norm"] = clipped(expected, norm / 2)
    train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=4 * norm, scaler=grad_scaler)
    above = f"max_grad_norm {4 * norm:.3g} above the norm {norm:.3g}{path}"
    expect_handed(r, expected, mistakes, EXACT, above)


@pytest.mark.points(4)
@pytest.mark.parametrize("with_scaler", SCALER_PATHS)
def test_gradients_are_clipped_once_to_max_grad_norm_over_all_parameters(train_step, with_scaler):
    # idle: the optimizer holds a parameter whose gradient stays None; outside: one the model does not register
    r, window = rig(idle=True, outside=True), unequal_window()
    grad_scaler, path = on_the_path(with_scaler)
    unclipped, _ = expected_and_mistakes(r.model, window, None)
    max_norm = 0.3 * total_norm(unclipped)
    expected, mistakes = expected_and_mistakes(r.model, window, max_norm)
    mistakes["the gradients were not clipped: clip_grad_norm_(parameters, max_grad_norm) before the step"] = unclipped
    mistakes["the gradients were clipped by value (clip_grad_value_): clip their total L2 norm"] = [
        g.clamp(-max_norm, max_norm) for g in unclipped
    ]
    try:
        train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=max_norm, scaler=grad_scaler)
    except (AttributeError, TypeError) as error:  # what p.grad.pow(...) on a None gradient raises
        pytest.fail(
            f"train_step raised {type(error).__name__} ({error}) with an optimizer parameter whose gradient is None "
            "(no forward reaches it, as an inactive adapter's): skip None gradients when clipping, as "
            "clip_grad_norm_ does",
            pytrace=False,
        )
    expect_handed(
        r,
        expected,
        mistakes,
        EXACT,
        f"max_grad_norm {max_norm:.3g}, 0.3 x the norm, optimizer parameters without a gradient and outside the model"
        f"{path}",
        clip_to=max_norm,
    )


@pytest.mark.points(2)
@pytest.mark.parametrize("with_scaler", SCALER_PATHS)
def test_clipping_takes_one_norm_over_every_group_of_the_optimizer(train_step, with_scaler):
    r, window = rig(groups=True, stray=True), unequal_window()
    grad_scaler, path = on_the_path(with_scaler)
    unclipped, _ = expected_and_mistakes(r.model, window, None)
    max_norm = 0.3 * total_norm(unclipped)
    expected, mistakes = expected_and_mistakes(r.model, window, max_norm)
    stray = unclipped[2]  # the stray logit bias's gradient is the head bias's: both add to the logits alike
    if grad_scaler is not None:  # scaler.unscale_(optimizer) leaves the stray's gradient scaled
        stray = stray * grad_scaler.get_scale()
    mistakes[
        "the norm was taken over the model's trainable parameters, one of which the optimizer does not hold: clip "
        "the optimizer's parameters (every param_group's)"
    ] = clipped([*unclipped, stray], max_norm)[:3]
    mistakes["only the first parameter group was clipped: clip every group's parameters under one norm"] = [
        *clipped(unclipped[:2], max_norm),
        unclipped[2],
    ]
    mistakes["each parameter group was clipped on its own: one norm over every group's parameters"] = [
        *clipped(unclipped[:2], max_norm),
        *clipped(unclipped[2:], max_norm),
    ]
    train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=max_norm, scaler=grad_scaler)
    expect_handed(
        r,
        expected,
        mistakes,
        EXACT,
        f"an optimizer with two parameter groups, a model with a trainable parameter outside it, max_grad_norm "
        f"{max_norm:.3g}{path}",
        clip_to=max_norm,
    )


@pytest.mark.points(1)
@pytest.mark.parametrize("with_scaler", SCALER_PATHS)
@pytest.mark.parametrize("added", ["in a new group", "to a group"])
def test_clipping_takes_the_groups_the_optimizer_holds_at_each_call(train_step, with_scaler, added):
    r, window = rig(), unequal_window()
    grad_scaler, path = on_the_path(with_scaler)
    factors, bias = r.model.trainable()[:2], r.model.head.bias
    r.optimizer = SpyOptimizer(factors, events=r.events)  # the first window trains the factors only
    bias.requires_grad_(False)
    train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=1.0, scaler=grad_scaler)
    bias.requires_grad_(True)
    if added == "to a group":  # a parameter appended to a group the optimizer holds (the group count stays)
        r.optimizer.param_groups[0]["params"].append(bias)
    else:
        r.optimizer.add_param_group({"params": [bias]})  # a group added between windows, as a run may do
    r.optimizer.forget()
    unclipped, _ = expected_and_mistakes(r.model, window, None)
    max_norm = 0.3 * total_norm(unclipped)
    expected, mistakes = expected_and_mistakes(r.model, window, max_norm)
    stale = "the parameters to clip were those of an earlier call: take them from optimizer.param_groups at each call"
    mistakes[stale + " (a group or a parameter may have been added)"] = [
        *clipped(unclipped[:2], max_norm),
        unclipped[2],
    ]
    train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=max_norm, scaler=grad_scaler)
    expect_handed(
        r, expected, mistakes, EXACT, f"a parameter added {added} between two windows{path}", clip_to=max_norm
    )


@pytest.mark.points(1)
@pytest.mark.parametrize("with_scaler", SCALER_PATHS)
def test_max_grad_norm_zero_clips_every_gradient_to_zero(train_step, with_scaler):
    r, window = rig(outside=True), unequal_window()
    grad_scaler, path = on_the_path(with_scaler)
    unclipped, _ = expected_and_mistakes(r.model, window, None)
    mistakes = {"max_grad_norm=0.0 was taken as no clipping: only None turns clipping off, 0.0 clips to 0": unclipped}
    train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=0.0, scaler=grad_scaler)
    zero = f"max_grad_norm 0.0 (clip to a norm of 0){path}"
    expect_handed(r, clipped(unclipped, 0.0), mistakes, EXACT, zero)


@pytest.mark.points(3)
@pytest.mark.parametrize("with_scaler", SCALER_PATHS)
def test_one_optimizer_step_then_one_scheduler_step_and_the_gradients_zeroed(train_step, with_scaler):
    r, first = rig(outside=True), []  # the optimizer also holds a parameter that is not the model's
    grad_scaler, path = on_the_path(with_scaler)
    windows = [unequal_window(), [micro_batch([6, 3], [3, 2], seed=4), micro_batch([8], [8], raw=True, seed=5)]]
    for number, window in enumerate(windows, start=1):
        del r.events[:]
        r.optimizer.forget()
        expected, mistakes = expected_and_mistakes(r.model, window, None)
        if number == 2:
            leftover = [g + e for g, e in zip(expected, first, strict=True)]
            mistakes["the first window's gradients were still there: zero them after optimizer.step()"] = leftover
        train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=None, scaler=grad_scaler)
        steps = [event for event in r.events if event.endswith(".step")]
        assert steps == ["optimizer.step", "scheduler.step"], (
            f"window {number} of {len(window)} micro-batches{path}: the steps went {steps}, expected one "
            "optimizer.step() "
            "then one scheduler.step(): "
            + (
                "the scheduler was stepped before the optimizer"
                if steps[:1] == ["scheduler.step"]
                else "step both once per window, after the last backward"
            )
        )
        expect_handed(r, expected, mistakes, EXACT, f"window {number}{path}")
        left = holding_gradients(r.model, r.optimizer)
        missed = left and all("outside the model" in name for name in left)
        outside = " (model.zero_grad() misses what the optimizer holds outside the model)" if missed else ""
        assert not left, (
            f"after train_step{path} {left} still hold gradients: zero them after the step (optimizer.zero_grad())"
            f"{outside}"
        )
        first = expected


@pytest.mark.points(3)
@pytest.mark.parametrize("with_scaler", SCALER_PATHS)
def test_learning_rates_of_a_whole_schedule(train_step, with_scaler):
    warmup, total, lr = 2, 6, 0.05
    r = rig(lr=lr)
    grad_scaler, path = on_the_path(with_scaler)
    inner = torch.optim.lr_scheduler.LambdaLR(r.optimizer, lambda step: factor(step, warmup, total))
    r.scheduler = SpyScheduler(r.events, inner)
    window = [micro_batch([4, 3], [2, 2], seed=6), micro_batch([5], [3], seed=7)]
    for _ in range(total):
        train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=1.0, scaler=grad_scaler)
    expected = [lr * factor(step, warmup, total) for step in range(total)]
    measured = r.optimizer.lrs
    assert r.scheduler.steps == total, (
        f"{total} windows{path} stepped the scheduler {r.scheduler.steps} times, expected {total}: "
        + ("once per micro-batch, not once per window" if r.scheduler.steps == 2 * total else "step it once per window")
    )
    ahead = [lr * factor(step + 1, warmup, total) for step in range(total)]
    assert all(math.isclose(m, e, rel_tol=1e-9, abs_tol=1e-15) for m, e in zip(measured, expected, strict=True)), (
        f"the optimizer stepped with the lrs {[round(m, 6) for m in measured]}, expected "
        f"{[round(e, 6) for e in expected]} (warmup 2, total 6{path}): "
        + (
            "one step ahead: the scheduler was stepped before optimizer.step()"
            if all(math.isclose(m, a, abs_tol=1e-15) for m, a in zip(measured, ahead, strict=True))
            else "one optimizer.step() then one scheduler.step() per window"
        )
    )


def window_loss(model: TinyLM, window: list[dict[str, torch.Tensor]]) -> float:
    model = copy.deepcopy(model)
    with torch.no_grad():
        return sum(token_loss_sum(model, batch).item() for batch in window) / sum(map(targets, window))


@pytest.mark.points(2)
@pytest.mark.parametrize("with_scaler", SCALER_PATHS)
def test_returns_the_windows_mean_token_loss(train_step, with_scaler):
    r, window = rig(), unequal_window()
    grad_scaler, path = on_the_path(with_scaler)
    expected = window_loss(r.model, window)
    returned = train_step(r.model, window, r.optimizer, r.scheduler, scaler=grad_scaler)
    assert isinstance(returned, float), (
        f"train_step{path} returned {describe(returned)}, expected a Python float: return loss.item(), no graph kept"
    )
    if math.isclose(returned, expected, rel_tol=1e-9):
        return
    with torch.no_grad():
        means = [token_loss_sum(copy.deepcopy(rig().model), b).item() / targets(b) for b in window]
    causes = {
        "the last micro-batch's loss only": means[-1],
        "the mean of the micro-batches' means: weigh every token alike": sum(means) / len(means),
        "the sum of the micro-batches' means": sum(means),
        "the loss after the step: return the loss the gradients were computed with": window_loss(r.model, window),
        "the sum of the token losses: divide it by the window's label tokens": expected * sum(map(targets, window)),
    }
    cause = next((c for c, v in causes.items() if math.isclose(returned, v, rel_tol=1e-9)), "")
    raise AssertionError(
        f"train_step{path} returned {returned:.6g}, expected the window's mean token loss {expected:.6g}"
        + (f": it returned {cause}" if cause else ": every token loss of the window over its label tokens")
    )


def non_contiguous_logits(model: TinyLM) -> None:
    """From now on the model returns its logits non-contiguous (a transpose's layout, as some models' heads give
    them), with the same values: a .view() over (batch * seq, vocab) raises on them."""

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> object:
        logits = output if isinstance(output, torch.Tensor) else output.logits
        strided = logits.transpose(0, 1).contiguous().transpose(0, 1)
        return strided if isinstance(output, torch.Tensor) else type(output)(strided, output.loss)

    model.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.points(2)
@pytest.mark.parametrize("with_scaler", SCALER_PATHS)
def test_a_window_edited_in_place_is_read_afresh_and_non_contiguous_logits_taken(train_step, with_scaler):
    """A training loop may refill the same tensors for every window: each call counts the window's targets and
    reads its ids anew. The model returns non-contiguous logits throughout."""
    window = unequal_window()
    grad_scaler, path = on_the_path(with_scaler)
    first = rig()
    non_contiguous_logits(first.model)
    what = f"a model returning non-contiguous logits{path}"
    try:
        train_step(first.model, window, first.optimizer, first.scheduler, None, grad_scaler)
    except NotImplementedError:
        raise
    except RuntimeError as error:
        raise AssertionError(
            f"train_step on {what} raised RuntimeError ({str(error)[:80]}), expected a step"
            + (": .view() needs contiguous memory, use .reshape() or .flatten()" if "view" in str(error) else "")
        ) from None
    stale = sum(map(targets, window))
    with torch.no_grad():  # the caller refills the same tensors: fewer targets, other ids
        window[1]["labels"][:, :3] = IGNORE
        window[2]["labels"][:, 4:] = IGNORE
        for batch in window:
            batch["input_ids"].add_(1).remainder_(VOCAB)
    fresh = sum(map(targets, window))
    r = rig()
    non_contiguous_logits(r.model)
    expected, mistakes = expected_and_mistakes(r.model, window, None)
    per_batch = [batch_grads(r.model, batch) for batch in window]
    mistakes[
        f"the gradients were divided by {stale} targets, the count before the labels were edited in place: count "
        "the window's targets anew at every call (no cache per tensor)"
    ] = combine(per_batch, [1 / stale] * len(window))
    expected_loss = window_loss(r.model, window)
    grad_scaler, path = on_the_path(with_scaler)  # a fresh scaler for the second call
    returned = train_step(r.model, window, r.optimizer, r.scheduler, None, grad_scaler)
    edited = f"a window edited in place after a first call ({fresh} targets), {what}"
    expect_handed(r, expected, mistakes, EXACT, edited)
    assert math.isclose(returned, expected_loss, rel_tol=1e-9), (
        f"train_step on a window edited in place after a first call returned {returned:.6g}, expected "
        f"{expected_loss:.6g} (its {fresh} targets now, {what}): "
        + (
            f"divided by the {stale} targets before the edit: count the targets anew at every call"
            if math.isclose(returned, expected_loss * fresh / stale, rel_tol=1e-9)
            else "read the window's labels and ids anew at every call"
        )
    )


# What a model's logits hold at padding: "overflow" a float16 model's past 65504 (+inf and -inf at two vocabulary
# entries), "nan" a fully masked attention row's. Positions without a target take no part in the loss.
PADDING_POISONS = {
    "overflow": lambda logits: (
        logits.new_zeros(logits.shape[-1])
        .index_fill(0, torch.tensor([0]), math.inf)
        .index_fill(0, torch.tensor([1]), -math.inf)
    ),
    "nan": lambda logits: logits.new_full((logits.shape[-1],), math.nan),
}
SCALERS = {False: "no-scaler", True: "gradscaler", "disabled": "disabled-gradscaler"}
POISONED_MODELS = [  # (the model's dtype, the autocast dtype or None, the scaler path): a GradScaler unscales no fp16
    *(pytest.param(torch.float64, None, s, id=f"float64-{i}") for s, i in SCALERS.items()),
    *(pytest.param(torch.float32, torch.float16, s, id=f"float32-under-fp16-autocast-{i}") for s, i in SCALERS.items()),
    *(pytest.param(torch.float32, torch.bfloat16, s, id=f"float32-under-bf16-autocast-{i}") for s in (False,)
      for i in (SCALERS[s],)),
    *(pytest.param(d, None, s, id=f"{str(d)[6:]}-{SCALERS[s]}") for d in (torch.float16, torch.bfloat16)
      for s in (False, "disabled")),
]  # fmt: skip


def poison_the_padding(model: TinyLM, poison: str) -> None:
    """From now on the model's logits are ``PADDING_POISONS[poison]`` at the right padding of every row (the positions
    from which on the row attends to nothing), whose targets are all -100 (or none: the last position)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> object:
        logits = output if isinstance(output, torch.Tensor) else output.logits
        mask = kwargs.get("attention_mask")
        if mask is None:  # the model attends to everything (another check names the missing mask)
            return output
        padding = (mask.flip(1).cumsum(1).flip(1) == 0).unsqueeze(-1).to(logits.device)
        poisoned = torch.where(padding, PADDING_POISONS[poison](logits), logits)
        return poisoned if isinstance(output, torch.Tensor) else type(output)(poisoned, output.loss)

    model.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.points(1)
@pytest.mark.parametrize(("dtype", "autocast", "with_scaler"), POISONED_MODELS)
@pytest.mark.parametrize("poison", PADDING_POISONS)
def test_returns_a_finite_loss_when_the_logits_overflow_at_padding(train_step, dtype, autocast, with_scaler, poison):
    """Only the returned loss is graded: the gradients of a loss over every position (ignore_index) are NaN there,
    which the spec allows (the step may then write NaN, or a GradScaler skip it)."""
    r, window = rig(dtype=dtype), unequal_window()
    grad_scaler, path = on_the_path(with_scaler)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        expected = window_loss(r.model, window)
    poison_the_padding(r.model, poison)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        returned = train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=None, scaler=grad_scaler)
    what = f"a {dtype} model" + (f" under {autocast} autocast" if autocast else "") + path
    assert isinstance(returned, float), f"{what}: train_step returned {describe(returned)}, expected a Python float"
    assert math.isclose(returned, expected, rel_tol=1e-4 if autocast or dtype != torch.float64 else 1e-9), (
        f"{what}, its logits {poison} at the padding (whose targets are -100): train_step returned {returned!r}, "
        f"expected the window's mean token loss {expected:.6g}, as with any other logits there: "
        + (
            "a position without a target takes no part in the loss, yet its token loss was weighted by 0 (inf x 0 "
            "or NaN x 0 is NaN): leave those positions out (select the targets), as causal_lm_loss does"
            if not math.isfinite(returned)
            else "every token loss of the window over its label tokens"
        )
    )


def scaler(init_scale: float = 2.0**12) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1)


@pytest.mark.points(3)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_a_gradscaler_is_unscaled_before_clipping(train_step, dtype):
    r, window, scale = rig(dtype=dtype), unequal_window(), 2.0**12  # float32: what autocast would cast, not entered
    unclipped, _ = expected_and_mistakes(r.model, window, None)
    max_norm = 0.3 * total_norm(unclipped)
    expected, mistakes = expected_and_mistakes(r.model, window, max_norm)
    mistakes["the scaled gradients were clipped: call scaler.unscale_(optimizer) before clipping"] = [
        g / scale for g in clipped([g * scale for g in unclipped], max_norm)
    ]
    mistakes["backward() on the unscaled loss: call scaler.scale(loss).backward()"] = clipped(
        [g / scale for g in unclipped], max_norm
    )
    if dtype == torch.float32:
        mistakes["the forward ran under float16 autocast: a GradScaler alone asks for none, the caller enters it"] = (
            clipped(autocast_reference(r.model, window, torch.float16, scale), max_norm)
        )
    grad_scaler = scaler(scale)
    train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=max_norm, scaler=grad_scaler)
    expect_handed(
        r,
        expected,
        mistakes,
        EXACT if dtype == torch.float64 else FLOAT32,
        f"a {dtype} model, no autocast, GradScaler at scale {scale:g}, max_grad_norm {max_norm:.3g}",
        clip_to=max_norm,
    )
    assert grad_scaler.get_scale() == 2 * scale, (
        f"the scaler's scale is {grad_scaler.get_scale():g} after a good step, expected {2 * scale:g} (growth "
        "every step here): call scaler.update() once per window, after scaler.step(optimizer)"
    )
    assert r.scheduler.steps == 1, f"the scheduler was stepped {r.scheduler.steps} times, expected once"


@pytest.mark.points(3)
@pytest.mark.parametrize("max_grad_norm", [1.0, None], ids=["clipping", "no-clipping"])  # the skip, clipped or not
def test_a_step_the_scaler_skips_steps_no_scheduler(train_step, max_grad_norm):
    r, window, scale = rig(), unequal_window(), 2.0**12
    r.model.grad_factor = math.inf
    grad_scaler = scaler(scale)
    where = f"max_grad_norm {max_grad_norm}"
    returned = train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=max_grad_norm, scaler=grad_scaler)
    assert not r.optimizer.handed, (
        f"{where}: with inf gradients optimizer.step() ran: let scaler.step(optimizer) call it (it skips inf/NaN steps)"
    )
    assert grad_scaler.get_scale() == scale / 2, (
        f"{where}: after inf gradients the scale is {grad_scaler.get_scale():g}, expected {scale / 2:g}: call "
        "scaler.update() once per window"
    )
    assert r.scheduler.steps == 0, (
        f"{where}: the scaler skipped the step but the scheduler was stepped {r.scheduler.steps} times: step it only "
        "when the scale did not drop (scaler.get_scale() before and after update())"
        + (
            ", whether or not the gradients are clipped (max_grad_norm None: no clipping, the skip all the same)"
            if max_grad_norm is None
            else ""
        )
    )
    left = holding_gradients(r.model)  # inf or NaN gradients count as held
    assert not left, f"{where}: after a skipped step {left} still hold gradients: zero them whether or not the step ran"
    assert isinstance(returned, float) and math.isclose(returned, window_loss(r.model, window), rel_tol=1e-9), (
        f"{where}: a skipped step returned {returned!r}, expected the window's mean token loss (finite: only the "
        "gradients were inf)"
    )


SKIP_RUNS = {  # growth_interval, then each window: skipped (inf gradients) or not; a skip drops the scale by half
    "skip-then-good": (1000, [True, False, False]),  # an fp16 run's start: the scale falls, then holds below the first
    "grown-then-skips": (1, [False, False, True, True, False]),  # a skip from a grown scale lands at the first
}


@pytest.mark.points(1)
@pytest.mark.parametrize("run", SKIP_RUNS)
def test_steps_after_a_skipped_one_step_the_scheduler(train_step, run):
    """Several windows under one GradScaler: each is judged by its own update(), whatever the scale of other calls."""
    growth_interval, skips = SKIP_RUNS[run]
    r, scale = rig(), 2.0**12
    grad_scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=growth_interval)
    for i, skip in enumerate(skips):
        r.model.grad_factor = math.inf if skip else 1.0
        before, steps = grad_scaler.get_scale(), r.scheduler.steps
        max_grad_norm = None if i % 2 else 1.0  # clipping or not: the skip is the scaler's either way
        train_step(r.model, unequal_window(), r.optimizer, r.scheduler, max_grad_norm=max_grad_norm, scaler=grad_scaler)
        after = grad_scaler.get_scale()
        assert (after < before) == skip, f"grader bug: window {i} of {run} moved the scale {before:g} to {after:g}"
        assert r.scheduler.steps - steps == (not skip), (
            f"window {i} of {skips} (True: skipped) under one GradScaler, max_grad_norm {max_grad_norm}: the scale "
            f"went {before:g} -> {after:g} and "
            f"the scheduler was stepped {r.scheduler.steps - steps} times, expected {int(not skip)}: tell a skip "
            "by the scale before this window's update() and after it, not by the scale of an earlier call"
        )


@pytest.mark.points(1)
@pytest.mark.parametrize("with_scaler", [pytest.param(False, id="no-scaler"), pytest.param("disabled", id="disabled")])
@pytest.mark.parametrize("poison", ["inf gradients", "an inf loss", "a NaN loss"])
def test_without_a_scaler_every_window_steps(train_step, poison, with_scaler):
    """Without a GradScaler, or with a disabled one (which never skips: its step() is optimizer.step())."""
    r, window = rig(), unequal_window()
    grad_scaler, path = on_the_path(with_scaler)
    if poison == "inf gradients":  # a finite loss
        r.model.grad_factor = math.inf
    else:  # every logit of a token the window targets is -inf (a vocabulary mask), or NaN
        token = int(window[0]["labels"][0, -1])
        r.model.fill_token = (token, -math.inf if poison == "an inf loss" else math.nan)
    train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=1.0, scaler=grad_scaler)
    steps = [event for event in r.events if event.endswith(".step")]
    assert steps == ["optimizer.step", "scheduler.step"], (
        f"{path.removeprefix(', ')}, a window of {poison} stepped {steps}, expected one optimizer.step() then one "
        "scheduler.step(): only a scaler skips steps (an enabled one, told by its scale falling at update()); "
        "without one, or with GradScaler(enabled=False), step whatever the loss and the gradients"
    )


@pytest.mark.points(2)
@pytest.mark.parametrize("max_grad_norm", [None, 0.5], ids=["no-clipping", "clipping"])
def test_a_disabled_gradscaler_steps_as_without_one(train_step, max_grad_norm):
    """GradScaler(enabled=False), as GradScaler(enabled=use_fp16) gives in a float32 run: a torch.amp.GradScaler whose
    scale() returns the loss, unscale_() and update() do nothing, step() calls optimizer.step() and get_scale() is 1.0;
    it has none of an enabled scaler's internals (_scale, _growth_tracker, the per-optimizer found-inf)."""
    r, window = rig(outside=True), unequal_window()
    expected, mistakes = expected_and_mistakes(r.model, window, max_grad_norm)
    loss = window_loss(r.model, window)
    what = f"a disabled GradScaler (enabled=False), max_grad_norm {max_grad_norm}"
    try:
        returned = train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm, disabled_scaler())
    except NotImplementedError:  # a stub: the report says so
        raise
    except (AttributeError, KeyError, TypeError, RuntimeError, AssertionError) as error:
        pytest.fail(
            f"train_step with {what} raised {type(error).__name__} ({str(error).splitlines()[0] if str(error) else ''})"
            ", expected one step as without a scaler: a disabled scaler has none of an enabled one's internals; ask "
            "it only through its public methods (scale, unscale_, step, update, get_scale, is_enabled)",
            pytrace=False,
        )
    steps = [event for event in r.events if event.endswith(".step")]
    assert steps == ["optimizer.step", "scheduler.step"], (
        f"{what}: the steps went {steps}, expected one optimizer.step() (through scaler.step) then one "
        "scheduler.step(): a disabled scaler never skips, and its scale stays 1.0"
    )
    expect_handed(r, expected, mistakes, EXACT, what, clip_to=max_grad_norm)
    assert isinstance(returned, float) and math.isclose(returned, loss, rel_tol=1e-9), (
        f"{what}: train_step returned {returned!r}, expected the window's mean token loss {loss:.6g}"
    )


@pytest.mark.points(1)
@pytest.mark.parametrize("max_grad_norm", [None, 1.0], ids=["no-clipping", "clipping"])  # the norm at hand or not
def test_the_scaler_alone_tells_a_skipped_step(train_step, max_grad_norm):
    r, scale = rig(dtype=torch.float32), 2.0**12
    r.model.grad_factor = 1e20  # finite float32 gradients whose squares, and so their float32 norm, overflow
    grad_scaler = scaler(scale)
    train_step(r.model, unequal_window(), r.optimizer, r.scheduler, max_grad_norm=max_grad_norm, scaler=grad_scaler)
    assert len(r.optimizer.handed) == 1 and grad_scaler.get_scale() == 2 * scale, (
        f"finite gradients of about 1e20 under a GradScaler, max_grad_norm {max_grad_norm}: "
        f"{len(r.optimizer.handed)} optimizer steps and a scale "
        f"of {grad_scaler.get_scale():g}, expected one step and the scale grown to {2 * scale:g}"
    )
    assert r.scheduler.steps == 1, (
        f"the scaler stepped (finite gradients of about 1e20, max_grad_norm {max_grad_norm}) but the scheduler was "
        f"stepped {r.scheduler.steps} times, expected once: tell a skipped step by the scaler's scale, not by the "
        "gradients' norm (a float32 norm of finite gradients may overflow, clip_grad_norm_'s too)"
    )


def autocast_reference(model: TinyLM, window, dtype: torch.dtype, scale: float) -> list[torch.Tensor]:
    """The gradients of the reference step under CPU autocast, through a loss scaled by ``scale``."""
    total = sum(map(targets, window))
    per_batch = []
    for batch in window:
        copied = copy.deepcopy(model)
        with torch.autocast("cpu", dtype=dtype):
            loss = token_loss_sum(copied, batch) * (scale / total)
        per_batch.append([g / scale for g in torch.autograd.grad(loss, copied.reached())])
    return combine(per_batch, [1.0] * len(window))


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("clipping", [False, True], ids=["no-clipping", "clipped"])
def test_steps_under_autocast(train_step, dtype, clipping):
    r, window = rig(dtype=torch.float32), unequal_window()
    scale = 2.0**12 if dtype == torch.float16 else 1.0
    max_norm = None
    if clipping and dtype == torch.float16:  # a spike: a true norm of about 400, whose square overflows float16
        r.model.grad_factor, scale, max_norm = 100.0, 2.0**4, 1.0
    expected = autocast_reference(r.model, window, dtype, scale)
    mistakes = {}
    if clipping:
        max_norm = max_norm or 0.3 * total_norm(expected)
        unclipped, unclipped_norm, expected = expected, total_norm(expected), clipped(expected, max_norm)
        mistakes["the gradients were not clipped"] = unclipped
        if dtype == torch.float16:
            mistakes[
                f"the clip's norm overflowed float16 (its square, {unclipped_norm**2:.3g}, is past 65504; a dot or "
                "matmul of the gradients runs in float16 under autocast), so every gradient was scaled to 0: take "
                "the norm with clip_grad_norm_ or torch.linalg.vector_norm, in float32"
            ] = [torch.zeros_like(g) for g in expected]
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        loss = sum(token_loss_sum(copy.deepcopy(r.model), batch).item() for batch in window) / sum(map(targets, window))
    # growth_interval 2000 (the default): a good step leaves the scale as it is
    grad_scaler = torch.amp.GradScaler("cpu", init_scale=scale) if dtype == torch.float16 else None
    with torch.autocast("cpu", dtype=dtype):
        returned = train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=max_norm, scaler=grad_scaler)
    # two rounding steps of the autocast dtype: another order of the same operations (under bf16, the gradients
    # divided by N after the backward; the model run in float32) rounds otherwise; a wrong normaliser is off by
    # far more. Under fp16 and a GradScaler the loss must be divided by N before the backward: the scaled
    # gradients of the summed loss overflow float16, and the scaler skips the step.
    tolerance = 2 * torch.finfo(dtype).eps
    if grad_scaler is not None and grad_scaler.get_scale() < scale:
        raise AssertionError(
            f"under {dtype} autocast the GradScaler skipped the step (its scale fell from {scale:g} to "
            f"{grad_scaler.get_scale():g}): the scaled gradients overflowed float16; backward "
            "scaler.scale(summed loss / N), not the summed loss with the gradients divided after"
        )
    what = f"a float32 model under {dtype} autocast" + (
        f", max_grad_norm {max_norm:.3g} (the true norm {unclipped_norm:.3g})" if clipping else ""
    )
    expect_handed(r, expected, mistakes, tolerance, what)
    if clipping:  # the direction rounds in the autocast dtype, the clipped norm does not: the norm is float32
        by_id = {id(p): g for p, g in zip(r.optimizer.stepped[0], r.optimizer.handed[0], strict=True)}
        norm = total_norm([by_id[id(p)] for p in r.model.reached()])
        assert math.isclose(norm, max_norm, rel_tol=CLIP_FORMULAS), (
            f"{what}: the clipped gradients' norm is {norm:.7g}, expected max_grad_norm {max_norm:.7g}: the norm was "
            f"computed in {dtype} (a matmul or dot of the gradients runs in {dtype} under autocast, and a float16 "
            "square overflows past 256): take it with clip_grad_norm_ or torch.linalg.vector_norm, in float32"
        )
    assert isinstance(returned, float) and math.isclose(returned, loss, rel_tol=1e-4), (
        f"under {dtype} autocast train_step returned {returned!r}, expected {loss:.6g}: compute the loss in float32"
    )
    assert r.scheduler.steps == 1, (
        f"a good step under {dtype} autocast stepped the scheduler {r.scheduler.steps} times, expected once"
        + (": the scale did not grow, but it did not drop either (scale_after >= scale_before)" if scale > 1 else "")
    )


HALF_SPIKE = 2.0**10  # a loss spike: every gradient that many times larger (exactly), some over 256, whose square
# overflows float16 (65504) though they are well inside its range


def thousand_and_one_targets() -> list[dict[str, torch.Tensor]]:
    """A window of 1001 targets: a count that bfloat16 rounds (to 1000), float32 and int64 hold exactly. After a
    spike, the float16 gradients of its summed loss overflow (about 1001 x 1024 x theirs), those of loss / N do not."""
    return [micro_batch([9, 4], [1, 2], seed=1), micro_batch([999], [998], seed=15)]


def many_targets() -> list[dict[str, torch.Tensor]]:
    """A window of 8195 targets: a count that float16 rounds too (bfloat16 and float16 both hold it as 8192)."""
    return [micro_batch([9, 4], [1, 2], seed=1), micro_batch([1025] * 8, [1024] * 8, seed=16)]


HALF_WINDOWS = [
    pytest.param(unequal_window, id="21-targets"),
    pytest.param(thousand_and_one_targets, id="1001-targets"),
    pytest.param(many_targets, id="8195-targets"),
]


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("max_grad_norm", [None, 1.0], ids=["no-clipping", "clipped-after-a-spike"])
@pytest.mark.parametrize("make_window", HALF_WINDOWS)
def test_steps_a_half_precision_model_without_autocast(train_step, dtype, max_grad_norm, make_window):
    r, window = rig(dtype=dtype), make_window()  # a model loaded in half precision, no autocast
    count = sum(map(targets, window))
    expected, mistakes = expected_and_mistakes(r.model, window, None)
    loss = window_loss(r.model, window)  # the model's half-precision logits, the loss in float32
    what = f"a {dtype} model, no autocast"
    if max_grad_norm is not None:
        r.model.grad_factor = HALF_SPIKE
        spiked = [HALF_SPIKE * g.double() for g in expected]
        expected = [g.to(dtype) for g in clipped(spiked, max_grad_norm)]
        mistakes = {
            "the norm overflowed (g * g in float16 is inf past 256): take the norm in float32, as clip_grad_norm_ "
            "does": [torch.zeros_like(g) for g in expected],
            "the gradients were not clipped": [g.to(dtype) for g in spiked],
        }
        what += f", max_grad_norm {max_grad_norm} after a spike (gradients up to {total_norm(spiked):.3g} in norm)"
    returned = train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=max_grad_norm)
    what += f", {count} targets"
    handed = [g for g in (r.optimizer.handed[0] if len(r.optimizer.handed) == 1 else []) if g is not None]
    assert all(bool(g.isfinite().all()) for g in handed), (
        f"{what}: optimizer.step() was handed non-finite gradients, the reference step's are finite (at most "
        f"{max(g.double().abs().max().item() for g in expected):.3g}): the {dtype} gradients of the summed loss "
        f"overflow ({count} times larger, past {torch.finfo(dtype).max:.3g}), so the summed loss was backpropagated "
        "and divided after? divide each micro-batch's summed loss by N before its backward"
    )
    expect_handed(r, expected, mistakes, 2 * torch.finfo(dtype).eps, what)
    rounded = torch.tensor(float(count), dtype=dtype).item()  # what a count held in the model's dtype becomes
    assert isinstance(returned, float), f"{what}: train_step returned {describe(returned)}, expected a Python float"
    assert math.isclose(returned, loss, rel_tol=1e-5), (
        f"{what}: train_step returned {returned!r}, expected {loss:.8g} (its {dtype} logits upcast to float32 "
        "before the loss): "
        + (
            f"it matches a count of {rounded:g}: the count N = {count} is not exact in {dtype} (a tensor of the "
            "logits' dtype?): divide by N as a Python int, or a float32/int64 tensor"
            if rounded != count and math.isclose(returned, loss * count / rounded, rel_tol=1e-4)
            else "compute the loss in float32, as causal_lm_loss does"
        )
    )


def count_held_in(window: list[dict[str, torch.Tensor]], dtype: torch.dtype) -> float:
    """The window's target count as a running sum in a tensor of ``dtype`` (torch.zeros(()) under that default)."""
    count = torch.zeros((), dtype=dtype)
    for batch in window:
        count += (batch["labels"][:, 1:] != IGNORE).sum()
    return count.item()


# each default dtype with a window whose count it does not hold exactly (float64: a promotion to it)
DEFAULT_DTYPE_CASES = [
    pytest.param(torch.bfloat16, thousand_and_one_targets, id="bfloat16-default-1001-targets"),
    pytest.param(torch.float16, many_targets, id="float16-default-8195-targets"),
    pytest.param(torch.float64, thousand_and_one_targets, id="float64-default-1001-targets"),
]


@pytest.mark.points(1)
@pytest.mark.parametrize(("default", "make_window"), DEFAULT_DTYPE_CASES)
@pytest.mark.parametrize("max_grad_norm", [None, 1.0], ids=["no-clipping", "clipped-after-a-spike"])
def test_steps_the_same_under_any_default_dtype(train_step, default, make_window, max_grad_norm):
    """A script may set torch's default dtype (bf16 for a model, float64 for a check): a float64 model's step is the
    same whatever it is, so no count, normaliser or norm is held in a tensor of the default dtype (torch.zeros(()),
    torch.tensor(0.0), x * 1.0): every gradient, the clip's norm and the returned loss."""
    r, window = rig(), make_window()
    count = sum(map(targets, window))
    held = count_held_in(window, default)
    expected, mistakes = expected_and_mistakes(r.model, window, None)
    loss = window_loss(r.model, window)
    if held != count:
        mistakes[
            f"they match a count held in the default dtype ({held:g} for {count} targets: a running sum in "
            "torch.zeros(())): count the targets as a Python int or an int64 tensor"
        ] = [g * count / held for g in expected]
    what = f"under torch.set_default_dtype({default}), a float64 model, {count} targets"
    if max_grad_norm is not None:
        r.model.grad_factor = HALF_SPIKE
        spiked = [HALF_SPIKE * g for g in expected]
        expected, mistakes = clipped(spiked, max_grad_norm), {}
        what += f", max_grad_norm {max_grad_norm} after a spike (gradients of {total_norm(spiked):.4g} in norm)"
    with default_dtype(default):
        returned = train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=max_grad_norm)
    if max_grad_norm is not None and len(r.optimizer.handed) == 1:
        handed = [g for g in r.optimizer.handed[0] if g is not None]
        norm = total_norm(handed) if handed else 0.0
        assert math.isclose(norm, max_grad_norm, rel_tol=1e-6), (
            f"{what}: the gradients handed to optimizer.step() have a norm of {norm:.6g}, expected max_grad_norm "
            f"{max_grad_norm}: "
            + (
                "the norm was taken in the default dtype (a sum of squares in torch.tensor(0.0) overflows float16 "
                "past 65504, bfloat16 rounds it): take it as clip_grad_norm_ does, in the gradients' own dtype (or "
                "float32 or better), never in a tensor of the default dtype"
                if default != torch.float64 and (norm == 0 or not math.isfinite(norm) or abs(norm - 1) < 2e-2)
                else "clip once, to one total L2 norm over the optimizer's parameters"
            )
        )
    expect_handed(r, expected, mistakes, EXACT, what, clip_to=max_grad_norm)
    assert isinstance(returned, float), f"{what}: train_step returned {describe(returned)}, expected a Python float"
    assert math.isclose(returned, loss, rel_tol=1e-9), (
        f"{what}: train_step returned {returned!r}, expected {loss:.12g}, as under the float32 default: "
        + (
            f"it matches a count of {held:g}: a count held in the default dtype (a running sum in torch.zeros(())): "
            "count the targets as a Python int or an int64 tensor"
            if held != count and math.isclose(returned, loss * count / held, rel_tol=1e-6)
            else "no value may depend on the default dtype"
        )
    )


NO_GRADIENT_PATHS = [pytest.param(False, id="no-scaler"), pytest.param("disabled", id="disabled-gradscaler")]


@pytest.mark.points(1)
@pytest.mark.parametrize("with_scaler", NO_GRADIENT_PATHS)
@pytest.mark.parametrize("max_grad_norm", [1.0, None], ids=["clipping", "no-clipping"])
def test_an_optimizer_whose_parameters_get_no_gradient_still_steps(train_step, with_scaler, max_grad_norm):
    """The optimizer may hold only parameters that no forward reaches (an inactive adapter's): none gets a gradient,
    and the window still takes its one optimizer.step() and one scheduler.step() (nothing to clip)."""
    r, window = rig(idle=True), unequal_window()
    r.optimizer = SpyOptimizer([r.model.idle], events=r.events)
    r.scheduler = SpyScheduler(r.events, optimizer=r.optimizer)
    grad_scaler, path = on_the_path(with_scaler)
    what = (
        f"an optimizer holding only a parameter that no forward reaches (no gradient), max_grad_norm "
        f"{max_grad_norm}{path}"
    )
    try:
        returned = train_step(
            r.model, window, r.optimizer, r.scheduler, max_grad_norm=max_grad_norm, scaler=grad_scaler
        )
    except NotImplementedError:  # a stub: the report says so
        raise
    except (RuntimeError, ValueError, IndexError, ZeroDivisionError, TypeError, AttributeError) as error:
        pytest.fail(
            f"{what}: train_step raised {type(error).__name__} ({str(error).splitlines()[0] if str(error) else ''}), "
            "expected one optimizer step: no parameter of the optimizer got a gradient, so there is nothing to clip "
            "(clip_grad_norm_ of no gradient is a no-op; a hand-written torch.stack of no norm raises): the only "
            "refusal is a window without targets",
            pytrace=False,
        )
    assert len(r.optimizer.handed) == 1 and r.scheduler.steps == 1, (
        f"{what}: {len(r.optimizer.handed)} optimizer steps and {r.scheduler.steps} scheduler steps, expected one "
        "of each: a window with targets steps, whatever gradients the optimizer's parameters got"
    )
    assert all(g is None or not bool((g != 0).any()) for g in r.optimizer.handed[0]), (
        f"{what}: optimizer.step() was handed a nonzero gradient for a parameter that no forward reaches"
    )
    assert isinstance(returned, float) and math.isclose(returned, window_loss(r.model, window), rel_tol=1e-9), (
        f"{what}: train_step returned {returned!r}, expected the window's mean token loss "
        f"{window_loss(r.model, window):.8g}"
    )


@pytest.mark.points(2)
def test_a_window_without_targets_is_refused_before_any_forward(train_step):
    r = rig()
    masked = [micro_batch([5, 3], [0, 0], seed=8), micro_batch([4], [1], seed=9)]  # one label: at position 0 only
    masked[1]["labels"][:, 1:] = IGNORE
    masked[1]["labels"][0, 0] = masked[1]["input_ids"][0, 0]
    expect_value_error(
        lambda: train_step(r.model, masked, r.optimizer, r.scheduler),
        "train_step on a window whose only label is at position 0 (no target after the shift)",
    )
    assert r.model.forwards == 0, (
        f"the model ran {r.model.forwards} forward passes before the ValueError: count the targets first"
    )
    assert not r.optimizer.handed and r.scheduler.steps == 0, "a refused window stepped the optimizer or scheduler"
    expect_value_error(lambda: train_step(r.model, [], r.optimizer, r.scheduler), "train_step on an empty window")


@pytest.mark.points(1)
@pytest.mark.parametrize("with_scaler", SCALER_PATHS)
def test_the_model_is_called_with_the_attention_mask(train_step, with_scaler):
    r, window = rig(), [micro_batch([6, 2], [3, 1], seed=10), micro_batch([3, 5, 4], [2, 2, 2], seed=11)]
    grad_scaler, path = on_the_path(with_scaler)
    train_step(r.model, window, r.optimizer, r.scheduler, scaler=grad_scaler)
    assert r.model.forwards == len(window), (
        f"the model was called {r.model.forwards} times for {len(window)} micro-batches{path}, expected once each"
        + (
            ": model.forward(...) skips the model's hooks (peft's, accelerate's): call model(...)"
            * (not r.model.forwards)
        )
    )
    calls = list(zip(r.model.inputs, r.model.masks, strict=True))
    for number, batch in enumerate(window, start=1):  # in any order: the sum of the gradients does not depend on it
        seen = next((mask for ids, mask in calls if ids is not None and torch.equal(ids, batch["input_ids"])), None)
        assert any(ids is not None and torch.equal(ids, batch["input_ids"]) for ids, _ in calls), (
            f"micro-batch {number}{path}: no call of the model got its input_ids: pass them as they are"
        )
        assert seen is not None, (
            f"micro-batch {number}{path}: the model was called without its attention mask: "
            "model(input_ids=..., attention_mask=...)"
        )
        assert torch.equal(seen, batch["attention_mask"]), (
            f"micro-batch {number}{path}: the model got another attention mask than the micro-batch's: pass it as it is"
        )


@pytest.mark.points(1)
@pytest.mark.parametrize("with_scaler", SCALER_PATHS)
def test_one_forward_and_one_backward_per_micro_batch(train_step, with_scaler):
    """A window of 17 micro-batches (past the 8 or 16 accumulation steps of a training script) whose micro-batches
    repeat a shape (as a fixed padding length makes them): each is its own forward and backward."""
    r = rig()
    repeated = [micro_batch([5, 3, 4], [2, 1, 3], seed=20 + i) for i in range(13)]
    window = [*unequal_window(), *repeated, micro_batch([7], [4], seed=40)]
    grad_scaler, path = on_the_path(with_scaler)
    train_step(r.model, window, r.optimizer, r.scheduler, scaler=grad_scaler)
    shapes = [tuple(batch["input_ids"].shape) for batch in window]
    unseen = [
        number
        for number, batch in enumerate(window, start=1)
        if not any(ids is not None and torch.equal(ids, batch["input_ids"]) for ids in r.model.inputs)
    ]
    assert r.model.forwards == len(window), (
        f"{len(window)} micro-batches of shapes {shapes} took {r.model.forwards} forward passes{path}, expected one "
        "each: "
        + (
            f"micro-batches {unseen[0]} to {unseen[-1]} never reached the model: the window was cut (to a fixed "
            "count of accumulation steps?): every micro-batch the window holds is one forward, however many"
            if unseen and unseen == list(range(r.model.forwards + 1, len(window) + 1))
            else "micro-batches of one shape were merged (concatenated) into one forward; call the model on each"
        )
    )
    assert r.model.backwards == len(window), (
        f"{len(window)} micro-batches took {r.model.backwards} backward passes{path}, expected one each"
        + (
            ": the losses were summed and backpropagated once (the whole window's graph kept)"
            if r.model.backwards == 1
            else ""
        )
    )


@pytest.mark.points(2)
@pytest.mark.parametrize("with_scaler", SCALER_PATHS)
def test_a_micro_batch_without_targets_still_belongs_to_the_window(train_step, with_scaler):
    r = rig()
    grad_scaler, path = on_the_path(with_scaler)
    empty = micro_batch([5, 3], [0, 0], seed=12)  # no label at all but one at position 0, never a target
    empty["labels"][0, 0] = empty["input_ids"][0, 0]
    no_rows = {key: value[:0] for key, value in micro_batch([4], [2], seed=15).items()}  # (0, seq): no row at all
    window = [empty, micro_batch([6, 4], [2, 1], seed=13), micro_batch([3], [0], seed=14), no_rows]
    labelled = {int(t) for batch in window for t in batch["labels"].flatten()}
    masked = min(set(range(VOCAB)) - labelled)  # a token no label holds: its logits never count
    r.model.fill_token = (masked, -math.inf)  # a vocabulary mask: -inf where no micro-batch has a target
    expected, mistakes = expected_and_mistakes(r.model, window, None)
    loss = window_loss(r.model, window)
    what = "a window of micro-batches with 0, 3, 0 and 0 (no rows) targets, logits -inf at a masked vocabulary entry"
    what += path
    try:
        returned = train_step(r.model, window, r.optimizer, r.scheduler, max_grad_norm=None, scaler=grad_scaler)
    except ValueError as error:
        raise AssertionError(
            f"{what} raised ValueError ({error}): only a window with no target at all is refused; a micro-batch "
            "without targets adds 0 to the loss"
        ) from None
    assert r.model.forwards == len(window) and r.model.backwards == len(window), (
        f"{what}: {r.model.forwards} forward and {r.model.backwards} backward passes, expected {len(window)} of "
        "each: one forward and one backward per micro-batch, those without targets too"
    )
    handed = r.optimizer.handed[0] if r.optimizer.handed else []
    poisoned = isinstance(returned, float) and not math.isfinite(returned)
    assert not poisoned and all(g is None or bool(g.isfinite().all()) for g in handed), (
        f"{what}: train_step returned {returned!r} and handed optimizer.step() "
        f"{'non-finite' if handed else 'no'} gradients, expected the finite mean {loss:.6g}: a micro-batch without "
        "targets adds exactly 0 whatever its logits; never weight the logits by 0 (-inf times 0 is NaN), keep the "
        "cross-entropy's sum (ignore_index) over no target"
    )
    expect_handed(r, expected, mistakes, EXACT, what)
    assert isinstance(returned, float) and math.isclose(returned, loss, rel_tol=1e-9), (
        f"{what}: train_step returned {returned!r}, expected the window's mean token loss {loss:.6g}"
    )
