import torch
from torch.nn.utils.rnn import pad_sequence

IGNORE_INDEX = -100


def format_prompt(instruction, input=""):
    parts = ["[INST] ", instruction]
    if input != "":
        parts += ["\n", input]
    parts.append(" [/INST] ")
    return "".join(parts)


def build_example(tokenizer, instruction, input, output, max_length=None):
    prompt = tokenizer.encode(format_prompt(instruction, input), add_special_tokens=False)
    answer = tokenizer.encode(output, add_special_tokens=False)
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    ids = torch.tensor(bos + prompt + answer + [tokenizer.eos_token_id])
    labels = ids.clone()
    labels[: len(bos) + len(prompt)] = IGNORE_INDEX
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
        if max_length < 1 or bool((labels == IGNORE_INDEX).all()):  # a count: -1 keeps nothing (no [:-1])
            raise ValueError(f"max_length={max_length} cuts off the whole response")
    return {"input_ids": ids.tolist(), "labels": labels.tolist(), "attention_mask": torch.ones_like(ids).tolist()}


def collate(examples, pad_token_id):
    if len(examples) == 0:
        raise ValueError("cannot collate an empty batch")

    def pad(key, value):
        rows = [torch.tensor(example[key], dtype=torch.long) for example in examples]
        return pad_sequence(rows, batch_first=True, padding_value=value)

    return {
        "input_ids": pad("input_ids", pad_token_id),
        "labels": pad("labels", IGNORE_INDEX),
        "attention_mask": pad("attention_mask", 0),
    }
