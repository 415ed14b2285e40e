"""Figure specs and their writing: each figure is drawn with matplotlib's Agg canvas (never an
interactive backend, no pyplot state) and written, in every format asked for, with the CSV it
was drawn from.

Publication output: PDF and SVG are vector files (nothing is rasterised), with TrueType fonts
embedded in the PDF (``pdf.fonttype`` 42: editable, accepted by journals' checks, not Type 3)
and glyphs as paths in the SVG (``svg.fonttype`` ``path``: it looks the same without the font
installed). ``dpi`` sets the PNG's resolution. No file holds a timestamp (PDF CreationDate and
SVG Date are dropped, SVG ids are salted with a constant): the same runs give the same files.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .. import outputs

FORMATS = ("png", "pdf", "svg")
DEFAULT_DPI = 150
FOOTER_PT = 7.0          # provenance footer: legible when a 8-inch figure is printed at 1:1
PUBLICATION_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "path",
                  "svg.hashsalt": "gpurecon-report", "font.size": 9.0}


@dataclass
class FigureSpec:
    """One figure: its file stem, the data table it is drawn from, and how to draw it."""

    stem: str
    header: list[str]
    rows: list[list]
    draw: Callable[[Figure], None]
    provenance: list[str]
    size: tuple[float, float] = (8.0, 4.5)
    notes: tuple[str, ...] = ()   # extra lines of the CSV's provenance sidecar


def sidecar_name(name: str) -> str:
    """``table1.csv`` -> ``table1.csv.provenance.json``: where a CSV's provenance lives (the CSV
    itself is plain, one header line, so pandas and spreadsheets read it with their defaults)."""
    return f"{name}.provenance.json"


def write_plain_csv(path: Path, header: list[str], rows: list[list], provenance: list[str],
                    notes: tuple[str, ...] | list[str] = (), columns: dict | None = None
                    ) -> list[Path]:
    """``path`` as a plain CSV (header, then rows; RFC 4180 quoting; floats as ``repr``; NaN
    and None as empty cells; UTF-8, with a BOM only when a cell is not ASCII, so that Excel's
    defaults read it) and its provenance sidecar (JSON: ``provenance`` lines, ``notes``,
    optional ``columns`` definitions). Both atomic."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    text = buf.getvalue()
    if not text.isascii():   # a UTF-8 BOM: Excel then reads it as UTF-8 (pandas skips it)
        text = "\ufeff" + text
    side = {"file": path.name, "provenance": list(provenance), "notes": list(notes)}
    if columns:
        side["columns"] = columns
    return [outputs.write_text(path, text),
            outputs.write_text(path.with_name(sidecar_name(path.name)),
                               json.dumps(side, indent=1, sort_keys=True) + "\n")]


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float) or type(v).__name__.startswith("float"):
        v = float(v)
        return "" if v != v else repr(v)
    return str(v)


def draw_figure(spec: FigureSpec) -> Figure:
    """The figure of ``spec``, drawn (Agg canvas), with the provenance footer."""
    with matplotlib.rc_context(PUBLICATION_RC):
        fig = Figure(figsize=spec.size, dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        footer = footer_lines(spec.provenance, spec.size[0])
        height = (len(footer) * FOOTER_PT * 1.3 + 4) / 72 / spec.size[1]
        fig.get_layout_engine().set(rect=(0, height, 1, 1 - height))
        spec.draw(fig)
        for artist in fig.findobj(lambda a: a.get_rasterized()):
            artist.set_rasterized(False)   # colorbars rasterise their solids: keep them vector
        fig.text(0.005, 0.004, "\n".join(footer), fontsize=FOOTER_PT, color="0.2", ha="left",
                 va="bottom", gid="provenance_footer", linespacing=1.15)
    return fig


def footer_lines(provenance: list[str], width_in: float) -> list[str]:
    """The first provenance lines joined by `` | `` and wrapped to the figure's width."""
    chars = max(40, int(width_in * 72 / (0.52 * FOOTER_PT)))
    return textwrap.wrap(" | ".join(provenance[:4]), chars, break_on_hyphens=False) or [""]


def write_figure(out: Path, spec: FigureSpec, formats: tuple[str, ...] = ("png",),
                 dpi: int = DEFAULT_DPI) -> list[Path]:
    """Write ``<stem>.csv`` (and its sidecar) then ``<stem>.<fmt>`` for each of ``formats``
    into ``out``, each atomically."""
    written = write_plain_csv(out / f"{spec.stem}.csv", spec.header, spec.rows, spec.provenance,
                              spec.notes)
    fig = draw_figure(spec)
    text = "; ".join(spec.provenance)
    meta = {"png": {"Description": text},
            "pdf": {"Title": spec.stem, "Subject": text, "Creator": "gpurecon report",
                    "CreationDate": None},
            "svg": {"Title": spec.stem, "Description": text, "Creator": "gpurecon report",
                    "Date": None}}
    with matplotlib.rc_context(PUBLICATION_RC):
        for fmt in formats:
            path = out / f"{spec.stem}.{fmt}"
            with outputs.atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi, metadata=meta[fmt])
            written.append(path)
    return written


def message(ax, text: str) -> None:
    """Say in the figure why something is not drawn (instead of failing)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10,
            color="0.3", wrap=True)


def note(ax, text: str, *, gid: str, y: float = 0.98) -> None:
    """A remark in the axes' top left corner (what the reader must know to read it), wrapped
    to the axes' width and kept out of the layout (it never squeezes the plot)."""
    fig = ax.get_figure()
    width_in = fig.get_figwidth() * ax.get_position().width
    chars = max(30, int(width_in * 72 / (0.55 * 7)))
    t = ax.text(0.01, y, "\n".join(textwrap.wrap(text, chars, break_on_hyphens=False)),
                transform=ax.transAxes, ha="left", va="top", fontsize=7, color="0.15", gid=gid,
                bbox=dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor="0.7",
                          alpha=0.9))
    t.set_in_layout(False)


def flag_text(runs) -> str:
    flags = []
    if any(r.data == "synthetic" for r in runs):
        flags.append("SYNTHETIC data")
    if any(r.untrained for r in runs):
        flags.append("UNTRAINED model")
    return f" [{', '.join(flags)}]" if flags else ""
