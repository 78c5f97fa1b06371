#!/usr/bin/env python
"""Score generated images against the training images (FID, KID, SWD, memorisation).

Run `tools/evaluate.py --help`; the code lives in xurdif/evaluate/cli.py.
"""
import sys

from xurdif.evaluate.cli import main

if __name__ == "__main__":
    sys.exit(main())
