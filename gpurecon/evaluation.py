"""Scores of held-out predictions, and the chance levels the original study lacked.

Two views of the same (trials x electrodes) predictions:

- across electrodes, per held-out trial (the study's PCC and R2: ``np.corrcoef`` and
  ``sklearn.metrics.r2_score`` of one trial's electrode profile), then averaged over trials;
- per electrode, across held-out trials (the standard encoding-model score).

Scoring across electrodes rewards reproducing the mean electrode profile, which a model
that ignores the embedding already does; :func:`training_mean_predictions` gives that
baseline, and a permutation null (the solver fits row-permuted targets) gives chance for
both views. Per-electrode PCC under leave-one-out is biased downwards (the training-mean
baseline scores exactly -1 on every electrode), so it is only read against its baseline
and null.

Results are typed: :class:`Scores` (one view of one set of predictions),
:class:`NullDistribution` (the permutation null), :class:`Evaluation` (a model beside its
chance levels; :meth:`Evaluation.summary` is the ``scores`` block of summary.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

# the baseline is fitted by the solver stage (it needs the folds); re-exported for readers
from .solver.fit import training_mean_predictions  # noqa: F401

if TYPE_CHECKING:
    from .solver.fit import CrossValidatedFit

_EPS = 1e-30

# What each score in summary.json / the CSV files means (written into summary.json).
SCORE_DEFINITIONS = {
    "pcc_across_electrodes": "The study's score: for each held-out trial, the Pearson correlation "
                             "between predicted and true values across electrodes (np.corrcoef), "
                             "then the mean over trials. Rewards reproducing the mean electrode "
                             "profile: read it against baseline_pcc_across_electrodes.",
    "r2_across_electrodes": "As pcc_across_electrodes with sklearn's r2_score of each trial's "
                            "electrode profile, mean over trials.",
    "baseline_pcc_across_electrodes": "pcc_across_electrodes of the baseline that ignores the "
                                      "embedding: each held-out trial predicted by the mean of its "
                                      "fold's training trials.",
    "baseline_r2_across_electrodes": "r2_across_electrodes of the training-mean baseline.",
    "pcc_per_electrode_mean": "The encoding-model score: for each electrode, the Pearson "
                              "correlation between predicted and true values across held-out "
                              "trials, then the mean over electrodes. Under leave-one-out it is "
                              "biased downwards (the training-mean baseline scores exactly -1): "
                              "read it against baseline_pcc_per_electrode_mean and the null.",
    "r2_per_electrode_mean": "Per electrode, r2_score across held-out trials; mean over electrodes.",
    "baseline_pcc_per_electrode_mean": "pcc_per_electrode_mean of the training-mean baseline "
                                       "(-1 under leave-one-out: the bias of the score itself).",
    "baseline_r2_per_electrode_mean": "r2_per_electrode_mean of the training-mean baseline.",
    "null_pcc_across_electrodes_95": "95th percentile of pcc_across_electrodes over the permutation "
                                     "null (embeddings shuffled across trials, i.e. rows of Y "
                                     "permuted and the whole CV refitted): the chance level.",
    "null_r2_across_electrodes_95": "95th percentile of r2_across_electrodes over the null.",
    "null_pcc_across_electrodes_mean": "Mean of pcc_across_electrodes over the null.",
    "p_pcc_across_electrodes": "One-sided permutation p-value of pcc_across_electrodes: "
                               "(1 + #null >= observed) / (1 + n_permutations).",
    "p_r2_across_electrodes": "One-sided permutation p-value of r2_across_electrodes.",
    "n_electrodes_fdr_05": "Electrodes (target columns) whose per-electrode PCC is significant at "
                           "Benjamini-Hochberg q <= 0.05 (p from the permutation null, which "
                           "carries the same leave-one-out bias; without a null and with "
                           "solver.cv=kfold, from the parametric Pearson t-test).",
    "n_permutations": "Permutations in the null (solver.n_permutations; auto: 100 on CPU, 1000 on CUDA).",
    "p_source": "Where per-electrode p-values come from: 'permutation', 'pearson_t' (K-fold, no "
                "null) or null (leave-one-out without a null: no p-values).",
}


# --------------------------------------------------------------------------- score functions


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


# Null values within this relative distance of the observed score count as ties. Scores
# (PCC, R2) are of order 1; a model shrunk to the baseline gives an observed score and null
# values that differ only by float64 rounding (~1e-16), and which side of the observed value
# that noise falls on must not decide p. 1e-9 is far above rounding and far below any
# meaningful difference between scores.
TIE_RTOL = 1e-9


def permutation_p_value(observed: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """One-sided p = (1 + #{null >= observed - tol}) / (1 + n_null); ``null``: (n_null, ...).

    ``tol = TIE_RTOL * max(|observed|, 1)``: null values equal to the observed one up to
    rounding are ties, counted against significance. NaN where ``observed`` is NaN (an
    undefined score is not significant).
    """
    tol = TIE_RTOL * observed.abs().clamp_min(1.0)
    p = (1.0 + (null >= (observed - tol).unsqueeze(0)).sum(0).double()) / (1.0 + null.shape[0])
    return torch.where(torch.isnan(observed), torch.full_like(p, float("nan")), p)


def pearson_t_p_value(r: torch.Tensor, n: int) -> torch.Tensor:
    """One-sided parametric p-value of Pearson correlations ``r`` over ``n`` samples
    (Student t with n - 2 degrees of freedom, as ``scipy.stats.pearsonr(alternative='greater')``)."""
    from scipy import stats

    rr = np.clip(r.detach().double().cpu().numpy(), -1.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = rr * np.sqrt((n - 2) / np.maximum(1.0 - rr ** 2, 0.0))
    p = stats.t.sf(t, n - 2)
    p[np.isnan(rr)] = np.nan
    return torch.as_tensor(p, dtype=torch.float64, device=r.device)


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


# --------------------------------------------------------------------------- typed results


@dataclass(frozen=True)
class Scores:
    """PCC and R2 of one view of one set of predictions (float64 tensors, same shape)."""

    pcc: torch.Tensor
    r2: torch.Tensor

    @classmethod
    def across_electrodes(cls, pred: torch.Tensor, true: torch.Tensor) -> "Scores":
        """Per trial (the study's view): shape (..., trials)."""
        s = scores_across_electrodes(pred, true)
        return cls(s["pcc"], s["r2"])

    @classmethod
    def per_electrode(cls, pred: torch.Tensor, true: torch.Tensor) -> "Scores":
        """Per electrode across trials: shape (..., electrodes)."""
        s = scores_per_electrode(pred, true)
        return cls(s["pcc"], s["r2"])


@dataclass(frozen=True)
class NullDistribution:
    """The permutation null: the whole cross-validation refitted on row-permuted targets.

    Attributes
    ----------
    pcc_across_electrodes, r2_across_electrodes : Tensor (n_permutations,)
        For each permutation, the mean over trials of its per-trial PCC (R2) across electrodes.
    pcc_per_electrode : Tensor (n_permutations, electrodes)
        For each permutation, each electrode's PCC across held-out trials.
    """

    pcc_across_electrodes: torch.Tensor
    r2_across_electrodes: torch.Tensor
    pcc_per_electrode: torch.Tensor

    @property
    def n_permutations(self) -> int:
        return int(self.pcc_across_electrodes.shape[0])

    @classmethod
    def best_of(cls, nulls: list["NullDistribution"]) -> "NullDistribution":
        """Per permutation, the best score over several nulls (the grid points): the chance
        level of picking among them. Used for the nested selection, whose own inner search is
        not repeated per permutation."""
        def best(name):
            return torch.stack([getattr(n, name) for n in nulls]).nan_to_num(float("-inf")).amax(0)

        return cls(best("pcc_across_electrodes"), best("r2_across_electrodes"), best("pcc_per_electrode"))


def null_distribution(*, null_pred: torch.Tensor, Y: torch.Tensor, permutations,
                      chunk: int | None = None) -> NullDistribution:
    """Score held-out predictions of row-permuted targets against those permuted targets.

    Parameters
    ----------
    null_pred : Tensor (n_permutations, trials, targets)
        Held-out predictions of ``Y[permutations[j]]`` (as the solver returns them).
    Y : Tensor (trials, targets)
        The unpermuted targets.
    permutations : int array (n_permutations, trials)
    chunk : int or None
        Permutations scored at a time (bounds the memory of the permuted copies of Y and the
        float64 temporaries); None: as many as fit in about 2**24 values (128 MiB).
    """
    perms = torch.as_tensor(np.asarray(permutations), device=Y.device).long()
    if null_pred.ndim != 3 or null_pred.shape[1:] != Y.shape or perms.shape != null_pred.shape[:2]:
        raise ValueError(f"null_pred must be (n_permutations, {tuple(Y.shape)}) with one permutation "
                         f"row per null; got null_pred {tuple(null_pred.shape)}, permutations "
                         f"{tuple(perms.shape)}")
    chunk = chunk or max(1, 2**24 // max(1, Y.numel()))
    pcc, r2s, elec = [], [], []
    for lo in range(0, perms.shape[0], chunk):
        true = Y[perms[lo:lo + chunk]]                                  # (c, trials, targets)
        pred = null_pred[lo:lo + chunk]
        trial = Scores.across_electrodes(pred, true)
        pcc.append(torch.nanmean(trial.pcc, dim=1))
        r2s.append(torch.nanmean(trial.r2, dim=1))
        elec.append(Scores.per_electrode(pred, true).pcc)
    return NullDistribution(torch.cat(pcc), torch.cat(r2s), torch.cat(elec))


def _mean(t: torch.Tensor) -> float:
    return float(torch.nanmean(t.double()).item())


@dataclass(frozen=True)
class Evaluation:
    """A model's held-out scores beside its chance levels.

    Attributes
    ----------
    trials, trials_baseline : Scores (trials,)
        Per-trial scores across electrodes of the model and of the training-mean baseline.
    electrodes, electrodes_baseline : Scores (electrodes,)
        Per-electrode scores across trials.
    null : NullDistribution or None
    electrode_p, electrode_q : Tensor (electrodes,) or None
        Per-electrode p-values of the PCC and their Benjamini-Hochberg q-values.
    p_source : {"permutation", "pearson_t"} or None
    """

    trials: Scores
    trials_baseline: Scores
    electrodes: Scores
    electrodes_baseline: Scores
    null: NullDistribution | None = None
    electrode_p: torch.Tensor | None = None
    electrode_q: torch.Tensor | None = None
    p_source: str | None = None

    @property
    def pcc_across_electrodes(self) -> float:
        return _mean(self.trials.pcc)

    @property
    def r2_across_electrodes(self) -> float:
        return _mean(self.trials.r2)

    def p_across_electrodes(self) -> tuple[float, float] | None:
        """Permutation p-values of the mean across-electrode PCC and R2 (None without a null)."""
        if self.null is None:
            return None
        f64 = torch.float64
        p_pcc = permutation_p_value(torch.tensor(self.pcc_across_electrodes, dtype=f64),
                                    self.null.pcc_across_electrodes.double().cpu())
        p_r2 = permutation_p_value(torch.tensor(self.r2_across_electrodes, dtype=f64),
                                   self.null.r2_across_electrodes.double().cpu())
        return float(p_pcc), float(p_r2)

    def summary(self) -> dict:
        """The ``scores`` block of summary.json (plain floats)."""
        s = {
            "pcc_across_electrodes": self.pcc_across_electrodes,
            "r2_across_electrodes": self.r2_across_electrodes,
            "baseline_pcc_across_electrodes": _mean(self.trials_baseline.pcc),
            "baseline_r2_across_electrodes": _mean(self.trials_baseline.r2),
            "pcc_per_electrode_mean": _mean(self.electrodes.pcc),
            "r2_per_electrode_mean": _mean(self.electrodes.r2),
            "baseline_pcc_per_electrode_mean": _mean(self.electrodes_baseline.pcc),
            "baseline_r2_per_electrode_mean": _mean(self.electrodes_baseline.r2),
            "p_source": self.p_source,
        }
        if self.null is not None:
            null_pcc = self.null.pcc_across_electrodes.double()
            null_r2 = self.null.r2_across_electrodes.double()
            p_pcc, p_r2 = self.p_across_electrodes()
            s.update({
                "n_permutations": self.null.n_permutations,
                "null_pcc_across_electrodes_mean": _mean(null_pcc),
                "null_pcc_across_electrodes_95": float(torch.quantile(null_pcc, 0.95)),
                "null_r2_across_electrodes_95": float(torch.quantile(null_r2, 0.95)),
                "p_pcc_across_electrodes": p_pcc,
                "p_r2_across_electrodes": p_r2,
            })
        if self.electrode_q is not None:
            s["n_electrodes_fdr_05"] = int((self.electrode_q <= 0.05).sum())
        return s

    def null_per_electrode(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Mean and 95th percentile of each electrode's null PCC (None without a null)."""
        if self.null is None:
            return None
        e = self.null.pcc_per_electrode.double()
        return torch.nanmean(e, 0), torch.nanquantile(e, 0.95, dim=0)

    def verdict(self) -> str:
        """One line saying whether the model beats its chance level (the run's last log line)."""
        pcc, base = self.pcc_across_electrodes, _mean(self.trials_baseline.pcc)
        if self.null is not None:
            q95 = float(torch.quantile(self.null.pcc_across_electrodes.double(), 0.95))
            p, _ = self.p_across_electrodes()
            above = pcc > q95
            return (f"PCC across electrodes {pcc:.3f} {'>' if above else '<='} null 95th percentile "
                    f"{q95:.3f} (p={p:.3g}, {self.null.n_permutations} permutations; baseline "
                    f"{base:.3f}): {'above chance' if above else 'NOT above chance'}")
        above = pcc > base
        return (f"PCC across electrodes {pcc:.3f} {'>' if above else '<='} training-mean baseline "
                f"{base:.3f} (no permutation null: solver.n_permutations=0): "
                f"{'above the baseline' if above else 'NOT above the baseline'}")


def evaluate(*, pred: torch.Tensor, Y: torch.Tensor, baseline: torch.Tensor,
             null: NullDistribution | None = None, cv: str = "loo") -> Evaluation:
    """Score held-out predictions beside the training-mean baseline and the permutation null.

    Parameters
    ----------
    pred, Y, baseline : Tensor (trials, targets)
        Held-out predictions, true targets, held-out training-mean predictions.
    null : NullDistribution or None
        From :func:`null_distribution`; gives permutation p-values and per-electrode FDR.
    cv : {"loo", "kfold"}
        Without a null, K-fold predictions get parametric per-electrode p-values (Pearson t);
        leave-one-out ones get none (the score is biased, the t-test would be wrong).

    Returns
    -------
    Evaluation
    """
    if baseline.shape != Y.shape:
        raise ValueError(f"baseline must have Y's shape {tuple(Y.shape)}, got {tuple(baseline.shape)}")
    electrodes = Scores.per_electrode(pred, Y)
    p, source = None, None
    if null is not None:
        if null.pcc_per_electrode.shape[1:] != electrodes.pcc.shape:
            raise ValueError(f"null has {tuple(null.pcc_per_electrode.shape[1:])} electrodes, "
                             f"predictions {tuple(electrodes.pcc.shape)}")
        p, source = permutation_p_value(electrodes.pcc, null.pcc_per_electrode.double()), "permutation"
    elif cv == "kfold":
        p, source = pearson_t_p_value(electrodes.pcc, int(Y.shape[0])), "pearson_t"
    return Evaluation(
        trials=Scores.across_electrodes(pred, Y),
        trials_baseline=Scores.across_electrodes(baseline, Y),
        electrodes=electrodes,
        electrodes_baseline=Scores.per_electrode(baseline, Y),
        null=null, electrode_p=p, electrode_q=None if p is None else fdr_bh(p), p_source=source)


# --------------------------------------------------------------------------- grids

# grid.csv: these columns first, in this order (the report reads them by name).
GRID_COLUMNS = ["alpha", "l1_ratio", "pcc", "r2", "baseline_pcc", "baseline_r2", "pcc_per_electrode",
                "r2_per_electrode", "baseline_pcc_per_electrode", "n_not_converged"]
GRID_NULL_COLUMNS = ["null_pcc_95", "p_pcc"]


@dataclass(frozen=True)
class GridPoint:
    """One (alpha, l1_ratio) of a grid: its held-out scores and chance levels."""

    alpha: float
    l1_ratio: float
    evaluation: Evaluation
    n_not_converged: int


@dataclass(frozen=True)
class GridEvaluation:
    """Every grid point, and the run's main evaluation: the nested selection's (honest) score
    with a grid, the single point's without.

    Attributes
    ----------
    main : Evaluation
    points : list of GridPoint (alpha-major, as the solver's grid)
    nested : bool
        True when ``main`` scores the nested selection. Its null is, per permutation, the best
        grid point's score (:meth:`NullDistribution.best_of`): the inner search is not repeated
        on permuted data.
    """

    main: Evaluation
    points: list[GridPoint]
    nested: bool

    def table(self) -> tuple[list[str], list[list]]:
        """grid.csv: :data:`GRID_COLUMNS` (+ :data:`GRID_NULL_COLUMNS` with a null), one row per point."""
        with_null = self.points[0].evaluation.null is not None
        rows = []
        for pt in self.points:
            s = pt.evaluation.summary()
            row = [pt.alpha, pt.l1_ratio, s["pcc_across_electrodes"], s["r2_across_electrodes"],
                   s["baseline_pcc_across_electrodes"], s["baseline_r2_across_electrodes"],
                   s["pcc_per_electrode_mean"], s["r2_per_electrode_mean"],
                   s["baseline_pcc_per_electrode_mean"], pt.n_not_converged]
            if with_null:
                row += [s["null_pcc_across_electrodes_95"], s["p_pcc_across_electrodes"]]
            rows.append(row)
        return GRID_COLUMNS + (GRID_NULL_COLUMNS if with_null else []), rows

    def best_point(self) -> GridPoint:
        """The point with the highest PCC across electrodes, chosen in hindsight (optimistic)."""
        return max(self.points, key=lambda p: np.nan_to_num(p.evaluation.pcc_across_electrodes, nan=-np.inf))


def evaluate_grid(*, grid_pred: torch.Tensor, Y: torch.Tensor, baseline: torch.Tensor, grid: list,
                  n_not_converged: list[int] | None = None, null_pred: torch.Tensor | None = None,
                  permutations=None, nested_pred: torch.Tensor | None = None,
                  cv: str = "loo") -> GridEvaluation:
    """Evaluate every grid point of one batched fit, and the nested selection if given.

    Parameters
    ----------
    grid_pred : Tensor (grid, trials, targets)
        Held-out predictions of every grid point.
    Y, baseline : Tensor (trials, targets)
    grid : list of (alpha, l1_ratio)
    n_not_converged : list of int, one per grid point (None: zeros)
    null_pred : Tensor (n_permutations, grid, trials, targets) or None
        Held-out predictions of ``Y[permutations[j]]`` for every grid point.
    permutations : int array (n_permutations, trials) or None
    nested_pred : Tensor (trials, targets) or None
        Held-out predictions with the grid point chosen by inner CV in each outer fold; when
        given, it is the main evaluation.
    cv : {"loo", "kfold"}
    """
    if grid_pred.ndim != 3 or grid_pred.shape[0] != len(grid):
        raise ValueError(f"grid_pred must be ({len(grid)}, trials, targets), got {tuple(grid_pred.shape)}")
    if (null_pred is None) != (permutations is None):
        raise ValueError("null_pred and permutations go together")
    nulls = ([null_distribution(null_pred=null_pred[:, g], Y=Y, permutations=permutations)
              for g in range(len(grid))] if null_pred is not None else [None] * len(grid))
    counts = n_not_converged if n_not_converged is not None else [0] * len(grid)
    points = [GridPoint(float(a), float(l1), evaluate(pred=grid_pred[g], Y=Y, baseline=baseline,
                                                      null=nulls[g], cv=cv), int(counts[g]))
              for g, (a, l1) in enumerate(grid)]
    if nested_pred is None:
        if len(points) != 1:
            raise ValueError("a grid of several points needs nested_pred (the honest selection)")
        return GridEvaluation(points[0].evaluation, points, nested=False)
    best_null = NullDistribution.best_of(nulls) if null_pred is not None else None
    main = evaluate(pred=nested_pred, Y=Y, baseline=baseline, null=best_null, cv=cv)
    return GridEvaluation(main, points, nested=True)


def evaluate_fit(fit: "CrossValidatedFit", Y: torch.Tensor, cv: str) -> "GridEvaluation":
    """Scores of the run beside its chance levels, for every grid point and the nested
    selection (:func:`gpurecon.evaluation.evaluate_grid`)."""
    return evaluate_grid(grid_pred=fit.grid_pred, Y=Y, baseline=fit.baseline, grid=fit.grid,
                         n_not_converged=fit.n_not_converged, null_pred=fit.null_pred,
                         permutations=fit.permutations,
                         nested_pred=fit.pred if fit.nested is not None else None, cv=cv)

