#!/usr/bin/env python
"""Interpolate models of one kind into a new model file: see `python tools/merge.py --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xurdif.merge import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
