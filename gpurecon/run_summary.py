"""summary.json as a reader meets it: the verdict and the scores first, what the verdict
means for this kind of run, and the long per-trial arrays in the run's ``.npz`` files.

:func:`write_summary` is the last step of a run's result files (inside its staging folder):

- key order: ``verdict``, ``above_chance``, ``expected`` (a note for runs whose outcome is
  known in advance, see :func:`expected_note`), ``scores``, then every other block as the run
  made it (``provenance``, ``score_definitions``, ..., ``config``);
- per-trial, per-fold and per-channel lists (:data:`MOVED`: always, whatever their length, so
  a reader never has to guess where one is) are written into the run's ``.npz`` file of their
  stage (:data:`NPZ_OF_BLOCK`) under their dotted path (``embedding.n_tokens`` in
  ``embeddings.npz``); summary.json keeps, in their place, where they went:
  ``{"npz": "embeddings.npz", "key": "embedding.n_tokens", "length": 100}``.
  :func:`read_summary` puts them back (for readers that want the old layout).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

# Lists with one entry per trial, fold or channel (a new one belongs here too: tests/test_talk.py
# fails on a run whose summary.json holds a long flat list).
MOVED = ("target.good", "embedding.n_tokens", "solver.n_features_per_fold",
         "nested.alpha_per_fold", "nested.l1_ratio_per_fold")
# Which .npz takes the lists of each summary block (others: predictions.npz).
NPZ_OF_BLOCK = {"target": "targets.npz", "embedding": "embeddings.npz"}
DEFAULT_NPZ = "predictions.npz"
# Blocks never searched: the user's config (lists there are settings: a grid, band-stops), the
# score definitions (text) and the provenance.
NOT_SEARCHED = ("config", "score_definitions", "provenance")
FIRST = ("verdict", "above_chance", "expected", "scores")


# ----------------------------------------------------------------------------- the verdict

def above_chance(scores: dict) -> bool | None:
    """Whether the run beats its chance level, as its verdict line says: PCC across electrodes
    above the null's 95th percentile (with a permutation null), else above the training-mean
    baseline's. None when the scores lack what is needed."""
    pcc = scores.get("pcc_across_electrodes")
    chance = scores.get("null_pcc_across_electrodes_95")
    if chance is None:
        chance = scores.get("baseline_pcc_across_electrodes")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in (pcc, chance)):
        return None
    return bool(pcc > chance)


def expected_note(provenance: dict) -> str | None:
    """What this run is expected to give, where that is known in advance; None for a trained
    model on real data (its result is the question the run answers).

    - An untrained model (``model.checkpoint=tiny``: random weights) on synthetic data: chance
      (the planted word features are random per word, so nothing in a word's form, which is all
      an untrained model sees, predicts them); on real data its features still follow a word's
      form (tokens, length, sound), which real activity may track.
    - The planted ground-truth features on synthetic data: above chance.
    """
    if provenance.get("untrained"):
        ckpt = provenance.get("checkpoint")
        if provenance.get("data") == "synthetic":
            return (f"expected: NOT above chance (in about 19 runs of 20) for an UNTRAINED model "
                    f"(checkpoint {ckpt!r}: random weights) on synthetic data, whose planted "
                    "word features nothing in a word's form predicts; such a run checks that "
                    "the pipeline runs, not the model. `python -m gpurecon` (model=planted, the "
                    "planted features themselves) shows an effect found above chance")
        return (f"an UNTRAINED model (checkpoint {ckpt!r}: random weights) sees only a word's "
                "form (tokens, length, sound): a score above chance here reflects that, not "
                "what a trained model learned")
    if provenance.get("model") == "planted" and provenance.get("data") == "synthetic":
        return ("expected: above chance for model=planted on synthetic data (the ground-truth "
                "word features that drive its high gamma); NOT above chance would mean the "
                "pipeline lost the planted effect (or model.noise drowned it)")
    return None


def verdict_line(verdict: str, provenance: dict) -> str:
    """The run's last log line: the verdict, then what was expected where that is known."""
    note = expected_note(provenance)
    return verdict if note is None else f"{verdict}. {note[0].upper()}{note[1:]}"


# ----------------------------------------------------------------------------- the layout

def _is_flat_numbers(value: Any) -> bool:
    return isinstance(value, list) and all(
        v is None or isinstance(v, (bool, int, float)) for v in value)


def _moved_lists(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the :data:`MOVED` lists below ``node`` (each goes into an .npz)."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if prefix == "" and key in NOT_SEARCHED + FIRST:
                continue
            if path in MOVED and _is_flat_numbers(value):
                out.append(path)
            elif isinstance(value, dict):
                out += _moved_lists(value, f"{path}.")
    return out


def _npz_for(path: str) -> str:
    return NPZ_OF_BLOCK.get(path.split(".", 1)[0], DEFAULT_NPZ)


def layout(summary: dict) -> tuple[dict, dict[str, dict[str, list]]]:
    """The summary in reading order with its :data:`MOVED` lists replaced by where they went, and
    those lists per .npz file: ``(summary, {npz name: {dotted path: list}})``."""
    import copy

    body = copy.deepcopy(summary)
    moved: dict[str, dict[str, list]] = {}
    for path in _moved_lists(body):
        *parents, leaf = path.split(".")
        node = body
        for key in parents:
            node = node[key]
        npz = _npz_for(path)
        moved.setdefault(npz, {})[path] = node[leaf]
        node[leaf] = {"npz": npz, "key": path, "length": len(node[leaf])}
    scores = body.get("scores")
    if isinstance(scores, dict):
        body["above_chance"] = above_chance(scores)
    note = expected_note(body.get("provenance") or {})
    if note is not None:
        body["expected"] = note
    ordered = {k: body[k] for k in FIRST if k in body}
    ordered.update((k, v) for k, v in body.items() if k not in ordered)
    return ordered, moved


def _add_to_npz(path: Path, arrays: dict[str, list], provenance: dict | None) -> None:
    """``path`` rewritten (atomically) with ``arrays`` added; made if it is not there."""
    import numpy as np

    from .outputs import read_npz, write_npz

    old, prov = read_npz(path) if path.exists() else ({}, provenance)
    clash = sorted(set(old) & set(arrays))
    if clash:
        raise ValueError(f"{path} already holds {', '.join(clash)}")
    new = {k: np.asarray([np.nan if v is None else v for v in values])
           for k, values in arrays.items()}
    write_npz(path, provenance=prov, **old, **new)


def write_summary(out_dir: str | os.PathLike, summary: dict) -> Path:
    """``out_dir/summary.json`` in :func:`layout`'s order, its :data:`MOVED` lists added to the .npz
    files of ``out_dir`` (written by the run before it). Returns the summary's path."""
    from .outputs import write_json

    out_dir = Path(out_dir)
    body, moved = layout(summary)
    for npz, arrays in moved.items():
        _add_to_npz(out_dir / npz, arrays, summary.get("provenance"))
    return write_json(out_dir / "summary.json", body)


def read_summary(run_dir: str | os.PathLike, *, expand: bool = True) -> dict:
    """A run's summary.json; with ``expand``, the lists :func:`write_summary` moved into
    .npz files are put back in place (as plain lists), so a reader of the older layout works."""
    import numpy as np

    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    if not expand:
        return summary

    def restore(node: Any) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            if isinstance(value, dict) and set(value) == {"npz", "key", "length"}:
                with np.load(run_dir / value["npz"], allow_pickle=False) as f:
                    node[key] = f[value["key"]].tolist()
            else:
                restore(value)

    restore(summary)
    return summary
