"""Exact ElasticNet solves on a guessed active set, for many folds sharing one factorisation.

On a working set ``W`` with active set ``A`` (non-zero coefficients) and their signs ``sigma``,
the ElasticNet optimum solves the linear system

    (H + b I)_{AA} w_A = c_A - a sigma_A,    w_j = 0 for j in B = W \\ A,

and it is the optimum on ``W`` when the signs agree and ``|c_j - ((H + bI) w)_j| <= a`` on ``B``.
The primal-dual active-set method (PDAS) guesses ``A``, solves, moves sign-violating features out
and KKT-violating features in, and stops when nothing moves (a few rounds from a warm start).

Every fold of one (grid point, target) group shares the all-rows Gram ``G`` of ``W``; a fold's
Hessian is ``G - U^T U`` with a few downdate rows ``U`` (held-out rows and the centring term).
So one inverse ``Q = (G + b I)^{-1}`` per group serves all folds: the fold inverse follows by
Woodbury, ``Q_f = Q + V^T C^{-1} V`` with ``V = U Q`` and ``C = I - U Q U^T``, and the zero
constraints on ``B`` are imposed with a ``|B| x |B|`` system ``Q_f[B, B] lam = (Q_f rhs)_B``
(``x = Q_f (rhs - E_B lam)``). A round then costs two batched products with ``Q`` per problem
and one small solve, instead of a factorisation per problem. Needs ``b > 0`` (l1_ratio < 1).
All of it runs in float64: ``Q`` can be ill-conditioned when ``b`` is small.
"""

from __future__ import annotations

import torch

from .options import MAX_CONSTRAINTS

F64 = torch.float64


class SharedInverse:
    """``Q = (G + b I)^{-1}`` on a domain of each group's working set, plus Woodbury pieces.

    Features outside the domain get an identity block (and zero downdate columns), so they
    solve to zero and never couple to the rest. With ``lowrank`` (working sets wider than the
    number of samples) ``Q`` is never formed: ``G = X^T X`` has rank <= n, so
    ``Q = (I - X^T (b I + X X^T)^{-1} X) / b`` needs one n x n inverse per group.

    Parameters
    ----------
    cols : Tensor float64
        The group's all-rows Gram (K, s, s), or with ``lowrank`` its columns X (K, n, s).
    domain : Tensor (K, s) bool
        Features the group's problems may use (the union of their active sets).
    b_class : Tensor (C,) float64
        Training size of each fold class (folds with equal size share ``b``).
    fold_class : Tensor (K, F) int64
        Each problem's class.
    downdates : Tensor (K, F, r, s) float64
        Rows subtracted from ``G`` per problem.
    ridge : Tensor (K,) float64
        Each group's ``alpha*(1-l1_ratio)``; ``b = ridge * n_train``.
    lowrank : bool
    """

    def __init__(self, cols, domain, b_class, fold_class, downdates, ridge, lowrank=False):
        K, s = domain.shape
        dev = cols.device
        self.fold_class = fold_class
        self.n_classes = b_class.numel()
        self.lowrank = lowrank
        self.dom = domain.to(F64)
        self.ok = torch.ones(K, dtype=torch.bool, device=dev)   # factorisations succeeded
        if lowrank:
            self.xd = cols * self.dom[:, None, :]                             # (K, n, s)
            kern = torch.bmm(self.xd, self.xd.transpose(1, 2))
            eye_n = torch.eye(kern.shape[-1], dtype=F64, device=dev)
            self.bb = torch.stack([ridge * b_class[c] for c in range(self.n_classes)], 1)   # (K, C)
            ms = []
            for c in range(self.n_classes):
                m, ok = _spd_inverse(kern + self.bb[:, c, None, None] * eye_n)
                ms.append(m)
                self.ok &= ok & (self.bb[:, c] > 0)
            self.M = torch.stack(ms, 1)                                        # (K, C, n, n)
        else:
            outer = self.dom[:, :, None] * self.dom[:, None, :]
            qs = []
            for c in range(self.n_classes):
                m = cols * outer + torch.diag_embed((ridge * b_class[c])[:, None] * self.dom + (1.0 - self.dom))
                q, ok = _spd_inverse(m)
                qs.append(q)
                self.ok &= ok
            self.Q = torch.stack(qs, 1)                                        # (K, C, s, s)
        u = downdates * self.dom[:, None, None, :]
        self.V = self._apply_rows(u)                                           # (K, F, r, s) = U Q
        r = u.shape[2]
        cmat = torch.eye(r, dtype=F64, device=dev) - torch.einsum("kfrs,kfqs->kfrq", u, self.V)
        self.Cinv, ok = _spd_inverse(cmat)                                     # (K, F, r, r)
        self.ok &= ok.all(1)

    def _q(self, flat, c):
        """``flat @ Q_c`` for rows flat (K, R, s)."""
        if not self.lowrank:
            return torch.bmm(flat, self.Q[:, c])
        t = torch.bmm(torch.bmm(torch.bmm(flat, self.xd.transpose(1, 2)), self.M[:, c]), self.xd)
        dom = self.dom[:, None, :]
        return dom * (flat - t) / self.bb[:, c, None, None] + (1.0 - dom) * flat

    def _apply_rows(self, rows):
        """``rows @ Q`` for rows (K, F, r, s) (Q symmetric), fold class by fold class."""
        K, F, r, s = rows.shape
        flat = rows.reshape(K, F * r, s)
        if self.n_classes == 1:
            return self._q(flat, 0).reshape(K, F, r, s)
        out = torch.zeros_like(rows)
        for c in range(self.n_classes):   # few classes (training sizes): compute each, keep its own
            mine = (self.fold_class == c)[:, :, None, None]
            out = torch.where(mine, self._q(flat, c).reshape(K, F, r, s), out)
        return out

    def apply(self, vec):
        """``Q_f vec`` for vec (K, F, s): the fold inverse via Woodbury."""
        qv = self._apply_rows(vec[:, :, None, :])[:, :, 0]
        coef = torch.einsum("kfrs,kfs->kfr", self.V, vec)
        coef = torch.einsum("kfrq,kfq->kfr", self.Cinv, coef)
        return qv + torch.einsum("kfrs,kfr->kfs", self.V, coef)

    def block(self, idx):
        """``Q_f[B, B]`` for index sets idx (K, F, d) inside the domain."""
        K, F, d = idx.shape
        if self.lowrank:
            n = self.xd.shape[1]
            xb = self.xd[:, None].expand(K, F, n, self.xd.shape[2]).gather(3, idx[:, :, None, :].expand(K, F, n, d))
            if self.n_classes == 1:
                m, bb = self.M[:, 0][:, None], self.bb[:, 0][:, None].expand(K, F)
            else:
                kk = torch.arange(K, device=idx.device)[:, None]
                m, bb = self.M[kk, self.fold_class], self.bb[kk, self.fold_class]
            eye = torch.eye(d, dtype=F64, device=idx.device)
            qbb = (eye - xb.transpose(-1, -2) @ m @ xb) / bb[..., None, None]
        else:
            C, s = self.Q.shape[1], self.Q.shape[-1]
            # one flat take: cheaper than broadcast advanced indexing over four index tensors
            base = (torch.arange(K, device=idx.device)[:, None] * C + self.fold_class) * (s * s)
            lin = base[..., None, None] + idx[..., :, None] * s + idx[..., None, :]
            qbb = torch.take(self.Q, lin)
        vb = self.V.gather(3, idx[:, :, None, :].expand(K, F, self.V.shape[2], d))    # (K, F, r, d)
        return qbb + torch.einsum("kfrd,kfrq,kfqe->kfde", vb, self.Cinv, vb)


def _spd_inverse(m):
    """Inverse of a batch of small SPD matrices and a mask of those that factorised (closed
    form for 1 x 1: LAPACK's per-matrix overhead dominates tiny factorisations on a CPU)."""
    if m.shape[-1] == 1:
        ok = (m > 0).reshape(m.shape[:-2])
        return 1.0 / torch.where(m > 0, m, 1.0), ok
    chol, info = torch.linalg.cholesky_ex(m)
    # L^{-T} L^{-1} through a triangular solve: much faster than cholesky_inverse on a CPU
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device).expand_as(m)
    linv = torch.linalg.solve_triangular(chol, eye, upper=False)
    inv = linv.transpose(-1, -2) @ linv
    ok = (info == 0) & torch.isfinite(inv).flatten(-2).all(-1)
    return torch.where(ok[..., None, None], inv, torch.zeros_like(inv)), ok


def hessian_apply(cols, downdates, b, x, lowrank=False):
    """``(H_f + b I) x`` with ``H_f = G - U^T U``, float64; x (K, F, s); ``cols`` is the Gram
    (K, s, s), or with ``lowrank`` the columns X (K, n, s) and ``G x = X^T (X x)``."""
    hx = torch.bmm(torch.bmm(x, cols.transpose(1, 2)), cols) if lowrank else torch.bmm(x, cols)
    coef = torch.einsum("kfrs,kfs->kfr", downdates, x)
    return hx - torch.einsum("kfrs,kfr->kfs", downdates, coef) + b[..., None] * x


def pdas(cols, *, downdates, b_class, fold_class, ridge, c, a, b, active, sign, fixed, rounds, done=None,
         lowrank=False):
    """Primal-dual active-set rounds on every problem; float64 throughout.

    Parameters
    ----------
    cols, downdates, b_class, fold_class, ridge, lowrank
        See ``SharedInverse`` (float64).
    c : Tensor (K, F, s) float64
        ``Xc^T yc`` per problem.
    a, b : Tensor (K, F) float64
        l1 and l2 strengths of each problem.
    active, sign : Tensor (K, F, s)
        Starting active set (bool) and signs (-1, 0, 1).
    fixed : Tensor (K, s) bool
        Padding features: never active, their coefficient stays 0.
    rounds : int
        Most rounds to run.
    done : Tensor (K, F) bool or None
        Problems to leave alone (they neither move nor widen the group's domain).

    Returns
    -------
    coef : Tensor (K, F, s) float64
    stable : Tensor (K, F) bool
        True where the active set stopped moving with every KKT condition on the working set
        met: ``coef`` is then the exact optimum on the working set (up to rounding).
    """
    K, F, s = c.shape
    a3 = a[..., None]
    fixed3 = fixed[:, None, :].expand(K, F, s)
    active = active & ~fixed3
    sign = torch.where(active, sign, torch.zeros_like(sign))
    stable = torch.zeros((K, F), dtype=torch.bool, device=c.device) if done is None else done.clone()
    coef = torch.zeros_like(c)
    for _ in range(rounds):
        # the inverse lives on the union of the group's unfinished active sets
        domain = (active & ~stable[..., None]).any(1)
        inv = SharedInverse(cols, domain, b_class, fold_class, downdates, ridge, lowrank)
        rhs = torch.where(active, c - a3 * sign, torch.zeros_like(c))
        x0 = inv.apply(rhs)
        # B: domain features inactive in this fold, forced to zero through a small system
        zero_in_dom = domain[:, None, :] & ~active
        n_in = zero_in_dom.sum(-1)
        # problems needing a large zero-constraint system sit this round out (never stable)
        too_big = n_in > MAX_CONSTRAINTS
        zero_in_dom = zero_in_dom & ~too_big[..., None]
        n_in = torch.where(too_big, 0, n_in)
        d = int(n_in.max())
        lam_full = torch.zeros_like(c)
        if d:
            order = torch.argsort((~zero_in_dom).to(torch.int8), dim=-1, stable=True)[..., :d]
            valid = torch.arange(d, device=c.device) < n_in[..., None]
            sbb = inv.block(order)
            eye = torch.eye(d, dtype=F64, device=c.device)
            sbb = torch.where(valid[..., :, None] & valid[..., None, :], sbb, eye.expand_as(sbb))
            rb = torch.where(valid, x0.gather(2, order), torch.zeros_like(order, dtype=F64))
            chol, info = torch.linalg.cholesky_ex(sbb)
            lam = torch.cholesky_solve(rb[..., None], chol)[..., 0]
            lam_full = lam_full.scatter(2, order, torch.where(valid, lam, torch.zeros_like(lam)))
        x = torch.where(active, x0 - inv.apply(lam_full), torch.zeros_like(x0))
        # a singular system (e.g. lasso on more features than samples) fails its factorisation:
        # such problems are never called stable
        bad = ~inv.ok[:, None] | ~torch.isfinite(x).all(-1) | too_big
        if d:
            bad |= info != 0
        x = torch.where(bad[..., None], torch.zeros_like(x), x)
        g = c - hessian_apply(cols, downdates, b, x, lowrank)
        flip = active & (torch.sign(x) != sign)
        enter = ~active & ~fixed3 & (g.abs() > a3 * (1 + 1e-10))
        moved = (flip | enter).any(-1) | bad
        coef = torch.where(stable[..., None], coef, x)
        stable = stable | ~moved
        if bool(stable.all()):
            break
        upd = ~stable[..., None]
        active = torch.where(upd, (active & ~flip) | enter, active)
        sign = torch.where(upd & enter, torch.sign(g), torch.where(upd & flip, torch.zeros_like(sign), sign))
    return coef, stable
