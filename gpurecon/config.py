"""Structured config schemas (dataclasses in Hydra's ConfigStore).

The YAML files in ``conf/`` extend these schemas, so a typo in a key or a value of the
wrong type is rejected by Hydra with a message naming the key. Groups mirror the code's
seams: ``data/``, ``model/``, ``solver/``, ``target/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from .errors import ConfigError


# Fixed option sets: Hydra rejects any other value with a message listing these. StrEnum
# members compare equal to their strings, so the stages receive plain strings.
class DataKind(StrEnum):
    auto = "auto"
    ibids = "ibids"
    synthetic = "synthetic"


class TargetKind(StrEnum):
    trial_mean = "trial_mean"
    frames = "frames"


class CV(StrEnum):
    loo = "loo"
    kfold = "kfold"


class FloatDtype(StrEnum):
    """Array dtypes of the signal and solver stages."""
    float32 = "float32"
    float64 = "float64"


class ModelDtype(StrEnum):
    """Compute dtypes of the transformers models (half precision on CUDA only)."""
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class SolverStrategy(StrEnum):
    """The solver engine's batch shape (gpurecon.solver.enet_path_fit's ``strategy``)."""
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class Pooling(StrEnum):
    flatten = "flatten"
    mean = "mean"


@dataclass
class DataConfig:
    # "auto": the real dataset when `root` is set (or $GPURECON_DATA_ROOT), else synthetic.
    kind: DataKind = DataKind.auto
    root: Optional[str] = None
    # Synthetic dataset, generated on first use into the cache.
    seed: int = 0
    n_channels: Optional[int] = None  # None: the real per-subject channel counts
    n_words: int = 100


@dataclass
class SignalConfig:
    l_freq: float = 70.0
    h_freq: float = 170.0
    # [[low, high], ...] Hz; ints or floats (checked by validate_config: OmegaConf's typed
    # nested lists refuse an int where a float is hinted, and [[98,102]] is a valid band-stop)
    stops: List[Any] = field(default_factory=lambda: [[98.0, 102.0], [148.0, 152.0]])
    order: int = 4
    dtype: FloatDtype = FloatDtype.float32
    chunk_channels: Optional[int] = None


@dataclass
class TargetConfig:
    # "trial_mean": one value per electrode per trial (the study);
    # "frames": the 50 ms / 10 ms frames inside each epoch (time-resolved extension).
    kind: TargetKind = TargetKind.trial_mean
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
    # "last", "all", an index, or a list of indices fitted in one run: Any, as str refuses lists
    layer: Any = "last"
    batch_size: int = 64
    dtype: ModelDtype = ModelDtype.float32


@dataclass
class Wav2Vec2Config:
    name: str = "wav2vec2"
    checkpoint: str = "facebook/wav2vec2-xls-r-300m"
    revision: Optional[str] = None
    layer: Any = "23"   # as GPT2Config.layer
    window: float = 2.0
    pooling: Pooling = Pooling.flatten
    pca_variance: float = 0.9
    batch_size: int = 8
    dtype: ModelDtype = ModelDtype.float32


@dataclass
class PlantedConfig:
    name: str = "planted"
    # The planted features are the synthetic dataset's ground truth: there is no checkpoint.
    # The key exists so that one sweep can set model.checkpoint for every model
    # (`-m model=planted,gpt2 model.checkpoint=tiny`); planted ignores it.
    checkpoint: str = "ground truth"
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
    cv: CV = CV.loo
    n_splits: int = 10         # for cv=kfold
    # Permutation null (Y rows shuffled, fitted as extra targets): an integer >= 0 (0: off),
    # or "auto"/null: AUTO_PERMUTATIONS[device type]. Checked by n_permutations_for().
    n_permutations: Any = "auto"
    # The most problems (targets x folds x grid points x (1 + permutations)) a run may fit: a
    # run estimated beyond it stops at start-up (a typo like n_permutations=1000000000 would
    # run for ever). null: no limit. Checked by check_solver_cost().
    max_problems: Optional[float] = 1e10
    memory_budget_gb: Optional[float] = None
    dtype: FloatDtype = FloatDtype.float64
    # auto: the GPU path (one batch per round, fewer launches and host syncs) on CUDA or at a
    # memory budget >= 16 GiB, else the CPU path (batches bucketed by working-set size)
    strategy: SolverStrategy = SolverStrategy.auto


@dataclass
class Config:
    subject: int = 1
    device: str = "auto"
    devices: int = 1           # >1: Lightning Fabric ranks share the solver (gpurecon.parallel)
    seed: int = 0
    cache_dir: str = "~/.cache/gpurecon"
    progress: bool = True      # tqdm bars on stderr
    resume: bool = False       # skip a run whose folder already holds a complete set of outputs
    overwrite: bool = False    # write into a folder holding other files or another run's
    # Seconds a run waits for a cache entry another live process is computing (its lock),
    # then stops with a message naming that process; null: wait for ever.
    cache_lock_timeout: Optional[float] = 3600.0
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


def _pool_resolver(name: str):
    # conf/hydra/launcher/local_pool.yaml: a free GPU per pool worker (gpurecon.parallel)
    def resolve():
        from . import parallel
        return getattr(parallel, name)()
    return resolve


def register_configs() -> None:
    if not OmegaConf.has_resolver("bids_sub"):
        OmegaConf.register_new_resolver("bids_sub", bids_subject)
    from .sweep import register_resolvers  # ${job_dirname:}: sweep job folder names

    register_resolvers()
    from .cli_help import register_help_resolvers  # the --help page's lists of conf/

    register_help_resolvers()
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


# ----------------------------------------------------------------------------- validation
# Every check that needs only the config runs in `validate_config`, before anything is loaded,
# generated or cached. Checks that need the recording (its sampling rate, trial spacing and
# count) run in `validate_for_recording` as soon as those are known.

# Subjects of SingleWordProductionDutch-iBIDS (the synthetic dataset mirrors them).
SUBJECTS = range(1, 11)


def _fail(key: str, allowed: str, value: Any) -> None:
    raise ConfigError(f"{key} must be {allowed}, got {value!r}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_range(key: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, integer: bool = False, allowed: str) -> None:
    ok = (isinstance(value, int) and not isinstance(value, bool)) if integer else _number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        _fail(key, allowed, value)


def _check_layer(key: str, layer: Any) -> None:
    """One layer (``last``, an index), ``all``, or a non-empty list of indices / ``last``;
    the range is checked against the checkpoint (embeddings.stage.check_checkpoint)."""
    from .embeddings.base import parse_layer

    if OmegaConf.is_config(layer):
        layer = OmegaConf.to_container(layer)
    try:
        parse_layer(layer)
    except ValueError as err:   # "layer must be ...": name the setting
        raise ConfigError(f"{key}{str(err).removeprefix('layer')}") from None


def validate_config(cfg: Any) -> None:
    """Check every value of a composed config that the config alone decides.

    Raises
    ------
    ConfigError
        Naming the first bad key, the allowed values and the value received.
    """
    device_type = _check_device(cfg.device)
    data, signal, target, solver, model = cfg.data, cfg.signal, cfg.target, cfg.solver, cfg.model
    _check_range("subject", cfg.subject, low=1, integer=True, allowed="a subject number >= 1")
    # numpy's generators (default_rng) take seeds >= 0 only
    _check_range("seed", cfg.seed, low=0, integer=True,
                 allowed="an integer >= 0 (the seed of the permutations and K-fold splits)")
    _check_range("data.seed", data.seed, low=0, integer=True,
                 allowed="an integer >= 0 (the seed of the synthetic dataset)")
    if cfg.get("cache_lock_timeout") is not None:
        _check_range("cache_lock_timeout", cfg.cache_lock_timeout, low=0, low_open=True,
                     allowed="a positive number of seconds or null (wait for ever)")
    # 1) data
    if data.n_channels is not None:
        _check_range("data.n_channels", data.n_channels, low=1, integer=True,
                     allowed="a positive integer or null (the real channel counts)")
    from .data.words import WORDS

    _check_range("data.n_words", data.n_words, low=1, high=len(WORDS), integer=True,
                 allowed=f"an integer in 1..{len(WORDS)}")
    # 2) signal: the Nyquist limit is checked once the sampling rate is known
    _check_range("signal.l_freq", signal.l_freq, low=0, low_open=True, allowed="a frequency > 0 Hz")
    _check_range("signal.h_freq", signal.h_freq, low=0, low_open=True, allowed="a frequency > 0 Hz")
    if not signal.l_freq < signal.h_freq:
        raise ConfigError(f"signal.l_freq must be below signal.h_freq (the band-pass edges, the "
                          f"study's 70 and 170 Hz), got signal.l_freq={signal.l_freq:g}, "
                          f"signal.h_freq={signal.h_freq:g}")
    _check_range("signal.order", signal.order, low=1, high=16, integer=True,
                 allowed="an integer in 1..16")
    for stop in signal.stops:
        pair = list(stop) if isinstance(stop, (list, tuple)) or OmegaConf.is_list(stop) else [stop]
        if len(pair) != 2 or not all(_number(f) for f in pair) or not 0 < pair[0] < pair[1]:
            _fail("signal.stops", "a list of [low, high] band-stops in Hz with 0 < low < high",
                  OmegaConf.to_container(signal.stops))
    if signal.chunk_channels is not None:
        _check_range("signal.chunk_channels", signal.chunk_channels, low=1, integer=True,
                     allowed="a positive integer or null (automatic)")
    # 3) target
    if target.window is not None:
        _check_range("target.window", target.window, low=0, low_open=True,
                     allowed="a positive number of seconds (or null: 1 s, 2 s for wav2vec2)")
    _check_range("target.frame_length", target.frame_length, low=0, low_open=True,
                 allowed="a positive number of seconds")
    _check_range("target.frame_shift", target.frame_shift, low=0, low_open=True,
                 allowed="a positive number of seconds")
    # 4) model
    _check_model(model, device_type)
    # 5) solver
    _check_range("devices", cfg.devices, low=1, integer=True,
                 allowed="an integer >= 1 (ranks sharing the solver; one per GPU)")
    solver_grid(solver)   # alpha >= 0 and l1_ratio in [0, 1]: numbers or lists of them
    _check_range("solver.tol", solver.tol, low=0, low_open=True, allowed="a number > 0")
    _check_range("solver.max_iter", solver.max_iter, low=1, integer=True, allowed="an integer >= 1")
    n_permutations_for(solver.n_permutations, "cpu")   # an integer >= 0, or auto/null
    if solver.cv == CV.kfold:
        _check_range("solver.n_splits", solver.n_splits, low=2, integer=True,
                     allowed="an integer >= 2 for solver.cv=kfold")
    if solver.memory_budget_gb is not None:
        _check_range("solver.memory_budget_gb", solver.memory_budget_gb, low=0, low_open=True,
                     allowed="a positive number of GiB or null (automatic)")
    if solver.get("max_problems") is not None:
        _check_range("solver.max_problems", solver.max_problems, low=1,
                     allowed="a number >= 1 or null (no limit)")


def _check_device(device: Any) -> str:
    """``device``: auto | cpu | cuda | cuda:N, and present; returns the device type."""
    from .device import resolve_device

    try:
        return resolve_device(device).type
    except ValueError as err:
        raise ConfigError(f"device: {err}") from None


def _check_model(model: Any, device_type: str) -> None:
    name = model.name
    if name not in MODEL_SCHEMAS:
        _fail("model.name", f"one of {', '.join(MODEL_SCHEMAS)}", name)
    if name != "planted" and not str(model.get("checkpoint") or "").strip():
        _fail("model.checkpoint", "a local file or folder, a Hugging Face hub name, or 'tiny' "
                                  "(an untrained test model)", model.get("checkpoint"))
    settings = [f.name for f in fields(MODEL_SCHEMAS[name])]
    for key in model.keys():   # `+model.x=...` adds keys the schema cannot reject
        if key not in settings:
            raise ConfigError(f"model.{key} is not a setting of model={name}; its settings are "
                              f"{', '.join('model.' + k for k in settings)}")
    if name in ("gpt2", "wav2vec2"):
        _check_layer("model.layer", model.layer)
        _check_range("model.batch_size", model.batch_size, low=1, integer=True,
                     allowed="a positive integer")
        if model.dtype != ModelDtype.float32 and device_type != "cuda":
            _fail("model.dtype", "float32 on the CPU (float16/bfloat16 need device=cuda)", str(model.dtype))
    if name == "wav2vec2":
        _check_range("model.window", model.window, low=0, low_open=True,
                     allowed="a positive number of seconds")
        _check_range("model.pca_variance", model.pca_variance, low=0, high=1, low_open=True,
                     allowed="a fraction in (0, 1]")
    if name == "planted":
        _check_range("model.noise", model.noise, low=0, allowed="a number >= 0")
        _check_range("model.seed", model.seed, low=0, integer=True, allowed="an integer >= 0")


# Leave-one-out needs a held-out trial and at least two training trials (a training mean and a
# fit with one trial has no variance to standardise).
MIN_TRIALS = 3


def _check_frames(target: Any, sfreq: float, window: float) -> None:
    """``target=frames``: at least one frame of ``frame_length`` plus ``frame_shift`` must fit
    in the window (the frame count of :func:`gpurecon.signal.framing.frame_bounds`)."""
    if target.frame_length > window:
        _fail("target.frame_length", f"at most the window ({window:g} s)", target.frame_length)
    from .signal.framing import frame_bounds

    try:
        frame_bounds(int(round(window * sfreq)), sfreq, target.frame_length, target.frame_shift)
    except ValueError:
        raise ConfigError(f"target.frame_shift plus target.frame_length must be at most the window "
                          f"({window:g} s) so that one frame fits in it, got target.frame_shift="
                          f"{target.frame_shift!r}, target.frame_length={target.frame_length!r}"
                          ) from None


def validate_for_recording(cfg: Any, *, sfreq: float, onsets_s: Any, duration_s: float,
                           window: float) -> None:
    """The checks that need the recording: Nyquist, the window within the trial spacing,
    and K-fold splits within the trial count.

    Parameters
    ----------
    sfreq : float
        sEEG sampling rate (Hz).
    onsets_s : sequence of float
        Word onsets (s), in trial order.
    duration_s : float
        Length of the recording (s).
    window : float
        The target window (s) the run uses (``target.window`` or the model's default).
    """
    nyquist = sfreq / 2.0
    signal, target, solver = cfg.signal, cfg.target, cfg.solver
    for key, value in (("signal.l_freq", signal.l_freq), ("signal.h_freq", signal.h_freq)):
        if not value < nyquist:
            _fail(key, f"below the Nyquist frequency {nyquist:g} Hz of this recording "
                       f"(sampled at {sfreq:g} Hz)", value)
    for stop in signal.stops:
        if not stop[1] < nyquist:
            _fail("signal.stops", f"band-stops below the Nyquist frequency {nyquist:g} Hz",
                  OmegaConf.to_container(signal.stops))
    from .signal.filters import validate_band

    try:   # band-stops inside the pass-band and not overlapping: the filter module's own rules
        validate_band(float(sfreq), signal.l_freq, signal.h_freq,
                      [list(stop) for stop in signal.stops], signal.order)
    except ValueError as err:   # its messages start with the argument: l_freq, stops, order
        raise ConfigError(f"signal.{err}") from None
    onsets = sorted(float(t) for t in onsets_s)
    n_trials = len(onsets)
    if n_trials < MIN_TRIALS:
        raise ConfigError(f"cross-validation needs at least {MIN_TRIALS} word trials (one held "
                          f"out, the others to fit); this recording has {n_trials} (data.n_words="
                          f"{cfg.data.n_words} for the synthetic dataset; a real recording's "
                          f"events.tsv)")
    gaps = [b - a for a, b in zip(onsets, onsets[1:])] + ([duration_s - onsets[-1]] if onsets else [])
    spacing = min(gaps) if gaps else float("inf")
    key = "target.window" if target.window is not None else "model.window"
    if window > spacing + 1e-9:
        _fail(key, f"at most the trial spacing of this recording ({spacing:g} s between word "
                   f"onsets / to the end)", window)
    if target.kind == TargetKind.frames:
        _check_frames(target, sfreq, window)
    if solver.cv == CV.kfold and not 2 <= solver.n_splits <= n_trials:
        _fail("solver.n_splits", f"an integer in 2..{n_trials} (the number of trials) for "
                                 f"solver.cv=kfold", solver.n_splits)


def n_frames_for(target: Any, sfreq: float, window: float) -> int:
    """Target columns per electrode: 1 for ``trial_mean``, the frame count for ``frames``."""
    if target.kind != TargetKind.frames:
        return 1
    from .signal.framing import frame_bounds

    return len(frame_bounds(int(round(window * sfreq)), sfreq, target.frame_length,
                            target.frame_shift)[0])


def check_solver_cost(cfg: Any, *, n_trials: int, n_targets: int, device_type: str,
                      n_layers: int = 1) -> int:
    """Estimate the ElasticNet problems a run fits and refuse a run beyond
    ``solver.max_problems`` before any of them is started.

    problems = targets x folds x grid points x (1 + permutations [+ 5 inner folds with a
    grid, the nested selection]) x layers (``model.layer=all`` or a list).

    Returns
    -------
    int
        The estimate (logged by the caller).

    Raises
    ------
    ConfigError
        Naming the settings that make the run this large and ``solver.max_problems``.
    """
    solver = cfg.solver
    alphas, l1_ratios, is_grid = solver_grid(solver)
    n_perm = n_permutations_for(solver.n_permutations, device_type)
    folds = n_trials if solver.cv == CV.loo else int(solver.n_splits)
    grid = len(alphas) * len(l1_ratios)
    problems = int(n_targets) * folds * grid * (1 + n_perm + (5 if is_grid else 0)) * int(n_layers)
    layers = f" x {n_layers} layers (model.layer)" if n_layers > 1 else ""
    limit = solver.get("max_problems")
    if limit is not None and problems > limit:
        raise ConfigError(
            f"solver.n_permutations={n_perm} makes this run about {problems:.3g} ElasticNet "
            f"problems ({n_targets} targets x {folds} folds x {grid} grid point(s) x "
            f"{1 + n_perm} fits with the permutations{layers}), above solver.max_problems={limit:.3g}: "
            f"it would not finish. Lower solver.n_permutations (or the grid), or raise the "
            f"limit explicitly: solver.max_problems={problems:.0e} (null: no limit)")
    return problems
