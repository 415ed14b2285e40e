"""Issue 17 section 4: every user error is one clear message (the setting, file or folder named,
with the value received), exit status 1, the error on stderr, no partial output files;
SIGTERM behaves like Ctrl-C; a run that would not finish is refused at start-up; a run waiting
on a cache entry says for whom and gives up after ``cache_lock_timeout``; the report refuses
scores that are not numbers and files it cannot read."""

from __future__ import annotations

import errno
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _cli_helpers import SMALL, TINY, cli_env, result_files, run_cli, temp_leftovers


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from gpurecon.__main__ import _conf_dir

    with initialize_config_dir(config_dir=_conf_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _one_error_on_stderr(proc, out, *needles):
    """Exit 1, no traceback, exactly one [ERROR] line, on stderr (not stdout), naming every
    needle; no result or temp files in the run folder."""
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "[ERROR]" not in proc.stdout   # not printed twice
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert result_files(out) == [] and temp_leftovers(out) == []
    return errors[0]


# (overrides, what the one error line must name: the setting and the value received)
CLI_ERRORS = [
    (["target=frames", "target.frame_shift=10"], ["target.frame_shift", "10.0", "frame_length"]),
    (["target=frames", "target.frame_length=1"], ["target.frame_length=1.0", "target.frame_shift"]),
    (["model=gpt2", "model.checkpoint="], ["model.checkpoint", "''", "'tiny'"]),
    (["model=fasttext", "model.checkpoint="], ["model.checkpoint", "''"]),
    (["model=wav2vec2", "model.checkpoint="], ["model.checkpoint", "''"]),
    (["data.seed=-1"], ["data.seed", ">= 0", "-1"]),
    (["seed=-1", "solver.n_permutations=5"], ["seed", ">= 0", "-1"]),
    (["data.n_words=1"], ["data.n_words=1", "at least 3"]),
    (["data.n_words=2"], ["data.n_words=2", "at least 3"]),
    (["solver.n_permutations=1000000000"], ["solver.n_permutations=1000000000",
                                            "solver.max_problems"]),
    (["cache_lock_timeout=0"], ["cache_lock_timeout", "0"]),
    (["solver.max_problems=0"], ["solver.max_problems", "0"]),
]


@pytest.mark.parametrize("overrides,needles", CLI_ERRORS, ids=[" ".join(c[0]) for c in CLI_ERRORS])
def test_user_error_is_one_line_on_stderr_naming_the_setting_and_value(overrides, needles, tmp_path):
    proc, out = run_cli([*TINY, "progress=false", *overrides], tmp_path)
    _one_error_on_stderr(proc, out, *needles)
    # the run's log keeps it too
    assert needles[0] in (out / "__main__.log").read_text()


@pytest.mark.parametrize("override,key", [
    ("model.seed=-1", "model.seed"), ("cache_lock_timeout=-1.0", "cache_lock_timeout"),
    ("solver.max_problems=0.5", "solver.max_problems"), ("data.seed=-3", "data.seed"),
])
def test_the_new_ranges_name_the_key_and_the_value(override, key):
    from gpurecon.config import validate_config
    from gpurecon.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        validate_config(_compose(["device=cpu", override]))
    message = str(err.value)
    assert message.startswith(f"{key} must be ") and message.endswith(f"got {override.split('=')[1]}")


def test_a_huge_permutation_count_is_refused_before_the_data_is_generated(tmp_path):
    proc, out = run_cli([*TINY, "solver.n_permutations=1000000000"], tmp_path)
    line = _one_error_on_stderr(proc, out, "solver.max_problems=")
    # 3 electrodes x 30 LOO folds x 1 grid point x (1 + 1e9) fits
    assert f"about {3 * 30 * (1 + 10**9):.3g} ElasticNet problems" in line
    assert not (tmp_path / "cache" / "synthetic").exists()   # refused at start-up


def test_solver_cost_estimate_and_its_explicit_override():
    """problems = targets x folds x grid x (1 + permutations [+ 5 inner folds with a grid]),
    refused above solver.max_problems; raising it (or null) lets the run through."""
    from omegaconf import OmegaConf

    from gpurecon.config import check_solver_cost, validate_config
    from gpurecon.errors import ConfigError

    cfg = _compose(["device=cpu", "solver.n_permutations=1000", "solver.max_problems=1e6"])
    validate_config(cfg)
    assert check_solver_cost(cfg, n_trials=10, n_targets=20, device_type="cpu") == 20 * 10 * 1001
    with pytest.raises(ConfigError, match=r"solver.n_permutations=1000 .*about 2\.4e\+06 .*"
                                          r"solver.max_problems=1e\+06.*solver.max_problems="):
        check_solver_cost(cfg, n_trials=12, n_targets=200, device_type="cpu")
    cfg.solver.max_problems = 3e6     # the explicit override
    assert check_solver_cost(cfg, n_trials=12, n_targets=200, device_type="cpu") == 200 * 12 * 1001
    cfg.solver.max_problems = None    # no limit
    assert check_solver_cost(cfg, n_trials=100, n_targets=127, device_type="cpu") == 127 * 100 * 1001
    grid = OmegaConf.merge(cfg, {"solver": {"alpha": [0.1, 1.0], "l1_ratio": [0.5, 0.9, 1.0],
                                            "cv": "kfold", "n_splits": 4, "n_permutations": 0}})
    assert check_solver_cost(grid, n_trials=40, n_targets=3, device_type="cpu") == 3 * 4 * 6 * (1 + 5)
    auto = OmegaConf.merge(cfg, {"solver": {"n_permutations": "auto"}})
    assert check_solver_cost(auto, n_trials=5, n_targets=2, device_type="cuda") == 2 * 5 * 1001
    # the defaults pass: the study's GPU run (127 electrodes, frames of 1 s, 1000 permutations)
    frames = _compose(["device=cpu", "target=frames"])
    from gpurecon.config import n_frames_for

    n_frames = n_frames_for(frames.target, 1024.0, 1.0)
    assert n_frames == 95   # floor((1024 - 51.2) / 10.24)
    check_solver_cost(frames, n_trials=100, n_targets=127 * n_frames, device_type="cuda")


def test_integer_band_stops_are_valid_and_the_same_as_floats(tmp_path):
    """signal.stops=[[98,102],[148,152]]: accepted; the same targets (one cache entry) as the
    floats."""
    ints, out_i = run_cli([*TINY, "signal.stops=[[98,102],[148,152]]"], tmp_path, name="ints")
    assert ints.returncode == 0, ints.stderr[-3000:]
    floats, out_f = run_cli([*TINY, "signal.stops=[[98.0,102.0],[148.0,152.0]]"], tmp_path,
                            name="floats")
    assert floats.returncode == 0, floats.stderr[-3000:]
    assert "high-gamma targets loaded from the cache" in floats.stdout
    with np.load(out_i / "targets.npz") as a, np.load(out_f / "targets.npz") as b:
        np.testing.assert_array_equal(a["Y"], b["Y"])
    # and a wrong shape or order is still refused, naming the setting
    from gpurecon.config import validate_config
    from gpurecon.errors import ConfigError

    for bad in ("[[102,98]]", "[[98,100,102]]", "[98]", "[[0,5]]"):
        with pytest.raises(ConfigError, match=r"^signal.stops must be"):
            validate_config(_compose(["device=cpu", f"signal.stops={bad}"]))


# ----------------------------------------------------------------------------- all flat
@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    from gpurecon.data import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("ds") / "ibids", subjects=(3,), seed=2,
                                   n_channels=3, n_words=12, audio_sfreq=8000.0)


def test_all_channels_flat_is_one_error_naming_the_files(small_dataset, tmp_path):
    import h5py

    root = shutil.copytree(small_dataset, tmp_path / "flat")
    nwb = root / "sub-03" / "ieeg" / "sub-03_task-wordProduction_ieeg.nwb"
    with h5py.File(nwb, "r+") as f:
        f["acquisition/iEEG/data"][:] = 2.0
    proc, out = run_cli([f"data.root={root}", "subject=3", "device=cpu"], tmp_path)
    _one_error_on_stderr(proc, out, "no channel is left", "3 flat", "ieeg.nwb", "channels.tsv")


# ----------------------------------------------------------------------------- SIGTERM
def _term_line(proc_stderr: str) -> list[str]:
    return [line for line in proc_stderr.splitlines() if "terminated (SIGTERM)" in line]


def test_sigterm_at_a_known_point_is_like_ctrl_c(tmp_path):
    proc, out = run_cli([*SMALL, "data.n_words=30"], tmp_path,
                        env_extra={"GPURECON_TEST_KILL_AT": "solver", "GPURECON_TEST_KILL_SIGNAL": "TERM"})
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(_term_line(proc.stderr)) == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert result_files(out) == [] and temp_leftovers(tmp_path) == []


def test_sigterm_from_outside_while_working_is_one_line_and_no_staging(tmp_path):
    """`timeout`, SLURM or `docker stop`: SIGTERM once the run has its staging folder and is
    computing (from the log); exit 143, one line on stderr, nothing partial left anywhere."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gpurecon", *SMALL, "data.n_words=60", "solver.n_permutations=300",
           "progress=false", f"hydra.run.dir={out}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        log = out / "__main__.log"
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and "permutation null" in log.read_text() and temp_leftovers(out):
                break   # the solver stage has started; the staging folder exists
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be terminated"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stderr
    assert len(_term_line(stderr)) == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert result_files(out) == [] and temp_leftovers(tmp_path) == []
    assert not (out / ".gpurecon.lock").exists()   # the folder lock is released too


# ----------------------------------------------------------------------------- cache
_LOCK_HOLDER = """
import sys, time
from gpurecon.cache import Cache
with Cache(sys.argv[1]).lock("targets", "k"):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold_lock(tmp_path, seconds):
    holder = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, str(tmp_path / "c"), str(seconds)],
                              stdout=subprocess.PIPE, text=True, env=cli_env(tmp_path))
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_waiting_on_a_cache_lock_names_the_holder_and_times_out(tmp_path, caplog):
    from gpurecon.cache import Cache
    from gpurecon.errors import CacheError

    holder = _hold_lock(tmp_path, 600)
    try:
        cache = Cache(tmp_path / "c", lock_timeout=0.5)
        caplog.set_level("INFO", logger="gpurecon.cache")
        entered = []
        with pytest.raises(CacheError) as err:
            with cache.lock("targets", "k"):
                entered.append(True)
        assert not entered
        message = str(err.value)
        assert f"process {holder.pid} on " in message and "cache_lock_timeout" in message
        assert "targets/k" in message and str(tmp_path / "c") in message
        waits = [r.getMessage() for r in caplog.records if "waiting for cache entry" in r.getMessage()]
        assert len(waits) == 1 and f"process {holder.pid} on " in waits[0]
    finally:
        holder.kill()
        holder.wait()


_ENTRY_HOLDER = """
import sys, time
from gpurecon.cache import Cache
with Cache(sys.argv[1]).lock("synthetic", sys.argv[2]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_run_waiting_on_a_live_holder_says_whom_and_stops_after_the_timeout(tmp_path):
    """End to end: another process holds the lock of the synthetic dataset this run needs;
    the run logs the holder's pid and gives up after cache_lock_timeout with one error."""
    from gpurecon.cache import Cache
    from gpurecon.data.source import resolve_dataset

    cfg = _compose([*TINY, f"cache_dir={tmp_path / 'cache'}"])
    entry = resolve_dataset(cfg.data, cfg.subject, Cache(cfg.cache_dir)).root.name
    holder = subprocess.Popen([sys.executable, "-c", _ENTRY_HOLDER, str(tmp_path / "cache"), entry],
                              stdout=subprocess.PIPE, text=True, env=cli_env(tmp_path))
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc, out = run_cli([*TINY, "cache_lock_timeout=1"], tmp_path, timeout=120)   # not for ever
        line = _one_error_on_stderr(proc, out, f"process {holder.pid} on ", "cache_lock_timeout",
                                    f"synthetic/{entry}")
        assert "waited 1 s" in line
        waits = [ln for ln in proc.stdout.splitlines() if "waiting for cache entry" in ln]
        assert len(waits) == 1 and f"process {holder.pid} on " in waits[0]
    finally:
        holder.kill()
        holder.wait()


def test_a_waiting_run_goes_on_once_the_holder_is_done(tmp_path, caplog):
    from gpurecon.cache import Cache

    holder = _hold_lock(tmp_path, 1.0)
    try:
        caplog.set_level("INFO", logger="gpurecon.cache")
        with Cache(tmp_path / "c", lock_timeout=120).lock("targets", "k"):
            pass
        assert any("lock released after" in r.getMessage() for r in caplog.records)
    finally:
        holder.kill()
        holder.wait()


def test_a_cache_entry_that_is_a_folder_is_one_error_and_left_alone(tmp_path):
    from gpurecon.cache import Cache
    from gpurecon.errors import CacheError

    cache = Cache(tmp_path / "c")
    entry = cache.path("targets", "k")
    entry.mkdir(parents=True)
    (entry / "mine.txt").write_text("mine")
    computed = []
    with pytest.raises(CacheError, match=rf"cache entry {entry} is a folder .*cache_dir="):
        cache.get_or_compute("targets", "k", lambda: computed.append(1) or ({"a": np.zeros(2)}, None))
    assert not computed and (entry / "mine.txt").read_text() == "mine"


@pytest.mark.parametrize("in_the_way", ["kind folder is a file", "lock is a folder"])
def test_something_in_the_way_of_a_cache_lock_is_one_error_and_left_alone(in_the_way, tmp_path):
    from gpurecon.cache import Cache
    from gpurecon.errors import CacheError

    cache = Cache(tmp_path / "c")
    if in_the_way == "kind folder is a file":
        blocker = tmp_path / "c" / "targets"
        blocker.parent.mkdir()
        blocker.write_text("mine")
    else:
        blocker = tmp_path / "c" / "targets" / "k.lock"
        blocker.mkdir(parents=True)
    with pytest.raises(CacheError, match=r"cache entry lock .*k\.lock cannot be made: .*cache_dir="):
        cache.get_or_compute("targets", "k", lambda: ({"a": np.zeros(2)}, None))
    assert blocker.exists() and (blocker.is_dir() or blocker.read_text() == "mine")


def _enospc_under(monkeypatch, folder: Path):
    """Every write of a file under ``folder`` fails as on a full disk (errno 28)."""
    real = Path.write_bytes

    def full(self, data):
        if Path(self).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)


@pytest.mark.parametrize("full", ["cache", "run folder"])
def test_a_full_disk_names_the_folder_that_is_full(full, tmp_path, monkeypatch):
    from gpurecon import experiment
    from gpurecon.errors import StorageError

    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    cfg = _compose(["device=cpu", "data.n_channels=2", "data.n_words=12", "progress=false",
                    f"cache_dir={cache_dir}"])
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _enospc_under(monkeypatch, cache_dir if full == "cache" else out)
    with pytest.raises(StorageError) as err:
        experiment.run(cfg, out)
    message = str(err.value)
    assert "errno 28" in message
    if full == "cache":
        assert f"the cache folder {cache_dir} (cache_dir)" in message
    else:
        assert f"the run folder {out} (hydra.run.dir)" in message
    assert result_files(out) == ["notes.txt"] and temp_leftovers(out) == []
    assert temp_leftovers(cache_dir) == []


# ----------------------------------------------------------------------------- report
def _rewrite(run: Path, name: str, data: bytes) -> None:
    """Replace a file of a finished run and keep done.json's listing true (so the report
    takes the run as finished and must read the file)."""
    (run / name).write_bytes(data)
    done = json.loads((run / "done.json").read_text())
    done["files"][name] = len(data)
    (run / "done.json").write_text(json.dumps(done))


def _report_fails(capsys, tmp_path, *needles, figures=False):
    from gpurecon.report.__main__ import main as report_main

    args = [str(tmp_path / "runs"), "--out", str(tmp_path / "rep"), "--no-progress"]
    assert report_main(args + ([] if figures else ["--no-figures"])) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("gpurecon.report: error: ")
    for needle in needles:
        assert needle in captured.err, captured.err
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("value", [float("nan"), "abc", None, [0.5], True])
@pytest.mark.parametrize("key", ["pcc_across_electrodes", "baseline_r2_across_electrodes"])
def test_report_refuses_a_score_that_is_not_a_number(value, key, tmp_path, capsys):
    from _report_fixtures import make_run

    run = make_run(tmp_path / "runs", "a", subject=1, model="gpt2")
    summary = json.loads((run / "summary.json").read_text())
    summary["scores"][key] = value
    _rewrite(run, "summary.json", json.dumps(summary).encode())
    _report_fails(capsys, tmp_path, str(run), f"scores.{key}", repr(value))


def test_report_refuses_text_in_an_optional_score_but_takes_null(tmp_path, capsys):
    from _report_fixtures import make_run
    from gpurecon.report import find_runs

    run = make_run(tmp_path / "runs", "a", subject=1, model="gpt2")
    summary = json.loads((run / "summary.json").read_text())
    summary["scores"]["pcc_per_electrode_mean"] = None
    summary["scores"]["r2_across_electrodes"] = "-inf"     # how runs store an infinity
    _rewrite(run, "summary.json", json.dumps(summary).encode())
    (found,), _ = find_runs([tmp_path / "runs"])
    assert np.isnan(found.score("pcc_per_electrode_mean", required=False))
    assert found.score("r2_across_electrodes") == -np.inf
    summary["scores"]["pcc_per_electrode_mean"] = "abc"
    _rewrite(run, "summary.json", json.dumps(summary).encode())
    _report_fails(capsys, tmp_path, str(run), "scores.pcc_per_electrode_mean", "'abc'")


def test_report_on_a_non_utf8_csv_is_one_error_naming_the_file(tmp_path, capsys):
    from _report_fixtures import make_run

    run = make_run(tmp_path / "runs", "a", subject=1, model="gpt2")
    text = (run / "scores_trials.csv").read_bytes()
    _rewrite(run, "scores_trials.csv", text.replace(b"trial", b"tr\xffial", 1))
    _report_fails(capsys, tmp_path, str(run / "scores_trials.csv"), "UTF-8", figures=True)


@pytest.mark.parametrize("damage", ["zeroed", "truncated"])
def test_report_on_a_damaged_predictions_npz_is_one_error_naming_the_file(damage, tmp_path, capsys):
    from _report_fixtures import make_run

    run = make_run(tmp_path / "runs", "a", subject=1, model="gpt2")
    data = (run / "predictions.npz").read_bytes()
    broken = bytes(len(data)) if damage == "zeroed" else data[: len(data) // 2]
    _rewrite(run, "predictions.npz", broken)
    _report_fails(capsys, tmp_path, str(run / "predictions.npz"), "cannot be read", figures=True)


def test_the_new_limits_do_not_make_a_run_another_run(tmp_path):
    """cache_lock_timeout and solver.max_problems only refuse or stop a run, never change its
    results: a finished run with other values of them is the same run (resume, the folder
    check); a result setting still differs."""
    from gpurecon.run_folder import differences, settings

    base = _compose(["device=cpu"])
    limits = _compose(["device=cpu", "cache_lock_timeout=5", "solver.max_problems=1e12"])
    assert differences(settings(base), settings(limits)) == []
    other = _compose(["device=cpu", "solver.max_problems=1e12", "solver.n_permutations=7"])
    assert [d.split(":")[0] for d in differences(settings(base), settings(other))] == \
        ["solver.n_permutations"]


def test_resume_takes_a_finished_run_made_with_other_limits(tmp_path):
    first, out = run_cli(TINY, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again, _ = run_cli([*TINY, "resume=true", "solver.max_problems=1e12", "cache_lock_timeout=5"],
                       tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already holds this run's complete outputs" in again.stdout
