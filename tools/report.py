#!/usr/bin/env python
"""Rebuild a run's report.html or compare runs: see `python tools/report.py --help`."""
import sys

from xurdif.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
