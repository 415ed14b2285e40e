"""Atomic writing of run outputs (temp file in the same folder, then ``os.replace``).

A reader never sees a half-written file, and a run that fails writes nothing partial.

A run's outputs are a complete set or absent: the run writes them into a staging folder inside
its run folder (:func:`staged_outputs`), then renames each file into place and writes
``done.json`` LAST, listing every file and its size. :func:`is_complete` is the test readers
use (``resume=true``, the report): a folder without ``done.json``, or whose files no longer
match it, holds no finished run.

Every temp name carries the program's own marker, the host and the process id
(``.NAME.tmp-gpurecon-HOST-PID-XXXX``), so the temp files and folders of a process that died
(SIGKILL, power loss) are recognised and removed by :func:`remove_stale_temps` once that process
is gone; a user's file merely named like a temp file (``.notes.tmp-vm-999999-abcd``) lacks the
marker and is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)

DONE = "done.json"
# Every file a run publishes (results.write_outputs; grid.csv with a grid, the layer files with
# several layers), and the folder of
# Hydra's record of the run's settings, which the app writes itself (gpurecon.run_folder).
RESULT_FILES = frozenset({"summary.json", "targets.npz", "embeddings.npz", "predictions.npz",
                          "scores_trials.csv", "scores_electrodes.csv", "grid.csv",
                          "layers.csv", "predictions_layers.npz"})   # the last two: model.layer=all / a list
HYDRA_RECORD = ".hydra"
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
# The marker in every temp name this program makes: only such names are ever cleaned up.
_MARK = "tmp-gpurecon"
_TEMP = re.compile(rf"^\..+\.{_MARK}-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def temp_prefix(name: str) -> str:
    """The prefix of this process's temp files / folders for ``name`` (mkstemp adds a suffix)."""
    return f".{name}.{_MARK}-{_HOST}-{os.getpid()}-"


def is_temp_name(name: str) -> bool:
    """True for a temp file / folder name made by :func:`temp_prefix` (any host, any process)."""
    return _TEMP.match(name) is not None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's live process
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove temp files/folders in ``folder`` left by dead processes of this host.

    Only names made by :func:`temp_prefix` (for ``name`` when given) are considered, and only
    when their process is gone: a live writer (this or another process) is never disturbed.
    Returns what was removed.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if name is not None and not entry.name.startswith(f".{name}.{_MARK}-"):
            continue
        if m is None or m["host"] != _HOST or int(m["pid"]) == os.getpid() or _pid_alive(int(m["pid"])):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except FileNotFoundError:
            pass   # another process cleaned it first
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# errno of a full disk or an exhausted quota
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as err:
        if err.errno in DISK_FULL and not err.filename:   # say where it was writing
            raise OSError(err.errno, os.strerror(err.errno), str(path)) from err
        raise
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else str(value)
    return value


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def write_npz(path: str | os.PathLike, provenance: dict | None = None, **arrays: Any) -> Path:
    """Write arrays (numpy or torch) to ``.npz``; ``provenance`` is stored as JSON text."""
    buf = io.BytesIO()
    payload = {k: _to_numpy(v) for k, v in arrays.items()}
    if provenance is not None:
        payload["provenance_json"] = np.array(json.dumps(_jsonable(provenance)))
    np.savez(buf, **payload)
    return write_bytes(path, buf.getvalue())


def read_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict | None]:
    """Read what :func:`write_npz` wrote: (arrays, provenance or None)."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "provenance_json"}
        prov = json.loads(str(f["provenance_json"])) if "provenance_json" in f.files else None
    return arrays, prov


def write_csv(path: str | os.PathLike, header: list[str], rows: list[list[Any]],
              comments: list[str] | None = None) -> Path:
    """Write a CSV; ``comments`` become leading ``# `` lines (provenance)."""
    out = io.StringIO()
    for line in comments or []:
        out.write(f"# {line}\n")
    out.write(",".join(header) + "\n")
    for row in rows:
        out.write(",".join(_csv_cell(v) for v in row) + "\n")
    return write_text(path, out.getvalue())


def _csv_cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    s = str(v)
    return f'"{s}"' if ("," in s or '"' in s) else s


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v)


# ----------------------------------------------------------------------------- complete sets

def make_staging(run_dir: str | os.PathLike) -> Path:
    """Create this process's staging folder inside ``run_dir`` (made if missing).

    Raises OSError (PermissionError) when ``run_dir`` cannot be written: callers create the
    staging folder before any work so that an unwritable output folder fails at once.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(run_dir)
    return Path(tempfile.mkdtemp(prefix=temp_prefix("outputs"), dir=run_dir))


def discard_staging(staging: str | os.PathLike) -> None:
    """Remove a staging folder and everything in it (the files of a run that failed)."""
    shutil.rmtree(staging, ignore_errors=True)


def publish(staging: str | os.PathLike, run_dir: str | os.PathLike, *,
            provenance: dict | None = None, on_file=None) -> list[str]:
    """Move every file of ``staging`` into ``run_dir``, then write ``done.json`` last.

    A previous ``done.json`` is removed first, so at no moment does a marker vouch for a mix
    of old and new files; the result files it listed that this run does not make again (a
    stale ``grid.csv``) are removed, nothing else. ``done.json`` lists each file and its size, plus ``provenance``
    (device, data, checkpoint...). ``on_file(name)`` is called after each rename (a test hook).
    Returns the published names (relative paths).
    """
    staging, run_dir = Path(staging), Path(run_dir)
    # Hydra's record of the settings goes after the results it describes, before done.json
    files = sorted((p.relative_to(staging) for p in staging.rglob("*") if p.is_file()),
                   key=lambda rel: (rel.parts[0] == HYDRA_RECORD, rel))
    previous = _listed(run_dir)
    with contextlib.suppress(FileNotFoundError):
        (run_dir / DONE).unlink()
    listing = {}
    for rel in files:
        target = run_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        listing[str(rel)] = (staging / rel).stat().st_size
        os.replace(staging / rel, target)
        if on_file is not None:
            on_file(str(rel))
    for name in previous - set(listing):   # the replaced run's files this run did not make again
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()
    write_json(run_dir / DONE, {"files": listing, "provenance": provenance or {}})
    shutil.rmtree(staging, ignore_errors=True)
    return [str(r) for r in files]


def _listed(run_dir: Path) -> set[str]:
    """The files the previous ``done.json`` in ``run_dir`` lists that this program makes (result
    files, Hydra's record): those a new run into the folder replaces. Anything else, listed or
    not, is never removed."""
    try:
        names = json.loads((run_dir / DONE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {n for n in names if isinstance(n, str) and (
        n in RESULT_FILES or (Path(n).parts[:1] == (HYDRA_RECORD,) and ".." not in Path(n).parts))}


def is_complete(run_dir: str | os.PathLike) -> bool:
    """True when ``run_dir`` holds a finished run: ``done.json`` and every file it lists,
    with the listed size."""
    run_dir = Path(run_dir)
    try:
        listing = json.loads((run_dir / DONE).read_text())["files"]
        return all((run_dir / name).stat().st_size == size for name, size in listing.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
