"""Hydra entry point: ``python -m gpurecon [overrides]``. Composes the config, calls
:func:`gpurecon.experiment.run`, and maps errors to exit codes:

- a user error (:class:`~gpurecon.errors.GpureconError`: config, data, model, unwritable
  folder) is ONE log line naming the setting, exit status 1, no result files;
- Ctrl-C is one line, exit status 130, no result files; SIGTERM (``timeout``, SLURM,
  ``docker stop``) the same with exit status 143;
- anything else is a bug: Hydra's traceback, exit status 1, no result files.

Nothing is deleted here: :func:`gpurecon.experiment.run` writes its results into a staging
folder it discards on failure, so a failed run leaves only its log (with the error in it).
Before any work the run folder is locked and checked (:mod:`gpurecon.run_folder`): a folder
holding the user's files or a run of other settings is refused unless ``overwrite=true``, and
Hydra's record ``.hydra/`` is written by the app (``hydra.output_subdir: null``) only once the
folder is this run's.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .allocator import keep_freed_memory
from .config import register_configs
from .errors import GpureconError, Terminated
from .outputs import DISK_FULL, is_complete
from .run_folder import claim, held, hydra_record, write_record
from .sweep import JobFailed, in_multirun


def _conf_dir() -> str:
    # A regular install ships conf/ as the package gpurecon.conf; a source checkout
    # (editable install) has it at the top of the repository.
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"gpurecon's conf/ folder was not found next to {here}")


register_configs()
log = logging.getLogger("gpurecon")
_SWEEP_SIZE: int | None = None


def _sweep_size(argv: list[str]) -> int | None:
    """Jobs of a basic multirun sweep: the product of the sweep overrides' lengths."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        overrides = OverridesParser.create().parse_overrides(
            [a for a in argv if "=" in a and not a.startswith("-")])
        size = 1
        for o in overrides:
            if o.is_sweep_override() and not o.key_or_group.startswith("hydra"):
                size *= len(list(o.sweep_string_iterator()))
        return size
    except Exception:  # an unusual sweep (ranges, a custom sweeper): no total shown
        return None


def _announce_job() -> None:
    hc = HydraConfig.get()
    if str(hc.mode) != "RunMode.MULTIRUN":
        return
    k = int(hc.job.num) + 1
    total = f" of {_SWEEP_SIZE}" if _SWEEP_SIZE else ""
    overrides = " ".join(hc.overrides.task)
    log.info("sweep: job %d%s (%s)", k, total, overrides)


@hydra.main(version_base="1.3", config_path=_conf_dir(), config_name="config")
def _app(cfg: DictConfig) -> JobFailed | None:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .experiment import run  # imported late: `--help`/`--cfg` stay fast

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    _announce_job()
    try:
        log.info("%s", keep_freed_memory())   # before the run's large temporaries (gpurecon.allocator)
        # Lock the folder and refuse to replace what is not this run's, before any work
        # (a single run was already checked before Hydra made anything: CheckOutputFolder).
        decision = claim(out_dir, cfg, key="hydra.sweep.dir" if in_multirun() else "hydra.run.dir",
                         log_name=f"{hc.job.name}.log")
        with held(out_dir):
            record = hydra_record(cfg)
            if decision == "run" and not is_complete(out_dir):
                write_record(out_dir, record)   # no finished run's record is replaced here
            # Log lines go through tqdm.write while bars are drawn: never glued to a bar.
            with logging_redirect_tqdm(loggers=[logging.getLogger()]):
                run(cfg, out_dir, record=record)
    except (GpureconError, OSError) as err:
        if isinstance(err, OSError):   # a full disk is the user's to fix; another OSError a bug
            if err.errno not in DISK_FULL:
                raise
            from .experiment import disk_full_error

            err = disk_full_error(err, Path(cfg.cache_dir).expanduser(), out_dir)
        log.error("%s", err)
        if in_multirun():  # the sweep goes on: gpurecon.sweep records it, exits 1 at the end
            return JobFailed(str(err), type(err).__name__)
        raise SystemExit(1) from None


def _bars_off(argv: list[str]) -> bool:
    """``progress=false`` on the command line, or stderr not a terminal."""
    off = any(a.replace(" ", "").lower() in ("progress=false", "progress=0", "progress=no")
              for a in argv)
    return off or not sys.stderr.isatty()


def _on_sigterm(signum, frame) -> None:
    # Raised in the main thread between bytecodes, like KeyboardInterrupt: every `finally` and
    # `except BaseException` (the staging folder, the folder and cache locks) runs. A second
    # SIGTERM during that clean-up is ignored (SIGKILL still ends the process).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def main() -> int:
    global _SWEEP_SIZE
    signal.signal(signal.SIGTERM, _on_sigterm)
    if _bars_off(sys.argv[1:]):
        # tqdm reads TQDM_DISABLE when it is first imported: this also silences the bars of the
        # embedding batches and of libraries (transformers), not only the app's own stage bars.
        os.environ.setdefault("TQDM_DISABLE", "1")
    if "-m" in sys.argv[1:] or "--multirun" in sys.argv[1:]:
        _SWEEP_SIZE = _sweep_size(sys.argv[1:])
    try:
        _app()
    except Terminated:
        print("gpurecon: terminated (SIGTERM); no result files were written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        # The staging folder is already discarded; one line, the shell's code for SIGINT.
        print("gpurecon: interrupted (Ctrl-C); no result files were written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
