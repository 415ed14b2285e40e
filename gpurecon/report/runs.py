"""Finding finished run folders and reading what they wrote (never recomputing).

A run folder is a folder holding ``summary.json`` (a single run, or one job of a Hydra
multirun); folders given to the report are searched recursively for them. Optional files and
keys (coordinates, the permutation null, ``grid.csv``) may be absent: readers return ``None``
or NaN and the figures say what is missing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import outputs
from ..errors import GpureconError


class ReportError(GpureconError):
    """Runs that cannot be reported; the message names the folder, file or key."""


def _is_complete(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run.

    Uses ``gpurecon.outputs.is_complete`` (the completion marker) where the installed
    gpurecon has it, else requires ``summary.json`` (written last by a run)."""
    check = getattr(outputs, "is_complete", None)
    if check is not None:
        return bool(check(run_dir))
    return (Path(run_dir) / "summary.json").is_file()


@dataclass
class Run:
    """One finished run: its folder, the name the report shows, and its summary.json."""

    path: Path
    name: str
    summary: dict
    _cache: dict = field(default_factory=dict, repr=False)

    # -- summary fields -------------------------------------------------------------------
    def _get(self, *keys: str, default: Any = KeyError) -> Any:
        node: Any = self.summary
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                if default is KeyError:
                    raise ReportError(f"{self.path / 'summary.json'}: key {'.'.join(keys)!r} "
                                      "is missing (not a gpurecon run summary?)")
                return default
            node = node[k]
        return node

    @property
    def subject(self) -> int:
        value = self._get("provenance", "subject")
        try:
            return int(str(value).removeprefix("sub-"))
        except ValueError:
            raise ReportError(f"{self.path / 'summary.json'}: provenance.subject must be a "
                              f"participant number (1, 'sub-01'), got {value!r}") from None

    @property
    def model(self) -> str:
        return str(self._get("provenance", "model"))

    @property
    def checkpoint(self) -> str:
        return str(self._get("provenance", "checkpoint", default=""))

    @property
    def data(self) -> str:
        return str(self._get("provenance", "data"))

    @property
    def untrained(self) -> bool:
        return bool(self._get("provenance", "untrained", default=False))

    @property
    def device(self) -> str:
        return str(self._get("provenance", "device", default="unknown"))

    @property
    def target_kind(self) -> str:
        return str(self._get("target", "kind", default="trial_mean"))

    @property
    def n_frames(self) -> int:
        return int(self._get("target", "n_frames", default=1) or 1)

    @property
    def n_trials(self) -> int:
        return int(self._get("n_trials"))

    @property
    def n_electrodes(self) -> int:
        return int(self._get("n_targets")) // self.n_frames

    @property
    def alpha(self) -> float | list[float]:
        return self._get("solver", "alpha", default=float("nan"))

    @property
    def l1_ratio(self) -> float | list[float]:
        return self._get("solver", "l1_ratio", default=float("nan"))

    @property
    def is_grid(self) -> bool:
        return isinstance(self.alpha, list) or isinstance(self.l1_ratio, list)

    def score(self, key: str, *, required: bool = True) -> float:
        """``scores.<key>`` as a float.

        A required score must be a number (``"inf"``/``"-inf"``, as runs store infinities,
        included): null, NaN or text is a :class:`ReportError` naming the run folder and the
        field, never a "-" in the table. An optional score is NaN when absent or null.
        """
        value = self._get("scores", key, default=KeyError if required else None)
        if value is None and not required:
            return float("nan")
        number = _as_float(value)
        if number is None or (required and math.isnan(number)):
            raise ReportError(f"{self.path}: summary.json field scores.{key} is {value!r}, not a "
                              f"number{'' if required else ' or null'}; a finished run records "
                              f"every score (rerun it, or leave this run folder out)")
        return number

    def check(self) -> "Run":
        """Raise :class:`ReportError` now (before anything is written) if a key Table 1
        needs is missing."""
        for name in ("subject", "model", "data", "n_trials", "n_electrodes"):
            getattr(self, name)
        for key in ("pcc_across_electrodes", "r2_across_electrodes",
                    "baseline_pcc_across_electrodes", "baseline_r2_across_electrodes"):
            self.score(key)
        return self

    def equals_baseline(self) -> bool:
        """Whether the model's held-out predictions are its baseline's: every coefficient zero,
        so each fold predicts its training mean (an untrained model shrunk to nothing, or an
        alpha above alpha_max). Read from predictions.npz (``pred`` against ``baseline``, to
        1e-9 of the targets' scale); a run without them: its four scores equal the baseline's."""
        if "equals_baseline" not in self._cache:
            pred = self.predictions() or {}
            if "pred" in pred and "baseline" in pred and \
                    pred["pred"].shape == pred["baseline"].shape:
                p, b = np.asarray(pred["pred"], float), np.asarray(pred["baseline"], float)
                scale = max(float(np.nanmax(np.abs(b))) if b.size else 0.0, 1e-300)
                same = bool(b.size) and bool(np.all(np.abs(p - b) <= 1e-9 * scale))
            else:
                same = all(self.score(k) == self.score(f"baseline_{k}")
                           for k in ("pcc_across_electrodes", "r2_across_electrodes"))
            self._cache["equals_baseline"] = same
        return self._cache["equals_baseline"]

    def has_null(self) -> bool:
        return self._get("scores", "p_pcc_across_electrodes", default=None) is not None

    # -- files ---------------------------------------------------------------------------
    def trials(self) -> dict[str, np.ndarray]:
        """scores_trials.csv as columns."""
        return self._csv("scores_trials.csv", required=("trial", "r2", "baseline_r2"))

    def electrodes(self) -> dict[str, np.ndarray] | None:
        """scores_electrodes.csv as columns (None if the run did not write it)."""
        return self._csv("scores_electrodes.csv", required=("electrode", "pcc"), optional=True)

    def grid(self) -> dict[str, np.ndarray] | None:
        """grid.csv as columns (only runs given lists of alpha / l1_ratio write it)."""
        return self._csv("grid.csv", required=("alpha", "l1_ratio", "pcc", "r2"), optional=True)

    def predictions(self) -> dict[str, np.ndarray] | None:
        """predictions.npz arrays (None if absent)."""
        path = self.path / "predictions.npz"
        if "predictions" not in self._cache:
            if not path.is_file():
                self._cache["predictions"] = None
            else:
                try:
                    self._cache["predictions"] = outputs.read_npz(path)[0]
                except Exception as err:   # zeroed, truncated, not a zip: whatever numpy says
                    raise ReportError(f"{path}: cannot be read as a gpurecon .npz "
                                      f"({type(err).__name__}: {err}); the file is damaged: "
                                      f"rerun {self.path} or leave it out") from None
        return self._cache["predictions"]

    def _csv(self, name: str, *, required: tuple[str, ...], optional: bool = False):
        if name in self._cache:
            return self._cache[name]
        path = self.path / name
        if not path.is_file():
            if optional:
                self._cache[name] = None
                return None
            raise ReportError(f"{path}: missing (the run folder holds summary.json but not {name})")
        self._cache[name] = read_csv(path, required=required)
        return self._cache[name]


def _as_float(value: Any) -> float | None:
    """A stored score as a float, or None when it is not a number (null, text, a list)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):   # json stores infinities as the strings "inf" / "-inf"
        return float(value) if value.strip().lower() in ("inf", "-inf", "+inf") else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_csv(path: Path, *, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """A gpurecon CSV (``# `` provenance lines, then a header) as columns: numbers as float64
    arrays (empty cells -> NaN), anything else as str arrays."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ReportError(f"{path}: cannot be read as UTF-8 text (byte {err.start}: {err.reason}); "
                          "gpurecon writes UTF-8: the file was changed or damaged") from None
    except OSError as err:
        raise ReportError(f"{path}: cannot be read ({err.strerror or err})") from None
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    rows = list(csv.reader(io.StringIO(body)))
    if not rows:
        raise ReportError(f"{path}: no header line")
    header, rows = rows[0], rows[1:]
    missing = [c for c in required if c not in header]
    if missing:
        raise ReportError(f"{path}: column(s) {', '.join(missing)} missing; found {', '.join(header)}")
    cols: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        cells = [r[j] if j < len(r) else "" for r in rows]
        try:
            cols[name] = np.array([float(c) if c.strip() else math.nan for c in cells],
                                  dtype=np.float64)
        except ValueError:
            cols[name] = np.array(cells, dtype=str)
    return cols


def find_runs(dirs: list[str | os.PathLike]) -> tuple[list[Run], list[str]]:
    """Finished runs under each folder in ``dirs`` (searched recursively), sorted by name.

    Returns (runs, notes): notes name the run folders skipped as incomplete.
    Raises :class:`ReportError` for a folder that does not exist or holds no finished run.
    """
    runs: dict[Path, Run] = {}
    notes: list[str] = []
    for given in dirs:
        root = Path(given)
        if not root.is_dir():
            what = "not a folder" if root.exists() else "no such folder"
            raise ReportError(f"{given}: {what} (give run folders or multirun folders)")
        found = 0
        for run_dir in _run_dirs(root):
            rel = run_dir.relative_to(root).as_posix()
            name = Path(given).as_posix() if rel == "." else f"{Path(given).as_posix()}/{rel}"
            if not _is_complete(run_dir):
                notes.append(f"skipped incomplete run {name}")
                continue
            found += 1
            key = run_dir.resolve()
            if key not in runs:
                runs[key] = Run(run_dir, name, _read_summary(run_dir / "summary.json")).check()
        if not found:
            raise ReportError(f"{given}: no finished gpurecon run found in this folder or below "
                              "(a run folder holds summary.json)")
    return sorted(runs.values(), key=lambda r: r.name), notes


def _run_dirs(root: Path):
    """Folders holding summary.json, depth first in sorted order; a run's own subfolders
    (.hydra/) are not searched."""
    if (root / "summary.json").is_file():
        yield root
        return
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        yield from _run_dirs(child)


def _read_summary(path: Path) -> dict:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: cannot be read as JSON ({err})") from None
    if not isinstance(summary, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    return summary
