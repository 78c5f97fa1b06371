"""Data loader speed alone (no model): images/s delivered as [-1, 1] batches, per source and size.

Sources: folder (cached in memory, and decoded per batch), hf (an imagefolder of the same
files) and shards (written once with make_shards at the measured size, streamed with 0 and
2 workers). Random crop and flip are on, as in training. Open/decode-once time is reported
apart from the steady rate.

    .venv/bin/python bench/loader_speed.py [--data data/emoji-smileys-64] [--sizes 64 256] [--images 2000]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xurdif.data import open_dataset  # noqa: E402
from xurdif.data.make_shards import write_shards  # noqa: E402
from xurdif.recipe import DataCfg  # noqa: E402


def indexed_batches(ds, batch: int, seed: int = 0) -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = 0
    while True:
        idx = torch.randint(0, len(ds), (batch,), generator=g).tolist()
        yield ds.get(idx, range(k, k + batch))
        k += batch


def rate(batches: Iterator[torch.Tensor], images: int) -> tuple[float, float]:
    """(seconds to the first batch, images/s after it)."""
    t0 = time.perf_counter()
    next(batches)
    t1 = time.perf_counter()
    n = 0
    while n < images:
        n += next(batches).shape[0]
    return t1 - t0, n / (time.perf_counter() - t1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/emoji-smileys-64", help="image folder")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--images", type=int, default=2000, help="images timed per case (after the first batch)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print("| source | size | open (s) | first batch (s) | images/s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        import datasets

        datasets.config.HF_DATASETS_CACHE = str(Path(tmp) / "hf-cache")
        for size in args.sizes:
            base = dict(size=size, crop="random", hflip=True)
            shard_dir = Path(tmp) / f"shards-{size}"
            t = time.perf_counter()
            write_shards(Path(args.data), shard_dir, per_shard=50, size=size)
            print(f"| make_shards (once) | {size} | {time.perf_counter() - t:.2f} | | |")
            cases: list[tuple[str, Callable[[], object], Callable[[object], Iterator[torch.Tensor]]]] = [
                ("folder, cached", lambda: open_dataset(DataCfg(path=args.data, **base)),
                 lambda ds: indexed_batches(ds, args.batch)),
                ("folder, decoded per batch", lambda: open_dataset(DataCfg(path=args.data, cache_max_images=0, **base)),
                 lambda ds: indexed_batches(ds, args.batch)),
                ("hf imagefolder, cached", lambda: open_dataset(DataCfg(source="hf", hf_dataset=args.data, **base)),
                 lambda ds: indexed_batches(ds, args.batch)),
            ]
            for w in (0, 2):
                cfg = DataCfg(source="shards", shards=str(shard_dir), num_workers=w, **base)
                cases.append((f"shards, {w} workers", lambda cfg=cfg: open_dataset(cfg),
                              lambda ds: ds.stream(args.batch, seed=0)))
            for name, opener, batches in cases:
                t = time.perf_counter()
                ds = opener()
                opened = time.perf_counter() - t
                first, per_s = rate(batches(ds), args.images)
                print(f"| {name} | {size} | {opened:.2f} | {first:.2f} | {per_s:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
