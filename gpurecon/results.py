"""The result files of a run: what every file records (:class:`Provenance`), the files
themselves (:func:`write_outputs`), a finished run's scores for ``resume=true`` and the one
message for a full disk."""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import __version__
from .device import describe_device
from .errors import StorageError
from .outputs import is_complete

if TYPE_CHECKING:
    from .data.source import Dataset
    from .evaluation import GridEvaluation
    from .solver.fit import CrossValidatedFit

log = logging.getLogger("gpurecon")


@dataclass
class Provenance:
    """What every output file records: which code, device, data and model made it."""

    fields: dict[str, Any] = field(default_factory=dict)

    def update(self, **kw: Any) -> None:
        self.fields.update(kw)

    def comments(self) -> list[str]:
        keep = ("gpurecon", "device", "data", "data_root", "subject", "model", "checkpoint", "untrained")
        return [f"{k}: {self.fields[k]}" for k in keep if k in self.fields]


def provenance_for(cfg: DictConfig, device: torch.device, dataset: "Dataset") -> Provenance:
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


def column_info(rec, n_cols: int) -> tuple[list[str], list[str], np.ndarray]:
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


def excluded_text(rec) -> str:
    """``name (why), ...`` of the channels left out of the targets, or ``none``."""
    return ", ".join(f"{n} ({rec.bad_reasons.get(n, 'bad')})" for n in rec.bad_channels) or "none"


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


def finished_summary(out_dir: Path, cfg: DictConfig) -> dict | None:
    """The scores of the complete run in ``out_dir`` if it was made with these settings, else
    None (no complete set, or a folder that now holds other settings)."""
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


def write_outputs(out_dir: Path, rec, prov: Provenance, cfg: DictConfig, Y: torch.Tensor, emb,
                  fit: "CrossValidatedFit", scores: "GridEvaluation", target_meta: dict,
                  timings: dict, layerwise: "Layerwise | None" = None) -> None:
    """All result files, each atomic and each carrying the provenance.

    ``scores`` is the :class:`gpurecon.evaluation.GridEvaluation` of ``fit``; its main
    evaluation (the nested selection with a grid) fills predictions.npz and the score files.
    A layer-wise run passes its main layer's ``emb``/``fit``/``scores`` and every layer in
    ``layerwise`` (layers.csv, predictions_layers.npz, the ``layers`` block of summary.json).
    """
    from .evaluation import SCORE_DEFINITIONS
    from .outputs import write_csv, write_npz
    from .run_summary import write_summary

    header = prov.comments()
    names, labels, coords = column_info(rec, Y.shape[1])
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
              comments=header + [f"excluded_channels: {excluded_text(rec)}"])

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
    if layerwise is not None:
        summary["layers"] = write_layer_outputs(out_dir, layerwise, Y, prov)
    summary.update({"timings": timings, "config": OmegaConf.to_container(cfg, resolve=True)})
    write_summary(out_dir, summary)   # last: verdict first, per-trial lists into the .npz files


@dataclass
class LayerResult:
    """One layer of a layer-wise run: its hidden-state index, fit and scores."""

    layer: int
    fit: "CrossValidatedFit"
    scores: "GridEvaluation"


@dataclass
class Layerwise:
    """Every fitted layer (ascending) and the one whose scores are the run's main scores."""

    results: list[LayerResult]
    main_layer: int
    main_reason: str

    @property
    def main(self) -> LayerResult:
        return next(r for r in self.results if r.layer == self.main_layer)


def layer_rows(layerwise: Layerwise) -> tuple[list[str], list[list]]:
    """layers.csv: one row per layer, the ``scores`` block of summary.json that a run with
    ``model.layer=<layer>`` writes (the nested selection's with a grid)."""
    summaries = [r.scores.main.summary() for r in layerwise.results]
    keys = list(summaries[0])
    rows = [[r.layer, *("" if s.get(k) is None else s[k] for k in keys)]
            for r, s in zip(layerwise.results, summaries)]
    return ["layer", *keys], rows


def write_layer_outputs(out_dir: Path, layerwise: Layerwise, Y: torch.Tensor,
                        prov: Provenance) -> dict:
    """layers.csv and predictions_layers.npz; returns the ``layers`` block of summary.json."""
    from .outputs import write_csv, write_npz

    header = prov.comments() + [f"main_layer: {layerwise.main_layer} ({layerwise.main_reason})"]
    cols, rows = layer_rows(layerwise)
    write_csv(out_dir / "layers.csv", cols, rows, comments=header)
    results = layerwise.results
    arrays = {"layers": np.array([r.layer for r in results]),
              "pred": torch.stack([r.fit.pred for r in results]), "Y": Y,
              "baseline": results[0].fit.baseline}   # the same folds for every layer
    nulls = [r.scores.main.null for r in results]
    if all(n is not None for n in nulls):
        arrays["null_pcc_across_electrodes"] = torch.stack([n.pcc_across_electrodes for n in nulls])
        arrays["null_r2_across_electrodes"] = torch.stack([n.r2_across_electrodes for n in nulls])
    write_npz(out_dir / "predictions_layers.npz", provenance=prov.fields, **arrays)
    fit = results[0].fit
    return {"layers": [r.layer for r in results], "main_layer": layerwise.main_layer,
            "main_layer_reason": layerwise.main_reason,
            "scores_file": "layers.csv", "predictions_file": "predictions_layers.npz",
            "permutations": (f"one set of {fit.meta['n_permutations']} (seed "
                             f"{fit.meta['permutation_seed']}) shared by every layer"
                             if fit.permutations is not None else None),
            "note": ("scores, predictions.npz, the score files and embeddings.npz are the main "
                     "layer's; layers.csv has every layer's scores")}
