"""The run folder: whose it is, who is writing it, and Hydra's record of its settings.

A run writes into its folder only when the folder holds nothing but files this program makes
(results, ``done.json``, Hydra's record ``.hydra/``, the log, temp files with the program's
marker, the lock) and those belong to a run of the same settings (git/rsync style). Otherwise
it stops with one message before any work, unless the user says ``overwrite=true``; even then
it replaces only files this program makes, never the user's other files.

============================================  ==========================================
The folder holds                              A run (overwrite=false)
============================================  ==========================================
nothing (or does not exist)                   runs
a finished run of the same settings           skips it with resume=true, else reruns it
an unfinished run of the same settings        runs (finishes it)
a run of other settings, finished or not      refused
any file this program did not make            refused (with resume=true: a finished run
                                              of the same settings is still skipped)
============================================  ==========================================

"Same settings" compares every key of the config but those that do not change the results
(:data:`NOT_RESULTS`) with the finished run's ``summary.json`` (or, for an unfinished run, with
its ``.hydra/config.yaml``).

One run at a time per folder: :func:`claim` takes an exclusive lock (``.gpurecon.lock``,
``fcntl.flock``, holding the owner's pid); a second run into the folder fails at once naming the
holder's pid. The kernel releases the lock of a process that dies, so a stale lock file is
taken over.

Hydra would write ``.hydra/`` into the folder before the app could look at it; the app sets
``hydra.output_subdir: null`` (``conf/config.yaml``) and writes the same three files itself
(:func:`hydra_record`) once the folder is claimed: at once into a folder without a finished
run, and together with the outputs (published last) into a folder whose finished run it
replaces, so a failed or refused run never rewrites a finished run's record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .outputs import DONE, HYDRA_RECORD, RESULT_FILES, is_complete, is_temp_name, write_text

log = logging.getLogger(__name__)

LOCK = ".gpurecon.lock"
# Settings that do not change a run's results: a run made with other values of these is still
# the run asked for.
NOT_RESULTS = ("progress", "resume", "cache_dir", "overwrite", "cache_lock_timeout")
# ...and within a group: a limit that only refuses runs (it never changes a result)
NOT_RESULTS_IN = {"solver": ("max_problems",)}
_HELD: dict[Path, "_Lock"] = {}   # this process's folder locks (claim is re-entrant)


class FolderRefused(ConfigError):
    """The run folder holds what this run must not replace, or another run is writing it."""


# ----------------------------------------------------------------------------- the lock

@dataclass
class _Lock:
    path: Path
    fd: int


def _holder(path: Path) -> str:
    """The pid (and host) written in a lock file, waiting briefly for a holder that has just
    taken the lock to write it."""
    for _ in range(20):
        with contextlib.suppress(OSError):
            text = path.read_text().strip()
            if text:
                return text
        time.sleep(0.01)
    return "unknown"


def _lock(folder: Path) -> _Lock:
    """Take the folder's lock without waiting (raise :class:`FolderRefused` naming the holder)."""
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderRefused(
                f"the output folder {folder} is in use by another gpurecon run (pid "
                f"{_holder(path)}, lock {path}); wait for it to end or choose another folder "
                f"(hydra.run.dir / hydra.sweep.dir)") from None
        # The holder we waited on may have removed the file as it released it: a lock on the
        # removed file would lock nothing, so take the lock of the file now at the path.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        stale = os.read(fd, 200).decode(errors="replace").strip()
        if stale:
            log.info("took over the lock %s of a run that ended without releasing it (%s)",
                     path, stale)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        return _Lock(path, fd)


def release(folder: str | os.PathLike) -> None:
    """Release this process's lock on ``folder`` (if held) and remove the lock file."""
    held = _HELD.pop(Path(folder).absolute(), None)
    if held is None:
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(held.path)   # while still locked: a waiter re-checks the path (see _lock)
    os.close(held.fd)


# ----------------------------------------------------------------------------- the folder

def canonical_layer(value: Any) -> Any:
    """``model.layer`` in one spelling: ``"5"`` (a config file's default, e.g. Wav2Vec2's
    ``"23"``) and ``5`` (the command line) are one layer; ``last``/``all`` lower case; lists
    element-wise."""
    if isinstance(value, (list, tuple)):
        return [canonical_layer(v) for v in value]
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            return int(text)
        except ValueError:
            return text
    return value


def settings(cfg: DictConfig | dict) -> dict:
    """The resolved config as JSON data, without the keys that do not change results
    (``model.layer`` in its canonical spelling)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    data = json.loads(json.dumps(cfg, default=str))
    if not isinstance(data, dict):
        return {}
    out = {k: v for k, v in data.items() if k not in NOT_RESULTS}
    for group, keys in NOT_RESULTS_IN.items():
        if isinstance(out.get(group), dict):
            out[group] = {k: v for k, v in out[group].items() if k not in keys}
    if isinstance(out.get("model"), dict) and "layer" in out["model"]:
        out["model"] = {**out["model"], "layer": canonical_layer(out["model"]["layer"])}
    return out


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (a value, then b's)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += differences(a.get(key, "<unset>"), b.get(key, "<unset>"), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} there, {b!r} asked"]


@dataclass
class FolderState:
    """What a run folder holds."""

    finished: bool = False                      # a complete set (done.json and its files)
    stored: dict | None = None                  # the settings of the run there, if known
    foreign: list[str] = field(default_factory=list)   # names this program does not make
    ours: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.foreign and not self.ours


def _is_ours(name: str, log_name: str) -> bool:
    return (name in RESULT_FILES or name in (DONE, HYDRA_RECORD, LOCK, log_name)
            or is_temp_name(name))


def _stored_settings(folder: Path, finished: bool) -> dict | None:
    """The settings of the run in ``folder``: a finished run's summary.json, else (unfinished)
    its ``.hydra/config.yaml`` resolved now; None when neither is readable."""
    if finished:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stored = json.loads((folder / "summary.json").read_text()).get("config")
            if isinstance(stored, dict):
                return settings(stored)
    with contextlib.suppress(Exception):   # unreadable or unresolvable: settings unknown
        return settings(OmegaConf.load(folder / HYDRA_RECORD / "config.yaml"))
    return None


def inspect(folder: str | os.PathLike, log_name: str = "__main__.log") -> FolderState:
    """Sort the entries of ``folder`` into this program's and the user's."""
    folder = Path(folder)
    state = FolderState()
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return state
    for name in names:
        if name == LOCK:   # this run's own lock (taken before the folder is inspected)
            continue
        (state.ours if _is_ours(name, log_name) else state.foreign).append(name)
    if state.ours:
        state.finished = is_complete(folder)
        state.stored = _stored_settings(folder, state.finished)
    return state


def decide(folder: str | os.PathLike, cfg: DictConfig, *, key: str = "hydra.run.dir",
           log_name: str = "__main__.log") -> str:
    """``"skip"`` (a finished run of these settings, resume=true) or ``"run"``; raise
    :class:`FolderRefused` (one message naming the folder and ``overwrite=true``) when the run
    would replace what is not its own."""
    folder = Path(folder)
    state = inspect(folder, log_name)
    if state.empty:
        return "run"
    asked = settings(cfg)
    diff = None if state.stored is None else differences(state.stored, asked)
    if state.finished and diff == [] and cfg.get("resume", False):
        return "skip"
    if cfg.get("overwrite", False):
        return "run"
    hint = (f"choose an empty or new folder ({key}=DIR), or overwrite=true to replace this "
            f"program's files there (other files are kept)")
    if state.foreign:
        shown = ", ".join(state.foreign[:5]) + (", ..." if len(state.foreign) > 5 else "")
        raise FolderRefused(f"the output folder {folder} holds files gpurecon did not make "
                            f"({shown}); {hint}")
    what = "finished" if state.finished else "unfinished"
    named = [n for n in state.ours if n in RESULT_FILES or n in (DONE, HYDRA_RECORD)]
    if diff is None and named:   # results (or a record) of no run whose settings can be read
        raise FolderRefused(f"the output folder {folder} holds {', '.join(named[:5])} of no run "
                            f"whose settings can be read (summary.json, .hydra/config.yaml); "
                            f"{hint}")
    if diff:
        shown = "; ".join(diff[:3]) + ("; ..." if len(diff) > 3 else "")
        raise FolderRefused(f"the output folder {folder} holds a{'n' * (what[0] == 'u')} "
                            f"{what} run with other settings ({shown}); {hint}")
    return "run"


# What a sweep writes at the top of hydra.sweep.dir (next to its job folders): Hydra's record of
# the sweep, gpurecon.sweep's failure list, its lock and temp file, submitit's folder.
_SWEEP_FILES = ("multirun.yaml", "sweep_failures.json", ".sweep_failures.json.lock", ".submitit")


def check_sweep_folder(folder: str | os.PathLike, overwrite: bool) -> None:
    """Refuse (:class:`FolderRefused`) a sweep folder holding files a sweep does not make.

    Folders are left to the jobs: each job checks its own folder (:func:`claim`). A rerun of
    a sweep into its folder (``resume=true``) finds only a sweep's files there.
    """
    folder = Path(folder)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    foreign = [e.name for e in entries
               if not e.is_dir(follow_symlinks=False) and e.name not in _SWEEP_FILES
               and not is_temp_name(e.name)
               and not (e.name.startswith(".sweep_failures.json.") and e.name.endswith(".tmp"))]
    if foreign and not overwrite:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise FolderRefused(f"the sweep folder {folder} holds files gpurecon did not make "
                            f"({shown}); choose an empty or new folder (hydra.sweep.dir=DIR), "
                            f"or overwrite=true to write the sweep next to them (they are kept)")


def claim(folder: str | os.PathLike, cfg: DictConfig, *, key: str = "hydra.run.dir",
          log_name: str = "__main__.log") -> str:
    """Lock ``folder`` (made if missing) for this process and :func:`decide` on it.

    Re-entrant: a process that holds the lock decides again (the folder may have changed
    only by this process's own log). On refusal the lock is released. Returns ``"run"`` or
    ``"skip"``; the lock is held until :func:`release`.
    """
    folder = Path(folder).absolute()
    if folder not in _HELD:
        folder.mkdir(parents=True, exist_ok=True)
        _HELD[folder] = _lock(folder)
    try:
        return decide(folder, cfg, key=key, log_name=log_name)
    except BaseException:
        release(folder)
        raise


# ----------------------------------------------------------------------------- Hydra's record

def hydra_record(task_cfg: DictConfig) -> dict[str, str]:
    """The three files Hydra writes into ``.hydra/`` (config, hydra, overrides), as text."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.instance().cfg   # {"hydra": ...}, as Hydra saves it
    overrides = OmegaConf.create(list(HydraConfig.get().overrides.task))
    return {f"{HYDRA_RECORD}/config.yaml": OmegaConf.to_yaml(task_cfg),
            f"{HYDRA_RECORD}/hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
            f"{HYDRA_RECORD}/overrides.yaml": OmegaConf.to_yaml(overrides)}


def write_record(folder: str | os.PathLike, record: dict[str, str]) -> None:
    """Write the record's files under ``folder`` (each atomic)."""
    for rel, text in record.items():
        write_text(Path(folder) / rel, text)


@contextlib.contextmanager
def held(folder: str | os.PathLike) -> Iterator[None]:
    """Release the folder's lock when the block ends (however it ends)."""
    try:
        yield
    finally:
        release(folder)
