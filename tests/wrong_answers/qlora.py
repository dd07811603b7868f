"""Wrong answers to the `qlora` kata."""

from tests.wrong_answers import WrongAnswer

KATA = "qlora"
BUFFERS = 'self.register_buffer("packed", packed)'
BIAS = "self.bias = None if base.bias is None else nn.Parameter(base.bias.detach(), requires_grad=False)"
FORWARD = "return F.linear(x, self.weight(x.dtype), bias)"
DOWN = "down = F.linear(self.dropout(x), self.lora_A) * self.scaling"
RESULT = "return self.base(x) + F.linear(down, self.lora_B)"
QUANTIZE = "self.base = NF4Linear(base)"
FREEZE = """    for parameter in model.parameters():
        if id(parameter) not in adapters:
            parameter.requires_grad_(False)"""
CHOICE = "layer = QLoRALinear(module, r, alpha, dropout) if _matches(names, targets) else NF4Linear(module)"
LINEARS = "for module, names in held.values() if not _matches(names, skipped)]"
CHECK = "    if not any(_matches(names, targets) for names, _ in linears):"

WRONG_ANSWERS = [
    WrongAnswer("a full-precision weight kept for speed", KATA, BUFFERS, BUFFERS + '; self.register_buffer("fast_weight", base.weight.detach().clone())',
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "full-precision copy",
                more_edits=((FORWARD, "return F.linear(x, self.fast_weight.to(x.dtype), bias)"),)),
    WrongAnswer("the original layer kept in a list", KATA, BUFFERS, BUFFERS + "; self.originals = [base]",
                "test_nf4_linear_keeps_no_reference_to_the_original_weight", "keeps the original nn.Linear alive"),
    WrongAnswer("the weight kept for a later merge", KATA, BUFFERS, BUFFERS + "; self.source = base.weight",
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "full-precision copy"),
    WrongAnswer("packed codes as a plain attribute", KATA, BUFFERS, "self.packed = packed",
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "register_buffer"),
    WrongAnswer("blocks of 128", KATA, "BLOCK_SIZE = 64", "BLOCK_SIZE = 128",
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "float32 absmax of ceil(out * in / 64)"),
    WrongAnswer("the transposed weight quantized", KATA, "packed, absmax = quantize_nf4(base.weight.detach(), BLOCK_SIZE)",
                "packed, absmax = quantize_nf4(base.weight.detach().T, BLOCK_SIZE)",
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "codes differ",
                more_edits=(("return dequantize_nf4(self.packed, self.absmax, (self.out_features, self.in_features), dtype, BLOCK_SIZE)",
                             "return dequantize_nf4(self.packed, self.absmax, (self.in_features, self.out_features), dtype, BLOCK_SIZE).T"),)),
    WrongAnswer("computed and returned in float32", KATA, FORWARD, "return F.linear(x.float(), self.weight(torch.float32), None if bias is None else bias.float())",
                "test_nf4_linear_computes_F_linear_with_the_dequantized_weight", "dequantize in x's dtype"),
    WrongAnswer("dequantized in the base's dtype", KATA, FORWARD, "return F.linear(x, self.weight(self.dtype), bias)",
                "test_nf4_linear_computes_F_linear_with_the_dequantized_weight", "RuntimeError",
                more_edits=((BUFFERS, BUFFERS + "; self.dtype = base.weight.dtype"),)),
    WrongAnswer("bias dropped", KATA, BIAS, "self.bias = None",
                "test_nf4_linear_computes_F_linear_with_the_dequantized_weight", "is the bias added"),
    WrongAnswer("bias converted to float32", KATA, BIAS, BIAS.replace("base.bias.detach()", "base.bias.detach().float()"),
                "test_nf4_linear_keeps_the_bias_as_it_was_and_passes_gradients_to_x", "keep the bias as it was"),
    WrongAnswer("bias left trainable", KATA, BIAS, BIAS.replace(", requires_grad=False", ""),
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "has trainable parameters"),
    WrongAnswer("forward under no_grad", KATA, FORWARD, "with torch.no_grad():\n            " + FORWARD,
                "test_nf4_linear_keeps_the_bias_as_it_was_and_passes_gradients_to_x", "no torch.no_grad() inside"),
    WrongAnswer("the full-precision base under the adapter", KATA, QUANTIZE, "self.base = base.requires_grad_(False)",
                "test_qlora_computes_the_nf4_base_at_init", "keep quantize_nf4's results"),
    WrongAnswer("B random at init", KATA, "torch.zeros(base.out_features, r, **same_place)", "0.01 * torch.randn(base.out_features, r, **same_place)",
                "test_qlora_computes_the_nf4_base_at_init", "B is not zero at init"),
    WrongAnswer("scaled by alpha", KATA, DOWN, DOWN.replace("self.scaling", "self.alpha"),
                "test_qlora_output_and_gradients_are_lora_over_the_dequantized_weight", "expected alpha / r"),
    WrongAnswer("dropout on the base path too", KATA, DOWN, "x = self.dropout(x)\n        " + DOWN.replace("self.dropout(x)", "x"),
                "test_qlora_dropout_acts_on_the_adapter_input_in_train_mode_only", "adapter branch's input only"),
    WrongAnswer("factors always float32", KATA, '"dtype": base.weight.dtype}', '"dtype": torch.float32}',
                "test_qlora_stores_the_base_in_nf4_and_trains_two_factors", "create them in the base's dtype"),
    WrongAnswer("x detached on the base path", KATA, RESULT, "return self.base(x.detach()) + F.linear(down, self.lora_B)",
                "test_qlora_output_and_gradients_are_lora_over_the_dequantized_weight", "gradient w.r.t. x"),
    WrongAnswer("substring matching", KATA, "return any(name == n or name.endswith(\".\" + n) for name in names for n in patterns)",
                "return any(n in name for name in names for n in patterns)",
                "test_apply_qlora_quantizes_every_linear_and_adapts_the_targets", "expected NF4Linear"),
    WrongAnswer("skip ignored", KATA, LINEARS, "for module, names in held.values()]",
                "test_apply_qlora_quantizes_every_linear_and_adapts_the_targets", "stay as they are"),
    WrongAnswer("only the targets quantized", KATA, CHOICE, "layer = QLoRALinear(module, r, alpha, dropout) if _matches(names, targets) else module",
                "test_apply_qlora_quantizes_every_linear_and_adapts_the_targets", "expected NF4Linear"),
    WrongAnswer("the base left trainable", KATA, FREEZE, "    pass",
                "test_apply_qlora_freezes_everything_but_the_factors", "freeze everything else"),
    WrongAnswer("no error when nothing matches", KATA, CHECK, "    if False:",
                "test_apply_qlora_raises_when_no_target_is_left", "expected a ValueError"),
    WrongAnswer("skipped targets still count as matches", KATA, CHECK,
                "    if not any(_matches([name], targets) for name, m in model.named_modules() if isinstance(m, nn.Linear)):",
                "test_apply_qlora_raises_when_no_target_is_left", "expected a ValueError"),
    WrongAnswer("the weight cached on the first forward", KATA, FORWARD,
                'if not hasattr(self, "cache"):\n            self.cache = self.weight(torch.float32)\n        '
                "return F.linear(x, self.cache.to(x.dtype), bias)",
                "test_nf4_linear_computes_F_linear_with_the_dequantized_weight", "dequantized at an earlier call and kept"),
    WrongAnswer("QLoRA computed in float32", KATA, RESULT, "return (self.base(x.float()) + F.linear(down.float(), self.lora_B.float()))",
                "test_qlora_computes_the_nf4_base_at_init", "compute and return in the base's dtype"),
    WrongAnswer("skip read as characters", KATA, "    skipped = _names(skip)", "    skipped = tuple(skip)",
                "test_apply_qlora_quantizes_every_linear_and_adapts_the_targets", "a plain string is one name"),
    WrongAnswer("the weight's memory kept in a closure", KATA, FORWARD, "return F.linear(x, self.weight(x.dtype), bias)  # self.peek() reads it",
                "test_nf4_linear_keeps_no_reference_to_the_original_weight", "sharing the original weight's memory",
                more_edits=((BUFFERS, BUFFERS + "; kept = base.weight.detach(); self.peek = lambda: kept"),)),
    WrongAnswer("scaled by alpha, seen against peft", KATA, DOWN, DOWN.replace("self.scaling", "self.alpha"),
                "test_qlora_agrees_with_peft_over_bitsandbytes_linear4bit", "where bf16 rounding allows"),
    # Holes found by the red team (round 1): each passed the grader before its check was sharpened.
    WrongAnswer("the dequantized weight in an lru_cache", KATA, BUFFERS,
                BUFFERS + "; self.cached = functools.lru_cache(maxsize=3)(self.weight)",
                "test_nf4_linear_computes_F_linear_with_the_dequantized_weight", "dequantized at an earlier call and kept",
                more_edits=((FORWARD, "return F.linear(x, self.cached(x.dtype), bias)"),
                            ("import math\n", "import functools\nimport math\n"))),
    WrongAnswer("the dequantized weight in a module-level cache", KATA, FORWARD,
                "return F.linear(x, _CACHE.setdefault(self, {}).setdefault(x.dtype, self.weight(x.dtype)), bias)",
                "test_nf4_linear_computes_F_linear_with_the_dequantized_weight", "dequantized at an earlier call and kept",
                more_edits=(("BLOCK_SIZE = 64\n", "BLOCK_SIZE = 64\n_CACHE = weakref.WeakKeyDictionary()\n"),
                            ("import math\n", "import math\nimport weakref\n"))),
    WrongAnswer("computed in float32 and cast afterwards", KATA, FORWARD,
                "return F.linear(x.float(), self.weight(torch.float32), None if bias is None else bias.float()).to(x.dtype)",
                "test_nf4_linear_rounds_the_weight_to_x_dtype_before_the_product", "expected exactly 0"),
    WrongAnswer("no NF4Linear submodule under the adapter", KATA, QUANTIZE,
                "inner = NF4Linear(base)\n"
                '        self.register_buffer("packed", inner.packed)\n'
                '        self.register_buffer("absmax", inner.absmax)\n'
                "        self.bias, self.shape = inner.bias, (inner.out_features, inner.in_features)\n"
                "        self.base = lambda x: F.linear(\n"
                "            x, dequantize_nf4(self.packed, self.absmax, self.shape, x.dtype, BLOCK_SIZE),\n"
                "            None if self.bias is None else self.bias.to(x.dtype),\n"
                "        )",
                "test_qlora_stores_the_base_in_nf4_and_trains_two_factors", "NF4Linear submodule"),
    WrongAnswer("apply_qlora ignores alpha", KATA, CHOICE, CHOICE.replace("QLoRALinear(module, r, alpha, dropout)", "QLoRALinear(module, r, dropout=dropout)"),
                "test_apply_qlora_passes_r_alpha_and_dropout_to_every_adapter", "pass r, alpha and dropout on"),
    WrongAnswer("apply_qlora ignores dropout", KATA, CHOICE, CHOICE.replace("QLoRALinear(module, r, alpha, dropout)", "QLoRALinear(module, r, alpha)"),
                "test_apply_qlora_passes_r_alpha_and_dropout_to_every_adapter", "the adapters get no dropout"),
    WrongAnswer("skip by substring", KATA, LINEARS, "for module, names in held.values() if not any(s in n for s in skipped for n in names)]",
                "test_apply_qlora_quantizes_every_linear_and_adapts_the_targets", "skip matches as target_modules does"),
    WrongAnswer("skip by the last name component", KATA, LINEARS,
                "for module, names in held.values() if not any(n.split('.')[-1] in skipped for n in names)]",
                "test_apply_qlora_quantizes_every_linear_and_adapts_the_targets", "stay as they are"),
    WrongAnswer("target and skip generators read twice", KATA, "    targets = _names(target_modules)\n    skipped = _names(skip)",
                "    targets = (target_modules,) if isinstance(target_modules, str) else target_modules\n"
                "    skipped = (skip,) if isinstance(skip, str) else skip",
                "test_apply_qlora_quantizes_every_linear_and_adapts_the_targets", "a generator too"),
    WrongAnswer("half-precision parameters upcast", KATA, FREEZE,
                FREEZE + "\n        if parameter.dtype in (torch.float16, torch.bfloat16) and id(parameter) not in adapters:\n"
                "            parameter.data = parameter.data.float()",
                "test_apply_qlora_keeps_a_half_precision_model_in_its_dtype", "keep values and dtypes"),
    WrongAnswer("apply_qlora's default r 4", KATA, "    r: int = 8,\n    alpha: float = 16.0,\n    dropout: float = 0.0,\n    skip",
                "    r: int = 4,\n    alpha: float = 16.0,\n    dropout: float = 0.0,\n    skip",
                "test_apply_qlora_defaults_are_q_v_r_8_alpha_16_no_dropout_and_skip_lm_head", "the default r is 8"),
    WrongAnswer("apply_qlora's default alpha 8", KATA, "    r: int = 8,\n    alpha: float = 16.0,\n    dropout: float = 0.0,\n    skip",
                "    r: int = 8,\n    alpha: float = 8.0,\n    dropout: float = 0.0,\n    skip",
                "test_apply_qlora_defaults_are_q_v_r_8_alpha_16_no_dropout_and_skip_lm_head", "alpha=16.0"),
    # Holes found by the red team (round 2): each passed the grader before its check was sharpened.
    WrongAnswer("a missing bias made a zero bias", KATA, BIAS,
                "self.bias = nn.Parameter(base.bias.detach() if base.bias is not None else "
                "torch.zeros(base.out_features, dtype=base.weight.dtype), requires_grad=False)",
                "test_nf4_linear_computes_F_linear_with_the_dequantized_weight", "None stays None"),
    WrongAnswer("adapted layers count as matches on a second call", KATA, CHECK,
                "    if not any(_matches(names, targets) for names, _ in linears) and not any(\n"
                "        _matches([name], targets) for name, m in model.named_modules() if isinstance(m, QLoRALinear)\n"
                "    ):",
                "test_apply_qlora_raises_when_no_target_is_left", "expected a ValueError"),
    WrongAnswer("QLoRALinear's r, alpha and dropout keyword-only", KATA,
                "def __init__(self, base: nn.Linear, r: int = 8,", "def __init__(self, base: nn.Linear, *, r: int = 8,",
                "test_qlora_computes_the_nf4_base_at_init", "callable by position",
                more_edits=((CHOICE, CHOICE.replace("QLoRALinear(module, r, alpha, dropout)",
                                                    "QLoRALinear(module, r=r, alpha=alpha, dropout=dropout)")),)),
    WrongAnswer("skip leaves whole subtrees alone", KATA, LINEARS,
                "for module, names in held.values() if not any(\n"
                "        _matches([\".\".join(n.split(\".\")[:k])], skipped) for n in names for k in range(1, n.count(\".\") + 2)\n"
                "    )]",
                "test_apply_qlora_quantizes_every_linear_and_adapts_the_targets", "names a container"),
    WrongAnswer("a numpy copy of the weight kept", KATA, BUFFERS,
                BUFFERS + "; self.reference = base.weight.detach().float().numpy().copy()",
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "full-precision copy"),
    WrongAnswer("the weight kept as nested Python lists", KATA, BUFFERS, BUFFERS + "; self.rows = base.weight.detach().tolist()",
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "full-precision copy"),
    WrongAnswer("A drawn with torch.rand", KATA, "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
                "nn.init.uniform_(self.lora_A, 0.0, 1.0 / math.sqrt(base.in_features))",
                "test_qlora_computes_the_nf4_base_at_init", "centred on 0"),
    WrongAnswer("dropout between A and B", KATA, DOWN, "down = self.dropout(F.linear(x, self.lora_A)) * self.scaling",
                "test_qlora_dropout_acts_on_the_adapter_input_in_train_mode_only", "not between A and B"),
    WrongAnswer("any module counts as a target match", KATA, CHECK,
                "    if not any(_matches([name], targets) and not _matches([name], skipped) for name, _ in model.named_modules()):",
                "test_apply_qlora_raises_when_no_target_is_left", "expected a ValueError"),
    WrongAnswer("apply_qlora's skip before dropout", KATA,
                '    dropout: float = 0.0,\n    skip: Iterable[str] = ("lm_head",),\n) -> nn.Module:',
                '    skip: Iterable[str] = ("lm_head",),\n    dropout: float = 0.0,\n) -> nn.Module:',
                "test_apply_qlora_passes_r_alpha_and_dropout_to_every_adapter", "callable by position"),
    # Holes found by the red team (round 3): each passed the grader before its check was sharpened.
    WrongAnswer("factors made on the default device", KATA, '"device": base.weight.device, "dtype": base.weight.dtype}',
                '"dtype": base.weight.dtype}',
                "test_nf4_and_qlora_layers_live_on_the_base_device", "the default device of this check"),
    WrongAnswer("one dropout mask per feature shared by the batch", KATA, DOWN,
                "down = F.linear(x * self.dropout(torch.ones_like(x[(0,) * (x.dim() - 1)])), self.lora_A) * self.scaling",
                "test_qlora_dropout_acts_on_the_adapter_input_in_train_mode_only", "they share one dropout mask"),
    WrongAnswer("any base with a 2-D weight taken", KATA,
                'if not isinstance(base, nn.Linear):\n            raise ValueError(f"NF4Linear quantizes',
                'if getattr(getattr(base, "weight", None), "dim", lambda: 0)() != 2:\n            raise ValueError(f"NF4Linear quantizes',
                "test_nf4_linear_rejects_a_base_that_is_not_linear", "not the weight's shape"),
    WrongAnswer("type(m) is nn.Linear", KATA, "        if isinstance(module, nn.Linear):\n            held.setdefault",
                "        if type(module) is nn.Linear:\n            held.setdefault",
                "test_apply_qlora_quantizes_the_model_zoo", "a subclass of nn.Linear"),
    WrongAnswer("frozen by name", KATA, FREEZE,
                '    for name, parameter in model.named_parameters():\n        if "lora_" not in name:\n'
                "            parameter.requires_grad_(False)",
                "test_apply_qlora_quantizes_the_model_zoo", "whatever its name"),
    WrongAnswer("the weight cached while training", KATA, FORWARD,
                'if torch.is_grad_enabled():\n            if getattr(self, "cache", None) is None or self.cache.dtype != x.dtype:\n'
                "                self.cache = self.weight(x.dtype)\n            return F.linear(x, self.cache, bias)\n        " + FORWARD,
                "test_nf4_linear_computes_F_linear_with_the_dequantized_weight", "dequantized at an earlier call and kept"),
    WrongAnswer("a shared layer replaced under its first name only", KATA,
                '        for name in names:  # one new layer under every name of the old one\n'
                '            parent, _, child = name.rpartition(".")\n            setattr(model.get_submodule(parent), child, layer)',
                '        parent, _, child = names[0].rpartition(".")\n        setattr(model.get_submodule(parent), child, layer)',
                "test_apply_qlora_quantizes_the_model_zoo", "replaced under all of them"),
    WrongAnswer("dropout=nan taken", KATA, "if not 0.0 <= dropout < 1.0:", "if dropout < 0.0 or dropout >= 1.0:",
                "test_qlora_rejects_bad_arguments", "NaN fails every comparison"),
    WrongAnswer("the adapter flattens the batch dimensions", KATA, DOWN,
                "down = (self.dropout(x).flatten(0, -2) @ self.lora_A.T).reshape(*x.shape[:-1], -1) * self.scaling",
                "test_qlora_output_and_gradients_are_lora_over_the_dequantized_weight", "IndexError"),
    # Round 4 (lead): a walk of named_children() lists a layer held under two names of one parent once.
    WrongAnswer("children walked with named_children()", KATA,
                '    for name, module in model.named_modules(remove_duplicate=False):\n        if isinstance(module, nn.Linear):\n            held.setdefault',
                '    for name, module in [(f"{p}.{c}".lstrip("."), m) for p, parent in model.named_modules(remove_duplicate=False) for c, m in parent.named_children()]:\n        if isinstance(module, nn.Linear):\n            held.setdefault',
                "test_apply_qlora_quantizes_the_model_zoo", "named_modules(remove_duplicate=False)"),
    # Round 4 of the red team.
    WrongAnswer("a layer skipped under one of its names only", KATA, LINEARS,
                "for module, names in held.values() if [n for n in names if not _matches([n], skipped)]]",
                "test_apply_qlora_quantizes_the_model_zoo", "matches skip when any of its names does",
                more_edits=(("        for name in names:  # one new layer under every name of the old one",
                             "        for name in [n for n in names if not _matches([n], skipped)]:"),)),
    WrongAnswer("skip compared case-insensitively", KATA, "    skipped = _names(skip)",
                "    skipped = tuple(n.lower() for n in _names(skip))",
                "test_apply_qlora_quantizes_the_model_zoo", "case and all",
                more_edits=((LINEARS, "for module, names in held.values() if not _matches([n.lower() for n in names], skipped)]"),)),
    WrongAnswer("one dropout mask per example and feature, shared over the sequence", KATA, DOWN,
                "down = F.linear(x * self.dropout(torch.ones_like(x[:, :1] if x.dim() > 2 else x)), self.lora_A) * self.scaling",
                "test_qlora_dropout_acts_on_the_adapter_input_in_train_mode_only", "along dim 1"),
    WrongAnswer("the last output kept on the layer", KATA, FORWARD,
                "self.last_output = F.linear(x, self.weight(x.dtype), bias)\n        return self.last_output",
                "test_nf4_linear_computes_F_linear_with_the_dequantized_weight", "last_output.grad_fn"),
    # Round 7 of the red team (team e).
    WrongAnswer("the weight cached under inference_mode", KATA, FORWARD,
                "if torch.is_inference_mode_enabled():\n"
                '            cache = self.__dict__.setdefault("_served", {})\n'
                "            if x.dtype not in cache:\n                cache[x.dtype] = self.weight(x.dtype)\n"
                "            return F.linear(x, cache[x.dtype], bias)\n        " + FORWARD,
                "test_nf4_linear_computes_F_linear_with_the_dequantized_weight", "torch.inference_mode()"),
    WrongAnswer("the weight's bytes kept", KATA, BUFFERS,
                BUFFERS + "; self._full = base.weight.detach().reshape(-1).view(torch.uint8).numpy().tobytes()",
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "(its bytes)"),
    WrongAnswer("the weight's untyped storage kept", KATA, BUFFERS,
                BUFFERS + "; self._full = base.weight.detach().clone().untyped_storage()",
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "(a torch storage)"),
    WrongAnswer("the weight's bytes kept as a list of ints", KATA, BUFFERS,
                BUFFERS + "; self._full = list(base.weight.detach().reshape(-1).view(torch.uint8).numpy().tobytes())",
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "(its Python ints)"),
    WrongAnswer("A stored (in, r), its fan-in read as r", KATA, "torch.empty(r, base.in_features, **same_place)",
                "torch.empty(base.in_features, r, **same_place)",
                "test_qlora_computes_the_nf4_base_at_init", "fan-in was taken from A stored (in, r)",
                more_edits=((DOWN, DOWN.replace("self.lora_A)", "self.lora_A.T)")),)),
    WrongAnswer("a shared layer targeted by its first name only", KATA, CHOICE,
                CHOICE.replace("_matches(names, targets)", "_matches(names[:1], targets)"),
                "test_apply_qlora_quantizes_the_model_zoo", "targeted when any of its names"),
    WrongAnswer("x flattened with view", KATA, FORWARD,
                "return F.linear(x.view(-1, self.in_features), self.weight(x.dtype), bias).view(*x.shape[:-1], -1)",
                "test_nf4_linear_computes_F_linear_with_the_dequantized_weight", "use reshape, not view"),
    WrongAnswer("the adapter's input flattened with view", KATA, DOWN,
                "down = F.linear(self.dropout(x).view(-1, x.shape[-1]), self.lora_A).view(*x.shape[:-1], -1) * self.scaling",
                "test_qlora_output_and_gradients_are_lora_over_the_dequantized_weight", "use reshape, not view"),
    WrongAnswer("no graph in eval mode", KATA, RESULT,
                "if not self.training:\n            with torch.no_grad():\n                " + RESULT + "\n        " + RESULT,
                "test_qlora_output_and_gradients_are_lora_over_the_dequantized_weight", "eval mode"),
    WrongAnswer("the replaced layers' weights freed in place", KATA, FREEZE,
                FREEZE + "\n    for names, module in linears:\n"
                "        module.weight.data = torch.empty(0, dtype=module.weight.dtype, device=module.weight.device)",
                "test_apply_qlora_quantizes_the_model_zoo", "tied"),
    WrongAnswer("fp16 x on a wider base computed in float32", KATA, FORWARD,
                "if x.dtype == torch.float16 and self.weight_dtype != torch.float16:\n"
                "            return F.linear(x.float(), self.weight(torch.float32), None if bias is None else bias.float()).to(x.dtype)\n"
                "        " + FORWARD,
                "test_nf4_linear_rounds_the_weight_to_x_dtype_before_the_product", "expected exactly",
                more_edits=((BUFFERS, BUFFERS + "; self.weight_dtype = base.weight.dtype"),)),
    WrongAnswer("the bias cast once per dtype", KATA, FORWARD,
                'cache = self.__dict__.setdefault("_bias_cast", {})\n        if x.dtype not in cache:\n'
                "            cache[x.dtype] = None if self.bias is None else self.bias.detach().to(x.dtype, copy=True)\n"
                "        return F.linear(x, self.weight(x.dtype), cache[x.dtype])",
                "test_nf4_linear_computes_F_linear_with_the_dequantized_weight", "bias was edited"),
    WrongAnswer("the backward dequantizes in the base's dtype", KATA, FORWARD, "return _NF4MatMul.apply(x, self, bias)",
                "test_nf4_linear_computes_F_linear_with_the_dequantized_weight", "dL/dx",
                more_edits=((BUFFERS, BUFFERS + "; self.weight_dtype = base.weight.dtype"),
                            ("def _names(", "class _NF4MatMul(torch.autograd.Function):\n    @staticmethod\n"
                             "    def forward(ctx, x, layer, bias):\n        ctx.layer = layer\n"
                             "        return F.linear(x, layer.weight(x.dtype), bias)\n\n    @staticmethod\n"
                             "    def backward(ctx, grad):\n        weight = ctx.layer.weight(ctx.layer.weight_dtype)\n"
                             "        return (grad.to(weight.dtype) @ weight).to(grad.dtype), None, None\n\n\n"
                             "def _names("))),
    WrongAnswer("fp16 adapter folded in with addmm's beta and alpha swapped", KATA, RESULT,
                "if x.dtype == torch.float16:\n            rows = x.reshape(-1, x.shape[-1])\n"
                "            u = F.linear(self.dropout(rows), self.lora_A)\n"
                "            y = torch.addmm(self.base(rows), u, self.lora_B.T, beta=self.scaling)\n"
                "            return y.reshape(*x.shape[:-1], y.shape[-1])\n        " + RESULT,
                "test_qlora_computes_the_nf4_base_at_init", "torch.float16"),
    WrongAnswer("the bias Parameter registered as a buffer, requiring grad", KATA, BIAS,
                'self.register_buffer("bias", base.bias)',
                "test_nf4_linear_keeps_the_bias_as_it_was_and_passes_gradients_to_x", "requiring grad"),
    WrongAnswer("a merged weight cached for inference-mode serving", KATA, RESULT,
                "if torch.is_inference_mode_enabled():\n"
                "            self._merged = self.base.weight(x.dtype) + self.scaling * (self.lora_B @ self.lora_A).to(x.dtype)\n"
                "            bias = None if self.base.bias is None else self.base.bias.to(x.dtype)\n"
                "            return F.linear(x, self._merged, bias)\n        " + RESULT,
                "test_qlora_output_and_gradients_are_lora_over_the_dequantized_weight", "inference_mode"),
    # Round 11 (team Q): caches kept only in eval mode under inference_mode, objects replaced by
    # load_state_dict(assign=True), edits through .data, the rank's domain, half precision in every regime, and
    # apply_qlora's train/eval modes.
    WrongAnswer("a dequantized weight served in eval mode, dropped by train()", KATA, FORWARD,
                "if not self.training and torch.is_inference_mode_enabled():\n"
                '            cache = self.__dict__.setdefault("_serving", {})\n'
                "            if x.dtype not in cache:\n                cache[x.dtype] = self.weight(x.dtype)\n"
                "            return F.linear(x, cache[x.dtype], bias)\n        " + FORWARD,
                "test_nf4_linear_follows_its_buffers_and_bias_in_every_mode", "eval mode",
                more_edits=(("def forward(self, x: torch.Tensor) -> torch.Tensor:\n        \"\"\"x (..., in) -> (..., out), in x's dtype.\"\"\"",
                             "def train(self, mode: bool = True) -> NF4Linear:\n"
                             '        self.__dict__.pop("_serving", None)\n        return super().train(mode)\n\n'
                             "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n        \"\"\"x (..., in) -> (..., out), in x's dtype.\"\"\""),)),
    WrongAnswer("merged for serving in eval mode, unmerged by train()", KATA, RESULT,
                "if not self.training and torch.is_inference_mode_enabled():\n"
                '            if getattr(self, "_merged", None) is None or self._merged.dtype != x.dtype:\n'
                "                self._merged = self.base.weight(x.dtype) + (self.scaling * self.lora_B @ self.lora_A).to(x.dtype)\n"
                "            bias = None if self.base.bias is None else self.base.bias.to(x.dtype)\n"
                "            return F.linear(x, self._merged, bias)\n        " + RESULT,
                "test_qlora_follows_its_factors_in_every_mode", "eval mode",
                more_edits=(("def forward(self, x: torch.Tensor) -> torch.Tensor:\n        \"\"\"x (..., in) -> (..., out), in the base's dtype.\"\"\"",
                             "def train(self, mode: bool = True) -> QLoRALinear:\n"
                             "        self._merged = None\n        return super().train(mode)\n\n"
                             "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n        \"\"\"x (..., in) -> (..., out), in the base's dtype.\"\"\""),)),
    WrongAnswer("the factors' transposes kept from construction", KATA, DOWN,
                "down = (self.dropout(x) @ self._A_t) * self.scaling",
                "test_qlora_follows_its_factors_in_every_mode", "assign=True",
                more_edits=((RESULT, "return self.base(x) + down @ self._B_t"),
                            (QUANTIZE, QUANTIZE + "\n        self._A_t, self._B_t = self.lora_A.t(), self.lora_B.t()"))),
    WrongAnswer("flat views of the NF4 buffers kept from construction", KATA,
                "return dequantize_nf4(self.packed, self.absmax, (self.out_features, self.in_features), dtype, BLOCK_SIZE)",
                "return dequantize_nf4(self._bytes, self._scales, (self.out_features, self.in_features), dtype, BLOCK_SIZE)",
                "test_nf4_linear_follows_its_buffers_and_bias_in_every_mode", "assign=True",
                more_edits=((BUFFERS, BUFFERS + "; self._bytes = packed.view(-1); self._scales = absmax.view(-1)"),)),
    WrongAnswer("the bias cast memoized by version", KATA, FORWARD,
                'memo = self.__dict__.setdefault("_cast_bias", {})\n'
                "        if self.bias is not None and memo.get(x.dtype, (None,))[0] != (self.bias._version, self.bias.data_ptr()):\n"
                "            memo[x.dtype] = ((self.bias._version, self.bias.data_ptr()), self.bias.detach().to(x.dtype, copy=True))\n"
                "        bias = None if self.bias is None else memo[x.dtype][1]\n        " + FORWARD,
                "test_nf4_linear_follows_its_buffers_and_bias_in_every_mode", ".data"),
    WrongAnswer("rank checked as r <= 0", KATA, "if isinstance(r, bool) or not isinstance(r, int) or r < 1:", "if r <= 0:",
                "test_qlora_rejects_bad_arguments", "expected a ValueError"),
    WrongAnswer("rank clamped to min(in, out)", KATA, "self.r, self.alpha, self.scaling = r, alpha, alpha / r",
                "r = min(r, base.in_features, base.out_features)\n        self.r, self.alpha, self.scaling = r, alpha, alpha / r",
                "test_qlora_keeps_a_rank_above_min_in_out", "keep r as given"),
    WrongAnswer("a hand-written dropout mask in float32", KATA, DOWN,
                "p = self.dropout.p\n        dropped = x * ((torch.rand_like(x) >= p) / (1 - p)) if self.training and p > 0 else x\n"
                "        down = F.linear(dropped, self.lora_A) * self.scaling",
                "test_qlora_runs_in_half_precision_with_dropout_and_a_strided_x", "rand_like"),
    WrongAnswer("a half-precision addmm path flattening x with view", KATA, RESULT,
                "if x.dtype in (torch.float16, torch.bfloat16):\n            rows = x.view(-1, x.shape[-1])\n"
                "            down = F.linear(self.dropout(rows), self.lora_A) * self.scaling\n"
                "            y = torch.addmm(self.base(rows), down, self.lora_B.T)\n"
                "            return y.view(*x.shape[:-1], y.shape[-1])\n        " + RESULT,
                "test_qlora_runs_in_half_precision_with_dropout_and_a_strided_x", "reshape, not view"),
    WrongAnswer("apply_qlora puts the model in train mode", KATA, "            parameter.requires_grad_(False)\n    return model",
                "            parameter.requires_grad_(False)\n    return model.train()",
                "test_apply_qlora_changes_no_train_or_eval_mode", "train/eval mode"),
    WrongAnswer("the weight kept under a module-level name", KATA, BUFFERS,
                BUFFERS + "\n        global LAST_WEIGHT\n        LAST_WEIGHT = base.weight.detach().clone()",
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "full-precision copy"),
]  # fmt: skip
WRONG_ANSWERS += [
    # Round 13 of the red team (team D).
    WrongAnswer("NF4Linear's product in float32 when grad is on in half precision", KATA, FORWARD,
                "if torch.is_grad_enabled() and x.dtype in (torch.float16, torch.bfloat16):  # training: a float32 product\n"
                "            return F.linear(x.float(), self.weight(torch.float32), None if bias is None else bias.float()).to(x.dtype)\n"
                "        " + FORWARD,
                "test_nf4_linear_rounds_the_weight_to_x_dtype_before_the_product", "grad on"),
    WrongAnswer("QLoRALinear merged into one half-precision weight in eval mode", KATA, DOWN,
                "if not self.training and x.dtype in (torch.float16, torch.bfloat16):  # serving: one product, update folded in\n"
                "            weight = self.base.weight(x.dtype) + (self.scaling * (self.lora_B @ self.lora_A)).to(x.dtype)\n"
                "            return F.linear(x, weight, None if self.base.bias is None else self.base.bias.to(x.dtype))\n"
                "        " + DOWN,
                "test_nf4_linear_rounds_the_weight_to_x_dtype_before_the_product", "trained factors"),
]  # fmt: skip
WRONG_ANSWERS += [
    # Round 14 of the red team (team D).
    WrongAnswer("QLoRALinear refuses an alpha <= 0", KATA, "        self.r, self.alpha, self.scaling = r, alpha, alpha / r\n",
                "        if alpha <= 0:\n"
                "            raise ValueError(f\"QLoRALinear needs alpha > 0, got alpha={alpha!r}\")\n"
                "        self.r, self.alpha, self.scaling = r, alpha, alpha / r\n",
                "test_qlora_takes_every_argument_the_stub_allows", "alpha=0.0"),
    WrongAnswer("QLoRALinear skips the adapter at alpha 0", KATA, DOWN,
                "if self.scaling == 0:  # the adapter adds nothing: the base alone\n"
                "            return self.base(x)\n        " + DOWN,
                "test_qlora_takes_every_argument_the_stub_allows", "zeros at alpha 0, not None"),
    WrongAnswer("apply_qlora refuses an alpha <= 0", KATA, "    if not any(_matches(names, targets) for names, _ in linears):\n",
                "    if alpha <= 0:\n"
                "        raise ValueError(f\"apply_qlora needs alpha > 0, got alpha={alpha!r}\")\n"
                "    if not any(_matches(names, targets) for names, _ in linears):\n",
                "test_qlora_takes_every_argument_the_stub_allows", "apply_qlora(model, ('fc1', 'fc2'), 4, 0.0"),
]  # fmt: skip
WRONG_ANSWERS += [
    # Round 15 of the red team (team D): lora_linear's contract, inherited; refused calls that changed state first.
    WrongAnswer("QLoRALinear detaches x A^T when A is frozen (LoRA-FA)", KATA, DOWN,
                DOWN + "\n        if not self.lora_A.requires_grad:  # LoRA-FA: A frozen, save the backward through it\n"
                "            down = down.detach()",
                "test_qlora_keeps_lora_linears_contract_with_frozen_factors_and_the_base_output", "the adapter's share is lost"),
    WrongAnswer("QLoRALinear adds the update into the base's output in place", KATA,
                "        return self.base(x) + F.linear(down, self.lora_B)\n",
                "        y = self.base(x)\n        return y.add_(F.linear(down, self.lora_B))  # no second (..., out) tensor\n",
                "test_qlora_keeps_lora_linears_contract_with_frozen_factors_and_the_base_output", "in place"),
    WrongAnswer("apply_qlora quantizes as it goes and checks for a target only after", KATA,
                "    if not any(_matches(names, targets) for names, _ in linears):\n"
                "        raise ValueError(f\"apply_qlora: no nn.Linear outside skip={skipped} matches target_modules={targets}\")\n",
                "",
                "test_apply_qlora_raises_when_no_target_is_left", "first changed the caller's model",
                more_edits=(("    adapters = {id(p) for m in model.modules() if isinstance(m, QLoRALinear) for p in (m.lora_A, m.lora_B)}\n",
                             "    if not any(_matches(names, targets) for names, _ in linears):\n"
                             "        raise ValueError(f\"apply_qlora: no nn.Linear outside skip={skipped} matches target_modules={targets}\")\n"
                             "    adapters = {id(p) for m in model.modules() if isinstance(m, QLoRALinear) for p in (m.lora_A, m.lora_B)}\n"),)),
    WrongAnswer("QLoRALinear quantizes its base before checking r and dropout", KATA,
                "        if isinstance(r, bool) or not isinstance(r, int) or r < 1:\n",
                "        base.requires_grad_(False)  # the base first, frozen as in LoRALinear, then quantized\n"
                "        self.base = NF4Linear(base)\n"
                "        if isinstance(r, bool) or not isinstance(r, int) or r < 1:\n",
                "test_qlora_rejects_bad_arguments", "requires_grad went True -> False"),
]  # fmt: skip
WRONG_ANSWERS += [
    # Round 16 of the red team (team D2): the reload checks only ever wrote a layer's own state back into it.
    WrongAnswer("NF4 buffers registered persistent=False (left out of state_dict)", KATA,
                'self.register_buffer("packed", packed)\n        self.register_buffer("absmax", absmax)',
                'self.register_buffer("packed", packed, persistent=False)  # derived from the weight: not saved\n'
                '        self.register_buffer("absmax", absmax, persistent=False)',
                "test_a_state_dict_loaded_into_another_layer_makes_it_compute_the_first", "persistent"),
    WrongAnswer("the absmax registered persistent=False (a scale thought derived)", KATA,
                'self.register_buffer("absmax", absmax)',
                'self.register_buffer("absmax", absmax, persistent=False)  # per-block scales, not state',
                "test_a_state_dict_loaded_into_another_layer_makes_it_compute_the_first", "the absmax among them"),
]  # fmt: skip
WRONG_ANSWERS += [
    # Round 18 of the red team (team D): lora_linear's init checks, inherited.
    WrongAnswer("QLoRALinear's A tiled from two random rows (a rank-2 adapter)", KATA,
                "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
                "with torch.no_grad():\n"
                "            seed = torch.empty(2, base.in_features, **same_place)\n"
                "            nn.init.uniform_(seed, -1 / math.sqrt(base.in_features), 1 / math.sqrt(base.in_features))\n"
                "            self.lora_A.copy_(seed.repeat((r + 1) // 2, 1)[:r])",
                "test_qlora_computes_the_nf4_base_at_init", "rows copies of one another"),
    # Round 18 of the red team (team D): a model's own layers named like an adapter's parts.
    WrongAnswer("apply_qlora tells an adapter's parts by name (lora_A, lora_B)", KATA,
                "        if isinstance(module, nn.Linear):\n            held.setdefault",
                "        if isinstance(module, nn.Linear) and name.rpartition(\".\")[2] not in (\"lora_A\", \"lora_B\"):  # factors\n"
                "            held.setdefault",
                "test_apply_qlora_quantizes_the_model_zoo", "lora_A is Linear, expected NF4Linear"),
    # Round 18 of the red team (team D): the memory walk saw tensors and Python buffers only.
    WrongAnswer("the weight's bytes kept as one Python int", KATA, BUFFERS,
                BUFFERS + "; self._weight_bits = int.from_bytes(base.weight.detach().cpu().contiguous()"
                '.view(torch.uint8).numpy().tobytes(), "little")  # to unquantize later',
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "_weight_bits (its"),
    WrongAnswer("the weight's bytes kept in an io.BytesIO", KATA, BUFFERS,
                BUFFERS + "; self._original = __import__('io').BytesIO(base.weight.detach().cpu().contiguous()"
                ".view(torch.uint8).numpy().tobytes())  # to unquantize later",
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "_original (its"),
    WrongAnswer("the update folded into the weight from 2048 rows", KATA, RESULT,
                "if x.numel() // max(x.shape[-1], 1) >= 2048 and not (self.training and self.dropout.p > 0):  # a real batch\n"
                "            merged = self.base.weight(torch.float32) + self.scaling * (self.lora_B.float() @ self.lora_A.float())\n"
                "            bias = None if self.base.bias is None else self.base.bias.to(x.dtype)\n"
                "            return F.linear(x, merged.to(x.dtype), bias)\n        " + RESULT,
                "test_nf4_linear_rounds_the_weight_to_x_dtype_before_the_product", "the update merged into the weight"),
    WrongAnswer("half batches of 2048 rows computed in float32", KATA, FORWARD,
                "if x.numel() // max(x.shape[-1], 1) >= 2048 and x.dtype in (torch.float16, torch.bfloat16):\n"
                "            return F.linear(x.float(), self.weight(torch.float32), None if bias is None else bias.float()).to(x.dtype)\n"
                "        " + FORWARD,
                "test_nf4_linear_rounds_the_weight_to_x_dtype_before_the_product", "float32 and cast afterwards"),
]  # fmt: skip
WRONG_ANSWERS += [
    # Round 19 of the red team (team D): the memory walk charged Python floats only in a list or tuple, a complex never.
    WrongAnswer("the weight kept as a list of Python complex numbers", KATA, BUFFERS,
                BUFFERS + "; self._original = [complex(v) for v in base.weight.detach().float().reshape(-1).tolist()]",
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "in NF4Linear._original)"),
    WrongAnswer("the weight kept in a dict of Python floats keyed by (row, col)", KATA, BUFFERS,
                BUFFERS + "; self._original = {(i, j): v for i, row in enumerate(base.weight.detach().tolist())"
                " for j, v in enumerate(row)}",
                "test_nf4_linear_keeps_the_weight_only_as_nf4_buffers", "in NF4Linear._original)"),
]  # fmt: skip
