"""One participant's whole study, stage by stage: the study's CPU pipeline vs gpurecon.

The reference is the study's pipeline as it ran, written out here: pynwb reading; scipy
detrend, ``sosfiltfilt`` band-pass and band-stops and ``hilbert`` on every channel; the mean of
1 s from each word onset; one transformers call per word (GPT-2 last hidden state, mean over the
word's tokens); one scikit-learn ``ElasticNet(alpha=1, l1_ratio=0.5)`` fit per leave-one-out
fold; ``np.corrcoef`` / ``r2_score`` per held-out trial across electrodes. gpurecon runs the
same stages with its library functions (``data.load_subject``, ``signal.high_gamma`` /
``epochs`` / ``trial_mean``, ``embeddings``, ``solver.cross_val_predict``, ``evaluation``) on
the CPU and, when present, on CUDA. Both fit the same X (gpurecon's embeddings); every time
and ratio comes from the same run, and the largest difference between the reference's and
gpurecon's per-trial scores is printed and checked.

Data: a synthetic participant at real size (127 channels, 100 words, ~300 s at 1024 Hz, 48 kHz
audio), generated once into a temporary folder. Embeddings: GPT-2 ``random-fullsize`` (untrained,
the real 12 x 768 shape: realistic cost, no meaning), or ``tiny`` with ``--quick``.

    python benchmarks/bench_pipeline.py                  # full size (reference null extrapolated)
    python benchmarks/bench_pipeline.py --quick          # 32 channels, 30 words, tiny GPT-2
    python benchmarks/bench_pipeline.py --cpu-permutations 50 --markdown /tmp/pipeline.md
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32 channels, 30 words, tiny GPT-2, 100 permutations")
    ap.add_argument("--channels", type=int, default=None, help="default 127 (32 with --quick)")
    ap.add_argument("--words", type=int, default=None, help="trials; default 100 (30 with --quick)")
    ap.add_argument("--checkpoint", default=None, help="GPT-2 checkpoint; default random-fullsize (tiny with --quick)")
    ap.add_argument("--permutations", type=int, default=None, help="null size; default 1000 (100 with --quick)")
    ap.add_argument("--reference-permutations", type=int, default=None,
                    help="permutations the reference really fits, extrapolated linearly; default 5 (2 with --quick)")
    ap.add_argument("--cpu-permutations", type=int, default=None,
                    help="permutations gpurecon fits on the CPU, extrapolated linearly; default: all")
    ap.add_argument("--devices", nargs="+", default=None, help="gpurecon devices; default cpu (+ cuda if present)")
    ap.add_argument("--tolerance", type=float, default=5e-3,
                    help="largest allowed |difference| of per-trial PCC and R2 to the reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown", default=None, help="also write the Markdown section to this file")
    args = ap.parse_args(argv)
    q = args.quick
    args.channels = args.channels or (32 if q else 127)
    args.words = args.words or (30 if q else 100)
    args.checkpoint = args.checkpoint or ("tiny" if q else "random-fullsize")
    args.permutations = args.permutations if args.permutations is not None else (100 if q else 1000)
    args.reference_permutations = args.reference_permutations or (2 if q else 5)
    return args


if __name__ == "__main__":
    ARGS = parse_args()  # --help answers here, before the heavy imports below

import csv  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy.fftpack  # noqa: E402
import scipy.signal  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpurecon import evaluation  # noqa: E402
from gpurecon.cache import Cache  # noqa: E402
from gpurecon.data import load_subject, write_synthetic_dataset  # noqa: E402
from gpurecon.embeddings import get_embedder  # noqa: E402
from gpurecon.outputs import write_csv, write_json  # noqa: E402
from gpurecon.signal import epochs, high_gamma, trial_mean  # noqa: E402
from gpurecon.solver import cross_val_predict, leave_one_out, permutations  # noqa: E402

ALPHA, L1_RATIO, WINDOW = 1.0, 0.5, 1.0
BANDS = [((70.0, 170.0), "bandpass"), ((98.0, 102.0), "bandstop"), ((148.0, 152.0), "bandstop")]
STAGES = ["load", "high gamma", "embeddings", "fit", "null", "report"]


# --------------------------------------------------------------------------- the study's pipeline


def ref_load(root: Path):
    """pynwb, as the dataset's scripts read it, and events.tsv for the word onsets."""
    from pynwb import NWBHDF5IO

    ieeg = root / "sub-01" / "ieeg"
    with NWBHDF5IO(str(ieeg / "sub-01_task-wordProduction_ieeg.nwb"), "r", load_namespaces=True) as io:
        nwb = io.read()
        seeg = np.asarray(nwb.acquisition["iEEG"].data[:], dtype=np.float64)      # samples x channels
        sfreq = float(nwb.acquisition["iEEG"].rate)
        _ = nwb.acquisition["Stimulus"].data[:], nwb.acquisition["Audio"].data[:]
    with open(ieeg / "sub-01_task-wordProduction_events.tsv", newline="", encoding="utf-8") as f:
        words = [row for row in csv.DictReader(f, delimiter="\t") if row["trial_type"] == "word"]
    return seeg, sfreq, np.array([int(r["sample"]) for r in words]), [r["value"] for r in words]


def ref_high_gamma(seeg: np.ndarray, sfreq: float, onsets: np.ndarray) -> np.ndarray:
    """detrend, band-pass + band-stops (sosfiltfilt), |hilbert|; mean of 1 s from each onset."""
    x = scipy.signal.detrend(seeg, axis=0)
    for edges, btype in BANDS:
        sos = scipy.signal.iirfilter(4, [f / (sfreq / 2) for f in edges], btype=btype, output="sos")
        x = scipy.signal.sosfiltfilt(sos, x, axis=0)
    n = x.shape[0]
    env = np.abs(scipy.signal.hilbert(x, scipy.fftpack.next_fast_len(n), axis=0)[:n])
    length = int(round(WINDOW * sfreq))
    return np.stack([env[s:s + length].mean(0) for s in onsets])                # trials x channels


def ref_embed(checkpoint_path: str, words: list[str]) -> np.ndarray:
    """One transformers call per word: last hidden state, mean over the word's tokens."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint_path)
    model = AutoModel.from_pretrained(checkpoint_path).eval()
    rows = []
    with torch.inference_mode():
        for w in words:
            ids = torch.tensor([tok(w, add_special_tokens=False)["input_ids"]])
            rows.append(model(input_ids=ids).last_hidden_state[0].mean(0).numpy())
    return np.stack(rows)


def ref_fit(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """One multi-output sklearn ElasticNet per leave-one-out fold (the study's loop)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import ElasticNet

    pred = np.empty_like(Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i, train in enumerate(leave_one_out(len(Y))):
            model = ElasticNet(alpha=ALPHA, l1_ratio=L1_RATIO).fit(X[train], Y[train])
            pred[i] = model.predict(X[i:i + 1])[0]
    return pred


def ref_scores(pred: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out trial, across electrodes: np.corrcoef and sklearn's r2_score."""
    from sklearn.metrics import r2_score

    pcc = np.array([np.corrcoef(p, y)[0, 1] for p, y in zip(pred, Y)])
    r2 = np.array([r2_score(y, p) for p, y in zip(pred, Y)])
    return pcc, r2


def ref_report(out: Path, pred, Y, null_preds, null_Y) -> dict:
    pcc, r2 = ref_scores(pred, Y)
    null_mean = np.array([np.nanmean(ref_scores(p, y)[0]) for p, y in zip(null_preds, null_Y)])
    np.savetxt(out / "ref_scores_trials.csv", np.c_[pcc, r2], delimiter=",", header="pcc,r2")
    p_value = (1 + np.sum(null_mean >= np.nanmean(pcc))) / (1 + len(null_mean))
    (out / "ref_summary.json").write_text(json.dumps({"pcc": float(np.nanmean(pcc)), "p": float(p_value)}))
    return {"pcc": pcc, "r2": r2, "null_mean_pcc": null_mean}


# --------------------------------------------------------------------------- gpurecon


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gp_high_gamma(rec, device: torch.device) -> torch.Tensor:
    seeg = torch.from_numpy(rec.seeg).to(device=device, dtype=torch.float32)
    env = high_gamma(seeg, rec.sfreq, device=device)
    env = env[torch.from_numpy(rec.good_channels).to(device)]
    return trial_mean(epochs(env, rec.trials.sample, rec.sfreq, length=WINDOW))


def gp_embed(rec, checkpoint: str, device: torch.device, cache: Cache) -> torch.Tensor:
    emb = get_embedder("gpt2", checkpoint=checkpoint)
    try:
        return emb.embed(rec, device=device, cache=cache).X
    finally:
        emb.release()
        shutil.rmtree(cache.root / "embeddings", ignore_errors=True)   # no cache hit for the next device


def gp_fit(X, Y, device, perms=None):
    return cross_val_predict(X, Y, alphas=ALPHA, l1_ratios=L1_RATIO, folds=leave_one_out(Y.shape[0]),
                             permutations=perms, device=device, dtype=torch.float64)


def gp_report(out: Path, pred, Y, null_pred, null_Y) -> dict:
    trial = evaluation.scores_across_electrodes(pred, Y)
    elec = evaluation.scores_per_electrode(pred, Y)
    null_trial = evaluation.scores_across_electrodes(null_pred, null_Y)
    null_elec = evaluation.scores_per_electrode(null_pred, null_Y)
    null_mean = torch.nanmean(null_trial["pcc"].double(), dim=1)
    p_elec = evaluation.permutation_p_value(elec["pcc"].double(), null_elec["pcc"].double())
    q = evaluation.fdr_bh(p_elec)
    observed = torch.nanmean(trial["pcc"].double())
    p = evaluation.permutation_p_value(observed, null_mean)
    write_csv(out / "scores_trials.csv", ["trial", "pcc", "r2"],
              [[i, float(a), float(b)] for i, (a, b) in enumerate(zip(trial["pcc"].cpu(), trial["r2"].cpu()))])
    write_json(out / "summary.json", {"pcc": float(observed), "p": float(p), "n_fdr": int((q <= 0.05).sum())})
    return {"pcc": trial["pcc"].cpu().double().numpy(), "r2": trial["r2"].cpu().double().numpy(),
            "null_mean_pcc": null_mean.cpu().numpy()}


# --------------------------------------------------------------------------- the run


def timed(fn, device=None):
    if device is not None:
        sync(device)
    t0 = time.perf_counter()
    out = fn()
    if device is not None:
        sync(device)
    return time.perf_counter() - t0, out


def run_reference(root, X, good, args, perms, work):
    """The study's stages; ``good``: gpurecon's usable channels (flat ones excluded alike)."""
    times = {}
    times["load"], (seeg, sfreq, onsets, words) = timed(lambda: ref_load(root))
    times["high gamma"], Y = timed(lambda: ref_high_gamma(seeg, sfreq, onsets)[:, good])
    times["embeddings"], X_ref = timed(lambda: ref_embed(args.checkpoint_path, words))
    Xn = X.astype(np.float32)                    # the same X as gpurecon (the study's float32)
    times["fit"], pred = timed(lambda: ref_fit(Xn, Y))
    k = min(args.reference_permutations, len(perms))
    t_null, null_preds = timed(lambda: [ref_fit(Xn, Y[p]) for p in perms[:k]])
    times["null"] = t_null * len(perms) / k
    null_Y = [Y[p] for p in perms[:k]]
    t_rep, scores = timed(lambda: ref_report(work, pred, Y, null_preds, null_Y))
    # scoring the null is the part that grows with permutations: extrapolate it alone
    t_null_scores, _ = timed(lambda: [ref_scores(p, y) for p, y in zip(null_preds, null_Y)])
    times["report"] = t_rep + t_null_scores * (len(perms) - k) / k
    return times, {"Y": Y, "X_ref": X_ref, "scores": scores, "k": k}


def run_gpurecon(root, args, perms, device, cache, work):
    times = {}
    times["load"], rec = timed(lambda: load_subject(root, 1))
    times["high gamma"], Y = timed(lambda: gp_high_gamma(rec, device), device)
    times["embeddings"], X = timed(lambda: gp_embed(rec, args.checkpoint, device, cache), device)
    times["fit"], res = timed(lambda: gp_fit(X, Y, device), device)
    m = len(perms) if device.type == "cuda" or args.cpu_permutations is None \
        else max(1, min(args.cpu_permutations, len(perms)))
    t_null, null_res = timed(lambda: gp_fit(X, Y, device, perms[:m]), device)
    times["null"] = t_null * len(perms) / m
    null_pred = null_res.null_predictions[:, 0]
    null_Y = torch.stack([Y[torch.as_tensor(p, device=Y.device)] for p in perms[:m]])
    t_rep, scores = timed(lambda: gp_report(work, res.predictions[0], Y, null_pred, null_Y), device)
    # as for the reference: the null's scoring grows with the permutations, extrapolate it alone
    t_null_scores, _ = timed(lambda: (evaluation.scores_across_electrodes(null_pred, null_Y),
                                      evaluation.scores_per_electrode(null_pred, null_Y)), device)
    times["report"] = t_rep + t_null_scores * (len(perms) - m) / m
    return times, {"rec": rec, "X": X, "Y": Y, "scores": scores, "m": m,
                   "not_converged": res.n_not_converged + null_res.n_not_converged}


def machine_line() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} logical cores, torch {torch.__version__} ({torch.get_num_threads()} CPU threads), "
            f"{gpu}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at the end")


def main(args) -> int:
    logging.basicConfig(level=logging.WARNING)
    for name in ("gpurecon", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    names = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    devices = [torch.device(d) for d in names]
    tmp = Path(tempfile.mkdtemp(prefix="gpurecon-bench-pipeline-"))
    try:
        t0 = time.perf_counter()
        root = write_synthetic_dataset(tmp / "data", subjects=[1], seed=args.seed, n_channels=args.channels,
                                       n_words=args.words)
        t_gen = time.perf_counter() - t0
        cache = Cache(tmp / "cache")
        n = args.words
        perms = permutations(n, args.permutations, args.seed)
        # build the (untrained) model once, untimed: both pipelines then load it from disk
        probe = get_embedder("gpt2", checkpoint=args.checkpoint)
        _, meta = probe._describe(load_subject(root, 1), torch.device("cpu"), cache)
        args.checkpoint_path = str(meta["checkpoint_path"])

        results = {}
        for device in devices:
            work = tmp / f"out-{device.type}"
            work.mkdir()
            if device.type == "cuda":   # warm-up: CUDA context, cuFFT plans, kernels
                run_gpurecon(root, args, perms[:2], device, cache, work)
            results[device.type] = run_gpurecon(root, args, perms, device, cache, work)
        first = results[devices[0].type][1]
        X = first["X"].cpu().numpy()
        ref_work = tmp / "out-reference"
        ref_work.mkdir()
        ref_times, ref = run_reference(root, X, first["rec"].good_channels, args, perms, ref_work)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines, ok = report(args, t_gen, ref_times, ref, results, X)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        from gpurecon.outputs import write_text
        write_text(Path(args.markdown), text)
    return 0 if ok else 1


def report(args, t_gen, ref_times, ref, results, X):
    cols = list(results)
    head = "| stage | study's pipeline (s) | " + " | ".join(f"gpurecon {c.upper()} (s) | speed-up" for c in cols) + " |"
    lines = ["## Pipeline", "",
             f"`python benchmarks/bench_pipeline.py{' --quick' if args.quick else ''}"
             + (f" --cpu-permutations {args.cpu_permutations}" if args.cpu_permutations else "") + "`", "",
             f"One synthetic participant: {args.channels} channels, {args.words} words (~{3 * args.words} s at "
             f"1024 Hz; generated in {t_gen:.1f} s, not counted), GPT-2 `{args.checkpoint}` (UNTRAINED: realistic "
             f"cost, no meaning; both pipelines fit gpurecon's X), ElasticNet alpha={ALPHA:g} l1_ratio={L1_RATIO:g}, "
             f"leave-one-out ({args.words} folds), {args.permutations}-permutation null. Machine: {machine_line()}.",
             "", head, "|---|---|" + "---|---|" * len(cols)]
    total_ref = sum(ref_times.values())
    for stage in STAGES + ["total"]:
        t_ref = total_ref if stage == "total" else ref_times[stage]
        cells = []
        for c in cols:
            t = sum(results[c][0].values()) if stage == "total" else results[c][0][stage]
            cells.append(f"{t:.2f} | {t_ref / t:.1f}x")
        name = f"**{stage}**" if stage == "total" else stage
        lines.append(f"| {name} | {t_ref:.2f} | " + " | ".join(cells) + " |")
    k = ref["k"]
    notes = [f"Reference null: {k} permutations fitted ({k} x {args.words} sklearn fits), time extrapolated "
             f"linearly to {args.permutations}; its report stage extrapolates the scoring of the null the same way."]
    for c in cols:
        m = results[c][1]["m"]
        if m < args.permutations:
            notes.append(f"gpurecon {c.upper()} null: {m} permutations fitted (with the real targets), extrapolated "
                         f"linearly to {args.permutations} (and their scoring in the report stage).")
    ok = True
    ref_s = ref["scores"]
    for c in cols:
        s = results[c][1]["scores"]
        d_pcc = float(np.nanmax(np.abs(s["pcc"] - ref_s["pcc"])))
        d_r2 = float(np.nanmax(np.abs(s["r2"] - ref_s["r2"])))
        both = min(k, len(s["null_mean_pcc"]))
        d_null = float(np.nanmax(np.abs(s["null_mean_pcc"][:both] - ref_s["null_mean_pcc"][:both])))
        Yg = results[c][1]["Y"].cpu().double().numpy()
        d_y = float(np.abs(Yg - ref["Y"]).max() / ref["Y"].std())
        agree = max(d_pcc, d_r2, d_null) <= args.tolerance
        ok &= agree
        notes.append(f"Agreement, gpurecon {c.upper()} vs the study's pipeline: targets max |diff| / std "
                     f"{d_y:.1e}; per-trial PCC max |diff| {d_pcc:.1e}, R2 {d_r2:.1e}; null mean PCC ({both} "
                     f"permutations) {d_null:.1e}; mean PCC {np.nanmean(s['pcc']):.4f} vs {np.nanmean(ref_s['pcc']):.4f}"
                     f" - {'within' if agree else 'OUTSIDE'} the tolerance {args.tolerance:g}; problems not "
                     f"converged: {results[c][1]['not_converged']}.")
    d_x = float(np.abs(ref["X_ref"] - X).max() / np.abs(X).max())
    notes.append(f"Embeddings: one transformers call per word vs gpurecon's batches, max |diff| / max |X| {d_x:.1e}.")
    notes.append("Times are wall-clock of each stage from the same run (reference: scipy / sklearn single-threaded "
                 "as the study ran; gpurecon CPU with torch's threads); CUDA after one untimed warm-up run.")
    lines += [""] + [f"- {n}" for n in notes]
    return lines, ok


if __name__ == "__main__":
    sys.exit(main(ARGS))
