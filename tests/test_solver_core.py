"""The batched ElasticNet core against scikit-learn (small problems, CPU)."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import ElasticNet as SkElasticNet

from gpurecon.solver import ConvergenceWarning, enet_path_fit
from gpurecon.solver.gap import enet_duality_gap

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _data(n, p, n_targets, seed=0, offset=5.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) * rng.uniform(0.5, 3.0, p) + offset
    beta = rng.standard_normal((3, n_targets))
    Y = (X[:, :3] - offset) @ beta + rng.standard_normal((n, n_targets)) + 2.0
    return X, Y


def _alpha_max(X, Y, l1_ratio, fit_intercept):
    Xc = X - X.mean(0) if fit_intercept else X
    Yc = Y - Y.mean(0) if fit_intercept else Y
    return np.abs(Xc.T @ Yc).max() / (len(X) * max(l1_ratio, 1e-3))


def _objective(X, y, w, b, alpha, l1_ratio):
    r = y - X @ w - b
    return r @ r / (2 * len(y)) + alpha * l1_ratio * np.abs(w).sum() + 0.5 * alpha * (1 - l1_ratio) * w @ w


def _sklearn(X, y, alpha, l1_ratio, fit_intercept, tol=1e-12):
    return SkElasticNet(alpha=alpha, l1_ratio=l1_ratio, fit_intercept=fit_intercept, tol=tol,
                        max_iter=200_000).fit(X, y)


@pytest.mark.parametrize("shape", [(30, 70), (70, 12)], ids=["n<p", "n>p"])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("l1_ratio", [1.0, 0.5, 0.1, 0.01])
def test_matches_sklearn(shape, fit_intercept, dtype, l1_ratio):
    n, p = shape
    X, Y = _data(n, p, 3)
    X, Y = X.astype(dtype), Y.astype(dtype)
    amax = _alpha_max(X.astype(np.float64), Y.astype(np.float64), l1_ratio, fit_intercept)
    alphas = [1.5 * amax, 0.3 * amax, 0.03 * amax]          # the first is all-zero
    tol = 1e-4
    res = enet_path_fit(X, Y, alphas, [l1_ratio], fit_intercept=fit_intercept, tol=tol, device="cpu")
    assert res.coef.shape == (1, 3, 3, p) and res.coef.dtype == torch.from_numpy(X).dtype
    assert bool(res.converged.all())
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    rounding = 1e-4 if dtype == np.float32 else 1e-9
    for g, alpha in enumerate(alphas):
        ref = _sklearn(X64, Y64, alpha, l1_ratio, fit_intercept)
        coef = res.coef[0, g].double().numpy()
        intercept = res.intercept[0, g].numpy()
        if g == 0:
            assert not coef.any() and not ref.coef_.any()
        pred, ref_pred = X64 @ coef.T + intercept, ref.predict(X64)
        Yc = Y64 - Y64.mean(0) if fit_intercept else Y64
        for t in range(3):
            # the gap bounds the objective excess, which bounds ||X (w - w*)||^2 / (2n) ...
            bound = np.sqrt(2 * tol * Yc[:, t] @ Yc[:, t]) + rounding * np.abs(Y64).max() * n
            assert np.abs(pred[:, t] - ref_pred[:, t]).max() <= bound
            # ... and with an l2 term, ||w - w*||: b ||w - w*||^2 / 2 <= gap
            if l1_ratio < 1:
                b = alpha * (1 - l1_ratio) * n
                cbound = np.sqrt(2 * tol * Yc[:, t] @ Yc[:, t] / b) + rounding * np.abs(ref.coef_).max() * 10
                assert np.linalg.norm(coef[t] - ref.coef_[t]) <= cbound
    if dtype == np.float64:
        # at a tight tolerance the solutions coincide
        tight = enet_path_fit(X, Y, alphas, [l1_ratio], fit_intercept=fit_intercept, tol=1e-12, device="cpu")
        for g, alpha in enumerate(alphas):
            ref = _sklearn(X64, Y64, alpha, l1_ratio, fit_intercept)
            scale = np.abs(ref.coef_).max() + 1e-3
            np.testing.assert_allclose(tight.coef[0, g].numpy(), ref.coef_, atol=1e-6 * scale)
            ref_int = ref.intercept_ if fit_intercept else np.zeros(3)
            np.testing.assert_allclose(tight.intercept[0, g].numpy(), ref_int, atol=1e-6 * (np.abs(Y64).max()))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_objective_not_above_sklearn(dtype):
    X, Y = _data(40, 90, 4, seed=3)
    X, Y = X.astype(dtype), Y.astype(dtype)
    amax = _alpha_max(X.astype(np.float64), Y.astype(np.float64), 0.5, True)
    for alpha in [0.5 * amax, 0.05 * amax]:
        res = enet_path_fit(X, Y, alpha, 0.5, device="cpu")
        X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
        ref = SkElasticNet(alpha=alpha, l1_ratio=0.5).fit(X64, Y64)
        for t in range(4):
            ours = _objective(X64, Y64[:, t], res.coef[0, 0, t].double().numpy(), float(res.intercept[0, 0, t]), alpha, 0.5)
            theirs = _objective(X64, Y64[:, t], ref.coef_[t], ref.intercept_[t], alpha, 0.5)
            assert ours <= theirs * (1 + 1e-6)


def test_one_dimensional_y_and_single_target_agree():
    X, Y = _data(25, 40, 1)
    a = enet_path_fit(X, Y[:, 0], 0.1, 0.5, device="cpu")
    b = enet_path_fit(X, Y, 0.1, 0.5, device="cpu")
    assert a.coef.shape == b.coef.shape == (1, 1, 1, 40)
    assert torch.equal(a.coef, b.coef)


def test_gap_formula_matches_sklearn_dual_gap():
    # sklearn reports its final gap / n; evaluate our formula at its coefficients
    X, Y = _data(30, 50, 1, seed=5)
    y = Y[:, 0]
    for alpha, l1 in [(0.05, 0.5), (0.2, 1.0), (0.1, 0.0)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = SkElasticNet(alpha=alpha, l1_ratio=l1, tol=1e-2, max_iter=3).fit(X, y)
        Xc, yc = X - X.mean(0), y - y.mean()
        w = ref.coef_
        r = yc - Xc @ w
        n = len(y)
        a, b = alpha * l1 * n, alpha * (1 - l1) * n
        T = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        xtr = Xc.T @ r
        gap = enet_duality_gap(T(r @ r), T(r @ yc), T(np.abs(w).sum()), T(w @ w), T(np.abs(xtr - b * w).max()),
                               T(xtr @ xtr), T(a), T(b))
        np.testing.assert_allclose(float(gap) / n, ref.dual_gap_, rtol=1e-6, atol=1e-12)


def test_grid_equals_separate_fits():
    X, Y = _data(30, 60, 3, seed=1)
    alphas, l1s = [0.02, 0.2, 1.0], [0.2, 0.7]
    masks = np.ones((3, 30), dtype=bool)
    masks[0, :5] = masks[1, 5:10] = masks[2, 10:15] = False
    grid = enet_path_fit(X, Y, alphas, l1s, train_masks=masks, tol=1e-10, device="cpu")
    assert grid.grid == [(a, r) for a in alphas for r in l1s]
    for g, (alpha, l1) in enumerate(grid.grid):
        for f in range(3):
            one = enet_path_fit(X[masks[f]], Y[masks[f]], alpha, l1, tol=1e-10, device="cpu")
            np.testing.assert_allclose(grid.coef[f, g].numpy(), one.coef[0, 0].numpy(), atol=1e-7)
            np.testing.assert_allclose(grid.intercept[f, g].numpy(), one.intercept[0, 0].numpy(), atol=1e-7)


def test_folds_match_sklearn_on_fold_rows():
    X, Y = _data(20, 35, 2, seed=2)
    masks = ~np.eye(20, dtype=bool)[:6]
    res = enet_path_fit(X, Y, 0.1, 0.5, train_masks=masks, tol=1e-10, device="cpu")
    for f in range(6):
        ref = _sklearn(X[masks[f]], Y[masks[f]], 0.1, 0.5, True)
        np.testing.assert_allclose(res.coef[f, 0].numpy(), ref.coef_, atol=1e-7)
        np.testing.assert_allclose(res.intercept[f, 0].numpy(), ref.intercept_, atol=1e-7)


def test_cold_and_warm_starts_agree():
    X, Y = _data(20, 35, 2, seed=4)
    masks = ~np.eye(20, dtype=bool)
    warm = enet_path_fit(X, Y, [0.05, 0.3], 0.5, train_masks=masks, tol=1e-10, device="cpu")
    cold = enet_path_fit(X, Y, [0.05, 0.3], 0.5, train_masks=masks, tol=1e-10, device="cpu", warm_start=False)
    np.testing.assert_allclose(warm.coef.numpy(), cold.coef.numpy(), atol=1e-7)


def test_deterministic():
    X, Y = _data(25, 50, 4, seed=6)
    masks = ~np.eye(25, dtype=bool)
    a = enet_path_fit(X, Y, [0.05, 0.5], [0.5, 1.0], train_masks=masks, device="cpu")
    b = enet_path_fit(X, Y, [0.05, 0.5], [0.5, 1.0], train_masks=masks, device="cpu")
    assert torch.equal(a.coef, b.coef) and torch.equal(a.intercept, b.intercept)
    assert torch.equal(a.n_iter, b.n_iter) and torch.equal(a.dual_gap, b.dual_gap)


def test_memory_budget_chunks_give_the_same_result():
    X, Y = _data(20, 30, 7, seed=7)
    masks = ~np.eye(20, dtype=bool)
    big = enet_path_fit(X, Y, 0.1, 0.5, train_masks=masks, device="cpu", tol=1e-10)
    small = enet_path_fit(X, Y, 0.1, 0.5, train_masks=masks, device="cpu", tol=1e-10, memory_budget=1)
    np.testing.assert_allclose(big.coef.numpy(), small.coef.numpy(), atol=1e-9)


def test_not_converged_is_reported():
    X, Y = _data(30, 80, 2, seed=8)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = enet_path_fit(X, Y, 1e-4, 1.0, tol=1e-12, max_iter=1, device="cpu")
    assert res.n_not_converged > 0 and res.worst_gap_ratio > 1
    assert not bool(res.converged.all())


@pytest.mark.parametrize("kwargs, match", [
    (dict(X=np.full((5, 3), np.nan)), "X contains NaN"),
    (dict(X=np.full((5, 3), np.inf)), "X contains NaN or infinite"),
    (dict(Y=np.array([1.0, np.nan, 0, 0, 0])), "Y contains NaN"),
    (dict(Y=np.zeros(4)), "same number of rows"),
    (dict(alphas=-1.0), "alphas must be"),
    (dict(l1_ratios=1.5), "l1_ratios must lie in"),
    (dict(l1_ratios=-0.1), "l1_ratios must lie in"),
    (dict(alphas=[]), "grid is empty"),
    (dict(l1_ratios=[]), "grid is empty"),
    (dict(train_masks=np.eye(5, dtype=bool)), "at least 2 samples"),
    (dict(train_masks=np.ones((2, 4), dtype=bool)), "train_masks must have shape"),
    (dict(tol=-1.0), "tol must be"),
    (dict(max_iter=0), "max_iter must be"),
    (dict(X=np.zeros(5)), "X must have 2 dimensions"),
])
def test_bad_input_raises_value_error_naming_the_argument(kwargs, match):
    args = dict(X=np.arange(15.0).reshape(5, 3) % 4, Y=np.arange(5.0), alphas=0.1, l1_ratios=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        enet_path_fit(args.pop("X"), args.pop("Y"), args.pop("alphas"), args.pop("l1_ratios"), device="cpu", **args)


def test_public_solver_functions_take_options_by_keyword_only():
    """Only (X, Y, alphas, l1_ratios) are positional: a positional fold mask or tolerance in the
    wrong slot must fail loudly instead of silently meaning something else."""
    from gpurecon.solver import cross_val_predict, kfold, nested_cross_val_predict

    X, Y = np.ones((6, 2)), np.ones((6, 1))
    masks = kfold(6, 3)
    with pytest.raises(TypeError):
        enet_path_fit(X, Y, 0.1, 0.5, masks)
    with pytest.raises(TypeError):
        cross_val_predict(X, Y, 0.1, 0.5, masks)
    with pytest.raises(TypeError):
        nested_cross_val_predict(X, Y, [0.1], [0.5], masks)


def test_default_memory_budget_does_not_follow_the_free_memory(monkeypatch):
    """Chunking follows the budget and rounding follows the chunking: the default must be the
    same from run to run unless memory is short (then smaller, with a warning)."""
    import logging

    from gpurecon.solver import elasticnet as en

    monkeypatch.setattr(en, "_meminfo_available", lambda: 20 * 2 ** 30)
    monkeypatch.setitem(__import__("sys").modules, "psutil", None)   # the /proc/meminfo path
    cpu = torch.device("cpu")
    assert en.default_memory_budget(cpu) == en.CPU_BUDGET
    monkeypatch.setattr(en, "_meminfo_available", lambda: 13 * 2 ** 30)
    assert en.default_memory_budget(cpu) == en.CPU_BUDGET
    monkeypatch.setattr(en, "_meminfo_available", lambda: 2 * 2 ** 30)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("gpurecon").addHandler(handler)
    try:
        assert en.default_memory_budget(cpu) == 2 ** 30
    finally:
        logging.getLogger("gpurecon").removeHandler(handler)
    assert any("memory budget" in r.getMessage() for r in records)

