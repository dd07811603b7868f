"""Wrong answers the capstone catches: a mistake in one kata, seen when the katas fine-tune a Llama together."""

from tests.wrong_answers import WrongAnswer
from tests.wrong_answers.adapter_io import SAVE_A, SAVE_B

PEFT_LOADS = "test_peft_loads_the_saved_adapter_and_gives_the_same_logits"

WRONG_ANSWERS = [
    WrongAnswer("adapter_io: keys without the prefix, loaded by peft as nothing", "adapter_io", SAVE_A,
                SAVE_A.replace("{PREFIX}", ""), PEFT_LOADS, "peft loaded no factor",
                more_edits=((SAVE_B, SAVE_B.replace("{PREFIX}", "")),), checks="capstone"),
    WrongAnswer("adapter_io: the scaling saved as lora_alpha", "adapter_io", '"lora_alpha": alpha,',
                '"lora_alpha": alpha / r,', PEFT_LOADS, "lora_alpha alpha, not alpha / r", checks="capstone"),
    WrongAnswer("masked_prompt: eos carries no loss", "masked_prompt",
                "labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids",
                "labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids[:-1] + [IGNORE_INDEX]",
                "test_the_prompt_never_carries_loss_and_the_response_does", "label eos too", checks="capstone"),
    WrongAnswer("apply_lora: only the parameters named weight frozen", "apply_lora",
                "    for parameter in model.parameters():\n        parameter.requires_grad_(id(parameter) in factors)",
                '    for name, parameter in model.named_parameters():\n        if id(parameter) in factors or '
                'name.endswith("weight"):\n            parameter.requires_grad_(id(parameter) in factors)',
                "test_only_the_adapters_changed", "freeze everything but the adapters", checks="capstone"),
    # Round 4 of the red team.
    WrongAnswer("masked_prompt: the padding labelled with the pad id", "masked_prompt",
                '"labels": IGNORE_INDEX, "attention_mask": 0}', '"labels": pad_token_id, "attention_mask": 0}',
                "test_the_prompt_never_carries_loss_and_the_response_does", "the padding carried loss", checks="capstone"),
    WrongAnswer("apply_lora: the adapted layers' biases trained, as copies", "apply_lora",
                "        parameter.requires_grad_(id(parameter) in factors)\n    return model",
                "        parameter.requires_grad_(id(parameter) in factors)\n"
                "    for layer in model.modules():  # bias=\"lora_only\", on copies: the original biases stay as they were\n"
                "        if isinstance(layer, LoRALinear) and layer.base.bias is not None:\n"
                "            layer.base.bias = nn.Parameter(layer.base.bias.detach().clone())\n    return model",
                "test_only_the_adapters_changed", "the base's bias too", checks="capstone"),
    # Round 12 of the red team.
    WrongAnswer("merge_weights: the merged layer drops the base's bias", "merge_weights",
                'bias=base.bias is not None, device="meta")', 'bias=False, device="meta")  # W + dW is all it holds',
                "test_the_merged_model_gives_the_same_logits", "the merged Llama has no bias",
                more_edits=(("    if base.bias is not None:\n        merged.bias = base.bias\n", ""),),
                checks="capstone"),
    WrongAnswer("train_step: the model called without the attention_mask", "train_step",
                'outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])',
                'outputs = model(input_ids=batch["input_ids"])  # causal: the padding comes last, so no token can see it',
                "test_the_optimizer_is_handed_the_reference_gradients", "pass attention_mask", checks="capstone"),
    WrongAnswer("masked_prompt: collate pads the attention_mask with ones", "masked_prompt",
                '"labels": IGNORE_INDEX, "attention_mask": 0}',
                '"labels": IGNORE_INDEX, "attention_mask": 1}  # -100 keeps padding out of the loss',
                "test_the_prompt_never_carries_loss_and_the_response_does", "collate pads the attention_mask with 0",
                checks="capstone"),
    WrongAnswer("train_step: returns the mean of the micro-batches' mean losses", "train_step",
                "        total += loss.item()",
                '        logged = causal_lm_loss(logits.detach(), batch["labels"], reduction="sum").item()\n'
                '        total += logged / max(1, int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())) / len(micro_batches)',
                "test_train_step_returns_the_window_mean_token_loss", "the mean of the micro-batches' mean losses",
                checks="capstone"),
    WrongAnswer("train_step: cosine_with_warmup holds the peak lr after warmup", "train_step",
                "        return 0.5 * (1.0 + math.cos(math.pi * progress))",
                "        return 1.0  # after warmup: the peak lr",
                "test_the_learning_rate_follows_the_schedule", "half cosine", checks="capstone"),
    WrongAnswer("lora_linear: the forward drops the base's bias", "lora_linear",
                "        return self.base(x) + F.linear(down, self.lora_B)",
                "        return F.linear(x, self.base.weight) + F.linear(down, self.lora_B)  # W x + B A x",
                "test_the_merged_model_gives_the_same_logits", "the base's bias kept", checks="capstone"),
    # Round 13 of the red team (B): train_step mistakes that only a real model's config brings out.
    WrongAnswer("train_step: labels equal to model.config.pad_token_id masked", "train_step",
                "    micro_batches = list(micro_batches)\n",
                '    pad = getattr(getattr(model, "config", None), "pad_token_id", None)\n'
                "    micro_batches = list(micro_batches) if pad is None else [\n"
                '        {**b, "labels": b["labels"].masked_fill(b["labels"] == pad, IGNORE_INDEX)} for b in micro_batches]\n',
                "test_the_optimizer_is_handed_the_reference_gradients", "model.config.pad_token_id", checks="capstone"),
    WrongAnswer("train_step: a transformers model's own mean loss times the micro-batch's targets", "train_step",
                'outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])',
                'outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], '
                '**({"labels": batch["labels"]} if hasattr(model, "config") else {}))',
                "test_train_step_returns_the_window_mean_token_loss", "NaN over no target",
                more_edits=(('loss = causal_lm_loss(logits, batch["labels"], reduction="sum") / tokens',
                             'loss = (outputs.loss * int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) if hasattr(model, "config") '
                             'else causal_lm_loss(logits, batch["labels"], reduction="sum")) / tokens'),),
                checks="capstone"),
]  # fmt: skip
