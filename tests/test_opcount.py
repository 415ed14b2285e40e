"""OpCounter counts ATen operations, host synchronisations and flops of small known programs."""

import numpy as np
import pytest
import torch

from gpurecon.profiling import OpCounter, matmul_flops


def test_a_loop_of_ten_adds_is_ten_launches_and_no_sync():
    x = torch.ones(5)
    with OpCounter() as c:
        for _ in range(10):
            x = x + 1.0
    assert (c.ops, c.launches, c.syncs, c.flops) == (10, 10, 0, 0)
    assert c.by_op["aten::add"] == 10
    assert torch.equal(x, torch.full((5,), 11.0))


def test_views_are_operations_but_not_launches():
    x = torch.ones(4, 6)
    with OpCounter() as c:
        y = x.T[1:3].unsqueeze(0)   # transpose, slice, unsqueeze: metadata only
        z = y * 2.0                 # one kernel
    assert c.ops == 4 and c.launches == 1 and z.shape == (1, 2, 4)


@pytest.mark.parametrize("program, syncs", [
    (lambda x: x.sum().item(), 1),
    (lambda x: float(x.max()), 1),
    (lambda x: bool((x > 0).any()), 1),
    (lambda x: x[x > 0], 1),                        # boolean-mask index: the size is read back
    (lambda x: x.masked_select(x > 0), 1),
    (lambda x: torch.nonzero(x > 0), 1),
    (lambda x: torch.where(x > 0), 1),              # one-argument where is nonzero
    (lambda x: torch.equal(x, x), 1),
    (lambda x: x.tolist(), 1),                      # device -> host copies
    (lambda x: x.cpu(), 1),
    (lambda x: np.asarray(x), 1),
    (lambda x: x.index_put_((x > 0,), torch.tensor(0.0)), 1),
    (lambda x: torch.linalg.cholesky(x[:, None] * x[None] + torch.eye(x.numel())), 1),  # info check
    (lambda x: torch.linalg.cholesky_ex(x[:, None] * x[None] + torch.eye(x.numel())), 0),
    (lambda x: torch.where(x > 0, x, 0.0) * 3, 0),  # three-argument where stays on the device
    (lambda x: x[torch.tensor([0, 2])], 0),         # integer index: no sync
    (lambda x: x.sum() * 2, 0),
])
def test_host_synchronisations(program, syncs):
    x = torch.tensor([1.0, -2.0, 3.0, 0.5])
    with OpCounter() as c:
        program(x)
    assert c.syncs == syncs, c.sync_by_op


def test_one_item_is_one_sync_named_by_its_op():
    with OpCounter() as c:
        torch.arange(3.0).sum().item()
    assert c.syncs == 1 and c.sync_by_op == {"aten::_local_scalar_dense": 1}


@pytest.mark.parametrize("a, b, c_", [(2, 3, 4), (7, 1, 5), (16, 32, 8)])
def test_mm_flops_are_2abc(a, b, c_):
    x, y = torch.randn(a, b), torch.randn(b, c_)
    with OpCounter() as c:
        x @ y
        torch.mm(x, y)
        torch.addmm(torch.zeros(a, c_), x, y)
    assert c.flops == 3 * 2 * a * b * c_


def test_batched_and_einsum_products():
    x, y = torch.randn(6, 3, 4), torch.randn(6, 4, 5)
    with OpCounter() as c:
        torch.bmm(x, y)
    assert c.flops == 2 * 6 * 3 * 4 * 5
    with OpCounter() as c:
        torch.einsum("kij,kjl->kil", x, y)              # decomposes into a bmm
    assert c.flops == 2 * 6 * 3 * 4 * 5
    with OpCounter() as c:
        torch.randn(2, 3, 4) @ torch.randn(4, 5)        # folded into one mm
    assert c.flops == 2 * 6 * 4 * 5


def test_linear_algebra_flops_use_textbook_counts():
    n, k, batch = 6, 2, 3
    a = torch.randn(batch, n, n, dtype=torch.float64)
    spd = a @ a.mT + n * torch.eye(n, dtype=torch.float64)
    rhs = torch.randn(batch, n, k, dtype=torch.float64)
    with OpCounter() as c:
        L, _ = torch.linalg.cholesky_ex(spd)
    assert c.flops == batch * n ** 3 // 3
    with OpCounter() as c:
        torch.cholesky_solve(rhs, L)
    assert c.flops == batch * 2 * n * n * k
    with OpCounter() as c:
        torch.linalg.solve_triangular(L, rhs, upper=False)
    assert c.flops == batch * n * n * k
    with OpCounter() as c:
        x = torch.linalg.solve(spd, rhs)
    assert c.flops == batch * (2 * n ** 3 // 3 + 2 * n * n * k)
    assert torch.allclose(spd @ x, rhs)
    with OpCounter() as c:
        torch.linalg.eigh(spd)
    assert c.flops == batch * 9 * n ** 3
    assert matmul_flops("aten::_linalg_eigh", (spd,), out=(torch.ones(batch, n), torch.ones(0))) == \
        batch * 4 * n ** 3 // 3


def test_element_wise_work_has_no_flops_and_unknown_ops_count_zero():
    assert matmul_flops("aten::add", (torch.ones(3), torch.ones(3))) == 0
    with OpCounter() as c:
        torch.ones(100).exp().sum()
    assert c.flops == 0 and c.launches == 3


def test_host_to_device_copies_are_counted_apart_from_syncs():
    with OpCounter() as c:
        torch.tensor([1.0, 2.0]) + 1
    assert c.h2d == 1 and c.syncs == 0


def test_counts_do_not_change_results_and_the_mode_is_left_cleanly():
    x = torch.randn(8, 8, dtype=torch.float64)
    ref = torch.linalg.cholesky_ex(x @ x.T + torch.eye(8))[0].sum(0)
    with OpCounter() as c:
        got = torch.linalg.cholesky_ex(x @ x.T + torch.eye(8))[0].sum(0)
    assert torch.equal(got, ref) and c.ops > 0
    before = c.ops
    (x + 1).sum().item()                                   # outside the context: not counted
    assert c.ops == before and c.summary()["ops"] == before


def test_counting_a_solver_run_leaves_its_results_unchanged():
    # the dispatch mode may route an op differently (eigvalsh computes vectors under it), so a
    # counted run must still give the uncounted run's answer to well within the tolerance
    from gpurecon.solver import cross_val_predict

    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 30))
    Y = X[:, :3] @ rng.standard_normal((3, 2)) + 0.5 * rng.standard_normal((20, 2))
    plain = cross_val_predict(X, Y, 0.1, 0.5, device="cpu", dtype=torch.float64)
    with OpCounter() as c:
        counted = cross_val_predict(X, Y, 0.1, 0.5, device="cpu", dtype=torch.float64)
    assert torch.allclose(counted.predictions, plain.predictions, rtol=1e-6, atol=1e-8 * float(Y.std()))
    assert counted.n_not_converged == plain.n_not_converged == 0
    assert c.launches > 0 and c.flops > 0
