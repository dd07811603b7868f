"""The stubs' signatures, kept here so that they survive a learner editing katas/ in place, and the check that an
implementation takes them: callers (the checks, the capstone, a learner's own code) pass the stub's parameters by
name or by position, as the stub allows, so a renamed parameter, one made keyword-only or a dropped default breaks
them even when every value is right.

Per kata, every public top-level function and class constructor of the stub, and the public methods of its classes
that a caller calls by name (not forward, nn.Module hooks or autograd.Function methods, which torch calls
positionally), written as ``str(inspect.signature(...))`` without annotations (methods without ``self``).
tests/test_stubs.py proves the table equals the shipped stubs.
"""

from __future__ import annotations

import ast
import inspect
from typing import Any

from lora_kata.grading.implementation import Implementation

SIGNATURES: dict[str, dict[str, str]] = {
    "lora_linear": {"LoRALinear": "(base, r=8, alpha=16.0, dropout=0.0)"},
    "apply_lora": {"apply_lora": "(model, target_modules=('q_proj', 'v_proj'), r=8, alpha=16.0, dropout=0.0)"},
    "merge_weights": {"merge_weights": "(model)"},
    "masked_prompt": {
        "format_prompt": "(instruction, input='')",
        "build_example": "(tokenizer, instruction, input, output, max_length=None)",
        "collate": "(examples, pad_token_id)",
    },
    "fused_lora": {"FusedLoRALinear": "(base, r=8, alpha=16.0)"},  # FusedLoRAFunction: torch calls it (apply)
    "gpt2_conv1d": {
        "LoRAConv1D": "(base, r=8, alpha=16.0, dropout=0.0)",
        "apply_lora_gpt2": "(model, target_modules=('c_attn',), r=8, alpha=16.0, dropout=0.0)",
        "merge_gpt2": "(model)",
    },
    "adapter_io": {"save_adapter": "(model, directory)", "load_adapter": "(model, directory)"},
    "multi_adapter": {
        "MultiLoRALinear": "(base)",
        "MultiLoRALinear.add_adapter": "(name, r=8, alpha=16.0, dropout=0.0)",
        "MultiLoRALinear.set_adapter": "(name)",
        "MultiLoRALinear.disable_adapters": "()",
        "MultiLoRALinear.merge": "(safe=False)",
        "MultiLoRALinear.unmerge": "()",
        "MultiLoRALinear.delete_adapter": "(name)",
    },
    "nf4": {
        "nf4_code_book": "()",
        "quantize_nf4": "(weight, block_size=64)",
        "dequantize_nf4": "(packed, absmax, shape, dtype=torch.float32, block_size=64)",
        "QuantizedAbsmax": "(codes, scales, offset, block_size)",
        "double_quantize": "(absmax, block_size=256)",
        "dequantize_absmax": "(quantized)",
    },
    "qlora": {
        "NF4Linear": "(base)",
        "QLoRALinear": "(base, r=8, alpha=16.0, dropout=0.0)",
        "apply_qlora": "(model, target_modules=('q_proj', 'v_proj'), r=8, alpha=16.0, dropout=0.0, skip=('lm_head',))",
    },
    "train_step": {
        "causal_lm_loss": "(logits, labels, reduction='sum')",
        "make_optimizer": "(model, lr=0.0003, weight_decay=0.0)",
        "cosine_with_warmup": "(optimizer, warmup_steps, total_steps)",
        "train_step": "(model, micro_batches, optimizer, scheduler, max_grad_norm=1.0, scaler=None)",
    },
}

P = inspect.Parameter
POSITIONAL = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)


class Source(str):
    """A default as source text: its repr is the text itself, so a signature of them reads as it was written."""

    def __repr__(self) -> str:
        return str(self)


def parsed(text: str) -> inspect.Signature:
    """The signature ``text`` writes (``"(base, r=8, *, scaler=None)"``: positional-or-keyword and keyword-only
    parameters), each default kept as its source text, never evaluated."""
    arguments = ast.parse(f"def stub{text}: ...").body[0].args  # type: ignore[attr-defined]
    assert not (arguments.posonlyargs or arguments.vararg or arguments.kwarg), f"grader bug: unsupported {text}"

    def parameter(argument: ast.arg, kind: Any, default: ast.expr | None) -> inspect.Parameter:
        return P(argument.arg, kind, default=P.empty if default is None else Source(ast.unparse(default)))

    defaults = [None] * (len(arguments.args) - len(arguments.defaults)) + arguments.defaults
    return inspect.Signature(
        [parameter(a, P.POSITIONAL_OR_KEYWORD, d) for a, d in zip(arguments.args, defaults, strict=True)]
        + [parameter(a, P.KEYWORD_ONLY, d) for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)]
    )


def signature_of(definition: Any, method: str = "") -> inspect.Signature:
    """How a caller sees ``definition`` (a function or a class: its constructor), or its ``method`` called on an
    instance (without ``self``); decorators are followed through ``__wrapped__``. Raises AssertionError with the
    verdict when there is no such method or no signature to read."""
    target, label = definition, getattr(definition, "__name__", type(definition).__name__)
    if method:
        target = getattr(definition, method, None)
        assert callable(target), f"{label} has no method {method} (the stub's): callers call it by name"
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError) as error:
        label += f".{method}" if method else ""
        raise AssertionError(f"{label}: no signature to read ({error}): define it with def, as the stub does") from None
    static = inspect.getattr_static(definition, method, None) if method else None
    parameters = list(signature.parameters.values())
    if method and not isinstance(static, (staticmethod, classmethod)) and parameters[:1]:
        parameters = parameters[1:] if parameters[0].kind in POSITIONAL else parameters  # self, unless in *args
    return signature.replace(parameters=parameters)


def plain(signature: inspect.Signature) -> str:
    """``signature`` as a caller reads it: no annotations, and a default shown only when its repr is short and
    the same in every run (no memory address)."""

    def default(parameter: inspect.Parameter) -> Any:
        shown = repr(parameter.default)
        return parameter.default if len(shown) <= 40 and " at 0x" not in shown else Source("...")

    return str(
        signature.replace(
            parameters=[
                p.replace(annotation=P.empty, default=p.default if p.default is P.empty else default(p))
                for p in signature.parameters.values()
            ],
            return_annotation=inspect.Signature.empty,
        )
    )


def mismatch(stub: inspect.Signature, implementation: inspect.Signature) -> str | None:
    """Why a call the ``stub`` allows may fail on the ``implementation`` (the first reason), or None."""
    parameters = list(implementation.parameters.values())
    positional = [p for p in parameters if p.kind in POSITIONAL]
    by_name = {p.name: p for p in parameters if p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)}
    takes_args = any(p.kind is P.VAR_POSITIONAL for p in parameters)
    takes_kwargs = any(p.kind is P.VAR_KEYWORD for p in parameters)
    for index, wanted in enumerate(stub.parameters.values()):
        got = by_name.get(wanted.name)
        if got is None:
            if takes_kwargs and (wanted.kind is P.KEYWORD_ONLY or (takes_args and index >= len(positional))):
                continue  # *args and **kwargs take it by position and by name
            if takes_kwargs and wanted.kind in POSITIONAL:
                return (
                    f"takes `{wanted.name}` only through **kwargs: a caller may pass it by position, as the stub allows"
                )
            there = positional[index].name if wanted.kind in POSITIONAL and index < len(positional) else ""
            renamed = f"renamed `{there}`?" if there and there not in stub.parameters else "renamed?"
            return (
                f"has no parameter `{wanted.name}` ({renamed}): keep the stub's names, a caller passes them by keyword"
            )
        if got.kind is P.POSITIONAL_ONLY:
            return f"takes `{got.name}` positional-only (before /): a caller may pass it by keyword, as the stub allows"
        if wanted.kind in POSITIONAL and got.kind is P.KEYWORD_ONLY:
            return f"takes `{got.name}` keyword-only (after *): a caller may pass it by position, as the stub allows"
        if wanted.kind in POSITIONAL and positional.index(got) != index:
            return (
                f"takes `{got.name}` as positional parameter {positional.index(got) + 1}, the stub as {index + 1}: "
                "keep the stub's order, a caller may pass them by position"
            )
        if wanted.default is not P.empty and got.default is P.empty:
            return f"gives `{got.name}` no default, the stub does ({wanted}): a caller may leave it out"
    required = [p.name for p in by_name.values() if p.name not in stub.parameters and p.default is P.empty]
    if required:
        return (
            f"requires `{required[0]}`, which the stub has not: give it a default, a caller following the stub omits it"
        )
    return None


def expect_the_stubs_signatures(implementation: Implementation, kata: str) -> None:
    """Fail the check unless every definition of the stub of ``kata`` takes its parameters under the stub's names,
    in its order for the positional ones, of a kind allowing every call the stub allows, with a default where the
    stub has one (the default values are the behaviour checks' to grade); extra parameters need a default,
    ``*args`` and ``**kwargs`` may stand in for the stub's."""
    for name, text in SIGNATURES[kata].items():
        owner, _, method = name.partition(".")
        measured = signature_of(implementation.attribute(kata, owner), method)
        problem = mismatch(parsed(text), measured)
        assert problem is None, f"{name}{text}: the implementation's signature {plain(measured)} {problem}"
