"""The input pipeline of an indexable source (folder, hf): a DataLoader over this
rank's micro-batches, counted from the start of the run.

Micro-batch j of a rank is micro-batch k = j % grad_accum of step j // grad_accum; its
stream positions, and with them every draw (data index, crop, flip, timestep, noise level,
noise), follow from (seed, position) alone (xurdif/train/draws.py). Workers
therefore change only where the work runs: any data.num_workers gives the same
batches in the same order, and a resumed run starts the loader at its own position.
Images travel as uint8 (a quarter of float32's bytes), pinned when the device is a GPU;
the trainer converts them to float on the device and draws the noise there.
A streaming source (shards) has no index: its images come in stream order. `open_source`
is the one place that tells the two kinds apart, for training and for the monitor.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from ..ranges import from_uint8
from . import draws


@dataclass(frozen=True)
class Layout:
    """Where this rank's micro-batches sit in the global stream."""
    seed: int
    micro: int  # images per micro-batch (train.batch_size)
    world: int
    rank: int
    accum: int
    T: int  # the schedule's timesteps, for the timestep draw

    @property
    def global_batch(self) -> int:
        return self.micro * self.world * self.accum

    def start(self, j: int) -> int:
        """First stream position of this rank's micro-batch j."""
        step, k = divmod(j, self.accum)
        return step * self.global_batch + (k * self.world + self.rank) * self.micro

    def index_at(self, images_seen: int, k: int) -> int:
        return images_seen // self.global_batch * self.accum + k


class MicroBatches(Dataset):
    def __init__(self, data, layout: Layout):
        self.data, self.layout = data, layout

    def __getitem__(self, j: int) -> dict[str, torch.Tensor | int]:
        lay = self.layout
        start = lay.start(j)
        positions = range(start, start + lay.micro)
        x = self.data.get_uint8(draws.data_indices(lay.seed, positions, len(self.data)),
                                draws.augment_seeds(lay.seed, positions))
        t, level = draws.timesteps_and_levels(lay.seed, positions, lay.T)
        return {"start": start, "x": x, "t": t, "level": level}


def open_feed(data, layout: Layout, first: int, num_workers: int, pin: bool):
    """An iterator over micro-batches first, first + 1, ... of this rank."""
    # A generator of its own: an iterator otherwise draws its base seed from the global RNG,
    # which the trainer reseeds for dropout, so a resumed run's dropout would shift.
    loader = DataLoader(MicroBatches(data, layout), batch_size=None, sampler=itertools.count(first),
                        num_workers=num_workers, pin_memory=pin, prefetch_factor=4 if num_workers else None,
                        persistent_workers=False, generator=torch.Generator().manual_seed(0))
    return iter(loader)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host to device without waiting: a copy from pinned memory returns at once."""
    if x.device.type == device.type:  # compare types: accelerate's "cuda" vs a tensor's "cuda:0"
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        return (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)
    return x.to(device)


class Indexed:
    """folder, hf: workers (data.num_workers) decode, crop and draw ahead, uint8 images in
    pinned memory; any start position is one index away."""

    def __init__(self, data, layout: Layout | None, workers: int, device: torch.device):
        self.data, self.layout, self.workers, self.device = data, layout, workers, device
        self.feed = None

    def take(self, images_seen: int, k: int, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images in [-1, 1] on the device, timesteps, levels) of micro-batch k at `start`."""
        item = next(self.feed) if self.feed is not None else None
        if item is None or item["start"] != start:  # first use, or out of order: start the loader here
            self.feed = open_feed(self.data, self.layout, self.layout.index_at(images_seen, k), self.workers,
                                  self.device.type == "cuda")
            item = next(self.feed)
        return from_uint8(to_device(item["x"], self.device)), item["t"], item["level"]

    def first(self, n: int, seed: int) -> torch.Tensor:
        """The first n images in index order, in [-1, 1], cropped and flipped as seed 0 draws it:
        the same images in every run."""
        idx = list(range(min(n, len(self.data))))
        return self.data.get(idx, [0] * len(idx))


class Streamed:
    """shards: images in stream order; a resumed run skips what this rank has trained on."""

    def __init__(self, data, layout: Layout | None, workers: int, device: torch.device):
        self.data, self.layout = data, layout
        self.stream = None

    def take(self, images_seen: int, k: int, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images in [-1, 1] on the host, timesteps, levels) of micro-batch k at `start`."""
        lay = self.layout
        if self.stream is None:
            self.stream = iter(self.data.stream(lay.micro, lay.seed, skip_images=images_seen // lay.world))
        x = next(self.stream)
        t, level = draws.timesteps_and_levels(lay.seed, range(start, start + lay.micro), lay.T)
        return x, t, level

    def first(self, n: int, seed: int) -> torch.Tensor:
        """The stream's first n images (seed: its shuffle), in [-1, 1]."""
        batches, have = [], 0
        for b in self.data.stream(64, seed):
            batches.append(b)
            have += b.shape[0]
            if have >= n:
                break
        return torch.cat(batches)[:n]


def open_source(data, layout: Layout | None = None, workers: int = 0,
                device: torch.device = torch.device("cpu")) -> Indexed | Streamed:
    """The training images of `data` by stream position (layout: where this rank reads), or
    its first images (no layout needed)."""
    return (Indexed if data.indexable else Streamed)(data, layout, workers, device)
