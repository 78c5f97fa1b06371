"""Random cutouts for CLIP, all of them in one batched affine_grid + grid_sample.

A cutout is a box (centre, width, height in pixels) of the image, resampled to
CLIP's input size. Boxes are drawn on the CPU from a caller's generator, so the
same seed gives the same cutouts on any device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def draw_boxes(n: int, height: int, width: int, *, cut_min: float, cut_max: float,
               aspect: float, flip: bool, generator: torch.Generator | None) -> torch.Tensor:
    """n boxes as a float tensor [n, 5]: cx, cy, w, h in pixels, and flip (0/1).

    The side s of a box is uniform in [cut_min, cut_max] of the image's shorter
    side; its aspect ratio a is log-uniform in [1/aspect, aspect]; w = s·sqrt(a)
    and h = s/sqrt(a), each clipped to the image. The box lies inside the image.
    """
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    side = (cut_min + (cut_max - cut_min) * u[:, 0]) * min(height, width)
    ratio = torch.exp((2 * u[:, 1] - 1) * math.log(aspect))
    w = (side * ratio.sqrt()).clamp(max=width)
    h = (side / ratio.sqrt()).clamp(max=height)
    cx = w / 2 + u[:, 2] * (width - w)
    cy = h / 2 + u[:, 3] * (height - h)
    flips = (u[:, 4] < 0.5).double() if flip else torch.zeros(n, dtype=torch.float64)
    return torch.stack([cx, cy, w, h, flips], dim=1).float()


def cut(img: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample boxes from images: img [N, C, H, W], boxes [N, K, 5] -> [N*K, C, *size].

    Row n*K + k is cutout k of image n. Bilinear sampling; one grid_sample call.
    """
    n, c, height, width = img.shape
    k = boxes.shape[1]
    # Bilinear sampling aliases when a box is much larger than the output, so
    # first shrink the source by the largest integer factor every box allows
    # (box coordinates are relative, so they stay valid).
    factor = int(min(float(boxes[..., 2].min()) / size[1], float(boxes[..., 3].min()) / size[0]))
    if factor >= 2:
        img = F.avg_pool2d(img, factor, ceil_mode=True)
        height, width = img.shape[-2:]
        boxes = boxes.clone()
        boxes[..., :4] = boxes[..., :4] / factor
    b = boxes.reshape(n * k, 5).to(img.device, img.dtype)
    cx, cy, w, h, flips = b.unbind(1)
    # affine_grid maps output coordinates in [-1, 1] to input coordinates in
    # [-1, 1] (align_corners=False: -1/1 are the outer pixel edges), so a box's
    # scale is its size over the image size and its shift its centre's offset.
    theta = torch.zeros(n * k, 2, 3, device=img.device, dtype=img.dtype)
    theta[:, 0, 0] = (w / width) * (1 - 2 * flips)
    theta[:, 1, 1] = h / height
    theta[:, 0, 2] = 2 * cx / width - 1
    theta[:, 1, 2] = 2 * cy / height - 1
    grid = F.affine_grid(theta, [n * k, c, *size], align_corners=False)
    src = img.unsqueeze(1).expand(n, k, c, height, width).reshape(n * k, c, height, width)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)


def make_cutouts(img: torch.Tensor, count: int, size: tuple[int, int], *, cut_min: float,
                 cut_max: float, aspect: float, flip: bool,
                 generator: torch.Generator | None) -> torch.Tensor:
    """`count` random cutouts per image, [N*count, C, *size]."""
    n, _, height, width = img.shape
    boxes = draw_boxes(n * count, height, width, cut_min=cut_min, cut_max=cut_max,
                       aspect=aspect, flip=flip, generator=generator)
    return cut(img, boxes.view(n, count, 5), size)
