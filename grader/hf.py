"""The real stack as an oracle: tiny transformers models built from configs in memory (nothing is ever
downloaded), peft models with the same factors as the learner's, and reading a LoRA layer's factors
whatever their layout.

The check modules that use these import transformers, peft and safetensors when they are collected
(``grader/oracles.py``); the functions here only name what they build from them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

from grader.probes import output, trainable

VOCAB, POSITIONS, WIDTH = 64, 16, 16


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers' and peft's warnings (deprecations, fan_in_fan_out notes): they are no verdict."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def tiny_gpt2(n_layer: int = 2, seed: int = 0, classifier: bool = False) -> nn.Module:
    """A GPT2LMHeadModel of width 16 in eval mode: c_attn Conv1D 16 -> 48, attn.c_proj 16 -> 16 (square),
    mlp.c_fc 16 -> 64, mlp.c_proj 64 -> 16, and lm_head tied to wte. With ``classifier``, the same layers under
    a GPT2ForSequenceClassification: no lm_head, and ``score``, an nn.Linear 16 -> 3 without bias, on top."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB, n_positions=POSITIONS, n_embd=WIDTH, n_layer=n_layer, n_head=2, bos_token_id=0,
        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    if classifier:
        config.num_labels, config.pad_token_id = 3, 0  # a pad token: batches of more than one sequence
    torch.manual_seed(seed)
    with quiet():
        model = (GPT2ForSequenceClassification if classifier else GPT2LMHeadModel)(config)
    return model.eval()


OWN_CLASSES: dict[type, type] = {}  # a layer class: a model's own subclass of it, made once


def own_class(layer_class: type) -> type:
    """A model's own subclass of ``layer_class`` (transformers' Conv1D, nn.Linear, a LoRA layer), adding nothing."""
    if layer_class not in OWN_CLASSES:
        OWN_CLASSES[layer_class] = type(f"Model{layer_class.__name__}", (layer_class,), {"__module__": "a_model"})
    return OWN_CLASSES[layer_class]


def with_own_layer_classes(model: nn.Module) -> nn.Module:
    """``model``, its every Conv1D and nn.Linear made, in place, an instance of ``own_class`` of its class, as in
    models that define their own layers: the same weights and outputs; peft adapts them, a test of
    ``type(m) is Conv1D`` skips them."""
    from transformers.pytorch_utils import Conv1D

    for module in model.modules():
        if type(module) in (Conv1D, nn.Linear):
            module.__class__ = own_class(type(module))
    return model


def own_layers(model: nn.Module) -> list[str]:
    """The qualified names of the layers of ``model`` of its own classes (``own_class``)."""
    return [name for name, module in model.named_modules() if type(module) in OWN_CLASSES.values()]


def tiny_llama(seed: int = 0) -> nn.Module:
    """A LlamaForCausalLM of width 16: q/o 16 -> 16, k/v 16 -> 8 (one key-value head), gate/up 16 -> 24,
    down 24 -> 16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=POSITIONS, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    with quiet():
        model = LlamaForCausalLM(config)
    return model.eval()


def token_ids(batch: int = 2, seq: int = 7) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(7))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The eval-mode logits of a causal LM (the model is left in eval mode)."""
    model.eval()
    with torch.no_grad(), quiet():
        return model(input_ids=ids).logits


def peft_model(model: nn.Module, targets: Iterable[str] | str, r: int, alpha: float, **options: Any) -> nn.Module:
    """peft's ``get_peft_model`` on ``model`` (changed in place) with LoRA on ``targets``."""
    from peft import LoraConfig, get_peft_model

    targets = targets if isinstance(targets, str) else list(targets)  # a str is a regex to peft
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, **options)
    with quiet():
        return get_peft_model(model, config)


def peft_loaded(fresh: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """``PeftModel.from_pretrained(fresh, directory)``, after failing the check with what it raised."""
    from peft import PeftModel

    try:
        with quiet():
            return PeftModel.from_pretrained(fresh, str(directory))
    except Exception as error:
        text = str(error).strip() or type(error).__name__
        first_line = text.splitlines()[0][:200]
        cause = "see the spec of adapter_config.json and the tensor names"
        if "size mismatch" in text:
            first_line = next(line.strip() for line in text.splitlines() if "size mismatch" in line)[:300]
            cause = "a tensor has the wrong shape: lora_A is (r, in), lora_B (out, r)"
        elif "prepare_inputs_for_generation" in first_line or "task_type" in first_line.lower():
            cause = "the config's task_type makes peft wrap a plain model in a task class: leave task_type out"
        elif "is not supported" in first_line or "not found in the base model" in first_line:
            cause = "target_modules makes peft adapt other layers than the adapted ones: list their qualified names"
        pytest.fail(
            f"PeftModel.from_pretrained(base, directory) raised {type(error).__name__}: {first_line}: {cause}",
            pytrace=False,
        )


def peft_layers(peft: nn.Module) -> dict[str, nn.Module]:
    """peft's LoRA layers by their name in the plain model (without ``base_model.model.``)."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return {name.removeprefix(prefix): m for name, m in peft.named_modules() if isinstance(m, LoraLayer)}


def base_of(layer: nn.Module) -> nn.Module:
    """The frozen layer a LoRA layer adapts: its first submodule with a weight and nothing trainable."""
    for module in layer.modules():
        weight = getattr(module, "weight", None)
        if module is not layer and isinstance(weight, torch.Tensor) and not trainable(module):
            return module
    raise AssertionError(f"the {type(layer).__name__} holds no frozen base layer: keep the base as a submodule")


def dimensions(base: nn.Module) -> tuple[int, int]:
    """(in, out) of an nn.Linear, or of a Conv1D (weight (in, out))."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    return tuple(base.weight.shape)


def measured_update(layer: nn.Module, base: nn.Module) -> torch.Tensor:
    """The (out, in) matrix the layer adds to its base's map, read off its eval-mode outputs, in float64."""
    in_features, _ = dimensions(base)
    was_training = layer.training
    layer.eval()
    try:
        with torch.no_grad():
            eye = torch.eye(in_features, dtype=base.weight.dtype, device=base.weight.device)
            return (output(layer, eye).double() - base(eye).double()).T
    finally:
        layer.train(was_training)


def outside(layer: nn.Module, base: nn.Module) -> list[nn.Parameter]:
    """The parameters of a LoRA layer that are not its base's: its factors, trainable or not."""
    held = {id(parameter) for parameter in base.parameters()}
    return [parameter for parameter in layer.parameters() if id(parameter) not in held]


def lora_factors(
    layer: nn.Module, r: int, scaling: float, base: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's A (r, in) and B (out, r), as views of its own trainable tensors, whatever their layout; or,
    given the ``base`` it adapts, of its tensors outside that base, trainable or not.

    The shapes say which tensor is which unless some dimensions are equal (a square layer); then the
    reading whose ``scaling * B @ A`` is the update the layer computes wins (give the factors random values
    first: with B zero every reading fits).
    """
    tensors = trainable(layer) if base is None else outside(layer, base)
    base = base_of(layer) if base is None else base
    in_features, out_features = dimensions(base)
    shapes = [tuple(t.shape) for t in tensors]
    readings = []
    if len(tensors) == 2:
        for first, second in itertools.permutations(tensors):
            for A in (first, first.T):
                for B in (second, second.T):
                    if A.shape == (r, in_features) and B.shape == (out_features, r):
                        readings.append((A, B))
    assert readings, (
        f"expected two trainable factors shaped (r, in)=({r}, {in_features}) and (out, r)=({out_features}, {r}) "
        f"(either orientation), measured trainable shapes {shapes}: is the base frozen, with no extra parameters?"
    )
    if len(readings) == 1:
        return readings[0]
    update = measured_update(layer, base)
    return min(readings, key=lambda AB: (update - scaling * AB[1].double() @ AB[0].double()).abs().max().item())


def randomize(module: nn.Module, std: float = 0.1) -> None:
    """Random values for every trainable tensor under ``module``, as training would give (B stops being zero)."""
    with torch.no_grad():
        for tensor in trainable(module):
            tensor.normal_(0.0, std)


def copy_factors_into_peft(adapted: dict[str, nn.Module], peft: nn.Module, r: int, alpha: float) -> None:
    """Give each of peft's LoRA layers the factors of the learner's layer of the same name."""
    layers = peft_layers(peft)
    assert sorted(layers) == sorted(adapted), f"grader bug: peft adapted {sorted(layers)}, not {sorted(adapted)}"
    with torch.no_grad():
        for name, layer in adapted.items():
            A, B = lora_factors(layer, r, alpha / r)
            layers[name].lora_A["default"].weight.copy_(A)
            layers[name].lora_B["default"].weight.copy_(B)
