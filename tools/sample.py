#!/usr/bin/env python
"""Render images from a trained model: see `python tools/sample.py --help`."""
import sys

from xurdif.render.cli import main

if __name__ == "__main__":
    sys.exit(main())
