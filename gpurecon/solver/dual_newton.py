"""Semismooth Newton on the ElasticNet dual: the active set of a hard problem in ~10 steps.

Where a ridge term is present (``b > 0``), the dual of

    min_w 0.5 ||y - X w||^2 + a ||w||_1 + 0.5 b ||w||^2

is, in the residual ``r`` (n values, the fold's training rows),

    D(r) = -0.5 ||r||^2 + r^T y - (1 / 2b) sum_j (|x_j^T r| - a)_+^2,

strongly concave and once differentiable, with ``grad D = y - r - X w(r)`` where
``w_j(r) = soft(x_j^T r, a) / b``: it vanishes exactly at the primal-dual optimum (the KKT
conditions of :mod:`.certify`). A generalised Hessian is ``-(I + X_A X_A^T / b)`` with
``A = {j : |x_j^T r| > a}``: an ``n x n`` system, solved in that form where |A| >= n and by
Woodbury's identity, ``(I + X_A X_A^T / b)^-1 = I - X_A (b I + X_A^T X_A)^-1 X_A^T``, where
|A| < n (a |A| x |A| factorisation: at moderate alpha |A| is a fraction of n).
Newton steps with an Armijo line search converge globally (D is strongly concave with a
Lipschitz gradient) and finitely on the right piece (D is piecewise quadratic): every feature
enters or leaves at once, where active-set rounds on the primal move them a few at a time
(near-collinear columns and rank-saturated folds, where the primal rounds cycle or crawl).
The answer is only a pattern: :mod:`.certify` solves it exactly and checks KKT on every
feature.
"""

from __future__ import annotations

import torch

from .newton import cho_solve

F64 = torch.float64
# Armijo's sufficient-increase fraction and the step halvings tried per Newton step.
ARMIJO = 1e-4
HALVINGS = 30
# ... of which a host that may read (a CPU) tries the first few before the rest: each trial
# evaluates the dual on all p features of every problem, and most steps take one of these
FIRST_HALVINGS = 3
# Newton steps per call: the piece is usually found in 5-20.
MAX_STEPS = 50
# A host that should not read often (a GPU: each read drains the launch queue) reads whether
# any problem still moves every this many steps; the steps between size their systems by the
# last read's widest active set plus ``WIDTH_MARGIN`` of it (a problem whose active set outgrew
# that takes an inexact step - still an ascent direction - and is not called settled on it).
READ_EVERY = 3
WIDTH_MARGIN = 0.5


def _centre(v, train, n_train, center):
    """Vectors ``v`` (P, ..., n) centred on each problem's training rows, zero elsewhere
    (``train`` None: every row trains and ``v`` is already centred)."""
    if train is None:
        return v
    if center:
        v = v - (v * train).sum(-1, keepdim=True) / n_train
    return v * train


def dual_newton(X, train, n_train, center, yc, r, a, b, max_steps: int = MAX_STEPS, staged: bool = False,
                all_rows: bool = False):
    """Maximise the dual of P fold problems from residuals ``r``.

    Parameters
    ----------
    X : Tensor (n, p+1) float64, the design centred on all rows (last column zero)
    train : Tensor (P, n) float64, 1.0 on each problem's training rows
    n_train : Tensor (P,) float64
    center : bool
    yc : Tensor (P, n) fold-centred targets, zero on held-out rows
    r : Tensor (P, n) starting residuals (e.g. ``yc - X_f w`` of the current point)
    a, b : Tensor (P,) float64, ``b > 0``
    max_steps : int
    staged : bool
        A CPU: try the first ``FIRST_HALVINGS`` step lengths before the others (one host read
        per step) and read whether any problem still moves after every step; otherwise (a GPU)
        all ``HALVINGS`` at once and a read every ``READ_EVERY`` steps.
    all_rows : bool
        Every problem trains on every row (``train`` all ones): fold-centring is then the
        design's own centring and is skipped.

    Returns
    -------
    w : Tensor (P, p+1) float64, ``soft(X^T r, a) / b`` at the last residuals
    settled : Tensor (P,) bool, the last step was a full Newton step that kept the active set
    """
    P, n = r.shape
    p1 = X.shape[1]
    nt = n_train[:, None]
    a1, b1 = a[:, None], b[:, None]
    if all_rows:   # X and yc are already centred on every row; r stays so along the steps
        train = nt = None
    r = _centre(r, train, nt, center)
    settled = torch.zeros(P, dtype=torch.bool, device=r.device)
    live = torch.ones(P, dtype=torch.bool, device=r.device)
    g = r @ X                                                                   # (P, p+1): x_j^T r
    excess = (g.abs() - a1).clamp_min(0.0)
    k = k_read = max(int((excess > 0).sum(1).max()), 1)
    every = 1 if staged else READ_EVERY
    for step_no in range(max_steps):
        w = torch.sign(g) * excess / b1
        grad = yc - r - _centre(w @ X.T, train, nt, center)                    # (P, n)
        active = excess > 0
        k = min(k, p1)
        exact = active.sum(1) <= k                                              # the step's system holds A
        feat = torch.topk(excess, k, dim=1).indices                             # active first
        valid = active.gather(1, feat)
        xa = X.T[feat] * valid[..., None]                                        # (P, k, n)
        if train is not None:
            xa = _centre(xa, train[:, None, :], nt[:, :, None], center)
        if k < n:   # Woodbury: a k x k system (zero padding rows add b to its diagonal)
            inner = torch.baddbmm(torch.diag_embed(b[:, None].expand(P, k)), xa, xa.transpose(1, 2))
            chol, info = torch.linalg.cholesky_ex(inner)
            z = cho_solve(chol, torch.bmm(xa, grad[..., None]))                   # (P, k, 1)
            step = grad - torch.bmm(xa.transpose(1, 2), z)[..., 0]
        else:
            hess = torch.bmm(xa.transpose(1, 2), xa) / b[:, None, None] + torch.eye(n, dtype=F64, device=r.device)
            chol, info = torch.linalg.cholesky_ex(hess)
            step = cho_solve(chol, grad[..., None])[..., 0]
        step = _centre(step, train, nt, center)
        step = torch.where(((info == 0) & live)[:, None], step, 0.0)
        h = step @ X                                                            # (P, p+1): x_j^T step
        slope = (grad * step).sum(-1)
        t = _armijo(r, step, yc, g, h, a1, b1, slope, FIRST_HALVINGS if staged else HALVINGS)
        r = r + t[:, None] * step
        kept = ((g + t[:, None] * h).abs() > a1) == active
        # a full step on a piece that stays is that piece's exact maximiser: the optimum
        settled = settled | (live & (t == 1.0) & kept.all(1) & exact)
        live = live & ~settled & (t > 0)
        g = r @ X
        excess = (g.abs() - a1).clamp_min(0.0)
        if (step_no + 1) % every:       # no read: the last read's width and a margin
            k = k_read + max(1, int(WIDTH_MARGIN * k_read))
            continue
        # one host read: whether any problem is still moving, and the next step's widest
        # active set
        any_live, k = (int(v) for v in torch.stack([live.any(), (excess > 0).sum(1).max()]).tolist())
        k = k_read = max(k, 1)
        if not any_live:
            break
    return torch.sign(g) * excess / b1, settled


def _armijo(r, step, yc, g, h, a1, b1, slope, first=HALVINGS):
    """The largest ``t`` in 1, 1/2, 1/4, ... (``HALVINGS`` of them) with
    ``D(r + t step) >= D(r) + ARMIJO t slope`` (0 where none: the step is not an ascent
    direction, e.g. at rounding level); the first ``first`` lengths are tried before the rest,
    which are tried only where some ascending problem found none (one host read)."""
    t = 0.5 ** torch.arange(HALVINGS, dtype=F64, device=r.device)            # (m,)

    def dual(tt):   # D(r + tt step) for tt (m,) -> (P, m)
        rr = r[:, None, :] + tt[None, :, None] * step[:, None, :]
        gg = g[:, None, :] + tt[None, :, None] * h[:, None, :]
        return (-0.5 * rr.square().sum(-1) + (rr * yc[:, None, :]).sum(-1)
                - 0.5 / b1 * (gg.abs() - a1[..., None]).clamp_min(0.0).square().sum(-1))

    d0 = dual(torch.zeros(1, dtype=F64, device=r.device))                     # (P, 1)
    ascent = (slope > 0)[:, None]
    ok = (dual(t[:first]) >= d0 + ARMIJO * t[None, :first] * slope[:, None]) & ascent
    if first < HALVINGS and not bool((ok.any(1, keepdim=True) | ~ascent).all()):
        ok = torch.cat([ok, (dual(t[first:]) >= d0 + ARMIJO * t[None, first:] * slope[:, None]) & ascent], 1)
    idx = torch.where(ok.any(1), ok.to(torch.int8).argmax(1), HALVINGS)
    return torch.where(idx < HALVINGS, t[idx.clamp_max(HALVINGS - 1)], 0.0)
