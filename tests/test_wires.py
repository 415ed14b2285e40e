"""Tests that pin the wires between well-tested units (issue 17, section 6): each observes
what the app or the report wrote and checks it against an independent computation, so that a
planted wiring bug (columns mislabelled, a cache key missing a setting, a seed not passed, a
count of p instead of q, ...) fails here. In-process runs on tiny synthetic settings (a few
seconds each); the bugs each test kills are listed in its docstring."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import false_discovery_control

from _report_fixtures import make_run

CPU = torch.device("cpu")


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from gpurecon.__main__ import _conf_dir

    with initialize_config_dir(config_dir=_conf_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _run(tmp_path: Path, out: str, *overrides: str) -> Path:
    """One run in this process (the app's experiment.run) into ``tmp_path/out``."""
    from gpurecon import experiment

    cfg = _compose(["device=cpu", "model=planted", "data.n_channels=3", "data.n_words=12",
                    "progress=false", "solver.n_permutations=0",
                    f"cache_dir={tmp_path / 'cache'}", *overrides])
    folder = tmp_path / out
    folder.mkdir(exist_ok=True)
    experiment.run(cfg, folder)
    return folder


def _csv(path: Path) -> dict[str, list[str]]:
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    rows = list(csv.DictReader(io.StringIO("\n".join(lines))))
    return {k: [r[k] for r in rows] for k in rows[0]}


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


# --------------------------------------------------------------------------- targets, coordinates


@pytest.fixture(scope="module")
def frames_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("frames")
    return _run(tmp, "out", "target=frames", "target.window=0.2", "target.frame_shift=0.02")


def test_frames_columns_are_the_named_electrode_and_frame(frames_run):
    """Each column ``E@frameF`` of targets.npz holds electrode E's frame F, computed here for
    that channel alone (no flattening to get wrong), with the run's window and frame length
    and shift. Kills: frames flattened frame-major; target.window / frame_shift not passed."""
    from gpurecon.data import load_subject
    from gpurecon.signal import epoch_frames, high_gamma

    s = _summary(frames_run)
    rec = load_subject(s["provenance"]["data_root"], s["provenance"]["subject"])
    with np.load(frames_run / "targets.npz") as f:
        Y, columns = f["Y"], f["columns"].tolist()
    names = [n for n, ok in zip(rec.channel_names, rec.good_channels) if ok]
    env = high_gamma(torch.from_numpy(rec.seeg).to(torch.float32), rec.sfreq)
    n_frames = s["target"]["n_frames"]
    assert n_frames > 1 and Y.shape[1] == len(names) * n_frames
    for name in names:
        c = rec.channel_names.index(name)
        ref = epoch_frames(env[c:c + 1], rec.trials.sample, rec.sfreq, length=0.2, window=0.05,
                           shift=0.02)[:, 0].numpy()
        for f in range(n_frames):
            j = columns.index(f"{name}@frame{f}")
            np.testing.assert_allclose(Y[:, j], ref[:, f], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}@frame{f}")


def test_frames_rows_carry_their_electrodes_coordinates(frames_run):
    """scores_electrodes.csv: every ``E@frameF`` row has electrode E's coordinates from the
    dataset's electrodes.tsv. Kills: coordinates repeated frame-major / not per electrode."""
    import pandas as pd

    s = _summary(frames_run)
    root = Path(s["provenance"]["data_root"])
    tsv = pd.read_csv(next(root.glob("sub-*/ieeg/*_electrodes.tsv")), sep="\t").set_index("name")
    el = _csv(frames_run / "scores_electrodes.csv")
    for name, x, y, z in zip(el["electrode"], el["x"], el["y"], el["z"]):
        np.testing.assert_allclose([float(x), float(y), float(z)],
                                   tsv.loc[name.split("@frame")[0], ["x", "y", "z"]].to_numpy(float))


# --------------------------------------------------------------------------- cache keys


def test_synthetic_dataset_follows_n_channels_with_one_cache(tmp_path):
    """Two runs sharing a cache, 3 then 4 channels (nothing else in the data differs): the
    second has 4 targets and its data root holds 4 channels; its trial means use its window
    (0.5 s, computed here per channel). Kills: the synthetic dataset's cache key without
    n_channels; target.window not passed to the trial mean."""
    from gpurecon.data import load_subject
    from gpurecon.signal import epochs, high_gamma, trial_mean

    first = _run(tmp_path, "a", "data.n_channels=3")
    second = _run(tmp_path, "b", "data.n_channels=4", "target.window=0.5")
    s1, s2 = _summary(first), _summary(second)
    assert s1["n_targets"] == 3 and s2["n_targets"] == 4
    rec = load_subject(s2["provenance"]["data_root"], 1)
    assert len(rec.channel_names) == 4
    env = high_gamma(torch.from_numpy(rec.seeg).to(torch.float32), rec.sfreq)
    with np.load(second / "targets.npz") as f:
        for j, name in enumerate(f["columns"].tolist()):
            c = rec.channel_names.index(name)
            ref = trial_mean(epochs(env[c:c + 1], rec.trials.sample, rec.sfreq, length=0.5))
            np.testing.assert_allclose(f["Y"][:, j], ref[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    assert s1["provenance"]["data_root"] != s2["provenance"]["data_root"]


def test_fasttext_embeddings_follow_the_words_with_one_cache(tmp_path):
    """Two recordings with other words, one cache: each gets gensim's vectors of its own
    words. Kills: FastText cache key without the words."""
    from gensim.models.fasttext import load_facebook_vectors

    from _embeddings_helpers import fresh_cache, make_recording, shared_models
    from gpurecon.embeddings import get_embedder
    from gpurecon.embeddings.tiny import build_fasttext

    kv = load_facebook_vectors(str(build_fasttext(shared_models(), "tiny")))
    cache = fresh_cache(tmp_path)
    for words in (["hond", "kat", "hond"], ["kat", "12", "'s"]):
        out = get_embedder("fasttext", checkpoint="tiny").embed(make_recording(words), device=CPU,
                                                                cache=cache)
        np.testing.assert_array_equal(out.X.numpy(), np.stack([kv[w] for w in words]), err_msg=str(words))


# --------------------------------------------------------------------------- evaluation wiring


def test_fdr_leaves_nan_p_values_out_of_the_count():
    """BH over p-values with NaN (a constant electrode): q of the others as scipy computes it
    without the NaN. Kills: NaN p-values counted in n."""
    from gpurecon.evaluation import fdr_bh

    p = np.array([0.01, np.nan, 0.04, 0.03, np.nan, 0.2, 0.5])
    q = fdr_bh(torch.tensor(p)).numpy()
    ok = ~np.isnan(p)
    np.testing.assert_allclose(q[ok], false_discovery_control(p[ok]), rtol=1e-12)
    assert np.isnan(q[~ok]).all()


def _evaluation(n_trials=12, n_targets=5, n_perm=9, seed=0):
    from gpurecon.evaluation import evaluate, null_distribution
    from gpurecon.solver import permutations

    g = torch.Generator().manual_seed(seed)
    Y = torch.rand(n_trials, n_targets, generator=g, dtype=torch.float64)
    pred = Y + 0.3 * torch.rand(n_trials, n_targets, generator=g, dtype=torch.float64)
    base = Y.mean(0, keepdim=True).expand_as(Y).clone()
    perms = permutations(n_trials, n_perm, seed)
    null_pred = torch.rand(n_perm, n_trials, n_targets, generator=g, dtype=torch.float64)
    null = null_distribution(null_pred=null_pred, Y=Y, permutations=perms)
    return evaluate(pred=pred, Y=Y, baseline=base, null=null)


def test_n_electrodes_fdr_05_counts_q_not_p():
    """p = 0.01, 0.04, 0.045, 0.6, 0.7: three p <= 0.05 but one q (scipy's BH). Kills:
    ``n_electrodes_fdr_05`` counting raw p."""
    import dataclasses

    from gpurecon.evaluation import fdr_bh

    ev = _evaluation()
    p = torch.tensor([0.01, 0.04, 0.045, 0.6, 0.7], dtype=torch.float64)
    ev = dataclasses.replace(ev, electrode_p=p, electrode_q=fdr_bh(p))
    assert ev.summary()["n_electrodes_fdr_05"] == int((false_discovery_control(p.numpy()) <= 0.05).sum()) == 1


def _pcc_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ac, bc = a - a.mean(-1, keepdims=True), b - b.mean(-1, keepdims=True)
    return (ac * bc).sum(-1) / np.sqrt((ac ** 2).sum(-1) * (bc ** 2).sum(-1))


def test_nested_null_is_the_best_grid_point_per_permutation():
    """A 2-point grid whose second point's null predictions are the permuted targets
    themselves (PCC 1): the nested selection's null is, per permutation, the better of the two
    points, computed here with numpy. Kills: the null taken from the first grid point."""
    from gpurecon.evaluation import evaluate_grid
    from gpurecon.solver import permutations

    rng = np.random.default_rng(3)
    n, t, k = 10, 4, 19
    Y = rng.normal(size=(n, t)) + np.arange(t)
    perms = permutations(n, k, 7)
    null_pred = np.stack([np.stack([rng.normal(size=(n, t)), Y[perms[j]] + 0.5 *
                                    rng.normal(size=(n, t))]) for j in range(k)])
    grid_pred = np.stack([Y + rng.normal(size=Y.shape), Y + 2 * rng.normal(size=Y.shape)])
    ev = evaluate_grid(grid_pred=torch.tensor(grid_pred), Y=torch.tensor(Y),
                       baseline=torch.tensor(np.repeat(Y.mean(0, keepdims=True), n, 0)),
                       grid=[(0.1, 0.5), (1.0, 0.5)], null_pred=torch.tensor(null_pred),
                       permutations=perms, nested_pred=torch.tensor(grid_pred[0]))
    per_point = np.stack([[_pcc_rows(null_pred[j, g], Y[perms[j]]).mean() for j in range(k)]
                          for g in range(2)])
    best = per_point.max(0)
    np.testing.assert_allclose(ev.main.null.pcc_across_electrodes.numpy(), best, rtol=1e-10)
    assert ev.main.summary()["null_pcc_across_electrodes_95"] == pytest.approx(np.quantile(best, 0.95))


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory):
    """A grid run with a permutation null at seed 0, then seed 1 into the same folder with
    resume=true (not the same run: it must run again)."""
    tmp = tmp_path_factory.mktemp("seeds")
    grid = ["solver.alpha=[0.003,0.3]", "solver.n_permutations=9", "model.noise=1.0"]
    out = _run(tmp, "out", *grid, "seed=0")
    first = {"summary": _summary(out), "null": np.load(out / "predictions.npz")["null_pcc_across_electrodes"]}
    _run(tmp, "out", *grid, "seed=1", "resume=true")
    return first, out


def test_resume_reruns_a_run_with_another_seed(seed_runs):
    """Kills: resume treating a run with another seed as the same run."""
    first, out = seed_runs
    s = _summary(out)
    assert first["summary"]["config"]["seed"] == 0
    assert s["config"]["seed"] == 1 and s["solver"]["permutation_seed"] == 1


def test_permutation_null_follows_the_seed(seed_runs):
    """The same run with seed 1 gets another permutation null than with seed 0 (and records
    seed 1, see the resume test). Kills: cfg.seed not passed to the permutations."""
    first, out = seed_runs
    null = np.load(out / "predictions.npz")["null_pcc_across_electrodes"]
    assert null.shape == first["null"].shape == (9,)
    assert not np.allclose(null, first["null"])


def test_best_grid_point_in_hindsight_is_the_highest_pcc_in_grid_csv(seed_runs):
    """Kills: best_grid_point_in_hindsight picking the worst (or the first) point."""
    _, out = seed_runs
    grid = _csv(out / "grid.csv")
    pcc = np.array(grid["pcc"], float)
    assert np.ptp(pcc) > 0
    best = int(np.nanargmax(pcc))
    got = _summary(out)["nested"]["best_grid_point_in_hindsight"]
    assert (got["alpha"], got["l1_ratio"]) == (float(grid["alpha"][best]), float(grid["l1_ratio"][best]))
    assert got["pcc_across_electrodes"] == pytest.approx(pcc[best])


def test_grid_run_files_agree_with_numpy(seed_runs):
    """The seed-1 grid run's files against numpy: the baseline is each trial's leave-one-out
    training mean, the per-trial PCC and the summary score are those of predictions.npz's
    pred, q is scipy's BH of p, the null's 95th percentile is not below its mean, and the
    trials' words are the recording's. Kills: baseline rows misaligned, predictions.npz
    holding another grid point than the scores, p and q columns swapped, null mean / 95
    columns swapped, the words reordered."""
    from gpurecon.data import load_subject

    _, out = seed_runs
    s = _summary(out)
    with np.load(out / "predictions.npz") as f:
        Y, pred, base = f["Y"].astype(float), f["pred"].astype(float), f["baseline"]
    n = Y.shape[0]
    np.testing.assert_allclose(base, (Y.sum(0, keepdims=True) - Y) / (n - 1), rtol=1e-6)
    trials = _csv(out / "scores_trials.csv")
    np.testing.assert_allclose(np.array(trials["pcc"], float), _pcc_rows(pred, Y), rtol=1e-6)
    assert s["scores"]["pcc_across_electrodes"] == pytest.approx(_pcc_rows(pred, Y).mean(), rel=1e-6)
    rec = load_subject(s["provenance"]["data_root"], s["provenance"]["subject"])
    assert trials["word"] == list(rec.trials.word)
    el = _csv(out / "scores_electrodes.csv")
    p, q = np.array(el["p"], float), np.array(el["q_fdr"], float)
    assert np.isfinite(p).all() and len(set(p)) > 1
    np.testing.assert_allclose(q, false_discovery_control(p), rtol=1e-10)
    mean, q95 = np.array(el["null_pcc_mean"], float), np.array(el["null_pcc_95"], float)
    assert (q95 >= mean - 1e-12).all() and (q95 > mean).any()


# --------------------------------------------------------------------------- report: electrode map


def _ring_offsets(spec):
    """The (x, y) of the ringed electrodes in the first panel of a drawn electrode map."""
    from matplotlib.figure import Figure

    fig = Figure()
    spec.draw(fig)
    ax = fig.axes[0]
    rings = [c for c in ax.collections if str(c.get_label()).startswith("FDR q")]
    assert len(rings) == 1
    return np.asarray(rings[0].get_offsets())


def test_electrode_map_rings_the_electrodes_with_q_at_most_005(tmp_path):
    """The drawn rings sit at the electrodes whose q <= 0.05 in scores_electrodes.csv (read
    here). Kills: ringing q > 0.05."""
    from gpurecon.report import find_runs
    from gpurecon.report.figures_run import electrode_map

    folder = make_run(tmp_path, "r", subject=1, model="gpt2", n_electrodes=8)
    el = _csv(folder / "scores_electrodes.csv")
    q = np.array(el["q_fdr"], float)
    assert 0 < (q <= 0.05).sum() < q.size
    want = np.array([[float(x), float(y)] for x, y, qq in zip(el["x"], el["y"], q) if qq <= 0.05])
    runs, _ = find_runs([tmp_path])
    np.testing.assert_allclose(_ring_offsets(electrode_map(runs[0], runs)), want)


def test_electrode_map_of_frames_uses_each_electrodes_first_column(tmp_path):
    """Frames runs score E@frame0..E@frameF: the map puts electrode E at the coordinates of
    its first row and rings it when any frame is significant. Kills: coordinates read by
    electrode index (row i) instead of the electrode's first row."""
    from gpurecon.report import find_runs
    from gpurecon.report.figures_run import electrode_table

    folder = make_run(tmp_path, "r", subject=1, model="wav2vec2", n_electrodes=4, n_frames=3)
    el = _csv(folder / "scores_electrodes.csv")
    runs, _ = find_runs([tmp_path])
    table = electrode_table(runs[0])
    for e in range(4):
        i = el["electrode"].index(f"E{e}@frame0")
        assert [table[c][e] for c in "xyz"] == [float(el[c][i]) for c in "xyz"]
        q = [float(v) for n, v in zip(el["electrode"], el["q_fdr"]) if n.startswith(f"E{e}@")]
        assert table["q_fdr"][e] == min(q)


# --------------------------------------------------------------------------- publishing


def test_publish_never_vouches_for_a_mix_of_old_and_new_files(tmp_path):
    """Replacing a finished run with files of the same sizes: while the files are being
    moved, the folder is never complete (the old done.json would vouch for the mix). Kills:
    publish keeping the old done.json."""
    from gpurecon.outputs import is_complete, make_staging, publish

    run = tmp_path / "run"
    for content in ("old", "new"):
        staging = make_staging(run)
        (staging / "summary.json").write_text(f'"{content}"')
        (staging / "scores_trials.csv").write_text(content)
        seen = []
        publish(staging, run, on_file=lambda name: seen.append(is_complete(run)))
        assert seen == [False, False]
        assert is_complete(run) and (run / "summary.json").read_text() == f'"{content}"'
