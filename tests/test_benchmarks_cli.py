"""The benchmark scripts as a user runs them: --help without torch, run_all's RESULTS.md, and a
small bench_pipeline run whose scores must agree with the study's scipy/sklearn pipeline."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
OWN_SCRIPTS = ["bench_signal.py", "bench_embeddings.py", "bench_pipeline.py", "bench_solver.py", "bench_ranks.py",
               "bench_solver_cv.py", "bench_layers.py", "bench_read_schedule.py", "run_all.py"]


def run(args, timeout=300, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env, **kw)


@pytest.mark.parametrize("script", OWN_SCRIPTS)
def test_help_answers_without_importing_torch(script):
    proc = run(["-X", "importtime", str(BENCH / script), "--help"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:")
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "numpy" not in imported


def test_run_all_rewrites_results_with_the_machine_and_each_section(tmp_path):
    committed = (BENCH / "RESULTS.md").read_bytes()
    results = tmp_path / "RESULTS.md"
    proc = run([str(BENCH / "run_all.py"), "--only", "signal", "--results", str(results),
                "--args", "signal=--seconds 4 --channels 2 --repeats 1 --skip-mne"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# Benchmark results")
    assert re.search(r"^- CPU: .+ logical cores; RAM", text, re.M)
    assert re.search(r"torch \d", text) and "scikit-learn" in text and "Load average" in text
    assert "## Signal" in text and "| gpurecon CPU float32" in text
    # each row is echoed to stderr as it is measured (a run stopped early keeps its rows)
    assert "[signal] | gpurecon CPU float32" in proc.stderr
    # the benchmark itself no longer touches the committed RESULTS.md
    assert hashlib.sha256((BENCH / "RESULTS.md").read_bytes()).digest() == hashlib.sha256(committed).digest()


def test_pipeline_benchmark_agrees_with_the_studys_pipeline(tmp_path):
    """A small participant: gpurecon's per-trial scores equal those of scipy + one sklearn
    ElasticNet per fold + np.corrcoef / r2_score to the stated tolerance (exit status 0)."""
    md = tmp_path / "pipeline.md"
    proc = run([str(BENCH / "bench_pipeline.py"), "--quick", "--channels", "6", "--words", "12",
                "--permutations", "4", "--devices", "cpu", "--markdown", str(md)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = md.read_text()
    assert "| **total** |" in text and "within the tolerance" in text
    for stage in ("load", "high gamma", "embeddings", "fit", "null", "report"):
        assert f"| {stage} |" in text


def test_solver_benchmark_helpers_call_the_solver_api_as_it_is(monkeypatch):
    """The counts section's helpers on a tiny problem (the full benchmark is too slow for CI):
    a change of the solver's signatures must not first show up as a failed benchmark run."""
    monkeypatch.syspath_prepend(str(BENCH))
    import numpy as np
    import solver_runs

    import torch

    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 5)).astype(np.float32)
    Y = (X[:, :2] @ np.ones((2, 3)) + 0.1 * rng.standard_normal((12, 3))).astype(np.float32)
    threads = torch.get_num_threads()
    try:
        assert solver_runs.n_chunks(X, 3, [0.1], [0.5], "cpu", 1 << 30) == 1
        counter, res = solver_runs.count_ops(X, Y, [0.1], [0.5], "cpu", 1 << 30)   # sets 1 thread
    finally:
        torch.set_num_threads(threads)
    assert res.n_not_converged == 0 and counter.launches > 0


def test_solver_cv_benchmark_row_agrees_with_the_certified_optimum(tmp_path):
    """One row of bench_solver_cv (10-fold, heavy tails): the table's errors are parsed back and
    gpurecon's held-out predictions sit at the certified optimum; the markdown file has the row."""
    out = tmp_path / "cv.md"
    proc = run([str(BENCH / "bench_solver_cv.py"), "--families", "heavy_tails", "--cv", "k10", "--rows", "0.1:0.5",
                "--targets", "2", "--reps", "1", "--peers", "", "--markdown", str(out)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(line for line in out.read_text().splitlines() if line.startswith("| heavy_tails"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "k10 (10)" and cells[2] == "0.1" and cells[3] == "0.5"
    g_err, s_err = float(cells[7]), float(cells[8])
    assert g_err < 1e-6 and s_err > g_err
    assert cells[10] == "0/20"                       # every (fold, target) problem certified


def test_read_schedule_benchmark_times_both_schedules_to_the_same_answers():
    """bench_read_schedule.py (the GPU check that decides reads against launches), on the CPU:
    one row per schedule with its counts, the per-step schedule reading the host at least as
    often, every answer certified and both schedules' predictions equal to rounding."""
    proc = run([str(BENCH / "bench_read_schedule.py"), "--device", "cpu", "--families", "outlier_trials",
                "--targets", "4", "--reps", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0] == "outlier_trials":
            rows[cells[1]] = (int(cells[2].replace(",", "")), int(cells[3]), float(cells[4]), cells[6])
    assert set(rows) == {"session 15 (default)", "a read per step and per solve"}, proc.stdout
    assert rows["a read per step and per solve"][1] >= rows["session 15 (default)"][1]
    assert all(unc == "0" and secs > 0 for _, _, secs, unc in rows.values())
    diff = float(re.search(r"prediction: ([0-9.e+-]+)", proc.stdout).group(1))
    assert diff < 1e-9
