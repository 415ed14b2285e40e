"""Batched ElasticNet on the GPU (or CPU): scikit-learn's problem and stopping rule, for every
(fold, alpha, l1_ratio, target) at once.

- :func:`enet_path_fit` (functional core, :mod:`.elasticnet`): coefficients of all problems.
- :mod:`.cv`: folds (:func:`leave_one_out`, :func:`kfold`, :func:`group_folds`), held-out
  predictions for a whole grid (:func:`cross_val_predict`), nested selection
  (:func:`nested_cross_val_predict`), permutation nulls (:func:`permutations`).
- :mod:`.preprocessing`: fold-wise transforms (:class:`Standardize`, :class:`PCA`).
- :class:`ElasticNet` (:mod:`.estimator`): a scikit-learn compatible estimator.
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
