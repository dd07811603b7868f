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
]  # fmt: skip
