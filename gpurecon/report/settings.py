"""Which runs can be compared, and the labels that tell their settings apart.

A run's *setting* is (checkpoint, target kind, alpha, l1_ratio). Table 1 keeps one row per
(subject, model, setting); figure and table labels name a model, plus whichever parts of the
setting differ between the runs of that model (``gpt2``, or ``gpt2_ckpt-tiny_a0.1_l0.5`` in a
sweep). A grid run (lists of alpha / l1_ratio, nested selection) has its lists as its
setting (``0.1;1``; ``a0.1-1`` in file names). Runs of the same subject, model and setting
cannot share Table 1: identical ones are duplicates, others differ in config keys outside the
setting (``data.n_channels``, ``target.window``, ...), which the error names.
"""

from __future__ import annotations

import re

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
    or two runs of the same subject, model and setting (which one would Table 1 show?)."""
    kinds = {}
    for run in runs:
        kinds.setdefault(run.data, run.name)
    if len(kinds) > 1:
        listed = "; ".join(f"{k} data in {name}" for k, name in sorted(kinds.items()))
        raise ReportError(f"runs mix data kinds ({listed}); their scores cannot share a table: "
                          "report real and synthetic runs separately")
    seen: dict[tuple, Run] = {}
    for run in runs:
        key = (run.subject, run.model, *setting(run))
        if key in seen:
            first = seen[key]
            differ = differing_settings(first, run)
            if not differ:
                raise ReportError(
                    f"{first.name} and {run.name} are runs of the same subject, model, "
                    "checkpoint, target and solver setting; give the report only one of them")
            listed = "; ".join(f"{k} ({_show(a)} in {first.name}, {_show(b)} in {run.name})"
                               for k, a, b in differ)
            raise ReportError(
                f"{first.name} and {run.name} are runs of the same subject, model, checkpoint, "
                f"target and solver setting that differ in {listed}; Table 1 has one row per "
                "subject, model and setting: report them separately")
        seen[key] = run


# Config keys that say where and how fast a run worked, not what it computed: two runs that
# differ only in these are the same run. Every other key of summary.json's `config` (data,
# signal, target, model, solver settings, seeds) can change the scores.
RUNTIME_KEYS = frozenset({"cache_dir", "progress", "resume", "device", "devices",
                          "signal.chunk_channels", "solver.memory_budget_gb", "model.batch_size"})


def _flatten(node, prefix: str = "") -> dict[str, object]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, object] = {}
    for k, v in node.items():
        flat.update(_flatten(v, f"{prefix}{k}."))
    return {k.rstrip("."): v for k, v in flat.items()}


def result_settings(run: Run) -> dict[str, object]:
    """The run's config (summary.json ``config``) as dotted keys, less :data:`RUNTIME_KEYS`
    and Hydra's own keys; empty for runs that did not record their config."""
    config = run.summary.get("config")
    if not isinstance(config, dict):
        return {}
    return {k: v for k, v in _flatten(config).items()
            if k not in RUNTIME_KEYS and k.split(".")[0] != "hydra"}


def differing_settings(a: Run, b: Run) -> list[tuple[str, object, object]]:
    """(key, value in ``a``, value in ``b``) for every result-changing config key that differs
    (a key one run lacks: ``<absent>``), sorted by key."""
    sa, sb = result_settings(a), result_settings(b)
    missing = "<absent>"
    return [(k, sa.get(k, missing), sb.get(k, missing)) for k in sorted(sa.keys() | sb.keys())
            if sa.get(k, missing) != sb.get(k, missing)]


def _show(value) -> str:
    return value if isinstance(value, str) else repr(value)


def _slug(text: str) -> str:
    text = text.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "none"


def model_label(run: Run, runs: list[Run]) -> str:
    """The model, plus the checkpoint / target kind where the model's runs differ in them."""
    same = [r for r in runs if r.model == run.model]
    parts = [run.model]
    if len({r.checkpoint for r in same}) > 1:
        parts.append(f"ckpt-{_slug(run.checkpoint)}")
    if len({r.target_kind for r in same}) > 1:
        parts.append(run.target_kind)
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
            f"runs: {len(runs)} (folders in table1.csv, column run)"]
