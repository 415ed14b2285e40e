"""A permutation null on several ranks (``devices=N``) against one process: time and bits.

One study-sized fit (a solver family: 100 trials, 127 targets, leave-one-out, alpha=1,
l1_ratio=0.5) with a permutation null, solved three ways in the same run:

- one process with every CPU thread (what a plain run gets);
- one process with ``T`` threads, ``T`` = the threads each rank gets (the bitwise reference);
- ``gpurecon.parallel.sharded_cross_val_predict`` on N Lightning Fabric ranks (CPU: gloo, ``T``
  threads each; CUDA: one GPU each), the spawn and the hand-over included.

Prints every time, the speed-ups against the first row, and whether the ranks' result is bit
for bit the one-process result (predictions, null, convergence statistics).

    python benchmarks/bench_ranks.py                          # 100 permutations, 2 CPU ranks
    python benchmarks/bench_ranks.py --quick                  # 10 permutations
    python benchmarks/bench_ranks.py --device cuda --devices 4 --permutations 1000
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 permutations")
    ap.add_argument("--permutations", type=int, default=None, help="null size; default 100 (10 with --quick)")
    ap.add_argument("--devices", type=int, default=2, help="ranks (default 2)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="the ranks' accelerator")
    ap.add_argument("--family", default="gpt2", help="solver_data family: gpt2, fasttext, pca, iid")
    ap.add_argument("--markdown", default=None, help="also write the Markdown section to this file")
    args = ap.parse_args(argv)
    if args.permutations is None:
        args.permutations = 10 if args.quick else 100
    if args.devices < 2:
        ap.error(f"--devices must be >= 2, got {args.devices}")
    return args


if __name__ == "__main__":
    ARGS = parse_args()  # --help answers here, before the heavy imports below

import os  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpurecon.outputs import write_text  # noqa: E402
from gpurecon.parallel import rank_threads, sharded_cross_val_predict  # noqa: E402
from gpurecon.solver import cross_val_predict, leave_one_out, permutations  # noqa: E402
from solver_data import family  # noqa: E402

FIELDS = ("predictions", "null_predictions", "converged", "gap_ratio", "n_iter")


def fit(solve, X, Y, perms, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        res = solve(X, Y, alphas=1.0, l1_ratios=0.5, folds=leave_one_out(X.shape[0]), permutations=perms, **kw)
        if str(kw.get("device", "cpu")).startswith("cuda"):
            torch.cuda.synchronize()
        return res, time.perf_counter() - t0


def same_bits(a, b) -> bool:
    return all(torch.equal(getattr(a, k).cpu(), getattr(b, k).cpu()) for k in FIELDS)


def main(args) -> int:
    X, Y = family(args.family)
    perms = permutations(X.shape[0], args.permutations, 0)
    all_threads = torch.get_num_threads()
    per_rank = rank_threads(args.devices) if args.device == "cpu" else all_threads
    dev = args.device if args.device == "cpu" else "cuda:0"
    base, t_base = fit(cross_val_predict, X, Y, perms, device=dev)
    torch.set_num_threads(per_rank)
    ref, t_ref = fit(cross_val_predict, X, Y, perms, device=dev)
    torch.set_num_threads(all_threads)
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(per_rank)   # the ranks' threads, said explicitly
    try:
        ranks, t_ranks = fit(sharded_cross_val_predict, X, Y, perms, device=args.device, devices=args.devices)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    identical = same_bits(ranks, ref)
    close = float((ranks.null_predictions.cpu() - base.null_predictions.cpu()).abs().max())
    problems = base.converged.numel()
    rows = [("one process", all_threads, t_base, "-"),
            ("one process", per_rank, t_ref, "(the reference)"),
            (f"{args.devices} ranks ({args.device})", per_rank, t_ranks, "yes" if identical else "NO")]
    lines = [f"## Ranks\n\n`python benchmarks/bench_ranks.py{' --quick' if args.quick else ''} --permutations "
             f"{args.permutations} --devices {args.devices} --device {args.device} --family {args.family}`\n",
             f"A study-sized null: family `{args.family}` (X {X.shape[0]} x {X.shape[1]}, {Y.shape[1]} targets), "
             f"leave-one-out, alpha=1, l1_ratio=0.5, {args.permutations} permutations: {problems:,} problems. "
             f"Machine: {os.cpu_count()} logical cores, torch {torch.__version__}"
             f"{', ' + torch.cuda.get_device_name(0) if args.device == 'cuda' else ''}. The ranks' time includes "
             "spawning them (Lightning Fabric, ddp_spawn) and handing the result over.\n",
             "| run | CPU threads per process | time (s) | speed-up vs the first row | bit for bit the reference |",
             "|---|---|---|---|---|"]
    for name, threads, seconds, bits in rows:
        lines.append(f"| {name} | {threads} | {seconds:.2f} | {t_base / seconds:.2f}x | {bits} |")
    lines.append(f"\n- Ranks vs one process with every thread: null predictions max |diff| {close:.1e} "
                 "(thread count changes BLAS/LAPACK summation order; not bits).")
    lines.append(f"- Problems not converged: {ranks.n_not_converged} (ranks), {base.n_not_converged} (one process).")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        write_text(args.markdown, text)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main(ARGS))
