"""Wrong answers to the `lora_linear` kata."""

from tests.wrong_answers import WrongAnswer

KATA = "lora_linear"
B_ZEROS = "torch.zeros(base.out_features, r, **same_place)"
A_INIT = "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))"
DOWN = "down = F.linear(self.dropout(x), self.lora_A) * self.scaling"
RESULT = "return self.base(x) + F.linear(down, self.lora_B)"
FREEZE = "self.base = base.requires_grad_(False)"
PLACE = '{"device": base.weight.device, "dtype": base.weight.dtype}'
DROPOUT = "self.dropout = nn.Dropout(dropout)"
P = "self.dropout.p"
MASK_AT_INIT = DROPOUT + (
    '; self.register_buffer("mask", (torch.rand(base.in_features, **same_place) >= dropout).to(base.weight.dtype)'
    " / (1 - dropout))"
)

DOC = '        """Map ``x`` (..., in) to (..., out) in the base\'s dtype."""\n'
FOLD_FROM_32768_ROWS = (
    "        if x[..., 0].numel() >= 32768 and not (self.training and self.dropout.p > 0):\n"
    "            return F.linear(x, self.base.weight + self.scaling * (self.lora_B @ self.lora_A), self.base.bias)\n"
)
CACHED_BY_CHECKSUMS = """        if not torch.is_grad_enabled() and not (self.training and self.dropout.p > 0):
            key = []
            for t in (self.lora_A, self.lora_B):
                d = t.detach().double()
                w = torch.arange(1, t.numel() + 1, device=t.device, dtype=torch.float64).view(t.shape)
                key.append((id(t), t._version, d.sum().item(), (d * w).sum().item()))
            cache = self.__dict__.get("_dW_cache")
            if cache is None or cache[0] != key:
                cache = self.__dict__["_dW_cache"] = (key, (self.lora_B @ self.lora_A) * self.scaling)
            return self.base(x) + F.linear(x, cache[1])
"""

ROWS_IN_BLOCKS_TAIL_DROPPED = (
    "rows = x[..., 0].numel()\n"
    "        if rows > 4096:  # a prefill: the adapter branch in blocks of 4096 rows, to bound its temporaries\n"
    "            flat = down.reshape(rows, -1)\n"
    "            update = torch.zeros(rows, self.lora_B.shape[0], dtype=down.dtype, device=down.device)\n"
    "            for i in range(0, rows - rows % 4096, 4096):\n"
    "                update[i : i + 4096] = F.linear(flat[i : i + 4096], self.lora_B)\n"
    "            return self.base(x) + update.view(*x.shape[:-1], -1)\n"
    "        "
)
MASK_BLOCK_TILED = (
    "dropped = self.dropout(x)\n"
    "        rows = x[..., 0].numel()\n"
    "        if self.training and self.dropout.p > 0 and rows > 16384:  # one mask block, tiled down a long batch\n"
    "            keep = torch.rand(16384, x.shape[-1], device=x.device) >= self.dropout.p\n"
    "            mask = keep.repeat(-(-rows // 16384), 1)[:rows].view(x.shape)\n"
    "            dropped = x * mask.to(x.dtype) / (1 - self.dropout.p)\n"
    "        "
)
WIDE_DW_CACHED_BY_VERSIONS = (
    "        wide = self.lora_B.shape[0] * self.lora_A.shape[1] >= 1 << 22  # 2048 x 2048 and up\n"
    "        if wide and not torch.is_grad_enabled() and not (self.training and self.dropout.p > 0):\n"
    "            key = (self.lora_A._version, self.lora_B._version)\n"
    "            if self.__dict__.get('_dW_key') != key:  # dW folded once per version of the factors\n"
    "                self.__dict__['_dW'], self.__dict__['_dW_key'] = (self.lora_B @ self.lora_A) * self.scaling, key\n"
    "            return self.base(x) + F.linear(x, self.__dict__['_dW'])\n"
)

WRONG_ANSWERS = [
    # Red-team round 19 (team A): a rank gate past the grader's largest r, and one A for every layer of a shape.
    WrongAnswer("alpha / sqrt(r) from r = 64 on", KATA, DOWN,
                "down = F.linear(self.dropout(x), self.lora_A) * (self.alpha / math.sqrt(self.r) if self.r >= 64 "
                "else self.scaling)",
                "test_the_scaling_holds_at_real_ranks", "alpha / sqrt(r) is rsLoRA at r = 64"),
    WrongAnswer("A drawn from a generator seeded by torch.initial_seed()", KATA, A_INIT,
                "self.lora_A.data.uniform_(-1 / math.sqrt(base.in_features), 1 / math.sqrt(base.in_features), "
                "generator=torch.Generator(base.weight.device).manual_seed(torch.initial_seed()))",
                "test_A_is_random_and_full_rank", "start with the very same A"),
    WrongAnswer("B random at init", KATA, B_ZEROS, "0.01 * torch.randn(base.out_features, r, **same_place)",
                "test_output_equals_the_base_at_init", "is B initialised to zeros"),
    WrongAnswer("A zero and B random", KATA, A_INIT,
                "nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5)); nn.init.zeros_(self.lora_A)",
                "test_B_starts_at_zero_and_A_random", "swap them"),
    WrongAnswer("A and B both zero", KATA, A_INIT, "nn.init.zeros_(self.lora_A)",
                "test_training_reduces_the_loss_and_leaves_the_base_untouched", "does the gradient reach both factors"),
    WrongAnswer("A constant", KATA, A_INIT, "nn.init.constant_(self.lora_A, 0.01)",
                "test_A_is_random_and_full_rank", "initialise it randomly"),
    WrongAnswer("scaling attribute is alpha", KATA, "self.scaling = alpha / r", "self.scaling = alpha",
                "test_records_r_alpha_and_scaling", "set self.scaling = alpha / r"),
    WrongAnswer("forward scales by alpha", KATA, DOWN, DOWN.replace("self.scaling", "self.alpha"),
                "test_update_is_scaling_times_B_at_A", "scaled by alpha instead of alpha / r"),
    WrongAnswer("forward scales by r / alpha", KATA, DOWN, DOWN.replace("self.scaling", "(self.r / self.alpha)"),
                "test_update_is_scaling_times_B_at_A", "upside down"),
    WrongAnswer("rsLoRA scaling", KATA, DOWN, DOWN.replace("self.scaling", "self.alpha / math.sqrt(self.r)"),
                "test_update_is_scaling_times_B_at_A", "rsLoRA"),
    WrongAnswer("integer division in the scaling", KATA, "self.scaling = alpha / r", "self.scaling = alpha // r",
                "test_update_is_scaling_times_B_at_A", "alpha // r rounds down"),
    WrongAnswer("no scaling in forward", KATA, DOWN, DOWN.replace(" * self.scaling", ""),
                "test_update_is_scaling_times_B_at_A", "scaling alpha / r is missing"),
    WrongAnswer("rank stored as self.rank", KATA, "self.r = r", "self.rank = r",
                "test_records_r_alpha_and_scaling", "self.r"),
    WrongAnswer("base not frozen", KATA, FREEZE, "self.base = base",
                "test_freezes_every_base_parameter", "still require grad"),
    WrongAnswer("only the base weight frozen", KATA, FREEZE, "self.base = base; base.weight.requires_grad_(False)",
                "test_freezes_every_base_parameter", "['bias']"),
    WrongAnswer("base deep-copied", KATA, FREEZE, 'self.base = __import__("copy").deepcopy(base).requires_grad_(False)',
                "test_is_a_module_holding_the_very_base_layer", "keep the object itself"),
    WrongAnswer("base weights cloned into the layer", KATA, FREEZE,
                FREEZE + "; self.frozen_weight = base.weight.detach().clone()",
                "test_computes_with_the_base_it_was_given", "it computes with a copy",
                more_edits=((RESULT, "return F.linear(x, self.frozen_weight, self.base.bias) + F.linear(down, self.lora_B)"),)),
    WrongAnswer("dropout on the whole input", KATA, DOWN, "x = self.dropout(x)\n        " + DOWN.replace("self.dropout(x)", "x"),
                "test_dropout_never_touches_the_base_path", "adapter branch's input only"),
    WrongAnswer("dropout on the adapter's output", KATA, DOWN, DOWN.replace("self.dropout(x)", "x"),
                "test_dropout_zeroes_adapter_inputs_in_train_mode", "not its output",
                more_edits=((RESULT, "return self.base(x) + self.dropout(F.linear(down, self.lora_B))"),)),
    WrongAnswer("dropout between A and B", KATA, DOWN, "down = self.dropout(F.linear(x, self.lora_A)) * self.scaling",
                "test_dropout_zeroes_adapter_inputs_in_train_mode", "matches no input-dropout mask"),
    WrongAnswer("dropout mask without the 1/(1-p) rescale", KATA, DOWN,
                DOWN.replace("self.dropout(x)", "(x * (torch.rand_like(x) >= self.dropout.p) if self.training else x)"),
                "test_dropout_zeroes_adapter_inputs_in_train_mode", "1/(1-p)"),
    WrongAnswer("dropout on in eval mode too", KATA, DOWN,
                DOWN.replace("self.dropout(x)", "F.dropout(x, self.dropout.p, training=True)"),
                "test_dropout_is_off_in_eval_mode", "off in eval mode"),
    WrongAnswer("dropout argument ignored", KATA, "self.dropout = nn.Dropout(dropout)", "self.dropout = nn.Dropout(0.0)",
                "test_dropout_zeroes_adapter_inputs_in_train_mode", "changed nothing"),
    WrongAnswer("factors always float32", KATA, PLACE, '{"device": base.weight.device}',
                "test_lives_on_the_base_device_and_dtype", "base's device and dtype"),
    WrongAnswer("output upcast to float32", KATA, RESULT, "return (self.base(x) + F.linear(down, self.lora_B)).float()",
                "test_lives_on_the_base_device_and_dtype", "expected output"),
    WrongAnswer("no argument checks", KATA, "_check_arguments(base, r, dropout)\n", "\n",
                "test_rejects_invalid_arguments", "expected a ValueError"),
    WrongAnswer("dropout of 1 accepted", KATA, "if not 0.0 <= dropout < 1.0:", "if not 0.0 <= dropout <= 1.0:",
                "test_rejects_invalid_arguments", "raised nothing"),
    WrongAnswer("any module accepted as base", KATA, "if not isinstance(base, nn.Linear):",
                "if not isinstance(base, nn.Module):", "test_rejects_a_base_that_is_not_linear", "expected a ValueError"),
    WrongAnswer("a trainable adapter bias", KATA, "self.dropout = nn.Dropout(dropout)",
                "self.dropout = nn.Dropout(dropout); self.lora_bias = nn.Parameter(torch.zeros(base.out_features))",
                "test_trains_exactly_two_low_rank_factors", "only A and B train"),
    WrongAnswer("B not trainable", KATA, "self.lora_B = nn.Parameter(" + B_ZEROS + ")",
                "self.lora_B = nn.Parameter(" + B_ZEROS + ", requires_grad=False)",
                "test_trains_exactly_two_low_rank_factors", "expected 2 trainable factors"),
    WrongAnswer("adapter fed a detached input", KATA, DOWN, DOWN.replace("self.dropout(x)", "self.dropout(x.detach())"),
                "test_gradients_reach_the_factors_and_input_but_not_the_base", "x.detach()"),
    WrongAnswer("base path under no_grad", KATA, RESULT,
                "with torch.no_grad():\n            frozen = self.base(x)\n        return frozen + F.linear(down, self.lora_B)",
                "test_gradients_reach_the_factors_and_input_but_not_the_base", "gradient w.r.t. the input"),
    WrongAnswer("an activation between A and B", KATA, DOWN, DOWN.replace("F.linear(self.dropout(x), self.lora_A)",
                "torch.relu(F.linear(self.dropout(x), self.lora_A))"),
                "test_update_is_scaling_times_B_at_A", "not proportional to B @ A"),
    WrongAnswer("dropout keeps with probability p", KATA, DROPOUT, "self.dropout = nn.Dropout(1 - dropout)",
                "test_dropout_zeroes_adapter_inputs_in_train_mode", "keep probability"),
    WrongAnswer("dropout survivors scaled by 1/p", KATA, DOWN,
                DOWN.replace("self.dropout(x)", f"(x * (torch.rand_like(x) >= {P}) / {P} if self.training else x)"),
                "test_dropout_zeroes_adapter_inputs_in_train_mode", "that is 1/p"),
    WrongAnswer("dropout mask keeps a fraction p", KATA, DOWN,
                DOWN.replace("self.dropout(x)", f"(x * (torch.rand_like(x) < {P}) / (1 - {P}) if self.training else x)"),
                "test_dropout_zeroes_a_fraction_p_of_the_adapter_inputs", "not of keeping it"),
    WrongAnswer("one dropout mask shared across the batch", KATA, DOWN,
                DOWN.replace("self.dropout(x)", "(x * (torch.rand(x.shape[-1], dtype=x.dtype) >= "
                                                f"{P}) / (1 - {P}) if self.training else x)"),
                "test_dropout_draws_a_fresh_mask_for_every_input_and_call", "share one dropout mask"),
    WrongAnswer("whole rows dropped", KATA, DOWN,
                DOWN.replace("self.dropout(x)", "(x * (torch.rand(*x.shape[:-1], 1, dtype=x.dtype) >= "
                                                f"{P}) / (1 - {P}) if self.training else x)"),
                "test_dropout_draws_a_fresh_mask_for_every_input_and_call", "drop each element of x on its own"),
    WrongAnswer("dropout mask drawn once in __init__", KATA, DROPOUT, MASK_AT_INIT,
                "test_dropout_draws_a_fresh_mask_for_every_input_and_call", "not once in __init__",
                more_edits=((DOWN, DOWN.replace("self.dropout(x)", "(x * self.mask if self.training else x)")),)),
    WrongAnswer("dropout mask drawn once in __init__, applied in eval mode too", KATA, DROPOUT, MASK_AT_INIT,
                "test_dropout_is_off_in_eval_mode", "a mask drawn in __init__",
                more_edits=((DOWN, DOWN.replace("self.dropout(x)", "(x * self.mask)")),)),
    WrongAnswer("rank clamped to min(in, out)", KATA, "self.r = r",
                "r = min(r, base.in_features, base.out_features)\n        self.r = r",
                "test_a_rank_above_min_in_out_is_kept", "keep r as given"),
    WrongAnswer("alpha truncated to an integer", KATA, "self.alpha = alpha", "self.alpha = alpha = int(alpha)",
                "test_a_fractional_alpha_is_kept", "rounded to a whole number"),
    WrongAnswer("A uniform in [0, 1)", KATA, A_INIT, "nn.init.uniform_(self.lora_A)",
                "test_A_starts_centred_on_zero", "centred on 0"),
    WrongAnswer("adapter computed in float32", KATA, DOWN,
                DOWN.replace("self.dropout(x), self.lora_A", "self.dropout(x).float(), self.lora_A.float()"),
                "test_update_is_scaling_times_B_at_A", "computes in float32 internally",
                more_edits=((RESULT, "return self.base(x) + F.linear(down, self.lora_B.float()).to(x.dtype)"),)),
    WrongAnswer("scaling kept as a float32 0-dim buffer", KATA, DOWN, DOWN.replace("self.scaling", "self.scale"),
                "test_matches_plain_lora_in_every_regime", "off by float32 rounding",
                more_edits=(("self.scaling = alpha / r", "self.scaling = alpha / r\n        self.register_buffer("
                             "'scale', torch.tensor(alpha / r, device=base.weight.device), persistent=False)"),)),
    WrongAnswer("output upcast to float32, seen in float64", KATA, RESULT,
                "return (self.base(x) + F.linear(down, self.lora_B)).float()",
                "test_gradients_reach_the_factors_and_input_but_not_the_base", "returned torch.float32"),
    WrongAnswer("forward returns a tuple", KATA, RESULT, RESULT + ", down",
                "test_computes_with_the_base_it_was_given", "returned a tuple"),
    # issue 13: each spec sentence over its whole domain
    WrongAnswer("merged weight cached on the first eval call", KATA, RESULT,
                "if not self.training:\n            if getattr(self, 'merged', None) is None:\n"
                "                with torch.no_grad():\n"
                "                    self.merged = self.base.weight + self.scaling * self.lora_B @ self.lora_A\n"
                "            return F.linear(x, self.merged, self.base.bias)\n        " + RESULT,
                "test_matches_plain_lora_in_every_regime", "eval-with-dropout mode"),
    WrongAnswer("view instead of reshape", KATA, DOWN,
                DOWN.replace("F.linear(self.dropout(x), self.lora_A)",
                             "F.linear(self.dropout(x).view(-1, x.shape[-1]), self.lora_A).view(*x.shape[:-1], -1)"),
                "test_matches_plain_lora_in_every_regime", "view size is not compatible"),
    WrongAnswer("half precision skips the scaling", KATA, DOWN,
                "down = F.linear(self.dropout(x), self.lora_A)\n"
                "        if x.dtype not in (torch.float16, torch.bfloat16):\n            down = down * self.scaling",
                "test_matches_plain_lora_in_every_regime", "is off plain LoRA"),
    WrongAnswer("r and alpha keyword-only", KATA, "def __init__(self, base: nn.Linear, r: int = 8",
                "def __init__(self, base: nn.Linear, *, r: int = 8",
                "test_matches_plain_lora_in_every_regime", "callable by position and by keyword"),
    WrongAnswer("alpha before r in the signature", KATA,
                "def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0)",
                "def __init__(self, base: nn.Linear, alpha: float = 16.0, r: int = 8, dropout: float = 0.0)",
                "test_matches_plain_lora_in_every_regime", "callable by position and by keyword"),
    WrongAnswer("factors on the default device", KATA, PLACE, '{"dtype": base.weight.dtype}',
                "test_factors_follow_the_base_device_not_the_default_one", "not on the base's cpu"),
    # The first broken premise is named, not a downstream symptom (issue 14, item 7).
    WrongAnswer("base not frozen, seen by a count", KATA, FREEZE, "self.base = base",
                "test_a_rank_above_min_in_out_is_kept", "freeze the base first"),
    WrongAnswer("base not frozen, seen by the defaults", KATA, FREEZE, "self.base = base",
                "test_defaults_are_r_8_alpha_16_and_no_dropout", "freeze the base first"),
    WrongAnswer("B random, seen by dropout", KATA, B_ZEROS, "0.01 * torch.randn(base.out_features, r, **same_place)",
                "test_dropout_never_touches_the_base_path", "is B initialised to zeros"),
    # Red-team round 1 (issue 13): an error sentence over every value it covers, and a subclass of nn.Linear.
    WrongAnswer("NaN dropout accepted", KATA, "if not 0.0 <= dropout < 1.0:", "if dropout < 0.0 or dropout >= 1.0:",
                "test_rejects_invalid_arguments", "expected a ValueError"),
    WrongAnswer("nn.Linear subclass refused", KATA, "if not isinstance(base, nn.Linear):", "if type(base) is not nn.Linear:",
                "test_accepts_a_subclass_of_nn_linear", "a subclass of nn.Linear is an nn.Linear"),
    # Red-team round 1: dropout probed in every regime (grad on and off, the base's own mode), and x left as it is.
    WrongAnswer("dropout only with grad off", KATA, DOWN,
                DOWN.replace("self.dropout(x)", "(x if torch.is_grad_enabled() else self.dropout(x))"),
                "test_dropout_zeroes_adapter_inputs_in_train_mode", "whatever the grad mode"),
    WrongAnswer("dropout chosen by the base's mode at construction", KATA, DROPOUT,
                "self.dropout = nn.Dropout(dropout) if base.training else nn.Identity()",
                "test_dropout_zeroes_adapter_inputs_in_train_mode", "changed nothing over 5 train-mode calls"),
    WrongAnswer("dropout following the base's mode", KATA, DOWN,
                DOWN.replace("self.dropout(x)", f"F.dropout(x, {P}, self.base.training)"),
                "test_dropout_zeroes_a_fraction_p_of_the_adapter_inputs", "base in eval mode"),
    WrongAnswer("in-place dropout with grad off", KATA, DOWN,
                DOWN.replace("self.dropout(x)", f"F.dropout(x, {P}, self.training, inplace=not torch.is_grad_enabled())"),
                "test_dropout_never_touches_the_base_path", "changed its input x in place"),
    # Red-team round 2: a cache keyed on the factors only, a base subclass's own parameter, in-place dropout of an
    # activation, float32 factors for float16, Kaiming's fan-in of a transposed A, duck-typed bases, dropout off the
    # graph, an exact dropped fraction, a tensor read on the default device.
    WrongAnswer("eval-mode weight cached by the factors' versions", KATA, RESULT,
                "if not self.training and not torch.is_grad_enabled():\n"
                "            key = (self.lora_A._version, self.lora_B._version)\n"
                "            if getattr(self, 'cache', (None,))[0] != key:\n"
                "                self.cache = (key, self.base.weight + self.scaling * self.lora_B @ self.lora_A)\n"
                "            return F.linear(x, self.cache[1], self.base.bias)\n        " + RESULT,
                "test_computes_with_the_base_it_was_given", "cached from an earlier call"),
    WrongAnswer("only the base's weight and bias frozen", KATA, FREEZE,
                "self.base = base; base.weight.requires_grad_(False)\n"
                "        if base.bias is not None:\n            base.bias.requires_grad_(False)",
                "test_freezes_every_base_parameter", "['gain']"),
    WrongAnswer("in-place dropout of an intermediate activation", KATA, DOWN,
                DOWN.replace("self.dropout(x)", f"F.dropout(x, {P}, self.training, inplace=x.grad_fn is not None)"),
                "test_dropout_zeroes_adapter_inputs_in_train_mode", "changed its input x in place"),
    WrongAnswer("float32 factors for a float16 base", KATA, PLACE,
                '{"device": base.weight.device, "dtype": torch.float32 if base.weight.dtype == torch.float16 '
                'else base.weight.dtype}',
                "test_lives_on_the_base_device_and_dtype", "torch.float16"),
    WrongAnswer("Kaiming-uniform on A stored (in, r)", KATA, A_INIT,
                "nn.init.kaiming_uniform_(self.lora_A.T, a=math.sqrt(5))",
                "test_a_uniform_A_has_nn_linears_bound", "fan-in was taken from A stored (in, r)"),
    WrongAnswer("any module with a 2-D weight accepted as base", KATA, "if not isinstance(base, nn.Linear):",
                'if getattr(getattr(base, "weight", None), "ndim", 0) != 2:',
                "test_rejects_a_base_that_is_not_linear", "LoRALinear(Embedding(...)) raised AttributeError"),
    WrongAnswer("dropout applied to x.data", KATA, DOWN, DOWN.replace("self.dropout(x)", "self.dropout(x.data)"),
                "test_dropout_zeroes_adapter_inputs_in_train_mode", "is the adapter fed x.data"),
    WrongAnswer("an exact fraction p dropped", KATA, DOWN,
                DOWN.replace("self.dropout(x)", "(x * torch.randperm(x.numel()).view(x.shape).ge(round("
                             f"{P} * x.numel())) / (1 - {P}) if self.training else x)"),
                "test_dropout_draws_a_fresh_mask_for_every_input_and_call", "the count varies from call to call"),
    WrongAnswer("A seeded from a draw on the default device", KATA, A_INIT,
                A_INIT + "; int(torch.randint(2**31, ()))",
                "test_factors_follow_the_base_device_not_the_default_one", "Tensor.item() cannot be called on meta"),
    # Red-team round 3: a subclass's own forward skipped, a merged weight a rounding off base(x) with grad on, a dropout
    # mask promoted to float32 or put on the default device, .view on the dropout path, a cache keyed on versions that
    # edits through .data miss, a duck-typed base.
    WrongAnswer("F.linear with the base's weights instead of base(x)", KATA, RESULT,
                "return F.linear(x, self.base.weight, self.base.bias) + F.linear(down, self.lora_B)",
                "test_accepts_a_subclass_of_nn_linear", "skips the subclass's own forward: call base(x)"),
    WrongAnswer("F.linear with the base's weights, seen at init", KATA, RESULT,
                "return F.linear(x, self.base.weight, self.base.bias) + F.linear(down, self.lora_B)",
                "test_output_equals_the_base_at_init", "skipping the subclass's own forward"),
    WrongAnswer("one merged-weight F.linear whenever no dropout is active", KATA, RESULT,
                "if type(self.base).forward is nn.Linear.forward and not (self.training and self.dropout.p > 0):\n"
                "            merged = self.base.weight + self.scaling * self.lora_B @ self.lora_A\n"
                "            return F.linear(x, merged, self.base.bias)\n        " + RESULT,
                "test_output_equals_the_base_at_init", "with grad on, a Linear base"),
    WrongAnswer("hand-written dropout mask promoted to float32", KATA, DOWN,
                DOWN.replace("self.dropout(x)", f"(x * ((torch.rand_like(x) >= {P}) / (1 - {P})) if self.training and "
                                                f"{P} > 0 else x)"),
                "test_matches_plain_lora_in_every_regime", "is not in x's dtype"),
    WrongAnswer("view on the dropout path", KATA, DOWN,
                DOWN.replace("self.dropout(x)", f"(self.dropout(x.view(-1, x.shape[-1])).view(x.shape) if self.training "
                                                f"and {P} > 0 else x)"),
                "test_matches_plain_lora_in_every_regime", "use reshape, not view"),
    WrongAnswer("dropout mask made on the default device", KATA, DOWN,
                DOWN.replace("self.dropout(x)", f"(x * (torch.rand(x.shape, dtype=x.dtype) >= {P}) / (1 - {P}) if "
                                                "self.training else x)"),
                "test_factors_follow_the_base_device_not_the_default_one", "a tensor made without a device met"),
    WrongAnswer("eval-mode weight cached by every parameter's version", KATA, RESULT,
                "if not self.training and not torch.is_grad_enabled():\n"
                "            key = tuple((id(t), t._version) for t in self.parameters())\n"
                "            if getattr(self, 'cache', (None,))[0] != key:\n"
                "                self.cache = (key, self.base.weight + self.scaling * self.lora_B @ self.lora_A)\n"
                "            return F.linear(x, self.cache[1], self.base.bias)\n        " + RESULT,
                "test_computes_with_the_base_it_was_given", "through .data"),
    WrongAnswer("any module with in_features and out_features accepted as base", KATA,
                "if not isinstance(base, nn.Linear):",
                'if not (hasattr(base, "in_features") and hasattr(base, "out_features")):',
                "test_rejects_a_base_that_is_not_linear", "LoRALinear(DenseLike(...)) raised nothing"),
    # Red-team round 4: a layer converted after construction (model.half()), inference mode as a grad regime, factor
    # Parameters replaced (load_state_dict(assign=True)), the base's hooks, alpha's default, a 0-dim default-device zero.
    WrongAnswer("output cast to the dtype cached at construction", KATA, "self.scaling = alpha / r",
                "self.scaling = alpha / r; self.dtype = base.weight.dtype",
                "test_lives_on_the_base_device_and_dtype", "after layer.to(",
                more_edits=((RESULT, "return (self.base(x) + F.linear(down, self.lora_B)).to(self.dtype)"),)),
    WrongAnswer("update cached under inference_mode in eval mode", KATA, RESULT,
                "if torch.is_inference_mode_enabled() and not self.training:\n"
                "            if getattr(self, 'delta', None) is None:\n"
                "                self.delta = self.scaling * self.lora_B @ self.lora_A\n"
                "            return self.base(x) + F.linear(x, self.delta)\n        self.delta = None\n        " + RESULT,
                "test_matches_plain_lora_in_every_regime", "inference mode"),
    WrongAnswer("dropout off under inference_mode", KATA, DOWN,
                DOWN.replace("self.dropout(x)", f"F.dropout(x, {P}, self.training and not torch.is_inference_mode_enabled())"),
                "test_dropout_zeroes_adapter_inputs_in_train_mode", "inference mode, base in train mode"),
    WrongAnswer("factors held in a tuple made at init", KATA, A_INIT, A_INIT + "; self.pair = (self.lora_A, self.lora_B)",
                "test_matches_plain_lora_in_every_regime", "the Parameters it was built with",
                more_edits=((DOWN, "A, B = self.pair\n        " + DOWN.replace("self.lora_A", "A")),
                            (RESULT, RESULT.replace("self.lora_B", "B")))),
    WrongAnswer("base.forward(x) instead of base(x)", KATA, RESULT, RESULT.replace("self.base(x)", "self.base.forward(x)"),
                "test_output_equals_the_base_at_init", "skipping the base's forward hooks"),
    WrongAnswer("alpha defaulting to 2r", KATA, "alpha: float = 16.0", "alpha: float | None = None",
                "test_defaults_are_r_8_alpha_16_and_no_dropout", "whatever r",
                more_edits=(("self.alpha = alpha", "self.alpha = alpha = 2.0 * r if alpha is None else alpha"),)),
    WrongAnswer("dropout by torch.where with a 0-dim zero on the default device", KATA, DOWN,
                DOWN.replace("self.dropout(x)", f"(torch.where(torch.rand_like(x) >= {P}, x / (1 - {P}), "
                                                "torch.zeros((), dtype=x.dtype)) if self.training else x)"),
                "test_factors_follow_the_base_device_not_the_default_one", "lands on torch's default device"),
    # The stub's signature: a caller passes its parameters by name or by position (one check for them all).
    WrongAnswer("peft's names lora_alpha and lora_dropout", KATA, 'alpha: float = 16.0, dropout: float = 0.0) -> None:\n        super().__init__()',
                'lora_alpha: float = 16.0, lora_dropout: float = 0.0) -> None:\n        super().__init__()\n        alpha, dropout = lora_alpha, lora_dropout',
                "test_takes_the_stubs_parameters", 'has no parameter `alpha` (renamed `lora_alpha`?)'),
    WrongAnswer('r and alpha without defaults', KATA, 'def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0,',
                'def __init__(self, base: nn.Linear, r: int, alpha: float,',
                "test_takes_the_stubs_parameters", 'gives `r` no default'),
    # Red-team round 7 (team f): the trap bases in every dtype, a layer converted after construction.
    WrongAnswer("half precision through one merged-weight F.linear", KATA, RESULT,
                "w = self.base.weight\n"
                "        if w.dtype in (torch.float16, torch.bfloat16) and not (self.training and self.dropout.p > 0):\n"
                "            merged = (w.float() + self.scaling * (self.lora_B.float() @ self.lora_A.float())).to(w.dtype)\n"
                "            return F.linear(x, merged, self.base.bias)\n        " + RESULT,
                "test_output_equals_the_base_at_init", "a GatedLinear base in bfloat16"),
    WrongAnswer("scaling a buffer in the base's dtype, rounded before .to(float64)", KATA, DOWN,
                DOWN.replace("self.scaling", "self.scale"),
                "test_matches_plain_lora_in_every_regime", "built in torch.float32 and converted",
                more_edits=(("self.scaling = alpha / r", "self.scaling = alpha / r\n        self.register_buffer("
                             "'scale', torch.tensor(alpha / r, device=base.weight.device, dtype=base.weight.dtype), "
                             "persistent=False)"),)),
    # Round 8 (w-f, found on gpt2_conv1d): the update checked on the trap bases, not only at init where B = 0.
    WrongAnswer("the update added by a forward hook on the base", KATA,
                "        down = F.linear(self.dropout(x), self.lora_A) * self.scaling\n"
                "        return self.base(x) + F.linear(down, self.lora_B)\n",
                "        def add_update(module, args, result):\n"
                "            down = F.linear(self.dropout(args[0]), self.lora_A) * self.scaling\n"
                "            return result + F.linear(down, self.lora_B)\n\n"
                "        handle = self.base.register_forward_hook(add_update)\n"
                "        try:\n            return self.base(x)\n        finally:\n            handle.remove()\n",
                "test_matches_plain_lora_in_every_regime", "of the layer's own input x"),
    WrongAnswer("the base run with W + dW swapped in", KATA,
                "        down = F.linear(self.dropout(x), self.lora_A) * self.scaling\n"
                "        return self.base(x) + F.linear(down, self.lora_B)\n",
                "        if self.training and self.dropout.p > 0:\n"
                "            down = F.linear(self.dropout(x), self.lora_A) * self.scaling\n"
                "            return self.base(x) + F.linear(down, self.lora_B)\n"
                "        delta = (self.lora_B @ self.lora_A) * self.scaling\n"
                "        return torch.func.functional_call(self.base, {\"weight\": self.base.weight + delta}, (x,))\n",
                "test_matches_plain_lora_in_every_regime", "put into its weight"),
    WrongAnswer("rank checked as r <= 0", KATA, "if isinstance(r, bool) or not isinstance(r, int) or r < 1:",
                "if r <= 0:", "test_rejects_invalid_arguments", "expected a ValueError"),
    WrongAnswer("output reshaped by the batch dims and -1", KATA, RESULT,
                "return self.base(x) + F.linear(down.reshape(-1, down.shape[-1]), self.lora_B)"
                ".reshape(*x.shape[:-1], -1)",
                "test_matches_plain_lora_in_every_regime", "an empty batch"),
    WrongAnswer("alpha / r kept as a tensor made at the first call", KATA, DOWN,
                "down = F.linear(self.dropout(x), self.lora_A) * self._scale_like(x)",
                "test_matches_plain_lora_in_every_regime", "an earlier call made under torch.inference_mode() is kept",
                more_edits=((RESULT, RESULT + "\n\n    def _scale_like(self, x: torch.Tensor) -> torch.Tensor:\n"
                             "        key = (x.dtype, x.device, self.scaling)  # made once, not copied to the device each call\n"
                             "        cache = self.__dict__.setdefault(\"_scales\", {})\n"
                             "        if key not in cache:\n"
                             "            cache[key] = torch.tensor(self.scaling, dtype=x.dtype, device=x.device)\n"
                             "        return cache[key]"),)),
    WrongAnswer("a base told by the word Linear in its class name", KATA, "if not isinstance(base, nn.Linear):",
                'if "Linear" not in type(base).__name__:  # bitsandbytes\' Linear4bit, LazyLinear, ... without imports',
                "test_rejects_a_base_that_is_not_linear", "ValueError"),
    WrongAnswer("only the base's own parameters frozen, not its children's", KATA, FREEZE,
                "self.base = base\n        for parameter in base.parameters(recurse=False):\n"
                "            parameter.requires_grad_(False)",
                "test_freezes_every_base_parameter", "still require grad"),
    WrongAnswer("the eval-mode update cached under a key of sampled entries", KATA, DOWN,
                "if not self.training and not torch.is_grad_enabled():  # serving: the update cached\n"
                "            return self.base(x) + F.linear(x, self._cached_delta())\n        " + DOWN,
                "test_matches_plain_lora_in_every_regime", "one entry of each factor",
                more_edits=((RESULT, RESULT + "\n\n    def _cached_delta(self) -> torch.Tensor:\n"
                             "        key = tuple((t.data_ptr(), t._version, t.detach().reshape(-1)[:: max(1, t.numel() // 8)].tolist(),\n"
                             "                     self.scaling) for t in (self.lora_A, self.lora_B))\n"
                             "        cached = self.__dict__.get(\"_delta\")\n"
                             "        if cached is None or cached[0] != key:\n"
                             "            with torch.no_grad():\n"
                             "                cached = self.__dict__[\"_delta\"] = (key, (self.lora_B @ self.lora_A) * self.scaling)\n"
                             "        return cached[1]"),)),
    WrongAnswer("served update cached under a checksum of the factors", KATA, RESULT,
                "if not self.training and not torch.is_grad_enabled():  # serving: B @ A only when the factors changed\n"
                "            return self.base(x) + F.linear(x, self._served_update())\n        " + RESULT,
                "test_matches_plain_lora_in_every_regime", "swapped through .data",
                more_edits=(("\n\ndef _check_arguments",
                             "\n    def _served_update(self) -> torch.Tensor:\n"
                             "        key = (self.scaling,) + tuple(\n"
                             "            (t.data_ptr(), t._version, t.dtype, t.device, float(t.detach().double().sum()))\n"
                             "            for t in (self.lora_A, self.lora_B)\n        )\n"
                             "        cached = self.__dict__.get(\"_update\")\n"
                             "        if cached is None or cached[0] != key:\n"
                             "            cached = self.__dict__[\"_update\"] = (key, (self.lora_B @ self.lora_A) * self.scaling)\n"
                             "        return cached[1]\n\n\ndef _check_arguments"),)),
    WrongAnswer("update added in place into the base's output", KATA, RESULT,
                "result = self.base(x)\n"
                "        result += F.linear(down, self.lora_B)  # accumulate into the base's output: no second buffer\n"
                "        return result",
                "test_matches_plain_lora_in_every_regime", "in place"),
    WrongAnswer("one dropout module shared per probability", KATA, DROPOUT,
                "self.dropout = _DROPOUTS.setdefault(dropout, nn.Dropout(dropout))  # no weights: one per p, shared",
                "test_dropout_follows_its_own_mode", "own mode",
                more_edits=(("\n\ndef _check_arguments",
                             "\n\n_DROPOUTS: dict[float, nn.Dropout] = {}\n\n\ndef _check_arguments"),)),
    # Red-team round 13 (team A): an adapter as a base, dropout below float64, the shape of A's distribution.
    WrongAnswer("a LoRALinear accepted as base, adapters stacked", KATA, "_check_arguments(base, r, dropout)\n",
                "linear = base.base if isinstance(base, LoRALinear) else base  # LoRA on top of LoRA: stack adapters\n"
                "        _check_arguments(linear, r, dropout)\n",
                "test_rejects_an_adapter_as_its_base", "an adapter, which holds an nn.Linear but is none",
                more_edits=((PLACE, PLACE.replace("base.weight", "linear.weight")),
                            ("torch.empty(r, base.in_features", "torch.empty(r, linear.in_features"),
                            ("torch.zeros(base.out_features, r", "torch.zeros(linear.out_features, r"))),
    WrongAnswer("dropout keeps with probability p below float64", KATA, DOWN,
                DOWN.replace("self.dropout(x)", f"(x * torch.empty_like(x).bernoulli_({P}) / (1 - {P}) if self.training "
                             f"and {P} > 0 and x.dtype != torch.float64 else self.dropout(x))"),
                "test_dropout_acts_as_nn_dropout_in_every_dtype", "not of keeping it"),
    WrongAnswer("A random signs at nn.Linear's bound", KATA, A_INIT,
                "self.lora_A.data.uniform_(-1.0, 1.0).sign_().div_(math.sqrt(base.in_features))  # nn.Linear's spread",
                "test_A_is_drawn_uniform_or_gaussian", "distinct values"),
    WrongAnswer("a plain base's weight cached by version and a checksum of its values", KATA,
                "        return self.base(x) + F.linear(down, self.lora_B)\n",
                "        base = self.base\n"
                "        if type(base) is nn.Linear and not base._forward_hooks and not base._forward_pre_hooks:\n"
                "            weight = base.weight\n"
                "            key = (weight.data_ptr(), weight._version, weight.dtype, float(weight.detach().double().sum()))\n"
                "            if self.__dict__.get('cached_key') != key:\n"
                "                with torch.inference_mode(False):\n"
                "                    self.__dict__['cached_weight'] = weight.detach().clone()\n"
                "                self.__dict__['cached_key'] = key\n"
                "            return F.linear(x, self.__dict__['cached_weight'], base.bias) + F.linear(down, self.lora_B)\n"
                "        return self.base(x) + F.linear(down, self.lora_B)\n",
                "test_matches_plain_lora_in_every_regime", "cached from an earlier call"),
    # Frozen factors (requires_grad False) as a regime: the branch must stay in the graph of x.
    WrongAnswer("a frozen adapter's branch detached", KATA, RESULT,
                "frozen = not (self.lora_A.requires_grad or self.lora_B.requires_grad)  # nothing of it trains\n"
                "        return self.base(x) + (F.linear(down, self.lora_B).detach() if frozen else F.linear(down, self.lora_B))",
                "test_matches_plain_lora_in_every_regime", "both frozen by requires_grad_(False)"),
    WrongAnswer("LoRA-FA: x detached for the branch while A is frozen", KATA, DOWN,
                DOWN.replace("self.dropout(x)", "self.dropout(x if self.lora_A.requires_grad else x.detach())"),
                "test_matches_plain_lora_in_every_regime", "A frozen by requires_grad_(False)"),
    WrongAnswer("alpha = alpha or r", KATA, "self.alpha = alpha\n",
                "alpha = alpha or float(r)  # no alpha given: scaling 1, as the paper's alpha = r\n        self.alpha = alpha\n",
                "test_a_zero_or_negative_alpha_is_kept", "alpha = alpha or r?"),
    WrongAnswer("alpha taken as abs(alpha)", KATA, "self.scaling = alpha / r", "self.scaling = abs(alpha) / r",
                "test_a_zero_or_negative_alpha_is_kept", "abs(alpha)?"),
    # Red-team round 15 (team A): a fast path for large batches that bypasses base(x) (a subclass's forward, hooks).
    WrongAnswer("large batches folded into one matmul with W + dW, skipping base(x)", KATA, RESULT,
                "if x.numel() >= 256 * x.shape[-1] and not (self.training and self.dropout.p > 0):  # prefill: one matmul\n"
                "            return F.linear(x, self.base.weight + self.scaling * (self.lora_B @ self.lora_A), self.base.bias)\n"
                "        " + RESULT,
                "test_output_equals_the_base_at_init", "call base(x)"),
    # Red-team round 16 (team A): factors made in torch's default dtype, cast only off a float32 base.
    WrongAnswer("factors in the default dtype for a float32 base", KATA, PLACE,
                '{"device": base.weight.device, "dtype": None if base.weight.dtype == torch.float32 else base.weight.dtype}',
                "test_factors_follow_the_base_dtype_not_the_default_one", "set_default_dtype"),
    WrongAnswer("dropout masks from a generator seeded at construction", KATA, "self.dropout = nn.Dropout(dropout)",
                "self.dropout = nn.Dropout(dropout)\n"
                "        self.generator = torch.Generator(base.weight.device).manual_seed(0)  # reproducible dropout",
                "test_dropout_masks_come_from_torchs_rng", "torch's global RNG",
                more_edits=(("down = F.linear(self.dropout(x), self.lora_A) * self.scaling",
                             "keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= self.dropout.p\n"
                             "        dropped = x * keep.to(x.dtype) / (1 - self.dropout.p) if self.training else x\n"
                             "        down = F.linear(dropped, self.lora_A) * self.scaling"),)),
    # Round 18, team A: a fold of dW into W from 32768 rows (8 x 4096 tokens) on, skipping base(x) (its hooks, a
    # subclass's forward); the checks stopped at 16384 rows.
    WrongAnswer("dW folded into W from 32768 rows", KATA, DOC, DOC + FOLD_FROM_32768_ROWS,
                "test_output_equals_the_base_at_init_for_a_million_tokens", "skipping the base's forward hooks"),
    # Round 18, team A: alpha kept in float32 (a buffer saved with the state_dict), 0.3 read back as 0.30000001192...
    WrongAnswer("alpha rounded to float32", KATA, "self.alpha = alpha\n        self.scaling = alpha / r",
                "self.alpha = float(__import__(\"numpy\").float32(alpha))\n        self.scaling = self.alpha / r",
                "test_an_alpha_float32_cannot_hold_is_kept_exactly", "alpha rounded to float32"),
    # Round 18, team A: dW cached with grad off, keyed on each factor's id, version, sum and position-weighted sum;
    # an edit through .data that keeps those sums leaves it stale.
    WrongAnswer("dW cached keyed on the factors' sums", KATA, DOC, DOC + CACHED_BY_CHECKSUMS,
                "test_follows_a_factor_edit_that_keeps_its_checksums", "keyed on a checksum"),
    # Round 19, team A: past 4096 rows the adapter branch computed in blocks, the last partial block dropped (the
    # tail rows get base(x) alone); the many-row checks ran at init only (B = 0), trained factors up to 2100 rows.
    WrongAnswer("adapter branch in row blocks, last partial block dropped", KATA, RESULT,
                ROWS_IN_BLOCKS_TAIL_DROPPED + RESULT,
                "test_trained_factors_compute_plain_lora_for_a_million_tokens", "last partial block"),
    # Round 19, team A: past 16384 rows one dropout mask block drawn and tiled down the batch; the per-row mask check
    # ran at 8193 rows, in multi_adapter only.
    WrongAnswer("dropout mask block of 16384 rows tiled", KATA, DOWN,
                MASK_BLOCK_TILED + DOWN.replace("self.dropout(x)", "dropped"),
                "test_dropout_draws_a_fresh_mask_for_every_row_of_a_large_batch", "tiled down it"),
    # Round 19, team A: dW cached on the factors' versions for layers of 2048 x 2048 and up with grad off; an edit
    # through .data is missed; the .data-edit checks used narrow layers only.
    WrongAnswer("dW cached on the factors' versions for wide layers", KATA, DOC, DOC + WIDE_DW_CACHED_BY_VERSIONS,
                "test_follows_a_factor_edit_that_keeps_its_checksums_on_a_wide_layer", "nothing is cached"),
]  # fmt: skip
