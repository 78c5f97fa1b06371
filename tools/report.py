#!/usr/bin/env python
"""Rebuild a run's report.html or compare runs: see `python tools/report.py --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xurdif.report.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
