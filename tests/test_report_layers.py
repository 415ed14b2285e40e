"""The report's layer-wise figures (issue 18, section 1): fig_layers_<sub>_<model>,
fig_layers_mean_<model> and the best-layer table fig_layers_best_<model>, from the layers.csv of
``model.layer=all`` runs. Each CSV is checked against the runs' layers.csv (read here with the
csv module) and each drawn element is read back from the matplotlib objects."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

SMALL = ["device=cpu", "data.n_channels=3", "data.n_words=16", "progress=false",
         "solver.alpha=0.002", "solver.n_permutations=5", "model=gpt2", "model.checkpoint=tiny"]


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from gpurecon.__main__ import _conf_dir

    with initialize_config_dir(config_dir=_conf_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _layers_csv(folder: Path) -> dict[int, dict[str, float]]:
    lines = [ln for ln in (folder / "layers.csv").read_text().splitlines() if not ln.startswith("#")]
    return {int(r["layer"]): {k: (float(v) if k != "p_source" else v) for k, v in r.items()}
            for r in csv.DictReader(io.StringIO("\n".join(lines)))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two participants with model.layer=all."""
    from gpurecon import experiment

    root = tmp_path_factory.mktemp("report_layers")
    for name, extra in (("sub1", ["subject=1", "model.layer=all"]),
                        ("sub2", ["subject=2", "model.layer=all"])):
        folder = root / "runs" / name
        folder.mkdir(parents=True)
        experiment.run(_compose([*SMALL, f"cache_dir={root / 'cache'}", *extra]), folder)
    return root / "runs"


def _specs(folder):
    from gpurecon.report import find_runs
    from gpurecon.report.figures_layers import layer_figures

    found, _ = find_runs([folder])
    return {s.stem: s for s in layer_figures(found)}


def _drawn(spec) -> Figure:
    fig = Figure()
    FigureCanvasAgg(fig)
    spec.draw(fig)
    return fig


def test_one_curve_per_participant_drawn_from_its_layers_csv(runs):
    """Kills: the curve drawn from another column (R2, the baseline) or another run, the null
    band's top not the 95th percentile, the baseline line missing, the CSV rows shifted."""
    specs = _specs(runs)
    assert {"fig_layers_sub-01_gpt2", "fig_layers_sub-02_gpt2", "fig_layers_mean_gpt2",
            "fig_layers_best_gpt2"} <= set(specs)
    for sub, name in ((1, "sub1"), (2, "sub2")):
        truth = _layers_csv(runs / name)
        spec = specs[f"fig_layers_sub-0{sub}_gpt2"]
        rows = {r[1]: dict(zip(spec.header, r)) for r in spec.rows}
        assert sorted(rows) == sorted(truth)
        for layer, row in rows.items():
            assert row["subject"] == sub
            for key in ("pcc_across_electrodes", "baseline_pcc_across_electrodes",
                        "null_pcc_across_electrodes_95", "p_pcc_across_electrodes"):
                assert row[key] == pytest.approx(truth[layer][key], rel=1e-12)
        ax = _drawn(spec).axes[0]
        model = next(line for line in ax.lines if line.get_label() == "model")
        layers = sorted(truth)
        np.testing.assert_allclose(model.get_xdata(), layers)
        np.testing.assert_allclose(model.get_ydata(), [truth[k]["pcc_across_electrodes"] for k in layers])
        base = next(line for line in ax.lines if line.get_label().startswith("baseline"))
        np.testing.assert_allclose(base.get_ydata(),
                                   [truth[k]["baseline_pcc_across_electrodes"] for k in layers])
        band = next(c for c in ax.collections if isinstance(c, PolyCollection))
        top = band.get_paths()[0].vertices[:, 1]
        np.testing.assert_allclose(top.max(), max(truth[k]["null_pcc_across_electrodes_95"]
                                                  for k in layers))
        star = next(line for line in ax.lines if line.get_label() == "main layer (4)")
        assert list(star.get_xdata()) == [4]
        assert star.get_ydata()[0] == pytest.approx(truth[4]["pcc_across_electrodes"])
        assert "layer" in ax.get_xlabel() and "PCC" in ax.get_ylabel()


def test_the_mean_curve_is_the_mean_over_participants(runs):
    """Kills: a median, a missing participant, the layers of one participant shifted."""
    a, b = _layers_csv(runs / "sub1"), _layers_csv(runs / "sub2")
    ax = _drawn(_specs(runs)["fig_layers_mean_gpt2"]).axes[0]
    mean = next(line for line in ax.lines if line.get_label() == "mean")
    np.testing.assert_allclose(mean.get_xdata(), sorted(a))
    np.testing.assert_allclose(mean.get_ydata(), [(a[k]["pcc_across_electrodes"]
                                                   + b[k]["pcc_across_electrodes"]) / 2 for k in sorted(a)])
    assert {line.get_label() for line in ax.lines} >= {"sub-01", "sub-02", "mean"}


def test_the_best_layer_table(runs):
    """Kills: argmin instead of argmax, the main layer reported as the best, above_chance
    compared with the baseline instead of the null's 95th percentile."""
    spec = _specs(runs)["fig_layers_best_gpt2"]
    rows = {r[0]: dict(zip(spec.header, r)) for r in spec.rows}
    for sub, name in ((1, "sub1"), (2, "sub2")):
        truth = _layers_csv(runs / name)
        best = max(truth, key=lambda k: truth[k]["pcc_across_electrodes"])
        row = rows[sub]
        assert row["best_layer"] == best and row["main_layer"] == 4
        assert row["pcc_across_electrodes"] == pytest.approx(truth[best]["pcc_across_electrodes"])
        assert row["above_chance"] == (truth[best]["pcc_across_electrodes"]
                                       > truth[best]["null_pcc_across_electrodes_95"])
        assert row["main_layer_pcc_across_electrodes"] == pytest.approx(truth[4]["pcc_across_electrodes"])
    table = _drawn(spec).axes[0].tables[0]
    cells = {(r, c): t.get_text().get_text() for (r, c), t in table.get_celld().items()}
    assert cells[(1, 0)] == "sub-01" and cells[(1, 1)] == str(rows[1]["best_layer"])


def test_one_layer_runs_give_no_layer_figures(tmp_path):
    from gpurecon import experiment

    folder = tmp_path / "one"
    folder.mkdir()
    experiment.run(_compose([*SMALL, f"cache_dir={tmp_path / 'cache'}"]), folder)
    assert _specs(tmp_path) == {}
