"""Layer-wise figures from the runs that fitted several layers (``model.layer=all`` or a list):
the score per layer beside its chance levels, per participant and over participants, and the
best layer of each participant. Read from each run's layers.csv (never recomputed)."""

from __future__ import annotations

import numpy as np

from .draw import FigureSpec, flag_text, message
from .runs import Run, read_csv
from .settings import model_label, provenance_lines, subject_label

SCORE = "pcc_across_electrodes"
COLUMNS = ("layer", SCORE, "baseline_pcc_across_electrodes")
NULL_95, P = "null_pcc_across_electrodes_95", "p_pcc_across_electrodes"
NULL_MEAN = "null_pcc_across_electrodes_mean"


def _layers(run: Run) -> dict[str, np.ndarray] | None:
    """The run's layers.csv as columns, sorted by layer; None for a one-layer run."""
    if "layers" not in run.summary or not (run.path / "layers.csv").is_file():
        return None
    table = read_csv(run.path / "layers.csv", required=COLUMNS)
    order = np.argsort(table["layer"])
    return {k: v[order] for k, v in table.items()}


def _column(table: dict, key: str) -> np.ndarray:
    """A score column, NaN where the run has none (no permutation null)."""
    return table[key].astype(float) if key in table else np.full(len(table["layer"]), np.nan)


def layer_figures(runs: list[Run]) -> list[FigureSpec]:
    """Per model: ``fig_layers_<sub>_<model>`` per participant, ``fig_layers_mean_<model>``
    (every participant's curve and their mean) and ``fig_layers_best_<model>`` (the table of
    each participant's best layer) for the runs that fitted several layers."""
    groups: dict[str, list[tuple[Run, dict]]] = {}
    for run in runs:
        table = _layers(run)
        if table is not None:
            groups.setdefault(model_label(run, runs), []).append((run, table))
    specs = []
    for label, members in sorted(groups.items()):
        members.sort(key=lambda m: (m[0].subject, m[0].name))
        for run, table in members:
            specs.append(_curve_spec(f"fig_layers_{subject_label(run.subject)}_{label}",
                                     f"{label}, {subject_label(run.subject)}", [(run, table)]))
        if len(members) > 1:
            specs.append(_curve_spec(f"fig_layers_mean_{label}", f"{label}, mean of "
                                     f"{len(members)} participants", members))
        specs.append(_best_spec(label, members))
    return specs


def _rows(members) -> list[list]:
    rows = []
    for run, t in members:
        for i, layer in enumerate(t["layer"]):
            rows.append([run.subject, int(layer), float(t[SCORE][i]),
                         float(t["baseline_pcc_across_electrodes"][i]),
                         float(_column(t, NULL_95)[i]), float(_column(t, P)[i]),
                         int(layer) == int(run.summary["layers"].get("main_layer", -1))])
    return rows


def _curve_spec(stem: str, title: str, members) -> FigureSpec:
    header = ["subject", "layer", SCORE, "baseline_" + SCORE, NULL_95, P, "main_layer"]
    return FigureSpec(stem, header, _rows(members), _draw_curves(title, members),
                      provenance_lines([r for r, _ in members]), size=(9.0, 4.5))


def _mean_curve(members, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Layers fitted by every participant and the mean of ``key`` over participants."""
    common = sorted(set.intersection(*(set(t["layer"].astype(int)) for _, t in members)))
    values = [[_column(t, key)[list(t["layer"].astype(int)).index(k)] for k in common]
              for _, t in members]
    return np.array(common), np.nanmean(np.array(values, dtype=float), axis=0)


def _draw_curves(title: str, members):
    def draw(fig):
        ax = fig.add_subplot()
        many = len(members) > 1
        for run, t in members:
            ax.plot(t["layer"], t[SCORE], marker="o", ms=3, lw=1 if many else 1.8,
                    alpha=0.45 if many else 1.0, color="C0" if not many else None,
                    label=subject_label(run.subject) if many else "model")
        layers, score = _mean_curve(members, SCORE) if many else (members[0][1]["layer"],
                                                                  members[0][1][SCORE])
        if many:
            ax.plot(layers, score, color="black", lw=2.2, marker="o", ms=4, label="mean")
        _, base = _mean_curve(members, "baseline_" + SCORE)
        _, null = _mean_curve(members, NULL_95)
        _, null_mean = _mean_curve(members, NULL_MEAN)
        if np.isfinite(null).any():
            ax.fill_between(layers, null_mean, null, color="0.85", label="permutation null: its "
                            "mean to its 95th percentile" + (" (mean)" if many else ""))
        else:
            message(ax, "no permutation null (solver.n_permutations=0): baseline only")
        if not many:   # the layer whose scores are the run's main scores (summary.json)
            run, t = members[0]
            main = int(run.summary["layers"].get("main_layer", -1))
            if main in t["layer"]:
                ax.plot([main], [t[SCORE][list(t["layer"].astype(int)).index(main)]], ls="none",
                        marker="*", ms=12, color="C1", label=f"main layer ({main})")
        ax.plot(layers, base, color="C3", ls="--", lw=1.5,
                label="baseline (mean of training trials)" + (" (mean)" if many else ""))
        ax.set_xlabel("layer (hidden state; 0 = the model's input embeddings)")
        ax.set_ylabel("PCC across electrodes (mean over trials)")
        ax.set_xticks(layers)
        ax.set_title(f"{title}: score per layer\n{flag_text([r for r, _ in members]).strip()}",
                     fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))   # off the curves
    return draw


def _best_spec(label: str, members) -> FigureSpec:
    """The best layer per participant (highest PCC across electrodes) as a table."""
    header = ["subject", "best_layer", SCORE, "baseline_" + SCORE, NULL_95, P, "above_chance",
              "main_layer", "main_layer_" + SCORE]
    rows = []
    for run, t in members:
        i = int(np.nanargmax(t[SCORE]))
        null = float(_column(t, NULL_95)[i])
        main = int(run.summary["layers"].get("main_layer", -1))
        at_main = t[SCORE][list(t["layer"].astype(int)).index(main)] if main in t["layer"] else np.nan
        rows.append([run.subject, int(t["layer"][i]), float(t[SCORE][i]),
                     float(t["baseline_" + SCORE][i]), null, float(_column(t, P)[i]),
                     "" if np.isnan(null) else bool(t[SCORE][i] > null), main, float(at_main)])

    def draw(fig):
        ax = fig.add_subplot()
        ax.axis("off")
        shown = [[subject_label(r[0]), r[1], f"{r[2]:.3f}", f"{r[3]:.3f}",
                  "" if np.isnan(r[4]) else f"{r[4]:.3f}", "" if np.isnan(r[5]) else f"{r[5]:.3g}",
                  {True: "yes", False: "no", "": "n/a"}[r[6]], r[7]] for r in rows]
        ax.table(cellText=shown, colLabels=["participant", "best layer", "PCC", "baseline",
                                            "null 95%", "p", "above chance", "main layer"],
                 loc="center")
        ax.set_title(f"{label}: best layer per participant (highest PCC across electrodes; "
                     f"chosen after seeing the scores)\n{flag_text([r for r, _ in members]).strip()}",
                     fontsize=10)
    return FigureSpec(f"fig_layers_best_{label}", header, rows, draw,
                      provenance_lines([r for r, _ in members]),
                      size=(8.0, 1.2 + 0.35 * len(rows)))
