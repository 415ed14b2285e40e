"""Content-keyed cache of computed arrays, with atomic writes.

A cache entry is one ``.npz`` file named ``<kind>/<key>.npz`` where the key is a hash of
everything that changes the result: the bytes of the input files and every parameter.
A rerun with the same inputs loads the entry instead of recomputing it.

Concurrent runs share a cache safely: each entry has a lock file ``<kind>/<key>.lock``
(``fcntl.flock``, released by the kernel when its process dies), so one process computes an
entry while the others wait and then load it; entries are written atomically; and the temp
files of dead processes are removed (:meth:`Cache.remove_stale`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .errors import CacheError
from .outputs import DISK_FULL, read_npz, remove_stale_temps, write_npz

log = logging.getLogger(__name__)

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


# how often a process waiting for a cache entry's lock tries again
_LOCK_POLL_S = 0.2


def _lock_holder(path: Path) -> str:
    """``PID on HOST`` of the process that wrote the lock file (its holder), as far as known."""
    try:
        pid, host = path.read_text().split()[:2]
        return f"{pid} on {host}"
    except (OSError, ValueError):
        return "(unknown: no pid recorded yet)"


def file_digest(path: str | os.PathLike) -> str:
    """BLAKE2b of a file's bytes (memoised on path, size and mtime within a process)."""
    p = Path(path).resolve()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        h = hashlib.blake2b(digest_size=16)
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FILE_DIGESTS[memo] = h.hexdigest()
    return _FILE_DIGESTS[memo]


def make_key(**parts: Any) -> str:
    """Hash keyword parts (JSON-able values, numpy arrays, or ``Path`` objects of files)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(parts):
        h.update(name.encode())
        h.update(_encode(parts[name]))
    return h.hexdigest()


def _encode(value: Any) -> bytes:
    if isinstance(value, Path):
        return f"file:{file_digest(value)}".encode()
    if isinstance(value, np.ndarray):
        return value.dtype.str.encode() + str(value.shape).encode() + value.tobytes()
    if isinstance(value, (list, tuple)) and any(isinstance(v, (Path, np.ndarray)) for v in value):
        return b"[" + b",".join(_encode(v) for v in value) + b"]"
    return json.dumps(value, sort_keys=True, default=str).encode()


class Cache:
    """A folder of cache entries. ``root=None`` disables caching (always recompute)."""

    def __init__(self, root: str | os.PathLike | None, lock_timeout: float | None = None):
        self.root = Path(root).expanduser() if root is not None else None
        # seconds to wait for an entry another live process holds (None: for ever)
        self.lock_timeout = lock_timeout

    def check_writable(self) -> None:
        """Raise PermissionError/OSError naming the folder when the cache cannot be written."""
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.root):
            pass

    def remove_stale(self) -> list[Path]:
        """Remove temp files/folders of dead processes in every kind folder of the cache."""
        if self.root is None or not self.root.is_dir():
            return []
        removed = []
        for folder in [self.root, *(p for p in self.root.iterdir() if p.is_dir())]:
            removed += remove_stale_temps(folder)
        for p in removed:
            log.info("removed %s, left by a process that died", p)
        return removed

    @contextlib.contextmanager
    def lock(self, kind: str, key: str) -> Iterator[None]:
        """Hold the entry's lock: one process computes, the others wait here."""
        if self.root is None:
            yield
            return
        path = self.root / kind / f"{key}.lock"
        with self._open_lock(path) as handle:
            self._acquire(handle, path, f"{kind}/{key}")
            try:
                # who holds it: a process waiting for this entry names it in its log
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()} {socket.gethostname()}\n".encode())
                handle.flush()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _open_lock(self, path: Path):
        """The entry's lock file, opened; something in the way (a file named like the kind
        folder, a folder named like the lock) is a :class:`CacheError` naming it."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(path, "a+b")
        except OSError as err:
            if err.errno in DISK_FULL:
                raise
            raise CacheError(f"cache entry lock {path} cannot be made: {err.strerror or err} "
                             f"({err.filename or path}); something gpurecon did not make is in the "
                             f"way: move it away (cache_dir={self.root})") from None

    def _acquire(self, handle, path: Path, entry: str) -> None:
        """Take the entry's lock; while another process holds it, say which (once) and wait,
        at most ``lock_timeout`` seconds (then :class:`CacheError`)."""
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _lock_holder(path)
        limit = "for ever" if self.lock_timeout is None else f"at most {self.lock_timeout:g} s"
        log.info("waiting for cache entry %s: process %s is computing it (lock %s); waiting %s "
                 "(cache_lock_timeout)", entry, holder, path, limit)
        start = time.monotonic()
        while True:
            time.sleep(_LOCK_POLL_S)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                log.info("cache entry %s: lock released after %.1f s", entry, time.monotonic() - start)
                return
            except BlockingIOError:
                pass
            if self.lock_timeout is not None and time.monotonic() - start >= self.lock_timeout:
                raise CacheError(
                    f"cache entry {entry} in cache_dir={self.root}: waited {self.lock_timeout:g} s "
                    f"(cache_lock_timeout) for process {_lock_holder(path)}, which holds its lock "
                    f"{path} and is still running; let it finish (or stop it) and run again, or "
                    f"raise cache_lock_timeout (null: wait for ever)")

    def path(self, kind: str, key: str) -> Path | None:
        return None if self.root is None else self.root / kind / f"{key}.npz"

    def load(self, kind: str, key: str) -> tuple[dict[str, np.ndarray], dict | None] | None:
        p = self.path(kind, key)
        if p is None or not p.exists():
            return None
        if not p.is_file():   # not something this program wrote: neither read nor replaced
            raise CacheError(f"cache entry {p} is a folder (or another non-file), not a cache "
                             f"file gpurecon wrote; move it away or remove it (cache_dir="
                             f"{self.root})")
        try:
            return read_npz(p)
        except Exception as err:  # a corrupt entry is recomputed, not trusted
            log.warning("cache entry %s is unreadable (%s); recomputing", p, err)
            return None

    def save(self, kind: str, key: str, arrays: dict[str, Any], provenance: dict | None = None) -> Path | None:
        p = self.path(kind, key)
        if p is None:
            return None
        return write_npz(p, provenance=provenance, **arrays)

    def get_or_compute(self, kind: str, key: str,
                       compute: Callable[[], tuple[dict[str, Any], dict | None]]):
        """Return ``(arrays, provenance, hit)``; compute and store on a miss."""
        found = self.load(kind, key)
        if found is not None:
            log.info("cache hit: %s/%s", kind, key)
            return found[0], found[1], True
        with self.lock(kind, key):
            found = self.load(kind, key)   # another process may have computed it meanwhile
            if found is not None:
                log.info("cache hit: %s/%s (computed by another process while this one waited)",
                         kind, key)
                return found[0], found[1], True
            arrays, prov = compute()
            self.save(kind, key, arrays, prov)
        arrays = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
                  for k, v in arrays.items()}
        return arrays, prov, False
