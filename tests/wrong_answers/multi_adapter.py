"""Wrong answers to the `multi_adapter` kata."""

from tests.wrong_answers import WrongAnswer

KATA = "multi_adapter"
SET_ACTIVE = "        if self._merged:\n            self.unmerge()\n        self._active = name\n"
SAFE_CHECK = (
    "        if safe and not torch.isfinite(merged).all():\n"
    '            raise ValueError(f"merging adapter {name!r} gives a weight with NaN or inf: the adapter is broken")\n'
    "        weight.copy_(merged)  # the very Parameter, changed in place\n"
)
MERGED = "merged = (weight.to(self._accumulation()) + self._delta(name)).to(weight.dtype)"
RESTORE = "        try:\n            yield\n        finally:\n            self._disabled = was_disabled\n"
DELETE_UNMERGE = "        if name in self._merged:\n            self.unmerge()\n        del self.lora_A[name]"
UNKNOWN = '            raise ValueError(f"no adapter named {name!r}: the adapters are {self._names()}")'
TRAINS = "trains = name == self._active and not self._disabled"
FORWARD_BASE = "if name is None or self._disabled or self._merged:"
FORWARD_DELTA = (
    "        down = F.linear(self.lora_dropout[name](x), self.lora_A[name]) * self.scaling[name]\n"
    "        return self.base(x) + F.linear(down, self.lora_B[name])"
)
UNMERGE_SUB = "            weight.copy_((weight.to(self._accumulation()) - self._delta(name)).to(weight.dtype))\n"
MERGE_COMMIT = (
    "        weight.copy_(merged)  # the very Parameter, changed in place\n        self._merged.append(name)\n"
)
ENTER_UNMERGE = "        if self._merged:\n            self.unmerge()\n        was_disabled"
EXIT_UNMERGE = (
    "            self._disabled = was_disabled\n            if self._merged:\n                self.unmerge()\n"
)
LORALIB_TRAIN = '''
    def train(self, mode: bool = True) -> "MultiLoRALinear":
        """As loralib does: merge in eval mode, unmerge in train mode."""
        super().train(mode)
        if hasattr(self, "_merged"):
            self.unmerge() if mode else self.merge()
        return self

    def forward('''

WRONG_ANSWERS = [
    WrongAnswer("unmerge subtracting the new active adapter", KATA, SET_ACTIVE,
                "        self._active = name\n        if self._merged:\n            self.unmerge()\n",
                "test_set_adapter_on_a_merged_layer_unmerges_first", "subtracted chat's update instead of sql's",
                more_edits=(("            name = self._merged.pop()\n",
                             "            self._merged.pop()\n            name = self._active\n"),)),
    WrongAnswer("set_adapter leaving the merged adapter in", KATA, SET_ACTIVE, "        self._active = name\n",
                "test_set_adapter_on_a_merged_layer_unmerges_first", "set_adapter must unmerge first"),
    WrongAnswer("merge applied twice", KATA, "if name is None or name in self._merged:", "if name is None:",
                "test_merging_twice_adds_nothing", "added three times"),
    WrongAnswer("safe merge that writes first", KATA, SAFE_CHECK,
                "        weight.copy_(merged)\n"
                "        if safe and not torch.isfinite(weight).all():\n"
                '            raise ValueError("merging gives a weight with NaN or inf")\n',
                "test_safe_merge_of_a_broken_adapter_raises_and_leaves_the_weight_untouched", "wrote first"),
    WrongAnswer("safe merge that checks NaN only", KATA, "not torch.isfinite(merged).all()", "torch.isnan(merged).any()",
                "test_safe_merge_of_a_broken_adapter_raises_and_leaves_the_weight_untouched", "raised nothing"),
    WrongAnswer("safe merge that checks the float32 sum", KATA, MERGED + "\n" + SAFE_CHECK,
                "merged = weight.to(self._accumulation()) + self._delta(name)\n"
                + SAFE_CHECK.replace("weight.copy_(merged)", "weight.copy_(merged.to(weight.dtype))"),
                "test_safe_merge_checks_the_merged_weight_in_its_own_dtype", "raised nothing"),
    WrongAnswer("safe merge that checks after a cast to float32", KATA, "not torch.isfinite(merged).all()",
                "not torch.isfinite(merged.float()).all()",
                "test_safe_merge_of_a_sound_adapter_merges_as_merge_does", "not after a cast"),
    WrongAnswer("safe merge that checks bf16's float32 sum (bf16 has float32's range)", KATA, MERGED + "\n" + SAFE_CHECK,
                "summed = weight.to(self._accumulation()) + self._delta(name)\n        merged = summed.to(weight.dtype)\n"
                + SAFE_CHECK.replace("isfinite(merged)", "isfinite(summed if weight.dtype == torch.bfloat16 else merged)"),
                "test_safe_merge_checks_the_merged_weight_in_its_own_dtype", "raised nothing"),
    WrongAnswer("a deleted merged adapter left in the weight", KATA, DELETE_UNMERGE,
                "        self._merged = [other for other in self._merged if other != name]\n        del self.lora_A[name]",
                "test_delete_adapter_unmerges_a_merged_adapter_first", "stayed in the weight for good"),
    WrongAnswer("set_adapter leaving others trainable", KATA, "        self._active = name\n        self._refresh_trainable()\n\n    @contextlib",
                "        self._active = name\n        self.lora_A[name].requires_grad_(True)\n"
                "        self.lora_B[name].requires_grad_(True)\n\n    @contextlib",
                "test_set_adapter_trains_only_the_active_adapter", "set_adapter makes the new active adapter trainable"),
    WrongAnswer("half-precision merge summed in half precision", KATA,
                "return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype", "return dtype",
                "test_half_precision_merge_and_unmerge_accumulate_in_float32", "upcast W, A and B to float32"),
    WrongAnswer("every merge summed in float32, float64 too", KATA,
                "return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype", "return torch.float32",
                "test_merge_folds_the_active_adapter_into_the_very_base_weight", "merged and unmerged in float64"),
    WrongAnswer("update rounded before the sum, as peft's layer does", KATA, MERGED,
                "merged = weight + self._delta(name).to(weight.dtype)",
                "test_half_precision_merge_and_unmerge_accumulate_in_float32", "rounded to torch.bfloat16 before the sum"),
    WrongAnswer("merge replaces the weight Parameter", KATA, "        weight.copy_(merged)  # the very Parameter",
                "        self.base.weight = nn.Parameter(merged, requires_grad=False)  # a new Parameter",
                "test_merge_folds_the_active_adapter_into_the_very_base_weight", "another object"),
    WrongAnswer("merge with grad history", KATA, "    @torch.no_grad()\n    def merge(", "    def merge(",
                "test_merge_folds_the_active_adapter_into_the_very_base_weight", "grad history"),
    WrongAnswer("forward adds the adapter on a merged layer", KATA, FORWARD_BASE, "if name is None or self._disabled:",
                "test_merge_folds_the_active_adapter_into_the_very_base_weight", "on top of the merged weight"),
    WrongAnswer("deleting the active adapter activates another, as peft's layer does", KATA,
                "        if self._active == name:\n            self._active = None\n",
                "        if self._active == name:\n            self._active = next(iter(self.lora_A), None)\n",
                "test_deleting_the_active_adapter_leaves_none_active", "another adapter was made active"),
    WrongAnswer("disable_adapters without finally", KATA, RESTORE, "        yield\n        if True:\n            self._disabled = was_disabled\n",
                "test_disable_adapters_restores_the_state_after_an_exception", "finally clause"),
    WrongAnswer("disable_adapters swallowing the exception", KATA, RESTORE,
                "        try:\n            yield\n        except Exception:\n            pass\n        finally:\n"
                "            self._disabled = was_disabled\n",
                "test_disable_adapters_restores_the_state_after_an_exception", "swallows it"),
    WrongAnswer("disable_adapters merging again on exit", KATA, "        if self._merged:\n            self.unmerge()\n        was_disabled",
                "        was_merged = bool(self._merged)\n        if self._merged:\n            self.unmerge()\n        was_disabled",
                "test_disable_adapters_unmerges_a_merged_layer_and_does_not_merge_again", "merged again on exit",
                more_edits=(("            self._refresh_trainable()\n\n    @torch.no_grad()\n    def merge(",
                             "            self._refresh_trainable()\n            if was_merged:\n                self.merge()\n\n"
                             "    @torch.no_grad()\n    def merge("),)),
    WrongAnswer("disable_adapters computing with the merged weight", KATA,
                "        if self._merged:\n            self.unmerge()\n        was_disabled", "        was_disabled",
                "test_disable_adapters_unmerges_a_merged_layer_and_does_not_merge_again", "unmerge first",
                more_edits=(("        if self._disabled and self._merged:\n            self.unmerge()\n", ""),)),
    WrongAnswer("disable_adapters leaving the active adapter trainable", KATA, TRAINS, "trains = name == self._active",
                "test_disable_adapters_computes_the_base_with_nothing_trainable", "expected nothing"),
    WrongAnswer("unknown name not naming the adapters", KATA, UNKNOWN,
                '            raise ValueError(f"no adapter named {name!r}")',
                "test_unknown_names_are_value_errors_naming_the_known_adapters", "does not name the adapters"),
    WrongAnswer("unknown name a KeyError", KATA, "        if name not in self.lora_A:\n" + UNKNOWN,
                "        self.lora_A[name]  # KeyError for an unknown name",
                "test_unknown_names_are_value_errors_naming_the_known_adapters", "expected a ValueError"),
    WrongAnswer("set_adapter unmerging before checking the name", KATA,
                "        self._expect_known(name)\n        if self._merged:\n            self.unmerge()\n        self._active",
                "        if self._merged:\n            self.unmerge()\n        self._expect_known(name)\n        self._active",
                "test_unknown_names_are_value_errors_naming_the_known_adapters", "check the name before changing"),
    WrongAnswer("a name already there overwritten", KATA,
                '        if name in self.lora_A:\n            raise ValueError(f"an adapter named {name!r} already exists '
                '(adapters: {self._names()})")\n', "",
                "test_adding_a_name_already_there_is_a_value_error_that_keeps_it", "raised nothing"),
    WrongAnswer("every new adapter becomes active", KATA, "        if self._active is None:\n            self._active = name\n",
                "        self._active = name\n",
                "test_a_second_adapter_leaves_the_active_one_active_and_frozen_itself", "only when no adapter is"),
    WrongAnswer("one scaling for the layer, the first adapter's", KATA, "self.scaling[name] = alpha / r",
                "self.scaling[name] = next(iter(self.scaling.values()), alpha / r)",
                "test_each_adapter_computes_with_its_own_factors_and_scaling", "keep a scaling per adapter"),
    WrongAnswer("one dropout for the layer, the first adapter's", KATA, "self.lora_dropout[name] = nn.Dropout(dropout)",
                "self.lora_dropout[name] = next(iter(self.lora_dropout.values()), None) or nn.Dropout(dropout)",
                "test_each_adapter_has_its_own_dropout", "apply each adapter's own dropout"),
    WrongAnswer("factors kept in a plain dict", KATA, "        self.lora_A = nn.ParameterDict()\n        self.lora_B = nn.ParameterDict()\n",
                "        self.lora_A: dict[str, nn.Parameter] = {}\n        self.lora_B: dict[str, nn.Parameter] = {}\n",
                "test_the_first_adapter_becomes_active_trainable_and_adds_nothing", "not in a plain dict"),
    WrongAnswer("eval() merges, as loralib does", KATA, "\n    def forward(", LORALIB_TRAIN,
                "test_agrees_with_peft_over_random_sequences_of_calls", "no merging on eval()"),
    WrongAnswer("delete_adapter unmerging whatever is merged", KATA, DELETE_UNMERGE,
                "        self.unmerge()\n        del self.lora_A[name]",
                "test_deleting_another_adapter_keeps_the_active_one_and_its_merge", "another merged adapter stays merged"),
    WrongAnswer("safe merge listing the adapter before the check", KATA, SAFE_CHECK,
                "        self._merged.append(name)\n" + SAFE_CHECK,
                "test_safe_merge_of_a_broken_adapter_raises_and_leaves_the_weight_untouched", "list an adapter only once merged",
                more_edits=(("        weight.copy_(merged)  # the very Parameter, changed in place\n        self._merged.append(name)\n",
                             "        weight.copy_(merged)  # the very Parameter, changed in place\n"),)),
    WrongAnswer("unmerge subtracting in half precision", KATA,
                "weight.copy_((weight.to(self._accumulation()) - self._delta(name)).to(weight.dtype))",
                "weight.sub_(self._delta(name).to(weight.dtype))",
                "test_half_precision_merge_and_unmerge_accumulate_in_float32", "before the difference"),
    WrongAnswer("set_adapter unmerging only for another name", KATA, SET_ACTIVE,
                "        if self._merged and name != self._active:\n            self.unmerge()\n        self._active = name\n",
                "test_set_adapter_on_a_merged_layer_unmerges_first", "even when the name is the active one"),
    WrongAnswer("active_adapter a method", KATA, "    @property\n    def active_adapter(self)", "    def active_adapter(self)",
                "test_the_first_adapter_becomes_active_trainable_and_adds_nothing", "make it a @property"),
    WrongAnswer("merge zeroing B, unmerge putting it back", KATA, "        weight.copy_(merged)  # the very Parameter, changed in place\n",
                "        weight.copy_(merged)  # the very Parameter, changed in place\n"
                "        self._saved_B = self.lora_B[name].detach().clone()\n        self.lora_B[name].zero_()\n",
                "test_merge_folds_the_active_adapter_into_the_very_base_weight", "leaves them as they are",
                more_edits=(("            name = self._merged.pop()\n",
                             "            name = self._merged.pop()\n            self.lora_B[name].copy_(self._saved_B)\n"),)),
    WrongAnswer("merge reading the update off a forward pass", KATA, MERGED,
                "eye = torch.eye(self.base.in_features, dtype=weight.dtype, device=weight.device)\n"
                "        merged = (weight + (self(eye) - self.base(eye)).T).to(weight.dtype)",
                "test_merge_in_train_mode_ignores_dropout", "not from a forward pass"),
    # Red-team round 1 (issue 13): an error sentence over every value it covers.
    WrongAnswer("NaN dropout accepted", KATA, "if not 0.0 <= dropout < 1.0:", "if dropout < 0.0 or dropout >= 1.0:",
                "test_add_adapter_rejects_invalid_arguments", "expected a ValueError"),
    WrongAnswer("a fractional r accepted", KATA, "if isinstance(r, bool) or not isinstance(r, int) or r < 1:",
                "if r < 1:", "test_add_adapter_rejects_invalid_arguments", "expected a ValueError"),
    # Red-team round 1 (r1f): dropout, disable_adapters blocks, bases and dtypes the checks did not build.
    WrongAnswer("dropout after A", KATA, "down = F.linear(self.lora_dropout[name](x), self.lora_A[name])",
                "down = self.lora_dropout[name](F.linear(x, self.lora_A[name]))",
                "test_dropout_drops_the_adapter_input_and_rescales_it_in_every_regime", "before A"),
    WrongAnswer("dropout without the 1 / (1 - p) rescale", KATA, "F.linear(self.lora_dropout[name](x), ",
                "F.linear(x * (torch.rand_like(x) >= self.lora_dropout[name].p) if self.training else x, ",
                "test_dropout_drops_the_adapter_input_and_rescales_it_in_every_regime", "rescale of the kept inputs is missing"),
    WrongAnswer("in-place dropout on the caller's x", KATA, "nn.Dropout(dropout)", "nn.Dropout(dropout, inplace=True)",
                "test_dropout_drops_the_adapter_input_and_rescales_it_in_every_regime", "changed"),
    WrongAnswer("disable_adapters not re-entrant", KATA, "            self._disabled = was_disabled\n",
                "            self._disabled = False\n",
                "test_disable_adapters_holds_through_calls_inside_the_block_and_exits_consistent", "never set False"),
    WrongAnswer("set_adapter inside disable_adapters trains", KATA,
                "        self._active = name\n        self._refresh_trainable()\n\n    @contextlib",
                "        self._active = name\n        self._refresh_trainable()\n        self.lora_A[name].requires_grad_(True)\n"
                "        self.lora_B[name].requires_grad_(True)\n\n    @contextlib",
                "test_disable_adapters_holds_through_calls_inside_the_block_and_exits_consistent",
                "expected nothing until the block exits"),
    WrongAnswer("disable_adapters restoring a deleted active name", KATA, RESTORE,
                "        saved = self._active\n" + RESTORE + "            self._active = saved\n",
                "test_disable_adapters_holds_through_calls_inside_the_block_and_exits_consistent",
                "must not bring back a name that is gone"),
    WrongAnswer("disable_adapters restoring the flags saved on entry", KATA, EXIT_UNMERGE + "            self._refresh_trainable()\n",
                EXIT_UNMERGE + "            for p, flag in flags:\n                p.requires_grad_(flag)\n",
                "test_disable_adapters_holds_through_calls_inside_the_block_and_exits_consistent", "not a saved copy",
                more_edits=(("        was_disabled, self._disabled",
                             "        flags = [(p, p.requires_grad) for p in self.parameters()]\n        was_disabled, self._disabled"),)),
    WrongAnswer("half-precision merge into a new Parameter", KATA, "        weight.copy_(merged)  # the very Parameter",
                "        if weight.dtype in (torch.float16, torch.bfloat16):\n"
                "            self.base.weight = nn.Parameter(merged, requires_grad=False)\n"
                "        else:\n            weight.copy_(merged)  # the very Parameter",
                "test_half_precision_merge_and_unmerge_accumulate_in_float32", "another object"),
    WrongAnswer("a failed add_adapter leaving its name behind", KATA, "if name in self.lora_A:", "if name in self.scaling:",
                "test_add_adapter_rejects_invalid_arguments", "left the name behind",
                more_edits=(("        if isinstance(r, bool)", "        self.scaling[name] = 0.0\n        if isinstance(r, bool)"),)),
    WrongAnswer("a bias-free base crashes", KATA, "        self.base = base.requires_grad_(False)\n",
                "        self.base = base\n        base.weight.requires_grad_(False)\n        base.bias.requires_grad_(False)\n",
                "test_every_kind_of_base_goes_through_add_merge_disable_switch_and_delete", "a base may have no bias"),
    WrongAnswer("an nn.Linear subclass rejected", KATA, "if not isinstance(base, nn.Linear):",
                "if type(base) is not nn.Linear:",
                "test_every_kind_of_base_goes_through_add_merge_disable_switch_and_delete", "subclasses too"),
    WrongAnswer("safe merge checking the update only", KATA, "if safe and not torch.isfinite(merged).all():",
                "if safe and not torch.isfinite(self._delta(name).to(weight.dtype)).all():",
                "test_safe_merge_checks_the_merged_weight_in_its_own_dtype", "raised nothing"),
    WrongAnswer("fp16 forward returning float32", KATA, "        return self.base(x) + F.linear(down, self.lora_B[name])",
                "        if x.dtype == torch.float16:\n"
                "            return self.base(x).float() + F.linear(down.float(), self.lora_B[name].float())\n"
                "        return self.base(x) + F.linear(down, self.lora_B[name])",
                "test_adapters_live_on_the_base_device_and_dtype", "expected output"),
    WrongAnswer("eval() merging the active adapter", KATA, "\n    def forward(",
                '\n    def train(self, mode: bool = True) -> "MultiLoRALinear":\n        super().train(mode)\n'
                '        if not mode and hasattr(self, "_merged"):\n            self.merge()\n        return self\n\n    def forward(',
                "test_train_and_eval_switch_dropout_only_never_merging", "never merge or unmerge"),
    # round 2 (red-team attempts w01-w18)
    WrongAnswer("dropout of whole rows", KATA, "down = F.linear(self.lora_dropout[name](x), ",
                "down = F.linear(self.lora_dropout[name](torch.ones_like(x[..., :1])) * x, ",
                "test_dropout_drops_the_adapter_input_and_rescales_it_in_every_regime", "zeroed or kept together"),
    WrongAnswer("forward flattening x with view", KATA, FORWARD_DELTA,
                "        down = F.linear(self.lora_dropout[name](x.view(-1, x.shape[-1])), self.lora_A[name])"
                " * self.scaling[name]\n"
                "        return self.base(x) + F.linear(down, self.lora_B[name]).view(*x.shape[:-1], -1)",
                "test_adapters_live_on_the_base_device_and_dtype", "reshape"),
    WrongAnswer("A drawn from torch.rand", KATA, "nn.init.kaiming_uniform_(self.lora_A[name], a=math.sqrt(5))",
                "nn.init.uniform_(self.lora_A[name])",
                "test_add_adapter_defaults_are_r_8_alpha_16_and_no_dropout", "centred on 0"),
    WrongAnswer("every adapter computing, gated by 0 or 1", KATA,
                "        name = self._active\n        " + FORWARD_BASE + "\n            return self.base(x)\n"
                + FORWARD_DELTA,
                "        y = self.base(x)\n        for name in self.lora_A:\n"
                "            gate = float(name == self._active and not self._disabled and not self._merged)\n"
                "            down = F.linear(self.lora_dropout[name](x), self.lora_A[name]) * self.scaling[name]\n"
                "            y = y + gate * F.linear(down, self.lora_B[name])\n        return y",
                "test_each_adapter_computes_with_its_own_factors_and_scaling", "an inactive adapter computed"),
    WrongAnswer("the base's dtype and device cached in __init__", KATA,
                '        same_place = {"device": weight.device, "dtype": weight.dtype}\n',
                "        same_place = self._place\n",
                "test_adapters_live_on_the_base_device_and_dtype", "not cached in __init__",
                more_edits=(("        self._disabled = False\n",
                             "        self._disabled = False\n"
                             '        self._place = {"device": base.weight.device, "dtype": base.weight.dtype}\n'),)),
    WrongAnswer("add_adapter inside disable_adapters making the new active one trainable", KATA,
                "            self._active = name\n        self._refresh_trainable()\n",
                "            self._active = name\n        else:\n            self.lora_A[name].requires_grad_(False)\n"
                "            self.lora_B[name].requires_grad_(False)\n",
                "test_disable_adapters_holds_through_calls_inside_the_block_and_exits_consistent",
                "expected nothing until the block exits"),
    WrongAnswer("a failed safe merge freezing the active adapter", KATA,
                "        if safe and not torch.isfinite(merged).all():",
                "        self.lora_A[name].requires_grad_(False)\n        self.lora_B[name].requires_grad_(False)\n"
                "        if safe and not torch.isfinite(merged).all():",
                "test_safe_merge_of_a_broken_adapter_raises_and_leaves_the_weight_untouched",
                "every ValueError leaves the layer as it was",
                more_edits=((UNMERGE_SUB, UNMERGE_SUB + "        self._refresh_trainable()\n"),)),
    WrongAnswer("r=None raising TypeError", KATA, "if isinstance(r, bool) or not isinstance(r, int) or r < 1:",
                "if r < 1 or int(r) != r:", "test_add_adapter_rejects_invalid_arguments", "expected a ValueError"),
    WrongAnswer("merge taking safe by keyword only", KATA, "def merge(self, safe: bool = False)",
                "def merge(self, *, safe: bool = False)",
                "test_safe_merge_of_a_broken_adapter_raises_and_leaves_the_weight_untouched", "safe positional"),
    WrongAnswer("add_adapter taking dropout before alpha", KATA, "r: int = 8, alpha: float = 16.0, dropout: float = 0.0",
                "r: int = 8, dropout: float = 0.0, alpha: float = 16.0",
                "test_add_adapter_takes_positional_and_keyword_arguments_and_alpha_zero", "keep the stub's order"),
    WrongAnswer("an adapter named like a layer attribute replacing it", KATA, "        self.scaling[name] = alpha / r\n",
                "        self.scaling[name] = alpha / r\n        setattr(self, name, nn.Module())\n        delattr(self, name)\n",
                "test_an_adapter_may_be_named_like_the_layer_s_own_attributes", "no longer a submodule"),
    WrongAnswer("float32 weights merged in float64", KATA,
                "return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype",
                "return torch.float32 if dtype in (torch.float16, torch.bfloat16) else torch.float64",
                "test_float32_merge_and_unmerge_are_summed_in_float32", "summed in their own dtype"),
    WrongAnswer("alpha = 0 rejected", KATA, "        weight = self.base.weight\n        same_place",
                '        if alpha <= 0:\n            raise ValueError(f"alpha must be > 0, got {alpha!r}")\n'
                "        weight = self.base.weight\n        same_place",
                "test_add_adapter_takes_positional_and_keyword_arguments_and_alpha_zero", "do not list alpha"),
    # round 2, the lead's decisions on the behaviours right answers shared (w11, w14, w15, w18)
    WrongAnswer("unmerge restoring the weight saved by merge", KATA, MERGE_COMMIT,
                "        self._saved_weight = weight.detach().clone()\n" + MERGE_COMMIT,
                "test_unmerge_subtracts_the_update_from_the_weight_as_it_is_now", "restored the weight saved by merge",
                more_edits=((UNMERGE_SUB, "            weight.copy_(self._saved_weight)\n"),)),
    WrongAnswer("merge() inside disable_adapters reaching the forward", KATA,
                "        if self._disabled and self._merged:\n            self.unmerge()\n", "",
                "test_disable_adapters_holds_through_calls_inside_the_block_and_exits_consistent",
                "the forward used the weight merge() changed inside the block"),
    WrongAnswer("merge() inside disable_adapters left merged on exit", KATA, EXIT_UNMERGE,
                "            self._disabled = was_disabled\n",
                "test_disable_adapters_holds_through_calls_inside_the_block_and_exits_consistent",
                "the layer leaves the block unmerged, forward or not"),
    WrongAnswer("disable_adapters unmerging only at a forward inside", KATA, ENTER_UNMERGE, "        was_disabled",
                "test_disable_adapters_holds_through_calls_inside_the_block_and_exits_consistent",
                "expected []: the layer leaves the block unmerged, forward or not",
                more_edits=((EXIT_UNMERGE, "            self._disabled = was_disabled\n"),)),
    WrongAnswer("merged_adapters returning the layer's own list", KATA, "        return list(self._merged)\n",
                "        return self._merged\n",
                "test_merged_adapters_is_a_new_list_the_caller_may_change", "return a new list at every call"),
    # round 3 (red-team attempts W01-W17)
    WrongAnswer("dropout with a float32 mask", KATA, "F.linear(self.lora_dropout[name](x), ",
                "F.linear(x * torch.empty(x.shape).bernoulli_(1 - self.lora_dropout[name].p)"
                " / (1 - self.lora_dropout[name].p) if self.training and self.lora_dropout[name].p else x, ",
                "test_every_kind_of_base_goes_through_add_merge_disable_switch_and_delete", "same dtype"),
    WrongAnswer("merge swapping the weight's data", KATA, "        weight.copy_(merged)  # the very Parameter",
                "        weight.data = merged  # the very Parameter",
                "test_merge_folds_the_active_adapter_into_the_very_base_weight", "holds new memory"),
    WrongAnswer("an unknown name naming only the closest adapter", KATA, UNKNOWN,
                '            close = __import__("difflib").get_close_matches(name, list(self.lora_A), n=1)\n'
                "            if close:\n"
                '                raise ValueError(f"no adapter named {name!r}: did you mean {close[0]!r}?")\n' + UNKNOWN,
                "test_unknown_names_are_value_errors_naming_the_known_adapters", "does not name the adapters"),
    WrongAnswer("set_adapter naming its argument adapter_name, as peft does", KATA,
                "    def set_adapter(self, name: str) -> None:\n",
                "    def set_adapter(self, adapter_name: str) -> None:\n        name = adapter_name\n",
                "test_add_adapter_takes_positional_and_keyword_arguments_and_alpha_zero",
                "keep the stub's parameter names"),
    WrongAnswer("merged_adapters a tuple", KATA, "        return list(self._merged)\n", "        return tuple(self._merged)\n",
                "test_merge_folds_the_active_adapter_into_the_very_base_weight", "expected a list of names"),
    WrongAnswer("trainable by a substring of the parameter's name", KATA,
                "        for name in self.lora_A:\n            " + TRAINS + "\n"
                "            self.lora_A[name].requires_grad_(trains)\n            self.lora_B[name].requires_grad_(trains)\n",
                "        for key, parameter in self.named_parameters():\n"
                "            parameter.requires_grad_(self._active is not None and not self._disabled and self._active in key)\n",
                "test_set_adapter_trains_only_the_active_adapter", "by its exact name"),
    WrongAnswer("a whole-number float r accepted", KATA, "if isinstance(r, bool) or not isinstance(r, int) or r < 1:",
                "if isinstance(r, float) and r.is_integer():\n            r = int(r)\n"
                "        if isinstance(r, bool) or not isinstance(r, int) or r < 1:",
                "test_add_adapter_rejects_invalid_arguments", "raised nothing"),
    WrongAnswer("the scaling a float32 tensor", KATA, "self.scaling[name] = alpha / r",
                "self.scaling[name] = torch.tensor(alpha / r)",
                "test_each_adapter_computes_with_its_own_factors_and_scaling", "rounded to float32"),
    WrongAnswer("Kaiming-uniform on A stored (in, r)", KATA, "nn.init.kaiming_uniform_(self.lora_A[name], a=math.sqrt(5))",
                "nn.init.kaiming_uniform_(self.lora_A[name].T, a=math.sqrt(5))",
                "test_a_uniform_A_has_nn_linears_bound", "the fan-in was taken from A stored (in, r)"),
    WrongAnswer("disable_adapters restoring after an Exception only", KATA,
                "        finally:\n            self._disabled = was_disabled\n",
                "        except Exception:\n            self._disabled = was_disabled\n            self._refresh_trainable()\n"
                "            raise\n        else:\n            self._disabled = was_disabled\n",
                "test_disable_adapters_restores_the_state_after_an_exception", "KeyboardInterrupt"),
    WrongAnswer("the base's forward under no_grad", KATA, "        return self.base(x) + F.linear(down, self.lora_B[name])",
                "        with torch.no_grad():\n            y = self.base(x)\n        return y + F.linear(down, self.lora_B[name])",
                "test_set_adapter_trains_only_the_active_adapter", "the base's share is missing"),
    WrongAnswer("a failed add_adapter freezing the active adapter", KATA, "        if isinstance(r, bool)",
                "        for parameter in self.parameters():\n            parameter.requires_grad_(False)\n"
                "        if isinstance(r, bool)",
                "test_add_adapter_rejects_invalid_arguments", "every ValueError leaves the layer as it was"),
    WrongAnswer("factors on the default device", KATA, 'same_place = {"device": weight.device, "dtype": weight.dtype}',
                'same_place = {"dtype": weight.dtype}',
                "test_factors_follow_the_base_device_not_the_default_one", "the default device of this check"),
    WrongAnswer("float32 unmerge in float64", KATA, UNMERGE_SUB,
                "            wide = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else torch.float64\n"
                "            delta = (self.lora_B[name].to(wide) @ self.lora_A[name].to(wide)) * self.scaling[name]\n"
                "            weight.copy_((weight.to(wide) - delta).to(weight.dtype))\n",
                "test_float32_merge_and_unmerge_are_summed_in_float32", "unmerged in their own dtype"),
    WrongAnswer("disable_adapters as a zero scaling in forward", KATA, FORWARD_BASE, "if name is None or self._merged:",
                "test_disable_adapters_computes_the_base_with_nothing_trainable", "0 * inf is NaN",
                more_edits=(("self.lora_A[name]) * self.scaling[name]\n",
                             "self.lora_A[name]) * (0.0 if self._disabled else self.scaling[name])\n"),)),
    # The stub's signature: a caller passes its parameters by name or by position (one check for them all).
    WrongAnswer("set_adapter's name renamed adapter_name (peft's)", KATA, 'def set_adapter(self, name: str) -> None:',
                'def set_adapter(self, adapter_name: str) -> None:\n        name = adapter_name',
                "test_takes_the_stubs_parameters", 'has no parameter `name` (renamed `adapter_name`?)'),
    WrongAnswer("add_adapter's r and alpha without defaults", KATA, 'def add_adapter(self, name: str, r: int = 8, alpha: float = 16.0,',
                'def add_adapter(self, name: str, r: int, alpha: float,',
                "test_takes_the_stubs_parameters", 'gives `r` no default'),
    # round 4 (red-team attempts w01-w17)
    WrongAnswer("dropout p taken as the keep probability", KATA, "nn.Dropout(dropout).train(self.training)",
                "(nn.Dropout(1 - dropout) if dropout else nn.Identity()).train(self.training)",
                "test_dropout_drops_the_adapter_input_and_rescales_it_in_every_regime", "taken as the keep probability"),
    WrongAnswer("dropout rescaling the kept inputs by 1 / p", KATA, "F.linear(self.lora_dropout[name](x), ",
                "F.linear(x * (torch.rand_like(x) >= self.lora_dropout[name].p) / self.lora_dropout[name].p"
                " if self.training and self.lora_dropout[name].p else x, ",
                "test_dropout_drops_the_adapter_input_and_rescales_it_in_every_regime", "that is 1/p"),
    WrongAnswer("one dropout mask over the features, shared by every row", KATA, "F.linear(self.lora_dropout[name](x), ",
                "F.linear(x * self.lora_dropout[name](torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)), ",
                "test_dropout_drops_the_adapter_input_and_rescales_it_in_every_regime", "share one dropout mask"),
    WrongAnswer("a new adapter's dropout in train mode on a layer in eval mode", KATA,
                ".train(self.training)  # in the layer's mode, as it is now", "",
                "test_an_adapter_added_in_eval_mode_drops_nothing_until_train", "the new nn.Dropout is in train mode"),
    WrongAnswer("the base-only paths under no_grad", KATA, "            return self.base(x)\n        down",
                "            with torch.no_grad():\n                return self.base(x)\n        down",
                "test_the_base_alone_passes_the_gradient_on_to_x", "never under torch.no_grad()"),
    WrongAnswer("unmerge subtracting the update saved at merge time", KATA, MERGED,
                "self._saved = self._delta(name)\n        merged = (weight.to(self._accumulation()) + self._saved)"
                ".to(weight.dtype)",
                "test_unmerge_subtracts_the_update_from_the_weight_as_it_is_now", "saved at merge time",
                more_edits=((UNMERGE_SUB,
                             "            weight.copy_((weight.to(self._accumulation()) - self._saved).to(weight.dtype))\n"),)),
    WrongAnswer("set_adapter unmerging in half precision", KATA, SET_ACTIVE,
                "        if self._merged:\n"
                "            self.base.weight.sub_(self._delta(self._merged.pop()).to(self.base.weight.dtype))\n"
                "        self._active = name\n",
                "test_half_precision_merge_and_unmerge_accumulate_in_float32", "before the difference"),
    WrongAnswer("delete_adapter unmerging a float32 weight in float64", KATA, DELETE_UNMERGE,
                "        if name in self._merged:\n            self._merged.remove(name)\n            wide = torch.float64\n"
                "            delta = (self.lora_B[name].to(wide) @ self.lora_A[name].to(wide)).detach() * self.scaling[name]\n"
                "            self.base.weight.copy_((self.base.weight.to(wide) - delta).to(self.base.weight.dtype))\n"
                "        del self.lora_A[name]",
                "test_float32_merge_and_unmerge_are_summed_in_float32", "unmerged in their own dtype"),
    WrongAnswer("the accumulation dtype read in __init__", KATA,
                "        dtype = self.base.weight.dtype\n        return torch.float32 if dtype in (torch.float16, "
                "torch.bfloat16) else dtype",
                "        return self._accumulate",
                "test_float32_merge_and_unmerge_are_summed_in_float32", "read the dtype off the weight at merge time",
                more_edits=(("        self._disabled = False\n",
                             "        self._disabled = False\n        dtype = base.weight.dtype\n"
                             "        self._accumulate = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype\n"),)),
    WrongAnswer("a negative alpha refused", KATA, "        if not 0.0 <= dropout < 1.0:",
                '        if alpha < 0:\n            raise ValueError(f"alpha must be >= 0, got {alpha}")\n'
                "        if not 0.0 <= dropout < 1.0:",
                "test_add_adapter_takes_any_real_alpha", "any real alpha is taken"),
    WrongAnswer("an int alpha refused", KATA, "        if not 0.0 <= dropout < 1.0:",
                '        if not isinstance(alpha, float):\n            raise ValueError(f"alpha must be a float, got {alpha}")\n'
                "        if not 0.0 <= dropout < 1.0:",
                "test_add_adapter_takes_any_real_alpha", "any real alpha is taken"),
    WrongAnswer("trainable by the end of the parameter's name", KATA,
                "        for name in self.lora_A:\n            " + TRAINS + "\n"
                "            self.lora_A[name].requires_grad_(trains)\n            self.lora_B[name].requires_grad_(trains)\n",
                "        for key, parameter in self.named_parameters():\n"
                "            parameter.requires_grad_(self._active is not None and not self._disabled"
                " and key.endswith(self._active))\n",
                "test_set_adapter_trains_only_the_active_adapter", "ends 'mysql'"),
    WrongAnswer("any module with a 2-D weight taken as a base", KATA, "if not isinstance(base, nn.Linear):",
                'if getattr(getattr(base, "weight", None), "dim", lambda: 0)() != 2:',
                "test_rejects_a_base_that_is_not_linear", "a 2-D weight is not enough"),
    WrongAnswer("disable_adapters disabling at the call, before the block", KATA,
                "    @contextlib.contextmanager\n    def disable_adapters(self) -> Iterator[None]:\n",
                "    def disable_adapters(self) -> contextlib.AbstractContextManager[None]:\n"
                "        was_disabled, self._disabled = self._disabled, True\n        self._refresh_trainable()\n"
                "        return self._disabling(was_disabled)\n\n"
                "    @contextlib.contextmanager\n    def _disabling(self, was_disabled: bool) -> Iterator[None]:\n",
                "test_disable_adapters_computes_the_base_with_nothing_trainable", "when the block is entered",
                more_edits=(("        was_disabled, self._disabled = self._disabled, True\n        self._refresh_trainable()\n"
                             "        try:\n", "        try:\n"),)),
    WrongAnswer("merge(safe=False) checking anyway", KATA, "if safe and not torch.isfinite(merged).all():",
                "if not torch.isfinite(merged).all():",
                "test_safe_merge_of_a_broken_adapter_raises_and_leaves_the_weight_untouched", "safe=False does not check"),
    WrongAnswer("the base computed with F.linear, bypassing its forward and hooks", KATA,
                "            return self.base(x)\n        down",
                "            return F.linear(x, self.base.weight, self.base.bias)\n        down",
                "test_the_base_runs_its_own_forward_and_hooks", "so its forward and hooks run",
                more_edits=(("return self.base(x) + F.linear(down", "return F.linear(x, self.base.weight, self.base.bias)"
                             " + F.linear(down"),)),
    WrongAnswer("safe merge checking +inf and NaN only", KATA, "not torch.isfinite(merged).all()",
                '(merged.isnan().any() or merged.max() == float("inf"))',
                "test_safe_merge_checks_the_merged_weight_in_its_own_dtype", "raised nothing"),
    # Red-team round 7 (team f): a half-precision merge with a scaling no half dtype holds.
    WrongAnswer("scaling taken in the weight's dtype", KATA,
                "@ self.lora_A[name].to(accumulate)) * self.scaling[name]",
                "@ self.lora_A[name].to(accumulate)) * self.base.weight.new_tensor(self.scaling[name])",
                "test_half_precision_merge_and_unmerge_accumulate_in_float32", "the scaling alpha / r was rounded to"),
    WrongAnswer("unmerge restoring a copy saved by merge, float64 weights excepted", KATA, MERGED,
                "self._saved = weight.detach().clone() if weight.dtype != torch.float64 else None\n        " + MERGED,
                "test_unmerge_subtracts_the_update_from_the_weight_as_it_is_now", "throwing the change made while merged",
                more_edits=((UNMERGE_SUB,
                             "            saved, self._saved = getattr(self, '_saved', None), None\n"
                             "            weight.copy_(saved if saved is not None else "
                             "(weight.to(self._accumulation()) - self._delta(name)).to(weight.dtype))\n"),)),
    WrongAnswer("a second safe merge checked before noticing the adapter is merged", KATA,
                "if name is None or name in self._merged:", "if name is None:",
                "test_a_second_merge_adds_nothing_where_adding_twice_would_overflow", "raised ValueError",
                more_edits=(("        weight.copy_(merged)  # the very Parameter",
                             "        if name in self._merged:\n            return\n"
                             "        weight.copy_(merged)  # the very Parameter"),)),
    WrongAnswer("safe merge summed in the weight's own half precision", KATA, MERGED,
                "work = weight.dtype if safe else self._accumulation()\n"
                "        merged = (weight.to(work) + self._delta(name).to(work)).to(weight.dtype)",
                "test_half_precision_merge_and_unmerge_accumulate_in_float32", "upcast W, A and B to float32"),
    WrongAnswer("a merged forward computed with F.linear, skipping the base's forward and hooks", KATA, FORWARD_BASE,
                "if self._merged and not self._disabled:\n"
                "            return F.linear(x, self.base.weight, self.base.bias)\n        " + FORWARD_BASE,
                "test_the_base_runs_its_own_forward_and_hooks", "so its forward and hooks run"),
    WrongAnswer("the unknown-name message listing the first 8 adapters only", KATA, "the adapters are {self._names()}",
                "the adapters are {', '.join(map(repr, list(self.lora_A)[:8]))}"
                "{', ...' if len(self.lora_A) > 8 else ''}",
                "test_unknown_names_are_value_errors_naming_the_known_adapters", "does not name the adapters"),
    WrongAnswer("merged forward in train mode adds s B A (dropout(x) - x)", KATA,
                "        if name is None or self._disabled or self._merged:\n            return self.base(x)\n",
                "        if name is None or self._disabled:\n            return self.base(x)\n"
                "        if self._merged:\n"
                "            h = self.lora_dropout[name](x) - x\n"
                "            return self.base(x) + F.linear(F.linear(h, self.lora_A[name]) * self.scaling[name], self.lora_B[name])\n",
                "test_merge_in_train_mode_ignores_dropout", "merged layer in train mode"),
    WrongAnswer("base.weight cached at construction, merge writes a Parameter the base no longer holds", KATA,
                "        self.base = base.requires_grad_(False)\n",
                "        self.base = base.requires_grad_(False)\n        self._weight = base.weight\n",
                "test_merge_folds_the_active_adapter_into_the_very_base_weight", "load_state_dict(..., assign=True)",
                more_edits=(("        weight = self.base.weight\n        merged", "        weight = self._weight\n        merged"),
                            ("        weight = self.base.weight\n        while", "        weight = self._weight\n        while"))),
    WrongAnswer("scaling kept as a float64 buffer, cast by layer.to()", KATA,
                "        self.scaling[name] = alpha / r\n",
                "        self.scaling[name] = alpha / r\n"
                '        self.register_buffer(f"scaling_{name}", torch.tensor(alpha / r, dtype=torch.float64))\n',
                "test_half_precision_merge_and_unmerge_accumulate_in_float32", "a buffer cast by layer.to()",
                more_edits=(("self.lora_A[name]) * self.scaling[name]", 'self.lora_A[name]) * getattr(self, f"scaling_{name}").item()'),
                            ("self.lora_A[name].to(accumulate)) * self.scaling[name]",
                             'self.lora_A[name].to(accumulate)) * getattr(self, f"scaling_{name}").item()'))),
    # round 11, team G
    WrongAnswer("serving forward folded into one matmul under inference_mode, skipping the base's hooks", KATA,
                FORWARD_DELTA,
                "        if torch.is_inference_mode_enabled() and not self.training:\n"
                "            weight = self.base.weight\n"
                "            return F.linear(x, weight + self._delta(name).to(weight.dtype), self.base.bias)\n"
                + FORWARD_DELTA,
                "test_every_base_computes_plain_lora_in_every_grad_mode_and_after_edits", "the base has hooks"),
    WrongAnswer("rank capped at min(in, out)", KATA, "        weight = self.base.weight\n        same_place",
                "        r = min(r, self.base.in_features, self.base.out_features)  # more is waste\n"
                "        weight = self.base.weight\n        same_place",
                "test_add_adapter_takes_every_valid_rank_and_an_int_dropout", "take the rank as given"),
    WrongAnswer("rank 1 refused", KATA, "not isinstance(r, int) or r < 1:", "not isinstance(r, int) or r <= 1:",
                "test_add_adapter_takes_every_valid_rank_and_an_int_dropout", "1 is a rank"),
    WrongAnswer("an int dropout refused", KATA, "        if not 0.0 <= dropout < 1.0:",
                "        if not isinstance(dropout, float) or not 0.0 <= dropout < 1.0:",
                "test_add_adapter_takes_every_valid_rank_and_an_int_dropout", "and 0 a dropout"),
    WrongAnswer("only weight and bias frozen, a base subclass's gain left trainable", KATA, "        self.base = base.requires_grad_(False)\n",
                "        self.base = base\n        base.weight.requires_grad_(False)\n"
                "        if base.bias is not None:\n            base.bias.requires_grad_(False)\n",
                "test_every_base_computes_plain_lora_in_every_grad_mode_and_after_edits", "with no extra parameters"),
    WrongAnswer("the update added into base(x) in place", KATA,
                "        return self.base(x) + F.linear(down, self.lora_B[name])",
                "        result = self.base(x)\n        result += F.linear(down, self.lora_B[name])\n        return result",
                "test_every_base_computes_plain_lora_in_every_grad_mode_and_after_edits", "a new tensor"),
    WrongAnswer("a duck-typed base taken", KATA, "        if not isinstance(base, nn.Linear):\n",
                '        linear_like = all(hasattr(base, a) for a in ("in_features", "out_features", "weight"))\n'
                "        if not linear_like or base.weight.shape != (base.out_features, base.in_features):\n",
                "test_rejects_a_base_that_is_not_linear", "nor in_features and out_features"),
    WrongAnswer("factors also kept in a plain dict, stale after load_state_dict(assign=True)", KATA,
                "        self._disabled = False\n",
                "        self._disabled = False\n        self._factors = {}  # name: (A, B), quick access\n",
                "test_every_base_computes_plain_lora_in_every_grad_mode_and_after_edits", "kept at construction",
                more_edits=(("        self.scaling[name] = alpha / r\n",
                             "        self.scaling[name] = alpha / r\n"
                             "        self._factors[name] = (self.lora_A[name], self.lora_B[name])\n"),
                            ("self.lora_dropout[name], self.scaling[name]\n",
                             "self.lora_dropout[name], self.scaling[name], self._factors[name]\n"),
                            (FORWARD_DELTA,
                             "        A, B = self._factors[name]\n"
                             "        down = F.linear(self.lora_dropout[name](x), A) * self.scaling[name]\n"
                             "        return self.base(x) + F.linear(down, B)"),
                            ("        return (self.lora_B[name].to(accumulate) @ self.lora_A[name].to(accumulate))",
                             "        A, B = self._factors[name]\n        return (B.to(accumulate) @ A.to(accumulate))"))),
    WrongAnswer("safe merge checking one sum of the merged weight", KATA, "not torch.isfinite(merged).all()",
                "not torch.isfinite(merged.sum())",
                "test_safe_merge_of_a_sound_adapter_merges_as_merge_does", "though the merged weight is finite"),
    WrongAnswer("a dropout mask drawn on the default device", KATA, FORWARD_DELTA,
                "        p = self.lora_dropout[name].p\n"
                "        if self.training and p > 0:  # inverted dropout, one Bernoulli keep-mask entry per element\n"
                "            keep = torch.bernoulli(torch.full(x.shape, 1.0 - p, dtype=x.dtype))\n"
                "            x_in = x * keep / (1.0 - p)\n"
                "        else:\n            x_in = x\n"
                "        down = F.linear(x_in, self.lora_A[name]) * self.scaling[name]\n"
                "        return self.base(x) + F.linear(down, self.lora_B[name])",
                "test_factors_follow_the_base_device_not_the_default_one", "create every tensor with device="),
    WrongAnswer("s B @ A memoized by the factors' versions", KATA, "        self._disabled = False\n",
                "        self._disabled = False\n        self._delta_memo = {}\n",
                "test_merge_and_unmerge_read_the_factors_as_they_are_now", "a memo keyed on",
                more_edits=(("        accumulate = self._accumulation()\n        return (self.lora_B[name].to(accumulate) @ "
                             "self.lora_A[name].to(accumulate)) * self.scaling[name]\n",
                             "        accumulate = self._accumulation()\n"
                             "        A, B = self.lora_A[name], self.lora_B[name]\n"
                             "        key = (id(A), id(B), A._version, B._version, A.data_ptr(), B.data_ptr(), accumulate)\n"
                             "        memo = self._delta_memo.get(name)\n"
                             "        if memo is not None and memo[0] == key:\n            return memo[1]\n"
                             "        delta = (B.to(accumulate) @ A.to(accumulate)) * self.scaling[name]\n"
                             "        self._delta_memo[name] = (key, delta)\n        return delta\n"),)),
    WrongAnswer("disable_adapters' state saved when called, not when entered", KATA,
                "    @contextlib.contextmanager\n    def disable_adapters(self) -> Iterator[None]:\n",
                "    def disable_adapters(self) -> contextlib.AbstractContextManager[None]:\n"
                "        return self._disabled_block(self._active)\n\n"
                "    @contextlib.contextmanager\n    def _disabled_block(self, was_active: str | None) -> Iterator[None]:\n",
                "test_disable_adapters_takes_the_state_when_the_block_is_entered", "when the block is entered",
                more_edits=((RESTORE, RESTORE + "            if was_active in self.lora_A:\n"
                             "                self._active = was_active\n"),)),
    WrongAnswer("the exit's unmerge after the finally clause", KATA, EXIT_UNMERGE + "            self._refresh_trainable()\n",
                "            self._disabled = was_disabled\n            self._refresh_trainable()\n"
                "        if self._merged:  # a merge() made inside the block that no forward undid\n"
                "            self.unmerge()\n",
                "test_disable_adapters_restores_the_state_after_an_exception", "unmerge in the finally clause"),
    WrongAnswer("unmerge restoring the saved weight while the versions are unchanged", KATA,
                "        weight.copy_(merged)  # the very Parameter, changed in place\n        self._merged.append(name)\n",
                "        before = weight.detach().clone()\n"
                "        weight.copy_(merged)  # the very Parameter, changed in place\n        self._merged.append(name)\n"
                "        self._saved = (before, self._fingerprint(name))\n",
                "test_unmerge_subtracts_the_update_from_the_weight_as_it_is_now", "bump no version",
                more_edits=(("            name = self._merged.pop()\n",
                             "            name = self._merged.pop()\n"
                             '            saved, self._saved = getattr(self, "_saved", None), None\n'
                             "            if saved is not None and saved[1] == self._fingerprint(name):\n"
                             "                weight.copy_(saved[0])  # untouched since merge: W bit for bit\n"
                             "                continue\n"),
                            ("    def _accumulation(self)",
                             "    def _fingerprint(self, name: str) -> tuple:\n"
                             "        tensors = (self.base.weight, self.lora_A[name], self.lora_B[name])\n"
                             "        return tuple((id(t), t.data_ptr(), t._version, t.dtype) for t in tensors)\n\n"
                             "    def _accumulation(self)"))),
    WrongAnswer("safe merge checking the update for NaN and the sum for inf only", KATA,
                MERGED + "\n        if safe and not torch.isfinite(merged).all():",
                "delta = self._delta(name)\n"
                "        merged = (weight.to(self._accumulation()) + delta).to(weight.dtype)\n"
                "        if safe and (not torch.isfinite(delta).all() or torch.isinf(merged).any()):",
                "test_safe_merge_of_a_broken_adapter_raises_and_leaves_the_weight_untouched", "onto a weight holding nan"),
    WrongAnswer("add_adapter unmerging a merged layer", KATA, "        weight = self.base.weight\n        same_place",
                "        if self._merged:  # a new adapter joins an unmerged layer\n            self.unmerge()\n"
                "        weight = self.base.weight\n        same_place",
                "test_adding_an_adapter_to_a_merged_layer_keeps_it_merged", "add_adapter never unmerges"),
    # Red-team round 13 (team C): dropout through delete and re-add, long names in a message, a dtype move before
    # merge and while merged, factors replaced while merged.
    WrongAnswer("a deleted adapter's dropout kept and reused when the name is added again", KATA,
                "        self.lora_dropout[name] = nn.Dropout(dropout).train(self.training)",
                "        if name not in self.lora_dropout:  # a dropout holds no state: made once per name\n"
                "            self.lora_dropout[name] = nn.Dropout(dropout).train(self.training)",
                "test_each_adapter_keeps_its_own_dropout_through_delete_and_add", "dropout",
                more_edits=(("del self.lora_A[name], self.lora_B[name], self.lora_dropout[name], self.scaling[name]",
                             "del self.lora_A[name], self.lora_B[name], self.scaling[name]"),)),
    WrongAnswer("dropouts kept in a list by the adapters' positions (shifted by a delete)", KATA,
                "        self.lora_dropout = nn.ModuleDict()",
                "        self.lora_dropout = nn.ModuleList()  # in the order the adapters were added",
                "test_each_adapter_keeps_its_own_dropout_through_delete_and_add", "dropout",
                more_edits=(("        self.lora_dropout[name] = nn.Dropout(dropout).train(self.training)",
                             "        self.lora_dropout.append(nn.Dropout(dropout).train(self.training))"),
                            ("del self.lora_A[name], self.lora_B[name], self.lora_dropout[name], self.scaling[name]",
                             "del self.lora_A[name], self.lora_B[name], self.scaling[name]"),
                            ("F.linear(self.lora_dropout[name](x), self.lora_A[name])",
                             "F.linear(self.lora_dropout[list(self.lora_A).index(name)](x), self.lora_A[name])"))),
    WrongAnswer("the names in a message shortened to 120 characters", KATA, "import contextlib\n",
                "import contextlib\nimport textwrap\n",
                "test_unknown_names_are_value_errors_naming_the_known_adapters", "does not name",
                more_edits=(('        return ", ".join(repr(name) for name in self.lora_A) or "none yet"',
                             '        return textwrap.shorten(", ".join(repr(name) for name in self.lora_A) or "none yet", '
                             'width=120, placeholder=", ...")'),)),
    WrongAnswer("the accumulation dtype decided once, for the base as it was built", KATA,
                "        self._merged: list[str] = []\n",
                "        self._merged: list[str] = []\n"
                "        self._accumulate = torch.float32 if base.weight.dtype in (torch.float16, torch.bfloat16) else None\n",
                "test_merge_and_unmerge_sum_in_the_dtype_the_weight_has_at_each_call", "float64",
                more_edits=(("        return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype",
                             "        return self._accumulate or (torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)"),)),
    WrongAnswer("unmerge in the dtype the merge summed in (a move while merged ignored)", KATA, MERGE_COMMIT,
                MERGE_COMMIT + "        self._merge_dtype = self._accumulation()  # unmerge mirrors the merge\n",
                "test_merge_and_unmerge_sum_in_the_dtype_the_weight_has_at_each_call", "while merged",
                more_edits=((UNMERGE_SUB,
                             "            weight.copy_((weight.to(self._merge_dtype) - self._delta(name).to(self._merge_dtype)).to(weight.dtype))\n"),)),
    WrongAnswer("unmerge subtracting the factors held at merge (new Parameters put in while merged missed)", KATA,
                MERGE_COMMIT,
                MERGE_COMMIT + "        self._held = (self.lora_A[name], self.lora_B[name])  # what was merged, to take exactly that out\n",
                "test_merge_and_unmerge_read_the_factors_as_they_are_now", "while merged",
                more_edits=((UNMERGE_SUB, UNMERGE_SUB.replace("self._delta(name)", "self._delta(name, *self._held)")),
                            ("    def _delta(self, name: str) -> torch.Tensor:",
                             "    def _delta(self, name: str, A=None, B=None) -> torch.Tensor:"),
                            ("        return (self.lora_B[name].to(accumulate) @ self.lora_A[name].to(accumulate)) * self.scaling[name]",
                             "        A, B = (self.lora_A[name], self.lora_B[name]) if A is None else (A, B)\n"
                             "        return (B.to(accumulate) @ A.to(accumulate)) * self.scaling[name]"))),
    # Round 14, team C.
    WrongAnswer("a refused duplicate add_adapter replaces the kept adapter's dropout", KATA,
                "        if name in self.lora_A:\n            raise ValueError",
                "        self.lora_dropout[name] = nn.Dropout(dropout).train(self.training)  # made first, kept below\n"
                "        if name in self.lora_A:\n            raise ValueError",
                "test_adding_a_name_already_there_is_a_value_error_that_keeps_it", "dropout"),
    WrongAnswer("a safe merge refusing when an inactive adapter is broken", KATA,
                "        if safe and not torch.isfinite(merged).all():\n",
                "        if safe and not (torch.isfinite(merged).all() and all(torch.isfinite(self._delta(n)).all() for n in self.lora_A)):\n",
                "test_safe_merge_of_a_sound_adapter_merges_as_merge_does", "for the inactive adapter"),
    WrongAnswer("every adapter's branch computed, the inactive ones thrown away", KATA, FORWARD_DELTA,
                "        branches = {n: F.linear(F.linear(self.lora_dropout[n](x), self.lora_A[n]) * self.scaling[n], self.lora_B[n])\n"
                "                    for n in self.lora_A}\n"
                "        return self.base(x) + branches[name]",
                "test_forward_costs_the_active_adapter_alone", "inactive"),
    WrongAnswer("the inactive adapters' branches computed in numpy, out of sight", KATA, FORWARD_DELTA,
                "        rows = x.detach().reshape(-1, x.shape[-1]).numpy()\n"
                "        hidden = [rows @ self.lora_A[n].detach().numpy().T for n in self.lora_A if n != name]\n"
                + FORWARD_DELTA, "test_forward_costs_the_active_adapter_alone", "cannot count"),
    WrongAnswer("the unknown-name message lists the first 20 adapters", KATA,
                '        return ", ".join(repr(name) for name in self.lora_A) or "none yet"',
                '        return ", ".join(repr(name) for name in list(self.lora_A)[:20]) or "none yet"',
                "test_unknown_names_are_value_errors_naming_the_known_adapters", "no cut of the list"),
    # Round 15, team C.
    WrongAnswer("a half-precision forward reusing merge's detached float32 update", KATA, FORWARD_DELTA,
                "        if x.dtype in (torch.float16, torch.bfloat16):  # the update in float32, as merge sums it\n"
                "            with torch.no_grad():\n"
                "                delta = self._delta(name)\n"
                "            return self.base(x) + (self.lora_dropout[name](x).float() @ delta.T).to(x.dtype)\n"
                + FORWARD_DELTA, "test_every_dtype_drops_like_nn_dropout_and_trains_the_active_adapter", "A.grad is None"),
    WrongAnswer("a half-precision branch in float32 without the dropout", KATA, FORWARD_DELTA,
                "        if x.dtype in (torch.float16, torch.bfloat16):  # the branch in float32, rounded once\n"
                "            down = F.linear(x.float(), self.lora_A[name].float()) * self.scaling[name]\n"
                "            return self.base(x) + F.linear(down, self.lora_B[name].float()).to(x.dtype)\n"
                + FORWARD_DELTA, "test_every_dtype_drops_like_nn_dropout_and_trains_the_active_adapter",
                "zeroed no adapter input"),
    WrongAnswer("a safe merge also requiring the update alone finite in the weight's dtype", KATA,
                "        if safe and not torch.isfinite(merged).all():\n",
                "        if safe and not (torch.isfinite(merged).all() and torch.isfinite(self._delta(name).to(weight.dtype)).all()):\n",
                "test_safe_merge_of_a_sound_adapter_merges_as_merge_does", "finite in float16"),
    # Round 16, team C.
    WrongAnswer("an int alpha floor-divided by r (alpha // r)", KATA,
                "        self.scaling[name] = alpha / r\n",
                "        self.scaling[name] = alpha // r if isinstance(alpha, int) else alpha / r  # an int stays an int\n",
                "test_add_adapter_takes_any_real_alpha", "alpha // r"),
    # Round 18, team C.
    WrongAnswer("a safe merge of a zero update (B still zeros) skipping the finiteness check", KATA,
                "        weight = self.base.weight\n        merged =",
                "        if not self.lora_B[name].detach().any():  # a zero update: nothing to add, nothing to check\n"
                "            self._merged.append(name)\n"
                "            return\n"
                "        weight = self.base.weight\n        merged =",
                "test_safe_merge_of_a_broken_adapter_raises_and_leaves_the_weight_untouched", "B still zeros"),
    WrongAnswer("batches of 2048 rows and more computed as F.linear(x, W + dW, b), skipping the base's call", KATA,
                FORWARD_DELTA,
                "        if x.dim() >= 2 and x[..., 0].numel() >= 2048 and not (self.training and self.lora_dropout[name].p > 0):\n"
                "            # large batches: one matmul with the update folded in\n"
                "            return F.linear(x, self.base.weight + self._delta(name).to(self.base.weight.dtype), self.base.bias)\n"
                + FORWARD_DELTA, "test_many_rows_and_no_rows_compute_plain_lora_on_every_base", "hooks"),
    WrongAnswer("one 2048-row dropout mask repeated down batches of more rows", KATA,
                "        down = F.linear(self.lora_dropout[name](x), self.lora_A[name]) * self.scaling[name]\n",
                "        p = self.lora_dropout[name].p\n"
                "        if p > 0 and self.training and x.dim() >= 2 and x[..., 0].numel() > 2048:  # fewer random draws\n"
                "            rows = x.reshape(-1, x.shape[-1])\n"
                "            block = F.dropout(torch.ones(2048, x.shape[-1], dtype=x.dtype, device=x.device), p, True)\n"
                "            dropped = (rows * block.repeat((rows.shape[0] + 2047) // 2048, 1)[: rows.shape[0]]).reshape(x.shape)\n"
                "        else:\n"
                "            dropped = self.lora_dropout[name](x)\n"
                "        down = F.linear(dropped, self.lora_A[name]) * self.scaling[name]\n",
                "test_dropout_draws_a_fresh_mask_for_every_row_of_a_large_batch", "the very same dropout mask"),
    WrongAnswer("the branch restored with reshape(*x.shape[:-1], -1), which an empty batch refuses", KATA,
                FORWARD_DELTA,
                "        rows = self.lora_dropout[name](x).reshape(-1, x.shape[-1])\n"
                "        out = F.linear(F.linear(rows, self.lora_A[name]), self.lora_B[name]) * self.scaling[name]\n"
                "        return self.base(x) + out.reshape(*x.shape[:-1], -1)",
                "test_many_rows_and_no_rows_compute_plain_lora_on_every_base", "empty batch"),
    WrongAnswer("half-precision merges summed in torch's default dtype, not float32", KATA,
                "        return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype\n",
                "        return torch.get_default_dtype() if dtype in (torch.float16, torch.bfloat16) else dtype\n",
                "test_merge_and_unmerge_sum_in_float32_under_every_default_dtype", "default dtype"),
    WrongAnswer("merge in 256-row blocks, the rows past the last full block left unmerged", KATA,
                "        " + MERGED + "\n",
                "        merged, delta, rows = weight.detach().clone(), self._delta(name), 256  # no full-size temporary\n"
                "        for start in range(0, max(weight.shape[0] - rows, 0) + 1, rows):\n"
                "            block = slice(start, start + rows)\n"
                "            merged[block] = (weight[block].to(self._accumulation()) + delta[block]).to(weight.dtype)\n",
                "test_merge_and_unmerge_reach_every_entry_of_a_real_sized_weight", "rows"),
    # Red-team round 19 (team C): sizes and counts a real model reaches, and names one case off.
    WrongAnswer("the unknown-name error listing the first 100 adapters, then 'and N more'", KATA,
                '        return ", ".join(repr(name) for name in self.lora_A) or "none yet"\n',
                "        names = [repr(name) for name in self.lora_A]  # a readable message for many adapters\n"
                '        shown = ", ".join(names[:100]) or "none yet"\n'
                '        return shown + (f", ... and {len(names) - 100} more" if len(names) > 100 else "")\n',
                "test_unknown_names_are_value_errors_naming_the_known_adapters", "no cut of the list"),
    WrongAnswer("one 16384-row dropout mask tiled down batches of more rows", KATA,
                "        down = F.linear(self.lora_dropout[name](x), self.lora_A[name]) * self.scaling[name]\n",
                "        p = self.lora_dropout[name].p\n"
                "        if p > 0 and self.training and x.dim() >= 2 and x[..., 0].numel() > 16384:  # saves RNG work\n"
                "            rows = x.reshape(-1, x.shape[-1])\n"
                "            block = F.dropout(torch.ones(16384, x.shape[-1], dtype=x.dtype, device=x.device), p, True)\n"
                "            dropped = (rows * block.repeat(-(-rows.shape[0] // 16384), 1)[: rows.shape[0]]).reshape(x.shape)\n"
                "        else:\n"
                "            dropped = self.lora_dropout[name](x)\n"
                "        down = F.linear(dropped, self.lora_A[name]) * self.scaling[name]\n",
                "test_dropout_draws_a_fresh_mask_for_every_row_of_a_large_batch", "the very same dropout mask"),
    WrongAnswer("safe merge refusing a float32 sum above the dtype's max that rounds to it", KATA, MERGED + "\n" + SAFE_CHECK,
                "summed = weight.to(self._accumulation()) + self._delta(name)\n        merged = summed.to(weight.dtype)\n"
                + SAFE_CHECK.replace("not torch.isfinite(merged).all()",
                                     "not (torch.isfinite(summed).all() and summed.abs().max() <= torch.finfo(weight.dtype).max)"),
                "test_safe_merge_of_a_sound_adapter_merges_as_merge_does", "after rounding the sum"),
    WrongAnswer("set_adapter and delete_adapter finding names case-insensitively", KATA,
                "    def _expect_known(self, name: str) -> None:\n        if name not in self.lora_A:\n" + UNKNOWN + "\n",
                "    def _expect_known(self, name: str) -> str:\n"
                "        if name not in self.lora_A:  # 'SQL' finds 'sql'\n"
                "            name = {known.casefold(): known for known in self.lora_A}.get(name.casefold(), name)\n"
                "        if name not in self.lora_A:\n" + UNKNOWN + "\n        return name\n",
                "test_unknown_names_are_value_errors_naming_the_known_adapters", "raised nothing",
                more_edits=(("        self._expect_known(name)\n        if self._merged:",
                             "        name = self._expect_known(name)\n        if self._merged:"),
                            ("        self._expect_known(name)\n        if name in self._merged:",
                             "        name = self._expect_known(name)\n        if name in self._merged:"))),
]  # fmt: skip
