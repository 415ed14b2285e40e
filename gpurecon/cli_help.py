"""``python -m gpurecon --help``: what gpurecon does, its config groups and its launchers.

Hydra's help page (``conf/hydra/help/gpurecon.yaml``) is a template; the lists in it are made
here, from the files of ``conf/`` (each file's first comment line is its description), so the
page names every option a user can pick and nothing else: no ``*_schema`` entries (the
structured-config schemas the option files extend) and no Hydra plugin internals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The app's groups, in pipeline order; the launchers a sweep (-m) can use.
GROUPS = ("data", "target", "model", "solver")
LAUNCHER_GROUP = "hydra/launcher"
# Hydra's own launcher (always there): jobs one after another in the calling process.
BASIC_LAUNCHER = ("basic", "jobs one after another in this process (Hydra's default)")


def conf_dir() -> Path:
    """gpurecon's ``conf/`` folder: the package ``gpurecon.conf`` of a regular install, or the
    top of the repository for a source checkout (as :mod:`gpurecon.__main__` finds it)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"gpurecon's conf/ folder was not found next to {here}")


def describe(path: Path) -> str:
    """The first comment line of a config file (Hydra's ``# @package`` line skipped; a line
    ending in a comma continues on the next), without ``#`` and a trailing colon; empty when
    the file starts with no comment."""
    parts: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("#"):
            break
        text = text.lstrip("#").strip()
        if text.startswith("@package") or not (text or parts):
            continue
        parts.append(text)
        if not text.endswith(","):   # a sentence continued on the next comment line
            break
    return " ".join(parts).rstrip(":").strip()


def options(group: str) -> list[tuple[str, str]]:
    """(option, description) of each YAML file of ``conf/<group>/``, sorted by name."""
    folder = conf_dir() / group
    return [(p.stem, describe(p)) for p in sorted(folder.glob("*.yaml"))]


def _table(rows: list[tuple[str, str]], chosen: str | None, indent: str = "    ") -> list[str]:
    names = [f"{name} (selected)" if name == chosen else name for name, _ in rows]
    width = max(len(n) for n in names) + 2
    return [f"{indent}{n.ljust(width)}{desc}".rstrip() for n, (_, desc) in zip(names, rows)]


def groups_text(choices: Any = None) -> str:
    """Every config group with its options and their descriptions; ``choices`` (Hydra's
    ``hydra.runtime.choices``) marks the option the command line selects."""
    chosen = dict(choices or {})
    lines: list[str] = []
    for group in GROUPS:
        rows = options(group)
        lines.append(f"{group}: {', '.join(name for name, _ in rows)}")
        lines += _table(rows, chosen.get(group))
    return "\n".join(lines)


def launchers_text(choices: Any = None) -> str:
    """The launchers a sweep (``-m``) can use, ``hydra/launcher=NAME``, with descriptions."""
    chosen = dict(choices or {}).get(LAUNCHER_GROUP)
    rows = [BASIC_LAUNCHER, *options(LAUNCHER_GROUP)]
    return "\n".join(_table(rows, chosen))


def _template_safe(fn):
    # Hydra fills the help template with string.Template ($CONFIG, ...): a "$" of a description
    # ($GPURECON_DATA_ROOT) must reach the page as written
    return lambda choices=None: fn(choices).replace("$", "$$")


def register_help_resolvers() -> None:
    """``${gpurecon_help_groups:${hydra:runtime.choices}}`` and ``${gpurecon_help_launchers:...}``
    for the help template."""
    from omegaconf import OmegaConf

    for name, fn in (("gpurecon_help_groups", groups_text),
                     ("gpurecon_help_launchers", launchers_text)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, _template_safe(fn))
