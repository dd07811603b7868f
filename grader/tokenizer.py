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
    """What calling a tokenizer returns: a dict that also reads as attributes (``encoding.input_ids``), with
    ``sequence_ids(batch_index=0)`` (0 for the text's tokens, 1 for the pair's, None for special tokens and padding)
    and ``tokens(batch_index=0)``, as transformers' ``BatchEncoding``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        return list(self.__dict__["_sequence_ids"][batch_index])

    def tokens(self, batch_index: int = 0) -> list[str]:
        return list(self.__dict__["_tokens"][batch_index])


# add_special_tokens' keys, as Hugging Face's: each names one special token, "additional_special_tokens" a list.
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
EXTRA_SPECIAL_KEYS = ("additional_special_tokens", "extra_special_tokens")


class GraderTokenizer:
    """The Hugging Face tokenizer interface over the trained BPE, as ``PreTrainedTokenizerFast`` takes it:
    ``tokenizer(text, add_special_tokens=False)`` (a text or a list of texts, ``return_tensors="pt"`` or ``"np"``,
    int64 like Hugging Face's even for an empty text; a text pair, whose encoding has ``sequence_ids()``; padding=True,
    "longest" or "max_length", right or left; split_special_tokens), ``encode``, ``decode``, ``tokenize(text, pair=None,
    add_special_tokens=False, **kwargs)`` and ``convert_tokens_to_ids``, ``convert_ids_to_tokens``, ``add_tokens``
    and ``add_special_tokens`` (which edit this tokenizer alone), ``bos_token_id``, ``eos_token_id``,
    ``pad_token_id`` and the token strings. tests/test_grader_tokenizer.py holds it to transformers' answers.

    ``style`` sets the special tokens as real tokenizers do (``STYLES``); ``bos=False`` is the "no-bos" style.
    Special tokens, when asked for (the default, as in Hugging Face), are what the style adds. The
    "other-vocab" style numbers every token ``OTHER_VOCAB_OFFSET`` higher: another model's vocabulary, in
    which the same text has other ids (an encoding cached by text alone goes stale), and "llama-3-vocab"
    ``LLAMA_3_VOCAB_OFFSET`` higher, every id past 2**16 as in Llama-3's vocabulary; "permuted-vocab" numbers
    every other token backwards, its special tokens keeping their ids: a vocabulary of the same class, size and
    special ids, as Llama-2's and Mistral's (a cache keyed by text, ``len`` and the special ids goes stale).
    Tokens added later get the next ids, ``len(tokenizer)`` onwards, in every style.
    """

    ANY_VALUE = ("verbose", "clean_up_tokenization_spaces")  # options that change no id
    EXTRA_FIELDS: ClassVar[dict[str, str]] = {  # options that add a field beside input_ids, and the field
        "return_offsets_mapping": "offset_mapping",
        "return_length": "length",
        "return_special_tokens_mask": "special_tokens_mask",
        "return_token_type_ids": "token_type_ids",
    }
    OFF = (None, False, 0, "do_not_pad", "do_not_truncate")  # padding=False, return_tensors=None, stride=0, ...
    # The values of each field where a row is padded, as transformers pads them (sequence_ids: None).
    PADDING_VALUES: ClassVar[dict[str, Any]] = {
        "attention_mask": 0,
        "token_type_ids": 0,
        "special_tokens_mask": 1,
        "offset_mapping": (0, 0),
    }
    padding_side = "right"  # as transformers' default; a tokenizer's own attribute, or padding_side= in the call
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
        "llama-3-vocab": (BOS, EOS, PAD, True, False),  # Llama's special tokens, every id past 2**16 as Llama-3's
        "no-pad": (BOS, EOS, None, True, False),  # Llama-2 as it loads: no pad token, so padding=True refuses
        "pads-left": (BOS, EOS, PAD, True, False),  # padding_side "left", as generation set-ups load it
    }
    OTHER_VOCAB_OFFSET = 1000
    LLAMA_3_VOCAB_OFFSET = 127_000  # ids 127,000 to about 128,000, as Llama-3's (128,256): none fits in 16 bits

    def __init__(self, bos: bool = True, style: str | None = None) -> None:
        self._backend = trained_bpe()  # shared until this tokenizer is edited (add_tokens): then its own copy
        self._own_backend = False
        self._trained = self._backend.get_vocab_size()  # the trained vocabulary; added tokens come after it
        self.style = style or ("llama" if bos else "no-bos")
        bos_token, eos_token, pad_token, self.adds_bos, self.adds_eos = self.STYLES[self.style]
        self._offset = {"other-vocab": self.OTHER_VOCAB_OFFSET, "llama-3-vocab": self.LLAMA_3_VOCAB_OFFSET}.get(
            self.style, 0
        )
        self._reversed = self.style == "permuted-vocab"
        self.vocab_size = self._offset + self._trained  # as Hugging Face's: without the tokens added later
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, None
        self.additional_special_tokens: list[str] = []
        self.bos_token_id = None if bos_token is None else self._id(bos_token)
        self.eos_token_id = self._id(eos_token)
        self.pad_token_id = None if pad_token is None else self._id(pad_token)
        self.unk_token_id = None
        if self.style == "pads-left":
            self.padding_side = "left"

    def _id(self, token: str) -> int | None:
        backend_id = self._backend.token_to_id(token)
        return None if backend_id is None else self._own_id(backend_id)  # no unk token: None, as Hugging Face's

    def _own_id(self, backend_id: int) -> int:
        """This style's id of the backend's token ``backend_id`` (reversal is its own inverse)."""
        if self._reversed and len(SPECIAL_TOKENS) <= backend_id < self._trained:
            return self._trained - 1 + len(SPECIAL_TOKENS) - backend_id
        return self._offset + backend_id

    def _backend_id(self, own_id: int) -> int:
        return self._own_id(own_id) if self._reversed else own_id - self._offset

    def __len__(self) -> int:
        return self._offset + self._backend.get_vocab_size()

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        """What ``options`` ask for: return_tensors, the fields of EXTRA_FIELDS, padding (True, "longest", or
        "max_length" with max_length, pad_to_multiple_of, padding_side) and split_special_tokens; TypeError for an
        option that would change the ids otherwise (truncation, stride, ...), which the kata does not need."""
        tensors = options.pop("return_tensors", None)
        padding = options.pop("padding", False)
        max_length, multiple = options.pop("max_length", None), options.pop("pad_to_multiple_of", None)
        side = options.pop("padding_side", None) or self.padding_side
        split = bool(options.pop("split_special_tokens", False))
        refused = [
            name
            for name, value in options.items()
            if name not in self.ANY_VALUE
            and name not in self.EXTRA_FIELDS
            and name != "return_attention_mask"
            and value not in self.OFF
        ]
        padding = False if padding in self.OFF else "longest" if padding is True else padding
        if padding not in (False, "longest", "max_length") or (padding == "max_length") != (max_length is not None):
            refused.append(f"padding={padding!r} with max_length={max_length!r}")
        if side not in ("right", "left"):
            raise ValueError(f"padding_side should be 'right' or 'left', got {side!r}")
        if refused or tensors not in (None, "pt", "np"):
            raise TypeError(
                f"the grader's tokenizer does not support {', '.join(refused) or f'return_tensors={tensors!r}'}: "
                "the kata needs tokenizer(text, add_special_tokens=False)['input_ids'] only"
            )
        extra = [field for option, field in self.EXTRA_FIELDS.items() if options.get(option)]
        if options.get("return_attention_mask", True) is not False:
            extra.insert(0, "attention_mask")
        if padding and self.pad_token_id is None:
            raise ValueError("Asking to pad but the tokenizer does not have a padding token")
        return {"tensors": tensors, "extra": extra, "padding": padding, "max_length": max_length,
                "multiple": multiple, "side": side, "split": split}  # fmt: skip

    @staticmethod
    def _tensors(fields: dict[str, Any], tensors: Any) -> Encoding:
        """The fields as lists, or as int64 tensors (an empty text too: Hugging Face's (1, 0) LongTensor)."""
        if tensors == "pt":
            return Encoding({key: torch.tensor(value, dtype=torch.long) for key, value in fields.items()})
        if tensors == "np":
            import numpy as np

            return Encoding({key: np.array(value, dtype=np.int64) for key, value in fields.items()})
        return Encoding(fields)

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        add_special_tokens: bool = True,
        **options: Any,
    ) -> Encoding:
        """``{"input_ids": ids, "attention_mask": ones}`` of ``text`` (and ``text_pair`` after it), or of each text
        of a list, padded if asked, and the fields ``EXTRA_FIELDS`` asks for."""
        how = self._options(options)
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        pairs = [text_pair] if single else [None] * len(texts) if text_pair is None else list(text_pair)
        if len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts and {len(pairs)} pairs")
        batch = [self._fields(one, pair, add_special_tokens, how) for one, pair in zip(texts, pairs, strict=True)]
        self._pad(batch, how)
        keys = ("input_ids", *how["extra"])
        fields = {key: [row[key] for row in batch] for key in keys if key != "length"}
        if "length" in keys:
            fields["length"] = [len(row["input_ids"]) for row in batch]  # after padding, as transformers counts
        if not single and how["tensors"] and len({len(ids) for ids in fields["input_ids"]}) > 1:
            raise ValueError("texts of different lengths make no tensor without padding=True")  # as Hugging Face
        if single and not how["tensors"]:  # one text: each field unwrapped (length stays a list of one number)
            fields = {key: value if key == "length" else value[0] for key, value in fields.items()}
        encoding = self._tensors({key: fields[key] for key in keys}, how["tensors"])
        encoding.__dict__["_sequence_ids"] = [row["sequence_ids"] for row in batch]
        encoding.__dict__["_tokens"] = [self.convert_ids_to_tokens(row["input_ids"]) for row in batch]
        return encoding

    def _pad(self, batch: list[dict[str, Any]], how: dict[str, Any]) -> None:
        """Pad each row of ``batch`` in place to the longest (or to max_length), rounded up to pad_to_multiple_of."""
        if not how["padding"] and not how["multiple"]:
            return
        target = how["max_length"] if how["padding"] == "max_length" else max(len(row["input_ids"]) for row in batch)
        if how["multiple"]:
            target = -(-target // how["multiple"]) * how["multiple"]
        values = {"input_ids": self.pad_token_id, "sequence_ids": None, **self.PADDING_VALUES}
        for row in batch:
            missing = target - len(row["input_ids"])
            for key, value in values.items():
                if missing > 0 and key in row:
                    padding = [value] * missing
                    row[key] = padding + row[key] if how["side"] == "left" else row[key] + padding

    def _fields(self, text: str, pair: str | None, add_special_tokens: bool, how: dict[str, Any]) -> dict[str, Any]:
        """input_ids of ``text`` (and ``pair``), their sequence_ids, and the fields of ``how["extra"]``."""
        extra, split = how["extra"], how["split"]
        parts = [self._ids(one, add_special_tokens, split) for one in (text, pair) if one is not None]
        ids = [i for part in parts for i in part]
        added = (self.adds_bos, self.adds_eos) if add_special_tokens else (False, False)
        sequence_ids: list[int | None] = []
        for which, part in enumerate(parts):
            bos, eos = int(added[0] and self.bos_token_id is not None), int(added[1])
            sequence_ids += [None] * bos + [which] * (len(part) - bos - eos) + [None] * eos
        every: dict[str, Any] = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        every["token_type_ids"] = [0] * len(ids)  # the trained template's pair is "<s> $A <s> $B", all of type 0
        if "offset_mapping" in extra or "special_tokens_mask" in extra:
            offsets, special = [], []
            for one in (text, pair):
                if one is not None:
                    spans = self._encoded(one, split).offsets
                    offsets += [(0, 0)] * added[0] + list(spans) + [(0, 0)] * added[1]
                    special += [1] * added[0] + [0] * len(spans) + [1] * added[1]
            every |= {"offset_mapping": offsets, "special_tokens_mask": special}
        chosen = {field: every[field] for field in extra if field != "length"}
        return {"input_ids": ids, "sequence_ids": sequence_ids} | chosen

    def _encoded(self, text: str, split: bool = False) -> Any:
        """The backend's encoding of ``text`` alone; with ``split`` the texts of special tokens split into ordinary
        tokens, as transformers' split_special_tokens=True (the backend's encode_special_tokens, for this call)."""
        if not isinstance(text, str):
            raise TypeError(f"the tokenizer encodes a str, got {type(text).__name__}")
        if not split:
            return self._backend.encode(text, add_special_tokens=False)
        self._backend.encode_special_tokens = True
        try:
            return self._backend.encode(text, add_special_tokens=False)
        finally:
            self._backend.encode_special_tokens = False

    def _ids(self, text: str, add_special_tokens: bool, split: bool = False) -> list[int]:
        ids = [self._own_id(i) for i in self._encoded(text, split).ids]
        if not add_special_tokens:
            return ids
        bos = [self.bos_token_id] * (self.adds_bos and self.bos_token_id is not None)
        return bos + ids + [self.eos_token_id] * self.adds_eos

    def encode(
        self, text: str, text_pair: str | None = None, add_special_tokens: bool = True, **options: Any
    ) -> list[int] | Any:
        """The ids of ``text`` (then ``text_pair``); with ``add_special_tokens`` the special tokens this style adds
        around each; with ``return_tensors`` a (1, n) int64 tensor, as Hugging Face's."""
        how = self._options(options)
        ids = self._fields(text, text_pair, add_special_tokens, how | {"extra": []})["input_ids"]
        return self._tensors({"input_ids": [ids]}, how["tensors"])["input_ids"] if how["tensors"] else ids

    def decode(self, token_ids: Any, skip_special_tokens: bool = False, **options: Any) -> str | list[str]:
        """The text of ids (an int, a list, a tensor); of each row of a list of lists, as Hugging Face's."""
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        if token_ids and all(isinstance(row, list) for row in token_ids):
            return [self.decode(row, skip_special_tokens) for row in token_ids]
        size = self._backend.get_vocab_size()
        own = [self._backend_id(i) for i in token_ids if 0 <= self._backend_id(i) < size]
        return self._backend.decode(own, skip_special_tokens=skip_special_tokens)  # an id of no token: nothing, as HF

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, **options: Any) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in sequences]

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> Any:
        """The token string of an id, or those of a list of ids (without the special ones if asked)."""
        if isinstance(ids, int):
            return self._backend.id_to_token(self._backend_id(ids))
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._backend.id_to_token(self._backend_id(i)) for i in ids if i not in special]

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False, **options: Any) -> list:
        """The tokens of ``text`` (then ``pair``), as strings: no special tokens unless ``add_special_tokens``."""
        how = self._options(dict(options))
        return self.convert_ids_to_tokens(
            self._fields(text, pair, add_special_tokens, how | {"extra": []})["input_ids"]
        )

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int | None] | None:
        """The id of a token string, or the ids of a list of them (None for a string of no token, as HF's)."""
        if isinstance(tokens, str):
            return self._id(tokens)
        return [self._id(one) for one in tokens]

    @property
    def all_special_tokens(self) -> list[str]:
        named = [self.bos_token, self.eos_token, self.unk_token, self.pad_token, *self.additional_special_tokens]
        return list(dict.fromkeys(token for token in named if token is not None))

    @property
    def all_special_ids(self) -> list[int]:
        return [self._id(token) for token in self.all_special_tokens]

    def _edited_backend(self) -> Tokenizer:
        """This tokenizer's own backend, copied from the shared one at the first edit (the others stay as they are)."""
        if not self._own_backend:
            self._backend, self._own_backend = Tokenizer.from_str(self._backend.to_str()), True
        return self._backend

    def add_tokens(self, new_tokens: Any, special_tokens: bool = False) -> int:
        """Add tokens (a string, an ``AddedToken`` or a list of them), with the next ids; how many were new."""
        new = [new_tokens] if isinstance(new_tokens, str) or not isinstance(new_tokens, Sequence) else new_tokens
        backend = self._edited_backend()
        return backend.add_special_tokens(list(new)) if special_tokens else backend.add_tokens(list(new))

    def add_special_tokens(self, special_tokens_dict: dict[str, Any], replace_extra_special_tokens: bool = True) -> int:
        """Set special tokens (``{"eos_token": "<|im_end|>", "additional_special_tokens": [...]}``, as Hugging Face's),
        adding those new to the vocabulary; how many were new."""
        added = 0
        for key, value in special_tokens_dict.items():
            if key in EXTRA_SPECIAL_KEYS:
                tokens = [getattr(one, "content", one) for one in value]
                added += self.add_tokens(list(value), special_tokens=True)
                kept = [] if replace_extra_special_tokens else self.additional_special_tokens
                self.additional_special_tokens = list(dict.fromkeys([*kept, *tokens]))
            elif key in SPECIAL_KEYS:
                added += self.add_tokens([value], special_tokens=True)
                name = key.removesuffix("_token")
                setattr(self, key, getattr(value, "content", value))
                setattr(self, f"{name}_token_id", self._id(getattr(value, "content", value)))
            else:
                raise ValueError(f"add_special_tokens takes the keys {SPECIAL_KEYS + EXTRA_SPECIAL_KEYS}, got {key!r}")
        return added


def transformers_tokenizer() -> Any:
    """The same BPE as a ``transformers.PreTrainedTokenizerFast`` (bos ``<s>`` added by default, as Llama's).

    Raises ``ModuleNotFoundError`` with ``TRANSFORMERS_MISSING`` when transformers is not installed.
    """
    if importlib.util.find_spec("transformers") is None:
        raise ModuleNotFoundError(TRANSFORMERS_MISSING)
    from transformers import PreTrainedTokenizerFast  # slow to import: only when this tokenizer is asked for

    return PreTrainedTokenizerFast(tokenizer_object=trained_bpe(), bos_token=BOS, eos_token=EOS, pad_token=PAD)
