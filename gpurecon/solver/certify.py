"""Certificates: every fold problem ends at the exact optimum of its sign pattern, verified
by the KKT conditions on all features, in float64.

Why: a duality gap below ``tol * ||y_c||^2`` bounds the *training* objective, not held-out
predictions. A coefficient left at -6e-4 where the optimum is 0 costs the training fit
nothing when its column is small on the training rows, and moves the prediction of a held-out
row with a large value on that feature by a tenth of the target's scale (heavy-tailed
features, outlier trials, GPT-2's "rogue" dimensions). So the engine's iterate is only a
guess of the support; the answer returned is the exact solution it points to.

The exact solution. With fold-centred training data ``X, y`` of ``n_f`` rows,
``a = alpha*l1_ratio*n_f`` and ``b = alpha*(1-l1_ratio)*n_f``, ``w`` minimises sklearn's
objective iff (KKT)

    x_j^T r - b w_j = a sign(w_j)   where w_j != 0,        |x_j^T r| <= a   where w_j = 0,

with ``r = y - X w``. Fix an active set ``A`` and its signs ``s``: the first condition is the
linear system

    (X_A^T X_A + b I) w_A = X_A^T y - a s_A,

solved here by Cholesky (float64). Its solution is the optimum when (i) ``sign(w_A) = s_A``
and (ii) ``|x_j^T r| <= a`` on every feature outside ``A`` (checked on *all* p features, one
GEMM). Otherwise the active set moves, as in a primal-dual active-set method (PDAS): coordinates
whose sign flipped leave ``A``; inactive features violating (ii) enter with the sign of
``x_j^T r``; repeat. From the engine's near-optimal iterate this takes one or two rounds.

Convergence. PDAS is not globally convergent: with near-collinear columns, tiny ridge terms or
rank-saturated lasso folds the pattern solves overshoot and the active set cycles. So each
problem is watched. From the first round that raises its objective, a problem with a ridge term
(``b > 0``) is moved, once, to the solution of the dual's semismooth Newton method
(:mod:`.dual_newton`: an ``n x n`` Newton system per step, ``|A| x |A|`` where smaller, every
feature entering or leaving at once, globally convergent with a line search; near-collinear
pairs at 1e-3 x alpha_max, 10-fold: up to 429 rounds without it, 4 with it), whose pattern the
next round solves exactly. Otherwise (the lasso, or
a rise after that) it continues by feature-sign search (Lee et al., 2007): one pattern solve,
then the exact minimiser of the objective on the segment from the current point to that
solution (a convex piecewise quadratic along the segment, kinks where coordinates cross zero;
the orthant projection of the solution replaces it where lower), or on the segment to the
solution with its sign flips dropped where that is lower (it drops at once what the first
segment drops one kink per round); violators enter only once the point is optimal on its own
active set (then the step descends; if several entering at once do not, only the strongest
enters next). Every such round lowers the objective, so no pattern repeats and the rounds end
at the certified optimum (a feature-sign point is accepted on the KKT conditions alone: next
to the optimum its step to the pattern's solution is rounding). Cold starts (the full-data fit)
whose supports are wide - groups far below their alpha_max, and every group on the GPU path -
begin, where a ridge term is present, at the dual Newton solution (:func:`dual_start`: every
feature in or out at once, so one or two rounds follow instead of the ~log(s / 10) / log(1.3)
rounds of entering features from zero; the GPT-2-like design's P1 fit on the GPU path:
10,300 -> 4,300 launches); on a CPU the others take the Newton step in their third round where,
for most of them, their strongest violators at zero left most of the others violating
(``dual_after``: many violators at zero alone are no sign of a wide support). Lasso groups far
below their alpha_max walk down the regularisation path, ``alpha_max * 0.3**k``, so that each
step starts next to its support (glmnet's pathwise warm starts; ``elasticnet.solve_chunk``).

Batching. Where a ridge term is present, folds hold out at most two rows and most of a group's
folds are open (the first rounds of leave-one-out), PDAS runs on the group's working set with
one inverse of the all-rows Gram per group on the warm start's pattern, each fold's Gram a
Woodbury downdate of it (held-out rows and the centring term), and each fold's own entries and
drops a small bordered system (:func:`.newton.bordered_pdas`; patterns wider than n, and working
sets wider than ``LOWRANK_ABOVE`` x n in the low-rank form, keep :func:`.newton.pdas` on the
union of the folds' active sets). Otherwise (the lasso, a few open problems, working sets wider
than n) each problem's system is built on its own active features: a gather from an all-rows Gram
(the design's ``X^T X`` where it is no larger than the groups' Grams on their working sets)
downdated by the fold's held-out rows, or past ``n`` active features the ``n x n`` Woodbury
form; Cholesky with two steps of iterative refinement; the lasso's singular-but-consistent
systems (duplicated columns both active) get a tiny jitter that the refinement removes.
Violators enter at most ``ADD_FRACTION`` of the active set per round, the strongest first. A
problem still open after the rounds allowed (or whose system does not factorise) keeps the lower
of the engine's answer and the rounds' last point and is reported as not certified; its
convergence is then decided by sklearn's gap, recomputed here in float64.
Problems without an l1 term (ridge, least squares) have no sign pattern and never reach
this module: :mod:`.ridge` solves them in closed form.
"""

from __future__ import annotations

import bisect
from dataclasses import replace

import torch

from .dual_newton import dual_newton
from .gap import enet_duality_gap
from .newton import _positions, bordered_pdas, cho_solve, pdas
from .options import MAX_BORDER, MAX_CONSTRAINTS
from .working_set import Design, Folds, Solution, _downdates, _fold_classes, _newton_cols, target_stats

F64 = torch.float64
# KKT tolerances: |x_j^T r| may exceed ``a`` by this fraction (plus rounding of the product,
# KKT_ATOL * ||x_j|| * ||r||) on inactive features, and the active features' stationarity may
# miss by as much. A violation of 1e-9 * a moves a coefficient by ~1e-9 * a / ||x_j||^2.
KKT_RTOL = 1e-9
KKT_ATOL = 1e-12
# Active-set rounds (each: sign-pattern solves with sign flips dropped, then a KKT check over
# all features) before a problem is given up as not certified.
MAX_ROUNDS = 12
# A cold start's problem takes the dual Newton step in its third round where after the second
# (its strongest violators at zero entered) at least this fraction of its violators at zero
# still violate (and more than ``dual_after``); medians over 127 targets: the study's design at
# 0.05 x alpha_max keeps ~90% (support ~220 > n), the GPT-2-like family at 0.1 x ~25% (support
# ~60), outlier trials ~1% (support ~5)
DUAL_KEEP = 0.5
# Violators entering per round: at least MIN_ADD, at most ADD_FRACTION of the active set.
MIN_ADD = 10
ADD_FRACTION = 0.3
# The shared-inverse steps run while at least this fraction of the busy groups' problems is
# open; below it the few open problems get direct solves of their own.
SHARED_FRACTION = 0.25
# ... only in the first round (from the warm start: after it, the few problems still open cost
# less as direct solves than every busy group's inverse again; leave-one-out rows 20-40% faster),
# and only where each fold holds out at most this many rows (leave-one-out, leave-two-out).
SHARED_MAX_HELD_OUT = 2
# PDAS rounds per shared-inverse call: each round rebuilds every busy group's inverse, so the
# few problems still moving after two are cheaper as direct solves of their own.
SHARED_ROUNDS = 8
# ... on the GPU path they stop once fewer than this fraction of the call's problems still
# move (each round is a host read; the last few take the round's direct solves instead). At
# 1% the direct solves of the study-like P1 fit (alpha 1) cost 650 more launches than the
# rounds they replace; at 0.2% (25 of 12,700) its rounds run to the end, and outlier trials
# and target scales save 2-4 reads and 400-700 launches (each family's total within 5%)
GPU_SHARED_TAIL = 0.002
# The shared inverse of a working set up to LOWRANK_ABOVE x n wide is the explicit s x s one
# (cheap per-fold blocks); wider sets use the n x n low-rank form, whose per-fold blocks gather
# (folds x n x d) columns: at s just above n that made the first round 2-3x slower (GPT-2's last
# layer, 127 targets, leave-one-out: 5.2 s -> 3.1 s); at 0.05 x alpha_max (s = 2.6 n, 80
# zero constraints per fold) 2 -> 3 took 32 of its targets from 8.3 s to 6.7 s, while the
# 3-target wide families (p = 2000; n = 10, p = 5000) stayed within timing noise. Up to s ~ 10n
# the explicit one was faster still on that design but slower on the wide families.
LOWRANK_ABOVE = 3
# Working sets wider than n share an inverse across folds (either form) only where every group's
# ridge term b is at least this fraction of lambda_max(X^T X) (measured: from 1e-3 up it pays;
# at 5e-5 its imprecise rounds triple the time).
WIDE_SHARED_RIDGE = 1e-3
# Relative jitter (of the mean Gram diagonal) that lets the lasso's singular-but-consistent
# systems factorise (duplicated columns both active); refinement removes its effect.
LASSO_JITTER = 1e-12
# Iterative-refinement steps after each sign-pattern solve.
REFINE_STEPS = 2
# CPU rounds stop refining once every active feature's stationarity error is this fraction of
# the certificate's tolerance (a KKT_RTOL): the certificate cannot tell such a step from none
REFINE_MARGIN = 1e-3
# Sign-flip drops within one round's solve (primal-dual active-set rounds: from a warm start
# they settle most problems at once). A problem whose objective rises in such a round (the
# method cycles) continues with feature-sign rounds: one solve, then the exact line search that
# makes every round lower the objective; every problem does after MAX_FAST_ROUNDS rounds.
MAX_DROPS = 8
# ... on the GPU path: a host read after every second solve, at most GPU_DROP_READS per batch
# (the drops still pending after the solves that follow the last read continue in the
# certificate's next round, which reads anyway)
DROP_READ_EVERY = 2
GPU_DROP_READS = 1
# Problems solved in one batch pad their systems to the batch's widest active set: a batch
# takes problems of widths down to this fraction of its widest (fewer, larger batches above
# it; at 0 one batch of everything).
BUCKET_SPREAD = 0.7
# ... once it holds this many (below it, a batch's fixed costs outweigh its padding: 3-target
# 10-fold rows were up to 10% slower with every width its own batch)
MIN_BUCKET = 512
MAX_FAST_ROUNDS = 20
MIN_FAST_ROUNDS = 3


def certify(design: Design, Y: torch.Tensor, folds: Folds, sol: Solution, *, alpha, l1_ratio, t_idx,
            max_elems: int = 2 ** 25, max_rounds: int = MAX_ROUNDS, one_batch: bool = False,
            dual_after: int | None = None):
    """Replace each problem's coefficients by the certified exact optimum where one is found.

    Parameters
    ----------
    design, Y, folds
        The engine's inputs (any compute dtype; everything here is float64).
    sol : Solution
        The engine's answer (or a starting point) for K groups x F folds; its ``tol``, sklearn's
        threshold ``tol * ||y_c||^2``, decides ``converged`` where no certificate is found.
    alpha, l1_ratio : Tensor (K,) float64
    t_idx : Tensor (K,) int64
    max_elems : int
        float64 elements one batch of fold systems may hold.
    max_rounds : int
        Active-set rounds before a problem is left uncertified.
    one_batch : bool
        Solve each round's sign patterns in one batch (padded to the widest active set; a GPU)
        rather than in batches of similar width (a CPU).
    dual_after : int or None
        A cold start's wide problems (see :data:`DUAL_KEEP`): where, after the first round's
        features entered, most open problems still have more than this many violators and at
        least ``DUAL_KEEP`` of those at the start, the next round is a dual Newton step for
        every open problem with a ridge term (all or none). None: off.

    Returns
    -------
    Solution
        Same groups and folds; ``coef`` and ``ws`` (possibly wider: features the certificate
        added), ``n_iter`` plus the active-set rounds spent here, ``gap`` recomputed in float64
        for the returned coefficients, ``converged`` = certified or gap within ``sol.tol``, ``score`` the largest ``|x_j^T r| / a`` over the
        group's folds (the warm starts' screen), and ``certified`` (K, F) bool.
    """
    try:
        return _certify(design, Y, folds, sol, alpha=alpha, l1_ratio=l1_ratio, t_idx=t_idx, max_elems=max_elems,
                        max_rounds=max_rounds, spread=0.0 if one_batch else BUCKET_SPREAD, dual_after=dual_after)
    finally:
        _LAST_COLUMNS.clear()   # the gathered columns and the Gram live for one call only
        _FULL_GRAM.clear()


def _certify(design, Y, folds, sol, *, alpha, l1_ratio, t_idx, max_elems, max_rounds, spread, dual_after=None):
    K, F, _ = sol.coef.shape
    n, p = design.n, design.p
    dev = sol.coef.device
    d64, f64, yc, a, b = _float64_problem(design, Y, folds, alpha, l1_ratio, t_idx)
    col_norm = d64.X[:n].square().sum(0).sqrt()                                    # (p+1,)

    ws, w = sol.ws, sol.coef.to(F64)
    active = w != 0
    sign = torch.sign(w)
    lasso_like = (a > 0)                                                            # problems with a sign pattern
    certified = torch.zeros((K, F), dtype=torch.bool, device=dev)
    spent = torch.zeros((K, F), dtype=torch.int64, device=dev)                       # active-set rounds
    gap = torch.zeros((K, F), dtype=F64, device=dev)
    score = torch.zeros((K, p + 1), dtype=sol.score.dtype, device=dev) if F == 1 else None
    x = w
    cap = torch.full((K * F,), p + 1, dtype=torch.int64, device=dev)              # violators entering next
    # per problem: primal-dual active-set rounds (fast from a warm start) while they lower the
    # objective, feature-sign rounds (monotone) from the first round that raises it
    mono = torch.zeros((K, F), dtype=torch.bool, device=dev)
    dualed = torch.zeros((K, F), dtype=torch.bool, device=dev)
    # cold problems whose first features left most violators violating (dual_after)
    wide = torch.zeros((K, F), dtype=torch.bool, device=dev)
    first_viol = None
    # (k-fold's folds hold out n/k rows each: the Woodbury downdates grow with them, and the
    # direct solves on each problem's own active features were faster on 8 of 11 10-fold rows)
    shared_ok = F > 1 and folds.held_out.shape[1] <= SHARED_MAX_HELD_OUT
    # read with the first round's counts: whether wide working sets may share an inverse,
    # whether every problem has a ridge term (each n x n Woodbury solve would read it again),
    # and whether every problem has a sign pattern
    constants = [(alpha * (1.0 - l1_ratio) * folds.n_train.max() >= WIDE_SHARED_RIDGE * design.lam_max).all(),
                 (b > 0).all(), lasso_like.all()]
    # the GPU path (one batch per round): each round's solves are padded to a width bound from
    # the round's read, and a round's stop, its working sets' growth and the next round's
    # counts are one host read
    one_read = spread == 0
    counts, carried, finished = None, None, False
    f_prev = _objective(d64, f64, ws, x, yc, a, b)
    for i in range(max_rounds):
        # 1) exact solve of each open problem's sign pattern (certified ones keep theirs); the
        # round's sets (see _round_sets), and its decisions from one host read (on the GPU path
        # the last round's end made both, for its own read)
        if carried is None:
            open_all, mono, newton, open_ = _round_sets(lasso_like, certified, mono, dualed, b, i >= MAX_FAST_ROUNDS,
                                                        wide)
            counts = torch.stack(_round_counts(open_all, newton, open_, mono, active.sum(-1) if one_read else None, F)
                                 + (constants if i == 0 else [])).tolist()
            if i == 0:
                wide_ok, ridged, lasso_all = (bool(v) for v in counts[6:])
        else:
            open_all, mono, newton, open_ = carried
        spent += open_all
        n_all, n_newton, n_slow, n_open, n_busy, widest = (int(v) for v in counts[:6])
        carried = None
        # the widest open active set bounds every solve of this round (the GPU path pads to it:
        # no host read of its own; the dual step below reads its own problems' widest with it)
        widest = widest if one_read else None
        if n_newton:
            ws, x, active, sign, w_dual = _dual_step(d64, f64, ws, x, active, sign, yc, a, b, newton, max_elems,
                                                     staged=spread > 0, count=n_newton)
            widest = None if widest is None else max(widest, w_dual)
            dualed |= newton
            mono &= ~newton
        # in the first round, where there is a ridge term, folds hold out <= 2 rows and most of
        # a group's folds are open, primal-dual active-set steps on the working set with one
        # shared inverse per group (Woodbury per fold: cheap for many folds of one design);
        # direct sign-pattern solves for the lasso, for k-fold, for later rounds and for
        # whatever the shared steps leave unsettled
        # (a working set wider than n has a rank-deficient Gram: its shared inverse, in either
        # form, loses digits when the ridge term is tiny next to the Gram, and then its rounds
        # settle little and cost more than direct solves)
        use_shared = (shared_ok and i == 0 and n_open and n_open >= SHARED_FRACTION * n_busy
                      and (ws.shape[1] <= n or wide_ok))
        if use_shared:
            x_new, solved = _solve_shared_inverse(d64, f64, ws, active, sign, yc, a, b, open_, alpha, l1_ratio,
                                                  max_elems, one_batch=one_read)
        else:
            x_new, solved = torch.zeros_like(x), torch.zeros_like(open_)
        rest = open_ & ~solved
        n_rest = int(rest.sum()) if use_shared else n_open      # (one read: the solves' count too)
        if n_rest:
            x_rest, solved_rest = _solve_patterns(d64, f64, ws, active, sign, yc, a, b, rest, max_elems,
                                                  spread=spread, count=n_rest, width=widest, ridged=ridged)
            x_new = torch.where(rest[..., None], x_rest, x_new)
            solved = torch.where(rest, solved_rest, solved)
        slow = open_all & mono
        if n_slow:
            x_drop, solved_drop, x_slow = _solve_patterns(d64, f64, ws, active, sign, yc, a, b, slow, max_elems,
                                                          with_first=True, spread=spread, count=n_slow,
                                                          width=widest, ridged=ridged)
            # feature-sign search: move only as far along the segment to the pattern's
            # solution as the objective keeps falling. Pattern solves alone can cycle
            # (near-collinear columns, tiny ridge terms, rank-saturated lasso folds); with the
            # line search every round lowers the objective, so no pattern repeats
            solved_first = solved_drop & (x_drop == x_slow).all(-1)   # no flip: no drop either
            x_slow, full_step, moved = _line_search(d64, f64, ws, x, x_slow, yc, a, b, slow, sign)
            # the same along the segment to the solution with its sign flips dropped (a point
            # on the pattern's orthant face): where lower, one round drops every coordinate
            # that the first segment would drop one at a time, at one kink per round
            x_d, full_d, moved_d = _line_search(d64, f64, ws, x, x_drop, yc, a, b, slow, sign)
            take = (_objective(d64, f64, ws, x_d, yc, a, b) < _objective(d64, f64, ws, x_slow, yc, a, b)) & slow
            x_slow = torch.where(take[..., None], x_d, x_slow)
            solved_slow = torch.where(take, solved_drop & full_d, solved_first & full_step)
            full_step = torch.where(take, full_d, full_step)
            moved = torch.where(take, moved_d, moved)
            # a step that could not lower the objective had too many violators entering at
            # once: next time only the strongest enters (that step always descends)
            cap.copy_(torch.where(slow, torch.where(moved, p + 1, 1), cap.view(K, F)).reshape(-1))
            x_new = torch.where(slow[..., None], x_slow, x_new)
            solved = torch.where(slow, solved_slow, solved)
        open_ = open_all
        x = torch.where(open_[..., None], x_new, x)
        active = torch.where(open_[..., None], x != 0, active)
        sign = torch.where(open_[..., None], torch.sign(x), sign)
        # 2) KKT over all features, float64, for the open problems (flat)
        probs = torch.nonzero_static(open_.reshape(-1), size=n_all).squeeze(1)
        r, g, viol, stat_ok, absg = _kkt(d64, f64, ws, x, yc, a, b, active, sign, col_norm, probs)
        # (a feature-sign point is accepted on KKT alone: next to the optimum its step to the
        # pattern's solution can be rounding, which the line search may not take)
        ok_now = (solved | mono).reshape(-1)[probs] & stat_ok & ~viol.any(-1)
        certified.view(-1)[probs] |= ok_now
        x_p = x.reshape(K * F, -1)[probs]
        f_now = _penalised(r, x_p, a.reshape(-1)[probs], b.reshape(-1)[probs])
        if i + 1 >= MIN_FAST_ROUNDS:
            mono.view(-1)[probs] |= f_now > f_prev.reshape(-1)[probs]
        f_prev.view(-1)[probs] = torch.minimum(f_now, f_prev.reshape(-1)[probs])
        # the gap (and the full fit's KKT scores) of what this round certified, from this check
        _record(gap, score, probs, ok_now, r, g, x, yc, a, b, F, absg)
        # 3) the strongest violators enter the active set with the sign of x_j^T r; at most
        #    ADD_FRACTION of the set's size per round (all at once overshoots: hundreds enter,
        #    the solve flips most of them, and the pattern oscillates)
        # (in the feature-sign rounds only once the point is optimal on its own active set:
        # then the step to the wider pattern is a descent direction)
        limit = torch.where(stat_ok | ~mono.reshape(-1)[probs], cap[probs], 0)
        viol &= ~ok_now[:, None]
        if dual_after is not None and i < 2:
            # the first check (from zero: the violators at zero) and the second (after the
            # strongest entered): where most still violate, the support is wide and rounds
            # that add ~30% per round would need many; the dual Newton step finds it at once
            n_viol = torch.zeros(K * F, dtype=torch.int64, device=dev).index_copy_(0, probs, viol.sum(-1))
            if i == 0:
                first_viol = n_viol
            else:
                wide = ((n_viol > dual_after) & (n_viol >= DUAL_KEEP * first_viol)).view(K, F) & ~certified
                # all open problems or none: the rounds cost as many passes for a few as for
                # all of them (the study's design at alpha 1: 19 of 127 wide, each round's
                # passes went on for the others, and their Newton step was cost on top)
                open_now = lasso_like & ~certified
                wide = open_now & (2 * wide.sum() >= open_now.sum())
        m = _add_counts(viol, active.reshape(K * F, -1)[probs].sum(-1), limit)
        if widest is not None:
            # the GPU path: the ranking on every checked problem, padded to a bound on m (the
            # round's widest set only shrank since its read), and the working sets' growth read
            # with the stop: one host read instead of three
            k_b = min(max(MIN_ADD, int(ADD_FRACTION * widest)), p + 1)
            viol = _strongest(viol, g, m, k_b, absg)
            new = _new_features(ws, probs // F, viol, K, p)
            # the next round's sets, as its top will find them (entering features are never
            # active already, so its widths are exact)
            width = active.sum(-1)
            width.view(-1).index_add_(0, probs, viol.sum(-1))
            carried = _round_sets(lasso_like, certified, mono, dualed, b, i + 1 >= MAX_FAST_ROUNDS, wide)
            open_n, mono_n, newton_n, busy_n = carried
            vals = torch.stack([ok_now.all(), new.sum(1).max()]
                               + _round_counts(open_n, newton_n, busy_n, mono_n, width, F)).tolist()
            done, k_add, counts = int(vals[0]), int(vals[1]), vals[2:]
            if done:
                finished = True
                break
            ws, x, active, sign = _enter(ws, x, active, sign, probs, viol, g, p, (new, k_add))
            continue
        done, k, n_add = (int(v) for v in torch.stack([ok_now.all(), m.max(), (m > 0).sum()]).tolist())
        if done:
            finished = True
            break
        # only the problems with violators to enter: the ranking and the entering read their
        # (p+1)-wide rows (leave-one-out's first check: ~12% of 12,700 folds)
        rows = torch.nonzero_static(m > 0, size=n_add).squeeze(1)
        g_r = g.index_select(0, rows)
        viol = _strongest(viol.index_select(0, rows), g_r, m.index_select(0, rows), k, absg.index_select(0, rows))
        ws, x, active, sign = _enter(ws, x, active, sign, probs.index_select(0, rows), viol, g_r, p)
    # the answer: certified problems their exact solution, the others the engine's iterate
    # (on the possibly wider working set) or the rounds' last point, whichever is lower
    keep = ~certified
    if not (finished and lasso_all) and bool(keep.any()):      # (finished: every problem certified)
        w_eng = _carry(sol.ws, sol.coef.to(F64), ws, p)
        lower = _objective(d64, f64, ws, x, yc, a, b) < _objective(d64, f64, ws, w_eng, yc, a, b)
        x = torch.where((keep & ~lower)[..., None], w_eng, x)
        probs = torch.nonzero(keep.reshape(-1)).squeeze(1)
        r, g, _, _, absg = _kkt(d64, f64, ws, x, yc, a, b, x != 0, torch.sign(x), col_norm, probs)
        _record(gap, score, probs, torch.ones_like(probs, dtype=torch.bool), r, g, x, yc, a, b, F, absg)
    converged = certified | (gap <= sol.tol)
    if score is None:      # folds: the warm starts read only the full-data fit's scores
        score = sol.score
    return replace(sol, ws=ws, coef=x.to(sol.coef.dtype), gap=gap, converged=converged, certified=certified,
                   score=score, n_iter=sol.n_iter + spent)


def _float64_problem(design, Y, folds, alpha, l1_ratio, t_idx):
    """The float64 design and folds, fold-centred targets (K, F, n) and the penalties ``a``
    (l1) and ``b`` (ridge) of every (group, fold), each times the fold's training size. (Re-
    centring in float64 changes no fold-centred quantity - a constant per column cancels - and
    makes the all-rows mean exactly zero, which the downdate identity uses.)"""
    n = design.n
    X64 = design.X.to(F64, copy=True)   # never in place: design.X is shared by every chunk
    if folds.center:
        X64[:n] -= X64[:n].mean(0)
    f64 = replace(folds, train=folds.train.to(F64))
    a = alpha[:, None] * l1_ratio[:, None] * folds.n_train[None, :]                # (K, F)
    b = alpha[:, None] * (1.0 - l1_ratio[:, None]) * folds.n_train[None, :]
    return Design(X64, design.lam_max, design.center), f64, centred_targets(Y, f64, t_idx, n), a, b


def _round_sets(lasso_like, certified, mono, dualed, b, all_slow, wide):
    """A round's problem sets (K, F): the open ones; ``mono`` (the problems in feature-sign
    rounds: every open one once ``all_slow``); those taking the dual Newton step (their
    active-set rounds stopped descending, or ``wide``: a cold start's support is wide, and they
    have a ridge term: its semismooth Newton finds their active set at once, once per problem;
    the pattern solve then makes it exact); and those for the pattern solves and the shared
    inverse (mono loses the dual-stepped ones)."""
    open_all = lasso_like & ~certified
    mono = mono | open_all if all_slow else mono
    newton = open_all & (mono | wide) & ~dualed & (b > 0)
    return open_all, mono, newton, open_all & ~(mono & ~newton)


def _round_counts(open_all, newton, open_, mono, width, F):
    """A round's decisions, as 0-d tensors for one host read: open problems, those taking the
    dual step, feature-sign problems, problems for the pattern solves, the busy groups'
    problems, and (``width``: each problem's active-set size, or None) the widest open set."""
    return [open_all.sum(), newton.sum(), (open_all & mono & ~newton).sum(), open_.sum(), open_.any(1).sum() * F,
            torch.where(open_all, width, 0).max() if width is not None else open_all.new_zeros((), dtype=torch.int64)]


def dual_start(design: Design, Y: torch.Tensor, folds: Folds, sol: Solution, *, alpha, l1_ratio, t_idx,
               max_elems: int = 2 ** 25, one_batch: bool = False) -> Solution:
    """A cold start's first point from the dual's semismooth Newton method (every group must
    have a ridge term, ``l1_ratio < 1``): ``sol`` (zero, empty working sets) replaced by the
    dual solution's coefficients, their support as the working sets.

    Why: from zero, active-set rounds let at most ``ADD_FRACTION`` of the set enter per round,
    so a support of s features takes ~log(s / MIN_ADD) / log(1.3) rounds (12 for 230, each a
    KKT check over all features), and groups far below alpha_max walk down the path first. The
    dual Newton steps bring every feature in or out at once and usually land on the optimum's
    pattern (5-20 steps of an n x n system); :func:`certify` then makes it exact."""
    K, F, _ = sol.coef.shape
    d64, f64, yc, a, b = _float64_problem(design, Y, folds, alpha, l1_ratio, t_idx)
    x = sol.coef.to(F64)
    ws, x, _, _, _ = _dual_step(d64, f64, sol.ws, x, x != 0, torch.sign(x), yc, a, b,
                                torch.ones((K, F), dtype=torch.bool, device=x.device), max_elems,
                                staged=not one_batch, count=K * F)
    return replace(sol, ws=ws, coef=x.to(sol.coef.dtype))


def centred_targets(Y, folds, t_idx, n):
    """Each group's target centred on each fold's training rows, zero on held-out rows:
    (K, F, n) float64."""
    Y64 = Y.to(F64)
    ybar, _ = target_stats(Y64, folds)
    yk = Y64[:n, t_idx].T                                                        # (K, n)
    return (yk[:, None, :] - (ybar.T[t_idx][:, :, None] if folds.center else 0.0)) * folds.train.to(F64)


def _penalised(r, x, a, b):
    """sklearn's objective times the training size from residuals ``r`` and coefficients ``x``."""
    return 0.5 * r.square().sum(-1) + a * x.abs().sum(-1) + 0.5 * b * x.square().sum(-1)


def _objective(design, folds, ws, x, yc, a, b):
    """sklearn's objective times the training size, (K, F) float64."""
    return _penalised(yc - _fit(design, folds, ws, x), x, a, b)


def alpha_max(design, Y, folds, l1_ratio, t_idx):
    """Each group's smallest alpha with an all-zero solution on every fold, (K,) float64."""
    n = design.n
    yc = centred_targets(Y, folds, t_idx, n)
    X64 = design.X[:n, :design.p].to(F64)
    if folds.center:
        X64 = X64 - X64.mean(0)
    g = (yc @ X64).abs()                                                          # (K, F, p)
    return (g.amax(-1) / folds.n_train[None, :]).amax(1) / l1_ratio.clamp_min(1e-3)


# The last working set's columns (_columns): the rounds' fits reuse them until features enter.
_LAST_COLUMNS: list = []
_FULL_GRAM: list = []


def _columns(design, ws):
    """``X[:n]`` on each group's working set, (K, n, s), gathered once per working set (the
    cache holds the ``ws`` tensor itself, so its identity and version are a safe key)."""
    if _LAST_COLUMNS and _LAST_COLUMNS[0] is ws and _LAST_COLUMNS[1] is design.X \
            and _LAST_COLUMNS[2] == ws._version:
        return _LAST_COLUMNS[3]
    xw = design.X[:design.n][:, ws].permute(1, 0, 2)
    _LAST_COLUMNS[:] = [ws, design.X, ws._version, xw]
    return xw


def _fit(design, folds, ws, x):
    """Fold-centred training predictions ``X_f x`` (K, F, n) of coefficients ``x`` on ``ws``."""
    xw = _columns(design, ws)                                                   # (K, n, s)
    z = torch.bmm(x, xw.transpose(1, 2))                                        # (K, F, n)
    if folds.center:
        z = z - (z * folds.train).sum(-1, keepdim=True) / folds.n_train[:, None]
    return z * folds.train


def _line_search(design, folds, ws, x0, x1, yc, a, b, open_, sign):
    """The minimiser of the objective on the segment from ``x0`` to ``x1`` for the open
    problems (K, F); returns (x, full_step): ``x1`` itself where the minimum is at its end.

    Along ``x0 + t d`` the objective ``0.5 ||r0 - t u||^2 + a ||x0 + t d||_1 + 0.5 b ||x0 + t d||^2``
    (``u = X_f d``) is a convex piecewise quadratic whose kinks are the coordinates crossing
    zero; its slope rises by ``2 a |d_j|`` at each. The minimiser is exact: the first piece
    whose slope reaches zero. A coordinate that stops at its kink is set to exactly zero.
    The projection of ``x1`` on the pattern's orthant (coordinates whose sign left ``sign``
    set to zero; one step drops them all) replaces that point where its objective is lower.
    Also returns ``moved`` (K, F): the step lowered the objective."""
    K, F, s = x0.shape
    d = torch.where(open_[..., None], x1 - x0, 0.0)
    r0 = yc - _fit(design, folds, ws, x0)
    u = _fit(design, folds, ws, d)
    a3, b1 = a[..., None], b
    curv = u.square().sum(-1) + b1 * d.square().sum(-1)                          # (K, F)
    slope0 = (-(r0 * u).sum(-1) + b1 * (x0 * d).sum(-1)
              + (a3 * torch.where(x0 != 0, torch.sign(x0) * d, d.abs())).sum(-1))
    cross = (x0 * d) < 0
    kink = torch.where(cross, -x0 / torch.where(cross, d, 1.0), torch.inf)          # (K, F, s) in (0, inf]
    kink, order = torch.sort(kink, dim=-1)
    jump = torch.where(cross, 2.0 * a3 * d.abs(), 0.0).gather(-1, order).cumsum(-1)
    left = torch.cat([torch.zeros_like(kink[..., :1]), kink], -1)                 # piece k: [left_k, right_k)
    right = torch.cat([kink, torch.full_like(kink[..., :1], torch.inf)], -1)
    slope = slope0[..., None] + torch.cat([torch.zeros_like(jump[..., :1]), jump], -1) \
        + torch.where(torch.isfinite(left), left, 0.0) * curv[..., None]         # right-slope at left_k
    stat = left - slope / curv.clamp_min(torch.finfo(F64).tiny)[..., None]
    cand = torch.where(slope >= 0, left, torch.where(stat <= right, stat, torch.inf))
    t = cand.amin(-1).clamp(0.0, 1.0)                                             # (K, F)
    # at t = 1 (up to rounding of the slopes) the step is the pattern's solution itself
    full = (t >= 1.0 - 1e-9) | (curv == 0)
    x = torch.where(full[..., None], x1, x0 + t[..., None] * d)
    stop = cross & (-x0 / torch.where(cross, d, 1.0) == t[..., None]) & ~full[..., None]
    x = torch.where(stop, 0.0, x)
    proj = torch.where(torch.sign(x1) == sign, x1, 0.0)
    f_line, f_proj = _objective(design, folds, ws, x, yc, a, b), _objective(design, folds, ws, proj, yc, a, b)
    better = (f_proj < f_line) & ~full
    x = torch.where(better[..., None], proj, x)
    moved = (t > 0) | full | better
    return torch.where(open_[..., None], x, x0), full & open_, moved


def _dual_step(design, folds, ws, x, active, sign, yc, a, b, which, max_elems, staged=False, count=None):
    """The problems ``which`` (K, F) moved to the dual Newton solution's coefficients
    (:func:`.dual_newton.dual_newton` from their current residuals), its features added to
    the working set; returns (ws, x, active, sign, widest): ``widest`` the largest active set
    of the moved problems (read with the working sets' growth). ``count``: how many problems
    ``which`` holds, when the caller knows it (else a host read finds them)."""
    K, F, s = x.shape
    n, p = design.n, design.p
    flat = which.reshape(-1)
    probs = (torch.nonzero(flat) if count is None else torch.nonzero_static(flat, size=count)).squeeze(1)
    fold = probs % F
    r = (yc - _fit(design, folds, ws, x)).reshape(K * F, n)[probs]
    w = torch.zeros((probs.numel(), p + 1), dtype=F64, device=x.device)
    step = max(1, int(max_elems // (2 * n * n + (p + 1) * (n + 40))))
    for lo in range(0, probs.numel(), step):
        sl = slice(lo, lo + step)
        w[sl], _ = dual_newton(design.X[:n], folds.train[fold[sl]], folds.n_train[fold[sl]], folds.center,
                               yc.reshape(K * F, n)[probs[sl]], r[sl], a.reshape(-1)[probs[sl]],
                               b.reshape(-1)[probs[sl]], staged=staged, all_rows=folds.all_rows)
    nz = w != 0
    new = _new_features(ws, probs // F, nz, K, p)
    k_add, widest = (int(v) for v in torch.stack([new.sum(1).max(), nz.sum(1).max()]).tolist())   # one read
    ws, x, active, sign = _enter(ws, x, active, sign, probs, nz, w, p, (new, k_add))
    s2 = ws.shape[1]
    x_p = w.gather(1, ws[probs // F])
    x.view(K * F, s2)[probs] = x_p
    active.view(K * F, s2)[probs] = x_p != 0
    sign.view(K * F, s2)[probs] = torch.sign(x_p)
    return ws, x, active, sign, widest


def _solve_shared_inverse(design, folds, ws, active, sign, yc, a, b, open_, alpha, l1_ratio, max_elems,
                          one_batch=False):
    """PDAS rounds (:func:`.newton.pdas`) on each group's working set for the open problems
    of groups with a ridge term; returns (x (K, F, s), settled (K, F)): settled where the
    active set stopped moving with KKT met on the working set. ``one_batch``: the GPU path
    (see :data:`GPU_SHARED_TAIL`)."""
    K, F, s = active.shape
    n, p = design.n, design.p
    x = torch.zeros((K, F, s), dtype=F64, device=ws.device)
    settled = torch.zeros((K, F), dtype=torch.bool, device=ws.device)
    ridge = alpha * (1.0 - l1_ratio)
    # groups of similar pattern width together (a chunk's inverses pad to its widest): the
    # busy groups by width, and how many there are, in one host read
    busy = (ridge > 0) & open_.any(1)
    width = torch.where(busy, (active & open_[..., None]).any(1).sum(1), s + 1)     # idle groups last
    order = torch.argsort(width, stable=True)
    widest = [w for w in width[order].tolist() if w <= s]
    if not widest:
        return x, settled
    groups = order[:len(widest)]
    sizes, cls = _fold_classes(folds)
    lowrank = s > LOWRANK_ABOVE * n
    r = folds.held_out.shape[1] + 1
    if lowrank:
        per_group = 2 * n * s + 2 * n * n * sizes.numel() + F * (16 * s + 4 * r * s + MAX_CONSTRAINTS ** 2
                                                                + n * MAX_CONSTRAINTS)
    else:   # each open fold gathers its group's inverse and its bordered system's columns
        per_group = 2 * s * s * sizes.numel() + F * (16 * s + 4 * r * s + s * s + 4 * MAX_BORDER * s)
    step = max(1, int(max_elems // per_group))
    for lo in range(0, groups.numel(), step):
        g = groups[lo:lo + step]
        bordered = not lowrank and widest[min(lo + step, groups.numel()) - 1] <= n
        xw = design.X[:n][:, ws[g]].permute(1, 0, 2)                             # (k, n, s)
        kw = dict(downdates=_downdates(design, folds, ws[g], F64), b_class=sizes,
                  fold_class=cls[None].expand(g.numel(), F), ridge=ridge[g], c=torch.bmm(yc[g], xw), a=a[g], b=b[g],
                  active=active[g], sign=sign[g], fixed=ws[g] == p, rounds=SHARED_ROUNDS, done=~open_[g],
                  min_open=max(1, int(GPU_SHARED_TAIL * g.numel() * F)) if one_batch else 1)
        # each fold's own moves from the shared pattern as a bordered system where that pattern
        # is at most n wide; wider patterns (small alpha: their folds move by ~15 features each,
        # and every open fold's copy of the m x m inverse costs more than the union domain's
        # rounds - 3-target rows up to 1.8x slower) and the low-rank form keep PDAS on the union
        xg, st = (bordered_pdas(_newton_cols(xw, False), max_border=MAX_BORDER, **kw) if bordered
                  else pdas(_newton_cols(xw, lowrank), lowrank=lowrank, **kw))
        x[g] = xg
        settled[g] = st & open_[g]
    return x, settled


def _solve_patterns(design, folds, ws, active, sign, yc, a, b, open_, max_elems, max_drops=MAX_DROPS,
                    with_first=False, spread=BUCKET_SPREAD, count=None, width=None, ridged=False):
    """Solve ``(H_f + b I)_AA w_A = c_A - a s_A`` for every open problem, dropping coordinates
    whose sign flips (up to MAX_DROPS times); returns (x (K, F, s), solved (K, F)), and with
    ``with_first`` also the first solve's x (before any drop). ``count``: how many problems are
    open, when the caller knows it (then no host read finds them); ``width``: a bound on their
    widest active set, likewise; ``ridged``: True when the caller knows every problem has a
    ridge term (else each Woodbury solve reads it).

    Each problem's system is built on its own active features only (compacted, not the
    group's union): Cholesky of ``|A| x |A|``, or with ``|A|`` above the training size and a
    ridge term, of the ``n x n`` Woodbury system ``X_A X_A^T + b I``."""
    K, F, s = active.shape
    n, p = design.n, design.p
    dev = ws.device
    x = torch.zeros((K, F, s), dtype=F64, device=dev)
    solved = torch.zeros((K, F), dtype=torch.bool, device=dev)
    act = active & (ws != p)[:, None, :] & open_[..., None]
    flat = open_.reshape(-1)
    probs = (torch.nonzero(flat) if count is None else torch.nonzero_static(flat, size=count)).squeeze(1)
    act_f = act.reshape(K * F, s)[probs]
    if not probs.numel():
        width = 0
    elif width is None:
        width = int(act_f.sum(1).max())
    if not width:      # nothing active: zero solves every open problem
        return (x, open_.clone(), x) if with_first else (x, open_.clone())
    sign_f = sign.reshape(K * F, s)[probs]
    ws_f = ws[probs // F]                                                       # (P, s)
    fold_f = probs % F
    yc_f = yc.reshape(K * F, -1)[probs]                                         # (P, n)
    a_f, b_f = a.reshape(-1)[probs], b.reshape(-1)[probs]
    xt = design.X[:n].T                                                         # (p+1, n)
    x_f = torch.zeros((probs.numel(), s), dtype=F64, device=dev)
    ok_f = torch.zeros((probs.numel(),), dtype=torch.bool, device=dev)
    # each group's all-rows Gram and X^T y on its working set, once: a fold's system is then a
    # gather plus a downdate by its few held-out rows (and the centring term), instead of
    # products over all n rows per problem
    shared = None
    full = _full_gram(design, K * (s + 1) ** 2, max_elems) if width <= n else None
    if full is not None or (width <= n and K * s * s <= max_elems // 4):
        xw = _columns(design, ws)                                               # (K, n, s)
        c_ws = torch.bmm(yc, xw).reshape(K * F, s)[probs]
        if full is not None:        # X^T X on all features: built once per call, read by feature
            shared = (full.reshape(-1), None, c_ws, probs // F, design.X)
        else:
            # each group's on its working set, a zero column appended at position s (padded
            # entries of a problem's system gather zeros from it: no masking of the blocks)
            xw = torch.nn.functional.pad(xw, (0, 1))                            # (K, n, s + 1)
            shared = (torch.bmm(xw.transpose(1, 2), xw).reshape(-1), s, c_ws, probs // F, design.X)
    first_f = torch.zeros_like(x_f) if with_first else None

    def cost(k):
        return 3 * k * n + 3 * min(k, n) ** 2 + 4 * s

    if spread > 0:
        batches = _size_buckets(act_f.sum(1), cost, max_elems, spread)        # (problems, widest)
    else:   # one batch (a GPU): padded to the widest, no host read of the widths
        step = max(1, int(max_elems // max(1, cost(width))))
        batches = [(slice(lo, lo + step), width if step >= probs.numel() else None)
                   for lo in range(0, probs.numel(), step)]
    for sl, widest in batches:
        sub = None if shared is None else (shared[0], shared[1], shared[2][sl], shared[3][sl], shared[4])
        x_f[sl], ok_f[sl], first = _solve_some(xt, folds, fold_f[sl], ws_f[sl], act_f[sl], sign_f[sl], yc_f[sl],
                                               a_f[sl], b_f[sl], p, max_drops, sub, widest, spread > 0, ridged)
        if with_first:
            first_f[sl] = first
    x.view(K * F, s)[probs] = x_f
    solved.view(-1)[probs] = ok_f
    if not with_first:
        return x, solved
    x_first = torch.zeros_like(x)
    x_first.view(K * F, s)[probs] = first_f
    return x, solved, x_first


def _size_buckets(width, cost, max_elems, spread=BUCKET_SPREAD):
    """Batches of problems of similar width, as (index tensor, widest active set): each batch
    pads its systems to its widest problem, so problems are taken widest first and a batch ends
    where the width falls below ``spread`` x its first once it holds ``MIN_BUCKET`` (or where
    ``cost(width)`` per problem fills ``max_elems``). One host read of the widths."""
    order = torch.argsort(width, descending=True, stable=True)
    neg = (-width[order]).tolist()                                              # ascending
    out, lo = [], 0
    while lo < len(neg):
        widest = -neg[lo]
        step = max(1, int(max_elems // max(1, cost(max(widest, 1)))))
        hi = min(lo + step, max(lo + MIN_BUCKET, bisect.bisect_right(neg, -spread * widest)), len(neg))
        out.append((order[lo:hi], widest))
        lo = hi
    return out


def _solve_some(xt, folds, fold, ws, act, sign, yc, a, b, p, max_drops=MAX_DROPS, shared=None, widest=None,
                adaptive=False, ridged=False):
    """Sign-pattern solves of a batch of P problems (flat), dropping coordinates whose sign
    flips and solving again (only the problems that had flips); see ``_solve_patterns``; also
    returns the first solve (before any drop). With
    ``shared`` (see :func:`_downdated_gram`): systems by downdate of an all-rows Gram.
    ``widest``: the largest active set, when the caller knows it."""
    P, s = act.shape
    out = torch.zeros((P, s), dtype=F64, device=act.device)
    ok = torch.zeros((P,), dtype=torch.bool, device=act.device)
    flipped = torch.zeros((P,), dtype=torch.bool, device=act.device)
    act = act.clone()
    idx = torch.arange(P, device=act.device)
    first, k = None, widest
    # a CPU reads after every solve (and re-solves only the problems that flipped); a GPU reads
    # after every DROP_READ_EVERY-th (the ones between re-solve the same batch: the problems
    # without flips get their own solution again) and at most GPU_DROP_READS times, leaving
    # what still flips after the next batch to the certificate's next round, flips dropped
    every, reads_left = (1, max_drops) if adaptive else (DROP_READ_EVERY, GPU_DROP_READS)
    for it in range(max_drops):
        sub = None if shared is None else (shared[0], shared[1], shared[2][idx], shared[3][idx], shared[4])
        o, o_ok = _pattern_solve(xt, folds, fold[idx], ws[idx], act[idx], sign[idx], yc[idx], a[idx], b[idx], p,
                                 sub, k, adaptive, ridged)
        flip = act[idx] & (torch.sign(o) != sign[idx])
        out[idx], ok[idx] = o, o_ok
        if first is None:
            first = out.clone()
        again = flip.any(1)
        flipped[idx] = again
        act[idx] = act[idx] & ~flip
        if (it + 1) % every and it + 1 < max_drops:
            continue        # drops only narrow the sets: k still bounds them
        if not reads_left:  # what still flips waits for the next round, its flips dropped
            out[idx] = torch.where(act[idx], out[idx], 0.0)
            break
        # one host read: how many solve again, and their widest active set
        n_again, k = (int(v) for v in torch.stack([again.sum(), torch.where(again, act[idx].sum(1), 0).max()]).tolist())
        reads_left -= 1
        if not n_again:
            break
        idx = idx[torch.nonzero_static(again, size=n_again).squeeze(1)]
    return out, ok & ~flipped, first


def _pattern_solve(xt, folds, fold, ws, act, sign, yc, a, b, p, shared, k=None, adaptive=False, ridged=False):
    """One sign-pattern solve of each of P problems: (x (P, s), factorised (P,)); ``k``: the
    widest active set, when the caller knows it; ``adaptive``: the host may read (the CPU's
    batches), so the Woodbury form's refinement stops once its residual is negligible."""
    P, s = act.shape
    n = xt.shape[1]
    train = folds.train[fold]                                                    # (P, n) float64
    n_train = folds.n_train[fold]
    k = max(int(act.sum(1).max()) if k is None else k, 1)
    pos, valid = _positions(act, k)                                           # active positions first
    feat = torch.where(valid, ws.gather(1, pos), p)                          # (P, k); p: zero column
    diag = torch.where(valid, b[:, None], 1.0)                              # padding: identity
    woodbury = k > n and (ridged or bool((b > 0).all()))
    if shared is not None and k <= n:
        gram, c = _downdated_gram(shared, folds, fold, pos, feat, valid, s)
        xa = None
    else:
        # Woodbury: the fold's centred active columns are A = C R^T, R = X_A^T (k x n, all rows,
        # padded rows zero) and C the fold's centring on its training rows (a projector,
        # C y_c = y_c): every product with A is one with R plus O(n) work, and
        # A A^T = C (R^T R) C in O(n^2). The k x k Gram form centres the columns themselves.
        xa = xt[feat]                                                         # (P, k, n) = R
        if not woodbury:
            if folds.center:
                xa = xa - (xa * train[:, None, :]).sum(-1, keepdim=True) / n_train[:, None, None]
            xa = xa * train[:, None, :] * valid[..., None]
        c = torch.bmm(xa, yc[..., None])[..., 0]                              # (P, k)
        gram = None
    rhs = torch.where(valid, c - a[:, None] * sign.gather(1, pos), 0.0)
    if woodbury:
        # Woodbury: (A^T A + b I)^-1 v = (v - A^T (A A^T + b I)^-1 A v) / b
        center = _fold_centring(train, n_train, folds.center)
        m = _centred_kernel(torch.bmm(xa.transpose(1, 2), xa), train, n_train, folds.center)
        m.diagonal(dim1=1, dim2=2).add_(b[:, None])
        chol, info = torch.linalg.cholesky_ex(m)

        def inv(v):
            # A^T M^-1 A = R C M^-1 R^T: C commutes with M = C K C + b I and C^2 = C
            av = torch.bmm(xa.transpose(1, 2), v[..., None])                  # (P, n, 1)
            return (v - torch.bmm(xa, center(cho_solve(chol, av)))[..., 0]) / diag
    else:
        if gram is None:
            gram = torch.bmm(xa, xa.transpose(1, 2))
        # the lasso (b = 0) with linearly dependent active columns (duplicated features) has a
        # singular but consistent system: factorise with a jitter far below rounding of the
        # answer's scale, and let the refinement steps (with the true matrix) remove it.
        # In place (the blocks are the largest arrays here): gram becomes H + diag; the jitter is
        # added for the factorisation only.
        jitter = torch.where(b > 0, 0.0, LASSO_JITTER * gram.diagonal(dim1=1, dim2=2).mean(-1))[:, None] * valid
        gram.diagonal(dim1=1, dim2=2).add_(diag + jitter)
        chol, info = torch.linalg.cholesky_ex(gram)
        gram.diagonal(dim1=1, dim2=2).sub_(jitter)

        def inv(v):
            return cho_solve(chol, v[..., None])[..., 0]
    sol = inv(rhs)
    for _refine in range(REFINE_STEPS):
        # iterative refinement: the Woodbury form divides by b, which loses digits when b is
        # small next to X_A^T X_A (small alpha); a residual step with the same factors restores them
        if woodbury:
            hx = torch.bmm(xa, center(torch.bmm(xa.transpose(1, 2), sol[..., None])))[..., 0] + diag * sol
        else:
            hx = torch.bmm(gram, sol[..., None])[..., 0]
        res = torch.where(valid, rhs - hx, 0.0)
        # the residual is the active features' stationarity error: where the host may read
        # (``adaptive``) and a step is costly (Woodbury: four passes over the k x n columns),
        # stop once it is far inside the certificate's tolerance everywhere
        if adaptive and woodbury and bool((res.abs() <= REFINE_MARGIN * KKT_RTOL * a[:, None]).all()):
            break
        sol = sol + inv(res)
    ok = (info == 0) & torch.isfinite(sol).all(-1)
    sol = torch.where(valid & ok[:, None], sol, 0.0)
    out = torch.zeros((P, s), dtype=F64, device=act.device).scatter_(1, pos, sol)
    return torch.where(act, out, 0.0), ok


def _fold_centring(train, n_train, center):
    """``C u`` for each problem's fold centring ``C = D - d d^T / n_f`` (``d``: its training
    rows (P, n), ``D = diag(d)``; without centring ``C = D``), applied to u (P, n, m) along n."""
    d = train[:, :, None]
    if not center:
        return lambda u: u * d
    w = d / n_train[:, None, None]

    def apply(u):
        return (u - (w * u).sum(1, keepdim=True)) * d
    return apply


def _centred_kernel(kern, train, n_train, center):
    """``C K C`` in place of ``K`` (P, n, n) symmetric, ``C`` the fold centring of
    :func:`_fold_centring`: ``D (K - v 1^T - 1 v^T) D`` with ``v = K d / n_f - (d^T K d / n_f^2) / 2``
    (one rank-2 update and one mask, not two centrings of the n x n block)."""
    d = train[:, :, None]
    if center:
        w = d / n_train[:, None, None]
        kd = torch.bmm(kern, w)                                                 # (P, n, 1)
        v = kd - 0.5 * (kd * w).sum(1, keepdim=True)
        one = torch.ones_like(v)
        kern.baddbmm_(torch.cat([v, one], 2), torch.cat([one, v], 2).mT, alpha=-1)
    return kern.mul_(d * d.mT)


def _full_gram(design, group_elems, max_elems):
    """``X^T X`` (p+1, p+1) of the design (its last row and column zero), once per call: where
    it is no larger than the groups' Grams on their working sets (``group_elems``) and fits the
    budget; else None."""
    if _FULL_GRAM and _FULL_GRAM[0] is design.X:
        return _FULL_GRAM[1]
    q = design.p + 1
    if q * q > min(group_elems, max_elems // 4):
        return None
    x = design.X[:design.n]
    _FULL_GRAM[:] = [design.X, x.T @ x]
    return _FULL_GRAM[1]


def _downdated_gram(shared, folds, fold, pos, feat, valid, s):
    """Fold Grams (P, k, k) and ``X_f^T y_c`` (P, k) on each problem's active features from
    an all-rows Gram: ``H_f = G - X_h^T X_h - (sum X_h)(sum X_h)^T / n_f`` (held-out rows
    ``h``; the last term re-centres on the training rows, the design being centred on all
    rows), both downdates as one product. ``X_f^T y_c = X^T y_c``: the centred targets are zero
    on held-out rows. ``shared`` = (flat Gram, its working-set width or None for the design's
    full Gram, X^T y_c on the working set (P, s), each problem's group, the design). Padded
    entries (``~valid``) read a zero row and column (feature p, or working-set position s)."""
    gflat, width, c_ws, grp, X = shared
    if width is None:
        ix, stride, off = feat, X.shape[1], 0
    else:
        ix, stride = torch.where(valid, pos, width), width + 1
        off = grp[:, None] * stride
    gram = torch.take(gflat, (off + ix)[:, :, None] * stride + ix[:, None, :])    # (P, k, k)
    xo = X[folds.held_out[fold][:, :, None], feat[:, None, :]]                   # (P, h, k); pads read 0
    if folds.center:
        so = xo.sum(1, keepdim=True) * folds.n_train[fold].rsqrt()[:, None, None]
        xo = torch.cat([xo, so], 1)
    return gram.baddbmm_(xo.transpose(1, 2), xo, alpha=-1), torch.where(valid, c_ws.gather(1, pos), 0.0)


def _add_counts(viol, n_active, limit=None):
    """How many violators enter per problem: ``max(MIN_ADD, ADD_FRACTION * |A|)``, at most
    ``limit`` and at most the violators there are."""
    m = torch.clamp((n_active * ADD_FRACTION).long(), min=MIN_ADD)
    if limit is not None:
        m = torch.minimum(m, limit)
    return torch.minimum(m, viol.sum(-1))


def _strongest(viol, g, m, k=None, absg=None):
    """The ``m`` violators (per problem, from :func:`_add_counts`) with the largest ``|x_j^T r|``;
    ``k``: the largest of ``m``, when the caller has read it; ``absg``: ``|g|`` where the caller
    has it (only its values on violators are read)."""
    if k is None:
        k = int(m.max())
    if not k:
        return torch.zeros_like(viol)
    top = torch.topk(torch.where(viol, g.abs() if absg is None else absg, -1.0), k, dim=-1).indices
    keep = torch.arange(k, device=g.device) < m[..., None]
    return torch.zeros_like(viol).scatter_(-1, top, keep) & viol


def _kkt(design, folds, ws, x, yc, a, b, active, sign, col_norm, probs):
    """For the flat problems ``probs`` (P,): the residuals (P, n), ``X^T r`` on all features
    (P, p+1), KKT violators outside the active sets (P, p+1), whether the active features'
    stationarity holds (P,), and ``|X^T r - b x|`` (P, p+1; ``|x_j^T r|`` off the working set:
    the dual point's scale for the gap, and the violators' strength).

    (Few passes over the (P, p+1) arrays: with every fold of a leave-one-out round open they
    are the check's cost, a third of the study's solve time when each built its own.)"""
    K, F, s = x.shape
    n, p = design.n, design.p
    r = (yc - _fit(design, folds, ws, x)).reshape(K * F, n)[probs]              # (P, n)
    g = r @ design.X[:n]                                                        # (P, p+1): x_j^T r
    a_p, b_p = a.reshape(-1)[probs], b.reshape(-1)[probs]
    r_norm = (KKT_ATOL * r.square().sum(-1).sqrt())[:, None]
    # a + slack, slack = a KKT_RTOL + KKT_ATOL ||r|| ||x_j|| (rounding of the product)
    bound = torch.addcmul(a_p[:, None] * KKT_RTOL, r_norm, col_norm).add_(a_p[:, None])
    absg = g.abs()
    viol = absg > bound
    ws_p = ws[probs // F]                                                       # (P, s)
    act_p = active.reshape(K * F, s)[probs]
    viol.scatter_(1, torch.where(act_p, ws_p, p), False)                         # active: never violators
    viol[:, p] = False
    x_p = x.reshape(K * F, s)[probs]
    g_ws = g.gather(1, ws_p) - b_p[:, None] * x_p
    stat = (g_ws - a_p[:, None] * sign.reshape(K * F, s)[probs]).abs()
    stat_ok = ~(act_p & (stat > a_p[:, None] * KKT_RTOL + r_norm * col_norm[ws_p])).any(-1)
    absg.scatter_(1, ws_p, g_ws.abs())
    absg[:, p] = 0
    return r, g, viol, stat_ok, absg


def _new_features(ws, k_of, viol, K, p):
    """(K, p+1) bool: the features that violators ``viol`` (P, p+1) of problems in groups
    ``k_of`` (P,) bring to their groups' working sets ``ws`` (not yet in them)."""
    wanted = torch.zeros((K, p + 1), dtype=torch.uint8, device=ws.device).scatter_reduce_(
        0, k_of[:, None].expand_as(viol), viol.view(torch.uint8), "amax") > 0
    new = wanted & ~torch.zeros((K, p + 1), dtype=torch.bool, device=ws.device).scatter_(1, ws, True)
    new[:, p] = False
    return new


def _enter(ws, x, active, sign, probs, viol, g, p, new_read=None):
    """Add the violators ``viol`` (P, p+1) of problems ``probs`` to their active sets: features
    already in the group's working set in place, the others appended to it. ``new_read``:
    (:func:`_new_features`, its largest row count) when the caller has read it."""
    K, F, s = x.shape
    dev = ws.device
    k_of = probs // F
    new, k_add = new_read if new_read is not None else (_new_features(ws, k_of, viol, K, p), None)
    n_new = new.sum(1)
    if k_add is None:
        k_add = int(n_new.max())
    if k_add:
        order = torch.argsort((~new).to(torch.int8), dim=1, stable=True)[:, :k_add]
        added = torch.where(torch.arange(k_add, device=dev)[None, :] < n_new[:, None], order, p)
        ws = torch.cat([ws, added], 1)
        pad = (0, k_add)
        x, sign = torch.nn.functional.pad(x, pad), torch.nn.functional.pad(sign, pad)
        active = torch.nn.functional.pad(active, pad)
    s2 = ws.shape[1]
    ws_p = ws[k_of]
    enter = viol.gather(1, ws_p) & (ws_p != p)                                  # (P, s2)
    act_f, sign_f = active.reshape(K * F, s2), sign.reshape(K * F, s2)
    act_f[probs] = act_f[probs] | enter
    sign_f[probs] = torch.where(enter, torch.sign(g.gather(1, ws_p)), sign_f[probs])
    return ws, x, act_f.reshape(K, F, s2), sign_f.reshape(K, F, s2)


def _record(gap, score, probs, take, r, g, x, yc, a, b, F, absg):
    """Write sklearn's duality gap (unscaled, float64, over all features) of the problems
    ``probs[take]`` into ``gap`` (K, F), and with one fold (F == 1) their KKT scores
    ``|x_j^T r| / a`` into ``score`` (K, p+1), from one check's residuals, ``X^T r`` and
    ``|X^T r - b x|`` (:func:`_kkt`)."""
    K, _, s = x.shape
    # every checked problem's gap is computed and only those taken are written (masked writes,
    # no host read of how many were taken)
    x_p = x.reshape(K * F, s)[probs]
    a_p, b_p = a.reshape(-1)[probs], b.reshape(-1)[probs]
    yc_p = yc.reshape(K * F, -1)[probs]
    new = enet_duality_gap(r.square().sum(-1), (r * yc_p).sum(-1), x_p.abs().sum(-1), x_p.square().sum(-1),
                           absg.amax(-1), torch.linalg.vector_norm(g, dim=-1).square(), a_p, b_p)
    gap.view(-1)[probs] = torch.where(take, new, gap.view(-1)[probs])
    if score is not None:
        sc = (g.abs() / a_p[:, None]).nan_to_num_(nan=0.0, posinf=torch.inf)
        score[probs] = torch.where(take[:, None], sc.to(score.dtype), score[probs])


def _carry(ws_from, coef, ws_to, p):
    """Coefficients on ``ws_from`` expressed on ``ws_to`` (a superset)."""
    K, F, s = coef.shape
    dense = torch.zeros((K, F, p + 1), dtype=coef.dtype, device=coef.device)
    dense.scatter_(2, ws_from[:, None, :].expand(K, F, s), coef)
    dense[:, :, p] = 0
    return dense.gather(2, ws_to[:, None, :].expand(K, F, ws_to.shape[1]))


def certify_dense(xc, yc, coef, a, b, max_rounds: int = MAX_ROUNDS):
    """The same certificate for small explicit designs (the full-set engine: every feature in).

    Parameters
    ----------
    xc : Tensor (K, n, k)
        Each group's centred training design (held-out rows zero).
    yc : Tensor (K, T, n)
        Centred training targets (held-out rows zero).
    coef : Tensor (K, T, k)
        The engine's answer.
    a, b : Tensor (K, T) float64

    Returns
    -------
    coef : Tensor (K, T, k), the exact optimum where certified, else ``coef``
    certified : Tensor (K, T) bool
    """
    x64, y64, w = xc.to(F64), yc.to(F64), coef.to(F64)
    K, T, k = w.shape
    gram = torch.bmm(x64.transpose(1, 2), x64)                                    # (K, k, k)
    c = torch.bmm(y64, x64)                                                       # (K, T, k)
    col_norm = x64.square().sum(1).sqrt()[:, None, :]                             # (K, 1, k)
    live = (col_norm > 0).expand(K, T, k)                                         # padding columns never enter
    active, sign = (w != 0) & live, torch.sign(w)
    x = w.clone()
    open_ = a > 0
    yy = y64.square().sum(-1)

    def kkt(x, active, sign):
        """X^T r (K, T, k), the violators outside the active sets, and whether the active
        features' stationarity holds (K, T)."""
        g = c - torch.einsum("ktj,kij->kti", x, gram)                             # X^T r
        r_norm = yy - 2 * (x * c).sum(-1) + (x * torch.einsum("kti,kij->ktj", x, gram)).sum(-1)
        slack = a[..., None] * KKT_RTOL + KKT_ATOL * r_norm.clamp_min(0).sqrt()[..., None] * col_norm
        viol = live & ~active & (g.abs() > a[..., None] + slack)
        stat = (g - b[..., None] * x - a[..., None] * sign).abs()
        return g, viol, ~(active & (stat > slack)).any(-1)

    # a point that already meets KKT (the engine's exact polish, a closed form) is certified as
    # it is: no solve
    _, viol, stat_ok = kkt(x, active, sign)
    certified = open_ & stat_ok & ~viol.any(-1)
    jitter = LASSO_JITTER * gram.diagonal(dim1=1, dim2=2).mean(-1)                # (K,)
    for _ in range(max_rounds):
        # the sign-pattern solves of the open problems only, each on its own active features
        probs = torch.nonzero((open_ & ~certified).reshape(-1)).squeeze(1)
        if not probs.numel():
            break
        grp = probs // T
        sol, ok, act = _dense_pattern_solves(gram.reshape(-1), c.reshape(K * T, k)[probs], a.reshape(-1)[probs],
                                             b.reshape(-1)[probs], jitter[grp], active.reshape(K * T, k)[probs],
                                             sign.reshape(K * T, k)[probs], grp, k)
        x.view(K * T, k)[probs] = sol
        active.view(K * T, k)[probs] = act                                        # sign flips dropped
        solved = torch.zeros((K, T), dtype=torch.bool, device=w.device)
        solved.view(-1)[probs] = ok
        g, viol, stat_ok = kkt(x, active, sign)
        certified = certified | (open_ & solved & stat_ok & ~viol.any(-1))
        still = open_ & ~certified
        if not bool(still.any()):
            break
        viol = viol & still[..., None]
        viol = _strongest(viol, g, _add_counts(viol, active.sum(-1)))
        active = torch.where(still[..., None], active | viol, active)
        sign = torch.where(viol, torch.sign(g), torch.where(active, torch.sign(x), sign))
    return torch.where(certified[..., None], x, w).to(coef.dtype), certified


def _dense_pattern_solves(gram_flat, c, a, b, jitter, active, sign, grp, k):
    """Sign-pattern solves ``(G + b I)_AA w_A = c_A - a s_A`` of P problems (flat), each on its
    own active features (compacted to the widest; was the full k x k system of every problem
    of the chunk, certified or not: half of Wav2Vec2's study run), coordinates whose sign flips
    dropped and solved again (up to MAX_DROPS); returns (x (P, k), solved (P,), the active sets
    after the drops (P, k))."""
    P = active.shape[0]
    out = torch.zeros((P, k), dtype=F64, device=c.device)
    ok = torch.zeros((P,), dtype=torch.bool, device=c.device)
    flipped = torch.zeros((P,), dtype=torch.bool, device=c.device)
    idx = torch.arange(P, device=c.device)
    act = active.clone()
    for _drop in range(MAX_DROPS):
        a_i = act[idx]
        width = max(int(a_i.sum(1).max()), 1)
        pos, valid = _positions(a_i, width)                                        # active first
        both = valid[:, :, None] & valid[:, None, :]
        sub = torch.take(gram_flat, (grp[idx][:, None, None] * k + pos[:, :, None]) * k + pos[:, None, :])
        eye = torch.eye(width, dtype=F64, device=c.device)
        m = torch.where(both, sub + b[idx][:, None, None] * eye, eye)
        rhs = torch.where(valid, c[idx].gather(1, pos) - a[idx][:, None] * sign[idx].gather(1, pos), 0.0)
        # the lasso's singular-but-consistent systems: a jitter the refinement removes
        lasso = torch.where(b[idx] > 0, 0.0, jitter[idx])
        chol, info = torch.linalg.cholesky_ex(m + lasso[:, None, None] * eye * both)
        sol = cho_solve(chol, rhs[..., None])
        for _refine in range(REFINE_STEPS):
            sol = sol + cho_solve(chol, rhs[..., None] - m @ sol)
        sol = sol[..., 0]
        good = (info == 0) & torch.isfinite(sol).all(-1)
        sol = torch.where(valid & good[:, None], sol, 0.0)
        full = torch.zeros((idx.numel(), k), dtype=F64, device=c.device).scatter_(1, pos, sol)
        full = torch.where(a_i, full, 0.0)
        flip = a_i & (torch.sign(full) != sign[idx])
        out[idx], ok[idx] = full, good
        again = flip.any(1)
        flipped[idx] = again
        act[idx] = a_i & ~flip
        if not bool(again.any()):
            break
        idx = idx[again]
    return out, ok & ~flipped, act
