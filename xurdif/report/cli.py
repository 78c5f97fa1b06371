"""xurdif-report: rebuild a run's report.html, or compare several runs in one page."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import REPORT, gather, write_report

EPILOG = """\
examples:
  xurdif-report runs/watercolor                 # rebuilds runs/watercolor/report.html
  xurdif-report runs/a runs/b -o compare.html   # curves overlaid, grids side by side"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xurdif-report", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (runs/<name>)")
    p.add_argument("-o", "--out", default=None,
                   help=f"output HTML (default: RUN/{REPORT} for one run, compare.html for several)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs = [gather(r) for r in args.runs]
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = [r.name for r in runs]
    for i, r in enumerate(runs):  # two runs/<x> folders from different places: keep both apart
        if names.count(r.name) > 1:
            r.name = f"{r.name} ({i + 1})"
    out = Path(args.out) if args.out else (Path(args.runs[0]) / REPORT if len(runs) == 1 else Path("compare.html"))
    write_report(runs, out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
