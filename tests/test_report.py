"""The report (Table 1 and the figures) from run folders with known values, and end to end
from a real 2-subject x 2-model multirun."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _report_fixtures import make_run
from gpurecon import outputs
from gpurecon.report import ReportError, figure_specs, find_runs, make_report
from gpurecon.report.__main__ import main as report_main

PNG = b"\x89PNG\r\n\x1a\n"


def read_table(path: Path) -> list[dict[str, str]]:
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


def sidecar(path: Path) -> dict:
    """The provenance sidecar of a report CSV (``table1.csv.provenance.json``)."""
    return json.loads(path.with_name(path.name + ".provenance.json").read_text())


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture
def study(tmp_path):
    """A multirun folder (2 subjects x 2 models, with null) and a single run folder elsewhere."""
    multi = tmp_path / "multirun" / "2026-01-01" / "10-00-00"
    runs = [make_run(multi, f"{i}_sub-0{s}_{m}", subject=s, model=m, seed=i)
            for i, (s, m) in enumerate([(1, "fasttext"), (1, "gpt2"), (2, "fasttext")])]
    single = tmp_path / "outputs" / "one"
    runs.append(make_run(single.parent, single.name, subject=2, model="gpt2", seed=3))
    return tmp_path, [multi, single], runs


def test_table1_values_equal_each_runs_summary(study):
    tmp, dirs, runs = study
    make_report(dirs=dirs, out=tmp / "rep", figures=False, progress=False)
    rows = read_table(tmp / "rep" / "table1.csv")
    assert list(rows[0]) == [
        "subject", "model", "checkpoint", "data", "target", "alpha", "l1_ratio", "n_trials",
        "n_electrodes", "pcc", "pcc_sd_trials", "r2", "r2_sd_trials", "baseline_pcc",
        "baseline_r2", "pcc_per_electrode", "baseline_pcc_per_electrode", "n_electrodes_fdr05",
        "null_pcc_95", "p_pcc", "p_r2", "flags", "run"]
    assert [(r["subject"], r["model"]) for r in rows] == [
        ("1", "fasttext"), ("1", "gpt2"), ("2", "fasttext"), ("2", "gpt2")]
    by_key = {(int(r["subject"]), r["model"]): r for r in rows}
    keys = {"pcc": "pcc_across_electrodes", "r2": "r2_across_electrodes",
            "baseline_pcc": "baseline_pcc_across_electrodes",
            "baseline_r2": "baseline_r2_across_electrodes",
            "pcc_per_electrode": "pcc_per_electrode_mean",
            "baseline_pcc_per_electrode": "baseline_pcc_per_electrode_mean",
            "p_pcc": "p_pcc_across_electrodes",
            "p_r2": "p_r2_across_electrodes", "null_pcc_95": "null_pcc_across_electrodes_95"}
    for run in runs:
        s = summary(run)
        row = by_key[(s["provenance"]["subject"], s["provenance"]["model"])]
        for col, key in keys.items():
            assert float(row[col]) == s["scores"][key], (run, col)  # exact: never recomputed
        assert int(row["n_electrodes_fdr05"]) == s["scores"]["n_electrodes_fdr_05"]
        assert int(row["n_trials"]) == s["n_trials"] and int(row["n_electrodes"]) == s["n_targets"]
        assert row["checkpoint"] == s["provenance"]["checkpoint"]
        assert row["data"] == "synthetic"
        assert row["flags"] == "synthetic;untrained"
    prov = sidecar(tmp / "rep" / "table1.csv")["provenance"]
    assert "data: synthetic" in prov and "device: cpu" in prov
    assert "checkpoint: fasttext=tiny (untrained); gpt2=tiny (untrained)" in prov
    assert not (tmp / "rep" / "table1.csv").read_text().startswith("#")


def test_markdown_rows_hold_each_runs_scores_spread_p_and_flags_in_their_own_column(study):
    tmp, dirs, runs = study
    make_report(dirs=dirs, out=tmp / "rep", figures=False, progress=False)
    md = (tmp / "rep" / "table1.md").read_text()
    lines = _pivot_cells(md)
    assert lines[0] == ["model", "participant", "trials", "electrodes", "PCC", "baseline PCC",
                        "null 95th PCC", "p PCC", "R2", "baseline R2", "p R2", "notes"]
    s = {(summary(r)["provenance"]["subject"], summary(r)["provenance"]["model"]):
         (summary(r), r) for r in runs}
    sm, folder = s[(2, "gpt2")]
    sc = sm["scores"]
    trials = read_table(folder / "scores_trials.csv")
    sd = {c: np.std([float(t[c]) for t in trials], ddof=1) for c in ("pcc", "r2")}
    row = next(c for c in lines if c[:2] == ["GPT-2", "sub-02"])
    assert row[2:] == [str(sm["n_trials"]), str(sm["n_targets"]),
                       f"{sc['pcc_across_electrodes']:.3f} ± {sd['pcc']:.3f}",
                       f"{sc['baseline_pcc_across_electrodes']:.3f}",
                       f"{sc['null_pcc_across_electrodes_95']:.3f}",
                       f"{sc['p_pcc_across_electrodes']:.3f}",
                       f"{sc['r2_across_electrodes']:.3f} ± {sd['r2']:.3f}",
                       f"{sc['baseline_r2_across_electrodes']:.3f}",
                       f"{sc['p_r2_across_electrodes']:.3f}",
                       "synthetic data; untrained model"]
    assert "†" not in md
    mean = next(c for c in lines if c[0] == "FastText" and c[1].startswith("mean"))
    assert mean[1] == "mean ± SD (n=2)"
    for col, key in ((4, "pcc_across_electrodes"), (8, "r2_across_electrodes")):
        v = [s[(k, "fasttext")][0]["scores"][key] for k in (1, 2)]
        assert mean[col] == f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}"   # SD over participants
    base = np.mean([s[(k, "fasttext")][0]["scores"]["baseline_r2_across_electrodes"]
                    for k in (1, 2)])
    assert mean[9] == f"{base:.3f}"
    assert "- synthetic data:" in md and "- untrained model (fasttext (tiny), gpt2 (tiny))" in md
    assert "data: synthetic" in md and "device: cpu" in md


def test_models_run_with_two_checkpoints_get_one_column_each(tmp_path):
    make_run(tmp_path, "a", subject=1, model="gpt2", checkpoint="tiny")
    make_run(tmp_path, "b", subject=1, model="gpt2", checkpoint="GroNLP/gpt2-small-dutch",
             untrained=False)
    make_report(dirs=[tmp_path], out=tmp_path / "rep", figures=False, progress=False)
    md = (tmp_path / "rep" / "table1.md").read_text()
    models = [c[0] for c in _pivot_cells(md)[1:]]
    assert models == (["GPT-2 (checkpoint GroNLP/gpt2-small-dutch)"] * 2
                      + ["GPT-2 (checkpoint tiny)"] * 2)
    rows = read_table(tmp_path / "rep" / "table1.csv")
    assert [(r["checkpoint"], r["flags"]) for r in rows] == [
        ("GroNLP/gpt2-small-dutch", "synthetic"), ("tiny", "synthetic;untrained")]


def test_same_runs_give_byte_identical_csv_and_markdown(study):
    tmp, dirs, _ = study
    make_report(dirs=dirs, out=tmp / "a", progress=False)
    make_report(dirs=list(reversed(dirs)), out=tmp / "b", progress=False)
    texts = sorted(p.name for p in (tmp / "a").iterdir()
                   if p.suffix in (".csv", ".md", ".tex", ".json"))
    assert "table1.md" in texts and len(texts) > 10
    assert "table1.tex" in texts and "table1.csv.provenance.json" in texts
    assert texts == sorted(p.name for p in (tmp / "b").iterdir()
                           if p.suffix in (".csv", ".md", ".tex", ".json"))
    for name in texts:
        assert (tmp / "a" / name).read_bytes() == (tmp / "b" / name).read_bytes(), name


def test_every_figure_exists_with_its_csv(study):
    tmp, dirs, _ = study
    written = make_report(dirs=dirs, out=tmp / "rep", progress=False)
    out = tmp / "rep"
    stems = ["fig_r2_fasttext", "fig_r2_gpt2", "fig_r2_models", "fig_r2_histogram"] + [
        f"fig_{kind}_sub-0{s}_{m}" for kind in ("electrodes", "null", "activity")
        for s in (1, 2) for m in ("fasttext", "gpt2")]
    for stem in stems:
        png, table = out / f"{stem}.png", out / f"{stem}.csv"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000, stem
        assert not table.read_text().startswith("#"), stem   # plain CSV: header first
        assert sidecar(table)["provenance"][0].startswith("gpurecon report"), stem
        assert png in written and table in written
    assert not list(out.glob("fig_timecourse_*")) and not list(out.glob("fig_grid_*"))
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files
    meta = (out / "fig_r2_gpt2.png").read_bytes()
    assert b"tEXtDescription\x00gpurecon report" in meta and b"data: synthetic" in meta


def check_r2_histogram(rows: list[dict], r2_by_model: dict[str, list[np.ndarray]]) -> None:
    """fig_r2_histogram.csv against numpy: 0.1-wide bins from -1, every R2 < -1 counted in the
    underflow bin (bin_low -inf), the mean over participants."""
    for model, r2 in r2_by_model.items():
        mine = [r for r in rows if r["model"] == model]
        edges = np.array([float(r["bin_low"]) for r in mine] + [float(mine[-1]["bin_high"])])
        finite = edges[np.isfinite(edges)]
        assert finite[0] >= -1.0 - 1e-12  # the range is clipped at -1
        np.testing.assert_allclose(np.diff(finite), 0.1, atol=1e-9)
        lowest = min(float(np.min(v)) for v in r2)
        if lowest < -1.0:
            assert edges[0] == -np.inf and edges[1] == -1.0
            edges[0] = lowest - 1.0  # numpy needs a finite edge; nothing lies below it
        else:
            assert edges[0] <= math.floor(lowest * 10) / 10 + 1e-12
        expected = np.mean([np.histogram(v, bins=edges)[0] for v in r2], axis=0)
        np.testing.assert_allclose([float(r["mean_trials"]) for r in mine], expected)
        assert {r["n_participants"] for r in mine} == {str(len(r2))}


def test_r2_histogram_matches_numpy_histogram(study):
    tmp, dirs, runs = study
    make_report(dirs=dirs, out=tmp / "rep", progress=False)
    rows = read_table(tmp / "rep" / "fig_r2_histogram.csv")
    check_r2_histogram(rows, {m: [outputs_r2(r) for r in runs
                                  if summary(r)["provenance"]["model"] == m]
                              for m in ("fasttext", "gpt2")})


def test_r2_histogram_puts_outliers_below_minus_one_into_one_underflow_bin(tmp_path):
    runs = [make_run(tmp_path, "a", subject=1, model="gpt2", trial_r2={0: -3.2, 5: -1.0001}),
            make_run(tmp_path, "b", subject=2, model="gpt2", trial_r2={3: -1.5, 4: -0.95})]
    make_report(dirs=[tmp_path], out=tmp_path / "rep", progress=False)
    text = (tmp_path / "rep" / "fig_r2_histogram.csv").read_text()
    rows = read_table(tmp_path / "rep" / "fig_r2_histogram.csv")
    r2 = [outputs_r2(r) for r in runs]
    assert rows[0]["bin_low"] == "-inf"
    assert float(rows[0]["mean_trials"]) == np.mean([np.sum(v < -1.0) for v in r2]) >= 1.5
    assert len(rows) <= 1 + 21  # [-1, 1.1) in 0.1 bins: the -3.2 outlier adds no bins
    assert "bin_low -inf: the underflow bin, every trial with R2 < -1" in sidecar(
        tmp_path / "rep" / "fig_r2_histogram.csv")["notes"]
    assert not text.startswith("#")
    check_r2_histogram(rows, {"gpt2": r2})


def outputs_r2(run: Path) -> np.ndarray:
    lines = [ln for ln in (run / "scores_trials.csv").read_text().splitlines() if ln[0] != "#"]
    return np.array([float(r["r2"]) for r in csv.DictReader(io.StringIO("\n".join(lines)))])


def test_electrode_map_marks_fdr_significant_and_null_histogram_holds_the_null(study):
    tmp, dirs, runs = study
    make_report(dirs=dirs, out=tmp / "rep", progress=False)
    el = read_table(tmp / "rep" / "fig_electrodes_sub-01_gpt2.csv")
    src = read_table(runs[1] / "scores_electrodes.csv")
    assert [r["electrode"] for r in el] == [r["electrode"] for r in src]
    assert [r["significant"] == "1" for r in el] == [float(r["q_fdr"]) <= 0.05 for r in src]
    assert any(r["significant"] == "1" for r in el) and not all(r["significant"] == "1" for r in el)
    assert [float(r["x"]) for r in el] == [float(r["x"]) for r in src]
    null = read_table(tmp / "rep" / "fig_null_sub-01_gpt2.csv")
    arrays, _ = outputs.read_npz(runs[1] / "predictions.npz")
    np.testing.assert_array_equal([float(r["null_pcc"]) for r in null],
                                  arrays["null_pcc_across_electrodes"])


def test_null_histogram_of_a_constant_null_is_drawn(tmp_path):
    # an untrained model shrunk to the baseline: every permutation scores the same up to 1 ulp,
    # which np.histogram cannot cut into 20 bins (the report crashed on `-m ... model=fasttext`)
    null = np.full(40, 0.601115643570704)
    null[::2] = np.nextafter(null[0], 0.0)
    make_run(tmp_path, "flat", subject=1, model="fasttext", n_perm=40, null_pcc=null)
    make_report(dirs=[tmp_path], out=tmp_path / "rep", progress=False)
    rows = read_table(tmp_path / "rep" / "fig_null_sub-01_fasttext.csv")
    assert [float(r["null_pcc"]) for r in rows] == list(null)
    assert (tmp_path / "rep" / "fig_null_sub-01_fasttext.png").stat().st_size > 5000


def test_sweep_keeps_one_row_per_setting_and_draws_the_heat_map(tmp_path):
    for i, (a, l) in enumerate([(0.1, 0.5), (1.0, 0.5), (0.1, 0.9), (1.0, 0.9)]):
        make_run(tmp_path / "sweep", f"{i}", subject=1, model="gpt2", alpha=a, l1_ratio=l, seed=i)
    grid = make_run(tmp_path / "grid", "g", subject=2, model="gpt2", alpha=[0.1, 1.0],
                    l1_ratio=[0.1, 0.5, 0.9], seed=7)
    make_report(dirs=[tmp_path / "sweep", tmp_path / "grid"], out=tmp_path / "rep", progress=False)
    rows = read_table(tmp_path / "rep" / "table1.csv")
    assert [(r["subject"], r["alpha"], r["l1_ratio"]) for r in rows] == [
        ("1", "0.1", "0.5"), ("1", "0.1", "0.9"), ("1", "1.0", "0.5"), ("1", "1.0", "0.9"),
        ("2", "0.1;1", "0.1;0.5;0.9")]
    md = (tmp_path / "rep" / "table1.md").read_text()
    assert "## target trial_mean, alpha 0.1, l1_ratio 0.5\n" in md
    assert "## target trial_mean, alpha 0.1;1, l1_ratio 0.1;0.5;0.9 (grid: nested selection)" in md
    heat = read_table(tmp_path / "rep" / "fig_grid_sub-01_gpt2.csv")
    for r in heat:
        run = tmp_path / "sweep" / r["run"].rsplit("/", 1)[-1]
        assert (float(r["alpha"]), float(r["l1_ratio"])) == (
            summary(run)["solver"]["alpha"], summary(run)["solver"]["l1_ratio"])
        assert float(r["pcc"]) == summary(run)["scores"]["pcc_across_electrodes"]
    assert len(heat) == 4
    heat = read_table(tmp_path / "rep" / "fig_grid_sub-02_gpt2.csv")
    src = read_table(grid / "grid.csv")
    assert [(r["alpha"], r["l1_ratio"], r["pcc"], r["r2"]) for r in heat] == \
        [(r["alpha"], r["l1_ratio"], r["pcc"], r["r2"]) for r in src]
    for stem in ("fig_grid_sub-01_gpt2", "fig_r2_gpt2_a0.1_l0.5", "fig_r2_gpt2_a0.1-1_l0.1-0.5-0.9",
                 "fig_r2_models"):
        assert (tmp_path / "rep" / f"{stem}.png").stat().st_size > 5000


def test_time_course_of_the_best_electrodes_for_frames_targets(tmp_path):
    run = make_run(tmp_path, "frames", subject=1, model="wav2vec2", n_frames=5, n_electrodes=4)
    make_report(dirs=[tmp_path], out=tmp_path / "rep", progress=False)
    rows = read_table(tmp_path / "rep" / "fig_timecourse_sub-01_wav2vec2.csv")
    arrays, _ = outputs.read_npz(run / "predictions.npz")
    el = read_table(run / "scores_electrodes.csv")
    per_el = np.array([float(r["pcc"]) for r in el]).reshape(4, 5).mean(axis=1)
    best = int(np.argmax(per_el))
    mine = [r for r in rows if r["electrode"] == f"E{best}" and r["trial"] == "mean"]
    Y = arrays["Y"].reshape(20, 4, 5)
    np.testing.assert_allclose([float(r["true"]) for r in mine], Y[:, best].mean(axis=0))
    np.testing.assert_allclose([float(r["predicted"]) for r in mine],
                               arrays["pred"].reshape(20, 4, 5)[:, best].mean(axis=0))
    np.testing.assert_allclose([float(r["time_s"]) for r in mine], 0.025 + 0.01 * np.arange(5))
    assert rows[0]["electrode"] == f"E{best}"
    assert (tmp_path / "rep" / "fig_timecourse_sub-01_wav2vec2.png").stat().st_size > 5000
    assert read_table(tmp_path / "rep" / "table1.csv")[0]["n_electrodes"] == "4"


def test_older_runs_without_coordinates_or_null_degrade_clearly(tmp_path, capsys):
    make_run(tmp_path, "legacy", subject=1, model="gpt2", legacy=True, n_perm=0)  # as nocoords
    make_run(tmp_path, "nocoords", subject=2, model="gpt2", coords=False, n_perm=0)
    make_report(dirs=[tmp_path], out=tmp_path / "rep", progress=False)
    rows = read_table(tmp_path / "rep" / "table1.csv")
    assert "p_pcc" not in rows[0] and rows[0]["n_electrodes_fdr05"] == ""
    assert rows[0]["baseline_pcc_per_electrode"] == ""  # not recorded by older runs
    el = read_table(tmp_path / "rep" / "fig_electrodes_sub-02_gpt2.csv")
    assert all(r["x"] == "" for r in el) and all(r["q_fdr"] for r in el)
    assert (tmp_path / "rep" / "fig_electrodes_sub-01_gpt2.png").stat().st_size > 5000
    assert not list((tmp_path / "rep").glob("fig_null_*"))
    assert "no permutation null" in capsys.readouterr().err


def test_incomplete_runs_are_skipped(tmp_path, monkeypatch):
    make_run(tmp_path, "done", subject=1, model="gpt2")
    unfinished = make_run(tmp_path, "unfinished", subject=2, model="gpt2")
    (unfinished / "summary.json").unlink()  # a crashed run: results but no summary
    make_report(dirs=[tmp_path], out=tmp_path / "rep", figures=False, progress=False)
    assert [r["subject"] for r in read_table(tmp_path / "rep" / "table1.csv")] == ["1"]
    # With the completion marker of gpurecon.outputs, a run it calls incomplete is skipped.
    make_run(tmp_path, "unfinished", subject=2, model="gpt2")
    monkeypatch.setattr(outputs, "is_complete", lambda d: Path(d).name != "unfinished",
                        raising=False)
    make_report(dirs=[tmp_path], out=tmp_path / "rep2", figures=False, progress=False)
    assert [r["subject"] for r in read_table(tmp_path / "rep2" / "table1.csv")] == ["1"]


def test_folder_without_runs_is_one_clear_error_and_writes_nothing(tmp_path, capsys):
    make_run(tmp_path / "ok", "r", subject=1, model="gpt2")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert report_main([str(tmp_path / "ok"), str(tmp_path / "empty"),
                        "--out", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'empty'}: no finished gpurecon run" in err and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()
    assert report_main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "rep")]) == 1
    assert "nowhere: no such folder" in capsys.readouterr().err
    (tmp_path / "afile").write_text("mine")
    assert report_main([str(tmp_path / "ok"), "--out", str(tmp_path / "afile")]) == 1
    assert f"{tmp_path / 'afile'}: cannot write the report there" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "mine"
    assert report_main([str(tmp_path / "ok"), "--out", str(tmp_path / "rep"), "--no-figures"]) == 0
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == [
        "table1.csv", "table1.csv.provenance.json", "table1.md", "table1.tex"]


@pytest.mark.parametrize("fresh_out", [False, True])
def test_a_failure_while_drawing_figures_leaves_out_as_it_was(study, monkeypatch, fresh_out):
    import gpurecon.report as report

    tmp, dirs, _ = study
    rep = tmp / "rep"
    if not fresh_out:
        rep.mkdir()
        (rep / "notes.txt").write_text("mine")
        (rep / "table1.md").write_text("an earlier report")  # kept: the new one is incomplete
    before = {p.name: p.read_bytes() for p in rep.iterdir()} if rep.exists() else None
    real, calls = report.write_figure, []

    def fail_on_the_third(out, spec, *args):
        calls.append(spec.stem)
        if len(calls) == 3:
            raise RuntimeError("drawing failed")
        return real(out, spec, *args)

    monkeypatch.setattr(report, "write_figure", fail_on_the_third)
    with pytest.raises(RuntimeError, match="drawing failed"):
        make_report(dirs=dirs, out=rep, progress=False, overwrite=True)
    assert len(calls) == 3  # table1.* and two figures had been written (staged) before
    if fresh_out:
        assert not rep.exists()
    else:
        assert {p.name: p.read_bytes() for p in rep.iterdir()} == before
    monkeypatch.setattr(report, "write_figure", real)
    written = make_report(dirs=dirs, out=rep, progress=False, overwrite=True)
    assert all(p.parent == rep and p.is_file() for p in written)
    assert sorted(p.name for p in rep.iterdir()) == sorted(
        {p.name for p in written} | ({"notes.txt"} if not fresh_out else set()))


@pytest.mark.parametrize("case", ["mixed", "duplicate", "incomplete_summary"])
def test_runs_that_cannot_share_a_table_are_one_clear_error(tmp_path, case):
    make_run(tmp_path / "runs", "a", subject=1, model="gpt2")
    if case == "mixed":
        make_run(tmp_path / "runs", "b", subject=2, model="gpt2", data="real")
        needle = "runs mix data kinds (real data in"
    elif case == "duplicate":
        make_run(tmp_path / "runs", "b", subject=1, model="gpt2", seed=5)
        needle = "runs/a and "
    else:
        make_run(tmp_path / "runs", "b", subject=2, model="gpt2", drop="scores")
        needle = "b/summary.json: key 'scores.pcc_across_electrodes' is missing"
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "notes.txt").write_text("mine")
    with pytest.raises(ReportError) as err:
        make_report(dirs=[tmp_path / "runs"], out=rep, progress=False)
    assert needle in str(err.value)
    assert sorted(p.name for p in rep.iterdir()) == ["notes.txt"]  # nothing written, nothing removed


def _pivot_cells(md: str) -> list[list[str]]:
    return [[c.strip() for c in ln.split("|")[1:-1]] for ln in md.splitlines()
            if ln.startswith("|") and not ln.startswith("|---")]


def _model_means(md: str) -> dict[str, str]:
    """{model block: its mean row's "PCC (baseline PCC)"} over every table of table1.md (the
    mean over participants, its SD left out)."""
    return {c[0]: f"{c[4].split(' ± ')[0]} ({c[5]})" for c in _pivot_cells(md)
            if c[1].startswith("mean")}


# One setting each that changes a score; (key, value of runs a1/a2, value of run b3).
SPLITTING = [("data.root", "/data/site-a", "/data/site-b"), ("data.n_channels", 16, 127),
             ("data.n_words", 100, 40), ("target.window", None, 0.5), ("seed", 0, 1),
             ("data.seed", 0, 3), ("solver.cv", "loo", "kfold"), ("solver.tol", 1e-4, 1e-2),
             ("solver.max_iter", 1000, 50), ("solver.fit_intercept", True, False),
             ("signal.l_freq", 70.0, 60.0), ("model.layer", "last", "0"),
             ("solver.n_permutations", 20, 100)]


@pytest.mark.parametrize("key,value_a,value_b", SPLITTING, ids=[k for k, *_ in SPLITTING])
def test_runs_differing_in_one_setting_are_never_averaged_and_the_key_is_named(
        tmp_path, capsys, key, value_a, value_b):
    """sub-01, sub-02 with one value, sub-03 with another (one Table 1 column before): two
    columns, each mean over its own runs only, the key named in table1.md, table1.csv and on
    stderr. Runtime keys that differ too (cache_dir, device) are never named."""
    runs = {}
    for name, subject, value in (("a1", 1, value_a), ("a2", 2, value_a), ("b3", 3, value_b)):
        settings = {"cache_dir": f"/cache/{name}", "device": "cpu" if subject < 3 else "cuda"}
        kwargs = {}
        if key == "solver.n_permutations":  # "auto" in both configs; the fitted counts differ
            settings[key], kwargs["n_perm"] = "auto", value
        else:
            settings[key] = value
        runs[name] = make_run(tmp_path / "runs", name, subject=subject, model="gpt2",
                              seed=subject, settings=settings, **kwargs)
    out = tmp_path / "rep"
    make_report(dirs=[tmp_path / "runs"], out=out, figures=False, progress=False)
    md = (out / "table1.md").read_text()
    means = _model_means(md)
    assert len(means) == 2, md
    for group in (("a1", "a2"), ("b3",)):
        s = [summary(runs[n])["scores"] for n in group]
        expect = (f"{np.mean([x['pcc_across_electrodes'] for x in s]):.3f} "
                  f"({np.mean([x['baseline_pcc_across_electrodes'] for x in s]):.3f})")
        assert expect in means.values(), (group, means)
    mixed = np.mean([summary(r)["scores"]["pcc_across_electrodes"] for r in runs.values()])
    assert not any(v.startswith(f"{mixed:.3f} ") for v in means.values())
    assert f"Settings differ between these runs in {key}:" in md
    rows = {r["run"].rsplit("/", 1)[-1]: r for r in read_table(out / "table1.csv")}
    shown = {"None": "null", "True": "True", "False": "False"}.get(str(value_b), f"{value_b:g}"
                                                                     if isinstance(value_b, float)
                                                                     else str(value_b))
    assert rows["b3"]["settings"] == f"{key}={shown}"
    assert rows["a1"]["settings"] == rows["a2"]["settings"] != rows["b3"]["settings"]
    err = capsys.readouterr().err
    assert f"settings differ between runs: {key} (" in err
    for text in (md, err, (out / "table1.csv").read_text()):
        assert "cache_dir" not in text and "device=" not in text and "devices" not in text


def test_the_issues_mixed_runs_split_into_columns_and_figures(tmp_path, capsys):
    """A 16-electrode, 20-permutation run and a 127-electrode, 100-permutation run from another
    data root (issue 17, section 5): never one column, mean, R2 figure or histogram bar."""
    make_run(tmp_path / "outputs", "x", subject=1, model="gpt2", n_electrodes=16, n_perm=20,
             settings={"data.root": "/a/SingleWordProductionDutch-iBIDS", "data.n_channels": 16})
    make_run(tmp_path / "outputs", "y", subject=2, model="gpt2", n_electrodes=127, n_perm=100,
             settings={"data.root": "/b/SingleWordProductionDutch-iBIDS", "data.n_channels": None})
    written = make_report(dirs=[tmp_path / "outputs"], out=tmp_path / "r", progress=False)
    keys = "data.n_channels, data.root, solver.n_permutations"
    assert f"settings differ between runs: {keys} (" in capsys.readouterr().err
    md = (tmp_path / "r" / "table1.md").read_text()
    assert f"Settings differ between these runs in {keys}:" in md
    # both roots end in the same folder name: numbered in file labels, named in full in table1
    assert sorted(_model_means(md)) == [
        "GPT-2, data.n_channels=16, data.root=/a/SingleWordProductionDutch-iBIDS [1], "
        "solver.n_permutations=20",
        "GPT-2, data.n_channels=null, data.root=/b/SingleWordProductionDutch-iBIDS [2], "
        "solver.n_permutations=100"]
    labels = ["gpt2_data.n_channels-16_data.root-1_solver.n_permutations-20",
              "gpt2_data.n_channels-null_data.root-2_solver.n_permutations-100"]
    names = {p.name for p in written}
    for label, subject in zip(labels, ("1", "2")):
        assert f"fig_r2_{label}.png" in names
        assert {r["subject"] for r in read_table(tmp_path / "r" / f"fig_r2_{label}.csv")} == {subject}
    hist = read_table(tmp_path / "r" / "fig_r2_histogram.csv")
    assert {r["model"] for r in hist} == set(labels)
    assert {r["n_participants"] for r in hist} == {"1"}


def test_identical_settings_merge_as_before_and_model_keys_compare_within_a_model(tmp_path, capsys):
    """Runs equal in every result-changing setting share columns whatever their runtime keys;
    gpt2's model.layer is not compared with fasttext (which has none)."""
    common = {"data.n_channels": 16, "solver.cv": "loo", "target.window": None}
    for i, (subject, model) in enumerate([(1, "gpt2"), (2, "gpt2"), (1, "fasttext"), (2, "fasttext")]):
        extra = {"model.layer": "last"} if model == "gpt2" else {"model.mmap": i % 2 == 0}
        make_run(tmp_path / "runs", f"{i}", subject=subject, model=model, seed=i,
                 settings={**common, **extra, "cache_dir": f"/c{i}", "progress": i % 2 == 0,
                           "solver.strategy": "gpu" if i else "cpu", "device": f"cuda:{i}"})
    make_report(dirs=[tmp_path / "runs"], out=tmp_path / "rep", figures=False, progress=False)
    md = (tmp_path / "rep" / "table1.md").read_text()
    assert sorted(_model_means(md)) == ["FastText", "GPT-2"]
    assert "Settings differ" not in md and "settings differ" not in capsys.readouterr().err
    assert "settings" not in read_table(tmp_path / "rep" / "table1.csv")[0]


def test_runs_without_a_recorded_config_are_kept_apart(tmp_path):
    make_run(tmp_path / "runs", "new", subject=1, model="gpt2", settings={"data.n_channels": 8})
    make_run(tmp_path / "runs", "old", subject=2, model="gpt2", drop="config")
    make_report(dirs=[tmp_path / "runs"], out=tmp_path / "rep", figures=False, progress=False)
    md = (tmp_path / "rep" / "table1.md").read_text()
    assert sorted(_model_means(md)) == ["GPT-2, config=not recorded",
                                        "GPT-2, config=recorded"], md


@pytest.mark.slow
def test_end_to_end_multirun_then_report(tmp_path):
    """2 subjects x 2 models on a small synthetic dataset with the app, then the report CLI."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GPURECON_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    env.pop("GPURECON_DATA_ROOT", None)
    sweep = tmp_path / "multirun"
    app = subprocess.run(
        [sys.executable, "-m", "gpurecon", "-m", "subject=1,2", "model=fasttext,gpt2",
         "++model.checkpoint=tiny", "data.n_channels=8", "data.n_words=30", "device=cpu",
         "solver.n_permutations=0", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert app.returncode == 0, app.stderr[-3000:]
    out = tmp_path / "report"
    rep = subprocess.run([sys.executable, "-m", "gpurecon.report", str(sweep), "--out", str(out)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "report figures" not in rep.stderr  # stderr is a pipe: no bar (see the next test)
    rows = read_table(out / "table1.csv")
    assert len(rows) == 4
    for run in sorted(p.parent for p in sweep.glob("*/summary.json")):
        s = summary(run)
        row = next(r for r in rows if r["run"].endswith(run.name))
        assert (int(row["subject"]), row["model"]) == (s["provenance"]["subject"],
                                                       s["provenance"]["model"])
        for col, key in (("pcc", "pcc_across_electrodes"), ("r2", "r2_across_electrodes"),
                         ("baseline_pcc", "baseline_pcc_across_electrodes"),
                         ("baseline_r2", "baseline_r2_across_electrodes")):
            assert float(row[col]) == s["scores"][key]
        with np.load(run / "predictions.npz") as f:   # all coefficients zero: pred is baseline
            same = np.allclose(f["pred"], f["baseline"], rtol=0,
                               atol=1e-9 * np.abs(f["baseline"]).max())
        assert row["flags"] == "synthetic;untrained" + (";equals_baseline" if same else "")
        assert int(row["n_trials"]) == 30
    stems = ["table1.md", "fig_r2_fasttext.png", "fig_r2_gpt2.png", "fig_r2_histogram.png"] + [
        f"fig_electrodes_sub-0{s}_{m}.png" for s in (1, 2) for m in ("fasttext", "gpt2")]
    for name in stems:
        assert (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert (out / name).with_suffix(".csv").stat().st_size > 0, name
    md = (out / "table1.md").read_text()
    assert "| sub-01 |" in md and "| mean ± SD (n=2) |" in md and "untrained" in md


@pytest.mark.slow
def test_report_progress_bar_only_on_a_terminal(study, monkeypatch, capsys):
    tmp, dirs, _ = study

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    make_report(dirs=dirs, out=tmp / "piped", progress=True)  # pytest's stderr: not a terminal
    assert "report figures" not in capsys.readouterr().err
    for progress in (True, False):
        term = Terminal()
        monkeypatch.setattr(sys, "stderr", term)
        make_report(dirs=dirs, out=tmp / f"term-{progress}", progress=progress)
        assert ("report figures" in term.getvalue()) == progress


def test_report_does_not_replace_the_users_table_without_overwrite(study, capsys):
    """issue 17: `--out DIR` replaced the user's own table1.md / table1.csv."""
    tmp, dirs, _ = study
    rep = tmp / "rep"
    rep.mkdir()
    (rep / "table1.md").write_text("my own table")
    (rep / "notes.txt").write_text("mine")
    args = [*map(str, dirs), "--out", str(rep), "--no-figures", "--no-progress"]
    assert report_main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(rep) in err and "table1.md" in err and "--overwrite" in err
    assert sorted(p.name for p in rep.iterdir()) == ["notes.txt", "table1.md"]  # nothing staged
    assert (rep / "table1.md").read_text() == "my own table"
    # a figure's name counts too (without --no-figures)
    (rep / "table1.md").unlink()
    specs, _ = figure_specs(find_runs(dirs)[0])
    (rep / f"{specs[0].stem}.png").write_bytes(b"my figure")
    assert report_main([*map(str, dirs), "--out", str(rep), "--no-progress"]) == 1
    assert f"{specs[0].stem}.png" in capsys.readouterr().err
    assert (rep / f"{specs[0].stem}.png").read_bytes() == b"my figure"
    # --overwrite replaces the report's names only; the user's other files stay
    assert report_main([*args, "--overwrite"]) == 0
    assert (rep / "table1.md").read_text() != "my own table" and (rep / "table1.csv").is_file()
    assert (rep / "notes.txt").read_text() == "mine"
    assert (rep / f"{specs[0].stem}.png").read_bytes() == b"my figure"   # --no-figures
