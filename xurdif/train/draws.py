"""Every random draw of training as a function of (seed, stream position).

Sample k of the global batch at images_seen s sits at stream position p = s + k.
Its data index, augmentation, timestep and noise depend on (seed, p) only, so
the run is the same whatever the number of processes, the per-process batch or
the restarts (see docs/design.md).
"""
from __future__ import annotations

from functools import lru_cache

import torch

from ..seeds import derive_seed


@lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
    return torch.randperm(n, generator=g)


def data_indices(seed: int, positions: range, n: int) -> list[int]:
    return [int(epoch_order(seed, p // n, n)[p % n]) for p in positions]


def augment_seeds(seed: int, positions: range) -> list[int]:
    return [derive_seed(seed, "augment", p) for p in positions]


VERSION = "device-noise-1"  # recorded in checkpoints: a resume with other draws is not bit for bit


def timesteps_and_levels(seed: int, positions: range, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The host's per-sample draws: an integer timestep in [0, T) and an N(0, 1) number for
    continuous noise levels (EDM's log-normal sigma)."""
    ts, levels = [], []
    for p in positions:
        g = torch.Generator().manual_seed(derive_seed(seed, "timestep", p))
        ts.append(torch.randint(0, T, (1,), generator=g))
        levels.append(torch.randn(1, generator=g))
    return torch.cat(ts), torch.cat(levels)


def noise(seed: int, positions: range, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """[N, *shape] N(0, 1) noise, drawn where it is used: sample p's from a generator on
    `device` seeded by (seed, p), one kernel per sample and no copy. Drawn on the host and
    copied, at 1,500 images/s on an H100 it cost as much as the step (docs/benchmarks.md)."""
    out = torch.empty(len(positions), *shape, device=device)
    g = torch.Generator(device=out.device)
    for i, p in enumerate(positions):
        out[i].normal_(generator=g.manual_seed(derive_seed(seed, "noise", p)))
    return out
