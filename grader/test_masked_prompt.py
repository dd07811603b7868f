"""Checks of the `masked_prompt` kata: format_prompt, build_example and collate, graded with a real
byte-level BPE (grader/tokenizer.py) in which " Hello" is one token, so the prompt/response seam matters."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

from grader.probes import default_dtype, expect_value_error
from grader.signatures import expect_the_stubs_signatures
from grader.tokenizer import GraderTokenizer, transformers_tokenizer


@pytest.mark.points(1)
def test_takes_the_stubs_parameters(implementation, format_prompt):
    """Callers pass the stub's parameters by name or by position: each definition takes them as the stub does."""
    expect_the_stubs_signatures(implementation, "masked_prompt")
    # Then a call into the kata: an unimplemented stub, its signatures right, scores nothing here.
    format_prompt("Say hi.")


SUBJECT = "build_example"  # the definition a failing check points at

IGNORE = -100
KEYS = ("input_ids", "labels", "attention_mask")
INSTRUCTION, INPUT, OUTPUT = "Greet the user politely.", "", "Hello there! How are you today?"
FIX_THE_IDS_FIRST = "build_example's input_ids are wrong: fix test_input_ids_are_bos_prompt_response_eos first"
SEAM = "(- masked, + trained, | where the response begins)"

# Pieces that merge differently at a seam (" Hello", "[/INST]"), whitespace, accents, emoji, other scripts.
# A combining accent, the Angstrom sign, CR LF and CR: text a prompt keeps as given (no normalizing).
PIECES = st.sampled_from(
    ["Hello", " Hello", "hello", " world", "!", ",", " ", "  ", "\n", "\t", " the", "[/INST]", "é", " café",
     "🙂", " 🚀", "👍🏽", "日本語", "Привет", " 42", "<s>", "</s>", "<pad>", "e\u0301", "\u212b", "\r\n", "\r"]
)  # fmt: skip
TEXTS = st.lists(PIECES | st.text(max_size=3), max_size=5).map("".join)
OUTPUTS = st.lists(PIECES | st.text(min_size=1, max_size=3), min_size=1, max_size=5).map("".join)
# "other-vocab" and "permuted-vocab" right after "bpe": the same texts again, in another vocabulary, then in one of
# the same class, size and special ids (a cache keyed by text, or by text, len(tokenizer) and the special ids, goes
# stale).
TOKENIZERS = ["bpe", "other-vocab", "permuted-vocab", "bpe-without-bos", "gpt2-like", "neox-like", "adds-eos",
              "pad-is-eos", "no-pad", "pads-left", "llama-3-vocab", "transformers"]  # fmt: skip
STYLE_OF = {"bpe": "llama", "other-vocab": "other-vocab", "permuted-vocab": "permuted-vocab",
            "bpe-without-bos": "no-bos", "gpt2-like": "gpt2", "neox-like": "neox", "adds-eos": "adds-eos",
            "pad-is-eos": "pad-is-eos", "no-pad": "no-pad", "pads-left": "pads-left",
            "llama-3-vocab": "llama-3-vocab"}  # fmt: skip
NAME_OF_STYLE = {style: name for name, style in STYLE_OF.items()}


@pytest.fixture
def tokenizer() -> GraderTokenizer:
    """A fresh tokenizer per check (a submission may set its attributes) over the session's trained BPE."""
    return GraderTokenizer()


@pytest.fixture(params=TOKENIZERS)
def any_tokenizer(request: pytest.FixtureRequest):
    """The tokenizer zoo: the grader's BPE with the special tokens of Llama (bos added), in another vocabulary,
    in a permuted one with the same special ids, without bos, of GPT-2 (bos = eos = pad, nothing added), of
    GPT-NeoX (the same, of id 0), adding eos itself, with pad = eos, without a pad token, padding on the left, with
    Llama-3's ids (past 2**16); and transformers' PreTrainedTokenizerFast."""
    if request.param == "transformers":
        try:
            return transformers_tokenizer()
        except ModuleNotFoundError as error:
            pytest.skip(str(error))
    return GraderTokenizer(style=STYLE_OF[request.param])


NOTES = {  # what sets each tokenizer of the zoo apart, for the verdicts of the checks that go over it in one case
    "bpe": "Llama-like: bos <s> added by add_special_tokens",
    "other-vocab": "Llama-like, every id 1000 higher",
    "permuted-vocab": "Llama-like, the ids of the other tokens reversed",
    "bpe-without-bos": "bos_token_id None",
    "gpt2-like": "GPT-2-like: bos = eos = pad, none added by add_special_tokens",
    "neox-like": "GPT-NeoX-like: bos = eos = pad, of id 0, none added",
    "adds-eos": "add_special_tokens adds bos and eos",
    "pad-is-eos": "pad = eos",
    "no-pad": "no pad token, as Llama-2's loads: padding=True raises",
    "pads-left": "padding_side 'left'",
    "llama-3-vocab": "Llama-3-like: every id 127000 higher, past 2**16 (none fits in uint16)",
    "transformers": "transformers' PreTrainedTokenizerFast",
}


def tokenizer_zoo() -> dict[str, object]:
    """Every tokenizer of the zoo, fresh, by name (transformers' where it is installed)."""
    zoo: dict[str, object] = {name: GraderTokenizer(style=style) for name, style in STYLE_OF.items()}
    with contextlib.suppress(ModuleNotFoundError):
        zoo["transformers"] = transformers_tokenizer()
    return zoo


def described(name: str) -> str:
    return f"with the {name} tokenizer ({NOTES[name]})"


def described_tokenizer(tokenizer) -> str:
    """``described`` for a tokenizer of the zoo, by its style (transformers' has none)."""
    return described(NAME_OF_STYLE.get(getattr(tokenizer, "style", None), "transformers"))


def built(build_example, tokenizer, *texts: str) -> dict:
    """``build_example(tokenizer, *texts)``, failing the check with the tokenizer it was given when it raises."""
    try:
        return build_example(tokenizer, *texts)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        pytest.fail(
            f"build_example raised {type(error).__name__} ({error}) {described_tokenizer(tokenizer)}: ask the "
            "tokenizer only what every Hugging Face tokenizer answers (texts with add_special_tokens=False)",
            pytrace=False,
        )


def enc(tokenizer, text: str) -> list[int]:
    """The ids of ``text`` alone, as the spec's enc()."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def template(instruction: str, input: str) -> str:
    return f"[INST] {instruction}\n{input} [/INST] " if input else f"[INST] {instruction} [/INST] "


@dataclass
class Expected:
    """The example the spec asks for: ``prefix`` = [bos] + prompt ids (masked), ``response`` = output ids + [eos]."""

    prefix: list[int]
    response: list[int]

    @property
    def input_ids(self) -> list[int]:
        return self.prefix + self.response

    @property
    def labels(self) -> list[int]:
        return [IGNORE] * len(self.prefix) + self.response


def expected_example(tokenizer, instruction: str, input: str, output: str) -> Expected:
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    return Expected(
        bos + enc(tokenizer, template(instruction, input)), [*enc(tokenizer, output), tokenizer.eos_token_id]
    )


def fields(example: object) -> tuple[list, list, list]:
    """input_ids, labels and attention_mask of what build_example returned, after failing the check unless each
    is a list of plain ints: on every path (truncated or not, any tokenizer), as the spec's lists of ints."""
    assert isinstance(example, Mapping), (
        f"build_example returned a {type(example).__name__}, expected a dict of input_ids, labels and attention_mask"
    )
    missing = [key for key in KEYS if key not in example]
    assert not missing, f"build_example's dict lacks {missing}, has {list(example)}: return all of {list(KEYS)}"
    for key in KEYS:
        value = example[key]
        assert isinstance(value, list), f"build_example's {key} is a {type(value).__name__}, expected a list of ints"
        odd = [item for item in value if not isinstance(item, int) or isinstance(item, bool)]
        none = " (bos_token_id is None for a tokenizer without bos, as GPT-2's: add none then)" if None in odd else ""
        assert not odd, (
            f"build_example's {key} holds {type(odd[0]).__name__} items ({odd[0]!r}), expected plain ints{none}: "
            "convert with int() or .tolist()"
        )
    return example["input_ids"], example["labels"], example["attention_mask"]


def token(tokenizer, token_id: object) -> str:
    """``token_id`` decoded, quoted."""
    text = tokenizer.decode([token_id]) if isinstance(token_id, int) and 0 <= token_id < len(tokenizer) else ""
    return repr(text) if text else repr(token_id)


def tokens(tokenizer, ids: list, start: int, stop: int, labels: list | None = None, seam: int | None = None) -> str:
    """ids[start:stop] decoded, | at the seam; with labels, each marked - (label -100), + (label = its id) or with
    its odd label decoded ("(label '<pad>')")."""
    parts = [] if start <= 0 else ["..."]
    for i in range(max(start, 0), min(stop, len(ids))):
        if i == seam:
            parts.append("|")
        mark = "" if labels is None else label_mark(tokenizer, labels[i] if i < len(labels) else None, ids[i])
        parts.append(mark + token(tokenizer, ids[i]))
    return " ".join(parts + ([] if stop >= len(ids) else ["..."]))


def label_mark(tokenizer, label: object, token_id: object) -> str:
    if label == IGNORE:
        return "-"
    return "+" if label == token_id else f"(label {token(tokenizer, label)})"


def first_difference(measured: list, expected: list) -> int:
    return next(
        (i for i, (m, e) in enumerate(zip(measured, expected, strict=False)) if m != e),
        min(len(measured), len(expected)),
    )


def ids_cause(tokenizer, measured: list, expected: Expected, prompt: str, output: str) -> str:
    """The likely mistake behind input_ids that differ from [bos] + enc(prompt) + enc(output) + [eos]."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    first = [] if bos is None else [bos]
    if measured == [i % 2**16 for i in expected.input_ids] != expected.input_ids:  # a uint16 array, nanoGPT's
        return (
            "every id is the expected one modulo 2**16: the ids went through a 16-bit integer (numpy uint16?): keep "
            "them Python ints, as real vocabularies reach 128,256 and more"
        )
    if measured == first + enc(tokenizer, prompt + output) + [eos]:
        return (
            "prompt + output were tokenized in one call, and a merge across the seam changed the tokens there: "
            "tokenize the prompt and the output separately"
        )
    if split_special(tokenizer, measured, prompt, output):
        return SPLIT_SPECIAL
    if bos is None and measured[:1] == [None]:
        return "this tokenizer has no bos (bos_token_id is None, as GPT-2's): add none then"
    if bos is not None and measured == expected.input_ids[1:]:
        zero = " (here it is 0: test `is not None`, not truthiness)" if bos == 0 else ""
        if bos == eos:
            zero += " (here bos is eos, as GPT-2's: still put it first)"
        if getattr(tokenizer, "adds_bos", True) is False:
            zero += "; this tokenizer, as GPT-2's, adds no bos itself even with add_special_tokens=True"
        return f"bos is missing: start with tokenizer.bos_token_id{zero}"
    own = [list(tokenizer(text)["input_ids"]) for text in (prompt, output)]
    if measured[: len(own[0])] == own[0] and own[0] != first + enc(tokenizer, prompt):
        return (
            "the prompt was encoded with the tokenizer's own special tokens (add_special_tokens=True), which differ "
            "from one tokenizer to another: pass add_special_tokens=False and add bos and eos yourself"
        )
    if bos is not None and measured.count(bos) > expected.input_ids.count(bos):
        return (
            f"{measured.count(bos)} bos tokens where {expected.input_ids.count(bos)} belongs: the tokenizer adds "
            "its own bos to each text: pass add_special_tokens=False"
        )
    if measured == expected.input_ids[:-1]:
        zero = " (here it is 0: test `is not None`, not truthiness)" if eos == 0 else ""
        return f"eos is missing: append tokenizer.eos_token_id after the output's tokens{zero}"
    if expected.response[:-1][:1] == [bos] and measured == expected.prefix + expected.response[1:]:  # not eos
        return (
            "the output's first token, bos (the text of a special token encodes to its id), was dropped: "
            "keep enc(output) whole, whatever it holds"
        )
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad not in (None, eos) and measured == expected.prefix + [t for t in expected.response if t != pad]:
        return (
            "the output's pad tokens (the text '<pad>' encodes to the pad id) were dropped: keep enc(output) whole, "
            "whatever it holds; padding is collate's, past an example's length"
        )
    prompt_ids, response = expected.prefix[len(first) :], expected.response
    kept = measured[len(first) : len(measured) - len(response)]
    if (
        len(first) + len(response) <= len(measured) < len(expected.input_ids)
        and measured[: len(first)] == first
        and measured[len(measured) - len(response) :] == response
        and kept == prompt_ids[len(prompt_ids) - len(kept) :]
    ):
        return (
            f"the prompt was cut to {len(kept)} of its {len(prompt_ids)} tokens, its last: keep it whole, however "
            "long (only max_length truncates, keeping the first items of the whole example)"
        )
    if measured[: len(expected.prefix)] != expected.prefix:
        return "the start is not [bos] + the tokens of format_prompt(instruction, input)"
    for how, altered in output_alterations(output).items():
        if measured == expected.prefix + enc(tokenizer, altered) + [eos]:
            return (
                f"the output was {how} before it was tokenized: tokenize it as given, character for character "
                "(the response part is the tokens of the output, tokenized alone, followed by eos)"
            )
    return "the response part is not the tokens of the output, tokenized alone, followed by eos"


SPLIT_SPECIAL = (
    "the texts of special tokens ('<s>', '</s>', ...) were split into ordinary tokens (split_special_tokens=True): "
    "the spec's enc(t) is tokenizer(t, add_special_tokens=False)['input_ids'], in which such a text is its token"
)


def split_special(tokenizer, measured: list, prompt: str, output: str) -> bool:
    """Whether ``measured`` is the example encoded with split_special_tokens=True (where that changes it)."""
    try:
        split = [
            list(tokenizer(t, add_special_tokens=False, split_special_tokens=True)["input_ids"])
            for t in (prompt, output)
        ]
    except TypeError:
        return False
    first = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    ids = first + split[0] + split[1] + [tokenizer.eos_token_id]
    return measured == ids != first + enc(tokenizer, prompt) + enc(tokenizer, output) + [tokenizer.eos_token_id]


def output_alterations(output: str) -> dict[str, str]:
    """What a cleaning of the output would give, by what it did (those that change this output)."""
    unix = output.replace("\r\n", "\n").replace("\r", "\n")
    altered = {
        "stripped": output.strip(),
        "stripped on the right": output.rstrip(),
        "stripped on the left": output.lstrip(),
        "given \\n line ends (\\r\\n and \\r replaced)": unix,
        "given \\n line ends and stripped": unix.strip(),
        "given spaces for tabs": output.expandtabs(),
        "given its whitespace collapsed": " ".join(output.split()),
    }
    return {how: text for how, text in altered.items() if text != output}


def assert_input_ids(tokenizer, measured: list, expected: Expected, prompt: str, output: str) -> None:
    if measured == expected.input_ids:
        return
    i = first_difference(measured, expected.input_ids)
    start = len(expected.prefix)
    around_expected = tokens(tokenizer, expected.input_ids, i - 3, i + 4, seam=start)
    around_measured = tokens(tokenizer, measured, i - 3, i + 4)
    pytest.fail(
        f"input_ids differ from [bos] + enc(prompt) + enc(output) + [eos] {described_tokenizer(tokenizer)} at "
        f"position {i} of {len(expected.input_ids)} (| where the response begins): expected {around_expected}, "
        f"measured {around_measured}: " + ids_cause(tokenizer, measured, expected, prompt, output),
        pytrace=False,
    )


def labels_cause(tokenizer, ids: list, labels: list, expected: Expected, i: int) -> str:
    """The likely mistake behind labels that differ first at position ``i``."""
    start, has_bos = len(expected.prefix), tokenizer.bos_token_id is not None
    if all(label == IGNORE for label in labels):
        return "every label is -100, so nothing is learned: the response and eos keep their ids as labels"
    if labels == ids:
        return "nothing is masked: set the labels of bos and of every prompt token to -100"
    if labels[:-1] in (ids[1:], expected.labels[1:]):
        return "the labels are shifted by one: keep them aligned with input_ids; the model shifts them itself"
    masked_with = set(labels[:start])
    if start > 1 and len(masked_with) == 1 and masked_with != {IGNORE}:
        return f"prompt labels are {labels[0]}, expected -100 (IGNORE_INDEX): cross_entropy ignores only -100"
    if i == 0 and has_bos and labels[0] == ids[0]:
        return "bos is trained: its label is -100, as the prompt's"
    if i == start and labels[i] == IGNORE:
        return "the first response token is masked too: mask exactly len([bos] + prompt ids) labels, no more"
    if i < start - 1 and labels[i] != IGNORE and labels[i:start] == ids[i:start]:
        return (
            f"the prompt is trained from position {i} on: mask exactly the first len([bos] + enc(prompt)) = {start} "
            "labels, a count, not found by searching the ids for the template's marker (an instruction or an "
            "input may hold ' [/INST]' itself)"
        )
    if i == start - 1 and labels[i] != IGNORE:
        forgot = " (did the count forget bos?)" if has_bos else ""
        return f"the last prompt token is trained: mask len([bos] + prompt ids) labels{forgot}"
    if i == len(ids) - 1 and labels[i] == IGNORE:
        return "eos is masked: train on it, or the model never learns to stop"
    return "labels are -100 on bos and the prompt, and equal input_ids on the response and eos"


def assert_labels(tokenizer, ids: list, labels: list, expected: Expected) -> None:
    assert ids == expected.input_ids, FIX_THE_IDS_FIRST
    assert len(labels) == len(ids), f"{len(labels)} labels for {len(ids)} input_ids: one label per input id"
    if labels == expected.labels:
        return
    i, start = first_difference(labels, expected.labels), len(expected.prefix)
    window = (i - 3, i + 4)
    pytest.fail(
        f"labels differ at position {i} (the response begins at {start}) {SEAM}: "
        f"expected {tokens(tokenizer, ids, *window, expected.labels, start)}, "
        f"measured {tokens(tokenizer, ids, *window, labels, start)}: "
        + labels_cause(tokenizer, ids, labels, expected, i),
        pytrace=False,
    )


@pytest.mark.points(2)
@given(instruction=TEXTS, input=TEXTS)
@example(instruction="Say hello.", input="")
@example(instruction="Translate to French.", input="Hello, my friend.")
@example(instruction="Re\u0301sume\u0301 in \u212b.", input="line one\r\nline two\rend")
@example(instruction="Echo the input.", input=" ")  # a blank input is an input: only "" gives the short template
@example(instruction="Echo the input.", input="\t")
@example(instruction="Echo the input.", input="\n")
@example(instruction=" ", input="  \r\n ")
@example(instruction="Fill the {input} placeholder.", input="Ada")  # braces in the text are text, not slots
@example(instruction="Repeat {instruction}.", input="{input} and {instruction}")
def test_format_prompt_follows_the_template(format_prompt, instruction, input):
    expected = template(instruction, input)
    measured = format_prompt(instruction, input)
    cause = "follow the template character for character"
    if not isinstance(measured, str):
        cause = "return the prompt as a str"
    elif measured.rstrip() == expected.rstrip():
        cause = "the prompt ends with exactly one space after [/INST], where the response begins"
    elif input and measured in (template(instruction, ""), template(instruction, input.strip())):
        cause = (
            f"a blank input ({input!r}) is still an input, kept as given: only input == '' gives the short template "
            "(test `if input:`, not `input.strip()`)"
        )
    elif not input and measured == f"[INST] {instruction}\n [/INST] ":
        cause = "with an empty input there is no newline: '[INST] {instruction} [/INST] '"
    elif input and measured == f"[INST] {instruction} {input} [/INST] ":
        cause = "the input goes on its own line: a newline between instruction and input, not a space"
    elif "{" in instruction + input and measured.startswith("[INST] "):
        cause = (
            "a placeholder written in the instruction or the input ({input}, {instruction}) is text: fill the template "
            "once (an f-string), not by str.replace, which rewrites it inside the texts too"
        )
    elif isinstance(measured, str) and measured.startswith("[INST] ") and measured.endswith(" [/INST] "):
        cause = "keep instruction and input as given, character for character (no Unicode or line-end normalizing)"
    assert measured == expected, (
        f"format_prompt({instruction!r}, {input!r}) returned {measured!r}, expected {expected!r}: {cause}"
    )
    if not input:
        short = format_prompt(instruction)
        assert short == expected, f"format_prompt({instruction!r}) returned {short!r}, expected {expected!r}"


@pytest.mark.points(1)
def test_returns_three_lists_of_ints_of_equal_length(build_example, tokenizer, implementation):
    example_ = build_example(tokenizer, INSTRUCTION, INPUT, OUTPUT)
    fields(example_)  # lists of plain ints, as every check of build_example requires
    lengths = {key: len(example_[key]) for key in KEYS}
    assert len(set(lengths.values())) == 1, f"the three lists differ in length, {lengths}: one entry per token in each"
    ignore_index = implementation.attribute("masked_prompt", "IGNORE_INDEX")
    assert ignore_index == IGNORE, f"IGNORE_INDEX is {ignore_index!r}, expected -100, the label cross_entropy ignores"
    kept = copy.deepcopy(example_)
    for key in KEYS:  # what a caller may do with its own example: extend it (a second turn), mask a label
        example_[key].append(IGNORE)
        example_[key][0] = IGNORE
    again = build_example(tokenizer, INSTRUCTION, INPUT, OUTPUT)
    assert again == kept, (
        "after the caller edited the example build_example returned, the same call returned the edited example "
        f"({len(again['input_ids'])} input_ids, {len(kept['input_ids'])} before): return new lists at every call "
        "(a cache, e.g. functools.lru_cache, hands every caller the same dict)"
    )


EDITS = {  # what a fine-tuning script does to its tokenizer before training: new tokens, a chat model's eos
    "add_tokens": lambda tokenizer: tokenizer.add_tokens(["<|user|>", "<|assistant|>", " Hello"]),
    "add_special_tokens": lambda tokenizer: tokenizer.add_special_tokens(
        {"eos_token": "<|im_end|>", "additional_special_tokens": ["<|user|>", "<|assistant|>"]}
    ),
    # A chat fine-tune's eos made of a token added earlier: the edit keeps len(tokenizer), the eos id changes.
    "eos-set-to-an-added-token": lambda tokenizer: tokenizer.add_special_tokens({"eos_token": "<|im_end|>"}),
    # bos too, the other special token build_example reads: a new one (a tokenizer without bos gets one), an added one
    "bos-set-to-a-new-token": lambda tokenizer: tokenizer.add_special_tokens({"bos_token": "<|begin_of_text|>"}),
    "bos-set-to-an-added-token": lambda tokenizer: tokenizer.add_special_tokens({"bos_token": "<|begin_of_text|>"}),
    # A string the BPE vocabulary of every zoo tokenizer already holds ("Hello"): added, it keeps its id, so
    # len(tokenizer) and every special id stay, but an added token is split off the text before the BPE, so " Hello"
    # is no longer the one token "ĠHello": the encoding changes, and nothing a cache could key on does.
    "add_tokens-already-in-the-vocabulary": lambda tokenizer: tokenizer.add_tokens(["Hello"]),
}
KEEPS_LEN = {"add_tokens-already-in-the-vocabulary", "eos-set-to-an-added-token", "bos-set-to-an-added-token"}
PREPARED = {  # what an edit's script did to the tokenizer before the first build_example call
    "eos-set-to-an-added-token": lambda tokenizer: tokenizer.add_tokens(["<|im_end|>"]),
    "bos-set-to-an-added-token": lambda tokenizer: tokenizer.add_tokens(["<|begin_of_text|>"]),
}
EDITED_TEXTS = (
    "Answer the <|user|> politely.",
    "<|user|> Hello there",
    "Hello <|assistant|> at your service<|im_end|>",
)


@pytest.mark.points(1)
@pytest.mark.parametrize("edit", EDITS)
def test_a_tokenizer_edited_between_calls_gives_its_new_ids(build_example, edit):
    """The same tokenizer object, edited between two calls (tokens added, eos changed): the second call encodes with
    the tokenizer as it is then, so nothing about a tokenizer may be cached across calls."""
    for name, tokenizer in tokenizer_zoo().items():
        PREPARED.get(edit, lambda tokenizer: None)(tokenizer)
        before = expected_example(tokenizer, *EDITED_TEXTS)
        assert fields(build_example(tokenizer, *EDITED_TEXTS))[0] == before.input_ids, FIX_THE_IDS_FIRST
        size, bos_before, eos_before = len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id
        EDITS[edit](tokenizer)
        expected = expected_example(tokenizer, *EDITED_TEXTS)
        assert expected.input_ids != before.input_ids, (
            f"grader bug: {edit} left the {name} tokenizer's ids as they were"
        )
        assert edit not in KEEPS_LEN or len(tokenizer) == size, (
            f"grader bug: {edit} changed len of the {name} tokenizer"
        )
        assert (
            edit in PREPARED
            or edit.startswith(("bos", "add_special"))
            or ((tokenizer.bos_token_id, tokenizer.eos_token_id) == (bos_before, eos_before))
        ), f"grader bug: {edit} changed a special id of the {name} tokenizer"
        ids, labels, _ = fields(build_example(tokenizer, *EDITED_TEXTS))
        if (ids, labels) == (expected.input_ids, expected.labels):
            continue
        stale = (before.input_ids, before.prefix + before.response[:-1] + [tokenizer.eos_token_id])
        cause = ids_cause(tokenizer, ids, expected, template(*EDITED_TEXTS[:2]), EDITED_TEXTS[2])
        old_bos = [bos_before] * (bos_before is not None)
        if tokenizer.bos_token_id != bos_before and ids == old_bos + expected.input_ids[1:]:
            cause = (
                f"bos is the id from before the edit ({bos_before}), not the tokenizer's bos_token_id now "
                f"({tokenizer.bos_token_id}): a bos read once per tokenizer goes stale; read bos_token_id at every call"
            )
        elif ids in stale and not split_special(tokenizer, ids, template(*EDITED_TEXTS[:2]), EDITED_TEXTS[2]):
            cause = (
                "these are the ids of the tokenizer before it was edited: an encoding cached per tokenizer (its "
                "object, id or vocabulary) goes stale when the tokenizer is edited in place (add_tokens, "
                "add_special_tokens): encode each text at every call"
            )
            if len(tokenizer) == size and (tokenizer.bos_token_id, tokenizer.eos_token_id) == (bos_before, eos_before):
                cause += (
                    f" (this edit kept len(tokenizer) = {size} and the bos and eos ids: a cache keyed by them goes "
                    "stale too)"
                )
            elif len(tokenizer) == size:
                cause += f" (this edit kept len(tokenizer) = {size}: a cache keyed by it goes stale too)"
        elif ids == expected.input_ids:
            cause = "the ids are right, the labels not: mask len([bos] + enc(prompt)) of the tokenizer as it is now"
        i = first_difference(ids, expected.input_ids)
        pytest.fail(
            f"{described(name)}, edited by {edit} after a first build_example call, the same call differs at "
            f"position {i}: expected {tokens(tokenizer, expected.input_ids, i - 2, i + 3)}, measured "
            f"{tokens(tokenizer, ids, i - 2, i + 3)}: {cause}",
            pytrace=False,
        )


@pytest.mark.points(1)
@pytest.mark.parametrize("call", ["positional", "keyword"])
def test_every_parameter_by_position_and_by_keyword(format_prompt, build_example, collate, tokenizer, call):
    """format_prompt, build_example and collate called with every parameter by position, then by keyword in another
    order: what the stub's signatures allow (a wrapper's own signature counts, whatever functools.wraps reports)."""
    instruction, input, output = "Translate to French.", "Hello, my friend.", "Bonjour, mon ami."
    expected = expected_example(tokenizer, instruction, input, output)
    max_length = len(expected.prefix) + 2
    calls = {
        "positional": {
            "format_prompt(instruction, input)": lambda: format_prompt(instruction, input),
            "format_prompt(instruction)": lambda: format_prompt(instruction),
            "build_example(tokenizer, instruction, input, output, max_length)": lambda: build_example(
                tokenizer, instruction, input, output, max_length
            ),
            "collate(examples, pad_token_id)": lambda: collate(examples(), PAD),
        },
        "keyword": {
            "format_prompt(input=..., instruction=...)": lambda: format_prompt(input=input, instruction=instruction),
            "format_prompt(instruction=...)": lambda: format_prompt(instruction=instruction),
            "build_example(max_length=..., output=..., input=..., instruction=..., tokenizer=...)": lambda: (
                build_example(
                    max_length=max_length, output=output, input=input, instruction=instruction, tokenizer=tokenizer
                )
            ),
            "collate(pad_token_id=..., examples=...)": lambda: collate(pad_token_id=PAD, examples=examples()),
        },
    }[call]
    rows = [expected.input_ids[:max_length], [*enc(tokenizer, "Hi"), tokenizer.eos_token_id]]

    def examples() -> list[dict[str, list[int]]]:
        return [{"input_ids": row, "labels": list(row), "attention_mask": [1] * len(row)} for row in rows]

    wanted = {
        "format_prompt": [template(instruction, input), template(instruction, "")],
        "build_example": [expected.input_ids[:max_length], expected.labels[:max_length], [1] * max_length],
        "collate": padded(rows, PAD, len(rows[0])),
    }
    for described_call, run in calls.items():
        how = "by position" if call == "positional" else "by keyword"
        try:
            result = run()
        except TypeError as error:
            pytest.fail(
                f"{described_call}, every parameter {how} as the stub's signature allows, raised TypeError ({error}): "
                "take each of the stub's parameters by position and by keyword, wrappers included (functools.wraps "
                "copies a signature, not what the wrapper accepts)",
                pytrace=False,
            )
        name = described_call.partition("(")[0]
        if name == "format_prompt":
            ok = result in wanted[name]
        elif name == "build_example":
            ok = isinstance(result, Mapping) and [list(result.get(key, [])) for key in KEYS] == wanted[name]
        else:
            ok = isinstance(result, Mapping) and equal_lists(result.get("input_ids"), wanted[name])
        assert ok, (
            f"{described_call}, every parameter {how}, returned what the same call does not return otherwise: keep "
            "the stub's parameter order (format_prompt(instruction, input), build_example(tokenizer, instruction, "
            "input, output, max_length), collate(examples, pad_token_id))"
        )


def equal_lists(measured: object, expected: list[list[int]]) -> bool:
    return (measured.tolist() if hasattr(measured, "tolist") else measured) == expected


EXAMPLES = (  # build_example's edge inputs, given to every check of its ids and labels as explicit examples
    dict(instruction="Say hello to the world.", input="", output="Hello world!"),
    dict(instruction="Translate to French.", input="Hello, my friend.", output=" Bonjour, mon ami."),
    dict(instruction="Say nothing.", input="", output=""),  # the response is eos alone
    dict(instruction="", input=" ", output=" "),  # an empty instruction; a blank input is still an input
    dict(instruction="Echo.", input="\n", output="[/INST] </s>"),  # the template's and eos's text in the output
    dict(instruction="Echo the bos.", input="", output="<s> is a token"),  # enc(output) starts with bos's id
    dict(instruction="Echo the pad.", input="", output="a <pad> b<pad>"),  # the pad token's text in the output
    # The template's marker inside the instruction and the input: the prompt ends where its tokens end, wherever else
    # " [/INST]" occurs.
    dict(instruction="Explain the tag [/INST] here.", input="", output="It closes the instruction."),
    dict(instruction="Repeat the input.", input="a [/INST] b", output=" [/INST] "),
    dict(instruction=" [/INST] ", input=" [/INST] ", output="Done. [/INST]"),
    # The output as given: CR LF, CR, tabs, leading and trailing newlines and spaces, whitespace alone.
    dict(instruction="Copy.", input="", output="line one\r\nline two\rend\tTab\t"),
    dict(instruction="Copy.", input="", output="\n\n  Hello there  \n\n"),
    dict(instruction="Copy.", input="", output=" \t\r\n "),
)


def over_examples(check):
    """``check`` over hypothesis-drawn instruction, input and output texts, and over every one of ``EXAMPLES``."""
    for case in reversed(EXAMPLES):
        check = example(**case)(check)
    return given(instruction=TEXTS, input=TEXTS, output=OUTPUTS)(check)


@pytest.mark.points(4)
@over_examples
def test_input_ids_are_bos_prompt_response_eos(build_example, any_tokenizer, instruction, input, output):
    expected = expected_example(any_tokenizer, instruction, input, output)
    ids, _, _ = fields(built(build_example, any_tokenizer, instruction, input, output))
    assert_input_ids(any_tokenizer, ids, expected, template(instruction, input), output)


@pytest.mark.points(4)
@over_examples
def test_labels_mask_bos_and_the_prompt_and_nothing_else(build_example, any_tokenizer, instruction, input, output):
    expected = expected_example(any_tokenizer, instruction, input, output)
    ids, labels, _ = fields(built(build_example, any_tokenizer, instruction, input, output))
    assert_labels(any_tokenizer, ids, labels, expected)


@pytest.mark.points(2)
def test_eos_ends_the_example_and_is_trained(build_example, tokenizer):
    eos = tokenizer.eos_token_id
    ids, labels, _ = fields(build_example(tokenizer, INSTRUCTION, INPUT, OUTPUT))
    last = token(tokenizer, ids[-1]) if ids else "nothing"
    assert ids and ids[-1] == eos, (
        f"the example ends with {last}, expected eos {token(tokenizer, eos)} (id {eos}): "
        "append tokenizer.eos_token_id after the output's tokens, so the model learns to stop"
    )
    assert ids.count(eos) == 1, f"eos appears {ids.count(eos)} times, expected once, at the end"
    assert labels[-1] == eos, (
        f"the label of eos is {labels[-1]}, expected its id {eos}: train on eos (do not mask it), "
        "or the model never learns to stop"
    )


@pytest.mark.points(1)
@over_examples
def test_attention_mask_is_all_ones(build_example, instruction, input, output):
    for name, tokenizer in tokenizer_zoo().items():  # pad = eos among them, and texts holding the pad token's text
        prompt_length = len(expected_example(tokenizer, instruction, input, output).prefix)
        ids, _, mask = fields(build_example(tokenizer, instruction, input, output))
        if mask == [1] * len(ids):
            continue
        cause = "every token of an example is attended to"
        zeros = [i for i, value in enumerate(mask) if value != 1]
        if mask[:prompt_length] == [0] * prompt_length:
            cause = "the prompt is masked in attention: the model must read the prompt; mask it in labels only"
        elif len(mask) == len(ids) and all(ids[i] == tokenizer.pad_token_id for i in zeros):
            cause = (
                f"attention_mask is 0 where the id is the pad id {tokenizer.pad_token_id} (eos when pad = eos, or a "
                "'<pad>' text in the output): an example holds no padding, every one of its tokens is attended to"
            )
        pytest.fail(
            f"build_example({instruction!r}, {input!r}, {output!r}) {described(name)}: attention_mask holds "
            f"{len(zeros)} values other than 1 (first at position {first_difference(mask, [1] * len(ids))}), "
            f"expected {len(ids)} ones: {cause}",
            pytrace=False,
        )


@pytest.mark.points(3)
def test_loss_with_these_labels_is_the_cross_entropy_of_the_response(build_example, collate, tokenizer):
    cases = [(INSTRUCTION, INPUT, OUTPUT), ("Translate to French.", "Hello, my friend.", "Bonjour, mon ami."),
             ("Count to five.", "", "One, two, three, four, five.")]  # fmt: skip
    expected = [expected_example(tokenizer, *case) for case in cases]
    examples = [build_example(tokenizer, *case) for case in cases]
    for example_, expected_ in zip(examples, expected, strict=True):
        assert fields(example_)[0] == expected_.input_ids, FIX_THE_IDS_FIRST
    batch = collated(collate, examples, tokenizer.pad_token_id)
    labels = batch["labels"]
    longest = max(len(e.input_ids) for e in expected)
    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.long and labels.shape == (3, longest), (
        f"collate's labels should be a LongTensor of shape (3, {longest}) here, measured "
        f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}: "
        "see the collate checks"
    )
    logits = torch.randn(3, longest, len(tokenizer), dtype=torch.float64)
    try:  # what a causal LM computes: position t predicts token t + 1
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()).item()
    except (IndexError, RuntimeError) as error:
        pytest.fail(f"cross_entropy rejects these labels ({error}): labels are -100 or a token id", pytrace=False)
    log_probs = logits.log_softmax(-1)
    terms = [
        -log_probs[b, t - 1, e.input_ids[t]]
        for b, e in enumerate(expected)
        for t in range(len(e.prefix), len(e.input_ids))
    ]
    response_loss = torch.stack(terms).mean().item()
    counted = int((labels[:, 1:] != IGNORE).sum())
    cause = f"{counted} targets carry loss, expected {len(terms)}: only the response tokens and eos"
    if loss != loss:
        cause = "the loss is NaN: every label is -100, nothing is trained"
    elif counted == len(terms):
        cause = "the right number of targets, but not the right ones: labels aligned with input_ids, right padding"
    assert abs(loss - response_loss) < 1e-9, (
        f"cross-entropy with these labels is {loss:.6f}, expected {response_loss:.6f}, "
        f"the mean over the response and eos only: {cause}"
    )


@pytest.mark.points(1)
def test_empty_input_gives_the_short_prompt(build_example, tokenizer):
    expected = expected_example(tokenizer, "Say hello.", "", "Hello!")
    with_newline = [*expected.prefix[:1], *enc(tokenizer, "[INST] Say hello.\n [/INST] "), *expected.response]
    ids, _, _ = fields(build_example(tokenizer, "Say hello.", "", "Hello!"))
    assert ids != with_newline, (
        "with input='' the prompt decodes to '[INST] Say hello.\\n [/INST] ', expected '[INST] Say hello. [/INST] ': "
        "with no input the template has no newline (build the prompt with format_prompt(instruction, input))"
    )
    assert_input_ids(tokenizer, ids, expected, template("Say hello.", ""), "Hello!")


UNICODE = {
    "accents": ("Réponds en français.", "Où est la gare ?", "La gare est à droite, près du café."),
    "emoji": ("Reply with emoji.", "", "Sure 🙂👍🏽 👨‍👩‍👧 🚀 done"),
    "cjk": ("日本語で答えて。", "こんにちは", "はい、世界。"),
    "cyrillic-arabic-combining": ("Say hello.", "Привет", "مرحبا e\u0301 n\u0303"),
}


@pytest.mark.points(2)
@pytest.mark.parametrize("case", UNICODE)
def test_unicode_and_emoji(build_example, tokenizer, case):
    instruction, input, output = UNICODE[case]
    expected = expected_example(tokenizer, instruction, input, output)
    ids, labels, _ = fields(build_example(tokenizer, instruction, input, output))
    assert_input_ids(tokenizer, ids, expected, template(instruction, input), output)
    assert_labels(tokenizer, ids, labels, expected)


LONG_TEXT = " ".join(f"Step {i}: the sea is wide, the sea is deep. Hello 🙂" for i in range(400))  # ~9,500 tokens
LONG_EXAMPLES = {  # the long part: the output (a long story), or the prompt (a long instruction, a long document)
    "output": ("Write a long story.", "", LONG_TEXT),
    "instruction": (LONG_TEXT, "", "Done."),
    "input": ("Summarize the text.", LONG_TEXT, "A sea."),
}


@pytest.mark.points(1)
@pytest.mark.parametrize("long", LONG_EXAMPLES)
def test_very_long_prompt_or_output(build_example, tokenizer, monkeypatch, long):
    """An example far longer than the tokenizer's model_max_length (GPT-2's 1024 here), by its output or by its prompt,
    is kept whole unless max_length is given, by default or as max_length=None."""
    instruction, input, output = LONG_EXAMPLES[long]
    expected = expected_example(tokenizer, instruction, input, output)
    monkeypatch.setattr(tokenizer, "model_max_length", 1024, raising=False)
    calls = {
        "build_example(tokenizer, ...)": lambda: build_example(tokenizer, instruction, input, output),
        "build_example(tokenizer, ..., max_length=None)": lambda: build_example(
            tokenizer, instruction, input, output, max_length=None
        ),
    }
    for call, make in calls.items():
        try:
            ids, labels, _ = fields(make())
        except TypeError as error:
            pytest.fail(f"{call} raised TypeError ({error}): max_length=None is the stub's no limit", pytrace=False)
        assert len(ids) >= len(expected.input_ids), (
            f"{call}: a {len(expected.input_ids)}-token example came back with {len(ids)} input_ids, the tokenizer's "
            "model_max_length is 1024: "
            + (
                "no truncation unless max_length is given (not the tokenizer's model_max_length either)"
                if len(ids) <= 1024
                else ids_cause(tokenizer, ids, expected, template(instruction, input), output)
            )
        )
        assert_input_ids(tokenizer, ids, expected, template(instruction, input), output)
        assert_labels(tokenizer, ids, labels, expected)


TRUNCATED = ("Translate to French.", "Hello, my friend.", "Bonjour, mon ami. See you soon!")
EMPTY_OUTPUT = ("Say nothing.", "", "")  # the response is eos alone: kept, it is trained, and nothing is raised
TRUNCATIONS = {  # max_length from the example's length n and the length p of bos + prompt
    "longer-than-the-example": lambda n, p: n + 5,
    "exactly-the-example": lambda n, p: n,
    "cuts-eos": lambda n, p: n - 1,
    "cuts-into-the-response": lambda n, p: (n + p) // 2,
    "leaves-one-response-token": lambda n, p: p + 1,
}
TRUNCATION_CASES = [(TRUNCATED, case) for case in TRUNCATIONS] + [
    (EMPTY_OUTPUT, "exactly-the-example"),
    (EMPTY_OUTPUT, "longer-than-the-example"),
]


def own_count_hint(tokenizer, texts: tuple[str, str, str], p: int) -> str:
    """Where this tokenizer's own special tokens make len(tokenizer(prompt)['input_ids']) another count than p."""
    own = len(tokenizer(template(*texts[:2]))["input_ids"])
    if own == p:
        return ""
    return (
        f" (tokenizer(prompt)['input_ids'], with this tokenizer's own special tokens, holds {own} ids, [bos] + "
        f"enc(prompt) {p}: count bos + the prompt as build_example builds them)"
    )


@pytest.mark.points(6)
@pytest.mark.parametrize(
    "texts, case", TRUNCATION_CASES, ids=[f"{'empty-output-' * (t is EMPTY_OUTPUT)}{c}" for t, c in TRUNCATION_CASES]
)
def test_max_length_keeps_the_first_tokens(build_example, texts, case):
    for name, tokenizer in tokenizer_zoo().items():  # bos or none, added by the tokenizer or not, eos added, ...
        check_truncation(build_example, tokenizer, name, texts, case)


def check_truncation(build_example, tokenizer, name: str, texts: tuple[str, str, str], case: str) -> None:
    full = expected_example(tokenizer, *texts)
    n, p = len(full.input_ids), len(full.prefix)
    max_length = TRUNCATIONS[case](n, p)
    untruncated = fields(build_example(tokenizer, *texts))
    assert untruncated == (full.input_ids, full.labels, [1] * n), (
        f"{described(name)}, without max_length the example is already wrong, so its truncation cannot be judged: "
        "fix test_input_ids_are_bos_prompt_response_eos, test_labels_mask_bos_and_the_prompt_and_nothing_else and "
        "test_attention_mask_is_all_ones first"
    )
    # the tokenizer's context is set below what max_length keeps (where a response token is left above it): the
    # spec's max_length alone limits the example, model_max_length is not a limit here
    context = max(p + 1, min(max_length, n) - 1)
    tokenizer.model_max_length = context
    try:
        measured = build_example(tokenizer, *texts, max_length=max_length)
    except ValueError as error:
        pytest.fail(
            f"{described(name)}, max_length={max_length} keeps {min(max_length, n) - p} response token(s) (eos "
            f"counts, the whole response of an output {texts[2]!r}), yet build_example raised ValueError ({error}): "
            f"raise only when no response token remains{own_count_hint(tokenizer, texts, p)}",
            pytrace=False,
        )
    ids, labels, mask = fields(measured)
    expected = (full.input_ids[:max_length], full.labels[:max_length], [1] * min(max_length, n))
    if (ids, labels, mask) == expected:
        return
    cause = "keep the first max_length items of each list"
    if len({len(ids), len(labels), len(mask)}) > 1:
        cause = f"input_ids has {len(ids)} items, labels {len(labels)}, attention_mask {len(mask)}: truncate all three"
    elif ids == full.input_ids[-max_length:] and max_length < n:
        cause = "truncated on the left: keep the first max_length tokens (the prompt) and cut the end"
    elif max_length < n and ids == [*full.input_ids[: max_length - 1], tokenizer.eos_token_id]:
        cause = "eos was put back after truncation: the spec cuts the end, eos included, like any token"
    elif len(ids) == context < len(expected[0]):
        cause = (
            f"the example stops at the tokenizer's model_max_length {context}, not at max_length={max_length}: "
            "max_length alone limits it (the tokenizer's model_max_length is not a limit here)"
        )
    elif len(ids) != len(expected[0]):
        cause = f"{len(ids)} tokens for max_length={max_length}: keep the first max_length items ([:max_length])"
    i = first_difference(labels, expected[1]) if ids == expected[0] else first_difference(ids, expected[0])
    around_expected = tokens(tokenizer, expected[0], i - 3, i + 3, expected[1], p)
    around_measured = tokens(tokenizer, ids, i - 3, i + 3, labels, p)
    pytest.fail(
        f"{described(name)}, with max_length={max_length} (the full example has {n} tokens, bos + prompt {p}; "
        f"the tokenizer's model_max_length {context}) "
        f"{SEAM}, expected {around_expected}, measured {around_measured} ({len(ids)} tokens): {cause}",
        pytrace=False,
    )


@pytest.mark.points(4)
@pytest.mark.parametrize("case", ["bos-and-prompt-exactly", "inside-the-prompt", "one", "zero", "negative"])
@pytest.mark.parametrize("texts", [(INSTRUCTION, INPUT, OUTPUT), EMPTY_OUTPUT], ids=["output", "empty-output"])
def test_max_length_that_leaves_no_response_token_raises(build_example, case, texts):
    for name, tokenizer in tokenizer_zoo().items():  # bos or none, added by the tokenizer or not, eos added, ...
        p = len(expected_example(tokenizer, *texts).prefix)
        max_length = {"bos-and-prompt-exactly": p, "inside-the-prompt": p // 2, "one": 1, "zero": 0, "negative": -1}[
            case
        ]
        negative = " (a count below 1 keeps no item: not a slice from the end, as [:-1])" if max_length < 0 else ""
        eos_alone = f" (the output {texts[2]!r} leaves eos the whole response, and it is cut)" if not texts[2] else ""
        expect_value_error(
            lambda tokenizer=tokenizer, max_length=max_length: build_example(tokenizer, *texts, max_length=max_length),
            f"{described(name)}, build_example(..., max_length={max_length}), which keeps only bos + prompt ({p} "
            f"tokens) or less, so every label would be -100 and the loss NaN{eos_alone}{negative}"
            f"{own_count_hint(tokenizer, texts, p)},",
        )


PAD = 2  # the grader tokenizer's pad id; the examples' own ids start at 10
# Llama-3's vocabulary: 128,256 ids (past 2**16 = 65,536, so no uint16 or int16 holds them), eos <|end_of_text|>
# 128,001, pad <|finetune_right_pad_id|> 128,004; the examples' ids start at 10, across 2**16, or end at the last id.
LLAMA3_VOCAB, LLAMA3_EOS, LLAMA3_PAD = 128_256, 128_001, 128_004
FIRST_IDS = (10, 2**16 - 4, 2**15 - 4, LLAMA3_VOCAB - 9)


MAX_BATCH = 32  # a real batch's size: collate is checked on batches of 1 to 32 examples, past 8 and 16 too
# The longest example of a batch: short, just past 128 and odd (no rounding up to a multiple of 8, 64 or 128),
# longer than a 2048 context, and past 4096, 8192 and 32768 (no cap at Llama-2's, Llama-3's or Mistral's context).
LONGEST = ((2, 5, 3), (129, 16), (3000, 16), (4097, 3), (8193, 16, 8191), (32_769, 2))


def synthetic_examples(lengths: list[int], first: int = 10, holes: bool = False) -> list[dict[str, list[int]]]:
    """Examples of the given lengths, their first third masked, ids ``first``, ``first`` + 1, ...; with ``holes``
    every fourth token's attention_mask is 0, counted from the last, which is one (an example from elsewhere, masking
    some of its own tokens, its last too: the longest ends on columns that no row attends to, still its own). Their
    labels are already shifted (each the next token's id, the last -100): labels other than the ids, which collate
    keeps as given."""
    examples = []
    for n in lengths:
        ids = list(range(first, first + n))
        masked = n // 3
        mask = [int(not holes or (n - 1 - i) % 4 != 0) for i in range(n)]
        labels = [IGNORE] * masked + ids[masked + 1 :] + [IGNORE]
        examples.append({"input_ids": ids, "labels": labels, "attention_mask": mask})
    return examples


def collated(collate, examples: list[dict[str, list[int]]], pad_token_id: int) -> Mapping:
    """``collate(examples, pad_token_id)``, once it is known to be a dict holding the three keys and to have left
    ``examples`` as they were (a data set's examples are collated again, epoch after epoch)."""
    before = copy.deepcopy(examples)
    batch = collate(examples, pad_token_id)
    assert examples == before, (
        f"collate changed the examples it was given (their lengths {[len(e['input_ids']) for e in before]} before, "
        f"{[len(e['input_ids']) if isinstance(e, Mapping) else '?' for e in examples]} after): pad copies into the "
        "batch, never the examples' own lists"
    )
    keys = list(batch) if isinstance(batch, Mapping) else None
    assert keys is not None and all(key in keys for key in KEYS), (
        f"collate returned a {type(batch).__name__} with keys {keys}, expected a dict of {list(KEYS)}"
    )
    kept = copy.deepcopy({key: batch[key] for key in KEYS})
    lengths = [len(example["input_ids"]) for example in examples]
    following = collate(synthetic_examples(lengths, first=100), pad_token_id)  # the next step's: same shape and pad
    collate(synthetic_examples([2, 6]), pad_token_id + 1)  # and one of another shape and pad
    changed = [key for key in KEYS if not equal(batch[key], kept[key])]
    assert not changed, (
        f"collating another batch changed the {', '.join(changed)} of the batch collate returned before: "
        "return fresh tensors each call, never a buffer reused across calls"
    )
    shared = [key for key in KEYS if isinstance(following, Mapping) and shares_memory(batch[key], following.get(key))]
    assert not shared, (
        f"two calls of collate on batches of the same lengths returned {', '.join(shared)} that share memory (one "
        "cached tensor, or views of one buffer): a caller editing one batch in place (masking a token, moving it "
        "to a device with non_blocking) edits the other: return fresh tensors each call"
    )
    expect_ordinary_tensors(batch)
    again = collate(examples, pad_token_id)  # the same examples, the next epoch: a batch of its own
    shared = [key for key in KEYS if isinstance(again, Mapping) and shares_memory(batch[key], again.get(key))]
    assert not shared, (
        f"collating the same examples twice returned {', '.join(shared)} that share memory (a batch memoized by the "
        "examples' contents): a caller editing one epoch's batch in place (masking a token) edits the next epoch's: "
        "return fresh tensors each call"
    )
    for key in KEYS:  # the caller edits the next epoch's batch in place: this one stays as it was
        if isinstance(again, Mapping) and isinstance(again.get(key), torch.Tensor):
            try:
                again[key].add_(1)
            except RuntimeError as error:
                pytest.fail(
                    f"collate's {key} cannot be edited in place ({str(error).splitlines()[0]}): expected an ordinary "
                    "tensor of its own memory, which a caller edits (masking a label): return fresh, writable tensors",
                    pytrace=False,
                )
    changed = [key for key in KEYS if not equal(batch[key], kept[key])]
    assert not changed, (
        f"editing in place the batch of a second collate of the same examples changed the {', '.join(changed)} of "
        "the first (a batch memoized by the examples' contents): return fresh tensors each call"
    )
    return batch


def expect_ordinary_tensors(batch: Mapping) -> None:
    """Every tensor of a batch is an ordinary one: not an inference tensor, editable in place by the caller, usable
    as a cross_entropy target under autograd (an inference tensor is none of these)."""
    odd = [key for key in KEYS if isinstance(batch[key], torch.Tensor) and batch[key].is_inference()]
    assert not odd, (
        f"collate's {', '.join(odd)} are inference tensors (made under torch.inference_mode()): expected ordinary "
        "tensors, which a caller edits in place (masking a label) and autograd saves for backward (cross_entropy's "
        "target); measured is_inference() True: build the batch outside inference_mode (torch.no_grad is harmless)"
    )


def shares_memory(first: object, second: object) -> bool:
    """Whether two tensors (of two batches) lie in one storage."""
    if not (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)):
        return False
    if first.numel() == 0 or second.numel() == 0:
        return False
    return first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()


def equal(measured: object, kept: object) -> bool:
    """Whether a field of a batch still holds what a copy of it kept."""
    if isinstance(measured, torch.Tensor) and isinstance(kept, torch.Tensor):
        return measured.shape == kept.shape and torch.equal(measured, kept)
    return measured == kept


def padded(rows: list[list[int]], value: int, longest: int, left: bool = False) -> list[list[int]]:
    return [[value] * (longest - len(row)) + row if left else row + [value] * (longest - len(row)) for row in rows]


def collate_cause(
    key: str,
    measured: list[list[int]],
    rows: list[list[int]],
    fill: int,
    longest: int,
    pad: int = PAD,
    ids: list[list[int]] | None = None,
) -> str:
    if key == "labels" and ids is not None:
        from_ids = [[IGNORE if label == IGNORE else i for label, i in zip(row, own, strict=True)] for row, own in
                    zip(rows, ids, strict=True)]  # fmt: skip
        if from_ids != rows and measured == padded(from_ids, fill, longest):
            return (
                "the labels that carry loss were filled in from input_ids: each row's labels are the example's own, "
                "as given (labels already shifted, or of other tokens, stay), then padding"
            )
    wrapped = [[value % 2**16 for value in row] for row in padded(rows, fill, longest)]
    if key == "input_ids" and max(map(max, rows)) >= 2**15 and measured != wrapped:
        wrapped = [[(value + 2**15) % 2**16 - 2**15 for value in row] for row in padded(rows, fill, longest)]
    if key == "input_ids" and measured == wrapped:
        return (
            f"ids of {max(map(max, rows))} came back modulo 2**16: they were held in a 16-bit dtype (uint16, int16): "
            "a vocabulary of over 65,536 tokens (Llama-3's 128,256) needs int64 throughout"
        )
    if measured == padded(rows, fill, longest, left=True):
        return "padded on the left: append the padding on the right"
    if measured and all(len(got) == len(measured[0]) < longest for got in measured):
        return (
            f"every row has {len(measured[0])} items, the longest example {longest}: the last columns were trimmed "
            "(no row attends to them?): they are the longest example's own tokens, its attention_mask 0 there as "
            "given, not padding; keep (batch, longest)"
        )
    if any(len(got) != longest for got in measured):
        return (
            f"rows of {sorted({len(got) for got in measured})} items: pad every row to the longest example, {longest}"
        )
    used = {value for row, got in zip(rows, measured, strict=False) for value in got[len(row) :]}
    if key == "labels" and pad in used:
        return f"labels padded with pad_token_id {pad}: pad labels with -100, so padding carries no loss"
    if key == "attention_mask" and 1 in used:
        return "attention_mask padded with 1: padding gets 0, so nothing attends to it"
    if key == "attention_mask" and measured == padded([[1] * len(row) for row in rows], fill, longest):
        return (
            "attention_mask rebuilt from the lengths (all ones up to each): keep each example's own attention_mask, "
            "zeros included, then pad with 0"
        )
    if used and used != {fill}:
        return f"{key} padded with {sorted(used)}, expected {fill}"
    return "each row is the example's own list, then padding"


@pytest.mark.points(3)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=MAX_BATCH),
    first=st.sampled_from(FIRST_IDS),
    pad=st.sampled_from([PAD, LLAMA3_EOS, LLAMA3_PAD]),
    holes=st.booleans(),
)
@example(lengths=[5, 9, 2, 7, 9, 1, 3, 8, 6], first=10, pad=PAD, holes=True)  # 9 examples: past a batch of 8
@example(lengths=[(i % 9) + 1 for i in range(MAX_BATCH)], first=10, pad=PAD, holes=True)  # a batch of 32
@example(lengths=[3, 7, 1], first=10, pad=PAD, holes=False)
@example(lengths=[4], first=10, pad=PAD, holes=False)
@example(lengths=[3, 7, 1], first=LLAMA3_VOCAB - 9, pad=LLAMA3_PAD, holes=False)  # Llama-3's ids, to its last
@example(lengths=[2, 9], first=2**16 - 4, pad=LLAMA3_EOS, holes=False)  # ids across 2**16, pad = eos of Llama-3
@example(lengths=[5, 9, 2], first=10, pad=PAD, holes=True)  # the examples' own masks hold zeros: collate keeps them
@example(lengths=[4, 2], first=10, pad=PAD, holes=True)  # the longest ends on a masked token, and so does every row
@example(lengths=[8, 3, 8], first=LLAMA3_VOCAB - 9, pad=LLAMA3_PAD, holes=True)  # no row attends to the last column
def test_collate_pads_on_the_right_to_the_longest(collate, lengths, first, pad, holes):
    examples = synthetic_examples(lengths, first, holes)
    longest, fills = max(lengths), {"input_ids": pad, "labels": IGNORE, "attention_mask": 0}
    rows = {key: [list(example[key]) for example in examples] for key in KEYS}
    batch = collated(collate, examples, pad)
    for key, fill in fills.items():
        measured = batch[key].tolist() if hasattr(batch[key], "tolist") else [list(row) for row in batch[key]]
        expected = padded(rows[key], fill, longest)
        assert measured == expected, (
            f"collate of examples with lengths {lengths}, ids {first} to {first + max(lengths) - 1} "
            f"(pad_token_id={pad}{', their attention_mask 0 at every fourth token from the last' * holes}): "
            f"{key} is {measured}, "
            f"expected {expected}: "
            f"{collate_cause(key, measured, rows[key], fill, longest, pad, rows['input_ids'])}"
        )


@pytest.mark.points(1)
@pytest.mark.parametrize("first, pad", [(10, PAD), (LLAMA3_VOCAB - 9, LLAMA3_PAD)], ids=["small-ids", "llama-3-ids"])
@pytest.mark.parametrize("lengths", LONGEST, ids=[f"longest-{max(lengths)}" for lengths in LONGEST])
def test_collate_returns_long_tensors_of_shape_batch_by_longest(collate, first, pad, lengths):
    batch = collated(collate, synthetic_examples(list(lengths), first), pad)
    shape = (len(lengths), max(lengths))
    for key in KEYS:
        value = batch[key]
        assert isinstance(value, torch.Tensor), f"collate's {key} is a {type(value).__name__}, expected a torch tensor"
        assert value.dtype == torch.long, (
            f"collate's {key} is {value.dtype}, expected torch.int64: embeddings and cross_entropy need long "
            "indices; pass dtype=torch.long"
        )
        wider = value.dim() == 2 and value.shape[1] > shape[1]
        assert tuple(value.shape) == shape, (
            f"collate's {key} has shape {tuple(value.shape)}, expected {shape}: (batch, longest), however long "
            + (
                "(padded past the longest example: no rounding up to a multiple of 8 or 64)"
                if wider
                else "(no cap at a context length: truncating is build_example's max_length)"
            )
        )


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_ids_stay_exact_under_any_default_dtype(build_example, collate, tokenizer, dtype):
    """A script may set torch's default dtype (bf16 for a model, float64 for a check): token ids are integers, and
    build_example and collate give each id exactly whatever it is (never through a float tensor)."""
    examples = synthetic_examples([2, 5, 3], 4097)  # ids from 4097: float16 and bfloat16 round most of them
    expected = expected_example(tokenizer, INSTRUCTION, INPUT, OUTPUT)
    with default_dtype(dtype):
        example = build_example(tokenizer, INSTRUCTION, INPUT, OUTPUT)
        batch = collated(collate, examples, LLAMA3_PAD)
    where = f"under torch.set_default_dtype({dtype})"
    ids, labels, _ = fields(example)
    assert ids == expected.input_ids and labels == expected.labels, (
        f"{where} build_example gave other ids or labels than under float32: ids are ints, keep them in lists "
        "(or torch.long tensors), never in a torch.Tensor(...) of the default float dtype"
    )
    for key in KEYS:
        measured = batch[key].tolist()
        changed = [
            i for i, (row, own) in enumerate(zip(measured, examples, strict=True)) if row[: len(own[key])] != own[key]
        ]
        assert not changed and batch[key].dtype == torch.long, (
            f"{where} collate's {key} is {batch[key].dtype}"
            + (
                f", row {changed[0]} {measured[changed[0]]} where the example holds {examples[changed[0]][key]}"
                if changed
                else ""
            )
            + ": build it with torch.tensor(rows, dtype=torch.long), not torch.Tensor(rows).long(), which goes "
            "through the default float dtype"
        )


@pytest.mark.points(1)
def test_collate_rejects_an_empty_batch(collate):
    expect_value_error(lambda: collate([], PAD), "collate([], pad_token_id)")


@pytest.mark.points(2)
@pytest.mark.parametrize("pad", [0, 12], ids=["pad-id-0", "pad-id-also-a-real-token"])  # 12: as pad = eos
def test_collate_pads_by_position_not_by_id(collate, pad):
    lengths = [3, 7, 1, 5]
    examples = synthetic_examples(lengths)  # ids 10, 11, 12, ...: id 12 is a real token of most of them
    longest, fills = max(lengths), {"input_ids": pad, "labels": IGNORE, "attention_mask": 0}
    batch = collated(collate, examples, pad)
    for key, fill in fills.items():
        measured = batch[key].tolist() if hasattr(batch[key], "tolist") else [list(row) for row in batch[key]]
        expected = padded([list(example[key]) for example in examples], fill, longest)
        cause = "each row is the example's own list, then padding"
        if key != "input_ids" and measured != expected:
            cause = (
                f"padding was found by its id: with pad_token_id={pad}, a token of that id (eos, when pad = eos) is "
                "not padding; pad each row by its length"
            )
        assert measured == expected, (
            f"collate of examples with lengths {lengths} (pad_token_id={pad}): {key} is {measured}, expected "
            f"{expected}: {cause}"
        )


@pytest.mark.points(1)
def test_pad_equal_to_eos_keeps_eos_trained_and_attended(build_example, collate):
    tokenizer = GraderTokenizer(style="pad-is-eos")
    cases = [("Say hello.", "", "Hello!"), ("Count to five.", "", "One, two, three, four, five.")]
    examples = [build_example(tokenizer, *case) for case in cases]
    expected = [expected_example(tokenizer, *case) for case in cases]
    for example_, expected_ in zip(examples, expected, strict=True):
        assert fields(example_)[0] == expected_.input_ids, FIX_THE_IDS_FIRST
    batch = collated(collate, examples, tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    for row, expected_ in enumerate(expected):
        end = len(expected_.input_ids) - 1  # where this example's eos is
        label, mask = int(batch["labels"][row][end]), int(batch["attention_mask"][row][end])
        assert (label, mask) == (eos, 1), (
            f"with pad_token_id = eos_token_id = {eos} (the usual set-up), example {row}'s eos has label {label} and "
            f"attention {mask}, expected label {eos} and attention 1: padding is what lies past an example's length, "
            "not every token with the pad id"
        )
