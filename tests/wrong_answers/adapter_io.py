"""Wrong answers to the `adapter_io` kata."""

from tests.wrong_answers import WrongAnswer

KATA = "adapter_io"
SAVE_A = 'tensors[f"{PREFIX}{name}.lora_A.weight"] = A.detach().contiguous()'
SAVE_B = 'tensors[f"{PREFIX}{name}.lora_B.weight"] = B.detach().contiguous()'
ONE_SETTING = "    ((r, alpha),) = settings\n"
UNPLACED = "    if unplaced:\n        raise ValueError"
MISSING = "    if missing:\n        raise ValueError"
SHAPES = "        if tuple(tensors[key].shape) != shape:\n            raise ValueError"
APPLY = (
    '    apply_lora_gpt2(model, list(targets), r=r, alpha=alpha, dropout=float(config.get("lora_dropout") or 0.0))\n'
)
COPY_B = '            B.copy_(tensors[f"{PREFIX}{name}.lora_B.weight"])\n'
CHECK = "    _check_config(config)\n"
DROPOUT = 'dropout=float(config.get("lora_dropout") or 0.0)'

WRONG_ANSWERS = [
    WrongAnswer("keys without the base_model.model. prefix", KATA, SAVE_A, SAVE_A.replace("{PREFIX}", ""),
                "test_saved_keys_and_shapes_are_what_peft_writes", "lack the prefix base_model.model.",
                more_edits=((SAVE_B, SAVE_B.replace("{PREFIX}", "")),)),
    WrongAnswer("keys without the prefix, loaded by peft as nothing", KATA, SAVE_A, SAVE_A.replace("{PREFIX}", ""),
                "test_peft_loads_the_saved_adapter_and_computes_the_same", "peft loaded no factor",
                more_edits=((SAVE_B, SAVE_B.replace("{PREFIX}", "")),)),
    WrongAnswer("the adapter name left in the keys", KATA, SAVE_A, SAVE_A.replace(".lora_A.weight", ".lora_A.default.weight"),
                "test_saved_keys_and_shapes_are_what_peft_writes", "adapter name is left in the keys",
                more_edits=((SAVE_B, SAVE_B.replace(".lora_B.weight", ".lora_B.default.weight")),)),
    WrongAnswer("A and B swapped", KATA, SAVE_A, SAVE_A.replace("= A.", "= B."),
                "test_saved_tensors_are_exactly_the_factors", "A and B swapped",
                more_edits=((SAVE_B, SAVE_B.replace("= B.", "= A.")),)),
    WrongAnswer("A saved in the (in, r) layout", KATA, SAVE_A, SAVE_A.replace("A.detach()", "A.detach().T"),
                "test_peft_loads_the_saved_adapter_and_computes_the_same", "lora_A is (r, in), lora_B (out, r)"),
    WrongAnswer("scaling saved instead of alpha", KATA, '"lora_alpha": alpha,', '"lora_alpha": alpha / r,',
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "that is the scaling alpha / r"),
    WrongAnswer("the base weight saved too", KATA, SAVE_B,
                SAVE_B + '\n        tensors[f"{PREFIX}{name}.weight"] = next(m for m in layer.modules() if m is not layer).weight.detach()',
                "test_saved_keys_and_shapes_are_what_peft_writes", "more than the adapters"),
    WrongAnswer("short target names", KATA, '"target_modules": sorted(layers),',
                '"target_modules": sorted({name.rpartition(".")[2] for name in layers}),',
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "list their qualified names"),
    WrongAnswer("task_type CAUSAL_LM", KATA, '"task_type": None,', '"task_type": "CAUSAL_LM",',
                "test_peft_loads_the_saved_adapter_and_computes_the_same", "leave task_type out"),
    WrongAnswer("fan_in_fan_out always false", KATA,
                '"fan_in_fan_out": any(isinstance(layer, LoRAConv1D) for layer in layers.values()),', '"fan_in_fan_out": False,',
                "test_gpt2_adapters_are_saved_fan_in_fan_out", "expected true"),
    WrongAnswer("bf16 factors saved as float32", KATA, SAVE_A, SAVE_A.replace(".contiguous()", ".float().contiguous()"),
                "test_save_then_load_is_bit_exact", "save them in their dtype",
                more_edits=((SAVE_B, SAVE_B.replace(".contiguous()", ".float().contiguous()")),)),
    WrongAnswer("an empty adapter saved", KATA, "    if not layers:\n        raise ValueError", "    if False:\n        raise ValueError",
                "test_save_refuses_a_model_without_adapters", "raised nothing",
                more_edits=((ONE_SETTING, "    r, alpha = next(iter(settings), (8, 16.0))\n"),)),
    WrongAnswer("r and alpha of the first layer", KATA, "    if len(settings) > 1:\n        raise ValueError", "    if False:\n        raise ValueError",
                "test_save_refuses_adapters_that_disagree", "raised nothing",
                more_edits=((ONE_SETTING, "    r, alpha = next(iter(layers.values())).r, float(next(iter(layers.values())).alpha)\n"),)),
    WrongAnswer("no metadata", KATA, 'save_file(tensors, directory / WEIGHTS, metadata={"format": "pt"})',
                "save_file(tensors, directory / WEIGHTS)", "test_saved_keys_and_shapes_are_what_peft_writes", "metadata"),
    WrongAnswer("save returns None", KATA, "    return directory\n", "    return None\n",
                "test_save_returns_the_directory_it_creates", "returned None"),
    WrongAnswer("the directory not created", KATA, "    directory.mkdir(parents=True, exist_ok=True)\n", "",
                "test_save_returns_the_directory_it_creates", "FileNotFoundError"),
    WrongAnswer("extra tensors ignored", KATA, UNPLACED, "    if False:\n        raise ValueError",
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "accepted a file with a base weight too"),
    WrongAnswer("a partial load accepted", KATA, MISSING, "    if False:\n        raise ValueError",
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "accepted a file with a lora_B missing",
                more_edits=((COPY_B, COPY_B.replace("            B.", '            if f"{PREFIX}{name}.lora_B.weight" in tensors:\n                B.')),
                            ("    for key, shape in expected.items():\n",
                             "    for key, shape in [(k, s) for k, s in expected.items() if k in tensors]:\n"))),
    WrongAnswer("shapes not checked", KATA, SHAPES, "        if False:\n            raise ValueError",
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "RuntimeError"),
    WrongAnswer("the model adapted before the file is checked", KATA, APPLY, "",
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "check the whole file before touching",
                more_edits=(("    expected = {}\n", APPLY + "    expected = {}\n"),)),
    WrongAnswer("peft_type not checked", KATA, '    if config.get("peft_type") != "LORA":\n        raise ValueError',
                '    if False:\n        raise ValueError',
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "accepted a file with peft_type LOHA"),
    WrongAnswer("options not checked", KATA, CHECK, "",
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "accepted a file with use_dora"),
    WrongAnswer("bias not checked", KATA, '    if config.get("bias", "none") != "none":\n        raise ValueError',
                '    if False:\n        raise ValueError',
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "accepted a file with bias all"),
    WrongAnswer("a regex target read as a list of characters", KATA,
                "        if isinstance(target_modules, str):\n            return re.fullmatch(target_modules, name) is not None\n", "",
                "test_loads_a_regex_target_string", "no layer of the model matches"),
    WrongAnswer("B never loaded", KATA, COPY_B, "",
                "test_loads_what_peft_saves_and_computes_what_peft_does", "the outputs differ from peft's"),
    WrongAnswer("load returns None", KATA, "            B.copy_(tensors[f\"{PREFIX}{name}.lora_B.weight\"])\n    return model\n",
                "            B.copy_(tensors[f\"{PREFIX}{name}.lora_B.weight\"])\n    return None\n",
                "test_loads_what_peft_saves_and_computes_what_peft_does", "load_adapter returned None"),
    # Red-team round 1, the habits behind them: targets where peft's matching parts from near misses, the config's
    # optional keys, and every corruption of one kind only, A and B alike.
    WrongAnswer("a regex target matched with re.search", KATA, "return re.fullmatch(target_modules, name) is not None",
                "return re.search(target_modules, name) is not None",
                "test_loads_a_regex_target_string", "not re.search"),
    WrongAnswer("list targets matched by a bare endswith", KATA,
                'return any(name == t or name.endswith("." + t) for t in target_modules)',
                "return any(name.endswith(t) for t in target_modules)",
                "test_loads_short_target_names_as_peft_matches_them", "not a bare endswith"),
    WrongAnswer("the config's lora_dropout ignored", KATA, DROPOUT, "dropout=0.0",
                "test_uses_the_configs_lora_dropout_0_when_absent", "give each layer the config's lora_dropout"),
    WrongAnswer("lora_dropout required in the config", KATA, DROPOUT, 'dropout=float(config["lora_dropout"])',
                "test_uses_the_configs_lora_dropout_0_when_absent", "raised KeyError 'lora_dropout'"),
    WrongAnswer("keys without the prefix dropped unread", KATA, "tensors = load_file(directory / WEIGHTS)",
                "tensors = {k: v for k, v in load_file(directory / WEIGHTS).items() if k.startswith(PREFIX)}",
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "accepted a file with a key without the prefix"),
    WrongAnswer("only lora_B looked for", KATA, "missing = sorted(expected.keys() - tensors.keys())",
                'missing = sorted(k for k in expected.keys() - tensors.keys() if k.endswith("lora_B.weight"))',
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "a lora_A missing: load_adapter raised KeyError"),
    WrongAnswer("only lora_A's shape checked", KATA, "if tuple(tensors[key].shape) != shape:",
                'if key.endswith("lora_A.weight") and tuple(tensors[key].shape) != shape:',
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "a transposed lora_B: load_adapter raised"),
    WrongAnswer("only bias 'all' refused", KATA, 'if config.get("bias", "none") != "none":', 'if config.get("bias") == "all":',
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "accepted a file with bias lora_only"),
]  # fmt: skip
