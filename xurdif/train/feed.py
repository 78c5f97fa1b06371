"""The input pipeline of an indexable source (folder, hf): a DataLoader over this
rank's micro-batches, counted from the start of the run.

Micro-batch j of a rank is micro-batch k = j % grad_accum of step j // grad_accum; its
stream positions, and with them every draw (data index, crop, flip, timestep, noise level,
noise), follow from (seed, position) alone (xurdif/train/draws.py). Workers
therefore change only where the work runs: any data.num_workers gives the same
batches in the same order, and a resumed run starts the loader at its own position.
Images travel as uint8 (a quarter of float32's bytes), pinned when the device is a GPU;
the trainer converts them to float on the device and draws the noise there.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

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
