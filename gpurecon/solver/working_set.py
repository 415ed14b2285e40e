"""The engine's shared structures: one design X for every fold, folds as training masks, and
solutions in working-set form (each group's coefficients on its own padded list of features).

Problems are grouped by (grid point, target): a group holds that pair's problems for every
fold and one working set of features shared by them (leave-one-out folds differ by one row,
so their supports nearly coincide). Fold centring is a per-problem mean (rank-one
corrections), never a per-fold copy of X. Warm-started folds begin from the full-data fit of
the same (grid point, target), restricted to its support and the features close to its KKT
boundary (a strong-rule style screen); :mod:`.certify` then solves each fold's own sign
pattern, so a fold never keeps the full-data fit (which saw its held-out samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .options import WARM_SCORE

F64 = torch.float64


@dataclass
class Design:
    """X (n+1, p+1): globally centred (when fitting intercepts), a zero row and a zero column
    appended so that padded indices (``n`` for rows, ``p`` for features) read zeros."""

    X: torch.Tensor
    lam_max: torch.Tensor   # float64 scalar: lambda_max(X^T X) over all rows (valid for every fold)
    center: bool

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
    all_rows: bool = False  # every fold trains on every row (the full-data fit)


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
    return Design(Xe, _lambda_max(X.to(torch.float64)), center)


def _lambda_max(x: torch.Tensor) -> torch.Tensor:
    """``lambda_max(x^T x)`` in float64, through the smaller of the two Grams."""
    n, p = x.shape
    if not (n and p):
        return torch.zeros((), dtype=torch.float64, device=x.device)
    return torch.linalg.eigvalsh(x @ x.T if n <= p else x.T @ x)[-1].to(torch.float64)


def make_folds(train_masks: torch.Tensor, center: bool, dtype: torch.dtype, widest: int | None = None) -> Folds:
    """Fold tensors from boolean training masks (F, n); ``widest``: the most rows a fold holds
    out, when the caller knows it (else one host read finds it)."""
    F, n = train_masks.shape
    held = ~train_masks
    if widest is None:
        widest = int(held.sum(1).max()) if F else 0
    h = max(widest, 1)
    # stable sort puts each fold's held-out rows first, in row order
    order = torch.argsort((~held).to(torch.int8), dim=1, stable=True)[:, :h]
    valid = torch.arange(h, device=train_masks.device)[None, :] < held.sum(1, keepdim=True)
    held_out = torch.where(valid, order, torch.full_like(order, n))
    return Folds(train_masks.to(dtype), train_masks.sum(1).to(torch.float64), held_out, center, F > 0 and widest == 0)


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


def _newton_cols(xw64, lowrank):
    """What the Newton steps multiply by: the columns (low-rank form) or their Gram."""
    return xw64 if lowrank else torch.bmm(xw64.transpose(1, 2), xw64)


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
