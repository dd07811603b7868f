"""Reference answer to the `masked_prompt` kata: instruction-tuning examples whose loss ignores the prompt."""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100  # the label F.cross_entropy skips by default


def format_prompt(instruction: str, input: str = "") -> str:
    """The prompt in the [INST] template; the input, when there is one, on its own line."""
    if input:
        return f"[INST] {instruction}\n{input} [/INST] "
    return f"[INST] {instruction} [/INST] "


def build_example(
    tokenizer: Any, instruction: str, input: str, output: str, max_length: int | None = None
) -> dict[str, list[int]]:
    """``input_ids = [bos] + enc(prompt) + enc(output) + [eos]``, with labels -100 on bos and the prompt.

    The prompt and the output are tokenized apart: tokenizing ``prompt + output`` in one call lets a
    merge cross the seam (" Hello" is one token), and then no count of prompt tokens masks exactly the prompt.
    All three lists have the same length, at most ``max_length`` (truncated on the right).
    """
    prompt_ids = _encode(tokenizer, format_prompt(instruction, input))
    if tokenizer.bos_token_id is not None:  # 0 is a real id: test None, not truthiness
        prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
    response_ids = [*_encode(tokenizer, output), tokenizer.eos_token_id]
    input_ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids  # prompt_ids holds bos too
    if max_length is not None:
        if max_length <= len(prompt_ids):
            raise ValueError(
                f"max_length={max_length} keeps no response token: bos + prompt take {len(prompt_ids)} tokens, "
                "so every label would be -100 and the loss NaN"
            )
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def _encode(tokenizer: Any, text: str) -> list[int]:
    """The token ids of ``text`` alone, without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def collate(examples: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the examples to the longest into LongTensors of shape (batch, longest).

    Padding is ``pad_token_id`` in input_ids, -100 in labels (no loss) and 0 in attention_mask.
    """
    if not examples:
        raise ValueError("collate needs at least one example, got an empty list")
    longest = max(len(example["input_ids"]) for example in examples)
    padding = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    return {
        key: torch.tensor(
            [example[key] + [value] * (longest - len(example[key])) for example in examples], dtype=torch.long
        )
        for key, value in padding.items()
    }
