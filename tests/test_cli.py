"""End-to-end tests of `python -m gpurecon` as a user runs it (subprocess, CPU, offline)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _cli_helpers import SMALL, result_files, run_cli

from gpurecon.run_summary import read_summary

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    first, out = run_cli(SMALL, tmp)
    second, out2 = run_cli(SMALL, tmp, name="out2")
    return first, out, second, out2


def test_offline_default_runs_on_synthetic_data_and_says_so(planted_run):
    proc, out, _, _ = planted_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    first_lines = "\n".join(log.splitlines()[:3])
    assert "SYNTHETIC" in first_lines and "device cpu" in first_lines
    for name in ("summary.json", "targets.npz", "embeddings.npz", "predictions.npz",
                 "scores_trials.csv", "scores_electrodes.csv", "done.json"):
        assert (out / name).is_file(), name
    from gpurecon.outputs import is_complete

    assert is_complete(out)
    done = json.loads((out / "done.json").read_text())
    assert {"summary.json", "targets.npz", "embeddings.npz", "predictions.npz", "scores_trials.csv",
            "scores_electrodes.csv"} <= set(done["files"])
    assert done["provenance"]["data"] == "synthetic" and done["provenance"]["device"] == "cpu"
    assert done["provenance"]["checkpoint"] == "ground truth"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["data"] == "synthetic"
    assert summary["provenance"]["device"] == "cpu"
    for csv in ("scores_trials.csv", "scores_electrodes.csv"):
        assert "# data: synthetic" in (out / csv).read_text()


def test_planted_features_recover_the_planted_responses(planted_run):
    """Perfect features must beat the mean-of-training baseline on per-electrode scores."""
    _, out, _, _ = planted_run
    s = json.loads((out / "summary.json").read_text())["scores"]
    assert s["pcc_per_electrode_mean"] > 0.5
    assert s["r2_across_electrodes"] > s["baseline_r2_across_electrodes"]


def test_rerun_loads_targets_and_embeddings_from_cache(planted_run):
    _, out, second, out2 = planted_run
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "targets loaded from the cache" in log
    a = np.load(out / "predictions.npz")["pred"]
    b = np.load(out2 / "predictions.npz")["pred"]
    np.testing.assert_array_equal(a, b)  # same inputs, same device -> identical results


def test_missing_dataset_root_is_one_clear_error_and_no_output(tmp_path):
    proc, out = run_cli([*SMALL, f"data.root={tmp_path / 'nowhere'}"], tmp_path)
    assert proc.returncode == 1
    assert "nowhere" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert result_files(out) == []


def test_typo_and_wrong_type_are_rejected_by_the_schema(tmp_path):
    proc, _ = run_cli(["model=gpt2", "model.layr=3"], tmp_path)
    assert proc.returncode != 0 and "layr" in proc.stderr
    proc, _ = run_cli(["solver.alpha=abc"], tmp_path)
    # solver.alpha takes a number or a list (a grid): checked at start-up, not by the schema
    assert proc.returncode != 0 and "solver.alpha" in proc.stderr + proc.stdout


def test_regular_install_finds_conf(tmp_path):
    """`pip install .` (not editable) ships every module and conf/ (as gpurecon.conf)."""
    src, target = tmp_path / "src", tmp_path / "site"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "gpurecon", "conf"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                          if (REPO / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(src)],
                   check=True, capture_output=True, timeout=600)
    source_modules = {p.relative_to(REPO / "gpurecon") for p in (REPO / "gpurecon").rglob("*.py")}
    installed = {p.relative_to(target / "gpurecon") for p in (target / "gpurecon").rglob("*.py")}
    assert source_modules <= installed, f"not installed: {sorted(map(str, source_modules - installed))}"
    assert (target / "gpurecon" / "conf" / "config.yaml").is_file()
    assert (target / "gpurecon" / "conf" / "model" / "gpt2.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-m", "gpurecon", "model=gpt2", "--cfg", "job"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "checkpoint: gpt2" in proc.stdout
    proc = subprocess.run([sys.executable, "-c", "import gpurecon; print(gpurecon.__file__)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert str(target) in proc.stdout


@pytest.mark.slow
def test_permutation_null_and_fold_wise_pca_for_wav2vec2(tmp_path):
    proc, out = run_cli([*SMALL, "solver.n_permutations=40"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())["scores"]
    assert s["n_permutations"] == 40
    # planted features: far above every permutation of the trials
    assert s["p_pcc_across_electrodes"] == pytest.approx(1 / 41)
    assert s["pcc_across_electrodes"] > s["null_pcc_across_electrodes_95"]
    assert "q_fdr" in (out / "scores_electrodes.csv").read_text()

    proc, out = run_cli([*SMALL, "model=wav2vec2", "model.checkpoint=tiny"], tmp_path, name="w2v")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_summary(out)   # per-fold lists put back from predictions.npz
    assert summary["solver"]["fold_preprocessing"] == "pca:0.9"
    assert len(summary["solver"]["n_features_per_fold"]) == 20
    assert summary["embedding"]["untrained"] is True and summary["provenance"]["untrained"] is True
    assert summary["target"]["window_s"] == 2.0  # the study's window for Wav2Vec2


def test_sweep_runs_each_grid_point(tmp_path):
    env = {"GPURECON_OUTPUTS": str(tmp_path / "runs")}
    proc, _ = run_cli(["-m", *SMALL, "solver.alpha=0.01,10"], tmp_path, env_extra=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = sorted((tmp_path / "runs").rglob("summary.json"))
    alphas = sorted(json.loads(p.read_text())["solver"]["alpha"] for p in summaries)
    assert alphas == [0.01, 10.0]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    from gpurecon.data import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("ds") / "ibids", subjects=(3,), seed=2,
                                   n_channels=5, n_words=12, audio_sfreq=8000.0)


def _nwb(root):
    return root / "sub-03" / "ieeg" / "sub-03_task-wordProduction_ieeg.nwb"


def test_flat_channel_is_excluded_and_recorded(small_dataset, tmp_path):
    import h5py

    root = shutil.copytree(small_dataset, tmp_path / "flat")
    with h5py.File(_nwb(root), "r+") as f:
        f["acquisition/iEEG/data"][:, 1] = 2.0
    names = (root / "sub-03/ieeg/sub-03_task-wordProduction_channels.tsv").read_text().splitlines()
    flat_name = names[2].split("\t")[0]
    proc, out = run_cli([f"data.root={root}", "subject=3", "device=cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["excluded_channels"] == [flat_name]
    assert summary["n_targets"] == 4
    assert summary["provenance"]["data"] == "synthetic"  # data.root pointing at synthetic data
    electrodes = _csv_body(out / "scores_electrodes.csv")
    assert flat_name not in electrodes["electrode"].tolist() and len(electrodes) == 4
    # each kept electrode keeps its own coordinates (those after the flat one do not shift)
    import pandas as pd

    tsv = pd.read_csv(root / "sub-03/ieeg/sub-03_task-wordProduction_space-ACPC_electrodes.tsv",
                      sep="\t").set_index("name")
    kept = electrodes["electrode"].tolist()
    np.testing.assert_array_equal(electrodes[["x", "y", "z"]].to_numpy(),
                                  tsv.loc[kept, ["x", "y", "z"]].to_numpy())
    channels = pd.read_csv(_channels_tsv(root), sep="\t", keep_default_na=False).set_index("name")
    assert electrodes["label"].tolist() == channels.loc[kept, "description"].tolist()
    assert f"# excluded_channels: {flat_name} (flat (constant signal))" in \
        (out / "scores_electrodes.csv").read_text()


def _csv_body(path):
    import pandas as pd

    return pd.read_csv(path, comment="#")


def _channels_tsv(root):
    return root / "sub-03" / "ieeg" / "sub-03_task-wordProduction_channels.tsv"


def _mark_bad(root, rows):
    """channels.tsv status `bad` for the given rows; returns the channel names."""
    import pandas as pd

    df = pd.read_csv(_channels_tsv(root), sep="\t", keep_default_na=False, dtype=str)
    df.loc[list(rows), "status"] = "bad"
    df.to_csv(_channels_tsv(root), sep="\t", index=False)
    return df["name"].tolist()


def _drop_channels(root, rows):
    """The same recording with the given channels removed by hand from every file."""
    import h5py
    import pandas as pd

    df = pd.read_csv(_channels_tsv(root), sep="\t", keep_default_na=False, dtype=str)
    df.drop(index=list(rows)).to_csv(_channels_tsv(root), sep="\t", index=False)
    keep = [i for i in range(len(df)) if i not in rows]
    with h5py.File(_nwb(root), "r+") as f:
        old = f["acquisition/iEEG/data"]
        data, attrs = old[()][:, keep], dict(old.attrs)
        del f["acquisition/iEEG/data"]
        new = f.create_dataset("acquisition/iEEG/data", data=data)
        for k, v in attrs.items():
            new.attrs[k] = v
    sidecar = root / "sub-03" / "ieeg" / "sub-03_task-wordProduction_ieeg.json"
    meta = json.loads(sidecar.read_text())
    meta["SEEGChannelCount"] = len(keep)
    sidecar.write_text(json.dumps(meta))


def test_status_bad_channels_are_left_out_like_channels_removed_by_hand(small_dataset, tmp_path):
    """Channels marked bad give exactly the targets, scores and coordinates of the same data
    with those channels deleted from the files; the outputs say which were excluded and why."""
    import pandas as pd

    bad = (1, 3)
    marked = shutil.copytree(small_dataset, tmp_path / "marked")
    names = _mark_bad(marked, bad)
    dropped = shutil.copytree(small_dataset, tmp_path / "dropped")
    _drop_channels(dropped, bad)
    proc, out = run_cli([f"data.root={marked}", "subject=3", "device=cpu"], tmp_path, name="marked_out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref_proc, ref = run_cli([f"data.root={dropped}", "subject=3", "device=cpu"], tmp_path, name="ref_out")
    assert ref_proc.returncode == 0, ref_proc.stderr[-3000:]

    kept = [n for i, n in enumerate(names) if i not in bad]
    with np.load(out / "targets.npz") as got, np.load(ref / "targets.npz") as want:
        assert got["columns"].tolist() == want["columns"].tolist() == kept
        np.testing.assert_allclose(got["Y"], want["Y"], rtol=1e-10, atol=0)
    electrodes, ref_electrodes = _csv_body(out / "scores_electrodes.csv"), _csv_body(ref / "scores_electrodes.csv")
    assert electrodes["electrode"].tolist() == kept
    np.testing.assert_allclose(electrodes[["pcc", "r2"]].to_numpy(), ref_electrodes[["pcc", "r2"]].to_numpy(),
                               rtol=1e-6, atol=1e-9)
    tsv = pd.read_csv(marked / "sub-03/ieeg/sub-03_task-wordProduction_space-ACPC_electrodes.tsv",
                      sep="\t").set_index("name")
    np.testing.assert_array_equal(electrodes[["x", "y", "z"]].to_numpy(), tsv.loc[kept, ["x", "y", "z"]].to_numpy())

    summary = json.loads((out / "summary.json").read_text())
    excluded = [names[i] for i in bad]
    assert summary["excluded_channels"] == excluded and summary["n_targets"] == len(kept)
    assert summary["excluded_channel_reasons"] == {n: "status bad in channels.tsv" for n in excluded}
    text = (out / "scores_electrodes.csv").read_text()
    assert ("# excluded_channels: " + ", ".join(f"{n} (status bad in channels.tsv)" for n in excluded)) in text
    assert all(n in proc.stdout + proc.stderr for n in excluded)   # logged too


def test_all_channels_bad_is_one_error_and_no_results(small_dataset, tmp_path):
    root = shutil.copytree(small_dataset, tmp_path / "allbad")
    _mark_bad(root, range(5))
    proc, out = run_cli([f"data.root={root}", "subject=3", "device=cpu"], tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "channels.tsv" in errors[0] and "column status" in errors[0], errors
    assert result_files(out) == []


def test_nan_samples_fail_with_the_channel_named_and_no_output(small_dataset, tmp_path):
    import h5py

    root = shutil.copytree(small_dataset, tmp_path / "nan")
    with h5py.File(_nwb(root), "r+") as f:
        f["acquisition/iEEG/data"][10:20, 2] = np.nan
    proc, out = run_cli([f"data.root={root}", "subject=3"], tmp_path)
    assert proc.returncode == 1
    message = proc.stdout + proc.stderr
    assert "NaN" in message and "ieeg.nwb" in message and "Traceback" not in message
    assert result_files(out) == []


def test_subject_out_of_range_names_the_valid_subjects(small_dataset, tmp_path):
    proc, out = run_cli([f"data.root={small_dataset}", "subject=11"], tmp_path)
    assert proc.returncode == 1 and "sub-03" in proc.stdout + proc.stderr
    assert "subject" in proc.stdout + proc.stderr
    assert result_files(out) == []
