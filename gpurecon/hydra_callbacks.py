"""Hydra callbacks of the gpurecon app (listed in ``conf/config.yaml`` under ``hydra.callbacks``).

:class:`CheckOutputFolder` runs before Hydra creates the run (or sweep) folder and writes its
``.hydra/`` files there: an output folder that cannot be created or written is one line naming
it and exit status 1, instead of a traceback from inside Hydra. For a single run it also locks
the run folder and refuses one that is not the run's to write (the user's files, a run of other
settings: :mod:`gpurecon.run_folder`) before Hydra opens its log there. The app's environment
settings that no config key checks (``$GPURECON_HEARTBEAT``, ``$GPURECON_MALLOC``) are checked here too, before any
folder is made.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def _check(folder: str, key: str) -> None:
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        print(f"gpurecon: error: the output folder {path} ({key}) cannot be written: "
              f"{err.strerror or err}; choose another with {key}=DIR or $GPURECON_OUTPUTS",
              file=sys.stderr)
        raise SystemExit(1) from None


def _check_environment() -> None:
    """``$GPURECON_HEARTBEAT`` (:func:`gpurecon.progress.heartbeat_interval`) and
    ``$GPURECON_MALLOC`` (:func:`gpurecon.allocator.wanted`): one line and exit status 1 before
    anything is made, not an error in the middle of a run."""
    from .allocator import wanted
    from .errors import GpureconError
    from .progress import heartbeat_interval

    try:
        heartbeat_interval()
        wanted()
    except GpureconError as err:
        print(f"gpurecon: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def _claim(config: DictConfig) -> None:
    """Lock the run folder and refuse (one line, exit 1) to write into one that holds the
    user's files or a run of other settings: before Hydra writes its log there."""
    import copy

    from omegaconf import open_dict

    from .errors import GpureconError
    from .run_folder import claim

    task = copy.deepcopy(config)
    with open_dict(task):
        del task["hydra"]
    try:
        claim(config.hydra.run.dir, task, key="hydra.run.dir",
              log_name=f"{config.hydra.job.name}.log")
    except GpureconError as err:
        print(f"gpurecon: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


class CheckOutputFolder(Callback):
    """Fail with one line when the run or sweep folder is not writable, or (a single run) when
    the run folder is not this run's to write (see :mod:`gpurecon.run_folder`)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_environment()
        _check(config.hydra.run.dir, "hydra.run.dir")
        _claim(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from .errors import GpureconError
        from .run_folder import check_sweep_folder

        _check_environment()
        _check(config.hydra.sweep.dir, "hydra.sweep.dir")
        try:   # before Hydra writes multirun.yaml there
            check_sweep_folder(config.hydra.sweep.dir, bool(config.get("overwrite", False)))
        except GpureconError as err:
            print(f"gpurecon: error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
