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

:func:`pdas` keeps ``Q`` on the union of the group's active sets, rebuilt each round, and each
fold's unused union features as zero constraints; :func:`bordered_pdas` keeps ``Q`` on the
starting pattern for every round and gives each fold only its own departures from it (entered
features as a border, dropped ones as zero constraints): leave-one-out folds from the full-data
fit's pattern. The low-rank form (working sets wider than n) and the full-set polish use
:func:`pdas`.
"""

from __future__ import annotations

import torch

from .options import MAX_CONSTRAINTS, SLOT_FRACTION

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
            # M_c X_D per group and class, once: a fold's block then gathers its columns instead
            # of multiplying its gathered (n x d) columns by the n x n M_c
            self.MX = torch.matmul(self.M, self.xd[:, None])                     # (K, C, n, s)
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

    def apply_many(self, vecs):
        """``Q_f v`` for several vectors per problem, vecs (K, F, j, s)."""
        out = self._apply_rows(vecs)
        coef = torch.einsum("kfrs,kfjs->kfjr", self.V, vecs)
        coef = torch.einsum("kfrq,kfjq->kfjr", self.Cinv, coef)
        return out + torch.einsum("kfrs,kfjr->kfjs", self.V, coef)

    def apply(self, vec):
        """``Q_f vec`` for vec (K, F, s): the fold inverse via Woodbury."""
        qv = self._apply_rows(vec[:, :, None, :])[:, :, 0]
        coef = torch.einsum("kfrs,kfs->kfr", self.V, vec)
        coef = torch.einsum("kfrq,kfq->kfr", self.Cinv, coef)
        return qv + torch.einsum("kfrs,kfr->kfs", self.V, coef)

    def _class_base(self, stride):
        """(K, F) flat offsets of each problem's (group, fold class) block in a (K, C, ...)
        tensor whose blocks hold ``stride`` elements."""
        K = self.fold_class.shape[0]
        kk = torch.arange(K, device=self.fold_class.device)[:, None]
        return (kk * self.n_classes + self.fold_class) * stride

    def block(self, idx):
        """``Q_f[B, B]`` for index sets idx (K, F, d) inside the domain."""
        K, F, d = idx.shape
        if self.lowrank:
            n, s = self.xd.shape[1:]
            cols = idx[:, :, None, :].expand(K, F, n, d)
            xb = self.xd[:, None].expand(K, F, n, s).gather(3, cols)                # (K, F, n, d)
            if self.n_classes == 1:
                mxb = self.MX[:, 0][:, None].expand(K, F, n, s).gather(3, cols)
                bb = self.bb[:, 0][:, None].expand(K, F)
            else:
                rows = torch.arange(n, device=idx.device)[:, None] * s
                mxb = torch.take(self.MX, self._class_base(n * s)[..., None, None] + rows + idx[:, :, None, :])
                bb = self.bb[torch.arange(K, device=idx.device)[:, None], self.fold_class]
            eye = torch.eye(d, dtype=F64, device=idx.device)
            qbb = (eye - xb.transpose(-1, -2) @ mxb) / bb[..., None, None]
        else:
            s = self.Q.shape[-1]
            # one flat take: cheaper than broadcast advanced indexing over four index tensors
            lin = self._class_base(s * s)[..., None, None] + idx[..., :, None] * s + idx[..., None, :]
            qbb = torch.take(self.Q, lin)
        vb = self.V.gather(3, idx[:, :, None, :].expand(K, F, self.V.shape[2], d))    # (K, F, r, d)
        return qbb + torch.einsum("kfrd,kfrq,kfqe->kfde", vb, self.Cinv, vb)


def cho_solve(chol, v):
    """``(L L^T)^-1 v`` for batched lower Cholesky factors ``chol`` (..., k, k) and ``v``
    (..., k, m): two triangular solves (batched potrs on the CPU runs half as fast)."""
    return torch.linalg.solve_triangular(chol.mT, torch.linalg.solve_triangular(chol, v, upper=False), upper=True)


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
         lowrank=False, min_open=1):
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
    min_open : int
        Stop once fewer problems than this are still moving (a GPU: the last few cost a round
        and a host read each here, and one batch of direct solves in the caller).

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

    def constraints(active, stable):
        # the inverse lives on the union of the group's unfinished active sets; B: domain
        # features inactive in a fold, forced to zero through a small system (problems needing
        # a large one sit the round out: never stable)
        domain = (active & ~stable[..., None]).any(1)
        zero_in_dom = domain[:, None, :] & ~active
        n_in = zero_in_dom.sum(-1)
        too_big = n_in > MAX_CONSTRAINTS
        return domain, zero_in_dom & ~too_big[..., None], torch.where(too_big, 0, n_in), too_big

    domain, zero_in_dom, n_in, too_big = constraints(active, stable)
    d = int(n_in.max())
    for _ in range(rounds):
        inv = SharedInverse(cols, domain, b_class, fold_class, downdates, ridge, lowrank)
        rhs = torch.where(active, c - a3 * sign, torch.zeros_like(c))
        x0 = inv.apply(rhs)
        lam_full = torch.zeros_like(c)
        if d:
            order = torch.argsort((~zero_in_dom).to(torch.int8), dim=-1, stable=True)[..., :d]
            valid = torch.arange(d, device=c.device) < n_in[..., None]
            sbb = inv.block(order)
            eye = torch.eye(d, dtype=F64, device=c.device)
            sbb = torch.where(valid[..., :, None] & valid[..., None, :], sbb, eye.expand_as(sbb))
            rb = torch.where(valid, x0.gather(2, order), torch.zeros_like(order, dtype=F64))
            chol, info = torch.linalg.cholesky_ex(sbb)
            lam = cho_solve(chol, rb[..., None])[..., 0]
            lam_full = lam_full.scatter(2, order, torch.where(valid, lam, torch.zeros_like(lam)))
        x = torch.where(active, x0 - inv.apply(lam_full), torch.zeros_like(x0))
        # a singular system (e.g. lasso on more features than samples) fails its factorisation:
        # such problems are never called stable
        bad = ~inv.ok[:, None] | ~torch.isfinite(x).all(-1) | too_big
        if d:
            bad |= info != 0
        coef, stable, active, sign = _pdas_update(cols, downdates, b, c, a3, x, bad, active, sign, fixed3, stable,
                                                  coef, lowrank)
        # one host read per round: the stop and the next round's constraint count
        domain, zero_in_dom, n_in, too_big = constraints(active, stable)
        moving, d = (int(v) for v in torch.stack([(~stable).sum(), n_in.max()]).tolist())
        if moving < min_open:
            break
    return coef, stable


def _pdas_update(cols, downdates, b, c, a3, x, bad, active, sign, fixed3, stable, coef, lowrank=False):
    """One PDAS round's end, both forms: ``x`` (zeroed where ``bad``) becomes the coefficient of
    the problems not yet stable; a problem is stable when no active sign flipped and no inactive
    working-set feature violates its KKT bound; the others drop their flips and take their
    violators (with the sign of ``c - M x``). Returns (coef, stable, active, sign)."""
    x = torch.where(bad[..., None], torch.zeros_like(x), x)
    g = c - hessian_apply(cols, downdates, b, x, lowrank)
    flip = active & (torch.sign(x) != sign)
    enter = ~active & ~fixed3 & (g.abs() > a3 * (1 + 1e-10))
    moved = (flip | enter).any(-1) | bad
    coef = torch.where(stable[..., None], coef, x)
    stable = stable | ~moved
    upd = ~stable[..., None]
    active = torch.where(upd, (active & ~flip) | enter, active)
    sign = torch.where(upd & enter, torch.sign(g), torch.where(upd & flip, torch.zeros_like(sign), sign))
    return coef, stable, active, sign



def bordered_pdas(cols, *, downdates, b_class, fold_class, ridge, c, a, b, active, sign, fixed, rounds, done=None,
                  max_border=None, min_open=1):
    """PDAS rounds like :func:`pdas` (Gram form), with one inverse per group for all rounds:
    its domain is the starting active set ``A`` (the union over the group's open folds), and each
    fold's own departures from it - features entered (``E``) and features dropped (``R``) - are a
    bordered system of ``|E| + |R|`` unknowns for that fold alone.

    Why: leave-one-out folds start from the full-data fit's pattern and most move by a few
    features, each fold its own; :func:`pdas` puts the union of every fold's moves into a shared
    domain and imposes, per fold, a zero constraint on each union feature that fold does not use
    (GPT-2's study design: ~40 per fold against ~6 moves of its own, 58% of the study's solve
    time). Here a fold pays only for its own moves, and only open folds pay.

    The fold system on ``T = (A \\ R) | E`` with ``M = H_f + b I`` is

        M_AA w_A + M_AE w_E + P_R^T lam = rhs_A,   M_EA w_A + M_EE w_E = rhs_E,   P_R w_A = 0.

    With ``Minv = M_AA^{-1}`` (the group's shared inverse on ``A`` and the fold's Woodbury term),
    ``z0 = Minv rhs_A``, ``Z = Minv M_AE`` and ``Q_R = Minv P_R^T``, eliminating ``w_A`` leaves

        [[M_EE - M_EA Z, -Z_R^T], [Z_R, Q_RR]] [w_E; lam] = [rhs_E - M_EA z0; z0_R],

    a small LU solve per fold; ``w_A = z0 - Z w_E - Q_R lam``. One step of iterative refinement
    with the true matrix follows. Folds whose ``|E| + |R|`` exceeds ``max_border`` sit the rounds
    out (never stable). Arguments and returns as :func:`pdas` (``cols`` is the Gram; ``min_open``
    counts the folds that would take the next round).
    """
    K, F, s = c.shape
    dev = c.device
    max_border = MAX_CONSTRAINTS if max_border is None else max_border
    a3 = a[..., None]
    fixed3 = fixed[:, None, :].expand(K, F, s)
    active = active & ~fixed3
    sign = torch.where(active, sign, torch.zeros_like(sign))
    stable = torch.zeros((K, F), dtype=torch.bool, device=dev) if done is None else done.clone()
    coef = torch.zeros_like(c)
    base = (active & ~stable[..., None]).any(1)                                  # (K, s): A
    m = max(int(base.sum(1).max()), 1)
    pos_a, valid_a = _positions(base, m)                                           # (K, m) in ws
    gram_a = cols.gather(1, pos_a[:, :, None].expand(K, m, s)).gather(2, pos_a[:, None, :].expand(K, m, m))
    rd = downdates.shape[2]
    u_a = downdates.gather(3, pos_a[:, None, None, :].expand(K, F, rd, m))
    inv = SharedInverse(gram_a, valid_a, b_class, fold_class, u_a, ridge)          # compact on A
    in_a = torch.zeros((K, s), dtype=torch.bool, device=dev).scatter_(1, pos_a, valid_a)
    base3 = in_a[:, None, :]
    bad_group = ~inv.ok[:, None].expand(K, F)
    for _ in range(rounds):
        add, drop = active & ~base3, base3 & ~active
        n_e, n_r = add.sum(-1), drop.sum(-1)
        too_big = (n_e + n_r > max_border) & ~stable
        live = ~stable & ~too_big & ~bad_group
        n_live, e, r = (int(v) for v in torch.stack([live.sum(), torch.where(live, n_e, 0).max(),
                                                     torch.where(live, n_r, 0).max()]).tolist())
        if n_live < min_open:   # (none: only folds too far from the shared pattern are left)
            break
        probs = torch.nonzero_static(live.reshape(-1), size=n_live).squeeze(1)
        kp, fp = probs // F, probs % F
        act_p = active.reshape(K * F, s)[probs]
        target = c - a3 * sign                                                   # the pattern's right-hand side
        rhs = torch.where(act_p, target.reshape(K * F, s)[probs], 0.0)
        border = _Border(inv, cols, downdates, b.reshape(-1)[probs], kp, fp, pos_a, valid_a,
                         add.reshape(K * F, s)[probs], drop.reshape(K * F, s)[probs], e, r)
        x_p, ok = border.solve(rhs)
        x = torch.zeros_like(c)
        x.view(K * F, s)[probs] = x_p
        res = torch.where(active, target - hessian_apply(cols, downdates, b, x), 0.0)
        x_p = x_p + border.solve(res.reshape(K * F, s)[probs])[0]
        x.view(K * F, s)[probs] = torch.where(act_p, x_p, 0.0)
        bad = torch.zeros((K, F), dtype=torch.bool, device=dev)
        bad.view(-1)[probs] = ~ok | ~torch.isfinite(x_p).all(-1)
        bad = (bad | too_big | bad_group) & ~stable
        coef, stable, active, sign = _pdas_update(cols, downdates, b, c, a3, x, bad, active, sign, fixed3, stable,
                                                  coef)
        # (no read of stable.all() here: the next round's read finds no live fold then)
    return coef, stable


class _Border:
    """One round's bordered systems of the open problems (flat: group ``kp``, fold ``fp``; see
    :func:`bordered_pdas`), factorised once, applied to the right-hand side and to the
    refinement's residual. ``inv`` is the groups' shared inverse in compact coordinates
    ``pos_a`` (K, m) of the working set."""

    def __init__(self, inv, gram, downdates, b, kp, fp, pos_a, valid_a, add, drop, e, r):
        P, s = add.shape
        dev = add.device
        m = pos_a.shape[1]
        self.e, self.r = e, r
        K, F = inv.fold_class.shape
        flat = kp * F + fp
        # (index_select on flattened leading axes: advanced indexing was a third of this
        # constructor's time)
        self.pos = pos_a.index_select(0, kp)                                     # (P, m)
        self.va = valid_a.index_select(0, kp).to(F64)                           # padding: 0
        # one fold class and most problems open (leave-one-out's rounds): products with the
        # groups' inverses as they are, the problems in their (group, fold) slots, instead of a
        # per-problem copy of an m x m inverse
        C = inv.n_classes
        self.K, self.F, self.flat = K, F, flat
        self.full = P == K * F
        self.groups = C == 1 and P >= SLOT_FRACTION * K * F
        self.q = inv.Q[:, 0] if self.groups else inv.Q.reshape(K * C, m, m).index_select(
            0, kp * C + inv.fold_class.reshape(-1).index_select(0, flat))        # (K or P, m, m)
        rd = inv.V.shape[2]
        self.v = inv.V.reshape(K * F, rd, m).index_select(0, flat)              # (P, rd, m)
        self.cinv = inv.Cinv.reshape(K * F, rd, rd).index_select(0, flat)       # (P, rd, rd)
        self.ok = torch.ones((P,), dtype=torch.bool, device=dev)
        if not (e or r):
            return
        if e:
            self.eidx, self.evalid = _positions(add, e)                          # (P, e) in ws
            # M[E, A] and M[E, E] (without b) read from the Gram where they lie, each less the
            # fold's downdate u_E^T u
            rows = ((kp[:, None] * s + self.eidx) * s)[:, :, None]               # (P, e, 1)
            gflat = gram.reshape(-1)
            u = downdates.reshape(K * F, rd, s).index_select(0, flat)           # (P, rd, s)
            u_e = u.gather(2, self.eidx[:, None, :].expand(P, rd, e))           # (P, rd, e)
            u_a = u.gather(2, self.pos[:, None, :].expand(P, rd, m))            # (P, rd, m)
            self.m_ea = _add_outer(torch.take(gflat, rows + self.pos[:, None, :]), u_e, u_a, -1.0) \
                .mul_(self.evalid[..., None] * self.va[:, None, :])
            m_ee = _add_outer(torch.take(gflat, rows + self.eidx[:, None, :]), u_e, u_e, -1.0)
            m_ee.diagonal(dim1=1, dim2=2).add_(b[:, None])
            self.Z = self._minv(self.m_ea)                                       # (P, e, m)
        if r:
            drop_a = drop.gather(1, self.pos) & (self.va > 0)                    # (P, m)
            self.ridx, self.rvalid = _positions(drop_a, r)                       # (P, r) in A
            # rows R of the fold's inverse: the shared inverse's plus the Woodbury term's
            q_r = self.q.reshape(-1, m).index_select(0, (kp[:, None] * m + self.ridx).reshape(-1)).view(P, r, m) \
                if self.groups else self.q.gather(1, self.ridx[..., None].expand(P, r, m))
            v_r = self.v.gather(2, self.ridx[:, None, :].expand(P, self.v.shape[1], r))   # (P, rd, r)
            self.QR = q_r + torch.bmm(torch.bmm(v_r.transpose(1, 2), self.cinv), self.v)
        d = e + r
        mat = torch.empty((P, d, d), dtype=F64, device=dev)     # every block is written below
        if e:
            mat[:, :e, :e] = m_ee - torch.bmm(self.m_ea, self.Z.transpose(1, 2))
        if r:
            mat[:, e:, e:] = self.QR.gather(2, self.ridx[:, None, :].expand(P, r, r))
        if e and r:
            zr = self.Z.gather(2, self.ridx[:, None, :].expand(P, e, r))            # Z_R^T: (e, r)
            mat[:, :e, e:] = -zr
            mat[:, e:, :e] = zr.transpose(1, 2)
        self.valid = torch.cat([self.evalid if e else torch.zeros((P, 0), dtype=torch.bool, device=dev),
                                self.rvalid if r else torch.zeros((P, 0), dtype=torch.bool, device=dev)], 1)
        # padding rows and columns: the identity (multiplies and an add: a where on the blocks
        # cost as much as their LU)
        vf = self.valid.to(F64)
        mat.mul_(vf[:, :, None] * vf[:, None, :]).diagonal(dim1=1, dim2=2).add_(1.0 - vf)
        self.lu, self.piv, info = torch.linalg.lu_factor_ex(mat)
        self.ok = (info == 0)

    def _minv(self, vecs):
        """``M_AA^{-1}`` of the fold (shared inverse and Woodbury term) on rows vecs (P, j, m)."""
        P, j, m = vecs.shape
        if self.groups and self.full:
            out = torch.bmm(vecs.reshape(self.K, -1, m), self.q).reshape(P, j, m)
        elif self.groups:
            slots = vecs.new_zeros((self.K * self.F, j, m)).index_copy_(0, self.flat, vecs)
            out = torch.bmm(slots.view(self.K, -1, m), self.q).view(self.K * self.F, j, m).index_select(0, self.flat)
        else:
            out = torch.bmm(vecs, self.q)
        coef = torch.bmm(torch.bmm(vecs, self.v.transpose(1, 2)), self.cinv)     # (P, j, rd)
        return _add_outer(out, coef.transpose(1, 2), self.v, value=1.0)

    def solve(self, rhs):
        """The bordered solutions for right-hand sides ``rhs`` (P, s) that are zero outside the
        active sets; returns (x (P, s), factorised (P,))."""
        e, r = self.e, self.r
        z0 = self._minv((rhs.gather(1, self.pos) * self.va)[:, None, :])[:, 0]    # (P, m)
        w_a, x = z0, torch.zeros_like(rhs)
        if e or r:
            parts = []
            if e:
                parts.append(rhs.gather(1, self.eidx) - torch.bmm(self.m_ea, z0[:, :, None])[..., 0])
            if r:
                parts.append(z0.gather(1, self.ridx))
            small = torch.where(self.valid, torch.cat(parts, 1), 0.0)
            sol = torch.linalg.lu_solve(self.lu, self.piv, small[..., None])[..., 0]
            sol = torch.where(self.valid & self.ok[:, None], sol, 0.0)
            if e:
                w_a = w_a - torch.bmm(sol[:, None, :e], self.Z)[:, 0]
                x = x.scatter_add(1, self.eidx, torch.where(self.evalid, sol[:, :e], 0.0))
            if r:
                w_a = w_a - torch.bmm(sol[:, None, e:], self.QR)[:, 0]
        return x.scatter_add(1, self.pos, w_a * self.va), self.ok


def _add_outer(out, u, v, value):
    """``out + value * u^T v`` in place for ``u`` (P, rd, i), ``v`` (P, rd, j) with few rows
    ``rd`` (the fold downdates): one broadcast multiply-add per row (a bmm of inner size 1 or 2
    runs at a fraction of the speed)."""
    for k in range(u.shape[1]):
        out.addcmul_(u[:, k, :, None], v[:, k, None, :], value=value)
    return out


def _positions(mask, width):
    """Indices of the True entries of ``mask`` (..., s), the first ``width`` of each row, and
    which of them are real (..., width)."""
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[..., :width]
    return order, torch.arange(width, device=mask.device) < mask.sum(-1, keepdim=True)
