#!/usr/bin/env python
"""Train from a recipe: `accelerate launch launch.py recipes/demo.yaml [section.key=value ...]`.

Thin entry point; everything lives in xurdif.train.cli (see --help)."""
import sys

from xurdif.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
