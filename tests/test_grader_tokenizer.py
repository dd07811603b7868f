"""The grader's stand-in tokenizer answers the calls masked_prompt's stub names as transformers' does.

GraderTokenizer (llama style) and ``transformers_tokenizer()`` wrap the same trained BPE: every call an answer may
make of a Hugging Face tokenizer gives the same value, of the same type and dtype (an empty text too), from both.
A difference is a false alarm waiting for a right answer (round 7: a float32 (1, 0) tensor for an empty text, a
``tokenize`` refusing ``add_special_tokens``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from grader.tokenizer import GraderTokenizer, transformers_tokenizer

pytest.importorskip("transformers")

TEXTS = ["", "Hello there!", " Hello", "<s> is a token", "a <pad> b</s>", "[INST] Hi\n [/INST] ", "café 🙂\r\n"]
CALLS: dict[str, Callable[[Any, str], Any]] = {
    "call-list-fields": lambda t, x: t(
        [x, x + "!"], return_offsets_mapping=True, return_length=True, return_special_tokens_mask=True
    ),
    "call": lambda t, x: t(x),
    "call-no-special": lambda t, x: t(x, add_special_tokens=False),
    "call-pt": lambda t, x: t(x, add_special_tokens=False, return_tensors="pt"),
    "call-pt-special": lambda t, x: t(x, return_tensors="pt"),
    "call-np": lambda t, x: t(x, add_special_tokens=False, return_tensors="np"),
    "call-list": lambda t, x: t([x, x + "!"], add_special_tokens=False),
    "call-list-pt": lambda t, x: t([x, x], add_special_tokens=False, return_tensors="pt"),
    "call-one-of-list-pt": lambda t, x: t([x], add_special_tokens=False, return_tensors="pt"),
    "call-fields": lambda t, x: t(
        x, add_special_tokens=False, return_offsets_mapping=True, return_length=True, return_special_tokens_mask=True
    ),
    "call-fields-pt": lambda t, x: t(
        x,
        add_special_tokens=False,
        return_tensors="pt",
        return_offsets_mapping=True,
        return_length=True,
        return_special_tokens_mask=True,
    ),
    "call-options-off": lambda t, x: t(
        x, add_special_tokens=False, padding=False, truncation=False, return_attention_mask=False, verbose=False
    ),
    "call-token-types": lambda t, x: t(x, return_token_type_ids=True),
    "call-keywords": lambda t, x: t(text=x, add_special_tokens=False),
    "call-attribute": lambda t, x: t(x, add_special_tokens=False).input_ids,
    # round 8: a text pair split by sequence_ids(), padded batches, special-token texts split into ordinary tokens
    "call-pair-sequence-ids": lambda t, x: with_sequence_ids(t(x, "Hello there", add_special_tokens=False)),
    "call-pair-special-sequence-ids": lambda t, x: with_sequence_ids(t(x, x + "!")),
    "call-pair-pt-sequence-ids": lambda t, x: with_sequence_ids(t(x, x, add_special_tokens=False, return_tensors="pt")),
    "call-list-pairs-padded": lambda t, x: with_sequence_ids(t([x, "a"], ["b c", x], padding=True), rows=2),
    "call-list-padded-pt": lambda t, x: with_sequence_ids(
        t([x, x + " Hello there!"], add_special_tokens=False, padding=True, return_tensors="pt"), rows=2
    ),
    "call-list-padded-left": lambda t, x: with_sequence_ids(
        t([x + " Hello there!", x], padding="longest", padding_side="left", return_tensors="pt"), rows=2
    ),
    "call-list-padded-fields": lambda t, x: with_sequence_ids(
        t(
            [x, "Hello there, my friend"],
            padding=True,
            return_offsets_mapping=True,
            return_length=True,
            return_special_tokens_mask=True,
            return_token_type_ids=True,
        ),
        rows=2,
    ),
    "call-padded-max-length": lambda t, x: with_sequence_ids(t(x, padding="max_length", max_length=12)),
    "call-list-multiple-np": lambda t, x: t([x, "a"], padding=True, pad_to_multiple_of=4, return_tensors="np"),
    "call-one-padded": lambda t, x: t(x, add_special_tokens=False, padding=True, return_length=True),
    "call-split-special": lambda t, x: t(x, add_special_tokens=False, split_special_tokens=True),
    "call-list-split-special-pt": lambda t, x: t([x, x], split_special_tokens=True, return_tensors="pt"),
    "call-split-special-offsets": lambda t, x: t(x, split_special_tokens=True, return_offsets_mapping=True),
    "call-after-split-special": lambda t, x: (t(x, split_special_tokens=True), t(x, add_special_tokens=False))[1],
    "tokenize-split-special": lambda t, x: t.tokenize(x, split_special_tokens=True),
    "encode-split-special": lambda t, x: t.encode(x, split_special_tokens=True),
    "call-tokens": lambda t, x: t(x).tokens(),
    "encode": lambda t, x: t.encode(x),
    "encode-no-special": lambda t, x: t.encode(x, add_special_tokens=False),
    "encode-pt": lambda t, x: t.encode(x, add_special_tokens=False, return_tensors="pt"),
    "encode-pair": lambda t, x: t.encode(x, "pair"),
    "tokenize": lambda t, x: t.tokenize(x),
    "tokenize-no-special": lambda t, x: t.tokenize(x, add_special_tokens=False),
    "tokenize-special": lambda t, x: t.tokenize(x, add_special_tokens=True),
    "tokenize-pair": lambda t, x: t.tokenize(x, pair="pair", add_special_tokens=False),
    "tokenize-then-ids": lambda t, x: t.convert_tokens_to_ids(t.tokenize(x)),
    "token-to-id": lambda t, x: t.convert_tokens_to_ids(x),
    "ids-to-tokens": lambda t, x: t.convert_ids_to_tokens(t.encode(x)),
    "ids-to-tokens-skip": lambda t, x: t.convert_ids_to_tokens(t.encode(x), skip_special_tokens=True),
    "id-to-token": lambda t, x: t.convert_ids_to_tokens(t.encode(x)[0]),
    "decode": lambda t, x: t.decode(t.encode(x)),
    "decode-skip": lambda t, x: t.decode(t.encode(x), skip_special_tokens=True),
    "decode-tensor": lambda t, x: t.decode(torch.tensor(t.encode(x))),
    "decode-int": lambda t, x: t.decode(t.encode(x)[0]),
}


def with_sequence_ids(encoding: Any, rows: int = 1) -> tuple[Any, list]:
    """An encoding and the sequence_ids() of each of its rows, as transformers' BatchEncoding gives them."""
    return encoding, [encoding.sequence_ids(row) for row in range(rows)]


def described(value: Any) -> Any:
    """``value`` with its type spelled out: each tensor or array as (type, dtype, shape, values)."""
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy":
        return (type(value).__name__, str(value.dtype), tuple(value.shape), value.tolist())
    if hasattr(value, "keys"):  # BatchEncoding, Encoding
        return {key: described(value[key]) for key in value.keys()}  # noqa: SIM118
    if isinstance(value, list | tuple):
        return (type(value).__name__, [described(one) for one in value])
    return (type(value).__name__, value)


@pytest.fixture(scope="module")
def pair() -> tuple[GraderTokenizer, Any]:
    return GraderTokenizer(), transformers_tokenizer()


@pytest.mark.parametrize("call", CALLS)
def test_answers_as_transformers_does(pair, call):
    ours, theirs = pair
    for text in TEXTS:
        if call in ("id-to-token", "decode-int") and not text:
            continue
        expected = described(CALLS[call](theirs, text))
        assert described(CALLS[call](ours, text)) == expected, f"{call} of {text!r}"


def test_the_special_ids_and_the_size_are_transformers(pair):
    ours, theirs = pair
    names = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "vocab_size", "all_special_ids")
    assert {name: getattr(ours, name) for name in names} == {name: getattr(theirs, name) for name in names}
    assert len(ours) == len(theirs)


EDITS: dict[str, Callable[[Any], Any]] = {
    "add_tokens": lambda t: t.add_tokens(["<|user|>", " Hello", "<|user|>"]),
    "add_token": lambda t: t.add_tokens("<|assistant|>"),
    "add_tokens-already-in-the-vocabulary": lambda t: t.add_tokens(["Hello"]),  # its id kept, the text split
    "add_tokens-special": lambda t: t.add_tokens(["<|q|>"], special_tokens=True),
    "add_special_tokens": lambda t: t.add_special_tokens(
        {"eos_token": "<|im_end|>", "pad_token": "<pad>", "additional_special_tokens": ["<|sys|>"]}
    ),
    "eos-set-to-an-added-token": lambda t: (
        t.add_tokens(["<|im_end|>"]),
        t.add_special_tokens({"eos_token": "<|im_end|>"}),
    ),
}


@pytest.mark.parametrize("edit", EDITS)
def test_an_edit_changes_this_tokenizer_as_transformers_does(edit):
    ours, theirs = GraderTokenizer(), transformers_tokenizer()
    assert EDITS[edit](ours) == EDITS[edit](theirs)
    text = "Hi <|user|> Hello<|assistant|> <|q|>x<|sys|> <|im_end|>"
    for call in ("call-no-special", "call", "tokenize", "ids-to-tokens-skip", "decode-skip"):
        assert described(CALLS[call](ours, text)) == described(CALLS[call](theirs, text)), call
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "eos_token"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert len(ours) == len(theirs)
    fresh = GraderTokenizer()  # the others keep the trained vocabulary
    assert len(fresh) == fresh.vocab_size and fresh("<|user|>", add_special_tokens=False)["input_ids"] != [574]
