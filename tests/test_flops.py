"""grader/flops.py counts the matrix-product work the fused_lora check budgets, whatever the spelling."""

from __future__ import annotations

import _thread
import operator
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grader.flops import _FOREIGN, ArithmeticWork, MatmulFlops

M, K, N = 6, 5, 4
EXPECTED = 2 * M * K * N
TENSOR_METHODS = dict(vars(torch.Tensor))  # as torch defines them, before any counter


@pytest.mark.parametrize(
    "product",
    [
        pytest.param(lambda a, b: a @ b, id="matmul"),
        pytest.param(lambda a, b: F.linear(a, b.T), id="linear"),
        pytest.param(lambda a, b: torch.addmm(torch.zeros(N), a, b), id="addmm"),
        pytest.param(lambda a, b: torch.zeros(M, N).addmm_(a, b), id="addmm_"),
        pytest.param(lambda a, b: torch.einsum("mk,kn->mn", a, b), id="einsum"),
        pytest.param(lambda a, b: (a.reshape(2, 3, K) @ b).sum(), id="batched-by-broadcast"),
        pytest.param(lambda a, b: torch.bmm(a.reshape(2, 3, K), b.expand(2, K, N)), id="bmm"),
    ],
)
def test_every_spelling_of_a_product_counts_2_m_k_n(product):
    a, b = torch.randn(M, K), torch.randn(K, N)
    with MatmulFlops() as counter:
        product(a, b)
    assert counter.flops == EXPECTED


def test_a_backward_pass_is_counted_too():
    a, b = torch.randn(M, K, requires_grad=True), torch.randn(K, N)
    with MatmulFlops() as counter:
        (a @ b).sum().backward()
    assert counter.flops == 2 * EXPECTED  # forward, and dL/da = g b^T; b needs no gradient


def test_elementwise_work_is_not_counted():
    with MatmulFlops() as counter:
        torch.randn(M, K).mul(2).add(1).sum()
    assert counter.flops == 0


@pytest.mark.parametrize(
    "product",
    [
        pytest.param(lambda a, b: a @ b, id="matmul"),
        pytest.param(lambda a, b: torch.einsum("mk,kn->mn", a, b), id="einsum"),
        pytest.param(lambda a, b: torch.bmm(a.reshape(2, 3, K), b.expand(2, K, N)), id="bmm"),
        pytest.param(lambda a, b: (a[:, :, None] * b[None]).sum(1), id="mul-and-sum"),
        pytest.param(lambda a, b: torch.mul(a[:, :, None], b).sum(dim=1), id="mul-and-sum-dim"),
        pytest.param(
            lambda a, b: F.conv1d(a.T[None], b.T[:, :, None]).squeeze(0).T, id="conv1d"
        ),  # (1, K, M) by N kernels (N, K, 1)
        pytest.param(lambda a, b: F.conv_transpose1d(a.T[None], b[:, :, None])[0].T, id="conv_transpose1d"),
        pytest.param(  # each row of a one group of K channels over b's rows: 1 output channel of N per group
            lambda a, b: F.conv_transpose1d(b.repeat(M, 1)[None], a.reshape(M * K, 1, 1), groups=M)[0],
            id="grouped-conv_transpose1d",
        ),
    ],
)
def test_arithmetic_work_counts_every_spelling_of_a_product(product):
    a, b = torch.randn(M, K), torch.randn(K, N)
    with ArithmeticWork() as counter:
        product(a, b)
    assert EXPECTED <= counter.flops <= EXPECTED + M * N * K // 4  # the multiplies and adds, however spelled


def test_arithmetic_work_records_the_shape_of_each_product_and_convolution():
    a, b = torch.randn(M, K), torch.randn(K, N)
    with ArithmeticWork() as counter:
        a @ b
        F.conv_transpose1d(b.repeat(M, 1)[None], a.reshape(M * K, 1, 1), groups=M)  # a @ b, as (1, M, N)
        F.conv1d(a.T[None], b.T[:, :, None])  # (a @ b)^T, as (1, N, M)
    assert counter.product_shapes == [(M, N), (1, M, N), (1, N, M)]


def test_arithmetic_work_counts_element_wise_ops_and_not_views():
    x = torch.randn(M, K)
    with ArithmeticWork() as counter:
        x.T.reshape(-1).view(K, M).expand(3, K, M)
    assert counter.flops == 0
    with ArithmeticWork() as counter:
        x.mul(2).add(1).sum()
    assert counter.flops == 3 * M * K


@pytest.mark.parametrize(
    "product, unseen",
    [
        pytest.param(lambda a, b: torch.sparse.mm(a.to_sparse(), b), "aten._sparse_addmm", id="sparse"),
        pytest.param(lambda a, b: torch.cdist(a, b.T), "aten._cdist_forward", id="cdist"),
        pytest.param(lambda a, b: torch.from_numpy(a.numpy() @ b.numpy()), "Tensor.numpy", id="numpy"),
        pytest.param(lambda a, b: torch.tensor(np.asarray(a) @ np.asarray(b)), "Tensor.__array__", id="asarray"),
        pytest.param(lambda a, b: torch.tensor(a.tolist()) @ b, "Tensor.tolist", id="tolist"),
        pytest.param(lambda a, b: a * b[0, 0].item(), "Tensor.item", id="item"),
        pytest.param(lambda a, b: a * float(b[0, 0]), "Tensor.__float__", id="float"),
        pytest.param(lambda a, b: a * int(b[0, 0] > 0), "Tensor.__int__", id="int"),
        pytest.param(lambda a, b: a[operator.index((b[0, 0] > 0).long())], "Tensor.__index__", id="index"),
        pytest.param(
            lambda a, b: torch.from_dlpack(torch.utils.dlpack.to_dlpack(a)) @ b,
            "torch.utils.dlpack.to_dlpack",
            id="to_dlpack",
        ),
        pytest.param(lambda a, b: torch.from_numpy(np.ones((M, K), np.float32)) @ b, _FOREIGN, id="from_numpy"),
        pytest.param(
            lambda a, b: torch.frombuffer(bytearray(4 * M * K), dtype=torch.float32).view(M, K) @ b,
            _FOREIGN,
            id="frombuffer",
        ),
        pytest.param(
            lambda a, b: torch.tensor([[1.0] * K] * M) @ b,
            f"torch.tensor(...) of {M * K} Python values",
            id="torch.tensor-of-values",
        ),
    ],
)
def test_arithmetic_work_names_the_work_it_cannot_count(product, unseen):
    a, b = torch.randn(M, K), torch.randn(K, N)
    with ArithmeticWork() as counter:
        product(a, b)
    assert unseen in counter.uncounted | counter.exits
    assert vars(torch.Tensor) == TENSOR_METHODS, "the exits were not restored as torch defined them"


def test_arithmetic_work_sees_nothing_unseen_in_dense_work():
    a = torch.randn(M, K, requires_grad=True)
    with ArithmeticWork() as counter:
        torch.cat([a, a]).split(M)[0].addmm(torch.zeros(M, K), torch.eye(K)).mul(2).sum().backward()
        torch.zeros(3).fill_(1).new_zeros(2)
    assert not counter.uncounted and not counter.exits, (counter.uncounted, counter.exits)


def _worker_fed_by_a_queue() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A product done by a thread started before the count, fed through a queue (a pool made at import time)."""
    jobs: queue.Queue = queue.Queue()
    results: queue.Queue = queue.Queue()

    def work() -> None:
        while True:
            a, b = jobs.get()
            results.put(a @ b)

    threading.Thread(target=work, daemon=True).start()
    return lambda a, b: (jobs.put((a, b)), results.get())[1]


def _on_a_raw_thread(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    done, product = _thread.allocate_lock(), []
    done.acquire()
    _thread.start_new_thread(lambda: (product.append(a @ b), done.release()), ())
    done.acquire()
    return product[0]


def _on_a_thread(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    product: list[torch.Tensor] = []
    thread = threading.Thread(target=lambda: product.append(a @ b))
    thread.start()
    thread.join()
    return product[0]


_POOL = ThreadPoolExecutor(max_workers=1)


@pytest.mark.parametrize(
    "product",
    [
        pytest.param(_on_a_thread, id="threading.Thread"),
        pytest.param(_on_a_raw_thread, id="_thread.start_new_thread"),
        pytest.param(lambda a, b: _POOL.submit(torch.mm, a, b).result(), id="a pool made before"),
        pytest.param(_worker_fed_by_a_queue(), id="a worker fed by a queue"),
    ],
)
def test_arithmetic_work_names_work_on_another_thread(product):
    a, b = torch.randn(M, K), torch.randn(K, N)
    with ArithmeticWork() as counter:
        assert torch.equal(product(a, b), a @ b)
    assert any(exit.endswith("(work on another thread)") for exit in counter.exits), counter.exits
    assert counter.products == EXPECTED, "the calling thread's own product, a @ b, was not counted"


def test_arithmetic_work_names_a_process_started():
    with ArithmeticWork() as counter:
        child = os.fork()
        if child == 0:
            os._exit(0)
    os.waitpid(child, 0)
    assert "os.fork (work in another process)" in counter.exits, counter.exits
