"""Every derived seed of xurdif: training draws, render seeds, shard shuffles,
sample grids, KID subsets, SWD patches and guidance cutouts.

A seed for one purpose is a hash of (user seed, purpose, position...), never
`seed + 1` or `seed * k + i`: neighbouring integer seeds give correlated torch
streams, and two purposes offset from one seed overlap (seed s's second stream
is seed s + 1's first).
"""
from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str, bits: int = 63) -> int:
    """A well-mixed seed of `bits` bits (at most 64) from any parts.

    63 bits fit torch.Generator.manual_seed and a signed int64; render seeds use
    31 so that file names (`<seed>.png`) stay short and any tool takes them.
    """
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64, got {bits}")
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << bits) - 1)
