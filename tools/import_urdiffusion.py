#!/usr/bin/env python
"""Convert an urdiffusion / xurdif checkpoint (model-N.pt) into an xurdif model file.

    python tools/import_urdiffusion.py train/model-120.pt --out models/legacy.safetensors
"""
import sys
from pathlib import Path

# Run from a checkout without installing: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xurdif.legacy_import import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
