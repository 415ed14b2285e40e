"""Benchmark of gpurecon.solver against scikit-learn's ElasticNet, measured in the same run.

Workloads (synthetic data shaped like the study's; see ``gpt2_like``):

- P1  the study: leave-one-out, n=100 trials, p=768 GPT-2-like features (unscaled, a few
      large-magnitude dimensions), 127 targets, l1_ratio=0.5, at alpha=1 (the study's) and at
      an alpha where about 10% of the coefficients are non-zero;
- P2  time-resolved grid: 127 channels x 200 frames = 25,400 targets, LOO, 4 alphas x 3
      l1_ratios (sklearn on a subset of targets, extrapolated linearly; gpurecon's CPU time too
      unless ``--p2-cpu-targets 25400``);
- P3  a 1000-permutation null of P1 (alpha=1): the permutations are extra targets (sklearn on
      one permutation, extrapolated; gpurecon's CPU time on ``--p3-cpu-permutations``).

Each prints the sklearn time, the gpurecon CPU time, the gpurecon CUDA time when a GPU is
present ("CUDA: not available" otherwise), their ratios, and the largest difference between
gpurecon's and sklearn's held-out predictions relative to each target's standard deviation.

    python benchmarks/bench_solver.py                 # everything (long on a CPU)
    python benchmarks/bench_solver.py --problems P1 --quick
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from gpurecon.solver import cross_val_predict, permutations  # noqa: E402

N, P, C = 100, 768, 127
FRAMES = 200
P1_ALPHAS = {"alpha=1 (study)": 1.0, "alpha=0.3 (~10% non-zero)": 0.3}
P2_ALPHAS, P2_L1 = [0.3, 1.0, 3.0, 10.0], [0.1, 0.5, 0.9]


# --------------------------------------------------------------------------- data


def gpt2_like(n=N, p=P, seed=0):
    """Embeddings like GPT-2's last hidden state, unscaled: a common offset, a low-rank
    anisotropic cloud, isotropic noise, and 4 dimensions with large means and larger spread."""
    rng = np.random.default_rng(seed)
    k = 20
    factors = rng.standard_normal((n, k)) * np.geomspace(3, 0.3, k)
    X = 0.3 * rng.standard_normal(p) + 0.3 * factors @ (rng.standard_normal((k, p)) / np.sqrt(k))
    X += 0.15 * rng.standard_normal((n, p))
    big = rng.choice(p, 4, replace=False)
    X[:, big] = X[:, big] * 5.0 + rng.normal(0, 60, size=4)
    return X.astype(np.float32), factors


def trial_targets(factors, n_channels=C, seed=1):
    """High-gamma-like trial means: an electrode profile plus a weak embedding effect."""
    rng = np.random.default_rng(seed)
    n, k = factors.shape
    profile = rng.gamma(2.0, 1.0, size=n_channels)
    Y = profile + factors @ (0.05 * rng.standard_normal((k, n_channels))) + 0.5 * rng.standard_normal((n, n_channels))
    return (10.0 * Y).astype(np.float32)


def frame_targets(factors, n_channels=C, frames=FRAMES, seed=2):
    """Time-resolved targets (trials, channels*frames): each channel's effect follows a smooth
    time course peaking at its own latency; noise is smooth over frames."""
    rng = np.random.default_rng(seed)
    n, k = factors.shape
    t = np.arange(frames)
    latency = rng.uniform(20, 180, n_channels)
    course = np.exp(-0.5 * ((t[None, :] - latency[:, None]) / 25.0) ** 2)             # (C, frames)
    profile = rng.gamma(2.0, 1.0, size=n_channels)
    effect = factors @ (0.05 * rng.standard_normal((k, n_channels)))                   # (n, C)
    noise = rng.standard_normal((n, n_channels, frames + 9))
    noise = np.stack([noise[..., i:i + frames] for i in range(10)]).mean(0) * np.sqrt(10) * 0.5
    Y = profile[None, :, None] * (0.5 + course[None]) + effect[:, :, None] * course[None] + noise
    return (10.0 * Y.reshape(n, n_channels * frames)).astype(np.float32)


# --------------------------------------------------------------------------- timing


def sklearn_loo(X, Y, alpha, l1_ratio, folds, dtype=np.float32):
    """Held-out predictions of the study's loop: one multi-output sklearn fit per fold (in the
    same dtype as gpurecon's run)."""
    from sklearn.linear_model import ElasticNet

    X64, Y64 = X.astype(dtype), Y.astype(dtype)
    out = np.zeros((len(folds), Y.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j, i in enumerate(folds):
            train = np.arange(len(X)) != i
            out[j] = ElasticNet(alpha=alpha, l1_ratio=l1_ratio).fit(X64[train], Y64[train]).predict(X64[i:i + 1])[0]
    return out


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def cpu_run(args, fn):
    return (None, None) if args.skip_cpu else timed(fn)


def gpu_run(fn):
    if not torch.cuda.is_available():
        return None, None
    fn()  # warm-up: CUDA context, kernels, allocator
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def max_rel_diff(ours, ref, scale):
    return float(np.max(np.abs(np.asarray(ours, dtype=np.float64) - ref) / scale))


def report(name, sk_s, cpu_s, gpu_s, diff, notes=""):
    line = f"{name}: sklearn {sk_s:9.1f} s | " + (f"gpurecon CPU {cpu_s:8.2f} s ({sk_s / cpu_s:6.1f}x)"
                                                  if cpu_s is not None else "gpurecon CPU: skipped")
    line += (f" | CUDA {gpu_s:7.2f} s ({sk_s / gpu_s:7.1f}x)" if gpu_s is not None else " | CUDA: not available")
    line += f" | max |pred - sklearn| / std(y) = {diff:.2e}"
    print(line + (f"  [{notes}]" if notes else ""), flush=True)
    return dict(name=name, sk=sk_s, cpu=cpu_s, gpu=gpu_s, diff=diff, notes=notes)


# --------------------------------------------------------------------------- workloads


def run_p1(args, X, factors):
    Y = trial_targets(factors)
    std = Y.std(0)
    rows = []
    sk_folds = np.arange(10) if args.quick else np.arange(N)
    for label, alpha in P1_ALPHAS.items():
        sk, sk_s = timed(lambda: sklearn_loo(X, Y, alpha, 0.5, sk_folds, args.np_dtype))
        sk_s *= N / len(sk_folds)
        res, cpu_s = cpu_run(args, lambda: cross_val_predict(X, Y, alpha, 0.5, device="cpu", dtype=args.dtype))
        gres, gpu_s = gpu_run(lambda: cross_val_predict(X, Y, alpha, 0.5, device="cuda", dtype=args.dtype))
        res = res or gres
        pred = res.predictions[0].cpu().numpy()[sk_folds] if res is not None else np.full_like(sk, np.nan)
        nnz = _nonzero_fraction(X, Y, alpha)
        note = f"{nnz:.1%} coefficients non-zero; not converged: {res.n_not_converged if res is not None else 'n/a'}"
        if len(sk_folds) < N:
            note += f"; sklearn on {len(sk_folds)} folds x{N // len(sk_folds)}"
        rows.append(report(f"P1 {label}", sk_s, cpu_s, gpu_s, max_rel_diff(pred, sk, std), note))
    return rows


def _nonzero_fraction(X, Y, alpha):
    from gpurecon.solver import enet_path_fit
    return float((enet_path_fit(X, Y, alpha, 0.5, device="cpu").coef != 0).float().mean())


def run_p2(args, X, factors):
    Y = frame_targets(factors)
    T = Y.shape[1]
    rng = np.random.default_rng(0)
    sub_sk = np.sort(rng.choice(T, args.p2_sklearn_targets, replace=False))
    sub_cpu = np.sort(np.union1d(sub_sk, rng.choice(T, max(args.p2_cpu_targets - len(sub_sk), 0), replace=False)))
    sk_folds = np.arange(10) if args.quick else np.arange(N)
    t0 = time.perf_counter()
    sk = {}
    for a in P2_ALPHAS:
        for r in P2_L1:
            sk[(a, r)] = sklearn_loo(X, Y[:, sub_sk], a, r, sk_folds, args.np_dtype)
    sk_s = (time.perf_counter() - t0) * (T / len(sub_sk)) * (N / len(sk_folds))
    res, cpu_s = cpu_run(args, lambda: cross_val_predict(X, Y[:, sub_cpu], P2_ALPHAS, P2_L1, device="cpu",
                                                          dtype=args.dtype))
    cpu_s = cpu_s * T / len(sub_cpu) if cpu_s is not None else None
    gres, gpu_s = gpu_run(lambda: cross_val_predict(X, Y, P2_ALPHAS, P2_L1, device="cuda", dtype=args.dtype))
    pos = np.searchsorted(sub_cpu, sub_sk)
    if res is None and gres is not None:
        res, pos = gres, sub_sk
    std = Y[:, sub_sk].std(0)
    diff = max(max_rel_diff(res.predictions[g].cpu().numpy()[sk_folds][:, pos], sk[grid], std)
               for g, grid in enumerate(res.grid)) if res is not None else float("nan")
    note = (f"sklearn: {len(sub_sk)} targets x {len(sk_folds)} folds, extrapolated linearly to {T} x {N}; "
            f"gpurecon CPU: {len(sub_cpu)} targets, extrapolated x{T / len(sub_cpu):.1f}; "
            f"not converged: {res.n_not_converged if res is not None else 'n/a'}")
    return [report("P2 25,400 targets x 12 grid, LOO", sk_s, cpu_s, gpu_s, diff, note)]


def run_p3(args, X, factors):
    Y = trial_targets(factors)
    n_perm = 1000
    perms = permutations(N, n_perm, seed=0)
    sk_folds = np.arange(10) if args.quick else np.arange(N)
    sk, sk_s = timed(lambda: sklearn_loo(X, Y[perms[0]], 1.0, 0.5, sk_folds, args.np_dtype))
    sk_s *= n_perm * N / len(sk_folds)
    k = args.p3_cpu_permutations
    res, cpu_s = cpu_run(args, lambda: cross_val_predict(X, Y, 1.0, 0.5, permutations=perms[:k], device="cpu",
                                                          dtype=args.dtype))
    cpu_s = cpu_s * (n_perm + 1) / (k + 1) if cpu_s is not None else None
    gres, gpu_s = gpu_run(lambda: cross_val_predict(X, Y, 1.0, 0.5, permutations=perms, device="cuda",
                                                    dtype=args.dtype))
    res = res or gres
    std = Y[perms[0]].std(0)
    diff = max_rel_diff(res.null_predictions[0, 0].cpu().numpy()[sk_folds], sk, std) if res is not None else float("nan")
    note = (f"sklearn: 1 permutation x {len(sk_folds)} folds, extrapolated x{n_perm * N // len(sk_folds)}; "
            f"gpurecon CPU: {k} permutations + the real targets, extrapolated to {n_perm}; "
            f"not converged: {res.n_not_converged if res is not None else 'n/a'}")
    return [report("P3 1000-permutation null of P1", sk_s, cpu_s, gpu_s, diff, note)]


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{gpu}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default="P1,P2,P3", help="comma-separated subset of P1,P2,P3")
    ap.add_argument("--quick", action="store_true", help="sklearn on 10 folds, small CPU subsets")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (sklearn's coordinate descent is single-threaded)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--skip-cpu", action="store_true",
                    help="no gpurecon CPU runs (a GPU check: sklearn --quick subsets + CUDA at full size)")
    ap.add_argument("--p2-sklearn-targets", type=int, default=None)
    ap.add_argument("--p2-cpu-targets", type=int, default=None)
    ap.add_argument("--p3-cpu-permutations", type=int, default=None)
    args = ap.parse_args(argv)
    args.np_dtype = np.dtype(args.dtype).type
    args.dtype = getattr(torch, args.dtype)
    args.p2_sklearn_targets = args.p2_sklearn_targets or (4 if args.quick else 16)
    args.p2_cpu_targets = args.p2_cpu_targets or (64 if args.quick else 508)
    args.p3_cpu_permutations = args.p3_cpu_permutations or (4 if args.quick else 20)
    torch.set_num_threads(args.threads)
    problems = [p.strip().upper() for p in args.problems.split(",") if p.strip()]
    bad = [p for p in problems if p not in ("P1", "P2", "P3")]
    if bad:
        ap.error(f"--problems must list P1, P2 or P3, got {bad}")
    print(f"machine: {machine()}; dtype {args.dtype}; quick={args.quick}", flush=True)
    X, factors = gpt2_like()
    rows = []
    for name, fn in (("P1", run_p1), ("P2", run_p2), ("P3", run_p3)):
        if name in problems:
            rows += fn(args, X, factors)
    print("\n| workload | sklearn (s) | gpurecon CPU (s) | CPU speed-up | CUDA (s) | max pred diff / std | notes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        gpu = f"{r['gpu']:.2f} ({r['sk'] / r['gpu']:.0f}x)" if r["gpu"] is not None else "not available"
        cpu = (f"{r['cpu']:.2f} | {r['sk'] / r['cpu']:.1f}x" if r["cpu"] is not None else "skipped | -")
        print(f"| {r['name']} | {r['sk']:.1f} | {cpu} | {gpu} | {r['diff']:.1e} | {r['notes']} |")


if __name__ == "__main__":
    main()
