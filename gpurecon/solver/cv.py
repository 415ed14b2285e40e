"""Cross-validation on the batched solver: folds, held-out predictions for a whole grid in one
pass, nested selection of (alpha, l1_ratio), and permutation nulls as extra targets.

Folds are boolean training masks (n_folds, n_samples). :func:`cross_val_predict` fits every
(fold, grid point, target) problem in one batched solve and returns the held-out predictions
(grid, samples, targets); with ``permutations`` it also fits row-permuted copies of Y against
the same X (a permutation null costs one bigger batch, not one run per permutation). With
``preprocess`` (e.g. ``PCA(0.9)``) each fold gets its own design fitted on its training rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import elasticnet as en
from . import working_set
from .full_set import solve_full_sets
from .preprocessing import make_preprocess

F64 = torch.float64


# --------------------------------------------------------------------------- folds


def leave_one_out(n: int) -> np.ndarray:
    """Training masks of leave-one-out CV: fold i trains on every sample but i, (n, n) bool."""
    n = _check_count("n", n, 2)
    return ~np.eye(n, dtype=bool)


def kfold(n: int, k: int, shuffle: bool = False, seed: int = 0) -> np.ndarray:
    """Training masks of K-fold CV, (k, n) bool, with sklearn's KFold fold sizes (the first
    ``n % k`` folds hold one sample more); ``shuffle`` permutes samples with ``seed`` first."""
    n = _check_count("n", n, 2)
    k = _check_count("k", k, 2)
    if k > n:
        raise ValueError(f"k must be at most the number of samples n={n}, got k={k}")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    masks = np.ones((k, n), dtype=bool)
    start = 0
    for f, size in enumerate(sizes):
        masks[f, order[start:start + size]] = False
        start += size
    return masks


def group_folds(groups) -> np.ndarray:
    """Leave-one-group-out training masks, (n_groups, n) bool, groups in sorted order."""
    g = np.asarray(groups)
    if g.ndim != 1 or g.size < 2:
        raise ValueError(f"groups must be a 1-D array with one label per sample, got shape {g.shape}")
    labels = np.unique(g)
    if labels.size < 2:
        raise ValueError(f"groups needs at least 2 distinct labels, got {labels.tolist()}")
    return np.stack([g != label for label in labels])


def permutations(n: int, n_permutations: int, seed: int = 0) -> np.ndarray:
    """(n_permutations, n) int64 row permutations from ``numpy.random.default_rng(seed)``."""
    n = _check_count("n", n, 2)
    n_permutations = _check_count("n_permutations", n_permutations, 1)
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n) for _ in range(n_permutations)]).astype(np.int64)


def permuted_targets(Y, n_permutations: int, seed: int = 0):
    """Row-permuted copies of Y, (n_permutations, n, ...) , and the permutations used."""
    Yt = torch.as_tensor(Y) if not isinstance(Y, torch.Tensor) else Y
    perms = permutations(Yt.shape[0], n_permutations, seed)
    return Yt[torch.as_tensor(perms, device=Yt.device)], perms


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def held_out_fold(train: torch.Tensor) -> torch.Tensor:
    """Index of the fold that holds out each sample; ValueError unless each is held out once."""
    held = (~train).sum(0)
    if bool((held != 1).any()):
        bad = torch.nonzero(held != 1).squeeze(1)[:10].tolist()
        raise ValueError("folds must hold out every sample exactly once for held-out predictions "
                         f"(samples {bad} are held out {held[held != 1][:10].tolist()} times)")
    return (~train).to(torch.int8).argmax(0)


# --------------------------------------------------------------------------- results


@dataclass
class CVResult:
    """Held-out predictions for every grid point (torch tensors on the solver's device).

    Attributes
    ----------
    predictions : Tensor (grid, samples, targets), or (grid, samples) for 1-D Y
    grid : list of (alpha, l1_ratio)
    null_predictions : Tensor (permutations, grid, samples, targets) or None
        Held-out predictions of the row-permuted targets ``Y[permutations[j]]``.
    permutations : ndarray (permutations, samples) or None
    converged : Tensor (folds, grid, targets [+ permutations*targets]) bool
    gap_ratio : Tensor like ``converged``, float32: final duality gap / tolerance
    n_iter : Tensor like ``converged``, int32: active-set rounds (1: closed form)
    train_masks : Tensor (folds, samples) bool
    n_features : Tensor (folds,) or None: each fold's kept dimension after preprocessing
    seconds : float
    solved_columns : Tensor (targets [+ permutations*targets],) bool or None
        With ``part=``: which columns (the targets, then permutation j's copy of target t at
        ``T + j*T + t``) this call solved; the others hold zeros. None: every column.
    certified : Tensor like ``converged``, bool, or None
        The fold's coefficients are the exact optimum (KKT verified on every feature in
        float64; see :mod:`gpurecon.solver.certify`).
    """

    predictions: torch.Tensor
    grid: list
    null_predictions: torch.Tensor | None
    permutations: np.ndarray | None
    converged: torch.Tensor
    gap_ratio: torch.Tensor
    n_iter: torch.Tensor
    train_masks: torch.Tensor
    n_features: torch.Tensor | None
    seconds: float
    solved_columns: torch.Tensor | None = None
    certified: torch.Tensor | None = None

    @property
    def n_not_converged(self) -> int:
        return int((~self.converged).sum())

    @property
    def worst_gap_ratio(self) -> float:
        return float(self.gap_ratio.max()) if self.gap_ratio.numel() else 0.0


# --------------------------------------------------------------------------- engine runs


def _with_permutations(Y: torch.Tensor, perms) -> tuple[torch.Tensor, int]:
    if perms is None:
        return Y, 0
    p = torch.as_tensor(np.asarray(perms) if not isinstance(perms, torch.Tensor) else perms)
    n = Y.shape[0]
    if p.ndim != 2 or p.shape[1] != n or p.is_floating_point() or \
            not bool((torch.sort(p, 1).values == torch.arange(n, device=p.device)).all()):
        raise ValueError(f"permutations must be an (n_permutations, {n}) array of row permutations")
    p = p.to(Y.device).long()
    # columns: the real targets, then permutation j's copy of target t at T + j*T + t
    permuted = Y[p].permute(1, 0, 2).reshape(n, -1)
    return torch.cat([Y, permuted], 1), p.shape[0]


def fold_predictions(problem: en.Problem, sol: working_set.Solution, targets: torch.Tensor) -> torch.Tensor:
    """Predictions of every fold's model for every sample, (K, F, n), original units."""
    n = problem.design.n
    xw = problem.design.X[:n][:, sol.ws].permute(1, 0, 2)                  # (K, n, s)
    z = torch.bmm(sol.coef, xw.transpose(1, 2))                             # (K, F, n)
    _, _, t_idx = en._group_params(problem, targets)
    folds = problem.folds
    if problem.fit_intercept:
        train = folds.train
        z = z - (z * train).sum(-1, keepdim=True) / folds.n_train.to(z.dtype)[:, None]
        ybar = (train @ problem.Y[:n]) / folds.n_train.to(z.dtype)[:, None]  # (F, T)
        z = z + ybar.T[t_idx][:, :, None]
    return z.to(F64) + problem.y_mean[t_idx][:, None, None]


def part_of(chunks: list, part) -> list:
    """The chunks of ``part=(k, n_parts)``: the k-th of n contiguous, near-equal runs of chunks
    (all of them for ``part=None``).

    The chunks are planned from the whole problem (its columns and the memory budget), never
    from the part, and each chunk is solved on its own: a column's result is the same bits
    whichever part solves it (on one device type with the same threads per process)."""
    if part is None:
        return chunks
    k, n_parts = part
    if isinstance(n_parts, bool) or not isinstance(n_parts, (int, np.integer)) or n_parts < 1 \
            or isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < n_parts:
        raise ValueError(f"part must be (k, n_parts) with 0 <= k < n_parts, got {part!r}")
    return [chunks[i] for i in np.array_split(np.arange(len(chunks)), int(n_parts))[int(k)]]


def _run_shared(problem, T_all, memory_budget, warm_start, consume, part=None):
    """Solve chunk by chunk; ``consume(sol, targets)`` receives each chunk's solution."""
    budget = memory_budget or en.default_memory_budget(problem.Y.device)
    with en.full_precision_matmul(problem.Y.device):
        for targets in part_of(en.target_chunks(problem, budget, T_all), part):
            consume(en.solve_chunk(problem, targets, warm_start, memory_budget=budget), targets)


def _stats_tensors(F, G, T, dev):
    return (torch.zeros((F, G, T), dtype=torch.bool, device=dev), torch.zeros((F, G, T), dtype=torch.bool, device=dev),
            torch.zeros((F, G, T), dtype=torch.float32, device=dev),
            torch.zeros((F, G, T), dtype=torch.int32, device=dev))


def cross_val_predict(X, Y, alphas=1.0, l1_ratios=0.5, *, folds=None, preprocess=None, permutations=None,
                      fit_intercept=True, tol=1e-4, max_iter=1000, device=None, memory_budget=None,
                      dtype=None, warm_start=True, progress=None, strategy="auto", part=None) -> CVResult:
    """Held-out predictions of ElasticNet for every grid point in one batched pass.

    Parameters
    ----------
    X : array or Tensor (n_samples, n_features)
    Y : array or Tensor (n_samples,) or (n_samples, n_targets)
    alphas, l1_ratios : float or sequence
        The grid is their product, alpha-major (``result.grid``).
    folds : bool array (n_folds, n_samples) or None
        Training masks; every sample must be held out exactly once. None: leave-one-out.
    preprocess : FoldTransform, str or None
        Fitted inside each training fold (``"standardize"``, ``"pca:0.9"``, ``PCA(0.9)``...).
    permutations : int array (n_permutations, n_samples) or None
        Row permutations of Y fitted as extra targets (see :func:`permutations`).
    fit_intercept, tol, max_iter, device, memory_budget, dtype, warm_start, strategy
        As in :func:`gpurecon.solver.enet_path_fit`.
    progress : callable, optional
        ``progress(done, total)`` in targets (permuted copies included), once per chunk.
    part : (k, n_parts) or None
        Solve only part k of n_parts of the work (see :func:`part_of`): how ranks share one
        fit (:mod:`gpurecon.parallel`). ``result.solved_columns`` says which columns it holds.

    Returns
    -------
    CVResult
    """
    t0 = time.perf_counter()
    part_of([], part)  # a bad part fails before any work
    transform = make_preprocess(preprocess)
    Xn = X if isinstance(X, torch.Tensor) else np.asarray(X)
    Yn = Y if isinstance(Y, torch.Tensor) else np.asarray(Y)
    n = Xn.shape[0] if getattr(Xn, "ndim", 0) >= 1 else 0
    masks = leave_one_out(n) if folds is None and n >= 2 else folds
    problem, one_d = en.prepare(Xn, Yn, alphas, l1_ratios, train_masks=masks, fit_intercept=fit_intercept, tol=tol,
                                max_iter=max_iter, device=device, dtype=dtype, strategy=strategy)
    train = problem.folds.train > 0
    held = held_out_fold(train)
    n, T = problem.design.n, problem.Y.shape[1]
    Y_orig = (problem.Y[:n].to(F64) + problem.y_mean).to(problem.Y.dtype)
    Y_all, P = _with_permutations(Y_orig, permutations)
    G, F, dev = len(problem.grid), train.shape[0], problem.Y.device
    T_all = Y_all.shape[1]
    pred = torch.zeros((G, n, T_all), dtype=F64, device=dev)
    conv, cert, ratio, iters = _stats_tensors(F, G, T_all, dev)
    solved = torch.zeros(T_all, dtype=torch.bool, device=dev)
    n_features = None
    done = [0]
    if progress is not None:   # the total is known before the first chunk: a heartbeat can say it
        progress(0, T_all)
    if transform is None:
        if P:
            problem = _replace_targets(problem, Y_all)

        def consume(sol, targets):
            z = fold_predictions(problem, sol, targets)                                 # (K, F, n)
            rows = torch.arange(n, device=dev)
            heldout = z[:, held, rows].reshape(G, targets.numel(), n)                    # (G, Tc, n)
            pred[:, :, targets] = heldout.transpose(1, 2)
            _store_stats(conv, ratio, iters, sol, targets, G, cert)
            solved[targets] = True
            if progress is not None:
                done[0] += targets.numel()
                progress(done[0], T_all)

        _run_shared(problem, T_all, memory_budget, warm_start, consume, part)
    else:
        with en.full_precision_matmul(dev):
            Xf = transform.fit_transform_folds(problem.design.X[:n], train)
            n_features = getattr(transform, "n_features_", None)
            _run_full_sets(problem, Xf, Y_all, train, memory_budget, pred, conv, ratio, iters, held, solved,
                           progress=progress, part=part, cert=cert)
    predictions = pred[:, :, :T].to(problem.Y.dtype)
    null = pred[:, :, T:].reshape(G, n, P, T).permute(2, 0, 1, 3).to(problem.Y.dtype) if P else None
    if one_d:
        predictions = predictions[..., 0]
        null = null[..., 0] if null is not None else None
    mine, mine_ratio = (conv, ratio) if part is None else (conv[:, :, solved], ratio[:, :, solved])
    if mine.numel():    # one host read for both
        missed, worst = torch.stack([(~mine).sum().to(F64), mine_ratio.max().to(F64)]).tolist()
        en.warn_not_converged(int(missed), worst, mine.numel())
    perms = None if permutations is None else np.asarray(torch.as_tensor(permutations).cpu())
    return CVResult(predictions, problem.grid, null, perms, conv, ratio, iters, train, n_features,
                    time.perf_counter() - t0, None if part is None else solved, cert)


def _replace_targets(problem: en.Problem, Y_all: torch.Tensor) -> en.Problem:
    """The same problem with more target columns (permuted copies), centred like the first."""
    n = Y_all.shape[0]
    y_mean = Y_all.to(F64).mean(0) if problem.fit_intercept else torch.zeros(Y_all.shape[1], dtype=F64, device=Y_all.device)
    Ye = torch.zeros((n + 1, Y_all.shape[1]), dtype=problem.Y.dtype, device=Y_all.device)
    Ye[:n] = (Y_all.to(F64) - y_mean).to(problem.Y.dtype)
    return en.Problem(problem.design, Ye, y_mean, problem.x_mean, problem.folds, problem.full, problem.grid,
                      problem.tol, problem.max_iter, problem.fit_intercept)


def _store_stats(conv, ratio, iters, sol, targets, G, cert=None):
    K, F = sol.gap.shape
    Tc = targets.numel()

    def put(dst, src):
        dst[:, :, targets] = src.reshape(G, Tc, F).permute(2, 0, 1).to(dst.dtype)

    put(conv, sol.converged)
    if cert is not None:
        put(cert, sol.certified)
    put(ratio, sol.gap / torch.clamp(sol.tol, min=torch.finfo(F64).tiny))
    put(iters, sol.n_iter)


def _full_set_chunk(Xf, G, T, memory_budget) -> int:
    """Targets per call of the full-set engine within the memory budget. Per (fold, grid point,
    target) problem: vectors of k and n (FISTA, predictions) and the exact sign-pattern solve's
    k x k systems (about six float64 arrays alive at once: the system, its jittered copy, the
    Cholesky factor, masks and products). Leaving the k x k term out let Wav2Vec2's study run
    (100 folds, k = 84 components, 381 targets) reach 10 GB on a 4 GB budget, and the 100
    permutations of the CPU default be killed for memory."""
    F, n, k = Xf.shape
    budget = memory_budget or en.default_memory_budget(Xf.device)
    per_target = Xf.element_size() * F * G * (16 * k + 4 * n) + 8 * F * G * (6 * k + 2 * n + 6 * k * k)
    return max(1, min(T, int(budget // max(per_target, 1))))


def _run_full_sets(problem, Xf, Y_all, train, memory_budget, pred, conv, ratio, iters, held, solved,
                   progress=None, part=None, cert=None):
    """Per-fold designs (fold-wise preprocessing): chunks of targets through full_set."""
    F, n, k = Xf.shape
    G, T_all, dev = len(problem.grid), Y_all.shape[1], Y_all.device
    alpha = torch.tensor([g[0] for g in problem.grid], dtype=F64, device=dev)
    l1 = torch.tensor([g[1] for g in problem.grid], dtype=F64, device=dev)
    size = _full_set_chunk(Xf, G, T_all, memory_budget)
    rows = torch.arange(n, device=dev)
    chunks = [torch.arange(lo, min(T_all, lo + size), device=dev) for lo in range(0, T_all, size)]
    for targets in part_of(chunks, part):
        sol = solve_full_sets(Xf, Y_all[:, targets], train, alpha=alpha, l1_ratio=l1, tol=problem.tol,
                                 max_iter=problem.max_iter, center=problem.fit_intercept)
        # (F, G, Tc, n) predictions of every fold's model for every sample
        z = torch.einsum("fgtk,fnk->fgtn", sol.coef.to(F64), (Xf - sol.x_mean[:, None, :]).to(F64))
        z = z + sol.y_mean.to(F64)[:, None, :, None]
        pred[:, :, targets] = z[held, :, :, rows].permute(1, 0, 2)                      # (G, n, Tc)
        conv[:, :, targets] = sol.converged
        if cert is not None:
            cert[:, :, targets] = sol.certified
        ratio[:, :, targets] = (sol.gap / torch.clamp(sol.tol, min=torch.finfo(F64).tiny)).float()
        iters[:, :, targets] = sol.n_iter.to(torch.int32)
        solved[targets] = True
        if progress is not None:
            progress(int(targets[-1]) + 1, T_all)


# --------------------------------------------------------------------------- nested selection


@dataclass
class NestedCVResult:
    """Held-out predictions with (alpha, l1_ratio) chosen by inner CV inside each outer fold.

    Attributes
    ----------
    predictions : Tensor (samples, targets), or (samples,) for 1-D Y
    choice : Tensor (outer folds, targets) int64: index into ``grid`` chosen for each outer
        fold (and target; identical across targets with ``select="shared"``)
    alpha, l1_ratio : Tensor (outer folds, targets) float64: the chosen values
    inner_loss : Tensor (outer folds, grid, targets) float64: inner-CV mean squared error
    grid : list of (alpha, l1_ratio)
    outer : CVResult: the outer held-out predictions of every grid point
    """

    predictions: torch.Tensor
    choice: torch.Tensor
    alpha: torch.Tensor
    l1_ratio: torch.Tensor
    inner_loss: torch.Tensor
    grid: list
    outer: CVResult


def _inner_splitter(inner) -> Callable[[int], np.ndarray]:
    if callable(inner):
        return inner
    if isinstance(inner, str):
        name = inner.strip().lower()
        if name == "loo":
            return leave_one_out
        if name.startswith("kfold"):
            _, _, k = name.partition(":")
            try:
                k = int(k) if k else 5
            except ValueError:
                k = None
            if k is not None:
                return lambda n: kfold(n, min(k, n))
    raise ValueError(f"inner must be 'loo', 'kfold:<k>' or a callable n -> training masks, got {inner!r}")


def nested_cross_val_predict(X, Y, alphas, l1_ratios, *, folds=None, inner="kfold:5", select="per_target",
                             preprocess=None, fit_intercept=True, tol=1e-4, max_iter=1000, device=None,
                             memory_budget=None, dtype=None, strategy="auto", permutations=None,
                             progress=None) -> NestedCVResult:
    """Outer held-out predictions with the grid point chosen by inner CV within each outer fold.

    All inner folds of all outer folds are one batch of training masks over the same X (a
    sample outside an outer fold's training set is outside all its inner folds), so the whole
    inner search is one batched solve; the outer fits of every grid point are another.

    Parameters
    ----------
    X, Y, alphas, l1_ratios, folds, preprocess, fit_intercept, tol, max_iter, device,
    memory_budget, dtype, strategy
        As in :func:`cross_val_predict` (``folds``: the outer folds, default leave-one-out).
    inner : str or callable
        Inner CV within each outer training set: ``"kfold:<k>"`` (default 5), ``"loo"``, or a
        callable ``n_train -> (n_inner_folds, n_train)`` training masks.
    select : {"per_target", "shared"}
        Choose per target (lowest inner MSE), or one grid point for all targets (lowest mean
        over targets of inner MSE divided by the target's variance, i.e. highest mean R2).
    permutations : int array (n_permutations, n_samples) or None
        Row permutations of Y: their held-out predictions at every grid point come with
        ``result.outer`` (``null_predictions``), fitted in the outer pass (a permutation null
        of the grid; the inner search is the real targets').
    progress : callable, optional
        As in :func:`cross_val_predict`, for the outer pass.
    """
    loss, outer = nested_parts(X, Y, alphas, l1_ratios, folds=folds, inner=inner, select=select,
                               preprocess=preprocess, fit_intercept=fit_intercept, tol=tol, max_iter=max_iter,
                               device=device, memory_budget=memory_budget, dtype=dtype, strategy=strategy,
                               permutations=permutations, progress=progress)
    return select_grid_points(loss, outer, Y, select)


def nested_parts(X, Y, alphas, l1_ratios, *, folds=None, inner="kfold:5", select="per_target", preprocess=None,
                 fit_intercept=True, tol=1e-4, max_iter=1000, device=None, memory_budget=None, dtype=None,
                 strategy="auto", permutations=None, part=None, progress=None):
    """The two solves of :func:`nested_cross_val_predict`: inner losses (outer folds, grid,
    targets) and the outer :class:`CVResult`. With ``part=(k, n)`` each solves only its part's
    chunks (see :func:`part_of`); the loss's ``solved`` targets are then returned too:
    ``(loss, solved, outer)``."""
    if select not in ("per_target", "shared"):
        raise ValueError(f"select must be 'per_target' or 'shared', got {select!r}")
    part_of([], part)
    split = _inner_splitter(inner)
    Xn = X if isinstance(X, torch.Tensor) else np.asarray(X)
    n = Xn.shape[0]
    outer_masks = torch.as_tensor(leave_one_out(n) if folds is None else np.asarray(folds)
                                  if not isinstance(folds, torch.Tensor) else folds).bool().cpu()
    if outer_masks.ndim != 2 or outer_masks.shape[1] != n:
        raise ValueError(f"folds must have shape (n_folds, {n}), got {tuple(outer_masks.shape)}")
    held_out_fold(outer_masks)
    inner_masks, owner = [], []
    for o, mask in enumerate(outer_masks):
        rows = torch.nonzero(mask).squeeze(1)
        sub = torch.as_tensor(np.asarray(split(int(rows.numel())))).bool()
        if sub.ndim != 2 or sub.shape[1] != rows.numel():
            raise ValueError(f"inner must give (n_folds, {rows.numel()}) training masks, got {tuple(sub.shape)}")
        full = torch.zeros((sub.shape[0], n), dtype=torch.bool)
        full[:, rows] = sub
        inner_masks.append(full)
        owner += [o] * sub.shape[0]
    inner_masks = torch.cat(inner_masks)
    owner = torch.as_tensor(owner)
    loss, solved = _inner_losses(Xn, Y, alphas, l1_ratios, inner_masks=inner_masks, outer_masks=outer_masks,
                                 owner=owner, preprocess=preprocess, fit_intercept=fit_intercept, tol=tol,
                                 max_iter=max_iter, device=device, memory_budget=memory_budget, dtype=dtype,
                                 strategy=strategy, part=part)                            # (F_o, G, T)
    outer = cross_val_predict(X, Y, alphas, l1_ratios, folds=outer_masks, preprocess=preprocess,
                              fit_intercept=fit_intercept, tol=tol, max_iter=max_iter, device=device,
                              memory_budget=memory_budget, dtype=dtype, strategy=strategy,
                              permutations=permutations, part=part, progress=progress)
    return (loss, outer) if part is None else (loss, solved, outer)


def select_grid_points(loss: torch.Tensor, outer: CVResult, Y, select: str) -> NestedCVResult:
    """Each outer fold's grid point (per target or shared) from the inner losses, and the held-out
    predictions it gives (the last step of :func:`nested_cross_val_predict`)."""
    outer_masks = outer.train_masks
    preds = outer.predictions if outer.predictions.ndim == 3 else outer.predictions[..., None]
    dev = preds.device
    loss = loss.to(dev)
    if select == "per_target":
        choice = loss.argmin(1)                                                       # (F_o, T)
    else:
        y = torch.as_tensor(np.asarray(Y) if not isinstance(Y, torch.Tensor) else Y).to(dev, F64)
        var = (y if y.ndim == 2 else y[:, None]).var(0, unbiased=False).clamp_min(torch.finfo(F64).tiny)
        choice = (loss / var).mean(-1).argmin(1)[:, None].expand(-1, loss.shape[-1])
    held = held_out_fold(outer_masks.to(dev))
    pick = choice[held]                                                               # (n, T)
    predictions = preds.gather(0, pick[None]).squeeze(0)
    grid = torch.tensor(outer.grid, dtype=F64, device=dev)
    if outer.predictions.ndim == 2:
        predictions = predictions[..., 0]
    return NestedCVResult(predictions, choice, grid[choice, 0], grid[choice, 1], loss, outer.grid, outer)


def inner_losses(X, Y, alphas, l1_ratios, *, inner_masks, outer_masks, owner, preprocess, fit_intercept, tol,
                 max_iter, device, memory_budget, dtype, strategy="auto") -> torch.Tensor:
    """Mean squared error of each grid point over each outer fold's inner held-out samples,
    (outer folds, grid, targets)."""
    return _inner_losses(X, Y, alphas, l1_ratios, inner_masks=inner_masks, outer_masks=outer_masks, owner=owner,
                         preprocess=preprocess, fit_intercept=fit_intercept, tol=tol, max_iter=max_iter,
                         device=device, memory_budget=memory_budget, dtype=dtype, strategy=strategy)[0]


def _inner_losses(X, Y, alphas, l1_ratios, *, inner_masks, outer_masks, owner, preprocess, fit_intercept, tol,
                  max_iter, device, memory_budget, dtype, strategy="auto", part=None):
    """:func:`inner_losses` of ``part``'s chunks (all: None) and the targets they hold, (T,) bool."""
    transform = make_preprocess(preprocess)
    problem, _ = en.prepare(X, Y, alphas, l1_ratios, train_masks=inner_masks, fit_intercept=fit_intercept, tol=tol,
                            max_iter=max_iter, device=device, dtype=dtype, strategy=strategy)
    dev, n, T, G = problem.Y.device, problem.design.n, problem.Y.shape[1], len(problem.grid)
    train = problem.folds.train > 0
    # a sample is scored by an inner fold when it is in the outer training set but not the inner one
    scored = outer_masks.to(dev)[owner.to(dev)] & ~train                               # (F_i, n)
    owner = owner.to(dev)
    F_o = outer_masks.shape[0]
    sse = torch.zeros((F_o, G, T), dtype=F64, device=dev)
    Y64 = problem.Y[:n].to(F64) + problem.y_mean
    # one-hot sums instead of index_add_: atomics would make CUDA results order-dependent
    onehot = torch.nn.functional.one_hot(owner, F_o).to(F64)                          # (F_i, F_o)
    solved = torch.zeros(T, dtype=torch.bool, device=dev)
    missed = [0, 0.0, 0]
    if transform is None:
        def consume(sol, targets):
            missed[0] += int((~sol.converged).sum())
            missed[1] = max(missed[1], float((sol.gap / sol.tol.clamp_min(torch.finfo(F64).tiny)).max()))
            missed[2] += sol.converged.numel()
            z = fold_predictions(problem, sol, targets)                                 # (K, F_i, n)
            _, _, t_idx = en._group_params(problem, targets)
            err = ((z - Y64.T[t_idx][:, None, :]) ** 2 * scored).sum(-1)                # (K, F_i)
            per_outer = err @ onehot                                                     # (K, F_o)
            sse[:, :, targets] = per_outer.reshape(G, targets.numel(), F_o).permute(2, 0, 1)
            solved[targets] = True

        _run_shared(problem, T, memory_budget, True, consume, part)
        en.warn_not_converged(missed[0], missed[1], missed[2])
    elif part_of([0], part):   # every target solved by the first part (in memory-sized chunks)
        solved[:] = True
        Xf = transform.fit_transform_folds(problem.design.X[:n], train)
        alpha = torch.tensor([g[0] for g in problem.grid], dtype=F64, device=dev)
        l1 = torch.tensor([g[1] for g in problem.grid], dtype=F64, device=dev)
        Y_orig = Y64.to(problem.Y.dtype)
        size = _full_set_chunk(Xf, len(problem.grid), T, memory_budget)
        missed, total = 0, 0
        for lo in range(0, T, size):
            cols = slice(lo, min(T, lo + size))
            sol = solve_full_sets(Xf, Y_orig[:, cols], train, alpha=alpha, l1_ratio=l1, tol=problem.tol,
                                  max_iter=problem.max_iter, center=problem.fit_intercept)
            z = torch.einsum("fgtk,fnk->fgtn", sol.coef.to(F64), (Xf - sol.x_mean[:, None, :]).to(F64))
            z = z + sol.y_mean.to(F64)[:, None, :, None]
            err = ((z - Y64.T[None, None, cols]) ** 2 * scored[:, None, None, :]).sum(-1)   # (F_i, G, Tc)
            sse[:, :, cols] += torch.einsum("igt,io->ogt", err, onehot)
            missed, total = missed + int((~sol.converged).sum()), total + sol.converged.numel()
        en.warn_not_converged(missed, 0.0, total)
    counts = scored.sum(1).to(F64) @ onehot
    return sse / counts.clamp_min(1.0)[:, None, None], solved
