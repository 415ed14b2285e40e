"""Batched FISTA with adaptive restart for many ElasticNet problems that share Hessians.

Problems are laid out as ``(K, m, s)``: ``K`` groups, ``m`` problems per group, ``s`` features.
All problems of a group share one design restricted to one feature set (a working set), so
the Hessian product is a batched matrix product; problems differ in their training fold
(low-rank corrections), their penalties and their targets. In sklearn's unscaled units each
problem is

    min_w  1/2 w^T H w - c^T w + yy/2 + a ||w||_1 + b/2 ||w||^2

with ``H = Xc^T Xc`` and ``c = Xc^T yc`` of its centred training fold and ``yy = ||yc||^2``.
The l2 term sits in the proximal step (soft threshold, then shrink), so the step ``1/L``
only needs an upper bound ``L`` of ``lambda_max(H)``; one bound per group is valid for every
fold because each fold's Hessian is the group's all-rows Hessian minus a PSD term.

Convergence is checked every ``check_every`` iterations with sklearn's duality gap restricted to
the working set (the caller checks the full gap). Finished problems are frozen on the device;
every ``FISTA_SYNC_EVERY``-th check, one host sync ends the call when all are frozen or drops
finished groups from the batch. There is no other host sync in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .gap import enet_duality_gap
from .options import FISTA_COMPACT_AT, FISTA_SYNC_EVERY


class GramHessian:
    """``H v = v G - sum_r (v . u_r) u_r`` with a group Gram ``G`` and per-problem rank-r downdates.

    Parameters
    ----------
    gram : Tensor (K, s, s)
        All-rows Gram of each group's working-set columns.
    downdates : Tensor (K, m, r, s) or None
        Rows whose outer products are subtracted per problem (held-out rows and the
        fold-centring term); None when every problem uses the plain Gram.
    fused_dot : bool
        Take the leave-one-out downdate's dot products as one batched matrix product (one kernel
        instead of two: the launch-bound GPU path; slower on a CPU).
    """

    def __init__(self, gram: torch.Tensor, downdates: torch.Tensor | None, fused_dot: bool = False):
        self.gram = gram
        self.downdates = downdates
        self.fused_dot = fused_dot

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        return self._downdate(torch.bmm(v, self.gram), v)

    def grad(self, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``H v - c`` (the gradient of the smooth part), with ``-c`` fused into the product."""
        return self._downdate(torch.baddbmm(c, v, self.gram, beta=-1.0), v)

    def _downdate(self, hv: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Subtract the folds' held-out rows from ``hv`` (in place): ``hv - U^T U v``."""
        u = self.downdates
        if u is None:
            return hv
        if u.shape[2] == 1:
            # leave-one-out: one row per problem, two fused passes
            u0 = u[:, :, 0]
            return hv.addcmul_(u0, _dot(u0, v, self.fused_dot)[..., None], value=-1.0)
        coef = torch.matmul(u, v[..., None])                                  # (K, m, r, 1)
        return hv.sub_(torch.matmul(u.transpose(-1, -2), coef)[..., 0])

    def to(self, dtype) -> "GramHessian":
        return GramHessian(self.gram.to(dtype), None if self.downdates is None else self.downdates.to(dtype),
                           self.fused_dot)

    def select(self, groups: torch.Tensor, slots: torch.Tensor) -> "GramHessian":
        """Keep ``groups`` (K',) and, within them, the problems ``slots`` (K', m')."""
        down = None if self.downdates is None else self.downdates[groups[:, None], slots]
        return GramHessian(self.gram[groups], down, self.fused_dot)

    def lipschitz(self) -> torch.Tensor:
        """Frobenius norm of each group's Gram: an upper bound of every fold's lambda_max."""
        return torch.linalg.matrix_norm(self.gram.to(torch.float64), ord="fro")


class PrimalHessian:
    """``H v = Xc^T (mask * centre(X v))`` computed from the design columns, never a Gram.

    Parameters
    ----------
    design : Tensor (K, n, s)
        Each group's working-set columns over all rows.
    train : Tensor broadcastable to (K, m, n)
        1.0 on a problem's training rows, 0.0 elsewhere.
    n_train : Tensor broadcastable to (K, m, 1)
        Training rows per problem.
    center : bool
        Centre over the training rows (fit_intercept).
    """

    def __init__(self, design: torch.Tensor, train: torch.Tensor, n_train: torch.Tensor, center: bool):
        self.design, self.train, self.n_train, self.center = design, train, n_train, center

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        z = torch.bmm(v, self.design.transpose(1, 2)).mul_(self.train)
        if self.center:
            z.addcmul_(z.sum(-1, keepdim=True).div_(self.n_train), self.train, value=-1.0)
        return torch.bmm(z, self.design)

    def grad(self, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``H v - c`` (the gradient of the smooth part)."""
        return self.apply(v).sub_(c)

    def to(self, dtype) -> "PrimalHessian":
        return PrimalHessian(self.design.to(dtype), self.train.to(dtype), self.n_train.to(dtype), self.center)

    def select(self, groups: torch.Tensor, slots: torch.Tensor) -> "PrimalHessian":
        """Keep ``groups`` (K',) and, within them, the problems ``slots`` (K', m')."""
        def pick(t):
            t = t[groups] if t.shape[0] > 1 else t.expand(groups.numel(), *t.shape[1:])
            return t[torch.arange(groups.numel(), device=t.device)[:, None], slots] if t.shape[1] > 1 else t
        return PrimalHessian(self.design[groups], pick(self.train), pick(self.n_train), self.center)

    def lipschitz(self) -> torch.Tensor:
        """Squared Frobenius norm of each group's columns (the trace bound of lambda_max)."""
        return self.design.to(torch.float64).square().sum((1, 2))


@dataclass
class FistaResult:
    coef: torch.Tensor      # (K, m, s)
    gap: torch.Tensor       # (K, m) float64, duality gap restricted to the working set
    n_iter: torch.Tensor    # (K, m) int64, iterations run in this call
    done: torch.Tensor      # (K, m) bool, restricted gap <= target


def restricted_gap(hess, c, yy, a, b, w):
    """sklearn's gap of each problem restricted to its working set, float64 (K, m)."""
    hw = hess.apply(w)
    f64 = torch.float64
    # dot products in the working dtype (blocked sums: ~1e-7 relative in float32, far below the
    # tolerances this decides), combined in float64
    cw = torch.linalg.vecdot(c, w).to(f64)
    whw = torch.linalg.vecdot(w, hw).to(f64)
    r_norm2 = torch.clamp(yy - 2.0 * cw + whw, min=0.0)
    r_dot_y = yy - cw
    xtr = c - hw
    xtr_norm2 = torch.linalg.vecdot(xtr, xtr).to(f64)
    xta = xtr.sub_(b.to(w.dtype)[..., None] * w)
    dual_norm = xta.abs().amax(-1) if w.shape[-1] else torch.zeros_like(yy)
    return enet_duality_gap(r_norm2, r_dot_y, w.abs().sum(-1).to(f64), torch.linalg.vecdot(w, w).to(f64),
                            dual_norm, xtr_norm2, a, b)


def fista(hess, *, c, yy, a, b, w0, target, max_iter, check_every=10, lipschitz=None,
          min_iter=False, max_allow=None, scale=None, fused_dot=False) -> FistaResult:
    """Run batched FISTA (adaptive restart) until each problem's restricted gap <= target.

    Parameters
    ----------
    hess : GramHessian or PrimalHessian
        The groups' Hessian products.
    c : Tensor (K, m, s)
        ``Xc^T yc`` per problem.
    yy : Tensor (K, m) float64
        ``||yc||^2`` per problem.
    a, b : Tensor (K, m) float64
        l1 and l2 strengths (unscaled).
    w0 : Tensor (K, m, s)
        Starting coefficients.
    target : Tensor (K, m) float64
        Stop a problem when its restricted gap is at most this.
    max_iter : Tensor (K, m) int64 or int
        Iteration allowance per problem.
    check_every : int
        Iterations between gap checks (the only host syncs).
    lipschitz : Tensor (K,) or None
        Upper bounds of the groups' lambda_max; ``hess.lipschitz()`` when None.
    min_iter : bool
        Run every problem with an allowance for at least ``check_every`` iterations, even if
        its start already meets the target.
    max_allow : int or None
        An upper bound of ``max_iter`` known to the caller: saves the host sync that reads it
        (the loop then runs at least one block of checks, identity iterations if none is live).
    scale : Tensor (K, s) or None
        Diagonal preconditioning: feature ``j`` of group ``k`` steps ``1 / (L_k scale_kj)``, with
        ``lipschitz`` then bounding ``lambda_max(S^-1/2 H S^-1/2)`` (``S = diag(scale)``, usually
        the Gram's diagonal). Columns of widely different scales converge at the rate of the
        rescaled problem; features with ``scale == 0`` keep their start.
    fused_dot : bool
        The restart test's dot products as one batched matrix product (see :class:`GramHessian`).
    """
    K, m, s = w0.shape
    device, dtype = w0.device, w0.dtype
    allowance = torch.as_tensor(max_iter, device=device).expand(K, m).clone()
    coef, gap = w0.clone(), torch.full((K, m), float("inf"), dtype=torch.float64, device=device)
    n_iter = torch.zeros((K, m), dtype=torch.int64, device=device)
    done = torch.zeros((K, m), dtype=torch.bool, device=device)
    if K == 0 or m == 0:
        return FistaResult(coef, gap, n_iter, done)
    lip = hess.lipschitz() if lipschitz is None else lipschitz
    lip = lip.to(torch.float64) * (1 + 1e-6)
    # an empty working set (or all-zero columns) has H = 0: any step is exact there, while a
    # step 1/tiny would overflow float32 and turn 0 * inf into NaN
    lip = torch.where(lip > torch.finfo(torch.float32).tiny, lip, torch.ones_like(lip))

    # Live state covers groups ``groups`` (K',) and within them problems ``slots`` (K', m');
    # finished groups are dropped and, when most of a batch is frozen, problems are repacked.
    groups = torch.arange(K, device=device)
    slots = torch.arange(m, device=device).expand(K, m)
    h, cc, yy_, a_, b_, tgt, allow = hess, c, yy, a, b, target, allowance
    w = w0.clone()
    v = w.clone()
    # iterations since the last restart: FISTA's momentum (t_k - 1) / t_{k+1} is a function of
    # it alone, read from a table instead of recomputing the t recurrence element-wise
    since = torch.zeros((K, m), dtype=torch.int64, device=device)
    # per-problem step, threshold and shrink; a frozen problem gets (0, 0, 1) and v = w: its
    # update is then the identity (zero step, zero difference), so freezing costs no masking
    # inside the loop
    if scale is None:
        step64 = (1.0 / lip)[:, None, None].expand(K, m, 1)
    else:
        sc = scale.to(torch.float64)
        step64 = torch.where(sc > 0, 1.0 / (lip[:, None] * torch.where(sc > 0, sc, 1.0)), 0.0)[:, None, :]
    step0 = step64.to(dtype).expand(K, m, step64.shape[-1])
    thr0 = (a[..., None] * step64).to(dtype)
    shrink0 = (1.0 / (1.0 + b[..., None] * step64)).to(dtype)
    its = torch.zeros((K, m), dtype=torch.int64, device=device)

    gap_active = restricted_gap(h, cc, yy_, a_, b_, w)
    frozen = (allow <= 0) if min_iter else (gap_active <= tgt) | (allow <= 0)

    def frozen_params(frozen):
        live = (~frozen)[..., None]
        thr = torch.where(live, thr0, 0.0)
        return torch.where(live, step0, 0.0), thr, -thr, torch.where(live, shrink0, 1.0)

    def write_back():
        gi, si = groups[:, None], slots
        coef[gi, si], gap[gi, si], n_iter[gi, si] = w, gap_active, its
        done[gi, si] = gap_active <= tgt

    # one host sync before the loop: is anything live, and how long can a run since a restart be
    if max_allow is None:
        n_any, most = torch.stack([(~frozen).sum(), allow.max().clamp(min=0)]).tolist()
        if not n_any:
            write_back()
            return FistaResult(coef, gap, n_iter, done)
    else:
        most = max(int(max_allow), 0)
    # iterations of this call: at most the allowance rounded up to checks, plus the checks run
    # without a sync after the last problem froze
    momentum = _momentum_table(int(most) + FISTA_SYNC_EVERY * check_every + 1, dtype, device)
    checks = 0
    step, thr, neg_thr, shrink = frozen_params(frozen)
    while True:
        for _ in range(check_every):
            z = torch.addcmul(v, h.grad(v, cc), step, value=-1.0)             # v - step * grad
            w_new = (z - torch.clamp(z, min=neg_thr, max=thr)).mul_(shrink)   # prox: soft threshold, shrink
            diff = w_new - w
            # O'Donoghue-Candes gradient restart: drop momentum when it points uphill.
            restart = _dot(v - w_new, diff, fused_dot) > 0
            since = (since + 1).masked_fill_(restart, 0)
            v = torch.addcmul(w_new, diff, momentum[since][..., None])
            w = w_new
        its = its + (~frozen).to(torch.int64) * check_every
        gap_active = torch.where(frozen, gap_active, restricted_gap(h, cc, yy_, a_, b_, w))
        newly = ~frozen & ((gap_active <= tgt) | (its >= allow))
        frozen = frozen | newly
        v = torch.where(newly[..., None], w, v)
        checks += 1
        if checks % FISTA_SYNC_EVERY:
            # no host sync at this check: newly frozen problems stop through their parameters
            step, thr, neg_thr, shrink = frozen_params(frozen)
            continue
        n_live = (~frozen).sum(1)
        # the one host sync per check: live groups and the most live problems in one
        k_live, m_live = torch.stack([(n_live > 0).sum(), n_live.max()]).tolist()
        if k_live == 0:
            write_back()
            break
        # repack only when it shrinks the batch enough to pay for the copies
        if k_live * m_live > FISTA_COMPACT_AT * frozen.numel():
            step, thr, neg_thr, shrink = frozen_params(frozen)
            continue
        write_back()
        # live groups first (stable: in order), then the first k_live: no nonzero needed
        keep = torch.argsort((n_live == 0).to(torch.int8), stable=True)[:k_live]
        pick = torch.argsort(frozen[keep].to(torch.int8), dim=1, stable=True)[:, :m_live]   # live first
        rows = keep[:, None]
        groups, slots = groups[keep], slots[rows, pick]
        h = h.select(keep, pick)
        cc, yy_, a_, b_, tgt, allow = cc[rows, pick], yy_[rows, pick], a_[rows, pick], b_[rows, pick], tgt[rows, pick], allow[rows, pick]
        w, v, since, frozen, its, gap_active = w[rows, pick], v[rows, pick], since[rows, pick], frozen[rows, pick], its[rows, pick], gap_active[rows, pick]
        step0, thr0, shrink0 = step0[rows, pick], thr0[rows, pick], shrink0[rows, pick]
        step, thr, neg_thr, shrink = frozen_params(frozen)
    return FistaResult(coef, gap, n_iter, done)


def _dot(x: torch.Tensor, y: torch.Tensor, fused: bool) -> torch.Tensor:
    """Last-axis dot products: with ``fused`` one batched matrix product (one kernel where
    ``vecdot`` takes two, a multiply and a sum; 1.4-2.3x slower on a CPU for these shapes)."""
    if fused:
        return torch.matmul(x[..., None, :], y[..., :, None])[..., 0, 0]
    return torch.linalg.vecdot(x, y)


def _momentum_table(length: int, dtype, device) -> torch.Tensor:
    """FISTA's momentum after ``k`` iterations without a restart, ``k = 0 .. length-1``:
    entry 0 is 0 (a restart) and entry ``k`` is ``(t_{k-1} - 1) / t_k`` with ``t_0 = 1``,
    ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2`` (computed in float64 on the host)."""
    t, out = 1.0, [0.0]
    for _ in range(length - 1):
        t_new = 0.5 * (1.0 + (1.0 + 4.0 * t * t) ** 0.5)
        out.append((t - 1.0) / t_new)
        t = t_new
    return torch.tensor(out, dtype=dtype, device=device)
