"""The run folder is the user's until proven the run's (issue 17, section 2): a run never
overwrites or deletes what it did not create; a folder holding the user's files or a run of
other settings is refused before any work unless overwrite=true; one run per folder at a time;
Hydra's record (.hydra/) stays with the finished run it describes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _cli_helpers import TINY, cli_env, finished_run, run_cli
from gpurecon.outputs import _HOST, is_complete

FAST = [*TINY, "solver.n_permutations=0", "progress=false"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _refusal(proc, folder: Path, *needles: str) -> str:
    """The run failed with exactly one error line naming the folder, overwrite=true and the
    needles, and no traceback."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1, text[-3000:]
    for needle in (str(folder), "overwrite=true", *needles):
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return finished_run(FAST, tmp_path_factory.mktemp("finished"))


def _users_folder(folder: Path) -> dict[str, bytes]:
    """A folder of the user's: files named like gpurecon's outputs and record, notes, and files
    named like temp files of this host and a dead process (only the marker is missing)."""
    dead = _dead_pid()
    files = {"summary.json": b'{"mine": 1}\n', "targets.npz": b"my arrays",
             ".hydra/config.yaml": b"lr: 0.1\n", "notes.txt": b"notes\n",
             f".notes.tmp-vm-{dead}-abcd": b"kept 1", f".notes.tmp-{_HOST}-{dead}-abcd": b"kept 2",
             f"sub/.x.tmp-{_HOST}-{dead}-q": b"kept 3"}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


def test_folder_with_the_users_files_is_refused_and_left_byte_for_byte(tmp_path):
    mine = tmp_path / "mine"
    before = _users_folder(mine)
    proc, _ = run_cli([*FAST, f"hydra.run.dir={mine}"], tmp_path)
    _refusal(proc, mine, "did not make", "notes.txt")
    assert snapshot(mine) == before   # nothing replaced, removed, or added (no log, no lock)
    assert not (tmp_path / "cache").exists()   # refused before any work


def test_only_the_users_results_named_files_are_still_refused(tmp_path):
    """summary.json alone (no run record) is not taken for an unfinished run of this program."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text("mine")
    proc, _ = run_cli([*FAST, f"hydra.run.dir={mine}"], tmp_path)
    _refusal(proc, mine, "summary.json")
    assert snapshot(mine) == {"summary.json": b"mine"}


@pytest.mark.parametrize("fails", [False, True])
def test_overwrite_keeps_every_file_the_program_does_not_make(tmp_path, fails):
    """overwrite=true: the run's files replace those of the same names; the user's notes and
    temp-named files stay, whether the run succeeds or fails (subject=99: a user error)."""
    mine = tmp_path / "mine"
    before = _users_folder(mine)
    proc, _ = run_cli([*FAST, f"hydra.run.dir={mine}", "overwrite=true",
                       *(["subject=99"] if fails else [])], tmp_path)
    after = snapshot(mine)
    kept = {k: v for k, v in before.items() if k not in ("summary.json", "targets.npz", ".hydra/config.yaml")}
    assert {k: after.get(k) for k in kept} == kept
    if fails:
        assert proc.returncode == 1 and "subject" in proc.stdout + proc.stderr
        assert after["summary.json"] == before["summary.json"]   # no result file published
        assert after["targets.npz"] == before["targets.npz"]
        assert not is_complete(mine)
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert is_complete(mine)
        assert json.loads(after["summary.json"])["config"]["data"]["n_words"] == 30
        assert b"planted" in after[".hydra/config.yaml"]
    assert ".gpurecon.lock" not in after   # released and removed


def test_finished_run_and_other_settings_is_refused_then_overwrite_replaces_it(finished, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = snapshot(out)
    for extra in ([], ["resume=true"]):
        proc, _ = run_cli([*FAST, "model.noise=0.5", *extra], tmp_path)
        _refusal(proc, out, "finished run with other settings", "model.noise")
        assert snapshot(out) == before   # outputs, .hydra and the log byte for byte
    (out / "notes.txt").write_text("mine")
    proc, _ = run_cli([*FAST, "model.noise=0.5", "overwrite=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert is_complete(out) and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "summary.json").read_text())["config"]["model"]["noise"] == 0.5
    assert "noise: 0.5" in (out / ".hydra" / "config.yaml").read_text()
    assert "model.noise=0.5" in (out / ".hydra" / "overrides.yaml").read_text()
    # overwrite is not a setting: the replaced run is the run of these settings now
    done = (out / "done.json").read_bytes()
    proc, _ = run_cli([*FAST, "model.noise=0.5", "resume=true"], tmp_path)
    assert proc.returncode == 0 and "skipping" in proc.stdout + proc.stderr
    assert (out / "done.json").read_bytes() == done


@pytest.mark.parametrize("extra", [[], ["overwrite=true", "model.noise=0.5"]],
                         ids=["same settings", "overwrite, other settings"])
def test_a_failed_run_keeps_the_finished_runs_outputs_and_record(finished, tmp_path, extra):
    """A run into a finished run's folder that is interrupted (Ctrl-C during the solver) leaves
    the finished outputs and their .hydra/ record byte for byte (only the log grows)."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = snapshot(out)
    proc, _ = run_cli([*FAST, *extra], tmp_path,
                      env_extra={"GPURECON_TEST_KILL_AT": "solver", "GPURECON_TEST_KILL_SIGNAL": "INT"})
    assert proc.returncode == 130, proc.stderr[-3000:]
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != "__main__.log"} == {
        k: v for k, v in before.items() if k != "__main__.log"}
    assert is_complete(out)


@pytest.mark.slow
def test_an_unfinished_run_of_other_settings_is_refused_and_of_the_same_settings_finished(tmp_path):
    """A killed run's folder (its record, no results) is resumed by the same settings only."""
    killed, out = run_cli(FAST, tmp_path, env_extra={"GPURECON_TEST_KILL_AT": "solver"})
    assert killed.returncode < 0 and (out / ".hydra" / "config.yaml").is_file()
    before = snapshot(out)
    before.pop(".gpurecon.lock")   # the killed run's stale lock: taken over (and released)
    proc, _ = run_cli([*FAST, "seed=7"], tmp_path)
    _refusal(proc, out, "unfinished run with other settings", "seed")
    assert snapshot(out) == before
    proc, _ = run_cli([*FAST, "resume=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert is_complete(out)


_HOLDER = """
import sys, time
from omegaconf import OmegaConf
from gpurecon.run_folder import claim
claim(sys.argv[1], OmegaConf.create({}))
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_run_into_a_locked_folder_fails_fast_and_a_dead_holders_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE,
                              text=True, env=cli_env(tmp_path))
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        proc, _ = run_cli(FAST, tmp_path)
        line = _refusal_lock(proc, out, holder.pid)
        assert "in use by another gpurecon run" in line
        assert not (tmp_path / "cache").exists()   # refused before any work
        assert time.monotonic() - t0 < 300          # not waiting for the holder
    finally:
        holder.kill()
        holder.wait()
    assert str(holder.pid) in (out / ".gpurecon.lock").read_text()   # a stale lock is left
    proc, _ = run_cli(FAST, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "took over the lock" in proc.stdout + proc.stderr and is_complete(out)
    assert not (out / ".gpurecon.lock").exists()


def _refusal_lock(proc, folder: Path, pid: int) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    lines = [ln for ln in text.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1 and str(folder) in lines[0] and f"pid {pid}" in lines[0], text[-3000:]
    return lines[0]


def test_two_concurrent_runs_into_one_folder_never_both_write(tmp_path):
    """Two real runs started together: either one is refused naming the other's pid, or (the
    first already done) the second reruns the same settings; never two writers at once."""
    out = tmp_path / "out"
    env = cli_env(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "gpurecon", *FAST, f"hydra.run.dir={out}"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes in ([0, 0], [0, 1]), [r[2][-2000:] for r in results]
    for p, _, err in results:
        if p.returncode == 1:
            other = next(q for q, _, _ in results if q is not p)
            assert f"pid {other.pid}" in err and str(out) in err
    assert is_complete(out)
    # the shared log: a run that got in started after the other had finished (no overlap)
    lines = (out / "__main__.log").read_text().splitlines()
    events = [("start" if " | device " in ln else "end") for ln in lines
              if " | device " in ln or "PCC across electrodes" in ln and str(out) in ln]
    assert events == ["start", "end"] * (codes.count(0)), events


def test_a_sweep_job_into_the_users_folder_is_a_recorded_failure(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "0_model.noise=0").mkdir(parents=True)
    (sweep / "0_model.noise=0" / "notes.txt").write_text("mine")
    proc, _ = run_cli(["-m", *FAST, "model.noise=0,0.5", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 1
    failures = json.loads((sweep / "sweep_failures.json").read_text())["failures"]
    assert [f["job"] for f in failures] == [0] and "overwrite=true" in failures[0]["message"]
    assert (sweep / "0_model.noise=0" / "notes.txt").read_text() == "mine"
    assert not (sweep / "0_model.noise=0" / ".hydra").exists()
    assert is_complete(sweep / "1_model.noise=0.5")


@pytest.mark.slow
def test_a_sweep_into_a_folder_holding_the_users_files_is_refused_before_any_job(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "notes.txt").write_text("mine")
    args = ["-m", *FAST, "model.noise=0,0.5", f"hydra.sweep.dir={sweep}"]
    proc, _ = run_cli(args, tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert str(sweep) in proc.stderr and "notes.txt" in proc.stderr and "overwrite=true" in proc.stderr
    assert snapshot(sweep) == {"notes.txt": b"mine"}   # no multirun.yaml, no job folder
    proc, _ = run_cli([*args, "overwrite=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (sweep / "notes.txt").read_text() == "mine" and (sweep / "multirun.yaml").is_file()
    assert len([d for d in sweep.iterdir() if is_complete(d)]) == 2
    proc, _ = run_cli([*args[:-1], f"hydra.sweep.dir={tmp_path / 'again'}"], tmp_path)
    assert proc.returncode == 0
    proc, _ = run_cli([*args[:-1], f"hydra.sweep.dir={tmp_path / 'again'}", "resume=true"], tmp_path)
    assert proc.returncode == 0 and (proc.stdout + proc.stderr).count("skipping this run") == 2


def test_a_lock_released_while_taken_is_taken_on_the_new_file(tmp_path, monkeypatch):
    """The race of a holder that removes the lock file as it releases it: a run that opened the
    old file and locks it after the release must not hold a lock on a removed file (two runs
    would then both hold "the" lock)."""
    from gpurecon import run_folder

    folder = tmp_path / "out"
    folder.mkdir()
    first = run_folder._lock(folder)
    run_folder._HELD[folder.absolute()] = first
    real_open, opened = run_folder.os.open, []

    def open_then_first_releases(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        if not opened:           # the second run opened the old file; the first now releases
            opened.append(fd)
            run_folder.release(folder)
        return fd

    monkeypatch.setattr(run_folder.os, "open", open_then_first_releases)
    second = run_folder._lock(folder)
    monkeypatch.setattr(run_folder.os, "open", real_open)
    assert os.fstat(second.fd).st_ino == os.stat(folder / run_folder.LOCK).st_ino
    with pytest.raises(run_folder.FolderRefused, match=f"pid {os.getpid()}"):
        run_folder._lock(folder)   # a third run: refused, the second holds the lock
    os.close(second.fd)
