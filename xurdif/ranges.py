"""Pixel value ranges, and every conversion between them.

- On disk and in the image caches: uint8, 0..255.
- Outside the model (pictures, guidance losses, SSIM, metrics): float [0, 1].
- The training loaders' batches: float [-1, 1] (SIGNED), whatever the model.
- Inside a model: its own value range, recorded in its file: [-1, 1] for ours,
  [-0.5, 0.5] for imported urdiffusion/xurdif checkpoints (trained on ToTensor() - 0.5).
"""
from __future__ import annotations

import torch

SIGNED = (-1.0, 1.0)


def from_uint8(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [..] -> float32 in SIGNED, [-1, 1] (the loaders' batches)."""
    return batch.to(torch.float32).div_(127.5).sub_(1.0)


def to_uint8(batch: torch.Tensor) -> torch.Tensor:
    """float in SIGNED -> uint8, rounded: from_uint8's inverse."""
    return ((batch + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_unit(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """Values in `value_range` -> [0, 1] (not clamped)."""
    lo, hi = value_range
    return (x - lo) / (hi - lo)


def from_unit(x01: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """[0, 1] -> values in `value_range`."""
    lo, hi = value_range
    return x01 * (hi - lo) + lo
