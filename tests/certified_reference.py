"""A certified exact ElasticNet in numpy float64: the reference the solver tests compare against.

The problem is scikit-learn's, with an intercept,

    1/(2n) ||y - X w - b||^2 + alpha*l1*||w||_1 + 0.5*alpha*(1-l1)*||w||^2,

i.e. on centred data (``Xc``, ``yc``; the intercept is ``mean(y) - mean(X) . w``), with
``a = n*alpha*l1`` and ``c = n*alpha*(1-l1)``, the minimiser of

    F(w) = 0.5 ||yc - Xc w||^2 + a ||w||_1 + 0.5 c ||w||^2.

w is optimal iff (KKT), with ``g = Xc^T (yc - Xc w) - c w``:
``g_j = a sign(w_j)`` where ``w_j != 0`` and ``|g_j| <= a`` where ``w_j == 0``.

Given the signs ``s`` of the solution on its support A, the optimum is the solution of one
linear system (the "sign-pattern Newton" step):

    (Xc_A^T Xc_A + c I) w_A = Xc_A^T yc - a s_A.

:func:`exact_enet` iterates that step from a start (add the KKT violators with the sign of
their gradient, line-search along the segment to the new point so that F never increases,
drop the coefficients that reach zero) and accepts the answer only when the KKT conditions
hold on ALL features up to rounding and sklearn's duality gap is at rounding level. Starts: a
caller's (e.g. the full-data solution for a fold), then scikit-learn's coordinate descent at
tol 1e-6 and at tol 1e-12 (warm-started); if none certifies it raises: a reference is never
returned uncertified.

Nothing here uses gpurecon: it is the independent side of the differential tests.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

# a certificate holds when the largest KKT violation is below KKT_TOL (in units of
# max_j ||x_j|| * ||yc||, the size of the gradient at w = 0) and the duality gap below
# GAP_TOL * ||yc||^2: both are rounding level for float64 on the problems of the tests
KKT_TOL = 1e-10
GAP_TOL = 1e-10
MAX_ROUNDS = 30
# rounds allowed from a caller's start before falling back to coordinate descent
WARM_ROUNDS = 3
# most KKT violators added in one round
MAX_ADD = 20
FALLBACK_MAX_ITER = 100_000


@dataclass
class Certificate:
    """How exact a solution is, recomputed from its coefficients alone.

    Attributes
    ----------
    kkt : float
        Largest KKT violation over all features, in units of ``max_j ||x_j|| * ||yc||``.
    rel_gap : float
        scikit-learn's duality gap divided by ``||yc||^2`` (0 for a zero target).
    sign_ok : bool
        Every nonzero coefficient's gradient has the sign of the coefficient.
    """

    kkt: float
    rel_gap: float
    sign_ok: bool

    def holds(self, kkt_tol: float = KKT_TOL, gap_tol: float = GAP_TOL) -> bool:
        return self.sign_ok and self.kkt <= kkt_tol and self.rel_gap <= gap_tol


@dataclass
class ExactFit:
    coef: np.ndarray         # (p,)
    intercept: float
    certificate: Certificate
    method: str              # "newton" or "sklearn-1e-12+newton"
    rounds: int

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.coef + self.intercept


# --------------------------------------------------------------------------- checks


def centre(X, y, fit_intercept=True):
    """Centred float64 copies and the means (zeros without an intercept)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xm = X.mean(0) if fit_intercept else np.zeros(X.shape[1])
    ym = float(y.mean()) if fit_intercept else 0.0
    return X - xm, y - ym, xm, ym


def penalties(n, alpha, l1_ratio):
    """(a, c): the l1 and l2 weights of the unscaled objective F."""
    return n * alpha * l1_ratio, n * alpha * (1.0 - l1_ratio)


def objective(Xc, yc, w, alpha, l1_ratio):
    """scikit-learn's objective (divided by n) on centred data."""
    n = len(yc)
    r = yc - Xc @ w
    return r @ r / (2 * n) + alpha * l1_ratio * np.abs(w).sum() + 0.5 * alpha * (1 - l1_ratio) * w @ w


def duality_gap(Xc, yc, w, alpha, l1_ratio):
    """scikit-learn's (unscaled) duality gap of ``w`` on centred data (its ``enet_dual_gap``)."""
    a, c = penalties(len(yc), alpha, l1_ratio)
    r = yc - Xc @ w
    xta = Xc.T @ r - c * w
    rr, ww = r @ r, w @ w
    if a > 0:
        dual_norm = np.abs(xta).max() if xta.size else 0.0
        const = a / dual_norm if dual_norm > a else 1.0
        return float(0.5 * rr * (1 + const ** 2) + a * np.abs(w).sum() - const * (r @ yc)
                     + 0.5 * c * (1 + const ** 2) * ww)
    if c > 0:   # ridge: the dual point is r itself
        xtr = Xc.T @ r
        return float(rr + 0.5 * c * ww - r @ yc + xtr @ xtr / (2 * c))
    xtr = Xc.T @ r
    return float(xtr @ xtr)


def certificate(Xc, yc, w, alpha, l1_ratio) -> Certificate:
    """KKT on all features and the duality gap of ``w`` (float64, from scratch)."""
    Xc = np.asarray(Xc, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    a, c = penalties(len(yc), alpha, l1_ratio)
    yy = float(yc @ yc)
    scale = np.sqrt(yy) * max(np.sqrt((Xc * Xc).sum(0).max()), 1e-300)
    if yy == 0.0:
        # a constant target: the optimum is w = 0 exactly (F(0) = 0 is the least value)
        zero = not np.any(w)
        return Certificate(0.0 if zero else np.inf, 0.0 if zero else np.inf, zero)
    g = Xc.T @ (yc - Xc @ w) - c * w
    on = w != 0
    viol = np.where(on, np.abs(g - a * np.sign(w)), np.maximum(np.abs(g) - a, 0.0))
    # where a > 0 the gradient of a nonzero coefficient must point along the coefficient
    sign_ok = bool(a == 0 or np.all(g[on] * w[on] > 0))
    return Certificate(float(viol.max() / scale) if viol.size else 0.0,
                       duality_gap(Xc, yc, w, alpha, l1_ratio) / yy, sign_ok)


# --------------------------------------------------------------------------- the exact solve


def _sign_pattern_solve(XA, yc, a, c, s):
    """argmin of 0.5||yc - XA w||^2 + a s.w + 0.5 c ||w||^2 (the smooth problem of one sign
    pattern): Cholesky, Woodbury when the set is wider than n, least squares for a singular
    lasso system; one step of iterative refinement in every case."""
    n, k = XA.shape
    if k == 0:
        return np.zeros(0)
    rhs = XA.T @ yc - a * s

    def hess(v):
        return XA.T @ (XA @ v) + c * v

    if c > 0 and k > n:
        # (XA^T XA + cI)^-1 v = (v - XA^T (XA XA^T + cI)^-1 XA v) / c
        fac = sla.cho_factor(XA @ XA.T + c * np.eye(n))

        def inv(v):
            return (v - XA.T @ sla.cho_solve(fac, XA @ v)) / c
    else:
        H = XA.T @ XA + c * np.eye(k)
        try:
            fac = sla.cho_factor(H)

            def inv(v):
                return sla.cho_solve(fac, v)
        except np.linalg.LinAlgError:
            def inv(v):
                return sla.lstsq(H, v, lapack_driver="gelsy")[0]
    w = inv(rhs)
    return w + inv(rhs - hess(w))


def _F(Xc, yc, w, a, c):
    r = yc - Xc @ w
    return 0.5 * r @ r + a * np.abs(w).sum() + 0.5 * c * w @ w


def _line_search(Xc, yc, w, w_new, a, c):
    """The point of the segment w -> w_new with the least F among the end point and the
    points where a coefficient reaches zero (coefficients that reach it are set to 0)."""
    d = w_new - w
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where((w != 0) & (d != 0), -w / d, np.inf)
    cand = np.unique(np.concatenate([t[(t > 0) & (t < 1)], [1.0]]))
    best, best_f = w, _F(Xc, yc, w, a, c)
    for ti in cand:
        x = w + ti * d
        x[np.isclose(t, ti, rtol=1e-13, atol=0.0)] = 0.0
        if ti == 1.0:
            x = w_new.copy()
        f = _F(Xc, yc, x, a, c)
        if f < best_f:
            best, best_f = x, f
    return best


def _newton(Xc, yc, w, a, c, max_rounds=MAX_ROUNDS):
    """Sign-pattern Newton iteration from ``w``; returns (w, rounds).

    Each round adds the KKT violators (sign of their gradient) to the support, solves the
    sign pattern, leaves out the added features whose coefficient comes out with the wrong
    sign (re-solving), and moves to the best point of the segment towards that solution (F
    never increases). Where none of the added features keeps its sign, only the strongest
    violator is added: at a point optimal on its support that one always moves the right way
    (the step is ``-H^-1`` times a gradient with one nonzero entry), so F strictly decreases.
    """
    p = Xc.shape[1]
    scale = np.sqrt(yc @ yc) * max(np.sqrt((Xc * Xc).sum(0).max()), 1e-300)
    slack = a * 1e-12 + 1e-15 * scale
    for rounds in range(1, max_rounds + 1):
        g = Xc.T @ (yc - Xc @ w) - c * w
        on = w != 0
        excess = np.where(on, 0.0, np.abs(g) - a)
        viol = excess > slack
        if viol.sum() > MAX_ADD:
            # the strongest violators only: a set far wider than the support costs a big solve
            # (and, for the lasso, a singular one) for coefficients that mostly come out zero
            viol = excess >= np.sort(excess)[-MAX_ADD]
        s = np.where(on, np.sign(w), np.sign(g))
        w_star = _step(Xc, yc, a, c, s, on, viol)
        if viol.any() and not np.any(w_star[viol]):
            w_star = _step(Xc, yc, a, c, s, on, excess == excess.max())
        consistent = bool(a == 0 or np.all(np.sign(w_star[w_star != 0]) == s[w_star != 0]))
        if consistent:
            w_next = w_star
        else:
            # first the active-set jump (drop the coefficients whose sign flipped), kept where
            # it lowers F: near the optimum it finds the sign pattern in a few rounds; else the
            # line search, which always makes progress
            w_next = np.where(np.sign(w_star) == s, w_star, 0.0)
            if not _F(Xc, yc, w_next, a, c) < _F(Xc, yc, w, a, c):
                w_next = _line_search(Xc, yc, w, w_star, a, c)
        if np.array_equal(w_next, w):
            return w, rounds
        w = w_next
        if consistent and not viol.any():
            return w, rounds
    return w, max_rounds


def _step(Xc, yc, a, c, s, on, new):
    """The sign-pattern solution on ``on | new``, with the features of ``new`` whose
    coefficient has the wrong sign left out (and the system re-solved) until none is."""
    p = Xc.shape[1]
    new = new & ~on
    while True:
        idx = np.flatnonzero(on | new)
        w = np.zeros(p)
        w[idx] = _sign_pattern_solve(Xc[:, idx], yc, a, c, s[idx])
        wrong = new & (np.sign(w) != s)
        if a == 0 or not wrong.any():
            return w
        new = new & ~wrong


def _sklearn(Xc, yc, alpha, l1_ratio, w0, tol):
    """scikit-learn's coordinate descent on centred data, warm-started from ``w0``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import ElasticNet

    m = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, fit_intercept=False, tol=tol,
                   max_iter=FALLBACK_MAX_ITER, warm_start=True, selection="cyclic")
    m.coef_ = np.array(w0, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m.fit(Xc, yc)
    return np.asarray(m.coef_, dtype=np.float64)


def exact_enet(X, y, alpha, l1_ratio, *, fit_intercept=True, w0=None) -> ExactFit:
    """The certified exact ElasticNet of (X, y) at (alpha, l1_ratio).

    Tries, until one certifies, the sign-pattern iteration from: ``w0`` (when given, e.g. a
    nearby exact solution); scikit-learn's coordinate descent at tol 1e-6 (warm-started from
    the previous attempt); the same at tol 1e-12. scikit-learn only supplies starts: the
    answer is whatever the iteration certifies.

    Parameters
    ----------
    X : (n, p), y : (n,)
    alpha : float > 0
    l1_ratio : float in [0, 1]
    fit_intercept : bool
    w0 : (p,) or None

    Raises
    ------
    RuntimeError
        When no attempt certifies.
    """
    Xc, yc, xm, ym = centre(X, y, fit_intercept)
    n, p = Xc.shape
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if yc @ yc == 0.0:
        w = np.zeros(p)
        return ExactFit(w, ym, certificate(Xc, yc, w, alpha, l1_ratio), "zero-target", 0)
    a, c = penalties(n, alpha, l1_ratio)
    w, rounds, cert = (np.zeros(p) if w0 is None else np.array(w0, dtype=np.float64)), 0, None
    attempts = (["start"] if w0 is not None else []) + [1e-6, 1e-12]
    for how in attempts:
        start = w if how == "start" else _sklearn(Xc, yc, alpha, l1_ratio, w, how)
        w, more = _newton(Xc, yc, start, a, c, max_rounds=WARM_ROUNDS if how == "start" else MAX_ROUNDS)
        rounds += more
        cert = certificate(Xc, yc, w, alpha, l1_ratio)
        if cert.holds():
            method = "newton" if how == "start" else f"sklearn-{how:g}+newton"
            return ExactFit(w, ym - xm @ w, cert, method, rounds)
    raise RuntimeError(f"exact_enet could not certify alpha={alpha} l1_ratio={l1_ratio} "
                       f"(n={n}, p={p}): {cert}")


def exact_path(X, y, alphas, l1_ratio, *, fit_intercept=True, w0=None) -> list:
    """Certified fits for several alphas, each started from the previous one (largest first);
    returned in the order of ``alphas``."""
    order = np.argsort(-np.asarray(alphas, dtype=np.float64), kind="stable")
    fits = [None] * len(alphas)
    start = w0
    for i in order:
        fits[i] = exact_enet(X, y, float(alphas[i]), l1_ratio, fit_intercept=fit_intercept, w0=start)
        start = fits[i].coef
    return fits


def exact_cv(X, y, alphas, l1_ratio, train_masks, *, fit_intercept=True):
    """Certified held-out predictions of every fold.

    Returns
    -------
    predictions : (len(alphas), n) held-out predictions (each sample by the fold that holds it out)
    fits : list over alphas of lists over folds of :class:`ExactFit`
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    masks = np.asarray(train_masks, dtype=bool)
    full = exact_path(X, y, alphas, l1_ratio, fit_intercept=fit_intercept)
    pred = np.full((len(alphas), len(y)), np.nan)
    fits = []
    for k, alpha in enumerate(alphas):
        row = []
        for train in masks:
            # the full-data solution is only a start: the fold's answer is certified on its own
            fit = exact_enet(X[train], y[train], float(alpha), l1_ratio, fit_intercept=fit_intercept,
                             w0=full[k].coef)
            pred[k, ~train] = fit.predict(X[~train])
            row.append(fit)
        fits.append(row)
    return pred, fits


def alpha_max(X, y, l1_ratio, fit_intercept=True):
    """Smallest alpha whose solution is all zero (scikit-learn's ``_alpha_grid`` upper end)."""
    Xc, yc, _, _ = centre(X, y, fit_intercept)
    return float(np.abs(Xc.T @ yc).max() / (len(yc) * l1_ratio))
