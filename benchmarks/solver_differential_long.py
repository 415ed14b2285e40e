"""The long differential run: many seeded random ElasticNet problems against scikit-learn.

The CI version is tests/test_solver_differential.py (a few dozen problems, max_iter 500);
this one draws ``--n-problems`` single fits and ``--n-cv`` cross-validations (LOO and
5-fold, alternating) from ``tests/solver_families.py`` at tol 1e-10 with the same
``--max-iter`` for sklearn and for us, and prints every failure. Exit status 1 on any failure.

    python benchmarks/solver_differential_long.py --n-problems 200 --n-cv 30
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import solver_families as fam

from gpurecon.solver import kfold, leave_one_out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-problems", type=int, default=100, help="single fits (enet_path_fit)")
    ap.add_argument("--n-cv", type=int, default=10, help="cross-validations (cross_val_predict)")
    ap.add_argument("--seed", type=int, default=10_000, help="first seed")
    ap.add_argument("--max-iter", type=int, default=10_000, help="epochs for sklearn and for us")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    failed = compared = skipped = 0
    t0 = time.perf_counter()
    for i in range(args.n_problems + args.n_cv):
        seed = args.seed + i
        t = time.perf_counter()
        if i < args.n_problems:
            prob = fam.random_problem(seed)
            fails, c, s = fam.compare_single(prob, max_iter=args.max_iter)
        else:
            prob = fam.random_problem(seed, n_range=(20, 40))
            n = len(prob.X)
            folds = leave_one_out(n) if i % 2 == 0 else kfold(n, 5, shuffle=True, seed=seed)
            fails, c, s = fam.compare_cv(prob, folds, max_iter=args.max_iter)
        compared, skipped, failed = compared + c, skipped + s, failed + bool(fails)
        print(f"{'FAIL' if fails else 'ok  '} {time.perf_counter() - t:6.2f}s {prob.label}", flush=True)
        for msg in fails:
            print("     ", msg, flush=True)
    print(f"{failed} failing problems; {compared} (fold) problems compared, {skipped} skipped "
          f"(sklearn not converged in {args.max_iter} epochs); {time.perf_counter() - t0:.0f}s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
