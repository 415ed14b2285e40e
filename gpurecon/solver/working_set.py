"""The working-set engine, for one design X shared by every fold: working sets grown by KKT
checks over all features, warm starts from the full-data fit.

Problems are grouped by (grid point, target): a group holds that pair's problems for every
fold and one working set of features shared by them (leave-one-out folds differ by one row,
so their supports nearly coincide). One outer round is

1. a full check of every unfinished problem: the fold's centred residual ``R`` through one
   batched product of X's working-set columns with the coefficients (fold centring is a
   per-problem mean: X is never copied per fold), then ``X^T R`` over *all* features through
   one GEMM, then sklearn's duality gap in float64;
2. for groups with unfinished problems, the features outside the working set that violate
   the KKT condition ``|X_j^T R| <= a`` are added (the strongest first, growing the set by at
   most ``Options.growth`` of its size per round);
3. the inner solve on the working sets, in buckets of similar size: FISTA with adaptive
   restart (Gram form with per-fold low-rank downdates when the set is small, primal form
   otherwise; frozen/compacted per problem; a step per feature, i.e. diagonal
   preconditioning, in groups whose Hessian rescaled to a unit diagonal is much better
   conditioned, see ``_choose_metric``) to ``Options.inner_fraction`` of the tolerance,
   and an exact active-set Newton polish (``newton.pdas``) where it is cheap enough; then
   batched coordinate descent (``coordinate_descent``: sklearn's algorithm in Gram form, with
   Anderson extrapolation) for every problem those leave above the target. Groups that
   coordinate descent already had to finish go to it directly. While a set still grows,
   coordinate descent only aims at
   ``CD_GAP_FRACTION`` of the current full gap.

It ends when every problem's full gap meets ``Options.stop_fraction`` of sklearn's
tolerance, or coordinate descent has spent ``max_iter`` epochs on it (FISTA iterations have
their own ``max_iter`` allowance).
Warm-started folds begin from the full-data fit of the same (grid point, target), restricted
to its support and the features close to its KKT boundary (a strong-rule style screen that the
full check verifies), then take one Newton step on that support with a factorisation shared by
all folds. A fold never keeps the full-data fit as its answer (that fit saw the fold's
held-out samples), even when it already meets the fold's tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .coordinate_descent import coordinate_descent
from .fista import GramHessian, PrimalHessian, fista
from .gap import enet_duality_gap
from .newton import pdas
from .options import (CD_GAP_FRACTION, FIRST_SET, INNER_FRACTION, MAX_CONSTRAINTS, MAX_ROUNDS, NEWTON_MAX_SET,
                      PRECONDITION_MARGIN, PRECONDITION_SPREAD, STOP_AT_TOL_ROUND, WARM_SCORE, WHOLE_SET, Options)

F64 = torch.float64



@dataclass
class Design:
    """X (n+1, p+1): globally centred (when fitting intercepts), a zero row and a zero column
    appended so that padded indices (``n`` for rows, ``p`` for features) read zeros."""

    X: torch.Tensor
    lam_max: torch.Tensor   # float64 scalar: lambda_max(X^T X) over all rows (valid for every fold)
    center: bool
    # float64 scalar: lambda_max of X^T X with unit diagonal (D^-1/2 X^T X D^-1/2); bounds every
    # working set's rescaled Gram (a principal submatrix)
    lam_max_scaled: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.X.shape[0] - 1

    @property
    def p(self) -> int:
        return self.X.shape[1] - 1


@dataclass
class Folds:
    train: torch.Tensor     # (F, n) compute dtype, 1.0 on training rows
    n_train: torch.Tensor   # (F,) float64
    held_out: torch.Tensor  # (F, h) int64 held-out rows, padded with n (the zero row)
    center: bool


@dataclass
class Solution:
    """Coefficients of a chunk of groups in working-set form."""

    ws: torch.Tensor        # (K, s) feature indices, padded with p
    coef: torch.Tensor      # (K, F, s)
    gap: torch.Tensor       # (K, F) float64, sklearn-unscaled duality gap
    tol: torch.Tensor       # (K, F) float64, tol * ||yc||^2
    n_iter: torch.Tensor    # (K, F) int64
    converged: torch.Tensor  # (K, F) bool
    score: torch.Tensor     # (K, p+1) max over folds of |X_j^T R| / a at the last check
    certified: torch.Tensor | None = None   # (K, F) bool: exact optimum by KKT (see certify)


def make_design(X: torch.Tensor, center: bool) -> Design:
    """Centre X (float64 mean, so large offsets cancel exactly) and pad it; see ``Design``."""
    n, p = X.shape
    if center:
        X = (X.to(torch.float64) - X.to(torch.float64).mean(0)).to(X.dtype)
    Xe = torch.zeros((n + 1, p + 1), dtype=X.dtype, device=X.device)
    Xe[:n, :p] = X
    x64 = X.to(torch.float64)
    unit = x64 * _inv_sqrt(x64.square().sum(0))               # columns of unit norm
    return Design(Xe, _lambda_max(x64), center, _lambda_max(unit))


def _lambda_max(x: torch.Tensor) -> torch.Tensor:
    """``lambda_max(x^T x)`` in float64, through the smaller of the two Grams."""
    n, p = x.shape
    if not (n and p):
        return torch.zeros((), dtype=torch.float64, device=x.device)
    return torch.linalg.eigvalsh(x @ x.T if n <= p else x.T @ x)[-1].to(torch.float64)


def _inv_sqrt(d: torch.Tensor) -> torch.Tensor:
    """``d^-1/2`` where ``d > 0``, 0 elsewhere (zero columns, padding)."""
    pos = d > 0
    return torch.where(pos, torch.where(pos, d, 1.0).rsqrt(), 0.0)


def make_folds(train_masks: torch.Tensor, center: bool, dtype: torch.dtype) -> Folds:
    """Fold tensors from boolean training masks (F, n)."""
    F, n = train_masks.shape
    held = ~train_masks
    h = max(int(held.sum(1).max()) if F else 0, 1)
    # stable sort puts each fold's held-out rows first, in row order
    order = torch.argsort((~held).to(torch.int8), dim=1, stable=True)[:, :h]
    valid = torch.arange(h, device=train_masks.device)[None, :] < held.sum(1, keepdim=True)
    held_out = torch.where(valid, order, torch.full_like(order, n))
    return Folds(train_masks.to(dtype), train_masks.sum(1).to(torch.float64), held_out, center)


def target_stats(Y: torch.Tensor, folds: Folds):
    """Per (fold, target): training mean of Y (compute dtype) and ||yc||^2 (float64)."""
    n = folds.train.shape[1]
    y64 = Y[:n].to(torch.float64)
    m64 = folds.train.to(torch.float64)
    if folds.center:
        ybar = (m64 @ y64) / folds.n_train[:, None]
        yy = m64 @ (y64 * y64) - folds.n_train[:, None] * ybar * ybar
        return ybar.to(Y.dtype), torch.clamp(yy, min=0.0)
    return torch.zeros((m64.shape[0], Y.shape[1]), dtype=Y.dtype, device=Y.device), m64 @ (y64 * y64)


def _residuals(design, Y, folds, ws, coef, t_idx):
    """Centred training residuals (K, F, n) and the targets (K, n)."""
    n = design.n
    xw = design.X[:n][:, ws].permute(1, 0, 2)                 # (K, n, s)
    z = torch.bmm(coef, xw.transpose(1, 2))                    # (K, F, n)
    yk = Y[:n, t_idx].T                                        # (K, n)
    r = yk[:, None, :] - z
    if folds.center:
        r = r - (r * folds.train).sum(-1, keepdim=True) / folds.n_train.to(r.dtype)[:, None]
    return r * folds.train, yk


def full_check(design, Y, folds, ws, coef, a, b, t_idx, any_ridge=None):
    """sklearn's duality gap of every problem over all features, and the KKT scores.

    Returns
    -------
    gap : Tensor (K, F) float64
    score : Tensor (K, p+1)
        Largest ``|X_j^T R| / a`` over the group's folds (``inf`` where ``a == 0`` and
        ``X_j^T R != 0``); finished problems should be masked by the caller via ``skip``.
    score_ws : Tensor (K, F, s)
        The same per problem for the working-set features.
    """
    K, F, s = coef.shape
    n, p1 = design.n, design.p + 1
    r, yk = _residuals(design, Y, folds, ws, coef, t_idx)
    xtr = (r.reshape(K * F, n) @ design.X[:n]).reshape(K, F, p1)
    idx = ws[:, None, :].expand(K, F, s)
    xtr_ws = xtr.gather(2, idx)
    xta_ws = xtr_ws - b.to(coef.dtype)[..., None] * coef
    f64 = torch.float64
    if any_ridge is None:   # callers that check many rounds pass it (a host sync)
        any_ridge = bool((a == 0).any())
    xtr_norm2 = xtr.to(f64).square().sum(-1) if any_ridge else None
    # in place from here: the (K, F, p+1) tensor is the largest in the check
    out_abs = xtr.abs_().scatter_(2, idx, 0.0)
    dual_norm = torch.maximum(out_abs.amax(-1), xta_ws.abs().amax(-1))
    r64 = r.to(f64)
    gap = enet_duality_gap(
        r64.square().sum(-1), (r64 * yk.to(f64)[:, None, :]).sum(-1),
        coef.to(f64).abs().sum(-1), coef.to(f64).square().sum(-1),
        dual_norm, xtr_norm2, a, b,
    )
    inv_a = torch.where(a > 0, 1.0 / torch.where(a > 0, a, 1.0), torch.inf).to(coef.dtype)[..., None]
    out_abs.mul_(inv_a).nan_to_num_(nan=0.0)
    score_ws = (xtr_ws.abs() * inv_a).nan_to_num_(nan=0.0)
    return gap, out_abs, score_ws


def _rebuild(ws, coef, member, p):
    """New padded working sets from a membership mask (K, p+1); coefficients carried over."""
    K, F, _ = coef.shape
    member = member.clone()
    member[:, p] = False
    counts = member.sum(1)
    s = max(int(counts.max()) if K else 0, 1)
    order = torch.argsort((~member).to(torch.int8), dim=1, stable=True)[:, :s]
    new_ws = torch.where(torch.arange(s, device=ws.device)[None, :] < counts[:, None], order,
                         torch.full_like(order, p))
    dense = torch.zeros((K, F, p + 1), dtype=coef.dtype, device=coef.device)
    dense.scatter_(2, ws[:, None, :].expand(K, F, ws.shape[1]), coef)
    dense[:, :, p] = 0
    return new_ws, dense.gather(2, new_ws[:, None, :].expand(K, F, s))


def _append(ws, coef, top, n_add, p, s):
    """Working sets of width ``s`` with each group's first ``n_add`` features of ``top``
    (K, k) appended after its current members; coefficients carried over in place, the new
    features' start at 0. Unlike :func:`_rebuild` it never builds a (K, F, p) array, which
    on many problems (a permutation null) cost as much as a check's elementwise passes."""
    K, F, s_old = coef.shape
    keep = min(s_old, s)
    new_ws = torch.full((K, s + 1), p, dtype=ws.dtype, device=ws.device)   # last column: a sink
    new_ws[:, :keep] = ws[:, :keep]
    new_coef = coef.new_zeros((K, F, s))
    new_coef[:, :, :keep] = coef[:, :, :keep]
    if top is not None:
        k = top.shape[1]
        pos = (ws != p).sum(1, keepdim=True) + torch.arange(k, device=ws.device)[None, :]
        valid = torch.arange(k, device=ws.device)[None, :] < n_add[:, None]
        new_ws.scatter_(1, torch.where(valid, pos, s), torch.where(valid, top, p))
    return new_ws[:, :s], new_coef


def _downdates(design, folds, ws, dtype):
    """Rows U with fold Hessian = G - U^T U on the working sets: (K, F, r, s)."""
    xo = design.X[folds.held_out][:, :, ws].permute(2, 0, 1, 3).to(dtype)   # (K, F, h, s)
    if not folds.center:
        return xo
    root_n = folds.n_train.sqrt().to(dtype)[None, :, None, None]
    if xo.shape[2] == 1:
        # one held-out row: x x^T + x x^T / n_f is one row scaled by sqrt(1 + 1/n_f)
        return xo * torch.sqrt(1.0 + 1.0 / folds.n_train).to(dtype)[None, :, None, None]
    return torch.cat([xo, xo.sum(2, keepdim=True) / root_n], 2)


def _fold_classes(folds):
    """Distinct training sizes (float64) and each fold's class index."""
    sizes, cls = torch.unique(folds.n_train, return_inverse=True)
    return sizes, cls


def _newton_pays(s, n, m, budget, lowrank=True):
    """Is an active-set Newton round (one s x s inverse shared by m problems, then two products
    with it per problem) worth ``budget`` FISTA iterations of one problem? (About 4 rounds.)"""
    fista_iter = 2 * s * s if s <= 2 * n else 4 * n * s
    if s > n and lowrank:   # low-rank inverse: one n x n factorisation per group, products through X
        newton = 2 * n ** 3 / max(m, 1) + 16 * n * s + 6 * n * n
    else:
        newton = 1.7 * s ** 3 / max(m, 1) + 6 * s * s
    return 4 * newton <= budget * fista_iter


def _buckets(sizes, ratio=1.3):
    """Group indices bucketed by working-set size so padding wastes at most ~30%; groups with a
    negative size are left out (one host sync)."""
    order = torch.argsort(sizes)
    sz = sizes[order].tolist()
    out = []
    lo = next((i for i, v in enumerate(sz) if v >= 0), len(sz))
    for i in range(lo + 1, len(sz) + 1):
        if i == len(sz) or sz[i] > max(ratio * max(sz[lo], 1), sz[lo] + 8):
            out.append((order[lo:i], max(int(sz[i - 1]), 1)))
            lo = i
    return out


def _inner(design, Y, folds, *, ws, coef, alpha, l1_ratio, a, b, yy, tol_abs, allowance, t_idx, ybar,
           opts, newton_start=False, round_no=1, open_all=None, cd_allow=None, cd_floor=None, cd_groups=None):
    """Solve K groups on their working sets: FISTA, an exact active-set Newton polish, and
    coordinate descent for whatever those leave unfinished.

    Groups are processed in buckets of similar working-set size. FISTA runs each unfinished
    problem (``allowance`` iterations) until its restricted gap is below
    ``opts.inner_fraction * tol_abs``, except in groups listed in ``cd_groups`` (coordinate
    descent already had to finish them); a group whose rescaled Hessian is much better
    conditioned takes a step per feature (:func:`_choose_metric`); with ``opts.newton_rounds``
    the PDAS polish then tries to
    make the solution exact (kept only where the active set settles); problems still above
    the target (or ``cd_floor``, the looser target of sets that are still growing) get
    coordinate descent with ``cd_allow`` epochs.

    Returns the coefficients (K, F, s), FISTA iterations and coordinate descent epochs (K, F).
    """
    K, F, s = coef.shape
    n, p, dt = design.n, design.p, coef.dtype
    coef = coef.clone()
    n_iter = torch.zeros((K, F), dtype=torch.int64, device=coef.device)
    cd_epochs = torch.zeros((K, F), dtype=torch.int64, device=coef.device)
    if open_all is None:
        open_all = allowance > 0
    one_batch = math.isinf(opts.bucket_ratio)   # the GPU path (strategy "gpu")
    if one_batch:
        # one batch at the working sets' padded width: no host sync (groups without an open
        # problem, if any, run with a zero allowance)
        buckets = [(torch.arange(K, device=coef.device), max(s, 1))]
    else:
        # groups without an open problem get size -1: left out by _buckets
        buckets = _buckets(torch.where(open_all.any(1), (ws != p).sum(1), -1), opts.bucket_ratio)
    for g, sb in buckets:
        wsb, cb, open_ = ws[g, :sb], coef[g, :, :sb], open_all[g]
        xw = design.X[:n][:, wsb].permute(1, 0, 2)                           # (K', n, sb)
        yk = Y[:n, t_idx[g]].T
        yc = (yk[:, None, :] - ybar.T[t_idx[g]][:, :, None]) * folds.train   # (K', F, n)
        c = torch.bmm(yc, xw)
        if sb <= 2 * n:
            hess = GramHessian(torch.bmm(xw.transpose(1, 2), xw), _downdates(design, folds, wsb, dt),
                               fused_dot=one_batch)
        else:
            hess = PrimalHessian(xw, folds.train[None], folds.n_train.to(dt)[None, :, None], folds.center)
        lip = torch.minimum(hess.lipschitz(), design.lam_max.to(coef.device).expand(g.numel()))
        allow = torch.where(open_, allowance[g], torch.zeros_like(allowance[g]))
        scale = None
        if cd_allow is not None:
            # FISTA with one step 1/L per group crawls when the working-set columns differ widely
            # in scale; a step per feature (diagonal preconditioning) fixes that but slows
            # groups of correlated columns of similar scale: each group takes the metric in
            # which its Hessian is better conditioned
            pre, lip_pre, diag = _choose_metric(hess, xw, b[g][:, 0], one_batch=one_batch,
                                                lam_scaled=design.lam_max_scaled)
            lip = torch.where(pre, lip_pre, lip)
            scale = torch.where(pre[:, None], diag, 1.0)
            if cd_groups is not None:
                allow = torch.where(cd_groups[g][:, None], torch.zeros_like(allow), allow)
        use_newton = sb <= NEWTON_MAX_SET and _newton_pays(sb, n, F, opts.newton_budget, opts.lowrank_newton)
        if newton_start and use_newton:
            cb = _newton_start(design, folds, wsb, cb, xw, yc, alpha[g], l1_ratio[g], a[g], b[g], open_, opts)
        # without the exact polish to finish, FISTA itself must reach the tolerance
        frac = opts.inner_fraction if (use_newton and opts.newton_rounds) else min(opts.inner_fraction, INNER_FRACTION)
        target = tol_abs[g] * frac
        fdt = opts.fista_dtype or dt
        if fdt != dt:
            hess, c, cb_f = hess.to(fdt), c.to(fdt), cb.to(fdt)
        else:
            cb_f = cb
        res = fista(hess, c=c, yy=yy[g], a=a[g], b=b[g], w0=cb_f, target=target, max_iter=allow,
                    check_every=opts.check_every, lipschitz=lip,
                    min_iter=newton_start, max_allow=opts.round_iter, scale=scale,
                    fused_dot=one_batch)
        cb = res.coef.to(dt)
        n_iter[g] = res.n_iter
        settled = torch.zeros_like(open_)
        # groups coordinate descent already finishes skip the polish too (its Newton steps
        # on the current face do that job there)
        polish = open_ if cd_groups is None else open_ & ~cd_groups[g][:, None]
        if opts.newton_rounds and use_newton and round_no >= opts.polish_from_round and bool(polish.any()):
            cb, settled = _polish(design, folds, wsb, cb, xw, yc, alpha[g], l1_ratio[g], a[g], b[g], polish, opts,
                                  return_stable=True)
        if cd_allow is not None:
            # what FISTA and the polish left above the inner target: coordinate descent, which
            # cannot stall on ill-conditioned working sets or active sets larger than n
            cd_target = tol_abs[g] * min(opts.inner_fraction, INNER_FRACTION)
            if cd_floor is not None:
                cd_target = torch.maximum(cd_target, cd_floor[g])
            need = open_ & ~settled & ~(res.gap <= cd_target) & (cd_allow[g] > 0)
            if bool(need.any()):
                cb, spent = _cd(design, folds, wsb, cb, xw, yc, hess, yy[g], a[g], b[g], cd_target,
                                torch.where(need, cd_allow[g], torch.zeros_like(cd_allow[g])), opts)
                cd_epochs[g] = spent
        coef[g, :, :sb] = cb
    return coef, n_iter, cd_epochs


def _choose_metric(hess, xw, b, one_batch=False, lam_scaled=None):
    """Per group: does diagonally preconditioned FISTA converge faster than plain FISTA?

    Compares the condition numbers (float64 eigenvalues of the all-rows Gram, which every
    fold's Hessian differs from by a low-rank term) of ``G + bI`` (plain) and of its rescaled
    form ``D^-1/2 (G + bI) D^-1/2`` (``D = diag(G)``), over eigenvalues above ``1e-8`` of the
    largest (a lasso's null space is not a direction FISTA needs to resolve). Rescaling
    changes a condition number by at most the diagonal's spread ``max(D) / min(D)``, so groups
    whose spread is below ``PRECONDITION_MARGIN`` keep the plain metric without a
    factorisation (one host sync leaves them out).

    Wide working sets (primal Hessian, no Gram) and the one-batch engine (``one_batch``: the
    GPU path, where a batch of eigenvalue problems is a loop of solver calls and the subset a
    host sync) decide by the spread alone (``PRECONDITION_SPREAD``) and bound the rescaled
    ``lambda_max`` by the smaller of the rescaled Gram's Frobenius norm and ``lam_scaled``
    (the whole design's, which bounds every principal submatrix).

    Returns
    -------
    pre : Tensor (K,) bool
    lip_pre : Tensor (K,) float64
        ``lambda_max`` of the rescaled Hessian plus its largest rescaled ridge ``b / D_jj``
        (a Lipschitz bound of the preconditioned step).
    diag : Tensor (K, s) float64
        The Gram's diagonal (the preconditioner; 0 for padding columns).
    """
    gram = hess.gram.to(F64) if isinstance(hess, GramHessian) else None
    x64 = xw.to(F64) if gram is None else None
    diag = torch.diagonal(gram, dim1=1, dim2=2) if gram is not None else x64.square().sum(1)
    K, s = diag.shape
    pos = diag > 0
    spread = diag.amax(1) / torch.where(pos, diag, torch.inf).amin(1)
    inv_sqrt = _inv_sqrt(diag)
    ridge = b.to(F64)[:, None] * inv_sqrt.square()
    if gram is None or one_batch:
        if gram is None:
            # the n x n side of the rescaled design: the same non-zero eigenvalues
            xs = x64 * inv_sqrt[:, None, :]
            rescaled = torch.bmm(xs, xs.transpose(1, 2))
        else:
            rescaled = gram * inv_sqrt[:, :, None] * inv_sqrt[:, None, :]
        bound = torch.linalg.matrix_norm(rescaled, ord="fro")
        if lam_scaled is not None:
            bound = torch.minimum(bound, lam_scaled.to(bound.device) * (1 + 1e-9))
        return spread > PRECONDITION_SPREAD, bound + ridge.amax(1), diag
    pre = torch.zeros(K, dtype=torch.bool, device=diag.device)
    lip_pre = torch.ones(K, dtype=F64, device=diag.device)
    idx = torch.nonzero(spread > PRECONDITION_MARGIN).squeeze(1)
    if idx.numel():
        g, isq = gram[idx], inv_sqrt[idx]
        eye = torch.eye(s, dtype=F64, device=g.device)
        plain = torch.linalg.eigvalsh(g + b.to(F64)[idx, None, None] * eye)
        # padding columns get a unit diagonal in the rescaled matrix: an eigenvalue 1, neutral there
        scaled = g * isq[:, :, None] * isq[:, None, :] + torch.diag_embed(ridge[idx] + (~pos[idx]).to(F64))
        rescaled = torch.linalg.eigvalsh(scaled)
        pre[idx] = _condition(rescaled) * PRECONDITION_MARGIN < _condition(plain)
        lip_pre[idx] = rescaled[:, -1]
    return pre, lip_pre, diag


def _condition(eig):
    """``lambda_max / lambda_min`` over eigenvalues above 1e-8 of the largest (ascending rows)."""
    top = eig[:, -1:]
    low = torch.where(eig > 1e-8 * top, eig, torch.inf).amin(1)
    return top[:, 0] / low


def _cd(design, folds, ws, coef, xw, yc, hess, yy, a, b, target, allow, opts):
    """Coordinate descent for the problems with ``allow > 0`` (packed per group, in
    sub-batches sized by ``opts.max_elems``); returns the coefficients and epochs spent."""
    K, F, s = coef.shape
    groups = torch.nonzero((allow > 0).any(1)).squeeze(1)
    coef, epochs = coef.clone(), torch.zeros_like(allow)
    m = int((allow > 0).sum(1).max())
    r = 1 if not folds.center else folds.held_out.shape[1] + (folds.held_out.shape[1] > 1)
    per_group = 2 * s * s + m * s * (r + 8) + design.n * s
    step = max(1, int(opts.max_elems // per_group))
    for lo in range(0, groups.numel(), step):
        g = groups[lo:lo + step]
        pick = torch.argsort((allow[g] <= 0).to(torch.int8), dim=1, stable=True)[:, :m]   # open first
        rows = torch.arange(g.numel(), device=coef.device)[:, None]
        if isinstance(hess, GramHessian):
            gram = hess.gram[g]
        else:
            x64 = xw[g].to(F64)
            gram = torch.bmm(x64.transpose(1, 2), x64)
        down = _downdates(design, folds, ws[g], F64)[rows, pick]
        c = torch.bmm(yc[g][rows, pick].to(F64), xw[g].to(F64))
        res = coordinate_descent(gram=gram, downdates=down, c=c, yy=yy[g][rows, pick], a=a[g][rows, pick],
                                 b=b[g][rows, pick], w0=coef[g][rows, pick], target=target[g][rows, pick],
                                 max_epochs=allow[g][rows, pick], max_elems=opts.max_elems)
        take = allow[g][rows, pick] > 0
        start = coef[g][rows, pick]
        coef[g[:, None], pick] = torch.where(take[..., None], res.coef.to(coef.dtype), start)
        epochs[g[:, None], pick] = torch.where(take, res.n_epochs, 0)
    return coef, epochs


def _polish(design, folds, ws, coef, xw, yc, alpha, l1_ratio, a, b, open_, opts, return_stable=False):
    """PDAS from the FISTA iterate for the open problems only (packed per group), in
    sub-batches; keeps the result where the active set settled."""
    K, F, s = coef.shape
    sizes, cls = _fold_classes(folds)
    ridge = alpha * (1.0 - l1_ratio)
    groups = torch.nonzero(open_.any(1)).squeeze(1)
    settled = torch.zeros_like(open_)
    if not groups.numel():
        return (coef, settled) if return_stable else coef
    m = int(open_.sum(1).max())
    # the low-rank inverse divides by b: the lasso (b = 0) needs the s x s one
    lowrank = opts.lowrank_newton and s > design.n and bool((ridge[groups] > 0).all())
    n = design.n
    per_group = (2 * n * s + 2 * n * n * sizes.numel() if lowrank else 2 * s * s * sizes.numel()) \
        + m * (16 * s + MAX_CONSTRAINTS ** 2 + (n * MAX_CONSTRAINTS if lowrank else 0))
    step = max(1, int(opts.max_elems // per_group))
    coef = coef.clone()
    for lo in range(0, groups.numel(), step):
        g = groups[lo:lo + step]
        pick = torch.argsort((~open_[g]).to(torch.int8), dim=1, stable=True)[:, :m]   # open first
        rows = torch.arange(g.numel(), device=coef.device)[:, None]
        xw64 = xw[g].to(F64)
        start = coef[g][rows, pick]
        x, stable = pdas(_newton_cols(xw64, lowrank),
                         downdates=_downdates(design, folds, ws[g], F64)[rows, pick], b_class=sizes,
                         fold_class=cls[pick], ridge=ridge[g], c=torch.bmm(yc[g][rows, pick].to(F64), xw64),
                         a=a[g][rows, pick], b=b[g][rows, pick], active=start != 0,
                         sign=torch.sign(start).to(F64), fixed=ws[g] == design.p, rounds=opts.newton_rounds,
                         done=~open_[g][rows, pick], lowrank=lowrank)
        take = stable & open_[g][rows, pick]
        coef[g[:, None], pick] = torch.where(take[..., None], x.to(coef.dtype), start)
        settled[g[:, None], pick] = take
    return (coef, settled) if return_stable else coef


def _newton_cols(xw64, lowrank):
    """What the Newton steps multiply by: the columns (low-rank form) or their Gram."""
    return xw64 if lowrank else torch.bmm(xw64.transpose(1, 2), xw64)


def _newton_start(design, folds, ws, coef, xw, yc, alpha, l1_ratio, a, b, open_, opts):
    """One Newton step of every fold on the shared start's active set (one factorisation per
    group, Woodbury per fold); coordinates whose sign flips restart at zero."""
    K, F, s = coef.shape
    sizes, cls = _fold_classes(folds)
    ridge = alpha * (1.0 - l1_ratio)
    groups = torch.nonzero((ridge > 0) & open_.any(1)).squeeze(1)
    lowrank = opts.lowrank_newton and s > design.n
    n = design.n
    per_group = (2 * n * s + 2 * n * n if lowrank else 2 * s * s) + F * (16 * s + MAX_CONSTRAINTS ** 2
                                                                       + (n * MAX_CONSTRAINTS if lowrank else 0))
    step = max(1, int(opts.max_elems // per_group))
    coef = coef.clone()
    for lo in range(0, groups.numel(), step):
        g = groups[lo:lo + step]
        xw64 = xw[g].to(F64)
        start = coef[g]
        sign = torch.sign(start).to(F64)
        x, _ = pdas(_newton_cols(xw64, lowrank), downdates=_downdates(design, folds, ws[g], F64),
                    b_class=sizes, fold_class=cls[None].expand(g.numel(), F), ridge=ridge[g],
                    c=torch.bmm(yc[g].to(F64), xw64), a=a[g], b=b[g], active=start != 0, sign=sign,
                    fixed=ws[g] == design.p, rounds=1, lowrank=lowrank)
        x = torch.where(torch.sign(x) == sign, x, torch.zeros_like(x))
        coef[g] = torch.where(open_[g][..., None], x.to(coef.dtype), start)
    return coef


def solve(design, Y, folds, *, alpha, l1_ratio, t_idx, tol, max_iter, ws=None, coef=None,
          opts: Options | None = None) -> Solution:
    """Fit every (group, fold) problem; groups are (grid point, target) pairs.

    Parameters
    ----------
    design : Design
    Y : Tensor (n+1, T)
        Targets, globally centred when fitting intercepts, zero last row.
    folds : Folds
    alpha, l1_ratio : Tensor (K,) float64
        Each group's grid point.
    t_idx : Tensor (K,) int64
        Each group's target column in Y.
    tol : float
        sklearn's relative tolerance.
    max_iter : int
        FISTA iterations allowed per problem.
    ws, coef : Tensor (K, s) and (K, F, s) or None
        Warm start; a cold start begins at zero with an empty working set.
    opts : Options or None
        Engine settings.
    """
    opts = opts or Options()
    warm = ws is not None
    K, F, p = t_idx.numel(), folds.train.shape[0], design.p
    dev, dt = design.X.device, design.X.dtype
    ybar, yy_ft = target_stats(Y, folds)
    yy = yy_ft.T[t_idx]                                                     # (K, F)
    tol_abs = tol * yy
    a = alpha[:, None] * l1_ratio[:, None] * folds.n_train[None, :]         # (K, F)
    b = alpha[:, None] * (1.0 - l1_ratio[:, None]) * folds.n_train[None, :]
    if ws is None and p <= WHOLE_SET:
        # a narrow design is its own working set: growing one costs rounds (full checks, inner
        # calls) that a few dozen columns do not repay
        ws = torch.arange(p, device=dev).expand(K, p).contiguous()
        coef = torch.zeros((K, F, p), dtype=dt, device=dev)
    elif ws is None:
        ws = torch.full((K, 1), p, dtype=torch.int64, device=dev)
        coef = torch.zeros((K, F, 1), dtype=dt, device=dev)
    gap = torch.full((K, F), float("inf"), dtype=torch.float64, device=dev)
    converged = torch.zeros((K, F), dtype=torch.bool, device=dev)   # sklearn's rule: gap <= tol
    stopped = torch.zeros((K, F), dtype=torch.bool, device=dev)     # the engine's: see stop_fraction
    cd_groups = torch.zeros((K,), dtype=torch.bool, device=dev)      # groups that skip FISTA
    n_iter = torch.zeros((K, F), dtype=torch.int64, device=dev)      # FISTA iterations
    cd_epochs = torch.zeros((K, F), dtype=torch.int64, device=dev)   # coordinate descent epochs
    score_out = torch.zeros((K, p + 1), dtype=dt, device=dev)
    inner_frac = torch.full((K,), opts.inner_fraction, dtype=torch.float64, device=dev)
    final_ws = torch.full((K, p + 1), p, dtype=torch.int64, device=dev)  # filled per finished group
    final_coef = torch.zeros((K, F, p + 1), dtype=dt, device=dev)
    final_s = torch.zeros((K,), dtype=torch.int64, device=dev)
    active = torch.arange(K, device=dev)
    any_ridge = bool((a == 0).any())   # ridge problems need ||X^T R||^2 in the check
    rounds = 0
    while active.numel():
        rounds += 1
        # 1) full check: float64 gap over all features and every feature's KKT score
        g_gap, g_score, g_score_ws = full_check(design, Y, folds, ws, coef, a[active], b[active],
                                                t_idx[active], any_ridge=any_ridge)
        gap[active] = g_gap
        # 2) decide: converged (sklearn's rule), stopped (the engine's), out of budget
        conv = g_gap <= tol_abs[active]
        converged[active] = conv
        # a problem stops below ``stop_fraction`` of its tolerance (folds: their held-out
        # predictions are what CV reports), or at the tolerance once rounds run long (rounding)
        stop = (g_gap <= tol_abs[active] * opts.stop_fraction) | (conv & (rounds >= STOP_AT_TOL_ROUND))
        if warm and rounds == 1:
            # a fold must not keep the full-data fit (which saw its held-out samples) just
            # because that already meets its tolerance: every fold gets its own update
            stop = torch.zeros_like(stop)
        stopped[active] = stop
        # MAX_ROUNDS guards against a check that rounding keeps failing with nothing to add
        # max_iter bounds FISTA iterations and, separately, coordinate descent epochs (sklearn's
        # unit): a problem is out of budget when coordinate descent has spent its max_iter
        spent = (cd_epochs[active] >= max_iter) | (rounds >= MAX_ROUNDS)
        done_p = stop | spent
        finished = done_p.all(1)
        # a finished group keeps every problem's score (warm starts read them); the others
        # only their unfinished problems' (what decides the features they add)
        g_score.masked_fill_((done_p & ~finished[:, None])[..., None], 0.0)
        group_score = g_score.amax(1)
        # 3) select features (computed for every group, so that one host sync per round decides
        #    retiring and sizes): add the strongest KKT violators (at least FIRST_SET, at most
        #    ``growth`` of the set's size)
        member = torch.zeros((active.numel(), p + 1), dtype=torch.bool, device=dev)
        member.scatter_(1, ws, True)
        size = member[:, :p].sum(1)
        viol = (group_score > 1) & ~member
        viol[:, p] = False
        n_viol = viol.sum(1)
        n_add = torch.minimum(n_viol, torch.clamp((size * opts.growth).long(), min=FIRST_SET))
        n_add = n_add.masked_fill(finished, 0)
        new_size = torch.where(finished, 0, size + n_add)
        # the round's one host sync: groups retiring, most features added, largest new set
        n_fin, k_max, s_new = torch.stack([finished.sum(), n_add.max(), new_size.max()]).tolist()
        n_keep = active.numel() - n_fin
        # 4) retire groups whose problems are all stopped or spent
        if n_fin:
            order = torch.argsort(finished.to(torch.int8), stable=True)   # kept first, in order
            fin_i, keep = order[n_keep:], order[:n_keep]
            fs = group_score[fin_i]
            fs.scatter_reduce_(1, ws[fin_i], g_score_ws[fin_i].amax(1), reduce="amax")
            fin = active[fin_i]
            score_out[fin] = fs
            s = ws.shape[1]
            final_ws[fin, :s] = ws[fin_i]
            final_coef[fin, :, :s] = coef[fin_i]
            final_s[fin] = s
            if not n_keep:
                break
            active, ws, coef = active[keep], ws[keep], coef[keep]
            group_score, g_gap, n_add, viol = group_score[keep], g_gap[keep], n_add[keep], viol[keep]
        top = None
        if k_max:
            top = torch.topk(torch.where(viol, group_score, -1.0), k_max, dim=1).indices
        ws, coef = _append(ws, coef, top, n_add, p, max(s_new, 1))
        finished_p = stopped[active] | (cd_epochs[active] >= max_iter)
        # 5) budgets: FISTA gets a slice of the allowance per round, so the working set and the Newton
        # polish get another chance before the iterations run out
        allowance = torch.where(finished_p, torch.zeros_like(n_iter[active]),
                                torch.clamp(max_iter - n_iter[active], min=0, max=opts.round_iter))
        cd_allow = torch.where(finished_p, torch.zeros_like(n_iter[active]), max_iter - cd_epochs[active])
        # groups that gained nothing but are not converged get a tighter inner target
        frac = torch.where(n_add == 0, inner_frac[active] * 0.25, inner_frac[active])
        inner_frac[active] = frac
        # 6) inner solve on the working sets (FISTA / Newton polish / coordinate descent)
        coef, spent_iter, spent_cd = _inner(design, Y, folds, ws=ws, coef=coef, alpha=alpha[active],
                                            l1_ratio=l1_ratio[active], a=a[active], b=b[active], yy=yy[active],
                                            tol_abs=tol_abs[active] * (frac / opts.inner_fraction)[:, None],
                                            allowance=allowance, t_idx=t_idx[active], ybar=ybar, opts=opts,
                                            newton_start=warm and rounds == 1 and opts.newton_start,
                                            round_no=rounds, open_all=~finished_p, cd_allow=cd_allow,
                                            cd_floor=torch.where((n_add > 0)[:, None], CD_GAP_FRACTION * g_gap,
                                                                 torch.zeros_like(g_gap)),
                                            cd_groups=cd_groups[active])
        cd_groups[active] |= (spent_cd > 0).any(1)
        n_iter[active] += spent_iter
        cd_epochs[active] += spent_cd
    s_max = max(int(final_s.max()) if K else 0, 1)
    return Solution(final_ws[:, :s_max], final_coef[:, :, :s_max], gap, tol_abs, n_iter + cd_epochs, converged,
                    score_out)


def merge_groups(base: Solution, sub: Solution, groups: torch.Tensor, p: int) -> Solution:
    """``base`` with groups ``groups`` replaced by ``sub``'s (working sets padded to one width)."""
    s = max(base.ws.shape[1], sub.ws.shape[1])

    def pad(sol):
        K, F, w = sol.coef.shape
        ws = torch.full((K, s), p, dtype=sol.ws.dtype, device=sol.ws.device)
        ws[:, :w] = sol.ws
        coef = sol.coef.new_zeros((K, F, s))
        coef[:, :, :w] = sol.coef
        return ws, coef

    ws, coef = pad(base)
    ws_s, coef_s = pad(sub)
    ws[groups], coef[groups] = ws_s, coef_s
    out = {"ws": ws, "coef": coef}
    for name in ("gap", "tol", "n_iter", "converged", "score", "certified"):
        t = getattr(base, name).clone()
        t[groups] = getattr(sub, name)
        out[name] = t
    return Solution(**out)


def warm_start_from_full(full: Solution, n_folds: int, p: int):
    """Working sets and coefficients for fold problems from a full-data solution (F=1)."""
    K = full.ws.shape[0]
    member = full.score >= WARM_SCORE
    member.scatter_(1, full.ws, member.gather(1, full.ws) | (full.coef[:, 0] != 0))
    ws, coef = _rebuild(full.ws, full.coef, member, p)
    return ws, coef.expand(K, n_folds, ws.shape[1]).contiguous()
