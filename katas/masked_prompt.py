"""Kata `masked_prompt`: instruction-tuning examples whose loss covers the response only.

Instruction tuning with LoRA trains on the response: every prompt token gets the label -100, which
``F.cross_entropy`` ignores. Getting the prompt/response boundary wrong is the classic bug, and it only
shows with a real subword tokenizer, where a space and the next word merge into one token (" Hello").

The tokenizer is any Hugging Face style tokenizer: ``tokenizer(text, add_special_tokens=False)["input_ids"]``
gives the ids of ``text`` alone (so do ``return_tensors="pt"``, a list of texts, and ``tokenize`` followed by
``convert_tokens_to_ids``: the grader's tokenizers take these calls too), and it has ``bos_token_id`` (None for
tokenizers without one) and ``eos_token_id``. An answer that works here works unchanged with
``transformers.AutoTokenizer``. Every ValueError says in its message what was wrong.

Grade it with: pytest grader/test_masked_prompt.py
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100  # the label F.cross_entropy skips by default


def format_prompt(instruction: str, input: str = "") -> str:
    """The prompt of one example, in the [INST] template.

    Spec:
        - ``"[INST] {instruction}\\n{input} [/INST] "``: the input on its own line, after the instruction.
        - ``"[INST] {instruction} [/INST] "`` when ``input`` is empty.
        - Both end with one space after ``[/INST]``; the response follows it.
        - The texts are put in as they are: braces in them (``"Fill the {input} slot."``) are text.
    """
    raise NotImplementedError("kata masked_prompt: write format_prompt (spec in its docstring)")


def build_example(
    tokenizer: Any, instruction: str, input: str, output: str, max_length: int | None = None
) -> dict[str, list[int]]:
    """One training example: ``{"input_ids": [...], "labels": [...], "attention_mask": [...]}``, lists of ints.

    Spec, with ``enc(t) = tokenizer(t, add_special_tokens=False)["input_ids"]``:
        - ``input_ids = [bos] + enc(format_prompt(instruction, input)) + enc(output) + [eos]``; no bos
          when ``tokenizer.bos_token_id`` is None. Add bos and eos yourself: what a tokenizer adds with
          its special tokens differs (GPT-2's adds none, and its bos, eos and pad are one token; some add eos).
        - The prompt and the output are tokenized separately, never as one string: then the boundary
          between them is exact, whatever merges the tokenizer would make across it.
        - ``labels`` is ``IGNORE_INDEX`` (-100) on bos and on every prompt token, and equals
          ``input_ids`` on the response tokens and on eos (the model must learn to stop).
        - ``attention_mask`` is all ones (the model attends to the prompt; only the loss ignores it).
        - ``max_length`` (when not None) keeps the first ``max_length`` items of all three lists; None keeps
          them whole, however long (the tokenizer's ``model_max_length`` is not a limit here).

    Raises:
        ValueError: ``max_length`` leaves no response token, so every label would be -100 (a NaN loss);
            a ``max_length`` below 1 keeps no item at all (it is a count, not a slice from the end).
    """
    raise NotImplementedError("kata masked_prompt: write build_example (spec in its docstring)")


def collate(examples: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Batch examples of ``build_example`` into tensors, right-padded to the longest example.

    Spec:
        - Returns ``input_ids``, ``labels`` and ``attention_mask``, LongTensors of shape (batch, longest),
          however long the longest (whatever torch's default dtype: ids are never floats).
        - Padding goes on the right: ``pad_token_id`` in input_ids, ``IGNORE_INDEX`` in labels (no loss
          on padding) and 0 in attention_mask (nothing attends to padding).
        - Padding is what lies past an example's length: a real token may carry the pad id (pad = eos
          is the usual set-up), and keeps its label and attention.
        - Each row is the example's own lists, as given, then padding: its attention_mask too, zeros
          included (an example from elsewhere may mask some of its tokens).

    Raises:
        ValueError: ``examples`` is empty.
    """
    raise NotImplementedError("kata masked_prompt: write collate (spec in its docstring)")
