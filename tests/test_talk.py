"""A run that talks (issue 18, section 4): what the verdict means, heartbeat lines when no bar
is drawn, a sweep's closing summary, ``--help``, gensim's INFO lines, summary.json's layout."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _cli_helpers import SMALL, cli_env, run_cli

from gpurecon.run_summary import (MOVED, above_chance, expected_note, layout, read_summary,
                                  verdict_line, write_summary)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
FIRST_KEYS = ["verdict", "above_chance", "expected", "scores"]


# --------------------------------------------------------------------------- --help

def _help(*args: str, tmp_path: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "gpurecon", *args, "--help"], cwd=tmp_path,
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _section(text: str, title: str) -> str:
    start = text.index(f"== {title}")
    end = text.find("\n== ", start + 1)
    return text[start:end if end >= 0 else None]


def test_help_describes_gpurecon_lists_every_option_and_no_schema(tmp_path):
    text = _help(tmp_path=tmp_path)
    assert text.startswith("gpurecon:") and "powered by Hydra" not in text
    assert "_schema" not in text and "high-gamma" in text and "python -m gpurecon.report" in text
    groups = _section(text, "Config groups")
    for group in ("data", "target", "model", "solver"):
        # every option file of conf/<group>/, and only those, on the group's line
        files = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        (line,) = [ln for ln in groups.splitlines() if ln.startswith(f"{group}: ")]
        assert line == f"{group}: {', '.join(files)}"
        for name in files:   # each with its description: the file's first comment line
            first = next(ln for ln in (CONF / group / f"{name}.yaml").read_text().splitlines()
                         if ln.startswith("#")).lstrip("#").strip().rstrip(":,")
            assert any(ln.split()[0] == name and first in ln for ln in groups.splitlines()
                       if ln.startswith("    ")), (group, name)
    launchers = _section(text, "Launchers")
    named = [ln.split()[0] for ln in launchers.splitlines() if ln.startswith("    ")]
    assert named == ["basic", *sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml"))]
    assert "local_pool" in named and "slurm" in named
    assert "subject: 1" in _section(text, "Config (")   # the composed config is still shown
    assert "planted (selected)" in groups and "basic (selected)" in launchers


def test_help_marks_the_options_the_command_line_selects(tmp_path):
    text = _help("model=gpt2", "hydra/launcher=slurm", tmp_path=tmp_path)
    assert "gpt2 (selected)" in text and "planted (selected)" not in text
    assert "slurm (selected)" in text and "basic (selected)" not in text
    assert "checkpoint: gpt2" in _section(text, "Config (")


# --------------------------------------------------------------------------- heartbeat

def test_heartbeat_line_says_done_of_total_and_the_eta_at_the_pace_so_far():
    from gpurecon.progress import format_seconds, heartbeat_line

    # 250 of 1000 in 100 s: 750 left at 2.5/s -> 300 s
    assert heartbeat_line("solver (targets)", 250, 1000, 100.0) == \
        "solver (targets): 250 of 1,000 done (25.0%), 1 min 40 s elapsed, ETA 5 min 00 s"
    assert heartbeat_line("solver (targets)", 0, 12827, 61.0) == \
        "solver (targets): 0 of 12,827 done (0.0%), 1 min 01 s elapsed, ETA unknown (no part finished yet)"
    assert heartbeat_line("high gamma", 0, None, 5.0) == \
        "high gamma: running, 5 s elapsed (no progress reported yet)"
    assert [format_seconds(s) for s in (0, 59.4, 60, 3599, 3600, 7325)] == \
        ["0 s", "59 s", "1 min 00 s", "59 min 59 s", "1 h 00 min", "2 h 02 min"]


def _wait_for(predicate, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit   # a deadline for a loaded machine, not a timing claim
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_heartbeat_logs_progress_while_no_bar_is_drawn_and_stops_with_the_stage(monkeypatch, caplog):
    from gpurecon.progress import stage_bar

    monkeypatch.setenv("GPURECON_HEARTBEAT", "0.05")
    caplog.set_level(logging.INFO, logger="gpurecon")
    beats = lambda: [r.getMessage() for r in caplog.records if r.getMessage().startswith("demo:")]  # noqa: E731
    with stage_bar("demo", enabled=True) as progress:   # pytest's stderr is not a terminal
        progress(0, 40)
        _wait_for(lambda: len(beats()) >= 1)
        progress(10, 40)
        _wait_for(lambda: any(b.startswith("demo: 10 of 40 done (25.0%)") for b in beats()))
    seen = beats()
    assert seen and seen[0].startswith("demo: 0 of 40 done") and "ETA unknown" in seen[0]
    assert any(b.startswith("demo: 10 of 40 done (25.0%)") and ", ETA " in b for b in seen)
    n = len(seen)
    time.sleep(0.3)
    assert len(beats()) == n   # the stage is over: no more lines

    monkeypatch.setenv("GPURECON_HEARTBEAT", "0")   # 0: no heartbeat at all
    with stage_bar("quiet", enabled=False) as progress:
        progress(1, 2)
        time.sleep(0.2)
    assert not [r for r in caplog.records if r.getMessage().startswith("quiet")]


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_a_bad_heartbeat_interval_is_one_error_naming_the_variable(monkeypatch, value):
    from gpurecon.errors import ConfigError
    from gpurecon.progress import stage_bar

    monkeypatch.setenv("GPURECON_HEARTBEAT", value)
    with pytest.raises(ConfigError, match=r"\$GPURECON_HEARTBEAT must be a number of seconds >= 0"):
        with stage_bar("demo", enabled=False):
            pass


@pytest.mark.parametrize("multirun", [False, True])
def test_a_bad_heartbeat_variable_stops_the_cli_before_anything_is_made(tmp_path, multirun):
    args = ["-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"] if multirun else SMALL
    proc, out = run_cli(args, tmp_path, env_extra={"GPURECON_HEARTBEAT": "soon"})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "gpurecon: error: $GPURECON_HEARTBEAT must be a number of seconds >= 0 (0: no heartbeat "
        "lines), got 'soon'"]
    assert not out.exists() and not (tmp_path / "sweep").exists() and not (tmp_path / "cache").exists()


def test_a_run_logged_to_a_file_gets_solver_heartbeats_with_done_of_total(tmp_path):
    n_channels, n_perm = 6, 39
    proc, out = run_cli([*SMALL, f"solver.n_permutations={n_perm}"], tmp_path,
                        env_extra={"GPURECON_HEARTBEAT": "0.02"})   # stderr: a pipe
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stderr   # no bar
    total = n_channels * (1 + n_perm)   # every target, and its permuted copies
    log = (out / "__main__.log").read_text()
    # the app's heap setting is applied and said (gpurecon.allocator)
    assert " - memory: freed blocks stay in the heap for reuse" in log
    beats = [ln.split(" - ", 1)[1] for ln in log.splitlines() if " - solver (targets): " in ln]
    assert beats, log[-3000:]
    counted = [b for b in beats if " done (" in b]
    assert counted and all(f" of {total:,} done (" in b for b in counted)
    assert all(0 <= int(b.split(": ")[1].split(" of ")[0].replace(",", "")) <= total for b in counted)
    assert all(" elapsed, ETA " in b for b in counted)


# --------------------------------------------------------------------------- the verdict

def test_verdict_says_what_each_kind_of_run_is_expected_to_give():
    untrained_synthetic = {"untrained": True, "checkpoint": "tiny", "data": "synthetic", "model": "gpt2"}
    line = verdict_line("PCC ...: NOT above chance", untrained_synthetic)
    assert line.startswith("PCC ...: NOT above chance. Expected: NOT above chance")
    assert "UNTRAINED" in line and "model=planted" in line
    real = expected_note({"untrained": True, "checkpoint": "tiny", "data": "real", "model": "gpt2"})
    assert "UNTRAINED" in real and "Expected: NOT above chance" not in real
    assert expected_note({"model": "planted", "data": "synthetic"}).startswith("expected: above chance")
    trained = {"untrained": False, "checkpoint": "gpt2", "data": "real", "model": "gpt2"}
    assert expected_note(trained) is None and verdict_line("V", trained) == "V"


def test_above_chance_is_the_verdicts_comparison():
    assert above_chance({"pcc_across_electrodes": 0.7, "null_pcc_across_electrodes_95": 0.6,
                         "baseline_pcc_across_electrodes": 0.9}) is True   # the null decides
    assert above_chance({"pcc_across_electrodes": 0.6, "null_pcc_across_electrodes_95": 0.6}) is False
    assert above_chance({"pcc_across_electrodes": 0.7, "baseline_pcc_across_electrodes": 0.6}) is True
    assert above_chance({"pcc_across_electrodes": 0.5, "baseline_pcc_across_electrodes": 0.6}) is False
    assert above_chance({"pcc_across_electrodes": None}) is None


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
    """The quick start's model (untrained tiny GPT-2), small."""
    tmp = tmp_path_factory.mktemp("talk")
    proc, out = run_cli([*SMALL, "model=gpt2", "model.checkpoint=tiny", "solver.n_permutations=19"], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


def test_the_quick_starts_verdict_says_an_untrained_model_is_expected_at_chance(untrained_run):
    proc, out = untrained_run
    last = proc.stdout.strip().splitlines()[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] in last
    assert last.endswith(verdict_line(summary["verdict"], summary["provenance"]))
    assert "Expected: NOT above chance" in last and "UNTRAINED" in last
    assert summary["expected"] == expected_note(summary["provenance"])
    # above_chance is the verdict's own reading
    assert summary["above_chance"] is (": above chance" in summary["verdict"])


# --------------------------------------------------------------------------- summary.json

def test_summary_json_starts_with_the_verdict_and_scores_and_keeps_lists_in_the_npz(untrained_run):
    _, out = untrained_run
    raw = json.loads((out / "summary.json").read_text())
    assert list(raw)[:4] == FIRST_KEYS
    text = (out / "summary.json").read_text()
    assert text.index('"verdict"') < text.index('"scores"') < text.index('"provenance"')
    # the per-channel and per-trial lists: a pointer in summary.json, the values in the npz
    good = raw["target"]["good"]
    assert good == {"npz": "targets.npz", "key": "target.good", "length": good["length"]}
    n_tokens = raw["embedding"]["n_tokens"]
    assert n_tokens == {"npz": "embeddings.npz", "key": "embedding.n_tokens", "length": raw["n_trials"]}
    with np.load(out / "targets.npz") as f:
        mask = f["target.good"]
        assert mask.dtype == bool and mask.sum() == f["Y"].shape[1] == raw["n_targets"]
        assert len(mask) == good["length"]
    with np.load(out / "embeddings.npz") as f:
        tokens = f["embedding.n_tokens"]
        assert len(tokens) == len(f["words"]) and (tokens >= 1).all()
    # no flat list of more than 16 numbers (20 trials here) is left outside the config: a new
    # per-trial list must join run_summary.MOVED
    def lists(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                if path or k not in ("config", "score_definitions", "provenance"):
                    yield from lists(v, f"{path}{k}.")
        elif isinstance(node, list) and len(node) > 16 and all(isinstance(v, (int, float)) for v in node):
            yield path
    assert list(lists(raw)) == []
    # read_summary gives the older layout back
    full = read_summary(out)
    assert full["target"]["good"] == mask.tolist() and full["embedding"]["n_tokens"] == tokens.tolist()


def test_layout_moves_the_listed_lists_and_keeps_settings_and_others(tmp_path):
    from gpurecon.outputs import read_npz, write_npz

    summary = {
        "provenance": {"model": "gpt2", "data": "real", "untrained": False},
        "scores": {"pcc_across_electrodes": 0.5, "baseline_pcc_across_electrodes": 0.4},
        "target": {"kind": "trial_mean", "good": [True, False, True]},
        "embedding": {"n_tokens": [1, 2]},
        "solver": {"grid": [[1.0, 0.5]], "n_features_per_fold": [3, 4, 5],
                   "long_new_list": list(range(17)), "short": [1.0, 2.0]},
        "nested": {"alpha_per_fold": [0.1, 1.0], "l1_ratio_per_fold": [0.5, 0.5]},
        "config": {"solver": {"alpha": list(range(20))}, "signal": {"stops": [[98, 102]]}},
        "verdict": "V",
    }
    body, moved = layout(summary)
    assert list(body)[:3] == ["verdict", "above_chance", "scores"] and "expected" not in body
    assert body["above_chance"] is True
    assert set(moved) == {"targets.npz", "embeddings.npz", "predictions.npz"}
    assert moved["predictions.npz"] == {"solver.n_features_per_fold": [3, 4, 5],
                                        "nested.alpha_per_fold": [0.1, 1.0],
                                        "nested.l1_ratio_per_fold": [0.5, 0.5]}
    assert set(MOVED) <= {k for arrays in moved.values() for k in arrays}
    assert body["solver"]["short"] == [1.0, 2.0] and body["solver"]["grid"] == [[1.0, 0.5]]
    assert body["solver"]["long_new_list"] == list(range(17))   # only the listed ones move
    assert body["config"] == summary["config"]   # the user's settings stay as given
    assert summary["target"]["good"] == [True, False, True]   # the input is not changed

    for name in ("targets.npz", "embeddings.npz"):   # predictions.npz: made if missing
        write_npz(tmp_path / name, provenance={"run": name}, Y=np.arange(3.0))
    write_summary(tmp_path, summary)
    arrays, prov = read_npz(tmp_path / "targets.npz")
    assert prov == {"run": "targets.npz"} and arrays["Y"].tolist() == [0.0, 1.0, 2.0]
    assert arrays["target.good"].tolist() == [True, False, True]
    back = read_summary(tmp_path)
    for key in ("target", "embedding", "solver", "nested"):
        assert back[key] == summary[key], key


# --------------------------------------------------------------------------- sweeps

@pytest.mark.slow
def test_a_sweep_ends_with_its_summary_and_the_report_command(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *SMALL, "solver.alpha=-1,0.1", "solver.n_permutations=19",
            f"hydra.sweep.dir={sweep}", "resume=true"]
    first, _ = run_cli(args, tmp_path)
    assert first.returncode == 1   # one job failed
    lines = [ln for ln in first.stdout.splitlines() if ln.startswith("gpurecon sweep: ")]
    assert lines[0] == ("gpurecon sweep: 2 job(s): 1 finished, 0 skipped (already complete, "
                        "resume=true), 1 failed")
    finished = sweep / "1_solver.alpha=0.1"
    s = json.loads((finished / "summary.json").read_text())["scores"]
    k = int(s["pcc_across_electrodes"] > s["null_pcc_across_electrodes_95"])
    assert lines[1].startswith(f"gpurecon sweep: above chance in {k} of 1 run(s)")
    assert lines[2] == f"gpurecon sweep: folder {sweep}"
    report = lines[3].split(": ", 2)[2]
    assert report == f"python -m gpurecon.report {sweep} --out {sweep / 'report'}"
    # the command runs as printed and finds the sweep's run
    proc = subprocess.run([sys.executable, *shlex.split(report)[1:], "--no-figures"], cwd=tmp_path,
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(finished) in (sweep / "report" / "table1.csv").read_text()

    # a job folder of an earlier sweep into this folder is not this sweep's
    old = sweep / "7_old"
    old.mkdir()
    (old / "__main__.log").write_text("an earlier sweep\n")
    os.utime(old / "__main__.log", (1e9, 1e9))
    second, _ = run_cli(args, tmp_path)
    lines = [ln for ln in second.stdout.splitlines() if ln.startswith("gpurecon sweep: ")]
    assert lines[0] == ("gpurecon sweep: 2 job(s): 0 finished, 1 skipped (already complete, "
                        "resume=true), 1 failed")
    assert lines[1].startswith(f"gpurecon sweep: above chance in {k} of 1 run(s)")


# --------------------------------------------------------------------------- gensim

def test_fasttext_jobs_log_no_gensim_info_lines(tmp_path):
    # a fresh cache: the tiny FastText model is trained here, gensim's chattiest moment
    proc, out = run_cli([*SMALL, "model=fasttext", "model.checkpoint=tiny", "solver.n_permutations=0"],
                        tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "building the offline UNTRAINED model" in proc.stdout   # gensim did run
    for text in (proc.stdout, proc.stderr, (out / "__main__.log").read_text()):
        assert "[gensim" not in text
