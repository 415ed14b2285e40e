"""The full-set engine: every feature is always in, for small designs that differ per fold
(fold-wise preprocessing, e.g. PCA fitted per fold).

Each fold brings its own transformed design ``X_f`` (n, k), zero-padded to a common ``k``
(padding columns are zero, so their coefficients stay zero). A fold's (grid point) pair is a
group sharing one Gram ``Xc_f^T Xc_f`` over the fold's centred training rows; its problems are
the targets. Every feature is in the working set (k is small after PCA), so FISTA's
restricted gap is the full gap; an active-set Newton polish makes most solutions exact,
coordinate descent finishes whatever is left (ill-conditioned Grams), and the final gap is
recomputed from explicit residuals in float64. Every answer then leaves through the same
certificate as the shared-design engine (``certify.certify_dense``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .certify import certify_dense
from .coordinate_descent import coordinate_descent
from .fista import GramHessian, PrimalHessian, fista
from .gap import enet_duality_gap
from .newton import pdas
from .options import INNER_FRACTION

F64 = torch.float64
# Columns whose float64 Gram has off-diagonal entries below this fraction of sqrt(G_ii G_jj)
# are treated as orthogonal (fold-wise PCA in float64: ~1e-14; in float32: ~1e-7, not)
ORTHOGONAL_RTOL = 1e-10


@dataclass
class FullSetSolution:
    coef: torch.Tensor       # (F, G, T, k)
    gap: torch.Tensor        # (F, G, T) float64, sklearn-unscaled
    tol: torch.Tensor        # (F, G, T) float64
    n_iter: torch.Tensor     # (F, G, T) int64
    converged: torch.Tensor  # (F, G, T) bool
    x_mean: torch.Tensor     # (F, k) training means of X_f (0 without intercept)
    y_mean: torch.Tensor     # (F, T) training means of Y (0 without intercept)
    certified: torch.Tensor | None = None   # (F, G, T) bool: exact optimum by KKT


def solve_full_sets(Xf, Y, train, *, alpha, l1_ratio, tol, max_iter, center, inner_fraction=0.5,
                       newton_rounds=8, check_every=10) -> FullSetSolution:
    """Fit every (fold, grid point, target) with fold-specific designs.

    Parameters
    ----------
    Xf : Tensor (F, n, k)
        Each fold's design over all rows (training and held-out), compute dtype.
    Y : Tensor (n, T)
        Targets (not centred).
    train : Tensor (F, n) bool
    alpha, l1_ratio : Tensor (G,) float64
    tol, max_iter, center
        sklearn's tol, the FISTA iteration allowance, fit_intercept.
    """
    F, n, k = Xf.shape
    T, G = Y.shape[1], alpha.numel()
    dt, dev = Xf.dtype, Xf.device
    m = train.to(dt)
    n_f = train.sum(1).to(F64)
    if center:
        x_mean = torch.einsum("fn,fnk->fk", m, Xf) / n_f.to(dt)[:, None]
        y_mean = (m @ Y) / n_f.to(dt)[:, None]
    else:
        x_mean = torch.zeros((F, k), dtype=dt, device=dev)
        y_mean = torch.zeros((F, T), dtype=dt, device=dev)
    xc = (Xf - x_mean[:, None, :]) * m[..., None]                                 # (F, n, k)
    yc = (Y[None] - y_mean[:, None, :]) * m[..., None]                            # (F, n, T)
    gram = torch.bmm(xc.transpose(1, 2), xc)                                      # (F, k, k)
    c = torch.bmm(yc.transpose(1, 2), xc)                                         # (F, T, k)
    yy = yc.to(F64).square().sum(1)                                               # (F, T)

    # groups: (fold, grid point) -> K = F*G, problems = targets
    K = F * G
    rep = lambda t: t[:, None].expand(F, G, *t.shape[1:]).reshape(K, *t.shape[1:])  # noqa: E731
    gram_k, c_k, yy_k = rep(gram), rep(c), rep(yy)
    nf_k = n_f[:, None].expand(F, G).reshape(K)
    al_k = alpha[None, :].expand(F, G).reshape(K)
    l1_k = l1_ratio[None, :].expand(F, G).reshape(K)
    a = (al_k * l1_k * nf_k)[:, None].expand(K, T)
    b = (al_k * (1.0 - l1_k) * nf_k)[:, None].expand(K, T)
    tol_abs = tol * yy_k
    if k <= 2 * n:
        hess = GramHessian(gram_k, None)
    else:
        hess = PrimalHessian(rep(xc), rep(m)[:, None, :], nf_k.to(dt)[:, None, None], center)
    coef = torch.zeros((K, T, k), dtype=dt, device=dev)
    n_iter = torch.zeros((K, T), dtype=torch.int64, device=dev)
    gram64 = gram if gram.dtype == F64 else torch.bmm(xc.to(F64).transpose(1, 2), xc.to(F64))
    iterate = not _orthogonal(gram64)
    if not iterate:
        # PCA components are orthogonal on the training rows: the Gram is diagonal and the
        # ElasticNet optimum is coordinate-wise, w_j = S(c_j, a) / (G_jj + b) (soft threshold);
        # the certificate below checks it on the Gram as computed (what it rejects, it solves)
        d = rep(gram64.diagonal(dim1=1, dim2=2))[:, None, :]                     # (K, 1, k)
        c64 = c_k.to(F64)
        shrunk = torch.sign(c64) * (c64.abs() - a[..., None]).clamp_min(0.0)
        coef = torch.where(d > 0, shrunk / torch.where(d > 0, d + b[..., None], 1.0), 0.0).to(dt)
        n_iter = torch.ones((K, T), dtype=torch.int64, device=dev)
    frac = inner_fraction
    fixed = torch.zeros((K, k), dtype=torch.bool, device=dev)
    zero_down = torch.zeros((K, T, 1, k), dtype=F64, device=dev)
    ridge = al_k * (1.0 - l1_k) * nf_k
    for _ in range(4 if iterate else 0):  # FISTA, exact polish, verify; tighten the target if rounding misled it
        gap = _final_gap(xc, yc, coef, a, b, F, G)
        open_ = (gap > tol_abs) & (n_iter < max_iter)
        if not bool(open_.any()):
            break
        allow = torch.where(open_, max_iter - n_iter, torch.zeros_like(n_iter))
        res = fista(hess, c=c_k, yy=yy_k, a=a, b=b, w0=coef, target=tol_abs * frac, max_iter=allow,
                    check_every=check_every)
        coef, n_iter = res.coef, n_iter + res.n_iter
        if newton_rounds:
            lowrank = k > n and bool((ridge > 0).all())
            cols = rep(xc.to(F64)) if lowrank else gram_k.to(F64)
            x, stable = pdas(cols, downdates=zero_down, b_class=torch.ones(1, dtype=F64, device=dev),
                             fold_class=torch.zeros((K, T), dtype=torch.int64, device=dev), ridge=ridge,
                             c=c_k.to(F64), a=a, b=b, active=coef != 0, sign=torch.sign(coef).to(F64),
                             fixed=fixed, rounds=newton_rounds, done=~open_, lowrank=lowrank)
            coef = torch.where((stable & open_)[..., None], x.to(dt), coef)
        frac *= 0.25
    gap = _final_gap(xc, yc, coef, a, b, F, G)
    open_ = gap > tol_abs
    if iterate and bool(open_.any()):
        # what FISTA and the polish could not finish: coordinate descent (cannot stall), with
        # max_iter epochs of its own
        res = coordinate_descent(gram=gram_k, downdates=None, c=c_k, yy=yy_k, a=a, b=b, w0=coef,
                                 target=tol_abs * INNER_FRACTION,
                                 max_epochs=torch.where(open_, max_iter, 0))
        coef = torch.where(open_[..., None], res.coef.to(dt), coef)
        n_iter = n_iter + res.n_epochs
        gap = _final_gap(xc, yc, coef, a, b, F, G)
    # the answer is the exact optimum of its sign pattern wherever KKT certifies it (see certify)
    coef, certified = certify_dense(rep(xc), rep(yc.transpose(1, 2)), coef, a, b)
    gap = _final_gap(xc, yc, coef, a, b, F, G)
    shape = (F, G, T)
    return FullSetSolution(coef.reshape(F, G, T, k), gap.reshape(shape), tol_abs.reshape(shape),
                           n_iter.reshape(shape), (certified | (gap <= tol_abs)).reshape(shape), x_mean, y_mean,
                           certified.reshape(shape))


def _orthogonal(gram) -> bool:
    """Whether every fold's centred training columns are orthogonal: their float64 Gram
    (F, k, k) has off-diagonal entries within ORTHOGONAL_RTOL of its diagonal scale (fold-wise
    PCA's components do)."""
    d = gram.diagonal(dim1=1, dim2=2).clamp_min(0.0).sqrt()
    off = gram - torch.diag_embed(gram.diagonal(dim1=1, dim2=2))
    return bool((off.abs() <= ORTHOGONAL_RTOL * d[:, :, None] * d[:, None, :]).all())


def _final_gap(xc, yc, coef, a, b, F, G):
    """sklearn's gap from explicit float64 residuals, (K, T)."""
    K, T, k = coef.shape
    w = coef.to(F64).reshape(F, G * T, k)
    x64 = xc.to(F64)
    r = yc.to(F64).transpose(1, 2).reshape(F, 1, T, -1) - torch.bmm(w, x64.transpose(1, 2)).reshape(F, G, T, -1)
    r = r.reshape(K, T, -1)                                                            # (K, T, n)
    xtr = torch.bmm(r.reshape(F, G * T, -1), x64).reshape(K, T, k)
    dual_norm = (xtr - b[..., None] * coef.to(F64)).abs().amax(-1)
    y64 = yc.to(F64).transpose(1, 2)[:, None].expand(F, G, T, -1).reshape(K, T, -1)
    return enet_duality_gap(r.square().sum(-1), (r * y64).sum(-1), coef.to(F64).abs().sum(-1),
                            coef.to(F64).square().sum(-1), dual_norm, xtr.square().sum(-1), a, b)
