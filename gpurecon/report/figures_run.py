"""Figures of one run: the per-electrode map, the observed score on its permutation null,
and (target ``frames``) predicted against true high-gamma time courses."""

from __future__ import annotations

import math

import numpy as np

from .draw import FigureSpec, flag_text, message
from .runs import Run
from .settings import provenance_lines, run_label, subject_label

FDR_Q = 0.05
N_BEST = 3          # electrodes shown in the time-course figure
N_EXAMPLE_TRIALS = 2


def _stem(kind: str, run: Run, runs: list[Run]) -> str:
    return f"fig_{kind}_{subject_label(run.subject)}_{run_label(run, runs)}"


def _title(run: Run, runs: list[Run]) -> str:
    return f"{subject_label(run.subject)} {run_label(run, runs)}"


def electrode_table(run: Run) -> dict[str, np.ndarray] | None:
    """Per electrode: name, label, x, y, z, pcc, baseline_pcc, q_fdr. Time-resolved runs
    score every electrode x frame column (``E@frame3``): those are averaged per electrode,
    and an electrode is FDR-significant when any of its frames is."""
    el = run.electrodes()
    if el is None:
        return None
    names = np.array([str(n).split("@frame")[0] for n in el["electrode"]])
    order = list(dict.fromkeys(names))
    nan = np.full(len(names), math.nan)
    labels = el.get("label", np.full(len(names), ""))
    out = {k: [] for k in ("electrode", "label", "x", "y", "z", "pcc", "baseline_pcc", "q_fdr")}
    for name in order:
        idx = np.flatnonzero(names == name)
        out["electrode"].append(name)
        out["label"].append(str(labels[idx[0]]))
        for c in ("x", "y", "z"):
            col = el.get(c, nan)
            out[c].append(float(col[idx[0]]) if col.dtype.kind == "f" else math.nan)
        for c in ("pcc", "baseline_pcc"):
            out[c].append(_finite_mean(el.get(c, nan)[idx]))
        q = el.get("q_fdr", nan)[idx]
        out["q_fdr"].append(float(np.nanmin(q)) if np.isfinite(q).any() else math.nan)
    return {k: np.array(v) for k, v in out.items()}


def electrode_map(run: Run, runs: list[Run]) -> FigureSpec:
    """Per-electrode PCC (across held-out trials) at the electrode coordinates, axial (x-y) and
    sagittal (y-z); FDR-significant electrodes (q <= 0.05) ringed. Without coordinates the
    scores are drawn per electrode and the figure says so."""
    el = electrode_table(run)
    header = ["electrode", "label", "x", "y", "z", "pcc", "baseline_pcc", "q_fdr", "significant"]
    rows = [] if el is None else [
        [el["electrode"][i], el["label"][i], *(_num(el[c][i]) for c in
         ("x", "y", "z", "pcc", "baseline_pcc", "q_fdr")), int(el["q_fdr"][i] <= FDR_Q)]
        for i in range(len(el["electrode"]))]
    title = f"{_title(run, runs)}: per-electrode PCC{flag_text([run])}"
    if el is not None and np.isfinite(el["pcc"]).any():
        # the leave-one-out per-electrode PCC is biased (the baseline scores -1): show both
        base = el["baseline_pcc"]
        base = f" (baseline {np.nanmean(base):.3f})" if np.isfinite(base).any() else ""
        title = (f"{_title(run, runs)}: per-electrode PCC, mean {np.nanmean(el['pcc']):.3f}"
                 f"{base}{flag_text([run])}")

    def draw(fig):
        if el is None:
            message(fig.add_subplot(), "no scores_electrodes.csv in this run")
            return
        sig = el["q_fdr"] <= FDR_Q
        ring = f"FDR q <= {FDR_Q}: {int(sig.sum())} of {sig.size}"
        lim = max(float(np.nanmax(np.abs(el["pcc"]))), 1e-6) if np.isfinite(el["pcc"]).any() else 1
        style = dict(c=el["pcc"], cmap="coolwarm", vmin=-lim, vmax=lim, s=30)
        has_xyz = np.isfinite(np.stack([el["x"], el["y"], el["z"]])).all(axis=0)
        nonull = "" if np.isfinite(el["q_fdr"]).any() else " (no permutation null: no FDR)"
        if not has_xyz.any():
            ax = fig.add_subplot()
            sc = ax.scatter(np.arange(len(el["pcc"])), el["pcc"], **style)
            ax.scatter(np.flatnonzero(sig), el["pcc"][sig], s=90, facecolors="none",
                       edgecolors="k", label=ring)
            ax.set_xlabel("electrode (column order)")
            ax.set_ylabel("PCC across held-out trials")
            message(ax, "no coordinates recorded")
        else:
            for j, (a, b, name) in enumerate((("x", "y", "axial (x-y)"),
                                               ("y", "z", "sagittal (y-z)"))):
                ax = fig.add_subplot(1, 2, j + 1)
                sc = ax.scatter(el[a][has_xyz], el[b][has_xyz], **{
                    **style, "c": el["pcc"][has_xyz]})
                m = sig & has_xyz
                ax.scatter(el[a][m], el[b][m], s=90, facecolors="none", edgecolors="k",
                           label=ring)
                ax.set_xlabel(f"{a} (mm)")
                ax.set_ylabel(f"{b} (mm)")
                ax.set_aspect("equal", adjustable="datalim")
                ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        fig.colorbar(sc, ax=fig.axes, label="PCC")
        fig.suptitle(title + nonull, fontsize=10)

    return FigureSpec(_stem("electrodes", run, runs), header, rows, draw, provenance_lines([run]),
                      size=(11.0, 5.0))


def null_histogram(run: Run, runs: list[Run]) -> FigureSpec | None:
    """The observed PCC across electrodes on its permutation null (None without a null)."""
    pred = run.predictions() or {}
    null = np.asarray(pred.get("null_pcc_across_electrodes", np.empty(0)), dtype=float).ravel()
    if null.size == 0:
        return None
    observed = run.score("pcc_across_electrodes")
    base = run.score("baseline_pcc_across_electrodes")
    p = run.score("p_pcc_across_electrodes", required=False)
    null_r2 = np.asarray(pred.get("null_r2_across_electrodes", np.full(null.size, math.nan)),
                         dtype=float).ravel()
    if null_r2.size != null.size:
        null_r2 = np.full(null.size, math.nan)
    rows = [[i, float(v), _num(r)] for i, (v, r) in enumerate(zip(null, null_r2))]

    def draw(fig):
        ax = fig.add_subplot()
        lo, hi = float(null.min()), float(null.max())
        edges = np.linspace(lo, hi, int(np.clip(null.size // 5, 10, 50)) + 1)
        if not hi - lo > 1e-9 * max(1.0, abs(hi)):
            # a (nearly) constant null, e.g. every fit shrunk to the baseline: numpy cannot cut
            # a range of a few ulp into bins, so draw it as one bar of visible width
            edges = np.array([lo - 1e-4, hi + 1e-4])
        ax.hist(null, bins=edges, color="0.6", label=f"permutation null (n={null.size})")
        if edges.size == 2:
            ax.set_xlim(lo - 2e-3, hi + 2e-3)
        ax.axvline(observed, color="C3", lw=2, label=f"observed {observed:.3f}")
        ax.axvline(base, color="C0", ls="--", label=f"baseline {base:.3f}")
        ax.set_xlabel("PCC across electrodes, mean over held-out trials")
        ax.set_ylabel("permutations")
        ptxt = "" if math.isnan(p) else f", p = {p:.3g}"
        ax.set_title(f"{_title(run, runs)}: observed vs null{ptxt}{flag_text([run])}", fontsize=10)
        ax.legend(fontsize=8)

    return FigureSpec(_stem("null", run, runs), ["permutation", "null_pcc", "null_r2"], rows, draw,
                      provenance_lines([run]),
                      notes=(f"observed pcc_across_electrodes: {observed!r}; p: {p!r}",))


def timecourse(run: Run, runs: list[Run]) -> FigureSpec | None:
    """Predicted against true high gamma over the frames of the epoch, for the electrodes with
    the best per-electrode PCC: mean over trials and the first trials (target ``frames``)."""
    if run.target_kind != "frames":
        return None
    pred = run.predictions() or {}
    if "pred" not in pred or "Y" not in pred:
        return None
    n_trials, n_cols = pred["Y"].shape
    n_frames = run.n_frames
    n_el = n_cols // n_frames
    shape = (n_trials, n_el, n_frames)  # columns are electrode-major
    Y, P = pred["Y"].reshape(shape), pred["pred"].reshape(shape)
    B = pred["baseline"].reshape(shape) if "baseline" in pred else np.full(shape, math.nan)
    el = electrode_table(run)
    names = list(el["electrode"]) if el is not None and len(el["electrode"]) == n_el else \
        [f"column {i}" for i in range(n_el)]
    score = el["pcc"] if el is not None and len(el["pcc"]) == n_el else np.zeros(n_el)
    best = sorted(range(n_el), key=lambda i: (-np.nan_to_num(score[i], nan=-np.inf), i))[:N_BEST]
    cfg = run.summary.get("config", {}).get("target", {}) or {}
    shift, length = float(cfg.get("frame_shift", 0.01)), float(cfg.get("frame_length", 0.05))
    t = np.arange(n_frames) * shift + length / 2
    trials = [("mean", slice(None))] + [(str(i), i) for i in range(min(N_EXAMPLE_TRIALS, n_trials))]
    rows = []
    for e in best:
        for tname, sel in trials:
            curves = [np.atleast_2d(a[sel, e]).mean(axis=0) for a in (Y, P, B)]
            rows += [[names[e], tname, f, float(t[f]), *(float(c[f]) for c in curves)]
                     for f in range(n_frames)]

    def draw(fig):
        k = 0
        for e in best:
            for tname, sel in trials:
                k += 1
                ax = fig.add_subplot(len(best), len(trials), k)
                for a, lab, style in ((Y, "true", "k-"), (P, "predicted", "C3-"),
                                      (B, "baseline", "C0:")):
                    ax.plot(t, np.atleast_2d(a[sel, e]).mean(axis=0), style, label=lab, lw=1.2)
                ax.set_title(f"{names[e]} (PCC {score[e]:.2f}), "
                             f"{'mean of trials' if tname == 'mean' else 'trial ' + tname}",
                             fontsize=8)
                ax.tick_params(labelsize=7)
        fig.axes[0].legend(fontsize=7)
        fig.supxlabel("time from word onset (s)", fontsize=8)
        fig.supylabel("high-gamma envelope (a.u.: the recording's units, not normalised)",
                      fontsize=8)
        fig.suptitle(f"{_title(run, runs)}: recreated high gamma, best electrodes"
                     f"{flag_text([run])}", fontsize=10)

    return FigureSpec(_stem("timecourse", run, runs),
                      ["electrode", "trial", "frame", "time_s", "true", "predicted", "baseline"],
                      rows, draw, provenance_lines([run]), size=(11.0, 2.6 * len(best) + 1))


def _finite_mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)] if values.dtype.kind == "f" else values[:0]
    return float(values.mean()) if values.size else math.nan


def _num(v: float):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
