"""Non-leaky augmentation (Karras et al. 2022, appendix; StyleGAN2-ADA).

A few hundred images are too few for a diffusion model: it starts to reproduce
them. Augmenting them multiplies the data, but a plain augmentation leaks: the
model learns to draw rotated and recoloured images too. Here the parameters of
each augmentation are given to the network as a label vector (zero = not
augmented), and sampling passes zeros, so samples look like the unaugmented
data while the network has learnt from all the variants.

Parameters are drawn per sample from a generator seeded by (seed, stream
position), like every other training draw, so a resumed run is the same run.
The images are changed on the device, in one batched affine warp and a few
elementwise colour operations.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.conversions import convert_affinematrix_to_homography, normalize_homography
# warp_affine's own closed-form 3x3 inverse: the same numbers as kornia gives (a private name,
# pinned by tests/test_augment.py's comparison with warp_affine).
from kornia.geometry.transform.imgwarp import _inverse_3x3_closed_form

from ..recipe import AugmentCfg
from ..seeds import derive_seed

# flip x, flip y, cos(rot) - 1, sin(rot), tx, ty (fractions of the size), log2 scale,
# brightness, log2 contrast, log2 saturation
LABELS = ("xflip", "yflip", "rot_cos", "rot_sin", "tx", "ty", "log2_scale", "brightness", "log2_contrast",
          "log2_saturation")
AUG_DIM = len(LABELS)


def enabled(cfg: AugmentCfg) -> bool:
    return cfg.p > 0 and any((cfg.xflip, cfg.yflip, cfg.rotate90, cfg.translate > 0, cfg.scale > 0, cfg.color))


def draw_params(cfg: AugmentCfg, seed: int, positions: Sequence[int], size: int) -> torch.Tensor:
    """[N, AUG_DIM] labels for the samples at these stream positions (CPU, float32).

    Every kind draws its coin and value in a fixed order whether or not it is
    enabled, so switching one kind off does not change the others' draws."""
    rows = []
    # The coins and values are read to the host once per sample (tolist) and compared and scaled
    # in float32 as numpy does it, which is how torch computed them on the 0-dim tensors before:
    # the same labels, without a dozen indexing and comparison operations per sample.
    p32 = np.float32(cfg.p)
    for p in positions:
        g = torch.Generator().manual_seed(derive_seed(seed, "nonleaky-augment", p))
        u = torch.rand(12, generator=g).tolist()  # coins and uniform values
        n = torch.randn(4, generator=g).tolist()  # normal values
        on = [bool(np.float32(u[i]) < p32) for i in range(6)]
        row = [0.0] * AUG_DIM
        if cfg.xflip and on[0]:
            row[0] = 1.0
        if cfg.yflip and on[1]:
            row[1] = 1.0
        if cfg.rotate90 and on[2]:
            k = 1 + int(np.float32(u[6]) * np.float32(3))  # 90, 180 or 270 degrees
            row[2], row[3] = round(math.cos(k * math.pi / 2)) - 1.0, float(round(math.sin(k * math.pi / 2)))
        if cfg.translate > 0 and on[3]:
            max_px = max(1, int(cfg.translate * size))
            row[4] = round((u[7] * 2 - 1) * max_px) / size
            row[5] = round((u[8] * 2 - 1) * max_px) / size
        if cfg.scale > 0 and on[4]:
            row[6] = n[0] * cfg.scale
        if cfg.color and on[5]:
            row[7], row[8], row[9] = n[1] * 0.2, n[2] * 0.5, n[3] * 1.0
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)


def _matrices(labels: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[N, 2, 3] pixel-space affine maps from source to augmented image."""
    n = labels.shape[0]
    sx = torch.where(labels[:, 0] > 0, -1.0, 1.0)
    sy = torch.where(labels[:, 1] > 0, -1.0, 1.0)
    cos, sin = labels[:, 2] + 1, labels[:, 3]
    s = torch.exp2(labels[:, 6])
    a = torch.stack([torch.stack([cos * sx, -sin * sy], -1), torch.stack([sin * sx, cos * sy], -1)], 1) * s.view(-1, 1, 1)
    c = torch.tensor([(w - 1) / 2, (h - 1) / 2], device=labels.device).expand(n, 2)
    shift = torch.stack([labels[:, 4] * w, labels[:, 5] * h], -1)
    t = c + shift - (a @ c.unsqueeze(-1)).squeeze(-1)
    return torch.cat([a, t.unsqueeze(-1)], dim=2)


def plan(labels: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The host's part of `apply`, on the CPU where draw_params made the labels: (the rows to
    warp, their [n, 3, 3] maps from normalised output to normalised source coordinates, the
    [N, 3] colour labels), None for what no row needs. Decided without waiting for the device,
    and the matrix arithmetic (kornia.geometry.transform.warp_affine's, ~40 operations) done
    here instead of there: on a GPU each was a kernel launch (bench/op_count.py)."""
    labels = labels.float().cpu()
    rows = (labels[:, :7].abs().sum(1) > 0).nonzero().flatten()
    colour = labels[:, 7:] if bool((labels[:, 7:].abs().sum(1) > 0).any()) else None
    if not len(rows):
        return None, None, colour
    to_pixels = convert_affinematrix_to_homography(_matrices(labels[rows], h, w))
    return rows, _inverse_3x3_closed_form(normalize_homography(to_pixels, (h, w), (h, w), align_corners=True)), colour


@lru_cache(maxsize=8)
def _base_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """warp_affine's normalised output coordinates (align_corners=True), built once per size."""
    ys, xs = (torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) if n > 1
              else torch.zeros(1, device=device, dtype=dtype) for n in (h, w))
    return torch.meshgrid(ys, xs, indexing="ij")


def warp(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """kornia.geometry.transform.warp_affine's eager path (bilinear, reflection, align_corners),
    from the normalised matrices `plan` made: the same numbers (tests/test_augment.py), in a
    dozen operations on the device."""
    base_y, base_x = _base_grid(x.shape[-2], x.shape[-1], x.device, x.dtype)
    gx = m[:, 0, 0, None, None] * base_x + m[:, 0, 1, None, None] * base_y + m[:, 0, 2, None, None]
    gy = m[:, 1, 0, None, None] * base_x + m[:, 1, 1, None, None] * base_y + m[:, 1, 2, None, None]
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def apply(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Augment a batch x [N, C, H, W] in [-1, 1] as its labels say (rows of zeros: unchanged)."""
    h, w = x.shape[-2:]
    rows, mats, colour = plan(labels, h, w)
    if rows is not None:
        idx = rows.to(x.device, non_blocking=True)
        x = x.index_copy(0, idx, warp(x[idx], mats.to(x.device, x.dtype, non_blocking=True)))
    if colour is not None:
        dev = colour.to(x.device, non_blocking=True)
        b, c, s = (dev[:, i].view(-1, 1, 1, 1) for i in range(3))
        luma = x.mean(1, keepdim=True)
        x = luma + (x - luma) * torch.exp2(s)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + (x - mean) * torch.exp2(c) + b
    return x
