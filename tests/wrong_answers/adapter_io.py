"""Wrong answers to the `adapter_io` kata."""

from tests.wrong_answers import WrongAnswer

KATA = "adapter_io"
SAVE_A = 'tensors[f"{PREFIX}{name}.lora_A.weight"] = A.detach().contiguous()'
SAVE_B = 'tensors[f"{PREFIX}{name}.lora_B.weight"] = B.detach().contiguous()'
ONE_SETTING = "    ((r, alpha),) = settings\n"
UNPLACED = "    if unplaced:\n        raise ValueError"
MISSING = "    if missing:\n        raise ValueError"
SHAPES = "        if tuple(tensors[key].shape) != shape:\n            raise ValueError"
APPLY = '    _wrap(model, targets, r=r, alpha=alpha, dropout=float(config.get("lora_dropout") or 0.0))\n'
COPY_B = '            B.copy_(tensors[f"{PREFIX}{name}.lora_B.weight"])\n'
CHECK = "    _check_config(config)\n"
HONOUR_ALPHA = (  # a per-layer lora_alpha set on each adapted layer whose name a key matches ({match}), no break
    "    for name in targets:\n"
    '        for key, a in (config.get("alpha_pattern") or {{}}).items():\n'
    "            if {match}:\n"
    "                layer = model.get_submodule(name)\n"
    "                layer.alpha, layer.scaling = a, a / r{then}\n"
    "    return model\n"
)
DROPOUT = 'dropout=float(config.get("lora_dropout") or 0.0)'
ADAPTERS = "ADAPTERS = (LoRALinear, LoRAConv1D)"

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
    WrongAnswer("short target names", KATA, '"target_modules": _targets(model, sorted(layers)),',
                '"target_modules": sorted({name.rpartition(".")[2] for name in layers}),',
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "list their qualified names"),
    WrongAnswer("task_type CAUSAL_LM", KATA, '"task_type": None,', '"task_type": "CAUSAL_LM",',
                "test_peft_loads_the_saved_adapter_and_computes_the_same", "leave task_type out"),
    WrongAnswer("fan_in_fan_out always false", KATA,
                '"fan_in_fan_out": any(isinstance(layer, LoRAConv1D) for layer in layers.values()),', '"fan_in_fan_out": False,',
                "test_gpt2_adapters_are_saved_fan_in_fan_out", "expected true"),
    WrongAnswer("bf16 factors saved as float32", KATA, SAVE_A, SAVE_A.replace(".contiguous()", ".float().contiguous()"),
                "test_save_then_load_is_bit_exact", "alike, in their dtype",
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
                "test_uses_the_configs_lora_dropout_0_when_absent", "alike, the config's lora_dropout"),
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
    # Red-team round 2: a file checked against the config, not the config against the file.
    WrongAnswer("only the layers the file holds tensors for adapted", KATA,
                'targets = _targeted(model, config["target_modules"])',
                'targets = {n: m for n, m in _targeted(model, config["target_modules"]).items() if any(k.startswith(f"{PREFIX}{n}.lora_") for k in tensors)}',
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "accepted a file with both factors of a layer missing"),
    WrongAnswer("lora pairs of untargeted layers skipped", KATA, "unplaced = sorted(tensors.keys() - expected.keys())",
                'unplaced = sorted(k for k in tensors.keys() - expected.keys() if not k.endswith((".lora_A.weight", ".lora_B.weight")))',
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "accepted a file with a lora pair for an untargeted layer"),
    WrongAnswer("peft_type compared case-blind", KATA, 'config.get("peft_type") != "LORA"',
                'str(config.get("peft_type")).upper() != "LORA"',
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "accepted a file with peft_type lora, lowercase"),
    WrongAnswer("factors replaced by the file's tensors", KATA,
                '            A.copy_(tensors[f"{PREFIX}{name}.lora_A.weight"])\n            B.copy_(tensors[f"{PREFIX}{name}.lora_B.weight"])',
                '            layer = model.get_submodule(name)\n            layer.lora_A = nn.Parameter(tensors[f"{PREFIX}{name}.lora_A.weight"])\n            layer.lora_B = nn.Parameter(tensors[f"{PREFIX}{name}.lora_B.weight"])',
                "test_a_float64_model_loads_a_float32_file_in_float64", "holds ['torch.float32'"),
    WrongAnswer("adapters compared by alpha / r alone", KATA, "    if len(settings) > 1:\n",
                "    if len({alpha / r for r, alpha in settings}) > 1:\n",
                "test_save_refuses_adapters_that_disagree", "different r and alpha raised nothing",
                more_edits=(("    ((r, alpha),) = settings", "    r, alpha = min(settings)"),)),
    # Red-team round 3: a GPT-2 with both kinds of layer, the rank the config gives.
    WrongAnswer("the layer kind picked by fan_in_fan_out", KATA, 'targets = _targeted(model, config["target_modules"])',
                'targets = {n: m for n, m in _targeted(model, config["target_modules"]).items() if isinstance(m, nn.Linear) != bool(config.get("fan_in_fan_out"))}',
                "test_save_then_load_is_bit_exact", "gpt2 torch.float32, save_adapter's own files: load_adapter refused them"),
    WrongAnswer("the rank read off the tensors", KATA, 'r, alpha = int(config["r"]), float(config["lora_alpha"])',
                'r, alpha = next(t.shape[0] for k, t in tensors.items() if k.endswith(".lora_A.weight")), float(config["lora_alpha"])',
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "accepted a file with a config's r other than"),
    WrongAnswer("a loaded Conv1D without dropout", KATA, APPLY,
                APPLY + "    for layer in model.modules():\n        if isinstance(layer, LoRAConv1D):\n            layer.dropout = nn.Identity()\n",
                "test_uses_the_configs_lora_dropout_0_when_absent", "transformer.h.0.attn.c_attn's adapter (a LoRAConv1D) zeroed 0"),
    WrongAnswer("only the Conv1D adapters of a GPT-2 saved", KATA, "    layers = adapters(model)\n",
                "    layers = adapters(model)\n    layers = {n: m for n, m in layers.items() if isinstance(m, LoRAConv1D)} or layers\n",
                "test_saved_keys_and_shapes_are_what_peft_writes", "missing ['base_model.model.lm_head.lora_A.weight'"),
    # Red-team round 3 (w-g): an alpha that is not whole, a str directory, a model off the CPU, the config's keys
    # required as the spec says, a str target read as peft reads it.
    WrongAnswer("alpha saved as an int", KATA, '"lora_alpha": alpha,', '"lora_alpha": int(alpha),',
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "lora_alpha is 6 in the config"),
    WrongAnswer("a str directory not loaded", KATA, "    directory = Path(directory)\n    config = json.loads", "    config = json.loads",
                "test_save_then_load_is_bit_exact", "raised TypeError"),
    WrongAnswer("loaded factors left where the file was read", KATA,
                '            A.copy_(tensors[f"{PREFIX}{name}.lora_A.weight"])\n            B.copy_(tensors[f"{PREFIX}{name}.lora_B.weight"])',
                '            layer = model.get_submodule(name)\n'
                '            layer.lora_A = nn.Parameter(tensors[f"{PREFIX}{name}.lora_A.weight"].to(layer.lora_A.dtype))\n'
                '            layer.lora_B = nn.Parameter(tensors[f"{PREFIX}{name}.lora_B.weight"].to(layer.lora_B.dtype))',
                "test_loads_the_factors_where_the_layers_are", "on ['cpu']"),
    WrongAnswer("a missing peft_type taken for LORA", KATA, 'if config.get("peft_type") != "LORA":',
                'if config.get("peft_type", "LORA") != "LORA":',
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "accepted a file with no peft_type"),
    WrongAnswer("a str target also matched as a name", KATA, "return re.fullmatch(target_modules, name) is not None",
                'return re.fullmatch(target_modules, name) is not None or name.endswith("." + target_modules)',
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "accepted a file with a str target"),
    WrongAnswer("bias left out of the config", KATA, '        "bias": "none",\n', "",
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "the config has no bias key"),
    # The stub's signature: a caller passes its parameters by name or by position (one check for them all).
    WrongAnswer("save_adapter's directory named save_directory (peft's)", KATA, 'def save_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> Path:',
                'def save_adapter(model: nn.Module, save_directory: str | os.PathLike[str]) -> Path:\n    directory = save_directory',
                "test_takes_the_stubs_parameters", 'has no parameter `directory` (renamed `save_directory`?)'),
    # Red-team round 4 (w-g): an alternation under a "$", float64 and fp16 round trips, one factor's rank, a dot in a
    # list entry, a model's own layer classes, the loaded factors left to train.
    WrongAnswer("a regex target matched with re.match and a $", KATA, "return re.fullmatch(target_modules, name) is not None",
                'return re.match(target_modules + "$", name) is not None',
                "test_loads_a_regex_target_string", "nor re.match(pattern + '$')"),
    WrongAnswer("the file's tensors read as float32", KATA, "    tensors = load_file(directory / WEIGHTS)\n",
                "    tensors = {key: value.float() for key, value in load_file(directory / WEIGHTS).items()}\n",
                "test_save_then_load_is_bit_exact", "not bit for bit the saved one"),
    WrongAnswer("lora_B's rank unchecked", KATA, SHAPES,
                '        if tuple(tensors[key].shape)[: 1 if key.endswith("lora_B.weight") else 2] != shape[: 1 if key.endswith("lora_B.weight") else 2]:\n'
                "            raise ValueError",
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "accepted a file with a lora_B of rank 1"),
    WrongAnswer("lora_A's rank unchecked", KATA, SHAPES,
                '        if tuple(tensors[key].shape)[1 if key.endswith("lora_A.weight") else 0 :] != shape[1 if key.endswith("lora_A.weight") else 0 :]:\n'
                "            raise ValueError",
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "a file with a lora_A of rank 2: load_adapter raised RuntimeError"),
    WrongAnswer("list entries read as regular expressions", KATA,
                'return any(name == t or name.endswith("." + t) for t in target_modules)',
                'return any(re.search(rf"(^|\\.){t}$", name) for t in target_modules)',
                "test_loads_short_target_names_as_peft_matches_them", "layers.0.attn.out_proj"),
    WrongAnswer("layers told by their exact type", KATA, "isinstance(m, (nn.Linear, Conv1D)) and targeted(name)",
                "type(m) in (nn.Linear, Conv1D) and targeted(name)",
                "test_loads_what_peft_saves_and_computes_what_peft_does", "told by isinstance, not type(m)"),
    WrongAnswer("the loaded factors frozen, as for inference", KATA, COPY_B,
                COPY_B + "            model.get_submodule(name).requires_grad_(False)\n",
                "test_the_loaded_factors_train", "the loaded factors are frozen"),
    # Red-team round 5 (w-c): a Conv1D layer in the bad files, a bf16 / fp16 GPT-2 round trip, subclassed adapters.
    WrongAnswer("Conv1D layers spared the shape check", KATA, "if tuple(tensors[key].shape) != shape:",
                "if isinstance(targets[key.removeprefix(PREFIX).rsplit('.', 2)[0]], nn.Linear) and tuple(tensors[key].shape) != shape:",
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "gpt2: load_adapter accepted a file with a lora_B of rank 1"),
    WrongAnswer("LoRAConv1D factors saved in float32", KATA, SAVE_A,
                SAVE_A.replace("A.detach()", "(A.detach().float() if isinstance(layer, LoRAConv1D) else A.detach())"),
                "test_save_then_load_is_bit_exact", "gpt2: the file holds ['torch.bfloat16', 'torch.float32']",
                more_edits=((SAVE_B, SAVE_B.replace("B.detach()", "(B.detach().float() if isinstance(layer, LoRAConv1D) else B.detach())")),)),
    WrongAnswer("adapters found by their exact type", KATA, "if isinstance(module, ADAPTERS)}", "if type(module) in ADAPTERS}",
                "test_saved_keys_and_shapes_are_what_peft_writes", "a subclass is one, tell them by isinstance"),
    WrongAnswer("factors saved as they are stored, not contiguous", KATA,
                'tensors[f"{PREFIX}{name}.lora_A.weight"] = A.detach().contiguous()',
                'tensors[f"{PREFIX}{name}.lora_A.weight"] = A.detach()',
                "test_saved_tensors_are_exactly_the_factors", "save .contiguous() copies"),
    WrongAnswer("the directory returned resolved", KATA, "    return directory\n", "    return directory.resolve()\n",
                "test_save_returns_the_directory_it_creates", "expected Path(directory) as given"),
    WrongAnswer("extra tensors checked by layer, not by key (peft's lora_B.bias dropped)", KATA,
                "unplaced = sorted(tensors.keys() - expected.keys())",
                "unplaced = sorted(k for k in tensors if not k.startswith(PREFIX) "
                "or k.removeprefix(PREFIX).rsplit('.', 2)[0] not in targets)",
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "accepted a file with a lora_B bias too"),
    WrongAnswer("peft's base_layer weight skipped as peft's own bookkeeping", KATA,
                "unplaced = sorted(tensors.keys() - expected.keys())",
                "unplaced = sorted(k for k in tensors.keys() - expected.keys() if '.base_layer.' not in k)",
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was",
                "accepted a file with a base weight too, as peft saves"),
    WrongAnswer("alpha_pattern ignored: its layers loaded with the one lora_alpha", KATA,
                'for option in ("alpha_pattern", "rank_pattern"):', 'for option in ("rank_pattern",):',
                "test_a_per_layer_pattern_is_honoured_or_refused", "never load it with one alpha and r"),
    WrongAnswer("target_modules the qualified names even where an entry matches an unadapted layer", KATA,
                '"target_modules": _targets(model, sorted(layers)),', '"target_modules": sorted(layers),',
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "a list entry also matches"),
    WrongAnswer("new layers left in train mode on an eval-mode model", KATA,
                "        model.get_submodule(name).train(training)  # a new layer", "        pass  # a new layer",
                "test_uses_the_configs_lora_dropout_0_when_absent", "are left in the other mode"),
    WrongAnswer("target_modules str of the names unescaped (a dot matches any character)", KATA,
                '    return "|".join(re.escape(name) for name in names)', '    return "|".join(names)',
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "re.escape each name"),
    WrongAnswer("alpha_pattern keys matched as plain names, not peft's regex", KATA,
                'for option in ("alpha_pattern", "rank_pattern"):', 'for option in ("rank_pattern",):',
                "test_a_per_layer_pattern_is_honoured_or_refused", "alpha_pattern, a regex key",
                more_edits=((COPY_B + "    return model\n", COPY_B + HONOUR_ALPHA.format(
                    match='name == key or name.endswith("." + key)', then="\n                break")),)),
    WrongAnswer("alpha_pattern: the last matching key wins, peft takes the first", KATA,
                'for option in ("alpha_pattern", "rank_pattern"):', 'for option in ("rank_pattern",):',
                "test_a_per_layer_pattern_is_honoured_or_refused", "alpha_pattern, two keys for one layer",
                more_edits=((COPY_B + "    return model\n", COPY_B + HONOUR_ALPHA.format(
                    match='re.match(rf"(.*\\.)?({key})$", name)', then="")),)),
    WrongAnswer("target collisions looked for among nn.Linear layers only", KATA,
                "    modules = {name for name, _ in model.named_modules()}",
                "    modules = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}",
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "a list entry also matches"),
    WrongAnswer("target collisions looked for among nn.Linear and Conv1D layers only (an nn.Embedding missed)", KATA,
                "    modules = {name for name, _ in model.named_modules()}",
                "    from transformers.pytorch_utils import Conv1D\n\n"
                "    modules = {name for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}",
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "a list entry also matches"),
    WrongAnswer("loaded adapters always put in eval mode", KATA,
                "    for name, training in modes.items():\n"
                "        model.get_submodule(name).train(training)  # a new layer takes the mode of the one it replaces",
                "    for name in modes:\n"
                "        model.get_submodule(name).eval()  # a new module starts in train mode: no dropout at inference",
                "test_loads_into_a_model_in_train_mode", "are left in the other mode"),
    WrongAnswer("load_adapter starts with model.eval(), as peft's from_pretrained leaves it", KATA,
                "    directory = Path(directory)\n    config = json.loads(",
                "    model.eval()  # as peft's from_pretrained leaves it\n    directory = Path(directory)\n"
                "    config = json.loads(",
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "its train or eval mode too"),
    WrongAnswer("load_adapter under torch.inference_mode()", KATA,
                "def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:",
                "@torch.inference_mode()  # loading copies values: no autograd needed\n"
                "def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:",
                "test_the_loaded_factors_train", "inference_mode"),
    # Red-team round 13 (team C): frozen factors, a shape wrong off the rank, pattern keys that are partial names or
    # alternations, mixed train and eval modes, a collision with another kind peft adapts, a file that cannot be read.
    WrongAnswer("the factors found by requires_grad (a frozen model saves nothing)", KATA,
                "    first, second = _outside(layer, base)\n",
                "    first, second = (p for p in layer.parameters() if p.requires_grad)\n",
                "test_saved_tensors_are_exactly_the_factors", "frozen after training"),
    WrongAnswer("only the rank dimension of a tensor checked", KATA, SHAPES,
                '        rank = 0 if key.endswith("lora_A.weight") else 1\n'
                "        if tensors[key].dim() != 2 or tensors[key].shape[rank] != shape[rank]:\n"
                "            raise ValueError",
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "a lora_A one column wide"),
    WrongAnswer("alpha_pattern keys matched by re.search(key + '$')", KATA,
                'for option in ("alpha_pattern", "rank_pattern"):', 'for option in ("rank_pattern",):',
                "test_a_per_layer_pattern_is_honoured_or_refused", "alpha_pattern, a key ending a name's last part",
                more_edits=((COPY_B + "    return model\n", COPY_B + HONOUR_ALPHA.format(
                    match='re.search(key + "$", name)', then="\n                break")),)),
    WrongAnswer("alpha_pattern keys matched as (.*\\.)? + key + $, the key ungrouped", KATA,
                'for option in ("alpha_pattern", "rank_pattern"):', 'for option in ("rank_pattern",):',
                "test_a_per_layer_pattern_is_honoured_or_refused", "alpha_pattern, an alternation",
                more_edits=((COPY_B + "    return model\n", COPY_B + HONOUR_ALPHA.format(
                    match='re.match(r"(.*\\.)?" + key + "$", name)', then="\n                break")),)),
    WrongAnswer("the model's mode put back on every module after the load", KATA,
                "    for name, training in modes.items():\n"
                "        model.get_submodule(name).train(training)  # a new layer takes the mode of the one it replaces",
                "    model.train(model.training)  # the new layers take the mode the model is in",
                "test_loads_into_a_model_in_train_mode", "modules it did not replace"),
    WrongAnswer("target collisions looked for among nn.Linear, Conv1D and nn.Embedding only (an nn.Conv2d missed)", KATA,
                "    modules = {name for name, _ in model.named_modules()}",
                "    from transformers.pytorch_utils import Conv1D\n\n"
                "    modules = {name for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D, nn.Embedding))}",
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "a list entry also matches"),
    WrongAnswer("the layers put in place first, rolled back on ValueError only (a truncated file leaves them)", KATA,
                "def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:",
                "def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:\n"
                "    before = dict(model.named_modules())\n"
                "    modes = {name: module.training for name, module in before.items()}\n"
                "    flags = {parameter: parameter.requires_grad for parameter in model.parameters()}\n"
                "    try:\n"
                "        return _load_in_place(model, directory)\n"
                "    except ValueError:  # roll back: every replaced layer put back, every mode as it was\n"
                "        for name, module in before.items():\n"
                "            if name and model.get_submodule(name) is not module:\n"
                '                parent, _, child = name.rpartition(".")\n'
                "                setattr(model.get_submodule(parent), child, module)\n"
                "        for name, module in before.items():\n"
                "            module.train(modes[name])\n"
                "        for parameter, flag in flags.items():\n"
                "            parameter.requires_grad_(flag)\n"
                "        raise\n\n\n"
                "def _load_in_place(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:",
                "test_an_unreadable_file_is_refused_and_leaves_the_model_as_it_was", "check the whole file before touching",
                more_edits=(
                    ("    tensors = load_file(directory / WEIGHTS)\n"
                     '    r, alpha = int(config["r"]), float(config["lora_alpha"])\n'
                     '    targets = _targeted(model, config["target_modules"])\n',
                     '    r, alpha = int(config["r"]), float(config["lora_alpha"])\n'
                     '    targets = _targeted(model, config["target_modules"])\n'
                     "    modes = {name: module.training for name, module in targets.items()}\n" + APPLY +
                     "    for name, training in modes.items():\n"
                     "        model.get_submodule(name).train(training)\n"
                     "    tensors = load_file(directory / WEIGHTS)\n"),
                    ("    modes = {name: module.training for name, module in targets.items()}\n" + APPLY +
                     "    for name, training in modes.items():\n"
                     "        model.get_submodule(name).train(training)  # a new layer takes the mode of the one it replaces\n",
                     ""))),
    # Round 14, team C.
    WrongAnswer("collisions looked for among modules with a weight only (a container '1.0' missed)", KATA,
                "    modules = {name for name, _ in model.named_modules()}",
                '    modules = {name for name, module in model.named_modules() if hasattr(module, "weight")}',
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "container"),
    WrongAnswer("an adapter's own modules told by startswith without the dot ('fc' hides 'fc_stack.fc')", KATA,
                '    inside = tuple(name + "." for name in names)',
                "    inside = tuple(names)",
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "also matches the unadapted 'fc_stack.fc'"),
    WrongAnswer("r and alpha compared within the first layer's kind only", KATA,
                "    settings = {(layer.r, float(layer.alpha)) for layer in layers.values()}",
                "    first = next(iter(layers.values()), None)\n"
                "    settings = {(layer.r, float(layer.alpha)) for layer in layers.values() if type(layer) is type(first)}",
                "test_save_refuses_adapters_that_disagree", "lm_head"),
    WrongAnswer("the files read once per path (a second load of a rewritten directory gets the old adapter)", KATA,
                "    tensors = load_file(directory / WEIGHTS)\n",
                "    tensors = _read_once(str(directory / WEIGHTS))\n",
                "test_a_second_load_reads_the_files_as_they_are_now", "cache",
                more_edits=(("import itertools\n", "import functools\nimport itertools\n"),
                            ("def adapters(model: nn.Module)",
                             "@functools.lru_cache(maxsize=16)\ndef _read_once(path: str) -> dict[str, torch.Tensor]:\n"
                             "    return load_file(path)\n\n\ndef adapters(model: nn.Module)"))),
    WrongAnswer("tensors placed by startswith without the dot ('fc1' claims the keys of 'fc10')", KATA,
                "    unplaced = sorted(tensors.keys() - expected.keys())",
                "    unplaced = sorted(key for key in tensors if not any(key.startswith(f\"{PREFIX}{name}\") for name in targets)\n"
                "                      or not key.endswith((\".lora_A.weight\", \".lora_B.weight\")))",
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "untargeted sibling"),
    # Round 15, team C.
    WrongAnswer("GPT-2's Conv1D adapters saved under their short names, as in peft's GPT-2 examples", KATA,
                '    inside = tuple(name + "." for name in names)',
                "    if any(isinstance(model.get_submodule(n), LoRAConv1D) for n in names):  # c_attn, c_proj, lm_head\n"
                '        return sorted({n.rpartition(".")[2] for n in names})\n'
                '    inside = tuple(name + "." for name in names)',
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "no adapted layer's qualified name"),
    WrongAnswer("the regex of the targets escaping dots only", KATA,
                '    return "|".join(re.escape(name) for name in names)',
                '    return "|".join(name.replace(".", r"\\.") for name in names)  # a dot is the only special char',
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "re.escape each name"),
    WrongAnswer("every factor saved in the first adapter's dtype (one dtype per file)", KATA,
                "    tensors = {}\n    for name, layer in layers.items():\n        A, B = factor_views(layer)\n",
                "    tensors = {}\n    dtype = factor_views(next(iter(layers.values())))[0].dtype  # one dtype per file\n"
                "    for name, layer in layers.items():\n        A, B = (f.to(dtype) for f in factor_views(layer))\n",
                "test_adapters_of_mixed_dtypes_are_saved_and_loaded_each_in_its_own", "not one dtype for the whole file"),
    # Round 16, team C.
    WrongAnswer("a list of targets checked against the unadapted modules' short names (a dotted entry's clash missed)",
                KATA, '    if not any(other.endswith("." + name) for other in others for name in names):',
                '    if not any(other.rpartition(".")[2] in names for other in others):  # another module called like one',
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "also matches the unadapted 'dec.enc.0'"),
    WrongAnswer("lora_alpha written as the scaling times r (0.9 / 3 * 3 is 0.8999999999999999)", KATA,
                "    settings = {(layer.r, float(layer.alpha)) for layer in layers.values()}",
                "    settings = {(layer.r, layer.scaling * layer.r) for layer in layers.values()}  # peft's alpha",
                "test_config_says_alpha_as_given_whatever_the_rank", "0.8999999999999999"),
    # Round 17, team C.
    WrongAnswer("load refuses a config with a task_type (save's no-task_type rule copied over to load)", KATA,
                CHECK, CHECK + '    if config.get("task_type") is not None:  # save writes none: refuse one that has it\n'
                '        raise ValueError(f"load_adapter: task_type {config[\'task_type\']!r} is not supported")\n',
                "test_loads_what_peft_saves_and_computes_what_peft_does", "loads the same files with task_type null"),
    # Round 18, team C: layers named like an adapter's parts (base, lora_A, enc.lora_head), a parameterless collision,
    # a targeted layer with a child of its own, a regex without a leading .*\., an embedding adapter's keys.
    WrongAnswer("collisions skip modules whose last name part is an adapter's part ('enc.base' missed beside 'base')",
                KATA, "    others = {name for name in modules - set(names) if not name.startswith(inside)}",
                '    others = {name for name in modules - set(names) if name.rpartition(".")[2] not in PARTS}\n'
                '    # base, A, B, lora_A, lora_B: an adapter\'s own modules',
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "also matches the unadapted 'enc.base'",
                more_edits=((ADAPTERS, ADAPTERS + '\nPARTS = ("base", "A", "B", "lora_A", "lora_B")'),)),
    WrongAnswer("targeted layers named like an adapter's parts skipped on load ('base', 'lora_A')", KATA,
                "isinstance(m, (nn.Linear, Conv1D)) and targeted(name)}",
                'isinstance(m, (nn.Linear, Conv1D)) and targeted(name)\n'
                '             and name.rpartition(".")[2] not in PARTS}  # not an adapter\'s own part',
                "test_loads_layers_named_like_adapter_parts", "refused them",
                more_edits=((ADAPTERS, ADAPTERS + '\nPARTS = ("base", "A", "B", "lora_A", "lora_B")'),)),
    WrongAnswer("file keys split at the first '.lora_' (a layer 'enc.lora_head' has no place)", KATA,
                "    unplaced = sorted(tensors.keys() - expected.keys())",
                "    unplaced = sorted(key for key in tensors if key not in expected\n"
                '                      or key.removeprefix(PREFIX).partition(".lora_")[0] not in targets)',
                "test_loads_layers_named_like_adapter_parts", "refused them"),
    WrongAnswer("the replaced layer's mode set with train(), which recurses into the base's own children", KATA,
                "    for module, training in own.items():\n        module.training = training", "    pass",
                "test_loads_layers_named_like_adapter_parts", "layer.train(mode) recurses"),
    WrongAnswer("a regex target fullmatched against base_model.model. + the name, as the file's keys spell it", KATA,
                "re.fullmatch(target_modules, name)", "re.fullmatch(target_modules, PREFIX + name)",
                "test_loads_layers_named_like_adapter_parts", "refused them"),
    WrongAnswer("an embedding adapter's keys (lora_embedding_A) left out of the load without a word", KATA,
                "    unplaced = sorted(tensors.keys() - expected.keys())",
                '    unplaced = sorted(key for key in tensors.keys() - expected.keys() if ".lora_embedding_" not in key)',
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was",
                "accepted a file with an embedding adapter's keys too"),
    WrongAnswer("collisions looked for among modules with parameters only (a ReLU '1.0' missed)", KATA,
                "    modules = {name for name, _ in model.named_modules()}",
                "    modules = {name for name, module in model.named_modules() if any(True for _ in module.parameters())}",
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "(a ReLU)"),
    WrongAnswer("the targeted layers wrapped by apply_lora_gpt2, which matches their names by suffix too", KATA,
                APPLY, APPLY.replace("_wrap(model, targets,", "apply_lora_gpt2(model, list(targets),"),
                "test_loads_layers_named_like_adapter_parts", "wrongly ['dec.enc.q', 'enc.base']",
                more_edits=(("from .gpt2_conv1d import LoRAConv1D\n", "from .gpt2_conv1d import LoRAConv1D, apply_lora_gpt2\n"),)),
    # round 19, team C
    WrongAnswer("collisions looked for outside the adapters only (a layer an adapted nn.Linear subclass holds missed)", KATA,
                "    bases = {name: _base(model.get_submodule(name)) for name in names}\n"
                '    others |= {f"{name}.{inner}" for name, base in bases.items() for inner, _ in base.named_modules() if inner}\n',
                "", "test_config_says_lora_r_alpha_and_exactly_the_targets", "is a layer the adapted 'mlp.up_proj' holds"),
    WrongAnswer("fan_in_fan_out true whenever the model is a GPT-2", KATA,
                '"fan_in_fan_out": any(isinstance(layer, LoRAConv1D) for layer in layers.values()),',
                '"fan_in_fan_out": any(isinstance(layer, LoRAConv1D) for layer in layers.values())\n'
                '        or getattr(getattr(model, "config", None), "model_type", None) == "gpt2",',
                "test_config_says_lora_r_alpha_and_exactly_the_targets", "not the model's"),
    WrongAnswer("every name of a shared adapter saved, its factors without a copy", KATA,
                "model.named_modules() if isinstance(module, ADAPTERS)}",
                "model.named_modules(remove_duplicate=False) if isinstance(module, ADAPTERS)}",
                "test_saves_an_adapter_held_under_two_names", "refuses two keys over one storage"),
    WrongAnswer("a str target holding commas split into a list", KATA,
                "    def targeted(name: str) -> bool:\n",
                '    if isinstance(target_modules, str) and "," in target_modules:\n'
                '        target_modules = target_modules.split(",")\n\n'
                "    def targeted(name: str) -> bool:\n",
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "never a list to split at commas"),
    WrongAnswer("list entries strip()ped", KATA,
                'return any(name == t or name.endswith("." + t) for t in target_modules)',
                'return any(name == t or name.endswith("." + t) for t in (t.strip() for t in target_modules))',
                "test_a_bad_file_is_refused_and_leaves_the_model_as_it_was", "no strip()"),
    WrongAnswer("a dotted list entry matched with a bare endswith ('0.q_proj' takes 'layers.10.q_proj')", KATA,
                'return any(name == t or name.endswith("." + t) for t in target_modules)',
                'return any(name == t or name.endswith(t if "." in t else "." + t) for t in target_modules)',
                "test_loads_short_target_names_as_peft_matches_them", "not a bare endswith"),
]  # fmt: skip
