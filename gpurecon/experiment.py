"""One run of gpurecon: the stages in order, with typed results between them.

data (which dataset, the recording) -> signal (high-gamma targets) -> embeddings -> solver
(cross-validated ElasticNet) -> evaluation (scores, baselines, permutation null) -> results
(the files). Each stage's logic lives in its own package; this module checks the settings,
calls the stages, times them and publishes their files as one complete set.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from . import __version__
from .cache import Cache
from .config import check_solver_cost, n_frames_for, validate_config, validate_for_recording
from .data import Recording, load_subject
from .data.source import (Dataset, check_subject, ensure_synthetic, is_generated, resolve_dataset,
                          synthetic_layout)
from .device import resolve_device
from .embeddings import Embeddings
from .embeddings.stage import (check_checkpoint, compute_embeddings, main_layer, n_layers_requested,
                               split_layers)
from .errors import ConfigError
from .evaluation import GridEvaluation, evaluate_fit
from .killpoints import kill_after_first, kill_point
from .outputs import DISK_FULL, discard_staging, make_staging, publish, write_text
from .progress import chain, stage_bar
from .run_summary import verdict_line
from .results import (Layerwise, LayerResult, Provenance, disk_full_error, excluded_text,
                      finished_summary, provenance_for, write_outputs)
from .signal.targets import Targets, build_targets, target_window
from .solver.fit import CrossValidatedFit, fit_cross_validated

log = logging.getLogger("gpurecon")


@dataclass
class Setup:
    """What the checks before any loading decided: where the data is, the device, the
    cache and the seconds of high gamma after each onset."""

    dataset: Dataset
    device: torch.device
    cache: Cache
    window: float
    show: bool                          # progress bars
    t_start: float                      # time.perf_counter() when the run began
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class StageResults:
    """Every stage's result, in order: what the result files are written from."""

    rec: Recording
    targets: Targets
    emb: Embeddings
    fit: CrossValidatedFit              # a layer-wise run: its main layer's (also emb, scores)
    scores: GridEvaluation
    provenance: Provenance
    layerwise: Layerwise | None = None  # model.layer=all or a list: every layer


def run(cfg: DictConfig, out_dir: str | os.PathLike, record: dict[str, str] | None = None) -> dict:
    """Run one subject/model/solver setting and write its outputs into ``out_dir``.

    The outputs appear as a complete set (``done.json`` written last) or not at all: they are
    written into a staging folder inside ``out_dir`` that is discarded if the run fails.
    ``record`` (relative path -> text: Hydra's ``.hydra/`` files, see
    :func:`gpurecon.run_folder.hydra_record`) is published with the outputs. Whether this run
    may write into ``out_dir`` is the caller's decision (:func:`gpurecon.run_folder.claim`).
    """
    validate_config(cfg)   # the whole config, before anything is loaded, generated or cached
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    if cfg.get("resume", False):
        finished = finished_summary(out_dir, cfg)
        if finished is not None:
            log.info("resume: %s already holds this run's complete outputs (done.json); "
                     "skipping this run", out_dir)
            return finished
    setup = prepare(cfg, t_start)
    staging = _writable(f"the output folder {out_dir} (hydra.run.dir)", lambda: make_staging(out_dir))
    cache = setup.cache
    try:
        _writable(f"cache_dir={cache.root}", cache.check_writable)
        cache.remove_stale()
        results = run_stages(cfg, setup)
        write_outputs(staging, results.rec, results.provenance, cfg, results.targets.Y, results.emb,
                      results.fit, results.scores, results.targets.meta, setup.timings,
                      results.layerwise)
        for rel, text in (record or {}).items():   # the settings travel with the outputs
            write_text(staging / rel, text)
        kill_point("writing")
        publish(staging, out_dir, provenance=results.provenance.fields,
                on_file=lambda name: kill_point("publish"))
    except BaseException as err:
        discard_staging(staging)   # only what this run wrote; the log stays
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise disk_full_error(err, cache.root, out_dir) from None
        raise
    return _log_scores(results.scores, out_dir, results.provenance.fields)


def prepare(cfg: DictConfig, t_start: float) -> Setup:
    """The checks that need no recording: dataset choice, subject, checkpoint, and for the
    generated synthetic dataset the recording's layout and the solver's cost."""
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
                              * n_frames_for(cfg.target, layout["sfreq"], window),
                              n_layers=n_layers_requested(cfg.model))
    return Setup(dataset, device, cache, window, show=bool(cfg.get("progress", True)), t_start=t_start)


def run_stages(cfg: DictConfig, setup: Setup) -> StageResults:
    """Every stage, in order."""
    dataset, device, cache, show, timings = (setup.dataset, setup.device, setup.cache, setup.show,
                                             setup.timings)
    prov = provenance_for(cfg, device, dataset)
    log.info("gpurecon %s | device %s | data %s (%s) at %s | subject %s | model %s (%s)",
             __version__, prov.fields["device"], dataset.kind.upper(), dataset.reason, dataset.root,
             cfg.subject, cfg.model.name, prov.fields["checkpoint"])
    if dataset.kind == "synthetic":
        log.warning("running on SYNTHETIC data (planted ground truth), not on recordings")
    rec = _load(cfg, setup)

    t = time.perf_counter()
    with stage_bar("high gamma", enabled=show, unit="ch") as bar:
        targets = build_targets(rec, cfg.signal, cfg.target, setup.window, device, cache,
                                progress=chain(bar, kill_after_first("high_gamma")))
    timings["targets_s"] = time.perf_counter() - t

    t = time.perf_counter()
    emb = compute_embeddings(rec, cfg.model, device, cache)
    timings["embeddings_s"] = time.perf_counter() - t
    prov.update(checkpoint=emb.meta.get("checkpoint", prov.fields["checkpoint"]),
                untrained=bool(emb.meta.get("untrained", False)))
    if prov.fields["untrained"]:
        log.warning("model %s is UNTRAINED (random weights): its scores say nothing about %s",
                    emb.meta.get("checkpoint"), cfg.model.name)

    layers = split_layers(emb)
    if layers is None:
        fit, scores = _fit(cfg, emb, targets.Y, setup, "solver (targets)")
        layerwise = None
    else:   # model.layer=all or a list: every layer fitted here, the same folds and permutations
        main, why = main_layer(cfg.model.name, [one.layer for one in layers], int(emb.meta["n_blocks"]))
        log.info("%d layers %s from one forward pass; main scores: layer %d, %s",
                 len(layers), [one.layer for one in layers], main, why)
        layerwise = Layerwise([LayerResult(one.layer, *_fit(cfg, one.emb, targets.Y, setup,
                                                            f"solver (layer {one.layer})", one.layer))
                               for one in layers], main, why)
        fit, scores = layerwise.main.fit, layerwise.main.scores
        emb = Embeddings(next(one.emb.X for one in layers if one.layer == main),
                         {**emb.meta, "main_layer": main})
    timings["total_s"] = time.perf_counter() - setup.t_start
    return StageResults(rec, targets, emb, fit, scores, prov, layerwise)


def _fit(cfg: DictConfig, emb: Embeddings, Y: torch.Tensor, setup: Setup, label: str,
         layer: int | None = None) -> tuple[CrossValidatedFit, GridEvaluation]:
    """The solver and evaluation stages for one layer's embeddings."""
    t = time.perf_counter()
    with stage_bar(label, enabled=setup.show) as bar:
        fit = fit_cross_validated(emb, Y, cfg.solver, setup.device, seed=int(cfg.seed),
                                  progress=chain(bar, kill_after_first("solver")),
                                  devices=int(cfg.devices))
    setup.timings["solver_s"] = setup.timings.get("solver_s", 0.0) + time.perf_counter() - t
    scores = evaluate_fit(fit, Y, cfg.solver.cv)
    if layer is not None:
        log.info("layer %d: %s", layer, scores.main.verdict())
    return fit, scores


def _load(cfg: DictConfig, setup: Setup) -> Recording:
    """The data stage: generate the synthetic dataset if needed, load the subject, and check
    the settings that need the recording (window, solver cost)."""
    dataset, device, show = setup.dataset, setup.device, setup.show
    generate = is_generated(dataset) and not (dataset.root / "dataset_description.json").exists()
    with stage_bar("generating synthetic data", enabled=show and generate, unit="ch") as bar:
        ensure_synthetic(dataset, cfg.data, cfg.subject, setup.cache,
                         progress=chain(bar, kill_after_first("generation")))
    t = time.perf_counter()
    with stage_bar(f"loading sub-{int(cfg.subject):02d}", enabled=show) as bar:
        bar(0, 1)
        rec = load_subject(dataset.root, cfg.subject)
        bar(1, 1)
    setup.timings["load_s"] = time.perf_counter() - t
    onsets = np.asarray(rec.trials.sample, dtype=np.float64) / rec.sfreq
    validate_for_recording(cfg, sfreq=float(rec.sfreq), onsets_s=onsets,
                           duration_s=rec.seeg.shape[1] / rec.sfreq, window=setup.window)
    problems = check_solver_cost(cfg, n_trials=len(onsets), device_type=device.type,
                                 n_targets=int(np.sum(rec.good_channels))
                                 * n_frames_for(cfg.target, float(rec.sfreq), setup.window),
                                 n_layers=n_layers_requested(cfg.model))
    limit = cfg.solver.get("max_problems")
    log.info("solver: about %.3g ElasticNet problems (solver.max_problems=%s)", problems,
             "null" if limit is None else f"{limit:.3g}")
    if rec.bad_channels:
        log.warning("excluded %d of %d channel(s) from the targets: %s", len(rec.bad_channels),
                    rec.n_channels, excluded_text(rec))
    return rec


def _log_scores(scores: GridEvaluation, out_dir: Path, provenance: dict) -> dict:
    """Log the run's scores and, last, its verdict; return the ``scores`` block."""
    s = scores.main.summary()
    log.info("%sPCC across electrodes %.3f (baseline %.3f) | R2 %.3f (baseline %.3f) | "
             "per-electrode PCC %.3f (baseline %.3f) | %s", "nested selection: " if scores.nested else "",
             s["pcc_across_electrodes"], s["baseline_pcc_across_electrodes"], s["r2_across_electrodes"],
             s["baseline_r2_across_electrodes"], s["pcc_per_electrode_mean"],
             s["baseline_pcc_per_electrode_mean"], out_dir)
    log.info("%s", verdict_line(scores.main.verdict(), provenance))  # last line: above chance?
    return s


def _writable(what: str, make):
    try:
        return make()
    except OSError as err:
        raise ConfigError(f"{what} is not writable: {err.strerror or err} "
                          f"({getattr(err, 'filename', '') or ''})") from None
