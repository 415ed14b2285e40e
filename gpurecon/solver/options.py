"""Tuning constants shared by several solver modules (each module keeps its own others).

None of these changes what an answer is (the certificate of :mod:`.certify` decides that, in
float64); they decide how fast the engine gets there.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- warm starts
# A feature joins a warm-started working set when its full-data KKT score |X_j^T R|/a is at
# least this: folds move scores by about 1/n, so 0.9 keeps every likely entrant.
WARM_SCORE = 0.9

# --------------------------------------------------------------------------- full-set engine
# (:mod:`.full_set`, designs preprocessed inside each fold)
# The inner solve aims below sklearn's tolerance so the full check rarely fails on rounding.
INNER_FRACTION = 0.5
# FISTA: repack the batch when the live problems fill at most this fraction of it.
FISTA_COMPACT_AT = 0.6
# FISTA reads its live counts on the host (to stop or repack) at every this-many-th gap check:
# problems freeze on the device at every check, so results do not depend on it; a larger
# value trades host syncs for identity iterations after the last problem froze.
FISTA_SYNC_EVERY = 2
# Coordinate descent: repack the batch when the live problems fill at most this fraction of it.
CD_COMPACT_AT = 0.5
# Anderson extrapolation (skglm's anderson_cd) from this many successive epochs' iterates.
ANDERSON_MEMORY = 5
# Every this many Anderson cycles, a Newton step on each problem's current sign pattern.
FACE_NEWTON_EVERY = 2

# --------------------------------------------------------------------------- active-set Newton
# The largest zero-constraint system per problem in a shared-inverse PDAS round (beyond it the
# problem sits the round out and is solved on its own).
MAX_CONSTRAINTS = 96
# The most features one fold's pattern may depart from its group's shared pattern by (entered
# plus dropped) in a bordered PDAS round (:func:`.newton.bordered_pdas`); beyond it the fold is
# solved on its own.
MAX_BORDER = 32
# Bordered rounds (newton._Border): where at least this fraction of the (group, fold) problems is
# open, products with the groups' shared inverses run in (group, fold) slots (closed problems'
# slots zero) instead of on a per-problem copy of each inverse.
SLOT_FRACTION = 0.5
