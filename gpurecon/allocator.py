"""The app's process heap: keep freed memory for the next large temporary (glibc).

glibc serves allocations above its mmap threshold (32 MB at most, less until it has adapted)
with fresh pages and hands them back to the kernel on free, so the solver's large temporaries
(one (12,700 x 769) float64 KKT array of a study-sized leave-one-out round is 78 MB) are faulted
in page by page, zeroed by the kernel, over and over: on the study's CPU run that was 17% of the
wall time (19.6 million minor page faults, 25 s of system time in 147 s; benchmarks/RESULTS.md,
*Session 12*). Raising glibc's mmap and trim thresholds keeps freed blocks in the heap, where
the next temporary of that size reuses them.

The app (``python -m gpurecon``, and the ranks it spawns) does this at its start;
``GPURECON_MALLOC=0`` opts out. Importing gpurecon as a library changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from .errors import ConfigError

ENV = "GPURECON_MALLOC"
# set once applied: the ranks the app spawns (they inherit the environment) apply it too
APPLIED = "GPURECON_MALLOC_APPLIED"
# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
# blocks above 1 GiB still get their own mapping; up to 2 GiB of free heap top is kept; the heap
# grows 64 MiB at a time
SETTINGS = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, (1 << 31) - 1), (_M_TOP_PAD, 1 << 26))


def wanted() -> bool:
    """``$GPURECON_MALLOC``: unset or ``1`` keeps freed memory, ``0`` leaves glibc's default.

    Raises
    ------
    ConfigError
        Any other value.
    """
    value = os.environ.get(ENV, "1")
    if value not in ("0", "1"):
        raise ConfigError(f"${ENV} must be 0 (glibc's default heap) or 1 (keep freed memory), got {value!r}")
    return value == "1"


def keep_freed_memory() -> str:
    """Raise glibc's mmap and trim thresholds for this process where ``$GPURECON_MALLOC``
    allows (see the module docstring); returns one line saying what was done, for the log."""
    if not wanted():
        return f"memory: glibc's default heap (${ENV}=0)"
    if not sys.platform.startswith("linux"):
        return "memory: the platform's default allocator (not Linux)"
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return "memory: the default allocator (no glibc mallopt)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not all(mallopt(param, size) == 1 for param, size in SETTINGS):
        return "memory: glibc refused the heap settings; its defaults apply"
    os.environ[APPLIED] = "1"
    return f"memory: freed blocks stay in the heap for reuse (glibc mmap threshold 1 GiB; ${ENV}=0 turns this off)"
