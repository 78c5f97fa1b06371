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


def noise_and_timesteps(
    seed: int, positions: range, shape: tuple[int, ...], T: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample N(0,1) noise of `shape`, an integer timestep in [0, T) and one more
    N(0,1) number for continuous noise levels (drawn last, so the first two are
    what they were before it existed)."""
    eps, ts, levels = [], [], []
    for p in positions:
        g = torch.Generator().manual_seed(derive_seed(seed, "noise", p))
        ts.append(torch.randint(0, T, (1,), generator=g))
        eps.append(torch.randn(shape, generator=g))
        levels.append(torch.randn(1, generator=g))
    return torch.stack(eps), torch.cat(ts), torch.cat(levels)
