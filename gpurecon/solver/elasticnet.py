"""Batched ElasticNet: every (fold, alpha, l1_ratio, target) problem of one X at once.

:func:`enet_path_fit` solves exactly scikit-learn's problem for each training fold, grid point
and target,

    1/(2 n_f) ||y - X w - b||^2 + alpha*l1_ratio*||w||_1 + 0.5*alpha*(1-l1_ratio)*||w||^2,

and stops each problem with scikit-learn's rule: duality gap (sklearn's formula, float64)
``<= tol * ||y_f - mean(y_f)||^2`` (uncentred when ``fit_intercept=False``). Folds are boolean
training masks over the rows of one shared X: fold centring is done with per-problem means
(rank-one corrections), never with per-fold copies of X.

How (``solve_chunk``): every answer is *certified* - the exact solution of its sign pattern,
with the KKT conditions verified on all features in float64 (:mod:`.certify`, which derives
it). A duality gap within ``tol`` bounds the training objective only; held-out rows far from
the training rows (heavy-tailed features, outlier trials) magnify what it leaves. So:

1. the full-data fit of each (grid point, target) by active-set rounds from zero (the set grows
   by the strongest KKT violators; each round one sign-pattern solve per problem and one check
   over all features);
2. every fold from that fit's pattern by the same rounds (folds differ from the full data by a
   few rows: one or two rounds for leave-one-out);
3. a problem the rounds leave uncertified (``max_iter`` rounds spent; none in the test
   suite at the default ``max_iter``) keeps the lower of its start and its rounds' last point,
   judged by sklearn's gap (recomputed in float64), and is reported (``certified`` False).

Problems without an l1 term (``l1_ratio == 0``: ridge; ``alpha == 0``: least squares, the
minimum-norm solution) have no sign pattern: :mod:`.ridge` solves them in closed form, one
factorisation per fold for every target and alpha, and checks their stationarity on every
feature.

Targets are processed in chunks sized to a memory budget.

:func:`enet_path_fit` returns every coefficient (folds x grid x targets x features); for
many targets use :func:`gpurecon.solver.cross_val_predict`, which keeps only predictions.

Problems that do not converge within ``max_iter`` are reported in the result and in one
:class:`ConvergenceWarning` (count and worst gap), never silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning as _BaseConvergenceWarning

from ..device import resolve_device
from . import working_set
from .certify import alpha_max, centred_targets, certify, dual_start
from .ridge import solve_plain


log = logging.getLogger("gpurecon")

# Active-set rounds the folds get from the full-data fit's sign pattern, and a cold fit (the
# full-data fit, a single fit) from zero, before a problem is left uncertified (and judged by
# sklearn's gap). Leave-one-out folds need 1-3; k-fold folds at small alpha, whose supports
# fill the training size (|A| ~ n), converge slowly but surely (heavy-tailed 10-fold at 0.01 x
# alpha_max: 38 rounds). ``max_iter`` caps both.
WARM_ROUNDS = 1500
COLD_ROUNDS = 1500
# Cold starts walk down the path alpha_max * PATH_RATIO**k to the target alpha, PATH_ROUNDS
# active-set rounds at each step.
PATH_RATIO = 0.3
# ... for groups whose alpha is below PATH_BELOW x their alpha_max.
PATH_BELOW = 0.05
PATH_ROUNDS = 12
# On a CPU a cold start's problem with a ridge term takes the dual Newton step in its third
# round where more than this many features (a round's intake, certify.MIN_ADD), and most of
# those at zero (certify.DUAL_KEEP), still violate the KKT conditions after its second (from
# zero, active-set rounds need ~log(s / 10) / log(1.3) rounds for a support of s). None: never.
DUAL_VIOLATORS = 10

# float64 elements a sub-batch of systems may hold at least (256 MiB), else 1/16 of the budget.
MIN_ELEMS = 2 ** 25
# A memory budget from which "auto" batches like a GPU (see STRATEGIES).
ONE_BATCH_BUDGET = 16 * 2 ** 30

# The CPU's default memory budget (bytes): fixed, so that chunking, and with it rounding, is the
# same from run to run (see default_memory_budget).
CPU_BUDGET = 4 * 2 ** 30


class ConvergenceWarning(_BaseConvergenceWarning):
    """Some ElasticNet problems stopped at ``max_iter`` with a gap above the tolerance (a
    subclass of sklearn's, so one filter silences both)."""


@dataclass
class EnetResult:
    """Solutions of a batch of ElasticNet problems (torch tensors on the solver's device).

    Attributes
    ----------
    coef : Tensor (folds, grid, targets, features)
    intercept : Tensor (folds, grid, targets)
    n_iter : Tensor (folds, grid, targets) int64
        Active-set rounds (see :mod:`.certify`); 1 for the closed form (no l1 term).
    dual_gap : Tensor (folds, grid, targets) float64
        sklearn's ``dual_gap_``: the final duality gap divided by the training size.
    tol : Tensor (folds, grid, targets) float64
        The stopping threshold in the same units as ``dual_gap``.
    converged : Tensor (folds, grid, targets) bool
        Certified, or sklearn's rule met (gap recomputed in float64 for the returned coef).
    grid : list of (alpha, l1_ratio)
        Grid points in the order of the grid axis (alpha-major).
    certified : Tensor (folds, grid, targets) bool
        The returned coefficients are the exact optimum (the solution of their sign pattern,
        KKT verified on every feature in float64; see :mod:`.certify`; for problems without
        an l1 term, stationarity verified on every feature).
    """

    coef: torch.Tensor
    intercept: torch.Tensor
    n_iter: torch.Tensor
    dual_gap: torch.Tensor
    tol: torch.Tensor
    converged: torch.Tensor
    grid: list
    certified: torch.Tensor | None = None

    @property
    def n_not_converged(self) -> int:
        return int((~self.converged).sum())

    @property
    def worst_gap_ratio(self) -> float:
        """Largest ``dual_gap / tol`` (<= 1 when every problem converged)."""
        ratio = self.dual_gap / torch.clamp(self.tol, min=torch.finfo(torch.float64).tiny)
        return float(ratio.max()) if ratio.numel() else 0.0


# --------------------------------------------------------------------------- validation


def as_2d_float(name: str, value, dtype, device, ndim_ok=(2,)) -> torch.Tensor:
    """A float tensor on ``device``; ValueError naming ``name`` if of the wrong rank or not numeric
    (finiteness: :func:`check_finite`)."""
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(_writable(np.asarray(value)))
    if t.ndim not in ndim_ok:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim_ok))} dimensions, got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                 torch.uint8, torch.bool)):
        raise ValueError(f"{name} must be numeric, got dtype {t.dtype}")
    return t.to(device=device, dtype=dtype)


def check_finite(**named: torch.Tensor) -> None:
    """ValueError naming the first of ``named`` that holds NaN or infinite values (one host
    read for all of them)."""
    finite = torch.stack([torch.isfinite(t).all() for t in named.values()]).tolist()
    for name, ok in zip(named, finite):
        if not ok:
            raise ValueError(f"{name} contains NaN or infinite values")


def _writable(a: np.ndarray) -> np.ndarray:
    """torch refuses to wrap read-only arrays (e.g. memmaps) without a warning: copy those."""
    return a if a.flags.writeable else a.copy()


def default_dtype(X) -> torch.dtype:
    """float32 for float32/float16 input, float64 otherwise (as sklearn keeps float32)."""
    if isinstance(X, torch.Tensor):
        return torch.float32 if X.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64
    return torch.float32 if np.asarray(X).dtype in (np.float32, np.float16) else torch.float64


def make_grid(alphas, l1_ratios) -> list[tuple[float, float]]:
    """The (alpha, l1_ratio) grid, alpha-major; ValueError on bad values or an empty grid."""
    a = np.atleast_1d(np.asarray(alphas, dtype=np.float64)).ravel()
    r = np.atleast_1d(np.asarray(l1_ratios, dtype=np.float64)).ravel()
    if a.size == 0 or r.size == 0:
        raise ValueError(f"the grid is empty: alphas has {a.size} values and l1_ratios {r.size}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"alphas must be finite and >= 0, got {a.tolist()}")
    if not np.all(np.isfinite(r)) or np.any((r < 0) | (r > 1)):
        raise ValueError(f"l1_ratios must lie in [0, 1], got {r.tolist()}")
    return [(float(x), float(y)) for x, y in itertools.product(a, r)]


def check_train_masks(train_masks, n: int, device) -> torch.Tensor:
    """Boolean (folds, n) masks; ValueError unless every fold trains on at least 2 rows."""
    if train_masks is None:
        return torch.ones((1, n), dtype=torch.bool, device=device)
    m = train_masks if isinstance(train_masks, torch.Tensor) else torch.as_tensor(_writable(np.asarray(train_masks)))
    if m.ndim == 1:
        m = m[None]
    if m.ndim != 2 or m.shape[1] != n:
        raise ValueError(f"train_masks must have shape (n_folds, {n}) (one column per sample), "
                         f"got {tuple(m.shape)}")
    if m.dtype != torch.bool:
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("train_masks must be boolean (True on a fold's training samples)")
        m = m.bool()
    m = m.to(device)
    sizes = m.sum(1)
    if m.shape[0] == 0:
        raise ValueError("train_masks has no folds")
    if bool((sizes < 2).any()):
        bad = torch.nonzero(sizes < 2).squeeze(1).tolist()
        raise ValueError(f"every training fold needs at least 2 samples; train_masks folds {bad[:10]} "
                         f"have {sizes[sizes < 2].tolist()[:10]}")
    return m


def default_memory_budget(device: torch.device) -> int:
    """Bytes the solver may use when the caller sets none: a fixed amount per device kind.

    The budget decides how targets are chunked and batched, and batches change rounding, so a
    budget that followed the free memory of the moment would make two runs of the same inputs
    on the same device differ (at ~1e-9). It is therefore fixed: ``CPU_BUDGET`` on a CPU, half
    the GPU's total memory (rounded down to whole GiB) on CUDA; only when less than twice that
    is free does it shrink, with a warning that this run's rounding may differ.
    """
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        want = max(2 ** 30, int(total * 0.5) // 2 ** 30 * 2 ** 30)
    else:
        try:
            import psutil  # optional
            free = psutil.virtual_memory().available
        except ImportError:
            free = _meminfo_available()
        want = CPU_BUDGET
    if free * 0.5 >= want:
        return want
    got = max(int(free * 0.5), 2 ** 28)
    log.warning("solver: only %.1f GiB free on %s, memory budget %.1f GiB instead of the default "
                "%.1f GiB: targets are chunked differently, so results may differ from other runs "
                "at rounding level (set solver.memory_budget_gb to fix it)",
                free / 2 ** 30, device, got / 2 ** 30, want / 2 ** 30)
    return got


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2 ** 30


# --------------------------------------------------------------------------- the solver


@dataclass
class Problem:
    """Validated inputs of one batched fit, on the device (internal)."""

    design: working_set.Design
    Y: torch.Tensor            # (n+1, T) centred (when fitting intercepts), zero last row
    y_mean: torch.Tensor       # (T,) float64 global means (0 without intercept)
    x_mean: torch.Tensor       # (p,) float64 global means
    folds: working_set.Folds
    full: working_set.Folds    # the all-rows fold (warm starts)
    grid: list
    tol: float
    max_iter: int
    fit_intercept: bool
    strategy: str = "auto"     # see STRATEGIES


# The engine's batch shape: "cpu" batches each round's sign-pattern solves by active-set width
# (padding costs flops); "gpu" solves them in one batch (launches and host syncs cost more than
# padding on a GPU); "auto" is "gpu" on CUDA or at a GPU-sized memory budget (ONE_BATCH_BUDGET),
# else "cpu". Both give the same certified answers.
STRATEGIES = ("auto", "cpu", "gpu")


def prepare(X, Y, alphas, l1_ratios, *, train_masks=None, fit_intercept=True, tol=1e-4, max_iter=1000,
            device=None, dtype=None, strategy="auto") -> tuple[Problem, bool]:
    """Validate and move everything to the device; returns the problem and whether Y was 1-D."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}")
    dev = resolve_device(device) if device is not None else (
        X.device if isinstance(X, torch.Tensor) else resolve_device("auto"))
    dt = dtype or default_dtype(X)
    if dt not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dt}")
    Xt = as_2d_float("X", X, dt, dev)
    Yt = as_2d_float("Y", Y, dt, dev, ndim_ok=(1, 2))
    check_finite(X=Xt, Y=Yt)
    one_d = Yt.ndim == 1
    if one_d:
        Yt = Yt[:, None]
    n, p = Xt.shape
    if Yt.shape[0] != n:
        raise ValueError(f"X and Y must have the same number of rows (samples), got {n} and {Yt.shape[0]}")
    if n < 2:
        raise ValueError(f"X needs at least 2 samples, got {n}")
    if p < 1 or Yt.shape[1] < 1:
        raise ValueError(f"X needs at least 1 feature and Y at least 1 target, got X {tuple(Xt.shape)}, "
                         f"Y {tuple(Yt.shape)}")
    grid = make_grid(alphas, l1_ratios)
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    masks = check_train_masks(train_masks, n, dev)
    x_mean = Xt.to(torch.float64).mean(0) if fit_intercept else torch.zeros(p, dtype=torch.float64, device=dev)
    y_mean = Yt.to(torch.float64).mean(0) if fit_intercept else torch.zeros(Yt.shape[1], dtype=torch.float64, device=dev)
    design = working_set.make_design(Xt, fit_intercept)
    Ye = torch.zeros((n + 1, Yt.shape[1]), dtype=dt, device=dev)
    Ye[:n] = (Yt.to(torch.float64) - y_mean).to(dt)
    folds = working_set.make_folds(masks, fit_intercept, dt)
    full = working_set.make_folds(torch.ones((1, n), dtype=torch.bool, device=dev), fit_intercept, dt, widest=0)
    return Problem(design, Ye, y_mean, x_mean, folds, full, grid, float(tol), int(max_iter),
                   bool(fit_intercept), strategy), one_d


def _group_params(problem: Problem, targets: torch.Tensor):
    """Per group (grid-major, then target) alpha, l1_ratio and target column."""
    dev = problem.Y.device
    ga = torch.tensor([g[0] for g in problem.grid], dtype=torch.float64, device=dev)
    gl = torch.tensor([g[1] for g in problem.grid], dtype=torch.float64, device=dev)
    T = targets.numel()
    return ga.repeat_interleave(T), gl.repeat_interleave(T), targets.repeat(len(problem.grid))


def solve_chunk(problem: Problem, targets: torch.Tensor, warm_start=True,
                memory_budget: int | None = None) -> working_set.Solution:
    """Solve every (grid point, target in ``targets``, fold) problem (working-set form).

    Groups are ordered grid-major: group ``g * len(targets) + i`` is grid point ``g`` and
    target ``targets[i]``. ``memory_budget`` (bytes) sizes the sub-batches.
    """
    alpha, l1, t_idx = _group_params(problem, targets)
    all_rows = problem.folds.all_rows
    # sub-batches may hold 1/16 of the budget (float64 elements), at least 256 MiB
    elems = max(MIN_ELEMS, int((memory_budget or 0) // (16 * 8)))
    # launch-bound devices (a GPU, or a GPU-sized budget) solve each round in one batch
    one_batch = problem.strategy == "gpu" or (problem.strategy == "auto" and (
        problem.Y.device.type == "cuda" or (memory_budget or 0) >= ONE_BATCH_BUDGET))
    # groups without an l1 term (ridge, least squares) have no sign pattern: one exact solve
    plain = alpha * l1 == 0
    n_plain = int(plain.sum())                       # one host read for both index sets
    lasso = torch.nonzero_static(~plain, size=plain.numel() - n_plain).squeeze(1)
    ridge = torch.nonzero_static(plain, size=n_plain).squeeze(1)

    def finish(folds, ws, coef, score, rounds):
        """Active-set rounds from (ws, coef) (None: from zero) for the groups with an l1 term;
        the closed form for the others."""
        start = _start(problem, folds, t_idx, ws, coef, score)
        if n_plain:
            exact = _plain(problem, folds, _groups(start, ridge), t_idx[ridge], alpha[ridge], l1[ridge], elems)
            if n_plain == t_idx.numel():
                return exact
            whole, start = start, _groups(start, lasso)
        rounds = min(rounds, problem.max_iter)      # max_iter bounds the rounds
        params = dict(alpha=alpha[lasso], l1_ratio=l1[lasso], t_idx=t_idx[lasso])
        if ws is None:
            # groups with a ridge term start from the dual's Newton solution (its pattern is
            # usually the optimum's) where a cold start would take many rounds (each round lets
            # ~30% more features in): far below their alpha_max (instead of the path), and on
            # the GPU path (a round is ~500 launches, a Newton step ~40). Lasso groups far below
            # their alpha_max walk down the path first; the others start from zero at their own
            # alpha, and on a CPU those whose support the first rounds show to be wide take the
            # Newton step then (certify's dual_after: many violators at zero are no sign of a
            # wide support - outlier trials have hundreds and a support of ~5)
            amax = alpha_max(problem.design, problem.Y, folds, params["l1_ratio"], params["t_idx"])
            far = params["alpha"] < PATH_BELOW * amax
            from_dual = (params["l1_ratio"] < 1) & (far | one_batch)
            far = far & ~from_dual
            n_dual, n_far = (int(v) for v in torch.stack([from_dual.sum(), far.sum()]).tolist())   # one read
            dual = torch.nonzero_static(from_dual, size=n_dual).squeeze(1)
            if n_dual:
                started = dual_start(problem.design, problem.Y, folds, _groups(start, dual), alpha=params["alpha"][dual],
                                     l1_ratio=params["l1_ratio"][dual], t_idx=params["t_idx"][dual], max_elems=elems,
                                     one_batch=one_batch)
                start = working_set.merge_groups(start, started, dual, problem.design.p)
            far = torch.nonzero_static(far, size=n_far).squeeze(1)
            if n_far:
                walked = _path(problem, folds, _groups(start, far), params["alpha"][far], params["l1_ratio"][far],
                               params["t_idx"][far], amax[far], elems, one_batch)
                start = working_set.merge_groups(start, walked, far, problem.design.p)
        sol = certify(problem.design, problem.Y, folds, start, **params, max_elems=elems, max_rounds=rounds,
                      one_batch=one_batch, dual_after=None if ws is not None or one_batch else DUAL_VIOLATORS)
        if not n_plain:
            return sol
        p = problem.design.p
        return working_set.merge_groups(working_set.merge_groups(whole, sol, lasso, p), exact, ridge, p)

    if all_rows or not warm_start:
        return finish(problem.folds, None, None, None, COLD_ROUNDS)
    # 1) the full-data fit, exact: its sign pattern is every fold's first guess
    full = finish(problem.full, None, None, None, COLD_ROUNDS)
    # 2) every fold from that pattern; folds differ from the full data by a few rows, so this
    #    usually certifies in 1-2 rounds
    ws, coef = working_set.warm_start_from_full(full, problem.folds.train.shape[0], problem.design.p)
    return finish(problem.folds, ws, coef, full.score, WARM_ROUNDS)


def _plain(problem, folds, start, t_idx, alpha, l1, elems) -> working_set.Solution:
    """The closed-form answers (:mod:`.ridge`) of groups without an l1 term (``start``: theirs)."""
    f64 = dataclasses.replace(folds, train=folds.train.to(torch.float64))
    yc = centred_targets(problem.Y, f64, t_idx, problem.design.n)
    b = alpha[:, None] * (1.0 - l1[:, None]) * folds.n_train[None, :]
    sol = solve_plain(problem.design, f64, yc, b, start.tol, elems)
    return dataclasses.replace(sol, coef=sol.coef.to(problem.Y.dtype), score=sol.score.to(start.score.dtype))


def _groups(sol: working_set.Solution, idx: torch.Tensor) -> working_set.Solution:
    """The groups ``idx`` of a solution."""
    return working_set.Solution(**{f.name: None if getattr(sol, f.name) is None else getattr(sol, f.name)[idx]
                                   for f in dataclasses.fields(sol)})


def _path(problem: Problem, folds, start, alpha, l1, t_idx, amax, elems, one_batch) -> working_set.Solution:
    """A cold start walked down the regularisation path: at small alpha the support is wide
    (up to and past n features), and active-set rounds from zero need dozens of rounds to find
    it; from the solution at PATH_RATIO times a larger alpha, the support moves a little and
    each step settles in a few rounds (glmnet's pathwise warm starts)."""
    for k in range(1, 64):
        step = torch.maximum(alpha, amax * PATH_RATIO ** k)
        if not bool((step > alpha).any()):
            break
        start = certify(problem.design, problem.Y, folds, start, alpha=step, l1_ratio=l1, t_idx=t_idx,
                        max_elems=elems, max_rounds=min(PATH_ROUNDS, problem.max_iter), one_batch=one_batch)
    return start


def _start(problem: Problem, folds, t_idx, ws, coef, score) -> working_set.Solution:
    """A Solution holding a starting point (zero with an empty working set when ``ws`` is None)."""
    _, yy = working_set.target_stats(problem.Y, folds)
    tol_abs = problem.tol * yy.T[t_idx]
    K, F, p = t_idx.numel(), folds.train.shape[0], problem.design.p
    dev = tol_abs.device
    if ws is None:
        ws = torch.full((K, 1), p, dtype=torch.int64, device=dev)
        coef = torch.zeros((K, F, 1), dtype=problem.Y.dtype, device=dev)
    if score is None:
        score = torch.zeros((K, p + 1), dtype=problem.Y.dtype, device=dev)
    return working_set.Solution(ws, coef, torch.full_like(tol_abs, math.inf), tol_abs,
                                torch.zeros((K, F), dtype=torch.int64, device=dev),
                                torch.zeros((K, F), dtype=torch.bool, device=dev), score,
                                torch.zeros((K, F), dtype=torch.bool, device=dev))


def dense_coef(sol: working_set.Solution, p: int) -> torch.Tensor:
    """(K, F, p) coefficients from working-set form."""
    K, F, s = sol.coef.shape
    out = torch.zeros((K, F, p + 1), dtype=sol.coef.dtype, device=sol.coef.device)
    out.scatter_(2, sol.ws[:, None, :].expand(K, F, s), sol.coef)
    return out[:, :, :p]


def intercepts(problem: Problem, sol: working_set.Solution, targets: torch.Tensor) -> torch.Tensor:
    """(K, F) intercepts in the original units: mean(y_f) - mean(X_f) . w."""
    K, F, s = sol.coef.shape
    if not problem.fit_intercept:
        return torch.zeros((K, F), dtype=torch.float64, device=sol.coef.device)
    folds, n = problem.folds, problem.design.n
    m64 = folds.train.to(torch.float64)
    xbar = (m64 @ problem.design.X[:n].to(torch.float64)) / folds.n_train[:, None]          # (F, p+1)
    xbar[:, :problem.design.p] += problem.x_mean
    ybar = (m64 @ problem.Y[:n].to(torch.float64)) / folds.n_train[:, None]                  # (F, T)
    _, _, t_idx = _group_params(problem, targets)
    xb = xbar[:, sol.ws].permute(1, 0, 2)                                                    # (K, F, s)
    return ybar.T[t_idx] + problem.y_mean[t_idx][:, None] - (xb * sol.coef.to(torch.float64)).sum(-1)


def target_chunks(problem: Problem, memory_budget: int | None, n_targets: int | None = None):
    """Split the targets into chunks whose working memory fits the budget."""
    T = problem.Y.shape[1] if n_targets is None else n_targets
    budget = memory_budget or default_memory_budget(problem.Y.device)
    per_target = len(problem.grid) * bytes_per_group(problem)
    size = max(1, min(T, int(budget // max(per_target, 1))))
    return [torch.arange(lo, min(T, lo + size), device=problem.Y.device) for lo in range(0, T, size)]


def bytes_per_group(problem: Problem) -> int:
    """Rough peak bytes of one (grid point, target) group over all folds."""
    F = problem.folds.train.shape[0]
    n, p1 = problem.design.n, problem.design.p + 1
    item = problem.Y.element_size()
    h = problem.folds.held_out.shape[1]
    # the KKT check's (F, p+1) products (and the closed form's coefficients) dominate; Grams
    # are formed for working sets up to 2n; float64 temporaries of residuals and predictions
    return (item * (20 * F * p1 + 8 * F * n + 4 * n * n + 2 * n * p1 + 2 * F * (h + 1) * min(p1, 2 * n))
            + 8 * (6 * F * n + 2 * F * p1))


def enet_path_fit(X, Y, alphas, l1_ratios, *, train_masks=None, fit_intercept=True, tol=1e-4,
                  max_iter=1000, device=None, memory_budget=None, dtype=None,
                  warm_start=True, strategy="auto") -> EnetResult:
    """Fit ElasticNet for every (training fold, alpha, l1_ratio, target) at once.

    Parameters
    ----------
    X : array or Tensor (n_samples, n_features)
    Y : array or Tensor (n_samples,) or (n_samples, n_targets)
    alphas, l1_ratios : float or sequence of float
        The grid is their product, alpha-major (``result.grid``). ``alpha >= 0``,
        ``0 <= l1_ratio <= 1``.
    train_masks : bool array (n_folds, n_samples) or None
        True on each fold's training samples; None fits all samples once (one fold).
        See :mod:`gpurecon.solver.cv` for leave-one-out, K-fold and group folds.
    fit_intercept : bool
        Centre X and Y over each fold's training samples (as sklearn does).
    tol, max_iter : float, int
        sklearn's stopping rule (duality gap <= tol * ||y - mean(y)||^2), which decides
        ``converged`` where no certificate is found, and the most active-set rounds per problem
        (each an exact solve and a check over all features).
    device : str or torch.device or None
        Where to compute; None uses X's device for a tensor, else ``"auto"``.
    memory_budget : int or None
        Bytes the solver may use; targets are processed in chunks that fit. None: a fixed
        default per device kind (4 GiB on a CPU, half the GPU's memory on CUDA; see
        :func:`default_memory_budget`), so that repeated runs chunk, and round, alike.
    dtype : torch.dtype or None
        Compute dtype (float32 or float64); None keeps float32 input in float32, else float64.
        Duality gaps and stopping decisions are always float64.
    warm_start : bool
        Start the folds from the full-data fit (recommended; False solves folds cold).
    strategy : {"auto", "cpu", "gpu"}
        The engine's batch shape: "gpu" solves each round in one batch with fewer kernel
        launches and host syncs (what "auto" takes on CUDA or at a memory budget of 16 GiB or
        more), "cpu" batches by active-set width to save padding flops. Both certify the same
        answers; "gpu" on a CPU measures the GPU path's counts and exactness.

    Returns
    -------
    EnetResult
    """
    problem, _ = prepare(X, Y, alphas, l1_ratios, train_masks=train_masks, fit_intercept=fit_intercept, tol=tol,
                         max_iter=max_iter, device=device, dtype=dtype, strategy=strategy)
    F, G = problem.folds.train.shape[0], len(problem.grid)
    T, p = problem.Y.shape[1], problem.design.p
    dev, dt = problem.Y.device, problem.Y.dtype
    coef = torch.zeros((F, G, T, p), dtype=dt, device=dev)
    f64 = dict(dtype=torch.float64, device=dev)
    intercept, gap, tol_t = torch.zeros((F, G, T), **f64), torch.zeros((F, G, T), **f64), torch.zeros((F, G, T), **f64)
    n_iter = torch.zeros((F, G, T), dtype=torch.int64, device=dev)
    converged = torch.zeros((F, G, T), dtype=torch.bool, device=dev)
    certified = torch.zeros((F, G, T), dtype=torch.bool, device=dev)
    budget = memory_budget or default_memory_budget(dev)
    for targets in target_chunks(problem, budget):
        with full_precision_matmul(dev):
            sol = solve_chunk(problem, targets, warm_start, memory_budget=budget)
        Tc = targets.numel()

        def put(dst, src):  # (K, F, ...) grid-major groups -> dst[:, :, targets]
            dst[:, :, targets] = src.reshape(G, Tc, F, *src.shape[2:]).permute(2, 0, 1, *range(3, src.ndim + 1))

        put(coef, dense_coef(sol, p))
        put(intercept, intercepts(problem, sol, targets))
        n_train = problem.folds.n_train[None, :]
        put(gap, sol.gap / n_train)
        put(tol_t, sol.tol / n_train)
        put(n_iter, sol.n_iter)
        put(converged, sol.converged)
        put(certified, sol.certified)
    result = EnetResult(coef, intercept, n_iter, gap, tol_t, converged, problem.grid, certified)
    warn_not_converged(result.n_not_converged, result.worst_gap_ratio, converged.numel())
    return result


@contextlib.contextmanager
def full_precision_matmul(device: torch.device):
    """Never let TF32 into the solver: switch it off on CUDA for the call, restore afterwards."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved[0]
        torch.set_float32_matmul_precision(saved[1])


def warn_not_converged(count: int, worst_ratio: float, total: int) -> None:
    """One ConvergenceWarning naming how many problems missed the tolerance and by how much."""
    if count:
        warnings.warn(
            f"{count} of {total} ElasticNet problems did not converge within max_iter: worst duality "
            f"gap is {worst_ratio:.3g} x the tolerance. Increase max_iter or alpha, or scale X.",
            ConvergenceWarning, stacklevel=3)
