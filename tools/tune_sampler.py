#!/usr/bin/env python
"""Choose a model's default sampler by measuring, and record it in the model file.

Run `tools/tune_sampler.py --help`; the code lives in xurdif/sampling/cli.py.
"""
import sys

from xurdif.sampling.cli import main

if __name__ == "__main__":
    sys.exit(main())
