"""Wrong answers to the `apply_lora` kata."""

from tests.wrong_answers import WrongAnswer

KATA = "apply_lora"
MATCH = 'return any(name == target or name.endswith("." + target) for target in targets)'
WRAP = "LoRALinear(module, r, alpha, dropout)"
FREEZE = "        if id(parameter) not in adapters:"
MESSAGE = 'f"apply_lora: no nn.Linear matches target_modules={targets}; "'

WRONG_ANSWERS = [
    WrongAnswer("substring matching", KATA, MATCH, "return any(target in name for target in targets)",
                "test_adapts_exactly_the_linears_whose_names_match", "substring or bare endswith"),
    WrongAnswer("endswith without the dot", KATA, MATCH, "return any(name.endswith(target) for target in targets)",
                "test_adapts_exactly_the_linears_whose_names_match", "substring or bare endswith"),
    WrongAnswer("regex search", KATA, MATCH, 'return any(__import__("re").search(target, name) for target in targets)',
                "test_adapts_exactly_the_linears_whose_names_match", "substring or bare endswith"),
    WrongAnswer("last name component only", KATA, MATCH, 'return name.rpartition(".")[2] in targets',
                "test_adapts_exactly_the_linears_whose_names_match", "a dotted target matches the end"),
    WrongAnswer("any name component", KATA, MATCH, 'return any(target in name.split(".") for target in targets)',
                "test_never_wraps_an_adapter_again", "wrapped adapters again"),
    WrongAnswer("direct children only", KATA, "for name, module in model.named_modules()\n        if isinstance",
                "for name, module in model.named_children()\n        if isinstance",
                "test_adapts_exactly_the_linears_whose_names_match", "at any depth"),
    WrongAnswer("any module with a matching name", KATA, "if isinstance(module, (nn.Linear, LoRALinear)) and", "if",
                "test_adapts_exactly_the_linears_whose_names_match", "LayerNorm",
                more_edits=(("        if isinstance(module, nn.Linear):", "        if not isinstance(module, LoRALinear):"),)),
    WrongAnswer("nothing frozen", KATA, "parameter.requires_grad_(False)", "pass",
                "test_freezes_everything_but_the_adapters", "still train"),
    WrongAnswer("only weights frozen", KATA, "for parameter in model.parameters():\n" + FREEZE,
                "for pname, parameter in model.named_parameters():\n"
                '        if id(parameter) not in adapters and pname.endswith("weight"):',
                "test_freezes_everything_but_the_adapters", "still train"),
    WrongAnswer("adapters frozen too", KATA, FREEZE, "        if True:",
                "test_freezes_everything_but_the_adapters", "measured 0"),
    WrongAnswer("silent when nothing matched", KATA, "if not matched:", "if False:",
                "test_raises_naming_the_targets_when_nothing_matches", "raised nothing"),
    WrongAnswer("error that does not name the targets", KATA, MESSAGE, '"apply_lora: nothing matched; "',
                "test_raises_naming_the_targets_when_nothing_matches", "does not name the targets"),
    WrongAnswer("r and alpha not passed on", KATA, WRAP, "LoRALinear(module, dropout=dropout)",
                "test_passes_r_and_alpha_to_every_adapter", "pass r and alpha on"),
    WrongAnswer("dropout not passed on", KATA, WRAP, "LoRALinear(module, r, alpha)",
                "test_passes_dropout_to_every_adapter", "pass dropout on"),
    WrongAnswer("adapts a copy of the model", KATA, "    targets = (target_modules,)",
                '    model = __import__("copy").deepcopy(model)\n    targets = (target_modules,)',
                "test_wraps_the_original_layers_in_place", "expected the model itself"),
    WrongAnswer("returns None", KATA, "    return model\n", "    return None\n",
                "test_wraps_the_original_layers_in_place", "expected the model itself"),
    WrongAnswer("wraps copies of the layers", KATA, WRAP, 'LoRALinear(__import__("copy").deepcopy(module), r, alpha, dropout)',
                "test_wraps_the_original_layers_in_place", "original nn.Linear"),
    WrongAnswer("exact names only", KATA, MATCH, "return name in targets",
                "test_adapts_exactly_the_linears_whose_names_match", "a dotted target matches the end"),
    WrongAnswer("targets read once per layer", KATA, "else tuple(target_modules)", "else target_modules",
                "test_accepts_any_iterable_of_target_names", "a generator can be read only once"),
    WrongAnswer("returns None, the model then used", KATA, "    return model\n", "    return None\n",
                "test_leaves_the_output_unchanged", "apply_lora(model, ...) returned None"),
    # issue 13: a model zoo, a second call, call styles, dtypes
    WrongAnswer("a second call re-wraps the adapted layers' bases", KATA,
                "        if isinstance(module, nn.Linear):\n            parent_name",
                "        if isinstance(module, (nn.Linear, LoRALinear)):\n"
                "            module = getattr(module, 'base', module)\n            parent_name",
                "test_a_second_call_adds_new_targets_and_keeps_the_trained_adapters", "replaced the adapter at"),
    WrongAnswer("a second call freezes the adapters already there", KATA,
                "adapters = {id(p) for m in model.modules() if isinstance(m, LoRALinear) for p in m.parameters()}",
                "adapters = {id(p) for n, m in matched if isinstance(m, nn.Linear) "
                "for p in model.get_submodule(n).parameters()}",
                "test_a_second_call_adds_new_targets_and_keeps_the_trained_adapters", "stay trainable"),
    WrongAnswer("freezing by parameter name", KATA,
                "    for parameter in model.parameters():\n" + FREEZE + "\n            parameter.requires_grad_(False)",
                "    for pname, parameter in model.named_parameters():\n"
                "        parameter.requires_grad_('lora' in pname)",
                "test_adapts_the_model_zoo", "whatever its name"),
    WrongAnswer("alpha before r in the signature", KATA, "    r: int = 8,\n    alpha: float = 16.0,",
                "    alpha: float = 16.0,\n    r: int = 8,",
                "test_passes_r_alpha_and_dropout_by_position_and_keyword", "keep the stub's signature"),
    WrongAnswer("adapters upcast to float32", KATA, WRAP + ")", WRAP + ".to(torch.float32))",
                "test_adapters_follow_the_model_dtype", "leave every layer in its dtype",
                more_edits=(("from torch import nn", "import torch\nfrom torch import nn"),)),
    # Red-team round 1: names compared as strings, nn.Linear subclasses, a second call on an unfrozen model.
    WrongAnswer("targets as anchored regular expressions", KATA, MATCH,
                'return any(__import__("re").search(r"(^|\\.)" + target + "$", name) for target in targets)',
                "test_adapts_the_model_zoo", "a target read as a regular expression"),
    WrongAnswer("exact type nn.Linear", KATA, "if isinstance(module, (nn.Linear, LoRALinear)) and",
                "if (type(module) is nn.Linear or isinstance(module, LoRALinear)) and",
                "test_adapts_the_model_zoo", "a subclass of nn.Linear and so an nn.Linear"),
    WrongAnswer("frozen on the first call only", KATA, "    targets = (target_modules,)",
                "    first_call = not any(isinstance(m, LoRALinear) for m in model.modules())\n    targets = (target_modules,)",
                "test_a_second_call_adds_new_targets_and_keeps_the_trained_adapters", "not just the first one",
                more_edits=((FREEZE, "        if first_call and id(parameter) not in adapters:"),)),
    WrongAnswer("an adapter's own base adapted", KATA, " and id(module) not in inside", "",
                "test_a_second_call_adds_new_targets_and_keeps_the_trained_adapters", "and every layer inside them"),
]  # fmt: skip
