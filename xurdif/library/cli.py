"""xurdif-library: one HTML page listing every model file under a folder.

Each model shows its last sample grid (when it sits in a run folder), the data it was
trained on and how many images, images seen and training time, prediction type and
preset, the latest KID and memorised share (when the run measured them), its parents
(a merge's, or the model it was fine-tuned from) and the xurdif-sample command that
renders with it, with a copy button. Built from the model files' metadata and their run
folders alone, so a folder of downloaded models works too. The page is self-contained
(grids embedded), so it can be moved or mailed."""
from __future__ import annotations

import argparse
import sys

from . import LIBRARY, write_library

EPILOG = f"""\
examples:
  xurdif-library                         # every model under runs/, page runs/{LIBRARY}
  xurdif-library ~/models -o models.html

.safetensors files that are not xurdif models (a checkpoint's tensors, foreign or damaged
files) are skipped with a warning."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xurdif-library", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", default="runs", help="folder searched recursively for model files "
                                                             "(default: runs)")
    p.add_argument("-o", "--out", default=None, help=f"output HTML (default: FOLDER/{LIBRARY})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out, skipped = write_library(args.folder, args.out)
    except (FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in skipped:
        print(f"warning: {line}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
