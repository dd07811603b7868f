"""Wrong answers to the `masked_prompt` kata."""

from tests.wrong_answers import WrongAnswer

KATA = "masked_prompt"
FULL_TEMPLATE = 'f"[INST] {instruction}\\n{input} [/INST] "'
SHORT_TEMPLATE = 'return f"[INST] {instruction} [/INST] "'
PROMPT = "prompt_ids = _encode(tokenizer, format_prompt(instruction, input))"
BOS = (
    "if tokenizer.bos_token_id is not None:  # 0 is a real id: test None, not truthiness\n"
    "        prompt_ids = [tokenizer.bos_token_id, *prompt_ids]"
)
RESPONSE = "response_ids = [*_encode(tokenizer, output), tokenizer.eos_token_id]"
INPUT_IDS = "input_ids = prompt_ids + response_ids"
LABELS = "labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids"
CHECK = "if max_length <= len(prompt_ids):"
RAISE = CHECK + "\n            raise ValueError("
CUT = "input_ids, labels = input_ids[:max_length], labels[:max_length]"
MASK = '"attention_mask": [1] * len(input_ids)}'
ENCODE = 'return list(tokenizer(text, add_special_tokens=False)["input_ids"])'
PADDING = 'padding = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "attention_mask": 0}'
ROWS = "[example[key] + [value] * (longest - len(example[key])) for example in examples]"
EMPTY = 'raise ValueError("collate needs at least one example, got an empty list")'

WRONG_ANSWERS = [
    # format_prompt
    WrongAnswer("no space after [/INST]", KATA, SHORT_TEMPLATE, SHORT_TEMPLATE.replace('[/INST] "', '[/INST]"'),
                "test_format_prompt_follows_the_template", "exactly one space after [/INST]"),
    WrongAnswer("input after a space, not a newline", KATA, FULL_TEMPLATE, FULL_TEMPLATE.replace("\\n", " "),
                "test_format_prompt_follows_the_template", "on its own line"),
    WrongAnswer("newline kept when the input is empty", KATA, "if input:", "if input is not None:",
                "test_format_prompt_follows_the_template", "no newline"),
    # build_example: the ids
    WrongAnswer("prompt + output tokenized in one call", KATA, INPUT_IDS,
                "bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]\n    "
                "input_ids = bos + _encode(tokenizer, format_prompt(instruction, input) + output) + [tokenizer.eos_token_id]",
                "test_input_ids_are_bos_prompt_response_eos", "tokenize the prompt and the output separately",
                more_edits=((LABELS, "labels = [IGNORE_INDEX] * len(prompt_ids) + input_ids[len(prompt_ids) :]"),)),
    WrongAnswer("input left out of the prompt", KATA, PROMPT, PROMPT.replace("(instruction, input)", "(instruction)"),
                "test_input_ids_are_bos_prompt_response_eos", "format_prompt(instruction, input)"),
    WrongAnswer("output stripped", KATA, RESPONSE, RESPONSE.replace("output)", "output.strip())"),
                "test_input_ids_are_bos_prompt_response_eos", "the output, tokenized alone"),
    WrongAnswer("add_special_tokens left at its default", KATA, ENCODE, 'return list(tokenizer(text)["input_ids"])',
                "test_input_ids_are_bos_prompt_response_eos", "add_special_tokens=False"),
    WrongAnswer("bos added when the tokenizer has none", KATA, BOS, "prompt_ids = [tokenizer.bos_token_id, *prompt_ids]",
                "test_input_ids_are_bos_prompt_response_eos", "bos_token_id is None"),
    WrongAnswer("bos tested by truthiness (its id is 0)", KATA, "if tokenizer.bos_token_id is not None:",
                "if tokenizer.bos_token_id:", "test_input_ids_are_bos_prompt_response_eos", "`is not None`"),
    WrongAnswer("no eos", KATA, RESPONSE, "response_ids = _encode(tokenizer, output)",
                "test_eos_ends_the_example_and_is_trained", "append tokenizer.eos_token_id"),
    # build_example: the labels
    WrongAnswer("first response token masked too", KATA, LABELS,
                "labels = [IGNORE_INDEX] * (len(prompt_ids) + 1) + response_ids[1:]",
                "test_labels_mask_bos_and_the_prompt_and_nothing_else", "first response token is masked"),
    WrongAnswer("last prompt token trained (mask counted without bos)", KATA, LABELS,
                "labels = [IGNORE_INDEX] * (len(prompt_ids) - 1) + input_ids[len(prompt_ids) - 1 :]",
                "test_labels_mask_bos_and_the_prompt_and_nothing_else", "last prompt token is trained"),
    WrongAnswer("bos trained", KATA, LABELS, "labels = prompt_ids[:1] + [IGNORE_INDEX] * (len(prompt_ids) - 1) + response_ids",
                "test_labels_mask_bos_and_the_prompt_and_nothing_else", "bos is trained"),
    WrongAnswer("nothing masked", KATA, LABELS, "labels = list(input_ids)",
                "test_labels_mask_bos_and_the_prompt_and_nothing_else", "nothing is masked"),
    WrongAnswer("labels shifted for the model", KATA, LABELS, LABELS + "\n    labels = labels[1:] + [IGNORE_INDEX]",
                "test_labels_mask_bos_and_the_prompt_and_nothing_else", "shifted by one"),
    WrongAnswer("prompt labelled with the pad id", KATA, LABELS, LABELS.replace("[IGNORE_INDEX]", "[tokenizer.pad_token_id]"),
                "test_labels_mask_bos_and_the_prompt_and_nothing_else", "expected -100 (IGNORE_INDEX)"),
    WrongAnswer("IGNORE_INDEX is -1", KATA, "IGNORE_INDEX = -100", "IGNORE_INDEX = -1",
                "test_returns_three_lists_of_ints_of_equal_length", "expected -100"),
    WrongAnswer("eos masked", KATA, LABELS, LABELS.replace("response_ids", "response_ids[:-1] + [IGNORE_INDEX]"),
                "test_eos_ends_the_example_and_is_trained", "train on eos"),
    WrongAnswer("only bos masked", KATA, LABELS,
                "labels = [IGNORE_INDEX] + input_ids[1:]",
                "test_loss_with_these_labels_is_the_cross_entropy_of_the_response", "targets carry loss"),
    WrongAnswer("attention mask hides the prompt", KATA, MASK,
                '"attention_mask": [0] * len(prompt_ids) + [1] * (len(input_ids) - len(prompt_ids))}',
                "test_attention_mask_is_all_ones", "mask it in labels only"),
    WrongAnswer("tensors instead of lists", KATA, 'return {"input_ids": input_ids, "labels": labels',
                'return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels)',
                "test_returns_three_lists_of_ints_of_equal_length", "expected a list of ints"),
    # build_example: max_length
    WrongAnswer("truncated on the left", KATA, CUT, "input_ids, labels = input_ids[-max_length:], labels[-max_length:]",
                "test_max_length_keeps_the_first_tokens", "truncated on the left"),
    WrongAnswer("eos put back after truncation", KATA, CUT,
                "if len(input_ids) > max_length:\n            "
                "input_ids, labels = input_ids[: max_length - 1] + input_ids[-1:], labels[: max_length - 1] + labels[-1:]",
                "test_max_length_keeps_the_first_tokens", "eos was put back"),
    WrongAnswer("only input_ids truncated", KATA, CUT, "input_ids = input_ids[:max_length]",
                "test_max_length_keeps_the_first_tokens", "truncate all three"),
    WrongAnswer("truncation one token short", KATA, CUT, CUT.replace("[:max_length]", "[: max_length - 1]"),
                "test_max_length_keeps_the_first_tokens", "keep the first max_length items"),
    WrongAnswer("only a negative max_length rejected", KATA, RAISE, RAISE.replace(CHECK, "if max_length < 0:"),
                "test_max_length_that_leaves_no_response_token_raises", "raised nothing"),
    WrongAnswer("ValueError check off by one", KATA, CHECK, CHECK.replace("<=", "<"),
                "test_max_length_that_leaves_no_response_token_raises", "raised nothing"),
    WrongAnswer("ValueError with one response token left", KATA, CHECK, CHECK.replace("len(prompt_ids)", "len(prompt_ids) + 1"),
                "test_max_length_keeps_the_first_tokens", "raise only when no response token remains"),
    # collate
    WrongAnswer("padded on the left", KATA, ROWS, "[[value] * (longest - len(example[key])) + example[key] for example in examples]",
                "test_collate_pads_on_the_right_to_the_longest", "padded on the left"),
    WrongAnswer("labels padded with the pad id", KATA, PADDING, PADDING.replace('"labels": IGNORE_INDEX', '"labels": pad_token_id'),
                "test_collate_pads_on_the_right_to_the_longest", "pad labels with -100"),
    WrongAnswer("attention mask padded with 1", KATA, PADDING, PADDING.replace('"attention_mask": 0', '"attention_mask": 1'),
                "test_collate_pads_on_the_right_to_the_longest", "padding gets 0"),
    WrongAnswer("input_ids padded with 0", KATA, PADDING, PADDING.replace('"input_ids": pad_token_id', '"input_ids": 0'),
                "test_collate_pads_on_the_right_to_the_longest", "expected 2"),
    WrongAnswer("int32 tensors", KATA, "dtype=torch.long", "dtype=torch.int32",
                "test_collate_returns_long_tensors_of_shape_batch_by_longest", "torch.int64"),
    WrongAnswer("empty batch gives an empty dict", KATA, EMPTY, "return {}",
                "test_collate_rejects_an_empty_batch", "raised nothing"),
    # issue 13: a tokenizer zoo (GPT-2's bos = eos = pad added by nobody, a tokenizer adding eos, pad = eos)
    WrongAnswer("bos left to the tokenizer's special tokens", KATA, PROMPT + "\n    " + BOS,
                "prompt_ids = list(tokenizer(format_prompt(instruction, input))['input_ids'])",
                "test_input_ids_are_bos_prompt_response_eos", "adds no bos itself"),
    WrongAnswer("no bos when bos is eos", KATA, "if tokenizer.bos_token_id is not None:",
                "if tokenizer.bos_token_id not in (None, tokenizer.eos_token_id):",
                "test_input_ids_are_bos_prompt_response_eos", "here bos is eos"),
    WrongAnswer("collate's attention mask from input_ids != pad", KATA, "    return {\n        key: torch.tensor(",
                "    batch = {\n        key: torch.tensor(",
                "test_pad_equal_to_eos_keeps_eos_trained_and_attended", "not every token with the pad id",
                more_edits=(("        for key, value in padding.items()\n    }",
                             "        for key, value in padding.items()\n    }\n"
                             "    batch['attention_mask'] = (batch['input_ids'] != pad_token_id).long()\n    return batch"),)),
    WrongAnswer("collate masks labels where input_ids == pad", KATA, "    return {\n        key: torch.tensor(",
                "    batch = {\n        key: torch.tensor(",
                "test_collate_pads_by_position_not_by_id", "padding was found by its id",
                more_edits=(("        for key, value in padding.items()\n    }",
                             "        for key, value in padding.items()\n    }\n"
                             "    batch['labels'][batch['input_ids'] == pad_token_id] = IGNORE_INDEX\n    return batch"),)),
    # round 1 (r1d): state kept between calls, a special token's text in the output, the max_length path's types
    WrongAnswer("encodings cached by text alone", KATA, ENCODE,
                'return list(_CACHE.setdefault(text, tokenizer(text, add_special_tokens=False)["input_ids"]))',
                "test_input_ids_are_bos_prompt_response_eos", "input_ids differ",
                more_edits=(("IGNORE_INDEX = -100", "_CACHE: dict[str, list[int]] = {}\nIGNORE_INDEX = -100"),)),
    WrongAnswer("a bos at the output's start dropped", KATA, RESPONSE,
                "output_ids = _encode(tokenizer, output)\n    if output_ids[:1] == [tokenizer.bos_token_id]:  # never two bos\n"
                "        output_ids = output_ids[1:]\n    response_ids = [*output_ids, tokenizer.eos_token_id]",
                "test_input_ids_are_bos_prompt_response_eos", "was dropped"),
    WrongAnswer("tuples after truncation", KATA, CUT,
                "input_ids, labels = tuple(input_ids[:max_length]), tuple(labels[:max_length])",
                "test_max_length_keeps_the_first_tokens", "expected a list of ints"),
    WrongAnswer("collate pads the examples' own lists", KATA, ROWS,
                "[example[key].extend([value] * (longest - len(example[key]))) or example[key] for example in examples]",
                "test_collate_pads_on_the_right_to_the_longest", "collate changed the examples"),
    # round 2 (red2/f): a cache keyed by vocabulary size, a reused collate buffer, normalized prompts, eos-only responses
    WrongAnswer("encodings cached by tokenizer class, len and text", KATA, ENCODE,
                "key = (type(tokenizer).__name__, len(tokenizer), text)\n    "
                'return list(_CACHE.setdefault(key, tokenizer(text, add_special_tokens=False)["input_ids"]))',
                "test_input_ids_are_bos_prompt_response_eos", "input_ids differ",
                more_edits=(("IGNORE_INDEX = -100", "_CACHE: dict = {}\nIGNORE_INDEX = -100"),)),
    WrongAnswer("collate writes into one buffer reused across calls", KATA, "    return {\n        key: torch.tensor(",
                "    return {\n        key: _BUFFER.setdefault(key, torch.empty(64, 512, dtype=torch.long))"
                "[: len(examples), :longest].copy_(torch.tensor(",
                "test_collate_pads_on_the_right_to_the_longest", "never a buffer reused",
                more_edits=(("dtype=torch.long\n        )", "dtype=torch.long\n        ))"),
                            ("IGNORE_INDEX = -100", "_BUFFER: dict = {}\nIGNORE_INDEX = -100"))),
    WrongAnswer("prompt normalized to NFC", KATA, "    if input:\n",
                "    instruction, input = (__import__('unicodedata').normalize('NFC', t) for t in (instruction, input))\n"
                "    if input:\n",
                "test_format_prompt_follows_the_template", "no Unicode or line-end normalizing"),
    WrongAnswer("prompt line ends normalized to \\n", KATA, "    if input:\n",
                "    instruction, input = (t.replace('\\r\\n', '\\n').replace('\\r', '\\n') for t in (instruction, input))\n"
                "    if input:\n",
                "test_format_prompt_follows_the_template", "no Unicode or line-end normalizing"),
    WrongAnswer("ValueError when an empty output keeps only eos", KATA, CHECK,
                "if max_length <= len(prompt_ids) or not output:",
                "test_max_length_keeps_the_first_tokens", "raise only when no response token remains"),
    # round 3 (red3/w-ft): a cache keyed by the special ids too, an eos id of 0 taken for none
    WrongAnswer("encodings cached by len, bos and eos ids and text", KATA, ENCODE,
                "key = (len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, text)\n    "
                'return list(_CACHE.setdefault(key, tokenizer(text, add_special_tokens=False)["input_ids"]))',
                "test_input_ids_are_bos_prompt_response_eos", "input_ids differ",
                more_edits=(("IGNORE_INDEX = -100", "_CACHE: dict = {}\nIGNORE_INDEX = -100"),)),
    WrongAnswer("eos appended only when its id is truthy", KATA, RESPONSE,
                "response_ids = _encode(tokenizer, output) + ([tokenizer.eos_token_id] if tokenizer.eos_token_id else [])",
                "test_input_ids_are_bos_prompt_response_eos", "here it is 0"),
    # The stub's signature: a caller passes its parameters by name or by position (one check for them all).
    WrongAnswer("collate's pad_token_id renamed pad_id", KATA, 'pad_token_id: int) -> dict[str, torch.Tensor]:',
                'pad_id: int) -> dict[str, torch.Tensor]:',
                "test_takes_the_stubs_parameters", 'has no parameter `pad_token_id` (renamed `pad_id`?)',
                more_edits=(("\"input_ids\": pad_token_id,", "\"input_ids\": pad_id,"),)),
    WrongAnswer("build_example's max_length keyword-only", KATA, 'output: str, max_length: int | None = None',
                'output: str, *, max_length: int | None = None',
                "test_takes_the_stubs_parameters", 'takes `max_length` keyword-only'),
    WrongAnswer("format_prompt's input without a default", KATA, 'def format_prompt(instruction: str, input: str = "")',
                'def format_prompt(instruction: str, input: str)',
                "test_takes_the_stubs_parameters", 'gives `input` no default'),
    # round 4 (red4/w-ft): room for bos kept without a bos, a cached example, pad tokens dropped, a buffer per shape
    WrongAnswer("truncation leaves room for bos even without one", KATA, CUT,
                "cut = max_length if tokenizer.bos_token_id is not None else max_length - 1  # room for bos\n        "
                "input_ids, labels = input_ids[:cut], labels[:cut]",
                "test_max_length_keeps_the_first_tokens", "keep the first max_length items"),
    WrongAnswer("examples cached with functools.lru_cache", KATA, "def build_example(",
                "@__import__('functools').lru_cache(maxsize=None)\ndef build_example(",
                "test_returns_three_lists_of_ints_of_equal_length", "return new lists at every call"),
    WrongAnswer("pad tokens dropped from the output", KATA, RESPONSE,
                "pad = tokenizer.pad_token_id\n    response_ids = [t for t in _encode(tokenizer, output) "
                "if pad == tokenizer.eos_token_id or t != pad] + [tokenizer.eos_token_id]",
                "test_input_ids_are_bos_prompt_response_eos", "pad tokens"),
    WrongAnswer("collate reuses buffers keyed by shape and pad", KATA, "    return {\n        key: torch.tensor(",
                "    return {\n        key: _BUFFER.setdefault((key, len(examples), longest, pad_token_id), "
                "torch.empty(len(examples), longest, dtype=torch.long)).copy_(torch.tensor(",
                "test_collate_pads_on_the_right_to_the_longest", "never a buffer reused",
                more_edits=(("dtype=torch.long\n        )", "dtype=torch.long\n        ))"),
                            ("IGNORE_INDEX = -100", "_BUFFER: dict = {}\nIGNORE_INDEX = -100"))),
    WrongAnswer("no ValueError when an empty output's eos is cut", KATA, CHECK,
                "if output and max_length <= len(prompt_ids):",
                "test_max_length_that_leaves_no_response_token_raises", "raised nothing"),
    # round 7 (red7/w-a): a cache per tokenizer object, the Alpaca guard, a mask by the pad id, uint16 ids, a keyword-only
    # wrapper, masking through the first marker, a cached mask tensor, normalized outputs, a blank input taken for none
    WrongAnswer("encodings cached per tokenizer object", KATA, ENCODE,
                "per_tokenizer = _CACHE.setdefault(tokenizer, {})\n    if text not in per_tokenizer:\n        "
                'per_tokenizer[text] = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])\n    '
                "return list(per_tokenizer[text])",
                "test_a_tokenizer_edited_between_calls_gives_its_new_ids", "edited",
                more_edits=(("IGNORE_INDEX = -100",
                             "_CACHE = __import__('weakref').WeakKeyDictionary()\nIGNORE_INDEX = -100"),)),
    WrongAnswer("bos + prompt counted with the tokenizer's own special tokens", KATA, CHECK,
                "if max_length <= len(tokenizer(format_prompt(instruction, input))['input_ids']):",
                "test_max_length_that_leaves_no_response_token_raises", "raised nothing"),
    WrongAnswer("attention mask 0 where the id is the pad id", KATA, MASK,
                '"attention_mask": [int(i != tokenizer.pad_token_id) for i in input_ids]}',
                "test_attention_mask_is_all_ones", "the pad id"),
    WrongAnswer("token ids kept as uint16", KATA, "dtype=torch.long\n        )",
                'dtype=torch.long\n        ).to(torch.uint16 if key == "input_ids" else torch.long).long()',
                "test_collate_pads_on_the_right_to_the_longest", "2**16"),
    WrongAnswer("max_length keyword-only behind functools.wraps", KATA, "def build_example(",
                "def _validated(fn):\n    @__import__('functools').wraps(fn)\n"
                "    def wrapper(tokenizer, instruction, input, output, *, max_length=None):\n"
                "        return fn(tokenizer, instruction, input, output, max_length)\n\n    return wrapper\n\n\n"
                "@_validated\ndef build_example(",
                "test_every_parameter_by_position_and_by_keyword", "by position"),
    WrongAnswer("labels masked through the first [/INST] in the ids", KATA, LABELS,
                'marker = _encode(tokenizer, " [/INST]")\n    start = next(i + len(marker) + 1 for i in range(len(input_ids)) '
                "if input_ids[i : i + len(marker)] == marker)\n    labels = [IGNORE_INDEX] * start + input_ids[start:]",
                "test_labels_mask_bos_and_the_prompt_and_nothing_else", "not found by searching"),
    WrongAnswer("collate's attention mask cached by the lengths", KATA, "    return {\n        key: torch.tensor(",
                "    batch = {\n        key: torch.tensor(",
                "test_collate_pads_on_the_right_to_the_longest", "share memory",
                more_edits=(("        for key, value in padding.items()\n    }",
                             "        for key, value in padding.items()\n    }\n"
                             "    lengths = tuple(len(example['input_ids']) for example in examples)\n"
                             "    batch['attention_mask'] = _MASKS.setdefault(lengths, batch['attention_mask'])\n"
                             "    return batch"),
                            ("IGNORE_INDEX = -100", "_MASKS: dict = {}\nIGNORE_INDEX = -100"))),
    WrongAnswer("output line ends normalized to \\n", KATA, RESPONSE,
                "response_ids = [*_encode(tokenizer, output.replace('\\r\\n', '\\n').replace('\\r', '\\n')), "
                "tokenizer.eos_token_id]",
                "test_input_ids_are_bos_prompt_response_eos", "as given"),
    WrongAnswer("a blank input takes the short template", KATA, "if input:", "if input.strip():",
                "test_format_prompt_follows_the_template", "a blank input"),
    # round 8 (red8/w-a): inference tensors, a collate memo by content, a memo keyed by len, a rebuilt mask, max_length < 1
    WrongAnswer("collate under torch.inference_mode()", KATA, "def collate(", "@torch.inference_mode()\ndef collate(",
                "test_collate_pads_on_the_right_to_the_longest", "inference_mode"),
    WrongAnswer("collate memoized by the examples' contents", KATA, "    return {\n        key: torch.tensor(",
                "    memo_key = (pad_token_id, repr(examples))\n    if memo_key in _MEMO:\n        return dict(_MEMO[memo_key])\n"
                "    batch = _MEMO[memo_key] = {\n        key: torch.tensor(",
                "test_collate_pads_on_the_right_to_the_longest", "the same examples",
                more_edits=(("        for key, value in padding.items()\n    }",
                             "        for key, value in padding.items()\n    }\n    return dict(batch)"),
                            ("IGNORE_INDEX = -100", "_MEMO: dict = {}\nIGNORE_INDEX = -100"))),
    WrongAnswer("examples memoized per tokenizer by texts and len", KATA, "def build_example(",
                "_MEMO = __import__('weakref').WeakKeyDictionary()\n\n\ndef build_example(*args, **kwargs):\n"
                "    names = ('tokenizer', 'instruction', 'input', 'output', 'max_length')\n"
                "    given = {**dict(zip(names, args)), **kwargs}\n"
                "    memo = _MEMO.setdefault(given['tokenizer'], {})\n"
                "    key = (given['instruction'], given['input'], given['output'], given.get('max_length'), "
                "len(given['tokenizer']))\n"
                "    if key not in memo:\n        memo[key] = _build_example(**given)\n"
                "    return {k: list(v) for k, v in memo[key].items()}\n\n\ndef _build_example(",
                "test_a_tokenizer_edited_between_calls_gives_its_new_ids", "before it was edited"),
    WrongAnswer("collate rebuilds attention_mask from the lengths", KATA,
                "    return {\n        key: torch.tensor(", "    batch = {\n        key: torch.tensor(",
                "test_collate_pads_on_the_right_to_the_longest", "own attention_mask",
                more_edits=(("        for key, value in padding.items()\n    }",
                             "        for key, value in padding.items()\n    }\n"
                             "    lengths = torch.tensor([len(example['input_ids']) for example in examples])\n"
                             "    batch['attention_mask'] = (torch.arange(longest)[None, :] < lengths[:, None]).long()\n"
                             "    return batch"),)),
    WrongAnswer("ValueError only when the kept labels are all -100", KATA, RAISE,
                "if all(label == IGNORE_INDEX for label in labels[:max_length]):\n            raise ValueError(",
                "test_max_length_that_leaves_no_response_token_raises", "raised nothing"),
    WrongAnswer("special-token texts split (split_special_tokens=True)", KATA, ENCODE,
                ENCODE.replace("add_special_tokens=False", "add_special_tokens=False, split_special_tokens=True"),
                "test_input_ids_are_bos_prompt_response_eos", "split_special_tokens=True"),
    WrongAnswer("collate through a float tensor", KATA,
                "        key: torch.tensor(\n            [example[key] + [value] * (longest - len(example[key])) for example in examples], dtype=torch.long\n        )",
                "        key: torch.Tensor([example[key] + [value] * (longest - len(example[key])) for example in examples]).long()",
                "test_ids_stay_exact_under_any_default_dtype", "set_default_dtype"),
    WrongAnswer("build_example through a float tensor", KATA, INPUT_IDS + "\n    " + LABELS + "  # prompt_ids holds bos too",
                "ids = torch.Tensor(prompt_ids + response_ids)\n    masked = ids.clone()\n"
                "    masked[: len(prompt_ids)] = IGNORE_INDEX  # bos and the prompt: no loss\n"
                "    input_ids, labels = ids.long().tolist(), masked.long().tolist()",
                "test_ids_stay_exact_under_any_default_dtype", "set_default_dtype",
                more_edits=(("from typing import Any\n", "from typing import Any\n\nimport torch\n"),)),
    WrongAnswer("the template filled by str.replace", KATA,
                "    if input:\n        return " + FULL_TEMPLATE + "\n    " + SHORT_TEMPLATE,
                '    template = "[INST] {instruction}\\n{input} [/INST] " if input else "[INST] {instruction} [/INST] "\n'
                '    return template.replace("{instruction}", instruction).replace("{input}", input)',
                "test_format_prompt_follows_the_template", "str.replace"),
    WrongAnswer("no limit spelled as a huge default", KATA, "output: str, max_length: int | None = None\n",
                "output: str, max_length: int = int(1e30)\n",
                "test_very_long_prompt_or_output", "max_length=None",
                more_edits=(("    if max_length is not None:\n        if max_length <=", "    if max_length < int(1e30):\n        if max_length <="),)),
    WrongAnswer("no max_length: the tokenizer's model_max_length", KATA, "    if max_length is not None:\n        if max_length <=",
                '    if max_length is None:  # no limit given: the model\'s own, as truncation=True does\n'
                '        max_length = getattr(tokenizer, "model_max_length", None)\n'
                "        if max_length is not None and len(input_ids) <= max_length:\n            max_length = None\n"
                "    if max_length is not None:\n        if max_length <=",
                "test_very_long_prompt_or_output", "model_max_length"),
    WrongAnswer("collate capped at a context of 2048", KATA, 'longest = max(len(example["input_ids"]) for example in examples)',
                'longest = min(max(len(example["input_ids"]) for example in examples), 2048)  # the model\'s context',
                "test_collate_returns_long_tensors_of_shape_batch_by_longest", "expected (2, 3000)",
                more_edits=(("[example[key] + [value] * (longest", "[example[key][:longest] + [value] * (longest"),)),
    WrongAnswer("a padded batch call unpadded by the mask's count", KATA, PROMPT,
                "batch = tokenizer([format_prompt(instruction, input), output], add_special_tokens=False, padding=True)\n"
                "    prompt_ids, output_ids = (ids[: sum(mask)] for ids, mask in zip(batch[\"input_ids\"], batch[\"attention_mask\"]))",
                "test_input_ids_are_bos_prompt_response_eos", "with the pads-left tokenizer",
                more_edits=((RESPONSE, "response_ids = [*output_ids, tokenizer.eos_token_id]"),)),
    WrongAnswer("a padded batch call, whatever the pad token", KATA, PROMPT,
                "batch = tokenizer([format_prompt(instruction, input), output], add_special_tokens=False, padding=True)\n"
                "    prompt_ids, output_ids = ([i for i, m in zip(ids, mask) if m]\n"
                "                              for ids, mask in zip(batch[\"input_ids\"], batch[\"attention_mask\"]))",
                "test_input_ids_are_bos_prompt_response_eos", "with the no-pad tokenizer",
                more_edits=((RESPONSE, "response_ids = [*output_ids, tokenizer.eos_token_id]"),)),
    # round 13, red team B
    WrongAnswer("bos read once per tokenizer", KATA, BOS,
                'bos = tokenizer.__dict__.setdefault("_bos", tokenizer.bos_token_id)  # read once per tokenizer\n'
                "    if bos is not None:\n        prompt_ids = [bos, *prompt_ids]",
                "test_a_tokenizer_edited_between_calls_gives_its_new_ids", "a bos read once per tokenizer"),
    # round 14, red team B
    WrongAnswer("encodings memoized per tokenizer, keyed by len, bos, eos and text", KATA, ENCODE,
                "key = (len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, text)\n    "
                "memo = _MEMO.setdefault(tokenizer, {})  # weakly held: a new tokenizer starts empty\n    "
                "if key not in memo:\n        "
                'memo[key] = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])\n    '
                "return list(memo[key])",
                "test_a_tokenizer_edited_between_calls_gives_its_new_ids", "and the bos and eos ids: a cache keyed by them",
                more_edits=(("IGNORE_INDEX = -100",
                             "_MEMO = __import__('weakref').WeakKeyDictionary()\nIGNORE_INDEX = -100"),)),
    # round 15, red team B
    WrongAnswer("max_length capped at the tokenizer's model_max_length", KATA, CHECK,
                "max_length = min(max_length, getattr(tokenizer, \"model_max_length\", max_length))  # the context\n"
                "        " + CHECK,
                "test_max_length_keeps_the_first_tokens", "stops at the tokenizer's model_max_length"),
    WrongAnswer("collate's labels filled in from input_ids", KATA, ROWS,
                ROWS.replace("example[key] + [value]",
                             "(example[key] if key != \"labels\" else [IGNORE_INDEX if label == IGNORE_INDEX else i "
                             "for label, i in zip(example[\"labels\"], example[\"input_ids\"])]) + [value]"),
                "test_collate_pads_on_the_right_to_the_longest", "filled in from input_ids"),
    # round 16, red team B
    WrongAnswer("collate trims the trailing columns no row attends to", KATA, "    return {\n        key: torch.tensor(",
                "    batch = {\n        key: torch.tensor(",
                "test_collate_pads_on_the_right_to_the_longest", "trimmed",
                more_edits=(("        for key, value in padding.items()\n    }\n",
                             "        for key, value in padding.items()\n    }\n"
                             "    # no row attends to the trailing columns: padding everywhere, trim them (less compute)\n"
                             "    attended = batch[\"attention_mask\"].bool().any(0).nonzero()\n"
                             "    width = int(attended.max()) + 1 if attended.numel() else longest\n"
                             "    return {key: value[:, :width].clone() for key, value in batch.items()}\n"),)),
    # round 18, red team B: sizes far below real ones (a long batch, a large batch, a long prompt)
    WrongAnswer("collate rounds a longest over 128 up to a multiple of 8", KATA,
                'longest = max(len(example["input_ids"]) for example in examples)',
                'longest = max(len(example["input_ids"]) for example in examples)\n'
                "    if longest > 128:  # long batches: tensor-core friendly shapes\n"
                "        longest = (longest + 7) // 8 * 8",
                "test_collate_returns_long_tensors_of_shape_batch_by_longest", "padded past the longest example"),
    WrongAnswer("collate rebuilds the mask from the lengths for 8+ examples", KATA, ROWS,
                ROWS.replace("example[key] + [value]",
                             "(example[key] if key != \"attention_mask\" or len(examples) < 8 "
                             "else [1] * len(example[key])) + [value]"),
                "test_collate_pads_on_the_right_to_the_longest", "zeros"),
    WrongAnswer("collate capped at a context of 4096", KATA, 'longest = max(len(example["input_ids"]) for example in examples)',
                'longest = min(max(len(example["input_ids"]) for example in examples), 4096)  # Llama-2\'s context',
                "test_collate_returns_long_tensors_of_shape_batch_by_longest", "no cap at a context length",
                more_edits=(("[example[key] + [value] * (longest", "[example[key][:longest] + [value] * (longest"),)),
    WrongAnswer("a long prompt keeps its last 1024 tokens", KATA, PROMPT,
                PROMPT + "[-1024:]  # the [/INST] end, room for the response",
                "test_very_long_prompt_or_output", "the prompt was cut to 1024"),
    # round 19, red team B: ids of a real vocabulary (past 2**16)
    WrongAnswer("the ids round-tripped through uint16", KATA, LABELS,
                LABELS + "\n    # token ids kept compactly as uint16, as nanoGPT's data pipeline does (GPT-2's 50,257 ids fit)\n"
                "    input_ids = np.asarray(input_ids, dtype=np.int64).astype(np.uint16).astype(np.int64).tolist()\n"
                "    labels = [IGNORE_INDEX if label == IGNORE_INDEX else i for label, i in zip(labels, input_ids)]",
                "test_input_ids_are_bos_prompt_response_eos", "modulo 2**16",
                more_edits=(("import torch\n", "import numpy as np\nimport torch\n"),)),
]  # fmt: skip
