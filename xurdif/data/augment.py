"""Crop and flip on uint8 tensors, one generator per sample.

Sample i of a batch draws only from torch.Generator().manual_seed(seeds[i]), in a fixed
order (crop offsets, then flip), so its augmentation does not depend on the batch, the
process or the worker that loads it.
"""
from __future__ import annotations

from typing import Sequence

import torch


def crop_flip(img: torch.Tensor, size: int, crop: str, hflip: bool, seed: int) -> torch.Tensor:
    """uint8 [3, h, w] (short side == size) -> uint8 [3, size, size]."""
    _, h, w = img.shape
    g = torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    if crop == "random":
        top = int(torch.randint(0, h - size + 1, (1,), generator=g))
        left = int(torch.randint(0, w - size + 1, (1,), generator=g))
    else:
        top, left = (h - size) // 2, (w - size) // 2
    out = img[:, top:top + size, left:left + size]
    if hflip and bool(torch.rand((), generator=g) < 0.5):
        out = out.flip(-1)
    return out


def crop_flip_batch(images: Sequence[torch.Tensor], seeds: Sequence[int], size: int, crop: str,
                    hflip: bool) -> torch.Tensor:
    """uint8 [N, 3, size, size]: crop_flip of each image with its own seed."""
    if len(images) != len(seeds):
        raise ValueError(f"get(): {len(images)} indices but {len(seeds)} seeds")
    if not images:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    return torch.stack([crop_flip(im, size, crop, hflip, s) for im, s in zip(images, seeds)])
