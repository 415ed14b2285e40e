"""``python -m gpurecon.report DIR [DIR ...] --out OUT``: Table 1 and the figures."""

from __future__ import annotations

import argparse
import sys

from . import ReportError, make_report
from .draw import DEFAULT_DPI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpurecon.report",
        description="Table 1 (table1.csv, table1.md, table1.tex) and the study's figures (PNG, "
                    "PDF, SVG, each with the CSV it was drawn from) from finished gpurecon runs. "
                    "Reads run folders and multirun folders (any mix, searched recursively); "
                    "never recomputes.")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run or multirun folder(s)")
    parser.add_argument("--out", required=True, help="folder to write the report into")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files in --out named like the report's (table1.md, ...); "
                             "without it such a file stops the report; other files are kept")
    parser.add_argument("--no-figures", action="store_true", help="write only Table 1")
    parser.add_argument("--format", default="png", metavar="FMT[,FMT]",
                        help="figure formats, comma-separated, any of png, pdf, svg (default "
                             "png); PDF and SVG are vector with fonts embedded")
    parser.add_argument("--dpi", type=int, default=DEFAULT_DPI,
                        help=f"PNG resolution (default {DEFAULT_DPI}; 300 for print)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        written = make_report(dirs=args.dirs, out=args.out, figures=not args.no_figures,
                              progress=not args.no_progress, overwrite=args.overwrite,
                              formats=args.format, dpi=args.dpi)
    except ReportError as err:
        print(f"gpurecon.report: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gpurecon.report: interrupted", file=sys.stderr)
        return 130
    print(f"wrote {len(written)} files to {args.out} (table1.md, table1.tex, table1.csv"
          f"{', figures' if not args.no_figures else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
