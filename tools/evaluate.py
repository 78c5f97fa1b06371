#!/usr/bin/env python
"""Score generated images against the training images (FID, KID, SWD, memorisation).

Run `tools/evaluate.py --help`; the code lives in xurdif/evaluate/cli.py.
"""
import sys
from pathlib import Path

# Let `python tools/evaluate.py` work from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xurdif.evaluate.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
