"""Checks of the `adapter_io` kata: save_adapter and load_adapter, graded for real: peft's
``PeftModel.from_pretrained`` loads the learner's files, and ``load_adapter`` loads what peft's
``save_pretrained`` writes, on a tiny LlamaForCausalLM, the toy transformer and a tiny GPT-2 (of a model's own
layer classes: subclasses of Conv1D and nn.Linear)."""

from __future__ import annotations

import copy
import json
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from grader.hf import (
    base_of,
    dimensions,
    logits,
    lora_factors,
    measured_update,
    outside,
    own_class,
    own_layers,
    peft_layers,
    peft_loaded,
    peft_model,
    quiet,
    randomize,
    tiny_gpt2,
    tiny_llama,
    token_ids,
    with_own_layer_classes,
)
from grader.models import CLASSES, WIDTH, Gated, ToyTransformer, Wrapped, matching_linears
from grader.oracles import requires
from grader.probes import FOREIGN_DEFAULT, describe, dtype_name, max_difference, output, trainable
from grader.signatures import expect_the_stubs_signatures


@pytest.mark.points(1)
def test_takes_the_stubs_parameters(implementation, LoRALinear, save_adapter, tmp_path):
    """Callers pass the stub's parameters by name or by position: each definition takes them as the stub does."""
    expect_the_stubs_signatures(implementation, "adapter_io")
    # Then a call into the kata: an unimplemented stub, its signatures right, scores nothing here.
    save_adapter(nn.Sequential(LoRALinear(nn.Linear(4, 3))), tmp_path)


SUBJECT = "save_adapter"  # the definition a failing check points at
pytestmark = requires(
    "transformers:LlamaForCausalLM", "transformers:GPT2LMHeadModel", "peft:PeftModel", "safetensors.torch"
)

R, ALPHA = 4, 6.5  # alpha not whole: peft's config keeps 6.5, an int() of it is a wrong scaling
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOY_TARGETS = ("q_proj", "v_proj", "fc1", "fc10", "head")  # router.q_proj is a LayerNorm: peft cannot adapt it
GPT2_TARGETS = ("c_attn", "c_proj", "lm_head")  # both kinds of layer: Conv1D and the tied nn.Linear lm_head
KINDS = ["llama", "toy", "gpt2"]
CONFIG, WEIGHTS, PREFIX = "adapter_config.json", "adapter_model.safetensors", "base_model.model."
SAVE_EMBEDDINGS = False  # peft saves a tied lm_head's weight beside its factors unless told not to: adapters only


# Adapted; "1.0" is not, though the list entry "0" matches it (it ends with ".0"); nor is "x_y", which "x.y" read as
# a regex (its dot unescaped) fullmatches.
NESTED_TARGETS = ["0", "1.1", "x.y", "heads.q+k", "heads.o[1]"]
# GPT-2 partly adapted: one c_attn and one attn.c_proj of its two blocks, the other block's c_attn and every mlp.c_proj
# not: the short names ["c_attn", "c_proj"] of peft's GPT-2 examples would adapt those too.
GPT2_SOME_TARGETS = ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_proj"]
# The adapted nn.Linear NAME of each, beside an unadapted PARENT.NAME of another kind peft adapts (a Conv1D, an
# nn.Embedding, an nn.Conv2d, torch's nn.Conv1d: any kind, not only those the stub names), or of a kind it refuses (a
# container, whose own layers the entry does not match; a ReLU, which holds no parameter), or beside a sibling whose
# name it starts ("fc" and "fc_stack.fc": a test of startswith without the dot takes that for a module of the
# adapter), or named like an adapter's own parts ("base" beside "enc.base": a name says nothing about lying inside an
# adapter): the list entry NAME matches it too. kind: (NAME, PARENT).
COLLISIONS = {
    "beside a Conv1D": ("0", "1"),
    "beside an Embedding": ("embed", "1"),
    "beside a Conv2d": ("conv", "1"),
    "beside a Conv1d": ("seq", "1"),
    "beside a container": ("0", "1"),
    "beside a sibling it prefixes": ("fc", "fc_stack"),
    "beside a ReLU (no parameters)": ("0", "1"),
    "named like an adapter's base": ("base", "enc"),
    "named like an adapter's lora_A": ("lora_A", "enc"),
}
COLLIDING = {  # the unadapted module of each
    "beside a Conv1D": lambda: __import__("transformers.pytorch_utils", fromlist=["Conv1D"]).Conv1D(12, 8),
    "beside an Embedding": lambda: nn.Embedding(10, 8),
    "beside a Conv2d": lambda: nn.Conv2d(3, 3, 1),
    "beside a Conv1d": lambda: nn.Conv1d(3, 3, 1),
    "beside a container": lambda: nn.ModuleDict({"proj": nn.Linear(3, 3)}),  # no weight of its own: still a module
    "beside a sibling it prefixes": lambda: nn.Linear(8, 12),
    "beside a ReLU (no parameters)": nn.ReLU,  # no parameter, no weight: still a module peft refuses to adapt
    "named like an adapter's base": lambda: nn.Linear(8, 12),  # "enc.base": a layer of the model, no adapter's part
    "named like an adapter's lora_A": lambda: nn.Linear(8, 12),
}
# An adapted layer of a dotted name beside an unadapted nn.Linear whose name ends with "." + that name, one and two
# levels down: the list entry "enc.0" matches "dec.enc.0" too, which a test of the other modules' last name parts
# ("0") against the entries, or of their names less the first part, misses. kind: (adapted, unadapted).
DOTTED = {
    "a dotted name beside it one level down": ("enc.0", "dec.enc.0"),
    "a twice-dotted name beside it two levels down": ("enc.blk.0", "dec.mid.enc.blk.0"),
}


# An adapted top-level "gate" beside an adapted mlp.up_proj (the zoo's Gated: an nn.Linear subclass) that holds an
# unadapted layer "gate" of its own: in the adapted model it lies inside the adapter ("mlp.up_proj.base.gate"), in the
# plain model peft sees it is "mlp.up_proj.gate", which the list entry "gate" matches.
HOLDING = "an adapted layer holding a layer named like another adapted one"
HOLDING_TARGETS = ["gate", "mlp.up_proj"]
# GPT-2 whose only adapter is its nn.Linear lm_head: the adapted layers' kind says fan_in_fan_out (false), not
# the model's.
LM_HEAD_ONLY = "gpt2, only the nn.Linear lm_head"
# A toy at the depth of a real model (Llama-2 7B's 32 blocks): block numbers of two digits, layers.0 beside layers.10,
# 20 and 30, which a dotted entry "0.attn.q_proj" tested with a bare endswith also takes.
DEEP, REAL_DEPTH = "toy, 32 blocks", 32


def tree(paths: list[str]) -> nn.Module:
    """Nested nn.ModuleDicts holding an nn.Linear(8, 12) at each dotted path."""
    root = nn.ModuleDict()
    for path in paths:
        *parents, leaf = path.split(".")
        node = root
        for part in parents:
            if part not in node:
                node[part] = nn.ModuleDict()
            node = node[part]
        node[leaf] = nn.Linear(8, 12)
    return root


# Layers named like an adapter's parts and peft's keys (PARTS): a top-level "base" beside "enc.base" and the zoo's
# Wrapped as "wrapped" (its "base" a container, "lora_A" and "dropout.lora_B" layers), ".lora_" inside a layer's name
# ("enc.lora_head": its keys hold ".lora_" twice), a targeted layer with a layer of its own (the zoo's Gated as "mlp":
# "mlp.up_proj.gate"), "dec.enc.q" beside "enc.q" and a ReLU "enc.act". Adapted for save_adapter: PARTS_ADAPTED.
PARTS_ADAPTED = ["base", "enc.lora_head", "mlp.up_proj", "wrapped.lora_A", "wrapped.dropout.lora_B"]
PART_TARGETS = {  # peft's files for it, as load_adapter reads them: a list, and regexes without a leading ".*\."
    "a list of names like adapter parts": ["enc.base", "enc.lora_head", "lora_A", "lora_B", "up_proj"],
    # re.fullmatch anchors it at the start: re.search also takes enc.base, dec.enc.q and wrapped.base's layers; a
    # name prefixed with base_model.model. (as the file's keys spell it) matches none
    "a regex anchored at the start": r"base|enc\.(q|lora_head)|wrapped\.(lora_A|dropout\.lora_B)|mlp\.up_proj",
}


def named_like_adapter_parts() -> nn.Module:
    """The model of PARTS_ADAPTED and PART_TARGETS, (..., WIDTH) to (..., CLASSES)."""
    enc = OrderedDict(lora_head=nn.Linear(WIDTH, WIDTH), act=nn.ReLU(), base=nn.Linear(WIDTH, WIDTH))
    enc |= {"q": nn.Linear(WIDTH, WIDTH)}
    dec = nn.Sequential(OrderedDict(enc=nn.Sequential(OrderedDict(q=nn.Linear(WIDTH, WIDTH)))))
    layers = OrderedDict(base=nn.Linear(WIDTH, WIDTH), enc=nn.Sequential(enc), dec=dec, wrapped=Wrapped())
    return nn.Sequential(layers | {"back": nn.Linear(CLASSES, WIDTH), "mlp": Gated()})


def plain(kind: str) -> nn.Module:
    if kind == "parts":
        torch.manual_seed(0)
        return named_like_adapter_parts().eval()
    if kind == "nested":  # top-level layer "0" beside an unadapted "1.0": no list of names says "0" alone
        torch.manual_seed(0)
        layers = {"0": nn.Linear(8, 12), "1": nn.Sequential(nn.Linear(12, 12), nn.Linear(12, 6))}
        layers |= {"x_y": nn.Linear(6, 6), "x": nn.ModuleDict({"y": nn.Linear(6, 6)})}  # "x.y" beside "x_y"
        # names with regex metacharacters beyond the dot, each beside the name the unescaped regex fullmatches:
        # "heads.q+k" (q+ is one q or more) matches "heads.qk", "heads.o[1]" (a class) matches "heads.o1"
        heads = {name: nn.Linear(6, 6) for name in ("q+k", "qk", "o[1]", "o1")}
        layers |= {"heads": nn.ModuleDict(heads)}
        return nn.Sequential(OrderedDict(layers)).eval()
    if kind in COLLISIONS:  # an adapted nn.Linear beside an unadapted layer of another kind peft adapts too
        torch.manual_seed(0)
        other = COLLIDING[kind]()
        name, parent = COLLISIONS[kind]
        return nn.Sequential(OrderedDict({name: nn.Linear(8, 12), parent: nn.ModuleDict({name: other})})).eval()
    if kind in DOTTED:
        torch.manual_seed(0)
        return tree(list(DOTTED[kind])).eval()
    if kind == HOLDING:
        torch.manual_seed(0)
        return nn.Sequential(OrderedDict(gate=nn.Linear(WIDTH, WIDTH), mlp=Gated())).eval()
    if kind == DEEP:
        torch.manual_seed(0)
        return ToyTransformer(depth=REAL_DEPTH).eval()
    if kind == "llama":
        return tiny_llama()
    if kind.startswith("gpt2"):  # a subclass of a kind of layer is one: peft adapts them, a type(m) test skips them
        return with_own_layer_classes(tiny_gpt2())
    torch.manual_seed(0)
    return ToyTransformer().eval()


def target_names(kind: str, model: nn.Module) -> list[str]:
    """The qualified names of the layers the checks adapt (on GPT-2, Conv1D layers and an nn.Linear)."""
    if kind == "toy":
        return matching_linears(model, TOY_TARGETS)
    if kind == "nested":
        return list(NESTED_TARGETS)
    if kind == "parts":
        return list(PARTS_ADAPTED)
    if kind == "gpt2, some layers":
        return list(GPT2_SOME_TARGETS)
    if kind == HOLDING:
        return list(HOLDING_TARGETS)
    if kind == LM_HEAD_ONLY:
        return ["lm_head"]
    if kind in COLLISIONS:
        return [COLLISIONS[kind][0]]
    if kind in DOTTED:
        return [DOTTED[kind][0]]
    suffixes = LLAMA_TARGETS if kind == "llama" else GPT2_TARGETS
    return [name for name, _ in model.named_modules() if name.rpartition(".")[2] in suffixes]


def outputs(kind: str, model: nn.Module) -> torch.Tensor:
    if kind not in ("toy", "parts", DEEP):
        return logits(model, token_ids())
    model.eval()
    with torch.no_grad(), quiet():
        x = torch.randn(2, 3, WIDTH, generator=torch.Generator().manual_seed(7))  # the same batch every call
        return model(x.to(next(model.parameters()).dtype))


def wrap(model: nn.Module, names: list[str], make) -> dict[str, nn.Module]:
    """The grader's own adapters: ``make(layer)`` put in place of each named layer."""
    layers = {}
    for name in names:
        parent, _, child = name.rpartition(".")
        layers[name] = make(model.get_submodule(name))
        setattr(model.get_submodule(parent), child, layers[name])
    return layers


def adapted_model(
    kind: str, LoRALinear, LoRAConv1D, dtype=torch.float32, names: list[str] | None = None, r: int = R, alpha=ALPHA
):
    """(the model adapted with the learner's layers and trained-looking factors, a copy of the plain model,
    the adapters by name): a LoRALinear on each named nn.Linear, a LoRAConv1D on each named Conv1D, of rank ``r``
    and ``alpha``; ``names`` defaults to ``target_names``."""
    model = plain(kind).to(dtype).requires_grad_(False)  # only the factors get random values below
    fresh = copy.deepcopy(model)
    names = target_names(kind, model) if names is None else names
    layers = {}
    for name in names:  # on GPT-2, past the first block, the model's own subclasses of the adapters: each is one
        make = LoRALinear if isinstance(model.get_submodule(name), nn.Linear) else LoRAConv1D
        make = own_class(make) if kind.startswith("gpt2") and not name.startswith("transformer.h.0.") else make
        layers |= wrap(model, [name], lambda layer, make=make: make(layer, r=r, alpha=alpha))
    randomize(model, std=0.2)
    return model, fresh, layers


def saved(save_adapter, model: nn.Module, directory: Path) -> Path:
    """save_adapter's files, after failing the check unless both are there."""
    save_adapter(model, directory)
    absent = [name for name in (CONFIG, WEIGHTS) if not (directory / name).is_file()]
    assert not absent, f"save_adapter(model, directory) wrote no {' and no '.join(absent)} in the directory"
    return directory


def read_config(directory: Path) -> dict:
    try:
        config = json.loads((directory / CONFIG).read_text())
    except json.JSONDecodeError as error:
        pytest.fail(f"{CONFIG} is not JSON ({error}): write it with json.dump", pytrace=False)
    assert isinstance(config, dict), f"{CONFIG} holds {describe(config)}, expected a JSON object"
    return config


def read_tensors(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(directory / WEIGHTS), "pt") as file:
            return {key: file.get_tensor(key) for key in file.keys()}, file.metadata()  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        pytest.fail(f"{WEIGHTS} is not a safetensors file ({error}): write it with safetensors.torch.save_file")


# peft's files of a causal LM, as users save them (LoraConfig(task_type="CAUSAL_LM") on a hub model), hold keys a
# plain nn.Module's do not: "task_type": "CAUSAL_LM", "base_model_name_or_path", "auto_mapping": null. The model is
# the same plain model: load_adapter reads them as any (only save_adapter leaves task_type out). kind: the hub name.
CAUSAL_LMS = {"llama": "meta-llama/Llama-3.2-1B", "gpt2": "openai-community/gpt2"}


def peft_saved(kind: str, directory: Path, r: int = R, alpha=ALPHA, **options) -> tuple[nn.Module, nn.Module]:
    """(a plain model, a peft model of a copy of it with random factors of rank ``r`` and lora_alpha ``alpha``, whose
    save_pretrained wrote ``directory``)."""
    model = plain(kind)
    names = options.pop("target_modules", None) or target_names(kind, model)
    copied = copy.deepcopy(model)
    if kind in CAUSAL_LMS:  # as users save a causal LM's adapter: its task_type, the base model's hub name
        options = {"task_type": "CAUSAL_LM", **options}
        copied.name_or_path = copied.config._name_or_path = CAUSAL_LMS[kind]
    oracle = peft_model(copied, names, r, alpha, fan_in_fan_out=kind.startswith("gpt2"), **options)
    randomize(oracle, std=0.2)
    with quiet():
        oracle.save_pretrained(str(directory), save_embedding_layers=SAVE_EMBEDDINGS)
    return model, oracle


def loaded(load_adapter, model: nn.Module, directory: Path | str, what: str = "") -> nn.Module:
    """``load_adapter(model, directory)``, failing the check with a verdict when it refuses the files, trips over
    an optional key or over a directory given as a str; ``what`` says whose files these are, when they are valid
    ones."""
    try:
        returned = load_adapter(model, directory)
    except TypeError as error:
        if not (what and isinstance(directory, str)):
            raise
        pytest.fail(
            f"{what}: load_adapter(model, {directory!r}) raised TypeError ({str(error)[:120]}): the directory may be "
            "a str or an os.PathLike; make it a Path first (Path(directory))",
            pytrace=False,
        )
    except ValueError as error:
        if not what:
            raise
        hint = ""
        if own_layers(model):
            hint = (
                ": its layers are the model's own subclasses of Conv1D and nn.Linear, which peft adapts: are they told "
                "by isinstance, not type(m)?"
            )
        hint = hint or refused_for_the_task_type(load_adapter, model, directory, error)
        pytest.fail(f"{what}: load_adapter refused them ({str(error)[:160]}){hint}", pytrace=False)
    except KeyError as error:
        if not what:
            raise
        pytest.fail(
            f"{what}: load_adapter raised KeyError {error}: a config may leave out optional keys; "
            "read them with config.get and peft's defaults (lora_dropout 0)",
            pytrace=False,
        )
    assert returned is model, f"load_adapter returned {describe(returned)}, expected the model itself, adapted in place"
    return model


def refused_for_the_task_type(load_adapter, model: nn.Module, directory: Path | str, error: ValueError) -> str:
    """The cause of a refusal of peft's files with a task_type, when it is that key: the same files with task_type
    null load (tried on a copy of the model), or the message names it; else ""."""
    import tempfile

    config = read_config(Path(directory))
    task_type = config.get("task_type")
    if task_type is None:
        return ""
    with tempfile.TemporaryDirectory() as other:
        (Path(other) / WEIGHTS).write_bytes((Path(directory) / WEIGHTS).read_bytes())
        (Path(other) / CONFIG).write_text(json.dumps(config | {"task_type": None, "auto_mapping": None}))
        try:
            load_adapter(copy.deepcopy(model), other)
        except Exception:  # refused for another reason too (or the model was spoilt): only the message may say
            if "task_type" not in str(error) and str(task_type) not in str(error):
                return ""
            else_loads = ""
        else:
            else_loads = ", and loads the same files with task_type null"
    return (
        f": the config says task_type {task_type!r}, as peft writes for a causal LM (LoraConfig(task_type=...)), "
        f"expected it loaded like any{else_loads}: the task_type only names the class peft wraps the model in; the "
        "layers and tensors are the same: ignore it (only save_adapter leaves it out)"
    )


# save_adapter, read by peft.


@pytest.mark.points(3)
@pytest.mark.parametrize("kind", KINDS)
def test_peft_loads_the_saved_adapter_and_computes_the_same(save_adapter, LoRALinear, LoRAConv1D, kind, tmp_path):
    model, fresh, _ = adapted_model(kind, LoRALinear, LoRAConv1D)
    expected, base = outputs(kind, model), outputs(kind, copy.deepcopy(fresh))
    theirs = outputs(kind, peft_loaded(fresh, saved(save_adapter, model, tmp_path)))
    error = max_difference(theirs, expected)
    if error >= 1e-5 and max_difference(theirs, base) < 1e-6:
        cause = (
            "peft loaded no factor (it only warns about missing keys): are the keys "
            "base_model.model.<name>.lora_A.weight, with no adapter name (.default.)?"
        )
    else:
        cause = "are lora_A (r, in) and lora_B (out, r) in the right places, and lora_alpha alpha, not alpha / r?"
    assert error < 1e-5, (
        f"{kind}: PeftModel.from_pretrained on the saved files computes outputs {error:.3g} away from the "
        f"model's: {cause}"
    )


@pytest.mark.points(1)
def test_saves_an_adapter_held_under_two_names(save_adapter, LoRALinear, LoRAConv1D, tmp_path):
    """A block shared across depth (the toy's layers.1 is its layers.0, as ALBERT shares its layers): its adapters
    are held under two names. The files are written (one name's keys, as peft's save_pretrained writes them, or
    both), and peft loads them and computes what the model does."""
    model = plain("toy").requires_grad_(False)
    model.layers[1] = model.layers[0]
    fresh = copy.deepcopy(model)  # the same sharing
    wrap(model, target_names("toy", model), lambda layer: LoRALinear(layer, r=R, alpha=ALPHA))
    randomize(model, std=0.2)
    what = "toy whose layers.1 is its layers.0 (a shared block: each of its adapters under two names)"
    try:
        saved(save_adapter, model, tmp_path)
    except (NotImplementedError, AssertionError):
        raise
    except Exception as error:
        pytest.fail(
            f"{what}: save_adapter raised {type(error).__name__} ({str(error).strip()[:160]}), expected the files: "
            "safetensors refuses two keys over one storage (an adapter's factor under both names): save a copy of "
            "each factor (.clone()), or each adapter under one name",
            pytrace=False,
        )
    error = max_difference(outputs("toy", peft_loaded(fresh, tmp_path)), outputs("toy", model))
    assert error < 1e-5, f"{what}: PeftModel.from_pretrained on the saved files computes outputs {error:.3g} away"


@pytest.mark.points(2)
@pytest.mark.parametrize("kind", KINDS)
def test_saved_keys_and_shapes_are_what_peft_writes(save_adapter, LoRALinear, LoRAConv1D, kind, tmp_path):
    model, fresh, layers = adapted_model(kind, LoRALinear, LoRAConv1D)
    mine, metadata = read_tensors(saved(save_adapter, model, tmp_path / "mine"))
    oracle = peft_model(fresh, list(layers), R, ALPHA, fan_in_fan_out=kind == "gpt2")
    with quiet():
        oracle.save_pretrained(str(tmp_path / "peft"), save_embedding_layers=SAVE_EMBEDDINGS)
    theirs, _ = read_tensors(tmp_path / "peft")
    extra, missing = sorted(mine.keys() - theirs.keys()), sorted(theirs.keys() - mine.keys())
    cause = "each adapted layer NAME gives base_model.model.NAME.lora_A.weight and .lora_B.weight, nothing else"
    if extra and all(".default." in key for key in extra):
        cause = "the adapter name is left in the keys: peft's files have none (.default. is in-memory only)"
    elif extra and all(not key.startswith(PREFIX) for key in extra):
        cause = "the keys lack the prefix base_model.model."
    elif extra and all(not key.endswith((".lora_A.weight", ".lora_B.weight")) for key in extra):
        cause = "the file holds more than the adapters (a base weight?): save the factors only"
    elif missing and {layer_of(key) for key in missing} <= set(own_layers(model)):
        cause = (
            "the missing layers' adapters are the model's own subclasses of LoRALinear and LoRAConv1D: a subclass is "
            "one, tell them by isinstance, not type(m)"
        )
    assert not extra and not missing, (
        f"{kind}: the file's keys differ from peft's save_pretrained for the same adapters: extra {extra[:2]}, "
        f"missing {missing[:2]}: {cause}"
    )
    shapes = {key: (tuple(mine[key].shape), tuple(theirs[key].shape)) for key in theirs}
    wrong = {key: pair for key, pair in shapes.items() if pair[0] != pair[1]}
    assert not wrong, (
        f"{kind}: {len(wrong)} tensors have other shapes than peft's, e.g. {next(iter(wrong))} is "
        f"{next(iter(wrong.values()))[0]}, peft's {next(iter(wrong.values()))[1]}: lora_A is (r, in), lora_B (out, r), "
        "whatever the layout in memory"
    )
    assert metadata == {"format": "pt"}, (
        f"the file's metadata is {metadata}, peft's is {{'format': 'pt'}}: save_file(..., metadata={{'format': 'pt'}})"
    )


FREEZES = {  # which factors still train when the model is saved: all, none, or some (a model frozen after training)
    "trainable": lambda layers: None,
    "frozen after training": lambda layers: [layer.requires_grad_(False) for layer in layers.values()],
    "half of them frozen": lambda layers: [layer.requires_grad_(False) for layer in list(layers.values())[::2]],
}


@pytest.mark.points(2)
@pytest.mark.parametrize("factors", list(FREEZES))
@pytest.mark.parametrize("kind", ["llama", "toy"])
def test_saved_tensors_are_exactly_the_factors(save_adapter, LoRALinear, LoRAConv1D, kind, factors, tmp_path):
    model, _, layers = adapted_model(kind, LoRALinear, LoRAConv1D)
    first = next(iter(layers.values()))
    held = {name: lora_factors(layer, R, ALPHA / R) for name, layer in layers.items()}  # read while they train
    for factor in (p for p in first.parameters() if p.requires_grad and p.dim() == 2):
        factor.data = factor.data.t().contiguous().t()  # the same values, not contiguous: a layout kept transposed
    FREEZES[factors](layers)
    frozen = "" if factors == "trainable" else (
        f" on a model whose factors are {factors} (requires_grad False: an adapter still, its factors the tensors "
        "outside its base; do not find them by requires_grad)"
    )  # fmt: skip
    try:
        tensors, _ = read_tensors(saved(save_adapter, model, tmp_path))
    except ValueError as error:
        if frozen:
            pytest.fail(f"save_adapter raised ValueError ({str(error)[:120]}){frozen}", pytrace=False)
        if "contiguous" not in str(error):
            raise
        pytest.fail(f"save_adapter raised ValueError ({error}) for factors whose storage is not contiguous (a layer "
                    "that keeps them transposed): save .contiguous() copies", pytrace=False)  # fmt: skip
    for name in layers:
        A, B = held[name]
        keys = f"{PREFIX}{name}.lora_A.weight", f"{PREFIX}{name}.lora_B.weight"
        absent = [key for key in keys if key not in tensors]
        assert not absent, (
            f"the file has no {absent[0]}{frozen or ': see test_saved_keys_and_shapes_are_what_peft_writes'}"
        )
        file_A, file_B = (tensors[key] for key in keys)
        for candidate in (B.detach(), B.detach().T):
            if file_A.shape == candidate.shape and torch.equal(file_A, candidate.to(file_A.dtype)):
                pytest.fail(f"{name}: lora_A holds B (or B transposed): A and B swapped", pytrace=False)
        for key, stored, factor in ((keys[0], file_A, A), (keys[1], file_B, B)):
            shapes = f" (shape {tuple(stored.shape)}, expected {tuple(factor.shape)})"
            shapes = shapes if stored.shape != factor.shape else ""
            assert stored.shape == factor.shape and torch.equal(stored, factor.detach()), (
                f"{key} is not the layer's factor{shapes}: "
                "save A (r, in) as lora_A and B (out, r) as lora_B, exactly, not scaled"
            )


@pytest.mark.points(2)
@pytest.mark.parametrize(
    "kind", ["llama", "toy", "nested", "gpt2, some layers", LM_HEAD_ONLY, "parts", HOLDING, *COLLISIONS, *DOTTED]
)
def test_config_says_lora_r_alpha_and_exactly_the_targets(save_adapter, LoRALinear, LoRAConv1D, kind, tmp_path):
    model, fresh, layers = adapted_model(kind, LoRALinear, LoRAConv1D)
    config = read_config(saved(save_adapter, model, tmp_path))
    assert config.get("peft_type") == "LORA", f"peft_type is {config.get('peft_type')!r}, expected 'LORA'"
    assert config.get("r") == R, f"r is {config.get('r')!r} in the config, the adapters have r={R}"
    alpha = config.get("lora_alpha")
    assert alpha == ALPHA, f"lora_alpha is {alpha!r} in the config, expected alpha = {ALPHA:g}" + (
        ": that is the scaling alpha / r; peft computes it from lora_alpha and r" if alpha == ALPHA / R else ""
    )
    bias = f"bias is {config['bias']!r}" if "bias" in config else "the config has no bias key"
    assert config.get("bias") == "none", f'{bias}, expected "bias": "none": no bias trains'
    conv1d = any(isinstance(layer, LoRAConv1D) for layer in layers.values())  # GPT-2's: fan_in_fan_out
    gpt2 = (
        ""
        if conv1d or not kind.startswith("gpt2")
        else " (on a GPT-2 too: the adapted layers' kind says it, not the model's)"
    )
    assert config.get("fan_in_fan_out") is conv1d, (
        f"fan_in_fan_out is {config.get('fan_in_fan_out')!r} for {'Conv1D' if conv1d else 'nn.Linear'} adapters, "
        f"expected {str(conv1d).lower()}{gpt2}"
    )
    assert config.get("task_type") is None, (
        f"task_type is {config.get('task_type')!r}: peft would wrap a plain model in that task's class; leave it out"
    )
    targets = config.get("target_modules")
    assert isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets)), (
        f"target_modules is {describe(targets)}, expected a list of names (or a str, a regex peft fullmatches)"
    )
    if isinstance(targets, list):  # before peft, which adapts a layer wrongly matched and refuses a container
        matched = [(name, module) for name, module in fresh.named_modules()
                   if name not in layers and any(name == t or name.endswith("." + t) for t in targets)]  # fmt: skip
        if matched:
            name, module = matched[0]
            entry = next(t for t in targets if name == t or name.endswith("." + t))
            container = any(True for _ in module.children()) and getattr(module, "weight", None) is None
            prefixed = [layer for layer in layers if name.startswith(layer) and not name.startswith(layer + ".")]
            holders = [layer for layer in layers if name.startswith(layer + ".")]
            dotted = (
                f" (a dotted entry: {name!r} ends with '.' + the whole {entry!r}; compare the whole names' ends, not "
                f"their last parts such as {name.rpartition('.')[2]!r})"
                if "." in entry
                else ""
            )
            cause = (
                f"{entry!r} is no adapted layer's qualified name: list their qualified names"
                if entry not in layers
                else "a list entry also matches every name ending with '.' + entry, a module of any kind, containers "
                "too"
                + dotted
                + (
                    f" ({name!r} only starts with {prefixed[0]!r}: it is no module of that adapter, which "
                    "startswith(name + '.') tells)"
                    if prefixed
                    else ""
                )
                + (
                    f" ({name!r} is a layer the adapted {holders[0]!r} holds of its own, inside the adapter's base: "
                    "the plain model peft sees has it under that name, so count its base's modules too)"
                    if holders
                    else ""
                )
                + ": where no list says exactly the adapted layers, write a str, a regex peft fullmatches (re.escape "
                "each name, join with |)"
            )
            pytest.fail(
                f"target_modules {targets[:4]!r}: the entry {entry!r} also matches the unadapted {name!r} (a "
                f"{type(module).__name__}{', a container' if container else ''}), which peft would adapt or refuse: "
                f"{cause}",
                pytrace=False,
            )
    adapted_by_peft = sorted(peft_layers(peft_loaded(fresh, tmp_path)))
    wrong, missed = sorted(set(adapted_by_peft) - set(layers)), sorted(set(layers) - set(adapted_by_peft))
    shown = targets if isinstance(targets, str) else targets[:4]
    assert not wrong and not missed, (
        f"with target_modules {shown!r} peft adapts {len(adapted_by_peft)} layers, the model had {len(layers)} "
        f"adapters: wrongly {wrong[:2]}, missed {missed[:2]}: "
        + (
            f"a list entry also matches every name ending with '.' + entry ({wrong[0]!r}): where no list says "
            "exactly the adapted layers, write a str, a regex peft fullmatches (re.escape each name, join with |)"
            if wrong and not missed and any(w.endswith("." + t) for w in wrong for t in layers)
            else "a str is a regex: re.escape each name (a '.' unescaped matches any character; '+', '[', '(' and "
            "the other metacharacters too, so an unescaped name may miss itself), join with |"
            if isinstance(targets, str) and wrong
            else "list the adapted layers' qualified names"
        )
    )


# Ranks that are no power of two, with alphas that alpha / r * r does not give back (0.9 / 3 * 3 is 0.8999999999999999,
# 1.7 / 5 * 5 is 1.6999999999999997), and ints that r does not divide: a config written from the scaling, or an alpha
# floor-divided, shows. (kind, r, alpha); GPT-2's LoRAConv1D layers and its nn.Linear lm_head too.
ANY_RANK = {
    "toy, r=3, alpha=0.9": ("toy", 3, 0.9),
    "toy, r=5, alpha=1.7": ("toy", 5, 1.7),
    "toy, r=3, alpha=10 (an int)": ("toy", 3, 10),
    "gpt2, r=3, alpha=0.9": ("gpt2", 3, 0.9),
}


@pytest.mark.points(1)
@pytest.mark.parametrize("case", list(ANY_RANK))
def test_config_says_alpha_as_given_whatever_the_rank(
    save_adapter, load_adapter, LoRALinear, LoRAConv1D, case, tmp_path
):
    """lora_alpha is alpha as given, bit for bit, whatever r: the file and peft rebuild the scaling from it; and
    load_adapter gives the model back computing exactly what the saved one did."""
    kind, r, alpha = ANY_RANK[case]
    model, fresh, _ = adapted_model(kind, LoRALinear, LoRAConv1D, r=r, alpha=alpha)
    config = read_config(saved(save_adapter, model, tmp_path))
    assert config.get("r") == r, f"{case}: r is {config.get('r')!r} in the config, the adapters have r={r}"
    written = config.get("lora_alpha")
    causes = {
        alpha / r * r: f"that is the scaling times r, alpha / r * r, which rounds ({alpha!r} / {r} * {r})",
        alpha / r: "that is the scaling alpha / r; peft computes it from lora_alpha and r",
        alpha // r * r: "that is alpha // r * r: an int alpha floor-divided",
    }
    cause = next((text for value, text in causes.items() if value != alpha and written == value), "")
    assert isinstance(written, (int, float)) and not isinstance(written, bool) and written == alpha, (
        f"{case}: lora_alpha is {written!r} in the config, expected alpha as given, {alpha!r}"
        + (f": {cause}" if cause else "")
        + ": write the layers' alpha itself (layer.alpha), not one rebuilt from the scaling"
    )
    loaded(load_adapter, fresh, tmp_path, f"{case}, save_adapter's own files")
    error = max_difference(outputs(kind, fresh), outputs(kind, model))
    assert error == 0, (
        f"{case}: the model loaded from the saved files computes outputs {error:.3g} away from the saved model's: "
        "give each loaded layer the config's r and lora_alpha as they are (its scaling lora_alpha / r)"
    )


@pytest.mark.points(1)
@pytest.mark.subject("load_adapter")
@pytest.mark.parametrize("case", ["toy, r=3, alpha=10 (an int)", "gpt2, r=3, alpha=0.9"])
def test_loads_peft_files_of_any_rank_and_alpha(load_adapter, LoRALinear, LoRAConv1D, case, tmp_path):
    kind, r, alpha = ANY_RANK[case]
    model, oracle = peft_saved(kind, tmp_path, r=r, alpha=alpha)
    what = f"r={r}, lora_alpha={alpha!r} (the scaling lora_alpha / r, a float)"
    expect_loaded_as_peft(load_adapter, LoRALinear, LoRAConv1D, kind, model, oracle, tmp_path, what)


@pytest.mark.points(1)
def test_gpt2_adapters_are_saved_fan_in_fan_out(save_adapter, LoRALinear, LoRAConv1D, tmp_path):
    conv1d_layers = [name for name in target_names("gpt2", plain("gpt2")) if name != "lm_head"]  # with both kinds,
    model, _, _ = adapted_model("gpt2", LoRALinear, LoRAConv1D, names=conv1d_layers)  # peft sets it per layer
    config = read_config(saved(save_adapter, model, tmp_path))
    assert config.get("fan_in_fan_out") is True, (
        f"fan_in_fan_out is {config.get('fan_in_fan_out')!r} for LoRAConv1D adapters, expected true: a Conv1D "
        "stores its weight (in, out)"
    )


@pytest.mark.points(1)
def test_save_returns_the_directory_it_creates(save_adapter, LoRALinear, LoRAConv1D, tmp_path, monkeypatch):
    model, _, _ = adapted_model("toy", LoRALinear, LoRAConv1D)
    monkeypatch.chdir(tmp_path)
    directory = Path("runs") / "adapter"  # relative: Path(directory) is that, not its absolute form
    returned = save_adapter(model, str(directory))
    assert isinstance(returned, Path) and returned == directory, (
        f"save_adapter(model, {str(directory)!r}) returned {describe(returned)}"
        + (f" {str(returned)!r}" if isinstance(returned, Path) else "")
        + ", expected Path(directory) as given (no resolve(), no absolute())"
    )
    assert (directory / CONFIG).is_file() and (directory / WEIGHTS).is_file(), (
        "save_adapter into a directory that does not exist yet wrote no files: create it (mkdir(parents=True))"
    )


@pytest.mark.points(1)
def test_save_leaves_the_model_as_it_was(save_adapter, LoRALinear, LoRAConv1D, tmp_path):
    model, _, _ = adapted_model("llama", LoRALinear, LoRAConv1D)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    save_adapter(model, tmp_path)
    changed = [name for name, value in model.state_dict().items() if not torch.equal(value, before[name])]
    assert not changed, f"save_adapter changed the model's {changed[:2]}: saving reads, it never writes"
    flipped = [name for name, p in model.named_parameters() if p.requires_grad != flags[name]]
    assert not flipped, f"save_adapter changed requires_grad of {flipped[:2]}: saving must leave the model alone"


@pytest.mark.points(1)
def test_save_refuses_a_model_without_adapters(save_adapter, LoRALinear, tmp_path):
    LoRALinear(nn.Linear(3, 2), r=1)  # the kata builds on a working LoRALinear
    for model in (ToyTransformer(), nn.Linear(3, 2)):
        try:
            save_adapter(model, tmp_path / type(model).__name__)
        except ValueError as error:
            assert str(error).strip(), "save_adapter raised a ValueError without a message: say what is wrong"
        else:
            pytest.fail(
                f"save_adapter on a {type(model).__name__} without adapters raised nothing: an empty adapter file "
                "'saves' fine and loads as nothing; raise ValueError",
                pytrace=False,
            )


PER_KIND = {  # GPT-2's Conv1D adapters at r=R, alpha=ALPHA, its lm_head (an nn.Linear) with another r or alpha:
    # each kind agrees within itself (peft's rank_pattern and alpha_pattern would say it; the file has one of each)
    "r per kind (GPT-2: Conv1D r=4, lm_head r=8)": {"r": 2 * R, "alpha": ALPHA},
    "alpha per kind (GPT-2: Conv1D alpha=6.5, lm_head alpha=13)": {"r": R, "alpha": 2 * ALPHA},
}


@pytest.mark.points(1)
@pytest.mark.parametrize("differs", ["r", "alpha", "r and alpha", *PER_KIND])  # "r and alpha": one alpha / r
def test_save_refuses_adapters_that_disagree(save_adapter, LoRALinear, LoRAConv1D, differs, tmp_path):
    if differs in PER_KIND:
        model = plain("gpt2")
        for name in target_names("gpt2", model):
            if name == "lm_head":
                wrap(model, [name], lambda layer: LoRALinear(layer, **PER_KIND[differs]))
            else:
                wrap(model, [name], lambda layer: LoRAConv1D(layer, r=R, alpha=ALPHA))
    else:
        model = ToyTransformer()
        names = matching_linears(model, TOY_TARGETS)
        first = {"r": 2 if "r" in differs.split() else R, "alpha": ALPHA / 2 if differs == "r and alpha" else ALPHA}
        wrap(model, names[:1], lambda layer: LoRALinear(layer, **first))
        wrap(model, names[1:], lambda layer: LoRALinear(layer, r=R, alpha=2.0 if differs == "alpha" else ALPHA))
    try:
        save_adapter(model, tmp_path)
    except ValueError as error:
        assert str(error).strip(), "save_adapter raised a ValueError without a message: say what is wrong"
    else:
        written = read_config(tmp_path) if (tmp_path / CONFIG).is_file() else {}
        pytest.fail(
            f"save_adapter on adapters with different {differs} raised nothing"
            + (f" (it wrote r={written.get('r')!r}, lora_alpha={written.get('lora_alpha')!r})" if written else "")
            + ": the config holds one r and one lora_alpha, so peft would load some layers wrong; compare every "
            "adapter, of every kind (LoRALinear and LoRAConv1D alike), and raise ValueError",
            pytrace=False,
        )


# load_adapter


def adapters_in(model: nn.Module, LoRALinear, LoRAConv1D) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (LoRALinear, LoRAConv1D))}


MATCHING = "a list entry matches a name equal to it or ending with '.' + entry, a str is re.fullmatch of the whole name"


def expect_loaded_as_peft(load_adapter, LoRALinear, LoRAConv1D, kind, model, oracle, directory, what) -> None:
    """Load peft's files in ``directory`` into ``model`` and fail the check unless the adapters sit on the layers
    peft adapted (``oracle``) and the model computes what peft's does. ``what`` says what the files hold."""
    modules = dict(model.named_modules())
    modes = {name: module.training for name, module in modules.items()}
    own = {id(module): module.training for module in modules.values()}  # the model's modules, wherever they go
    loaded(load_adapter, model, directory, f"{kind}, {what}, peft's own files")
    flipped = [name or "the model" for name, module in model.named_modules() if own.get(id(module), module.training)
               != module.training]  # fmt: skip
    found, wanted = sorted(adapters_in(model, LoRALinear, LoRAConv1D)), sorted(peft_layers(oracle))
    inside = [name for name in flipped if any(name.startswith(layer + ".") for layer in found)]
    assert not flipped, (
        f"{kind}, {what}: load_adapter flipped the train or eval mode of {flipped[:3]} ({len(flipped)} modules it did "
        "not replace): it replaces the targeted layers and leaves every other module's mode as it was, each its own "
        + (
            f"({inside[0]!r} is the model's own module inside an adapter, kept in its mode: layer.train(mode) "
            "recurses into the base and the base's own children; give the new modules the replaced layer's mode, "
            "e.g. layer.training = mode)"
            if inside
            else "(no model.eval() nor model.train(...), which set every module: peft's from_pretrained(..., "
            "is_trainable=True) leaves them)"
        )
    )
    wrong, missed = sorted(set(found) - set(wanted)), sorted(set(wanted) - set(found))
    assert not wrong and not missed, (
        f"{kind}, {what}: load_adapter adapted {len(found)} layers, peft {len(wanted)}: wrongly {wrong[:2]}, missed "
        f"{missed[:2]}: adapt what target_modules names as peft does ({MATCHING}), with the package's own layers"
    )
    # The checks below put the model in eval mode before each forward; a new layer must not wait for that.
    astray = sorted(
        f"{name}.{inner}".rstrip(".")
        for name in found
        for inner, module in model.get_submodule(name).named_modules()
        if id(module) not in own and module.training != modes[name]  # its new modules; the model's keep their own
    )
    assert not astray, (
        f"{kind}, {what}: after load_adapter on a model in {'train' if model.training else 'eval'} mode, "
        f"{astray[:2]} ({len(astray)} in all) are left in the other mode, expected the mode of the layer each "
        "replaces: a new module starts in train mode (its lora_dropout then drops inputs in an eval-mode model); "
        "give it the replaced layer's mode (layer.train(module.training))"
    )
    error = max_difference(outputs(kind, model), outputs(kind, oracle))
    assert error < 1e-5, (
        f"{kind}, {what}: after load_adapter the outputs differ from peft's by {error:.3g}: lora_A is A (r, in), "
        "lora_B B (out, r); copy them into your layout (transpose if you store them the other way)"
    )


@pytest.mark.points(2)
@pytest.mark.subject("load_adapter")
@pytest.mark.parametrize("kind", KINDS)
def test_loads_what_peft_saves_and_computes_what_peft_does(load_adapter, LoRALinear, LoRAConv1D, kind, tmp_path):
    model, oracle = peft_saved(kind, tmp_path)
    expect_loaded_as_peft(load_adapter, LoRALinear, LoRAConv1D, kind, model, oracle, tmp_path, "qualified names")


@pytest.mark.points(1)
@pytest.mark.subject("load_adapter")
@pytest.mark.parametrize("kind", ["toy", "gpt2"])  # an nn.Linear, and Conv1D layers beside the tied lm_head
def test_loads_into_a_model_in_train_mode(load_adapter, LoRALinear, LoRAConv1D, kind, tmp_path):
    """An adapter loaded to go on training (the spec's "ready to train on"): on a model in train mode, with the
    config's lora_dropout, each new layer trains as the layer it replaces did and every other module keeps its
    mode, so the dropout drops inputs in training, as peft's model (is_trainable=True) does. Some modules are in
    eval mode inside it (frozen norms, a layer kept in eval), targeted ones too: each keeps its own mode."""
    model, oracle = peft_saved(kind, tmp_path)
    config = read_config(tmp_path)
    config["lora_dropout"] = 0.25  # the eval-mode outputs peft's model gives do not depend on it
    (tmp_path / CONFIG).write_text(json.dumps(config))
    model.train()
    targets = target_names(kind, model)
    leaves = [name for name, module in model.named_modules() if name not in targets and not list(module.children())]
    for name in targets[::2] + leaves[::2]:
        model.get_submodule(name).eval()
    expect_loaded_as_peft(load_adapter, LoRALinear, LoRAConv1D, kind, model, oracle, tmp_path, "a model in train mode")


@pytest.mark.points(1)
@pytest.mark.subject("load_adapter")
@pytest.mark.parametrize("targets", list(PART_TARGETS))
def test_loads_layers_named_like_adapter_parts(load_adapter, LoRALinear, LoRAConv1D, targets, tmp_path):
    """PART_TARGETS on a model in train mode, whose targeted mlp.up_proj holds a layer of its own kept in eval mode
    (a frozen gate) and whose targeted wrapped.lora_A is in eval mode: each keeps its own mode."""
    model, oracle = peft_saved("parts", tmp_path, target_modules=PART_TARGETS[targets])
    model.train()
    model.mlp.up_proj.gate.eval()
    model.wrapped.lora_A.eval()
    what = f"target_modules {PART_TARGETS[targets]!r} (layers named like adapter parts; {MATCHING})"
    expect_loaded_as_peft(load_adapter, LoRALinear, LoRAConv1D, "parts", model, oracle, tmp_path, what)


@pytest.mark.points(1)
@pytest.mark.subject("load_adapter")
def test_the_loaded_factors_train(load_adapter, LoRALinear, LoRAConv1D, tmp_path):
    model, _ = peft_saved("gpt2", tmp_path)  # a LoRAConv1D and a LoRALinear (the tied lm_head) among the layers
    originals = dict(model.named_modules())
    loaded(load_adapter, model, tmp_path, "gpt2, peft's own files")
    for name, layer in adapters_in(model, LoRALinear, LoRAConv1D).items():
        in_features, out_features = dimensions(originals[name])
        count, expected = sum(t.numel() for t in trainable(layer)), R * (in_features + out_features)
        frozen = "the loaded factors are frozen" if count == 0 else f"{count} numbers train"
        assert count == expected, (
            f"{name} (a {type(layer).__name__}): {frozen}, expected r*(in+out) = {expected}: load_adapter builds the "
            "package's layers, whose factors train, ready to train on; leave them so (peft's from_pretrained "
            "freezes them unless is_trainable=True)"
        )
    layers = adapters_in(model, LoRALinear, LoRAConv1D)
    try:  # "ready to train on": one backward pass reaches every factor
        with quiet():
            model(input_ids=token_ids()).logits.square().mean().backward()
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0][:160]
        pytest.fail(
            f"a training step on the loaded gpt2 raised {first_line!r}: the loaded layers must train as any do; were "
            "they built or filled under torch.inference_mode() (inference tensors never train)? copy the factors "
            "under torch.no_grad()",
            pytrace=False,
        )
    gradless = [name for name, layer in layers.items() if any(t.grad is None for t in trainable(layer))]
    assert not gradless, (
        f"after a backward pass on the loaded gpt2 the factors of {gradless[:2]} have no gradient: ready to train on, "
        "each loaded layer's factors take part in the forward and require grad"
    )


@pytest.mark.points(1)
@pytest.mark.subject("load_adapter")
def test_a_float64_model_loads_a_float32_file_in_float64(load_adapter, LoRALinear, LoRAConv1D, tmp_path):
    model, oracle = peft_saved("toy", tmp_path)
    model, oracle = model.double(), oracle.double()  # peft casts what it loads to the model's dtype
    originals = dict(model.named_modules())
    loaded(load_adapter, model, tmp_path)
    dtypes = sorted({str(p.dtype) for name, layer in adapters_in(model, LoRALinear, LoRAConv1D).items()
                     for p in outside(layer, originals[name])})  # fmt: skip
    assert dtypes == ["torch.float64"], (
        f"a float64 model loading a float32 file holds {dtypes} factors, expected torch.float64: copy the file's "
        "tensors into the layers' own factors (copy_), do not replace them with the file's"
    )
    error = max_difference(outputs("toy", model), outputs("toy", oracle))
    assert error < 1e-12, f"the float64 model loaded from a float32 file computes outputs {error:.3g} from peft's"


@pytest.mark.points(1)
@pytest.mark.subject("load_adapter")
def test_loads_the_factors_where_the_layers_are(load_adapter, LoRALinear, LoRAConv1D, tmp_path):
    # The file's tensors come to the CPU; a model elsewhere (on a GPU; here on meta, which any machine has) needs its
    # factors where its layers are. No square layer among the targets: telling A from B needs no value of the model.
    _, oracle = peft_saved("gpt2", tmp_path, target_modules=["c_attn", "c_fc", "lm_head"])
    with torch.device(FOREIGN_DEFAULT):
        model = plain("gpt2")
    try:
        loaded(load_adapter, model, tmp_path, f"gpt2 on {FOREIGN_DEFAULT}, peft's own files")
    except (NotImplementedError, RuntimeError) as error:
        if FOREIGN_DEFAULT not in str(error).lower():
            raise
        return  # it read a value of the model, which meta tensors have none of: a fair thing to do, so no verdict
    layers, wanted = adapters_in(model, LoRALinear, LoRAConv1D), sorted(peft_layers(oracle))
    assert sorted(layers) == wanted, (
        f"gpt2 on {FOREIGN_DEFAULT}: load_adapter adapted {sorted(layers)[:2]}..., peft {wanted[:2]}... "
        "(see test_loads_what_peft_saves_and_computes_what_peft_does)"
    )
    misplaced = {
        name: sorted({str(t.device) for t in layer.parameters()} - {FOREIGN_DEFAULT}) for name, layer in layers.items()
    }
    misplaced = {name: devices for name, devices in misplaced.items() if devices}
    assert not misplaced, (
        f"a model on {FOREIGN_DEFAULT} got the factors of {sorted(misplaced)[:2]} on {next(iter(misplaced.values()))}, "
        "where the file's tensors were read to, not where the layers are (a GPU model's would stay on the CPU): "
        "copy the tensors into the layers' own factors (copy_), do not put the file's tensors in their place"
    )


# Where re.search, re.match(pattern + "$") and a bare endswith or an unescaped regex part from peft's matching: a
# match that stops short of the name's end (in an alternation's first branch, which a "$" appended does not end) or
# starts after its beginning, an entry that ends a longer name without the dot, and a dot read as any character.
PATTERNS = {
    "stops short": r".*\.gate|.*\.(q_proj|v_proj)",  # re.search and re.match(pattern + "$") also take gate_proj
    "unanchored start": r".*\.v_proj|layers\.1\.self_attn\.q_proj",  # re.search also takes model.layers.1...q_proj
}
# A bare endswith also takes q_proj, and for the dotted entries the blocks whose number ends with theirs (layers.10,
# layers.20 and layers.30 for "0.attn.q_proj"; layers.11... for "1.mlp.fc10", at a real model's depth); "out.proj"
# names nothing, read as a regex every out_proj.
SHORT_NAMES = ["proj", "fc1", "0.attn.q_proj", "1.mlp.fc10", "head", "out.proj"]


@pytest.mark.points(1)
@pytest.mark.subject("load_adapter")
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_loads_a_regex_target_string(load_adapter, LoRALinear, LoRAConv1D, pattern, tmp_path):
    model, oracle = peft_saved("llama", tmp_path, target_modules=PATTERNS[pattern])
    assert read_config(tmp_path)["target_modules"] == PATTERNS[pattern], "grader bug: peft saved a list"
    what = f"target_modules {PATTERNS[pattern]!r} (a str: re.fullmatch, not re.search nor re.match(pattern + '$'))"
    expect_loaded_as_peft(load_adapter, LoRALinear, LoRAConv1D, "llama", model, oracle, tmp_path, what)


@pytest.mark.points(1)
@pytest.mark.subject("load_adapter")
@pytest.mark.parametrize("kind", ["toy", DEEP])
def test_loads_short_target_names_as_peft_matches_them(load_adapter, LoRALinear, LoRAConv1D, kind, tmp_path):
    model, oracle = peft_saved(kind, tmp_path, target_modules=SHORT_NAMES)
    what = (
        f"target_modules {SHORT_NAMES} (a list: equal or ending with '.' + entry, not a bare endswith; an entry is a "
        "name, not a regex: its dots are dots)"
    )
    expect_loaded_as_peft(load_adapter, LoRALinear, LoRAConv1D, kind, model, oracle, tmp_path, what)


DROPOUT_LAYERS = {  # an adapter of each kind the model has
    "toy": ["layers.0.mlp.fc1"],  # 8 -> 12
    "gpt2": ["transformer.h.0.attn.c_attn", "lm_head"],  # a Conv1D 16 -> 48, the tied nn.Linear 16 -> 64
}


def dropout_multipliers(layer: nn.Module, repeats: int = 50) -> torch.Tensor:
    """What train-mode dropout multiplied each input of the adapter branch of ``layer`` (a LoRALinear or a
    LoRAConv1D) by, for ``repeats`` one-hot rows per input: 0 where it was dropped, 1 / (1 - p) where it was kept,
    as nn.Dropout(p) does."""
    base = base_of(layer)
    update = measured_update(layer, base).float()  # (out, in), eval mode
    x = torch.eye(update.shape[1]).repeat(repeats, 1)
    try:
        with torch.no_grad():
            changes = output(layer.train(), x) - base(x)  # row j: its multiplier times update[:, j % in]
    finally:
        layer.eval()
    columns = update.T.repeat(repeats, 1)
    return (changes * columns).sum(dim=1) / (columns * columns).sum(dim=1)


@pytest.mark.points(1)
@pytest.mark.subject("load_adapter")
@pytest.mark.parametrize("dropout", [0.25, None], ids=["lora_dropout 0.25", "no lora_dropout key"])
@pytest.mark.parametrize("kind", list(DROPOUT_LAYERS))
def test_uses_the_configs_lora_dropout_0_when_absent(load_adapter, LoRALinear, LoRAConv1D, kind, dropout, tmp_path):
    model, oracle = peft_saved(kind, tmp_path)
    config = read_config(tmp_path)
    if dropout is None:  # the least a config can say, and peft loads it
        config = {key: config[key] for key in ("peft_type", "r", "lora_alpha", "target_modules")}
    else:
        config["lora_dropout"] = dropout  # the eval-mode outputs peft's model gives do not depend on it
    (tmp_path / CONFIG).write_text(json.dumps(config))
    what = "a config without lora_dropout" if dropout is None else f"lora_dropout {dropout}"
    expect_loaded_as_peft(load_adapter, LoRALinear, LoRAConv1D, kind, model, oracle, tmp_path, what)
    p = dropout or 0.0
    for name in DROPOUT_LAYERS[kind]:
        layer = model.get_submodule(name)
        multipliers = dropout_multipliers(layer)
        kept = multipliers[multipliers.abs() > 1e-4]
        zeroed, worst = len(multipliers) - len(kept), 1 / (1 - p)
        if len(kept):
            worst = kept[(kept - 1 / (1 - p)).abs().argmax()].item()
        assert abs(worst - 1 / (1 - p)) <= 1e-4 / (1 - p) and (zeroed > 0) == (p > 0), (
            f"{kind}, {what}: in train mode {name}'s adapter (a {type(layer).__name__}) zeroed {zeroed} of "
            f"{len(multipliers)} inputs and multiplied others by {worst:.4g}, expected "
            + ("none zeroed, the others by 1" if p == 0 else f"some zeroed, the others by 1/(1-p) = {1 / (1 - p):.4g}")
            + ": give every layer, LoRALinear and LoRAConv1D alike, the config's lora_dropout (0 when absent)"
        )


@pytest.mark.points(1)
@pytest.mark.subject("load_adapter")
@pytest.mark.parametrize(
    "kind, dtype",
    [("llama", torch.float32), ("toy", torch.float32), ("gpt2", torch.float32), ("llama", torch.bfloat16),
     ("toy", torch.bfloat16), ("gpt2", torch.bfloat16), ("toy", torch.float64), ("llama", torch.float16),
     ("gpt2", torch.float16)],
    ids=dtype_name,
)  # fmt: skip
def test_save_then_load_is_bit_exact(save_adapter, load_adapter, LoRALinear, LoRAConv1D, kind, dtype, tmp_path):
    model, fresh, layers = adapted_model(kind, LoRALinear, LoRAConv1D, dtype)
    saved(save_adapter, model, tmp_path)
    tensors, _ = read_tensors(tmp_path)
    dtypes = sorted({str(t.dtype) for t in tensors.values()})
    assert dtypes == [str(dtype)], (
        f"{kind}: the file holds {dtypes} tensors for {dtype} factors: save every layer's, LoRALinear and LoRAConv1D "
        "alike, in their dtype"
    )
    originals = dict(fresh.named_modules())
    loaded(load_adapter, fresh, str(tmp_path), f"{kind} {dtype}, save_adapter's own files")  # a str, as scripts pass
    again = adapters_in(fresh, LoRALinear, LoRAConv1D)
    assert sorted(again) == sorted(layers), (
        f"loading the saved files adapted {sorted(again)[:2]}..., the saved model had {sorted(layers)[:2]}..."
    )
    for name, layer in layers.items():
        loaded_factors = lora_factors(again[name], R, ALPHA / R, base=originals[name])
        pairs = zip(lora_factors(layer, R, ALPHA / R), loaded_factors, strict=True)
        for what, (before, after) in zip("AB", pairs, strict=True):
            assert after.dtype == before.dtype and torch.equal(after, before), (
                f"{name}: factor {what} after save and load is not bit for bit the saved one"
                + (f" ({after.dtype}, saved {before.dtype})" if after.dtype != before.dtype else "")
                + ": no rounding, scaling or transposing on the way"
            )
    error = max_difference(outputs(kind, fresh), outputs(kind, model))
    assert error == 0, f"{kind} {dtype}: the model loaded from the files computes outputs {error:.3g} away"


@pytest.mark.points(1)
@pytest.mark.subject("load_adapter")
@pytest.mark.parametrize("kind", ["toy", "gpt2"])
def test_adapters_of_mixed_dtypes_are_saved_and_loaded_each_in_its_own(
    save_adapter, load_adapter, LoRALinear, LoRAConv1D, kind, tmp_path
):
    """A model may mix dtypes (a float32 head on a bf16 body): every other adapter (the first, the last and those
    between, of both kinds on GPT-2) cast to float32, the rest bf16; the file holds each factor in its own dtype and
    a model of the same dtypes loads them back bit for bit."""
    model, fresh, layers = adapted_model(kind, LoRALinear, LoRAConv1D, torch.bfloat16)
    for name in list(layers)[1::2]:
        for one in (model, fresh):
            one.get_submodule(name).to(torch.float32)
    saved(save_adapter, model, tmp_path)
    tensors, _ = read_tensors(tmp_path)
    for name, layer in layers.items():
        for what, factor in zip("AB", lora_factors(layer, R, ALPHA / R), strict=True):
            key = f"{PREFIX}{name}.lora_{what}.weight"
            held = tensors[key].dtype if key in tensors else None
            assert held == factor.dtype, (
                f"{kind} with float32 and bfloat16 adapters: the file holds {key} as {held}, the layer's factor {what} "
                f"is {factor.dtype}: save each factor in its own dtype, not one dtype for the whole file"
            )
    originals = dict(fresh.named_modules())
    loaded(load_adapter, fresh, tmp_path, f"{kind} with float32 and bfloat16 adapters, save_adapter's own files")
    again = adapters_in(fresh, LoRALinear, LoRAConv1D)
    for name, layer in layers.items():
        after_load = lora_factors(again[name], R, ALPHA / R, base=originals[name])
        pairs = zip(lora_factors(layer, R, ALPHA / R), after_load, strict=True)
        for what, (before, after) in zip("AB", pairs, strict=True):
            assert after.dtype == before.dtype and torch.equal(after, before), (
                f"{kind} with float32 and bfloat16 adapters: {name}'s factor {what} after save and load is "
                f"{after.dtype}, not bit for bit the saved {before.dtype} one: each layer's factors in its base's dtype"
            )


SECOND_SAVES = {  # what the directory holds at the second load: other factors (the same r), or another r and alpha
    "other factors": (R, ALPHA),
    "another r and alpha": (2, 3.0),
}


@pytest.mark.points(1)
def test_a_second_load_reads_the_files_as_they_are_now(save_adapter, load_adapter, LoRALinear, LoRAConv1D, tmp_path):
    first, fresh, _ = adapted_model("toy", LoRALinear, LoRAConv1D)
    saved(save_adapter, first, tmp_path)
    loaded(load_adapter, copy.deepcopy(fresh), str(tmp_path), "toy, save_adapter's own files")
    for step, (r, alpha) in enumerate(SECOND_SAVES.values()):
        rewritten = copy.deepcopy(fresh)
        wrap(
            rewritten,
            target_names("toy", rewritten),
            lambda layer, r=r, alpha=alpha: LoRALinear(layer, r=r, alpha=alpha),
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(100 + step)  # not the first model's values
            randomize(rewritten, std=0.3)
        saved(save_adapter, rewritten, tmp_path)  # the same directory, rewritten
        model = loaded(load_adapter, copy.deepcopy(fresh), tmp_path if step else str(tmp_path), "the rewritten files")
        error = max_difference(outputs("toy", model), outputs("toy", rewritten))
        was = max_difference(outputs("toy", model), outputs("toy", first))
        what = list(SECOND_SAVES)[step]
        assert error == 0, (
            f"load_adapter of a directory rewritten since an earlier load of it ({what}: r={r}, alpha={alpha:g}) "
            f"computes outputs {error:.3g} away from the rewritten model's"
            + (" and exactly the first files' model's: it loaded the first files again (a cache by path?); read the "
               "files at every call" if was == 0 else "")
        )  # fmt: skip


CORRUPTED = {  # the layer each corruption spoils, of each kind a file holds: an nn.Linear, and a Conv1D (in, out)
    "toy": "layers.0.mlp.fc1",  # 8 -> 12: A (4, 8), B (12, 4)
    "gpt2": "transformer.h.0.attn.c_attn",  # 16 -> 48: A (4, 16), B (48, 4)
    # the same file spoilt at a later layer, the first block's wrapped already: a loader that checks each layer only
    # as it wraps it passes a file spoilt at the first one it processes, and leaves the earlier layers replaced here
    "gpt2, a later layer": "transformer.h.1.mlp.c_proj",  # 64 -> 16: A (4, 64), B (16, 4)
}


def factor_key(layer: str, factor: str) -> str:
    """The file's key of ``layer``'s lora_A or lora_B."""
    return f"{PREFIX}{layer}.lora_{factor}.weight"


def layer_of(key: str) -> str:
    """The qualified name of the layer a file's key belongs to."""
    return key.removeprefix(PREFIX).rsplit(".", 2)[0]


def transposed(factor: str):
    """A corruption: one layer's lora_A or lora_B stored transposed."""
    return lambda tensors, config, layer: tensors.update(
        {factor_key(layer, factor): tensors[factor_key(layer, factor)].T.contiguous()}
    )


def of_rank(factor: str, rank: int):
    """A corruption: one layer's lora_A or lora_B of another rank than the config's, the other factor as it was."""

    def corrupt(tensors: dict[str, torch.Tensor], config: dict, layer: str) -> None:
        key = factor_key(layer, factor)
        tensors[key] = tensors[key][:rank].clone() if factor == "A" else tensors[key][:, :rank].clone()

    return corrupt


def one_wide(factor: str):
    """A corruption: one layer's lora_A (r, 1) or lora_B (1, r), the rank right, the other dimension 1 (a copy_
    broadcasts it into the factor without a word)."""

    def corrupt(tensors: dict[str, torch.Tensor], config: dict, layer: str) -> None:
        key = factor_key(layer, factor)
        tensors[key] = tensors[key][:, :1].clone() if factor == "A" else tensors[key][:1].clone()

    return corrupt


def missing(factor: str):
    """A corruption: one layer's lora_A or lora_B left out."""
    return lambda tensors, config, layer: tensors.pop(factor_key(layer, factor))


def untargeted(tensors: dict[str, torch.Tensor], config: dict, layer: str) -> None:
    """A corruption: the targets' entries that match ``layer`` left out (peft's file may list short names)."""
    config["target_modules"] = [t for t in config["target_modules"] if not (layer == t or layer.endswith("." + t))]


def untargeted_sibling(tensors: dict[str, torch.Tensor], config: dict, layer: str) -> None:
    """A corruption: the pair of a sibling whose name starts with the layer's (the toy's fc10 beside fc1) left
    untargeted, the layer still targeted: a test of startswith without the dot takes the sibling's keys for the
    layer's. (GPT-2's names hold no such pair: there, the layer itself left untargeted.)"""
    siblings = sorted({layer_of(key) for key in tensors} - {layer})
    untargeted(tensors, config, next((name for name in siblings if name.startswith(layer)), layer))


def bare_name_target(tensors: dict[str, torch.Tensor], config: dict, layer: str) -> None:
    """A corruption: a str target, the layer's short name, which no whole name is (a str is a regex, fullmatched:
    it names no layers.N.mlp.fc1), with a file that fits the suffix reading of it."""
    short = layer.rpartition(".")[2]
    config["target_modules"] = short
    for key in [key for key in tensors if not layer_of(key).endswith("." + short)]:
        tensors.pop(key)


def comma_target(tensors: dict[str, torch.Tensor], config: dict, layer: str) -> None:
    """A corruption: a str target, the file's short names joined by commas ("q_proj,v_proj", as a CLI or YAML
    writes a list): a str is a regex peft fullmatches, which no name does (peft refuses it); the file fits the list
    reading of it."""
    config["target_modules"] = ",".join(sorted({layer_of(key).rpartition(".")[2] for key in tensors}))


def spaced_entries(tensors: dict[str, torch.Tensor], config: dict, layer: str) -> None:
    """A corruption: each list entry with a space before or after it (" q_proj", "v_proj ", as hand-edited lists
    have them): an entry is compared as it is, so none names a layer (peft refuses it)."""
    config["target_modules"] = [f" {t}" if i % 2 else f"{t} " for i, t in enumerate(config["target_modules"])]


def base_weight_too(tensors: dict[str, torch.Tensor], config: dict, layer: str) -> None:
    """A corruption: the layer's base weight, under the key and in the shape peft saves an adapted lm_head's
    (``NAME.base_layer.weight``; (out, in), or (in, out) for a Conv1D): a key of an adapted layer, no factor."""
    in_features, out_features = tensors[factor_key(layer, "A")].shape[1], len(tensors[factor_key(layer, "B")])
    shape = (in_features, out_features) if config.get("fan_in_fan_out") else (out_features, in_features)
    tensors[f"{PREFIX}{layer}.base_layer.weight"] = torch.zeros(shape)


def lora_bias_too(tensors: dict[str, torch.Tensor], config: dict, layer: str) -> None:
    """A corruption: the bias of the layer's lora_B, as peft saves it with LoraConfig(lora_bias=True)."""
    tensors[f"{PREFIX}{layer}.lora_B.bias"] = torch.zeros(len(tensors[factor_key(layer, "B")]))


def embedding_adapter_too(tensors: dict[str, torch.Tensor], config: dict, layer: str) -> None:
    """A corruption: an nn.Embedding's adapter among the targets, under the keys and in the shapes peft saves it
    (``NAME.lora_embedding_A`` (r, num_embeddings), ``NAME.lora_embedding_B`` (embedding_dim, r), no ``.weight``):
    a kind of layer the package does not adapt (GPT-2's wte; on the toy, which has none, a name it lacks)."""
    name = "transformer.wte" if layer.startswith("transformer.") else "embed"
    tensors[f"{PREFIX}{name}.lora_embedding_A"] = torch.zeros(config["r"], 10)
    tensors[f"{PREFIX}{name}.lora_embedding_B"] = torch.zeros(16, config["r"])
    config["target_modules"] = [*config["target_modules"], name.rpartition(".")[2]]


CORRUPTIONS = {  # each of one kind only, for A and B alike: a check on one of them is no check
    "a base weight too, as peft saves an adapted lm_head's": base_weight_too,
    "a lora_B bias too (peft's lora_bias=True)": lora_bias_too,
    "an embedding adapter's keys too (peft's lora_embedding_A)": embedding_adapter_too,
    "a key without the prefix too": lambda tensors, config, layer: tensors.update(
        {factor_key(layer, "A").removeprefix(PREFIX): tensors[factor_key(layer, "A")].clone()}
    ),
    "the adapter name left in": lambda tensors, config, layer: tensors.update(
        {k.replace(".weight", ".default.weight"): tensors.pop(k) for k in [next(iter(tensors))]}
    ),
    "a lora_A missing": missing("A"),
    "a lora_B missing": missing("B"),
    "both factors of a layer missing": lambda tensors, config, layer: [
        missing(f)(tensors, config, layer) for f in "AB"
    ],
    "a lora pair for an untargeted layer": untargeted,
    "a lora pair for an untargeted sibling whose name starts with the layer's": untargeted_sibling,
    "a transposed lora_A": transposed("A"),
    "a transposed lora_B": transposed("B"),
    "a lora_A of rank 2": of_rank("A", 2),  # the rank of one factor only: the other's, and the config's, fit
    "a lora_B of rank 1": of_rank("B", 1),  # (out, 1) broadcasts into (out, 4) in a copy_
    "a lora_A one column wide": one_wide("A"),  # each dimension of a shape, not only the rank: (4, 1) broadcasts too
    "a lora_B one row tall": one_wide("B"),
    "peft_type LOHA": lambda tensors, config, layer: config.update(peft_type="LOHA"),
    "peft_type lora, lowercase": lambda tensors, config, layer: config.update(peft_type="lora"),
    "use_dora": lambda tensors, config, layer: config.update(use_dora=True),
    "use_rslora": lambda tensors, config, layer: config.update(use_rslora=True),
    "bias all": lambda tensors, config, layer: config.update(bias="all"),
    "bias lora_only": lambda tensors, config, layer: config.update(bias="lora_only"),
    "targets that match nothing": lambda tensors, config, layer: config.update(target_modules=["attention.query"]),
    "a str target, a bare name no whole name is": bare_name_target,
    "a str target of names joined by commas": comma_target,
    "list entries with a space before or after": spaced_entries,
    "no peft_type": lambda tensors, config, layer: config.pop("peft_type"),
    "a config's r other than the tensors' rank": lambda tensors, config, layer: config.update(r=config["r"] // 2),
}
WORDS = {  # what the message must name: fields of the corrupted layer, its keys, and their shapes (was and now);
    # a tensor by its key in the file or by its name in the model (the key without base_model.model.)
    "a base weight too, as peft saves an adapted lm_head's": ["{layer}.base_layer.weight"],
    "a lora_B bias too (peft's lora_bias=True)": ["{layer}.lora_B.bias"],
    "an embedding adapter's keys too (peft's lora_embedding_A)": ["lora_embedding_"],
    "a key without the prefix too": ["{layer}.lora_A.weight"],
    "a lora_A missing": ["{layer}"],
    "a lora_B missing": ["{layer}"],
    "both factors of a layer missing": ["{layer}"],
    "a lora pair for an untargeted layer": ["{short}"],
    "a transposed lora_A": ["{key_A}", "{was_A}", "{now_A}"],
    "a transposed lora_B": ["{key_B}", "{was_B}", "{now_B}"],
    "a lora_A of rank 2": ["{key_A}", "{was_A}", "{now_A}"],
    "a lora_B of rank 1": ["{key_B}", "{was_B}", "{now_B}"],
    "a lora_A one column wide": ["{key_A}", "{was_A}", "{now_A}"],
    "a lora_B one row tall": ["{key_B}", "{was_B}", "{now_B}"],
}


ACCEPTED = {  # why a corruption whose file fits some other reading of the config is refused
    "a str target of names joined by commas": "peft refuses it: a str is one regex it fullmatches against each "
    "whole name (no name holds a comma), never a list to split at commas",
    "list entries with a space before or after": "peft refuses it: an entry is compared as it is, spaces too (no "
    "strip()): it names no layer, and nothing matching the targets is a ValueError",
}


def named(corruption: str, layer: str, was: dict[str, torch.Tensor], now: dict[str, torch.Tensor]) -> list[str]:
    """What the message about ``corruption`` of ``layer`` must name; a shape as "(4, 8)", which the message may
    spell in any sane way (see ``unnamed``)."""
    fields = {"prefix": PREFIX, "layer": layer, "short": layer.rpartition(".")[2]}
    for factor in "AB":
        key = fields[f"key_{factor}"] = factor_key(layer, factor)
        for when, tensors in (("was", was), ("now", now)):
            fields[f"{when}_{factor}"] = str(tuple(tensors[key].shape)) if key in tensors else ""
    return [word.format(**fields) for word in WORDS.get(corruption, [])]


SHAPE = re.compile(r"\((\d+(?:, \d+)*),?\)")  # a shape as named() writes it: "(4, 8)"
SHAPE_SEPARATOR = r"\s*(?:,|x|X|\u00d7|\*| by )\s*"  # 4,8  4, 8  4x8  4 x 8  4*8  4 by 8, the times sign


def unnamed(words: list[str], message: str) -> list[str]:
    """The ``words`` the ``message`` does not name: a key or a name as it is, a shape in any sane spelling, its
    sizes in order with a comma, x, the times sign, * or "by" between them (the tuple, a list, torch.Size, "4x8"
    as torch's matmul error writes it), not inside a longer number."""
    missing = []
    for word in words:
        shape = SHAPE.fullmatch(word)
        if shape:
            sizes = shape.group(1).split(", ")
            found = re.search(r"(?<![\d.])" + SHAPE_SEPARATOR.join(sizes) + r"(?![\d.])", message)
        else:
            found = word in message or word in message.replace(" ", "")
        if not found:
            missing.append(word)
    return missing


@pytest.fixture(scope="module")
def peft_files(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[dict[str, torch.Tensor], dict]]:
    """(tensors, config) of peft's save_pretrained for a kind of model, written once for every corruption."""
    written: dict[str, tuple[dict[str, torch.Tensor], dict]] = {}

    def files(kind: str) -> tuple[dict[str, torch.Tensor], dict]:
        kind = kind.partition(",")[0]  # "gpt2, a later layer": GPT-2's file, spoilt elsewhere
        if kind not in written:
            directory = tmp_path_factory.mktemp(f"peft_{kind}")
            peft_saved(kind, directory)
            written[kind] = read_tensors(directory)[0], read_config(directory)
        return written[kind]

    return files


@pytest.mark.points(1)
@pytest.mark.subject("load_adapter")
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("kind", list(CORRUPTED))
def test_a_bad_file_is_refused_and_leaves_the_model_as_it_was(
    load_adapter, LoRALinear, peft_files, kind, corruption, tmp_path
):
    from safetensors.torch import save_file

    LoRALinear(nn.Linear(3, 2), r=1)  # the kata builds on a working LoRALinear
    model = plain(kind).train(kind == "toy")  # a model in training mode too: a refused load leaves its mode alone
    tensors, config = dict(peft_files(kind)[0]), copy.deepcopy(peft_files(kind)[1])
    CORRUPTIONS[corruption](tensors, config, CORRUPTED[kind])
    save_file(tensors, str(tmp_path / WEIGHTS), metadata={"format": "pt"})
    (tmp_path / CONFIG).write_text(json.dumps(config))
    before = snapshot(model)
    what = f"{kind}, a file with {corruption}"
    try:
        load_adapter(model, tmp_path)
    except ValueError as error:
        message = str(error)
        words = named(corruption, CORRUPTED[kind], peft_files(kind)[0], tensors)
        absent = unnamed(words, message)
        assert not absent, f"{what}: the ValueError ({message[:200]}) does not name {absent}"
    except NotImplementedError:  # a stub: the report says so
        raise
    except (KeyError, IndexError, RuntimeError) as error:  # tripped over the corruption instead of checking
        pytest.fail(
            f"{what}: load_adapter raised {type(error).__name__} ({str(error)[:120]}), expected a ValueError that "
            "says what is wrong: check every key and shape, A and B alike, of every kind of layer, before loading",
            pytrace=False,
        )
    else:
        pytest.fail(
            f"{kind}: load_adapter accepted a file with {corruption}, expected a ValueError: "
            + ACCEPTED.get(
                corruption,
                "never a silent partial load; check every key, each of an adapted layer's too, of every layer, "
                "nn.Linear and Conv1D alike",
            ),
            pytrace=False,
        )
    expect_as_it_was(model, before, what)


UNREADABLE = {  # failures before any ValueError of the kata's own: whatever is raised, the model stays as it was
    "a weights file cut short": lambda directory: (directory / WEIGHTS).write_bytes(
        (directory / WEIGHTS).read_bytes()[: (directory / WEIGHTS).stat().st_size // 2]
    ),
    "no weights file": lambda directory: (directory / WEIGHTS).unlink(),
    "a config that is not JSON": lambda directory: (directory / CONFIG).write_text('{"peft_type": "LORA", "r":'),
}


@pytest.mark.points(1)
@pytest.mark.subject("load_adapter")
@pytest.mark.parametrize("case", list(UNREADABLE))
def test_an_unreadable_file_is_refused_and_leaves_the_model_as_it_was(
    load_adapter, LoRALinear, peft_files, case, tmp_path
):
    from safetensors.torch import save_file

    LoRALinear(nn.Linear(3, 2), r=1)  # the kata builds on a working LoRALinear
    model = plain("toy").train()
    tensors, config = peft_files("toy")
    save_file(tensors, str(tmp_path / WEIGHTS), metadata={"format": "pt"})
    (tmp_path / CONFIG).write_text(json.dumps(config))
    UNREADABLE[case](tmp_path)
    before = snapshot(model)
    what = f"toy, {case} (an interrupted copy)"
    try:
        load_adapter(model, tmp_path)
    except NotImplementedError:  # a stub: the report says so
        raise
    except Exception:  # any error of reading it is fine (safetensors' own, OSError, JSONDecodeError)
        expect_as_it_was(model, before, what)
        return
    pytest.fail(f"load_adapter accepted {what}, expected an error: read the whole file first", pytrace=False)


def snapshot(model: nn.Module) -> tuple[dict, dict, dict, dict]:
    """(modules, state, requires_grad flags, train or eval modes) of ``model``, to see that a refused load left it
    as it was."""
    modules = dict(model.named_modules())
    state = {name: value.clone() for name, value in model.state_dict().items()}
    modes = {name: module.training for name, module in modules.items()}
    return modules, state, {name: p.requires_grad for name, p in model.named_parameters()}, modes


def expect_as_it_was(model: nn.Module, before: tuple[dict, dict, dict, dict], what: str) -> None:
    modules, state, flags, modes = before
    now = dict(model.named_modules())
    swapped = sorted(name for name in modules if now.get(name) is not modules[name])
    swapped += sorted(now.keys() - modules.keys())
    assert not swapped, (
        f"{what}: the refused load changed the model's modules (e.g. {swapped[:2]}): check the whole file "
        "before touching the model"
    )
    changed = [n for n, v in model.state_dict().items() if n not in state or not torch.equal(v, state[n])]
    assert not changed, f"{what}: the refused load changed {changed[:2]}: check everything first"
    flipped = [n for n, p in model.named_parameters() if p.requires_grad != flags.get(n)]
    assert not flipped, f"{what}: the refused load changed requires_grad of {flipped[:2]}: check everything first"
    moded = [name or "the model" for name, module in model.named_modules() if module.training != modes.get(name)]
    assert not moded, (
        f"{what}: the refused load put {moded[:3]} ({len(moded)} modules) in {'eval' if modes[''] else 'train'} mode: "
        "a failed load leaves the model as it was, its train or eval mode too; check the whole file before touching "
        "the model (no model.eval() first)"
    )


# peft's per-layer alpha or r: honoured (as peft does: a key is a regex, re.match(rf"(.*\.)?({key})$", name), the
# first matching key in the config's order wins) or refused, never ignored.
LAYER_PATTERNS = {
    "alpha_pattern": ("alpha_pattern", {"fc1": 1.0}),
    "alpha_pattern, a regex key": ("alpha_pattern", {r"layers\.1\.mlp\.fc1": 1.0}),
    "alpha_pattern, two keys for one layer": ("alpha_pattern", {"fc1": 1.0, r"layers\.1\.mlp\.fc1": 4.0}),
    # A key is a whole dotted part or more: "c1" names no fc1 (re.search(key + "$") takes it); an alternation is
    # grouped: "fc1|head" names no fc10 ("(.*\.)?" + key + "$" unbracketed re.matches fc10's start).
    "alpha_pattern, a key ending a name's last part": ("alpha_pattern", {"c1": 1.0}),
    "alpha_pattern, an alternation": ("alpha_pattern", {"fc1|head": 1.0}),
    "rank_pattern": ("rank_pattern", {"fc1": 2}),
    "rank_pattern, an alternation": ("rank_pattern", {"fc1|head": 2}),
}


@pytest.mark.points(1)
@pytest.mark.subject("load_adapter")
@pytest.mark.parametrize("case", list(LAYER_PATTERNS))
def test_a_per_layer_pattern_is_honoured_or_refused(load_adapter, LoRALinear, LoRAConv1D, case, tmp_path):
    option, pattern = LAYER_PATTERNS[case]
    model, oracle = peft_saved("toy", tmp_path, **{option: pattern})
    before = snapshot(model)
    what = f"toy, {case}: peft's files with {option}={pattern}"
    try:
        load_adapter(model, tmp_path)
    except NotImplementedError:
        raise
    except ValueError:
        expect_as_it_was(model, before, f"{what}, refused")
        return
    found, wanted = sorted(adapters_in(model, LoRALinear, LoRAConv1D)), sorted(peft_layers(oracle))
    assert found == wanted, f"{what}: load_adapter adapted {len(found)} layers, peft {len(wanted)}"
    error = max_difference(outputs("toy", model), outputs("toy", oracle))
    assert error < 1e-5, (
        f"{what}: load_adapter accepted them and the outputs differ from peft's by {error:.3g}: the {option} gives "
        "the layers it names their own "
        + ("lora_alpha" if option == "alpha_pattern" else "r")
        + " (each key a regex peft re.matches as (.*\\.)?(key)$, the first matching key in order wins): honour it "
        "per layer, or raise ValueError before touching the model; never load it with one alpha and r"
    )
