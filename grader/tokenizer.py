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
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

CORPUS = Path(__file__).with_name("corpus.txt")
BOS, EOS, PAD = "<s>", "</s>", "<pad>"  # ids 0, 1, 2: a bos id of 0 catches `if tokenizer.bos_token_id:`
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
        special_tokens=[BOS, EOS, PAD],
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
    """The Hugging Face tokenizer interface over the trained BPE: ``tokenizer(text, add_special_tokens=False)``,
    ``encode``, ``decode``, ``bos_token_id``, ``eos_token_id``, ``pad_token_id`` and the token strings.

    With ``bos=False`` it has no bos (``bos_token_id`` None), as GPT-2 style tokenizers; otherwise special
    tokens, when asked for (the default, as in Hugging Face), are one bos in front, as Llama's tokenizer does.
    """

    ANY_VALUE = ("return_attention_mask", "return_token_type_ids", "verbose")  # options that change no id
    OFF = (None, False, "do_not_pad", "do_not_truncate")  # padding=False, return_tensors=None, ...

    def __init__(self, bos: bool = True) -> None:
        self._backend = trained_bpe()
        self.bos_token = BOS if bos else None
        self.eos_token, self.pad_token = EOS, PAD
        self.bos_token_id = self._backend.token_to_id(BOS) if bos else None
        self.eos_token_id = self._backend.token_to_id(EOS)
        self.pad_token_id = self._backend.token_to_id(PAD)
        self.vocab_size = self._backend.get_vocab_size()

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True, **options: Any) -> Encoding:
        """``{"input_ids": ids, "attention_mask": ones}`` of ``text``, or of each text of a list."""
        refused = [name for name, value in options.items() if name not in self.ANY_VALUE and value not in self.OFF]
        if refused:
            raise TypeError(
                f"the grader's tokenizer does not support {', '.join(refused)}: "
                "the kata needs tokenizer(text, add_special_tokens=False)['input_ids'] only"
            )
        if isinstance(text, str):
            ids = self.encode(text, add_special_tokens)
            return Encoding(input_ids=ids, attention_mask=[1] * len(ids))
        batch = [self.encode(one, add_special_tokens) for one in text]
        return Encoding(input_ids=batch, attention_mask=[[1] * len(ids) for ids in batch])

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The ids of ``text``; with ``add_special_tokens`` bos first (when this tokenizer has one)."""
        if not isinstance(text, str):
            raise TypeError(f"the tokenizer encodes a str, got {type(text).__name__}")
        ids = self._backend.encode(text, add_special_tokens=False).ids
        return [self.bos_token_id, *ids] if add_special_tokens and self.bos_token_id is not None else ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str | None]:
        return [self._backend.id_to_token(i) for i in ids]


def transformers_tokenizer() -> Any:
    """The same BPE as a ``transformers.PreTrainedTokenizerFast`` (bos ``<s>`` added by default, as Llama's).

    Raises ``ModuleNotFoundError`` with ``TRANSFORMERS_MISSING`` when transformers is not installed.
    """
    if importlib.util.find_spec("transformers") is None:
        raise ModuleNotFoundError(TRANSFORMERS_MISSING)
    from transformers import PreTrainedTokenizerFast  # slow to import: only when this tokenizer is asked for

    return PreTrainedTokenizerFast(tokenizer_object=trained_bpe(), bos_token=BOS, eos_token=EOS, pad_token=PAD)
