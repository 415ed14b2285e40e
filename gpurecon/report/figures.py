"""The study's figures over many runs: per-participant R2 distributions per model (Figures
2-4), trials per 0.1-wide R2 bin (Figure 5), and the score over alpha x l1_ratio (sweeps and
grids). Each builder reads the runs' files and returns :class:`FigureSpec`s; nothing is drawn
or written until every input has been read."""

from __future__ import annotations

import math

import numpy as np

from .draw import FigureSpec, flag_text, message
from .runs import Run
from .settings import model_label, provenance_lines, run_label, subject_label

BIN = 0.1


def _by(runs: list[Run], label) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(label(run, runs), []).append(run)
    return {k: sorted(v, key=lambda r: (r.subject, r.name)) for k, v in sorted(groups.items())}


def r2_per_model(runs: list[Run]) -> list[FigureSpec]:
    """Figures 2-4: per participant, the per-trial R2 across electrodes as box + strip,
    the mean-of-training-trials baseline marked; one figure per model (and setting)."""
    specs = []
    for label, group in _by(runs, run_label).items():
        rows, data = [], []
        for run in group:
            t = run.trials()
            words = t.get("word", np.full(len(t["trial"]), ""))
            rows += [[run.subject, int(i), w, float(r), float(b)]
                     for i, w, r, b in zip(t["trial"], words, t["r2"], t["baseline_r2"])]
            data.append((run.subject, t["r2"], t["baseline_r2"]))
        specs.append(FigureSpec(f"fig_r2_{label}", ["subject", "trial", "word", "r2", "baseline_r2"],
                                rows, _draw_r2(label, data, group), provenance_lines(group),
                                size=(max(5.0, 1.1 * len(group) + 2), 4.5)))
    return specs


def _draw_r2(label, data, group):
    def draw(fig):
        ax = fig.add_subplot()
        pos = np.arange(1, len(data) + 1)
        # black median, dashed red baseline: an untrained model's median sits on its baseline,
        # and matplotlib's default orange median hid under the red line
        ax.boxplot([d[1][np.isfinite(d[1])] for d in data], positions=pos, widths=0.5,
                   showfliers=False, medianprops=dict(color="black"))
        rng = np.random.default_rng(0)  # fixed jitter: the same runs give the same picture
        for p, (_, r2, base) in zip(pos, data):
            ax.scatter(p + rng.uniform(-0.15, 0.15, len(r2)), r2, s=6, alpha=0.5, color="C0")
            ax.hlines(np.nanmean(base), p - 0.3, p + 0.3, color="C3", lw=2, ls="--",
                      label="baseline (mean of training trials), mean R2" if p == 1 else None)
        ax.set_xticks(pos, [subject_label(d[0]) for d in data])
        ax.set_ylabel("R2 across electrodes, per held-out trial")
        ax.set_title(f"{label}: per-trial R2 per participant\n{flag_text(group).strip()}",
                     fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
    return draw


R2_FLOOR = -1.0                             # Figure 5's bins start here ...
UNDERFLOW = int(round(R2_FLOOR / BIN)) - 1  # ... and one bin holds every trial below it


def r2_histogram(runs: list[Run]) -> list[FigureSpec]:
    """Figure 5: per model, the number of trials per 0.1-wide R2 bin, averaged over
    participants (bins [k/10, (k+1)/10) from -1 up). Trials with R2 < -1 (a few outliers
    would otherwise stretch the axis and thin every bar) go into one underflow bin,
    ``bin_low = -inf``, drawn hatched left of -1 with a note of their count."""
    groups = _by(runs, run_label)
    counts: dict[str, dict[int, float]] = {}
    for label, group in groups.items():
        per_subject = []
        for run in group:
            r2 = run.trials()["r2"]
            k = np.floor(np.round(r2[np.isfinite(r2)] / BIN, 9)).astype(int)
            k = np.maximum(k, UNDERFLOW)
            per_subject.append({int(b): int(n) for b, n in zip(*np.unique(k, return_counts=True))})
        keys = sorted(set().union(*per_subject)) if per_subject else []
        counts[label] = {b: sum(c.get(b, 0) for c in per_subject) / len(per_subject) for b in keys}
    all_bins = sorted(set().union(*counts.values())) if counts else []
    bins = list(range(all_bins[0], all_bins[-1] + 1)) if all_bins else []

    def low(b: int) -> float:
        return -math.inf if b == UNDERFLOW else round(b * BIN, 10)

    rows = [[label, low(b), round((b + 1) * BIN, 10), counts[label].get(b, 0.0),
             len(groups[label])] for label in groups for b in bins]
    below = {label: counts[label].get(UNDERFLOW, 0.0) for label in groups}

    def draw(fig):
        ax = fig.add_subplot()
        if not bins:
            message(ax, "no finite per-trial R2 in these runs")
            return
        width = BIN / (len(groups) + 1)
        for j, label in enumerate(groups):
            for part, style in (([b for b in bins if b != UNDERFLOW],
                                 {"label": f"{label} (n={len(groups[label])})"}),
                                ([b for b in bins if b == UNDERFLOW], {"hatch": "//"})):
                ax.bar([b * BIN + (j + 0.5) * width for b in part],
                       [counts[label].get(b, 0.0) for b in part], width=width, align="edge",
                       color=f"C{j}", **style)
        if any(below.values()):
            note = "; ".join(f"{label}: {n:g}" for label, n in below.items())
            ax.text(0.01, 0.98, f"outliers below {R2_FLOOR:g} (hatched bar, trials per "
                    f"participant): {note}", transform=ax.transAxes, ha="left", va="top",
                    fontsize=7, color="0.3")
        ax.set_xlabel("R2 across electrodes, per held-out trial (0.1-wide bins; "
                      f"hatched: R2 < {R2_FLOOR:g})")
        ax.set_ylabel("trials per participant (mean)")
        ax.set_title(f"Trials per R2 bin{flag_text(runs)}", fontsize=10)
        ax.legend(fontsize=8, loc="upper right")

    return [FigureSpec("fig_r2_histogram", ["model", "bin_low", "bin_high", "mean_trials",
                                            "n_participants"], rows, draw, provenance_lines(runs),
                       notes=(f"bin_low -inf: the underflow bin, every trial with R2 < "
                              f"{R2_FLOOR:g}",))]


def score_grid(runs: list[Run]) -> list[FigureSpec]:
    """Heat maps of the score over alpha x l1_ratio, per participant and model: points from
    scalar runs that differ only in solver.alpha / l1_ratio (a sweep) and from grid runs'
    grid.csv. A point given twice keeps the first run's value (runs sorted by folder)."""
    specs = []
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.subject, model_label(run, runs)), []).append(run)
    for (subject, label), group in sorted(groups.items()):
        points: dict[tuple[float, float], list] = {}
        for run in sorted(group, key=lambda r: r.name):
            for p in _points(run):
                points.setdefault((p[0], p[1]), p)
        if len(points) < 2:
            continue
        rows = [points[k] for k in sorted(points)]
        specs.append(FigureSpec(
            f"fig_grid_{subject_label(subject)}_{label}",
            ["alpha", "l1_ratio", "pcc", "r2", "baseline_pcc", "baseline_r2", "run"], rows,
            _draw_grid(f"{subject_label(subject)} {label}", rows, group),
            provenance_lines(group), size=(10.0, 4.5)))
    return specs


def _points(run: Run) -> list[list]:
    if not run.is_grid:
        return [[float(run.alpha), float(run.l1_ratio), run.score("pcc_across_electrodes"),
                 run.score("r2_across_electrodes"), run.score("baseline_pcc_across_electrodes"),
                 run.score("baseline_r2_across_electrodes"), run.name]]
    grid = run.grid()
    if grid is None:
        return []
    nan = np.full(len(grid["alpha"]), math.nan)
    return [[float(a), float(l), float(p), float(r), float(bp), float(br), f"{run.name}/grid.csv"]
            for a, l, p, r, bp, br in zip(grid["alpha"], grid["l1_ratio"], grid["pcc"], grid["r2"],
                                          grid.get("baseline_pcc", nan),
                                          grid.get("baseline_r2", nan))]


def _draw_grid(title, rows, group):
    alphas = sorted({r[0] for r in rows})
    l1s = sorted({r[1] for r in rows})

    def draw(fig):
        for j, (name, col) in enumerate((("PCC", 2), ("R2", 3))):
            ax = fig.add_subplot(1, 2, j + 1)
            m = np.full((len(alphas), len(l1s)), np.nan)
            for r in rows:
                m[alphas.index(r[0]), l1s.index(r[1])] = r[col]
            im = ax.imshow(m, origin="lower", aspect="auto", cmap="viridis")
            for (a, l), v in np.ndenumerate(m):
                if np.isfinite(v):  # dark text on the light (high) end of viridis
                    light = im.norm(v) > 0.6
                    ax.text(l, a, f"{v:.3f}", ha="center", va="center", fontsize=7,
                            color="k" if light else "w")
            base = {round(r[col + 2], 12) for r in rows if np.isfinite(r[col + 2])}
            ax.set_xticks(range(len(l1s)), [f"{v:g}" for v in l1s])
            ax.set_yticks(range(len(alphas)), [f"{v:g}" for v in alphas])
            ax.set_xlabel("l1_ratio")
            ax.set_ylabel("alpha")
            btxt = f" (baseline {base.pop():.3f})" if len(base) == 1 else ""
            ax.set_title(f"{name} across electrodes{btxt}", fontsize=9)
            fig.colorbar(im, ax=ax)
        fig.suptitle(f"{title}: score over the solver grid{flag_text(group)}", fontsize=10)
    return draw
