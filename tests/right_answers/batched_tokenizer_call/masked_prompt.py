from __future__ import annotations

import torch

IGNORE_INDEX = -100
TEMPLATE = "[INST] {instruction}{input} [/INST] "


def format_prompt(instruction: str, input: str = "") -> str:
    return TEMPLATE.format(instruction=instruction, input=f"\n{input}" if input else "")


def build_example(tokenizer, instruction, input, output, max_length=None):
    texts = [format_prompt(instruction, input), output]
    prompt_ids, output_ids = tokenizer(texts, add_special_tokens=False).input_ids
    if tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
    masked = len(prompt_ids)
    if max_length is not None and max_length <= masked:
        raise ValueError(f"max_length={max_length} leaves no response token after {masked} prompt tokens")
    input_ids = [*prompt_ids, *output_ids, tokenizer.eos_token_id][:max_length]
    labels = [IGNORE_INDEX if position < masked else token for position, token in enumerate(input_ids)]
    return dict(input_ids=input_ids, labels=labels, attention_mask=[1 for _ in input_ids])


def collate(examples, pad_token_id):
    if not examples:
        raise ValueError("collate() got no examples")
    shape = (len(examples), max(len(example["input_ids"]) for example in examples))
    batch = {
        "input_ids": torch.full(shape, pad_token_id, dtype=torch.long),
        "labels": torch.full(shape, IGNORE_INDEX, dtype=torch.long),
        "attention_mask": torch.zeros(shape, dtype=torch.long),
    }
    for row, example in enumerate(examples):
        for key, tensor in batch.items():
            tensor[row, : len(example[key])] = torch.tensor(example[key])
    return batch
