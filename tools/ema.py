#!/usr/bin/env python
"""Post-hoc EMA of a training run: `tools/ema.py RUN --std 0.02 0.05 0.1`.

Run `tools/ema.py --help`; the code lives in xurdif/train/ema_cli.py.
"""
import sys

from xurdif.train.ema_cli import main

if __name__ == "__main__":
    sys.exit(main())
