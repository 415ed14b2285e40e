"""The solver stage as the app runs it: held-out ElasticNet predictions of every trial
(one alpha / l1_ratio, or a grid with a nested selection), the training-mean baseline and
the permutation null, with the bookkeeping summary.json records (:class:`CrossValidatedFit`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError

log = logging.getLogger("gpurecon")


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




# Inner CV of the nested selection within each outer training set (deterministic splits).
NESTED_INNER_CV = "kfold:5"


@dataclass
class NestedSelection:
    """The grid point chosen by inner CV on each outer training fold, per target."""

    inner_cv: str
    choice: torch.Tensor               # (outer folds, targets) int64, index into the grid

    def summary(self, grid: list) -> dict:
        """The ``nested`` block of summary.json (without its scores)."""
        counts = torch.bincount(self.choice.flatten().cpu(), minlength=len(grid))
        per_fold = [torch.bincount(row.cpu(), minlength=len(grid)).argmax().item() for row in self.choice]
        return {
            "inner_cv": self.inner_cv, "select": "per_target",
            "n_outer_folds": int(self.choice.shape[0]), "n_targets": int(self.choice.shape[1]),
            # how often each grid point was chosen, over (outer fold, target) pairs
            "choice_counts": [{"alpha": a, "l1_ratio": l1, "count": int(c)}
                              for (a, l1), c in zip(grid, counts.tolist())],
            # per outer fold, the grid point chosen for most targets
            "alpha_per_fold": [grid[g][0] for g in per_fold],
            "l1_ratio_per_fold": [grid[g][1] for g in per_fold],
        }


@dataclass
class CrossValidatedFit:
    """What the solver stage hands to evaluation (tensors on the run's device).

    Attributes
    ----------
    pred : Tensor (trials, targets)
        The run's held-out predictions: the single grid point's, or with a grid the nested
        selection's (honest: each outer fold's point chosen without its held-out trials).
    baseline : Tensor (trials, targets)
        Held-out mean of each fold's training trials.
    grid : list of (alpha, l1_ratio)
    grid_pred : Tensor (grid, trials, targets)
    null_pred : Tensor (permutations, grid, trials, targets) or None
    permutations : int array (permutations, trials) or None
    n_not_converged : list of int, per grid point (its null problems included)
    nested : NestedSelection or None (only with a grid)
    meta : dict, the ``solver`` block of summary.json
    """

    pred: torch.Tensor
    baseline: torch.Tensor
    grid: list
    grid_pred: torch.Tensor
    null_pred: torch.Tensor | None
    permutations: np.ndarray | None
    n_not_converged: list[int]
    nested: NestedSelection | None
    meta: dict


def _plain(value: Any) -> Any:
    """A config value as given (ListConfig -> list) for summary.json."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def fit_cross_validated(emb, Y: torch.Tensor, solver_cfg: DictConfig, device: torch.device,
                        seed: int, progress=None, devices: int = 1) -> CrossValidatedFit:
    """Held-out ElasticNet predictions for every trial, the mean-of-training baseline and,
    with ``solver.n_permutations``, the permutation null (fitted as extra targets).

    With a list in ``solver.alpha`` / ``solver.l1_ratio`` every grid point is fitted in one
    batched pass, and a nested selection (inner CV inside each outer training fold) gives
    the run's predictions."""
    from ..config import n_permutations_for, solver_grid
    from .cv import kfold, leave_one_out, permutations

    alphas, l1_ratios, is_grid = solver_grid(solver_cfg)
    n = Y.shape[0]
    if solver_cfg.cv == "loo":
        folds = leave_one_out(n)
    elif solver_cfg.cv == "kfold":
        folds = kfold(n, solver_cfg.n_splits, shuffle=True, seed=seed)
    else:
        raise ConfigError(f"solver.cv must be 'loo' or 'kfold', got {solver_cfg.cv!r}")
    if solver_cfg.dtype not in ("float32", "float64"):
        raise ConfigError(f"solver.dtype must be 'float32' or 'float64', got {solver_cfg.dtype!r}")
    n_perm = n_permutations_for(solver_cfg.n_permutations, device.type)
    perms = permutations(n, n_perm, seed) if n_perm else None
    # Wav2Vec2 frames are reduced by a PCA fitted inside each training fold (the study fitted
    # it on all trials, which leaks the held-out trial into its own features).
    preprocess = (f"pca:{emb.meta['pca_variance']}" if emb.meta.get("fold_preprocessing") == "pca"
                  else None)
    budget = (None if solver_cfg.memory_budget_gb is None
              else int(solver_cfg.memory_budget_gb * 2**30))
    common = dict(folds=folds, preprocess=preprocess, fit_intercept=solver_cfg.fit_intercept,
                  tol=solver_cfg.tol, max_iter=solver_cfg.max_iter, device=device,
                  memory_budget=budget, dtype=getattr(torch, solver_cfg.dtype),
                  strategy=str(solver_cfg.get("strategy", "auto")))
    if n_perm:
        log.info("permutation null: %d permutations (solver.n_permutations=%s; 0 turns it off), "
                 "fitted as extra targets: %d x the problems of the fit itself",
                 n_perm, solver_cfg.n_permutations, n_perm + 1)
    extra = {"progress": progress} if devices == 1 else {}
    try:
        nested = None
        if is_grid:
            log.info("grid of %d alpha x %d l1_ratio: nested selection (inner %s in each outer fold)",
                     len(alphas), len(l1_ratios), NESTED_INNER_CV)
            # the outer fits of every grid point carry the null (permuted copies as extra
            # targets); the inner search, the outer fits and the null are sharded over `devices`
            nested = _solver("nested_cross_val_predict", devices, device)(
                emb.X, Y, alphas, l1_ratios, inner=NESTED_INNER_CV, select="per_target", permutations=perms,
                **{k: v for k, v in common.items() if k != "device"}, **extra)
            res = nested.outer
        else:
            solve = _solver("cross_val_predict", devices, device)
            res = solve(emb.X, Y, alphas=alphas, l1_ratios=l1_ratios, permutations=perms,
                        **{k: v for k, v in common.items() if k != "device"}, **extra)
    except ValueError as err:  # bad solver settings: one message naming the argument
        raise ConfigError(f"solver: {err}") from None
    train = res.train_masks
    G = len(res.grid)
    not_conv = (~res.converged).sum((0, 2)).tolist() if res.converged.numel() else [0] * G
    meta = {
        "alpha": _plain(solver_cfg.alpha), "l1_ratio": _plain(solver_cfg.l1_ratio),
        "grid": [list(g) for g in res.grid], "cv": solver_cfg.cv,
        "n_folds": int(train.shape[0]), "fold_preprocessing": preprocess,
        "n_features_per_fold": (None if res.n_features is None
                                else [int(v) for v in res.n_features.tolist()]),
        "n_not_converged": res.n_not_converged, "worst_gap_ratio": res.worst_gap_ratio,
        "n_problems": int(res.converged.numel()), "dtype": solver_cfg.dtype, "strategy": common["strategy"],
        "tol": solver_cfg.tol, "max_iter": solver_cfg.max_iter,
        "n_permutations": n_perm, "n_permutations_setting": _plain(solver_cfg.n_permutations),
        "permutation_seed": seed if n_perm else None, "seconds": res.seconds,
    }
    if res.n_not_converged:
        log.warning("solver: %d of %d problems did not reach the tolerance (worst gap %.3g x tol)",
                    res.n_not_converged, res.converged.numel(), res.worst_gap_ratio)
    grid_pred = res.predictions if res.predictions.ndim == 3 else res.predictions[..., None]
    pred = grid_pred[0]
    if nested is not None:
        # each trial from the point its outer fold chose: the same numbers as grid_pred's
        held_out_fold = (~train).to(torch.int8).argmax(0).to(grid_pred.device)
        pick = nested.choice.to(grid_pred.device)[held_out_fold]                # (trials, targets)
        pred = grid_pred.gather(0, pick[None]).squeeze(0)
    return CrossValidatedFit(
        pred=pred,
        baseline=training_mean_predictions(Y.to(torch.float64), train.to(Y.device)),
        grid=[tuple(g) for g in res.grid], grid_pred=grid_pred,
        null_pred=res.null_predictions, permutations=perms,
        n_not_converged=[int(v) for v in not_conv],
        nested=None if nested is None else NestedSelection(NESTED_INNER_CV, nested.choice),
        meta=meta)


def _solver(name: str, devices: int, device: torch.device):
    """``cross_val_predict`` or ``nested_cross_val_predict`` on ``device``, or its twin in
    :mod:`gpurecon.parallel` sharded over ``devices`` Fabric ranks."""
    from functools import partial

    if devices == 1:
        from .. import solver   # the package's names: a test may replace them
        return partial(getattr(solver, name), device=device)
    from .. import parallel   # the solver's twin sharded over Fabric ranks
    return partial(getattr(parallel, f"sharded_{name}"), devices=devices, device=device)

