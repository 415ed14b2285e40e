"""Which runs can be compared, and the labels that tell their settings apart.

A run's *setting* is (checkpoint, target kind, alpha, l1_ratio). Table 1 keeps one row per
(subject, model, setting); figure and table labels name a model, plus whichever parts of the
setting differ between the runs of that model (``gpt2``, or ``gpt2_ckpt-tiny_a0.1_l0.5`` in a
sweep). A grid run (lists of alpha / l1_ratio, nested selection) has its lists as its
setting (``0.1;1``; ``a0.1-1`` in file names).

Every other config key that can change a score (``data.root``, ``data.n_channels``,
``target.window``, ``solver.n_permutations``, ``model.layer``, seeds, ...; not the runtime keys
of :data:`RUNTIME_KEYS`) is either equal in all runs or splits them: the label then names it
(``gpt2_data.n_channels-16``), so runs that differ in it get their own Table 1 column, mean and
figures and are never averaged together (:func:`split_keys`, :func:`settings_text`). Runs of
the same subject and label are duplicates: an error.
"""

from __future__ import annotations

import re

from ..run_folder import canonical_layer
from .runs import ReportError, Run


def solver_text(value) -> str:
    """``0.1`` -> ``0.1``; a grid's list ``[0.1, 1.0]`` -> ``0.1;1``."""
    if isinstance(value, list):
        return ";".join(f"{float(v):g}" for v in value)
    return f"{float(value):g}"


def setting(run: Run) -> tuple[str, str, str, str]:
    return (run.checkpoint, run.target_kind, solver_text(run.alpha), solver_text(run.l1_ratio))


def check_comparable(runs: list[Run]) -> None:
    """One clear error for runs that must not share a table: real and synthetic data mixed,
    or two runs of the same subject, model, setting and other settings (duplicates: which one
    would Table 1 show?). Runs that differ in any other result-changing setting get separate
    labels (:func:`model_label`) and are not an error."""
    kinds = {}
    for run in runs:
        kinds.setdefault(run.data, run.name)
    if len(kinds) > 1:
        listed = "; ".join(f"{k} data in {name}" for k, name in sorted(kinds.items()))
        raise ReportError(f"runs mix data kinds ({listed}); their scores cannot share a table: "
                          "report real and synthetic runs separately")
    seen: dict[tuple, Run] = {}
    for run in runs:
        key = (run.subject, run_label(run, runs))
        if key in seen:
            first = seen[key]
            raise ReportError(
                f"{first.name} and {run.name} are runs of the same subject, model, "
                "checkpoint, target, solver setting and every other result-changing setting; "
                "give the report only one of them")
        seen[key] = run


# Config keys that say where and how fast a run worked, not what it computed: two runs that
# differ only in these are the same run. Every other key of summary.json's `config` (data,
# signal, target, model, solver settings, seeds) can change the scores. solver.strategy picks
# the engine path (certified to the same tolerance), like device.
RUNTIME_KEYS = frozenset({"cache_dir", "progress", "resume", "overwrite", "device", "devices",
                          "signal.chunk_channels", "solver.memory_budget_gb", "solver.strategy",
                          "model.batch_size", "model.mmap",
                          # limits that refuse or time out a run, never change its scores
                          "cache_lock_timeout", "solver.max_problems"})

# Keys Table 1 already shows as rows, columns or headings (subject, model label, setting).
SHOWN_KEYS = frozenset({"subject", "model.name", "model.checkpoint", "target.kind",
                        "solver.alpha", "solver.l1_ratio"})

NOT_RECORDED = "not recorded"


def _flatten(node, prefix: str = "") -> dict[str, object]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, object] = {}
    for k, v in node.items():
        flat.update(_flatten(v, f"{prefix}{k}."))
    return {k.rstrip("."): v for k, v in flat.items()}


def result_settings(run: Run) -> dict[str, object]:
    """The run's config (summary.json ``config``) as dotted keys, less :data:`RUNTIME_KEYS`
    and Hydra's own keys; empty for runs that did not record their config.

    Values that a config leaves to the run are taken as the run resolved them:
    ``data.kind`` (``auto``) is the data the run used (provenance ``data``), and
    ``solver.n_permutations`` (``auto``: 100 on CPU, 1000 on CUDA) the count the run fitted
    (summary ``solver.n_permutations``)."""
    if "settings" in run._cache:
        return run._cache["settings"]
    config = run.summary.get("config")
    out: dict[str, object] = {}
    if isinstance(config, dict):
        out = {k: v for k, v in _flatten(config).items()
               if k not in RUNTIME_KEYS and k.split(".")[0] != "hydra"}
        out["data.kind"] = run.data
        if "model.layer" in out:   # "23" (a config default) and 23 (the command line) are one layer
            out["model.layer"] = canonical_layer(out["model.layer"])
        fitted = run._get("solver", "n_permutations", default=None)
        if fitted is not None:
            out["solver.n_permutations"] = fitted
    run._cache["settings"] = out
    return out


def differing_settings(a: Run, b: Run) -> list[tuple[str, object, object]]:
    """(key, value in ``a``, value in ``b``) for every result-changing config key that differs
    (a key one run lacks: ``<absent>``), sorted by key."""
    sa, sb = result_settings(a), result_settings(b)
    missing = "<absent>"
    return [(k, sa.get(k, missing), sb.get(k, missing)) for k in sorted(sa.keys() | sb.keys())
            if sa.get(k, missing) != sb.get(k, missing)]


def _other_settings(run: Run) -> dict[str, object]:
    """:func:`result_settings` less :data:`SHOWN_KEYS`, plus ``config``: ``recorded``, or
    ``not recorded`` for a run without a config (older runs: their settings cannot be checked,
    so they are kept apart from runs that recorded theirs)."""
    settings = result_settings(run)
    if not settings:
        return {"config": NOT_RECORDED}
    return {"config": "recorded", **{k: v for k, v in settings.items() if k not in SHOWN_KEYS}}


_ABSENT = "<absent>"
_MEMO: dict[tuple[int, ...], tuple[tuple[Run, ...], dict]] = {}


def _split(runs: list[Run]) -> dict:
    """{"keys": {model: [key, ...]}, "parts": {id(run): [(key, value, label text), ...]}}."""
    memo_key = tuple(id(r) for r in runs)
    hit = _MEMO.get(memo_key)
    if hit is not None:  # the runs are kept in the memo, so their ids are not reused
        return hit[1]
    settings = {id(r): _other_settings(r) for r in runs}
    recorded = [r for r in runs if settings[id(r)]["config"] != NOT_RECORDED]

    def values(key: str, among: list[Run]) -> set[str]:
        return {_value_text(settings[id(r)].get(key, _ABSENT)) for r in among}

    keys: dict[str, list[str]] = {}
    common = {k for r in recorded for k in settings[id(r)] if not k.startswith("model.")}
    shared = sorted(k for k in common if len(values(k, recorded)) > 1)
    if len(values("config", runs)) > 1:
        shared = sorted({*shared, "config"})
    for model in sorted({r.model for r in runs}):
        same = [r for r in recorded if r.model == model]
        own = {k for r in same for k in settings[id(r)] if k.startswith("model.")}
        keys[model] = sorted([*shared, *(k for k in own if len(values(k, same)) > 1)])
    parts: dict[int, list[tuple[str, object, str]]] = {}
    for run in runs:
        mine = settings[id(run)]
        parts[id(run)] = []
        for key in keys[run.model]:
            if key != "config" and mine["config"] == NOT_RECORDED:
                continue
            texts = sorted(values(key, [r for r in runs if key in keys[r.model]]))
            text = _value_text(mine.get(key, _ABSENT))
            # two values that read the same in a file name (two data roots both ending in
            # iBIDS) are numbered instead, in sorted order; table1.md lists the values
            label = (_slug(text) if len({_slug(t) for t in texts}) == len(texts)
                     else str(texts.index(text) + 1))
            parts[id(run)].append((key, mine.get(key, _ABSENT), label))
    if len(_MEMO) > 64:
        _MEMO.clear()
    out = {"keys": keys, "parts": parts}
    _MEMO[memo_key] = (tuple(runs), out)
    return out


def split_keys(runs: list[Run]) -> dict[str, list[str]]:
    """Per model, the sorted result-changing keys (outside :data:`SHOWN_KEYS`) whose values
    differ between ``runs``: ``model.*`` keys between the runs of that model (gpt2 has a
    layer, fasttext none), every other key between all runs; a key one run lacks differs
    (``<absent>``). Empty lists: every setting is equal."""
    return _split(runs)["keys"]


def all_split_keys(runs: list[Run]) -> list[str]:
    """Every key that splits ``runs`` (any model), sorted."""
    return sorted({k for keys in split_keys(runs).values() for k in keys})


def settings_text(run: Run, runs: list[Run]) -> str:
    """``data.n_channels=16; solver.n_permutations=20``: the values of the keys that split
    ``runs`` (:func:`split_keys`) in ``run``; empty when nothing splits them."""
    return "; ".join(f"{k}={_value_text(v)}" for k, v, _ in _split(runs)["parts"][id(run)])


def _value_text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value_text(v) for v in value) + "]"
    return str(value)


def _slug(text: str) -> str:
    text = text.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "none"


def model_label(run: Run, runs: list[Run]) -> str:
    """The model, plus the checkpoint / target kind where the model's runs differ in them,
    plus every other result-changing setting that differs (:func:`split_keys`):
    ``gpt2_ckpt-tiny``, ``gpt2_data.n_channels-16_solver.n_permutations-20``."""
    same = [r for r in runs if r.model == run.model]
    parts = [run.model]
    if len({r.checkpoint for r in same}) > 1:
        parts.append(f"ckpt-{_slug(run.checkpoint)}")
    if len({r.target_kind for r in same}) > 1:
        parts.append(run.target_kind)
    parts += [f"{key}-{text}" for key, _, text in _split(runs)["parts"][id(run)]]
    return "_".join(parts)


def run_label(run: Run, runs: list[Run]) -> str:
    """:func:`model_label`, plus alpha / l1_ratio where that model's runs sweep them."""
    label = model_label(run, runs)
    same = [r for r in runs if model_label(r, runs) == label]
    parts = [label]
    if len({solver_text(r.alpha) for r in same}) > 1:
        parts.append(f"a{solver_text(run.alpha).replace(';', '-')}")
    if len({solver_text(r.l1_ratio) for r in same}) > 1:
        parts.append(f"l{solver_text(run.l1_ratio).replace(';', '-')}")
    return "_".join(parts)


def subject_label(subject: int) -> str:
    return f"sub-{subject:02d}"


def provenance_lines(runs: list[Run]) -> list[str]:
    """What every report file records: code, data kind, devices, checkpoints, run count.
    No timestamps and sorted orders, so the same runs give byte-identical files."""
    from .. import __version__

    ckpts = sorted({f"{r.model}={r.checkpoint}{' (untrained)' if r.untrained else ''}"
                    for r in runs})
    return [f"gpurecon report {__version__}",
            f"data: {', '.join(sorted({r.data for r in runs}))}",
            f"device: {', '.join(sorted({r.device for r in runs}))}",
            f"checkpoint: {'; '.join(ckpts)}",
            f"runs: {len(runs)} (folders in table1.csv, column run)",
            *split_lines(runs)]


def split_lines(runs: list[Run]) -> list[str]:
    """One line naming the settings that differ between ``runs`` (none: no line)."""
    keys = all_split_keys(runs)
    if not keys:
        return []
    return [f"settings differ between runs: {', '.join(keys)} (each value its own label, "
            "column and mean; never averaged together)"]


MODEL_NAMES = {"fasttext": "FastText", "gpt2": "GPT-2", "wav2vec2": "Wav2Vec2",
               "planted": "planted model"}


def human_label(run: Run, runs: list[Run], *, solver: bool = True) -> str:
    """:func:`run_label` as a reader reads it: ``GPT-2, alpha 0.1, l1_ratio 0.5`` for
    ``gpt2_a0.1_l0.5``; ``GPT-2 (checkpoint tiny), data.n_channels=16`` for
    ``gpt2_ckpt-tiny_data.n_channels-16``; ``solver=False`` leaves alpha and l1_ratio out.
    Built from the same parts as the file label, so two
    runs have the same human label exactly when they have the same file label."""
    same = [r for r in runs if r.model == run.model]
    head = MODEL_NAMES.get(run.model, run.model)
    if len({r.checkpoint for r in same}) > 1:
        head += f" (checkpoint {run.checkpoint})"
    parts = [head]
    if len({r.target_kind for r in same}) > 1:
        parts.append(f"target {run.target_kind}")
    parts += [f"{key}={_value_text(value)}" if text == _slug(_value_text(value)) else
              f"{key}={_value_text(value)} [{text}]"
              for key, value, text in _split(runs)["parts"][id(run)]]
    label = model_label(run, runs)
    same = [r for r in runs if model_label(r, runs) == label] if solver else []
    if len({solver_text(r.alpha) for r in same}) > 1:
        parts.append(f"alpha {solver_text(run.alpha).replace(';', ', ')}")
    if len({solver_text(r.l1_ratio) for r in same}) > 1:
        parts.append(f"l1_ratio {solver_text(run.l1_ratio).replace(';', ', ')}")
    return ", ".join(parts)
