"""Run folders that follow the full output contract, written with known values, for the
report tests (summary.json, scores_trials.csv, scores_electrodes.csv, predictions.npz, grid.csv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpurecon import outputs


def _pcc_r2(pred: np.ndarray, true: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    pc = pred - pred.mean(axis=axis, keepdims=True)
    tc = true - true.mean(axis=axis, keepdims=True)
    pcc = (pc * tc).sum(axis) / np.sqrt((pc ** 2).sum(axis) * (tc ** 2).sum(axis))
    r2 = 1 - ((true - pred) ** 2).sum(axis) / (tc ** 2).sum(axis)
    return pcc, r2


def make_run(root: Path, name: str, *, subject: int, model: str, checkpoint: str = "tiny",
             data: str = "synthetic", untrained: bool = True, alpha=1.0, l1_ratio=0.5,
             n_trials: int = 20, n_electrodes: int = 6, n_frames: int = 1, n_perm: int = 40,
             coords: bool = True, seed: int = 0, grid_alphas=(0.1, 1.0),
             grid_l1s=(0.1, 0.5, 0.9), legacy: bool = False, drop: str | None = None,
             null_pcc: np.ndarray | None = None, settings: dict | None = None,
             trial_r2: dict[int, float] | None = None, equals_baseline: bool = False,
             trial_r2_floor: float | None = None) -> Path:
    """Write one finished run into ``root/name`` and return its folder.

    ``legacy=True`` writes what the pipeline wrote before the full contract: no coordinates,
    no per-electrode baseline or null columns, no target.n_frames, an empty null array.
    ``drop``: a summary.json key left out. ``null_pcc``: the permutation null's PCC values
    (default: random around 0.1). ``settings``: dotted config keys to set in summary.json's
    ``config`` (``{"data.n_channels": 8}``). ``trial_r2``: {trial: R2} planted into the
    per-trial scores (outliers); ``trial_r2_floor``: every per-trial R2 (model and baseline)
    raised to at least this. ``equals_baseline``: the model predicts the training mean (all
    coefficients zero: ``pred`` is ``baseline``). Where gpurecon.outputs publishes complete sets
    (``publish``, ``done.json``), the files are staged and published as a run does."""
    rng = np.random.default_rng(seed)
    final = root / name
    staged = hasattr(outputs, "publish")
    run = outputs.make_staging(final) if staged else final
    n_cols = n_electrodes * n_frames
    Y = rng.gamma(2.0, 1.0, (n_trials, n_cols)) + np.linspace(1, 3, n_cols)
    pred = Y + rng.normal(0, 0.8 + 0.1 * seed, Y.shape)
    base = np.repeat(Y.mean(axis=0, keepdims=True), n_trials, axis=0)
    if equals_baseline:
        pred = base.copy()
    t_pcc, t_r2 = _pcc_r2(pred, Y, axis=1)
    b_pcc, b_r2 = _pcc_r2(base + rng.normal(0, 1e-3, Y.shape), Y, axis=1)
    e_pcc, e_r2 = _pcc_r2(pred, Y, axis=0)
    if trial_r2_floor is not None:
        t_r2, b_r2 = np.maximum(t_r2, trial_r2_floor), np.maximum(b_r2, trial_r2_floor)
    for trial, value in (trial_r2 or {}).items():
        t_r2[trial] = value
    null = rng.normal(0.1, 0.05, n_perm) if null_pcc is None else np.asarray(null_pcc, float)
    null_r2 = rng.normal(-0.2, 0.05, n_perm)
    p_el = np.clip(rng.uniform(0, 0.2, n_cols) * np.arange(1, n_cols + 1) / n_cols, 1e-3, 1)
    q_el = np.minimum(1.0, p_el * 2)
    is_grid = isinstance(alpha, list)
    prov = {"gpurecon": "0.1.0", "device": "cpu", "data": data, "data_root": "/tmp/x",
            "subject": subject, "model": model, "checkpoint": checkpoint, "untrained": untrained}
    comments = [f"{k}: {v}" for k, v in prov.items()]
    scores = {
        "pcc_across_electrodes": float(t_pcc.mean()), "r2_across_electrodes": float(t_r2.mean()),
        "baseline_pcc_across_electrodes": float(b_pcc.mean()),
        "baseline_r2_across_electrodes": float(b_r2.mean()),
        "pcc_per_electrode_mean": float(e_pcc.mean()), "r2_per_electrode_mean": float(e_r2.mean()),
    }
    if not legacy:
        b_e_pcc, _ = _pcc_r2(base + rng.normal(0, 1e-3, Y.shape), Y, axis=0)
        scores["baseline_pcc_per_electrode_mean"] = float(b_e_pcc.mean())
    if n_perm and not legacy:
        scores.update(p_pcc_across_electrodes=float((1 + (null >= scores["pcc_across_electrodes"])
                                                      .sum()) / (n_perm + 1)),
                      p_r2_across_electrodes=0.5 + 0.01 * seed,
                      n_electrodes_fdr_05=int((q_el <= 0.05).sum()),
                      null_pcc_across_electrodes_95=float(np.quantile(null, 0.95)))
    target = {"kind": "frames" if n_frames > 1 else "trial_mean"}
    if not legacy:
        target["n_frames"] = n_frames
    config = {"subject": subject, "target": {"kind": target["kind"], "frame_length": 0.05,
                                             "frame_shift": 0.01}}
    for dotted, value in (settings or {}).items():
        *parents, leaf = dotted.split(".")
        node = config
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    summary = {"provenance": prov, "scores": scores, "n_trials": n_trials, "n_targets": n_cols,
               "target": target,
               "solver": {"alpha": alpha, "l1_ratio": l1_ratio, "n_permutations": n_perm},
               "config": config}
    if is_grid:
        # as a grid run records it: how often inner CV chose each point (the last one most)
        counts = [{"alpha": a, "l1_ratio": l, "count": 1 + i}
                  for i, (a, l) in enumerate((a, l) for a in alpha for l in l1_ratio)]
        summary["nested"] = {"choice_counts": counts}
    words = [f"w{i}" for i in range(n_trials)]
    outputs.write_csv(run / "scores_trials.csv",
                      ["trial", "word", "pcc", "r2", "baseline_pcc", "baseline_r2"],
                      [[i, words[i], t_pcc[i], t_r2[i], b_pcc[i], b_r2[i]] for i in range(n_trials)],
                      comments=comments)
    names = [f"E{e}" if n_frames == 1 else f"E{e}@frame{f}"
             for e in range(n_electrodes) for f in range(n_frames)]
    xyz = rng.normal(0, 30, (n_cols, 3)).round(2)
    header = ["electrode", "label", "pcc", "r2"] if legacy else \
        ["electrode", "label", "x", "y", "z", "pcc", "r2", "baseline_pcc", "baseline_r2",
         "null_pcc_mean", "null_pcc_95", "p", "q_fdr"]
    rows = []
    for c, n in enumerate(names):
        if legacy:
            rows.append([n, "ctx_lh_x", e_pcc[c], e_r2[c]])
            continue
        loc = list(xyz[c]) if coords else ["", "", ""]
        null_mean = -0.4 + 0.3 * c / n_cols   # varies: chance is not 0 (the maps centre on it)
        rows.append([n, "ctx_lh_x", *loc, e_pcc[c], e_r2[c], -0.9, -0.1, null_mean, 0.3,
                     p_el[c], q_el[c]])
    outputs.write_csv(run / "scores_electrodes.csv", header, rows, comments=comments)
    arrays = {"pred": pred, "Y": Y, "baseline": base}
    if legacy:
        arrays["null_pcc_across_electrodes"] = np.empty(0)
    elif n_perm:
        arrays.update(null_pcc_across_electrodes=null, null_r2_across_electrodes=null_r2)
    outputs.write_npz(run / "predictions.npz", provenance=prov, **arrays)
    if is_grid:
        g = [[a, l, 0.3 + a / 10 + l / 100, 0.1 + a / 20 - l / 50, 0.2, -0.1, 0.05, 0.0, -0.5, 0]
             for a in grid_alphas for l in grid_l1s]
        outputs.write_csv(run / "grid.csv",
                          ["alpha", "l1_ratio", "pcc", "r2", "baseline_pcc", "baseline_r2",
                           "pcc_per_electrode", "r2_per_electrode", "baseline_pcc_per_electrode",
                           "n_not_converged"], g, comments=comments)
    summary.pop(drop, None)
    outputs.write_json(run / "summary.json", summary)  # last: marks the run finished
    if staged:
        outputs.publish(run, final)
    return final
