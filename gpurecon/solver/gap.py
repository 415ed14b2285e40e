"""scikit-learn's ElasticNet duality gap, batched, in float64.

scikit-learn (``sklearn/linear_model/_cd_fast.pyx``, ``gap_enet``) works in "unscaled" units:
for a training set of ``n`` rows it minimises

    P(w) = 1/2 ||y - X w||^2 + a ||w||_1 + b/2 ||w||^2,   a = alpha*l1_ratio*n, b = alpha*(1-l1_ratio)*n

(``n`` times the documented objective; X and y centred when ``fit_intercept``), and stops when
``gap <= tol * ||y||^2`` (``y`` centred when ``fit_intercept``). The gap it uses depends on which
penalty is present:

* ``a > 0`` (formulation A): with ``XtA = X^T R - b w`` and ``s = min(1, a / max|XtA|)``,
  ``gap = P(w) - (-s^2/2 (||R||^2 + b||w||^2) + s R.y)``;
* ``a == 0, b > 0`` (ridge, formulation B): ``gap = ||R||^2 + b/2 ||w||^2 - R.y + ||X^T R||^2 / (2b)``;
* ``a == b == 0`` (least squares): ``gap = ||X^T R||^2``.

Everything here reproduces those formulas on batches of problems so that "converged" means
exactly what it means in scikit-learn. The gap divided by ``n`` is what sklearn reports as
``dual_gap_``.
"""

from __future__ import annotations

import torch


def enet_duality_gap(
    r_norm2: torch.Tensor,
    r_dot_y: torch.Tensor,
    w_l1: torch.Tensor,
    w_l2sq: torch.Tensor,
    dual_norm: torch.Tensor,
    xtr_norm2: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
) -> torch.Tensor:
    """Duality gap of a batch of ElasticNet problems in sklearn's unscaled units.

    Parameters
    ----------
    r_norm2, r_dot_y : Tensor
        ``||R||^2`` and ``R.y`` with ``R = y - X w`` the (centred) training residual.
    w_l1, w_l2sq : Tensor
        ``||w||_1`` and ``||w||_2^2``.
    dual_norm : Tensor
        ``max_j |X_j^T R - b w_j|`` (used where ``a > 0``).
    xtr_norm2 : Tensor or None
        ``||X^T R||^2`` (used only where ``a == 0``; may be None when every ``a > 0``).
    a, b : Tensor
        The l1 and l2 strengths in unscaled units (``alpha*l1_ratio*n``, ``alpha*(1-l1_ratio)*n``).

    Returns
    -------
    Tensor
        The gap, float64, broadcast shape of the inputs.
    """
    f64 = torch.float64
    r_norm2, r_dot_y = r_norm2.to(f64), r_dot_y.to(f64)
    w_l1, w_l2sq, dual_norm = w_l1.to(f64), w_l2sq.to(f64), dual_norm.to(f64)
    a, b = torch.as_tensor(a, dtype=f64, device=r_norm2.device), torch.as_tensor(b, dtype=f64, device=r_norm2.device)

    quad = r_norm2 + b * w_l2sq
    primal = 0.5 * quad + a * w_l1
    scale = torch.where(dual_norm > a, a / torch.where(dual_norm > 0, dual_norm, 1.0), torch.ones_like(dual_norm))
    dual = -0.5 * scale * scale * quad + scale * r_dot_y
    gap = primal - dual
    if xtr_norm2 is None:
        return gap
    xtr_norm2 = xtr_norm2.to(f64)
    safe_b = torch.where(b > 0, b, torch.ones_like(b))
    ridge_gap = r_norm2 + 0.5 * b * w_l2sq - r_dot_y + xtr_norm2 / (2.0 * safe_b)
    no_l1 = a == 0
    gap = torch.where(no_l1 & (b > 0), ridge_gap, gap)
    return torch.where(no_l1 & (b == 0), xtr_norm2, gap)
