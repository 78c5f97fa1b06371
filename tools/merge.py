#!/usr/bin/env python
"""Interpolate models of one kind into a new model file: see `python tools/merge.py --help`."""
import sys

from xurdif.merge import main

if __name__ == "__main__":
    sys.exit(main())
