"""Progress on stderr for the long stages: tqdm bars on a terminal, heartbeat log lines elsewhere.

Stages never import this module: they take an optional ``progress(done, total)`` callable.
The app makes those callables here, one per stage:

- stderr a terminal and ``progress=true``: a tqdm bar, transient (``leave=False``) so the log
  keeps only log lines; the CLI routes log lines through ``tqdm.write``
  (``logging_redirect_tqdm``) so a line is never glued to a bar;
- otherwise (a log file, ``nohup``, SLURM, a pipe, or ``progress=false``): no bar, but a
  **heartbeat** log line every ``$GPURECON_HEARTBEAT`` seconds (default 60; ``0``: none) while
  the stage runs, with the progress and an ETA
  (``solver (targets): 3,800 of 12,827 done (29.6%), 2 min 05 s elapsed, ETA 4 min 58 s``), so a
  stage of many minutes is never silent in a log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Callable, Iterator

ProgressFn = Callable[[int, int], None]

HEARTBEAT_ENV = "GPURECON_HEARTBEAT"
DEFAULT_HEARTBEAT_S = 60.0
log = logging.getLogger("gpurecon")


def _noop(done: int, total: int) -> None:
    return None


def heartbeat_interval() -> float:
    """Seconds between heartbeat lines: ``$GPURECON_HEARTBEAT`` (a number >= 0; ``0``: no
    heartbeat), default 60. Anything else is a :class:`~gpurecon.errors.ConfigError` naming
    the variable."""
    from .errors import ConfigError

    text = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not text:
        return DEFAULT_HEARTBEAT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and value != float("inf")):
        raise ConfigError(f"${HEARTBEAT_ENV} must be a number of seconds >= 0 (0: no heartbeat "
                          f"lines), got {text!r}")
    return value


def format_seconds(seconds: float) -> str:
    """``45 s``, ``2 min 05 s``, ``1 h 02 min``: a duration as a log line reads it."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def heartbeat_line(desc: str, done: int, total: int | None, elapsed: float) -> str:
    """One heartbeat: ``done`` of ``total`` (cumulative, as the stage reported them), the time
    spent and the ETA at the average pace so far (unknown before the first part is done)."""
    spent = f"{format_seconds(elapsed)} elapsed"
    if not total:
        return f"{desc}: running, {spent} (no progress reported yet)"
    head = f"{desc}: {done:,} of {total:,} done ({100.0 * done / total:.1f}%), {spent}"
    if done <= 0:
        return f"{head}, ETA unknown (no part finished yet)"
    return f"{head}, ETA {format_seconds(elapsed * (total - done) / done)}"


class Heartbeat:
    """A daemon thread logging :func:`heartbeat_line` every ``interval`` seconds until
    :meth:`stop`; :meth:`update` is the stage's ``progress(done, total)``."""

    def __init__(self, desc: str, interval: float, clock: Callable[[], float] = time.monotonic):
        self.desc, self.interval, self.clock = desc, float(interval), clock
        self.done, self.total = 0, None
        self.t0 = clock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat {desc}", daemon=True)

    def update(self, done: int, total: int) -> None:
        self.done, self.total = int(done), int(total)

    def line(self) -> str:
        return heartbeat_line(self.desc, self.done, self.total, self.clock() - self.t0)

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval):
            log.info("%s", self.line())

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()


@contextlib.contextmanager
def stage_bar(desc: str, *, enabled: bool, unit: str = "it") -> Iterator[ProgressFn]:
    """Yield a ``progress(done, total)`` callable for the stage named ``desc``.

    ``done`` is cumulative; the first call sets the total. On a terminal with ``enabled``: a
    tqdm bar. Otherwise (disabled, or stderr a log file, a pipe, a batch job): no bar, so no
    carriage-return junk, but a heartbeat log line every :func:`heartbeat_interval` seconds
    while the stage runs (none for a stage that ends sooner).
    """
    isatty = getattr(sys.stderr, "isatty", None)
    if not enabled or not (isatty is not None and isatty()):
        interval = heartbeat_interval()
        if interval <= 0:
            yield _noop
            return
        beat = Heartbeat(desc, interval).start()
        try:
            yield beat.update
        finally:
            beat.stop()
        return
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
               total=None, mininterval=0.5)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(max(0, int(done) - bar.n))
        if done >= total:
            bar.refresh()   # the last step is drawn even inside mininterval

    try:
        yield update
    finally:
        bar.close()


def chain(*fns: ProgressFn | None) -> ProgressFn:
    """One callable that calls each of ``fns`` (None entries skipped)."""
    live = [f for f in fns if f is not None]

    def call(done: int, total: int) -> None:
        for f in live:
            f(done, total)

    return call
