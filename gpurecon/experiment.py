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
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import __version__
from .cache import Cache, make_key
from .device import describe_device, resolve_device
from .errors import ConfigError, DataError

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
    kind = data_cfg.kind
    if kind not in ("auto", "ibids", "synthetic"):
        raise ConfigError(f"data.kind must be 'auto', 'ibids' or 'synthetic', got {kind!r}")
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


def ensure_synthetic(dataset: Dataset, data_cfg: DictConfig, subject: int) -> None:
    """Generate the synthetic dataset into the cache on first use (atomically)."""
    if dataset.kind != "synthetic" or (dataset.root / "dataset_description.json").exists():
        return
    if not dataset.reason.startswith("data.root"):
        from .data.synthetic import write_synthetic_dataset

        log.info("generating the synthetic dataset (seed %d) into %s", data_cfg.seed, dataset.root)
        write_synthetic_dataset(dataset.root, subjects=[int(subject)], seed=data_cfg.seed,
                                n_channels=data_cfg.n_channels, n_words=data_cfg.n_words)


def target_window(cfg: DictConfig) -> float:
    """Seconds of high gamma after each word onset: the study used 1 s for the text models
    and 2 s for Wav2Vec2 (the span of audio it embeds)."""
    if cfg.target.window is not None:
        return float(cfg.target.window)
    return float(cfg.model.window) if cfg.model.name == "wav2vec2" else 1.0


def build_targets(rec, signal_cfg: DictConfig, target_cfg: DictConfig, window: float,
                  device: torch.device, cache: Cache) -> tuple[torch.Tensor, dict]:
    """High gamma of the whole recording, cut from each word onset, on ``device``.

    Returns Y, (trials, targets): ``trial_mean`` gives one column per usable electrode;
    ``frames`` gives electrodes x frames columns (electrode-major). Flat channels are
    excluded. Cached on the NWB file's bytes and every parameter that changes Y.
    """
    from .signal import epoch_frames, epochs, high_gamma, trial_mean

    if target_cfg.kind not in ("trial_mean", "frames"):
        raise DataError(f"target.kind must be 'trial_mean' or 'frames', got {target_cfg.kind!r}")
    if signal_cfg.dtype not in ("float32", "float64"):
        raise DataError(f"signal.dtype must be 'float32' or 'float64', got {signal_cfg.dtype!r}")
    good = rec.good_channels
    params = dict(signal=OmegaConf.to_container(signal_cfg), target=OmegaConf.to_container(target_cfg),
                  window=window, device=device.type, good=good.tolist())
    key = make_key(nwb=rec.files["nwb"], events=rec.files.get("events"),
                   channels=rec.files.get("channels"), **params)

    def compute():
        t0 = time.perf_counter()
        seeg = torch.from_numpy(rec.seeg).to(device=device, dtype=getattr(torch, signal_cfg.dtype))
        env = high_gamma(seeg, rec.sfreq, l_freq=signal_cfg.l_freq, h_freq=signal_cfg.h_freq,
                         stops=[tuple(s) for s in signal_cfg.stops], order=signal_cfg.order,
                         chunk_channels=signal_cfg.chunk_channels, device=device)
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

    params = OmegaConf.to_container(model_cfg, resolve=True)
    embedder = get_embedder(params.pop("name"), **params)
    try:
        out = embedder.embed(rec, device=device, cache=cache)
    finally:
        embedder.release()  # free the model before the solver starts
    if out.X.ndim != 2:
        raise DataError(f"model.layer={model_cfg.get('layer')!r} gives one embedding per layer; "
                        "the app fits one layer per run: choose a single layer index")
    return out


def fit_cross_validated(emb, Y: torch.Tensor, solver_cfg: DictConfig, device: torch.device,
                        seed: int, devices: int = 1) -> dict:
    """Held-out ElasticNet predictions for every trial, the mean-of-training baseline and,
    with ``solver.n_permutations``, the permutation null (fitted as extra targets)."""
    from .evaluation import training_mean_predictions
    from .solver import kfold, leave_one_out, permutations

    n = Y.shape[0]
    if solver_cfg.cv == "loo":
        folds = leave_one_out(n)
    elif solver_cfg.cv == "kfold":
        folds = kfold(n, solver_cfg.n_splits, shuffle=True, seed=seed)
    else:
        raise ConfigError(f"solver.cv must be 'loo' or 'kfold', got {solver_cfg.cv!r}")
    if solver_cfg.dtype not in ("float32", "float64"):
        raise ConfigError(f"solver.dtype must be 'float32' or 'float64', got {solver_cfg.dtype!r}")
    if solver_cfg.n_permutations < 0:
        raise ConfigError(f"solver.n_permutations must be >= 0, got {solver_cfg.n_permutations}")
    perms = permutations(n, solver_cfg.n_permutations, seed) if solver_cfg.n_permutations else None
    # Wav2Vec2 frames are reduced by a PCA fitted inside each training fold (the study fitted
    # it on all trials, which leaks the held-out trial into its own features).
    preprocess = (f"pca:{emb.meta['pca_variance']}" if emb.meta.get("fold_preprocessing") == "pca"
                  else None)
    budget = (None if solver_cfg.memory_budget_gb is None
              else int(solver_cfg.memory_budget_gb * 2**30))
    try:
        solve = _cross_val_predict(devices, device)
        res = solve(emb.X, Y, alphas=solver_cfg.alpha, l1_ratios=solver_cfg.l1_ratio,
                                folds=folds, preprocess=preprocess, permutations=perms,
                                fit_intercept=solver_cfg.fit_intercept, tol=solver_cfg.tol,
                                max_iter=solver_cfg.max_iter, memory_budget=budget,
                                dtype=getattr(torch, solver_cfg.dtype))
    except ValueError as err:  # bad solver settings: one message naming the argument
        raise ConfigError(f"solver: {err}") from None
    train = res.train_masks
    out = {
        "pred": res.predictions[0],
        "baseline": training_mean_predictions(Y.to(torch.float64), train),
        "meta": {
            "alpha": solver_cfg.alpha, "l1_ratio": solver_cfg.l1_ratio, "cv": solver_cfg.cv,
            "n_folds": int(train.shape[0]), "fold_preprocessing": preprocess,
            "n_features_per_fold": (None if res.n_features is None
                                    else [int(v) for v in res.n_features.tolist()]),
            "n_not_converged": res.n_not_converged, "worst_gap_ratio": res.worst_gap_ratio,
            "n_problems": int(res.converged.numel()), "dtype": solver_cfg.dtype,
            "tol": solver_cfg.tol, "max_iter": solver_cfg.max_iter,
            "n_permutations": int(solver_cfg.n_permutations), "seconds": res.seconds,
        },
    }
    if res.n_not_converged:
        log.warning("solver: %d of %d problems did not reach the tolerance (worst gap %.3g x tol)",
                    res.n_not_converged, res.converged.numel(), res.worst_gap_ratio)
    if perms is not None:
        p = torch.as_tensor(perms, device=Y.device)
        out["null_pred"] = res.null_predictions[:, 0]                       # (perm, trials, targets)
        out["null_true"] = torch.stack([Y[row] for row in p])
    return out


def _cross_val_predict(devices: int, device: torch.device):
    """The solver on ``device``, or its twin sharded over ``devices`` Fabric ranks."""
    from functools import partial

    if devices == 1:
        from .solver import cross_val_predict
        return partial(cross_val_predict, device=device)
    from .parallel import sharded_cross_val_predict
    return partial(sharded_cross_val_predict, devices=devices, device=device)


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
        "checkpoint": cfg.model.get("checkpoint", "ground truth"),
    })


def _mean(t: torch.Tensor) -> float:
    return float(torch.nanmean(t.double()).item())


def evaluate(pred: torch.Tensor, Y: torch.Tensor, baseline: torch.Tensor,
             null_pred: torch.Tensor | None, null_true: torch.Tensor | None) -> dict:
    """Scores of the model beside its chance levels (baseline; permutation null if fitted)."""
    from .evaluation import (fdr_bh, permutation_p_value, scores_across_electrodes,
                             scores_per_electrode)

    trial = scores_across_electrodes(pred, Y)
    trial_base = scores_across_electrodes(baseline, Y)
    elec = scores_per_electrode(pred, Y)
    out = {
        "trial": trial, "trial_baseline": trial_base, "electrode": elec,
        "summary": {
            "pcc_across_electrodes": _mean(trial["pcc"]),
            "r2_across_electrodes": _mean(trial["r2"]),
            "baseline_pcc_across_electrodes": _mean(trial_base["pcc"]),
            "baseline_r2_across_electrodes": _mean(trial_base["r2"]),
            "pcc_per_electrode_mean": _mean(elec["pcc"]),
            "r2_per_electrode_mean": _mean(elec["r2"]),
        },
    }
    if null_pred is not None:
        null_trial = scores_across_electrodes(null_pred, null_true)        # (perm, trials)
        null_elec = scores_per_electrode(null_pred, null_true)             # (perm, electrodes)
        null_mean_pcc = torch.nanmean(null_trial["pcc"].double(), dim=1)
        null_mean_r2 = torch.nanmean(null_trial["r2"].double(), dim=1)
        p_elec = permutation_p_value(elec["pcc"].double(), null_elec["pcc"].double())
        out["electrode"]["p"] = p_elec
        out["electrode"]["q_fdr"] = fdr_bh(p_elec)
        s = out["summary"]
        s["n_permutations"] = int(null_pred.shape[0])
        s["null_pcc_across_electrodes_mean"] = _mean(null_mean_pcc)
        s["null_pcc_across_electrodes_95"] = float(torch.quantile(null_mean_pcc, 0.95))
        s["null_r2_across_electrodes_95"] = float(torch.quantile(null_mean_r2, 0.95))
        s["p_pcc_across_electrodes"] = float(permutation_p_value(
            torch.tensor(s["pcc_across_electrodes"], dtype=torch.float64), null_mean_pcc))
        s["p_r2_across_electrodes"] = float(permutation_p_value(
            torch.tensor(s["r2_across_electrodes"], dtype=torch.float64), null_mean_r2))
        s["n_electrodes_fdr_05"] = int((out["electrode"]["q_fdr"] <= 0.05).sum())
    return out


def _column_names(rec, n_cols: int) -> tuple[list[str], list[str]]:
    names = [n for n, ok in zip(rec.channel_names, rec.good_channels) if ok]
    labels = [lab for lab, ok in zip(rec.channel_labels, rec.good_channels) if ok]
    per = n_cols // len(names)
    if per == 1:
        return names, labels
    return ([f"{n}@frame{f}" for n in names for f in range(per)],
            [lab for lab in labels for _ in range(per)])


def run(cfg: DictConfig, out_dir: str | os.PathLike) -> dict:
    """Run one subject/model/solver setting and write its outputs into ``out_dir``."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    cache = Cache(cfg.cache_dir)
    dataset = resolve_dataset(cfg.data, cfg.subject, cache)
    prov = provenance_for(cfg, device, dataset)
    log.info("gpurecon %s | device %s | data %s (%s) at %s | subject %s | model %s (%s)",
             __version__, prov.fields["device"], dataset.kind.upper(), dataset.reason, dataset.root,
             cfg.subject, cfg.model.name, prov.fields["checkpoint"])
    if dataset.kind == "synthetic":
        log.warning("running on SYNTHETIC data (planted ground truth), not on recordings")
    ensure_synthetic(dataset, cfg.data, cfg.subject)

    from .data import load_subject

    t = time.perf_counter()
    rec = load_subject(dataset.root, cfg.subject)
    timings["load_s"] = time.perf_counter() - t
    if rec.bad_channels:
        log.warning("excluded flat channel(s) from the targets: %s", ", ".join(rec.bad_channels))

    window = target_window(cfg)
    t = time.perf_counter()
    Y, target_meta = build_targets(rec, cfg.signal, cfg.target, window, device, cache)
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
    fit = fit_cross_validated(emb, Y, cfg.solver, device, seed=int(cfg.seed), devices=int(cfg.devices))
    timings["solver_s"] = time.perf_counter() - t
    scores = evaluate(fit["pred"], Y, fit["baseline"], fit.get("null_pred"), fit.get("null_true"))
    timings["total_s"] = time.perf_counter() - t_start

    write_outputs(out_dir, rec, prov, cfg, Y, emb, fit, scores, target_meta, timings)
    s = scores["summary"]
    log.info("PCC across electrodes %.3f (baseline %.3f) | R2 %.3f (baseline %.3f) | "
             "per-electrode PCC %.3f | %s", s["pcc_across_electrodes"],
             s["baseline_pcc_across_electrodes"], s["r2_across_electrodes"],
             s["baseline_r2_across_electrodes"], s["pcc_per_electrode_mean"], out_dir)
    return s


def write_outputs(out_dir: Path, rec, prov: Provenance, cfg: DictConfig, Y: torch.Tensor, emb,
                  fit: dict, scores: dict, target_meta: dict, timings: dict) -> None:
    """All result files, each atomic and each carrying the provenance."""
    from .outputs import write_csv, write_json, write_npz

    header = prov.comments()
    names, labels = _column_names(rec, Y.shape[1])
    words = list(rec.trials.word)
    p = prov.fields
    write_npz(out_dir / "targets.npz", provenance={**p, "target": target_meta}, Y=Y,
              columns=np.array(names), words=np.array(words))
    write_npz(out_dir / "embeddings.npz", provenance={**p, "embedding": emb.meta}, X=emb.X,
              words=np.array(words))
    arrays = {"pred": fit["pred"], "Y": Y, "baseline": fit["baseline"]}
    if fit.get("null_pred") is not None:
        arrays["null_pcc_across_electrodes"] = scores.get("null_trial_pcc", torch.empty(0))
    write_npz(out_dir / "predictions.npz", provenance=p, **arrays)
    tr, tb = scores["trial"], scores["trial_baseline"]
    write_csv(out_dir / "scores_trials.csv",
              ["trial", "word", "pcc", "r2", "baseline_pcc", "baseline_r2"],
              [[i, w, float(tr["pcc"][i]), float(tr["r2"][i]), float(tb["pcc"][i]), float(tb["r2"][i])]
               for i, w in enumerate(words)], comments=header)
    el = scores["electrode"]
    cols = ["electrode", "label", "pcc", "r2"] + (["p", "q_fdr"] if "p" in el else [])
    rows = []
    for c, (n, lab) in enumerate(zip(names, labels)):
        row = [n, lab, float(el["pcc"][c]), float(el["r2"][c])]
        if "p" in el:
            row += [float(el["p"][c]), float(el["q_fdr"][c])]
        rows.append(row)
    write_csv(out_dir / "scores_electrodes.csv", cols, rows, comments=header)
    write_json(out_dir / "summary.json", {
        "provenance": p,
        "scores": scores["summary"],
        "n_trials": int(Y.shape[0]), "n_targets": int(Y.shape[1]),
        "excluded_channels": list(rec.bad_channels),
        "target": target_meta,
        "embedding": emb.meta,
        "solver": fit["meta"],
        "timings": timings,
        "config": OmegaConf.to_container(cfg, resolve=True),
    })
