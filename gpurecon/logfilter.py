"""Where the app's log lines go: errors to stderr, the rest to stdout (Hydra's console).

conf/config.yaml's ``hydra.job_logging`` gives the console handler :class:`BelowLevel` (so an
error is not printed twice) and adds a stderr handler for ERROR and above: a script that keeps
stdout (the run's progress and its verdict) still sees the error on stderr.
"""

from __future__ import annotations

import logging


class BelowLevel(logging.Filter):
    """Pass records below ``level`` only (``level``: a name such as ``ERROR`` or a number)."""

    def __init__(self, level: str | int = "ERROR"):
        super().__init__()
        self.level = logging.getLevelName(level) if isinstance(level, str) else int(level)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level
