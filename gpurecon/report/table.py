"""Table 1 of the study from finished runs: ``table1.csv`` (one row per subject, model and
setting) and ``table1.md`` (participants x models, as the paper prints it)."""

from __future__ import annotations

import math
from pathlib import Path

from .. import outputs
from .runs import Run
from .settings import (all_split_keys, model_label, provenance_lines, setting, settings_text,
                       solver_text, subject_label)

SCORES = [  # (table column, summary.json scores key)
    ("pcc", "pcc_across_electrodes"),
    ("r2", "r2_across_electrodes"),
    ("baseline_pcc", "baseline_pcc_across_electrodes"),
    ("baseline_r2", "baseline_r2_across_electrodes"),
]
NULL_SCORES = [("p_pcc", "p_pcc_across_electrodes"), ("p_r2", "p_r2_across_electrodes")]
UNTRAINED_MARK = "†"


def flags(run: Run) -> str:
    out = []
    if run.data == "synthetic":
        out.append("synthetic")
    if run.untrained:
        out.append("untrained")
    return ";".join(out)


def _solver_cell(value) -> object:
    return solver_text(value) if isinstance(value, list) else float(value)


def _cell(value: float) -> object:
    return "" if math.isnan(value) else value


def table_rows(runs: list[Run]) -> tuple[list[str], list[list]]:
    """Header and rows of table1.csv, sorted by subject, model, setting; values exactly as
    each run's summary.json holds them (missing optional scores: empty cells)."""
    with_null = any(r.has_null() for r in runs)
    split = bool(all_split_keys(runs))  # runs differ in other settings: name them per row
    header = ["subject", "model", "checkpoint", "data", "target", "alpha", "l1_ratio", "n_trials",
              "n_electrodes", *(c for c, _ in SCORES), "pcc_per_electrode",
              "baseline_pcc_per_electrode", "n_electrodes_fdr05",
              *((c for c, _ in NULL_SCORES) if with_null else ()),
              *(("settings",) if split else ()), "flags", "run"]
    rows = []
    for run in sorted(runs, key=lambda r: (r.subject, r.model, setting(r), r.name)):
        fdr = run.score("n_electrodes_fdr_05", required=False)
        row = [run.subject, run.model, run.checkpoint, run.data, run.target_kind,
               _solver_cell(run.alpha), _solver_cell(run.l1_ratio), run.n_trials, run.n_electrodes,
               *(run.score(key) for _, key in SCORES),
               _cell(run.score("pcc_per_electrode_mean", required=False)),
               _cell(run.score("baseline_pcc_per_electrode_mean", required=False)),
               "" if math.isnan(fdr) else int(fdr)]
        if with_null:
            row += [_cell(run.score(key, required=False)) for _, key in NULL_SCORES]
        if split:
            row.append(settings_text(run, runs))
        rows.append(row + [flags(run), run.name])
    return header, rows


def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def _pair(score: float, baseline: float) -> str:
    return f"{_fmt(score)} ({_fmt(baseline)})"


def _mean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def markdown(runs: list[Run]) -> str:
    """Table 1 in the paper's shape: participants x models, PCC and R2 with the baseline in
    brackets, a mean row; one table per target kind and solver setting (its heading)."""
    lines = ["# Table 1: encoding scores per participant and model", "",
             "PCC and R2 between predicted and true high gamma across electrodes, per held-out "
             "trial, averaged over trials; in brackets the same score of the mean-of-training-"
             "trials baseline (the chance level the study lacked). `p=`: permutation p-value of "
             "the PCC where a null was fitted.", ""]
    sections = sorted({(r.target_kind, solver_text(r.alpha), solver_text(r.l1_ratio)) for r in runs})
    for target, alpha, l1 in sections:
        part = [r for r in runs if (r.target_kind, solver_text(r.alpha),
                                    solver_text(r.l1_ratio)) == (target, alpha, l1)]
        grid = " (grid: nested selection)" if ";" in alpha + l1 else ""
        lines += [f"## target {target}, alpha {alpha}, l1_ratio {l1}{grid}", ""]
        lines += _pivot(part, runs) + [""]
    lines += _footnotes(runs)
    return "\n".join(lines) + "\n"


def _pivot(part: list[Run], runs: list[Run]) -> list[str]:
    models = sorted({model_label(r, runs) for r in part})
    subjects = sorted({r.subject for r in part})
    cell = {(r.subject, model_label(r, runs)): r for r in part}
    head = ["participant"] + [f"{m} {s}" for m in models for s in ("PCC", "R2")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for subject in subjects:
        row = [subject_label(subject)]
        for m in models:
            run = cell.get((subject, m))
            if run is None:
                row += ["", ""]
                continue
            mark = UNTRAINED_MARK if run.untrained else ""
            p = run.score("p_pcc_across_electrodes", required=False)
            pcc = _pair(run.score("pcc_across_electrodes"),
                        run.score("baseline_pcc_across_electrodes"))
            row += [pcc + ("" if math.isnan(p) else f" p={p:.3f}") + mark,
                    _pair(run.score("r2_across_electrodes"),
                          run.score("baseline_r2_across_electrodes")) + mark]
        lines.append("| " + " | ".join(row) + " |")
    row = ["mean"]
    for m in models:
        col = [cell[(s, m)] for s in subjects if (s, m) in cell]
        n = f" n={len(col)}" if len(col) < len(subjects) else ""
        for score, base in (("pcc_across_electrodes", "baseline_pcc_across_electrodes"),
                            ("r2_across_electrodes", "baseline_r2_across_electrodes")):
            row.append(_pair(_mean([r.score(score) for r in col]),
                             _mean([r.score(base) for r in col])) + n)
    lines.append("| " + " | ".join(row) + " |")
    return lines


def _footnotes(runs: list[Run]) -> list[str]:
    notes = []
    keys = all_split_keys(runs)
    if keys:
        labels = sorted({(model_label(r, runs), settings_text(r, runs)) for r in runs})
        notes.append(f"**Settings differ** between these runs in {', '.join(keys)}: each "
                     "value is its own column (and mean), never averaged with another; "
                     + "; ".join(f"`{label}`: {text}" for label, text in labels) + ".")
    if any(r.data == "synthetic" for r in runs):
        notes.append("**Synthetic data**: these runs used the synthetic dataset (planted ground "
                     "truth), not recordings; the scores test the pipeline, not the study.")
    if any(r.untrained for r in runs):
        names = sorted({f"{r.model} ({r.checkpoint})" for r in runs if r.untrained})
        notes.append(f"{UNTRAINED_MARK} untrained model ({', '.join(names)}): random weights, "
                     "its scores say nothing about the trained model.")
    notes.append("Provenance: " + " | ".join(provenance_lines(runs)) + ".")
    return [f"- {n}" for n in notes]


def write_table(out: Path, runs: list[Run]) -> list[Path]:
    """Write table1.csv and table1.md into ``out`` (atomically)."""
    header, rows = table_rows(runs)
    md = markdown(runs)
    return [outputs.write_csv(out / "table1.csv", header, rows, comments=provenance_lines(runs)),
            outputs.write_text(out / "table1.md", md)]
