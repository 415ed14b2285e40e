"""The GPU path's host-read schedule, timed on a device: fewer reads or fewer launches?

Session 15 cut the GPU path's host reads (a read drains the launch queue) by reading the dual
Newton loop every third step and the sign-flip drop loop once per batch, after two solves
(``gpurecon.solver.dual_newton.READ_EVERY``, ``certify.DROP_READ_EVERY`` / ``GPU_DROP_READS``):
a P1-shaped fit's reads fell 20-50% on every family and its launches rose 0-18% (the steps and
solves run between reads whether needed or not). Which costs more depends on the device's
launch and read latencies, which a CPU cannot measure. This script times both schedules on
``--device``: a P1-shaped fit per family (leave-one-out, ``--targets`` targets, 0.1 x
alpha_max, l1 0.5, ``strategy="gpu"``, 80 GB budget), the schedules alternating, best of
``--reps``, with each schedule's launch and read counts. The answers are the same certified
optima either way (their largest difference is printed).

Usage::

    python benchmarks/bench_read_schedule.py --device cuda
    python benchmarks/bench_read_schedule.py --device cpu --families pca --targets 4 --reps 1
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import bench_solver_cv as cv_bench  # noqa: E402  (light at import: numpy and torch come in main())

FAMILIES = cv_bench.ALL_FAMILIES


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="torch device to time on (default cuda)")
    ap.add_argument("--families", default="gpt2,outlier_trials,collinear", help=f"comma-separated subset of {FAMILIES}")
    ap.add_argument("--targets", type=int, default=127, help="targets per fit (default 127, the study's electrodes)")
    ap.add_argument("--reps", type=int, default=3, help="timed fits per schedule (default 3)")
    args = ap.parse_args(argv)
    args.families = [f for f in args.families.split(",") if f]
    bad = [f for f in args.families if f not in FAMILIES]
    if bad:
        ap.error(f"--families: unknown {bad}; allowed: {', '.join(FAMILIES)}")
    if args.targets < 1 or args.reps < 1:
        ap.error("--targets and --reps must be >= 1")
    return args


def schedules():
    """name -> the module constants it sets (the defaults restored after each fit)."""
    import gpurecon.solver.certify as certify
    import gpurecon.solver.dual_newton as dual_newton

    return {"session 15 (default)": {},
            "a read per step and per solve": {(dual_newton, "READ_EVERY"): 1, (certify, "DROP_READ_EVERY"): 1,
                                              (certify, "GPU_DROP_READS"): certify.MAX_DROPS}}


def fit(X, Y, alpha, device, settings):
    import torch

    from gpurecon.solver import cross_val_predict

    saved = {key: getattr(*key) for key in settings}
    try:
        for (mod, name), value in settings.items():
            setattr(mod, name, value)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = cross_val_predict(X, Y, [alpha], [0.5], device=device, memory_budget=80 * 2 ** 30, strategy="gpu")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return res, time.perf_counter() - t0
    finally:
        for (mod, name), value in saved.items():
            setattr(mod, name, value)


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import torch

    from gpurecon.profiling import OpCounter

    cv_bench._import_heavy()

    torch.set_num_threads(1)
    device = torch.device(args.device)
    plans = schedules()
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {args.targets} targets, best of {args.reps}", flush=True)
    print("| family | schedule | launches | host reads | seconds | / default | uncertified |\n"
          "|---|---|---|---|---|---|---|", flush=True)
    for fam in args.families:
        X, Y = cv_bench.load(fam, args.targets)
        alpha = 0.1 * cv_bench.alpha_max(X, Y, 0.5)
        Xd, Yd = torch.tensor(X, device=device), torch.tensor(Y, device=device)
        best, counts, preds = {}, {}, {}
        for name, settings in plans.items():          # warm-up and counts, untimed
            with OpCounter() as c:
                res, _ = fit(Xd, Yd, alpha, device, settings)
            counts[name] = (c.launches, c.syncs, int((~res.certified).sum()))
            preds[name] = res.predictions.cpu().numpy()
            best[name] = float("inf")
        for _ in range(args.reps):                    # alternating
            for name, settings in plans.items():
                best[name] = min(best[name], fit(Xd, Yd, alpha, device, settings)[1])
        base = best["session 15 (default)"]
        for name in plans:
            launches, syncs, unc = counts[name]
            print(f"| {fam} | {name} | {launches:,} | {syncs} | {best[name]:.3f} | {best[name] / base:.2f} | {unc} |",
                  flush=True)
        ref = preds["session 15 (default)"]
        diff = max(float(np.abs(p - ref).max()) for p in preds.values()) / float(np.abs(ref).mean())
        print(f"|  | largest difference of predictions / mean abs prediction: {diff:.1e} |  |  |  |  |  |", flush=True)


if __name__ == "__main__":
    main()
