"""A scikit-learn compatible ElasticNet on the batched solver (numpy or torch in, any device).

It solves scikit-learn's ``ElasticNet`` problem with its stopping rule, all targets of a
multi-output ``y`` in one batch. Fitted attributes are numpy arrays with sklearn's shapes;
``predict`` returns numpy for numpy input and a torch tensor (on ``device``) for torch input.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .elasticnet import enet_path_fit


class ElasticNet(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """Linear regression with combined L1 and L2 priors, fitted by the batched GPU solver.

    Minimises, per target, ``1/(2n) ||y - Xw - b||^2 + alpha*l1_ratio*||w||_1
    + 0.5*alpha*(1-l1_ratio)*||w||^2`` and stops on scikit-learn's duality-gap rule.

    Parameters
    ----------
    alpha : float, default 1.0
        Penalty strength (>= 0).
    l1_ratio : float, default 0.5
        Mix of L1 (1.0) and L2 (0.0) penalties.
    fit_intercept : bool, default True
    tol : float, default 1e-4
        Stop when the duality gap is at most ``tol * ||y - mean(y)||^2``.
    max_iter : int, default 1000
        Active-set rounds per target at most (each an exact solve and a KKT check).
    device : str or torch.device, default "cpu"
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    dtype : {None, "float32", "float64"}, default None
        Compute dtype; None keeps float32 input in float32 and uses float64 otherwise.
    memory_budget : int or None
        Bytes the solver may use (None: from the device's free memory).

    Attributes
    ----------
    coef_ : ndarray (n_features,) or (n_targets, n_features)
    intercept_ : float or ndarray (n_targets,)
    n_iter_ : int or list of int
    dual_gap_ : float or ndarray (n_targets,)
    n_features_in_ : int
    """

    def __init__(self, alpha=1.0, l1_ratio=0.5, fit_intercept=True, tol=1e-4, max_iter=1000,
                 device="cpu", dtype=None, memory_budget=None):
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.dtype = dtype
        self.memory_budget = memory_budget

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _check_params(self):
        if not isinstance(self.alpha, numbers.Real) or not np.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        if not isinstance(self.l1_ratio, numbers.Real) or not 0 <= self.l1_ratio <= 1:
            raise ValueError(f"l1_ratio must lie in [0, 1], got {self.l1_ratio!r}")
        if self.dtype not in (None, "float32", "float64", torch.float32, torch.float64):
            raise ValueError(f"dtype must be None, 'float32' or 'float64', got {self.dtype!r}")

    def _torch_dtype(self):
        return {"float32": torch.float32, "float64": torch.float64}.get(self.dtype, self.dtype)

    def fit(self, X, y):
        """Fit on X (n_samples, n_features) and y (n_samples,) or (n_samples, n_targets)."""
        self._check_params()
        if isinstance(X, torch.Tensor) or isinstance(y, torch.Tensor):
            X, y = _as_tensor("X", X), _as_tensor("y", y)
            if X.ndim != 2:
                raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {tuple(X.shape)}")
            self.n_features_in_ = int(X.shape[1])
        else:
            X, y = validate_data(self, X, y, multi_output=True, y_numeric=True,
                                 dtype=[np.float64, np.float32], ensure_min_samples=2)
        res = enet_path_fit(X, y, [float(self.alpha)], [float(self.l1_ratio)], fit_intercept=self.fit_intercept,
                            tol=float(self.tol), max_iter=int(self.max_iter), device=self.device,
                            memory_budget=self.memory_budget, dtype=self._torch_dtype())
        coef = res.coef[0, 0].cpu().numpy()                            # (T, p)
        intercept = res.intercept[0, 0].cpu().numpy().astype(coef.dtype)
        gaps = res.dual_gap[0, 0].cpu().numpy().astype(coef.dtype)
        iters = res.n_iter[0, 0].cpu().numpy()
        # sklearn's shapes: one target -> 1-D coef_, scalar n_iter_ and dual_gap_; intercept_
        # is a float for 1-D y, an array for 2-D y, 0.0 without intercept
        if coef.shape[0] == 1:
            self.coef_, self.dual_gap_, self.n_iter_ = coef[0], float(gaps[0]), int(iters[0])
        else:
            self.coef_, self.dual_gap_, self.n_iter_ = coef, gaps, [int(i) for i in iters]
        if not self.fit_intercept:
            self.intercept_ = 0.0
        else:
            self.intercept_ = intercept if y.ndim == 2 else float(intercept[0])
        return self

    def predict(self, X):
        """Predictions (n_samples,) or (n_samples, n_targets); torch in -> torch out."""
        check_is_fitted(self)
        if isinstance(X, torch.Tensor):
            if X.ndim != 2 or X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {X.shape[-1] if X.ndim else 0} features, but {type(self).__name__} "
                                 f"is expecting {self.n_features_in_} features as input")
            coef = torch.as_tensor(self.coef_, device=X.device)
            Xt = X.to(coef.dtype)
            out = (Xt @ coef if coef.ndim == 1 else Xt @ coef.T) + torch.as_tensor(
                self.intercept_, dtype=coef.dtype, device=X.device)
            return out
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return X @ np.asarray(self.coef_).T + self.intercept_


def _as_tensor(name, value) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if t.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    return t
