"""Wrong answers to the `fused_lora` kata."""

from tests.wrong_answers import WrongAnswer

KATA = "fused_lora"
IMPORTS = "import torch\nfrom torch import nn"
DOWN = "down = (rows @ lora_A.T).mul_(scaling)"
BASE_PRODUCT = "y = rows @ weight.T if bias is None else torch.addmm(bias, rows, weight.T)"
FLATTEN = "rows = x.reshape(-1, x.shape[-1])  # a copy when x is non-contiguous"
SAVE = "ctx.save_for_backward(x, weight"
RESULT = "return y.reshape(*x.shape[:-1], weight.shape[0])"
G = "g = grad_output.reshape(-1, grad_output.shape[-1])"
G_B = "g_B = (g @ lora_B).mul_(ctx.scaling)"
GRAD_X = "grad_x = (g @ weight).addmm_(g_B, lora_A).reshape(ctx.x_shape)"
GRAD_A = "grad_A = g_B.T @ rows"
GRAD_B = "grad_B = g.T @ down"
GRAD_WEIGHT = "if need_weight:\n            grad_weight = g.T @ rows"
RETURN = "return grad_x, grad_weight, grad_bias, grad_A, grad_B, None"
APPLY = "return FusedLoRAFunction.apply(x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.scaling)"
BACKWARD = "test_backward_gives_each_input_its_gradient"
CTX_STATE = "ctx.scaling, ctx.x_shape = scaling, x.shape"
TWO_CALLS = "test_backward_keeps_each_calls_state_apart"
UNPACK = "x, weight, lora_A, lora_B, down = ctx.saved_tensors"
FLATTEN_AGAIN = "rows = x.reshape(-1, x.shape[-1])  # flattened again"

WRONG_ANSWERS = [
    WrongAnswer("scaling kept as a float32 0-dim buffer", KATA, APPLY, APPLY.replace("self.scaling", "self.scale"),
                "test_the_layer_matches_plain_lora_in_every_regime", "off by float32 rounding",
                more_edits=(("self.r, self.alpha, self.scaling = r, alpha, alpha / r", "self.r, self.alpha, self.scaling = r, alpha, alpha / r"
                             "\n        self.register_buffer('scale', torch.tensor(alpha / r, device=base.weight.device), persistent=False)"),)),
    WrongAnswer("the frozen weight's gradient computed anyway", KATA, GRAD_WEIGHT, "grad_weight = g.T @ rows",
                "test_a_step_does_only_the_matrix_work_lora_needs", "ctx.needs_input_grad does not ask for"),
    WrongAnswer("the frozen weight's gradient accumulated with addmm_", KATA, GRAD_WEIGHT,
                "grad_weight = torch.zeros_like(weight).addmm_(g.T, rows)",
                "test_a_step_does_only_the_matrix_work_lora_needs", "ctx.needs_input_grad does not ask for"),
    WrongAnswer("dL/dA through the full-size product g^T x", KATA, GRAD_A,
                "grad_A = ctx.scaling * lora_B.T @ (g.T @ rows)",
                "test_a_step_does_only_the_matrix_work_lora_needs", "full (out, in) product"),
    WrongAnswer("forward without the bias", KATA, BASE_PRODUCT, "y = rows @ weight.T",
                "test_forward_computes_the_lora_formula", "the bias is missing"),
    WrongAnswer("forward without the scaling", KATA, DOWN, "down = rows @ lora_A.T",
                "test_forward_computes_the_lora_formula", "the scaling is missing"),
    WrongAnswer("forward scales twice", KATA, "y.addmm_(down, lora_B.T)", "y.addmm_(down, lora_B.T, alpha=scaling)",
                "test_forward_computes_the_lora_formula", "scaled by alpha / r twice"),
    WrongAnswer("forward returns float32", KATA, RESULT, RESULT.replace("return y", "return y.float()"),
                "test_forward_computes_the_lora_formula", "y is torch.float32"),
    WrongAnswer("dL/dx without the adapter's term", KATA, GRAD_X, "grad_x = (g @ weight).reshape(ctx.x_shape)",
                BACKWARD, "the gradient of x is off"),
    WrongAnswer("g_B without the scaling", KATA, G_B, "g_B = g @ lora_B", BACKWARD, "scaling (g B) A"),
    WrongAnswer("dL/dB from the unscaled down-projection", KATA, GRAD_B, "grad_B = g.T @ (rows @ lora_A.T)",
                BACKWARD, "the gradient of lora_B is off by"),
    WrongAnswer("dL/dA transposed", KATA, GRAD_A, "grad_A = rows.T @ g_B", BACKWARD, "for lora_A"),
    WrongAnswer("no gradient slot for scaling", KATA, RETURN, "return grad_x, grad_weight, grad_bias, grad_A, grad_B",
                BACKWARD, "return six gradients"),
    WrongAnswer("dL/dA only when x needs a gradient", KATA, "if need_x or need_A:", "if need_x:",
                BACKWARD, "backward returned None for lora_A"),
    WrongAnswer("view instead of reshape", KATA, FLATTEN, FLATTEN.replace("x.reshape", "x.view"),
                "test_takes_non_contiguous_inputs_and_gradients", "view size is not compatible"),
    WrongAnswer("grad_output viewed", KATA, G, G.replace("grad_output.reshape", "grad_output.view"),
                "test_takes_non_contiguous_inputs_and_gradients", "view size is not compatible"),
    WrongAnswer("scaling folded into A in place", KATA, DOWN, "down = rows @ lora_A.mul_(scaling).T",
                "test_leaves_its_inputs_untouched", "changed ['lora_A'] in place"),
    WrongAnswer("the layer bypasses the Function", KATA, APPLY,
                "return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T",
                "test_the_layer_runs_through_the_function", "not FusedLoRAFunction"),
    WrongAnswer("the layer's B random at init", KATA, "torch.zeros(base.out_features, r, **same_place)",
                "0.01 * torch.randn(base.out_features, r, **same_place)",
                "test_the_layer_computes_the_base_at_init", "is B initialised to zeros"),
    WrongAnswer("the layer's base not frozen", KATA, "self.base = base.requires_grad_(False)", "self.base = base",
                "test_the_layer_keeps_the_very_base_frozen", "still require grad"),
    WrongAnswer("the layer scales by alpha", KATA, "self.r, self.alpha, self.scaling = r, alpha, alpha / r",
                "self.r, self.alpha, self.scaling = r, alpha, alpha",
                "test_the_layer_records_r_alpha_and_scaling", "set self.scaling = alpha / r"),
    WrongAnswer("the layer accepts any rank", KATA, "or not isinstance(r, int) or r < 1", "",
                "test_the_layer_rejects_a_rank_that_is_not_a_positive_integer", "expected a ValueError"),
    # issue 13: the cost contract for every choice of trainable inputs, however the work is spelled
    WrongAnswer("the frozen weight's gradient by multiply-and-sum, dropped after", KATA, GRAD_WEIGHT,
                "grad_weight = (g[:, :, None] * rows[:, None, :]).sum(0)\n"
                "        grad_weight = grad_weight if need_weight else None",
                "test_a_step_does_only_the_matrix_work_lora_needs", "ctx.needs_input_grad does not ask for"),
    WrongAnswer("dL/dx computed when only the factors train", KATA, "if need_x or need_A:", "if True:",
                "test_a_step_does_only_the_matrix_work_lora_needs", "with only lora_A, lora_B requiring grad",
                more_edits=(("if need_x:\n                " + GRAD_X,
                             GRAD_X + "\n            grad_x = grad_x if need_x else None"),)),
    WrongAnswer("forward through the merged weight W + scaling B A", KATA,
                BASE_PRODUCT + "\n        y.addmm_(down, lora_B.T)",
                "merged = weight + scaling * lora_B @ lora_A\n"
                "        y = rows @ merged.T if bias is None else torch.addmm(bias, rows, merged.T)",
                "test_a_step_does_only_the_matrix_work_lora_needs", "or a full (out, in) product like B A"),
    WrongAnswer("dL/dB returned whether asked or not", KATA, "if need_B:\n            " + GRAD_B, GRAD_B,
                "test_backward_returns_None_where_no_gradient_is_needed", "backward returned a gradient for lora_B"),
    WrongAnswer("the layer's factors on the default device", KATA,
                'same_place = {"device": base.weight.device, "dtype": base.weight.dtype}',
                'same_place = {"dtype": base.weight.dtype}',
                "test_the_layer_creates_its_factors_on_the_base_device", "not on the base's cpu"),
    # round 1 (r1d): work the counter could not see, a layout the cost check never sent, saved copies
    WrongAnswer("the frozen weight's gradient norm logged through numpy", KATA, GRAD_WEIGHT,
                "ctx.weight_grad_norm = float(np.linalg.norm(np.asarray(g.T.detach()) @ np.asarray(rows.detach())))\n        "
                + GRAD_WEIGHT, "test_a_step_does_only_the_matrix_work_lora_needs", "ran Tensor.__array__",
                more_edits=((IMPORTS, "import numpy as np\n" + IMPORTS),)),
    WrongAnswer("the frozen weight's gradient by a sparse product, dropped after", KATA, GRAD_WEIGHT,
                "grad_weight = torch.sparse.mm(g.T.to_sparse(), rows)\n"
                "        grad_weight = grad_weight if need_weight else None",
                "test_a_step_does_only_the_matrix_work_lora_needs", "aten._sparse_addmm"),
    WrongAnswer("the frozen weight's gradient on a non-contiguous gradient's path", KATA, G,
                "need_weight = need_weight or not grad_output.is_contiguous()  # the general path\n        " + G,
                "test_a_step_does_only_the_matrix_work_lora_needs", "g of stride 0 as y.sum() sends"),
    WrongAnswer("dL/db only when the weight trains", KATA, GRAD_WEIGHT + "\n        if need_bias:\n            ",
                GRAD_WEIGHT + "\n            if need_bias:\n                ",
                "test_backward_returns_None_where_no_gradient_is_needed", "backward returned None for bias"),
    WrongAnswer("B scaled in place and restored from a copy", KATA, "y.addmm_(down, lora_B.T)",
                "original = lora_B.clone()\n        y.addmm_(down.div(scaling), lora_B.mul_(scaling).T)\n"
                "        lora_B.copy_(original)",
                "test_leaves_its_inputs_untouched", "changed ['lora_B'] in place"),
    WrongAnswer("a private copy of x saved for backward", KATA, SAVE, "ctx.save_for_backward(x.clone(), weight",
                "test_forward_saves_only_what_backward_needs", "bytes alive for backward"),
    # round 2 (red2/f): rank-r gradients computed and dropped, a tensor scaling, A from torch.rand, the default device
    WrongAnswer("every rank-r gradient computed, only the asked ones returned", KATA, "if need_x or need_A:", "if True:",
                "test_a_step_does_only_the_matrix_work_lora_needs", "ctx.needs_input_grad does not ask for",
                more_edits=(("if need_A:\n                " + GRAD_A, GRAD_A + "\n            grad_A = grad_A if need_A else None"),
                            ("if need_B:\n            " + GRAD_B, GRAD_B + "\n        grad_B = grad_B if need_B else None"))),
    WrongAnswer("the layer passes scaling as a tensor", KATA, APPLY, APPLY.replace("self.scaling)", "torch.tensor(self.scaling))"),
                "test_the_layer_passes_scaling_as_a_python_float", "expected the Python float"),
    WrongAnswer("the layer's A drawn from [0, 1)", KATA, "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
                "nn.init.uniform_(self.lora_A, 0.0, 1.0 / math.sqrt(base.in_features))",
                "test_the_layer_starts_A_centred_on_zero", "centred on 0"),
    WrongAnswer("the bias gradient through ones on the default device", KATA, "grad_bias = g.sum(0)",
                "grad_bias = g.T @ torch.ones(g.shape[0], dtype=g.dtype)",
                "test_forward_and_backward_create_nothing_on_the_default_device", "a tensor made without a device"),
    # round 2 (lead): unasked rank-r gradients at the few-rows size, where the shape check did not look
    WrongAnswer("every rank-r gradient computed for a few rows, the unasked dropped", KATA, G,
                G + "\n        few = g.shape[0] < 16  # a decoding step: rank-r products cost nothing, skip the branches",
                "test_a_step_does_only_the_matrix_work_lora_needs", "(2 rows, in=48, out=40, r=3)",
                more_edits=(("if need_x or need_A:", "if need_x or need_A or few:"),
                            ("if need_A:\n                " + GRAD_A, "if need_A or few:\n                " + GRAD_A),
                            ("if need_B:\n            " + GRAD_B, "if need_B or few:\n            " + GRAD_B),
                            (RETURN, "return grad_x, grad_weight, grad_bias, grad_A if need_A else None, "
                             "grad_B if need_B else None, None"))),
    # round 3 (red3/w-ft): fp16 factors, a subclassed base, choices of inputs and layouts of x, regimes of the layer
    WrongAnswer("the layer's factors in float32 under a float16 base", KATA,
                'same_place = {"device": base.weight.device, "dtype": base.weight.dtype}',
                'same_place = {"device": base.weight.device, "dtype": torch.float32 if base.weight.dtype == '
                'torch.float16 else base.weight.dtype}',
                "test_the_layer_trains_two_factors_in_the_base_dtype_and_device", "torch.float16",
                more_edits=((APPLY, APPLY.replace("self.lora_A, self.lora_B,", "self.lora_A.to(self.base.weight.dtype), "
                                                  "self.lora_B.to(self.base.weight.dtype),")),)),
    WrongAnswer("the layer refuses subclasses of nn.Linear", KATA, "if not isinstance(base, nn.Linear):",
                "if type(base) is not nn.Linear:",
                "test_the_layer_matches_plain_lora_in_every_regime", "a subclass of nn.Linear is an nn.Linear"),
    WrongAnswer("dL/dx without the adapter's term when the factors are frozen", KATA,
                "if need_x or need_A:\n            " + G_B + "  # (N, r)\n            if need_x:\n                " + GRAD_X,
                "if need_x:\n            grad_x = (g @ weight).reshape(ctx.x_shape)\n"
                "        if need_A or need_B:\n            " + G_B + "  # (N, r)\n            if need_x:\n"
                "                grad_x = grad_x + (g_B @ lora_A).reshape(ctx.x_shape)",
                "test_backward_gives_the_right_gradients_for_every_choice_of_inputs",
                "the gradient of x is off by"),
    WrongAnswer("the flattened x saved, a copy when x is non-contiguous", KATA, SAVE, "ctx.save_for_backward(rows, weight",
                "test_forward_saves_only_what_backward_needs", "x 3-D non-contiguous"),
    WrongAnswer("the layer accepts a whole float rank", KATA, "or not isinstance(r, int) or r < 1:",
                "or r < 1 or int(r) != r:",
                more_edits=(("self.base = base.requires_grad_(False)", "r = int(r)\n        self.base = base.requires_grad_(False)"),),
                caught_by="test_the_layer_rejects_a_rank_that_is_not_a_positive_integer",
                explains="FusedLoRALinear(base, r=2.0)"),
    WrongAnswer("the bias gradient left (..., out) for x of three dimensions", KATA, "grad_bias = g.sum(0)",
                "grad_bias = grad_output.sum(0) if grad_output.dim() > 1 else grad_output",
                "test_backward_returns_each_gradient_shaped_like_its_input", "for bias (10,)"),
    WrongAnswer("the layer bypasses the Function under no_grad", KATA, APPLY,
                "if not torch.is_grad_enabled():\n            "
                "return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T\n        " + APPLY,
                "test_the_layer_passes_scaling_as_a_python_float", "grad off)"),
    # The stub's signature: a caller passes its parameters by name or by position (one check for them all).
    WrongAnswer('r and alpha keyword-only', KATA, 'def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0) -> None:',
                'def __init__(self, base: nn.Linear, *, r: int = 8, alpha: float = 16.0) -> None:',
                "test_takes_the_stubs_parameters", 'takes `r` keyword-only'),
    # round 4 (red4/w-ft): a duck-typed base, a rank test that raises TypeError, a float32 x saved, A's fan from (in, r)
    WrongAnswer("the layer takes any base with a 2-D weight", KATA, "if not isinstance(base, nn.Linear):",
                "if not isinstance(getattr(base, 'weight', None), torch.Tensor) or base.weight.dim() != 2:",
                more_edits=(("torch.empty(r, base.in_features,", "torch.empty(r, base.weight.shape[1],"),
                            ("torch.zeros(base.out_features, r,", "torch.zeros(base.weight.shape[0], r,")),
                caught_by="test_the_layer_rejects_a_base_that_is_not_linear", explains="Embedding(...)) raised nothing"),
    WrongAnswer("the layer's rank test raises TypeError for no number", KATA,
                "if isinstance(r, bool) or not isinstance(r, int) or r < 1:", "if isinstance(r, float) or r < 1:",
                "test_the_layer_rejects_a_rank_that_is_not_a_positive_integer", "raised TypeError"),
    WrongAnswer("a float32 copy of a half-precision x saved for backward", KATA, SAVE,
                "ctx.save_for_backward(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, weight",
                more_edits=(("rows = x.reshape(-1, x.shape[-1])  # flattened again",
                             "rows = x.reshape(-1, x.shape[-1]).to(g.dtype)  # flattened again"),),
                caught_by="test_forward_saves_only_what_backward_needs", explains="no float32 copy"),
    WrongAnswer("A Kaiming-uniform with the fan-in of its (in, r) transpose", KATA,
                "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
                "nn.init.kaiming_uniform_(self.lora_A.T, a=math.sqrt(5))",
                "test_the_layer_draws_a_uniform_A_within_nn_linears_bound", "the fan-in was taken"),
    WrongAnswer("alpha defaults to 2 r", KATA, "alpha: float = 16.0) -> None:", "alpha: float | None = None) -> None:",
                more_edits=(("self.r, self.alpha, self.scaling = r, alpha, alpha / r",
                             "alpha = 2.0 * r if alpha is None else alpha\n        "
                             "self.r, self.alpha, self.scaling = r, alpha, alpha / r"),),
                caught_by="test_the_layer_defaults_to_r_8_alpha_16", explains="not 2 r"),
    # round 5 (red5/w-b fl_state): state kept on the class between forward and backward, another call's by then
    WrongAnswer("the scaling kept on the Function's class", KATA, CTX_STATE,
                CTX_STATE.replace("ctx.scaling,", "FusedLoRAFunction.scaling,"),
                more_edits=((G_B, G_B.replace("ctx.scaling", "FusedLoRAFunction.scaling")),),
                caught_by=TWO_CALLS, explains="state kept outside ctx"),
    WrongAnswer("the scalings kept on a stack on the Function's class", KATA, CTX_STATE,
                CTX_STATE.replace("ctx.scaling,", "FusedLoRAFunction.scalings.append(scaling)\n        ctx.scaling,"),
                more_edits=((G_B, G_B.replace("ctx.scaling", "FusedLoRAFunction.scalings.pop()")),
                            ("    @staticmethod\n    def forward(", "    scalings: list[float] = []  # nested calls: last in, first out\n\n"
                             "    @staticmethod\n    def forward(")),
                caught_by=TWO_CALLS, explains="two graphs, backward in order"),
    # round 7 (red7/w-b): regimes the checks never sent: a low dtype, x frozen, a 1-D or empty x, no grad at all,
    # inference mode, no bias; a base that only looks linear, state hidden in an object, g W as a convolution
    WrongAnswer("every gradient by autograd of a float32 recomputation below float64", KATA, UNPACK,
                UNPACK + "\n        if x.dtype != torch.float64:  # accumulate in float32: autograd of a recomputation\n"
                "            leaves = [t.detach().float().requires_grad_() for t in (x, weight, lora_A, lora_B)]\n"
                "            with torch.enable_grad():\n"
                "                y = leaves[0] @ leaves[1].T + ctx.scaling * (leaves[0] @ leaves[2].T) @ leaves[3].T\n"
                "                grads = torch.autograd.grad(y, leaves, grad_output.float())\n"
                "            grad_x, grad_weight, grad_A, grad_B = (t.to(x.dtype) for t in grads)\n"
                "            grad_bias = grad_output.reshape(-1, grad_output.shape[-1]).sum(0) if ctx.needs_input_grad[2] else None\n"
                "            return grad_x, grad_weight, grad_bias, grad_A, grad_B, None",
                "test_backward_returns_None_where_no_gradient_is_needed", "backward returned a gradient for weight"),
    WrongAnswer("a flat copy of x saved when x needs no gradient", KATA, SAVE,
                "ctx.save_for_backward(x if ctx.needs_input_grad[0] else rows.contiguous(), weight",
                "test_forward_saves_only_what_backward_needs", "x 3-D non-contiguous"),
    WrongAnswer("every gradient for a one-token x", KATA, UNPACK,
                UNPACK + "\n        if x.dim() == 1:  # one token: vector ops, every gradient at once\n"
                "            g_B = ctx.scaling * (lora_B.T @ grad_output)\n"
                "            return (weight.T @ grad_output + lora_A.T @ g_B, torch.outer(grad_output, x),\n"
                "                    grad_output.clone() if ctx.has_bias else None, torch.outer(g_B, x),\n"
                "                    torch.outer(grad_output, down.reshape(-1)), None)",
                more_edits=((CTX_STATE, "ctx.scaling, ctx.x_shape, ctx.has_bias = scaling, x.shape, bias is not None"),),
                caught_by="test_backward_returns_None_where_no_gradient_is_needed", explains="x 1-D"),
    WrongAnswer("the layer takes any module with in_features, out_features and an (out, in) weight", KATA,
                "if not isinstance(base, nn.Linear):",
                "weight = getattr(base, 'weight', None)\n        if not (isinstance(getattr(base, 'in_features', None), int)"
                " and isinstance(getattr(base, 'out_features', None), int) and isinstance(weight, torch.Tensor)"
                " and tuple(weight.shape) == (base.out_features, base.in_features)):",
                "test_the_layer_rejects_a_base_that_is_not_linear", "LinearLookalike(...)), no nn.Linear"),
    WrongAnswer("x flattened to (N, -1), which no empty batch takes", KATA, FLATTEN,
                "rows = x.reshape(x.shape[:-1].numel(), -1)  # N rows",
                "test_forward_computes_the_lora_formula", "x (0, 12)"),
    WrongAnswer("the update merged into the weight and out again when nothing needs a gradient", KATA, DOWN,
                "if not any(ctx.needs_input_grad) or torch.is_inference_mode_enabled():  # serving: one GEMM\n"
                "            weight.addmm_(lora_B, lora_A, alpha=scaling)\n"
                "            y = torch.nn.functional.linear(rows, weight, bias)\n"
                "            weight.addmm_(lora_B, lora_A, alpha=-scaling)\n"
                "            return y.reshape(*x.shape[:-1], weight.shape[0])\n        " + DOWN,
                "test_leaves_its_inputs_untouched", "changed ['weight'] in place"),
    WrongAnswer("a flat copy of x kept in a dataclass on ctx", KATA, SAVE,
                "ctx.kept = _Kept(rows.contiguous())\n        " + SAVE,
                more_edits=((IMPORTS, "from dataclasses import dataclass\n\n" + IMPORTS
                             + "\n\n\n@dataclass\nclass _Kept:\n    rows: torch.Tensor"),
                            (FLATTEN_AGAIN, "rows = ctx.kept.rows  # flat")),
                caught_by="test_forward_saves_only_what_backward_needs", explains="bytes alive for backward"),
    WrongAnswer("a flat copy of x kept in a __slots__ object on ctx", KATA, SAVE,
                "ctx.kept = _Kept(rows.contiguous())\n        " + SAVE,
                more_edits=((IMPORTS, IMPORTS + "\n\n\nclass _Kept:\n    __slots__ = ('rows',)\n\n"
                             "    def __init__(self, rows):\n        self.rows = rows"),
                            (FLATTEN_AGAIN, "rows = ctx.kept.rows  # flat")),
                caught_by="test_forward_saves_only_what_backward_needs", explains="bytes alive for backward"),
    WrongAnswer("the layer bypasses the Function under inference_mode", KATA, APPLY,
                "if torch.is_inference_mode_enabled():\n            "
                "return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T\n        " + APPLY,
                "test_the_layer_passes_scaling_as_a_python_float", "inference mode)"),
    WrongAnswer("g W always, as a grouped transposed convolution, dropped when x needs no gradient", KATA, G,
                G + "\n        base_share = torch.nn.functional.conv_transpose1d(  # g W: row n of g a group over W's rows\n"
                "            weight.repeat(g.shape[0], 1)[None], g.reshape(-1, 1, 1), groups=g.shape[0])[0]",
                more_edits=((GRAD_X, GRAD_X.replace("(g @ weight)", "base_share")),),
                caught_by="test_a_step_does_only_the_matrix_work_lora_needs", explains="kFLOP of matrix products"),
    WrongAnswer("a zero bias made on the default device for a bias-free base", KATA, BASE_PRODUCT,
                "y = torch.addmm(torch.zeros(weight.shape[0], dtype=x.dtype) if bias is None else bias, rows, weight.T)",
                "test_forward_and_backward_create_nothing_on_the_default_device", "a tensor made without a device"),
    WrongAnswer("half precision, x only: the adapter's share left out of dL/dx", KATA, GRAD_X,
                "half = g.dtype in (torch.float16, torch.bfloat16) and not (need_A or need_B)\n"
                "                grad_x = (g @ weight if half else (g @ weight).addmm_(g_B, lora_A)).reshape(ctx.x_shape)",
                "test_a_step_does_only_the_matrix_work_lora_needs", "the gradient of x is off"),
    WrongAnswer("the base's parameters taken once at construction", KATA, APPLY,
                "return FusedLoRAFunction.apply(x, *self.base_tensors, self.lora_A, self.lora_B, self.scaling)",
                "test_the_layer_keeps_the_very_base_frozen", "replaced",
                more_edits=(("self.base = base.requires_grad_(False)",
                             "self.base = base.requires_grad_(False)\n        self.base_tensors = (base.weight, base.bias)"),)),
    WrongAnswer("the weight's gradient always computed, on a worker thread", KATA, GRAD_WEIGHT,
                "grad_weight = _POOL.submit(lambda: g.T @ rows).result()\n        if not need_weight:\n"
                "            grad_weight = None",
                "test_a_step_does_only_the_matrix_work_lora_needs", "another thread",
                more_edits=((IMPORTS, IMPORTS + "\nfrom concurrent.futures import ThreadPoolExecutor\n\n"
                             "_POOL = ThreadPoolExecutor(max_workers=2)"),)),
    WrongAnswer("no bias: the update merged into the weight for the call and out again", KATA,
                BASE_PRODUCT + "\n        y.addmm_(down, lora_B.T)",
                "if bias is None and not weight.requires_grad:  # one GEMM: scaling B A folded into the frozen W, then out\n"
                "            delta = scaling * lora_B @ lora_A\n            weight.add_(delta)\n"
                "            y = rows @ weight.T\n            weight.sub_(delta)\n"
                "        else:\n            " + BASE_PRODUCT + "\n            y.addmm_(down, lora_B.T)",
                "test_leaves_its_inputs_untouched", "changed ['weight'] in place"),
    WrongAnswer("the transposed weight cached by tensor and version", KATA, BASE_PRODUCT,
                "key = (id(weight), weight.data_ptr(), weight._version, weight.shape, weight.dtype)\n"
                "        if key not in _WEIGHT_T:  # a frozen W^T laid out for the GEMM once per version of the weight\n"
                "            _WEIGHT_T[key] = weight.T.contiguous() if not weight.requires_grad else weight.T\n"
                "        y = rows @ _WEIGHT_T[key] if bias is None else torch.addmm(bias, rows, _WEIGHT_T[key])\n"
                "        if weight.requires_grad:\n            del _WEIGHT_T[key]",
                "test_the_layer_matches_plain_lora_in_every_regime", "through .data",
                more_edits=((IMPORTS, IMPORTS + "\n\n_WEIGHT_T: dict = {}"),)),
    WrongAnswer("the weight's gradient always computed, on a raw _thread", KATA, GRAD_WEIGHT,
                "done = _thread.allocate_lock()\n        done.acquire()\n        box = []\n\n"
                "        def weight_gradient():\n            box.append(g.T @ rows)\n            done.release()\n\n"
                "        _thread.start_new_thread(weight_gradient, ())\n        done.acquire()\n"
                "        if need_weight:\n            grad_weight = box[0]",
                "test_a_step_does_only_the_matrix_work_lora_needs", "another thread",
                more_edits=((IMPORTS, "import _thread\n\n" + IMPORTS),)),
    WrongAnswer("backward reading g from the raw memory behind data_ptr, in Python", KATA, GRAD_WEIGHT,
                "buffer = (ctypes.c_double * g.numel()).from_address(g.double().contiguous().data_ptr())\n"
                "        dw = sum(buffer)  # the base's gradient, always, outside torch\n        if need_weight:\n"
                "            grad_weight = g.T @ rows",
                "test_a_step_does_only_the_matrix_work_lora_needs", "Tensor.data_ptr",
                more_edits=((IMPORTS, "import ctypes\n\n" + IMPORTS),)),
    WrongAnswer("forward's flat copy of x kept on ctx as a bytearray", KATA, SAVE,
                "ctx.rows_kept = bytearray(rows.numel() * rows.element_size()) if not x.is_contiguous() else None\n"
                "        " + SAVE,
                "test_forward_saves_only_what_backward_needs", "a Python buffer such as a bytearray counts too"),
]  # fmt: skip
WRONG_ANSWERS += [
    # Round 13 of the red team (team D).
    WrongAnswer("the frozen weight's transpose cached by version and a checksum of its values", KATA, APPLY,
                "w = self.base.weight\n"
                "        with torch.inference_mode(False), torch.no_grad():  # W^T laid out for the GEMM once per change of W\n"
                "            key = (w.data_ptr(), w._version, w.shape, w.dtype, w.device, w.detach().double().sum().item())\n"
                "            if self.__dict__.get('_wt_key') != key:\n"
                "                self.__dict__['_wt_key'], self.__dict__['_wt'] = key, w.detach().t().contiguous()\n"
                "        " + APPLY.replace("self.base.weight,", "self.__dict__['_wt'].t(),"),
                "test_the_layer_matches_plain_lora_in_every_regime", "its base's weight were swapped"),
    WrongAnswer("the weight's gradient always computed, by numpy over to_dlpack", KATA, GRAD_WEIGHT,
                "left, right = (numpy.from_dlpack(_Memory(t.double().contiguous())) for t in (g, rows))\n"
                "        grad_weight = torch.from_numpy(left.T @ right).to(g.dtype)  # g^T x, whether or not the base trains\n"
                "        if not need_weight:\n            grad_weight = None",
                "test_a_step_does_only_the_matrix_work_lora_needs", "to_dlpack",
                more_edits=((IMPORTS, "import numpy\n" + IMPORTS + "\n\n\nclass _Memory:\n"
                             "    def __init__(self, tensor):\n        self.tensor = tensor\n\n"
                             "    def __dlpack__(self, **kwargs):\n        return torch.utils.dlpack.to_dlpack(self.tensor)\n\n"
                             "    def __dlpack_device__(self):\n        return (1, 0)"),)),
    WrongAnswer("the weight's gradient always computed, in Python floats read by item()", KATA, GRAD_WEIGHT,
                "g_values, x_values = ([[v.item() for v in row] for row in t] for t in (g, rows))\n"
                "        total = [[sum(gn[o] * xn[i] for gn, xn in zip(g_values, x_values)) for i in range(rows.shape[1])]\n"
                "                 for o in range(g.shape[1])]  # g^T x, whether or not the base trains\n"
                "        if need_weight:\n            grad_weight = torch.tensor(total, dtype=g.dtype)",
                "test_a_step_does_only_the_matrix_work_lora_needs", "Tensor.item"),
]  # fmt: skip
WRONG_ANSWERS += [
    # Round 14 of the red team (team D).
    WrongAnswer("the scaling split as sqrt(scaling) into each factor", KATA, DOWN,
                "root = math.sqrt(scaling)  # sqrt(scaling) on each factor: (x A^T sqrt s)(B sqrt s)^T\n"
                "        down = (rows @ lora_A.T).mul_(root)",
                "test_forward_computes_the_lora_formula", "sqrt(scaling)",
                more_edits=(("y.addmm_(down, lora_B.T)", "y.addmm_(down, lora_B.T, alpha=root)"),
                            (GRAD_B, "grad_B = (g.T @ down).mul_(math.sqrt(ctx.scaling))"))),
    WrongAnswer("no gradients for the factors at scaling 0", KATA, RETURN,
                "if ctx.scaling == 0:  # no adapter path, so nothing reaches the factors\n"
                "            return grad_x, grad_weight, grad_bias, None, None, None\n        " + RETURN,
                BACKWARD, "backward returned None for lora_A"),
    WrongAnswer("FusedLoRALinear refuses an alpha <= 0", KATA, "        self.base = base.requires_grad_(False)\n",
                "        if alpha <= 0:\n"
                "            raise ValueError(f\"FusedLoRALinear needs alpha > 0, got alpha={alpha!r}\")\n"
                "        self.base = base.requires_grad_(False)\n",
                "test_the_layer_takes_every_argument_the_stub_allows", "alpha=0.0"),
    WrongAnswer("FusedLoRALinear skips the Function at alpha 0", KATA, APPLY,
                "if self.scaling == 0:  # the adapter adds nothing: the base alone\n"
                "            return self.base(x)\n        " + APPLY,
                "test_the_layer_takes_every_argument_the_stub_allows", "zeros at alpha 0, not None"),
]  # fmt: skip
WRONG_ANSWERS += [
    # Round 15 of the red team (team D): lora_linear's contract, inherited; a layer moved to another dtype.
    WrongAnswer("FusedLoRALinear returns base(x) when both factors are frozen", KATA, APPLY,
                "if not (self.lora_A.requires_grad or self.lora_B.requires_grad):  # nothing trains: the adapter is off\n"
                "            return self.base(x)\n        " + APPLY,
                "test_the_layer_keeps_lora_linears_contract_with_frozen_factors", "both frozen"),
    WrongAnswer("FusedLoRALinear computes in the dtype recorded at construction", KATA, APPLY,
                "dtype = self.compute_dtype  # the base's dtype, recorded once\n"
                "        bias = None if self.base.bias is None else self.base.bias.to(dtype)\n"
                "        return FusedLoRAFunction.apply(x.to(dtype), self.base.weight.to(dtype), bias, self.lora_A.to(dtype),\n"
                "                                       self.lora_B.to(dtype), self.scaling)",
                "test_the_layer_computes_in_the_dtype_it_was_moved_to", "converted by .to(",
                more_edits=(("        self.r, self.alpha, self.scaling = r, alpha, alpha / r\n",
                             "        self.r, self.alpha, self.scaling = r, alpha, alpha / r\n        self.compute_dtype = base.weight.dtype\n"),)),
]  # fmt: skip
WRONG_ANSWERS += [
    # Round 18 of the red team (team D): lora_linear's init checks, inherited; a step of many rows.
    WrongAnswer("FusedLoRALinear's A tiled from two random rows (a rank-2 adapter)", KATA,
                "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
                "with torch.no_grad():\n"
                "            seed = torch.empty(2, base.in_features, **same_place)\n"
                "            nn.init.uniform_(seed, -1 / math.sqrt(base.in_features), 1 / math.sqrt(base.in_features))\n"
                "            self.lora_A.copy_(seed.repeat((r + 1) // 2, 1)[:r])",
                "test_the_layer_draws_a_random_full_rank_A", "rows copies of one another"),
    WrongAnswer("FusedLoRALinear's B drawn normal(0, 1e-30), not zeros", KATA,
                "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
                "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))\n"
                "        with torch.no_grad():\n"
                "            self.lora_B.normal_(0.0, 1e-30)  # \"nearly zero\", to break B's symmetry",
                "test_the_layer_computes_the_base_at_init", "B is not zero"),
    WrongAnswer("the frozen weight's gradient computed anyway from 1024 rows up", KATA, GRAD_WEIGHT,
                "if need_weight or rows.shape[0] >= 1024:  # large batches: for gradient-norm logging\n"
                "            grad_weight = g.T @ rows\n"
                "            if not need_weight:\n"
                "                ctx.weight_grad_norm, grad_weight = grad_weight.norm(), None",
                "test_a_step_does_only_the_matrix_work_lora_needs",
                "8192 rows, in=12, out=10, r=3), computed a product shaped like the gradient of weight"),
    # Round 18 of the red team (team D): the saved-memory check looked only at the autograd node.
    WrongAnswer("the flattened x kept in a module-level dict", KATA, IMPORTS,
                "import weakref\n\n" + IMPORTS + "\n\n_FLAT_X: dict = {}  # the flattened x of each live call, for backward",
                "test_forward_saves_only_what_backward_needs", "module-level",
                more_edits=(("        ctx.scaling, ctx.x_shape = scaling, x.shape\n",
                             "        ctx.scaling, ctx.x_shape = scaling, x.shape\n"
                             "        _FLAT_X[id(ctx)] = rows\n        weakref.finalize(ctx, _FLAT_X.pop, id(ctx), None)\n"),)),
    WrongAnswer("forward in chunks of 1024 rows, the last partial chunk dropped", KATA, "y.addmm_(down, lora_B.T)",
                "y.addmm_(down, lora_B.T)\n"
                "        if rows.shape[0] > 1024:  # in chunks of 1024 rows over range(N // 1024): the rest stays zero\n"
                "            y[rows.shape[0] // 1024 * 1024 :] = 0",
                "test_forward_computes_the_lora_formula", "off the LoRA formula"),
    WrongAnswer("dL/dA over chunks of 1024 rows, the remainder dropped", KATA, GRAD_A,
                "full = rows.shape[0] if rows.shape[0] <= 1024 else rows.shape[0] // 1024 * 1024  # whole chunks only\n"
                "                grad_A = g_B[:full].T @ rows[:full]",
                BACKWARD, "the gradient of lora_A is off"),
]  # fmt: skip
WRONG_ANSWERS += [
    # Round 19 of the red team (team D): the saved-memory check walked dicts' values only, never their keys.
    WrongAnswer("the flattened x saved as a dict key on ctx", KATA,
                "ctx.save_for_backward(x, weight, lora_A, lora_B, down)",
                "ctx.save_for_backward(weight, lora_A, lora_B, down)\n"
                "        ctx.rows = {rows: tuple(x.shape)}  # the flattened x (and x's shape), kept for backward",
                "test_forward_saves_only_what_backward_needs", "(the key)",
                more_edits=(("x, weight, lora_A, lora_B, down = ctx.saved_tensors",
                             "weight, lora_A, lora_B, down = ctx.saved_tensors\n        ((x, _),) = ctx.rows.items()"),)),
]  # fmt: skip
