"""Running `python -m gpurecon` as a user does (subprocess, CPU, offline) and reading what it left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

# A small synthetic participant: a run takes a few seconds.
SMALL = ["data.n_channels=6", "data.n_words=20", "device=cpu"]
TINY = ["data.n_channels=3", "data.n_words=30", "device=cpu", "model=planted"]
RESULT_FILES = ("summary.json", "targets.npz", "embeddings.npz", "predictions.npz",
                "scores_trials.csv", "scores_electrodes.csv", "done.json")


def cli_env(tmp_path: Path, extra: dict | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GPURECON_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    for key in ("GPURECON_DATA_ROOT", "HYDRA_FULL_ERROR", "GPURECON_TEST_KILL_AT", "GPURECON_OUTPUTS"):
        env.pop(key, None)
    env.update(extra or {})
    return env


def _default_sigint() -> None:
    # The run starts as from a user's shell, with Ctrl-C's default action: a suite started in
    # the background (`pytest &`, nohup) has SIGINT ignored, the runs would inherit that, and
    # the Ctrl-C tests' signal would be dropped (the run then finishes with exit 0).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(args, tmp_path, cwd=None, env_extra=None, name="out", timeout=600):
    out = tmp_path / name
    cmd = [sys.executable, "-m", "gpurecon", *args]
    if "-m" not in args and not any(a.startswith("hydra.run.dir=") for a in args):
        cmd.append(f"hydra.run.dir={out}")
    proc = subprocess.run(cmd, cwd=cwd or tmp_path, env=cli_env(tmp_path, env_extra),
                          capture_output=True, text=True, timeout=timeout, preexec_fn=_default_sigint)
    return proc, out


def finished_run(args, tmp_path):
    """A run of ``args`` into ``tmp_path / "out"`` that must succeed and be complete; its folder."""
    from gpurecon.outputs import is_complete

    proc, out = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert is_complete(out)
    return out


def result_files(folder: Path) -> list[str]:
    """Result files a run left in ``folder``: not Hydra's record, the log, temp files or the
    folder lock (a staging folder or the lock of a killed run is not a result; the next run in
    the folder removes or takes them over)."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.parts[len(folder.parts)] != ".hydra" and p.suffix != ".log"
                  and ".tmp-" not in str(p.relative_to(folder)) and p.name != ".gpurecon.lock")


def temp_leftovers(folder: Path) -> list[str]:
    """Temp files / staging folders anywhere under ``folder``."""
    if not folder.exists():
        return []
    return sorted(str(p) for p in folder.rglob("*") if ".tmp-" in p.name)


def same_outputs(a: Path, b: Path) -> None:
    """The result files of two runs hold identical arrays and scores (timings aside)."""
    import json

    for name in ("targets.npz", "embeddings.npz", "predictions.npz"):
        with np.load(a / name) as fa, np.load(b / name) as fb:
            assert sorted(fa.files) == sorted(fb.files), name
            for key in fa.files:
                if key != "provenance_json":
                    np.testing.assert_array_equal(fa[key], fb[key], err_msg=f"{name}:{key}")
    def body(path):   # the data root (a cache path) differs between caches; all else must not
        return [line for line in path.read_text().splitlines() if not line.startswith("# data_root")]

    for name in ("scores_trials.csv", "scores_electrodes.csv"):
        assert body(a / name) == body(b / name), name
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["scores"] == sb["scores"]
