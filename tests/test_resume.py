"""Crash safety and resume: a run SIGKILLed at any stage and rerun gives the outputs of a clean
run with nothing left behind; resume=true skips complete runs; concurrent runs share one cold
cache. Kill points come from the test hook GPURECON_TEST_KILL_AT=<stage> (experiment.run)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from _cli_helpers import TINY, cli_env, finished_run, result_files, run_cli, same_outputs, temp_leftovers
from gpurecon.outputs import is_complete


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    return finished_run(TINY, tmp_path_factory.mktemp("clean"))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["generation", "high_gamma", "solver", "writing", "publish"])
def test_killed_run_reruns_to_the_clean_outputs_with_no_leftovers(stage, clean_run, tmp_path):
    killed, out = run_cli(TINY, tmp_path, env_extra={"GPURECON_TEST_KILL_AT": stage})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not is_complete(out)
    if stage == "publish":   # killed after the first file was renamed into place
        assert 0 < len(result_files(out)) < 7 and not (out / "done.json").exists()
    else:
        assert result_files(out) == []
    if stage == "writing":   # the dead process's staging folder is there until the rerun
        assert temp_leftovers(out)
    rerun, out = run_cli([*TINY, "resume=true"], tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert is_complete(out)
    same_outputs(out, clean_run)
    assert temp_leftovers(tmp_path) == []   # staging folders and cache temps of the dead run
    log = rerun.stdout + rerun.stderr
    if stage in ("solver", "writing", "publish"):   # only what is missing is redone
        assert "targets loaded from the cache" in log and "generating" not in log


@pytest.mark.slow
def test_resume_skips_a_complete_run_and_reruns_without_it(clean_run, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(clean_run, out)
    done = (out / "done.json").stat().st_mtime_ns
    proc, _ = run_cli([*TINY, "resume=true"], tmp_path)
    assert proc.returncode == 0
    assert "skipping" in proc.stdout + proc.stderr
    assert (out / "done.json").stat().st_mtime_ns == done
    assert not (tmp_path / "cache").exists()   # nothing loaded or computed
    # the same folder asked for other settings (a sweep changed between reruns): refused, the
    # finished run kept; overwrite=true replaces it
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc, _ = run_cli([*TINY, "resume=true", "model.noise=0.5"], tmp_path)
    assert proc.returncode == 1 and "other settings" in proc.stderr and "model.noise" in proc.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    proc, _ = run_cli([*TINY, "resume=true", "model.noise=0.5", "overwrite=true"], tmp_path)
    assert proc.returncode == 0 and "other settings" in proc.stdout + proc.stderr
    assert json.loads((out / "summary.json").read_text())["config"]["model"]["noise"] == 0.5
    shutil.rmtree(out)
    shutil.copytree(clean_run, out)
    # a complete set whose file was damaged is not complete: resume redoes it
    (out / "predictions.npz").write_bytes(b"truncated")
    assert not is_complete(out)
    proc, _ = run_cli([*TINY, "resume=true"], tmp_path)
    assert proc.returncode == 0 and is_complete(out)
    same_outputs(out, clean_run)


@pytest.mark.slow
def test_multirun_resume_skips_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "model.noise=0,0.5", f"hydra.sweep.dir={sweep}", "resume=true"]
    first, _ = run_cli(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.rglob("done.json"))
    assert len(jobs) == 2 and all(is_complete(j) for j in jobs)
    assert "job 1 of 2" in first.stdout + first.stderr and "job 2 of 2" in first.stdout + first.stderr
    (jobs[1] / "done.json").unlink()   # as if job 2 had been killed while publishing
    second, _ = run_cli(args, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert log.count("skipping this run") == 1 and all(is_complete(j) for j in jobs)


def test_two_concurrent_runs_on_one_cold_cache(clean_run, tmp_path):
    env = cli_env(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "gpurecon", *TINY, f"hydra.run.dir={tmp_path / name}"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for name in ("a", "b")]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    for p, _, err in results:
        assert p.returncode == 0, err[-3000:]
    for name in ("a", "b"):
        same_outputs(tmp_path / name, clean_run)
    assert temp_leftovers(tmp_path) == []
    assert len(list((tmp_path / "cache" / "synthetic").glob("*/dataset_description.json"))) == 1


def test_synthetic_writer_that_loses_the_rename_race_does_not_fail(tmp_path, monkeypatch):
    """Another writer renames its copy into place between this writer's check and its rename
    (was: `OSError: Directory not empty`): the later writer merges into it instead."""
    import os
    import shutil

    from gpurecon.data import load_subject, synthetic, write_synthetic_dataset

    kw = dict(subjects=[2], seed=3, n_channels=2, n_words=8, audio_sfreq=8000.0)
    winner = write_synthetic_dataset(tmp_path / "winner", **kw)
    target = tmp_path / "ds"
    real_replace = os.replace
    raced = []

    def replace(src, dst):
        if str(dst) == str(target.resolve()) and not raced:
            shutil.copytree(winner, target)   # the other writer wins the race
            raced.append(True)
        return real_replace(src, dst)

    monkeypatch.setattr(synthetic.os, "replace", replace)
    root = write_synthetic_dataset(target, **kw)
    assert raced and root == target.resolve()
    a, b = load_subject(root, 2), load_subject(winner, 2)
    assert (a.seeg == b.seeg).all()
    assert temp_leftovers(tmp_path) == []
