"""The grader's tokenizer: a real byte-level BPE, trained in memory on grader/corpus.txt (no download).

Byte-level BPE glues a word's leading space to it (" Hello" is one token), so tokenizing prompt +
response in one call gives other ids than tokenizing them apart: the boundary bug of prompt masking
shows only with such a tokenizer. Training takes some 20 ms, once per session.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

CORPUS = Path(__file__).with_name("corpus.txt")
BOS, EOS, PAD = "<s>", "</s>", "<pad>"  # ids 0, 1, 2: a bos id of 0 catches `if tokenizer.bos_token_id:`
SPECIAL_TOKENS = [BOS, EOS, PAD]  # trained first: their ids are 0, 1, 2 in the backend
VOCAB_SIZE = 1000
TRANSFORMERS_MISSING = (
    "transformers is not installed: pip install transformers to also grade with PreTrainedTokenizerFast"
)


@functools.cache
def trained_bpe() -> Tokenizer:
    """The byte-level BPE, trained on the corpus; with special tokens requested it puts bos in front."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.read_text(encoding="utf-8").splitlines(), trainer=trainer)
    seam = tokenizer.encode("[/INST] Hello", add_special_tokens=False).tokens[-1]  # \u0120 (Ġ) is a leading space
    assert seam == "\u0120Hello", (
        f"grader bug: ' Hello' is not one token of the trained BPE ({seam!r}): restore corpus.txt"
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return tokenizer


class Encoding(dict):
    """What calling a tokenizer returns: a dict that also reads as attributes (``encoding.input_ids``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class GraderTokenizer:
    """The Hugging Face tokenizer interface over the trained BPE: ``tokenizer(text, add_special_tokens=False)`` (with
    ``return_tensors="pt"`` too), ``encode``, ``decode``, ``tokenize`` and ``convert_tokens_to_ids``,
    ``bos_token_id``, ``eos_token_id``, ``pad_token_id`` and the token strings.

    ``style`` sets the special tokens as real tokenizers do (``STYLES``); ``bos=False`` is the "no-bos" style.
    Special tokens, when asked for (the default, as in Hugging Face), are what the style adds. The
    "other-vocab" style numbers every token ``OTHER_VOCAB_OFFSET`` higher: another model's vocabulary, in
    which the same text has other ids (an encoding cached by text alone goes stale); "permuted-vocab" numbers
    every other token backwards, its special tokens keeping their ids: a vocabulary of the same class, size and
    special ids, as Llama-2's and Mistral's (a cache keyed by text, ``len`` and the special ids goes stale).
    """

    ANY_VALUE = ("return_attention_mask", "return_token_type_ids", "verbose")  # options that change no id
    EXTRA_FIELDS: ClassVar[dict[str, str]] = {  # options that add a field beside input_ids, and the field
        "return_offsets_mapping": "offset_mapping",
        "return_length": "length",
        "return_special_tokens_mask": "special_tokens_mask",
    }
    OFF = (None, False, "do_not_pad", "do_not_truncate")  # padding=False, return_tensors=None, ...
    STYLES: ClassVar[
        dict[str, tuple]
    ] = {  # style: (bos, eos, pad, bos added by add_special_tokens, eos added by add_special_tokens)
        "llama": (BOS, EOS, PAD, True, False),  # bos <s> in front, as Llama's
        "no-bos": (None, EOS, PAD, False, False),  # bos_token_id None
        "gpt2": (EOS, EOS, EOS, False, False),  # GPT-2: one token is bos, eos and pad; none is added
        "neox": (BOS, BOS, BOS, False, False),  # GPT-NeoX, Pythia: bos = eos = pad of id 0 (`if eos_token_id:`)
        "adds-eos": (BOS, EOS, PAD, True, True),  # Llama with add_eos_token=True, T5-like: eos appended
        "pad-is-eos": (BOS, EOS, EOS, True, False),  # the usual fine-tuning set-up: pad_token = eos_token
        "other-vocab": (BOS, EOS, PAD, True, False),  # Llama's special tokens, every id shifted
        "permuted-vocab": (BOS, EOS, PAD, True, False),  # Llama's special tokens and ids, the others reversed
    }
    OTHER_VOCAB_OFFSET = 1000

    def __init__(self, bos: bool = True, style: str | None = None) -> None:
        self._backend = trained_bpe()
        self.style = style or ("llama" if bos else "no-bos")
        bos_token, eos_token, pad_token, self.adds_bos, self.adds_eos = self.STYLES[self.style]
        self._offset = self.OTHER_VOCAB_OFFSET if self.style == "other-vocab" else 0
        self._reversed = self.style == "permuted-vocab"
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.vocab_size = self._offset + self._backend.get_vocab_size()
        self.bos_token_id = None if bos_token is None else self._id(bos_token)
        self.eos_token_id = self._id(eos_token)
        self.pad_token_id = self._id(pad_token)

    def _id(self, token: str) -> int:
        return self._own_id(self._backend.token_to_id(token))

    def _own_id(self, backend_id: int) -> int:
        """This style's id of the backend's token ``backend_id`` (reversal is its own inverse)."""
        if self._reversed and backend_id >= len(SPECIAL_TOKENS):
            return self.vocab_size - 1 + len(SPECIAL_TOKENS) - backend_id
        return self._offset + backend_id

    def _backend_id(self, own_id: int) -> int:
        return self._own_id(own_id) if self._reversed else own_id - self._offset

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True, **options: Any) -> Encoding:
        """``{"input_ids": ids, "attention_mask": ones}`` of ``text``, or of each text of a list, and the fields
        ``EXTRA_FIELDS`` asks for."""
        tensors = options.pop("return_tensors", None)
        refused = [
            name
            for name, value in options.items()
            if name not in self.ANY_VALUE and name not in self.EXTRA_FIELDS and value not in self.OFF
        ]
        if refused or tensors not in (None, "pt"):
            raise TypeError(
                f"the grader's tokenizer does not support {', '.join(refused) or f'return_tensors={tensors!r}'}: "
                "the kata needs tokenizer(text, add_special_tokens=False)['input_ids'] only"
            )
        extra = [field for option, field in self.EXTRA_FIELDS.items() if options.get(option)]
        if isinstance(text, str):
            encoding = self._fields(text, add_special_tokens, extra)
            return Encoding({key: torch.tensor([value]) for key, value in encoding.items()} if tensors else encoding)
        batch = [self._fields(one, add_special_tokens, extra) for one in text]
        fields = {key: [one[key] for one in batch] for key in ("input_ids", "attention_mask", *extra)}
        if tensors and len({len(ids) for ids in fields["input_ids"]}) > 1:  # as Hugging Face refuses ragged rows
            raise ValueError("texts of different lengths make no tensor without padding=True")
        return Encoding({key: torch.tensor(value) for key, value in fields.items()} if tensors else fields)

    def _fields(self, text: str, add_special_tokens: bool, extra: list[str]) -> dict[str, Any]:
        """input_ids and attention_mask of ``text``, and the ``extra`` fields of EXTRA_FIELDS."""
        ids = self.encode(text, add_special_tokens)
        fields: dict[str, Any] = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if extra:
            spans = self._backend.encode(text, add_special_tokens=False).offsets
            added = (self.adds_bos, self.adds_eos) if add_special_tokens else (False, False)
            every = {
                "offset_mapping": [(0, 0)] * added[0] + list(spans) + [(0, 0)] * added[1],
                "length": len(ids),
                "special_tokens_mask": [1] * added[0] + [0] * len(spans) + [1] * added[1],
            }
            fields |= {field: every[field] for field in extra}
        return fields

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The ids of ``text``; with ``add_special_tokens`` the special tokens this style adds around them."""
        if not isinstance(text, str):
            raise TypeError(f"the tokenizer encodes a str, got {type(text).__name__}")
        ids = [self._own_id(i) for i in self._backend.encode(text, add_special_tokens=False).ids]
        if not add_special_tokens:
            return ids
        return [self.bos_token_id] * self.adds_bos + ids + [self.eos_token_id] * self.adds_eos

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        own = [self._backend_id(i) for i in ids if 0 <= self._backend_id(i) < self._backend.get_vocab_size()]
        return self._backend.decode(own, skip_special_tokens=skip_special_tokens)  # an id of no token: nothing, as HF

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str | None]:
        return [self._backend.id_to_token(self._backend_id(i)) for i in ids]

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text`` alone, as strings (no special tokens added): ``encode(text, False)``'s tokens."""
        return self._backend.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """The id of a token string, or the ids of a list of them."""
        if isinstance(tokens, str):
            return self._id(tokens)
        return [self._id(one) for one in tokens]


def transformers_tokenizer() -> Any:
    """The same BPE as a ``transformers.PreTrainedTokenizerFast`` (bos ``<s>`` added by default, as Llama's).

    Raises ``ModuleNotFoundError`` with ``TRANSFORMERS_MISSING`` when transformers is not installed.
    """
    if importlib.util.find_spec("transformers") is None:
        raise ModuleNotFoundError(TRANSFORMERS_MISSING)
    from transformers import PreTrainedTokenizerFast  # slow to import: only when this tokenizer is asked for

    return PreTrainedTokenizerFast(tokenizer_object=trained_bpe(), bos_token=BOS, eos_token=EOS, pad_token=PAD)
