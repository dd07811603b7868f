"""masked_prompt in tensor style: every piece is asked of the tokenizer with return_tensors="pt" (a call the
spec names), the example is assembled with torch.cat and masked in place, then turned to lists with .tolist()."""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100


def format_prompt(instruction: str, input: str = "") -> str:
    body = f"{instruction}\n{input}" if input else instruction
    return f"[INST] {body} [/INST] "


def _ids(tokenizer: Any, text: str) -> torch.Tensor:
    """enc(text) as a 1-D tensor: the row of tokenizer(text, add_special_tokens=False, return_tensors="pt")."""
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]


def build_example(tokenizer, instruction, input, output, max_length=None):
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    prompt = _ids(tokenizer, format_prompt(instruction, input))
    pieces = [
        torch.tensor(bos, dtype=torch.long),
        prompt,
        _ids(tokenizer, output),
        torch.tensor([tokenizer.eos_token_id], dtype=torch.long),
    ]
    input_ids = torch.cat(pieces)
    start = len(bos) + prompt.numel()  # where the response begins
    labels = input_ids.clone()
    labels[:start] = IGNORE_INDEX
    mask = torch.ones_like(input_ids)
    if max_length is not None:
        if max_length <= start:
            raise ValueError(f"max_length={max_length} keeps no response token (bos + prompt are {start})")
        input_ids, labels, mask = input_ids[:max_length], labels[:max_length], mask[:max_length]
    return {"input_ids": input_ids.tolist(), "labels": labels.tolist(), "attention_mask": mask.tolist()}


def collate(examples, pad_token_id):
    if not examples:
        raise ValueError("collate needs at least one example")
    longest = max(len(e["input_ids"]) for e in examples)
    out = {
        "input_ids": torch.full((len(examples), longest), pad_token_id, dtype=torch.long),
        "labels": torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long),
        "attention_mask": torch.zeros((len(examples), longest), dtype=torch.long),
    }
    for row, e in enumerate(examples):
        for key, tensor in out.items():
            tensor[row, : len(e[key])] = torch.tensor(e[key], dtype=torch.long)
    return out
