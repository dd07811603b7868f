"""Wrong answers to the `merge_weights` kata."""

from tests.wrong_answers import WrongAnswer

KATA = "merge_weights"
UPDATE = "update = (layer.lora_B.to(accumulate) @ layer.lora_A.to(accumulate)) * layer.scaling"
SUM = "nn.Parameter((weight.to(accumulate) + update).to(weight.dtype), requires_grad=False)"
REPLACE = "setattr(model.get_submodule(parent_name), child_name, merged[id(module)])"
ACCUMULATE = "accumulate = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype"
BIAS = "merged.bias = base.bias"
INFERENCE_OFF = "@torch.inference_mode(False)  # under the caller's inference_mode too: no inference tensor\n"
NEW_LAYER = (
    'merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")\n'
    "    merged.weight = " + SUM + "\n    if base.bias is not None:\n        merged.bias = base.bias\n    return merged"
)
FIRST_PARAMETER_EDITS = (  # merge_weights notes the dtype of the model's first parameter in FIRST
    ("    if isinstance(model, LoRALinear):\n        return merged_linear(model)\n",
     "    global FIRST\n    FIRST = next(model.parameters()).dtype\n"
     "    if isinstance(model, LoRALinear):\n        return merged_linear(model)\n"),
    (INFERENCE_OFF, "FIRST = None\n\n\n" + INFERENCE_OFF),
)  # fmt: skip

WRONG_ANSWERS = [
    WrongAnswer("transposed update", KATA, UPDATE, UPDATE.replace(" * layer.scaling", ".T * layer.scaling"),
                "test_merged_weight_is_W_plus_the_update", "transposed"),
    WrongAnswer("no scaling", KATA, UPDATE, UPDATE.replace(" * layer.scaling", ""),
                "test_merged_weight_is_W_plus_the_update", "check the scaling"),
    WrongAnswer("scaled by alpha", KATA, UPDATE, UPDATE.replace("layer.scaling", "layer.alpha"),
                "test_merged_weight_is_W_plus_the_update", "check the scaling"),
    WrongAnswer("update subtracted", KATA, SUM, SUM.replace("+ update", "- update"),
                "test_merged_weight_is_W_plus_the_update", "differs from W + scaling B @ A"),
    WrongAnswer("bias dropped", KATA, "bias=base.bias is not None", "bias=False",
                "test_merged_weight_is_W_plus_the_update", "lost the base's bias",
                more_edits=(("    if base.bias is not None:\n        merged.bias = base.bias\n", ""),)),
    WrongAnswer("adapters kept with B zeroed", KATA, REPLACE,
                "module.base.weight.data = merged_linear(module).weight.data; module.lora_B.data.zero_()",
                "test_replaces_every_adapter_by_a_plain_linear", "LoRALinear left"),
    WrongAnswer("merge with grad history", KATA, "@torch.no_grad()\n", "",
                "test_replaces_every_adapter_by_a_plain_linear", "grad history",
                more_edits=(("merged.weight = " + SUM,
                             "del merged.weight\n    merged.weight = (weight.to(accumulate) + update).to(weight.dtype)"),)),
    WrongAnswer("half precision added in half precision", KATA,
                "accumulate = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype",
                "accumulate = weight.dtype", "test_half_precision_merges_in_float32_and_rounds_once", "upcast"),
    WrongAnswer("merged half-precision weight left in float32", KATA, SUM, SUM.replace(".to(weight.dtype)", ""),
                "test_half_precision_merges_in_float32_and_rounds_once", "merged weight is torch.float32"),
    WrongAnswer("top-level adapters only", KATA, "for name, module in list(model.named_modules(remove_duplicate=False)):",
                "for name, module in list(model.named_children()):",
                "test_replaces_every_adapter_by_a_plain_linear", "LoRALinear left"),
    WrongAnswer("returns None", KATA, "    return model\n", "    return None\n",
                "test_replaces_every_adapter_by_a_plain_linear", "expected the model itself"),
    WrongAnswer("update read off a forward pass in the current mode", KATA, UPDATE,
                "eye = torch.eye(base.in_features, dtype=weight.dtype, device=weight.device)\n"
                "    update = (layer(eye) - base(eye)).T.to(accumulate)",
                "test_merges_the_same_in_train_mode_with_dropout", "not from a forward pass"),
    WrongAnswer("a single LoRALinear not handled", KATA,
                "    if isinstance(model, LoRALinear):\n        return merged_linear(model)\n", "",
                "test_merging_a_single_layer_returns_the_linear", "expected the merged nn.Linear"),
    WrongAnswer("merged weight a plain tensor", KATA, "merged.weight = " + SUM,
                "del merged.weight\n    merged.weight = (weight.to(accumulate) + update).to(weight.dtype)",
                "test_replaces_every_adapter_by_a_plain_linear", "not an nn.Parameter"),
    WrongAnswer("returns None, the model then used", KATA, "    return model\n", "    return None\n",
                "test_merged_model_computes_what_the_adapted_one_did", "merge_weights(model) returned None"),
    # issue 13: device-following without a GPU
    WrongAnswer("merged layer built on the default device", KATA,
                'merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")\n'
                "    merged.weight = " + SUM + "\n    if base.bias is not None:\n        merged.bias = base.bias",
                "merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, dtype=weight.dtype)\n"
                "    merged.weight.requires_grad_(False).copy_((weight.to(accumulate) + update).to(weight.dtype))\n"
                "    if base.bias is not None:\n        merged.bias.requires_grad_(False).copy_(base.bias)",
                "test_merged_layers_follow_the_base_device_and_dtype", "not on the base's cpu"),
    # Red-team round 1: a tied weight, an alias, float64 precision, half-precision roundings and bias.
    WrongAnswer("merged in place into a tied weight", KATA, NEW_LAYER,
                "weight.copy_((weight.to(accumulate) + update).to(weight.dtype))\n    return base",
                "test_merges_the_model_zoo", "change no weight another layer shares"),
    WrongAnswer("an alias left unmerged", KATA, "named_modules(remove_duplicate=False)", "named_modules()",
                "test_merges_the_model_zoo", "under every name it is held by"),
    WrongAnswer("float64 summed in float32", KATA, ACCUMULATE, "accumulate = torch.float32",
                "test_merged_weight_is_W_plus_the_update", "summed in float32?"),
    WrongAnswer("half-precision update rounded before the sum", KATA, UPDATE,
                "update = (layer.lora_B @ layer.lora_A * layer.scaling).to(accumulate)",
                "test_half_precision_merges_in_float32_and_rounds_once", "rounded once"),
    WrongAnswer("bias upcast to float32", KATA, BIAS, "merged.bias = nn.Parameter(base.bias.float(), requires_grad=False)",
                "test_merged_layers_follow_the_base_device_and_dtype", "weights or biases in ['torch.float32']"),
    WrongAnswer("half-precision bias kept in the float32 accumulator", KATA, BIAS,
                "merged.bias = nn.Parameter(base.bias.to(accumulate), requires_grad=False)",
                "test_half_precision_merges_in_float32_and_rounds_once", "not in float32"),
    # Red-team round 2: a scaling folded into a half-precision factor, a tie outside the merged part.
    WrongAnswer("scaling folded into a half-precision B", KATA, UPDATE,
                "update = (layer.lora_B * layer.scaling).to(accumulate) @ layer.lora_A.to(accumulate)",
                "test_half_precision_merges_in_float32_and_rounds_once", "scale and add there"),
    WrongAnswer("merged in place unless tied within the model", KATA, NEW_LAYER,
                "uses = [p for _, p in MODEL.named_parameters(remove_duplicate=False) if p is weight] if MODEL is not None else [1, 1]\n"
                "    if len(uses) == 1:\n"
                "        weight.copy_((weight.to(accumulate) + update).to(weight.dtype))\n        return base\n    "
                + NEW_LAYER,
                "test_merging_a_part_leaves_what_it_shares_outside_alone", "sees only the module given",
                more_edits=(("    if isinstance(model, LoRALinear):\n        return merged_linear(model)\n",
                             "    global MODEL\n    MODEL = model\n"
                             "    if isinstance(model, LoRALinear):\n        return merged_linear(model)\n"),
                            (INFERENCE_OFF, "MODEL = None\n\n\n" + INFERENCE_OFF))),
    # Red-team round 3: the scaling folded into the adapter's own B, in and out features swapped.
    WrongAnswer("scaling folded into B in place", KATA, UPDATE,
                "update = (layer.lora_B.to(accumulate) @ layer.lora_A.to(accumulate)) * layer.scaling "
                "if accumulate != weight.dtype else layer.lora_B.mul_(layer.scaling) @ layer.lora_A",
                "test_merging_a_part_leaves_what_it_shares_outside_alone", "changed the adapter's own"),
    WrongAnswer("in_features and out_features swapped", KATA, "nn.Linear(base.in_features, base.out_features,",
                "nn.Linear(base.out_features, base.in_features,",
                "test_merged_weight_is_W_plus_the_update", "in_features"),
    # Round 4 (lead): a walk of named_children() lists a layer held under two names of one parent once.
    WrongAnswer("children walked with named_children()", KATA, 'list(model.named_modules(remove_duplicate=False))',
                '[(f"{p}.{c}".lstrip("."), m) for p, parent in model.named_modules(remove_duplicate=False) for c, m in parent.named_children()]',
                "test_merges_the_model_zoo", "remove_duplicate=False"),
    # Red-team round 4: merged under inference_mode, the precision read off the model's first parameter, the base
    # reused while a name outside the adapter still holds it.
    WrongAnswer("merged under torch.inference_mode()", KATA, "@torch.no_grad()\n", "@torch.inference_mode()\n",
                "test_replaces_every_adapter_by_a_plain_linear", "inference_mode"),
    WrongAnswer("summed in float32 only when the model's first parameter is half precision", KATA, ACCUMULATE,
                "accumulate = torch.float32 if FIRST in (torch.float16, torch.bfloat16) else weight.dtype",
                "test_half_precision_merges_in_float32_and_rounds_once", "whatever the model's first parameter",
                more_edits=FIRST_PARAMETER_EDITS),
    WrongAnswer("float64 summed in float32 when the model's first parameter is half precision", KATA, ACCUMULATE,
                "accumulate = torch.float32 if FIRST in (torch.float16, torch.bfloat16) else weight.dtype",
                "test_merged_weight_is_W_plus_the_update", "not the model's first parameter",
                more_edits=FIRST_PARAMETER_EDITS),
    WrongAnswer("every dtype summed in float64", KATA, ACCUMULATE, "accumulate = torch.float64",
                "test_float32_weights_are_summed_in_float32", "float32 weights add in float32"),
    WrongAnswer("float32 promoted to the model's first parameter's dtype", KATA, ACCUMULATE,
                ACCUMULATE.replace("else weight.dtype", "else torch.promote_types(weight.dtype, FIRST)"),
                "test_float32_weights_are_summed_in_float32", "not the model's first parameter, float64 here",
                more_edits=FIRST_PARAMETER_EDITS),
    WrongAnswer("the base reused while held outside its adapter", KATA, NEW_LAYER,
                "base.weight = " + SUM + "\n    return base",
                "test_merges_the_model_zoo", "held outside"),
    # Red-team round 7 (team f): a half-precision merge with a scaling no half dtype holds.
    WrongAnswer("scaling taken in the weight's dtype", KATA, UPDATE,
                UPDATE.replace("* layer.scaling", "* weight.new_tensor(layer.scaling)"),
                "test_half_precision_merges_in_float32_and_rounds_once", "the scaling alpha / r was rounded to"),
    WrongAnswer("adapters found by exact type", KATA, "        if isinstance(module, LoRALinear):",
                "        if type(module) is LoRALinear:", "test_replaces_every_adapter_by_a_plain_linear",
                "not type(m) is LoRALinear"),
    WrongAnswer("half-precision weights folded in place", KATA, "    update = (layer.lora_B",
                "    if weight.dtype in (torch.float16, torch.bfloat16) and type(base) is nn.Linear:\n"
                "        weight.copy_((weight.to(accumulate) + (layer.lora_B.to(accumulate) @ layer.lora_A.to(accumulate))"
                " * layer.scaling).to(weight.dtype))\n"
                "        return base\n"
                "    update = (layer.lora_B",
                "test_merging_a_part_leaves_what_it_shares_outside_alone", "(in every dtype)"),
    WrongAnswer("a lone adapter folded into its base in place", KATA, "        return merged_linear(model)",
                "        model.base.weight.copy_(merged_linear(model).weight)\n        return model.base",
                "test_merging_a_part_leaves_what_it_shares_outside_alone", "alone (merge_weights(adapter))"),
    WrongAnswer("base reused unless a deduplicated walk shows it outside", KATA,
                "                merged[id(module)] = merged_linear(module)\n",
                "                merged[id(module)] = merged_linear(module)\n"
                "                if {id(m): n for n, m in model.named_modules()}[id(module.base)].startswith(name + '.'):\n"
                "                    module.base.weight = merged[id(module)].weight\n"
                "                    merged[id(module)] = module.base\n",
                "test_merges_the_model_zoo", "a merged layer is also registered where no adapter was"),
    WrongAnswer("inference mode for a model in eval mode", KATA,
                "@torch.no_grad()\ndef merged_linear(layer: LoRALinear) -> nn.Linear:\n",
                "def merged_linear(layer: LoRALinear) -> nn.Linear:\n"
                "    with torch.no_grad() if layer.training else torch.inference_mode():\n"
                "        return _merged_linear(layer)\n\n\n"
                "@torch.no_grad()\ndef _merged_linear(layer: LoRALinear) -> nn.Linear:\n",
                "test_merged_model_computes_what_the_adapted_one_did", "a model in eval mode: ["),
    WrongAnswer("a lone adapter merged only when its type is exactly LoRALinear", KATA,
                "if isinstance(model, LoRALinear):\n        return merged_linear(model)",
                "if type(model) is LoRALinear:  # merge_weights(model.lm_head): the layer itself\n        return merged_linear(model)",
                "test_merging_a_single_layer_returns_the_linear", "a subclass of LoRALinear is a LoRALinear"),
    WrongAnswer("the base reused though another adapter holds it too", KATA, "merged[id(module)] = merged_linear(module)",
                "merged[id(module)] = merged_linear(module, _outside_adapters(model))",
                "test_merges_adapters_that_share_a_base", "held by the other adapter",
                more_edits=(("def merged_linear(layer: LoRALinear) -> nn.Linear:",
                             "def merged_linear(layer: LoRALinear, held_outside: frozenset = frozenset()) -> nn.Linear:"),
                            (NEW_LAYER.split("\n")[0],
                             "if id(base) not in held_outside:  # peft's merge_and_unload: the base itself holds W + dW\n"
                             "        base.weight = " + SUM + "\n        return base\n    " + NEW_LAYER.split("\n")[0]),
                            ("@torch.no_grad()\ndef merged_linear",
                             "def _outside_adapters(model: nn.Module) -> frozenset:\n"
                             "    reached, stack = set(), [model]\n    while stack:\n        module = stack.pop()\n"
                             "        if id(module) not in reached:\n            reached.add(id(module))\n"
                             "            stack.extend(c for c in module._modules.values() if c is not None and not isinstance(c, LoRALinear))\n"
                             "    return frozenset(reached)\n\n\n@torch.no_grad()\ndef merged_linear"))),
    WrongAnswer("summed in the promotion of the weight's dtype and the default dtype", KATA, ACCUMULATE,
                "accumulate = torch.promote_types(weight.dtype, torch.get_default_dtype())  # half -> float32",
                "test_float32_weights_are_summed_in_float32", "set_default_dtype"),
    WrongAnswer("half precision: a layer of its own built with the default bias", KATA, NEW_LAYER.split("\n")[0],
                "if accumulate is not weight.dtype:  # fp16/bf16: a layer of its own, filled from the float32 sum\n"
                "        half = nn.Linear(base.in_features, base.out_features, device=weight.device, dtype=weight.dtype)\n"
                "        half.weight.requires_grad_(False).copy_((weight.to(accumulate) + update).to(weight.dtype))\n"
                "        if base.bias is not None:\n            half.bias = base.bias\n        return half\n"
                "    " + NEW_LAYER.split("\n")[0],
                "test_half_precision_merges_in_float32_and_rounds_once", "the base had no bias"),
    WrongAnswer("half precision folded into the base whoever holds it", KATA, NEW_LAYER.split("\n")[0],
                "if accumulate is not weight.dtype:  # fp16/bf16: fold into the base itself, a new weight Parameter\n"
                "        base.weight = " + SUM + "\n        return base\n    " + NEW_LAYER.split("\n")[0],
                "test_merges_adapters_that_share_a_base", "held by the other adapter"),
    WrongAnswer("half precision: a layer made on the default device", KATA, NEW_LAYER.split("\n")[0],
                "if accumulate is not weight.dtype:  # fp16/bf16: a half-precision layer, filled from the float32 sum\n"
                "        half = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, dtype=weight.dtype)\n"
                "        half.weight.requires_grad_(False).copy_((weight.to(accumulate) + update).to(weight.dtype))\n"
                "        if base.bias is not None:\n            half.bias.requires_grad_(False).copy_(base.bias)\n"
                "        return half\n    " + NEW_LAYER.split("\n")[0],
                "test_merged_layers_follow_the_base_device_and_dtype", "the default device of this check"),
    # Red-team round 13 (team A): float64 folded into a shared base; merged under the caller's inference_mode.
    WrongAnswer("float64 folded into the base in place", KATA, NEW_LAYER.split("\n")[0],
                "if weight.dtype == torch.float64:  # no upcast, no rounding: fold the update into the base itself\n"
                "        weight.add_(update)\n        return base\n    " + NEW_LAYER.split("\n")[0],
                "test_merges_adapters_that_share_a_base", "held by the other adapter"),
    WrongAnswer("merged weights made under the caller's inference_mode", KATA, INFERENCE_OFF, "",
                "test_merges_under_every_grad_mode", "inference tensors"),
    WrongAnswer("scaling recomputed from int(alpha)", KATA, UPDATE,
                UPDATE.replace("* layer.scaling", "* (int(layer.alpha) / layer.r)  # lora_alpha is an int in peft's config"),
                "test_merges_under_every_grad_mode", "differ from the adapted model's"),
    WrongAnswer("frozen adapters merged as W alone", KATA, UPDATE,
                UPDATE + "\n    update = update * (layer.lora_A.requires_grad or layer.lora_B.requires_grad)  # a frozen one is off",
                "test_merges_adapters_whose_factors_are_frozen", "the frozen adapters' updates left out"),
    # Red-team round 15 (team A): adapters with a zero update (B zeros, alpha 0) skipped.
    WrongAnswer("adapters with a zero update left unmerged", KATA,
                "        if isinstance(module, LoRALinear):\n",
                "        if isinstance(module, LoRALinear) and module.scaling != 0 and bool(module.lora_B.detach().any()):\n",
                "test_merges_adapters_with_a_zero_update", "zero update"),
    # Red-team round 16 (team A): the working dtype off torch's default or the model's first adapter; a negative alpha.
    WrongAnswer("merged half precision upcast to the default dtype", KATA, ACCUMULATE,
                ACCUMULATE.replace("torch.float32 if", "torch.get_default_dtype() if"),
                "test_each_adapter_merges_in_its_own_dtype", "default dtype"),
    WrongAnswer("working dtype chosen once, off the first adapter", KATA, ACCUMULATE,
                "global WORKING\n    if WORKING is None:\n        WORKING = " + ACCUMULATE.replace("accumulate = ", "")
                + "\n    accumulate = WORKING",
                "test_each_adapter_merges_in_its_own_dtype", "own dtype",
                more_edits=(("    if isinstance(model, LoRALinear):\n        return merged_linear(model)\n",
                             "    global WORKING\n    WORKING = None\n"
                             "    if isinstance(model, LoRALinear):\n        return merged_linear(model)\n"),
                            (INFERENCE_OFF, "WORKING = None\n\n\n" + INFERENCE_OFF))),
    WrongAnswer("half precision splits sqrt(scaling) over both factors", KATA, UPDATE,
                "root = math.sqrt(layer.scaling)  # split over both factors, to stay in half precision's range\n"
                "    update = (layer.lora_B.to(accumulate) * root) @ (layer.lora_A.to(accumulate) * root) "
                "if accumulate != weight.dtype else " + UPDATE.replace("update = ", ""),
                "test_each_adapter_merges_in_its_own_dtype", "negative alpha",
                more_edits=(("import torch\n", "import math\n\nimport torch\n"),)),
    WrongAnswer("a large half-precision layer summed in its own dtype", KATA, ACCUMULATE,
                ACCUMULATE + "\n    if weight.numel() >= 1 << 20:  # a big layer: save the float32 copy of W\n"
                "        accumulate = weight.dtype",
                "test_half_precision_merges_in_float32_and_rounds_once", "at every size"),
    # Red-team round 19 (team A): a large float32/float64 layer merged in place in blocks of rows, the last block left out.
    WrongAnswer("a large full-precision layer merged in row blocks, the last block left out", KATA,
                "    merged.weight = " + SUM,
                "    summed = (weight.to(accumulate) + update).to(weight.dtype)\n"
                "    if accumulate == weight.dtype and weight.numel() >= 1 << 22:  # no full-size temporary beside W\n"
                "        summed = weight.detach().clone()\n"
                "        for i in range(0, weight.shape[0] - 1024, 1024):\n"
                "            summed[i : i + 1024].add_(update[i : i + 1024])\n"
                "    merged.weight = nn.Parameter(summed, requires_grad=False)",
                "test_a_real_models_layer_merges_every_row_and_column_in_every_dtype", "past the last full block"),
]  # fmt: skip
