"""Wrong answers to the `gpt2_conv1d` kata."""

from tests.wrong_answers import WrongAnswer
from tests.wrong_answers.lora_linear import (  # LoRALinear's mistakes, written the same in LoRAConv1D
    DOWN,
    MASK_BLOCK_TILED,
    ROWS_IN_BLOCKS_TAIL_DROPPED,
    WIDE_DW_CACHED_BY_VERSIONS,
)

KATA = "gpt2_conv1d"
MATCH = 'any(name == t or name.endswith("." + t) for t in targets)'
WRAP = "wrapper(module, r, alpha, dropout)"
UPDATE = "(weight.to(accumulate) + update.T).to(weight.dtype)"
FORWARD = "return self.base(x) + F.linear(down, self.lora_B)"
FORWARD_BODY = "        down = F.linear(self.dropout(x), self.lora_A) * self.scaling\n        " + FORWARD + "\n"
MERGE_LINEARS = "    _untie_adapted_weights(model)\n    return merge_weights(model)"
FOLD_IN_PLACE = """    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            with torch.no_grad():
                module.base.weight += (module.lora_B @ module.lora_A) * module.scaling
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child_name, module.base)
    return model"""
HALF_LINEAR_MERGE = """    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            base = module.base
            with torch.no_grad():
                weight = base.weight + (module.lora_B @ module.lora_A) * module.scaling
            merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
            merged.weight, merged.bias = nn.Parameter(weight, requires_grad=False), base.bias
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child_name, merged)
    return model"""
SKIP = "        if isinstance(module, adapters) or id(module) in inside:\n"
TARGETS = "targets = (target_modules,) if isinstance(target_modules, str) else tuple(target_modules)"

DOC = '        """Map ``x`` (..., in) to (..., out) in the base\'s dtype."""\n'
RECORDED = "self.r, self.alpha, self.scaling = r, alpha, alpha / r"

WRONG_ANSWERS = [
    # Round 19, team A: past 4096 rows the adapter branch computed in blocks, the last partial block dropped (the
    # tail rows get base(x) alone); the many-row checks ran at init only (B = 0), trained factors up to 2100 rows.
    WrongAnswer("adapter branch in row blocks, last partial block dropped in LoRAConv1D", KATA, FORWARD,
                ROWS_IN_BLOCKS_TAIL_DROPPED + FORWARD,
                "test_trained_factors_compute_plain_lora_for_a_million_tokens", "last partial block"),
    # Round 19, team A: past 16384 rows one dropout mask block drawn and tiled down the batch; the per-row mask check
    # ran at 8193 rows, in multi_adapter only.
    WrongAnswer("dropout mask block of 16384 rows tiled in LoRAConv1D", KATA, DOWN,
                MASK_BLOCK_TILED + DOWN.replace("self.dropout(x)", "dropped"),
                "test_dropout_draws_a_fresh_mask_for_every_row_of_a_large_batch", "tiled down it"),
    # Round 19, team A: dW cached on the factors' versions for layers of 2048 x 2048 and up with grad off; an edit
    # through .data is missed; the .data-edit checks used narrow layers only.
    WrongAnswer("dW cached on the factors' versions for wide layers in LoRAConv1D", KATA, DOC, DOC + WIDE_DW_CACHED_BY_VERSIONS,
                "test_follows_a_factor_edit_that_keeps_its_checksums_on_a_wide_layer", "nothing is cached"),
    # Round 18, team A: LoRAConv1D folding dW.T into the Conv1D's weight from 32768 rows on, skipping base(x).
    WrongAnswer("dW.T folded into the Conv1D weight from 32768 rows", KATA, DOC, DOC + (
        "        if x[..., 0].numel() >= 32768 and not (self.training and self.dropout.p > 0):\n"
        "            weight = self.base.weight + self.scaling * (self.lora_B @ self.lora_A).T\n"
        "            return torch.addmm(self.base.bias, x.reshape(-1, x.shape[-1]), weight).view(*x.shape[:-1], -1)\n"
    ), "test_output_equals_the_base_at_init_for_a_million_tokens", "skipping the base's forward hooks"),
    # Round 18, team A: alpha kept in a float32 buffer (saved with the state_dict), 0.3 read back as 0.30000001192...
    WrongAnswer("alpha rounded to float32 in LoRAConv1D", KATA, RECORDED,
                "self.r, self.alpha = r, float(__import__(\"numpy\").float32(alpha)); self.scaling = self.alpha / r",
                "test_an_alpha_float32_cannot_hold_is_kept_exactly", "alpha rounded to float32"),
    # Round 18, team A's dW cache (lora_linear) in LoRAConv1D: keyed on each factor's id, version, sum and
    # position-weighted sum.
    WrongAnswer("LoRAConv1D caching dW keyed on the factors' sums", KATA, DOC, DOC + (
        "        if not torch.is_grad_enabled() and not (self.training and self.dropout.p > 0):\n"
        "            key = []\n"
        "            for t in (self.lora_A, self.lora_B):\n"
        "                d = t.detach().double()\n"
        "                w = torch.arange(1, t.numel() + 1, device=t.device, dtype=torch.float64).view(t.shape)\n"
        "                key.append((id(t), t._version, d.sum().item(), (d * w).sum().item()))\n"
        "            cache = self.__dict__.get('_dW_cache')\n"
        "            if cache is None or cache[0] != key:\n"
        "                cache = self.__dict__['_dW_cache'] = (key, (self.lora_B @ self.lora_A) * self.scaling)\n"
        "            return self.base(x) + F.linear(x, cache[1])\n"
    ), "test_follows_a_factor_edit_that_keeps_its_checksums", "keyed on a checksum"),
    WrongAnswer("Conv1D weight not transposed when merged", KATA, UPDATE, UPDATE.replace("update.T", "update"),
                "test_merged_conv1d_holds_W_plus_the_update_transposed", "the update is not transposed"),
    WrongAnswer("in and out read the wrong way round", KATA, "in_features, out_features = base.weight.shape",
                "out_features, in_features = base.weight.shape",
                "test_trains_two_factors_shaped_by_the_conv1d_in_and_out", "wrong way round"),
    WrongAnswer("isinstance(nn.Linear) skips every Conv1D", KATA,
                "adaptable = (Conv1D, nn.Linear, LoRAConv1D, LoRALinear)", "adaptable = (nn.Linear, LoRALinear)",
                "test_adapts_exactly_the_conv1d_and_linear_layers_named", "not nn.Linear: adapt both kinds"),
    WrongAnswer("lm_head always wrapped", KATA, MATCH, MATCH + ' or name == "lm_head"',
                "test_lm_head_stays_tied_to_wte", "do not name lm_head"),
    WrongAnswer("lm_head untied: a copy wrapped", KATA, WRAP,
                'wrapper(module if wrapper is LoRAConv1D else __import__("copy").deepcopy(module), r, alpha, dropout)',
                "test_lm_head_stays_tied_to_wte", "the tie is broken"),
    WrongAnswer("tied lm_head merged in place, changing wte", KATA, MERGE_LINEARS, FOLD_IN_PLACE,
                "test_merging_a_tied_lm_head_leaves_wte_alone", "changes the embeddings too"),
    WrongAnswer("scaling kept as a float32 0-dim buffer", KATA, "down = F.linear(self.dropout(x), self.lora_A) * self.scaling",
                "down = F.linear(self.dropout(x), self.lora_A) * self.scale",
                "test_update_is_scaling_times_B_at_A", "off by float32 rounding",
                more_edits=(("self.r, self.alpha, self.scaling = r, alpha, alpha / r", "self.r, self.alpha, self.scaling = r, alpha, alpha / r"
                             "\n        self.register_buffer('scale', torch.tensor(alpha / r, device=base.weight.device), persistent=False)"),)),
    WrongAnswer("scaled by alpha", KATA, "down = F.linear(self.dropout(x), self.lora_A) * self.scaling",
                "down = F.linear(self.dropout(x), self.lora_A) * self.alpha",
                "test_update_is_scaling_times_B_at_A", "scaled by alpha instead of alpha / r"),
    WrongAnswer("dropout on the base path too", KATA, FORWARD,
                "x = self.dropout(x)\n        return self.base(x) + F.linear(F.linear(x, self.lora_A) * self.scaling, self.lora_B)",
                "test_dropout_never_touches_the_base_path", "adapter branch's input only"),
    WrongAnswer("dropout always on, even in eval mode", KATA,
                "down = F.linear(self.dropout(x), self.lora_A)",
                "down = F.linear(F.dropout(x, self.dropout.p, training=True), self.lora_A)",
                "test_dropout_zeroes_adapter_inputs_in_train_mode_only", "eval mode"),
    WrongAnswer("A zero and B random", KATA,
                "self.lora_A = nn.Parameter(torch.empty(r, in_features, **same_place))\n        self.lora_B = nn.Parameter(torch.zeros(out_features, r, **same_place))\n        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
                "self.lora_A = nn.Parameter(torch.zeros(r, in_features, **same_place))\n        self.lora_B = nn.Parameter(torch.empty(out_features, r, **same_place))\n        nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))",
                "test_B_starts_at_zero_and_A_random", "swap them"),
    WrongAnswer("the Conv1D left trainable", KATA, "self.base = base.requires_grad_(False)", "self.base = base",
                "test_holds_the_very_conv1d_and_freezes_it", "still require grad"),
    WrongAnswer("substring matching", KATA, MATCH, "any(t in name for t in targets)",
                "test_adapts_exactly_the_conv1d_and_linear_layers_named", "substring or bare endswith"),
    WrongAnswer("endswith without the dot", KATA, MATCH, "any(name.endswith(t) for t in targets)",
                "test_adapts_exactly_the_conv1d_and_linear_layers_named", "substring or bare endswith"),
    WrongAnswer("no error when nothing matches", KATA, "    if not matched:\n        raise ValueError", "    if False:\n        raise ValueError",
                "test_raises_naming_the_targets_when_nothing_matches", "raised nothing"),
    WrongAnswer("the rest of the model left trainable", KATA, "    for parameter in model.parameters():\n        parameter.requires_grad_(id(parameter) in factors)\n", "",
                "test_trains_as_many_numbers_as_peft", "freeze everything but the factors"),
    WrongAnswer("B random at init", KATA, "self.lora_B = nn.Parameter(torch.zeros(out_features, r, **same_place))",
                "self.lora_B = nn.Parameter(0.01 * torch.randn(out_features, r, **same_place))",
                "test_output_equals_the_base_at_init", "is B initialised to zeros"),
    WrongAnswer("merged half-precision weight left in float32", KATA, "merged.weight = nn.Parameter(" + UPDATE,
                "merged.weight = nn.Parameter((weight.to(accumulate) + update.T)",
                "test_half_precision_merges_in_float32_and_rounds_once", "merged weight is torch.float32"),
    WrongAnswer("merge with grad history", KATA, "@torch.no_grad()\ndef merged_conv1d", "def merged_conv1d",
                "test_merged_weights_are_parameters_without_grad_history", "grad history",
                more_edits=(("merged.weight = nn.Parameter(" + UPDATE + ", requires_grad=False)",
                             "del merged.weight\n    merged.weight = " + UPDATE),)),
    WrongAnswer("half precision added in half precision", KATA,
                "accumulate = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype",
                "accumulate = weight.dtype", "test_half_precision_merges_in_float32_and_rounds_once", "units in the last place"),
    # Red-team round 18 (team A): the checks apply_lora and lora_linear make, with no gpt2_conv1d twin.
    WrongAnswer("one nn.Dropout shared by a call's adapters", KATA,
                "        setattr(model.get_submodule(parent_name), child_name, " + WRAP + ")",
                "        adapter = " + WRAP + "\n        if isinstance(adapter, LoRAConv1D):\n"
                "            adapter.dropout = shared  # they all hold the same p\n"
                "        setattr(model.get_submodule(parent_name), child_name, adapter)",
                "test_each_adapter_follows_its_own_mode", "never one dropout module shared",
                more_edits=(("    for name, module in matched:\n",
                             "    shared = nn.Dropout(dropout)\n    for name, module in matched:\n"),)),
    WrongAnswer("factors moved to the model's first parameter's dtype", KATA,
                "    # Only the factors train: a base unfrozen since an earlier call is frozen again",
                "    dtype = next(model.parameters()).dtype  # the model's working dtype: adapters train in it\n"
                "    for m in model.modules():\n        if isinstance(m, LoRAConv1D):\n"
                "            m.lora_A.data, m.lora_B.data = m.lora_A.data.to(dtype), m.lora_B.data.to(dtype)\n"
                "    # Only the factors train: a base unfrozen since an earlier call is frozen again",
                "test_adapters_follow_their_layers_dtypes", "leave every layer in its dtype"),
    WrongAnswer("factor layers named lora_A wrapped by a second call", KATA,
                "        self.lora_A = nn.Parameter(torch.empty(r, in_features, **same_place))\n"
                "        self.lora_B = nn.Parameter(torch.zeros(out_features, r, **same_place))\n"
                "        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
                "        self.lora_A = nn.Linear(in_features, r, bias=False, **same_place)\n"
                "        self.lora_B = nn.Linear(r, out_features, bias=False, **same_place)\n"
                "        nn.init.zeros_(self.lora_B.weight)",
                "test_a_second_call_leaves_factor_layers_alone", "no layer inside an adapter is wrapped",
                more_edits=(
                    ("down = F.linear(self.dropout(x), self.lora_A) * self.scaling",
                     "down = self.lora_A(self.dropout(x)) * self.scaling"),
                    (FORWARD, "return self.base(x) + self.lora_B(down)"),
                    ("for p in (m.lora_A, m.lora_B)}", "for p in (m.lora_A.weight, m.lora_B.weight)}"),
                    ("update = (layer.lora_B.to(accumulate) @ layer.lora_A.to(accumulate))",
                     "update = (layer.lora_B.weight.to(accumulate) @ layer.lora_A.weight.to(accumulate))"),
                    ("for m in list(a.modules())[1:]}", "for m in a.base.modules()}"),  # only an adapter's base is inside it
                )),
    WrongAnswer("A random signs times the Kaiming bound", KATA,
                "        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
                "        with torch.no_grad():  # centred, full rank, within nn.Linear's bound\n"
                "            signs = torch.randint(0, 2, self.lora_A.shape, device=self.lora_A.device) * 2 - 1\n"
                "            self.lora_A.copy_(signs / math.sqrt(in_features))",
                "test_B_starts_at_zero_and_A_random", "neither uniform nor Gaussian"),
    # Red-team round 19 (team A): LoRALinear's rank gate and shared A, in LoRAConv1D.
    WrongAnswer("alpha / sqrt(r) from r = 64 on", KATA,
                "down = F.linear(self.dropout(x), self.lora_A) * self.scaling",
                "down = F.linear(self.dropout(x), self.lora_A) * (self.alpha / math.sqrt(self.r) if self.r >= 64 "
                "else self.scaling)",
                "test_the_scaling_holds_at_real_ranks", "alpha / sqrt(r) is rsLoRA at r = 64"),
    WrongAnswer("A drawn from a generator seeded by torch.initial_seed()", KATA,
                "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
                "self.lora_A.data.uniform_(-1 / math.sqrt(in_features), 1 / math.sqrt(in_features), "
                "generator=torch.Generator(base.weight.device).manual_seed(torch.initial_seed()))",
                "test_B_starts_at_zero_and_A_random", "start with the very same A"),
    WrongAnswer("merged into an nn.Linear", KATA,
                '    with torch.device("meta"):  # no throwaway allocation: both parameters are replaced\n        merged = Conv1D(weight.shape[1], weight.shape[0])\n    merged.weight = nn.Parameter(' + UPDATE + ", requires_grad=False)",
                "    merged = nn.Linear(weight.shape[0], weight.shape[1])\n    merged.weight = nn.Parameter(" + UPDATE + ".T.contiguous(), requires_grad=False)",
                "test_merged_weights_are_parameters_without_grad_history", "expected Conv1D"),
    WrongAnswer("LoRALinear layers left unmerged", KATA, MERGE_LINEARS, "    return model",
                "test_merged_weights_are_parameters_without_grad_history", "expected Linear"),
    WrongAnswer("merged bias zeroed", KATA, "    merged.bias = bias\n", "    merged.bias = nn.Parameter(torch.zeros_like(bias))\n",
                "test_merged_conv1d_holds_W_plus_the_update_transposed", "bias differs"),
    WrongAnswer("an nn.Linear accepted as a base", KATA, "        if not isinstance(base, Conv1D):\n            raise ValueError",
                "        if False:\n            raise ValueError",
                "test_rejects_a_base_that_is_not_a_transformers_conv1d", "raised nothing"),
    WrongAnswer("default targets q_proj, v_proj", KATA, 'target_modules: Iterable[str] = ("c_attn",),',
                'target_modules: Iterable[str] = ("c_attn", "q_proj", "v_proj", "c_proj"),',
                "test_defaults_are_c_attn_r_8_alpha_16", "keep the stub's defaults"),
    WrongAnswer("merge_gpt2 returns None", KATA, MERGE_LINEARS, "    _untie_adapted_weights(model)\n    merge_weights(model)",
                "test_merged_logits_equal_peft_merged", "merge_gpt2(model) returned None"),
    WrongAnswer("a single LoRAConv1D not handled", KATA,
                "    if isinstance(model, LoRAConv1D):\n        return merged_conv1d(model)\n", "",
                "test_merging_a_single_layer_returns_the_conv1d", "expected a Conv1D"),
    WrongAnswer("update read off a forward pass in the current mode", KATA,
                "update = (layer.lora_B.to(accumulate) @ layer.lora_A.to(accumulate)) * layer.scaling  # (out, in)",
                "eye = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)\n    update = (layer(eye) - layer.base(eye)).T.to(accumulate)",
                "test_merges_the_same_in_train_mode_with_dropout", "not from a forward pass"),
    # Red-team round 1 (issue 13): an error sentence over every value it covers.
    WrongAnswer("NaN dropout accepted", KATA, "if not 0.0 <= dropout < 1.0:", "if dropout < 0.0 or dropout >= 1.0:",
                "test_rejects_invalid_arguments", "expected a ValueError"),
    WrongAnswer("a fractional r accepted", KATA, "if isinstance(r, bool) or not isinstance(r, int) or r < 1:",
                "if r < 1:", "test_rejects_invalid_arguments", "expected a ValueError"),
    # Red-team round 1, the habits behind them: targets in every form, a second apply, every layer of a half merge.
    WrongAnswer("a str target split into letters", KATA, TARGETS, "targets = tuple(target_modules)",
                "test_takes_one_str_or_any_iterable_of_targets", "not an iterable of one-letter targets"),
    WrongAnswer("an iterator of targets used up by the first module", KATA, TARGETS,
                "targets = (target_modules,) if isinstance(target_modules, str) else target_modules",
                "test_takes_one_str_or_any_iterable_of_targets", "used up by the first module's test"),
    WrongAnswer("adapters made afresh on a second apply", KATA,
                SKIP + "            continue",
                '        if id(module) in inside:\n            continue\n        module = getattr(module, "base", module)',
                "test_never_wraps_an_adapter_again", "trained factors are lost"),
    WrongAnswer("Conv1D update transposed only when the shapes differ", KATA, UPDATE,
                "(weight.to(accumulate) + (update.T if update.shape != weight.shape else update)).to(weight.dtype)",
                "test_merged_conv1d_holds_W_plus_the_update_transposed", "the update is not transposed"),
    WrongAnswer("a tied lm_head merged in half precision", KATA, MERGE_LINEARS, HALF_LINEAR_MERGE,
                "test_half_precision_merges_in_float32_and_rounds_once", "lm_head: merged torch.bfloat16 weights"),
    # Red-team round 2: every dtype the base may have, a centred A.
    WrongAnswer("float16 factors kept in float32", KATA,
                'same_place = {"device": base.weight.device, "dtype": base.weight.dtype}',
                'same_place = {"device": base.weight.device, "dtype": torch.float32 if base.weight.dtype == torch.float16 else base.weight.dtype}',
                "test_lives_on_the_base_device_and_dtype", "factors must be created on the base's device and dtype",
                more_edits=((FORWARD, "return self.base(x) + F.linear(down, self.lora_B).to(x.dtype)"),
                            ("down = F.linear(self.dropout(x), self.lora_A)", "down = F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A)"))),
    WrongAnswer("A drawn with torch.rand", KATA, "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
                "nn.init.uniform_(self.lora_A, 0.0, 1.0 / math.sqrt(in_features))",
                "test_B_starts_at_zero_and_A_random", "torch.rand draws from [0, 1)"),
    WrongAnswer("merged half-precision bias rebuilt in float32", KATA, "    merged.bias = bias\n",
                "    merged.bias = nn.Parameter(bias.float(), requires_grad=False)\n",
                "test_half_precision_merges_in_float32_and_rounds_once", "merged bias is torch.float32"),
    WrongAnswer("a float64 merge summed in float32", KATA,
                "accumulate = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype",
                "accumulate = torch.float32", "test_merged_conv1d_holds_W_plus_the_update_transposed",
                "summed in float64, not float32"),
    WrongAnswer("one dropout mask shared by the batch", KATA, "down = F.linear(self.dropout(x), self.lora_A)",
                "down = F.linear(x * self.dropout(torch.ones_like(x[:1])), self.lora_A)",
                "test_dropout_zeroes_adapter_inputs_in_train_mode_only", "the very mask of item 0"),
    WrongAnswer("an nn.Linear target wrapped without dropout", KATA, WRAP,
                "(wrapper(module, r, alpha, dropout) if wrapper is LoRAConv1D else wrapper(module, r, alpha))",
                "test_passes_r_alpha_and_dropout_on", "pass dropout on to LoRALinear"),
    WrongAnswer("keyword-only r, alpha and dropout", KATA,
                "def __init__(self, base: Conv1D, r: int = 8,", "def __init__(self, base: Conv1D, *, r: int = 8,",
                "test_records_r_alpha_and_scaling", "may be passed by position",
                more_edits=((WRAP, "wrapper(module, r=r, alpha=alpha, dropout=dropout)"),)),
    # Red-team round 3: a whole float rank, the targets' holder named, a class told by its name.
    WrongAnswer("a whole float rank accepted", KATA, "if isinstance(r, bool) or not isinstance(r, int) or r < 1:",
                "if isinstance(r, bool) or int(r) != r or r < 1:",
                "test_rejects_invalid_arguments", "LoRAConv1D(base, r=2.0) raised nothing",
                more_edits=(('got r={r!r}")\n', 'got r={r!r}")\n        r = int(r)\n'),)),
    WrongAnswer("the no-match error names an iterator, not the targets", KATA,
                "matches target_modules={targets}", "matches target_modules={target_modules!r}",
                "test_raises_naming_the_targets_when_nothing_matches", "not the object holding them"),
    WrongAnswer("the base told by its class name", KATA, "if not isinstance(base, Conv1D):",
                'if type(base).__name__ != "Conv1D":',
                "test_rejects_a_base_that_is_not_a_transformers_conv1d", "another_library.Conv1D(...)) raised nothing"),
    # Red-team round 3 (w-g): the contract of LoRALinear ported whole (device, rank, dropout), the stub's signature
    # by name, a target that names nothing beside one that does, adapters under two names, a lone LoRALinear merged.
    WrongAnswer("every target must match something", KATA, "    if not matched:\n",
                '    if [t for t in targets if not any(n == t or n.endswith("." + t) for n, _ in matched)]:\n',
                "test_adapts_exactly_the_conv1d_and_linear_layers_named", "raise only when nothing matches"),
    WrongAnswer("factors made on the default device", KATA,
                'same_place = {"device": base.weight.device, "dtype": base.weight.dtype}', 'same_place = {"dtype": base.weight.dtype}',
                "test_factors_follow_the_base_device_not_the_default_one", "the factors were created on meta"),
    WrongAnswer("A's first row repeated", KATA, "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
                "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))\n        with torch.no_grad():\n"
                "            self.lora_A.copy_(self.lora_A[:1].expand_as(self.lora_A).clone())",
                "test_B_starts_at_zero_and_A_random", "are its rows copies of one another"),
    WrongAnswer("one dropout mask shared along positions", KATA, "down = F.linear(self.dropout(x), self.lora_A)",
                "down = F.linear(x * self.dropout(torch.ones_like(x[..., :1, :])) if x.dim() >= 3 else self.dropout(x), self.lora_A)",
                "test_dropout_zeroes_adapter_inputs_in_train_mode_only", "along dim 1"),
    WrongAnswer("dropout of an exact fraction", KATA, "down = F.linear(self.dropout(x), self.lora_A)",
                "p = self.dropout.p\n        keep = torch.ones(x.numel(), dtype=x.dtype).index_fill_(0, torch.randperm(x.numel())[: round(p * x.numel())], 0.0)\n"
                "        down = F.linear(x * keep.view_as(x) / (1 - p) if self.training else x, self.lora_A)",
                "test_dropout_zeroes_adapter_inputs_in_train_mode_only", "do not drop an exact fraction"),
    WrongAnswer("merge misses an adapter's second name", KATA,
                "    for name, module in list(model.named_modules(remove_duplicate=False)):\n        if isinstance(module, LoRAConv1D):",
                "    for name, module in list(model.named_modules()):\n        if isinstance(module, LoRAConv1D):",
                "test_merges_an_adapter_registered_under_two_names", "remove_duplicate=False"),
    WrongAnswer("a lone LoRALinear returned unmerged", KATA, MERGE_LINEARS,
                "    _untie_adapted_weights(model)\n    merge_weights(model)\n    return model",
                "test_merging_a_single_layer_returns_the_conv1d", "merge_gpt2(a LoRALinear) returned a LoRALinear"),
    WrongAnswer("target_modules renamed", KATA, 'target_modules: Iterable[str] = ("c_attn",),', 'targets: Iterable[str] = ("c_attn",),',
                "test_adapts_exactly_the_conv1d_and_linear_layers_named", "target_modules by name",
                more_edits=((TARGETS, "targets = (targets,) if isinstance(targets, str) else tuple(targets)"),)),
    WrongAnswer("a Conv1D subclass refused", KATA, "if not isinstance(base, Conv1D):", "if type(base) is not Conv1D:",
                "test_accepts_a_subclass_of_transformers_conv1d", "not type(base) is Conv1D"),
    # Round 4 (lead): a walk of named_children() lists an adapter held under two names of one parent once.
    WrongAnswer("children walked with named_children()", KATA, 'list(model.named_modules(remove_duplicate=False))',
                '[(f"{p}.{c}".lstrip("."), m) for p, parent in model.named_modules(remove_duplicate=False) for c, m in parent.named_children()]',
                "test_merges_an_adapter_registered_under_two_names", "remove_duplicate=False"),
    # Round 4 (w-l): the shared dropout probe calls in inference mode too (torch.inference_mode() is no eval mode).
    WrongAnswer("dropout off under inference_mode", KATA, "down = F.linear(self.dropout(x), self.lora_A)",
                "down = F.linear(F.dropout(x, self.dropout.p, self.training and not torch.is_inference_mode_enabled()), self.lora_A)",
                "test_dropout_zeroes_adapter_inputs_in_train_mode_only", "inference mode, base in train mode"),
    # Red-team round 4 (w-g): nn.Linear's bound for a uniform A, layers of a model's own classes, an nn.Linear
    # other than lm_head, the train mode of the rest, a backbone unfrozen between two calls.
    WrongAnswer("Kaiming's fan-in taken from A stored (in, r)", KATA, "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
                "nn.init.kaiming_uniform_(self.lora_A.T, a=math.sqrt(5))",
                "test_B_starts_at_zero_and_A_random", "the fan-in was taken from A stored (in, r)"),
    WrongAnswer("no nn.Linear adapted but lm_head", KATA, "if isinstance(module, adaptable) and any(",
                'if (isinstance(module, (Conv1D, LoRAConv1D, LoRALinear)) or module is getattr(model, "lm_head", None)) and any(',
                "test_adapts_exactly_the_conv1d_and_linear_layers_named", "not lm_head alone"),
    WrongAnswer("only lm_head merged among the nn.Linear layers", KATA, MERGE_LINEARS,
                "    _untie_adapted_weights(model)\n    if isinstance(model, LoRALinear):\n        return merge_weights(model)\n"
                "    head = getattr(model, \"lm_head\", None)\n    if isinstance(head, LoRALinear):\n        new = merge_weights(head)\n"
                "        for parent in list(model.modules()):\n            for child_name, child in list(parent._modules.items()):\n"
                "                if child is head:\n                    setattr(parent, child_name, new)\n    return model",
                "test_merges_a_model_of_its_own_layer_classes", "not lm_head alone"),
    WrongAnswer("layers told by their exact type", KATA, "if isinstance(module, adaptable) and any(",
                "if type(module) in adaptable and any(",
                "test_adapts_exactly_the_conv1d_and_linear_layers_named", "test isinstance, not type(m)"),
    WrongAnswer("merged into the base's own class", KATA, "        merged = Conv1D(weight.shape[1], weight.shape[0])",
                "        merged = type(layer.base)(weight.shape[1], weight.shape[0])",
                "test_merges_a_model_of_its_own_layer_classes", "expected transformers' Conv1D itself"),
    WrongAnswer("merging puts the model in eval mode", KATA,
                "    if isinstance(model, LoRAConv1D):\n        return merged_conv1d(model)\n",
                "    if isinstance(model, LoRAConv1D):\n        return merged_conv1d(model)\n    model.eval()\n",
                "test_merges_the_same_in_train_mode_with_dropout", "no model.eval()"),
    WrongAnswer("frozen on the first call only", KATA, "        parameter.requires_grad_(id(parameter) in factors)",
                "        if first_call:\n            parameter.requires_grad_(id(parameter) in factors)",
                "test_freezes_everything_but_the_adapters", "not only on the first",
                more_edits=((TARGETS, TARGETS + "\n    first_call = not any(isinstance(m, (LoRAConv1D, LoRALinear)) for m in model.modules())"),)),
    # Red-team round 5 (w-c): a cache filled by an eval forward, an adapter's own base left trainable by a second
    # call, the whole model frozen by merging.
    WrongAnswer("dW cached by an eval forward, factors edited later ignored", KATA,
                "        down = F.linear(self.dropout(x), self.lora_A) * self.scaling\n",
                "        if not (self.training or torch.is_grad_enabled()):  # inference: dW once, for every later call\n"
                "            if getattr(self, \"_cached\", None) is None:\n"
                "                self._cached = self.scaling * (self.lora_B @ self.lora_A).T\n"
                "            return self.base(x) + x @ self._cached\n"
                "        down = F.linear(self.dropout(x), self.lora_A) * self.scaling\n",
                "test_matches_plain_lora_in_every_regime", "a value cached from an earlier call"),
    WrongAnswer("every trainable tensor inside an adapter kept trainable", KATA,
                "factors = {id(p) for m in model.modules() if isinstance(m, LoRAConv1D) for p in (m.lora_A, m.lora_B)}",
                "factors = {id(p) for m in model.modules() if isinstance(m, (LoRAConv1D, LoRALinear)) "
                "for p in m.parameters() if p.requires_grad}",
                "test_freezes_everything_but_the_adapters", "the bases inside the adapters too"),
    WrongAnswer("merging freezes the whole model", KATA, MERGE_LINEARS,
                "    _untie_adapted_weights(model)\n    return merge_weights(model).requires_grad_(False)",
                "test_merges_the_same_in_train_mode_with_dropout", "no model.requires_grad_(False)"),
    # Red-team round 7 (w-f): the Conv1D's arithmetic written out instead of base(x) (a subclass's own forward, the
    # base's hooks), a half-precision merge's scaling rounded to the weight's dtype, the output dtype fixed at init.
    WrongAnswer("the Conv1D's arithmetic written out instead of base(x)", KATA, FORWARD,
                "return x @ self.base.weight + self.base.bias + F.linear(down, self.lora_B)",
                "test_output_equals_the_base_at_init", "skipping the subclass's own forward"),
    WrongAnswer("half-precision merge scaling rounded to the weight's dtype", KATA,
                "update = (layer.lora_B.to(accumulate) @ layer.lora_A.to(accumulate)) * layer.scaling",
                "update = (layer.lora_B.to(accumulate) @ layer.lora_A.to(accumulate)) * weight.new_tensor(layer.scaling)",
                "test_half_precision_merges_in_float32_and_rounds_once", "the scaling alpha / r was rounded to bfloat16"),
    WrongAnswer("output cast to the dtype of the base at construction", KATA,
                "self.r, self.alpha, self.scaling = r, alpha, alpha / r",
                "self.r, self.alpha, self.scaling = r, alpha, alpha / r\n        self.out_dtype = base.weight.dtype",
                "test_lives_on_the_base_device_and_dtype", "after layer.to(",
                more_edits=((FORWARD, "return (self.base(x) + F.linear(down, self.lora_B)).to(self.out_dtype)"),)),
    # Red-team round 8 (w-f): the update checked on the trap bases (hooks, a subclass's forward), every parameter of a
    # gated base frozen, a classifier's head frozen, unadapted modules kept, a weight shared with an unadapted layer,
    # an empty batch.
    WrongAnswer("the update added by a forward hook on the base", KATA, FORWARD_BODY,
                "        def add_update(module, args, result):\n"
                "            down = F.linear(self.dropout(args[0]), self.lora_A) * self.scaling\n"
                "            return result + F.linear(down, self.lora_B)\n\n"
                "        handle = self.base.register_forward_hook(add_update)\n"
                "        try:\n            return self.base(x)\n        finally:\n            handle.remove()\n",
                "test_matches_plain_lora_in_every_regime", "of the layer's own input x"),
    WrongAnswer("the base run with W + dW^T swapped in", KATA, FORWARD_BODY,
                "        if self.training and self.dropout.p > 0:\n"
                "            down = F.linear(self.dropout(x), self.lora_A) * self.scaling\n"
                "            return self.base(x) + F.linear(down, self.lora_B)\n"
                "        delta = (self.lora_B @ self.lora_A).T * self.scaling\n"
                "        return torch.func.functional_call(self.base, {\"weight\": self.base.weight + delta}, (x,))\n",
                "test_matches_plain_lora_in_every_regime", "put into its weight"),
    WrongAnswer("only the base's weight and bias frozen", KATA, "self.base = base.requires_grad_(False)",
                "self.base = base\n        for frozen in (base.weight, base.bias):\n            frozen.requires_grad_(False)",
                "test_holds_the_very_conv1d_and_freezes_it", "not weight and bias alone"),
    WrongAnswer("only the transformer body frozen", KATA, "    for parameter in model.parameters():\n        parameter.requires_grad_(",
                "    for parameter in getattr(model, \"transformer\", model).parameters():\n        parameter.requires_grad_(",
                "test_trains_as_many_numbers_as_peft", "score"),
    WrongAnswer("merging rebuilds every unadapted Conv1D", KATA, MERGE_LINEARS,
                "    kept = {id(m) for m in merged.values()}\n"
                "    for name, module in list(model.named_modules()):\n"
                "        if type(module) is Conv1D and id(module) not in kept:\n"
                "            with torch.device(\"meta\"):\n                new = Conv1D(module.nf, module.weight.shape[0])\n"
                "            new.weight = nn.Parameter(module.weight.detach().clone(), requires_grad=False)\n"
                "            new.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)\n"
                "            parent_name, _, child_name = name.rpartition(\".\")\n"
                "            setattr(model.get_submodule(parent_name), child_name, new)\n" + MERGE_LINEARS,
                "test_merging_twice_changes_nothing", "the same object"),
    WrongAnswer("a Conv1D merged in place", KATA,
                "    merged.weight = nn.Parameter((weight.to(accumulate) + update.T).to(weight.dtype), requires_grad=False)",
                "    weight.copy_((weight.to(accumulate) + update.T).to(weight.dtype))\n    merged.weight = weight",
                "test_merging_a_tied_lm_head_leaves_wte_alone", "mlp.c_fc"),
    WrongAnswer("flattened with reshape(-1, in), restored with reshape(*lead, -1)", KATA, FORWARD_BODY,
                "        flat = self.dropout(x).reshape(-1, x.shape[-1])\n"
                "        update = torch.mm(torch.mm(flat, self.lora_A.T), self.lora_B.T) * self.scaling\n"
                "        return self.base(x) + update.reshape(*x.shape[:-1], -1)\n",
                "test_matches_plain_lora_in_every_regime", "of 0 elements"),
    WrongAnswer("merged Conv1D built on torch's default device, then copied into", KATA,
                '    with torch.device("meta"):  # no throwaway allocation: both parameters are replaced\n'
                "        merged = Conv1D(weight.shape[1], weight.shape[0])\n"
                "    merged.weight = nn.Parameter((weight.to(accumulate) + update.T).to(weight.dtype), requires_grad=False)\n"
                "    merged.bias = bias\n",
                "    merged = Conv1D(weight.shape[1], weight.shape[0]).to(dtype=weight.dtype)\n"
                "    merged.weight.copy_((weight.to(accumulate) + update.T).to(weight.dtype))\n"
                "    merged.bias.copy_(bias)\n    merged.requires_grad_(False)\n",
                "test_merged_conv1d_follows_the_base_device_not_the_default_one", "the default device of this check"),
    WrongAnswer("dropout mask drawn by torch.rand(x.shape), without device=", KATA,
                "        down = F.linear(self.dropout(x), self.lora_A) * self.scaling\n",
                "        p = self.dropout.p\n"
                "        if self.training and p > 0:  # inverted dropout by hand: keep each input with probability 1 - p\n"
                "            keep = torch.rand(x.shape) >= p\n            x_in = x * keep.to(x.dtype) / (1 - p)\n"
                "        else:\n            x_in = x\n"
                "        down = F.linear(x_in, self.lora_A) * self.scaling\n",
                "test_factors_follow_the_base_device_not_the_default_one", "create every tensor with device="),
    WrongAnswer("the update folded into the base Conv1D itself (registered unadapted elsewhere too)", KATA,
                '    with torch.device("meta"):  # no throwaway allocation: both parameters are replaced\n'
                "        merged = Conv1D(weight.shape[1], weight.shape[0])\n",
                "    if type(layer.base) is Conv1D:  # fold the update into it, as peft's merge_and_unload does\n"
                "        merged = layer.base\n"
                "    else:  # a model's own subclass: the spec wants transformers' Conv1D itself\n"
                '        with torch.device("meta"):\n'
                "            merged = Conv1D(weight.shape[1], weight.shape[0])\n",
                "test_merging_leaves_what_the_adapters_share_alone", "registered outside its adapter"),
    WrongAnswer("the tie untied from wte's side: the embeddings given a new Parameter", KATA,
                MERGE_LINEARS,
                '    head = getattr(model, "lm_head", None)\n'
                '    embeddings = getattr(getattr(model, "transformer", None), "wte", None)\n'
                "    if isinstance(head, LoRALinear) and embeddings is not None and head.base.weight is embeddings.weight:\n"
                "        embeddings.weight = nn.Parameter(embeddings.weight.detach().clone())\n" + MERGE_LINEARS,
                "test_merging_leaves_what_the_adapters_share_alone", "a new Parameter"),
    WrongAnswer("adapters to merge told by their exact type", KATA, "    if isinstance(model, LoRAConv1D):\n        return merged_conv1d",
                "    if type(model) is LoRAConv1D:\n        return merged_conv1d",
                "test_merges_a_model_of_its_own_layer_classes", "subclass of LoRAConv1D",
                more_edits=(("        if isinstance(module, LoRAConv1D):\n            if id(module) not in merged:",
                             "        if type(module) is LoRAConv1D:\n            if id(module) not in merged:"),)),
    # Red-team round 13 (team A): apply_lora's and merge_weights' cases for GPT-2 (pattern-like and comma-joined
    # targets, a layer inside an adapter targeted, a second call of another config, a reload in between, one Conv1D
    # under two adapters), arguments out of the comfortable range (a fractional alpha, r above min(in, out), an
    # adapter as the base), trained biases in a half merge, dropout's fraction below float64.
    WrongAnswer("targets read as regular expressions", KATA, MATCH,
                'any(re.fullmatch(r"(?:.*\\.)?" + t, name) for t in targets)',
                "test_raises_naming_the_targets_when_nothing_matches", "never read as glob or regex patterns",
                more_edits=(("import math\n", "import math\nimport re\n"),)),
    WrongAnswer("alpha taken as an int, as peft's LoraConfig types it", KATA,
                "self.r, self.alpha, self.scaling = r, alpha, alpha / r",
                "alpha = int(alpha)  # lora_alpha is an int, as in peft's LoraConfig\n"
                "        self.r, self.alpha, self.scaling = r, alpha, alpha / r",
                "test_a_fractional_alpha_is_kept", "rounded to a whole number"),
    WrongAnswer("a plain Conv1D base folded in place when nothing outside the adapters holds it", KATA,
                "@torch.no_grad()\ndef merged_conv1d(layer: LoRAConv1D) -> Conv1D:",
                "def _held_outside_adapters(model: nn.Module, weight: torch.Tensor) -> bool:\n"
                "    named = list(model.named_modules(remove_duplicate=False))\n"
                "    held = [name for name, m in named if isinstance(m, (LoRAConv1D, LoRALinear))]\n"
                "    return any(\n"
                "        any(p is weight for p in m.parameters(recurse=False))\n"
                "        for name, m in named\n"
                '        if not any(name == a or name.startswith(a + ".") for a in held)\n'
                "    )\n\n\n"
                "@torch.no_grad()\ndef merged_conv1d(layer: LoRAConv1D, model: nn.Module | None = None) -> Conv1D:",
                "test_merges_adapters_that_share_a_conv1d", "both wrote into it",
                more_edits=(("merged[id(module)] = merged_conv1d(module)", "merged[id(module)] = merged_conv1d(module, model)"),
                            ('    with torch.device("meta"):  # no throwaway allocation',
                             "    if model is not None and type(layer.base) is Conv1D and not _held_outside_adapters(model, weight):\n"
                             "        weight.copy_((weight.to(accumulate) + update.T).to(weight.dtype))  # nothing else holds it\n"
                             "        return layer.base\n"
                             '    with torch.device("meta"):  # no throwaway allocation'))),
    WrongAnswer("a layer inside an adapter wrapped again", KATA,
                SKIP, "        if isinstance(module, adapters):\n",
                "test_a_second_call_adds_new_targets_and_keeps_the_trained_adapters", "nested in"),
    WrongAnswer("a str target split at commas", KATA, TARGETS,
                'targets = tuple(target_modules.split(",")) if isinstance(target_modules, str) else tuple(target_modules)',
                "test_raises_naming_the_targets_when_nothing_matches", "split at commas"),
    WrongAnswer("a half-precision merge into a fresh Conv1D, its zero bias kept", KATA,
                '    with torch.device("meta"):  # no throwaway allocation',
                "    if accumulate is not weight.dtype:  # half precision: a fresh Conv1D in that dtype, rounded once\n"
                "        merged = Conv1D(weight.shape[1], weight.shape[0]).to(device=weight.device, dtype=weight.dtype)\n"
                "        merged.weight = nn.Parameter((weight.to(accumulate) + update.T).to(weight.dtype), requires_grad=False)\n"
                "        return merged.requires_grad_(False)\n"
                '    with torch.device("meta"):  # no throwaway allocation',
                "test_half_precision_merges_in_float32_and_rounds_once", "it is all zero, a fresh Conv1D's own"),
    WrongAnswer("a second call reuses the first call's r, alpha and dropout", KATA, TARGETS,
                TARGETS + "\n    config = model.__dict__.setdefault(\"lora_config\", {\"r\": r, \"alpha\": alpha, \"dropout\": dropout})"
                "\n    r, alpha, dropout = config[\"r\"], config[\"alpha\"], config[\"dropout\"]  # as a PeftModel keeps its peft_config",
                "test_a_second_call_adds_new_targets_and_keeps_the_trained_adapters", "takes the r, alpha and dropout of the call"),
    WrongAnswer("factors found in a registry of the ids made earlier", KATA,
                "        setattr(model.get_submodule(parent_name), child_name, wrapper(module, r, alpha, dropout))\n",
                "        adapter = wrapper(module, r, alpha, dropout)\n"
                "        setattr(model.get_submodule(parent_name), child_name, adapter)\n"
                "        registry |= {id(p) for p in adapter.parameters() if p.requires_grad}\n",
                "test_a_second_call_adds_new_targets_and_keeps_the_trained_adapters", "never remember Parameters",
                more_edits=(("    for name, module in matched:\n",
                             '    registry = model.__dict__.setdefault("_lora_factor_ids", set())  # by identity, never by name\n'
                             "    for name, module in matched:\n"),
                            ("parameter.requires_grad_(id(parameter) in factors)", "parameter.requires_grad_(id(parameter) in registry)"))),
    WrongAnswer("r clamped to min(in, out) per layer", KATA, WRAP, "wrapper(module, min(r, *module.weight.shape), alpha, dropout)",
                "test_passes_r_alpha_and_dropout_on", "clamped"),
    WrongAnswer("an adapter accepted as a base, stacking LoRA on LoRA", KATA, "        if not isinstance(base, Conv1D):\n",
                "        if not isinstance(base, (Conv1D, LoRAConv1D)):  # let adapters stack: LoRA on top of LoRA\n",
                "test_rejects_a_base_that_is_not_a_transformers_conv1d", "raised nothing",
                more_edits=(("in_features, out_features = base.weight.shape",
                             "weight = base.weight if isinstance(base, Conv1D) else base.base.weight\n"
                             "        in_features, out_features = weight.shape"),
                            ('same_place = {"device": base.weight.device, "dtype": base.weight.dtype}',
                             'same_place = {"device": weight.device, "dtype": weight.dtype}'))),
    WrongAnswer("dropout's keep mask drawn with probability p below float64", KATA,
                "        down = F.linear(self.dropout(x), self.lora_A) * self.scaling\n",
                "        p = self.dropout.p\n"
                "        if self.training and p > 0 and x.dtype != torch.float64:  # one Bernoulli draw in x's dtype\n"
                "            z = x * torch.empty_like(x).bernoulli_(p) / (1 - p)\n"
                "        else:\n"
                "            z = self.dropout(x)\n"
                "        down = F.linear(z, self.lora_A) * self.scaling\n",
                "test_dropout_is_nn_dropouts_in_every_dtype", "p is the probability of zeroing"),
    # Frozen factors (requires_grad False) as a regime, and merges of frozen adapters.
    WrongAnswer("a frozen LoRAConv1D's branch detached", KATA, FORWARD,
                "frozen = not (self.lora_A.requires_grad or self.lora_B.requires_grad)  # nothing of it trains\n"
                "        return self.base(x) + (F.linear(down, self.lora_B).detach() if frozen else F.linear(down, self.lora_B))",
                "test_matches_plain_lora_in_every_regime", "both frozen by requires_grad_(False)"),
    WrongAnswer("LoRAConv1D's alpha = alpha or r", KATA, "self.r, self.alpha, self.scaling = r, alpha, alpha / r",
                "alpha = alpha or float(r)  # alpha left out (0 / None): scaling 1\n"
                "        self.r, self.alpha, self.scaling = r, alpha, alpha / r",
                "test_a_zero_or_negative_alpha_is_kept", "alpha = alpha or r?"),
    WrongAnswer("merge_gpt2 skips frozen LoRAConv1D adapters", KATA,
                "update = (layer.lora_B.to(accumulate) @ layer.lora_A.to(accumulate)) * layer.scaling  # (out, in)",
                "update = (layer.lora_B.to(accumulate) @ layer.lora_A.to(accumulate)) * layer.scaling  # (out, in)\n"
                "    update = update * (layer.lora_A.requires_grad or layer.lora_B.requires_grad)  # a frozen one is off",
                "test_merges_adapters_whose_factors_are_frozen", "the frozen adapters' updates left out"),
    WrongAnswer("apply_lora_gpt2 passes alpha or r on", KATA, WRAP, "wrapper(module, r, alpha or float(r), dropout)",
                "test_passes_a_zero_or_negative_alpha_on", "alpha = alpha or r?"),
    # Red-team round 15 (team A): merge_gpt2 in eval mode with one flag restored; LoRAConv1D without LoRALinear's traps.
    WrongAnswer("merge_gpt2 puts the model in eval mode and restores one flag", KATA,
                "    merged: dict[int, Conv1D] = {}",
                "    was_training = model.training\n    model.eval()  # merge with dropout off\n"
                "    merged: dict[int, Conv1D] = {}",
                "test_merging_keeps_every_modules_mode", "was_training",
                more_edits=((MERGE_LINEARS, "    _untie_adapted_weights(model)\n    model.train(was_training)  # back in the "
                             "mode it was in\n    return merge_weights(model)"),)),
    WrongAnswer("LoRAConv1D adds its update into base(x) in place", KATA, FORWARD,
                "return self.base(x).add_(F.linear(down, self.lora_B))  # no second (..., out) tensor",
                "test_leaves_the_tensor_the_base_returned_alone", "in place"),
    WrongAnswer("LoRAConv1D folds dW.T into W for large batches, skipping base(x)", KATA, FORWARD,
                "if x.numel() >= 256 * x.shape[-1] and not (self.training and self.dropout.p > 0):  # GPT-2 prefill\n"
                "            weight = self.base.weight + self.scaling * (self.lora_B @ self.lora_A).T  # (in, out)\n"
                "            return (x.reshape(-1, x.shape[-1]) @ weight + self.base.bias).view(*x.shape[:-1], -1)\n"
                "        " + FORWARD,
                "test_output_equals_the_base_at_init", "call base(x)"),
    WrongAnswer("merge_gpt2 skips LoRAConv1D adapters with a zero update", KATA,
                "        if isinstance(module, LoRAConv1D):\n",
                "        if isinstance(module, LoRAConv1D) and module.scaling != 0 and bool(module.lora_B.detach().any()):\n",
                "test_merges_adapters_with_a_zero_update", "zero update"),
    # Red-team round 16 (team A): merging, the default dtype, the caller's inference mode and a negative alpha.
    WrongAnswer("LoRAConv1D factors in the default dtype for a float32 base", KATA,
                'same_place = {"device": base.weight.device, "dtype": base.weight.dtype}',
                'same_place = {"device": base.weight.device, "dtype": None if base.weight.dtype == torch.float32 '
                'else base.weight.dtype}',
                "test_factors_follow_the_base_dtype_not_the_default_one", "set_default_dtype"),
    WrongAnswer("merge_gpt2 under the caller's inference_mode makes inference tensors", KATA,
                "@torch.inference_mode(False)  # under the caller's inference_mode too: no inference tensor\n"
                "@torch.no_grad()\ndef merged_conv1d", "@torch.no_grad()\ndef merged_conv1d",
                "test_merge_gpt2_under_every_grad_mode", "inference tensors"),
    WrongAnswer("merge_gpt2 folds nothing for a negative alpha", KATA,
                "update = (layer.lora_B.to(accumulate) @ layer.lora_A.to(accumulate)) * layer.scaling  # (out, in)",
                "update = (layer.lora_B.to(accumulate) @ layer.lora_A.to(accumulate)) * max(layer.scaling, 0.0)",
                "test_merged_conv1d_holds_W_plus_the_update_transposed", "negative alpha"),
    WrongAnswer("merge_gpt2's half path splits sqrt(scaling) over both factors", KATA,
                "update = (layer.lora_B.to(accumulate) @ layer.lora_A.to(accumulate)) * layer.scaling  # (out, in)",
                "root = math.sqrt(layer.scaling)  # split over both factors, to stay in half precision's range\n"
                "    update = (layer.lora_B.to(accumulate) * root) @ (layer.lora_A.to(accumulate) * root) "
                "if accumulate != weight.dtype else (layer.lora_B @ layer.lora_A) * layer.scaling",
                "test_merges_a_negative_alpha_in_every_dtype", "negative alpha"),
    WrongAnswer("gpt2 layers under a module named base skipped", KATA,
                SKIP, '        if isinstance(module, adapters) or id(module) in inside or (\n'
                '            "base" in name.split(".")\n'
                "        ):\n",
                "test_adapts_exactly_the_conv1d_and_linear_layers_named", "never by name"),
    WrongAnswer("LoRAConv1D dropout masks from a generator seeded at construction", KATA, "self.dropout = nn.Dropout(dropout)",
                "self.dropout = nn.Dropout(dropout)\n"
                "        self.generator = torch.Generator(base.weight.device).manual_seed(0)  # reproducible dropout",
                "test_dropout_masks_come_from_torchs_rng", "torch's global RNG",
                more_edits=(("down = F.linear(self.dropout(x), self.lora_A) * self.scaling",
                             "keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= self.dropout.p\n"
                             "        dropped = x * keep.to(x.dtype) / (1 - self.dropout.p) if self.training else x\n"
                             "        down = F.linear(dropped, self.lora_A) * self.scaling"),)),
    WrongAnswer("gpt2 targets matched case-insensitively", KATA, MATCH,
                'any(name.lower() == t.lower() or name.lower().endswith("." + t.lower()) for t in targets)',
                "test_raises_naming_the_targets_when_nothing_matches", "but for case"),
    WrongAnswer("gpt2 layers inside adapters told by their paths", KATA, SKIP,
                "        if isinstance(module, adapters) or any(\n"
                '            name.startswith(outer + ".") for outer, a in model.named_modules() if isinstance(a, adapters)\n'
                "        ):\n",
                "test_a_second_call_leaves_the_adapters_bases_alone_under_every_name", "by identity"),
    # Round 19, team A: a large float32/float64 Conv1D merged in place in blocks of W's rows, the last block left out.
    WrongAnswer("a large full-precision Conv1D merged in row blocks, the last block left out", KATA,
                "    merged.weight = nn.Parameter(" + UPDATE + ", requires_grad=False)",
                "    summed = " + UPDATE + "\n"
                "    if accumulate == weight.dtype and weight.numel() >= 1 << 22:  # no full-size temporary beside W\n"
                "        summed = weight.detach().clone()\n"
                "        for i in range(0, weight.shape[0] - 1024, 1024):\n"
                "            summed[i : i + 1024].add_(update[:, i : i + 1024].T)\n"
                "    merged.weight = nn.Parameter(summed, requires_grad=False)",
                "test_a_real_models_conv1d_merges_every_row_and_column_in_every_dtype", "past the last full block"),
    # Round 19, team A: apply_lora_gpt2 matching more than 4 targets by the layer's last name part only.
    WrongAnswer("more than 4 gpt2 targets matched by the layer's last name part only", KATA, MATCH,
                "(any(name == t or name.endswith(\".\" + t) for t in targets) if len(targets) <= 4\n"
                '             else name.rsplit(".", 1)[-1] in {t.rsplit(".", 1)[-1] for t in targets})',
                "test_adapts_exactly_the_conv1d_and_linear_layers_named", "by its last part alone"),
]  # fmt: skip
