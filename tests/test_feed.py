"""The indexable sources' DataLoader: the same micro-batches whatever data.num_workers,
from any starting position, equal to the draws of xurdif/train/draws.py."""
from pathlib import Path

import pytest
import torch

from xurdif.data import open_dataset
from xurdif.ranges import from_uint8
from xurdif.recipe import DataCfg
from xurdif.seeds import derive_seed
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
        assert a["start"] == b["start"] and all(torch.equal(a[k], b[k]) for k in ("x", "t", "level"))
    assert [m["start"] for m in main] == [5, 15, 25, 35, 45, 55]  # rank 1 of 2, micro-batches k = 0, 1
    assert [r["start"] for r in resumed] == [45, 55]
    assert all(torch.equal(r["x"], m["x"]) for r, m in zip(resumed, main[4:]))
    # What the loop fed before the loader: data.get on the same positions, same draws.
    pos = range(25, 30)
    x = data.get(draws.data_indices(3, pos, len(data)), draws.augment_seeds(3, pos))
    t, level = draws.timesteps_and_levels(3, pos, 1000)
    assert main[2]["x"].dtype == torch.uint8
    assert torch.equal(from_uint8(main[2]["x"]), x)
    assert "eps" not in main[2] and torch.equal(main[2]["t"], t) and torch.equal(main[2]["level"], level)


class _Moved:
    """Stands in for a tensor on a GPU (this machine has none): records what was asked of it."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.calls = []

    def is_pinned(self):
        self.calls.append("is_pinned")
        return False

    def pin_memory(self):
        self.calls.append("pin_memory")
        return self

    def to(self, *args, **kwargs):
        self.calls.append(("to", str(args[0]), kwargs.get("non_blocking", False)))
        return self


def test_to_device_leaves_device_batches_alone_and_pins_host_ones():
    from xurdif.train.feed import to_device

    cuda = torch.device("cuda")  # accelerate says "cuda" ...
    on_gpu = _Moved("cuda:0")  # ... a batch the loader already moved says "cuda:0": pinning it again fails
    assert to_device(on_gpu, cuda) is on_gpu and on_gpu.calls == []
    host = _Moved("cpu")
    assert to_device(host, cuda) is host
    assert host.calls == ["is_pinned", "pin_memory", ("to", "cuda", True)]  # pinned, then copied without waiting
    plain = torch.ones(2)
    assert to_device(plain, torch.device("cpu")) is plain



def test_noise_is_a_function_of_seed_and_position():
    """Sample p's noise depends on (seed, p) alone: the same whatever the batch it sits in
    (2 processes x b = 1 process x 2b), as counter-1 and the per-sample draws before it give it."""
    for version in draws.NOISE_VERSIONS:
        eps = draws.noise(7, range(3, 6), (3, 4, 4), "cpu", version)
        assert eps.shape == (3, 3, 4, 4) and eps.device.type == "cpu"
        torch.testing.assert_close(draws.noise(7, range(4, 6), (3, 4, 4), "cpu", version), eps[1:], rtol=0, atol=0)
        assert not torch.equal(eps, draws.noise(8, range(3, 6), (3, 4, 4), "cpu", version))
    g = torch.Generator().manual_seed(derive_seed(7, "noise", 4))
    torch.testing.assert_close(draws.noise(7, range(3, 6), (3, 4, 4), "cpu", "device-noise-1")[1],
                               torch.randn((3, 4, 4), generator=g), rtol=0, atol=0)
    with pytest.raises(ValueError, match="noise draws 'gpu-2' unknown; valid: device-noise-1, counter-1"):
        draws.noise(7, range(3), (3, 4, 4), "cpu", "gpu-2")


def test_host_draws_of_timesteps_and_levels():
    t, level = draws.timesteps_and_levels(0, range(4000), 1000)
    assert t.min() >= 0 and t.max() <= 999 and torch.histc(t.float(), bins=10, min=0, max=1000).std() < 40
    assert abs(level.mean().item()) < 0.05 and abs(level.std().item() - 1) < 0.05
