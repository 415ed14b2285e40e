"""The solver's tuning policy in one place: every constant that trades speed against work,
and :class:`Options`, the per-call knobs of the working-set engine (:mod:`.working_set`).

None of these changes what a converged answer is (that is sklearn's stopping rule, decided in
float64 by the full duality gap); they decide how fast the engine gets there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# --------------------------------------------------------------------------- working sets
# A feature joins a warm-started working set when its full-data KKT score |X_j^T R|/a is at
# least this: folds move scores by about 1/n, so 0.9 keeps every likely entrant.
WARM_SCORE = 0.9
# The inner solve aims below sklearn's tolerance so the full check rarely fails on rounding.
INNER_FRACTION = 0.5
# Size of the first working set of a cold start (and the least a set grows by per round).
FIRST_SET = 16
# A cold start on a design with at most this many features uses all of them as its working set.
WHOLE_SET = 64
# While a working set still grows, coordinate descent solves it only to this fraction of the
# problem's current full gap (celer / skglm's inner tolerance): exact solves of sets that are
# about to change are wasted epochs.
CD_GAP_FRACTION = 0.3
# Outer rounds (check, grow, solve) before a problem is given up as not converged.
MAX_ROUNDS = 60
# From this outer round on, a problem within sklearn's tolerance stops even if it missed the
# tighter ``Options.stop_fraction`` (which rounding can make unreachable).
STOP_AT_TOL_ROUND = 6

# Groups whose working sets are within this size ratio (or 8 features) share one inner-solver
# batch, padded to the largest: on a CPU padding costs flops.
BUCKET_RATIO = 1.3
# From this memory budget on (GPU-sized; the CPU default is 4 GiB), and on CUDA, every
# round solves all its groups in one batch: each batch costs its iterations' kernel launches
# and host syncs, while the padding's flops are nearly free on a GPU (P1: 920 -> 340 FISTA
# iterations launched; on a CPU the padding costs ~40% more time).
ONE_BATCH_BUDGET = 16 * 2 ** 30

# --------------------------------------------------------------------------- inner solvers
# FISTA: repack the batch when the live problems fill at most this fraction of it.
FISTA_COMPACT_AT = 0.6
# FISTA reads its live counts on the host (to stop or repack) at every this-many-th gap check:
# problems freeze on the device at every check, so results do not depend on it; a larger
# value trades host syncs for identity iterations after the last problem froze.
FISTA_SYNC_EVERY = 2
# Diagonal preconditioning (a FISTA step per feature): a group takes it when the condition
# number of its rescaled Hessian is more than this factor below the plain one's (iid columns
# with gamma scales and a few x30 columns: ~1e3 -> ~10; PCA-like orthogonal columns: ~30 -> 1;
# GPT-2-like correlated columns of similar scale: about equal, plain kept).
PRECONDITION_MARGIN = 4.0
# Working sets too wide for a Gram (primal Hessian) decide by the diagonal's spread instead.
PRECONDITION_SPREAD = 1e3
# Coordinate descent: repack the batch when the live problems fill at most this fraction of it.
CD_COMPACT_AT = 0.5
# Anderson extrapolation (skglm's anderson_cd) from this many successive epochs' iterates.
ANDERSON_MEMORY = 5
# Every this many Anderson cycles, a Newton step on each problem's current sign pattern.
FACE_NEWTON_EVERY = 2
# Active-set Newton (PDAS) polish: rounds per outer round, the largest working set it
# factorises, and the largest zero-constraint system per problem (beyond it the problem sits
# the round out and coordinate descent finishes it).
NEWTON_ROUNDS = 8
NEWTON_MAX_SET = 1536
MAX_CONSTRAINTS = 96

# --------------------------------------------------------------------------- per call (elasticnet)
# The cold full-data fit only needs FISTA to find the support: the Newton polish finishes it.
FULL_INNER_FRACTION = 100.0
# Folds solve their working sets to 10% of sklearn's gap tolerance ...
FOLD_INNER_FRACTION = 0.1
# ... and stop at 20% of it: a gap at the tolerance leaves held-out predictions up to a few
# 1e-3 of a target's scale from the optimum (what CV reports); 20% keeps them within ~2e-4
# (iid-scaled family, n = 100). Much lower costs float32 designs rounds of checks whose
# rounding (~1e-6 of ||y||^2) cannot settle it.
FOLD_STOP_FRACTION = 0.2
# Smallest tol at which FISTA iterates run in float32.
MIXED_PRECISION_TOL = 1e-5


@dataclass
class Options:
    """Knobs of one engine call; :func:`.elasticnet.solve_chunk` sets them per phase
    (cold full-data fit, warm-started folds)."""

    check_every: int = 10           # FISTA iterations between gap checks (host syncs)
    inner_fraction: float = INNER_FRACTION
    newton_rounds: int = NEWTON_ROUNDS   # 0: no active-set Newton polish
    newton_start: bool = True       # warm starts: one shared-factorisation Newton step first
    round_iter: int = 500           # FISTA iterations per outer round at most (saturated sets, s > n,
                                    # need 200-500 preconditioned; a lower cap hands them to the costlier polish)
    growth: float = 0.25            # a working set grows by at most this fraction per round
    fista_dtype: torch.dtype | None = None   # FISTA iterates (None: the design's); gaps stay float64
    polish_from_round: int = 1      # first outer round that tries the Newton polish
    newton_budget: float = 60.0     # Newton is used where it costs at most this many FISTA iterations
    lowrank_newton: bool = True     # n x n (Woodbury) inverses for wide working sets; the s x s one
                                    # is more accurate when b is tiny next to X^T X (tight tolerances)
    max_elems: int = 2 ** 25        # float64 elements one Newton / CD sub-batch may hold
    stop_fraction: float = 1.0      # stop a problem at this fraction of sklearn's gap tolerance
    bucket_ratio: float = BUCKET_RATIO   # working-set size ratio sharing a batch (inf: one batch per round)
