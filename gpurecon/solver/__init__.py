"""Batched ElasticNet on the GPU (or CPU): scikit-learn's problem and stopping rule, for every
(fold, alpha, l1_ratio, target) at once.

- :func:`enet_path_fit` (functional core, :mod:`.elasticnet`): coefficients of all problems.
- :mod:`.cv`: folds (:func:`leave_one_out`, :func:`kfold`, :func:`group_folds`), held-out
  predictions for a whole grid (:func:`cross_val_predict`), nested selection
  (:func:`nested_cross_val_predict`), permutation nulls (:func:`permutations`).
- :mod:`.preprocessing`: fold-wise transforms (:class:`Standardize`, :class:`PCA`).
- :class:`ElasticNet` (:mod:`.estimator`): a scikit-learn compatible estimator.

Every answer leaves through :mod:`.certify`: the exact solution of its sign pattern, KKT
verified on all features in float64 (``certified`` in the results says where it held).

Engine modules: :mod:`.certify` (active-set rounds to the certified optimum, for one X shared
by every fold), :mod:`.dual_newton` (its step for rounds that stop descending), :mod:`.newton`
(its shared-inverse PDAS rounds), :mod:`.ridge` (the closed form where there is no l1 term),
:mod:`.working_set` (designs, folds, solutions in working-set form, warm starts from the
full-data fit), :mod:`.full_set` (every feature always in: small per-fold designs, e.g. PCA
fitted per fold, solved by :mod:`.fista` and :mod:`.coordinate_descent`, then certified),
:mod:`.gap` (sklearn's duality gap), :mod:`.options` (shared tuning constants).

Axis letters used throughout the engine (tensor shapes in comments and docstrings):

- ``K``: groups, one per (grid point, target) pair; a group's problems share a working set.
- ``F``: folds (training masks); ``m`` is the problems of a group inside an inner solver
  (all ``F`` folds, or the unfinished ones packed first).
- ``s``: features of a working set (padded with the index ``p``, a zero column).
- ``T``: targets (columns of Y); ``G``: grid points (alpha, l1_ratio), alpha-major.
- ``n``, ``p``: samples and features of X; ``r``: downdate rows of a fold's Hessian
  (held-out rows and the fold-centring term).
"""

from .cv import (CVResult, NestedCVResult, cross_val_predict, group_folds, kfold, leave_one_out,
                 nested_cross_val_predict, permutations, permuted_targets)
from .elasticnet import ConvergenceWarning, EnetResult, enet_path_fit
from .estimator import ElasticNet
from .preprocessing import PCA, FoldTransform, Pipeline, Standardize, make_preprocess

__all__ = [
    "CVResult", "ConvergenceWarning", "ElasticNet", "EnetResult", "FoldTransform", "NestedCVResult", "PCA",
    "Pipeline", "Standardize", "cross_val_predict", "enet_path_fit", "group_folds", "kfold", "leave_one_out",
    "make_preprocess", "nested_cross_val_predict", "permutations", "permuted_targets",
]
