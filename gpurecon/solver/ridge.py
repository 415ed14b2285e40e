"""Exact answers for the problems without an l1 term: ridge (``l1_ratio == 0``) and least
squares (``alpha == 0``).

With ``a = 0`` sklearn's objective ``0.5 ||y - X w||^2 + 0.5 b ||w||^2`` (fold-centred
training rows, ``b = alpha * n_f``) has no sign pattern to certify: its optimum is the linear
solve ``w = (X^T X + b I)^{-1} X^T y``. With the eigenvectors of each fold's smaller Gram
(the ``n x n`` kernel ``X X^T = U diag(lam) U^T`` when p > n, else ``X^T X = V diag(lam) V^T``),

    w = X^T U diag(1 / (lam + b)) U^T y    or    w = V diag(1 / (lam + b)) V^T X^T y,

one factorisation per fold serves every target and every alpha of the chunk. Where a chunk
holds least squares (``b = 0``) it uses the thin SVD ``X = U diag(s) V^T`` instead (the Gram
squares the condition number): ``w = V diag(s / (s^2 + b)) U^T y``, with ``1 / s`` at ``b = 0``
on the singular values above rounding (``max(n, p) * eps * s_max``, numpy's ``lstsq``
cut-off): the minimum-norm least-squares solution (where p > n-1 least squares has infinitely
many optima, this is the one :func:`numpy.linalg.lstsq` returns).

The answer is checked like the certificate of :mod:`.certify` checks stationarity: the
gradient ``X^T r - b w`` must vanish on every feature up to rounding (``STATIONARITY_RTOL`` of its
size at ``w = 0``); ``certified`` says where it does, and sklearn's duality gap (ridge and
least-squares forms, float64) decides ``converged`` as everywhere else.
"""

from __future__ import annotations

import torch

from .gap import enet_duality_gap
from .working_set import Design, Folds, Solution

F64 = torch.float64
# stationarity may miss by this fraction of max_j |x_j^T y| (the gradient at w = 0)
STATIONARITY_RTOL = 1e-9


def fold_designs(design: Design, folds: Folds) -> torch.Tensor:
    """Each fold's training design centred on its training rows, held-out rows zero:
    (F, n, p) float64."""
    n, p = design.n, design.p
    x = design.X[:n, :p].to(F64)
    train = folds.train.to(F64)                                                 # (F, n)
    xf = x[None] * train[:, :, None]
    if folds.center:
        xf = xf - train[:, :, None] * (train @ x)[:, None, :] / folds.n_train[:, None, None]
    return xf


def solve_plain(design: Design, folds: Folds, yc: torch.Tensor, b: torch.Tensor, tol_abs: torch.Tensor,
                max_elems: int = 2 ** 25) -> Solution:
    """Exact solutions of K groups x F folds without an l1 term.

    Parameters
    ----------
    design, folds
        The engine's inputs.
    yc : Tensor (K, F, n) float64
        Fold-centred training targets, zero on held-out rows.
    b : Tensor (K, F) float64
        The ridge strengths ``alpha * (1 - l1_ratio) * n_f`` (0: least squares).
    tol_abs : Tensor (K, F) float64
        sklearn's threshold ``tol * ||y_c||^2``.
    max_elems : int
        float64 elements a batch of groups' coefficients may hold.

    Returns
    -------
    Solution
        Working sets of all p features; ``n_iter`` 1 (one solve), ``score`` zero (no l1
        term: nothing to screen).
    """
    K, F, n = yc.shape
    p = design.p
    dev = yc.device
    coef = torch.zeros((K, F, p), dtype=F64, device=dev)
    gap = torch.zeros((K, F), dtype=F64, device=dev)
    certified = torch.zeros((K, F), dtype=torch.bool, device=dev)
    f_step = max(1, int(max_elems // max(1, 3 * n * p)))
    for f0 in range(0, F, f_step):
        fs = slice(f0, f0 + f_step)
        part = Folds(folds.train[fs], folds.n_train[fs], folds.held_out[fs], folds.center)
        xf = fold_designs(design, part)                                         # (f, n, p)
        ridge_only = bool((b[:, fs] > 0).all())
        if ridge_only:
            # every problem has a ridge term: the eigenvectors of the smaller Gram (n x n kernel
            # or p x p) serve every target and alpha, at a fraction of an SVD's cost
            wide = p > n
            gram = torch.bmm(xf, xf.transpose(1, 2)) if wide else torch.bmm(xf.transpose(1, 2), xf)
            lam, vec = torch.linalg.eigh(gram)                                  # (f, m), (f, m, m)
            lam = lam.clamp_min(0.0)
        else:
            u, s, vh = torch.linalg.svd(xf, full_matrices=False)                # (f, n, m), (f, m), (f, m, p)
            cut = max(n, p) * torch.finfo(F64).eps * s.amax(-1, keepdim=True)   # numpy lstsq's rcond
        k_step = max(1, int(max_elems // max(1, 3 * xf.shape[0] * (p + n))))
        for k0 in range(0, K, k_step):
            ks = slice(k0, k0 + k_step)
            y, b_k = yc[ks, fs], b[ks, fs]
            b3 = b_k[..., None]
            xty = torch.einsum("kfn,fnp->kfp", y, xf)                           # X^T y: the gradient at w = 0
            if ridge_only and wide:     # w = X^T U diag(1 / (lam + b)) U^T y
                z = torch.einsum("fnm,kfn->kfm", vec, y) / (lam[None] + b3)
                w = torch.einsum("fnp,kfn->kfp", xf, torch.einsum("fnm,kfm->kfn", vec, z))
            elif ridge_only:            # w = V diag(1 / (lam + b)) V^T X^T y
                z = torch.einsum("fpm,kfp->kfm", vec, xty) / (lam[None] + b3)
                w = torch.einsum("fpm,kfm->kfp", vec, z)
            else:
                s_k = s[None]
                gain = torch.where(b3 > 0, s_k / (s_k.square() + b3), torch.where(s_k > cut[None], 1.0 / s_k, 0.0))
                w = torch.einsum("kfm,fmp->kfp", torch.einsum("fnm,kfn->kfm", u, y) * gain, vh)
            r = y - torch.einsum("kfp,fnp->kfn", w, xf)
            g = torch.einsum("kfn,fnp->kfp", r, xf)                             # X^T r
            grad = (g - b3 * w).abs().amax(-1)
            certified[ks, fs] = grad <= STATIONARITY_RTOL * xty.abs().amax(-1)
            gap[ks, fs] = enet_duality_gap(r.square().sum(-1), (r * y).sum(-1), w.abs().sum(-1),
                                           w.square().sum(-1), grad, g.square().sum(-1), torch.zeros_like(b_k), b_k)
            coef[ks, fs] = w
    ws = torch.arange(p, device=dev).expand(K, p).contiguous()
    return Solution(ws, coef, gap, tol_abs, torch.ones((K, F), dtype=torch.int64, device=dev),
                    certified | (gap <= tol_abs), torch.zeros((K, p + 1), dtype=F64, device=dev), certified)
