"""The indexable sources' DataLoader: the same micro-batches whatever data.num_workers,
from any starting position, equal to the draws of xurdif/train/draws.py."""
from pathlib import Path

import torch

from xurdif.data import open_dataset
from xurdif.data.augment import to_model_range
from xurdif.recipe import DataCfg
from xurdif.train import draws
from xurdif.train.feed import Layout, open_feed

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "emoji-faces-32"


def items(data, layout, first, n, workers):
    feed = open_feed(data, layout, first, workers, pin=False)
    return [next(feed) for _ in range(n)]


def test_workers_give_the_same_batches_as_the_draws():
    data = open_dataset(DataCfg(path=str(FIXTURE), size=16, crop="random", hflip=True))
    lay = Layout(seed=3, micro=5, world=2, rank=1, accum=2, T=1000)  # 20 images per step, 32 in the data
    main = items(data, lay, 0, 6, 0)
    workers = items(data, lay, 0, 6, 2)
    resumed = items(data, lay, lay.index_at(40, 0), 2, 2)  # a run resumed at 40 images seen
    for a, b in zip(main, workers):
        assert a["start"] == b["start"] and all(torch.equal(a[k], b[k]) for k in ("x", "eps", "t", "level"))
    assert [m["start"] for m in main] == [5, 15, 25, 35, 45, 55]  # rank 1 of 2, micro-batches k = 0, 1
    assert [r["start"] for r in resumed] == [45, 55]
    assert all(torch.equal(r["x"], m["x"]) for r, m in zip(resumed, main[4:]))
    # What the loop fed before the loader: data.get on the same positions, same draws.
    pos = range(25, 30)
    x = data.get(draws.data_indices(3, pos, len(data)), draws.augment_seeds(3, pos))
    eps, t, level = draws.noise_and_timesteps(3, pos, (3, 16, 16), 1000)
    assert main[2]["x"].dtype == torch.uint8
    assert torch.equal(to_model_range(main[2]["x"]), x)
    assert torch.equal(main[2]["eps"], eps) and torch.equal(main[2]["t"], t) and torch.equal(main[2]["level"], level)
