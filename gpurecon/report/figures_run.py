"""Figures of one run: the per-electrode map, the observed score on its permutation null,
and (target ``frames``) predicted against true high-gamma time courses."""

from __future__ import annotations

import math

import numpy as np

from matplotlib.colors import CenteredNorm

from .draw import FigureSpec, flag_text, message, note
from .runs import Run
from .settings import human_label, provenance_lines, run_label, subject_label

FDR_Q = 0.05
N_BEST = 3          # electrodes shown in the time-course figure
N_EXAMPLE_TRIALS = 2


def _stem(kind: str, run: Run, runs: list[Run]) -> str:
    return f"fig_{kind}_{subject_label(run.subject)}_{run_label(run, runs)}"


def _title(run: Run, runs: list[Run]) -> str:
    return f"{subject_label(run.subject)}, {human_label(run, runs)}"


def electrode_table(run: Run) -> dict[str, np.ndarray] | None:
    """Per electrode: name, label, x, y, z, pcc, baseline_pcc, null_pcc_mean, q_fdr. Time-resolved runs
    score every electrode x frame column (``E@frame3``): those are averaged per electrode,
    and an electrode is FDR-significant when any of its frames is."""
    el = run.electrodes()
    if el is None:
        return None
    names = np.array([str(n).split("@frame")[0] for n in el["electrode"]])
    order = list(dict.fromkeys(names))
    nan = np.full(len(names), math.nan)
    labels = el.get("label", np.full(len(names), ""))
    out = {k: [] for k in ("electrode", "label", "x", "y", "z", "pcc", "baseline_pcc",
                           "null_pcc_mean", "q_fdr")}
    for name in order:
        idx = np.flatnonzero(names == name)
        out["electrode"].append(name)
        out["label"].append(str(labels[idx[0]]))
        for c in ("x", "y", "z"):
            col = el.get(c, nan)
            out[c].append(float(col[idx[0]]) if col.dtype.kind == "f" else math.nan)
        for c in ("pcc", "baseline_pcc", "null_pcc_mean"):
            out[c].append(_finite_mean(el.get(c, nan)[idx]))
        q = el.get("q_fdr", nan)[idx]
        out["q_fdr"].append(float(np.nanmin(q)) if np.isfinite(q).any() else math.nan)
    return {k: np.array(v) for k, v in out.items()}


def chance_level(el: dict[str, np.ndarray]) -> tuple[float, str]:
    """The per-electrode PCC a model scores by chance, and where it comes from: the mean over
    electrodes of the permutation null's mean (``null_pcc_mean``), else of the baseline's
    per-electrode PCC (-1 under leave-one-out: the score's own bias, so 0 is not chance), else
    0 (nothing recorded)."""
    for col, what in (("null_pcc_mean", "permutation null mean"),
                      ("baseline_pcc", "baseline (training mean)")):
        values = el.get(col, np.empty(0))
        if np.isfinite(values).any():
            return float(np.nanmean(values)), what
    return 0.0, "nothing recorded: 0"


# Where each anatomical direction is, per panel (ACPC / RAS: +x right, +y anterior, +z up).
ORIENTATION = {"axial (x-y)": (("L", 0.02, 0.5), ("R", 0.98, 0.5), ("P", 0.5, 0.03),
                               ("A", 0.5, 0.97)),
               "sagittal (y-z)": (("P", 0.02, 0.5), ("A", 0.98, 0.5), ("I", 0.5, 0.03),
                                  ("S", 0.5, 0.97))}
EQUALS_BASELINE = ("model = baseline: every coefficient is zero, each trial is predicted by "
                   "its training mean; these are the baseline's scores")


def electrode_map(run: Run, runs: list[Run]) -> FigureSpec:
    """Per-electrode PCC (across held-out trials) at the electrode coordinates, axial (x-y) and
    sagittal (y-z) with L/R, A/P, I/S marked; the colour scale diverges around chance
    (:func:`chance_level`); FDR-significant electrodes (q <= 0.05) ringed. Without coordinates
    the scores are drawn per electrode and the figure says so; a model equal to its baseline
    says so."""
    el = electrode_table(run)
    header = ["electrode", "label", "x", "y", "z", "pcc", "baseline_pcc", "null_pcc_mean",
              "q_fdr", "significant"]
    rows = [] if el is None else [
        [el["electrode"][i], el["label"][i], *(_num(el[c][i]) for c in
         ("x", "y", "z", "pcc", "baseline_pcc", "null_pcc_mean", "q_fdr")),
         int(el["q_fdr"][i] <= FDR_Q)]
        for i in range(len(el["electrode"]))]
    title = f"{_title(run, runs)}: per-electrode PCC{flag_text([run])}"
    chance, source = chance_level(el) if el is not None else (0.0, "")
    if el is not None and np.isfinite(el["pcc"]).any():
        base = el["baseline_pcc"]
        base = f" (baseline {np.nanmean(base):.3f})" if np.isfinite(base).any() else ""
        title = (f"{_title(run, runs)}: per-electrode PCC, mean {np.nanmean(el['pcc']):.3f}"
                 f"{base}{flag_text([run])}")
    same = run.equals_baseline()

    def draw(fig):
        if el is None:
            message(fig.add_subplot(), "no scores_electrodes.csv in this run")
            return
        sig = el["q_fdr"] <= FDR_Q
        ring = f"FDR q <= {FDR_Q}: {int(sig.sum())} of {sig.size}"
        dev = np.abs(el["pcc"] - chance)
        # at least 0.01 wide: a map where every electrode sits at chance is white, not a 1e-6 scale
        half = max(float(np.nanmax(dev)), 0.01) if np.isfinite(dev).any() else 1.0
        style = dict(c=el["pcc"], cmap="RdBu_r", norm=CenteredNorm(vcenter=chance, halfrange=half),
                     s=30, edgecolors="0.4", linewidths=0.3)
        has_xyz = np.isfinite(np.stack([el["x"], el["y"], el["z"]])).all(axis=0)
        nonull = "" if np.isfinite(el["q_fdr"]).any() else " (no permutation null: no FDR)"
        if not has_xyz.any():
            ax = fig.add_subplot()
            sc = ax.scatter(np.arange(len(el["pcc"])), el["pcc"], **style)
            ax.scatter(np.flatnonzero(sig), el["pcc"][sig], s=90, facecolors="none",
                       edgecolors="k", label=ring)
            ax.axhline(chance, color="0.5", ls=":", lw=1, label=f"chance ({source})")
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
                _square_limits(ax, el[a][has_xyz], el[b][has_xyz])
                ax.set_title(name, fontsize=9)
                for letter, x, y in ORIENTATION[name]:
                    ax.text(x, y, letter, transform=ax.transAxes, ha="center", va="center",
                            fontsize=10, fontweight="bold", color="0.35", gid=f"orient:{letter}")
        if same:
            note(fig.axes[0], EQUALS_BASELINE, gid="equals_baseline", y=0.9)
        fig.axes[0].legend(fontsize=7, loc="lower right")
        fig.colorbar(sc, ax=fig.axes, label=f"PCC (white: chance {chance:.3f}, {source})")
        fig.suptitle(title + nonull, fontsize=10)

    return FigureSpec(_stem("electrodes", run, runs), header, rows, draw, provenance_lines([run]),
                      size=(11.0, 5.0),
                      notes=(f"colour centre (chance): {chance!r} ({source})",
                             *((EQUALS_BASELINE,) if same else ())))


def _square_limits(ax, u: np.ndarray, v: np.ndarray) -> None:
    """Equal mm on both axes in a square box set before the layout (``datalim`` changed the
    limits after it, and the wider tick labels ran off the figure)."""
    half = max(float(np.ptp(u)), float(np.ptp(v))) / 2 * 1.15 + 5.0
    cu, cv = (float(u.min() + u.max()) / 2, float(v.min() + v.max()) / 2)
    ax.set_xlim(cu - half, cu + half)
    ax.set_ylim(cv - half, cv + half)
    ax.set_aspect("equal", adjustable="box")


def null_percentile(run: Run, null: np.ndarray) -> float:
    """The null's 95th percentile as the run recorded it (the verdict's chance level), else
    computed from the null values (numpy's default linear interpolation, as torch.quantile)."""
    q95 = run.score("null_pcc_across_electrodes_95", required=False)
    return float(np.quantile(null, 0.95)) if math.isnan(q95) else q95


def degenerate_null(null: np.ndarray, baseline: float) -> bool:
    """Every permutation scores the baseline (to 1e-6): the permuted fits, like the model,
    predict the training mean, so the null says nothing about the embedding."""
    tol = 1e-6 * max(1.0, abs(baseline))
    return bool(null.size) and bool(np.all(np.abs(null - baseline) <= tol))


def null_histogram(run: Run, runs: list[Run]) -> FigureSpec | None:
    """The observed PCC across electrodes on its permutation null with the null's 95th
    percentile (the verdict's chance level) drawn; a degenerate null (all permutations equal
    the baseline) says so. None without a null."""
    pred = run.predictions() or {}
    null = np.asarray(pred.get("null_pcc_across_electrodes", np.empty(0)), dtype=float).ravel()
    if null.size == 0:
        return None
    observed = run.score("pcc_across_electrodes")
    base = run.score("baseline_pcc_across_electrodes")
    p = run.score("p_pcc_across_electrodes", required=False)
    q95 = null_percentile(run, null)
    flat = degenerate_null(null, base)
    null_r2 = np.asarray(pred.get("null_r2_across_electrodes", np.full(null.size, math.nan)),
                         dtype=float).ravel()
    if null_r2.size != null.size:
        null_r2 = np.full(null.size, math.nan)
    rows = [[i, float(v), _num(r)] for i, (v, r) in enumerate(zip(null, null_r2))]
    degenerate = (f"degenerate null: all {null.size} permutations score the baseline "
                  f"({base:.3f}): the permuted fits predict the training mean (every "
                  "coefficient zero), so this null cannot show an effect")

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
            ax.set_xlim(min(lo, observed, base) - 2e-3, max(hi, observed, base) + 2e-3)
        ax.axvline(q95, color="k", ls="-.", lw=1.5, gid="null95",
                   label=f"null 95th percentile {q95:.3f} (chance level)")
        ax.axvline(observed, color="C3", lw=2, gid="observed", label=f"observed {observed:.3f}")
        ax.axvline(base, color="C0", ls="--", gid="baseline", label=f"baseline {base:.3f}")
        ax.set_xlabel("PCC across electrodes, mean over held-out trials")
        ax.set_ylabel("permutations")
        if flat:
            note(ax, degenerate, gid="degenerate_null")
        ptxt = "" if math.isnan(p) else f", p = {p:.3g}"
        ax.set_title(f"{_title(run, runs)}: observed vs null{ptxt}{flag_text([run])}", fontsize=10)
        fig.legend(fontsize=7, loc="outside right upper", frameon=False)

    return FigureSpec(_stem("null", run, runs), ["permutation", "null_pcc", "null_r2"], rows, draw,
                      provenance_lines([run]), size=(9.0, 4.5),
                      notes=(f"observed pcc_across_electrodes: {observed!r}; p: {p!r}; "
                             f"null 95th percentile: {q95!r}", *((degenerate,) if flat else ())))


EXAMPLES = ("best", "median", "worst")


def example_trials(pcc: np.ndarray) -> list[tuple[str, int]]:
    """The trials with the best, median and worst per-trial PCC (ties: the lower index)."""
    finite = np.flatnonzero(np.isfinite(pcc))
    if finite.size == 0:
        return []
    order = finite[np.lexsort((finite, -pcc[finite]))]   # best first, ties by trial index
    picks = {"best": order[0], "median": order[(order.size - 1) // 2], "worst": order[-1]}
    return [(name, int(picks[name])) for name in EXAMPLES]


def activity(run: Run, runs: list[Run]) -> FigureSpec | None:
    """For the trial-mean target: the recreated activity, predicted against true high gamma
    over the electrodes (the trial's electrode profile, as the study scores it) for the trials
    with the best, median and worst PCC, with the baseline's profile. None for other targets
    or without predictions.npz."""
    if run.target_kind != "trial_mean":
        return None
    pred = run.predictions() or {}
    if "pred" not in pred or "Y" not in pred:
        return None
    Y, P = np.asarray(pred["Y"], float), np.asarray(pred["pred"], float)
    B = np.asarray(pred["baseline"], float) if "baseline" in pred else np.full(Y.shape, math.nan)
    t = run.trials()
    if len(t["trial"]) != Y.shape[0]:
        return None
    words = t.get("word", np.full(Y.shape[0], ""))
    el = electrode_table(run)
    names = (list(el["electrode"]) if el is not None and len(el["electrode"]) == Y.shape[1]
             else [f"column {i}" for i in range(Y.shape[1])])
    picks = example_trials(np.asarray(t["pcc"], float) if "pcc" in t else np.full(Y.shape[0], 0.0))
    rows = [[name, i, words[i], e, names[e], float(Y[i, e]), float(P[i, e]), float(B[i, e])]
            for name, i in picks for e in range(Y.shape[1])]
    same = run.equals_baseline()

    def draw(fig):
        if not picks:
            message(fig.add_subplot(), "no finite per-trial PCC in scores_trials.csv")
            return
        axes = fig.subplots(1, len(picks), sharey=True, squeeze=False)[0]
        x = np.arange(Y.shape[1])
        for ax, (name, i) in zip(axes, picks):
            for a, lab, style in ((Y, "true", "k-"), (P, "predicted", "C3-"),
                                  (B, "baseline (training mean)", "C0:")):
                ax.plot(x, a[i], style, label=lab, lw=1.2, marker="." if x.size < 40 else None,
                        gid=f"{lab.split()[0]}:{name}")
            ax.set_title(f"{name} trial: {i} '{words[i]}'\nPCC {t['pcc'][i]:.2f}, "
                         f"R2 {t['r2'][i]:.2f}", fontsize=8)
            ax.set_xlabel("electrode (column order)")
            if x.size <= 16:
                ax.set_xticks(x, names, rotation=90, fontsize=6)
        axes[0].set_ylabel("high-gamma, trial mean\n(the recording's units)")
        if same:
            note(axes[0], EQUALS_BASELINE, gid="equals_baseline")
        fig.legend(handles=axes[0].get_lines(), fontsize=7, loc="outside right upper",
                   frameon=False)
        fig.suptitle(f"{_title(run, runs)}: recreated activity, predicted vs true electrode "
                     f"profile\n(best, median, worst trial by PCC){flag_text([run])}",
                     fontsize=10)

    return FigureSpec(_stem("activity", run, runs),
                      ["example", "trial", "word", "column", "electrode", "true", "predicted",
                       "baseline"], rows, draw, provenance_lines([run]), size=(11.0, 4.2),
                      notes=(EQUALS_BASELINE,) if same else ())


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
