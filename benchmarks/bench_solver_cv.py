"""Solver speed and exactness on every CV scheme and design family (issue G).

For each family x CV scheme (leave-one-out, 10-fold) x (alpha, l1_ratio): gpurecon's
``cross_val_predict`` against scikit-learn's per-fold loop at its DEFAULT tol (one
multi-output ``ElasticNet`` per fold), 1 torch thread and 1 BLAS thread each, in interleaved
pairs (the ratio is the median of the pairs' ratios, so machine load hits both alike);
skglm and celer (single-target fits on fold-centred data, their default tolerances) as
columns when installed. Exactness: the largest distance of each one's held-out predictions
from the certified exact optimum (``tests/certified_reference.py``: sign-pattern Newton, KKT
verified on every feature), in units of std(y); sklearn's "max_iter" counts its
ConvergenceWarnings. Alphas are fractions of the median (over targets) alpha_max.

Families: the four of bench_solver.py (``gpt2``, ``fasttext``, ``pca``, ``iid``) and six no
engine setting was tuned on (``solver_data.NEW_FAMILIES``). ``--counts`` adds, per family, the
launches and host syncs of a P1-shaped fit (LOO, 127 targets, the GPU path at an 80 GB
budget) counted on this CPU.

Usage::

    python benchmarks/bench_solver_cv.py                       # every family, LOO and 10-fold
    python benchmarks/bench_solver_cv.py --families gpt2,heavy_tails --cv k10 --fracs 0.1,0.01
    python benchmarks/bench_solver_cv.py --counts --markdown /tmp/cv.md
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))
sys.path.insert(2, os.path.join(os.path.dirname(HERE), "tests"))   # the certified reference

# numpy, torch, gpurecon: imported in main(), so that --help answers without them
np = torch = data = exact_enet = cross_val_predict = kfold = leave_one_out = None

ALL_FAMILIES = ("gpt2", "fasttext", "pca", "iid",                                # solver_data.FAMILIES
                "heavy_tails", "outlier_trials", "collinear", "wide_2000", "wide_10x5000",
                "target_scales")                                                  # solver_data.NEW_FAMILIES
# (fraction of alpha_max, l1_ratio) rows per family and scheme
DEFAULT_ROWS = "1:0.5,0.1:0.5,0.01:0.5,0.001:0.5,0.1:0.05,0.1:1.0"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(ALL_FAMILIES), help=f"comma-separated subset of {ALL_FAMILIES}")
    ap.add_argument("--cv", default="loo,k10", help="comma-separated subset of loo,k10")
    ap.add_argument("--rows", default=DEFAULT_ROWS, help="comma-separated FRACTION:L1_RATIO pairs "
                    f"(default {DEFAULT_ROWS})")
    ap.add_argument("--targets", type=int, default=3, help="targets per problem (default 3)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved timing pairs at most (default 3)")
    ap.add_argument("--peers", default="skglm,celer", help="peer columns, when installed ('' for none)")
    ap.add_argument("--counts", action="store_true", help="launch / sync counts per family (P1 shape)")
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    args.families = [f for f in args.families.split(",") if f]
    bad = [f for f in args.families if f not in ALL_FAMILIES]
    if bad:
        ap.error(f"--families: unknown {bad}; allowed: {', '.join(ALL_FAMILIES)}")
    args.cv = [c for c in args.cv.split(",") if c]
    if not set(args.cv) <= {"loo", "k10"}:
        ap.error(f"--cv must be a subset of loo,k10, got {args.cv}")
    try:
        args.rows = [(float(a), float(b)) for a, b in (r.split(":") for r in args.rows.split(",") if r)]
    except ValueError:
        ap.error(f"--rows must be FRACTION:L1_RATIO pairs, got {args.rows!r}")
    args.peers = [p for p in args.peers.split(",") if p]
    return args


def load(family: str, n_targets: int):
    if family in data.FAMILIES:
        X, Y = data.family(family)
        return X.astype(np.float64), Y[:, :n_targets].astype(np.float64)
    return data.new_family(family, n_targets)


def masks_of(cv: str, n: int) -> np.ndarray:
    return leave_one_out(n) if cv == "loo" else kfold(n, 10, shuffle=True, seed=0)


def alpha_max(X, Y, l1):
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    am = np.abs(Xc.T @ Yc).max(0) / (len(X) * max(l1, 1e-3))
    return float(np.median(am[am > 0]))


def fold_loop(fit_predict, X, Y, masks):
    """Held-out predictions (n, T) of one fit per fold; seconds; ConvergenceWarnings."""
    pred = np.zeros(Y.shape)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for train in masks:
            pred[~train] = fit_predict(X[train], Y[train], X[~train])
    n_warn = sum("onverge" in str(w.message) or "Convergence" in type(w.message).__name__ for w in caught)
    return pred, time.perf_counter() - t0, n_warn


def sklearn_fit(alpha, l1):
    from sklearn.linear_model import ElasticNet

    return lambda Xt, Yt, Xh: ElasticNet(alpha=alpha, l1_ratio=l1).fit(Xt, Yt).predict(Xh).reshape(len(Xh), -1)


def peer_fit(name, alpha, l1):
    Peer = __import__(name).ElasticNet
    if name not in _WARM:     # numba compilation on the first fit is not the solver's time
        rng = np.random.default_rng(0)
        Peer(alpha=0.1, l1_ratio=0.5, fit_intercept=False).fit(np.asfortranarray(rng.standard_normal((20, 30))),
                                                                rng.standard_normal(20))
        _WARM.add(name)

    def fit(Xt, Yt, Xh):
        xm, ym = Xt.mean(0), Yt.mean(0)
        Xc = np.asfortranarray(Xt - xm)
        out = np.zeros((len(Xh), Yt.shape[1]))
        for t in range(Yt.shape[1]):
            m = Peer(alpha=alpha, l1_ratio=l1, fit_intercept=False).fit(Xc, Yt[:, t] - ym[t])
            out[:, t] = (Xh - xm) @ m.coef_ + ym[t]
        return out

    return fit


_WARM: set = set()


def gpurecon_fit(X, Y, alpha, l1, masks):
    t0 = time.perf_counter()
    with warnings.catch_warnings():   # uncertified problems show in the table's own column
        warnings.simplefilter("ignore")
        res = cross_val_predict(X, Y, [alpha], [l1], folds=masks, device="cpu")
    sec = time.perf_counter() - t0
    return res.predictions[0].numpy(), sec, res


def exact_predictions(X, Y, alpha, l1, masks):
    out = np.zeros(Y.shape)
    for train in masks:
        for t in range(Y.shape[1]):
            out[~train, t] = exact_enet(X[train], Y[train, t], alpha, l1).predict(X[~train])
    return out


def installed(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def run_row(family, cv, frac, l1, X, Y, args):
    masks = masks_of(cv, len(X))
    alpha = frac * alpha_max(X, Y, l1)
    scale = np.where(Y.std(0) > 0, Y.std(0), 1.0)
    g_sec, s_sec, ratios = [], [], []
    for rep in range(args.reps):
        gp, gs, res = gpurecon_fit(X, Y, alpha, l1, masks)
        sp, ss, s_warn = fold_loop(sklearn_fit(alpha, l1), X, Y, masks)
        g_sec.append(gs), s_sec.append(ss), ratios.append(ss / gs)
        if rep == 0:
            g_pred, s_pred, s_warn0, certified = gp, sp, s_warn, res.certified
        if sum(g_sec) + sum(s_sec) > 20:     # long rows: fewer pairs
            break
    ex = exact_predictions(X, Y, alpha, l1, masks)
    row = dict(family=family, cv=cv, folds=len(masks), frac=frac, l1=l1, alpha=alpha, T=Y.shape[1],
               g_sec=statistics.median(g_sec), s_sec=statistics.median(s_sec), ratio=statistics.median(ratios),
               g_err=float((np.abs(g_pred - ex) / scale).max()), s_err=float((np.abs(s_pred - ex) / scale).max()),
               s_warn=s_warn0, problems=len(masks) * Y.shape[1],
               uncertified=int((~certified).sum()) if certified is not None else -1, peers={})
    for name in args.peers:
        if installed(name):
            pp, ps, pw = fold_loop(peer_fit(name, alpha, l1), X, Y, masks)
            row["peers"][name] = (ps, float((np.abs(pp - ex) / scale).max()), pw)
    return row


def fmt(row, peers):
    cells = [row["family"], f"{row['cv']} ({row['folds']})", f"{row['frac']:g}", f"{row['l1']:g}",
             f"{row['g_sec']:.3f}", f"{row['s_sec']:.3f}", f"**{row['ratio']:.2f}x**", f"{row['g_err']:.1e}",
             f"{row['s_err']:.1e}", f"{row['s_warn']}/{row['problems']}", f"{row['uncertified']}/{row['problems']}"]
    for name in peers:
        if name in row["peers"]:
            ps, pe, pw = row["peers"][name]
            cells.append(f"{ps:.3f} s ({row['s_sec'] / ps:.2f}x sk), err {pe:.1e}")
        else:
            cells.append("-")
    return "| " + " | ".join(cells) + " |"


def header(peers):
    cols = ["family", "CV (folds)", "alpha / alpha_max", "l1_ratio", "gpurecon s", "sklearn s", "sklearn / gpurecon",
            "gpurecon err", "sklearn err", "sklearn max_iter", "uncertified"] + [f"{p} (vs sklearn), err" for p in peers]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def count_rows(families):
    """Launches and host syncs of a P1-shaped fit per family: LOO, 127 targets, alpha
    0.1 x alpha_max, l1 0.5, the GPU path (strategy="gpu", 80 GB budget) counted on this CPU."""
    from gpurecon.profiling import OpCounter

    out = []
    for fam in families:
        X, Y = load(fam, 127)
        alpha = 0.1 * alpha_max(X, Y, 0.5)
        with OpCounter() as c, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = cross_val_predict(X, Y, [alpha], [0.5], device="cpu", memory_budget=80 * 2 ** 30, strategy="gpu")
        out.append(f"| {fam} | {Y.shape[1]} | {c.launches:,} | {c.syncs} | {c.flops / 1e9:.1f} | "
                   f"{int((~res.certified).sum())}/{res.certified.numel()} |")
    return ("| family | targets | launches | host syncs | GFLOP | uncertified |\n|---|---|---|---|---|---|\n"
            + "\n".join(out))


def _import_heavy():
    global np, torch, data, exact_enet, cross_val_predict, kfold, leave_one_out
    import numpy as np
    import torch

    import solver_data as data
    from certified_reference import exact_enet
    from gpurecon.solver import cross_val_predict, kfold, leave_one_out
    assert ALL_FAMILIES == data.FAMILIES + data.NEW_FAMILIES, "keep ALL_FAMILIES in step with solver_data"


def main(argv=None):
    args = parse_args(argv)
    _import_heavy()
    torch.set_num_threads(1)
    peers = [p for p in args.peers if installed(p)]
    warm_X, warm_Y = load("gpt2", 2)
    cross_val_predict(warm_X[:30, :50], warm_Y[:30], [0.1], [0.5])      # lazy init, not timed
    lines = [header(peers)]
    print(lines[0], flush=True)
    rows = []
    for fam in args.families:
        X, Y = load(fam, args.targets)
        for cv in args.cv:
            for frac, l1 in args.rows:
                row = run_row(fam, cv, frac, l1, X, Y, args)
                rows.append(row)
                lines.append(fmt(row, peers))
                print(lines[-1], flush=True)
    worst = min(rows, key=lambda r: r["ratio"]) if rows else None
    summary = []
    if worst:
        summary.append(f"Worst row: {worst['family']} {worst['cv']} alpha {worst['frac']:g} x alpha_max, "
                       f"l1 {worst['l1']:g}: {worst['ratio']:.2f}x sklearn.")
        summary.append(f"Largest gpurecon error: {max(r['g_err'] for r in rows):.1e} x std(y); "
                       f"uncertified problems: {sum(max(r['uncertified'], 0) for r in rows)}.")
    if args.counts:
        summary.append("\n" + count_rows(args.families))
    text = "\n".join(lines) + "\n\n" + "\n".join(summary) + "\n"
    print("\n".join(summary))
    if args.markdown:
        tmp = args.markdown + ".tmp"
        with open(tmp, "w") as f:
            f.write("## Solver: every CV scheme and family\n\n"
                    f"`python benchmarks/bench_solver_cv.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
                    f" (torch {torch.__version__}, 1 thread each side)\n\n" + text)
        os.replace(tmp, args.markdown)


if __name__ == "__main__":
    main()
