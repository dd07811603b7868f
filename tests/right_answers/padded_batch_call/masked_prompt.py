"""masked_prompt whose build_example tokenizes [prompt, output] in one padded batch call, unpadded by the mask."""

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
    """RIGHT, another style: the prompt and the output in one BATCH call (a list of two texts, each tokenized alone),
    padded to a tensor as batch calls usually are, each row's ids taken back by its attention_mask (whatever the
    tokenizer's padding_side); a tokenizer without a pad token answers the same call unpadded."""
    prompt = format_prompt(instruction, input)
    if tokenizer.pad_token_id is None:  # nothing to pad with (Llama-2 as it loads): a list of lists, unpadded
        prompt_ids, output_ids = tokenizer([prompt, output], add_special_tokens=False)["input_ids"]
    else:
        batch = tokenizer([prompt, output], add_special_tokens=False, padding=True, return_tensors="pt")
        prompt_ids, output_ids = (batch["input_ids"][r][batch["attention_mask"][r].bool()].tolist() for r in range(2))
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
