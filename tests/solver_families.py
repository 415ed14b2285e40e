"""Seeded random ElasticNet problems for differential tests against scikit-learn.

:func:`random_problem` draws one problem from the regimes the solver has to handle: p < n and
p > n, iid / correlated / near-collinear columns, badly scaled columns (a few x30, per-column
gamma scales), sparse or dense true maps, targets of very different scales and offsets,
alphas from alpha_max down to 1e-3 x alpha_max, l1_ratio from 0.01 to 1, with and without
an intercept. Everything is a function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

L1_RATIOS = (0.01, 0.1, 0.5, 0.9, 1.0)
# fractions of alpha_max: at alpha_max itself every coefficient is zero
ALPHA_FRACTIONS = (1.0, 0.5, 0.1, 0.02, 1e-3)


@dataclass
class Problem:
    X: np.ndarray            # (n, p) float64
    Y: np.ndarray            # (n, T) float64
    alphas: list             # absolute alphas
    l1_ratio: float
    fit_intercept: bool
    label: str               # how it was drawn (for failure messages)


def design(rng, n, p, kind):
    """Columns of one of the kinds ``iid``, ``correlated``, ``collinear``, ``scaled``."""
    if kind == "iid":
        return rng.standard_normal((n, p))
    if kind == "correlated":   # a few strong factors shared by all columns
        k = max(1, min(n, p) // 4)
        return rng.standard_normal((n, k)) @ rng.standard_normal((k, p)) + 0.3 * rng.standard_normal((n, p))
    if kind == "collinear":    # pairs of near-duplicate columns
        base = rng.standard_normal((n, (p + 1) // 2))
        X = np.repeat(base, 2, axis=1)[:, :p]
        return X + 1e-2 * rng.standard_normal((n, p))
    if kind == "scaled":       # the worst family: gamma scales, three columns x30
        X = rng.standard_normal((n, p)) * rng.gamma(2.0, 0.5, p)
        X[:, : min(3, p)] *= 30.0
        return X
    raise ValueError(f"kind must be iid, correlated, collinear or scaled, got {kind!r}")


def targets(rng, X, n_targets, dense):
    """Y = X B + noise, per-target scales over 6 decades and offsets."""
    n, p = X.shape
    k = p if dense else int(rng.integers(1, max(2, min(p, n // 2)) + 1))
    B = np.zeros((p, n_targets))
    rows = rng.choice(p, k, replace=False)
    B[rows] = rng.standard_normal((k, n_targets)) / np.sqrt(k)
    signal = X @ B
    Y = signal / (signal.std(0) + 1e-12) + rng.standard_normal((n, n_targets))
    scale = 10.0 ** rng.uniform(-3, 3, n_targets)
    return Y * scale + rng.uniform(-10, 10, n_targets) * scale


def alpha_max(X, Y, l1_ratio, fit_intercept):
    """Smallest alpha with an all-zero solution for every target (sklearn's _alpha_grid)."""
    Xc = X - X.mean(0) if fit_intercept else X
    Yc = Y - Y.mean(0) if fit_intercept else Y
    return float(np.abs(Xc.T @ Yc).max() / (len(X) * max(l1_ratio, 1e-3)))


def random_problem(seed: int, n_range=(20, 60), n_targets=2) -> Problem:
    """One random problem; ``alphas`` are two fractions of alpha_max (of the first target)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(n_range[0], n_range[1] + 1))
    p = int(rng.choice([max(2, n // 3), n - 1, 2 * n, 3 * n]))
    kind = str(rng.choice(["iid", "correlated", "collinear", "scaled"]))
    X = design(rng, n, p, kind)
    X = X + rng.uniform(-5, 5, p) * (rng.random() < 0.5)   # column offsets half of the time
    dense = bool(rng.random() < 0.3)
    Y = targets(rng, X, n_targets, dense)
    l1 = float(rng.choice(L1_RATIOS))
    fit_intercept = bool(rng.random() < 0.75)
    amax = alpha_max(X, Y[:, :1], l1, fit_intercept)
    fracs = rng.choice(ALPHA_FRACTIONS, 2, replace=False)
    label = (f"seed={seed} n={n} p={p} kind={kind} dense={dense} l1_ratio={l1} "
             f"fit_intercept={fit_intercept} alpha/alpha_max={fracs.tolist()}")
    return Problem(X, Y, [float(f * amax) for f in fracs], l1, fit_intercept, label)


def objective(X, y, coef, intercept, alpha, l1_ratio):
    """sklearn's ElasticNet objective."""
    r = y - X @ coef - intercept
    return r @ r / (2 * len(y)) + alpha * l1_ratio * np.abs(coef).sum() + 0.5 * alpha * (1 - l1_ratio) * coef @ coef


# --------------------------------------------------------------------------- comparisons

TIGHT = 1e-10


def sklearn_fit(X, y, alpha, l1_ratio, fit_intercept, tol=TIGHT, max_iter=2_000):
    """scikit-learn's ElasticNet and whether it converged (no ConvergenceWarning)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import ElasticNet

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, fit_intercept=fit_intercept, tol=tol,
                           max_iter=max_iter).fit(X, y)
    return model, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def compare_single(prob: Problem, tol=TIGHT, max_iter=2_000):
    """Fit ``prob`` with enet_path_fit and sklearn: (failure messages, problems compared,
    problems skipped because sklearn did not converge within ``max_iter``).

    Checks: every problem sklearn solves converged here too, objective within 1e-6 relative
    (of the objective, or of ||y - mean||^2/(2n) when the objective is ~0), training predictions
    within 1e-4 of the target's standard deviation.
    """
    import warnings

    from gpurecon.solver import enet_path_fit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = enet_path_fit(prob.X, prob.Y, prob.alphas, [prob.l1_ratio], fit_intercept=prob.fit_intercept,
                            tol=tol, max_iter=max_iter, device="cpu", dtype=None)
    fails, compared, skipped = [], 0, 0
    for g, alpha in enumerate(prob.alphas):
        for t in range(prob.Y.shape[1]):
            y = prob.Y[:, t]
            ref, ok = sklearn_fit(prob.X, y, alpha, prob.l1_ratio, prob.fit_intercept, tol=tol, max_iter=max_iter)
            if not ok:
                skipped += 1
                continue
            compared += 1
            where = f"{prob.label} alpha={alpha:.4g} target={t}"
            if not bool(res.converged[0, g, t]):
                fails.append(f"not converged (gap/tol {float(res.dual_gap[0, g, t] / res.tol[0, g, t]):.3g}): {where}")
                continue
            coef = res.coef[0, g, t].numpy()
            icpt = float(res.intercept[0, g, t])
            ours = objective(prob.X, y, coef, icpt, alpha, prob.l1_ratio)
            theirs = objective(prob.X, y, ref.coef_, ref.intercept_, alpha, prob.l1_ratio)
            yc = y - y.mean() if prob.fit_intercept else y
            scale = max(abs(theirs), 1e-3 * (yc @ yc) / (2 * len(y)))
            if abs(ours - theirs) > 1e-6 * scale:
                fails.append(f"objective {ours:.10g} vs sklearn {theirs:.10g}: {where}")
            diff = np.abs(prob.X @ coef + icpt - ref.predict(prob.X)).max()
            if diff > 1e-4 * max(y.std(), 1e-12):
                fails.append(f"predictions differ by {diff / y.std():.3g} x std(y): {where}")
    return fails, compared, skipped


def compare_cv(prob: Problem, folds, tol=TIGHT, max_iter=2_000):
    """Held-out predictions of cross_val_predict against sklearn's per-fold loop: (failure
    messages, fold problems compared, fold problems skipped as in :func:`compare_single`)."""
    import warnings

    from gpurecon.solver import cross_val_predict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cross_val_predict(prob.X, prob.Y, prob.alphas, [prob.l1_ratio], folds=folds,
                                fit_intercept=prob.fit_intercept, tol=tol, max_iter=max_iter, device="cpu")
    pred = res.predictions.numpy()                                   # (G, n, T)
    fails = []
    sk_ok = np.ones(res.converged.shape, dtype=bool)                 # (F, G, T)
    ref = np.zeros_like(pred)
    for f, train in enumerate(folds):
        for g, alpha in enumerate(prob.alphas):
            for t in range(prob.Y.shape[1]):
                m, ok = sklearn_fit(prob.X[train], prob.Y[train, t], alpha, prob.l1_ratio, prob.fit_intercept, tol,
                                    max_iter)
                sk_ok[f, g, t] = ok
                ref[g, ~train, t] = m.predict(prob.X[~train])
    missed = sk_ok & ~res.converged.numpy()
    if missed.any():
        fails.append(f"{int(missed.sum())} fold problems not converged (worst gap/tol "
                     f"{float(res.gap_ratio.numpy()[missed].max()):.3g}): {prob.label}")
    held = ~np.asarray(folds)                                        # (F, n)
    for g in range(len(prob.alphas)):
        for t in range(prob.Y.shape[1]):
            rows = np.any(held[sk_ok[:, g, t]], axis=0)
            diff = np.abs(pred[g, rows, t] - ref[g, rows, t]).max(initial=0.0)
            std = max(prob.Y[:, t].std(), 1e-12)
            if diff > 1e-4 * std:
                fails.append(f"held-out predictions differ by {diff / std:.3g} x std(y): {prob.label} "
                             f"alpha={prob.alphas[g]:.4g} target={t}")
    return fails, int(sk_ok.sum()), int((~sk_ok).sum())
