"""Tiled and wrapping canvases: a Denoiser wrapped so that it predicts x0 for a
canvas of any size from overlapping tiles (MultiDiffusion, Bar-Tal et al. 2023).

At every call (every sampler step) x_t is cut into overlapping tiles, the tiles
of all images go through the inner denoiser in batches, and their x0
predictions are blended into one canvas with weights that fall smoothly towards
each tile's edges. The sampler then updates the whole canvas from the blended
x0, so neighbouring tiles agree at every step and no seam can form. Samplers
see the same callable (x_t, t) -> x0 and know nothing of tiles.

`wrap=True` makes the canvas a torus: tiles may cross the right and bottom
edges and continue at the left and top, so the finished picture tiles
seamlessly. Without tiles, a wrapping canvas is covered by canvas-sized tiles
shifted by half the canvas, whose centres lie on the wrap border.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# Weight at a tile's very edge: small but positive, so every pixel has weight
# even where only one tile covers it.
EDGE_WEIGHT = 1e-3


def positions(length: int, tile: int, overlap: int, wrap: bool) -> list[int]:
    """Tile starts along one axis of `length` pixels, spread evenly.

    Without wrap the first tile starts at 0 and the last ends at `length`; with
    wrap the tiles are spaced evenly around the circle. Adjacent tiles overlap
    by at least `overlap` pixels.
    """
    if tile >= length:
        # Wrapping needs two half-shifted tiles so the border lies inside one.
        return [0, length // 2] if wrap else [0]
    stride = max(tile - overlap, 1)
    if wrap:
        n = math.ceil(length / stride)
        return [round(i * length / n) for i in range(n)]
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def ramp(tile: int, overlap: int, fall_start: bool, fall_end: bool) -> torch.Tensor:
    """One axis of the blending window: 1 in the middle, a raised-cosine fall
    over `overlap` pixels to EDGE_WEIGHT at each edge that borders another tile."""
    w = torch.ones(tile, dtype=torch.float64)
    if overlap <= 0:
        return w
    d = torch.arange(tile, dtype=torch.float64) + 0.5  # distance from the start edge
    fall = lambda dist: EDGE_WEIGHT + (1 - EDGE_WEIGHT) * 0.5 * (1 - torch.cos(math.pi * (dist / overlap).clamp(0, 1)))
    if fall_start:
        w = w * fall(d)
    if fall_end:
        w = w * fall(tile - d)
    return w


@dataclass
class Plan:
    """Where the tiles of one canvas size lie and how they are weighted."""

    rows: list[torch.Tensor]     # per tile: canvas row indices [th]
    cols: list[torch.Tensor]     # per tile: canvas column indices [tw]
    weights: list[torch.Tensor]  # per tile: [th, tw]
    norm: torch.Tensor           # [H, W]: sum of the weights covering each pixel


def plan(h: int, w: int, tile: tuple[int, int] | None, overlap: int, wrap: bool) -> Plan:
    th, tw = (min(tile[0], h), min(tile[1], w)) if tile else (h, w)
    axes = []
    for length, t in ((h, th), (w, tw)):
        # A wrapping axis covered by one canvas-sized tile is blended over half the canvas.
        ov = length // 2 if (wrap and t >= length) else min(overlap, t // 2)
        starts = positions(length, t, ov, wrap)
        axis = []
        for s in starts:
            idx = torch.arange(s, s + t) % length
            # Edges on the canvas border (no wrap) border no other tile: no fall there.
            fall_start = wrap or s > 0
            fall_end = wrap or s + t < length
            axis.append((idx, ramp(t, ov, fall_start and len(starts) > 1, fall_end and len(starts) > 1)))
        axes.append(axis)
    rows, cols, weights = [], [], []
    norm = torch.zeros(h, w, dtype=torch.float64)
    for r, wr in axes[0]:
        for c, wc in axes[1]:
            wt = wr[:, None] * wc[None, :]
            rows.append(r)
            cols.append(c)
            weights.append(wt)
            norm[r[:, None], c[None, :]] += wt
    return Plan(rows, cols, weights, norm)


@dataclass
class TiledDenoiser:
    """Callable (x_t, t) -> x0 like the Denoiser it wraps, with its attributes.

    `tile` is (height, width) in pixels or None (the whole canvas, only useful
    with wrap); `batch` is how many tiles go through the network at once.
    """

    base: object
    tile: tuple[int, int] | None
    overlap: int = 0
    wrap: bool = False
    batch: int = 16
    _plans: dict = field(default_factory=dict, repr=False)

    def __getattr__(self, name: str):
        # schedule, prediction, value_range, to_image, to_model, net, needs_grad ...
        if name in ("base", "_plans"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def plan(self, h: int, w: int) -> Plan:
        if (h, w) not in self._plans:
            self._plans[(h, w)] = plan(h, w, self.tile, self.overlap, self.wrap)
        return self._plans[(h, w)]

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x_t.shape
        if t.ndim == 0:
            t = t.expand(n)
        p = self.plan(h, w)
        dev = x_t.device
        # Tiles of equal shape go through the network together: every image's
        # tile k, for all k, in batches of `batch` tiles.
        jobs = list(range(len(p.weights)))
        out = None
        for shape in sorted({(len(p.rows[k]), len(p.cols[k])) for k in jobs}):
            same = [k for k in jobs if (len(p.rows[k]), len(p.cols[k])) == shape]
            crops = [(k, i) for k in same for i in range(n)]
            for j in range(0, len(crops), max(self.batch, 1)):
                chunk = crops[j:j + max(self.batch, 1)]
                xs = torch.stack([x_t[i][:, p.rows[k].to(dev)[:, None], p.cols[k].to(dev)[None, :]]
                                  for k, i in chunk])
                x0 = self.base(xs, t[[i for _, i in chunk]])
                if out is None:
                    out = torch.zeros(n, x0.shape[1], h, w, dtype=x0.dtype, device=dev)
                for (k, i), pred in zip(chunk, x0):
                    wt = p.weights[k].to(dev, pred.dtype)
                    out[i][:, p.rows[k].to(dev)[:, None], p.cols[k].to(dev)[None, :]] += wt * pred
        return out / p.norm.to(dev, out.dtype)
