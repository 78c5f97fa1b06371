#!/usr/bin/env python
"""Write the model library page of a folder of models: see `python tools/library.py --help`."""
import sys

from xurdif.library.cli import main

if __name__ == "__main__":
    sys.exit(main())
