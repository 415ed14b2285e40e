"""Benchmark of gpurecon.solver against scikit-learn's ElasticNet loop, measured in the same run.

Sections (``--sections``):

- ``families``  every data family of ``solver_data`` (gpt2, fasttext, pca, iid) with n=100 trials,
                leave-one-out (100 folds), l1_ratio 0.5, at alpha 1 (the study's), at the alpha
                with ~10% non-zero coefficients and at one with more non-zeros than n (both read
                from an sklearn path on the full data, printed); ``--targets`` targets;
- ``grid``      each family on a 4 x 3 alpha x l1_ratio grid in one call (alphas relative to the
                family's ~10% alpha: x10, x3, x1, x1/3; l1_ratio 0.1, 0.5, 0.9);
- ``counts``    ATen operations, estimated kernel launches, host synchronisations and flops
                (``gpurecon.profiling.OpCounter``) of P1 (the study's LOO fit: gpt2, 127 targets,
                alpha 1), P1 on the 4 x 3 grid, P2 (25,400 time-resolved targets x 12 grid) and P3
                (P1 + a 1000-permutation null) at each ``--budget``; P2 and P3 are counted on a
                subset of targets / permutations and scaled by their number of target chunks;
- ``workloads`` the wall-clock times of P1, P2, P3 (sklearn extrapolated from subsets, as stated).

Columns: sklearn's per-fold multi-output ``ElasticNet`` loop (tol 1e-4, the CPU reference),
gpurecon at 1 and 2 torch threads (or on CUDA with ``--device cuda``), skglm and celer (one fit
per target and fold; where installed). Every cell: seconds, ratio = sklearn time / its time,
problems not converged, and max |held-out prediction - exact| / std(y), the exact reference
being sklearn at tol 1e-10 in float64 on a subset of targets and folds (printed).

    python benchmarks/bench_solver.py                       # families, grid, counts (~20 min, 2 cores)
    python benchmarks/bench_solver.py --quick               # < 2 min
    python benchmarks/bench_solver.py --families iid --targets 12,127 --markdown out.md
    python benchmarks/bench_solver.py --device cuda --sections families,counts,workloads --quick
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SECTIONS = ("families", "grid", "counts", "workloads")
FAMILY_NAMES = ("gpt2", "fasttext", "pca", "iid")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--sections", default="families,grid,counts",
                    help=f"comma-separated subset of {','.join(SECTIONS)} (default: families,grid,counts)")
    ap.add_argument("--families", default=",".join(FAMILY_NAMES),
                    help=f"comma-separated subset of {','.join(FAMILY_NAMES)}")
    ap.add_argument("--targets", default="12", help="comma-separated target counts, e.g. 12,127 (default 12)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny subset (< 2 min): gpt2 and iid at alpha 1 and ~10%%, 4 targets, sklearn "
                         "on 20 folds, no grid, P1 counts only")
    ap.add_argument("--threads", default="1,2", help="torch CPU threads for the gpurecon columns (default 1,2)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="device of the gpurecon columns (cuda: timed after a warm-up, synchronised)")
    ap.add_argument("--budget", default="cpu,80",
                    help="memory budgets for the op counts: 'cpu' (the solver's CPU default) and/or "
                         "GB numbers (default cpu,80)")
    ap.add_argument("--peers", default="skglm,celer", help="extra columns where installed ('' for none)")
    ap.add_argument("--peer-folds", type=int, default=20, help="folds the peers run on (time extrapolated)")
    ap.add_argument("--grid-peer-folds", type=int, default=5, help="folds the peers run on in grid rows")
    ap.add_argument("--extra-thread-cap", type=float, default=10.0,
                    help="run the 2nd --threads count only where the 1st took at most this many seconds")
    ap.add_argument("--sklearn-folds", type=int, default=100,
                    help="folds sklearn's loop runs on (time extrapolated to 100)")
    ap.add_argument("--exact-targets", type=int, default=3, help="targets of the tol=1e-10 reference")
    ap.add_argument("--exact-folds", type=int, default=10, help="folds of the tol=1e-10 reference")
    ap.add_argument("--p2-count-targets", type=int, default=32, help="P2 targets counted (x 12 grid)")
    ap.add_argument("--p3-count-permutations", type=int, default=4, help="P3 permutations counted")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--markdown", metavar="OUT", help="also write the Markdown tables to OUT (atomically)")
    args = ap.parse_args(argv)
    args.sections = _pick(ap, "--sections", args.sections, SECTIONS)
    args.families = _pick(ap, "--families", args.families, FAMILY_NAMES)
    args.targets = _ints(ap, "--targets", args.targets)
    args.threads = _ints(ap, "--threads", args.threads)
    args.peers = _pick(ap, "--peers", args.peers, ("skglm", "celer"))
    budgets = []
    for b in (s.strip() for s in args.budget.split(",") if s.strip()):
        try:
            budgets.append(None if b == "cpu" else float(b) * 1e9)
        except ValueError:
            ap.error(f"--budget takes 'cpu' or numbers of GB, got {b!r}")
    args.budgets = budgets
    if args.quick:
        args.families = [f for f in args.families if f in ("gpt2", "iid")] or args.families[:1]
        args.targets, args.sklearn_folds, args.peer_folds, args.extra_thread_cap = [4], 20, 5, 1.0
        args.exact_targets, args.exact_folds = 2, 5
        args.sections = [s for s in args.sections if s != "grid"]
        args.p2_count_targets, args.p3_count_permutations = 0, 0
    for name in ("peer_folds", "grid_peer_folds", "sklearn_folds", "exact_targets", "exact_folds"):
        if not 1 <= getattr(args, name) <= 100:
            ap.error(f"--{name.replace('_', '-')} must be in 1..100, got {getattr(args, name)}")
    return args


def _pick(ap, flag, value, allowed):
    got = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in got if s not in allowed]
    if bad:
        ap.error(f"{flag} must list some of {','.join(allowed)}, got {bad}")
    return got


def _ints(ap, flag, value):
    try:
        got = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        got = []
    if not got or min(got) < 1:
        ap.error(f"{flag} takes comma-separated positive integers, got {value!r}")
    return got


def main(argv=None):
    args = parse_args(argv)
    args.command = shlex.join(["python", "benchmarks/bench_solver.py", *(sys.argv[1:] if argv is None else argv)])
    import solver_runs as runs                  # torch, numpy, sklearn: only past --help

    runs.run_all(args)


sys.path.insert(0, HERE)                  # solver_data, solver_runs, solver_workloads
sys.path.insert(1, os.path.dirname(HERE))  # gpurecon from the source tree

if __name__ == "__main__":
    main()
