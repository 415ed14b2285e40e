"""The measurements of ``bench_solver.py`` (imported after argument parsing: torch lives here)."""

from __future__ import annotations

import os
import platform
import tempfile
import time
import warnings

import numpy as np
import torch

import solver_data as data
from gpurecon.profiling import OpCounter
from gpurecon.solver import cross_val_predict, elasticnet as en, leave_one_out, permutations

N = data.N
L1 = 0.5
P_GRID_ALPHAS, P_GRID_L1 = (0.3, 1.0, 3.0, 10.0), (0.1, 0.5, 0.9)   # P1-grid and P2: the study's units


# --------------------------------------------------------------------------- references


def _count_convergence_warnings(caught) -> int:
    return sum("converge" in str(w.message).lower() or "Convergence" in type(w.message).__name__ for w in caught)


def sklearn_loop(X, Y, alpha, l1_ratio, folds, dtype=np.float32, tol=1e-4, max_iter=1000):
    """The study's loop: one multi-output sklearn ElasticNet fit per held-out fold.

    Returns held-out predictions (len(folds), T), seconds and the number of (fold, target)
    fits that warned of non-convergence.
    """
    from sklearn.linear_model import ElasticNet

    Xd, Yd = X.astype(dtype), Y.astype(dtype)
    out = np.zeros((len(folds), Y.shape[1]))
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for j, i in enumerate(folds):
            train = np.arange(len(X)) != i
            model = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, tol=tol, max_iter=max_iter)
            out[j] = model.fit(Xd[train], Yd[train]).predict(Xd[i:i + 1])[0]
    return out, time.perf_counter() - t0, _count_convergence_warnings(caught)


def exact_reference(X, Y, alpha, l1_ratio, folds):
    """sklearn at tol 1e-10 (max_iter 10^6) in float64: the exact held-out predictions."""
    return sklearn_loop(X, Y, alpha, l1_ratio, folds, np.float64, tol=1e-10, max_iter=1_000_000)[0]


def peer_loop(name, X, Y, alpha, l1_ratio, folds):
    """skglm or celer: one single-target fit per (fold, target) on fold-centred float64 data,
    their default tolerances."""
    if name == "skglm":
        from skglm import ElasticNet as Peer
    else:
        from celer import ElasticNet as Peer
    if name not in _WARM:             # numba / first-call compilation is not the solver's time
        rng = np.random.default_rng(0)
        Peer(alpha=0.1, l1_ratio=0.5, fit_intercept=False).fit(np.asfortranarray(rng.standard_normal((20, 30))), rng.standard_normal(20))
        _WARM.add(name)
    out = np.zeros((len(folds), Y.shape[1]))
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for j, i in enumerate(folds):
            train = np.arange(len(X)) != i
            # centred per fold, as sklearn does internally: their own intercept updates on raw
            # GPT-2-like columns (means ~60) take seconds per fit
            xm, ym = X[train].mean(0, dtype=np.float64), Y[train].mean(0, dtype=np.float64)
            Xt = np.asfortranarray(X[train] - xm)
            x_held = X[i].astype(np.float64) - xm
            for t in range(Y.shape[1]):
                m = Peer(alpha=alpha, l1_ratio=l1_ratio, fit_intercept=False).fit(Xt, Y[train, t] - ym[t])
                out[j, t] = x_held @ m.coef_ + ym[t]
    return out, time.perf_counter() - t0, _count_convergence_warnings(caught)


_WARM: set = set()


def installed(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


# --------------------------------------------------------------------------- gpurecon


def gpurecon_run(X, Y, alphas, l1s, device, threads, dtype, memory_budget=None, permutations=None):
    """One batched cross_val_predict; returns (result, seconds). CUDA: timed after a warm-up."""
    torch.set_num_threads(threads)
    call = lambda: cross_val_predict(X, Y, list(alphas), list(l1s), device=device, dtype=dtype,  # noqa: E731
                                     memory_budget=memory_budget, permutations=permutations)
    if device == "cuda":
        call()
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = call()
    if device == "cuda":
        torch.cuda.synchronize()
    return res, time.perf_counter() - t0


def choose_alphas(X, Y, l1_ratio=L1, n_targets=12, n_alphas=30):
    """Alpha with ~10% non-zero coefficients and the largest alpha with more non-zeros than n,
    from an sklearn path (tol 1e-6) on the full data of the first ``n_targets`` targets."""
    from sklearn.linear_model import enet_path

    Xc = (X - X.mean(0)).astype(np.float64)
    Yc = (Y[:, :n_targets] - Y[:, :n_targets].mean(0)).astype(np.float64)
    amax = np.abs(Xc.T @ Yc).max(0) / (len(X) * l1_ratio)
    alphas = np.geomspace(np.median(amax), 1e-3 * np.median(amax), n_alphas)
    nnz = np.zeros(n_alphas)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(Yc.shape[1]):
            _, coefs, _ = enet_path(Xc, Yc[:, t], l1_ratio=l1_ratio, alphas=alphas, tol=1e-6, max_iter=10_000)
            nnz += (coefs != 0).sum(0) / Yc.shape[1]
    p = X.shape[1]
    a10 = float(alphas[np.argmin(np.abs(nnz - 0.1 * p))])
    over = np.nonzero(nnz > len(X))[0]
    a_dense = float(alphas[over[0]]) if len(over) else None
    info = dict(alpha_max_median=float(np.median(amax)),
                nnz_at=" ".join(f"{a:.3g}:{z:.0f}" for a, z in zip(alphas, nnz)))
    return _round(a10), (_round(a_dense) if a_dense else None), info


def _round(a: float) -> float:
    return float(f"{a:.2g}")


# --------------------------------------------------------------------------- rows


def measure(args, family, X, Y, alphas, l1s, label, peer_folds=None):
    """Every column of one row (one family, one target count, one grid)."""
    T = Y.shape[1]
    n_peer = peer_folds or args.peer_folds
    std = Y.std(0).astype(np.float64)
    sk_folds, peer_folds = strided_folds(args.sklearn_folds), strided_folds(n_peer)
    common = np.intersect1d(sk_folds, peer_folds)
    ex_folds = common[np.unique(np.linspace(0, len(common) - 1, min(args.exact_folds, len(common))).round().astype(int))]
    ex_t = np.arange(min(args.exact_targets, T))
    grid = [(a, r) for a in alphas for r in l1s]
    exact = {g: exact_reference(X, Y[:, ex_t], g[0], g[1], ex_folds) for g in grid}

    def err(pred_of, folds):          # pred_of(g) -> (len(folds), T) predictions on ``folds``
        pos = np.searchsorted(folds, ex_folds)
        if not np.all(np.isin(ex_folds, folds)):
            return float("nan")
        return max(float(np.max(np.abs(pred_of(g)[pos][:, ex_t] - exact[g]) / std[ex_t])) for g in grid)

    row = dict(family=family, label=label, T=T, alphas=alphas, l1s=l1s, cols={},
               exact=f"{len(ex_t)} targets x {len(ex_folds)} folds", peer_folds=len(peer_folds))
    sk = {g: sklearn_loop(X, Y, g[0], g[1], sk_folds, args.np_dtype) for g in grid}
    sk_s = sum(v[1] for v in sk.values()) * N / len(sk_folds)
    row["cols"]["sklearn"] = dict(s=sk_s, nnc=sum(v[2] for v in sk.values()), total=len(grid) * len(sk_folds) * T,
                                  err=err(lambda g: sk[g][0], sk_folds),
                                  note="" if len(sk_folds) == N else f"{len(sk_folds)} folds, x{N / len(sk_folds):.1f}")
    runs = [("cuda", 1)] if args.device == "cuda" else [("cpu", k) for k in args.threads]
    for dev, k in runs:
        name = "gpurecon CUDA" if dev == "cuda" else f"gpurecon {k}t"
        first = row["cols"].get(f"gpurecon {runs[0][1]}t")
        if first is not None and first["s"] > args.extra_thread_cap:
            row["cols"][name] = dict(skipped=f"skipped ({runs[0][1]}t took {first['s']:.1f} s > --extra-thread-cap)")
            continue
        res, s = gpurecon_run(X, Y, alphas, l1s, dev, k, args.dtype)
        preds = res.predictions.to(torch.float64).cpu().numpy()          # (G, n, T)
        row["cols"][name] = dict(s=s, nnc=res.n_not_converged, total=res.converged.numel(),
                                 err=err(lambda g: preds[grid.index(g)], np.arange(N)), note="")
    torch.set_num_threads(args.threads[0])
    for peer in args.peers:
        if not installed(peer):
            row["cols"][peer] = None
            continue
        pr = {g: peer_loop(peer, X, Y, g[0], g[1], peer_folds) for g in grid}
        row["cols"][peer] = dict(s=sum(v[1] for v in pr.values()) * N / len(peer_folds),
                                 nnc=sum(v[2] for v in pr.values()), total=len(grid) * len(peer_folds) * T,
                                 err=err(lambda g: pr[g][0], peer_folds),
                                 note=f"{len(peer_folds)} folds, x{N / len(peer_folds):.0f}")
    print_row(row)
    return row


def strided_folds(k: int) -> np.ndarray:
    """``k`` folds every ``100 // k`` (nested: 20 folds contain the 10 and the 5)."""
    return np.arange(0, N, N // k)[:k]


def _cell(c, ref_s):
    if c is None:
        return "not installed"
    if "skipped" in c:
        return c["skipped"]
    ratio = ref_s / c["s"] if c["s"] > 0 else float("inf")
    return f"{c['s']:.2f} s ({ratio:.2f}x) {c['nnc']}/{c['total']} unconv, err {c['err']:.1e}"


def print_row(row):
    sk = row["cols"]["sklearn"]["s"]
    head = f"[{row['family']}] {row['label']}, T={row['T']}:"
    print(head + " | ".join(f" {k}: {_cell(c, sk)}" for k, c in row["cols"].items()), flush=True)


# --------------------------------------------------------------------------- sections


def run_families(args, rows, chosen):
    for fam in args.families:
        X, Y = data.family(fam)
        a10, a_dense, info = chosen[fam]
        settings = [("alpha 1 (study)", 1.0), (f"alpha {a10:g} (~10% non-zero)", a10)]
        if not args.quick:
            settings.append((f"alpha {a_dense:g} (non-zeros > n)", a_dense) if a_dense else
                            ("non-zeros > n impossible", None))
        for T in args.targets:
            for label, a in settings:
                if a is None:
                    print(f"[{fam}] {label}: p = {X.shape[1]} <= n, skipped", flush=True)
                    continue
                rows.append(measure(args, fam, X, Y[:, :T], [a], [L1], label))


def run_grid(args, rows, chosen):
    for fam in args.families:
        X, Y = data.family(fam)
        a10 = chosen[fam][0]
        alphas = [_round(a10 * r) for r in (10.0, 3.0, 1.0, 1 / 3)]
        for T in args.targets:
            rows.append(measure(args, fam, X, Y[:, :T], alphas, [0.1, 0.5, 0.9], "4 x 3 grid",
                                peer_folds=args.grid_peer_folds))


def count_ops(X, Y, alphas, l1s, device, budget, perms=None):
    """Counts of one cross_val_predict under OpCounter (1 torch thread)."""
    torch.set_num_threads(1)
    with OpCounter() as c, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cross_val_predict(X, Y, list(alphas), list(l1s), device=device, memory_budget=budget,
                                permutations=perms)
    return c, res


def n_chunks(X, n_targets, alphas, l1s, device, budget):
    """Target chunks the solver makes for ``n_targets`` targets at ``budget``."""
    Y = np.zeros((X.shape[0], 1), dtype=np.float32)
    problem, _ = en.prepare(X, Y, list(alphas), list(l1s), train_masks=leave_one_out(X.shape[0]), device=device)
    return len(en.target_chunks(problem, budget, n_targets))


def run_counts(args, counts):
    X, factors = data.gpt2_like()
    Y = data.trial_targets(factors)
    problems = [("P1", Y, [1.0], [L1], None, Y.shape[1], "")]
    if not args.quick:
        problems.append(("P1 4x3 grid", Y, P_GRID_ALPHAS, P_GRID_L1, None, Y.shape[1], ""))
    if args.p2_count_targets:
        Y2 = data.frame_targets(factors)
        sub = np.linspace(0, Y2.shape[1] - 1, args.p2_count_targets).round().astype(int)
        problems.append(("P2", Y2[:, sub], P_GRID_ALPHAS, P_GRID_L1, None, Y2.shape[1],
                         f"{len(sub)} of {Y2.shape[1]} targets counted"))
    if args.p3_count_permutations:
        k = args.p3_count_permutations
        problems.append(("P3", Y, [1.0], [L1], permutations(N, k, seed=0), Y.shape[1] * 1001,
                         f"{k} of 1000 permutations counted"))
    dev = torch.device(args.device)
    for budget in args.budgets:
        b = budget or en.default_memory_budget(dev)
        bname = f"{b / 1e9:.1f} GB ({'CPU default' if budget is None else 'given'})"
        for name, Yp, alphas, l1s, perms, T_full, note in problems:
            t0 = time.perf_counter()
            c, res = count_ops(X, Yp, alphas, l1s, args.device, b, perms)
            secs = time.perf_counter() - t0
            T_run = res.converged.shape[2]
            ch_run = n_chunks(X, T_run, alphas, l1s, dev, b)
            ch_full = n_chunks(X, T_full, alphas, l1s, dev, b)
            # launches and syncs come per chunk (each chunk runs the same batched loop), flops
            # per problem: the full problem's estimate scales them by chunks and targets
            scale = ch_full / ch_run
            G = len(alphas) * len(l1s)
            problems_full = N * G * T_full
            row = dict(problem=name, budget=bname, counted=f"{N} x {G} x {T_run}", chunks_run=ch_run,
                       chunks_full=ch_full, ops=c.ops * scale, launches=c.launches * scale,
                       syncs=c.syncs * scale, flops=c.flops * T_full / T_run, h2d=c.h2d * scale,
                       per_problem=c.launches * scale / problems_full, flops_per_problem=c.flops / (N * G * T_run),
                       scaled=T_full != T_run, note=note, unconv=res.n_not_converged, seconds=secs,
                       top_syncs=", ".join(f"{k} {v}" for k, v in c.sync_by_op.most_common(4)))
            counts.append(row)
            print(f"[counts] {name} @ {bname}: {_count_line(row)}", flush=True)


def _count_line(r):
    est = f" (x{r['chunks_full']}/{r['chunks_run']} chunks, flops x targets)" if r["scaled"] else ""
    return (f"ops {r['ops']:,.0f}, launches {r['launches']:,.0f}, syncs {r['syncs']:,.0f}, "
            f"flops {r['flops']:.3g}{est}; launches/problem {r['per_problem']:.3g}, "
            f"flops/problem {r['flops_per_problem']:.3g}; counted {r['counted']} in {r['seconds']:.1f} s; "
            f"syncs by cause: {r['top_syncs']}")


# --------------------------------------------------------------------------- report


def machine_line() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} logical cores, load average {load:.1f} at start, torch {torch.__version__}, "
            f"{gpu}; synthetic data")


def markdown(args, rows, counts, chosen, wl) -> str:
    out = [f"Machine: {machine_line()}.", f"Command: `{args.command}`", ""]
    if chosen:
        out += ["| family | p | alpha_max (median over targets) | alpha ~10% non-zero | alpha non-zeros > n |",
                "|---|---|---|---|---|"]
        for fam, (a10, ad, info) in chosen.items():
            out.append(f"| {fam} | {info['p']} | {info['alpha_max_median']:.3g} | {a10:g} | "
                       f"{ad if ad is not None else 'none (p <= n or path never exceeds n)'} |")
        out.append("")
    if rows:
        peers = [p for p in args.peers]
        ours = [k for k in rows[0]["cols"] if k.startswith("gpurecon")]
        first = ours[0]
        out += ["| family | setting | T | sklearn s | " + f"{first} s | ratio | unconverged | error (ours) | "
                "error (sklearn) | " + " | ".join(ours[1:] + peers) + " |",
                "|---" * (9 + len(ours) - 1 + len(peers)) + "|"]
        for r in rows:
            sk, g = r["cols"]["sklearn"], r["cols"][first]
            others = [_cell(r["cols"].get(k), sk["s"]) for k in ours[1:] + peers]
            setting = r["label"] if len(r["alphas"]) == 1 else (
                f"grid alpha {','.join(f'{a:g}' for a in r['alphas'])} x l1 {','.join(f'{x:g}' for x in r['l1s'])}")
            out.append(f"| {r['family']} | {setting} | {r['T']} | {sk['s']:.2f} | {g['s']:.2f} | "
                       f"{sk['s'] / g['s']:.2f}x | {g['nnc']}/{g['total']} | {g['err']:.1e} | {sk['err']:.1e} | "
                       + " | ".join(others) + " |")
        r0 = rows[0]
        out += ["", f"Errors: max |held-out prediction - exact| / std(y) on {r0['exact']} (exact = sklearn "
                    f"tol 1e-10, float64). sklearn's loop on {args.sklearn_folds} folds"
                    f"{'' if args.sklearn_folds == N else ' (time extrapolated to 100)'}; peers on "
                    f"{args.peer_folds} folds ({args.grid_peer_folds} on the grid rows), time extrapolated to 100 (after a "
                    "warm-up fit: numba compilation excluded); sklearn's unconverged = "
                    "ConvergenceWarnings per (fold, target).", ""]
    if counts:
        out += ["| problem | budget | counted (folds x grid x targets) | ops | launches | syncs | GFLOP | "
                "launches / problem | flops / problem | syncs by cause | notes |", "|---" * 11 + "|"]
        for c in counts:
            est = (f"{c['note']}; ops, launches, syncs scaled x{c['chunks_full']}/{c['chunks_run']} target "
                   f"chunks, flops by targets"
                   if c["scaled"] else c["note"] or f"{c['chunks_run']} chunk(s)")
            out.append(f"| {c['problem']} | {c['budget']} | {c['counted']} | {c['ops']:,.0f} | {c['launches']:,.0f} | "
                       f"{c['syncs']:,.0f} | {c['flops'] / 1e9:,.1f} | {c['per_problem']:.3g} | "
                       f"{c['flops_per_problem']:.3g} | {c['top_syncs']} | {est} |")
        out += ["", "Counts: gpurecon.profiling.OpCounter on this device, 1 torch thread; launches = ATen ops that "
                    "compute (views/allocations excluded); syncs as if every tensor were on a GPU; flops of "
                    "matrix products and factorisations only.", ""]
    if wl:
        out += wl
    return "\n".join(out) + "\n"


def run_all(args):
    """Run the sections ``args`` selects (parsed by bench_solver.parse_args), print the tables."""
    args.np_dtype = np.dtype(args.dtype).type
    args.dtype = getattr(torch, args.dtype)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_solver: --device cuda but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads[0])
    print(f"machine: {machine_line()}; dtype {args.dtype}; quick={args.quick}", flush=True)
    chosen, rows, counts, wl = {}, [], [], []
    if {"families", "grid"} & set(args.sections):
        for fam in args.families:
            X, Y = data.family(fam)
            a10, ad, info = choose_alphas(X, Y, n_targets=4 if args.quick else 12)
            info["p"] = X.shape[1]
            chosen[fam] = (a10, ad, info)
            print(f"[{fam}] p={X.shape[1]}: alpha_max median {info['alpha_max_median']:.3g}; alpha ~10% non-zero "
                  f"{a10:g}; alpha with non-zeros > n: {ad}; mean non-zeros along the path (alpha:nnz): {info['nnz_at']}",
                  flush=True)
    if "families" in args.sections:
        run_families(args, rows, chosen)
    if "grid" in args.sections:
        run_grid(args, rows, chosen)
    if "counts" in args.sections:
        run_counts(args, counts)
    if "workloads" in args.sections:
        import solver_workloads
        wl = solver_workloads.run(args)
    text = markdown(args, rows, counts, chosen, wl)
    print("\n" + text, flush=True)
    if args.markdown:
        write_atomic(args.markdown, text)
        print(f"wrote {args.markdown}", flush=True)


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bench_solver.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
