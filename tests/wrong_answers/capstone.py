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
]  # fmt: skip
