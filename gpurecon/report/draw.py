"""Figure specs and their writing: each figure is drawn with matplotlib's Agg canvas (never an
interactive backend, no pyplot state) and written with the CSV it was drawn from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .. import outputs


@dataclass
class FigureSpec:
    """One figure: its file stem, the data table it is drawn from, and how to draw it."""

    stem: str
    header: list[str]
    rows: list[list]
    draw: Callable[[Figure], None]
    provenance: list[str]
    size: tuple[float, float] = (8.0, 4.5)
    notes: tuple[str, ...] = ()   # extra `# ` lines of the CSV (e.g. the observed score)


def write_figure(out: Path, spec: FigureSpec) -> list[Path]:
    """Write ``<stem>.csv`` then ``<stem>.png`` into ``out``, each atomically."""
    csv = outputs.write_csv(out / f"{spec.stem}.csv", spec.header, spec.rows,
                            comments=[*spec.provenance, *spec.notes])
    fig = Figure(figsize=spec.size, dpi=100, layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0.03, 1, 0.97))  # room for the provenance footer
    FigureCanvasAgg(fig)
    spec.draw(fig)
    fig.text(0.005, 0.005, " | ".join(spec.provenance[:4]), fontsize=6, color="0.4",
             ha="left", va="bottom")
    png = out / f"{spec.stem}.png"
    with outputs.atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", metadata={"Description": "; ".join(spec.provenance)})
    return [csv, png]


def message(ax, text: str) -> None:
    """Say in the figure why something is not drawn (instead of failing)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10,
            color="0.3", wrap=True)


def flag_text(runs) -> str:
    flags = []
    if any(r.data == "synthetic" for r in runs):
        flags.append("SYNTHETIC data")
    if any(r.untrained for r in runs):
        flags.append("UNTRAINED model")
    return f" [{', '.join(flags)}]" if flags else ""
