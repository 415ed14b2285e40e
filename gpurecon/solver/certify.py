"""Certificates: every fold problem ends at the exact optimum of its sign pattern, verified
by the KKT conditions on all features, in float64.

Why: a duality gap below ``tol * ||y_c||^2`` bounds the *training* objective, not held-out
predictions. A coefficient left at -6e-4 where the optimum is 0 costs the training fit
nothing when its column is small on the training rows, and moves the prediction of a held-out
row with a large value on that feature by a tenth of the target's scale (heavy-tailed
features, outlier trials, GPT-2's "rogue" dimensions). So the engine's iterate is only a
guess of the support; the answer returned is the exact solution it points to.

The exact solution. With fold-centred training data ``X, y`` of ``n_f`` rows,
``a = alpha*l1_ratio*n_f`` and ``b = alpha*(1-l1_ratio)*n_f``, ``w`` minimises sklearn's
objective iff (KKT)

    x_j^T r - b w_j = a sign(w_j)   where w_j != 0,        |x_j^T r| <= a   where w_j = 0,

with ``r = y - X w``. Fix an active set ``A`` and its signs ``s``: the first condition is the
linear system

    (X_A^T X_A + b I) w_A = X_A^T y - a s_A,

solved here by Cholesky (float64). Its solution is the optimum when (i) ``sign(w_A) = s_A``
and (ii) ``|x_j^T r| <= a`` on every feature outside ``A`` (checked on *all* p features, one
GEMM). Otherwise the active set moves, as in a primal-dual active-set method: coordinates whose
sign flipped leave ``A``; inactive features violating (ii) enter with the sign of ``x_j^T r``;
repeat. From the engine's near-optimal iterate this takes one or two rounds.

Batching: the problems of one group (grid point, target) share a working set ``W`` (the union
of their active sets), and every fold's Gram on ``W`` is the all-rows Gram minus a few
downdate rows (held-out rows and the centring term), so one ``|W| x |W|`` Gram per group
serves every fold; the fold's active set is imposed by replacing the other rows and columns
of its system with the identity. A problem whose system does not factorise (the lasso on more
active features than it has rank, e.g. duplicated columns) or whose active set keeps moving
is left as the engine returned it and reported as not certified; its convergence is then
decided by sklearn's gap, recomputed here in float64 for the returned coefficients.
Pure ridge problems (``l1_ratio == 0``) have no sign pattern: their gap certifies them
(strong convexity bounds the distance to the optimum), so they are passed through.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .gap import enet_duality_gap
from .working_set import Design, Folds, Solution, _downdates, _rebuild, target_stats

F64 = torch.float64
# KKT tolerances: |x_j^T r| may exceed ``a`` by this fraction (plus rounding of the product,
# KKT_ATOL * ||x_j|| * ||r||) on inactive features, and the active features' stationarity may
# miss by as much. A violation of 1e-9 * a moves a coefficient by ~1e-9 * a / ||x_j||^2.
KKT_RTOL = 1e-9
KKT_ATOL = 1e-12
# Active-set rounds (each: sign-pattern solves with sign flips dropped, then a KKT check over
# all features) before a problem is given up as not certified.
MAX_ROUNDS = 12
# Violators entering per round: at least MIN_ADD, at most ADD_FRACTION of the active set.
MIN_ADD = 10
ADD_FRACTION = 0.3
# Iterative-refinement steps after each sign-pattern solve.
REFINE_STEPS = 2
# Sign-flip drops within one round's solve.
MAX_DROPS = 8


def certify(design: Design, Y: torch.Tensor, folds: Folds, sol: Solution, *, alpha, l1_ratio, t_idx,
            max_elems: int = 2 ** 25, max_rounds: int = MAX_ROUNDS):
    """Replace each problem's coefficients by the certified exact optimum where one is found.

    Parameters
    ----------
    design, Y, folds
        The engine's inputs (any compute dtype; everything here is float64).
    sol : Solution
        The engine's answer (or a starting point) for K groups x F folds; its ``tol``, sklearn's
        threshold ``tol * ||y_c||^2``, decides ``converged`` where no certificate is found.
    alpha, l1_ratio : Tensor (K,) float64
    t_idx : Tensor (K,) int64
    max_elems : int
        float64 elements one batch of fold systems may hold.
    max_rounds : int
        Active-set rounds before a problem is left uncertified.

    Returns
    -------
    Solution
        Same groups and folds; ``coef`` and ``ws`` (possibly wider: features the certificate
        added), ``gap`` recomputed in float64 for the returned coefficients, ``converged``
        = certified or gap within ``sol.tol``, ``score`` the largest ``|x_j^T r| / a`` over the
        group's folds (the warm starts' screen), and ``certified`` (K, F) bool.
    """
    K, F, _ = sol.coef.shape
    n, p = design.n, design.p
    dev = sol.coef.device
    # float64 copies; re-centring in float64 changes no fold-centred quantity (a constant per
    # column cancels) and makes the all-rows mean exactly zero, which the downdate identity uses
    X64 = design.X.to(F64, copy=True)   # never in place: design.X is shared by every chunk
    if folds.center:
        X64[:n] -= X64[:n].mean(0)
    d64 = Design(X64, design.lam_max, design.center)
    f64 = Folds(folds.train.to(F64), folds.n_train, folds.held_out, folds.center)
    Y64 = Y.to(F64)
    ybar, _ = target_stats(Y64, f64)
    yk = Y64[:n, t_idx].T                                                        # (K, n)
    yc = (yk[:, None, :] - (ybar.T[t_idx][:, :, None] if folds.center else 0.0)) * f64.train   # (K, F, n)
    a = alpha[:, None] * l1_ratio[:, None] * folds.n_train[None, :]                # (K, F)
    b = alpha[:, None] * (1.0 - l1_ratio[:, None]) * folds.n_train[None, :]
    col_norm = X64[:n].square().sum(0).sqrt()                                      # (p+1,)

    ws, w = sol.ws, sol.coef.to(F64)
    active = w != 0
    sign = torch.sign(w)
    lasso_like = (a > 0)                                                            # problems with a sign pattern
    certified = torch.zeros((K, F), dtype=torch.bool, device=dev)
    x = w
    for _ in range(max_rounds):
        # 1) exact solve of each open problem's sign pattern (certified ones keep theirs)
        open_ = lasso_like & ~certified
        x_new, solved = _solve_patterns(d64, f64, ws, active, sign, yc, a, b, open_, max_elems)
        x = torch.where(open_[..., None], x_new, x)
        active = torch.where(open_[..., None], x != 0, active)
        sign = torch.where(open_[..., None], torch.sign(x), sign)
        # 2) KKT over all features, float64
        r, g, viol, stat_ok = _kkt(d64, f64, ws, x, yc, a, b, active, sign, col_norm)
        certified = certified | (open_ & solved & stat_ok & ~viol.any(-1))
        still = lasso_like & ~certified
        if not bool(still.any()):
            break
        # 3) the strongest violators enter the active set with the sign of x_j^T r; at most
        #    ADD_FRACTION of the set's size per round (all at once overshoots: hundreds enter,
        #    the solve flips most of them, and the pattern oscillates)
        viol = _strongest(viol & still[..., None], g, active.sum(-1))
        member = torch.zeros((K, p + 1), dtype=torch.bool, device=dev)
        member.scatter_(1, ws, True)
        member |= viol.any(1)
        new_ws, (x, sign_c, act_c) = _widen(ws, member, p, x, sign, active.to(F64))
        enter = viol.gather(2, new_ws[:, None, :].expand(K, F, new_ws.shape[1]))
        g_new = g.gather(2, new_ws[:, None, :].expand(K, F, new_ws.shape[1]))
        ws, active = new_ws, (act_c > 0) | enter
        sign = torch.where(enter, torch.sign(g_new), sign_c)
    # the answer: certified problems their exact solution, the others the engine's iterate
    # (on the possibly wider working set)
    keep = ~certified
    if bool(keep.any()):
        w_eng = _carry(sol.ws, sol.coef.to(F64), ws, p)
        x = torch.where(keep[..., None], w_eng, x)
    gap, g = _gap(d64, f64, ws, x, yc, a, b)
    converged = certified | (gap <= sol.tol)
    score = (g.abs() / a[..., None]).nan_to_num_(nan=0.0, posinf=torch.inf).amax(1).to(sol.score.dtype)
    return replace(sol, ws=ws, coef=x.to(sol.coef.dtype), gap=gap, converged=converged, certified=certified,
                   score=score)


def _solve_patterns(design, folds, ws, active, sign, yc, a, b, open_, max_elems):
    """Solve ``(H_f + b I)_AA w_A = c_A - a s_A`` for every open problem, dropping coordinates
    whose sign flips (up to MAX_DROPS times); returns (x (K, F, s), solved (K, F)).

    Each problem's system is built on its own active features only (compacted, not the
    group's union): Cholesky of ``|A| x |A|``, or with ``|A|`` above the training size and a
    ridge term, of the ``n x n`` Woodbury system ``X_A X_A^T + b I``."""
    K, F, s = active.shape
    n, p = design.n, design.p
    dev = ws.device
    x = torch.zeros((K, F, s), dtype=F64, device=dev)
    solved = torch.zeros((K, F), dtype=torch.bool, device=dev)
    act = active & (ws != p)[:, None, :] & open_[..., None]
    if not bool(act.any()):
        solved = open_.clone()
        return x, solved
    probs = torch.nonzero(open_.reshape(-1)).squeeze(1)                         # flat (K*F) problems
    act_f = act.reshape(K * F, s)[probs]
    sign_f = sign.reshape(K * F, s)[probs]
    ws_f = ws[probs // F]                                                       # (P, s)
    fold_f = probs % F
    yc_f = yc.reshape(K * F, -1)[probs]                                         # (P, n)
    a_f, b_f = a.reshape(-1)[probs], b.reshape(-1)[probs]
    xt = design.X[:n].T                                                         # (p+1, n)
    x_f = torch.zeros((probs.numel(), s), dtype=F64, device=dev)
    ok_f = torch.zeros((probs.numel(),), dtype=torch.bool, device=dev)
    width = int(act_f.sum(1).max())
    step = max(1, int(max_elems // max(1, 3 * width * n + 3 * min(width, n) ** 2 + 4 * s)))
    for lo in range(0, probs.numel(), step):
        sl = slice(lo, lo + step)
        x_f[sl], ok_f[sl] = _solve_some(xt, folds, fold_f[sl], ws_f[sl], act_f[sl], sign_f[sl], yc_f[sl],
                                        a_f[sl], b_f[sl], p)
    x.view(K * F, s)[probs] = x_f
    solved.view(-1)[probs] = ok_f
    return x, solved


def _solve_some(xt, folds, fold, ws, act, sign, yc, a, b, p):
    """Sign-pattern solves of a batch of P problems (flat); see ``_solve_patterns``."""
    P, s = act.shape
    n = xt.shape[1]
    train = folds.train[fold]                                                    # (P, n) float64
    n_train = folds.n_train[fold]
    for _ in range(MAX_DROPS):
        k = max(int(act.sum(1).max()), 1)
        pos = torch.argsort((~act).to(torch.int8), dim=1, stable=True)[:, :k]  # active positions first
        valid = torch.arange(k, device=act.device)[None, :] < act.sum(1, keepdim=True)
        feat = torch.where(valid, ws.gather(1, pos), p)                          # (P, k); p: zero column
        xa = xt[feat]                                                             # (P, k, n)
        if folds.center:
            xa = xa - (xa * train[:, None, :]).sum(-1, keepdim=True) / n_train[:, None, None]
        xa = xa * train[:, None, :] * valid[..., None]
        c = torch.bmm(xa, yc[..., None])[..., 0]                                  # (P, k)
        rhs = torch.where(valid, c - a[:, None] * sign.gather(1, pos), 0.0)
        diag = torch.where(valid, b[:, None], 1.0)                              # padding: identity
        if k > n and bool((b > 0).all()):
            # Woodbury: (A^T A + b I)^-1 v = (v - A^T (A A^T + b I)^-1 A v) / b, A = xa^T (n x k)
            m = torch.bmm(xa.transpose(1, 2), xa) + b[:, None, None] * torch.eye(n, dtype=F64, device=xa.device)
            chol, info = torch.linalg.cholesky_ex(m)

            def inv(v):
                av = torch.bmm(xa.transpose(1, 2), v[..., None])                  # (P, n, 1)
                return (v - torch.bmm(xa, torch.cholesky_solve(av, chol))[..., 0]) / diag
        else:
            h = torch.bmm(xa, xa.transpose(1, 2)) + torch.diag_embed(diag)
            chol, info = torch.linalg.cholesky_ex(h)

            def inv(v):
                return torch.cholesky_solve(v[..., None], chol)[..., 0]
        sol = inv(rhs)
        for _refine in range(REFINE_STEPS):
            # iterative refinement: the Woodbury form divides by b, which loses digits when b is
            # small next to X_A^T X_A (small alpha); a residual step with the same factors restores them
            hx = torch.bmm(xa, torch.bmm(xa.transpose(1, 2), sol[..., None]))[..., 0] + diag * sol
            sol = sol + inv(torch.where(valid, rhs - hx, 0.0))
        ok = (info == 0) & torch.isfinite(sol).all(-1)
        sol = torch.where(valid & ok[:, None], sol, 0.0)
        out = torch.zeros((P, s), dtype=F64, device=act.device).scatter_(1, pos, sol)
        out = torch.where(act, out, 0.0)
        flip = act & (torch.sign(out) != sign)
        if not bool(flip.any()):
            break
        act = act & ~flip
    return out, ok & ~flip.any(1)


def _strongest(viol, g, n_active):
    """The ``max(MIN_ADD, ADD_FRACTION * |A|)`` violators with the largest ``|x_j^T r|`` per problem."""
    m = torch.clamp((n_active * ADD_FRACTION).long(), min=MIN_ADD)
    m = torch.minimum(m, viol.sum(-1))
    k = int(m.max())
    if not k:
        return viol
    top = torch.topk(torch.where(viol, g.abs(), -1.0), k, dim=-1).indices
    keep = torch.arange(k, device=g.device) < m[..., None]
    return torch.zeros_like(viol).scatter_(-1, top, keep) & viol


def _kkt(design, folds, ws, x, yc, a, b, active, sign, col_norm):
    """Residuals, ``X^T r`` on all features, KKT violators outside the active sets (K, F, p+1)
    and whether the active features' stationarity holds (K, F)."""
    K, F, s = x.shape
    n, p = design.n, design.p
    xw = design.X[:n][:, ws].permute(1, 0, 2)                                   # (K, n, s)
    z = torch.bmm(x, xw.transpose(1, 2))                                        # (K, F, n)
    if folds.center:
        z = z - (z * folds.train).sum(-1, keepdim=True) / folds.n_train[:, None]
    r = yc - z * folds.train
    g = (r.reshape(K * F, n) @ design.X[:n]).reshape(K, F, p + 1)               # x_j^T r
    rnorm = r.square().sum(-1).sqrt()                                           # (K, F)
    slack = a[..., None] * KKT_RTOL + KKT_ATOL * rnorm[..., None] * col_norm
    in_act = torch.zeros((K, F, p + 1), dtype=torch.bool, device=x.device)
    in_act.scatter_(2, ws[:, None, :].expand(K, F, s), active)
    viol = (g.abs() > a[..., None] + slack) & ~in_act
    viol[..., p] = False
    g_ws = g.gather(2, ws[:, None, :].expand(K, F, s))
    stat = (g_ws - b[..., None] * x - a[..., None] * sign).abs()
    stat_ok = ~(active & (stat > slack.gather(2, ws[:, None, :].expand(K, F, s)))).any(-1)
    return r, g, viol, stat_ok


def _gap(design, folds, ws, x, yc, a, b):
    """sklearn's duality gap (unscaled, float64) of the returned coefficients over all features,
    and ``X^T r`` (K, F, p+1)."""
    K, F, s = x.shape
    n, p = design.n, design.p
    xw = design.X[:n][:, ws].permute(1, 0, 2)
    z = torch.bmm(x, xw.transpose(1, 2))
    if folds.center:
        z = z - (z * folds.train).sum(-1, keepdim=True) / folds.n_train[:, None]
    r = yc - z * folds.train
    g = (r.reshape(K * F, n) @ design.X[:n]).reshape(K, F, p + 1)
    xta = g.clone()
    xta.scatter_add_(2, ws[:, None, :].expand(K, F, s), -b[..., None] * x)
    xta[..., p] = 0
    gap = enet_duality_gap(r.square().sum(-1), (r * yc).sum(-1), x.abs().sum(-1), x.square().sum(-1),
                           xta.abs().amax(-1), g.square().sum(-1), a, b)
    return gap, g


def _widen(ws, member, p, *tensors):
    """New working sets from ``member`` (K, p+1), each (K, F, s) tensor carried over."""
    new_ws = None
    out = []
    for t in tensors:
        new_ws, moved = _rebuild(ws, t, member, p)
        out.append(moved)
    return new_ws, out


def _carry(ws_from, coef, ws_to, p):
    """Coefficients on ``ws_from`` expressed on ``ws_to`` (a superset)."""
    K, F, s = coef.shape
    dense = torch.zeros((K, F, p + 1), dtype=coef.dtype, device=coef.device)
    dense.scatter_(2, ws_from[:, None, :].expand(K, F, s), coef)
    dense[:, :, p] = 0
    return dense.gather(2, ws_to[:, None, :].expand(K, F, ws_to.shape[1]))


def certify_dense(xc, yc, coef, a, b, max_rounds: int = MAX_ROUNDS):
    """The same certificate for small explicit designs (the full-set engine: every feature in).

    Parameters
    ----------
    xc : Tensor (K, n, k)
        Each group's centred training design (held-out rows zero).
    yc : Tensor (K, T, n)
        Centred training targets (held-out rows zero).
    coef : Tensor (K, T, k)
        The engine's answer.
    a, b : Tensor (K, T) float64

    Returns
    -------
    coef : Tensor (K, T, k), the exact optimum where certified, else ``coef``
    certified : Tensor (K, T) bool
    """
    x64, y64, w = xc.to(F64), yc.to(F64), coef.to(F64)
    K, T, k = w.shape
    gram = torch.bmm(x64.transpose(1, 2), x64)                                    # (K, k, k)
    c = torch.bmm(y64, x64)                                                       # (K, T, k)
    col_norm = x64.square().sum(1).sqrt()[:, None, :]                             # (K, 1, k)
    eye = torch.eye(k, dtype=F64, device=w.device)
    live = (col_norm > 0).expand(K, T, k)                                         # padding columns never enter
    active, sign = (w != 0) & live, torch.sign(w)
    certified = torch.zeros((K, T), dtype=torch.bool, device=w.device)
    x = w
    open_ = a > 0
    for _ in range(max_rounds):
        for _drop in range(MAX_DROPS):
            both = active[..., :, None] & active[..., None, :]
            m = torch.where(both, gram[:, None] + b[..., None, None] * eye, eye)
            rhs = torch.where(active, c - a[..., None] * sign, 0.0)
            chol, info = torch.linalg.cholesky_ex(m)
            sol = torch.cholesky_solve(rhs[..., None], chol)[..., 0]
            ok = (info == 0) & torch.isfinite(sol).all(-1)
            sol = torch.where(active & ok[..., None], sol, 0.0)
            flip = active & (torch.sign(sol) != sign)
            if not bool((flip & open_[..., None]).any()):
                break
            active = active & ~flip
        solved = ok & ~flip.any(-1)
        x = torch.where((open_ & ~certified)[..., None], sol, x)
        g = c - torch.einsum("ktj,kij->kti", x, gram)                             # X^T r
        r_norm = (y64.square().sum(-1) - 2 * (x * c).sum(-1) + (x * torch.einsum("kti,kij->ktj", x, gram)).sum(-1))
        slack = a[..., None] * KKT_RTOL + KKT_ATOL * r_norm.clamp_min(0).sqrt()[..., None] * col_norm
        viol = live & ~active & (g.abs() > a[..., None] + slack)
        stat = (g - b[..., None] * x - a[..., None] * sign).abs()
        stat_ok = ~(active & (stat > slack)).any(-1)
        certified = certified | (open_ & solved & stat_ok & ~viol.any(-1))
        still = open_ & ~certified
        if not bool(still.any()):
            break
        viol = _strongest(viol & still[..., None], g, active.sum(-1))
        active = torch.where(still[..., None], active | viol, active)
        sign = torch.where(viol, torch.sign(g), torch.where(active, torch.sign(x), sign))
    return torch.where(certified[..., None], x, w).to(coef.dtype), certified
