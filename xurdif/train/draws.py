"""Every random draw of training as a function of (seed, stream position).

Sample k of the global batch at images_seen s sits at stream position p = s + k.
Its data index, augmentation, timestep and noise depend on (seed, p) only, so
the run is the same whatever the number of processes, the per-process batch or
the restarts (see docs/design.md).
"""
from __future__ import annotations

import math
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


def timesteps_and_levels(seed: int, positions: range, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The host's per-sample draws: an integer timestep in [0, T) and an N(0, 1) number for
    continuous noise levels (EDM's log-normal sigma)."""
    ts, levels = [], []
    for p in positions:
        g = torch.Generator().manual_seed(derive_seed(seed, "timestep", p))
        ts.append(torch.randint(0, T, (1,), generator=g))
        levels.append(torch.randn(1, generator=g))
    return torch.cat(ts), torch.cat(levels)


# The noise's draws, recorded in checkpoints: a run resumes with the draws it was started with,
# so a restart across an upgrade stays bit for bit (xurdif/train/state.py).
VERSION = "counter-1"

_GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64's increment
_MIX = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def _int64(u: int) -> int:
    """An unsigned 64-bit constant as the signed int64 with the same bits."""
    return u - (1 << 64) if u >= 1 << 63 else u


def _lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical shift right of int64 bits (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors; products wrap modulo 2^64 as unsigned ones do."""
    z = (z ^ _lsr(z, 30)) * _int64(_MIX[0])
    z = (z ^ _lsr(z, 27)) * _int64(_MIX[1])
    return z ^ _lsr(z, 31)


def keyed_noise(base: int, start: int, n: int, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """[n, *shape] N(0, 1) noise of stream positions start .. start + n - 1 ("counter-1"), the
    whole batch at once from integer counters: position p's numbers are SplitMix64's stream from
    the key mix(base + p * golden), base = derive_seed(seed, "noise", bits=64); each 64-bit
    output gives two 24-bit uniforms and, by Box-Muller, two normals (the first half of the
    sample's elements from the cosines, the second from the sines). A function of (seed, p)
    alone, with no generator state, in torch operations only: one fused kernel once compiled
    (`compiled_keyed_noise`), and a CUDA graph can hold it (issue 33)."""
    size = math.prod(shape)
    half = (size + 1) // 2
    pos = torch.arange(n, device=device, dtype=torch.int64) + start
    keys = _mix(pos * _int64(_GOLDEN) + _int64(base))
    counters = torch.arange(1, half + 1, device=device, dtype=torch.int64) * _int64(_GOLDEN)
    h = _mix(keys[:, None] + counters)  # [n, half]
    u1 = (_lsr(h, 40).float() + 0.5) * 2.0 ** -24  # in (0, 1): the log never sees 0
    u2 = ((h >> 16) & 0xFFFFFF).float() * 2.0 ** -24
    r = (-2.0 * torch.log(u1)).sqrt()
    angle = u2 * (2 * math.pi)
    out = torch.cat([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
    return out[:, :size].reshape(n, *shape)


def compiled_keyed_noise():
    """keyed_noise through torch.compile (train.compile): one kernel for the batch's noise.
    dynamic: the start position changes every step and must not recompile it."""
    return torch.compile(keyed_noise, dynamic=True)


def per_sample_noise(seed: int, positions: range, shape: tuple[int, ...],
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """The draws of "device-noise-1" (xurdif before counter-1): sample p's from a generator on
    `device` seeded by (seed, p), one kernel per sample. Kept so a run started with them
    resumes bit for bit."""
    out = torch.empty(len(positions), *shape, device=device)
    g = torch.Generator(device=out.device)
    for i, p in enumerate(positions):
        out[i].normal_(generator=g.manual_seed(derive_seed(seed, "noise", p)))
    return out


NOISE_VERSIONS = ("device-noise-1", VERSION)


def noise(seed: int, positions: range, shape: tuple[int, ...], device: torch.device | str = "cpu",
          version: str = VERSION, keyed=keyed_noise) -> torch.Tensor:
    """[N, *shape] N(0, 1) noise for consecutive stream positions, drawn where it is used (drawn
    on the host and copied, at 1,500 images/s on an H100 it cost as much as the step:
    docs/benchmarks.md). `version`: the draws a run started with (NOISE_VERSIONS); `keyed`:
    keyed_noise or its compiled_keyed_noise()."""
    if version == VERSION:
        if positions.step != 1:
            raise ValueError(f"noise: positions must be consecutive, got {positions}")
        return keyed(derive_seed(seed, "noise", bits=64), positions.start, len(positions), shape, device)
    if version == "device-noise-1":
        return per_sample_noise(seed, positions, shape, device)
    raise ValueError(f"noise draws {version!r} unknown; valid: {', '.join(NOISE_VERSIONS)}")
