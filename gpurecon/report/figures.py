"""The study's figures over many runs: per-participant R2 distributions per model (Figures
2-4, and all models side by side), trials per 0.1-wide R2 bin (Figure 5), and the score over
alpha x l1_ratio (sweeps and grids). Each builder reads the runs' files and returns
:class:`FigureSpec`s; nothing is drawn or written until every input has been read.

What a reader compares is drawn as such: the model's MEAN R2 beside its baseline's MEAN (the
box's median line is the box's, not the comparison); every model on one shared y axis;
legends outside the data; heat maps centred on the baseline (a cell is red only when it beats
it) and labelled as in-hindsight scores.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.colors import CenteredNorm
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.transforms import blended_transform_factory

from .draw import FigureSpec, flag_text, message, note
from .runs import Run
from .settings import human_label, model_label, provenance_lines, run_label, subject_label

BIN = 0.1
R2_HEADER = ["model", "model_label", "subject", "trial", "word", "r2", "baseline_r2"]


def _by(runs: list[Run], label) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(label(run, runs), []).append(run)
    return {k: sorted(v, key=lambda r: (r.subject, r.name)) for k, v in sorted(groups.items())}


def _r2_data(runs: list[Run]) -> dict[str, dict[int, dict]]:
    """{label: {subject: {"r2", "baseline", "rows", "human"}}} from scores_trials.csv."""
    data: dict[str, dict[int, dict]] = {}
    for label, group in _by(runs, run_label).items():
        data[label] = {}
        for run in group:
            t = run.trials()
            words = t.get("word", np.full(len(t["trial"]), ""))
            human = human_label(run, runs)
            data[label][run.subject] = {
                "r2": t["r2"], "baseline": t["baseline_r2"], "human": human,
                "rows": [[label, human, run.subject, int(i), w, float(r), float(b)]
                         for i, w, r, b in zip(t["trial"], words, t["r2"], t["baseline_r2"])]}
    return data


def _shared_ylim(data: dict) -> tuple[float, float]:
    """One y range for every R2 figure (all models comparable), holding every trial."""
    vals = np.concatenate([np.concatenate([d["r2"], d["baseline"]])
                           for per in data.values() for d in per.values()] or [np.zeros(1)])
    vals = vals[np.isfinite(vals)]
    lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (-1.0, 1.0)
    pad = 0.06 * max(hi - lo, 0.1)
    return lo - pad, hi + pad


def r2_per_model(runs: list[Run]) -> list[FigureSpec]:
    """Figures 2-4: per participant, the per-trial R2 across electrodes as box + strip, the
    model's mean over trials (black) beside the baseline's mean (red, dashed), n per box; one
    figure per model (and setting), all on the same y range; and ``fig_r2_models`` with every
    model side by side per participant (the study's comparison) when there are several."""
    data = _r2_data(runs)
    ylim = _shared_ylim(data)
    specs = []
    for label, per in data.items():
        group = [r for r in runs if run_label(r, runs) == label]
        specs.append(FigureSpec(
            f"fig_r2_{label}", R2_HEADER, [row for d in per.values() for row in d["rows"]],
            _draw_r2({label: per}, ylim, group), provenance_lines(group),
            size=(max(7.5, 1.1 * len(per) + 5), 4.8)))
    if len(data) > 1:
        subjects = {s for per in data.values() for s in per}
        specs.append(FigureSpec(
            "fig_r2_models", R2_HEADER,
            [row for per in data.values() for d in per.values() for row in d["rows"]],
            _draw_r2(data, ylim, runs), provenance_lines(runs),
            size=(max(9.0, (0.45 * len(data) + 0.5) * len(subjects) + 5), 4.8)))
    return specs


def box_positions(n_models: int) -> tuple[np.ndarray, float]:
    """Offsets of the models' boxes around a participant's tick, and a box's width."""
    width = 0.8 / n_models
    return (np.arange(n_models) - (n_models - 1) / 2) * width, width


def _draw_r2(data: dict[str, dict[int, dict]], ylim, group):
    labels = list(data)
    subjects = sorted({s for per in data.values() for s in per})

    def draw(fig):
        ax = fig.add_subplot()
        offsets, width = box_positions(len(labels))
        top = blended_transform_factory(ax.transData, ax.transAxes)
        rng = np.random.default_rng(0)  # fixed jitter: the same runs give the same picture
        for j, label in enumerate(labels):
            colour = f"C{j}" if len(labels) > 1 else "C0"
            for i, s in enumerate(subjects, start=1):
                d = data[label].get(s)
                if d is None:
                    continue
                r2 = d["r2"][np.isfinite(d["r2"])]
                pos = i + offsets[j]
                ax.boxplot([r2], positions=[pos], widths=0.75 * width, showfliers=False,
                           patch_artist=True, manage_ticks=False,
                           boxprops=dict(facecolor=colour, alpha=0.3, edgecolor="0.3"),
                           medianprops=dict(color="0.45", lw=0.8))
                ax.scatter(pos + rng.uniform(-0.2, 0.2, len(r2)) * width, r2, s=6, alpha=0.6,
                           color=colour, zorder=3, gid=f"trials:{s}:{label}")
                half = 0.42 * width
                ax.hlines(np.mean(r2) if r2.size else np.nan, pos - half, pos + half,
                          color="k", lw=2.2, zorder=4, gid=f"mean:{s}:{label}")
                ax.hlines(np.nanmean(d["baseline"]), pos - half, pos + half, color="C3",
                          lw=1.6, ls="--", zorder=4, gid=f"baseline_mean:{s}:{label}")
                ax.text(pos, 1.005, f"n={r2.size}", transform=top, ha="center", va="bottom",
                        fontsize=7, gid=f"n:{s}:{label}")
        ax.set_xticks(range(1, len(subjects) + 1), [subject_label(s) for s in subjects])
        ax.set_xlim(0.5, len(subjects) + 0.5)
        ax.set_ylim(*ylim)
        ax.set_xlabel("participant")
        ax.set_ylabel("R2 across electrodes, per held-out trial")
        humans = {label: next(iter(data[label].values()))["human"] for label in labels}
        handles = [Line2D([], [], color="k", lw=2.2, label="model: mean over trials"),
                   Line2D([], [], color="C3", lw=1.6, ls="--",
                          label="baseline (training mean): mean over trials"),
                   Patch(facecolor="0.8", edgecolor="0.3",
                         label="box: median, quartiles; whiskers 1.5 IQR; dots: trials")]
        if len(labels) > 1:
            handles += [Patch(facecolor=f"C{j}", alpha=0.5, label=humans[lab])
                        for j, lab in enumerate(labels)]
        # outside the axes: no trial (the worst ones sit at the bottom) is ever covered
        fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False)
        what = humans[labels[0]] if len(labels) == 1 else "models side by side"
        ax.set_title(f"{what}: per-trial R2 per participant\n{flag_text(group).strip()}",
                     fontsize=10, pad=14)
    return draw


R2_FLOOR = -1.0                             # Figure 5's bins start here ...
FIRST_BIN = int(round(R2_FLOOR / BIN))      # ... (bin -10: [-1.0, -0.9)) ...
UNDERFLOW = FIRST_BIN - 1                   # ... and one bin holds every trial below it
LAST_BIN = int(round(1.0 / BIN)) - 1        # [0.9, 1.0); R2 = 1 exactly adds bin 10


def _bin_counts(values: list[np.ndarray]) -> dict[int, float]:
    """Trials per bin (k: [k/10, (k+1)/10); UNDERFLOW: below -1), mean over participants."""
    per_subject = []
    for v in values:
        k = np.floor(np.round(v[np.isfinite(v)] / BIN, 9)).astype(int)
        k = np.maximum(k, UNDERFLOW)
        per_subject.append({int(b): int(n) for b, n in zip(*np.unique(k, return_counts=True))})
    keys = set().union(*per_subject) if per_subject else set()
    return {b: sum(c.get(b, 0) for c in per_subject) / len(per_subject) for b in keys}


def r2_histogram(runs: list[Run]) -> list[FigureSpec]:
    """Figure 5: per model, the number of trials per 0.1-wide R2 bin, averaged over
    participants, beside the same for its baseline (bins [k/10, (k+1)/10) from -1 up to 1,
    whatever the data). Trials with R2 < -1 (a few outliers would otherwise stretch the axis
    and thin every bar) go into one underflow bin, ``bin_low = -inf``, drawn hatched left of -1
    with a note of their count, both only when there is such a trial. One panel per model,
    sharing both axes (small multiples)."""
    groups = _by(runs, run_label)
    counts, base_counts, humans = {}, {}, {}
    for label, group in groups.items():
        counts[label] = _bin_counts([r.trials()["r2"] for r in group])
        base_counts[label] = _bin_counts([r.trials()["baseline_r2"] for r in group])
        humans[label] = human_label(group[0], runs)
    present = set().union(*counts.values(), *base_counts.values()) if counts else set()
    top = max(present | {LAST_BIN})
    bins = ([UNDERFLOW] if UNDERFLOW in present else []) + list(range(FIRST_BIN, top + 1))
    below = {label: (counts[label].get(UNDERFLOW, 0.0), base_counts[label].get(UNDERFLOW, 0.0))
             for label in groups}
    has_under = UNDERFLOW in present

    def low(b: int) -> float:
        return -math.inf if b == UNDERFLOW else round(b * BIN, 10)

    rows = [[label, humans[label], low(b), round((b + 1) * BIN, 10), counts[label].get(b, 0.0),
             base_counts[label].get(b, 0.0), len(groups[label])]
            for label in groups for b in (bins if present else [])]

    def draw(fig):
        if not present:
            message(fig.add_subplot(), "no finite per-trial R2 in these runs")
            return
        axes = fig.subplots(len(groups), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
        half = BIN / 2
        for j, (ax, label) in enumerate(zip(axes, groups)):
            for b in bins:
                x = (R2_FLOOR - BIN if b == UNDERFLOW else b * BIN)
                hatch = "//" if b == UNDERFLOW else None
                ax.bar(x, counts[label].get(b, 0.0), width=half, align="edge", color=f"C{j}",
                       hatch=hatch, edgecolor="0.2", lw=0.3, gid=f"model:{label}:{low(b)}")
                ax.bar(x + half, base_counts[label].get(b, 0.0), width=half, align="edge",
                       color="0.75", hatch=hatch, edgecolor="0.2", lw=0.3,
                       gid=f"baseline:{label}:{low(b)}")
            ax.set_title(f"{humans[label]} (n={len(groups[label])} participants)", fontsize=9)
            ax.set_ylabel("trials per\nparticipant (mean)", fontsize=8)
            ax.legend(handles=[Patch(color=f"C{j}", label="model"),
                               Patch(color="0.75", label="baseline (training mean)")],
                      fontsize=7, loc="upper left", frameon=False)
            if has_under and any(below[label]):
                note(ax, f"hatched: {below[label][0]:g} (model) and {below[label][1]:g} "
                     f"(baseline) trials per participant with R2 < {R2_FLOOR:g}",
                     gid=f"underflow_note:{label}", y=0.62)
        xlabel = "R2 across electrodes, per held-out trial (0.1-wide bins from -1)"
        if has_under:
            xlabel += f"; hatched, left of {R2_FLOOR:g}: every trial with R2 < {R2_FLOOR:g}"
        axes[-1].set_xlabel(xlabel)
        axes[-1].set_xlim(bins[0] * BIN if not has_under else R2_FLOOR - BIN, (top + 1) * BIN)
        fig.suptitle(f"Trials per R2 bin, model beside its baseline{flag_text(runs)}",
                     fontsize=10)

    notes = ((f"bin_low -inf: the underflow bin, every trial with R2 < {R2_FLOOR:g}",)
             if has_under else ())
    return [FigureSpec("fig_r2_histogram", ["model", "model_label", "bin_low", "bin_high",
                                            "mean_trials", "baseline_mean_trials",
                                            "n_participants"], rows, draw,
                       provenance_lines(runs), size=(8.0, 1.2 + 2.0 * max(1, len(groups))),
                       notes=notes)]


def score_grid(runs: list[Run]) -> list[FigureSpec]:
    """Heat maps of the score over alpha x l1_ratio, per participant and model: points from
    scalar runs that differ only in solver.alpha / l1_ratio (a sweep) and from grid runs'
    grid.csv. A point given twice keeps the first run's value (runs sorted by folder). The
    colour scale diverges around the baseline's score; a grid run's nested selection (the
    honest score: each held-out trial's setting chosen without it) is marked on the scale,
    and the cell it chose most often (summary.json ``nested.choice_counts``) is boxed."""
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
        grids = [r for r in sorted(group, key=lambda r: r.name) if r.is_grid]
        share = choice_shares(grids[0]) if grids else {}
        rows = [[*points[k], share.get(k, "")] for k in sorted(points)]
        honest = ({"PCC": grids[0].score("pcc_across_electrodes"),
                   "R2": grids[0].score("r2_across_electrodes")} if grids else None)
        name = human_label(group[0], runs, solver=False)
        specs.append(FigureSpec(
            f"fig_grid_{subject_label(subject)}_{label}",
            ["alpha", "l1_ratio", "pcc", "r2", "baseline_pcc", "baseline_r2", "run",
             "nested_choice_share"], rows,
            _draw_grid(f"{subject_label(subject)} {name}", rows, group, honest),
            provenance_lines(group), size=(10.0, 4.8),
            notes=(("in-hindsight scores: each cell is scored on the trials used to pick it",)
                   + ((f"nested selection (honest) of {grids[0].name}: pcc {honest['PCC']!r}, "
                       f"r2 {honest['R2']!r}",) if honest else ()))))
    return specs


def choice_shares(run: Run) -> dict[tuple[float, float], float]:
    """{(alpha, l1_ratio): share of the nested selection's (outer fold, target) choices} of a
    grid run (summary.json ``nested.choice_counts``); empty when the run did not record it."""
    counts = (run.summary.get("nested") or {}).get("choice_counts") or []
    try:
        pairs = {(float(c["alpha"]), float(c["l1_ratio"])): float(c["count"]) for c in counts}
    except (KeyError, TypeError, ValueError):
        return {}
    total = sum(pairs.values())
    return {k: v / total for k, v in pairs.items()} if total > 0 else {}


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


def grid_centre(rows: list[list], col: int) -> float:
    """The baseline the heat map is centred on: the mean of the points' baseline scores (one
    value: the training-mean baseline does not depend on alpha or l1_ratio); NaN if none."""
    base = [r[col + 2] for r in rows if np.isfinite(r[col + 2])]
    return float(np.mean(base)) if base else math.nan


def _draw_grid(title, rows, group, honest):
    alphas = sorted({r[0] for r in rows})
    l1s = sorted({r[1] for r in rows})

    def draw(fig):
        for j, (name, col) in enumerate((("PCC", 2), ("R2", 3))):
            ax = fig.add_subplot(1, 2, j + 1)
            m = np.full((len(alphas), len(l1s)), np.nan)
            for r in rows:
                m[alphas.index(r[0]), l1s.index(r[1])] = r[col]
            centre = grid_centre(rows, col)
            if math.isnan(centre):   # no baseline recorded: nothing to centre on
                centre = float(np.nanmean(m))
                btxt = " (no baseline recorded: centred on the mean cell)"
            else:
                btxt = f" (colour centred on the baseline {centre:.3f})"
            marked = [honest[name]] if honest is not None and np.isfinite(honest[name]) else []
            dev = np.abs(np.array([*m[np.isfinite(m)], *marked]) - centre)
            spread = float(dev.max()) if dev.size else 0.0   # the honest mark stays on the scale
            norm = CenteredNorm(vcenter=centre, halfrange=max(spread, 1e-3))
            # pcolormesh, not imshow: cells as vector patches in PDF / SVG (imshow embeds a raster)
            im = ax.pcolormesh(np.arange(len(l1s) + 1) - 0.5, np.arange(len(alphas) + 1) - 0.5,
                               np.ma.masked_invalid(m), cmap="RdBu_r", norm=norm)
            for (a, l), v in np.ndenumerate(m):
                if np.isfinite(v):  # white text on the saturated ends, black near the centre
                    ax.text(l, a, f"{v:.3f}", ha="center", va="center", fontsize=7,
                            color="w" if abs(norm(v) - 0.5) > 0.3 else "k")
            ax.set_xticks(range(len(l1s)), [f"{v:g}" for v in l1s])
            ax.set_yticks(range(len(alphas)), [f"{v:g}" for v in alphas])
            ax.set_xlabel("l1_ratio")
            ax.set_ylabel("alpha")
            ax.set_title(f"{name} across electrodes{btxt}", fontsize=8)
            shares = {(r[0], r[1]): r[7] for r in rows if r[7] != ""}
            if shares:   # the cell the nested selection chose most often (ties: the first)
                (a, l), top = max(shares.items(), key=lambda kv: kv[1])
                ax.add_patch(Rectangle((l1s.index(l) - 0.5, alphas.index(a) - 0.5), 1, 1,
                                       fill=False, edgecolor="k", lw=2.5,
                                       gid=f"nested_choice:{name}"))
                ax.set_xlabel(f"l1_ratio (boxed: the nested selection's most frequent "
                              f"choice, {top:.0%})")
            bar = fig.colorbar(im, ax=ax, label=f"{name} (red: above the baseline)")
            if honest is not None and np.isfinite(honest[name]):
                bar.ax.axhline(honest[name], color="k", lw=2, gid=f"honest:{name}")
                bar.ax.text(0.5, honest[name], "nested", transform=bar.ax.get_yaxis_transform(),
                            ha="center", va="bottom", fontsize=6, color="k")
                ax.set_title(f"{name} across electrodes{btxt}\nnested selection (honest): "
                             f"{honest[name]:.3f}, black line on the scale", fontsize=8)
        fig.suptitle(f"{title}: score per grid point{flag_text(group)}\nIN HINDSIGHT: the best "
                     "cell is chosen after seeing these held-out scores (optimistic)",
                     fontsize=9)
    return draw
