"""Table 1 and the figures of the study from finished run folders (never recomputes).

``python -m gpurecon.report DIR [DIR ...] --out OUT`` (see :mod:`.__main__`), or from Python::

    from gpurecon.report import make_report
    make_report(dirs=["multirun/2026-11-30/10-00-00"], out="report",
                formats="png,pdf,svg", dpi=300)

Rules (also in the README, section Report):

- Run folders are folders holding ``summary.json``, found recursively under each DIR; runs
  that are not complete (``gpurecon.outputs.is_complete`` where available) are skipped with a
  note. A DIR with no finished run is an error naming it.
- Real and synthetic runs together are an error (their scores cannot share a table); so are
  two runs of the same subject, model and settings (duplicates). Runs that differ in any other
  result-changing setting (data root, data.n_channels, target.window, n_permutations, layer,
  ...) are never averaged together: the differing keys split the labels (own rows, mean and
  figures), are named in table1.md / .tex, in table1.csv (column ``settings``) and on stderr.
  Synthetic data, untrained models and models identical to their baseline are flagged (column
  ``flags``, the notes column and footnotes, figure titles and notes).
- Table 1 has one row per (subject, model, setting); a sweep over alpha / l1_ratio gives one
  row per setting, one Markdown / LaTeX table per setting (a block per model with its mean
  row), and a heat map per participant and model.
- Every file records its provenance (a CSV in its ``<name>.csv.provenance.json`` sidecar, so
  the CSV itself is plain and pandas / spreadsheets read it with their defaults); no file
  holds a timestamp and orders are sorted, so the same runs give byte-identical CSV, JSON,
  Markdown, LaTeX, PDF and SVG files. Nothing is written until every input was read.
- Figures in any of PNG (``dpi``), PDF and SVG (vector, fonts embedded; :mod:`.draw`).
- The output is a complete set or nothing: every file is first written into a staging folder
  inside OUT (``.report-staging-*``) and moved into OUT only when all were written; on failure
  only the staging folder is removed (never a file the report did not write).
- A file of OUT with the name of a report file (``table1.md``: an earlier report, or the
  user's own) is not replaced without ``--overwrite``: the report stops first, naming it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from .draw import DEFAULT_DPI, FORMATS, FigureSpec, sidecar_name, write_figure
from .figures import r2_histogram, r2_per_model, score_grid
from .figures_layers import layer_figures
from .figures_run import activity, electrode_map, null_histogram, timecourse
from .runs import ReportError, Run, find_runs
from .settings import check_comparable, split_lines
from .table import write_table

__all__ = ["ReportError", "Run", "check_formats", "find_runs", "figure_specs", "make_report"]


def figure_specs(runs: list[Run]) -> tuple[list[FigureSpec], list[str]]:
    """Every figure the runs support (reading their files), and notes on those skipped."""
    specs = [*r2_per_model(runs), *r2_histogram(runs), *score_grid(runs), *layer_figures(runs)]
    skipped: dict[str, int] = {}
    for run in runs:
        specs.append(electrode_map(run, runs))
        for build, why in ((null_histogram, "null histogram: no permutation null "
                                            "(predictions.npz null_pcc_across_electrodes)"),
                           (timecourse, None),   # time courses only for target=frames
                           (activity, None)):    # electrode profiles only for trial_mean
            spec = build(run, runs)
            if spec is not None:
                specs.append(spec)
            elif why is not None:
                skipped[why] = skipped.get(why, 0) + 1
    return specs, [f"skipped {why} ({n} of {len(runs)} runs)" for why, n in skipped.items()]


def check_formats(formats, dpi) -> tuple[tuple[str, ...], int]:
    """``formats`` (``"png,pdf"`` or a list) as a tuple of allowed names, and ``dpi`` as a
    positive int; anything else is a :class:`ReportError` naming the allowed values."""
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    names = [str(n).strip().lower().lstrip(".") for n in names if str(n).strip()]
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise ReportError(f"--format must be a comma-separated list of {', '.join(FORMATS)}, "
                          f"got {formats!r}")
    try:
        value = int(dpi)
    except (TypeError, ValueError):
        value = 0
    if isinstance(dpi, bool) or value != dpi or not 10 <= value <= 2400:
        raise ReportError(f"--dpi must be a whole number from 10 to 2400, got {dpi!r}")
    return tuple(dict.fromkeys(names)), value


def report_names(specs: list[FigureSpec], formats: tuple[str, ...]) -> list[str]:
    """Every file name the report writes for these figures (and Table 1)."""
    tables = ["table1.csv", sidecar_name("table1.csv"), "table1.md", "table1.tex"]
    return tables + [f"{s.stem}.{ext}" for s in specs
                     for ext in ("csv", sidecar_name("csv"), *formats)]


def make_report(*, dirs: list[str | os.PathLike], out: str | os.PathLike, figures: bool = True,
                progress: bool = True, overwrite: bool = False, formats=("png",),
                dpi: int = DEFAULT_DPI) -> list[Path]:
    """Read the finished runs under ``dirs`` and write Table 1 (and the figures) into ``out``.

    Parameters
    ----------
    dirs : list of path
        Run folders and/or multirun folders, searched recursively for run folders.
    out : path
        Folder to write into (created); only the report's own files are replaced.
    figures : bool
        False: only Table 1 (table1.csv and its sidecar, table1.md, table1.tex).
    progress : bool
        Show a tqdm bar (stderr) over the figures.
    overwrite : bool
        Replace files of ``out`` that have the names of the report's files (an earlier report,
        or the user's own ``table1.md``). False: such a file is an error, before anything is
        drawn or written. Files with other names are never touched.
    formats : str or sequence of str
        Figure formats, any of ``png``, ``pdf``, ``svg`` (``"png,pdf,svg"``): PDF and SVG are
        vector with their fonts embedded (:mod:`.draw`).
    dpi : int
        Resolution of the PNG files (10 to 2400; 300 for print).

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    ReportError
        A folder without finished runs, an unreadable run file, or runs that cannot be
        compared (nothing is written then); ``out`` holds a file the report would replace
        (without ``overwrite``); or ``out`` cannot be written.
    """
    formats, dpi = check_formats(formats, dpi)
    runs, notes = find_runs(dirs)
    check_comparable(runs)
    specs, skipped = figure_specs(runs) if figures else ([], [])
    if not overwrite:
        _refuse_to_replace(Path(out), report_names(specs, formats))
    for note in notes + split_lines(runs) + skipped:
        print(f"gpurecon.report: {note}", file=sys.stderr)
    out = Path(out)
    created_out = not out.exists()
    staging = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        # A new, uniquely named folder: removing it on failure can only remove our own files.
        staging = Path(tempfile.mkdtemp(prefix=f".report-staging-{os.getpid()}-", dir=out))
        staged = write_table(staging, runs)
        # disable=None: no bar when stderr is not a terminal (a log, a pipe), as in the runs
        for spec in tqdm(specs, desc="report figures", unit="figure", file=sys.stderr,
                         disable=None if progress else True):
            staged += write_figure(staging, spec, formats, dpi)
        written = []
        for path in staged:  # same file system: each move is an atomic rename
            os.replace(path, out / path.name)
            written.append(out / path.name)
        staging.rmdir()
    except BaseException as err:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created_out:
            _remove_if_empty(out)
        if isinstance(err, OSError):
            raise ReportError(f"{out}: cannot write the report there "
                              f"({err.strerror or err})") from None
        raise
    return written


def _refuse_to_replace(out: Path, names: list[str]) -> None:
    """Raise ReportError naming the files of ``out`` the report would replace."""
    there = [n for n in names if os.path.lexists(out / n)]
    if there:
        shown = ", ".join(there[:5]) + (f" and {len(there) - 5} more" if len(there) > 5 else "")
        raise ReportError(f"{out}: already holds {shown}; the report does not replace them "
                          f"without --overwrite (or choose another --out)")


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` (which this report created) if nothing else was put there."""
    try:
        folder.rmdir()
    except OSError:
        pass
