#!/usr/bin/env python
"""Convert an urdiffusion / xurdif checkpoint (model-N.pt) into an xurdif model file.

    python tools/import_urdiffusion.py train/model-120.pt --out models/legacy.safetensors
"""
import sys

from xurdif.legacy_import import main

if __name__ == "__main__":
    sys.exit(main())
