"""Layer-wise runs (issue 18, section 1): ``model.layer=all`` or a list fits every requested
hidden state in one run (one forward pass, one shared permutation set) and writes layers.csv,
predictions_layers.npz and the main layer's scores.

Ground truth: a separate run with ``model.layer=k`` (the app as it was, one layer per run) and
an independent numpy computation of the scores from the written predictions. In-process runs
of the tiny untrained GPT-2 / Wav2Vec2 on a small synthetic participant (seconds each).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from gpurecon.outputs import is_complete, read_npz

SMALL = ["device=cpu", "data.n_channels=3", "data.n_words=16", "progress=false",
         "solver.alpha=0.002", "solver.l1_ratio=0.5", "solver.n_permutations=7"]


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from gpurecon.__main__ import _conf_dir

    with initialize_config_dir(config_dir=_conf_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _run(root: Path, name: str, *overrides: str) -> Path:
    from gpurecon import experiment

    cfg = _compose([*SMALL, f"cache_dir={root / 'cache'}", *overrides])
    folder = root / name
    folder.mkdir()
    experiment.run(cfg, folder)
    assert is_complete(folder)
    return folder


def _rows(path: Path) -> list[dict[str, str]]:
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _same_scores(row: dict[str, str], scores: dict) -> None:
    """A layers.csv row against a summary.json ``scores`` block: every key, every value."""
    assert set(row) - {"layer"} == set(scores)
    for key, value in scores.items():
        if isinstance(value, str) or value is None:
            assert row[key] == ("" if value is None else value), key
        else:
            np.testing.assert_allclose(float(row[key]), value, rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.fixture(scope="module")
def gpt2_runs(tmp_path_factory):
    """One ``model.layer=all`` run and one ``model.layer=k`` run per hidden state."""
    root = tmp_path_factory.mktemp("layers")
    model = ["model=gpt2", "model.checkpoint=tiny"]
    every = _run(root, "all", *model, "model.layer=all")
    layers = _summary(every)["layers"]["layers"]
    single = {k: _run(root, f"layer{k}", *model, f"model.layer={k}") for k in layers}
    return every, single


def test_each_layer_scores_as_a_separate_run_with_that_layer(gpt2_runs):
    """Kills: a layer fitted on another layer's embeddings (rows shifted), the layer axis
    pooled together, permutations or folds re-drawn per layer, a row of layers.csv written
    from the main layer, summary keys left out of layers.csv."""
    every, single = gpt2_runs
    rows = _rows(every / "layers.csv")
    assert [int(r["layer"]) for r in rows] == sorted(single) == list(range(5))   # tiny: 4 blocks
    for row in rows:
        _same_scores(row, _summary(single[int(row["layer"])])["scores"])
    pcc = [float(r["pcc_across_electrodes"]) for r in rows]
    assert len(set(np.round(pcc, 9))) > 1   # the layers differ: the comparison has teeth

    arrays, _ = read_npz(every / "predictions_layers.npz")
    assert arrays["layers"].tolist() == list(range(5))
    for i, k in enumerate(arrays["layers"]):
        one, _ = read_npz(single[int(k)] / "predictions.npz")
        np.testing.assert_allclose(arrays["pred"][i], one["pred"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(arrays["baseline"], one["baseline"], rtol=1e-12)
        np.testing.assert_allclose(arrays["null_pcc_across_electrodes"][i],
                                   one["null_pcc_across_electrodes"], rtol=1e-9, atol=1e-12)


def test_the_main_scores_are_the_study_layer(gpt2_runs):
    """GPT-2's study layer is the final output (tiny: hidden state 4). Kills: the main files
    written from the first layer or the last fitted one regardless of the study's layer."""
    every, single = gpt2_runs
    s = _summary(every)
    assert s["layers"]["main_layer"] == 4
    assert s["layers"]["main_layer_reason"].startswith("the study's layer: hidden state 4 of 0..4")
    _same_scores({k: "" if v is None else str(v) for k, v in s["scores"].items()},
                 _summary(single[4])["scores"])
    assert s["verdict"] == _summary(single[4])["verdict"]
    ours, _ = read_npz(every / "embeddings.npz")
    theirs, _ = read_npz(single[4] / "embeddings.npz")
    np.testing.assert_array_equal(ours["X"], theirs["X"])
    assert (every / "scores_electrodes.csv").read_text().split("\n", 8)[-1] == \
        (single[4] / "scores_electrodes.csv").read_text().split("\n", 8)[-1]
    assert s["embedding"]["layer"] == "all" and s["embedding"]["layers"] == list(range(5))


def test_layers_csv_against_an_independent_computation(gpt2_runs):
    """layers.csv from predictions_layers.npz with numpy: the study's PCC across electrodes
    (np.corrcoef per trial, mean), its baseline, the null's 95th percentile and p."""
    every, _ = gpt2_runs
    arrays, _ = read_npz(every / "predictions_layers.npz")
    Y = arrays["Y"]

    def pcc(pred):
        return np.mean([np.corrcoef(p, y)[0, 1] for p, y in zip(pred, Y)])

    for row, pred, null in zip(_rows(every / "layers.csv"), arrays["pred"],
                               arrays["null_pcc_across_electrodes"]):
        observed = pcc(pred)
        assert float(row["pcc_across_electrodes"]) == pytest.approx(observed, rel=1e-9)
        assert float(row["baseline_pcc_across_electrodes"]) == pytest.approx(pcc(arrays["baseline"]),
                                                                            rel=1e-9)
        assert float(row["null_pcc_across_electrodes_95"]) == pytest.approx(np.quantile(null, 0.95))
        ties = 1e-9 * max(abs(observed), 1.0)
        assert float(row["p_pcc_across_electrodes"]) == pytest.approx(
            (1 + np.sum(null >= observed - ties)) / (1 + len(null)))
        assert int(row["n_permutations"]) == len(null) == 7
        assert int(row["n_electrodes_fdr_05"]) >= 0


@pytest.mark.parametrize("model,layers,n_blocks,main", [
    ("gpt2", list(range(13)), 12, 12),          # the study: GPT-2's final output
    ("wav2vec2", list(range(25)), 24, 23),      # the study: XLS-R 300m's hidden state 23
    ("wav2vec2", [0, 24], 24, 24),              # 23 not fitted: the deepest fitted layer
    ("wav2vec2", list(range(5)), 4, 4),         # a tiny model: its final output
    ("gpt2", [3, 7], 12, 7),
])
def test_the_main_layer_is_the_study_layer_where_fitted(model, layers, n_blocks, main):
    """Kills: the main layer taken as the deepest (24 for XLS-R) or the first fitted layer."""
    from gpurecon.embeddings.stage import main_layer

    chosen, why = main_layer(model, layers, n_blocks)
    assert chosen == main
    assert ("not requested" in why) == (main != (n_blocks if model == "gpt2" else min(23, n_blocks)))


def test_a_list_of_layers_fits_those_layers_and_names_its_main_layer(gpt2_runs, tmp_path):
    """``model.layer=[2,0]``: rows 0 and 2 (ascending), equal to the ``all`` run's; the
    study's layer (4) was not requested, so the main scores are the deepest listed layer's and
    summary.json says why. Kills: a list read as one layer, its order kept unsorted, the main
    layer taken from the study's index that was never fitted."""
    every, _ = gpt2_runs
    listed = _run(tmp_path, "list", "model=gpt2", "model.checkpoint=tiny", "model.layer=[2,0]")
    rows = _rows(listed / "layers.csv")
    assert [r["layer"] for r in rows] == ["0", "2"]
    by_layer = {r["layer"]: r for r in _rows(every / "layers.csv")}
    for row in rows:
        other = by_layer[row["layer"]]
        assert row.keys() == other.keys()
        for key in row:
            if key == "p_source":
                assert row[key] == other[key]
            else:
                assert float(row[key]) == pytest.approx(float(other[key]), rel=1e-9, abs=1e-12), key
    s = _summary(listed)
    assert s["layers"]["main_layer"] == 2 and "not requested" in s["layers"]["main_layer_reason"]
    assert s["scores"]["pcc_across_electrodes"] == pytest.approx(float(rows[1]["pcc_across_electrodes"]))


def test_wav2vec2_layers_each_with_their_own_fold_wise_pca(tmp_path):
    """Tiny Wav2Vec2 (flattened frames, a PCA fitted inside each training fold): each layer of
    ``model.layer=[0,last]`` scores as a separate run of that layer. Kills: one PCA fitted on one
    layer and applied to the others, the fold-wise PCA dropped for layer-wise runs."""
    model = ["model=wav2vec2", "model.checkpoint=tiny", "solver.n_permutations=3"]
    listed = _run(tmp_path, "list", *model, "model.layer=[0,last]")
    s = _summary(listed)
    assert s["solver"]["fold_preprocessing"].startswith("pca:")
    n_blocks = s["embedding"]["n_blocks"]
    assert s["layers"]["layers"] == [0, n_blocks] and s["layers"]["main_layer"] == n_blocks
    for row in _rows(listed / "layers.csv"):
        one = _run(tmp_path, f"layer{row['layer']}", *model, f"model.layer={row['layer']}")
        assert _summary(one)["solver"]["fold_preprocessing"] == s["solver"]["fold_preprocessing"]
        _same_scores(row, _summary(one)["scores"])


BAD_LAYERS = ["first", "[]", "[0,first]", "true", "[[1]]", "[all]", "1.5"]


@pytest.mark.parametrize("value", BAD_LAYERS)
def test_a_bad_layer_is_one_error_naming_model_layer_and_the_allowed_values(value, tmp_path):
    """Refused at start-up (before any data is generated), one message naming model.layer,
    what it may be and what it got."""
    from gpurecon import experiment
    from gpurecon.errors import ConfigError

    cfg = _compose([*SMALL, f"cache_dir={tmp_path / 'cache'}", "model=gpt2", "model.checkpoint=tiny",
                    f"model.layer={value}"])
    with pytest.raises(ConfigError) as err:
        experiment.run(cfg, tmp_path)
    message = str(err.value)
    assert message.startswith("model.layer must be 'last', 'all', an integer index")
    assert "list of indices" in message and "got" in message
    assert not (tmp_path / "cache").exists() and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("value,words", [("[0,99]", ["model.layer=[0, 99]: 99 is out of range", "-5..4"]),
                                         ("[4,-1]", ["model.layer=[4, -1]", "twice"]),
                                         ("-6", ["model.layer=-6", "'all'", "list"])])
def test_a_layer_outside_the_checkpoint_is_refused_at_start_up(value, words, tmp_path):
    """The range against the checkpoint's blocks (tiny GPT-2: 4), before any data is made."""
    from gpurecon import experiment
    from gpurecon.errors import ModelError

    cfg = _compose([*SMALL, f"cache_dir={tmp_path / 'cache'}", "model=gpt2", "model.checkpoint=tiny",
                    f"model.layer={value}"])
    with pytest.raises(ModelError) as err:
        experiment.run(cfg, tmp_path)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert not (tmp_path / "cache" / "synthetic").exists()


def test_the_cost_check_counts_every_layer(tmp_path):
    """A limit one layer fits under but five layers do not: refused at start-up, naming the
    layers. Kills: the cost estimate ignoring model.layer=all."""
    from gpurecon.config import check_solver_cost
    from gpurecon.errors import ConfigError

    base = [*SMALL, f"cache_dir={tmp_path / 'cache'}", "model=gpt2", "model.checkpoint=tiny"]
    one = check_solver_cost(_compose(base), n_trials=16, n_targets=3, device_type="cpu")
    assert one == 3 * 16 * 1 * 8
    cfg = _compose([*base, "model.layer=all", f"solver.max_problems={one * 2}"])
    from gpurecon import experiment

    with pytest.raises(ConfigError, match=r"x 5 layers \(model.layer\)"):
        experiment.run(cfg, tmp_path)
    experiment_ok = _compose([*base, "model.layer=4", f"solver.max_problems={one * 2}"])
    from gpurecon.config import validate_config

    validate_config(experiment_ok)   # the same limit passes one layer
