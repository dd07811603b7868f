"""Wrong answers to the `apply_lora` kata."""

from tests.wrong_answers import WrongAnswer

KATA = "apply_lora"
MATCH = 'return any(name == target or name.endswith("." + target) for target in targets)'
WRAP = "LoRALinear(module, r, alpha, dropout)"
FACTORS = "for n, p in m.named_parameters() if n in trained"
FREEZE = "        parameter.requires_grad_(id(parameter) in factors)"
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
                "test_adapts_exactly_the_linears_whose_names_match", "a dotted target matches the end"),
    WrongAnswer("any name component, inside adapters too", KATA, MATCH,
                'return any(target in name.split(".") for target in targets)',
                "test_never_wraps_an_adapter_again", "wrapped adapters again",
                more_edits=((" and id(module) not in inside", ""),)),
    WrongAnswer("direct children only", KATA,
                "for name, module in model.named_modules(remove_duplicate=False)\n        if isinstance",
                "for name, module in model.named_children()\n        if isinstance",
                "test_adapts_exactly_the_linears_whose_names_match", "at any depth"),
    WrongAnswer("any module with a matching name", KATA, "if isinstance(module, (nn.Linear, LoRALinear)) and", "if",
                "test_adapts_exactly_the_linears_whose_names_match", "LayerNorm",
                more_edits=(("        if isinstance(module, nn.Linear):", "        if not isinstance(module, LoRALinear):"),)),
    WrongAnswer("nothing frozen", KATA, FREEZE, "        pass",
                "test_freezes_everything_but_the_adapters", "still train"),
    WrongAnswer("only weights frozen", KATA, "for parameter in model.parameters():\n" + FREEZE,
                "for pname, parameter in model.named_parameters():\n"
                '        if id(parameter) in factors or pname.endswith("weight"):\n    ' + FREEZE,
                "test_freezes_everything_but_the_adapters", "still train"),
    WrongAnswer("adapters frozen too", KATA, FREEZE, "        parameter.requires_grad_(False)",
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
                "for m in model.modules() if isinstance(m, LoRALinear) " + FACTORS,
                "for k, m in matched if isinstance(m, nn.Linear) "
                "for n, p in model.get_submodule(k).named_parameters() if n in trained",
                "test_a_second_call_adds_new_targets_and_keeps_the_trained_adapters", "stay trainable"),
    WrongAnswer("freezing by parameter name", KATA,
                "    for parameter in model.parameters():\n" + FREEZE,
                "    for pname, parameter in model.named_parameters():\n"
                "        parameter.requires_grad_('lora' in pname)",
                "test_adapts_the_model_zoo", "whatever its name"),
    WrongAnswer("alpha before r in the signature", KATA, "    r: int = 8,\n    alpha: float = 16.0,",
                "    alpha: float = 16.0,\n    r: int = 8,",
                "test_passes_r_alpha_and_dropout_by_position_and_keyword", "keep the stub's signature"),
    WrongAnswer("adapters upcast to float32", KATA, "= " + WRAP, "= " + WRAP + ".to(torch.float32)",
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
                more_edits=((FREEZE, "        if first_call:\n    " + FREEZE),)),
    WrongAnswer("an adapter's own base adapted", KATA, " and id(module) not in inside", "",
                "test_a_second_call_adds_new_targets_and_keeps_the_trained_adapters", "and every layer inside them"),
    # Red-team round 2: names matched by components or containers, a generator's repr, mixed dtypes, prefixes, case.
    WrongAnswer("dot-bounded substring matching", KATA, MATCH,
                'return any(f".{target}." in f".{name}." for target in targets)',
                "test_adapts_the_model_zoo", "a target names the layer itself"),
    WrongAnswer("a targeted container adapts its linears", KATA,
                "and id(module) not in inside and _is_target(name, targets)",
                "and id(module) not in inside and any(_is_target(n, targets) for n in _parents(name))",
                "test_adapts_the_model_zoo", "never the layers inside a container",
                more_edits=(("def _is_target(", 'def _parents(name):\n    parts = name.split(".")\n'
                             '    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]\n\n\ndef _is_target('),)),
    WrongAnswer("the error names the generator given", KATA, MESSAGE,
                'f"apply_lora: no nn.Linear matches target_modules={target_modules!r}; "',
                "test_raises_naming_the_targets_when_nothing_matches", "a generator's repr names no target"),
    WrongAnswer("adapters cast to the first parameter's dtype", KATA, WRAP,
                WRAP + ".to(next(model.parameters()).dtype)",
                "test_adapters_follow_the_model_dtype", "after the model's first parameter"),
    WrongAnswer("names inside an adapted layer skipped by a bare prefix", KATA,
                "        if isinstance(module, nn.Linear):\n            parent_name",
                "        if isinstance(module, nn.Linear) and not any(name != m and name.startswith(m) "
                "for m, _ in matched):\n            parent_name",
                "test_adapts_the_model_zoo", "as if inside the adapter of fc1"),
    WrongAnswer("case-insensitive matching", KATA, MATCH,
                'return any(name.lower() == target.lower() or name.lower().endswith("." + target.lower()) '
                "for target in targets)",
                "test_adapts_the_model_zoo", "wrongly adapted ['Fc1'"),
    WrongAnswer("what lies inside an adapter left as it is", KATA, FACTORS, "for p in m.parameters()",
                "test_a_second_call_adds_new_targets_and_keeps_the_trained_adapters",
                "the layers inside the adapters included",
                more_edits=((FREEZE, "        if id(parameter) not in factors:\n            parameter.requires_grad_(False)"),)),
    # Red-team round 3: adapters' insides skipped by name, a subclass's own parameter left training, one device for all.
    WrongAnswer("the layers inside adapters skipped by a name prefix", KATA,
                "inside = {id(m) for a in model.modules() if isinstance(a, LoRALinear) for m in list(a.modules())[1:]}",
                "inside = [n for n, a in model.named_modules() if isinstance(a, LoRALinear)]",
                "test_a_second_call_leaves_the_adapters_bases_alone_under_every_name", "by identity",
                more_edits=((" and id(module) not in inside and", " and not any(name.startswith(a + '.') for a in inside) and"),)),
    WrongAnswer("only the bases' weight and bias frozen", KATA, FACTORS,
                "for n, p in m.named_parameters() if p is not m.base.weight and p is not m.base.bias",
                "test_adapts_the_model_zoo", "a parameter of the adapted layer itself"),
    WrongAnswer("adapters moved to the model's first device", KATA, WRAP,
                WRAP + ".to(next(model.parameters()).device)",
                "test_adapters_stay_on_their_layers_devices", "leave each adapter where its layer is"),
    # Red-team round 4: glob matching, no error on an adapted model, an adapter per alias, factors freed by name,
    # only the bases skipped (not the layers inside them).
    WrongAnswer("targets matched as glob patterns", KATA, MATCH,
                'return any(__import__("fnmatch").fnmatchcase(name, target) '
                'or __import__("fnmatch").fnmatchcase(name, "*." + target) for target in targets)',
                "test_raises_naming_the_targets_when_nothing_matches", "compared as strings"),
    WrongAnswer("nothing matched raised only on a model without adapters", KATA, "    if not matched:\n",
                "    if not matched and not inside:\n",
                "test_raises_naming_the_targets_when_nothing_matches", "already adapted"),
    WrongAnswer("an adapter for every name of a layer", KATA, "if id(module) not in adapters:", "if True:",
                "test_adapts_the_model_zoo", "two adapters"),
    WrongAnswer("factors unfrozen by their names", KATA, "    for parameter in model.parameters():\n" + FREEZE,
                "    for name, parameter in model.named_parameters():\n"
                '        parameter.requires_grad_(name.rsplit(".", 1)[-1] in trained)',
                "test_freezes_everything_but_the_adapters", "whatever its name"),
    WrongAnswer("only the adapters' bases skipped, not the layers inside them", KATA,
                "inside = {id(m) for a in model.modules() if isinstance(a, LoRALinear) for m in list(a.modules())[1:]}",
                "inside = {id(a.base) for a in model.modules() if isinstance(a, LoRALinear)}",
                "test_a_second_call_leaves_the_adapters_bases_alone_under_every_name", "inside an adapter"),
    WrongAnswer("targets matched among deduplicated names only", KATA,
                "for name, module in model.named_modules(remove_duplicate=False)\n        if isinstance",
                "for name, module in model.named_modules()\n        if isinstance", "test_adapts_the_model_zoo",
                "match every name"),
    # The stub's signature: a caller passes its parameters by name or by position (one check for them all).
    WrongAnswer('target_modules without a default', KATA, '    target_modules: Iterable[str] = ("q_proj", "v_proj"),\n    r: int = 8,',
                '    target_modules: Iterable[str],\n    r: int = 8,',
                "test_takes_the_stubs_parameters", 'gives `target_modules` no default'),
    WrongAnswer("a second call inherits the first adapters' config", KATA,
                "    adapters: dict[int, LoRALinear] = {}  # one adapter per layer",
                "    existing = [m for _, m in matched if isinstance(m, LoRALinear)]\n"
                "    if existing:\n"
                "        r, alpha, dropout = existing[0].r, existing[0].alpha, existing[0].dropout.p\n"
                "    adapters: dict[int, LoRALinear] = {}  # one adapter per layer",
                "test_a_second_call_adds_new_targets_and_keeps_the_trained_adapters", "takes the r, alpha and dropout"),
    WrongAnswer("adapters found by exact type", KATA,
                "inside = {id(m) for a in model.modules() if isinstance(a, LoRALinear)",
                "inside = {id(m) for a in model.modules() if type(a) is LoRALinear",
                "test_a_second_call_adds_new_targets_and_keeps_the_trained_adapters", "a subclass's instance is one too",
                more_edits=(("id(p) for m in model.modules() if isinstance(m, LoRALinear)",
                             "id(p) for m in model.modules() if type(m) is LoRALinear"),)),
    WrongAnswer("all-linear and no targets adapt every linear", KATA,
                "    return any(name == target or",
                "    if not targets or \"all-linear\" in targets:\n        return True\n    return any(name == target or",
                "test_raises_naming_the_targets_when_nothing_matches", "nor as peft's 'all-linear'"),
    WrongAnswer("a Linear told by the class names of its MRO", KATA,
                "if isinstance(module, (nn.Linear, LoRALinear)) and id(module) not in inside",
                'if (any(c.__name__ == "Linear" for c in type(module).__mro__) or isinstance(module, LoRALinear))\n'
                "        and id(module) not in inside",
                "test_adapts_the_model_zoo", "k_proj",
                more_edits=(("        if isinstance(module, nn.Linear):\n            parent_name",
                             "        if not isinstance(module, LoRALinear):\n            parent_name"),)),
    WrongAnswer("targets stripped of whitespace", KATA,
                "targets = (target_modules,) if isinstance(target_modules, str) else tuple(target_modules)",
                "targets = (target_modules,) if isinstance(target_modules, str) else tuple(target_modules)\n"
                "    targets = tuple(target.strip() for target in targets)  # \"q_proj, v_proj\".split(\",\") gives \" v_proj\"",
                "test_raises_naming_the_targets_when_nothing_matches", "stripped of whitespace"),
    WrongAnswer("the factors remembered on the model from the first call", KATA,
                "    factors = {\n        id(p) for m in model.modules() if isinstance(m, LoRALinear) " + FACTORS + "\n    }\n",
                "    # The factors made so far, kept on the model (for the optimizer: model._lora_parameters), this call's added.\n"
                "    known = [p for m in model.modules() for p in m.__dict__.get(\"_lora_parameters\", ())]\n"
                "    known += [p for a in adapters.values() " + FACTORS.replace("for n, p in m.", "for n, p in a.") + "]\n"
                "    model.__dict__[\"_lora_parameters\"] = known\n"
                "    factors = {id(p) for p in known}\n",
                "test_a_second_call_adds_new_targets_and_keeps_the_trained_adapters", "never remember Parameters"),
    # Red-team round 13 (team A): the call's own r and alpha, whatever their values; a dropout of each adapter's own.
    WrongAnswer("alpha cast to int as peft's LoraConfig types it", KATA, WRAP,
                "LoRALinear(module, int(r), int(alpha), float(dropout))",
                "test_passes_r_and_alpha_to_every_adapter", "rounded to a whole number"),
    WrongAnswer("rank clamped to min(in, out) of each layer", KATA, WRAP,
                "LoRALinear(module, min(r, module.in_features, module.out_features), alpha, dropout)",
                "test_passes_r_and_alpha_to_every_adapter", "clamped to min(in, out)"),
    WrongAnswer("one dropout module shared by every adapter", KATA,
                "            setattr(model.get_submodule(parent_name), child_name, adapters[id(module)])\n",
                "            setattr(model.get_submodule(parent_name), child_name, adapters[id(module)])\n"
                "            adapters[id(module)].dropout = next(iter(adapters.values())).dropout  # one model-wide p knob\n",
                "test_each_adapter_follows_its_own_mode", "its own mode"),
    WrongAnswer("a target inside another target wrapped as well (an adapter no forward calls)", KATA,
                "    matched = [(name, module) for name, module in matched if id(module) not in held]\n", "",
                "test_adapts_the_model_zoo", "adapt the outer target only"),
    WrongAnswer("alpha = alpha or r passed on", KATA, WRAP, "LoRALinear(module, r, alpha or float(r), dropout)",
                "test_passes_r_and_alpha_to_every_adapter", "alpha = alpha or r?"),
    # Red-team round 15 (team A): nested targets dropped in listing order only (an alias of the inner one listed first).
    WrongAnswer("targets inside others dropped in listing order only", KATA,
                "    held = {id(inner) for _, outer in matched if isinstance(outer, nn.Linear) for inner in list(outer.modules())[1:]}\n"
                "    matched = [(name, module) for name, module in matched if id(module) not in held]\n",
                "    held, kept = set(), []  # one pass: a layer inside a target met earlier is skipped\n"
                "    for name, module in matched:\n"
                "        if id(module) not in held:\n"
                "            kept.append((name, module))\n"
                "            held.update(id(inner) for inner in list(module.modules())[1:])\n"
                "    matched = kept\n",
                "test_adapts_the_model_zoo", "adapt the outer target only"),
    WrongAnswer("layers under a module named base skipped", KATA, MATCH,
                'return "base" not in name.split(".") and ' + MATCH.removeprefix("return "),
                "test_adapts_the_model_zoo", "never by name"),
    WrongAnswer("adapters told by class name", KATA, "        if isinstance(module, nn.Linear):\n",
                '        if isinstance(module, nn.Linear) and type(module).__name__ != "LoRALinear":  # a reloaded class\n',
                "test_adapts_the_model_zoo", "never by class name"),
    # Red-team round 19 (team A): with more than 4 targets, names matched by their last part only.
    WrongAnswer("more than 4 targets matched by the layer's last name part only", KATA, MATCH,
                "if len(targets) > 4:  # a long list (every projection of a Llama block): one set lookup\n"
                '        return name.rsplit(".", 1)[-1] in {t.rsplit(".", 1)[-1] for t in targets}\n    ' + MATCH,
                "test_adapts_exactly_the_linears_whose_names_match", "by its last part alone"),
]  # fmt: skip
