"""The in-training evaluation's one-off set-up, computed and then read from the feature
cache: what every run and resume on the same images paid before the cache, and pays now.

The set-up is the Inception features of the reference images (the training images checked
for copies, and the held-out ones KID is measured against). A fresh cache folder is used,
so the first pass computes them and the second reads them.

  .venv/bin/python bench/long_run.py split --out runs/long8 --train 100 --heldout 204
  .venv/bin/python bench/eval_setup.py --study runs/long8 --size 32
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", type=Path, required=True, help="a long_run.py split folder (train/, heldout/)")
    p.add_argument("--size", type=int, default=32, help="data.size (default 32)")
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "small-data.yaml"))
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="xurdif-eval-setup-")
    from xurdif.data import open_dataset
    from xurdif.data.holdout import held_out
    from xurdif.recipe import load_recipe
    from xurdif.train.monitor import KidMonitor

    recipe = load_recipe(args.recipe, [f"data.path={args.study / 'train'}", f"data.size={args.size}",
                                       f"eval.holdout_path={args.study / 'heldout'}"])
    data = open_dataset(recipe.data)
    for label in ("computed", "from the cache"):
        started = time.perf_counter()
        monitor = KidMonitor(recipe, data, torch.device("cpu"), held_out(recipe, data))
        reference, what = monitor.reference()
        print(f"set-up, {label}: {time.perf_counter() - started:.1f} s ({what}, "
              f"{len(monitor.train)} training images)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
