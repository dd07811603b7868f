"""Mutation testing of the reference answers, with the grader as the test suite.

    python benchmarks/mutation_testing.py [--module lora_linear] [--jobs 2] [--timeout 60] [--list]

Needs cosmic-ray (`pip install -e '.[mutation]'`). The mutants are cosmic-ray's: every operator of
its that takes no argument, at every place where it applies in solutions/<kata>.py, enumerated as
`cosmic-ray init` does. Each mutant is graded in a subprocess by grader/test_<kata>.py alone, on a
copy of solutions/ in which only that module is mutated, with -x: the first failing check kills the
mutant, and so does running past --timeout (the grader's own 20 s limit per check is raised to it
with --check-timeout, so that a busy machine fakes no kill). The grader, solutions/ and
pyproject.toml are copied first: edits made to them during the run change nothing. Prints the kill
rate per module and in all, then every survivor with its diff. A survivor listed in EQUIVALENT below
is reported with the reason no check can kill it. Exits 1 if a survivor is not listed or the grader
could not run on a mutant, 2 if the grader fails the unmutated answers.

Why cosmic-ray's library API and not `cosmic-ray exec` or mutmut: `cosmic-ray exec` writes each
mutant over the module in place, runs one test command for every module, and runs in parallel only
through HTTP workers, each in its own checkout; mutmut 3 runs mutants through trampolines that
dispatch on the mutated function's `__module__`, which the grader's `katas` package (the folder
given to --impl) never matches, so every mutant would count as untested. Here cosmic-ray makes the
mutants and this script grades them, in fresh folders, two at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Equivalent:
    """A mutant no check can kill: in ``module``, the changed lines ``original`` become ``mutated``
    (stripped, several lines joined by newlines); ``reason`` says why the spec cannot tell them apart."""

    module: str
    original: str
    mutated: str
    reason: str


_TOO_MANY = "only the error message lists more or fewer of the model's layers; the spec asks it to name the targets"
_R_CHECK = "if isinstance(r, bool) or not isinstance(r, int) or r < 1:"
_DROPOUT_CHECK = "if not 0.0 <= dropout < 1.0:"
_BY_NN_DROPOUT = (
    "nn.Dropout(dropout), later in __init__, raises a ValueError for it: the same exception for every input, "
    "only after the base is frozen, and the spec does not say what a failed construction leaves behind"
)
_KAIMING = "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))"
_SIGNATURE = "tokenizer: Any, instruction: str, input: str, output: str, max_length: int | None = None"
_FUSED_ANNOTATIONS = (
    "bias: torch.Tensor | None,",
    "def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:",
)
_OPERATORS = ("+", "-", "*", "/", "//", "%", "**", "<<", ">>", "&", "^")
_MERGED = "merged.weight = nn.Parameter((weight.to(accumulate) + update).to(weight.dtype), requires_grad={})"

EQUIVALENT = [
    Equivalent("apply_lora", 'f"the model\'s linear layers are {linear_names[:8]}"',
               'f"the model\'s linear layers are {linear_names[: 9]}"', _TOO_MANY),
    Equivalent("apply_lora", 'f"the model\'s linear layers are {linear_names[:8]}"',
               'f"the model\'s linear layers are {linear_names[: 7]}"', _TOO_MANY),
    Equivalent("lora_linear", _R_CHECK, _R_CHECK.replace("or not", "and not"),
               "same verdict for every int r, the spec's domain; only a bool (True taken as rank 1) or a float r "
               "(TypeError from torch.empty instead of ValueError) goes differently"),
    *[
        Equivalent(module, _KAIMING, _KAIMING.replace("sqrt(5)", f"sqrt( {n})"),
                   "A stays Kaiming-uniform, 7% narrower (a = sqrt(6)) or 10% wider (a = 2); the spec lets A be "
                   "a Gaussian of any scale, so A's scale is free and no check may pin it")
        for module in ("lora_linear", "fused_lora")
        for n in (4, 6)
    ],
    Equivalent("lora_linear", _DROPOUT_CHECK, _DROPOUT_CHECK.replace("0.0 <=", "-1.0 <="),
               f"a dropout in [-1, 0) passes this check; {_BY_NN_DROPOUT}"),
    Equivalent("lora_linear", _DROPOUT_CHECK, _DROPOUT_CHECK.replace("< 1.0", "!= 1.0"),
               f"a dropout above 1 passes this check (1.0 still does not); {_BY_NN_DROPOUT}"),
    Equivalent("merge_weights", "@torch.no_grad()", "",
               "nn.Parameter(tensor) is a leaf with no grad history anyway; only a temporary autograd graph is built"),
    Equivalent("merge_weights", _MERGED.format(False), _MERGED.format(True),
               "the spec says nothing of whether the merged weight trains; correct answers differ "
               "(tests/right_answers/linear_submodules returns the frozen base, the others a new trainable nn.Linear)"),
    *[
        Equivalent("masked_prompt", _SIGNATURE, _SIGNATURE.replace("int | None", f"int {operator} None"),
                   "an annotation: under `from __future__ import annotations` it is never evaluated")
        for operator in _OPERATORS
    ],
    *[
        Equivalent("fused_lora", annotation, annotation.replace("Tensor | None", f"Tensor {operator} None"),
                   "an annotation: under `from __future__ import annotations` it is never evaluated")
        for annotation in _FUSED_ANNOTATIONS
        for operator in _OPERATORS
    ],
    Equivalent("fused_lora", "@staticmethod", "",
               "Function.apply looks forward and backward up on the class, where a plain function is called "
               "exactly as a staticmethod is"),
]  # fmt: skip


@dataclass(frozen=True)
class Mutant:
    module: str
    operator: str
    occurrence: int
    line: int  # first changed line in the reference answer
    original: str  # the changed lines, stripped, blank ones left out
    mutated: str
    diff: str
    code: str

    @property
    def key(self) -> tuple[str, str, str]:
        return self.module, self.original, self.mutated


@dataclass(frozen=True)
class Outcome:
    status: str  # killed, survived, timeout (counts as killed) or error (the grader could not run)
    detail: str  # the check that failed first, or the output tail of an error
    seconds: float


def operators() -> list[tuple[str, object]]:
    """Every cosmic-ray operator that needs no argument, by name; cosmic-ray init's default set."""
    from cosmic_ray import plugins

    found = []
    for name in sorted(set(plugins.operator_names())):
        operator_class = plugins.get_operator(name)
        if not operator_class.arguments():
            found.append((name, operator_class()))
    return found


def snapshot(destination: Path) -> Path:
    """Copy the grader (its checks and the engine), the reference answers and pyproject.toml (pytest's settings)
    to ``destination``: every mutant is graded by the grader as it was at the start, whatever is edited meanwhile."""
    for folder in ("grader", "lora_kata"):
        shutil.copytree(REPOSITORY / folder, destination / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (destination / "solutions").mkdir()
    for path in (REPOSITORY / "solutions").glob("*.py"):
        shutil.copyfile(path, destination / "solutions" / path.name)
    shutil.copyfile(REPOSITORY / "pyproject.toml", destination / "pyproject.toml")
    (destination / "mutants").mkdir()
    return destination


def mutants_of(module: str, root: Path) -> list[Mutant]:
    """Every mutant of solutions/<module>.py, ordered by line, then operator and occurrence."""
    from cosmic_ray.ast import ast_nodes, get_ast
    from cosmic_ray.mutating import mutate_code

    source = (root / "solutions" / f"{module}.py").read_text()
    tree = get_ast(source)
    found, seen = [], set()
    for name, operator in operators():
        count = sum(1 for node in ast_nodes(tree) for _ in operator.mutation_positions(node))
        for occurrence in range(count):
            code = mutate_code(source, operator, occurrence)
            if code is None or code == source or code in seen:
                continue
            seen.add(code)
            found.append(_describe(module, name, occurrence, source, code))
    return sorted(found, key=lambda m: (m.line, m.operator, m.occurrence))


def _describe(module: str, operator: str, occurrence: int, source: str, code: str) -> Mutant:
    before, after = source.splitlines(), code.splitlines()
    diff = [line for line in difflib.unified_diff(before, after, lineterm="", n=0)][2:]
    hunk = re.match(r"@@ -(\d+)", diff[0])
    removed = [line[1:].strip() for line in diff if line.startswith("-") and line[1:].strip()]
    added = [line[1:].strip() for line in diff if line.startswith("+") and line[1:].strip()]
    first = int(hunk.group(1)) if hunk else 0
    if removed:  # the first non-blank changed line
        first = next(i + 1 for i in range(max(first - 1, 0), len(before)) if before[i].strip() == removed[0])
    shown = [line for line in diff if not line.startswith("@@") and line[1:].strip()]
    return Mutant(module, operator, occurrence, first, "\n".join(removed), "\n".join(added), "\n".join(shown), code)


def modules(requested: list[str] | None, root: Path) -> list[str]:
    """The katas to mutate: solutions/<kata>.py that grader/test_<kata>.py checks, or those requested."""
    solutions = sorted((root / "solutions").glob("*.py"))
    checked = [path.stem for path in solutions if (root / "grader" / f"test_{path.stem}.py").is_file()]
    available = sorted(checked)
    for path in solutions:
        if path.stem != "__init__" and path.stem not in available:
            print(f"solutions/{path.name} skipped: no grader/test_{path.name} checks it")
    unknown = sorted(set(requested or ()) - set(available))
    if unknown:
        sys.exit(f"--module {', '.join(unknown)}: not among the graded katas {available}")
    return [module for module in available if module in (requested or available)]


def grade(module: str, code: str | None, root: Path, index: int, timeout: float) -> Outcome:
    """Grade solutions/ with ``module`` replaced by ``code`` (None: the reference) in a subprocess."""
    folder = root / "mutants" / f"{module}-{index:04d}"
    folder.mkdir()
    for path in (root / "solutions").glob("*.py"):
        shutil.copyfile(path, folder / path.name)
    if code is not None:
        (folder / f"{module}.py").write_text(code)
    command = [sys.executable, "-m", "pytest", f"grader/test_{module}.py", "--impl", str(folder)]
    # The grader's limit per check (20 s) becomes the mutant's: a check slowed down by a busy machine never
    # counts as a kill; a mutant that hangs is still killed at ``timeout``.
    command += ["-x", "-q", "-p", "no:cacheprovider", "--check-timeout", str(timeout)]
    environment = {key: value for key, value in os.environ.items() if key != "KATA_IMPL"}
    environment.update(PYTHONDONTWRITEBYTECODE="1", COLUMNS="400")
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=root,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a timeout kills the whole process group
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return Outcome("timeout", f"ran past {timeout:g} s", time.perf_counter() - start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - start
    if process.returncode == 0:
        return Outcome("survived", "", seconds)
    if process.returncode in (2, 3, 4, 5):  # interrupted, internal error, usage error, no tests
        tail = " | ".join(output.strip().splitlines()[-5:])
        return Outcome("error", f"pytest exit code {process.returncode}: {tail}", seconds)
    failed = re.search(r"^FAILED \S+::(.*)$", output, re.MULTILINE)
    last = output.strip().splitlines()[-1:] or [""]
    detail = failed.group(1) if failed else f"exit code {process.returncode}: {last[0]}"
    return Outcome("killed", detail[:160], seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", help="mutate only this kata (repeatable; default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants graded at once (default 2)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant; past it, killed (default 60)")
    parser.add_argument("--list", action="store_true", help="list the mutants and grade none")
    parser.add_argument(
        "--verbose", action="store_true", help="print every mutant's outcome and the check that killed it"
    )
    arguments = parser.parse_args()

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lora-kata-mutants-") as directory:
        root = snapshot(Path(directory))
        katas = modules(arguments.module, root)
        mutants = [mutant for kata in katas for mutant in mutants_of(kata, root)]
        print(f"cosmic-ray {version('cosmic-ray')}: {len(mutants)} mutants of solutions/{{{','.join(katas)}}}.py")
        if arguments.list:
            for mutant in mutants:
                print(f"\nsolutions/{mutant.module}.py:{mutant.line} {mutant.operator} #{mutant.occurrence}")
                print(_indent(mutant.diff))
            return 0
        with ThreadPoolExecutor(max_workers=arguments.jobs) as pool:
            baselines = dict(zip(katas, pool.map(lambda kata: grade(kata, None, root, 0, 600.0), katas), strict=True))
            broken = {kata: outcome for kata, outcome in baselines.items() if outcome.status != "survived"}
            for kata, outcome in broken.items():
                print(f"the grader fails the unmutated solutions/{kata}.py ({outcome.status}: {outcome.detail})")
            if broken:
                return 2
            print(
                f"grading each with grader/test_<kata>.py -x, {arguments.jobs} at a time, {arguments.timeout:g} s each"
            )
            outcomes = list(
                pool.map(
                    lambda pair: grade(pair[1].module, pair[1].code, root, pair[0] + 1, arguments.timeout),
                    enumerate(mutants),
                )
            )
    elapsed = time.perf_counter() - start
    if arguments.verbose:
        for mutant, outcome in zip(mutants, outcomes, strict=True):
            print(f"\nsolutions/{mutant.module}.py:{mutant.line} {mutant.operator}: {outcome.status} {outcome.detail}")
            print(_indent(mutant.diff))
    return report(katas, mutants, outcomes, elapsed, arguments.module is None)


def report(katas: list[str], mutants: list[Mutant], outcomes: list[Outcome], elapsed: float, everything: bool) -> int:
    equivalent = {(e.module, e.original, e.mutated): e for e in EQUIVALENT}
    results = list(zip(mutants, outcomes, strict=True))
    killed = {id(m) for m, o in results if o.status in ("killed", "timeout")}
    survivors = [(m, o) for m, o in results if o.status == "survived"]
    errors = [(m, o) for m, o in results if o.status == "error"]

    print(
        f"\n{'module':<16}{'mutants':>8}{'killed':>8}{'equivalent':>11}{'unexplained':>12}{'kill rate':>10}{'score':>8}"
    )
    rows = [(kata, [r for r in results if r[0].module == kata]) for kata in katas] + [("total", results)]
    for name, rows_of in rows:
        total = len(rows_of)
        dead = sum(1 for m, _ in rows_of if id(m) in killed)
        listed = sum(1 for m, o in rows_of if o.status == "survived" and m.key in equivalent)
        unexplained = sum(1 for m, o in rows_of if o.status != "killed" and o.status != "timeout") - listed
        rate = f"{dead / total:.1%}" if total else "-"
        score = f"{dead / (total - listed):.1%}" if total - listed else "-"
        print(f"{name:<16}{total:>8}{dead:>8}{listed:>11}{unexplained:>12}{rate:>10}{score:>8}")
    print("kill rate: killed / mutants; score: killed / (mutants - equivalent)")
    timeouts = sum(1 for o in outcomes if o.status == "timeout")
    print(f"{len(mutants)} mutants graded in {elapsed:.0f} s ({timeouts} killed by the timeout)")

    unexplained = [(m, o) for m, o in survivors if m.key not in equivalent]
    for title, group in [
        ("equivalent survivors", [(m, o) for m, o in survivors if m.key in equivalent]),
        ("SURVIVORS NOT KILLED NOR LISTED AS EQUIVALENT", unexplained),
        ("GRADER ERRORS", errors),
    ]:
        if group:
            print(f"\n{title} ({len(group)}):")
        for mutant, outcome in group:
            entry = equivalent.get(mutant.key)
            note = f": {entry.reason}" if entry and outcome.status == "survived" else ""
            note = f": {outcome.detail}" if outcome.status == "error" else note
            print(f"  solutions/{mutant.module}.py:{mutant.line} {mutant.operator}{note}")
            print(_indent(mutant.diff, "      "))

    by_key = {m.key: (m, o) for m, o in results}
    stale = [e for e in EQUIVALENT if e.module in katas and (e.module, e.original, e.mutated) not in by_key]
    dead_listed = [by_key[k] for k in equivalent if k in by_key and id(by_key[k][0]) in killed]
    for mutant, outcome in dead_listed:
        print(
            f"\nnote: listed as equivalent but killed by {outcome.detail}: solutions/{mutant.module}.py:{mutant.line}"
        )
        print(_indent(mutant.diff, "      "))
    if stale and everything:
        print(f"\nnote: {len(stale)} EQUIVALENT entries match no mutant now (the reference changed?):")
        for entry in stale:
            print(f"  {entry.module}: {entry.original!r} -> {entry.mutated!r}")
    return 1 if unexplained or errors else 0


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
