"""Problems without an l1 term: ridge (l1_ratio 0) and least squares (alpha 0), solved in
closed form (gpurecon.solver.ridge), against scikit-learn's Ridge and numpy's lstsq on every
fold, alone and inside grids that mix them with ElasticNet points."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import ElasticNet as SkElasticNet
from sklearn.linear_model import Ridge

from gpurecon.solver import cross_val_predict, enet_path_fit, kfold, leave_one_out


def _data(n, p, T=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) * rng.uniform(0.2, 5.0, p) + rng.uniform(-3, 3, p)
    Y = X[:, :3] @ rng.standard_normal((3, T)) + 0.5 * rng.standard_normal((n, T)) + 2.0
    return X, Y


def _ridge_folds(X, Y, alpha, masks, fit_intercept=True):
    """Held-out predictions of sklearn's Ridge with ElasticNet's scaling (alpha * n_train)."""
    pred = np.zeros_like(Y)
    for m in masks:
        model = Ridge(alpha=alpha * m.sum(), fit_intercept=fit_intercept, solver="svd").fit(X[m], Y[m])
        pred[~m] = model.predict(X[~m])
    return pred


def _lstsq_folds(X, Y, masks, fit_intercept=True):
    """Held-out predictions of the minimum-norm least-squares fit of each fold (numpy)."""
    pred = np.zeros_like(Y)
    for m in masks:
        xm, ym = (X[m].mean(0), Y[m].mean(0)) if fit_intercept else (0.0, 0.0)
        w = np.linalg.lstsq(X[m] - xm, Y[m] - ym, rcond=None)[0]
        pred[~m] = (X[~m] - xm) @ w + ym
    return pred


@pytest.mark.parametrize("n, p", [(30, 12), (30, 80)])
@pytest.mark.parametrize("cv", ["loo", "kfold"])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_ridge_folds_match_sklearn_ridge(n, p, cv, fit_intercept):
    X, Y = _data(n, p, seed=n + p)
    masks = leave_one_out(n) if cv == "loo" else kfold(n, 7, shuffle=True, seed=1)   # 4 or 5 held out
    for alpha in (1e-3, 0.3, 30.0):
        res = cross_val_predict(X, Y, alpha, 0.0, folds=masks, fit_intercept=fit_intercept, device="cpu")
        want = _ridge_folds(X, Y, alpha, masks, fit_intercept)
        np.testing.assert_allclose(res.predictions[0].numpy(), want, atol=1e-9 * Y.std(), rtol=0)
        assert bool(res.converged.all()) and bool(res.certified.all())


@pytest.mark.parametrize("n, p", [(25, 10), (25, 60)])
def test_alpha_zero_is_minimum_norm_least_squares(n, p):
    X, Y = _data(n, p, seed=3)
    masks = kfold(n, 5, shuffle=True, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cross_val_predict(X, Y, 0.0, 0.5, folds=masks, device="cpu")
    np.testing.assert_allclose(res.predictions[0].numpy(), _lstsq_folds(X, Y, masks), atol=1e-8 * Y.std(), rtol=0)
    assert bool(res.converged.all())


def test_single_ridge_fit_coefficients_and_intercept():
    X, Y = _data(40, 25, seed=4)
    res = enet_path_fit(X, Y, 0.2, 0.0, device="cpu")
    ref = Ridge(alpha=0.2 * 40, solver="svd").fit(X, Y)
    np.testing.assert_allclose(res.coef[0, 0].numpy(), ref.coef_, atol=1e-10 * np.abs(ref.coef_).max(), rtol=0)
    np.testing.assert_allclose(res.intercept[0, 0].numpy(), ref.intercept_, atol=1e-9, rtol=0)
    assert int(res.n_not_converged) == 0


def test_grid_mixing_ridge_and_elasticnet_matches_each_alone():
    X, Y = _data(30, 40, seed=5)
    masks = leave_one_out(30)
    both = cross_val_predict(X, Y, [0.05, 0.5], [0.0, 0.5], folds=masks, tol=1e-10, device="cpu")
    for g, (alpha, l1) in enumerate(both.grid):
        if l1 == 0.0:
            want = _ridge_folds(X, Y, alpha, masks)
        else:
            want = np.zeros_like(Y)
            for m in masks:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = SkElasticNet(alpha=alpha, l1_ratio=l1, tol=1e-14, max_iter=500_000).fit(X[m], Y[m])
                want[~m] = model.predict(X[~m])
        np.testing.assert_allclose(both.predictions[g].numpy(), want, atol=1e-7 * Y.std(), rtol=0)
    assert bool(both.certified.all())


def test_ridge_in_float32_stays_within_float32_rounding():
    X, Y = _data(30, 50, seed=6)
    masks = leave_one_out(30)
    res = cross_val_predict(X.astype(np.float32), Y.astype(np.float32), 0.1, 0.0, folds=masks, device="cpu")
    assert res.predictions.dtype == torch.float32
    np.testing.assert_allclose(res.predictions[0].numpy(), _ridge_folds(X, Y, 0.1, masks), atol=1e-4 * Y.std(), rtol=0)


def test_ridge_permutation_null_is_the_fit_of_the_permuted_targets():
    X, Y = _data(20, 30, seed=7)
    perms = np.stack([np.random.default_rng(s).permutation(20) for s in range(3)])
    res = cross_val_predict(X, Y, 0.4, 0.0, permutations=perms, device="cpu")
    masks = leave_one_out(20)
    for j, perm in enumerate(perms):
        np.testing.assert_allclose(res.null_predictions[j, 0].numpy(), _ridge_folds(X, Y[perm], 0.4, masks),
                                   atol=1e-9 * Y.std(), rtol=0)
