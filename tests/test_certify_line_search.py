"""The certificate's feature-sign step (gpurecon.solver.certify._line_search) against an
independent 1-D minimisation of sklearn's ElasticNet objective along the segment (numpy,
float64, a fine grid refined by scipy's bounded scalar minimiser)."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from gpurecon.solver.certify import _line_search
from gpurecon.solver.working_set import Folds, make_design

F64 = torch.float64


def objective(Xf, yf, w, alpha, l1):
    """sklearn's objective on the fold's (centred) training rows, times the training size."""
    r = yf - Xf @ w
    n = len(yf)
    return 0.5 * r @ r + n * alpha * l1 * np.abs(w).sum() + 0.5 * n * alpha * (1 - l1) * w @ w


def segment_minimum(Xf, yf, x0, x1, alpha, l1):
    f = lambda t: objective(Xf, yf, x0 + t * (x1 - x0), alpha, l1)
    grid = np.linspace(0.0, 1.0, 2001)
    vals = np.array([f(t) for t in grid])
    k = int(vals.argmin())
    res = minimize_scalar(f, bounds=(grid[max(k - 1, 0)], grid[min(k + 1, 2000)]), method="bounded",
                          options={"xatol": 1e-12})
    return min(vals.min(), res.fun)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("l1", [0.5, 1.0])
def test_step_is_the_segment_minimum_and_never_raises_the_objective(seed, l1):
    rng = np.random.default_rng(seed)
    n, p, F = 24, 10, 3
    X = rng.standard_normal((n, p))
    y = X[:, :3] @ np.array([1.5, -2.0, 0.7]) + 0.3 * rng.standard_normal(n)
    design = make_design(torch.tensor(X, dtype=F64), center=True)
    train = np.ones((F, n))
    for f in range(F):
        train[f, rng.choice(n, 4, replace=False)] = 0.0
    folds = Folds(torch.tensor(train), torch.tensor(train.sum(1)), torch.zeros((F, 1), dtype=torch.int64), True)
    ws = torch.arange(p)[None, :]                                      # (K=1, s=p): every feature
    alpha = 0.05
    # start and end points with many sign changes between them (kinks inside the segment)
    x0 = rng.standard_normal((1, F, p)) * (rng.random((1, F, p)) < 0.6)
    x1 = rng.standard_normal((1, F, p)) * (rng.random((1, F, p)) < 0.6)
    sign = np.sign(x1)
    yc, a, b = np.zeros((1, F, n)), np.zeros((1, F)), np.zeros((1, F))
    Xc = X - X.mean(0)
    for f in range(F):
        m = train[f] > 0
        yc[0, f, m] = y[m] - y[m].mean()
        a[0, f] = alpha * l1 * m.sum()
        b[0, f] = alpha * (1 - l1) * m.sum()
    t = lambda v: torch.tensor(v, dtype=F64)
    x, full, moved = _line_search(design, folds, ws, t(x0), t(x1), t(yc), t(a), t(b),
                                  torch.ones((1, F), dtype=torch.bool), t(sign))
    x = x.numpy()
    for f in range(F):
        m = train[f] > 0
        Xf = Xc[m] - Xc[m].mean(0)
        yf = yc[0, f, m]
        got = objective(Xf, yf, x[0, f], alpha, l1)
        best = segment_minimum(Xf, yf, x0[0, f], x1[0, f], alpha, l1)
        start = objective(Xf, yf, x0[0, f], alpha, l1)
        scale = abs(start) + 1.0
        assert got <= start + 1e-12 * scale                       # monotone
        assert got <= best + 1e-9 * scale                         # at least the segment's minimum
        if full[0, f]:
            np.testing.assert_array_equal(x[0, f], x1[0, f])      # a full step is the end point itself
