#!/usr/bin/env python
"""Post-hoc EMA of a training run: `tools/ema.py RUN --std 0.02 0.05 0.1`.

Run `tools/ema.py --help`; the code lives in xurdif/train/ema_cli.py.
"""
import sys
from pathlib import Path

# Let `python tools/ema.py` work from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xurdif.train.ema_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
