"""Differential tests: the batched solver against scikit-learn on seeded random problem families.

Every problem (``solver_families.random_problem``) is fitted at tol 1e-10 by both; wherever
sklearn's coordinate descent converges within max_iter, ours must converge too, with the
objective within 1e-6 relative and predictions within 1e-4 of the target's scale. Single fits
(``enet_path_fit``) and leave-one-out / K-fold (``cross_val_predict`` against a per-fold
loop). The long version: ``benchmarks/solver_differential_long.py --n-problems N``.
"""

import warnings

import numpy as np
import pytest
import solver_families as fam
import torch
from sklearn.linear_model import ElasticNet as SkElasticNet

from gpurecon.solver import cross_val_predict, kfold, leave_one_out

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SINGLE_SEEDS = list(range(1, 25))
CV_SEEDS = list(range(6))
# sklearn and ours get the same epoch budget; problems sklearn cannot solve in it are skipped
# (the long script uses 10,000)
MAX_ITER = 2000
SKIPPED: dict = {}   # seed -> (compared, skipped) of the single-fit tests


@pytest.mark.parametrize("seed", SINGLE_SEEDS)
def test_single_fits_match_sklearn(seed):
    prob = fam.random_problem(seed)
    fails, compared, skipped = fam.compare_single(prob, max_iter=MAX_ITER)
    assert not fails, "\n".join(fails)
    SKIPPED[seed] = (compared, skipped)


@pytest.mark.parametrize("seed", CV_SEEDS)
def test_cross_validation_matches_sklearn_per_fold(seed):
    prob = fam.random_problem(1000 + seed, n_range=(20, 30))
    n = len(prob.X)
    folds = leave_one_out(n) if seed % 2 == 0 else kfold(n, 5, shuffle=True, seed=seed)
    fails, compared, skipped = fam.compare_cv(prob, folds, max_iter=MAX_ITER)
    assert not fails, "\n".join(fails)
    assert compared >= skipped


def test_most_single_fits_were_compared():
    """Skips (sklearn itself not converging) stay rare, so the comparisons above mean something."""
    if len(SKIPPED) < len(SINGLE_SEEDS):
        pytest.skip("needs the single-fit tests of this module to have run first")
    compared = sum(c for c, _ in SKIPPED.values())
    skipped = sum(s for _, s in SKIPPED.values())
    assert compared >= 0.75 * (compared + skipped), (compared, skipped)


def test_generator_covers_the_regimes():
    """The seeds above span p < n and p > n, every column kind, l1_ratio 0.01..1, both intercepts."""
    probs = [fam.random_problem(s) for s in SINGLE_SEEDS]
    labels = " ".join(p.label for p in probs)
    assert any(p.X.shape[1] > p.X.shape[0] for p in probs) and any(p.X.shape[1] < p.X.shape[0] for p in probs)
    for kind in ("iid", "correlated", "collinear", "scaled"):
        assert f"kind={kind}" in labels
    assert {p.l1_ratio for p in probs} >= {0.01, 1.0}
    assert {p.fit_intercept for p in probs} == {True, False}


def _iid_scaled(n, p, n_targets, seed):
    rng = np.random.default_rng(seed)
    X = fam.design(rng, n, p, "scaled")
    B = np.zeros((p, n_targets))
    rows = rng.choice(p, 20, replace=False)
    B[rows] = rng.standard_normal((20, n_targets)) * 0.1
    return X, X @ B + rng.standard_normal((n, n_targets)) + rng.uniform(-5, 5, n_targets)


def test_default_tolerance_loo_stays_close_to_the_exact_fit():
    """At sklearn's default tol, held-out LOO predictions near alpha_max stay within 1e-3 x std(y)
    of an exact (tol 1e-10) sklearn fit: the warm-started folds must not drift."""
    n, p, T = 100, 120, 2
    X, Y = _iid_scaled(n, p, T, seed=3)
    alpha = 0.5 * fam.alpha_max(X, Y, 0.5, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = cross_val_predict(X, Y, alpha, 0.5, device="cpu")
    assert res.n_not_converged == 0
    folds = leave_one_out(n)
    exact = np.zeros((n, T))
    for i, train in enumerate(folds):
        m = SkElasticNet(alpha=alpha, l1_ratio=0.5, tol=1e-10, max_iter=100_000).fit(X[train], Y[train])
        exact[i] = m.predict(X[i:i + 1])
    drift = np.abs(res.predictions[0].numpy() - exact).max(0) / Y.std(0)
    assert drift.max() <= 1e-3, drift


def test_full_set_engine_stops_at_the_real_tolerance():
    """The per-fold (PCA) engine's reported gap is the true gap and meets tol itself."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 12)) * rng.gamma(2.0, 0.5, 12)
    Y = X[:, :3] @ rng.standard_normal((3, 2)) + rng.standard_normal((40, 2))
    folds = kfold(40, 4)
    res = cross_val_predict(X, Y, [0.05, 0.5], 0.5, folds=folds, preprocess="standardize", tol=1e-4,
                            device="cpu")
    assert res.n_not_converged == 0 and res.worst_gap_ratio <= 1.0
    # recompute each fold's gap from sklearn's own formula on the standardised training data
    from sklearn.preprocessing import StandardScaler

    for f, train in enumerate(folds):
        sc = StandardScaler().fit(X[train])
        Xt = sc.transform(X[train])
        for g, (alpha, l1) in enumerate(res.grid):
            for t in range(2):
                ref = SkElasticNet(alpha=alpha, l1_ratio=l1, tol=1e-12, max_iter=100_000).fit(Xt, Y[train, t])
                ours = res.predictions[g, ~train, t].numpy()
                want = ref.predict(sc.transform(X[~train]))
                # tol 1e-4: predictions within sqrt(2 tol) of the target's scale
                assert np.abs(ours - want).max() <= np.sqrt(2e-4) * Y[train, t].std() * 3
    assert torch.isfinite(res.gap_ratio).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_full_set_engine_matches_sklearn_on_hard_problems(seed):
    """Per-fold standardisation, p > n near-collinear columns, lasso at 1e-2 alpha_max, tol 1e-10:
    every fold problem sklearn solves must converge here too, with the same held-out predictions."""
    rng = np.random.default_rng(seed)
    n, p = 30, 60
    X = fam.design(rng, n, p, "collinear") * rng.gamma(2.0, 0.5, p)
    Y = X[:, :4] @ rng.standard_normal((4, 2)) + 0.3 * rng.standard_normal((n, 2))
    folds = kfold(n, 5)
    alpha, l1, tol = 1e-2 * fam.alpha_max((X - X.mean(0)) / X.std(0), Y, 1.0, True), 1.0, 1e-10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cross_val_predict(X, Y, alpha, l1, folds=folds, preprocess="standardize", tol=tol,
                                max_iter=MAX_ITER, device="cpu")
    from sklearn.preprocessing import StandardScaler

    compared = 0
    for f, train in enumerate(folds):
        sc = StandardScaler().fit(X[train])
        for t in range(2):
            ref, ok = fam.sklearn_fit(sc.transform(X[train]), Y[train, t], alpha, l1, True, tol=tol,
                                      max_iter=MAX_ITER)
            if not ok:
                continue
            compared += 1
            assert bool(res.converged[f, 0, t]), float(res.gap_ratio[f, 0, t])
            want = ref.predict(sc.transform(X[~train]))
            assert np.abs(res.predictions[0, ~train, t].numpy() - want).max() <= 1e-4 * Y[:, t].std()
    assert compared >= 2
