"""Structured config schemas (dataclasses in Hydra's ConfigStore).

The YAML files in ``conf/`` extend these schemas, so a typo in a key or a value of the
wrong type is rejected by Hydra with a message naming the key. Groups mirror the code's
seams: ``data/``, ``model/``, ``solver/``, ``target/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class DataConfig:
    # "auto": the real dataset when `root` is set (or $GPURECON_DATA_ROOT), else synthetic.
    kind: str = "auto"
    root: Optional[str] = None
    # Synthetic dataset, generated on first use into the cache.
    seed: int = 0
    n_channels: Optional[int] = None  # None: the real per-subject channel counts
    n_words: int = 100


@dataclass
class SignalConfig:
    l_freq: float = 70.0
    h_freq: float = 170.0
    stops: List[List[float]] = field(default_factory=lambda: [[98.0, 102.0], [148.0, 152.0]])
    order: int = 4
    dtype: str = "float32"
    chunk_channels: Optional[int] = None


@dataclass
class TargetConfig:
    # "trial_mean": one value per electrode per trial (the study);
    # "frames": the 50 ms / 10 ms frames inside each epoch (time-resolved extension).
    kind: str = "trial_mean"
    window: Optional[float] = None  # seconds from word onset; None: 2.0 for wav2vec2, else 1.0
    frame_length: float = 0.05
    frame_shift: float = 0.01


@dataclass
class FastTextConfig:
    name: str = "fasttext"
    checkpoint: str = "cc.nl.300.bin"
    mmap: bool = True


@dataclass
class GPT2Config:
    name: str = "gpt2"
    checkpoint: str = "gpt2"
    revision: Optional[str] = None
    layer: str = "last"
    batch_size: int = 64
    dtype: str = "float32"


@dataclass
class Wav2Vec2Config:
    name: str = "wav2vec2"
    checkpoint: str = "facebook/wav2vec2-xls-r-300m"
    revision: Optional[str] = None
    layer: str = "23"
    window: float = 2.0
    pooling: str = "flatten"
    pca_variance: float = 0.9
    batch_size: int = 8
    dtype: str = "float32"


@dataclass
class PlantedConfig:
    name: str = "planted"
    noise: float = 0.0
    seed: int = 0


@dataclass
class SolverConfig:
    # A number, or a list of numbers: the grid alpha x l1_ratio is fitted in one batched pass
    # (grid.csv, plus a nested selection as the run's honest score). Checked by solver_grid().
    alpha: Any = 1.0
    l1_ratio: Any = 0.5
    fit_intercept: bool = True
    tol: float = 1e-4
    max_iter: int = 1000
    cv: str = "loo"            # "loo" | "kfold"
    n_splits: int = 10         # for cv=kfold
    # Permutation null (Y rows shuffled, fitted as extra targets): an integer >= 0 (0: off),
    # or "auto"/null: AUTO_PERMUTATIONS[device type]. Checked by n_permutations_for().
    n_permutations: Any = "auto"
    memory_budget_gb: Optional[float] = None
    dtype: str = "float64"


@dataclass
class Config:
    subject: int = 1
    device: str = "auto"
    seed: int = 0
    cache_dir: str = "~/.cache/gpurecon"
    data: DataConfig = field(default_factory=DataConfig)
    signal: SignalConfig = field(default_factory=SignalConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    model: Any = MISSING
    solver: SolverConfig = field(default_factory=SolverConfig)


MODEL_SCHEMAS = {
    "fasttext": FastTextConfig,
    "gpt2": GPT2Config,
    "wav2vec2": Wav2Vec2Config,
    "planted": PlantedConfig,
}


# solver.n_permutations=auto: the default CPU run (planted model, 100 trials x 127 electrodes)
# stays around a minute on a loaded 2-core machine with 100; a GPU fits 1000 in seconds.
AUTO_PERMUTATIONS = {"cpu": 100, "cuda": 1000}


def _config_error(message: str) -> Exception:
    from .errors import ConfigError

    return ConfigError(message)


def _grid_values(name: str, value: Any, low: float, high: float | None) -> list[float]:
    allowed = f"a number in [{low}, {high}]" if high is not None else f"a number >= {low}"
    items = list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]
    if not items:
        raise _config_error(f"{name} must be {allowed} or a non-empty list of them, got []")
    out = []
    for item in items:
        ok = isinstance(item, (int, float)) and not isinstance(item, bool)
        if ok:
            item = float(item)
            ok = item == item and low <= item and (high is None or item <= high) and item != float("inf")
        if not ok:
            raise _config_error(f"{name} must be {allowed} or a list of them, got {item!r}")
        out.append(item)
    if len(set(out)) != len(out):
        raise _config_error(f"{name} lists a value twice: {out}")
    return out


def solver_grid(solver: Any) -> tuple[list[float], list[float], bool]:
    """Validated ``solver.alpha`` and ``solver.l1_ratio`` as lists, and whether either was
    given as a list (a grid run: grid.csv and a nested selection) rather than a number."""
    alphas = _grid_values("solver.alpha", solver.alpha, 0.0, None)
    l1_ratios = _grid_values("solver.l1_ratio", solver.l1_ratio, 0.0, 1.0)
    is_grid = any(isinstance(v, (list, tuple)) or OmegaConf.is_list(v)
                  for v in (solver.alpha, solver.l1_ratio))
    return alphas, l1_ratios, is_grid


def n_permutations_for(value: Any, device_type: str) -> int:
    """``solver.n_permutations`` as a count: an integer >= 0, or ``auto``/null (the default),
    :data:`AUTO_PERMUTATIONS` for the device type."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return AUTO_PERMUTATIONS.get(device_type, AUTO_PERMUTATIONS["cpu"])
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _config_error("solver.n_permutations must be an integer >= 0 (0: no permutation "
                            f"null) or 'auto', got {value!r}")
    return int(value)


def bids_subject(subject: Any) -> str:
    """``3`` -> ``sub-03`` (used in run folder names: ``${bids_sub:${subject}}``)."""
    try:
        return f"sub-{int(str(subject).removeprefix('sub-')):02d}"
    except ValueError:
        return f"sub-{subject}"


def register_configs() -> None:
    if not OmegaConf.has_resolver("bids_sub"):
        OmegaConf.register_new_resolver("bids_sub", bids_subject)
    from .sweep import register_resolvers  # ${job_dirname:}: sweep job folder names

    register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="target", name="target_schema", node=TargetConfig)
    cs.store(group="solver", name="solver_schema", node=SolverConfig)
    for name, schema in MODEL_SCHEMAS.items():
        cs.store(group="model", name=f"{name}_schema", node=schema)
