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
    alpha: float = 1.0
    l1_ratio: float = 0.5
    fit_intercept: bool = True
    tol: float = 1e-4
    max_iter: int = 1000
    cv: str = "loo"            # "loo" | "kfold"
    n_splits: int = 10         # for cv=kfold
    n_permutations: int = 0    # permutation null: Y rows shuffled, fitted as extra targets
    memory_budget_gb: Optional[float] = None
    dtype: str = "float64"


@dataclass
class Config:
    subject: int = 1
    device: str = "auto"
    devices: int = 1           # >1: Lightning Fabric ranks share the solver (gpurecon.parallel)
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


def bids_subject(subject: Any) -> str:
    """``3`` -> ``sub-03`` (used in run folder names: ``${bids_sub:${subject}}``)."""
    try:
        return f"sub-{int(str(subject).removeprefix('sub-')):02d}"
    except ValueError:
        return f"sub-{subject}"


def _pool_resolver(name: str):
    # conf/hydra/launcher/local_pool.yaml: a free GPU per pool worker (gpurecon.parallel)
    def resolve():
        from . import parallel
        return getattr(parallel, name)()
    return resolve


def register_configs() -> None:
    if not OmegaConf.has_resolver("bids_sub"):
        OmegaConf.register_new_resolver("bids_sub", bids_subject)
    for resolver, fn in (("gpurecon_free_gpu", "claim_free_gpu"), ("gpurecon_pool_size", "pool_size")):
        if not OmegaConf.has_resolver(resolver):
            OmegaConf.register_new_resolver(resolver, _pool_resolver(fn), use_cache=True)
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="target", name="target_schema", node=TargetConfig)
    cs.store(group="solver", name="solver_schema", node=SolverConfig)
    for name, schema in MODEL_SCHEMAS.items():
        cs.store(group="model", name=f"{name}_schema", node=schema)
