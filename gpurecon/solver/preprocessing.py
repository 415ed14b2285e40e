"""Fold-wise preprocessing: transforms fitted on each training fold only, applied to all rows.

A transform here maps X (n, p) and training masks (F, n) to per-fold designs (F, n, k): row i
of fold f is row i of X transformed by the transform *fitted on fold f's training rows*. Held-out
rows are transformed, never used for fitting. The original study fitted its Wav2Vec2 PCA on all
trials before cross-validation (a leak); ``PCA(0.9)`` here is fitted inside each fold.

Folds may keep different numbers of PCA components; the designs are padded with zero columns
to the largest kept dimension (zero columns get zero ElasticNet coefficients).
"""

from __future__ import annotations

import torch

F64 = torch.float64
# Wide designs (p > n): components from the n x n Gram. Its rounding puts ~n*eps*var_max on
# directions of no variance, so those above this fraction of the first component count as rank.
GRAM_RANK_RTOL = 1e-10
# float64 elements per block of features when the components' sign rule is evaluated
SIGN_BLOCK_ELEMS = 2 ** 24


class FoldTransform:
    """Base class: ``fit_transform_folds(X, train) -> (F, n, k)`` with nothing fitted on
    held-out rows. ``n_features_`` (F,) records each fold's kept dimension after a call."""

    def fit_transform_folds(self, X: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))
        return f"{type(self).__name__}({args})"


def _as_folds(X: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Accept X (n, p) shared by all folds, or already per-fold (F, n, p)."""
    return X[None].expand(train.shape[0], *X.shape) if X.ndim == 2 else X


def _train_mean(Xf: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.einsum("fn,fnp->fp", m, Xf) / m.sum(1, keepdim=True)


class Standardize(FoldTransform):
    """Centre and scale each feature with the training rows' mean and std (ddof=0, like
    sklearn's StandardScaler; constant features keep scale 1)."""

    def fit_transform_folds(self, X, train):
        Xf = _as_folds(X, train).to(F64)
        m = train.to(F64)
        mu = _train_mean(Xf, m)
        var = torch.einsum("fn,fnp->fp", m, (Xf - mu[:, None]) ** 2) / m.sum(1, keepdim=True)
        sd = torch.sqrt(var)
        sd = torch.where(sd > 10 * torch.finfo(F64).eps * mu.abs().clamp_min(1.0), sd, torch.ones_like(sd))
        self.n_features_ = torch.full((train.shape[0],), Xf.shape[-1], dtype=torch.int64)
        return ((Xf - mu[:, None]) / sd[:, None]).to(X.dtype)


class PCA(FoldTransform):
    """Principal components of each training fold, keeping a variance fraction.

    Parameters
    ----------
    variance : float in (0, 1] or int
        A fraction keeps the fewest components whose explained variance ratio exceeds it
        (sklearn's ``PCA(n_components=0.9)`` rule); an int keeps that many components.
    whiten : bool
        Scale components to unit variance (over the training rows, ddof=1 as sklearn).
    """

    def __init__(self, variance: float = 0.9, whiten: bool = False):
        if isinstance(variance, bool) or not isinstance(variance, (int, float)):
            raise ValueError(f"variance must be a fraction in (0, 1] or a positive int, got {variance!r}")
        if isinstance(variance, float) and not 0.0 < variance <= 1.0:
            raise ValueError(f"variance must be a fraction in (0, 1] or a positive int, got {variance!r}")
        if isinstance(variance, int) and variance < 1:
            raise ValueError(f"variance must be a fraction in (0, 1] or a positive int, got {variance!r}")
        self.variance = variance
        self.whiten = whiten

    def fit_transform_folds(self, X, train):
        if X.ndim == 2 and X.shape[1] > X.shape[0]:
            return self._from_gram(X, train)
        Xf = _as_folds(X, train).to(F64)
        F, n, p = Xf.shape
        m = train.to(F64)
        mu = _train_mean(Xf, m)
        centred = (Xf - mu[:, None]) * m[..., None]       # held-out rows zeroed: they fit nothing
        _, svals, vh = torch.linalg.svd(centred, full_matrices=False)       # (F, r), (F, r, p)
        # sklearn's sign convention (svd_flip on V): largest |loading| of each component positive
        big = vh.abs().argmax(-1, keepdim=True)
        vh = vh * torch.sign(vh.gather(-1, big))
        var = svals ** 2
        ratio = var / var.sum(-1, keepdim=True).clamp_min(torch.finfo(F64).tiny)
        keep = self._keep(ratio, var, min(n, p), 1e-20)
        k = int(keep.max())
        proj = torch.einsum("fnp,fkp->fnk", Xf - mu[:, None], vh[:, :k])
        return self._finish(proj, svals[:, :k], ratio, keep, m, X.dtype)

    def _from_gram(self, X, train):
        """The same components from each fold's ``n x n`` Gram of centred training rows (X wider
        than tall, e.g. Wav2Vec2's flattened frames: 100 trials x 101,376 features). Nothing of
        size folds x n x p is formed: the direct SVD held three such float64 copies (25 GB at the
        study's shape, leave-one-out) and was killed for memory on a 24 GB machine.

        With ``Z`` centred on all rows, ``R = Z Z^T`` and fold ``f``'s training mean ``mu``:
        ``C[i, j] = (z_i - mu).(z_j - mu) = R_ij - a_i - a_j + c`` (``a = R m / n_f``,
        ``c = m^T a / n_f``). Its training block is ``U diag(s^2) U^T`` (eigh), the projection of
        any row ``i`` on component ``k`` is ``C[i, train] U[train, k] / s_k``, and the component
        itself, ``V_k = Z_train^T U_k / s_k`` (needed only for sklearn's sign rule), is built a
        block of features at a time."""
        Z = X.to(F64)
        Z = Z - Z.mean(0)           # fold-centred quantities do not depend on a global shift
        n, p = Z.shape
        m = train.to(F64)
        n_f = m.sum(1)
        R = Z @ Z.T
        a = (m @ R) / n_f[:, None]                                                   # (F, n)
        c = (a * m).sum(1) / n_f                                                      # (F,)
        C = R[None] - a[:, :, None] - a[:, None, :] + c[:, None, None]               # (F, n, n)
        var, U = torch.linalg.eigh(C * m[:, :, None] * m[:, None, :])
        var, U = var.flip(-1).clamp_min(0.0), U.flip(-1)                              # descending
        ratio = var / var.sum(-1, keepdim=True).clamp_min(torch.finfo(F64).tiny)
        # rounding in the Gram leaves ~n*eps*var_max on null directions (the SVD: ~eps^2)
        keep = self._keep(ratio, var, n, GRAM_RANK_RTOL)
        k = int(keep.max())
        svals = var[:, :k].sqrt()
        live = torch.arange(k, device=X.device)[None, :] < keep[:, None]
        s_safe = torch.where(live, svals, torch.ones_like(svals))
        uk = U[..., :k] * m[..., None] / s_safe[:, None, :]                          # (F, n, k)
        proj = torch.bmm(C, uk)                                                       # (F, n, k)
        # sklearn's svd_flip on V: each component's largest |loading| positive. The loadings
        # are Z_train^T U_k / s_k: U_k is orthogonal to the ones vector on the training rows
        # (the centred Gram's null direction), so the training mean drops out. One pass over
        # each block of features (min and max together) decides the sign.
        best = torch.full((m.shape[0], k), -1.0, dtype=F64, device=X.device)
        sign = torch.ones_like(best)
        step = max(1, SIGN_BLOCK_ELEMS // max(1, m.shape[0] * k))
        for lo in range(0, p, step):
            vb = torch.einsum("nb,fnk->fbk", Z[:, lo:lo + step], uk)                 # (F, b, k)
            low, high = torch.aminmax(vb, dim=1)
            big = torch.maximum(high, -low)
            higher = big > best
            best = torch.where(higher, big, best)
            sign = torch.where(higher, torch.where(high >= -low, 1.0, -1.0), sign)
        proj = proj * sign[:, None, :]
        return self._finish(proj, svals, ratio, keep, m, X.dtype)

    def _keep(self, ratio, var, most, rank_rtol):
        """Components kept per fold (F,): the variance rule, at most ``most``, never beyond the
        fold's numerical rank (variance above ``rank_rtol`` x the first)."""
        if isinstance(self.variance, float):
            # sklearn: searchsorted(cumsum, variance, side="right") + 1
            keep = (torch.cumsum(ratio, -1) <= self.variance).sum(-1) + 1
        else:
            keep = torch.full((ratio.shape[0],), self.variance, dtype=torch.int64, device=ratio.device)
        keep = torch.clamp(keep, max=most)
        return torch.minimum(keep, torch.clamp((var > var[:, :1] * rank_rtol).sum(-1), min=1))

    def _finish(self, proj, svals, ratio, keep, m, dtype):
        """Whitening, zero padding beyond each fold's kept components, the fitted attributes."""
        k = proj.shape[-1]
        if self.whiten:
            std = svals / torch.sqrt((m.sum(1, keepdim=True) - 1).clamp_min(1.0))
            proj = proj / torch.where(std > 0, std, torch.ones_like(std))[:, None, :]
        cols = torch.arange(k, device=proj.device)[None, :] < keep[:, None]
        self.n_features_ = keep.cpu()
        self.explained_variance_ratio_ = ratio[:, :k].cpu()
        return (proj * cols[:, None, :]).to(dtype)


class Pipeline(FoldTransform):
    """Fold-wise transforms applied in order (each fitted on the previous one's training rows)."""

    def __init__(self, *steps: FoldTransform):
        if not steps or not all(isinstance(s, FoldTransform) for s in steps):
            raise ValueError(f"Pipeline needs FoldTransform steps, got {steps!r}")
        self.steps = steps

    def fit_transform_folds(self, X, train):
        out = X
        for step in self.steps:
            out = step.fit_transform_folds(out, train)
        self.n_features_ = self.steps[-1].n_features_
        return out


def make_preprocess(spec) -> FoldTransform | None:
    """A transform from a plain value: None, a FoldTransform, "standardize", or
    "pca:<fraction>" (e.g. "pca:0.9"), or a list of these (applied in order)."""
    if spec is None or isinstance(spec, FoldTransform):
        return spec
    if isinstance(spec, (list, tuple)):
        steps = [make_preprocess(s) for s in spec]
        return Pipeline(*[s for s in steps if s is not None]) if steps else None
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name in ("none", ""):
            return None
        if name in ("standardize", "standardise", "zscore"):
            return Standardize()
        if name.startswith("pca"):
            _, _, frac = name.partition(":")
            try:
                value = float(frac) if frac else 0.9
            except ValueError:
                value = None
            if value is not None:
                return PCA(int(value) if value > 1 else value)
    raise ValueError(f"preprocess must be None, 'standardize', 'pca:<fraction>' or a FoldTransform, got {spec!r}")
