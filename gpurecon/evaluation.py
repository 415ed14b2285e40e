"""Scores of held-out predictions, and the chance levels the original study lacked.

Two views of the same (trials x electrodes) predictions:

- across electrodes, per held-out trial (the study's PCC and R2: ``np.corrcoef`` and
  ``sklearn.metrics.r2_score`` of one trial's electrode profile), then averaged over trials;
- per electrode, across held-out trials (the standard encoding-model score).

Scoring across electrodes rewards reproducing the mean electrode profile, which a model
that ignores the embedding already does; :func:`training_mean_predictions` gives that
baseline and a permutation null (the solver fits row-permuted targets) gives chance.
"""

from __future__ import annotations

import torch

_EPS = 1e-30


def _check_pair(pred: torch.Tensor, true: torch.Tensor) -> None:
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must have the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(true.shape)}")
    if pred.ndim < 2:
        raise ValueError(f"pred must be (..., trials, electrodes), got shape {tuple(pred.shape)}")


def pearson(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Pearson correlation along ``dim`` in float64 (NaN where either side is constant)."""
    a = a.double() - a.double().mean(dim, keepdim=True)
    b = b.double() - b.double().mean(dim, keepdim=True)
    num = (a * b).sum(dim)
    den = torch.sqrt((a * a).sum(dim) * (b * b).sum(dim))
    return torch.where(den > _EPS, num / den.clamp_min(_EPS), torch.full_like(num, float("nan")))


def r2(pred: torch.Tensor, true: torch.Tensor, dim: int) -> torch.Tensor:
    """Coefficient of determination along ``dim`` as sklearn's ``r2_score`` computes it for
    one output (1 - SS_res / SS_tot; NaN where ``true`` is constant along ``dim``)."""
    pred, true = pred.double(), true.double()
    ss_res = ((true - pred) ** 2).sum(dim)
    ss_tot = ((true - true.mean(dim, keepdim=True)) ** 2).sum(dim)
    return torch.where(ss_tot > _EPS, 1.0 - ss_res / ss_tot.clamp_min(_EPS),
                       torch.full_like(ss_res, float("nan")))


def scores_across_electrodes(pred: torch.Tensor, true: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per held-out trial, PCC and R2 between predicted and true electrode profiles.

    ``pred``, ``true``: (..., trials, electrodes). Returns ``pcc`` and ``r2`` of shape (..., trials).
    """
    _check_pair(pred, true)
    return {"pcc": pearson(pred, true, dim=-1), "r2": r2(pred, true, dim=-1)}


def scores_per_electrode(pred: torch.Tensor, true: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per electrode, PCC and R2 across held-out trials. Returns (..., electrodes)."""
    _check_pair(pred, true)
    return {"pcc": pearson(pred, true, dim=-2), "r2": r2(pred, true, dim=-2)}


def training_mean_predictions(Y: torch.Tensor, train_masks: torch.Tensor) -> torch.Tensor:
    """The baseline that ignores the embedding: each fold predicts its held-out trials with
    the mean of its training trials. ``train_masks``: (folds, trials) bool, every trial held
    out in exactly one fold. Returns (trials, targets)."""
    if train_masks.ndim != 2 or train_masks.shape[1] != Y.shape[0]:
        raise ValueError(f"train_masks must be (folds, {Y.shape[0]}), got {tuple(train_masks.shape)}")
    held_out = ~train_masks
    if not torch.equal(held_out.sum(0), torch.ones_like(held_out[0], dtype=torch.long)):
        raise ValueError("train_masks: every trial must be held out in exactly one fold")
    w = train_masks.to(Y.dtype)
    fold_means = (w @ Y) / w.sum(1, keepdim=True)        # (folds, targets)
    fold_of_trial = held_out.to(torch.long).argmax(0)    # (trials,)
    return fold_means[fold_of_trial]


def permutation_p_value(observed: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """One-sided p = (1 + #{null >= observed}) / (1 + n_null); ``null``: (n_null, ...)."""
    return (1.0 + (null >= observed.unsqueeze(0)).sum(0).double()) / (1.0 + null.shape[0])


def fdr_bh(p: torch.Tensor) -> torch.Tensor:
    """Benjamini-Hochberg adjusted p-values (q) of a 1-D tensor, NaN kept in place."""
    q = torch.full_like(p, float("nan"), dtype=torch.float64)
    ok = ~torch.isnan(p)
    pv = p[ok].double()
    m = pv.numel()
    if m == 0:
        return q
    order = torch.argsort(pv)
    ranked = pv[order] * m / torch.arange(1, m + 1, dtype=torch.float64, device=p.device)
    ranked = torch.flip(torch.cummin(torch.flip(ranked, [0]), 0).values, [0]).clamp(max=1.0)
    out = torch.empty_like(pv)
    out[order] = ranked
    q[ok] = out
    return q
