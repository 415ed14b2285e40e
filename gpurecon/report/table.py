"""Table 1 of the study from finished runs: ``table1.csv`` (one row per subject, model and
setting; plain CSV that pandas and spreadsheets read with their defaults, its provenance and
column definitions in ``table1.csv.provenance.json``), ``table1.md`` and ``table1.tex``
(booktabs) as a paper prints it.

The printed tables have one row per participant and model: PCC and R2 across electrodes as
mean ± SD over held-out trials, the baseline's score, the permutation null's 95th percentile
(the chance level) and the permutation p of PCC and R2, the numbers of trials and
electrodes, and the run's flags in a column of their own (never a mark inside a number); each
model ends in a mean row, mean ± SD over its participants. A model identical to its baseline
(every coefficient zero: its predictions are the training mean) says so where its p would be,
instead of ``p = 1``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import outputs
from .draw import write_plain_csv
from .runs import Run
from .settings import (all_split_keys, human_label, model_label, provenance_lines, setting,
                       settings_text, solver_text, subject_label)

SCORES = [  # (table column, summary.json scores key)
    ("pcc", "pcc_across_electrodes"),
    ("r2", "r2_across_electrodes"),
    ("baseline_pcc", "baseline_pcc_across_electrodes"),
    ("baseline_r2", "baseline_r2_across_electrodes"),
]
NULL_SCORES = [("null_pcc_95", "null_pcc_across_electrodes_95"),
               ("p_pcc", "p_pcc_across_electrodes"), ("p_r2", "p_r2_across_electrodes")]
EQUALS = "equals_baseline"
FLAG_TEXT = {"synthetic": "synthetic data", "untrained": "untrained model",
             EQUALS: "model = baseline"}
COLUMNS = {
    "pcc": "PCC across electrodes, mean over held-out trials (summary.json scores)",
    "pcc_sd_trials": "SD (ddof=1) of the per-trial PCC over held-out trials (scores_trials.csv)",
    "r2": "R2 across electrodes, mean over held-out trials",
    "r2_sd_trials": "SD (ddof=1) of the per-trial R2 over held-out trials",
    "baseline_pcc": "the same PCC of the training-mean baseline",
    "baseline_r2": "the same R2 of the training-mean baseline",
    "n_electrodes_fdr05": "electrodes with a per-electrode PCC at FDR q <= 0.05",
    "null_pcc_95": "95th percentile of the PCC over the permutation null: the chance level",
    "p_pcc": "permutation p of the PCC (see flags: equals_baseline means the model predicts the "
             "training mean, p is then not a test of the embedding)",
    "p_r2": "permutation p of the R2",
    "flags": "synthetic (synthetic data), untrained (random weights), equals_baseline (every "
             "coefficient zero: the model's predictions are its baseline's)",
}


def flags(run: Run) -> str:
    out = []
    if run.data == "synthetic":
        out.append("synthetic")
    if run.untrained:
        out.append("untrained")
    if run.equals_baseline():
        out.append(EQUALS)
    return ";".join(out)


def _solver_cell(value) -> object:
    return solver_text(value) if isinstance(value, list) else float(value)


def _cell(value: float) -> object:
    return "" if math.isnan(value) else value


def trial_sd(run: Run, column: str) -> float:
    """SD (ddof=1) over held-out trials of a per-trial score (scores_trials.csv); NaN if the
    column is absent or fewer than two trials are finite."""
    values = run.trials().get(column)
    if values is None or values.dtype.kind != "f":
        return math.nan
    values = values[np.isfinite(values)]
    return float(np.std(values, ddof=1)) if values.size > 1 else math.nan


def table_rows(runs: list[Run]) -> tuple[list[str], list[list]]:
    """Header and rows of table1.csv, sorted by subject, model, setting; scores exactly as
    each run's summary.json holds them (missing optional scores: empty cells), SDs from its
    scores_trials.csv."""
    with_null = any(r.has_null() for r in runs)
    split = bool(all_split_keys(runs))  # runs differ in other settings: name them per row
    header = ["subject", "model", "checkpoint", "data", "target", "alpha", "l1_ratio", "n_trials",
              "n_electrodes", "pcc", "pcc_sd_trials", "r2", "r2_sd_trials", "baseline_pcc",
              "baseline_r2", "pcc_per_electrode", "baseline_pcc_per_electrode",
              "n_electrodes_fdr05", *((c for c, _ in NULL_SCORES) if with_null else ()),
              *(("settings",) if split else ()), "flags", "run"]
    rows = []
    for run in sorted(runs, key=lambda r: (r.subject, r.model, setting(r), r.name)):
        fdr = run.score("n_electrodes_fdr_05", required=False)
        s = {c: run.score(key) for c, key in SCORES}
        row = [run.subject, run.model, run.checkpoint, run.data, run.target_kind,
               _solver_cell(run.alpha), _solver_cell(run.l1_ratio), run.n_trials, run.n_electrodes,
               s["pcc"], _cell(trial_sd(run, "pcc")), s["r2"], _cell(trial_sd(run, "r2")),
               s["baseline_pcc"], s["baseline_r2"],
               _cell(run.score("pcc_per_electrode_mean", required=False)),
               _cell(run.score("baseline_pcc_per_electrode_mean", required=False)),
               "" if math.isnan(fdr) else int(fdr)]
        if with_null:
            row += [_cell(run.score(key, required=False)) for _, key in NULL_SCORES]
        if split:
            row.append(settings_text(run, runs))
        rows.append(row + [flags(run), run.name])
    return header, rows


# ------------------------------------------------------------------ the printed table


@dataclass
class Line:
    """One printed row: a participant's run, or a model's mean row."""

    model: str
    who: str
    trials: str
    electrodes: str
    pcc: tuple[float, float]       # (value, SD)
    base_pcc: float
    null95: float
    p_pcc: str
    r2: tuple[float, float]
    base_r2: float
    p_r2: str
    notes: list[str]
    mean: bool = False


def _p(run: Run, key: str) -> str:
    if run.equals_baseline():
        return "= baseline"
    p = run.score(key, required=False)
    return "" if math.isnan(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _mean_sd(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return sum(vals) / len(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)


def _run_line(run: Run, runs: list[Run]) -> Line:
    return Line(human_label(run, runs), subject_label(run.subject), str(run.n_trials),
                str(run.n_electrodes), (run.score("pcc_across_electrodes"), trial_sd(run, "pcc")),
                run.score("baseline_pcc_across_electrodes"),
                run.score("null_pcc_across_electrodes_95", required=False),
                _p(run, "p_pcc_across_electrodes"),
                (run.score("r2_across_electrodes"), trial_sd(run, "r2")),
                run.score("baseline_r2_across_electrodes"), _p(run, "p_r2_across_electrodes"),
                [f for f in flags(run).split(";") if f])


def _mean_line(col: list[Run], runs: list[Run], n_subjects: int) -> Line:
    def m(key: str) -> tuple[float, float]:
        return _mean_sd([r.score(key, required=False) for r in col])

    notes = sorted({f for r in col for f in flags(r).split(";") if f},
                   key=list(FLAG_TEXT).index)
    n = f" (n={len(col)})" if len(col) < n_subjects or len(col) > 1 else ""
    return Line(human_label(col[0], runs), f"mean ± SD{n}", "", "",
                m("pcc_across_electrodes"), m("baseline_pcc_across_electrodes")[0],
                m("null_pcc_across_electrodes_95")[0], "", m("r2_across_electrodes"),
                m("baseline_r2_across_electrodes")[0], "", notes, mean=True)


def sections(runs: list[Run]) -> list[tuple[str, list[list[Line]]]]:
    """(heading, [lines of one model, ...]) per target kind and solver setting."""
    out = []
    keys = sorted({(r.target_kind, solver_text(r.alpha), solver_text(r.l1_ratio)) for r in runs})
    for target, alpha, l1 in keys:
        part = [r for r in runs if (r.target_kind, solver_text(r.alpha),
                                    solver_text(r.l1_ratio)) == (target, alpha, l1)]
        grid = " (grid: nested selection)" if ";" in alpha + l1 else ""
        subjects = sorted({r.subject for r in part})
        blocks = []
        for label in sorted({model_label(r, runs) for r in part}):
            col = sorted((r for r in part if model_label(r, runs) == label),
                         key=lambda r: r.subject)
            blocks.append([_run_line(r, runs) for r in col]
                          + [_mean_line(col, runs, len(subjects))])
        out.append((f"target {target}, alpha {alpha}, l1_ratio {l1}{grid}", blocks))
    return out


HEAD = ["model", "participant", "trials", "electrodes", "PCC", "baseline PCC", "null 95th PCC",
        "p PCC", "R2", "baseline R2", "p R2", "notes"]


def _num(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.3f}"


def _pm(pair: tuple[float, float], sep: str = " ± ") -> str:
    value, sd = pair
    return _num(value) if math.isnan(sd) else f"{_num(value)}{sep}{_num(sd)}"


def _cells(line: Line) -> list[str]:
    return [line.model, line.who, line.trials, line.electrodes, _pm(line.pcc),
            _num(line.base_pcc), _num(line.null95), line.p_pcc, _pm(line.r2),
            _num(line.base_r2), line.p_r2, "; ".join(FLAG_TEXT[f] for f in line.notes)]


INTRO = ("PCC and R2 between predicted and true high gamma across electrodes, per held-out "
         "trial: mean ± SD over trials (mean rows: mean ± SD over participants). Baseline: the "
         "same score of the mean-of-training-trials prediction; null 95th: the 95th percentile "
         "of the score over the permutation null (the chance level); p: permutation p-value "
         "where a null was fitted.")


def markdown(runs: list[Run]) -> str:
    """Table 1 as Markdown: one table per target kind and solver setting (its heading)."""
    lines = ["# Table 1: encoding scores per participant and model", "", INTRO, ""]
    for heading, blocks in sections(runs):
        lines += [f"## {heading}", "", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        for block in blocks:
            lines += ["| " + " | ".join(_cells(line)) + " |" for line in block]
        lines.append("")
    lines += [f"- {n}" for _, n in _footnotes(runs)]
    return "\n".join(lines) + "\n"


def _footnotes(runs: list[Run]) -> list[tuple[str | None, str]]:
    """(flag or None, text) per footnote; the last is the provenance."""
    notes: list[tuple[str | None, str]] = []
    keys = all_split_keys(runs)
    if keys:
        labels = sorted({(human_label(r, runs), settings_text(r, runs)) for r in runs})
        notes.append((None, f"Settings differ between these runs in {', '.join(keys)}: each "
                      "value is its own model row block (and mean), never averaged with another; "
                      + "; ".join(f"{label}: {text}" for label, text in labels) + "."))
    if any(r.data == "synthetic" for r in runs):
        notes.append(("synthetic", "synthetic data: these runs used the synthetic dataset (planted ground "
                     "truth), not recordings; the scores test the pipeline, not the study."))
    if any(r.untrained for r in runs):
        names = sorted({f"{r.model} ({r.checkpoint})" for r in runs if r.untrained})
        notes.append(("untrained", f"untrained model ({', '.join(names)}): random weights, its "
                      "scores say nothing about the trained model."))
    if any(r.equals_baseline() for r in runs):
        notes.append((EQUALS, "model = baseline: every coefficient is zero, the model predicts "
                      "each trial's training mean; its scores are the baseline's and a "
                      "permutation p would be 1 by construction, so none is given."))
    notes.append((None, "Provenance: " + " | ".join(provenance_lines(runs)) + "."))
    return notes


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "–": "--", "≤": r"$\leq$", "†": r"\dag{}"}


def tex_escape(text: str) -> str:
    """Plain text as LaTeX text mode (the specials escaped; other non-ASCII dropped to '?'
    so the file compiles with pdflatex's default input encoding)."""
    out = "".join(_TEX.get(ch, ch) for ch in text)
    return out.encode("ascii", "replace").decode("ascii")


def _tex_num(v: float) -> str:
    return "--" if math.isnan(v) else f"${v:.3f}$".replace("$-", "$-")


def _tex_pm(pair: tuple[float, float]) -> str:
    value, sd = pair
    if math.isnan(value):
        return "--"
    return f"${value:.3f}$" if math.isnan(sd) else f"${value:.3f} \\pm {sd:.3f}$"


def _tex_cells(line: Line, letters: dict[str, str]) -> list[str]:
    """The row's LaTeX cells; flags as footnote letters (the page has no room for words)."""
    cells = [tex_escape(line.model) if not line.mean else "",
             tex_escape(line.who) if not line.mean else r"\emph{" + tex_escape(line.who) + "}",
             line.trials, line.electrodes, _tex_pm(line.pcc), _tex_num(line.base_pcc),
             _tex_num(line.null95), tex_escape(line.p_pcc), _tex_pm(line.r2),
             _tex_num(line.base_r2), tex_escape(line.p_r2),
             ",".join(letters[f] for f in line.notes)]
    return cells


TEX_HEAD = ["Model", "Participant", "Trials", "Electrodes", "PCC", "Baseline PCC",
            r"Null 95\textsuperscript{th}", r"$p_\mathrm{PCC}$", "$R^2$", "Baseline $R^2$",
            "$p_{R^2}$", "Notes"]
TEX_SPEC = "llrrrrrrrrrl"


def latex(runs: list[Run]) -> str:
    """Table 1 as a LaTeX table (``\\usepackage{booktabs}``): every setting one block under
    its heading, every model a group with its mean row, the footnotes below."""
    ncol = len(TEX_HEAD)
    lines = [f"% {line}" for line in provenance_lines(runs)]
    lines += [r"% needs \usepackage{booktabs}", r"\begin{table}[htbp]", r"\centering",
              r"\caption{Encoding scores per participant and model. " + tex_escape(INTRO) + "}",
              r"\label{tab:gpurecon-table1}", r"\footnotesize", r"\setlength{\tabcolsep}{3pt}",
              r"\begin{tabular}{" + TEX_SPEC + "}", r"\toprule",
              " & ".join(TEX_HEAD) + r" \\", r"\midrule"]
    secs = sections(runs)
    notes = _footnotes(runs)
    letters = {flag: chr(ord("a") + i) for i, flag in enumerate(f for f, _ in notes if f)}
    for k, (heading, blocks) in enumerate(secs):
        if len(secs) > 1:
            lines.append(rf"\multicolumn{{{ncol}}}{{l}}{{\textit{{{tex_escape(heading)}}}}} \\")
        for j, block in enumerate(blocks):
            for line in block:
                if line.mean:
                    lines.append(rf"\cmidrule(l){{2-{ncol}}}")
                lines.append(" & ".join(_tex_cells(line, letters)) + r" \\")
            if j < len(blocks) - 1 or k < len(secs) - 1:
                lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip",
              r"\begin{minipage}{\linewidth}\scriptsize"]
    lines += [(f"\\textsuperscript{{{letters[flag]}}}" if flag else "") + tex_escape(n) + r"\par"
              for flag, n in notes[:-1]]
    lines += [r"\end{minipage}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(out: Path, runs: list[Run]) -> list[Path]:
    """Write table1.csv (+ its provenance sidecar), table1.md and table1.tex into ``out``
    (each atomically)."""
    header, rows = table_rows(runs)
    notes = [f"settings differ: {k}" for k in all_split_keys(runs)]
    return [*write_plain_csv(out / "table1.csv", header, rows, provenance_lines(runs), notes,
                             columns={k: v for k, v in COLUMNS.items() if k in header}),
            outputs.write_text(out / "table1.md", markdown(runs)),
            outputs.write_text(out / "table1.tex", latex(runs))]
