"""The stages' order is the import order: data -> signal -> embeddings -> solver -> evaluation
-> report. A stage never imports a later one (at module level or inside a function), so each
stage runs and tests without the ones after it; the app (experiment.py) wires them."""

from __future__ import annotations

import ast
from pathlib import Path

import gpurecon

PACKAGE = Path(gpurecon.__file__).parent
# gpurecon.parallel is the solver's sharded twin: it belongs to the solver stage
STAGES = {"data": 0, "signal": 1, "embeddings": 2, "solver": 3, "parallel": 3, "evaluation": 4,
          "report": 5}


def _stage_of(module: str) -> str | None:
    """The stage of a module named relative to the package (``solver.fit`` -> ``solver``)."""
    head = module.split(".")[0]
    return head if head in STAGES else None


def _imports(path: Path) -> list[str]:
    """Every gpurecon module ``path`` imports, named relative to the package."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    here = list(rel.parts[:-1])   # the package a relative import starts from
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name[len("gpurecon."):] for a in node.names if a.name.startswith("gpurecon.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith("gpurecon"):
                    continue
                base = (node.module or "").split(".")[1:]
            else:
                base = here[:len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            if node.module is None or not base:   # `from . import x`, `from .. import x`
                found += [".".join(base + [a.name]) for a in node.names]
            else:
                found.append(".".join(base))
    return found


def test_no_stage_imports_a_later_stage():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        stage = _stage_of(".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        if stage is None:
            continue
        for module in _imports(path):
            other = _stage_of(module)
            if other is not None and STAGES[other] > STAGES[stage]:
                bad.append(f"{path.relative_to(PACKAGE)} ({stage}) imports {module} ({other})")
    assert bad == []


def test_the_import_reader_sees_relative_and_absolute_imports(tmp_path):
    """The reader itself: the forms of import the stages use are all recognised."""
    src = PACKAGE / "solver" / "fit.py"
    names = _imports(src)
    assert "config" in names and "solver" in names and "parallel" in names
    assert "evaluation" in _imports(PACKAGE / "experiment.py")
    assert "solver.fit" in _imports(PACKAGE / "evaluation.py")
