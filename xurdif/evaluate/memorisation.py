"""Memorisation: how many samples are near-copies of one training image.

A sample counts as memorised when its nearest training image is closer than
`threshold` (1/3) times the second nearest: the calibrated rule of Yoon et al.
(2023) and Gu et al., "On Memorization in Diffusion Models" (2023). Being far
closer to one image than to any other means copying, not style.

The CLI measures distance in pixel space (L2 on [0, 1] RGB at the training
images' size) because that is where the rule was calibrated, and because
Inception features treat two different faces of the same style as near
neighbours. Training flips images, so each training image is compared in both
orientations and counts once (`train_ids`). `memorisation` itself takes any
features, e.g. Inception features from the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .images import EvaluateError, as_features, as_float01, as_uint8, resize_to

THRESHOLD = 1 / 3


@dataclass
class Memorisation:
    fraction: float                 # share of samples with ratio < threshold
    threshold: float
    ratio: torch.Tensor             # [S] nearest / second-nearest distance
    nearest: torch.Tensor           # [S] training image id of the nearest neighbour
    nearest_row: torch.Tensor       # [S] row of train_feats that was nearest (e.g. the flipped copy)
    second: torch.Tensor            # [S] training image id of the second nearest
    distance: torch.Tensor          # [S] distance to the nearest

    @property
    def memorised(self) -> torch.Tensor:
        return self.ratio < self.threshold


def memorisation(sample_feats, train_feats, train_ids: torch.Tensor | None = None,
                 threshold: float = THRESHOLD) -> Memorisation:
    """Nearest-neighbour ratio test of each sample against the training set.

    train_ids[r] names the training image that row r of train_feats shows
    (several rows may show one image, e.g. flipped copies); default: one row each.
    """
    samples = as_features(sample_feats, "sample_feats", min_rows=1)
    train = as_features(train_feats, "train_feats")
    if samples.shape[1] != train.shape[1]:
        raise EvaluateError(f"feature sizes differ: samples {samples.shape[1]} vs training {train.shape[1]}")
    if train_ids is None:
        train_ids = torch.arange(train.shape[0])
    train_ids = torch.as_tensor(train_ids).long().cpu()
    n_ids = int(train_ids.max()) + 1
    if train_ids.unique().numel() < 2:
        raise EvaluateError("memorisation needs at least 2 distinct training images")
    rows = torch.cdist(samples, train)                                   # [S, R]
    # Distance to each training image = the closest of its rows.
    per_image = rows.new_full((samples.shape[0], n_ids), float("inf"))
    per_image = per_image.scatter_reduce(1, train_ids.expand_as(rows), rows, reduce="amin")
    two = per_image.topk(2, dim=1, largest=False)
    d1, d2 = two.values[:, 0], two.values[:, 1]
    # d1 = d2 = 0: a copy of an image that appears twice in the data; still a copy.
    ratio = torch.where(d2 > 0, d1 / d2.clamp_min(1e-300), torch.zeros_like(d1))
    nearest = two.indices[:, 0]
    nearest_row = rows.masked_fill(train_ids[None, :] != nearest[:, None], float("inf")).argmin(1)
    return Memorisation(
        fraction=float((ratio < threshold).double().mean()), threshold=threshold, ratio=ratio,
        nearest=nearest, nearest_row=nearest_row, second=two.indices[:, 1], distance=d1,
    )


def reference_rows(train: torch.Tensor, flips: bool = True) -> torch.Tensor:
    """float [0, 1] training images, then (with flips) the same images mirrored:
    row r shows training image r % len(train)."""
    rows = as_float01(train)
    return torch.cat([rows, rows.flip(-1)]) if flips else rows


def pixel_memorisation(samples: torch.Tensor, train: torch.Tensor, flips: bool = True,
                       threshold: float = THRESHOLD) -> tuple[Memorisation, torch.Tensor]:
    """Memorisation in pixel space at the training images' size.

    Returns the result and the reference rows (train, then flipped train) that
    `nearest_row` indexes, for drawing the picture.
    """
    size = tuple(train.shape[-2:])
    rows = reference_rows(train, flips)
    ids = torch.arange(train.shape[0]).repeat(rows.shape[0] // train.shape[0])
    train_rows = rows.flatten(1)
    # In chunks: 10k samples as float64 pixels would take gigabytes at once.
    parts = [memorisation(resize_to(chunk, size).flatten(1), train_rows, ids, threshold)
             for chunk in samples.split(512)]
    merged = {name: torch.cat([getattr(p, name) for p in parts])
              for name in ("ratio", "nearest", "nearest_row", "second", "distance")}
    fraction = float((merged["ratio"] < threshold).double().mean())
    return Memorisation(fraction=fraction, threshold=threshold, **merged), rows


def memorisation_picture(samples: torch.Tensor, rows: torch.Tensor,
                         result: Memorisation, count: int = 8, gap: int = 2,
                         min_tile: int = 64) -> torch.Tensor:
    """uint8 [3, H, W] picture: one row per sample, most memorised first, showing
    the sample (red frame if memorised, grey if not), its nearest training image
    as matched (flipped if that was closer) and its second nearest (unflipped;
    rows must start with the training images in id order, as `reference_rows`). Small
    images are enlarged (nearest neighbour, whole factors) to min_tile px."""
    samples = resize_to(samples, tuple(rows.shape[-2:]))
    reference = as_float01(rows)
    scale = max(1, -(-min_tile // reference.shape[-2]))
    if scale > 1:
        samples = F.interpolate(samples, scale_factor=scale, mode="nearest")
        reference = F.interpolate(reference, scale_factor=scale, mode="nearest")
    order = result.ratio.argsort()[:count]
    h, w = reference.shape[-2:]
    tile_h, tile_w = h + 2 * gap, w + 2 * gap
    canvas = torch.ones(3, len(order) * tile_h, 3 * tile_w)
    for row, s in enumerate(order.tolist()):
        frame = torch.tensor([0.9, 0.1, 0.1] if result.memorised[s] else [0.6, 0.6, 0.6])
        tiles = [samples[s], reference[result.nearest_row[s]], reference[result.second[s]]]
        y = row * tile_h
        canvas[:, y:y + tile_h, 0:tile_w] = frame[:, None, None]
        for col, tile in enumerate(tiles):
            x = col * tile_w
            canvas[:, y + gap:y + gap + h, x + gap:x + gap + w] = tile
    return as_uint8(canvas)
