"""A preloaded grading server: `lora-kata batch` grades each submission in a fork of one process that has already
imported torch, pytest and the libraries the checks use, instead of paying for those imports every time.

The server (``python -m lora_kata.grading.server``) imports them once, never touching CUDA (a forked child could
not use it), then answers requests, one JSON line each on stdin, by forking a reaper per grading (``reaper.py``:
a subreaper that kills whatever the grading leaves running), which forks the grading process itself: a new
session, the same address-space cap and wall-clock limit as a fresh worker, stdin and stdout on /dev/null,
stderr to a file. That process forgets the server's own modules, imports the grader from the request's private
copy (as a fresh worker does, so tampering is caught the same way), restores the random state a fresh process
starts with and grades. Each reply is one JSON line on stdout: the reaper's status.

``GradingServer`` is the client: its ``launch`` has the signature of ``isolation.launch_process``, and where the
server cannot start (no fork, a failed import) or dies, it falls back to it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[2])  # this checkout, not this folder's modules

from lora_kata.grading.reaper import Status, run_reaped
from lora_kata.grading.worker import CHECK_TIMEOUT_VARIABLE, check_timeout_environment

# What a grading imports that costs time (found by listing what a grading of solutions/ imports), in import order;
# an oracle that is not installed is left out. pytest's default plugins are added from pytest itself.
PRELOAD = ("numpy", "numpy.random", "torch", "torch.nn.functional", "torch.autograd.gradcheck", "torch.testing",
           "torch.utils._python_dispatch", "torch.fx.experimental.symbolic_shapes", "pytest", "hypothesis",
           "hypothesis.strategies", "hypothesis.internal.conjecture.optimiser", "tokenizers", "tokenizers.trainers",
           "transformers", "transformers.tokenization_utils_tokenizers")  # fmt: skip
# Not preloaded: peft and bitsandbytes ask torch about CUDA devices when imported, which initialises the CUDA
# driver; the checks that need them import them in the grading process.
CUDA_QUERIES = (("torch._C", "_cuda_getDeviceCount"), ("torch.cuda", "is_available"), ("torch.cuda", "device_count"),
                ("torch.cuda", "_lazy_init"), ("torch.cuda", "init"))  # fmt: skip
TORCH_INITIAL_SEED = 67280421310721  # torch's default seed in a fresh process
REPLY_GRACE_S = 30.0


@contextlib.contextmanager
def preloaded() -> Iterator[Callable[..., tuple[Status, str]] | None]:
    """A running server's ``launch`` for ``grade_isolated``, or None where it is off or could not start."""
    if not enabled():
        yield None
        return
    server = GradingServer()
    try:
        yield server.launch if server.alive else None
    finally:
        server.close()


def enabled() -> bool:
    """Whether batch should grade through the server: fork exists and ``LORA_KATA_PRELOAD`` is not 0."""
    return hasattr(os, "fork") and os.environ.get("LORA_KATA_PRELOAD", "1") != "0"


class GradingServer:
    """A running server and the client side of its pipes; ``launch`` may be called from several threads."""

    def __init__(self) -> None:
        from lora_kata.grading.isolation import launch_process  # the fallback

        self.fallback = launch_process
        self.lock, self.replies, self.waiting = threading.Lock(), {}, {}
        self.next_id, self.alive = 0, False
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        ready = self.process.stdout.readline()
        with contextlib.suppress(ValueError):
            self.alive = json.loads(ready).get("ready") is True
        if self.alive:
            threading.Thread(target=self._read_replies, daemon=True).start()

    def launch(
        self,
        copy: Path,
        implementation: Path,
        journal: Path,
        katas: Sequence[str],
        time_left_s: float,
        memory_mb: int,
        check_timeout_s: float | None = None,
    ) -> tuple[Status, str]:
        """Grade in a fork of the server; the same arguments and result as ``isolation.launch_process``."""
        stderr_file = copy / "stderr.txt"
        arguments = copy, implementation, journal, katas, time_left_s, memory_mb, check_timeout_s
        request = {"copy": str(copy), "implementation": str(implementation), "journal": str(journal),
                   "katas": list(katas), "time_left_s": max(time_left_s, 0.1), "memory_mb": memory_mb,
                   "stderr": str(stderr_file), "cwd": os.getcwd(),
                   "environment": check_timeout_environment(check_timeout_s),
                   "pythonpath": os.environ.get("PYTHONPATH", "")}  # fmt: skip
        done = threading.Event()
        with self.lock:
            sent = self.alive
            if sent:
                request["id"], self.next_id = self.next_id, self.next_id + 1
                self.waiting[request["id"]] = done
                try:
                    self.process.stdin.write(json.dumps(request) + "\n")
                    self.process.stdin.flush()
                except OSError:
                    self.alive = sent = False
        if not sent:
            return self.fallback(*arguments)
        done.wait(request["time_left_s"] + REPLY_GRACE_S)
        with self.lock:
            reply = self.replies.pop(request["id"], None)
            self.waiting.pop(request["id"], None)
        if reply is None:  # the server died or hangs: grade this one in a fresh process
            self.alive = False
            journal.unlink(missing_ok=True)
            return self.fallback(*arguments)
        stderr = stderr_file.read_text(errors="replace") if stderr_file.is_file() else ""
        return Status(reply["returncode"], reply["leftovers"]), stderr

    def _read_replies(self) -> None:
        for line in self.process.stdout:
            reply = json.loads(line)
            with self.lock:
                self.replies[reply["id"]] = reply
                if reply["id"] in self.waiting:
                    self.waiting[reply["id"]].set()
        with self.lock:
            self.alive = False
            for event in self.waiting.values():
                event.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=REPLY_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# The server's side.


def preload() -> list[str]:
    """Import what gradings import; returns the CUDA queries that importing made (there must be none)."""
    import torch  # noqa: F401  (first: the tripwire below wraps its CUDA entry points)

    queries: list[str] = []
    saved = []
    for owner_name, name in CUDA_QUERIES:
        owner = importlib.import_module(owner_name)
        if hasattr(owner, name):
            original = getattr(owner, name)
            saved.append((owner, name, original))

            def tripwire(*arguments, _original=original, _name=f"{owner_name}.{name}", **keywords):
                queries.append(_name)
                return _original(*arguments, **keywords)

            setattr(owner, name, tripwire)
    try:
        for name in PRELOAD:
            if importlib.util.find_spec(name.partition(".")[0]) is not None:
                importlib.import_module(name)
        from _pytest.config import default_plugins

        for plugin in default_plugins:
            with contextlib.suppress(ImportError):
                importlib.import_module(f"_pytest.{plugin}")
        for entry_point in importlib.metadata.entry_points(group="pytest11"):  # installed plugins: timeout, ...
            with contextlib.suppress(Exception):
                importlib.import_module(entry_point.module)
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
    return queries


def serve() -> None:
    """Answer requests from stdin until it closes, one reaper fork per request."""
    queries = preload()
    if queries:
        print(json.dumps({"ready": False, "cuda_queries": sorted(set(queries))}), flush=True)
        return
    print(json.dumps({"ready": True}), flush=True)
    active: dict[int, tuple[int, int]] = {}  # reply pipe -> (reaper pid, request id)
    requests = sys.stdin.buffer.raw
    pending, open_input = b"", True
    while open_input or active:
        readable, _, _ = select.select([requests] * open_input + list(active), [], [])
        for source in readable:
            if source is requests:
                chunk = os.read(requests.fileno(), 1 << 16)
                open_input = bool(chunk)
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    request = json.loads(line)
                    pipe, pid = _start(request)
                    active[pipe] = (pid, request["id"])
            else:
                pid, request_id = active.pop(source)
                status = b"".join(iter(lambda source=source: os.read(source, 1 << 16), b""))
                os.close(source)
                _, code = os.waitpid(pid, 0)
                reply = (
                    json.loads(status) if status else {"returncode": os.waitstatus_to_exitcode(code), "leftovers": []}
                )
                print(json.dumps({"id": request_id, **reply}), flush=True)


def _start(request: dict) -> tuple[int, int]:
    """Fork the reaper of one grading; returns the pipe its status comes back on, and its pid."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        return read_end, pid
    try:  # the reaper
        os.close(read_end)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        status = run_reaped(lambda: _grade(request), request["time_left_s"], request["memory_mb"])
        os.write(write_end, json.dumps({"returncode": status.returncode, "leftovers": status.leftovers}).encode())
    finally:
        os._exit(0)


def _grade(request: dict) -> int:
    """In the grading process: start from a fresh process's state, then grade with the request's copy."""
    stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(stderr, 2)
    os.closerange(3, 1 << 16)  # the server's pipes are none of the submission's business
    os.chdir(request["cwd"])
    copy = request["copy"]
    os.environ["PYTHONPATH"] = os.pathsep.join([copy, request["pythonpath"]])
    os.environ.pop(CHECK_TIMEOUT_VARIABLE, None)
    os.environ.update(request["environment"])
    for name in [name for name in sys.modules if name.split(".")[0] in ("lora_kata", "grader", "katas")]:
        del sys.modules[name]
    sys.path[0] = copy
    importlib.invalidate_caches()
    _fresh_random_state()
    worker = importlib.import_module("lora_kata.grading.worker")
    return worker.main([request["implementation"], request["journal"], *request["katas"]])


def _fresh_random_state() -> None:
    import random

    import torch

    random.seed()
    torch.manual_seed(TORCH_INITIAL_SEED)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()


if __name__ == "__main__":
    serve()
