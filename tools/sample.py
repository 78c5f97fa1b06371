#!/usr/bin/env python
"""Render images from a trained model: see `python tools/sample.py --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xurdif.render.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
