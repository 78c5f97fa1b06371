"""Reading the pictures guides refer to (image prompts, target, mask, style)."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..data.images import BadImage, read_picture, to_tensor
from ..ranges import to_unit
from .config import GuidanceError


def load_image(path: str, key: str, grey: bool = False) -> torch.Tensor:
    """A picture file -> float tensor [1, C, H, W] in [0, 1] (C = 1 if grey else 3)."""
    if not os.path.isfile(path):
        raise GuidanceError(f"guidance.{key}: image file {path!r} does not exist")
    try:
        picture = read_picture(path, grey=grey)
    except BadImage as e:
        raise GuidanceError(f"guidance.{key}: cannot read image {path!r}: {e}") from None
    return to_tensor(picture)[None].float() / 255


def resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize to (H, W); antialiased so a large picture shrinks without aliasing."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=True)


def to_image_st(x0: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """Model range -> [0, 1], clamped in value but not in gradient.

    Losses must see a valid picture, but a hard clamp would give zero gradient
    exactly on the pixels where the model overshoots its range, i.e. where the
    guide most needs to act; a straight-through clamp keeps the gradient.
    """
    raw = to_unit(x0, value_range)
    return raw + (raw.clamp(0, 1) - raw).detach()
