"""Hydra multirun sweeps that survive a failing job.

``python -m gpurecon -m subject=1,2,3 model=fasttext,gpt2`` runs one job per combination.
A job that ends with a user error (bad subject, missing checkpoint: a ``GpureconError``)
returns :class:`JobFailed` instead of exiting, so the launcher goes on with the next job;
:class:`RecordFailures` (registered in ``conf/config.yaml`` under ``hydra.callbacks``) writes
each failure into ``<sweep dir>/sweep_failures.json`` as it happens and, when the sweep is
over, lists them on stderr and exits with status 1.

Job folders are named ``<job number>_<swept values>`` (``hydra.sweep.subdir`` with the
``${job_dirname:}`` resolver): the job's values of the swept keys (all its overrides when
the sweep's arguments are unknown, e.g. under a launcher that runs jobs in other
processes), made safe for a file name.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from hydra.experimental.callback import Callback

FAILURES_FILE = "sweep_failures.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")
_MAX_DIRNAME = 100
# Keys the running sweep varies (set by RecordFailures.on_multirun_start, read by job_dirname).
_SWEPT_ENV = "GPURECON_SWEPT_KEYS"


@dataclass(frozen=True)
class JobFailed:
    """What a sweep job returns when a user error ended it (recorded, the sweep goes on)."""

    message: str
    error: str = "GpureconError"  # the exception class


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def dirname(overrides: Any) -> str:
    """A job's overrides (``hydra.job.override_dirname``) as one safe folder-name component:
    characters other than letters, digits and ``._=,+-`` become ``_`` (``/`` in a path
    included), and names longer than 100 characters are cut and end in a hash of the whole."""
    text = str(overrides or "")
    safe = _UNSAFE.sub("_", text).strip("._-") or "defaults"
    if len(safe) > _MAX_DIRNAME:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        safe = f"{safe[:_MAX_DIRNAME - 9]}_{digest}"
    return safe


def swept_keys(overrides: list[str]) -> set[str]:
    """Keys of the sweep arguments that take several values (``subject=1,2`` -> ``subject``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return {o.get_key_element() for o in parsed if o.is_sweep_override()}


def job_dirname() -> str:
    """The running job's swept ``key=value`` pairs, comma-separated, made safe by :func:`dirname`."""
    from hydra.core.hydra_config import HydraConfig

    items = [str(o) for o in HydraConfig.get().overrides.task]
    # set by RecordFailures in the launching process; the environment also carries the keys
    # into a parallel launcher's worker processes
    keys = set(filter(None, os.environ.get(_SWEPT_ENV, "").split(",")))
    if keys:
        items = [o for o in items if o.split("=", 1)[0] in keys]
    return dirname(",".join(items))


def register_resolvers() -> None:
    """Register ``${job_dirname:}`` (used by ``hydra.sweep.subdir``)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("job_dirname"):
        OmegaConf.register_new_resolver("job_dirname", job_dirname)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock next to ``path`` (jobs of a parallel launcher write the same file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class RecordFailures(Callback):
    """Hydra callback: record failed sweep jobs and make the sweep exit 1 at the end."""

    def __init__(self) -> None:
        self.sweep_id: str | None = None
        self.n_jobs = 0

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.sweep_id = datetime.datetime.now(datetime.timezone.utc).isoformat()
        self.n_jobs = 0
        os.environ[_SWEPT_ENV] = ",".join(sorted(swept_keys(config.hydra.overrides.task)))

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:
            return
        self.n_jobs += 1
        value = job_return._return_value  # .return_value re-raises a failed job's exception
        if job_return.status == JobStatus.FAILED:
            failure = JobFailed(str(value), type(value).__name__)
        elif isinstance(value, JobFailed):
            failure = value
        else:
            return
        record = {"job": int(config.hydra.job.num),
                  "overrides": list(config.hydra.overrides.task),
                  "output_dir": str(config.hydra.runtime.output_dir), **asdict(failure)}
        path = Path(str(config.hydra.sweep.dir)) / FAILURES_FILE
        with _locked(path):
            data = _read(path)
            if data.get("sweep_started") != self.sweep_id:  # a file left by an earlier sweep here
                data = {"sweep_started": self.sweep_id, "failures": []}
            data["failures"].append(record)
            data["failures"].sort(key=lambda r: r["job"])
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            os.replace(tmp, path)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        path = Path(str(config.hydra.sweep.dir)) / FAILURES_FILE
        data = _read(path)
        failures = data.get("failures", []) if data.get("sweep_started") == self.sweep_id else []
        # stdout, as the jobs' log lines: what ran, what it found, and what to run next
        sys.stdout.write("\n".join(summary_lines(str(config.hydra.sweep.dir), failures)) + "\n")
        sys.stdout.flush()
        if not failures:
            return
        # stderr, not the logger: logging still writes into the last job's log file
        lines = [f"gpurecon sweep: {len(failures)} of {self.n_jobs or '?'} jobs FAILED (recorded in {path}):"]
        lines += [f"  job {r['job']} [{' '.join(r['overrides'])}]: {r['message']}" for r in failures]
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
        raise SystemExit(1)


# ----------------------------------------------------------------------------- the summary

@dataclass
class JobOutcome:
    """One job folder of the sweep that just ended, as its files tell it."""

    folder: Path
    status: str                      # "finished" | "skipped" | "failed"
    above_chance: bool | None = None
    untrained: bool = False


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def sweep_outcomes(sweep_dir: str | os.PathLike, failures: list[dict]) -> list[JobOutcome]:
    """The jobs of the sweep that wrote ``sweep_dir/multirun.yaml`` last, read from their
    folders, so it works whichever launcher ran them (in this process, a pool, SLURM).

    A job folder is this sweep's when its log was written after ``multirun.yaml`` (Hydra writes
    it before launching the jobs, on the same file system: no clock of another machine is
    compared); folders of an earlier sweep into the same folder are left out. A job is
    ``failed`` when it is recorded in ``sweep_failures.json`` or did not finish (no complete
    set); ``skipped`` when its complete set is older than the sweep (``resume=true``);
    ``finished`` otherwise.
    """
    from .outputs import DONE, is_complete
    from .run_summary import above_chance

    root = Path(sweep_dir)
    start = _mtime(root / "multirun.yaml")
    failed = {str(Path(r.get("output_dir", "")).resolve()) for r in failures}
    out = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: p.name) if root.is_dir() else []:
        logs = [m for m in map(_mtime, folder.glob("*.log")) if m is not None]
        if not logs or (start is not None and max(logs) < start):
            continue   # not a job folder, or a job of an earlier sweep
        if str(folder.resolve()) in failed or not is_complete(folder):
            out.append(JobOutcome(folder, "failed"))
            continue
        done = _mtime(folder / DONE)
        status = "skipped" if start is not None and done is not None and done < start else "finished"
        summary = _read(folder / "summary.json")
        verdict = summary.get("above_chance")
        if not isinstance(verdict, bool):   # a run older than the field
            verdict = above_chance(summary.get("scores") or {})
        untrained = bool((summary.get("provenance") or {}).get("untrained", False))
        out.append(JobOutcome(folder, status, verdict, untrained))
    return out


def summary_lines(sweep_dir: str, failures: list[dict]) -> list[str]:
    """The lines a sweep ends with: jobs finished / skipped / failed, above chance k of N,
    the sweep folder and the report command to run next."""
    import shlex

    jobs = sweep_outcomes(sweep_dir, failures)
    count = {s: sum(j.status == s for j in jobs) for s in ("finished", "skipped", "failed")}
    results = [j for j in jobs if j.status != "failed"]
    lines = [f"gpurecon sweep: {len(jobs)} job(s): {count['finished']} finished, "
             f"{count['skipped']} skipped (already complete, resume=true), {count['failed']} failed"]
    if results:
        k = sum(j.above_chance is True for j in results)
        line = (f"gpurecon sweep: above chance in {k} of {len(results)} run(s) (PCC across electrodes "
                "above its permutation null's 95th percentile, or its baseline without a null)")
        n_untrained = sum(j.untrained for j in results)
        if n_untrained:
            line += (f"; {n_untrained} of them with an UNTRAINED model (model.checkpoint=tiny), "
                     "expected at chance on synthetic data")
        lines.append(line)
    lines.append(f"gpurecon sweep: folder {sweep_dir}")
    if results:
        folder = shlex.quote(str(sweep_dir))
        report = shlex.quote(str(Path(sweep_dir) / "report"))
        lines.append(f"gpurecon sweep: next, Table 1 and the figures: "
                     f"python -m gpurecon.report {folder} --out {report}")
    return lines
