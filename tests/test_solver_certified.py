"""The batched solver's held-out predictions against a certified exact optimum (issue G, section 4).

The reference (``certified_reference``) is an independent numpy float64 sign-pattern Newton solve,
accepted only with a KKT certificate on all features and a rounding-level duality gap, so no
problem is skipped because some solver failed. The solver's own ``converged`` flag, gaps and
tolerances are never read: every gap here is recomputed from the returned coefficients.

Families (own generators, seeded): Student-t (df=2) entries, outlier held-out rows (3 trials x50
about the mean), near-collinear blocks (corr 0.999), a constant and a duplicated column with a
zero and an exactly linear target. Alphas from alpha_max down to 1e-2 (and 1e-3) x alpha_max,
l1_ratio 0.05 / 0.5 / 1.0, at the study's tol (1e-4) and at 1e-10, float64 and float32, leave-one-out
and 10-fold CV, three problems at n=100, p=768.

Goals (issue G): held-out predictions within 1e-6 x std(y) of the exact optimum in float64,
1e-3 x std(y) in float32, and never further from it than scikit-learn at its default tol.
Cases the engine does not meet yet are marked ``xfail(strict=True)``: when the engine is fixed
they start passing and the mark must go.
"""

from __future__ import annotations

import functools
import warnings

import certified_reference as ref
import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
from sklearn.linear_model import ElasticNet as SkElasticNet

from gpurecon.solver import cross_val_predict, enet_path_fit, kfold, leave_one_out

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GOAL = {torch.float64: 1e-6, torch.float32: 1e-3}
DEFAULT_TOL, TIGHT_TOL = 1e-4, 1e-10
XFAIL = pytest.mark.xfail(strict=True, reason="issue G: the lasso on a rank-saturated fold (n_train - 1 "
                          "non-zeros, a duplicated column): the active-set rounds cycle, the engine's "
                          "answer is returned uncertified")


# --------------------------------------------------------------------------- families


def _sparse_targets(rng, X, n_targets, k=8):
    """Y = X B (k features per target, signal std 1) + unit noise."""
    n, p = X.shape
    Y = np.empty((n, n_targets))
    for t in range(n_targets):
        rows = rng.choice(p, min(k, p), replace=False)
        s = (X[:, rows] - X[:, rows].mean(0)) @ rng.standard_normal(len(rows))
        Y[:, t] = s / s.std() + rng.standard_normal(n)
    return Y


def heavy_tails(n, p, seed):
    """Student-t entries with df=2 (infinite variance): a few huge values per column."""
    rng = np.random.default_rng(seed)
    X = rng.standard_t(2, (n, p))
    return X, _sparse_targets(rng, X, 1)


def outlier_rows(n, p, seed):
    """Gaussian rows with offsets; 3 trials moved x50 about the column means (held out once each)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) + rng.uniform(-3, 3, p)
    Y = _sparse_targets(rng, X, 1)
    rows = rng.choice(n, 3, replace=False)
    X[rows] = X.mean(0) + 50.0 * (X[rows] - X.mean(0))
    return X, Y


def collinear_blocks(n, p, seed):
    """Blocks of 4 columns sharing one latent, pairwise correlation 0.999."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, (p + 3) // 4))
    X = np.repeat(z, 4, axis=1)[:, :p]
    X = np.sqrt(0.999) * X + np.sqrt(0.001) * rng.standard_normal((n, p))
    return X, _sparse_targets(rng, z, 1)


def edge_columns(n, p, seed):
    """Column 0 constant, column 1 a duplicate of column 2; targets: sparse + noise, all zero,
    and exactly linear (X w, no noise, column 2 in the support)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    X[:, 0] = 3.0
    X[:, 1] = X[:, 2]
    w = np.zeros(p)
    w[rng.choice(np.arange(3, p), 5, replace=False)] = rng.standard_normal(5)
    w[2] = 1.0
    y_lin = X @ w
    return X, np.column_stack([_sparse_targets(rng, X[:, 2:], 1)[:, 0], np.zeros(n), y_lin / y_lin.std()])


def iid(n, p, seed):
    """Gaussian columns: the gentle control, where a fold's optimum sits next to the full-data fit."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    return X, _sparse_targets(rng, X, 1, k=5)


FAMILIES = {"iid": iid, "heavy_tails": heavy_tails, "outlier_rows": outlier_rows,
            "collinear_blocks": collinear_blocks, "edge_columns": edge_columns}

# (family, n, p, cv, alpha fractions of alpha_max, l1_ratios)
CASES = {
    "heavy_small_loo": ("heavy_tails", 30, 60, "loo", (1.0, 0.1, 0.01), (0.05, 0.5, 1.0)),
    "outlier_small_loo": ("outlier_rows", 30, 60, "loo", (1.0, 0.1, 0.01), (0.05, 0.5, 1.0)),
    "collinear_small_k10": ("collinear_blocks", 40, 80, "k10", (1.0, 0.1, 0.01, 1e-3), (0.05, 0.5)),
    "edge_small_loo": ("edge_columns", 30, 60, "loo", (1.0, 0.1, 0.01), (0.05, 0.5, 1.0)),
    # near alpha_max with LOO: the full-data fit already meets each fold's tolerance, so a fold
    # that kept it (it saw the held-out trial) would be off by ~1e-3 x std(y)
    "iid_near_max_loo": ("iid", 100, 50, "loo", (0.95,), (0.5, 1.0)),
    # realistic size (the study's n=100 trials, GPT-2's p=768), one target, 10 folds
    "heavy_768_k10": ("heavy_tails", 100, 768, "k10", (0.1,), (0.5,)),
    "outlier_768_k10": ("outlier_rows", 100, 768, "k10", (0.1,), (0.5,)),
    "collinear_768_k10": ("collinear_blocks", 100, 768, "k10", (0.1,), (0.05,)),
    # p >> n at a tiny alpha: supports wider than the training size with a tiny ridge term, where
    # pattern solves overshoot and plain active-set rounds cycle (the feature-sign rounds' case)
    "wide_tiny_alpha_k10": ("heavy_tails", 40, 400, "k10", (1e-3,), (0.5,)),
}
SEED = {name: i for i, name in enumerate(CASES)}


@functools.lru_cache(maxsize=None)
def case_data(name):
    family, n, p, cv, fractions, l1s = CASES[name]
    X, Y = FAMILIES[family](n, p, 100 + SEED[name])
    masks = leave_one_out(n) if cv == "loo" else kfold(n, 10, shuffle=True, seed=SEED[name])
    return X, Y, masks


def alphas_for(name, l1):
    """The case's fractions of alpha_max (the largest over its targets) for one l1_ratio."""
    X, Y, _ = case_data(name)
    top = max(ref.alpha_max(X, Y[:, t], l1) for t in range(Y.shape[1]))
    return [f * top for f in CASES[name][4]]


@functools.lru_cache(maxsize=None)
def exact(name, l1):
    """Certified held-out predictions (alphas, n, T) and fold fits [alpha][target][fold]."""
    X, Y, masks = case_data(name)
    preds, fits = [], []
    for t in range(Y.shape[1]):
        pr, ft = ref.exact_cv(X, Y[:, t], alphas_for(name, l1), l1, masks)
        preds.append(pr)
        fits.append(ft)
    return np.stack(preds, -1), [[fits[t][k] for t in range(Y.shape[1])] for k in range(len(fits[0]))]


@functools.lru_cache(maxsize=None)
def sklearn_default(name, l1):
    """scikit-learn's held-out predictions at its default tol and max_iter (alphas, n, T)."""
    X, Y, masks = case_data(name)
    out = np.zeros((len(alphas_for(name, l1)),) + Y.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)
        for k, alpha in enumerate(alphas_for(name, l1)):
            for train in masks:
                m = SkElasticNet(alpha=alpha, l1_ratio=l1).fit(X[train], Y[train])
                out[k, ~train] = m.predict(X[~train]).reshape(-1, Y.shape[1])
    return out


def ours(name, l1, tol, dtype):
    X, Y, masks = case_data(name)
    res = cross_val_predict(X, Y, alphas_for(name, l1), [l1], folds=masks, device="cpu", dtype=dtype, tol=tol)
    return res.predictions.to(torch.float64).numpy()       # (alphas, n, T)


def scaled_errors(pred, exact_pred, Y):
    """max_i |pred - exact| / std(y) per (alpha, target); a zero target is measured in units of 1."""
    scale = np.where(Y.std(0) > 0, Y.std(0), 1.0)
    return np.abs(pred - exact_pred).max(1) / scale


# --------------------------------------------------------------------------- which cases miss the goal now

# What the engine (as of this commit) does not meet yet, measured: (case, tol, dtype) of the goal
# test, (case, "sk") of the sklearn comparison, (case, tol, "coef") of the fold-coefficient test.
# Remove entries as the engine is fixed (strict xfail: a case that starts passing fails the run).
F64, F32 = torch.float64, torch.float32
KNOWN_SHORT: set = set()   # none since the certificate's feature-sign rounds (monotone: no cycling)


def _mark(case, tol, dtype):
    return [XFAIL] if (case, tol, dtype) in KNOWN_SHORT else []


# float32 only at the study's tol: a float32 fit cannot reach a 1e-10 duality gap (rounding)
GOAL_PARAMS = [pytest.param(case, tol, dtype, marks=_mark(case, tol, dtype),
                            id=f"{case}-tol{tol:g}-{str(dtype)[6:]}")
               for case in CASES for tol, dtype in ((DEFAULT_TOL, torch.float64), (DEFAULT_TOL, torch.float32),
                                                    (TIGHT_TOL, torch.float64))]


@pytest.mark.parametrize("case,tol,dtype", GOAL_PARAMS)
def test_held_out_predictions_within_goal_of_exact(case, tol, dtype):
    """Every held-out prediction within GOAL[dtype] x std(y) of the certified optimum."""
    _, Y, _ = case_data(case)
    bad = []
    for l1 in CASES[case][5]:
        err = scaled_errors(ours(case, l1, tol, dtype), exact(case, l1)[0], Y)
        for k, frac in enumerate(CASES[case][4]):
            for t in range(Y.shape[1]):
                if not err[k, t] <= GOAL[dtype]:
                    bad.append(f"l1={l1} alpha={frac:g}xmax target {t}: {err[k, t]:.3g} x std(y)")
    assert not bad, f"goal {GOAL[dtype]:g} x std(y) missed:\n" + "\n".join(bad)


SK_PARAMS = [pytest.param(case, marks=[XFAIL] if (case, "sk") in KNOWN_SHORT else [], id=case) for case in CASES]


@pytest.mark.parametrize("case", SK_PARAMS)
def test_never_further_from_exact_than_sklearn_default(case):
    """At the study's tol, float64: no held-out prediction further from the optimum than
    scikit-learn's default-tol answer (or than the goal, where sklearn is closer than that)."""
    _, Y, _ = case_data(case)
    bad = []
    for l1 in CASES[case][5]:
        exact_pred = exact(case, l1)[0]
        err = scaled_errors(ours(case, l1, DEFAULT_TOL, torch.float64), exact_pred, Y)
        err_sk = scaled_errors(sklearn_default(case, l1), exact_pred, Y)
        worse = err > np.maximum(err_sk, GOAL[torch.float64])
        for k, t in zip(*np.nonzero(worse)):
            bad.append(f"l1={l1} alpha={CASES[case][4][k]:g}xmax target {t}: ours {err[k, t]:.3g}, "
                       f"sklearn {err_sk[k, t]:.3g} x std(y)")
    assert not bad, "\n".join(bad)


FOLD_PARAMS = [pytest.param(case, tol, marks=[XFAIL] if (case, tol, "coef") in KNOWN_SHORT else [],
                            id=f"{case}-tol{tol:g}")
               for case in ("heavy_small_loo", "outlier_small_loo", "edge_small_loo", "heavy_768_k10")
               for tol in (DEFAULT_TOL, TIGHT_TOL)]


@pytest.mark.parametrize("case,tol", FOLD_PARAMS)
def test_fold_coefficients_meet_tolerance_recomputed(case, tol):
    """enet_path_fit's fold coefficients, checked from scratch in float64: sklearn's duality gap
    of every (fold, alpha, target) at most tol x ||y_c||^2 (the stopping rule the solver promises;
    its own flags are not read), and the fold's held-out prediction from coef and intercept
    within the float64 goal of the certified optimum at tight tol."""
    X, Y, masks = case_data(case)
    bad = []
    for l1 in CASES[case][5]:
        alphas = alphas_for(case, l1)
        res = enet_path_fit(X, Y, alphas, [l1], train_masks=masks, device="cpu", dtype=torch.float64, tol=tol)
        coef, icpt = res.coef.numpy(), res.intercept.numpy()
        fits = exact(case, l1)[1]
        for f, train in enumerate(masks):
            for k, alpha in enumerate(alphas):
                for t in range(Y.shape[1]):
                    Xc, yc, _, _ = ref.centre(X[train], Y[train, t])
                    yy = yc @ yc
                    gap = ref.duality_gap(Xc, yc, coef[f, k, t], alpha, l1)
                    where = f"l1={l1} alpha={CASES[case][4][k]:g}xmax target {t} fold {f}"
                    if gap > tol * yy * (1 + 1e-6) + 1e-300:
                        bad.append(f"{where}: recomputed gap {gap / max(yy, 1e-300):.3g} x ||yc||^2 > tol")
                    if tol == TIGHT_TOL:
                        pred = X[~train] @ coef[f, k, t] + icpt[f, k, t]
                        want = fits[k][t][f].predict(X[~train])
                        scale = Y[:, t].std() or 1.0
                        err = np.abs(pred - want).max() / scale
                        if not err <= GOAL[torch.float64]:
                            bad.append(f"{where}: held-out prediction {err:.3g} x std(y) from exact")
    assert not bad, "\n".join(bad[:20]) + f"\n({len(bad)} in all)"


@pytest.mark.parametrize("tol", [pytest.param(DEFAULT_TOL, id="tol1e-4"),
                                 pytest.param(TIGHT_TOL, id="tol1e-10")])
def test_held_out_prediction_does_not_depend_on_held_out_y(tol):
    """Changing the held-out trials' y must leave their fold's held-out predictions unchanged
    (up to the solver's tolerance): the fold's model may not have seen them, e.g. through a
    warm start from the full-data fit that is kept as the answer."""
    X, Y, _ = case_data("outlier_small_loo")
    n = len(Y)
    masks = kfold(n, 5, shuffle=True, seed=3)
    held = ~masks[0]
    alphas = [f * ref.alpha_max(X, Y[:, 0], 0.5) for f in (0.5, 0.1)]
    Y2 = Y.copy()
    Y2[held, 0] += 0.5 * Y[:, 0].std() * np.sign(Y[held, 0] - Y[:, 0].mean())
    p1, p2 = (cross_val_predict(X, y, alphas, [0.5], folds=masks, device="cpu", dtype=torch.float64,
                                tol=tol).predictions.numpy() for y in (Y, Y2))
    change = np.abs(p1[:, held] - p2[:, held]).max() / Y[:, 0].std()
    # the fold's own problem is unchanged: both answers within the goal of its one optimum
    # (at the study's tol the engine's answer moves by ~1e-3 x std(y) today)
    assert change <= 2 * GOAL[torch.float64], change
    # and the other folds did see the change (the test is not vacuous)
    assert np.abs(p1[:, ~held] - p2[:, ~held]).max() > 1e-3 * Y[:, 0].std()
