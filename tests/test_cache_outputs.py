import os

import numpy as np
import pytest

from gpurecon.cache import Cache, file_digest, make_key
from gpurecon.outputs import atomic_path, read_npz, write_csv, write_json, write_npz


def test_key_follows_file_content_and_parameters(tmp_path):
    f = tmp_path / "a.nwb"
    f.write_bytes(b"abc")
    k1 = make_key(nwb=f, l_freq=70.0)
    assert make_key(nwb=f, l_freq=70.0) == k1
    assert make_key(nwb=f, l_freq=71.0) != k1
    f.write_bytes(b"abd")
    os.utime(f, ns=(1, 1))  # new mtime: the memo must not hide the new content
    assert make_key(nwb=f, l_freq=70.0) != k1
    assert file_digest(f) == file_digest(tmp_path / "a.nwb")


def test_cache_round_trip_and_hit(tmp_path):
    cache = Cache(tmp_path / "c")
    calls = []

    def compute():
        calls.append(1)
        return {"y": np.arange(6.0).reshape(2, 3)}, {"device": "cpu"}

    a, prov, hit = cache.get_or_compute("targets", "k", compute)
    b, prov2, hit2 = cache.get_or_compute("targets", "k", compute)
    assert (hit, hit2) == (False, True) and len(calls) == 1
    np.testing.assert_array_equal(a["y"], b["y"])
    assert prov2 == {"device": "cpu"}


def test_corrupt_cache_entry_is_recomputed(tmp_path):
    cache = Cache(tmp_path)
    cache.path("t", "k").parent.mkdir(parents=True)
    cache.path("t", "k").write_bytes(b"not a zip")
    _, _, hit = cache.get_or_compute("t", "k", lambda: ({"x": np.ones(2)}, None))
    assert not hit and read_npz(cache.path("t", "k"))[0]["x"].tolist() == [1.0, 1.0]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writers_round_trip(tmp_path):
    write_npz(tmp_path / "a.npz", provenance={"data": "synthetic"}, x=np.eye(2))
    arrays, prov = read_npz(tmp_path / "a.npz")
    assert prov == {"data": "synthetic"} and np.array_equal(arrays["x"], np.eye(2))
    write_json(tmp_path / "s.json", {"v": np.float32(0.5), "nan": float("nan")})
    assert '"nan": null' in (tmp_path / "s.json").read_text()
    write_csv(tmp_path / "t.csv", ["a", "b"], [[1, "x,y"]], comments=["device: cpu"])
    assert (tmp_path / "t.csv").read_text() == '# device: cpu\na,b\n1,"x,y"\n'


def test_atomic_files_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "p.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "p.json").stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- crash safety

def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    from gpurecon.outputs import _HOST, remove_stale_temps, temp_prefix

    dead_pid = _dead_pid()
    dead = tmp_path / f".x.npz.tmp-gpurecon-{_HOST}-{dead_pid}-abc123"
    dead.write_bytes(b"half")
    dead_dir = tmp_path / f".ds.tmp-gpurecon-{_HOST}-{dead_pid}-zz_9"
    (dead_dir / "sub").mkdir(parents=True)
    mine = tmp_path / f"{temp_prefix('y.npz')}q1"
    mine.write_bytes(b"being written")
    other_host = tmp_path / f".z.tmp-gpurecon-otherhost-{dead_pid}-abc"
    other_host.write_bytes(b"maybe live on another machine")
    # the user's files named like temp files of this host and a dead process, without the
    # program's marker (issue 17: `.notes.tmp-vm-999999-abcd` was deleted)
    users = [tmp_path / "notes.tmp-1-2", tmp_path / f".notes.tmp-{_HOST}-{dead_pid}-abcd",
             tmp_path / f"notes.tmp-gpurecon-{_HOST}-{dead_pid}-abcd",   # no leading dot
             tmp_path / f".notes.tmp-gpurecon-{_HOST}-{dead_pid}-ab.cd"]  # not a mkstemp suffix
    for user_file in users:
        user_file.write_text("not ours")
    user_dir = tmp_path / f".data.tmp-{_HOST}-{dead_pid}-xyz"
    (user_dir / "inner").mkdir(parents=True)
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([dead, dead_dir])
    assert mine.exists() and other_host.exists() and (user_dir / "inner").is_dir()
    assert all(f.read_text() == "not ours" for f in users)
    assert temp_prefix("y.npz").startswith(".y.npz.tmp-gpurecon-")


def test_publish_replaces_only_files_the_program_makes(tmp_path):
    """A run published over an earlier run removes that run's result files it does not make
    again (a stale grid.csv), never a file of the user's, even one listed in done.json."""
    import json

    from gpurecon.outputs import make_staging, publish

    run = tmp_path / "run"
    staging = make_staging(run)
    for name in ("summary.json", "grid.csv", "notes.txt"):
        (staging / name).write_text(f"old {name}")
    publish(staging, run)
    assert "notes.txt" in json.loads((run / "done.json").read_text())["files"]
    (run / "mine.csv").write_text("user")
    staging = make_staging(run)
    (staging / "summary.json").write_text("new")
    publish(staging, run)
    assert (run / "summary.json").read_text() == "new" and not (run / "grid.csv").exists()
    assert (run / "notes.txt").read_text() == "old notes.txt"
    assert (run / "mine.csv").read_text() == "user"


def test_publish_writes_done_last_and_is_complete_checks_it(tmp_path):
    from gpurecon.outputs import is_complete, make_staging, publish

    run = tmp_path / "run"
    staging = make_staging(run)
    write_json(staging / "summary.json", {"a": 1})
    write_npz(staging / "pred.npz", x=np.ones(3))
    assert not is_complete(run) and not (run / "summary.json").exists()
    seen = []
    publish(staging, run, on_file=lambda name: seen.append((name, (run / "done.json").exists())))
    assert seen == [("pred.npz", False), ("summary.json", False)]   # the marker comes last
    assert is_complete(run) and not staging.exists()
    (run / "pred.npz").write_bytes(b"x")      # a file changed afterwards: not complete
    assert not is_complete(run)
    (run / "done.json").write_text("{not json")
    assert not is_complete(run)


def test_entry_lock_lets_one_process_compute_and_the_others_load(tmp_path):
    """Four processes race for one cold entry: exactly one computes it."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(4) as pool:
        results = list(pool.map(_compute_entry, [tmp_path] * 4))
    assert sorted(hit for hit, _ in results) == [False, True, True, True]
    assert len({value for _, value in results}) == 1
    assert len((tmp_path / "marks").read_text()) == 1   # compute ran once


def _compute_entry(root):
    import time

    cache = Cache(root / "c")

    def compute():
        with open(root / "marks", "a") as f:
            f.write("x")
        time.sleep(0.5)   # long enough for every other process to reach the lock
        return {"y": np.arange(4.0)}, None

    arrays, _, hit = cache.get_or_compute("t", "k", compute)
    return hit, float(arrays["y"].sum())


def test_progress_bars_only_on_a_terminal_and_callbacks_are_called(monkeypatch, capsys):
    import io
    import sys

    from gpurecon.progress import chain, stage_bar

    calls = []
    with stage_bar("demo", enabled=True) as bar:   # pytest's stderr is not a terminal
        chain(bar, lambda d, t: calls.append((d, t)))(1, 2)
    assert calls == [(1, 2)] and capsys.readouterr().err == ""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with stage_bar("demo", enabled=True) as bar:
        bar(1, 4)
        bar(4, 4)
    assert "demo" in term.getvalue() and "4/4" in term.getvalue()
    term2 = Terminal()
    monkeypatch.setattr(sys, "stderr", term2)
    with stage_bar("demo", enabled=False) as bar:   # progress=false
        bar(1, 4)
    assert term2.getvalue() == ""
