"""masked_prompt through token strings: enc(t) = convert_tokens_to_ids(tokenize(t, add_special_tokens=False)),
the spec's "tokenize followed by convert_tokens_to_ids", with Hugging Face's own keyword that keeps special
tokens out of tokenize spelled out (its default, made explicit so no tokenizer version adds bos here)."""

from __future__ import annotations

from itertools import chain, repeat
from typing import Any

import torch

IGNORE_INDEX = -100


def format_prompt(instruction: str, input: str = "") -> str:
    return "".join(("[INST] ", instruction, "\n" + input if input else "", " [/INST] "))


def _enc(tokenizer: Any, text: str) -> list[int]:
    tokens = tokenizer.tokenize(text, add_special_tokens=False)
    return [int(i) for i in tokenizer.convert_tokens_to_ids(tokens)] if tokens else []


def build_example(tokenizer, instruction, input, output, max_length=None):
    bos = () if tokenizer.bos_token_id is None else (int(tokenizer.bos_token_id),)
    prefix = (*bos, *_enc(tokenizer, format_prompt(instruction, input)))
    response = (*_enc(tokenizer, output), int(tokenizer.eos_token_id))
    keep = len(prefix) + len(response) if max_length is None else max_length
    if keep <= len(prefix):
        raise ValueError(f"max_length={max_length} keeps no response token ({len(prefix)} are bos + prompt)")
    ids = list(chain(prefix, response))[:keep]
    labels = list(chain(repeat(IGNORE_INDEX, len(prefix)), response))[:keep]
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


def collate(examples, pad_token_id):
    if len(examples) == 0:
        raise ValueError("collate: no examples")
    fills = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    return {
        key: torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(e[key], dtype=torch.long) for e in examples], batch_first=True, padding_value=fill
        )
        for key, fill in fills.items()
    }
