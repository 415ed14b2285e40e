"""The dual's semismooth Newton (gpurecon.solver.dual_newton) against the certified exact
optimum of each fold problem (tests/certified_reference.py: numpy float64 sign-pattern solves
accepted only with KKT on every feature), on the designs where primal active-set rounds crawl:
near-collinear pairs, heavy-tailed columns, wide rank-saturated folds, small alpha."""

import numpy as np
import pytest
import torch

from certified_reference import alpha_max, exact_enet
from gpurecon.solver import cross_val_predict, enet_path_fit, kfold
from gpurecon.solver.dual_newton import dual_newton

F64 = torch.float64


def _design(kind, rng, n, p):
    if kind == "collinear":      # pairs of columns with correlation ~0.999
        base = rng.standard_normal((n, (p + 1) // 2))
        return np.repeat(base, 2, axis=1)[:, :p] + 0.03 * rng.standard_normal((n, p))
    if kind == "heavy_tails":    # Student-t entries, df = 2
        return rng.standard_t(2.0, (n, p))
    return rng.standard_normal((n, p))


def _fold_problems(kind, seed, n, p, frac, l1):
    """Every fold of a 5-fold split of one target: tensors for dual_newton and the numpy data
    for the reference."""
    rng = np.random.default_rng(seed)
    X = _design(kind, rng, n, p)
    y = X[:, :5] @ rng.standard_normal(5) + rng.standard_normal(n)
    alpha = frac * alpha_max(X, y, l1)
    masks = kfold(n, 5, shuffle=True, seed=seed)
    Xc = X - X.mean(0)
    Xe = np.zeros((n, p + 1))
    Xe[:, :p] = Xc
    yc = np.stack([(y - y[m].mean()) * m for m in masks])
    train = masks.astype(np.float64)
    n_train = train.sum(1)
    t = lambda v: torch.tensor(v, dtype=F64)  # noqa: E731
    return (X, y, masks, alpha), (t(Xe), t(train), t(n_train), t(yc), t(alpha * l1 * n_train),
                                  t(alpha * (1 - l1) * n_train))


CASES = [("collinear", 0, 40, 160, 1e-3, 0.5), ("collinear", 1, 40, 160, 1e-2, 0.05),
         ("heavy_tails", 2, 40, 160, 1e-3, 0.5), ("heavy_tails", 3, 30, 300, 1e-2, 0.5),
         ("iid", 4, 40, 400, 1e-3, 0.9),
         # active sets narrower than n at every step: the |A| x |A| (Woodbury) Newton systems
         ("iid", 8, 60, 200, 0.3, 0.5), ("heavy_tails", 9, 60, 200, 0.2, 0.5)]


@pytest.mark.parametrize("kind,seed,n,p,frac,l1", CASES)
def test_cold_start_reaches_the_certified_optimum(kind, seed, n, p, frac, l1):
    (X, y, masks, alpha), (Xe, train, n_train, yc, a, b) = _fold_problems(kind, seed, n, p, frac, l1)
    w, settled = dual_newton(Xe, train, n_train, True, yc, yc.clone(), a, b)   # from w = 0
    assert bool(settled.all())
    for f, m in enumerate(masks):
        ref = exact_enet(X[m], y[m], alpha, l1)
        assert ref.certificate.holds()
        scale = np.abs(ref.coef).max()
        assert np.array_equal(w[f, :p].numpy() != 0, ref.coef != 0), f"fold {f}: support"
        np.testing.assert_allclose(w[f, :p].numpy(), ref.coef, rtol=0, atol=1e-8 * scale, err_msg=f"fold {f}")
        assert float(w[f, p]) == 0.0   # the padding column


def test_the_full_data_fit_skips_fold_centring_to_the_same_optimum():
    """``all_rows``: every problem trains on every row of a design already centred on them, so
    the fold-centring passes are skipped; the answer is the same optimum (the certified one)."""
    rng = np.random.default_rng(12)
    n, p = 50, 200
    X = rng.standard_t(3.0, (n, p))
    Y = X[:, :6] @ rng.standard_normal((6, 4)) + rng.standard_normal((n, 4))
    l1 = 0.5
    alphas = np.array([f * alpha_max(X, Y[:, t], l1) for t, f in enumerate((0.5, 0.2, 0.05, 0.01))])
    Xe = torch.zeros((n, p + 1), dtype=F64)
    Xe[:, :p] = torch.tensor(X - X.mean(0))
    yc = torch.tensor((Y - Y.mean(0)).T)
    train, n_train = torch.ones((4, n), dtype=F64), torch.full((4,), float(n), dtype=F64)
    a, b = torch.tensor(alphas * l1 * n), torch.tensor(alphas * (1 - l1) * n)
    fast, settled = dual_newton(Xe, train, n_train, True, yc, yc.clone(), a, b, all_rows=True)
    slow, _ = dual_newton(Xe, train, n_train, True, yc, yc.clone(), a, b)
    assert bool(settled.all())
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10 * float(slow.abs().max()))
    for t in range(4):
        ref = exact_enet(X, Y[:, t], alphas[t], l1)
        assert ref.certificate.holds()
        assert np.array_equal(fast[t, :p].numpy() != 0, ref.coef != 0), f"target {t}: support"
        np.testing.assert_allclose(fast[t, :p].numpy(), ref.coef, rtol=0, atol=1e-8 * np.abs(ref.coef).max())


def test_warm_start_from_any_residual_gives_the_same_optimum():
    _, (Xe, train, n_train, yc, a, b) = _fold_problems("collinear", 5, 40, 160, 1e-3, 0.5)
    cold, _ = dual_newton(Xe, train, n_train, True, yc, yc.clone(), a, b)
    r0 = yc + 5.0 * torch.randn(yc.shape, dtype=F64, generator=torch.Generator().manual_seed(0))
    warm, settled = dual_newton(Xe, train, n_train, True, yc, r0, a, b)
    assert bool(settled.all())
    torch.testing.assert_close(warm, cold, rtol=0, atol=1e-9 * float(cold.abs().max()))


def test_held_out_rows_never_enter():
    """A fold's answer must not depend on its held-out rows: other values there (of the design
    and of the starting residual) change nothing."""
    _, (Xe, train, n_train, yc, a, b) = _fold_problems("heavy_tails", 6, 40, 160, 1e-2, 0.5)
    one = slice(0, 1)
    w1, _ = dual_newton(Xe, train[one], n_train[one], True, yc[one], yc[one].clone(), a[one], b[one])
    held = train[0] == 0
    X2 = Xe.clone()
    X2[held, :-1] = 50.0 * torch.randn((int(held.sum()), Xe.shape[1] - 1), dtype=F64,
                                       generator=torch.Generator().manual_seed(1))
    r0 = torch.where(held, 100.0, yc[0])[None]
    w2, _ = dual_newton(X2, train[one], n_train[one], True, yc[one], r0, a[one], b[one])
    torch.testing.assert_close(w2, w1, rtol=0, atol=1e-9 * float(w1.abs().max()))


def test_hard_kfold_problems_certify_in_few_rounds():
    """Collinear pairs, 10-fold, 1e-3 x alpha_max: the primal active-set rounds alone took
    hundreds of rounds here (one coordinate crossing zero per round); with the dual Newton step
    every fold certifies within a few rounds, and agrees with the certified reference."""
    rng = np.random.default_rng(7)
    n, p = 60, 240
    X = _design("collinear", rng, n, p)
    y = X[:, :6] @ rng.standard_normal(6) + rng.standard_normal(n)
    alpha, l1 = 1e-3 * alpha_max(X, y, 0.5), 0.5
    masks = kfold(n, 10, shuffle=True, seed=0)
    res = enet_path_fit(X, y[:, None], [alpha], [l1], train_masks=masks, tol=1e-4)
    assert bool(res.certified.all())
    assert int(res.n_iter.max()) <= 40, res.n_iter.flatten().tolist()
    pred = cross_val_predict(X, y, [alpha], [l1], folds=masks).predictions[0]
    for f, m in enumerate(masks):
        ref = exact_enet(X[m], y[m], alpha, l1)
        np.testing.assert_allclose(pred[~m].numpy(), ref.predict(X[~m]), rtol=0, atol=1e-8 * y.std())


def test_host_reads_per_newton_step():
    """The GPU path (``staged=False``) reads the host (whether any problem still moves, with
    the next step's widest active set) every READ_EVERY steps, plus one read before the first;
    a problem that needs several steps shows it (the limit cuts the steps, not the reads)."""
    from gpurecon.profiling import OpCounter
    from gpurecon.solver.dual_newton import READ_EVERY

    _, (Xe, train, n_train, yc, a, b) = _fold_problems("collinear", 0, 40, 160, 1e-3, 0.5)
    for steps in range(1, 2 * READ_EVERY + 2):
        with OpCounter() as c:
            _, settled = dual_newton(Xe, train, n_train, True, yc, yc.clone(), a, b, max_steps=steps)
        assert not bool(settled.all())            # every step was taken
        assert c.syncs == 1 + steps // READ_EVERY, (steps, c.sync_by_op)


@pytest.mark.parametrize("kind,seed,n,p,frac,l1", CASES)
def test_steps_between_reads_reach_the_same_optimum(kind, seed, n, p, frac, l1):
    """The steps between the GPU path's reads size their systems from the last read's widest
    active set (plus a margin): a set that outgrew it takes an inexact step and is not called
    settled on it. From a zero residual (nothing active at the first read: the unread steps'
    systems are too narrow) both schedules end at the same optimum, to rounding; so does a
    margin of one feature."""
    import gpurecon.solver.dual_newton as dn

    _, (Xe, train, n_train, yc, a, b) = _fold_problems(kind, seed, n, p, frac, l1)
    staged, s_ok = dual_newton(Xe, train, n_train, True, yc, yc.clone(), a, b, staged=True)
    gpu, g_ok = dual_newton(Xe, train, n_train, True, yc, torch.zeros_like(yc), a, b, staged=False)
    assert bool(s_ok.all()) and bool(g_ok.all())
    assert torch.equal(staged != 0, gpu != 0)
    torch.testing.assert_close(gpu, staged, rtol=0, atol=1e-9 * float(staged.abs().max()))
    margin = dn.WIDTH_MARGIN
    try:
        dn.WIDTH_MARGIN = -1.0          # unread steps keep k_read + 1: most are inexact
        tight, t_ok = dual_newton(Xe, train, n_train, True, yc, torch.zeros_like(yc), a, b, staged=False)
    finally:
        dn.WIDTH_MARGIN = margin
    assert bool(t_ok.all()) and torch.equal(tight != 0, staged != 0)
    torch.testing.assert_close(tight, staged, rtol=0, atol=1e-9 * float(staged.abs().max()))


@pytest.mark.parametrize("kind,frac,l1,rounds", [("heavy_tails", 0.03, 0.5, 2), ("iid", 0.1, 0.05, 3),
                                                  ("collinear", 0.01, 0.5, 2)])
def test_cold_fits_with_wide_supports_start_from_the_dual_newton_solution(monkeypatch, kind, frac, l1, rounds):
    """A single fit whose support is wide starts from the dual's Newton solution (far below
    alpha_max: at once; otherwise, where the strongest violators at zero left most of the
    others violating, in its third round): the certificate then needs at most ``rounds``
    active-set rounds, where from zero (each round lets ~30% more features in) it needs many;
    the answer is the certified optimum either way."""
    import gpurecon.solver.elasticnet as en
    from gpurecon.solver import enet_path_fit

    rng = np.random.default_rng(21)
    n, p = 40, 300
    X = _design(kind, rng, n, p)
    Y = X[:, :8] @ rng.standard_normal((8, 3)) + rng.standard_normal((n, 3))
    alpha = frac * np.median([alpha_max(X, Y[:, t], l1) for t in range(3)])
    dual = enet_path_fit(X, Y, alpha, l1, tol=1e-8)
    monkeypatch.setattr(en, "dual_start", lambda design, Y, folds, sol, **kw: sol)    # from zero
    monkeypatch.setattr(en, "DUAL_VIOLATORS", None)
    cold = enet_path_fit(X, Y, alpha, l1, tol=1e-8)
    assert bool(dual.certified.all()) and bool(cold.certified.all())
    assert int(dual.n_iter.max()) <= rounds < int(cold.n_iter.min()), (dual.n_iter, cold.n_iter)
    for t in range(3):
        ref = exact_enet(X, Y[:, t], alpha, l1)
        assert ref.certificate.holds()
        scale = np.abs(ref.coef).max()
        np.testing.assert_allclose(dual.coef[0, 0, t].numpy(), ref.coef, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(dual.coef.numpy(), cold.coef.numpy(), rtol=0, atol=1e-9 * float(dual.coef.abs().max()))


@pytest.mark.parametrize("kind,seed,n,p,frac,l1", CASES)
def test_staged_step_lengths_give_the_same_steps(monkeypatch, kind, seed, n, p, frac, l1):
    """The CPU's staged line search (the first few halvings, then the rest only where some
    problem found none) takes exactly the steps of the all-at-once search (with the GPU
    path's reads after every step, as the CPU's: the same systems)."""
    import gpurecon.solver.dual_newton as dn

    monkeypatch.setattr(dn, "READ_EVERY", 1)
    _, (Xe, train, n_train, yc, a, b) = _fold_problems(kind, seed, n, p, frac, l1)
    r0 = yc + 3.0 * torch.randn(yc.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
    for steps in (2, 50):
        once = dual_newton(Xe, train, n_train, True, yc, r0, a, b, max_steps=steps)
        staged = dual_newton(Xe, train, n_train, True, yc, r0, a, b, max_steps=steps, staged=True)
        assert torch.equal(once[0], staged[0]) and torch.equal(once[1], staged[1])


def test_many_violators_at_zero_with_a_small_support_take_no_dual_step(monkeypatch):
    """Three outlier trials (x50 about the mean) make hundreds of features violate the KKT
    conditions at zero, yet the support is a handful: the strongest violators explain the
    outlier rows and the rest stop violating. Such a cold fit stays with active-set rounds
    (a dual Newton step from zero would start with hundreds of active features) and reaches
    the certified optimum in a few."""
    import gpurecon.solver.certify as certify
    from gpurecon.solver import enet_path_fit

    sizes = []
    real = certify.dual_newton
    monkeypatch.setattr(certify, "dual_newton", lambda *a, **kw: sizes.append(a[5].shape[0]) or real(*a, **kw))
    rng = np.random.default_rng(0)
    n, p, l1 = 60, 400, 0.5
    X = rng.standard_normal((n, p))
    X[:3] = X.mean(0) + 50.0 * (X[:3] - X.mean(0))
    Y = X[:, :3] @ rng.standard_normal((3, 3)) + rng.standard_normal((n, 3))
    alpha = 0.1 * np.median([alpha_max(X, Y[:, t], l1) for t in range(3)])
    at_zero = (np.abs((X - X.mean(0)).T @ (Y - Y.mean(0))) > n * alpha * l1).sum(0)
    assert at_zero.min() > 200, at_zero          # the case: hundreds of violators at zero
    res = enet_path_fit(X, Y, alpha, l1, tol=1e-8)
    assert sizes == [], sizes
    assert bool(res.certified.all()) and int(res.n_iter.max()) <= 4, res.n_iter
    for t in range(3):
        ref = exact_enet(X, Y[:, t], alpha, l1)
        assert ref.certificate.holds() and 0 < np.count_nonzero(ref.coef) <= 15
        np.testing.assert_allclose(res.coef[0, 0, t].numpy(), ref.coef, rtol=0, atol=1e-9 * np.abs(ref.coef).max())
