"""masked_prompt whose build_example encodes (prompt, output) as one text pair, split back by sequence_ids()."""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100


def format_prompt(instruction: str, input: str = "") -> str:
    if input:
        return f"[INST] {instruction}\n{input} [/INST] "
    return f"[INST] {instruction} [/INST] "


def _enc(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def build_example(tokenizer: Any, instruction: str, input: str, output: str, max_length: int | None = None):
    """RIGHT, another style: one call with the prompt and the output as a text PAIR (Hugging Face tokenizes each
    member of a pair on its own, so nothing merges across the seam), split back by the encoding's sequence_ids()."""
    prompt = format_prompt(instruction, input)
    encoding = tokenizer(prompt, output, add_special_tokens=False)
    ids, which = list(encoding["input_ids"]), encoding.sequence_ids()
    prompt_ids = [int(i) for i, s in zip(ids, which, strict=False) if s == 0]
    output_ids = [int(i) for i, s in zip(ids, which, strict=False) if s == 1]
    bos = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    prefix = bos + prompt_ids
    response = [*output_ids, int(tokenizer.eos_token_id)]
    ids = prefix + response
    labels = [IGNORE_INDEX] * len(prefix) + list(response)
    mask = [1] * len(ids)
    if max_length is not None:
        if max_length <= len(prefix):
            raise ValueError(f"max_length={max_length} leaves no response token (bos + prompt: {len(prefix)})")
        ids, labels, mask = ids[:max_length], labels[:max_length], mask[:max_length]
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def collate(examples, pad_token_id: int):
    if not examples:
        raise ValueError("collate of an empty batch")
    longest = max(len(e["input_ids"]) for e in examples)
    out = {}
    for key, fill in (("input_ids", pad_token_id), ("labels", IGNORE_INDEX), ("attention_mask", 0)):
        rows = [list(e[key]) + [fill] * (longest - len(e[key])) for e in examples]
        out[key] = torch.tensor(rows, dtype=torch.long)
    return out
