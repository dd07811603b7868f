"""Wrong answers to the `train_step` kata."""

from tests.wrong_answers import WrongAnswer

KATA = "train_step"
LOSS = 'loss = causal_lm_loss(logits, batch["labels"], reduction="sum") / tokens'
BACKWARD = "(loss if scaler is None else scaler.scale(loss)).backward()"
FORWARD = 'outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])'
TOKENS = 'tokens = sum(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) for batch in micro_batches)'
UNSCALE = "scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones"
CLIP = "nn.utils.clip_grad_norm_(parameters, max_grad_norm)"
CLIP_BLOCK = "    if max_grad_norm is not None:\n        " + CLIP + "\n"
STEP_SCHEDULER = "    if stepped:\n        scheduler.step()\n"
ZERO = "    optimizer.zero_grad(set_to_none=True)\n"
ADAMW = "torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)"
TRAINABLE = "trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]"
SHIFT = (
    "predictions = logits[:, :-1].reshape(-1, logits.shape[-1])  # position t predicts token t + 1\n"
    "    targets = labels[:, 1:].reshape(-1).to(predictions.device)"
)
UPCAST = "    if logits.dtype in (torch.float16, torch.bfloat16):\n        logits = logits.float()\n"
WARMUP = "return step / warmup_steps"
PAST = "        if step > total_steps:\n            return 0.0\n"
CHECK_STEPS = "if warmup_steps < 0 or total_steps < 1 or warmup_steps > total_steps:"
NO_TARGETS = "    if tokens == 0:\n        raise ValueError("
MEAN_CHECK = (
    '    if count == 0:\n        raise ValueError("no label carries loss after the shift: the mean would be NaN")\n'
)
SKIP = "stepped = scaler.get_scale() >= scale  # the scale drops exactly when the step was skipped"
REDUCTION = '    if reduction not in ("sum", "mean"):\n'
SHAPES = "if logits.dim() != 3 or labels.shape != logits.shape[:2]:"
HELD = 'parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]'
SUM_RETURN = '    if reduction == "sum":\n        return total\n'
TAIL = "    if stepped:\n        scheduler.step()\n" + ZERO
CROSS_ENTROPY = 'total = F.cross_entropy(predictions[keep], targets[keep], reduction="sum")'
OPTIMIZER_STEP = "    if scaler is None:\n        optimizer.step()\n        stepped = True\n"
FINITE = "all(p.grad is None or bool(p.grad.isfinite().all()) for p in parameters)"

WRONG_ANSWERS = [
    # the normaliser of gradient accumulation
    WrongAnswer("mean per micro-batch over the number of micro-batches (the 2024 bug)", KATA, LOSS,
                'loss = causal_lm_loss(logits, batch["labels"], reduction="mean") / len(micro_batches)',
                "test_gradients_weight_every_token_of_the_window_equally", "transformers fixed in 2024"),
    WrongAnswer("the model's own loss over the number of micro-batches", KATA, FORWARD,
                'outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])',
                "test_gradients_weight_every_token_of_the_window_equally", "transformers fixed in 2024",
                more_edits=((LOSS, "loss = outputs.loss / len(micro_batches)"),)),
    WrongAnswer("micro-batch means summed", KATA, LOSS, 'loss = causal_lm_loss(logits, batch["labels"], reduction="mean")',
                "test_gradients_weight_every_token_of_the_window_equally", "summed over the window"),
    WrongAnswer("summed loss never normalised", KATA, LOSS, 'loss = causal_lm_loss(logits, batch["labels"], reduction="sum")',
                "test_gradients_weight_every_token_of_the_window_equally", "never divided"),
    WrongAnswer("padding counted in the normaliser", KATA, TOKENS,
                'tokens = sum(int(batch["attention_mask"].sum()) for batch in micro_batches)',
                "test_gradients_weight_every_token_of_the_window_equally", "padding was counted"),
    WrongAnswer("labels counted before the shift", KATA, TOKENS, TOKENS.replace('batch["labels"][:, 1:]', 'batch["labels"]'),
                "test_gradients_weight_every_token_of_the_window_equally", "before the shift"),
    WrongAnswer("zero_grad inside the loop", KATA, FORWARD, "optimizer.zero_grad()\n        " + FORWARD,
                "test_gradients_weight_every_token_of_the_window_equally", "only the last micro-batch"),
    WrongAnswer("attention mask not passed", KATA, FORWARD, 'outputs = model(input_ids=batch["input_ids"])',
                "test_the_model_is_called_with_the_attention_mask", "without its attention mask"),
    # clipping
    WrongAnswer("clipped per micro-batch", KATA, BACKWARD,
                BACKWARD + "\n        if max_grad_norm is not None:\n            nn.utils.clip_grad_norm_("
                '[p for group in optimizer.param_groups for p in group["params"]], max_grad_norm)',  # the optimizer's: one mistake
                "test_gradients_are_clipped_once_to_max_grad_norm_over_all_parameters", "clipped on their own"),
    WrongAnswer("clipped by value", KATA, CLIP, "nn.utils.clip_grad_value_(parameters, max_grad_norm)",
                "test_gradients_are_clipped_once_to_max_grad_norm_over_all_parameters", "clipped by value"),
    WrongAnswer("each parameter clipped on its own", KATA, CLIP,
                "for parameter in parameters:\n            nn.utils.clip_grad_norm_([parameter], max_grad_norm)",
                "test_gradients_are_clipped_once_to_max_grad_norm_over_all_parameters", "each parameter was clipped"),
    WrongAnswer("max_grad_norm ignored", KATA, CLIP_BLOCK, "",
                "test_gradients_are_clipped_once_to_max_grad_norm_over_all_parameters", "were not clipped"),
    WrongAnswer("always clipped to 1.0", KATA, CLIP, "nn.utils.clip_grad_norm_(parameters, 1.0)",
                "test_clipping_changes_nothing_below_max_grad_norm", "handed to optimizer.step()"),
    # the optimizer, the scheduler, zeroing
    WrongAnswer("no zero_grad", KATA, ZERO, "",
                "test_one_optimizer_step_then_one_scheduler_step_and_the_gradients_zeroed", "still hold gradients"),
    WrongAnswer("zero_grad before the step instead of after", KATA, ZERO, "",
                "test_one_optimizer_step_then_one_scheduler_step_and_the_gradients_zeroed", "still hold gradients",
                more_edits=(("    micro_batches = list(micro_batches)\n", "    micro_batches = list(micro_batches)\n    optimizer.zero_grad()\n"),)),
    WrongAnswer("scheduler stepped before the optimizer", KATA, STEP_SCHEDULER, "",
                "test_learning_rates_of_a_whole_schedule", "scheduler was stepped before optimizer.step()",
                more_edits=(("    if scaler is None:\n        optimizer.step()", "    scheduler.step()\n    if scaler is None:\n        optimizer.step()"),)),
    WrongAnswer("scheduler stepped per micro-batch", KATA, STEP_SCHEDULER, "",
                "test_learning_rates_of_a_whole_schedule", "once per micro-batch",
                more_edits=((BACKWARD, BACKWARD + "\n        scheduler.step()"),)),
    WrongAnswer("optimizer stepped per micro-batch", KATA, BACKWARD, BACKWARD + "\n        optimizer.step()",
                "test_gradients_weight_every_token_of_the_window_equally", "called 4 times"),
    WrongAnswer("optimizer over every parameter, frozen ones too", KATA, TRAINABLE, "trainable = list(model.parameters())",
                "test_optimizer_holds_exactly_the_trainable_parameters_in_one_group", "frozen parameters"),
    WrongAnswer("weight decay left at AdamW's default", KATA, ADAMW, "torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.999), eps=1e-8)",
                "test_optimizer_has_the_learning_rate_no_decay_and_adams_betas", "AdamW's own default is 0.01"),
    WrongAnswer("lr left at AdamW's default", KATA, ADAMW, ADAMW.replace("lr=lr, ", ""),
                "test_optimizer_has_the_learning_rate_no_decay_and_adams_betas", "pass lr to AdamW"),
    WrongAnswer("decay and no-decay groups", KATA, ADAMW,
                'torch.optim.AdamW([{"params": [p for p in trainable if p.dim() > 1], "weight_decay": weight_decay}, '
                '{"params": [p for p in trainable if p.dim() <= 1], "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999), eps=1e-8)',
                "test_optimizer_holds_exactly_the_trainable_parameters_in_one_group", "expected one"),
    # the schedule
    WrongAnswer("warmup one step ahead", KATA, WARMUP, "return (step + 1) / warmup_steps",
                "test_schedule_warms_up_linearly_then_falls_as_a_cosine_to_zero", "one step ahead"),
    WrongAnswer("cosine rises again past total_steps", KATA, PAST, "",
                "test_schedule_warms_up_linearly_then_falls_as_a_cosine_to_zero", "rises again past total_steps"),
    WrongAnswer("a full cosine period", KATA, "math.cos(math.pi * progress)", "math.cos(2 * math.pi * progress)",
                "test_schedule_warms_up_linearly_then_falls_as_a_cosine_to_zero", "a full cosine period"),
    WrongAnswer("warmup longer than the run accepted", KATA, CHECK_STEPS, "if warmup_steps < 0 or total_steps < 1:",
                "test_schedule_refuses_impossible_steps", "raised nothing"),
    # the loss
    WrongAnswer("loss not shifted", KATA, SHIFT,
                "predictions = logits.reshape(-1, logits.shape[-1])\n    targets = labels.reshape(-1).to(predictions.device)",
                "test_loss_is_the_shifted_cross_entropy_of_the_targets", "not shifted"),
    WrongAnswer("mean over every position", KATA, "return total / count", "return total / targets.numel()",
                "test_loss_is_the_shifted_cross_entropy_of_the_targets", "every position, ignored ones too"),
    WrongAnswer("half precision not upcast", KATA, UPCAST, "",
                "test_loss_upcasts_half_precision_and_keeps_float32_and_float64", "upcast with logits.float()"),
    WrongAnswer("float64 rounded to float32", KATA, UPCAST, "    logits = logits.float()\n",
                "test_loss_upcasts_half_precision_and_keeps_float32_and_float64", "keep float64"),
    WrongAnswer("NaN mean over no target", KATA, MEAN_CHECK, "",
                "test_loss_without_targets_is_zero_summed_and_refused_as_a_mean", "raised nothing"),
    # mixed precision
    WrongAnswer("clipped before unscaling", KATA, UNSCALE, "pass", "test_a_gradscaler_is_unscaled_before_clipping",
                "call scaler.unscale_(optimizer) before clipping",
                more_edits=(("        scaler.step(optimizer)  #", "        scaler.unscale_(optimizer)\n        scaler.step(optimizer)  #"),)),
    WrongAnswer("backward on the unscaled loss", KATA, BACKWARD, "loss.backward()",
                "test_a_gradscaler_is_unscaled_before_clipping", "did not use scaler.scale"),
    WrongAnswer("no scaler.update()", KATA, "        scaler.update()\n", "",
                "test_a_gradscaler_is_unscaled_before_clipping", "call scaler.update()"),
    WrongAnswer("scheduler stepped after a skipped step", KATA, STEP_SCHEDULER, "    scheduler.step()\n",
                "test_a_step_the_scaler_skips_steps_no_scheduler", "the scheduler was stepped"),
    WrongAnswer("a step counted only when the scale grew", KATA, SKIP, "stepped = scaler.get_scale() > scale",
                "test_steps_under_autocast", "did not drop either"),
    # the returned loss and the errors
    WrongAnswer("returns a tensor", KATA, "total += loss.item()", "total += loss.detach()",
                "test_returns_the_windows_mean_token_loss", "expected a Python float"),
    WrongAnswer("returns the last micro-batch's loss", KATA, "total += loss.item()", "total = loss.item() * tokens / max(1, int((batch['labels'][:, 1:] != IGNORE_INDEX).sum()))",
                "test_returns_the_windows_mean_token_loss", "the last micro-batch's loss only"),
    WrongAnswer("returns the summed token loss", KATA, ZERO + "    return total", ZERO + "    return total * tokens",
                "test_returns_the_windows_mean_token_loss", "the sum of the token losses"),
    WrongAnswer("a window without targets is a NaN step", KATA, NO_TARGETS, "    if tokens < 0:\n        raise ValueError(",
                "test_a_window_without_targets_is_refused_before_any_forward", "expected a ValueError"),
    WrongAnswer("refused only after the forward passes", KATA, NO_TARGETS, "    if False:\n        raise ValueError(",
                "test_a_window_without_targets_is_refused_before_any_forward", "forward passes before the ValueError",
                more_edits=(("    parameters = [parameter", "    if tokens == 0:\n        raise ValueError('no target')\n    parameters = [parameter"),)),
    # defaults and odd inputs
    WrongAnswer("Adam with L2 instead of AdamW", KATA, ADAMW, ADAMW.replace("AdamW", "Adam"),
                "test_optimizer_holds_exactly_the_trainable_parameters_in_one_group", "expected torch.optim.AdamW"),
    WrongAnswer("warmup divides by zero when there is none", KATA, "        if step < warmup_steps:\n", "        if step <= warmup_steps:\n",
                "test_schedule_warms_up_linearly_then_falls_as_a_cosine_to_zero", "ZeroDivisionError"),
    WrongAnswer("max_grad_norm defaults to None", KATA, "    max_grad_norm: float | None = 1.0,", "    max_grad_norm: float | None = None,",
                "test_max_grad_norm_defaults_to_one", "max_grad_norm defaults to 1.0"),
    WrongAnswer("clipped to 1.0 when max_grad_norm is None", KATA, CLIP_BLOCK, "    nn.utils.clip_grad_norm_(parameters, max_grad_norm or 1.0)\n",
                "test_gradients_weight_every_token_of_the_window_equally", "though max_grad_norm is None"),
    # the red team's round 1b: every error sentence over its domain, mixed windows, the optimizer's own groups
    WrongAnswer("reduction read case-insensitively", KATA, REDUCTION, "    reduction = reduction.lower()\n" + REDUCTION,
                "test_loss_rejects_bad_arguments", "reduction='SUM'"),
    WrongAnswer("labels' shape checked by its dimensions only", KATA, SHAPES, "if logits.dim() != 3 or labels.dim() != 2:",
                "test_loss_rejects_bad_arguments", "labels shorter than logits"),
    WrongAnswer("logits' dimensions not checked", KATA, SHAPES, "if labels.shape != logits.shape[:2]:",
                "test_loss_rejects_bad_arguments", "2-D logits (4, 6), labels (4, 6)"),
    WrongAnswer("one position refused", KATA, UPCAST,
                '    if logits.shape[1] < 2:\n        raise ValueError("need two positions to shift")\n' + UPCAST,
                "test_loss_without_targets_is_zero_summed_and_refused_as_a_mean", "seq 1 is valid"),
    WrongAnswer("a detached zero for no targets", KATA, SUM_RETURN,
                SUM_RETURN.replace("return total", "return total if (targets != IGNORE_INDEX).any() else torch.zeros((), dtype=total.dtype)"),
                "test_loss_without_targets_is_zero_summed_and_refused_as_a_mean", "does not require grad"),
    WrongAnswer("AdamW with amsgrad", KATA, ADAMW, ADAMW.replace("weight_decay)", "weight_decay, amsgrad=True)"),
                "test_optimizer_has_the_learning_rate_no_decay_and_adams_betas", "amsgrad"),
    WrongAnswer("max_grad_norm 0.0 taken as off", KATA, "    if max_grad_norm is not None:\n", "    if max_grad_norm:\n",
                "test_max_grad_norm_zero_clips_every_gradient_to_zero", "only None turns clipping off"),
    WrongAnswer("clipped over the model's trainable parameters", KATA, HELD,
                "parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]",
                "test_clipping_takes_one_norm_over_every_group_of_the_optimizer", "the model's trainable parameters"),
    WrongAnswer("clipped over the first parameter group only", KATA, HELD, 'parameters = optimizer.param_groups[0]["params"]',
                "test_clipping_takes_one_norm_over_every_group_of_the_optimizer", "only the first parameter group"),
    WrongAnswer("one backward for the whole window", KATA, BACKWARD, "window = loss if window is None else window + loss",
                "test_one_forward_and_one_backward_per_micro_batch", "backpropagated once",
                more_edits=(("    total = 0.0\n", "    total = 0.0\n    window = None\n"),
                            ("    parameters = [parameter for group",
                             "    (window if scaler is None else scaler.scale(window)).backward()\n    parameters = [parameter for group"))),
    WrongAnswer("the model called positionally", KATA, FORWARD, 'outputs = model(batch["input_ids"], batch["attention_mask"])',
                "test_the_model_is_called_with_the_attention_mask", "keyword arguments only"),
    WrongAnswer("a window refused when one micro-batch has no target", KATA, NO_TARGETS,
                '    if tokens == 0 or not all((b["labels"][:, 1:] != IGNORE_INDEX).any() for b in micro_batches):\n'
                "        raise ValueError(",
                "test_a_micro_batch_without_targets_still_belongs_to_the_window", "only a window with no target at all"),
    WrongAnswer("a micro-batch without targets skipped", KATA, FORWARD,
                'if not (batch["labels"][:, 1:] != IGNORE_INDEX).any():\n            continue\n        ' + FORWARD,
                "test_a_micro_batch_without_targets_still_belongs_to_the_window", "one forward and one backward per micro-batch"),
    WrongAnswer("micro-batch mean times its share of the window", KATA, LOSS,
                'loss = causal_lm_loss(logits, batch["labels"], reduction="mean") * int((batch["labels"][:, 1:] != '
                "IGNORE_INDEX).sum()) / tokens",
                "test_a_micro_batch_without_targets_still_belongs_to_the_window", "raised ValueError"),
    WrongAnswer("zero_grad only when the scaler stepped", KATA, TAIL, "    if stepped:\n        scheduler.step()\n    " + ZERO,
                "test_a_step_the_scaler_skips_steps_no_scheduler", "whether or not the step ran"),
    # the red team's round 2: every path of the loss, odd models and optimizers, what a scaler alone decides
    WrongAnswer("the mean not upcast", KATA, UPCAST, "",
                "test_loss_upcasts_half_precision_and_keeps_float32_and_float64", "upcast with logits.float()",
                more_edits=((CROSS_ENTROPY, CROSS_ENTROPY.replace("(predictions[keep],", "((predictions.float() if reduction == "
                             '"sum" and predictions.dtype in (torch.float16, torch.bfloat16) else predictions)[keep],')),)),
    WrongAnswer("the mean divided by a float64 count", KATA, "return total / count", "return total / count.double()",
                "test_loss_upcasts_half_precision_and_keeps_float32_and_float64", "divide by the count as an int"),
    WrongAnswer("labels of another batch broadcast by a gather", KATA, SHAPES,
                "if logits.dim() != 3 or labels.dim() != 2 or labels.shape[1] != logits.shape[1]:",
                "test_loss_rejects_bad_arguments", "a gather would broadcast them",
                more_edits=((CROSS_ENTROPY, "total = -(logits[:, :-1].log_softmax(-1).gather(-1, labels[:, 1:].clamp(min=0)"
                             ".unsqueeze(-1)).squeeze(-1) * (labels[:, 1:] != IGNORE_INDEX)).sum()"),)),
    WrongAnswer("AdamW's fused kernel", KATA, ADAMW, ADAMW.replace("weight_decay)", "weight_decay, fused=True)"),
                "test_optimizer_has_the_learning_rate_no_decay_and_adams_betas", "'fused': True"),
    WrongAnswer("a parameter tied between two modules held twice", KATA, TRAINABLE,
                "trainable = [p for module in model.modules() for p in module.parameters(recurse=False) if p.requires_grad]",
                "test_optimizer_holds_exactly_the_trainable_parameters_in_one_group", "holds a parameter twice"),
    WrongAnswer("labels equal to the pad id dropped", KATA, "    micro_batches = list(micro_batches)\n",
                '    micro_batches = [{**b, "labels": b["labels"].masked_fill(b["input_ids"] == 0, IGNORE_INDEX)} for b in micro_batches]\n',
                "test_gradients_weight_every_token_of_the_window_equally", "equal to the pad id"),
    WrongAnswer("a non-finite guard without a scaler", KATA, OPTIMIZER_STEP,
                f"    if scaler is None:\n        stepped = {FINITE}\n        if stepped:\n            optimizer.step()\n",
                "test_without_a_scaler_every_window_steps", "only a scaler skips steps"),
    WrongAnswer("model.forward called", KATA, FORWARD, FORWARD.replace("model(", "model.forward("),
                "test_the_model_is_called_with_the_attention_mask", "skips the model's hooks"),
    WrongAnswer("a skipped step told by a non-finite norm", KATA, SKIP,
                "stepped = bool(torch.isfinite(nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])))",
                "test_the_scaler_alone_tells_a_skipped_step", "not by the gradients' norm"),
    WrongAnswer("fp16 autocast entered whenever a scaler is given", KATA, FORWARD,
                'with torch.autocast("cpu", dtype=torch.float16) if scaler is not None else contextlib.nullcontext():\n'
                '            outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])',
                "test_a_gradscaler_is_unscaled_before_clipping", "float16 autocast",
                more_edits=(("import math\n", "import contextlib\nimport math\n"),)),
    WrongAnswer("the parameters to clip cached on the optimizer", KATA, HELD,
                'parameters = optimizer.__dict__.setdefault("clip_parameters", [p for g in optimizer.param_groups for p in g["params"]])',
                "test_clipping_takes_the_groups_the_optimizer_holds_at_each_call", "an earlier call"),
    WrongAnswer("the loss of a half-precision model not upcast", KATA, LOSS,
                'loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), reduction="sum") / tokens',
                "test_steps_a_half_precision_model_without_autocast", "compute the loss in float32"),
    WrongAnswer("the summed loss backpropagated under fp16, divided after", KATA, LOSS,
                'loss = causal_lm_loss(logits, batch["labels"], reduction="sum")',
                "test_steps_under_autocast", "the GradScaler skipped the step",
                more_edits=(("total += loss.item()", "total += loss.item() / tokens"),
                            (HELD, HELD + "\n    for parameter in parameters:\n        parameter.grad.div_(tokens)"))),
    # round 3 (red3/w-ft): clipping sentences that held only without a GradScaler
    WrongAnswer("a skipped step told by clip_grad_norm_'s norm when clipping", KATA, CLIP_BLOCK,
                "    norm = None\n    if max_grad_norm is not None:\n        norm = " + CLIP + "\n",
                "test_the_scaler_alone_tells_a_skipped_step", "max_grad_norm 1.0",
                more_edits=((SKIP, "stepped = scaler.get_scale() >= scale if norm is None else bool(torch.isfinite(norm))"),)),
    WrongAnswer("max_grad_norm 0.0 taken as off under a GradScaler", KATA, "    if max_grad_norm is not None:\n",
                "    if (max_grad_norm is not None) if scaler is None else max_grad_norm:\n",
                "test_max_grad_norm_zero_clips_every_gradient_to_zero", "under a GradScaler"),
    WrongAnswer("clipped over the model's trainable parameters under a GradScaler", KATA, CLIP,
                "nn.utils.clip_grad_norm_(parameters if scaler is None else [p for p in model.parameters() if p.requires_grad], "
                "max_grad_norm)",
                "test_clipping_takes_one_norm_over_every_group_of_the_optimizer", "the model's trainable parameters"),
    # The stub's signature: a caller passes its parameters by name or by position (one check for them all).
    WrongAnswer("cosine_with_warmup with transformers' parameter names", KATA, 'optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int\n)',
                'optimizer: torch.optim.Optimizer, num_warmup_steps: int, num_training_steps: int\n)',
                "test_takes_the_stubs_parameters", 'has no parameter `warmup_steps` (renamed `num_warmup_steps`?)',
                more_edits=(("then 0.\"\"\"\n", "then 0.\"\"\"\n    warmup_steps, total_steps = num_warmup_steps, num_training_steps\n"),)),
    WrongAnswer("train_step's scaler keyword-only", KATA, '    max_grad_norm: float | None = 1.0,\n    scaler:',
                '    max_grad_norm: float | None = 1.0,\n    *,\n    scaler:',
                "test_takes_the_stubs_parameters", 'takes `scaler` keyword-only'),
    WrongAnswer("make_optimizer's lr without a default", KATA, 'def make_optimizer(model: nn.Module, lr: float = 3e-4,',
                'def make_optimizer(model: nn.Module, lr: float,',
                "test_takes_the_stubs_parameters", 'gives `lr` no default'),
    # round 4 (red4/w-ft): clipping written out (a None gradient, an fp16 norm), a loss weighted by a mask, model.zero_grad
    WrongAnswer("hand-written clip reads every parameter's gradient", KATA, CLIP,
                "norm = sum(p.grad.double().pow(2).sum() for p in parameters).sqrt()\n        "
                "for p in parameters:\n            p.grad.mul_(min(1.0, max_grad_norm / (norm.item() + 1e-6)))",
                "test_gradients_are_clipped_once_to_max_grad_norm_over_all_parameters", "skip None gradients"),
    WrongAnswer("hand-written clip squares the gradients in their dtype", KATA, CLIP,
                "grads = [p.grad for p in parameters if p.grad is not None]\n        "
                "norm = torch.stack([(g * g).sum() for g in grads]).sum().sqrt()\n        "
                "for g in grads:\n            g.mul_((max_grad_norm / (norm + 1e-6)).clamp(max=1.0).to(g.dtype))",
                "test_steps_a_half_precision_model_without_autocast", "the norm overflowed"),
    WrongAnswer("the token losses weighted by a 0/1 mask", KATA, CROSS_ENTROPY,
                "picked = predictions.log_softmax(-1).gather(-1, "
                "targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)\n    total = -(picked * keep.to(picked.dtype)).sum()",
                "test_loss_ignores_the_logits_of_positions_without_a_target", "never weight it by 0"),
    WrongAnswer("the model's gradients zeroed, not the optimizer's", KATA, ZERO, "    model.zero_grad(set_to_none=True)\n",
                "test_one_optimizer_step_then_one_scheduler_step_and_the_gradients_zeroed",
                "model.zero_grad() misses"),
    # round 7 (red7/w-c): the structural checks under a GradScaler too, the optimizer's parameter outside the model,
    # a make_optimizer that holds another, -inf logits without targets, the mean's shape errors, a non-finite loss
    WrongAnswer("the scheduler stepped before scaler.step(optimizer)", KATA, "        scaler.step(optimizer)  #",
                '        if not sum(v.item() for v in scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values()):\n'
                "            scheduler.step()\n        scaler.step(optimizer)  #",
                "test_learning_rates_of_a_whole_schedule", "under a GradScaler",
                more_edits=((SKIP, "stepped = False"),)),
    WrongAnswer("one backward for the whole window under a GradScaler", KATA, BACKWARD,
                "if scaler is None:\n            loss.backward()\n        else:\n"
                "            window = loss if window is None else window + loss",
                "test_one_forward_and_one_backward_per_micro_batch", "backpropagated once",
                more_edits=(("    total = 0.0\n", "    total = 0.0\n    window = None\n"),
                            ("    parameters = [parameter for group",
                             "    if scaler is not None:\n        scaler.scale(window).backward()\n    parameters = [parameter for group"))),
    WrongAnswer("clipped over the optimizer's parameters found through the model", KATA, HELD,
                'held = {id(p) for group in optimizer.param_groups for p in group["params"]}\n'
                "    parameters = [p for p in model.parameters() if id(p) in held]",
                "test_gradients_are_clipped_once_to_max_grad_norm_over_all_parameters", "outside the model"),
    WrongAnswer("backward into the model's parameters only", KATA, BACKWARD,
                "(loss if scaler is None else scaler.scale(loss)).backward(inputs=[p for p in model.parameters() if p.requires_grad])",
                "test_one_optimizer_step_then_one_scheduler_step_and_the_gradients_zeroed", "outside the model"),
    WrongAnswer("make_optimizer holds a parameter of no model", KATA, ADAMW,
                ADAMW.replace("AdamW(trainable,", "AdamW(trainable + [nn.Parameter(torch.zeros(1))],"),
                "test_optimizer_holds_exactly_the_trainable_parameters_in_one_group", "not the model's"),
    WrongAnswer("no target: the logits times 0", KATA, SUM_RETURN,
                SUM_RETURN.replace("return total", "return total if (targets != IGNORE_INDEX).any() else predictions.sum() * 0"),
                "test_loss_without_targets_is_zero_summed_and_refused_as_a_mean", "-inf times 0"),
    WrongAnswer("no target: the logits times 0, in a window", KATA, SUM_RETURN,
                SUM_RETURN.replace("return total", "return total if (targets != IGNORE_INDEX).any() else predictions.sum() * 0"),
                "test_a_micro_batch_without_targets_still_belongs_to_the_window", "-inf times 0"),
    WrongAnswer("the mean's shapes not checked", KATA, SHAPES,
                'if reduction == "sum" and (logits.dim() != 3 or labels.shape != logits.shape[:2]):',
                "test_loss_rejects_bad_arguments", "reduction='mean'"),
    WrongAnswer("a non-finite loss skipped without a scaler", KATA, OPTIMIZER_STEP,
                "    if scaler is None:\n        stepped = math.isfinite(total)\n        if stepped:\n            optimizer.step()\n",
                "test_without_a_scaler_every_window_steps", "only a scaler skips steps"),
    # round 8, red team c
    WrongAnswer("lr=0.0 taken as unset", KATA, ADAMW, ADAMW.replace("lr=lr,", "lr=lr or 3e-4,"),
                "test_optimizer_has_the_learning_rate_no_decay_and_adams_betas", "lr=0.0 was taken as unset"),
    WrongAnswer("log-sum-exp without the max subtracted", KATA, CROSS_ENTROPY,
                "keep = targets != IGNORE_INDEX\n    chosen, picked = predictions[keep], targets[keep]\n"
                "    total = (chosen.exp().sum(-1).log() - chosen.gather(-1, picked[:, None]).squeeze(-1)).sum()",
                "test_loss_of_large_logits_is_finite", "subtract the max"),
    WrongAnswer("the count held in the logits' dtype", KATA, LOSS,
                'loss = causal_lm_loss(logits, batch["labels"], reduction="sum") / torch.tensor(tokens, dtype=logits.dtype)',
                "test_steps_a_half_precision_model_without_autocast", "not exact in"),
    WrongAnswer("the clip's norm a dot product under autocast", KATA, CLIP,
                "grads = [p.grad for p in parameters if p.grad is not None]\n"
                "        norm = torch.stack([g.flatten().float() @ g.flatten().float() for g in grads]).sum().sqrt()\n"
                "        for g in grads:\n"
                "            g.mul_(torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0).to(g.dtype))",
                "test_steps_under_autocast", "the norm was computed in torch.bfloat16"),
    WrongAnswer("summed loss backpropagated, gradients divided after", KATA, LOSS,
                'loss = causal_lm_loss(logits, batch["labels"], reduction="sum") / (tokens if scaler is not None else 1)',
                "test_steps_a_half_precision_model_without_autocast", "divided after",
                more_edits=((HELD, HELD + "\n    if scaler is None:\n        for p in parameters:\n"
                             "            if p.grad is not None:\n                p.grad.div_(tokens)"),
                            ("total += loss.item()", "total += loss.item() / (1 if scaler is not None else tokens)"))),
    # round 10, red team e
    WrongAnswer("labels masked where attention_mask is 0", KATA, LOSS,
                'loss = causal_lm_loss(logits, batch["labels"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX), '
                'reduction="sum") / tokens',
                "test_gradients_weight_every_token_of_the_window_equally", "attention_mask is 0",
                more_edits=((TOKENS, 'tokens = sum(int((batch["labels"].masked_fill(batch["attention_mask"] == 0, '
                             'IGNORE_INDEX)[:, 1:] != IGNORE_INDEX).sum()) for batch in micro_batches)'),)),
    WrongAnswer("reduction checked by substring", KATA, REDUCTION, '    if not reduction or reduction not in "summean":\n',
                "test_loss_rejects_bad_arguments", "reduction='um'"),
    WrongAnswer("parameters deduplicated by data_ptr()", KATA, TRAINABLE,
                "trainable = list({p.data_ptr(): p for p in model.parameters() if p.requires_grad}.values())",
                "test_optimizer_holds_exactly_the_trainable_parameters_in_one_group", "told apart by identity"),
    WrongAnswer("an empty batch refused by the loss", KATA, SHAPES,
                "if logits.dim() != 3 or labels.shape != logits.shape[:2] or logits.shape[0] == 0:",
                "test_loss_without_targets_is_zero_summed_and_refused_as_a_mean", "raised ValueError"),
    WrongAnswer("half precision upcast to the default dtype", KATA, UPCAST,
                UPCAST.replace("logits.float()", "logits.to(torch.get_default_dtype())"),
                "test_loss_upcasts_half_precision_and_keeps_float32_and_float64", "set_default_dtype(torch.float64)"),
    WrongAnswer("a micro-batch without rows skipped", KATA, "    for batch in micro_batches:\n",
                '    for batch in (b for b in micro_batches if b["input_ids"].numel()):\n',
                "test_a_micro_batch_without_targets_still_belongs_to_the_window", "(no rows)"),
    WrongAnswer("the parameters to clip cached until a group is added", KATA, HELD,
                'cached = getattr(optimizer, "_clip_cache", None)\n'
                "    if cached is None or cached[0] != len(optimizer.param_groups):\n"
                '        cached = (len(optimizer.param_groups), [p for group in optimizer.param_groups for p in group["params"]])\n'
                "        optimizer._clip_cache = cached\n    parameters = cached[1]",
                "test_clipping_takes_the_groups_the_optimizer_holds_at_each_call", "a parameter may have been added"),
    # round 13, red team B
    WrongAnswer("the token losses picked by a one-hot over the vocabulary", KATA, CROSS_ENTROPY,
                "keep = targets != IGNORE_INDEX\n    log_probs = predictions[keep].log_softmax(-1)\n"
                "    total = -(log_probs * F.one_hot(targets[keep], predictions.shape[-1]).to(log_probs.dtype)).sum()",
                "test_loss_takes_a_vocabulary_mask_at_the_targets", "one-hot",
                more_edits=((LOSS, 'half = logits.dtype in (torch.float16, torch.bfloat16)\n        '
                             'loss = F.cross_entropy((logits.float() if half else logits)[:, :-1].flatten(0, 1), '
                             'batch["labels"][:, 1:].flatten(), reduction="sum") / tokens'),)),
    WrongAnswer("columns past every row's last attended token trimmed", KATA, FORWARD,
                'attended = batch["attention_mask"].bool().any(0).nonzero()\n'
                "        if attended.numel():  # a speed-up: the columns past it are padding\n"
                "            batch = {key: value[:, : int(attended.max()) + 1] for key, value in batch.items()}\n        " + FORWARD,
                "test_gradients_weight_every_token_of_the_window_equally", "trimmed as padding"),
    WrongAnswer("reduction=None taken as the default sum", KATA, REDUCTION,
                '    if reduction is None:  # no reduction given: the default\n        reduction = "sum"\n' + REDUCTION,
                "test_loss_rejects_bad_arguments", "reduction=None"),
    WrongAnswer("a skipped step judged against the first call's scale", KATA, "        scale = scaler.get_scale()\n",
                '        scale = scaler.__dict__.setdefault("first_scale", scaler.get_scale())  # the scale the run started from\n',
                "test_steps_after_a_skipped_one_step_the_scheduler", "the scale before this window's update()"),
    WrongAnswer("labels equal to the model's config.pad_token_id masked", KATA, "    micro_batches = list(micro_batches)\n",
                '    pad = getattr(getattr(model, "config", None), "pad_token_id", None)\n'
                "    micro_batches = list(micro_batches) if pad is None else [\n"
                '        {**b, "labels": b["labels"].masked_fill(b["labels"] == pad, IGNORE_INDEX)} for b in micro_batches]\n',
                "test_gradients_weight_every_token_of_the_window_equally", "equal to the pad id"),
    WrongAnswer("a transformers model's own mean loss times the micro-batch's targets", KATA, FORWARD,
                'outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], '
                '**({"labels": batch["labels"]} if hasattr(model, "config") else {}))',
                "test_a_micro_batch_without_targets_still_belongs_to_the_window", "NaN",
                more_edits=((LOSS, 'loss = (outputs.loss * int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) if hasattr(model, "config") '
                             'else causal_lm_loss(logits, batch["labels"], reduction="sum")) / tokens'),)),
    WrongAnswer("micro-batches of one shape merged into one forward", KATA, "    total = 0.0\n",
                "    merged: dict[tuple, list] = {}  # a speed-up: one forward for the micro-batches of one shape\n"
                '    for batch in micro_batches:\n        merged.setdefault(tuple(batch["input_ids"].shape[1:]), []).append(batch)\n'
                "    micro_batches = [{key: torch.cat([b[key] for b in group]) for key in group[0]} for group in merged.values()]\n"
                "    total = 0.0\n",
                "test_one_forward_and_one_backward_per_micro_batch", "merged"),
    WrongAnswer("the trainable list memoized per model", KATA, TRAINABLE,
                'trainable = model.__dict__.setdefault("_trainable", [p for p in model.parameters() if p.requires_grad])',
                "test_optimizer_reads_the_trainable_parameters_at_each_call", "an earlier call"),
    # round 14, red team B
    WrongAnswer("a skipped step told by the scaler's private _scale", KATA, "        scale = scaler.get_scale()\n",
                "        scale = scaler._scale.item()  # the scale tensor that scale() set up\n",
                "test_a_disabled_gradscaler_steps_as_without_one", "public methods",
                more_edits=((SKIP, "stepped = scaler._scale.item() >= scale"),)),
    WrongAnswer("a skipped step told by the scaler's private found-inf", KATA,
                "        scaler.step(optimizer)  # skipped when the gradients hold inf or NaN\n",
                "        found = any(v.item() for v in scaler._found_inf_per_device(optimizer).values())  # after unscale_\n"
                "        scaler.step(optimizer)  # skipped when the gradients hold inf or NaN\n",
                "test_a_disabled_gradscaler_steps_as_without_one", "none of an enabled one's internals",
                more_edits=((SKIP, "stepped = not found"),)),
    WrongAnswer("the mean's count summed in the logits' own dtype", KATA, "    count = keep.sum()\n",
                "    count = keep.to(given_dtype).sum()  # the targets' count, in the dtype the logits came in\n",
                "test_loss_upcasts_half_precision_and_keeps_float32_and_float64", "the targets were counted in",
                more_edits=((UPCAST, "    given_dtype = logits.dtype\n" + UPCAST),)),
    # round 15, red team B
    WrongAnswer("the window's count summed in a tensor of the default dtype", KATA, TOKENS,
                "tokens = torch.zeros(())  # the window's target count\n"
                "    for batch in micro_batches:\n"
                "        tokens += (batch[\"labels\"][:, 1:] != IGNORE_INDEX).sum()",
                "test_steps_the_same_under_any_default_dtype", "a count held in the default dtype"),
    WrongAnswer("a hand-written clip whose squares are summed into torch.tensor(0.0)", KATA, CLIP,
                "grads = [p.grad for p in parameters if p.grad is not None]\n"
                "        squares = torch.tensor(0.0)\n"
                "        for g in grads:\n"
                "            squares += g.detach().float().pow(2).sum()\n"
                "        coef = max_grad_norm / (squares.sqrt() + 1e-6)\n"
                "        if coef < 1:\n"
                "            for g in grads:\n"
                "                g.mul_(coef.to(g.dtype))",
                "test_steps_the_same_under_any_default_dtype", "the norm was taken in the default dtype"),
    WrongAnswer("a skipped step told from the unscaled gradients, in the clipping block", KATA,
                "    if scaler is not None:\n        " + UNSCALE + "\n" + CLIP_BLOCK,
                "    skipped = False\n"
                "    if max_grad_norm is not None:\n"
                "        if scaler is not None:\n"
                "            scaler.unscale_(optimizer)\n"
                "            skipped = scaler.is_enabled() and not " + FINITE + "\n"
                "        " + CLIP + "\n",
                "test_a_step_the_scaler_skips_steps_no_scheduler", "max_grad_norm None",
                more_edits=((SKIP, "stepped = not skipped"),)),
    WrongAnswer("a hand-written clip that stacks the per-parameter norms", KATA, CLIP,
                "grads = [p.grad for p in parameters if p.grad is not None]\n"
                "        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().double()) "
                "for g in grads]))\n"
                "        coef = (max_grad_norm / (norm + 1e-6)).clamp(max=1.0)\n"
                "        for g in grads:\n"
                "            g.mul_(coef.to(g.dtype))",
                "test_an_optimizer_whose_parameters_get_no_gradient_still_steps", "no parameter of the optimizer"),
    WrongAnswer("the schedule's lr_lambda reads module state", KATA,
                "    def factor(step: int) -> float:\n",
                "    _SCHEDULE.update(warmup=warmup_steps, total=total_steps)  # a module-level lr_lambda pickles\n"
                "    return torch.optim.lr_scheduler.LambdaLR(optimizer, _factor)\n\n"
                "    def factor(step: int) -> float:\n",
                "test_schedule_warms_up_linearly_then_falls_as_a_cosine_to_zero", "at every step since: each schedule keeps its own",
                more_edits=(("\n\ndef train_step(",
                             "\n\n_SCHEDULE = {\"warmup\": 0, \"total\": 1}\n\n\n"
                             "def _factor(step: int) -> float:\n"
                             "    warmup_steps, total_steps = _SCHEDULE[\"warmup\"], _SCHEDULE[\"total\"]\n"
                             "    if step < warmup_steps:\n        return step / warmup_steps\n"
                             "    if step > total_steps:\n        return 0.0\n"
                             "    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)\n"
                             "    return 0.5 * (1.0 + math.cos(math.pi * progress))\n\n\n"
                             "def train_step("),)),
    WrongAnswer("the mean's count made a float by * 1.0", KATA, "    return total / count\n",
                "    return total / (count * 1.0)  # a float count for the division\n",
                "test_loss_upcasts_half_precision_and_keeps_float32_and_float64", "a tensor of the default dtype"),
    # round 16, red team B
    WrongAnswer("train_step's token losses weighted by the target mask", KATA, LOSS,
                "shifted = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))  # vectorized\n"
                "        shifted_labels = batch[\"labels\"][:, 1:]\n"
                "        token_losses = F.cross_entropy(shifted.flatten(0, 1), shifted_labels.clamp_min(0).flatten(), "
                "reduction=\"none\")\n"
                "        loss = (token_losses * (shifted_labels != IGNORE_INDEX).flatten()).sum() / tokens",
                "test_returns_a_finite_loss_when_the_logits_overflow_at_padding", "inf x 0"),
    # round 17, red team B
    WrongAnswer("the schedule built before its steps are checked", KATA,
                "    " + CHECK_STEPS + "\n        raise ValueError(\n"
                '            f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, got warmup_steps={warmup_steps}, "\n'
                '            f"total_steps={total_steps}"\n        )\n\n',
                "",
                "test_schedule_refuses_impossible_steps", "changed the optimizer's param_groups",
                more_edits=(("    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)\n",
                             "    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)\n"
                             "    if warmup_steps < 0 or total_steps < 1 or warmup_steps > total_steps:\n"
                             '        raise ValueError(f"bad steps: warmup_steps={warmup_steps}, total_steps={total_steps}")\n'
                             "    return scheduler\n"),)),
    WrongAnswer("each micro-batch's target count cached per labels tensor", KATA, TOKENS,
                'tokens = sum(_targets(batch["labels"]) for batch in micro_batches)',
                "test_a_window_edited_in_place_is_read_afresh_and_non_contiguous_logits_taken", "before the labels were edited",
                more_edits=(("import math\n", "import math\nimport weakref\n"),
                            ("\n\ndef train_step(",
                             "\n\n_COUNTS: dict[int, int] = {}\n\n\n"
                             "def _targets(labels: torch.Tensor) -> int:\n"
                             "    key = id(labels)  # counted once per tensor, forgotten when it dies\n"
                             "    if key not in _COUNTS:\n"
                             "        _COUNTS[key] = int((labels[:, 1:] != IGNORE_INDEX).sum())\n"
                             "        weakref.finalize(labels, _COUNTS.pop, key, None)\n"
                             "    return _COUNTS[key]\n\n\n"
                             "def train_step("),)),
    WrongAnswer("the summed loss over a flat .view() of the logits", KATA, SHIFT,
                'if reduction == "sum":  # a flat view of every position, the last one\'s rows dropped\n'
                "        flat = logits.view(-1, logits.shape[-1])\n"
                "        rows = torch.arange(flat.shape[0], device=flat.device).view(labels.shape)[:, :-1].reshape(-1)\n"
                "        flat_targets = labels[:, 1:].reshape(-1).to(flat.device)\n"
                "        chosen = flat_targets != IGNORE_INDEX\n"
                '        return F.cross_entropy(flat[rows[chosen]], flat_targets[chosen], reduction="sum")\n'
                "    " + SHIFT,
                "test_loss_gradient_reaches_the_logits", "needs contiguous memory"),
    # round 18, red team B: sizes far below real ones (rows, vocabularies, windows), one grad mode
    WrongAnswer("a chunked loss sum drops the last partial chunk", KATA,
                'total = F.cross_entropy(predictions[keep], targets[keep], reduction="sum")',
                "rows, chosen, chunk = predictions[keep], targets[keep], 16384  # memory: chunks of target rows\n"
                "    if len(chosen) > chunk:\n"
                "        total = sum(F.cross_entropy(rows[i : i + chunk], chosen[i : i + chunk], reduction=\"sum\")\n"
                "                    for i in range(0, len(chosen) - chunk + 1, chunk))\n"
                "    else:\n"
                '        total = F.cross_entropy(rows, chosen, reduction="sum")',
                "test_loss_is_the_shifted_cross_entropy_of_the_targets", "dropped the last, partial one"),
    WrongAnswer("a large vocabulary's half logits not upcast", KATA, UPCAST,
                UPCAST.replace("torch.bfloat16):", "torch.bfloat16) and logits.shape[-1] < 32768:"),
                "test_loss_upcasts_half_precision_and_keeps_float32_and_float64", "vocab 128256"),
    WrongAnswer("half logits not upcast under no_grad", KATA, UPCAST,
                UPCAST.replace("torch.bfloat16):", "torch.bfloat16) and torch.is_grad_enabled():"),
                "test_loss_upcasts_half_precision_and_keeps_float32_and_float64", "under torch.no_grad()"),
    WrongAnswer("the window cut to 8 accumulation steps", KATA, "micro_batches = list(micro_batches)",
                "micro_batches = list(micro_batches)[:8]  # the run's gradient-accumulation steps",
                "test_one_forward_and_one_backward_per_micro_batch", "the window was cut"),
    # round 19, red team B: sizes and counts (weight_decay > 0, vocabularies and logits of real models)
    WrongAnswer("a no-decay group for 1-D parameters when weight_decay > 0", KATA, "    return " + ADAMW,
                "    if weight_decay > 0:  # nanoGPT's habit: biases and norms not decayed\n"
                '        groups = [{"params": [p for p in trainable if p.dim() >= 2]},\n'
                '                  {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]\n'
                '        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999), eps=1e-8,\n'
                "                                 weight_decay=weight_decay)\n"
                "    return " + ADAMW,
                "test_optimizer_holds_exactly_the_trainable_parameters_in_one_group", "no decay split"),
    WrongAnswer("frozen parameters listed by name when weight_decay > 0", KATA, "    return " + ADAMW,
                "    if weight_decay > 0:  # nanoGPT's listing by name, the requires_grad filter forgotten\n"
                "        named = dict(model.named_parameters())\n"
                "        return torch.optim.AdamW(list(named.values()), lr=lr, betas=(0.9, 0.999), eps=1e-8,\n"
                "                                 weight_decay=weight_decay)\n"
                "    return " + ADAMW,
                "test_optimizer_holds_exactly_the_trainable_parameters_in_one_group", "weight_decay > 0 path"),
    WrongAnswer("a loss summed in chunks of 2**20 logits drops the last partial chunk", KATA,
                'total = F.cross_entropy(predictions[keep], targets[keep], reduction="sum")',
                "rows, chosen = predictions[keep], targets[keep]\n"
                "    chunk = max(1, 2**20 // rows.shape[-1])  # memory: about 2**20 logits at a time\n"
                "    if len(chosen) > chunk:\n"
                "        total = sum(F.cross_entropy(rows[i * chunk : (i + 1) * chunk], chosen[i * chunk : (i + 1) * chunk],\n"
                '                                    reduction="sum") for i in range(len(chosen) // chunk))\n'
                "    else:\n"
                '        total = F.cross_entropy(rows, chosen, reduction="sum")',
                "test_loss_of_millions_of_logits_keeps_its_value_and_dtype", "dropped the last, partial one"),
    WrongAnswer("half logits not upcast past 2**22 logits", KATA, UPCAST,
                UPCAST.replace("torch.bfloat16):", "torch.bfloat16) and logits.numel() <= 2**22:"),
                "test_loss_of_millions_of_logits_keeps_its_value_and_dtype", "upcast half precision to float32 however"),
    WrongAnswer("float64 logits rounded to float32 past 2**22 logits", KATA, UPCAST,
                UPCAST + "    elif logits.dtype == torch.float64 and logits.numel() > 2**22:  # memory: 8 bytes a logit\n"
                "        logits = logits.float()\n",
                "test_loss_of_millions_of_logits_keeps_its_value_and_dtype", "keep float64 however many logits"),
    WrongAnswer("a real vocabulary's token losses weighted by the target mask", KATA, CROSS_ENTROPY,
                "if predictions.shape[-1] >= 32_000:  # no copy of predictions[keep]: weight by the mask\n"
                "        picked = predictions.gather(-1, targets.clamp(min=0)[:, None])[:, 0]\n"
                "        total = ((torch.logsumexp(predictions, -1) - picked) * keep).sum()\n"
                "    else:\n"
                "        " + CROSS_ENTROPY,
                "test_loss_ignores_the_logits_of_positions_without_a_target", "at any vocabulary"),
    WrongAnswer("a real vocabulary's mean over no target not refused", KATA, MEAN_CHECK,
                MEAN_CHECK.replace("if count == 0:", "if count == 0 and logits.shape[-1] < 32_000:  # the fused path"),
                "test_loss_without_targets_is_zero_summed_and_refused_as_a_mean",
                "(2, 4, 32000), reduction='mean') with no target"),
]  # fmt: skip
