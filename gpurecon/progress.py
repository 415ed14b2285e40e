"""Progress bars on stderr (tqdm) for the long stages, switched off with ``progress=false``.

Stages never import this module: they take an optional ``progress(done, total)`` callable.
The app makes those callables here, one bar per stage, drawn only when stderr is a terminal;
bars are transient (``leave=False``)
so the log keeps only log lines, and the CLI routes log lines through ``tqdm.write``
(``logging_redirect_tqdm``) so a line is never glued to a bar.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

ProgressFn = Callable[[int, int], None]


def _noop(done: int, total: int) -> None:
    return None


@contextlib.contextmanager
def stage_bar(desc: str, *, enabled: bool, unit: str = "it") -> Iterator[ProgressFn]:
    """Yield a ``progress(done, total)`` callable drawing one bar named ``desc``.

    ``done`` is cumulative; the first call sets the total. Disabled, or stderr not a terminal
    (a log file, a pipe, a batch job): a no-op callable, so no carriage-return junk.
    """
    isatty = getattr(sys.stderr, "isatty", None)
    if not enabled or not (isatty is not None and isatty()):
        yield _noop
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
