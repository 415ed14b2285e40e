"""The ``workloads`` section of bench_solver.py: wall-clock times of P1, P2 and P3.

- P1  the study: LOO, gpt2 family, 127 targets, l1_ratio 0.5, alpha 1 and 0.3;
- P2  127 channels x 200 frames = 25,400 targets, LOO, 4 x 3 grid (sklearn on a subset of targets
      and folds, extrapolated linearly; gpurecon's CPU time on a subset of targets, extrapolated;
      CUDA at full size);
- P3  a 1000-permutation null of P1 at alpha 1 (sklearn on one permutation, extrapolated;
      gpurecon's CPU time on a few permutations, extrapolated; CUDA at full size).
"""

from __future__ import annotations

import numpy as np

import solver_data as data
from gpurecon.solver import permutations
from solver_runs import N, P_GRID_ALPHAS, P_GRID_L1, gpurecon_run, sklearn_loop, strided_folds


def _diff(ours, ref, scale):
    return float(np.max(np.abs(np.asarray(ours, dtype=np.float64) - ref) / scale))


def _ours(args, X, Y, alphas, l1s, perms=None):
    dev = args.device
    return gpurecon_run(X, Y, alphas, l1s, dev, 1 if dev == "cuda" else args.threads[0], args.dtype,
                        permutations=perms)


def run(args) -> list[str]:
    X, factors = data.gpt2_like()
    Y = data.trial_targets(factors)
    folds = strided_folds(10 if args.quick else args.sklearn_folds)
    rows = []
    for alpha in (1.0, 0.3):
        sk, sk_s, _ = sklearn_loop(X, Y, alpha, 0.5, folds, args.np_dtype)
        sk_s *= N / len(folds)
        res, s = _ours(args, X, Y, [alpha], [0.5])
        d = _diff(res.predictions[0].cpu().numpy()[folds], sk, Y.std(0))
        rows.append((f"P1 alpha={alpha:g}", sk_s, s, d, f"sklearn {len(folds)} folds; unconv {res.n_not_converged}"))
    print(rows[-1], flush=True)
    Y2 = data.frame_targets(factors)
    T = Y2.shape[1]
    rng = np.random.default_rng(0)
    n_sk = 4 if args.quick else 16
    n_ours = T if args.device == "cuda" else (64 if args.quick else 508)
    sub_sk = np.sort(rng.choice(T, n_sk, replace=False))
    sub = np.sort(np.union1d(sub_sk, rng.choice(T, max(n_ours - n_sk, 0), replace=False)))
    sk, sk_s = {}, 0.0
    for a in P_GRID_ALPHAS:
        for r in P_GRID_L1:
            sk[(a, r)], s, _ = sklearn_loop(X, Y2[:, sub_sk], a, r, folds, args.np_dtype)
            sk_s += s
    sk_s *= (T / n_sk) * (N / len(folds))
    res, s = _ours(args, X, Y2[:, sub], P_GRID_ALPHAS, P_GRID_L1)
    s *= T / len(sub)
    pos = np.searchsorted(sub, sub_sk)
    d = max(_diff(res.predictions[g].cpu().numpy()[folds][:, pos], sk[grid], Y2[:, sub_sk].std(0))
            for g, grid in enumerate(res.grid))
    rows.append(("P2 25,400 targets x 12 grid", sk_s, s, d,
                 f"sklearn {n_sk} targets x {len(folds)} folds, extrapolated; ours on {len(sub)} targets"
                 f"{'' if len(sub) == T else f', x{T / len(sub):.1f}'}; unconv {res.n_not_converged}"))
    print(rows[-1], flush=True)
    n_perm = 1000
    perms = permutations(N, n_perm, seed=0)
    k = n_perm if args.device == "cuda" else (4 if args.quick else 20)
    sk, sk_s, _ = sklearn_loop(X, Y[perms[0]], 1.0, 0.5, folds, args.np_dtype)
    sk_s *= n_perm * N / len(folds)
    res, s = _ours(args, X, Y, [1.0], [0.5], perms[:k])
    s *= (n_perm + 1) / (k + 1)
    d = _diff(res.null_predictions[0, 0].cpu().numpy()[folds], sk, Y[perms[0]].std(0))
    rows.append(("P3 1000-permutation null of P1", sk_s, s, d,
                 f"sklearn 1 permutation x {len(folds)} folds, extrapolated; ours on {k} permutations"
                 f"{'' if k == n_perm else ', extrapolated'}; unconv {res.n_not_converged}"))
    print(rows[-1], flush=True)
    dev = "CUDA" if args.device == "cuda" else f"CPU {args.threads[0]}t"
    out = [f"| workload | sklearn (s) | gpurecon {dev} (s) | speed-up | max pred diff / std (vs sklearn tol 1e-4) | notes |",
           "|---|---|---|---|---|---|"]
    out += [f"| {n} | {a:.1f} | {b:.2f} | {a / b:.1f}x | {d:.1e} | {note} |" for n, a, b, d, note in rows]
    return out + [""]

