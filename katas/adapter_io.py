"""Kata `adapter_io`: ship only the adapter. Save LoRA factors in peft's file format and load them back.

Grade it with: pytest grader/test_adapter_io.py (needs transformers, peft and safetensors, and a working
LoRALinear; GPT-2's layers need gpt2_conv1d's LoRAConv1D too)
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .gpt2_conv1d import LoRAConv1D  # noqa: F401  (GPT-2's adapters, where that kata is solved)
from .lora_linear import LoRALinear  # noqa: F401  (use the package's own LoRALinear)


def save_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write the LoRA adapters of ``model`` to ``directory`` in peft's format; return ``Path(directory)``.

    The directory is created if needed (parents too). It receives two files, as peft's
    ``PeftModel.save_pretrained`` writes them, so that ``PeftModel.from_pretrained(base_model, directory)``
    rebuilds the adapted model:

    ``adapter_config.json``, a JSON object with at least:
        - ``"peft_type": "LORA"``, ``"r"`` and ``"lora_alpha"`` (alpha as given, not the scaling alpha / r),
          ``"bias": "none"``;
        - ``"target_modules"``: what makes peft adapt exactly the adapted layers, no other. A list of names
          matches a module when its qualified name equals an entry or ends with ``"." + entry``: the layers'
          qualified names usually say it (a short name like ``"q_proj"`` may match modules that were not
          adapted), but not always: an adapted top-level ``"0"`` beside an unadapted ``"1.0"`` (the entry ``"0"``
          matches ``"1.0"`` too, whatever its kind: peft adapts an ``nn.Embedding`` or a ``Conv1D`` it names as
          well). Where no list says it, write a str, a regular expression that peft matches against the whole
          qualified name (``re.fullmatch``), such as the escaped names joined by ``|``;
        - ``"fan_in_fan_out"``: true when the adapted layers are ``LoRAConv1D`` (a weight stored (in, out)),
          false for ``LoRALinear`` (with both kinds, as on GPT-2 with its ``lm_head``, peft corrects it per layer:
          either is fine);
        - no ``"task_type"`` (or ``null``): peft would wrap a plain ``nn.Module`` in a class for that task,
          such as ``"CAUSAL_LM"``, which it cannot serve.

    ``adapter_model.safetensors`` (safetensors, metadata ``{"format": "pt"}``) holding, for every adapted layer
    of qualified name ``NAME`` (every ``LoRALinear``, and every ``LoRAConv1D`` where that kata is solved,
    subclasses of them included):
        - ``base_model.model.NAME.lora_A.weight``: A, shape (r, in);
        - ``base_model.model.NAME.lora_B.weight``: B, shape (out, r);
      whatever the layout the layer stores them in, in the factors' own dtype, and nothing else: no base
      weight, no adapter name (peft's in-memory keys hold ``.default.``, its files do not).

    Raises:
        ValueError: the model holds no adapter, or its adapters disagree on ``r`` or ``alpha`` (the file has one
            of each).
    """
    raise NotImplementedError("kata adapter_io: write save_adapter (spec in its docstring)")


def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Put the adapters saved in ``directory`` on ``model`` (a plain model, in place) and return ``model``.

    It reads what ``save_adapter`` writes and what ``PeftModel.save_pretrained`` writes (its config holds about
    40 keys: ignore those you do not need, ``task_type`` among them: peft's files of a causal LM say
    ``"CAUSAL_LM"``, and load like any; with an adapted ``lm_head`` peft saves its weight too unless given
    ``save_embedding_layers=False``, and such a file holds a tensor the model has no place for):
        - The layers to adapt are the ``nn.Linear`` (and ``Conv1D``) modules, subclasses of them included, that
          the config's ``target_modules`` names as peft matches them: a list matches a qualified name equal to an
          entry or ending with ``"." + entry`` (an entry is a name, not a pattern: its dots are dots); a string
          is a regular expression the whole name must match (``re.fullmatch``).
        - Each becomes this package's ``LoRALinear`` (or ``LoRAConv1D``) with the config's ``r`` and
          ``lora_alpha`` (and ``lora_dropout``, 0 when absent), and receives the file's A and B, whatever the layout
          the package's own layers store them in; afterwards the model computes what peft's model does, and the
          factors train as those layers' factors do, ready to train on (peft's ``from_pretrained`` freezes them
          unless given ``is_trainable=True``: do not). Each new layer takes the train or eval mode of the layer it
          replaces; every other module keeps its own (no ``model.eval()``).

    A config with a non-empty ``alpha_pattern`` or ``rank_pattern`` (peft's per-layer lora_alpha or r, keyed by
    patterns of layer names) is either honoured (those layers get their own alpha or r, as peft gives them) or
    refused with ValueError: both are fine, loading it with the one ``r`` and ``lora_alpha`` is not.

    Strict, never a silent partial load; the whole file is checked before the model is touched, so a failed
    load leaves the model as it was (same modules, same weights, same train or eval modes).

    Raises:
        ValueError: ``peft_type`` is not ``"LORA"``; an option it does not support is on (``use_dora`` or
            ``use_rslora`` true, a ``bias`` other than ``"none"``, an ``alpha_pattern`` or ``rank_pattern`` not
            honoured); nothing in the model matches the targets; the
            file holds a tensor the model has no place for; an adapted layer has no tensor in the file; a tensor's
            shape does not fit (the message names the key and both shapes).
    """
    raise NotImplementedError("kata adapter_io: write load_adapter (spec in its docstring)")
