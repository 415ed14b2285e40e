"""One run of gpurecon: wires the stages in order and writes the outputs.

data -> signal (high gamma targets) -> embeddings -> solver (cross-validated ElasticNet)
-> evaluation (scores, baselines, permutation null) -> outputs.

Every stage is a plain function of arrays/tensors with the device passed in; this module
only reads the config, calls them, caches, logs and writes.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import __version__
from .cache import Cache, make_key
from .config import (SUBJECTS, check_solver_cost, n_frames_for, validate_config,
                     validate_for_recording)
from .device import describe_device, resolve_device
from .errors import ConfigError, DataError, StorageError
from .outputs import DISK_FULL, discard_staging, is_complete, make_staging, publish, write_text
from .progress import chain, stage_bar
from .run_summary import verdict_line, write_summary

if TYPE_CHECKING:
    from .evaluation import GridEvaluation

log = logging.getLogger("gpurecon")

# Bump when the synthetic generator changes what it writes (invalidates cached datasets).
SYNTHETIC_VERSION = 1


@dataclass
class Dataset:
    root: Path
    kind: str          # "real" | "synthetic"
    reason: str        # why this dataset was chosen (logged and recorded)


@dataclass
class Provenance:
    """What every output file records: which code, device, data and model made it."""

    fields: dict[str, Any] = field(default_factory=dict)

    def update(self, **kw: Any) -> None:
        self.fields.update(kw)

    def comments(self) -> list[str]:
        keep = ("gpurecon", "device", "data", "data_root", "subject", "model", "checkpoint", "untrained")
        return [f"{k}: {self.fields[k]}" for k in keep if k in self.fields]


def resolve_dataset(data_cfg: DictConfig, subject: int, cache: Cache) -> Dataset:
    """Choose the real dataset (``data.root``) or the synthetic one (cheap: generates nothing;
    see :func:`ensure_synthetic`)."""
    kind = str(data_cfg.kind)   # one of the DataKind values (the schema rejects others)
    root = data_cfg.root
    if kind == "ibids" and not root:
        raise DataError("data=ibids needs data.root=/path/to/SingleWordProductionDutch-iBIDS "
                        "(or $GPURECON_DATA_ROOT); use data=synthetic to run without it")
    if kind == "ibids" or (kind == "auto" and root):
        from .data.ibids import is_synthetic

        path = Path(root).expanduser()
        # A synthetic dataset pointed to by data.root is still synthetic: say so everywhere.
        found = "synthetic" if path.is_dir() and is_synthetic(path) else "real"
        return Dataset(path, found, f"data.root={root}")
    if cache.root is None:
        raise ConfigError("the synthetic dataset is generated into cache_dir; cache_dir must be set")
    key = make_key(version=SYNTHETIC_VERSION, seed=data_cfg.seed, n_channels=data_cfg.n_channels,
                   n_words=data_cfg.n_words, subject=int(subject))
    reason = ("no data.root set (nor $GPURECON_DATA_ROOT)" if kind == "auto" else "data=synthetic")
    return Dataset(cache.root / "synthetic" / key, "synthetic", reason)


def check_subject(dataset: Dataset, subject: int, generated: bool) -> None:
    """The subject must exist: 1..10 for the generated synthetic dataset, else a row of the
    dataset's ``participants.tsv`` (checked again, with the files, by the loader)."""
    if generated:
        if subject not in SUBJECTS:
            raise ConfigError(f"subject must be one of {SUBJECTS.start}..{SUBJECTS.stop - 1} (the "
                              f"dataset's participants), got {subject!r}")
        return
    table = dataset.root / "participants.tsv"
    if not table.is_file():
        return   # the loader names what is missing
    rows = [line.split("\t")[0].strip() for line in table.read_text().splitlines()[1:] if line.strip()]
    if rows and f"sub-{int(subject):02d}" not in rows:
        raise ConfigError(f"subject must be one of the participants in {table} "
                          f"({', '.join(rows)}), got {subject!r}")


def synthetic_layout(n_words: int) -> dict:
    """Sampling rate, word onsets and duration of a generated synthetic recording (from the
    generator's defaults), so the checks that need a recording run before generating it."""
    import inspect

    from .data.synthetic import write_synthetic_dataset

    d = {k: v.default for k, v in inspect.signature(write_synthetic_dataset).parameters.items()}
    period = d["word_duration"] + d["fixation_duration"]
    onsets = [d["lead_in"] + k * period for k in range(int(n_words))]
    return dict(sfreq=float(d["sfreq"]), onsets_s=onsets,
                duration_s=2 * d["lead_in"] + period * int(n_words))


def is_generated(dataset: Dataset) -> bool:
    """The synthetic dataset made in the cache (not one the user pointed data.root at)."""
    return dataset.kind == "synthetic" and not dataset.reason.startswith("data.root")


def ensure_synthetic(dataset: Dataset, data_cfg: DictConfig, subject: int, cache: Cache,
                     progress=None) -> None:
    """Generate the synthetic dataset into the cache on first use: atomically, under the
    entry's lock (a concurrent run waits, then uses it)."""
    if not is_generated(dataset) or (dataset.root / "dataset_description.json").exists():
        return
    from .data.synthetic import write_synthetic_dataset

    with cache.lock("synthetic", dataset.root.name):
        if (dataset.root / "dataset_description.json").exists():
            log.info("synthetic dataset generated by another process meanwhile: %s", dataset.root)
            return
        log.info("generating the synthetic dataset (seed %d) into %s", data_cfg.seed, dataset.root)
        write_synthetic_dataset(dataset.root, subjects=[int(subject)], seed=data_cfg.seed,
                                n_channels=data_cfg.n_channels, n_words=data_cfg.n_words,
                                progress=progress)


def check_checkpoint(model_cfg: DictConfig) -> None:
    """A checkpoint that is not there (a missing path; offline, a hub name not in the local
    cache) fails before any data is generated or loaded, naming model.checkpoint; so do a
    checkpoint that ships its own code or is of another architecture, and a ``model.layer``
    outside the checkpoint's layers where its config can be read locally."""
    from .embeddings.checkpoints import (TINY_CHECKPOINTS, check_checkpoint_config, looks_like_path,
                                         resolve_hub)
    from .errors import ModelError

    spec = model_cfg.get("checkpoint")
    if model_cfg.name == "planted" or not spec:
        return
    revision = model_cfg.get("revision")
    if spec not in TINY_CHECKPOINTS:
        if model_cfg.name == "fasttext" or looks_like_path(spec):
            if not Path(spec).expanduser().exists():
                raise ModelError(f"model.checkpoint={spec!r}: no such file or folder "
                                 f"({Path(spec).expanduser().resolve()})")
        else:
            revision = resolve_hub(spec, revision, model_cfg.name).revision
    check_checkpoint_config(model_cfg.name, spec, revision)
    _check_layer_range(model_cfg, spec, revision)


def _check_layer_range(model_cfg: DictConfig, spec: str, revision: str | None) -> None:
    """``model.layer`` against the checkpoint's block count, read without loading weights."""
    from .embeddings.base import parse_layer, resolve_layer
    from .embeddings.checkpoints import n_blocks_without_weights

    layer = model_cfg.get("layer")
    if layer is None:
        return
    n_blocks = n_blocks_without_weights(model_cfg.name, spec, revision)
    if n_blocks is not None:
        resolve_layer(parse_layer(layer), n_blocks, spec)  # ModelError naming model.layer


def target_window(cfg: DictConfig) -> float:
    """Seconds of high gamma after each word onset: the study used 1 s for the text models
    and 2 s for Wav2Vec2 (the span of audio it embeds)."""
    if cfg.target.window is not None:
        return float(cfg.target.window)
    return float(cfg.model.window) if cfg.model.name == "wav2vec2" else 1.0


def build_targets(rec, signal_cfg: DictConfig, target_cfg: DictConfig, window: float,
                  device: torch.device, cache: Cache, progress=None) -> tuple[torch.Tensor, dict]:
    """High gamma of the whole recording, cut from each word onset, on ``device``.

    Returns Y, (trials, targets): ``trial_mean`` gives one column per usable electrode;
    ``frames`` gives electrodes x frames columns (electrode-major). Flat channels are
    excluded. Cached on the NWB file's bytes and every parameter that changes Y.
    """
    from .signal import epoch_frames, epochs, high_gamma, trial_mean

    # target.kind and signal.dtype are Enums of the schema; ranges were checked at start-up.
    good = rec.good_channels
    params = dict(signal=OmegaConf.to_container(signal_cfg, enum_to_str=True),
                  target=OmegaConf.to_container(target_cfg, enum_to_str=True),
                  window=window, device=device.type, good=good.tolist())
    # [[98, 102]] and [[98.0, 102.0]] are the same band-stops: one cache entry, one filter
    stops = [[float(f) for f in stop] for stop in signal_cfg.stops]
    params["signal"]["stops"] = stops
    key = make_key(nwb=rec.files["nwb"], events=rec.files.get("events"),
                   channels=rec.files.get("channels"), **params)

    def compute():
        t0 = time.perf_counter()
        seeg = torch.from_numpy(rec.seeg).to(device=device, dtype=getattr(torch, signal_cfg.dtype))
        env = high_gamma(seeg, rec.sfreq, l_freq=signal_cfg.l_freq, h_freq=signal_cfg.h_freq,
                         stops=[tuple(s) for s in stops], order=signal_cfg.order,
                         chunk_channels=signal_cfg.chunk_channels, device=device,
                         progress=progress)
        del seeg
        env = env[torch.from_numpy(good).to(device)]
        if target_cfg.kind == "trial_mean":
            Y = trial_mean(epochs(env, rec.trials.sample, rec.sfreq, length=window))
        else:
            Y = epoch_frames(env, rec.trials.sample, rec.sfreq, length=window,
                             window=target_cfg.frame_length, shift=target_cfg.frame_shift)
            Y = Y.reshape(Y.shape[0], -1)
        log.info("high gamma on %s: %d channels x %d samples -> targets %s in %.2f s",
                 describe_device(device), rec.n_channels, rec.seeg.shape[1], tuple(Y.shape),
                 time.perf_counter() - t0)
        return {"Y": Y}, {"subject": rec.subject, "data": rec.source, **params}

    arrays, _, hit = cache.get_or_compute("targets", key, compute)
    Y = torch.as_tensor(arrays["Y"]).to(device)
    if hit:
        log.info("high-gamma targets loaded from the cache (%s/%s)", "targets", key)
    return Y, {"cache_key": key, "cache_hit": hit, "kind": target_cfg.kind, "window_s": window,
               "n_frames": Y.shape[1] // int(good.sum()), **params}


def compute_embeddings(rec, model_cfg: DictConfig, device: torch.device, cache: Cache):
    """The model's one vector per trial, on ``device``; the model is freed afterwards."""
    from .embeddings import get_embedder

    params = OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)
    name = params.pop("name")
    if name == "planted":
        params.pop("checkpoint", None)  # ground truth: a checkpoint set for a sweep is ignored
    embedder = get_embedder(name, **params)
    try:
        out = embedder.embed(rec, device=device, cache=cache)
    finally:
        embedder.release()  # free the model before the solver starts
    if out.X.ndim != 2:
        raise DataError(f"model.layer={model_cfg.get('layer')!r} gives one embedding per layer; "
                        "the app fits one layer per run: choose a single layer index")
    return out


# Inner CV of the nested selection within each outer training set (deterministic splits).
NESTED_INNER_CV = "kfold:5"


@dataclass
class NestedSelection:
    """The grid point chosen by inner CV on each outer training fold, per target."""

    inner_cv: str
    choice: torch.Tensor               # (outer folds, targets) int64, index into the grid

    def summary(self, grid: list) -> dict:
        """The ``nested`` block of summary.json (without its scores)."""
        counts = torch.bincount(self.choice.flatten().cpu(), minlength=len(grid))
        per_fold = [torch.bincount(row.cpu(), minlength=len(grid)).argmax().item() for row in self.choice]
        return {
            "inner_cv": self.inner_cv, "select": "per_target",
            "n_outer_folds": int(self.choice.shape[0]), "n_targets": int(self.choice.shape[1]),
            # how often each grid point was chosen, over (outer fold, target) pairs
            "choice_counts": [{"alpha": a, "l1_ratio": l1, "count": int(c)}
                              for (a, l1), c in zip(grid, counts.tolist())],
            # per outer fold, the grid point chosen for most targets
            "alpha_per_fold": [grid[g][0] for g in per_fold],
            "l1_ratio_per_fold": [grid[g][1] for g in per_fold],
        }


@dataclass
class CrossValidatedFit:
    """What the solver stage hands to evaluation (tensors on the run's device).

    Attributes
    ----------
    pred : Tensor (trials, targets)
        The run's held-out predictions: the single grid point's, or with a grid the nested
        selection's (honest: each outer fold's point chosen without its held-out trials).
    baseline : Tensor (trials, targets)
        Held-out mean of each fold's training trials.
    grid : list of (alpha, l1_ratio)
    grid_pred : Tensor (grid, trials, targets)
    null_pred : Tensor (permutations, grid, trials, targets) or None
    permutations : int array (permutations, trials) or None
    n_not_converged : list of int, per grid point (its null problems included)
    nested : NestedSelection or None (only with a grid)
    meta : dict, the ``solver`` block of summary.json
    """

    pred: torch.Tensor
    baseline: torch.Tensor
    grid: list
    grid_pred: torch.Tensor
    null_pred: torch.Tensor | None
    permutations: np.ndarray | None
    n_not_converged: list[int]
    nested: NestedSelection | None
    meta: dict


def _plain(value: Any) -> Any:
    """A config value as given (ListConfig -> list) for summary.json."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def fit_cross_validated(emb, Y: torch.Tensor, solver_cfg: DictConfig, device: torch.device,
                        seed: int, progress=None, devices: int = 1) -> CrossValidatedFit:
    """Held-out ElasticNet predictions for every trial, the mean-of-training baseline and,
    with ``solver.n_permutations``, the permutation null (fitted as extra targets).

    With a list in ``solver.alpha`` / ``solver.l1_ratio`` every grid point is fitted in one
    batched pass, and a nested selection (inner CV inside each outer training fold) gives
    the run's predictions."""
    from .config import n_permutations_for, solver_grid
    from .evaluation import training_mean_predictions
    from .solver import kfold, leave_one_out, permutations

    alphas, l1_ratios, is_grid = solver_grid(solver_cfg)
    n = Y.shape[0]
    if solver_cfg.cv == "loo":
        folds = leave_one_out(n)
    elif solver_cfg.cv == "kfold":
        folds = kfold(n, solver_cfg.n_splits, shuffle=True, seed=seed)
    else:
        raise ConfigError(f"solver.cv must be 'loo' or 'kfold', got {solver_cfg.cv!r}")
    if solver_cfg.dtype not in ("float32", "float64"):
        raise ConfigError(f"solver.dtype must be 'float32' or 'float64', got {solver_cfg.dtype!r}")
    n_perm = n_permutations_for(solver_cfg.n_permutations, device.type)
    perms = permutations(n, n_perm, seed) if n_perm else None
    # Wav2Vec2 frames are reduced by a PCA fitted inside each training fold (the study fitted
    # it on all trials, which leaks the held-out trial into its own features).
    preprocess = (f"pca:{emb.meta['pca_variance']}" if emb.meta.get("fold_preprocessing") == "pca"
                  else None)
    budget = (None if solver_cfg.memory_budget_gb is None
              else int(solver_cfg.memory_budget_gb * 2**30))
    common = dict(folds=folds, preprocess=preprocess, fit_intercept=solver_cfg.fit_intercept,
                  tol=solver_cfg.tol, max_iter=solver_cfg.max_iter, device=device,
                  memory_budget=budget, dtype=getattr(torch, solver_cfg.dtype),
                  strategy=str(solver_cfg.get("strategy", "auto")))
    if n_perm:
        log.info("permutation null: %d permutations (solver.n_permutations=%s; 0 turns it off), "
                 "fitted as extra targets: %d x the problems of the fit itself",
                 n_perm, solver_cfg.n_permutations, n_perm + 1)
    extra = {"progress": progress} if devices == 1 else {}
    try:
        nested = None
        if is_grid:
            log.info("grid of %d alpha x %d l1_ratio: nested selection (inner %s in each outer fold)",
                     len(alphas), len(l1_ratios), NESTED_INNER_CV)
            # the outer fits of every grid point carry the null (permuted copies as extra
            # targets); the inner search, the outer fits and the null are sharded over `devices`
            nested = _solver("nested_cross_val_predict", devices, device)(
                emb.X, Y, alphas, l1_ratios, inner=NESTED_INNER_CV, select="per_target", permutations=perms,
                **{k: v for k, v in common.items() if k != "device"}, **extra)
            res = nested.outer
        else:
            solve = _solver("cross_val_predict", devices, device)
            res = solve(emb.X, Y, alphas=alphas, l1_ratios=l1_ratios, permutations=perms,
                        **{k: v for k, v in common.items() if k != "device"}, **extra)
    except ValueError as err:  # bad solver settings: one message naming the argument
        raise ConfigError(f"solver: {err}") from None
    train = res.train_masks
    G = len(res.grid)
    not_conv = (~res.converged).sum((0, 2)).tolist() if res.converged.numel() else [0] * G
    meta = {
        "alpha": _plain(solver_cfg.alpha), "l1_ratio": _plain(solver_cfg.l1_ratio),
        "grid": [list(g) for g in res.grid], "cv": solver_cfg.cv,
        "n_folds": int(train.shape[0]), "fold_preprocessing": preprocess,
        "n_features_per_fold": (None if res.n_features is None
                                else [int(v) for v in res.n_features.tolist()]),
        "n_not_converged": res.n_not_converged, "worst_gap_ratio": res.worst_gap_ratio,
        "n_problems": int(res.converged.numel()), "dtype": solver_cfg.dtype, "strategy": common["strategy"],
        "tol": solver_cfg.tol, "max_iter": solver_cfg.max_iter,
        "n_permutations": n_perm, "n_permutations_setting": _plain(solver_cfg.n_permutations),
        "permutation_seed": seed if n_perm else None, "seconds": res.seconds,
    }
    if res.n_not_converged:
        log.warning("solver: %d of %d problems did not reach the tolerance (worst gap %.3g x tol)",
                    res.n_not_converged, res.converged.numel(), res.worst_gap_ratio)
    grid_pred = res.predictions if res.predictions.ndim == 3 else res.predictions[..., None]
    pred = grid_pred[0]
    if nested is not None:
        # each trial from the point its outer fold chose: the same numbers as grid_pred's
        held_out_fold = (~train).to(torch.int8).argmax(0).to(grid_pred.device)
        pick = nested.choice.to(grid_pred.device)[held_out_fold]                # (trials, targets)
        pred = grid_pred.gather(0, pick[None]).squeeze(0)
    return CrossValidatedFit(
        pred=pred,
        baseline=training_mean_predictions(Y.to(torch.float64), train.to(Y.device)),
        grid=[tuple(g) for g in res.grid], grid_pred=grid_pred,
        null_pred=res.null_predictions, permutations=perms,
        n_not_converged=[int(v) for v in not_conv],
        nested=None if nested is None else NestedSelection(NESTED_INNER_CV, nested.choice),
        meta=meta)


def _solver(name: str, devices: int, device: torch.device):
    """``cross_val_predict`` or ``nested_cross_val_predict`` on ``device``, or its twin in
    :mod:`gpurecon.parallel` sharded over ``devices`` Fabric ranks."""
    from functools import partial

    if devices == 1:
        from . import solver
        return partial(getattr(solver, name), device=device)
    from . import parallel
    return partial(getattr(parallel, f"sharded_{name}"), devices=devices, device=device)


def provenance_for(cfg: DictConfig, device: torch.device, dataset: Dataset) -> Provenance:
    return Provenance({
        "gpurecon": __version__,
        "torch": torch.__version__,
        "device": describe_device(device),
        "host": platform.node(),
        "data": dataset.kind,
        "data_root": str(dataset.root),
        "data_reason": dataset.reason,
        "subject": int(cfg.subject),
        "model": cfg.model.name,
        "checkpoint": ("ground truth" if cfg.model.name == "planted"
                       else cfg.model.get("checkpoint", "ground truth")),
    })


def evaluate(fit: CrossValidatedFit, Y: torch.Tensor, cv: str) -> "GridEvaluation":
    """Scores of the run beside its chance levels, for every grid point and the nested
    selection (:func:`gpurecon.evaluation.evaluate_grid`)."""
    from .evaluation import evaluate_grid

    return evaluate_grid(grid_pred=fit.grid_pred, Y=Y, baseline=fit.baseline, grid=fit.grid,
                         n_not_converged=fit.n_not_converged, null_pred=fit.null_pred,
                         permutations=fit.permutations,
                         nested_pred=fit.pred if fit.nested is not None else None, cv=cv)


def _column_info(rec, n_cols: int) -> tuple[list[str], list[str], np.ndarray]:
    """Name, anatomical label and ACPC coordinates (mm, NaN where unknown) of each target
    column: one per usable electrode, or electrode x frame (electrode-major) for frames."""
    good = rec.good_channels
    names = [n for n, ok in zip(rec.channel_names, good) if ok]
    labels = [lab for lab, ok in zip(rec.channel_labels, good) if ok]
    coords = np.asarray(rec.coords, dtype=np.float64)[good]
    per = n_cols // len(names)
    if per == 1:
        return names, labels, coords
    return ([f"{n}@frame{f}" for n in names for f in range(per)],
            [lab for lab in labels for _ in range(per)], np.repeat(coords, per, axis=0))


def _excluded_text(rec) -> str:
    """``name (why), ...`` of the channels left out of the targets, or ``none``."""
    return ", ".join(f"{n} ({rec.bad_reasons.get(n, 'bad')})" for n in rec.bad_channels) or "none"


def _test_hook(stage: str) -> None:
    """TEST HOOK: ``GPURECON_TEST_KILL_AT=<stage>`` SIGKILLs this process at ``stage``
    (generation, high_gamma, solver, writing, publish), so the crash-safety tests can kill a
    run at a known point; ``GPURECON_TEST_KILL_SIGNAL=INT`` sends SIGINT instead (Ctrl-C),
    ``TERM`` SIGTERM.
    Never set them outside tests."""
    if os.environ.get("GPURECON_TEST_KILL_AT") == stage:
        import signal

        if os.environ.get("GPURECON_TEST_KILL_SIGNAL") in ("INT", "TERM"):
            os.kill(os.getpid(), getattr(signal, "SIG" + os.environ["GPURECON_TEST_KILL_SIGNAL"]))
            return
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def _kill_after_first(stage: str):
    def hook(done: int, total: int) -> None:
        if done >= 1:
            _test_hook(stage)
    return hook


def _writable(what: str, make):
    try:
        return make()
    except OSError as err:
        raise ConfigError(f"{what} is not writable: {err.strerror or err} "
                          f"({getattr(err, 'filename', '') or ''})") from None


def disk_full_error(err: OSError, cache_root: Path | None, out_dir: Path) -> StorageError:
    """ENOSPC / EDQUOT as one message naming the folder that is full and its setting."""
    where = Path(err.filename) if err.filename else None

    def under(folder: Path | None) -> bool:
        if where is None or folder is None:
            return False
        return where.resolve().is_relative_to(folder.resolve())

    if under(cache_root):
        folder = f"the cache folder {cache_root} (cache_dir); free space there or set cache_dir"
    elif under(out_dir):
        folder = (f"the run folder {out_dir} (hydra.run.dir); free space there or choose another "
                  f"hydra.run.dir")
    else:
        folder = f"the folder of {where}" if where else "a folder this run writes into"
    return StorageError(f"{err.strerror or 'no space left on device'} (errno {err.errno}) while "
                        f"writing {where or 'a file'}: {folder}. No result files were written")


def _finished_summary(out_dir: Path, cfg: DictConfig) -> dict | None:
    """The scores of the complete run in ``out_dir`` if it was made with these settings, else
    None (no complete set, or a folder that now holds other settings)."""
    import json

    from .run_folder import differences, settings

    if not is_complete(out_dir):
        return None
    try:
        summary = json.loads((out_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    stored = summary.get("config")
    if isinstance(stored, dict) and differences(settings(stored), settings(cfg)):
        log.warning("resume: %s holds a complete run with other settings; running again",
                    out_dir)
        return None
    return summary.get("scores", {})


def run(cfg: DictConfig, out_dir: str | os.PathLike, record: dict[str, str] | None = None) -> dict:
    """Run one subject/model/solver setting and write its outputs into ``out_dir``.

    The outputs appear as a complete set (``done.json`` written last) or not at all: they are
    written into a staging folder inside ``out_dir`` that is discarded if the run fails.
    ``record`` (relative path -> text: Hydra's ``.hydra/`` files, see
    :func:`gpurecon.run_folder.hydra_record`) is published with the outputs. Whether this run
    may write into ``out_dir`` is the caller's decision (:func:`gpurecon.run_folder.claim`).
    """
    # 0) the whole config, before anything is loaded, generated or cached
    validate_config(cfg)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out_dir = Path(out_dir)
    show = bool(cfg.get("progress", True))
    if cfg.get("resume", False):
        finished = _finished_summary(out_dir, cfg)
        if finished is not None:
            log.info("resume: %s already holds this run's complete outputs (done.json); "
                     "skipping this run", out_dir)
            return finished
    device = resolve_device(cfg.device)
    cache = Cache(cfg.cache_dir, lock_timeout=cfg.get("cache_lock_timeout", 3600.0))
    dataset = resolve_dataset(cfg.data, cfg.subject, cache)
    generated = is_generated(dataset)
    check_subject(dataset, int(cfg.subject), generated)
    check_checkpoint(cfg.model)
    window = target_window(cfg)
    if generated:   # the recording's sampling rate and trial times are known before generating it
        layout = synthetic_layout(cfg.data.n_words)
        validate_for_recording(cfg, window=window, **layout)
        if cfg.data.n_channels is not None:   # so is its size: refuse a run that cannot finish
            check_solver_cost(cfg, n_trials=len(layout["onsets_s"]), device_type=device.type,
                              n_targets=int(cfg.data.n_channels)
                              * n_frames_for(cfg.target, layout["sfreq"], window))
    staging = _writable(f"the output folder {out_dir} (hydra.run.dir)", lambda: make_staging(out_dir))
    try:
        _writable(f"cache_dir={cache.root}", cache.check_writable)
        cache.remove_stale()
        scores, provenance = _run_stages(cfg, staging, dataset, device, cache, window, show,
                                         timings, t_start)
        for rel, text in (record or {}).items():   # the settings travel with the outputs
            write_text(staging / rel, text)
        _test_hook("writing")
        publish(staging, out_dir, provenance=provenance, on_file=lambda name: _test_hook("publish"))
    except BaseException as err:
        discard_staging(staging)   # only what this run wrote; the log stays
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise disk_full_error(err, cache.root, out_dir) from None
        raise
    s = scores.main.summary()
    log.info("%sPCC across electrodes %.3f (baseline %.3f) | R2 %.3f (baseline %.3f) | "
             "per-electrode PCC %.3f (baseline %.3f) | %s", "nested selection: " if scores.nested else "",
             s["pcc_across_electrodes"], s["baseline_pcc_across_electrodes"], s["r2_across_electrodes"],
             s["baseline_r2_across_electrodes"], s["pcc_per_electrode_mean"],
             s["baseline_pcc_per_electrode_mean"], out_dir)
    log.info("%s", verdict_line(scores.main.verdict(), provenance))  # last line: above chance?
    return s


def _run_stages(cfg: DictConfig, staging: Path, dataset: Dataset, device: torch.device,
                cache: Cache, window: float, show: bool, timings: dict,
                t_start: float) -> tuple[GridEvaluation, dict]:
    """Every stage, in order; the result files go into ``staging``. Returns the evaluation
    and the provenance."""
    prov = provenance_for(cfg, device, dataset)
    log.info("gpurecon %s | device %s | data %s (%s) at %s | subject %s | model %s (%s)",
             __version__, prov.fields["device"], dataset.kind.upper(), dataset.reason, dataset.root,
             cfg.subject, cfg.model.name, prov.fields["checkpoint"])
    if dataset.kind == "synthetic":
        log.warning("running on SYNTHETIC data (planted ground truth), not on recordings")
    generate = is_generated(dataset) and not (dataset.root / "dataset_description.json").exists()
    with stage_bar("generating synthetic data", enabled=show and generate, unit="ch") as bar:
        ensure_synthetic(dataset, cfg.data, cfg.subject, cache,
                         progress=chain(bar, _kill_after_first("generation")))

    from .data import load_subject

    t = time.perf_counter()
    with stage_bar(f"loading sub-{int(cfg.subject):02d}", enabled=show) as bar:
        bar(0, 1)
        rec = load_subject(dataset.root, cfg.subject)
        bar(1, 1)
    timings["load_s"] = time.perf_counter() - t
    onsets = np.asarray(rec.trials.sample, dtype=np.float64) / rec.sfreq
    validate_for_recording(cfg, sfreq=float(rec.sfreq), onsets_s=onsets,
                           duration_s=rec.seeg.shape[1] / rec.sfreq, window=window)
    problems = check_solver_cost(cfg, n_trials=len(onsets), device_type=device.type,
                                 n_targets=int(np.sum(rec.good_channels))
                                 * n_frames_for(cfg.target, float(rec.sfreq), window))
    limit = cfg.solver.get("max_problems")
    log.info("solver: about %.3g ElasticNet problems (solver.max_problems=%s)", problems,
             "null" if limit is None else f"{limit:.3g}")
    if rec.bad_channels:
        log.warning("excluded %d of %d channel(s) from the targets: %s", len(rec.bad_channels),
                    rec.n_channels, _excluded_text(rec))

    t = time.perf_counter()
    with stage_bar("high gamma", enabled=show, unit="ch") as bar:
        Y, target_meta = build_targets(rec, cfg.signal, cfg.target, window, device, cache,
                                       progress=chain(bar, _kill_after_first("high_gamma")))
    timings["targets_s"] = time.perf_counter() - t

    t = time.perf_counter()
    emb = compute_embeddings(rec, cfg.model, device, cache)
    timings["embeddings_s"] = time.perf_counter() - t
    prov.update(checkpoint=emb.meta.get("checkpoint", prov.fields["checkpoint"]),
                untrained=bool(emb.meta.get("untrained", False)))
    if prov.fields["untrained"]:
        log.warning("model %s is an UNTRAINED tiny model: its scores say nothing about %s",
                    emb.meta.get("checkpoint"), cfg.model.name)

    t = time.perf_counter()
    with stage_bar("solver (targets)", enabled=show) as bar:
        fit = fit_cross_validated(emb, Y, cfg.solver, device, seed=int(cfg.seed),
                                  progress=chain(bar, _kill_after_first("solver")),
                                  devices=int(cfg.devices))
    timings["solver_s"] = time.perf_counter() - t
    scores = evaluate(fit, Y, cfg.solver.cv)
    timings["total_s"] = time.perf_counter() - t_start

    write_outputs(staging, rec, prov, cfg, Y, emb, fit, scores, target_meta, timings)
    return scores, prov.fields


def write_outputs(out_dir: Path, rec, prov: Provenance, cfg: DictConfig, Y: torch.Tensor, emb,
                  fit: CrossValidatedFit, scores: "GridEvaluation", target_meta: dict,
                  timings: dict) -> None:
    """All result files, each atomic and each carrying the provenance.

    ``scores`` is the :class:`gpurecon.evaluation.GridEvaluation` of ``fit``; its main
    evaluation (the nested selection with a grid) fills predictions.npz and the score files.
    """
    from .evaluation import SCORE_DEFINITIONS
    from .outputs import write_csv, write_npz

    header = prov.comments()
    names, labels, coords = _column_info(rec, Y.shape[1])
    words = list(rec.trials.word)
    p = prov.fields
    main = scores.main
    write_npz(out_dir / "targets.npz", provenance={**p, "target": target_meta}, Y=Y,
              columns=np.array(names), words=np.array(words))
    write_npz(out_dir / "embeddings.npz", provenance={**p, "embedding": emb.meta}, X=emb.X,
              words=np.array(words))
    arrays = {"pred": fit.pred, "Y": Y, "baseline": fit.baseline}
    if main.null is not None:
        arrays["null_pcc_across_electrodes"] = main.null.pcc_across_electrodes
        arrays["null_r2_across_electrodes"] = main.null.r2_across_electrodes
    write_npz(out_dir / "predictions.npz", provenance=p, **arrays)

    def host(t):  # one device->host copy per array, not one per CSV cell
        return t.detach().double().cpu().numpy()

    tr, tb = main.trials, main.trials_baseline
    columns = [host(v) for v in (tr.pcc, tr.r2, tb.pcc, tb.r2)]
    write_csv(out_dir / "scores_trials.csv",
              ["trial", "word", "pcc", "r2", "baseline_pcc", "baseline_r2"],
              [[i, w, *(float(c[i]) for c in columns)] for i, w in enumerate(words)], comments=header)

    el, eb = main.electrodes, main.electrodes_baseline
    cols = ["electrode", "label", "x", "y", "z", "pcc", "r2", "baseline_pcc", "baseline_r2"]
    columns = [host(v) for v in (el.pcc, el.r2, eb.pcc, eb.r2)]
    null_el = main.null_per_electrode()
    if null_el is not None:
        cols += ["null_pcc_mean", "null_pcc_95"]
        columns += [host(v) for v in null_el]
    if main.electrode_p is not None:
        cols += ["p", "q_fdr"]
        columns += [host(main.electrode_p), host(main.electrode_q)]
    rows = [[n, lab, *map(float, coords[c]), *(float(v[c]) for v in columns)]
            for c, (n, lab) in enumerate(zip(names, labels))]
    write_csv(out_dir / "scores_electrodes.csv", cols, rows,
              comments=header + [f"excluded_channels: {_excluded_text(rec)}"])

    nested = None
    if fit.nested is not None:
        grid_cols, grid_rows = scores.table()
        write_csv(out_dir / "grid.csv", grid_cols, grid_rows, comments=header)
        best = scores.best_point()
        nested = {**fit.nested.summary(fit.grid), "scores": main.summary(),
                  "best_grid_point_in_hindsight": {
                      "alpha": best.alpha, "l1_ratio": best.l1_ratio,
                      "pcc_across_electrodes": best.evaluation.pcc_across_electrodes},
                  "null": ("per permutation, the best grid point's score (the inner search is not "
                           "repeated on permuted data)" if main.null is not None else None)}
    summary = {
        "provenance": p,
        "scores": main.summary(),
        "score_definitions": SCORE_DEFINITIONS,
        "n_trials": int(Y.shape[0]), "n_targets": int(Y.shape[1]),
        "excluded_channels": list(rec.bad_channels),
        "excluded_channel_reasons": {n: rec.bad_reasons.get(n, "bad") for n in rec.bad_channels},
        "target": target_meta,
        "embedding": emb.meta,
        "solver": fit.meta,
        "verdict": main.verdict(),
    }
    if nested is not None:
        summary["nested"] = nested
    summary.update({"timings": timings, "config": OmegaConf.to_container(cfg, resolve=True)})
    write_summary(out_dir, summary)   # verdict first; per-trial lists into the .npz files
