"""Hydra entry point: ``python -m gpurecon [overrides]``. Composes the config, calls
:func:`gpurecon.experiment.run`, nothing else."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import register_configs
from .errors import GpureconError
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


@hydra.main(version_base="1.3", config_path=_conf_dir(), config_name="config")
def _app(cfg: DictConfig) -> JobFailed | None:
    from .experiment import run  # imported late: `--help`/`--cfg` stay fast

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, out_dir)
    except GpureconError as err:
        log.error("%s", err)
        # No partial output: the run folder was made for this run alone.
        logging.shutdown()
        shutil.rmtree(out_dir, ignore_errors=True)
        if in_multirun():  # the sweep goes on: gpurecon.sweep records it, exits 1 at the end
            return JobFailed(str(err), type(err).__name__)
        raise SystemExit(1) from None


def main() -> None:
    _app()


if __name__ == "__main__":
    sys.exit(main())
