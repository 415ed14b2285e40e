"""The study as users run it, pinned end to end: every output array against numpy /
scikit-learn recomputation, the baseline and null wiring, grids in one pass against separate
scalar fits, nested selection against an independent reference, sweeps with failing jobs."""

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.linear_model import ElasticNet as SkElasticNet
from sklearn.metrics import r2_score

from gpurecon.config import SolverConfig
from gpurecon.evaluation import GRID_COLUMNS, GRID_NULL_COLUMNS, SCORE_DEFINITIONS
from gpurecon.evaluation import evaluate_fit as evaluate
from gpurecon.run_summary import read_summary
from gpurecon.solver.fit import NESTED_INNER_CV, fit_cross_validated
from gpurecon.solver import kfold

SMALL = ["data.n_channels=6", "data.n_words=20", "device=cpu"]
N_PERM = 199  # p can reach 1/200 < 0.01


def run_cli(args, tmp_path, name="out", env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GPURECON_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env.pop("GPURECON_DATA_ROOT", None)
    out = tmp_path / name
    cmd = [sys.executable, "-m", "gpurecon", *args]
    if "-m" not in args:
        cmd.append(f"hydra.run.dir={out}")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    return proc, out


def read_csv(path):
    lines = [ln for ln in Path(path).read_text().splitlines() if not ln.startswith("#")]
    return list(csv.DictReader(lines))


def solver_cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(SolverConfig), kw)


# --------------------------------------------------------------------------- one planted run


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    proc, out = run_cli([*SMALL, f"solver.n_permutations={N_PERM}"], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(proc=proc, out=out, summary=json.loads((out / "summary.json").read_text()))


def test_every_array_of_every_output_file(planted):
    out, s = planted.out, planted.summary
    n, T = s["n_trials"], s["n_targets"]
    pred = np.load(out / "predictions.npz")
    assert set(pred.files) == {"pred", "Y", "baseline", "null_pcc_across_electrodes",
                               "null_r2_across_electrodes", "provenance_json"}
    for key in ("pred", "Y", "baseline"):
        assert pred[key].shape == (n, T) and np.isfinite(pred[key]).all(), key
    for key in ("null_pcc_across_electrodes", "null_r2_across_electrodes"):
        assert pred[key].shape == (N_PERM,) and np.isfinite(pred[key]).all(), key
    assert json.loads(str(pred["provenance_json"]))["data"] == "synthetic"
    targets = np.load(out / "targets.npz")
    np.testing.assert_array_equal(targets["Y"], pred["Y"])
    assert targets["columns"].shape == (T,) and targets["words"].shape == (n,)
    emb = np.load(out / "embeddings.npz")
    assert emb["X"].shape[0] == n and np.isfinite(emb["X"]).all()
    np.testing.assert_array_equal(emb["words"], targets["words"])

    sc = s["scores"]
    null = pred["null_pcc_across_electrodes"]
    assert sc["n_permutations"] == N_PERM == s["solver"]["n_permutations"]
    assert sc["null_pcc_across_electrodes_95"] == pytest.approx(np.quantile(null, 0.95), abs=1e-12)
    assert sc["null_pcc_across_electrodes_mean"] == pytest.approx(null.mean(), abs=1e-12)
    assert sc["p_pcc_across_electrodes"] == pytest.approx(
        (1 + (null >= sc["pcc_across_electrodes"]).sum()) / (1 + N_PERM))
    null_r2 = pred["null_r2_across_electrodes"]
    assert sc["p_r2_across_electrodes"] == pytest.approx(
        (1 + (null_r2 >= sc["r2_across_electrodes"]).sum()) / (1 + N_PERM))
    assert set(sc) <= set(SCORE_DEFINITIONS) == set(s["score_definitions"])
    assert s["solver"]["alpha"] == 1.0 and s["solver"]["l1_ratio"] == 0.5  # as given
    assert "nested" not in s and not (out / "grid.csv").exists()  # a scalar run

    trials = read_csv(out / "scores_trials.csv")
    assert list(trials[0]) == ["trial", "word", "pcc", "r2", "baseline_pcc", "baseline_r2"]
    assert [r["word"] for r in trials] == list(targets["words"])
    elec = read_csv(out / "scores_electrodes.csv")
    assert list(elec[0]) == ["electrode", "label", "x", "y", "z", "pcc", "r2", "baseline_pcc",
                             "baseline_r2", "null_pcc_mean", "null_pcc_95", "p", "q_fdr"]
    assert [r["electrode"] for r in elec] == list(targets["columns"])
    assert sc["n_electrodes_fdr_05"] == sum(float(r["q_fdr"]) <= 0.05 for r in elec)
    assert all(1 / (1 + N_PERM) <= float(r["p"]) <= 1 for r in elec)


def test_summary_and_csv_scores_equal_numpy_and_sklearn_recomputation(planted):
    out, sc = planted.out, planted.summary["scores"]
    f = np.load(out / "predictions.npz")
    Y, P, B = f["Y"], f["pred"], f["baseline"]
    pcc = np.array([np.corrcoef(P[i], Y[i])[0, 1] for i in range(len(Y))])
    r2 = np.array([r2_score(Y[i], P[i]) for i in range(len(Y))])
    bpcc = np.array([np.corrcoef(B[i], Y[i])[0, 1] for i in range(len(Y))])
    br2 = np.array([r2_score(Y[i], B[i]) for i in range(len(Y))])
    e_pcc = np.array([np.corrcoef(P[:, c], Y[:, c])[0, 1] for c in range(Y.shape[1])])
    e_r2 = r2_score(Y, P, multioutput="raw_values")
    assert sc["pcc_across_electrodes"] == pytest.approx(pcc.mean(), abs=1e-9)
    assert sc["r2_across_electrodes"] == pytest.approx(r2.mean(), abs=1e-9)
    assert sc["baseline_pcc_across_electrodes"] == pytest.approx(bpcc.mean(), abs=1e-9)
    assert sc["baseline_r2_across_electrodes"] == pytest.approx(br2.mean(), abs=1e-9)
    assert sc["pcc_per_electrode_mean"] == pytest.approx(e_pcc.mean(), abs=1e-9)
    assert sc["r2_per_electrode_mean"] == pytest.approx(e_r2.mean(), abs=1e-9)
    # leave-one-out bias, reported beside the score: the training mean scores exactly -1
    assert sc["baseline_pcc_per_electrode_mean"] == pytest.approx(-1.0, abs=1e-9)
    trials = read_csv(out / "scores_trials.csv")
    np.testing.assert_allclose([float(r["pcc"]) for r in trials], pcc, atol=1e-9)
    np.testing.assert_allclose([float(r["baseline_r2"]) for r in trials], br2, atol=1e-9)
    elec = read_csv(out / "scores_electrodes.csv")
    np.testing.assert_allclose([float(r["pcc"]) for r in elec], e_pcc, atol=1e-9)
    np.testing.assert_allclose([float(r["r2"]) for r in elec], e_r2, atol=1e-9)
    np.testing.assert_allclose([float(r["baseline_pcc"]) for r in elec], -1.0, atol=1e-9)


def test_baseline_is_the_mean_of_the_training_trials_only(planted):
    f = np.load(planted.out / "predictions.npz")
    Y, B = f["Y"].astype(np.float64), f["baseline"]
    for i in range(len(Y)):
        np.testing.assert_allclose(B[i], np.delete(Y, i, axis=0).mean(0), rtol=1e-12, atol=1e-12)
    assert not np.allclose(B, Y.mean(0))  # the leak this pins: the mean of ALL trials


def test_electrode_coordinates_come_from_electrodes_tsv(planted):
    root = Path(planted.summary["provenance"]["data_root"])
    (tsv,) = (root / "sub-01" / "ieeg").glob("*electrodes.tsv")
    rows = list(csv.DictReader(tsv.read_text().splitlines(), delimiter="\t"))
    xyz = {r["name"]: [float(r[k]) for k in "xyz"] for r in rows}
    for r in read_csv(planted.out / "scores_electrodes.csv"):
        np.testing.assert_allclose([float(r[k]) for k in "xyz"], xyz[r["electrode"]])


def test_planted_model_beats_its_null_and_recovers_the_planted_map(planted):
    from gpurecon.data import load_ground_truth

    s = planted.summary
    assert s["scores"]["p_pcc_across_electrodes"] < 0.01
    assert s["scores"]["p_r2_across_electrodes"] < 0.01
    last_line = planted.proc.stdout.strip().splitlines()[-1]   # Hydra logs to stdout
    assert s["verdict"] in last_line and "> null 95th percentile" in last_line
    verdict, expected = last_line.split(". Expected: ")   # what planted features should give
    assert verdict.endswith(": above chance") and expected.startswith("above chance for model=planted")
    truth = load_ground_truth(s["provenance"]["data_root"], 1)
    X = np.load(planted.out / "embeddings.npz")["X"].astype(np.float64)
    Y = np.load(planted.out / "targets.npz")["Y"].astype(np.float64)
    M = truth["planted_map"]                                        # (channels, features)
    responsive = np.abs(M).sum(1) > 0
    assert responsive.sum() >= 2 and X.shape[1] == M.shape[1]
    coef = SkElasticNet(alpha=1e-3, l1_ratio=0.5, max_iter=100000).fit(X, Y).coef_
    # Y is the high-gamma envelope, a positive per-channel scale of the planted amplitude
    r = [np.corrcoef(coef[c], M[c])[0, 1] for c in np.flatnonzero(responsive)]
    print(f"planted map recovery: correlation per responsive channel {np.round(r, 3)}, "
          f"mean {np.mean(r):.3f}")
    assert np.mean(r) > 0.85 and min(r) > 0.7, r
    # the same fit with the trials shuffled recovers nothing (the check can fail)
    shuffled = SkElasticNet(alpha=1e-3, l1_ratio=0.5, max_iter=100000).fit(
        X, Y[np.random.default_rng(0).permutation(len(Y))]).coef_
    r0 = [np.corrcoef(shuffled[c], M[c])[0, 1] for c in np.flatnonzero(responsive)]
    assert abs(np.mean(r0)) < 0.4, r0


# --------------------------------------------------------------------------- grids, nested


def _planted_problem(seed=0, n=24, p=5, T=4):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    Y = X @ rng.normal(size=(p, T)) * 0.4 + rng.normal(size=(n, T)) + 3.0
    return SimpleNamespace(X=torch.tensor(X), meta={}), torch.tensor(Y)


def test_grid_in_one_pass_equals_separate_scalar_fits():
    emb, Y = _planted_problem()
    alphas, l1s = [0.01, 0.1, 1.0], [0.1, 0.9]
    cfg = solver_cfg(alpha=alphas, l1_ratio=l1s, n_permutations=0, tol=1e-6)
    fit = fit_cross_validated(emb, Y, cfg, torch.device("cpu"), seed=0)
    grid = evaluate(fit, Y, "loo")
    assert grid.nested
    assert [(p.alpha, p.l1_ratio) for p in grid.points] == [(a, b) for a in alphas for b in l1s]
    for point in grid.points:
        one = fit_cross_validated(emb, Y, solver_cfg(alpha=point.alpha, l1_ratio=point.l1_ratio,
                                                     n_permutations=0, tol=1e-6),
                                  torch.device("cpu"), seed=0)
        ev = evaluate(one, Y, "loo")
        assert not ev.nested and one.nested is None
        for key, value in ev.main.summary().items():
            if key != "p_source":
                assert point.evaluation.summary()[key] == pytest.approx(value, abs=1e-3), key


def _inner_choice(X, y, grid):
    """Independent reference: inner K-fold (as NESTED_INNER_CV) with scikit-learn, pooled MSE."""
    assert NESTED_INNER_CV == "kfold:5"
    masks = kfold(len(y), 5)
    losses = []
    for a, l1 in grid:
        sse = 0.0
        for m in masks:
            est = SkElasticNet(alpha=a, l1_ratio=l1, tol=1e-10, max_iter=100000).fit(X[m], y[m])
            sse += ((est.predict(X[~m]) - y[~m]) ** 2).sum()
        losses.append(sse)
    return int(np.argmin(losses))


@pytest.mark.parametrize("cv", ["loo", "kfold"])
def test_nested_selection_never_sees_the_held_out_trial(cv):
    """Choices equal an inner search on each outer training set alone; a search that also
    sees the held-out trials chooses differently in this constructed case."""
    rng = np.random.default_rng(0)
    n = 20
    X = rng.normal(size=(n, 3))
    y = 0.5 * X[:, 0] + rng.normal(size=n)
    grid = [(0.01, 0.5), (0.3, 0.5), (3.0, 0.5)]
    cfg = solver_cfg(alpha=[a for a, _ in grid], l1_ratio=[0.5], n_permutations=0, tol=1e-8,
                     cv=cv, n_splits=5)
    fit = fit_cross_validated(SimpleNamespace(X=torch.tensor(X), meta={}), torch.tensor(y[:, None]),
                              cfg, torch.device("cpu"), seed=0)
    outer = ~np.eye(n, dtype=bool) if cv == "loo" else kfold(n, 5, shuffle=True, seed=0)
    chosen = fit.nested.choice[:, 0].tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        honest = [_inner_choice(X[train], y[train], grid) for train in outer]
        peeking = _inner_choice(X, y, grid)   # the held-out trials inside the inner search
    assert chosen == honest
    assert sum(c != peeking for c in honest) >= (5 if cv == "loo" else 1)  # peeking changes it
    # the run's predictions are the chosen points' held-out predictions
    fold_of = (~outer).argmax(0)
    expected = torch.stack([fit.grid_pred[chosen[fold_of[i]], i] for i in range(n)])
    np.testing.assert_allclose(fit.pred.numpy(), expected.numpy(), atol=1e-12)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """A grid run on a dataset whose electrodes.tsv lacks one contact (coordinates unknown)."""
    from gpurecon.data import write_synthetic_dataset

    tmp = tmp_path_factory.mktemp("grid")
    root = write_synthetic_dataset(tmp / "ibids", subjects=(1,), seed=3, n_channels=5, n_words=20)
    (tsv,) = (root / "sub-01" / "ieeg").glob("*electrodes.tsv")
    lines = tsv.read_text().splitlines()
    missing = lines[2].split("\t")[0]
    tsv.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    proc, out = run_cli([f"data.root={root}", "device=cpu", "solver.alpha=[0.01,0.1,1]",
                         "solver.l1_ratio=[0.1,0.9]", "solver.n_permutations=19"], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(out=out, missing=missing, root=root, tmp=tmp,
                           summary=read_summary(out))   # per-fold lists put back from the .npz


def test_grid_row_equals_a_separate_scalar_run(grid_run):
    proc, out = run_cli([f"data.root={grid_run.root}", "device=cpu", "solver.alpha=0.1",
                         "solver.l1_ratio=0.9", "solver.n_permutations=19"], grid_run.tmp, name="scalar")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())["scores"]
    (row,) = [r for r in read_csv(grid_run.out / "grid.csv")
              if (r["alpha"], r["l1_ratio"]) == ("0.1", "0.9")]
    pairs = {"pcc": "pcc_across_electrodes", "r2": "r2_across_electrodes",
             "baseline_pcc": "baseline_pcc_across_electrodes",
             "pcc_per_electrode": "pcc_per_electrode_mean", "r2_per_electrode": "r2_per_electrode_mean",
             "null_pcc_95": "null_pcc_across_electrodes_95", "p_pcc": "p_pcc_across_electrodes"}
    for column, key in pairs.items():
        assert float(row[column]) == pytest.approx(s[key], abs=1e-3), column


def test_grid_run_writes_every_point_and_the_nested_selection(grid_run):
    out, s = grid_run.out, grid_run.summary
    rows = read_csv(out / "grid.csv")
    assert list(rows[0]) == GRID_COLUMNS + GRID_NULL_COLUMNS
    assert [(float(r["alpha"]), float(r["l1_ratio"])) for r in rows] == \
        [(a, b) for a in (0.01, 0.1, 1.0) for b in (0.1, 0.9)]
    assert s["solver"]["alpha"] == [0.01, 0.1, 1] and s["solver"]["l1_ratio"] == [0.1, 0.9]
    nested = s["nested"]
    assert nested["inner_cv"] == NESTED_INNER_CV and len(nested["alpha_per_fold"]) == s["n_trials"]
    assert sum(c["count"] for c in nested["choice_counts"]) == s["n_trials"] * s["n_targets"]
    assert nested["scores"] == s["scores"]   # the run's main scores are the nested selection's
    # main files hold the nested predictions: recompute the headline from predictions.npz
    f = np.load(out / "predictions.npz")
    pcc = np.mean([np.corrcoef(f["pred"][i], f["Y"][i])[0, 1] for i in range(len(f["Y"]))])
    assert s["scores"]["pcc_across_electrodes"] == pytest.approx(pcc, abs=1e-9)
    assert f["null_pcc_across_electrodes"].shape == (19,)
    # each grid row equals a separate scalar fit of the run's own X and Y (same folds)
    X = np.load(out / "embeddings.npz")["X"]
    Y = torch.tensor(np.load(out / "targets.npz")["Y"])
    for r in rows[::2]:
        one = fit_cross_validated(SimpleNamespace(X=torch.tensor(X), meta={}), Y,
                                  solver_cfg(alpha=float(r["alpha"]), l1_ratio=float(r["l1_ratio"]),
                                             n_permutations=0), torch.device("cpu"), seed=0)
        sc = evaluate(one, Y, "loo").main.summary()
        assert float(r["pcc"]) == pytest.approx(sc["pcc_across_electrodes"], abs=1e-3)
        assert float(r["r2_per_electrode"]) == pytest.approx(sc["r2_per_electrode_mean"], abs=1e-3)


def test_unknown_coordinates_are_written_as_nan(grid_run):
    rows = {r["electrode"]: r for r in read_csv(grid_run.out / "scores_electrodes.csv")}
    assert [rows[grid_run.missing][k] for k in "xyz"] == ["nan"] * 3
    assert all(np.isfinite(float(r["x"])) for name, r in rows.items() if name != grid_run.missing)


# --------------------------------------------------------------------------- sweeps


def test_untrained_tiny_models_do_not_beat_their_null_more_often_than_chance(tmp_path):
    env = {"GPURECON_OUTPUTS": str(tmp_path / "runs")}
    proc, _ = run_cli(["-m", *SMALL, "data.seed=1,2,3,4,5", "model=fasttext", "model.checkpoint=tiny",
                       "solver.n_permutations=39"], tmp_path, env_extra=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    p = [json.loads(f.read_text())["scores"]["p_pcc_across_electrodes"]
         for f in sorted((tmp_path / "runs").rglob("summary.json"))]
    assert len(p) == 5
    print(f"untrained tiny fasttext, 5 synthetic datasets: p_pcc = {p}")
    # under the null P(p <= 0.05) <= 0.05: two or more of five happens with probability 0.023
    assert sum(v <= 0.05 for v in p) <= 1, p


def test_sweep_records_a_failing_job_runs_the_others_and_exits_non_zero(tmp_path):
    env = {"GPURECON_OUTPUTS": str(tmp_path / "runs")}
    proc, _ = run_cli(["-m", *SMALL, "solver.alpha=-1,0.1", "solver.n_permutations=0"], tmp_path,
                      env_extra=env)
    assert proc.returncode == 1
    assert "1 of 2 jobs FAILED" in proc.stderr and "solver.alpha" in proc.stderr
    assert "Traceback" not in proc.stderr
    (record,) = (tmp_path / "runs").rglob("sweep_failures.json")
    failures = json.loads(record.read_text())["failures"]
    assert [f["job"] for f in failures] == [0] and "solver.alpha=-1" in failures[0]["overrides"]
    assert failures[0]["error"] == "ConfigError"
    (summary,) = (tmp_path / "runs").rglob("summary.json")
    assert summary.parent.name == "1_solver.alpha=0.1"  # the folder carries the swept value
    assert json.loads(summary.read_text())["solver"]["alpha"] == 0.1


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("alpha, l1_ratio, expected", [
    (1.0, 0.5, ([1.0], [0.5], False)),
    (2, [0.1, 0.9], ([2.0], [0.1, 0.9], True)),
    ([0.01, 10], 1, ([0.01, 10.0], [1.0], True)),
])
def test_solver_grid_accepts_numbers_and_lists(alpha, l1_ratio, expected):
    from gpurecon.config import solver_grid

    assert solver_grid(solver_cfg(alpha=alpha, l1_ratio=l1_ratio)) == expected


@pytest.mark.parametrize("alpha, l1_ratio, message", [
    (-1, 0.5, "solver.alpha must be a number >= 0.0 or a list of them, got -1"),
    ("abc", 0.5, "solver.alpha must be a number >= 0.0 or a list of them, got 'abc'"),
    ([0.1, float("nan")], 0.5, "solver.alpha"),
    ([], 0.5, "solver.alpha must be a number >= 0.0 or a non-empty list"),
    ([1, 1.0], 0.5, "solver.alpha lists a value twice"),
    (1.0, 1.5, "solver.l1_ratio must be a number in [0.0, 1.0] or a list of them, got 1.5"),
    (1.0, [0.5, True], "solver.l1_ratio"),
])
def test_solver_grid_rejects_bad_values_naming_the_setting(alpha, l1_ratio, message):
    from gpurecon.config import solver_grid
    from gpurecon.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        solver_grid(solver_cfg(alpha=alpha, l1_ratio=l1_ratio))
    assert message in str(err.value)


def test_n_permutations_auto_by_device_and_checked():
    from gpurecon.config import AUTO_PERMUTATIONS, n_permutations_for
    from gpurecon.errors import ConfigError

    assert n_permutations_for("auto", "cpu") == AUTO_PERMUTATIONS["cpu"] == 100
    assert n_permutations_for(None, "cuda") == AUTO_PERMUTATIONS["cuda"] == 1000
    assert n_permutations_for(solver_cfg().n_permutations, "cpu") == 100   # the default is auto
    assert n_permutations_for(0, "cuda") == 0 and n_permutations_for(7, "cpu") == 7
    for bad in (-1, 2.5, "many", True):
        with pytest.raises(ConfigError, match="solver.n_permutations must be an integer >= 0"):
            n_permutations_for(bad, "cpu")


def test_job_folder_names_are_safe_and_distinct():
    from gpurecon.sweep import dirname

    name = dirname("model.checkpoint=/data/cc.nl.300.bin,subject=3")
    assert "/" not in name and name == "model.checkpoint=_data_cc.nl.300.bin,subject=3"
    long_a, long_b = dirname("x=" + "a" * 300), dirname("x=" + "a" * 299 + "b")
    assert len(long_a) == len(long_b) == 100 and long_a != long_b
    assert dirname("") == "defaults"
