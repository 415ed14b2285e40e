"""The report as a journal takes it (issue 18, sections 2 and 3): figure files in PNG / PDF /
SVG (vector, fonts embedded), each figure's drawn elements read back from the matplotlib
objects and checked against the CSV it was drawn from (itself checked against the run files),
and Table 1 as CSV (pandas defaults), Markdown and LaTeX (booktabs)."""

from __future__ import annotations

import io
import json
import re
import warnings
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from _report_fixtures import make_run
from gpurecon import outputs
from gpurecon.report import ReportError, figure_specs, find_runs, make_report
from gpurecon.report.__main__ import main as report_main
from gpurecon.report.draw import FOOTER_PT, draw_figure
from gpurecon.report.figures_run import chance_level
from test_report import read_table, sidecar, summary


def specs_by_stem(dirs) -> dict:
    runs, _ = find_runs(dirs)
    return {s.stem: s for s in figure_specs(runs)[0]}


def drawn(spec):
    fig = draw_figure(spec)
    fig.canvas.draw()   # layout done: extents are final
    return fig


def by_gid(fig, gid: str) -> list:
    return fig.findobj(lambda a: a.get_gid() == gid)


def one(fig, gid: str):
    found = by_gid(fig, gid)
    assert len(found) == 1, (gid, found)
    return found[0]


def unwrapped(text) -> str:
    """A drawn text with its wrapping undone."""
    return " ".join(text.get_text().split())


def hline_y(collection) -> float:
    (seg,) = collection.get_segments()
    assert seg[0][1] == seg[1][1]
    return float(seg[0][1])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """2 participants x 2 models, 24 trials, a permutation null."""
    root = tmp_path_factory.mktemp("pub")
    runs = [make_run(root / "multi", f"{i}_{s}_{m}", subject=s, model=m, seed=i, n_trials=24)
            for i, (s, m) in enumerate([(1, "fasttext"), (1, "gpt2"), (2, "fasttext"),
                                        (2, "gpt2")])]
    return root, runs


# ----------------------------------------------------------------------------- file formats


def test_png_pdf_svg_are_written_vector_with_embedded_fonts_at_the_dpi(tmp_path):
    """Kills: pdf.fonttype 3 (Type 3 fonts journals refuse), a rasterised PDF/SVG, --dpi not
    reaching the PNG, timestamps in the files (the same runs must give the same bytes)."""
    make_run(tmp_path / "runs", "a", subject=1, model="gpt2", n_trials=12)
    for out in ("rep", "again"):
        code = report_main([str(tmp_path / "runs"), "--out", str(tmp_path / out), "--no-progress",
                            "--format", "png,pdf,svg", "--dpi", "300"])
        assert code == 0
    rep = tmp_path / "rep"
    stems = sorted(p.stem for p in rep.glob("fig_*.pdf"))
    assert stems == ["fig_activity_sub-01_gpt2", "fig_electrodes_sub-01_gpt2",
                     "fig_null_sub-01_gpt2", "fig_r2_gpt2", "fig_r2_histogram"]
    spec = specs_by_stem([tmp_path / "runs"])["fig_r2_gpt2"]
    for stem in stems:
        png = (rep / f"{stem}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        if stem == "fig_r2_gpt2":  # IHDR: width, height in pixels = inches x dpi
            assert struct.unpack(">II", png[16:24]) == (round(spec.size[0] * 300),
                                                        round(spec.size[1] * 300))
        pdf = (rep / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF-")
        # embedded TrueType (Type 42: /TrueType or /CIDFontType2 with its /FontFile2)
        assert re.search(rb"/Subtype /(TrueType|CIDFontType2)", pdf) and b"/FontFile2" in pdf, stem
        assert b"/Subtype /Type3" not in pdf and b"/Subtype /Image" not in pdf, stem
        svg = ET.parse(rep / f"{stem}.svg").getroot()
        tags = {el.tag.rsplit("}", 1)[-1] for el in svg.iter()}
        assert "image" not in tags and "path" in tags, stem     # vector, no embedded raster
        assert "text" not in tags, stem     # glyphs as paths: the font travels with the file
        for ext in ("pdf", "svg", "png"):
            assert (rep / f"{stem}.{ext}").read_bytes() == \
                (tmp_path / "again" / f"{stem}.{ext}").read_bytes(), (stem, ext)
    assert b"gpurecon report" in (rep / "fig_r2_gpt2.pdf").read_bytes()   # provenance metadata


@pytest.mark.parametrize("args,needle", [
    (["--format", "png,tiff"],
     "--format must be a comma-separated list of png, pdf, svg, got 'png,tiff'"),
    (["--format", ""], "--format must be"),
    (["--dpi", "0"], "--dpi must be a whole number from 10 to 2400, got 0"),
])
def test_a_bad_format_or_dpi_is_one_error_and_writes_nothing(tmp_path, capsys, args, needle):
    make_run(tmp_path / "runs", "a", subject=1, model="gpt2")
    assert report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "rep"), *args]) == 1
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()


def test_report_names_every_format_it_would_replace(tmp_path):
    make_run(tmp_path / "runs", "a", subject=1, model="gpt2")
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "fig_r2_gpt2.svg").write_text("mine")
    with pytest.raises(ReportError, match="fig_r2_gpt2.svg"):
        make_report(dirs=[tmp_path / "runs"], out=tmp_path / "rep", progress=False,
                    formats="png,svg")
    make_report(dirs=[tmp_path / "runs"], out=tmp_path / "rep", progress=False, formats="pdf")
    assert (tmp_path / "rep" / "fig_r2_gpt2.svg").read_text() == "mine"


def test_footer_is_legible_and_fits_the_figure(study):
    """Kills: a 6 pt footer, an unwrapped footer running off the page."""
    root, _ = study
    for spec in specs_by_stem([root / "multi"]).values():
        fig = drawn(spec)
        footer = one(fig, "provenance_footer")
        assert footer.get_fontsize() >= FOOTER_PT >= 7
        box = footer.get_window_extent()
        assert box.x1 <= fig.bbox.x1 + 1 and box.y0 >= -1, spec.stem
        assert "gpurecon report" in footer.get_text()
        for ax in fig.axes:   # nothing drawn over the footer, nothing off the page
            tight = ax.get_tightbbox()
            assert tight.y0 >= box.y1 - 2, (spec.stem, ax.get_title())
            assert tight.x0 >= -1 and tight.x1 <= fig.bbox.x1 + 1, (spec.stem, ax.get_title())
            assert tight.y1 <= fig.bbox.y1 + 1, (spec.stem, ax.get_title())


def test_a_long_provenance_footer_wraps_inside_the_figure():
    """Many checkpoints and differing settings make the footer longer than the figure is
    wide: it wraps onto more lines, every one inside the page, the plot kept above it."""
    from gpurecon.report.draw import FigureSpec

    prov = ["gpurecon report 0.1.0", "data: real", "device: cuda:0, cuda:1",
            "checkpoint: " + "; ".join(f"model{i}=org/a-rather-long-checkpoint-name-{i}"
                                       for i in range(6))]
    spec = FigureSpec("f", ["x"], [[1]], lambda fig: fig.add_subplot().plot([0, 1]), prov,
                      size=(6.0, 4.0))
    fig = drawn(spec)
    footer = one(fig, "provenance_footer")
    assert footer.get_text().count("\n") >= 2
    assert footer.get_text().replace("\n", " ") == " | ".join(prov)
    box = footer.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y0 >= 0
    assert fig.axes[0].get_tightbbox().y0 >= box.y1 - 2


# ----------------------------------------------------------------------------- figures 2-4


def test_r2_figures_compare_model_mean_with_baseline_mean_side_by_side(study):
    """fig_r2_models: per participant, every model's box on one axis; the black line is the
    MEAN of the trials' R2 (scores_trials.csv), the red one the baseline's mean; n above each
    box; x label; every trial visible and none under the legend. Kills: the median drawn as
    the comparison, models on separate axes, a legend inside the axes over the worst trial."""
    root, runs = study
    specs = specs_by_stem([root / "multi"])
    spec = specs["fig_r2_models"]
    rows = spec.rows
    fig = drawn(spec)
    (ax,) = [a for a in fig.axes if a.get_xlabel()]
    assert ax.get_xlabel() == "participant"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sub-01", "sub-02"]
    for folder in runs:
        s = summary(folder)
        subject, model = s["provenance"]["subject"], s["provenance"]["model"]
        trials = read_table(folder / "scores_trials.csv")
        r2 = np.array([float(t["r2"]) for t in trials])
        base = np.array([float(t["baseline_r2"]) for t in trials])
        mine = [r for r in rows if r[0] == model and r[2] == subject]
        np.testing.assert_array_equal([r[5] for r in mine], r2)   # the CSV is the run's
        assert hline_y(one(fig, f"mean:{subject}:{model}")) == pytest.approx(r2.mean(), abs=1e-12)
        assert np.median(r2) != pytest.approx(r2.mean(), abs=1e-3)   # the check can tell them apart
        assert hline_y(one(fig, f"baseline_mean:{subject}:{model}")) == pytest.approx(base.mean())
        assert one(fig, f"n:{subject}:{model}").get_text() == f"n={len(r2)}"
        pts = one(fig, f"trials:{subject}:{model}").get_offsets()
        np.testing.assert_array_equal(np.sort(pts[:, 1]), np.sort(r2))
    # side by side: within a participant the models' boxes do not overlap
    x = {m: one(fig, f"mean:1:{m}").get_segments()[0][:, 0] for m in ("fasttext", "gpt2")}
    assert x["fasttext"][1] < x["gpt2"][0]
    # nothing hidden: every trial inside the axes and outside the legend
    (legend,) = fig.legends
    lbox, abox = legend.get_window_extent(), ax.get_window_extent()
    for coll in by_gid(fig, "trials:1:gpt2") + by_gid(fig, "trials:2:fasttext"):
        for px, py in ax.transData.transform(coll.get_offsets()):
            assert abox.contains(px, py)
            assert not lbox.contains(px, py)


def test_per_model_r2_figures_share_one_y_range(study):
    root, _ = study
    specs = specs_by_stem([root / "multi"])
    lims = {stem: [a for a in drawn(specs[stem]).axes if a.get_xlabel()][0].get_ylim()
            for stem in ("fig_r2_fasttext", "fig_r2_gpt2", "fig_r2_models")}
    assert len(set(lims.values())) == 1, lims


# ----------------------------------------------------------------------------- figure 5


def _hist(values: list[np.ndarray], edges: np.ndarray) -> np.ndarray:
    return np.mean([np.histogram(v, bins=edges)[0] for v in values], axis=0)


def test_r2_histogram_bins_from_minus_one_with_the_baseline_and_no_underflow_note(tmp_path):
    """No trial below -1: bins still start at -1 (not at the lowest trial), no hatched bin and
    no note; the baseline's counts (scores_trials.csv baseline_r2) beside the model's; one
    panel per model on shared axes, titled with the model's name. Kills: bins from the lowest
    trial, an underflow note always, baseline counts missing, overlaid series."""
    folders = {m: [make_run(tmp_path / "r", f"{m}{s}", subject=s, model=m, seed=s,
                            trial_r2_floor=-0.45) for s in (1, 2)] for m in ("gpt2", "fasttext")}
    spec = specs_by_stem([tmp_path / "r"])["fig_r2_histogram"]
    assert spec.notes == ()
    edges = np.round(np.arange(-10, 11) / 10, 10)
    for model, runs in folders.items():
        rows = [r for r in spec.rows if r[0] == model]
        assert [r[2] for r in rows] == list(edges[:-1]) and rows[-1][3] == 1.0
        for col, key in ((4, "r2"), (5, "baseline_r2")):
            values = [np.array([float(t[key]) for t in read_table(f / "scores_trials.csv")])
                      for f in runs]
            assert min(v.min() for v in values) > -0.5
            np.testing.assert_allclose([r[col] for r in rows], _hist(values, edges))
    fig = drawn(spec)
    panels = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in panels] == ["FastText (n=2 participants)",
                                               "GPT-2 (n=2 participants)"]
    assert panels[0].get_shared_y_axes().joined(panels[0], panels[1])
    assert not by_gid(fig, "underflow_note:gpt2") and "hatched" not in panels[-1].get_xlabel()
    assert panels[-1].get_xlim()[0] == pytest.approx(-1.0)
    # the drawn bars are the CSV's
    bar = one(fig, "baseline:gpt2:-0.3")
    assert bar.get_height() == next(r[5] for r in spec.rows if r[0] == "gpt2" and r[2] == -0.3)
    assert one(fig, "model:gpt2:-0.3").get_x() < bar.get_x()   # side by side


def test_r2_histogram_notes_the_underflow_only_where_there_is_one(tmp_path):
    make_run(tmp_path / "r", "a", subject=1, model="gpt2", trial_r2_floor=-0.45,
             trial_r2={2: -4.0})
    make_run(tmp_path / "r", "b", subject=1, model="fasttext", trial_r2_floor=-0.45)
    spec = specs_by_stem([tmp_path / "r"])["fig_r2_histogram"]
    assert spec.rows[0][2] == -np.inf and len(spec.notes) == 1
    fig = drawn(spec)
    assert "1 (model) and 0 (baseline)" in unwrapped(one(fig, "underflow_note:gpt2"))
    assert not by_gid(fig, "underflow_note:fasttext")
    assert "hatched" in [a for a in fig.axes if a.get_title()][-1].get_xlabel()


def test_figure_labels_are_human_not_file_codes(tmp_path):
    for i, (a, l) in enumerate([(0.1, 0.1), (1.0, 0.1)]):
        make_run(tmp_path / "r", f"{i}", subject=1, model="gpt2", alpha=a, l1_ratio=l, seed=i)
    specs = specs_by_stem([tmp_path / "r"])
    assert "fig_r2_gpt2_a0.1" in specs   # file names keep the code
    fig = drawn(specs["fig_r2_histogram"])
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles == ["GPT-2, alpha 0.1 (n=1 participants)", "GPT-2, alpha 1 (n=1 participants)"]
    assert [r[1] for r in specs["fig_r2_histogram"].rows][:1] == ["GPT-2, alpha 0.1"]
    text = " ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))
    assert "gpt2_a" not in text


# ----------------------------------------------------------------------------- null figure


def test_null_figure_draws_the_95th_percentile_and_names_a_degenerate_null(tmp_path):
    """Kills: no 95th percentile line (or one not at summary.json's value), a degenerate null
    (every permutation = the baseline) drawn without a word, the note on a healthy null."""
    make_run(tmp_path / "r", "ok", subject=1, model="gpt2")
    flat = make_run(tmp_path / "r", "flat", subject=2, model="gpt2", equals_baseline=True)
    base = summary(flat)["scores"]["baseline_pcc_across_electrodes"]
    # rewrite the null as a degenerate run has it: every permutation scores the baseline
    _rewrite_npz(flat, null_pcc_across_electrodes=np.full(40, base),
                 null_r2_across_electrodes=np.full(40, 0.0))
    specs = specs_by_stem([tmp_path / "r"])
    for folder, subject, degenerate in (("ok", 1, False), ("flat", 2, True)):
        s = summary(tmp_path / "r" / folder)["scores"]
        fig = drawn(specs[f"fig_null_sub-0{subject}_gpt2"])
        line = one(fig, "null95")
        assert line.get_xdata()[0] == s["null_pcc_across_electrodes_95"]
        assert "95th percentile" in line.get_label()
        assert one(fig, "observed").get_xdata()[0] == s["pcc_across_electrodes"]
        notes = by_gid(fig, "degenerate_null")
        assert bool(notes) == degenerate
        with warnings.catch_warnings():   # the note never collapses the layout
            warnings.simplefilter("error")
            fig.savefig(io.BytesIO(), format="pdf")
        if degenerate:
            assert "all 40 permutations score the baseline" in unwrapped(notes[0])


def _rewrite_npz(folder: Path, **arrays) -> None:
    """Replace arrays of a finished run's predictions.npz, keeping done.json's listing true."""
    old, prov = outputs.read_npz(folder / "predictions.npz")
    outputs.write_npz(folder / "predictions.npz", provenance=prov, **{**old, **arrays})
    done = json.loads((folder / "done.json").read_text())
    done["files"]["predictions.npz"] = (folder / "predictions.npz").stat().st_size
    (folder / "done.json").write_text(json.dumps(done))


# ----------------------------------------------------------------------------- electrode maps


def test_electrode_map_is_centred_on_chance_with_orientation_labels(study):
    """The colour norm's centre is chance: the mean over electrodes of the null mean
    (scores_electrodes.csv null_pcc_mean), not 0; L/R on the axial panel, A/P on both.
    Kills: a scale centred on 0, a symmetric vmin/vmax around 0, missing orientation."""
    root, runs = study
    spec = specs_by_stem([root / "multi"])["fig_electrodes_sub-01_gpt2"]
    el = read_table(runs[1] / "scores_electrodes.csv")
    chance = float(np.mean([float(r["null_pcc_mean"]) for r in el]))
    assert abs(chance) > 0.1
    fig = drawn(spec)
    maps = [c for ax in fig.axes for c in ax.collections if c.get_array() is not None]
    assert maps and all(c.norm.vcenter == pytest.approx(chance) for c in maps)
    pcc = np.array([float(r["pcc"]) for r in el])
    np.testing.assert_allclose(maps[0].get_array(), pcc)
    axial, sagittal = [a for a in fig.axes if a.get_title() in ("axial (x-y)", "sagittal (y-z)")]
    letters = {ax.get_title(): {t.get_text(): t.get_position() for t in ax.texts
                                if str(t.get_gid()).startswith("orient:")}
               for ax in (axial, sagittal)}
    assert letters["axial (x-y)"]["L"][0] < letters["axial (x-y)"]["R"][0]   # +x is right
    assert letters["axial (x-y)"]["P"][1] < letters["axial (x-y)"]["A"][1]   # +y is anterior
    assert letters["sagittal (y-z)"]["P"][0] < letters["sagittal (y-z)"]["A"][0]
    assert letters["sagittal (y-z)"]["I"][1] < letters["sagittal (y-z)"]["S"][1]
    assert not by_gid(fig, "equals_baseline")


def test_chance_level_falls_back_to_the_baseline_then_zero():
    nan = np.full(3, np.nan)
    assert chance_level({"null_pcc_mean": np.array([-0.2, 0.0, 0.1]),
                         "baseline_pcc": np.full(3, -1.0)}) == (pytest.approx(-0.1 / 3),
                                                                 "permutation null mean")
    assert chance_level({"null_pcc_mean": nan, "baseline_pcc": np.full(3, -1.0)})[0] == -1.0
    assert chance_level({"null_pcc_mean": nan, "baseline_pcc": nan})[0] == 0.0


def test_a_model_equal_to_its_baseline_says_so_in_figures_and_tables(tmp_path):
    """pred == baseline in predictions.npz (all coefficients zero): the electrode map and the
    activity figure say so; Table 1 flags it and gives no p (not p = 1.000). Kills: a
    detection from the scores alone, a p printed for it, a flag on a model that differs."""
    make_run(tmp_path / "r", "zero", subject=1, model="fasttext", equals_baseline=True)
    make_run(tmp_path / "r", "real", subject=1, model="gpt2")
    specs = specs_by_stem([tmp_path / "r"])
    for stem in ("fig_electrodes_sub-01_fasttext", "fig_activity_sub-01_fasttext"):
        assert "every coefficient is zero" in unwrapped(one(drawn(specs[stem]), "equals_baseline"))
    for stem in ("fig_electrodes_sub-01_gpt2", "fig_activity_sub-01_gpt2"):
        assert not by_gid(drawn(specs[stem]), "equals_baseline")
    make_report(dirs=[tmp_path / "r"], out=tmp_path / "rep", figures=False, progress=False)
    rows = {r["model"]: r for r in read_table(tmp_path / "rep" / "table1.csv")}
    assert rows["fasttext"]["flags"] == "synthetic;untrained;equals_baseline"
    assert rows["gpt2"]["flags"] == "synthetic;untrained"
    md = (tmp_path / "rep" / "table1.md").read_text()
    cells = {c[0]: c for c in _md_rows(md) if c[1] == "sub-01"}
    assert cells["FastText"][7] == cells["FastText"][10] == "= baseline"
    assert re.fullmatch(r"0\.\d{3}", cells["GPT-2"][7])
    assert "model = baseline" in cells["FastText"][11]
    assert "model = baseline" not in cells["GPT-2"][11]
    assert "- model = baseline: every coefficient is zero" in md
    assert "= baseline" in (tmp_path / "rep" / "table1.tex").read_text()


# ----------------------------------------------------------------------------- heat maps


def test_heat_map_diverges_around_the_baseline_and_marks_the_nested_score(tmp_path):
    """Kills: a sequential scale (the best cell bright though every cell is below the
    baseline), a centre other than grid.csv's baseline, a grid run's honest (nested) score not
    on the scale, the in-hindsight warning missing."""
    grid = make_run(tmp_path / "g", "g", subject=2, model="gpt2", alpha=[0.1, 1.0],
                    l1_ratio=[0.1, 0.5, 0.9], seed=7)
    for i, (a, l) in enumerate([(0.1, 0.5), (1.0, 0.5)]):
        make_run(tmp_path / "s", f"{i}", subject=1, model="gpt2", alpha=a, l1_ratio=l, seed=1)
    specs = specs_by_stem([tmp_path / "g", tmp_path / "s"])
    src = read_table(grid / "grid.csv")
    s = summary(grid)["scores"]
    fig = drawn(specs["fig_grid_sub-02_gpt2"])
    assert "IN HINDSIGHT" in fig.get_suptitle()
    images = {ax.get_title().split()[0]: ax.collections[0] for ax in fig.axes
              if ax.get_title().startswith(("PCC", "R2"))}
    for name, col, key in (("PCC", "pcc", "pcc_across_electrodes"),
                           ("R2", "r2", "r2_across_electrodes")):
        im = images[name]
        assert im.get_cmap().name == "RdBu_r"
        assert im.norm.vcenter == pytest.approx(np.mean([float(r[f"baseline_{col}"]) for r in src]))
        np.testing.assert_allclose(np.sort(im.get_array().compressed()),
                                   np.sort([float(r[col]) for r in src]))
        line = one(fig, f"honest:{name}")
        assert line.get_ydata()[0] == s[key]
        assert im.norm.vmin <= s[key] <= im.norm.vmax     # on the scale, visible
    # the nested selection's most frequent choice boxed (the fixture: the last grid point)
    counts = {(c["alpha"], c["l1_ratio"]): c["count"]
              for c in summary(grid)["nested"]["choice_counts"]}
    top = max(counts, key=counts.get)
    box = one(fig, "nested_choice:PCC")
    pcc_ax = [ax for ax in fig.axes if ax.get_title().startswith("PCC")][0]
    l1s = [float(t.get_text()) for t in pcc_ax.get_xticklabels()]
    alphas = [float(t.get_text()) for t in pcc_ax.get_yticklabels()]
    cx, cy = box.get_x() + 0.5, box.get_y() + 0.5
    assert (alphas[round(cy)], l1s[round(cx)]) == top
    row = next(r for r in specs["fig_grid_sub-02_gpt2"].rows if (r[0], r[1]) == top)
    assert row[7] == pytest.approx(counts[top] / sum(counts.values()))
    sweep = drawn(specs["fig_grid_sub-01_gpt2"])
    assert not by_gid(sweep, "nested_choice:PCC")
    assert not by_gid(sweep, "honest:PCC") and "IN HINDSIGHT" in sweep.get_suptitle()
    base = summary(tmp_path / "s" / "0")["scores"]["baseline_pcc_across_electrodes"]
    assert [ax.collections[0].norm.vcenter for ax in sweep.axes
            if ax.get_title().startswith("PCC")][0] == pytest.approx(base)


# ----------------------------------------------------------------------------- activity


def test_recreated_activity_shows_the_best_median_and_worst_trials_profiles(study):
    """fig_activity: for the trial-mean target, the electrode profile of the trials with the
    best, median and worst PCC (scores_trials.csv): true (Y), predicted and baseline rows of
    predictions.npz, drawn as such. Kills: other trials, another row of pred, the baseline
    drawn as the prediction."""
    root, runs = study
    folder = runs[3]
    spec = specs_by_stem([root / "multi"])["fig_activity_sub-02_gpt2"]
    pcc = np.array([float(t["pcc"]) for t in read_table(folder / "scores_trials.csv")])
    order = np.argsort(-pcc, kind="stable")
    want = {"best": order[0], "median": order[(len(order) - 1) // 2], "worst": order[-1]}
    arrays, _ = outputs.read_npz(folder / "predictions.npz")
    fig = drawn(spec)
    for name, trial in want.items():
        rows = [r for r in spec.rows if r[0] == name]
        assert {r[1] for r in rows} == {int(trial)}
        for col, key in ((5, "Y"), (6, "pred"), (7, "baseline")):
            np.testing.assert_array_equal([r[col] for r in rows], arrays[key][trial])
        for gid, key in (("true", "Y"), ("predicted", "pred"), ("baseline", "baseline")):
            np.testing.assert_array_equal(one(fig, f"{gid}:{name}").get_ydata(), arrays[key][trial])
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles[0].startswith(f"best trial: {want['best']} ")
    assert f"PCC {pcc.max():.2f}" in titles[0]


# ----------------------------------------------------------------------------- Table 1


def _md_rows(md: str) -> list[list[str]]:
    return [[c.strip() for c in ln.split("|")[1:-1]] for ln in md.splitlines()
            if ln.startswith("|") and not ln.startswith("|---")]


def test_table1_csv_reads_with_pandas_defaults_and_keeps_provenance_in_a_sidecar(study, tmp_path):
    """Kills: `#` provenance lines above the header (pandas would read them as the header),
    a spread that is not the SD over trials of scores_trials.csv."""
    pd = pytest.importorskip("pandas")
    root, runs = study
    make_report(dirs=[root / "multi"], out=tmp_path / "rep", figures=False, progress=False)
    csv_path = tmp_path / "rep" / "table1.csv"
    frame = pd.read_csv(csv_path)
    assert list(frame.columns[:3]) == ["subject", "model", "checkpoint"] and len(frame) == 4
    assert csv_path.read_bytes().isascii()   # Excel's default code page reads it as is
    for folder in runs:
        s = summary(folder)
        row = frame[frame["run"] == str(folder)].iloc[0]
        trials = read_table(folder / "scores_trials.csv")
        for col in ("pcc", "r2"):
            assert row[col] == s["scores"][f"{col}_across_electrodes"]
            assert row[f"{col}_sd_trials"] == pytest.approx(
                np.std([float(t[col]) for t in trials], ddof=1), rel=1e-12)
        assert row["null_pcc_95"] == s["scores"]["null_pcc_across_electrodes_95"]
        assert row["n_trials"] == s["n_trials"] and row["n_electrodes"] == s["n_targets"]
    side = sidecar(csv_path)
    assert side["file"] == "table1.csv" and side["provenance"][0].startswith("gpurecon report")
    assert "pcc_sd_trials" in side["columns"]


def test_table1_csv_with_non_ascii_text_opens_in_excel_and_pandas(tmp_path):
    """A folder name with a non-ASCII letter: UTF-8 with a BOM (Excel's default reads a BOM-less
    file in the local code page), which pandas' defaults skip. Kills: no BOM, a BOM that
    pandas reads into the first column name."""
    pd = pytest.importorskip("pandas")
    folder = make_run(tmp_path / "runs", "zoë", subject=1, model="gpt2")
    make_report(dirs=[tmp_path / "runs"], out=tmp_path / "rep", figures=False, progress=False)
    raw = (tmp_path / "rep" / "table1.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfsubject,")
    frame = pd.read_csv(tmp_path / "rep" / "table1.csv")
    assert frame.columns[0] == "subject" and frame["run"][0] == str(folder)


def test_table1_tex_is_a_well_formed_booktabs_table_with_the_runs_values(study, tmp_path):
    """Kills: unescaped `_` / `%` / `&` (a label such as fasttext_a0.1 or a path), rows with
    another number of cells than the column spec, a missing booktabs rule, values not the runs'."""
    root, runs = study
    make_report(dirs=[root / "multi"], out=tmp_path / "rep", figures=False, progress=False)
    tex = (tmp_path / "rep" / "table1.tex").read_text()
    check_latex_table(tex)
    s = summary(runs[3])["scores"]
    trials = read_table(runs[3] / "scores_trials.csv")
    sd = np.std([float(t["pcc"]) for t in trials], ddof=1)
    assert f"GPT-2 & sub-02 & 24 & 6 & ${s['pcc_across_electrodes']:.3f} \\pm {sd:.3f}$" in tex
    row = next(ln for ln in tex.splitlines() if ln.startswith("GPT-2 & sub-02 &"))
    assert row.endswith(r"& a,b \\")   # flags as footnote letters, never inside a number
    assert r"\textsuperscript{a}synthetic data:" in tex
    assert r"\textsuperscript{b}untrained model" in tex


def test_table1_tex_escapes_labels_and_paths(tmp_path):
    for name, subject, root in (("a", 1, "/data/my_site%1"), ("b", 2, "/data/other#2")):
        make_run(tmp_path / "r", name, subject=subject, model="gpt2",
                 settings={"data.root": root}, seed=subject)
    make_report(dirs=[tmp_path / "r"], out=tmp_path / "rep", figures=False, progress=False)
    tex = (tmp_path / "rep" / "table1.tex").read_text()
    check_latex_table(tex)
    assert r"/data/my\_site\%1" in tex and r"/data/other\#2" in tex


def check_latex_table(tex: str) -> None:
    """A structural LaTeX parse (no TeX installation needed): environments nested and closed,
    braces balanced, math delimiters paired per line, no unescaped special outside math,
    booktabs rules in order, every row of the tabular with as many cells as its spec."""
    body = "\n".join(ln for ln in tex.splitlines() if not ln.startswith("%"))
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", body):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, env
    assert not stack
    plain = re.sub(r"\\[{}$&%#_]", "", body)
    assert plain.count("{") == plain.count("}")
    for line in plain.splitlines():
        assert line.count("$") % 2 == 0, line
        outside = re.sub(r"\$[^$]*\$", "", line)
        assert not re.search(r"[_%#^~]", outside), line
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", body).group(1)
    rules = [m.group(0) for m in re.finditer(r"\\(toprule|midrule|bottomrule)", body)]
    assert rules[0] == r"\toprule" and rules[-1] == r"\bottomrule" and r"\midrule" in rules
    assert r"\usepackage{booktabs}" in tex
    table = body.split(r"\toprule", 1)[1].split(r"\bottomrule", 1)[0]
    rows = [ln for ln in table.splitlines() if ln.rstrip().endswith(r"\\")
            and r"\multicolumn" not in ln]
    assert len(rows) >= 2
    for row in rows:
        assert len(re.findall(r"(?<!\\)&", row)) == len(spec) - 1, row
