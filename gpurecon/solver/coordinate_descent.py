"""Batched cyclic coordinate descent on working sets: the solver that cannot stall.

scikit-learn's algorithm (``sklearn/linear_model/_cd_fast.pyx``, ``enet_coordinate_descent``),
vectorised across problems: for each feature ``j`` of the working set, one batched update of
every still-unconverged problem. It runs in Gram form on the ``(K, m, s)`` layout of
:mod:`.fista` (``K`` groups sharing a working set, ``m`` problems per group): with
``q = c - H w`` (the correlations ``X^T R``), the update of coordinate ``j`` is

    w_j <- S(q_j + H_jj w_j, a) / (H_jj + b),   q <- q - (w_j_new - w_j) H[:, j]

with the soft threshold ``S``; a problem's Hessian is the group's all-rows Gram minus its
downdate rows (``H = G - U^T U``), so the column ``H[:, j]`` costs one row of ``G`` and
``r`` rank-one terms. Coordinate descent converges on every convex ElasticNet problem,
whatever the conditioning of ``H`` and whether or not the active set exceeds the number of
samples, which is why the working-set engine hands it every problem that FISTA (fast when
the working-set Hessian, plain or rescaled to a unit diagonal, is well conditioned) leaves
unfinished.

Each problem stops when its duality gap restricted to the working set (float64, recomputed
from ``H w`` at every check, which also removes the drift of the incremental ``q``) is at
most its target, or when its epoch allowance runs out. Frozen problems are masked out and,
when they fill most of the batch, packed away.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .fista import GramHessian, restricted_gap
from .newton import cho_solve
from .options import ANDERSON_MEMORY, CD_COMPACT_AT, FACE_NEWTON_EVERY

F64 = torch.float64


@dataclass
class CDResult:
    coef: torch.Tensor      # (K, m, s)
    gap: torch.Tensor       # (K, m) float64 restricted gap at the last check
    n_epochs: torch.Tensor  # (K, m) int64 epochs run in this call
    done: torch.Tensor      # (K, m) bool restricted gap <= target


def coordinate_descent(*, gram: torch.Tensor, downdates: torch.Tensor | None, c: torch.Tensor,
                       yy: torch.Tensor, a: torch.Tensor, b: torch.Tensor, w0: torch.Tensor,
                       target: torch.Tensor, max_epochs: torch.Tensor,
                       check_every: int | None = None, max_elems: int = 2 ** 25) -> CDResult:
    """Cyclic coordinate descent of every problem until its restricted gap is at most ``target``.

    Parameters
    ----------
    gram : Tensor (K, s, s)
        All-rows Gram of each group's working-set columns (zero rows/columns for padding).
    downdates : Tensor (K, m, r, s) or None
        Per-problem rows with ``H = G - U^T U`` (see :class:`.fista.GramHessian`).
    c : Tensor (K, m, s)
        ``Xc^T yc`` per problem.
    yy : Tensor (K, m) float64
        ``||yc||^2`` per problem.
    a, b : Tensor (K, m) float64
        l1 and l2 strengths (sklearn's unscaled units).
    w0 : Tensor (K, m, s)
        Starting coefficients.
    target : Tensor (K, m) float64
        Stop a problem when its restricted gap is at most this.
    max_epochs : Tensor (K, m) int64
        Epochs (passes over the working set) each problem may run.
    check_every : int or None
        Epochs between gap checks (host syncs); None picks by working-set size.
    max_elems : int
        float64 elements one batch of Newton systems may hold (``m * s * s`` per group).

    Returns
    -------
    CDResult
        Coefficients in ``w0``'s dtype; the iterations run in float64.
    """
    K, m, s = w0.shape
    dev = w0.device
    coef = w0.to(F64).clone()
    gap = torch.full((K, m), float("inf"), dtype=F64, device=dev)
    n_epochs = torch.zeros((K, m), dtype=torch.int64, device=dev)
    done = torch.zeros((K, m), dtype=torch.bool, device=dev)
    if K == 0 or m == 0 or s == 0:
        return CDResult(w0.clone(), gap, n_epochs, done)
    if check_every is None:
        # a check costs about one Hessian product; make it a small share of an epoch's work
        check_every = 1 if s >= 32 else 4
    G = gram.to(F64)
    U = None if downdates is None else downdates.to(F64)
    h = GramHessian(G, U)
    cc, yy_, a_, b_, tgt = c.to(F64), yy.to(F64), a.to(F64), b.to(F64), target.to(F64)
    allow = max_epochs.to(torch.int64).expand(K, m).clone()
    groups = torch.arange(K, device=dev)
    slots = torch.arange(m, device=dev).expand(K, m)
    w = coef.clone()
    its = torch.zeros((K, m), dtype=torch.int64, device=dev)
    g_now = restricted_gap(h, cc, yy_, a_, b_, w)
    frozen = (g_now <= tgt) | (allow <= 0)

    def write_back():
        gi, si = groups[:, None], slots
        coef[gi, si], gap[gi, si], n_epochs[gi, si] = w, g_now, its
        done[gi, si] = g_now <= tgt

    hist: list[torch.Tensor] = []
    cycles = 0
    while bool((~frozen).any()):
        live = (~frozen).to(F64)
        q = cc - h.apply(w)                                             # X^T R per problem
        diag = torch.diagonal(G, dim1=1, dim2=2)[:, None, :]
        if U is not None:
            diag = diag - U.square().sum(2)
        den = diag + b_[..., None]
        # zero columns (padding) with b == 0 would divide 0 by 0: their coefficient stays 0
        inv_den = torch.where(den > 0, 1.0 / torch.where(den > 0, den, 1.0), 0.0)
        thr = a_
        for _ in range(check_every):
            hist.append(w.clone())
            for j in range(s):
                wj = w[:, :, j]
                z = q[:, :, j] + diag[:, :, j] * wj
                delta = ((z - torch.clamp(z, min=-thr, max=thr)) * inv_den[:, :, j] - wj) * live
                w[:, :, j] += delta
                q.addcmul_(delta[..., None], G[:, None, j, :], value=-1.0)
                if U is not None:
                    if U.shape[2] == 1:
                        q.addcmul_(U[:, :, 0, :], (delta * U[:, :, 0, j])[..., None])
                    else:
                        q.add_(torch.matmul((U[:, :, :, j] * delta[..., None])[:, :, None, :], U)[:, :, 0, :])
            if len(hist) == ANDERSON_MEMORY:
                hist.append(w)
                moved = _anderson(h, cc, a_, b_, hist, w, live > 0)
                cycles += 1
                if cycles % FACE_NEWTON_EVERY == 0:
                    moved |= _face_newton(G, U, cc, a_, b_, w, live > 0, max_elems)
                if moved:
                    q = cc - h.apply(w)
                hist = []
        its = its + (~frozen).to(torch.int64) * check_every
        g_now = torch.where(frozen, g_now, restricted_gap(h, cc, yy_, a_, b_, w))
        frozen = frozen | (g_now <= tgt) | (its >= allow)
        n_live = (~frozen).sum(1)
        k_live, m_live = int((n_live > 0).sum()), int(n_live.max())   # host sync, once per check
        if k_live == 0 or k_live * m_live > CD_COMPACT_AT * frozen.numel():
            continue
        write_back()
        keep = torch.nonzero(n_live > 0).squeeze(1)
        pick = torch.argsort(frozen[keep].to(torch.int8), dim=1, stable=True)[:, :m_live]   # live first
        rows = keep[:, None]
        groups, slots = groups[keep], slots[rows, pick]
        G = G[keep]
        U = None if U is None else U[rows, pick]
        h = GramHessian(G, U)
        cc, yy_, a_, b_, tgt, allow = cc[rows, pick], yy_[rows, pick], a_[rows, pick], b_[rows, pick], \
            tgt[rows, pick], allow[rows, pick]
        w, its, g_now, frozen = w[rows, pick], its[rows, pick], g_now[rows, pick], frozen[rows, pick]
        hist = []
    write_back()
    return CDResult(coef.to(w0.dtype), gap, n_epochs, done)


def primal(h, c, a, b, w):
    """``1/2 w^T H w - c^T w + a ||w||_1 + b/2 ||w||^2`` per problem (the objective less ``yy/2``)."""
    hw = h.apply(w)
    return (torch.linalg.vecdot(w, 0.5 * hw - c) + a * w.abs().sum(-1) + 0.5 * b * w.square().sum(-1))


def _anderson(h, c, a, b, hist, w, live) -> bool:
    """Replace ``w`` in place by the Anderson extrapolation of the iterates ``hist`` where that
    lowers the objective (so it can never undo coordinate descent's progress); True if any did.

    The extrapolation combines the last iterates with weights ``z / sum(z)``, ``(D D^T) z = 1``,
    ``D`` the successive differences: the fixed point of the linear model that the epochs follow
    once the active set has settled (Bertrand & Massias 2021).
    """
    W = torch.stack(hist, 2)                                                # (K, m, M+1, s)
    D = W[:, :, 1:] - W[:, :, :-1]
    C = torch.matmul(D, D.transpose(-1, -2))                                # (K, m, M, M)
    M = C.shape[-1]
    eye = torch.eye(M, dtype=C.dtype, device=C.device)
    reg = 1e-10 * torch.diagonal(C, dim1=-2, dim2=-1).sum(-1)[..., None, None] + torch.finfo(C.dtype).tiny
    z, info = torch.linalg.solve_ex(C + reg * eye, torch.ones(C.shape[:-1], dtype=C.dtype, device=C.device))
    weights = z / z.sum(-1, keepdim=True)
    w_acc = (weights[..., None] * W[:, :, 1:]).sum(2)
    ok = live & (info == 0) & torch.isfinite(w_acc).all(-1)
    better = ok & (primal(h, c, a, b, torch.where(ok[..., None], w_acc, w)) < primal(h, c, a, b, w))
    w.copy_(torch.where(better[..., None], w_acc, w))
    return bool(better.any())


def _face_newton(G, U, c, a, b, w, live, max_elems) -> bool:
    """A Newton step of every live problem on its current face (support and signs of ``w``),
    cut where a coordinate would change sign; ``w`` updated in place where that lowers the
    objective. True if any problem moved.

    On the face the objective is the quadratic ``1/2 v^T (H + bI) v - (c - a sign(w))^T v``;
    its minimiser ``x`` solves the support's linear system, and the objective decreases along
    the segment from ``w`` to ``x`` as long as it stays on the face, so the step to the first
    sign change is a descent step, and the exact optimum once the face is the optimal one
    (what coordinate descent approaches slowly on ill-conditioned supports). The support may
    exceed the number of samples when ``b > 0``; lasso problems (``b == 0``) are left to
    coordinate descent: on their (often singular) faces the regularised pivots sent a
    coordinate-descent run into a slow region (differential seed 10061) more than they helped.
    """
    K, m, s = w.shape
    per_group = max(1, m * s * s * 3)
    step = max(1, int(max_elems // per_group))
    moved = False
    eye = torch.eye(s, dtype=F64, device=w.device)
    for lo in range(0, K, step):
        sl = slice(lo, lo + step)
        ww, lv = w[sl], live[sl]
        if not bool(lv.any()):
            continue
        act = (ww != 0) & lv[..., None]
        hm = G[sl, None].expand(-1, m, s, s)
        if U is not None:
            hm = hm - torch.matmul(U[sl].transpose(-1, -2), U[sl])
        both = act[..., :, None] & act[..., None, :]
        # a tiny ridge keeps near-singular faces (b tiny next to H's scale) solvable
        diag = torch.diagonal(hm, dim1=-2, dim2=-1)
        ridge = torch.maximum(b[sl], 1e-9 * diag.amax(-1))
        mat = torch.where(both, hm + ridge[..., None, None] * eye, eye)
        sign = torch.sign(ww)
        rhs = torch.where(act, c[sl] - a[sl, :, None] * sign, 0.0)
        chol, info = torch.linalg.cholesky_ex(mat)
        x = torch.where(act, cho_solve(chol, rhs[..., None])[..., 0], 0.0)
        # step to the first sign change on the segment w -> x (1: x itself)
        cross = act & (torch.sign(x) != sign)
        ratio = torch.where(cross, ww / torch.where(cross, ww - x, 1.0), torch.inf)
        t = torch.clamp(ratio.amin(-1), max=1.0)
        cand = ww + t[..., None] * (x - ww)
        cand = torch.where(cross & (ratio <= t[..., None]), 0.0, cand)   # the crossing coordinate
        ok = lv & (info == 0) & torch.isfinite(cand).all(-1) & (b[sl] > 0)
        h = GramHessian(G[sl], None if U is None else U[sl])
        better = ok & (primal(h, c[sl], a[sl], b[sl], torch.where(ok[..., None], cand, ww))
                       < primal(h, c[sl], a[sl], b[sl], ww))
        w[sl] = torch.where(better[..., None], cand, ww)
        moved |= bool(better.any())
    return moved
