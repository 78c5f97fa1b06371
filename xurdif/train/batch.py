"""A training micro-batch, assembled from its source: clean images, noise levels, noise and
augmentation, every draw a function of (seed, stream position) (xurdif/train/draws.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..recipe import Recipe
from . import augment, draws
from .feed import Layout, open_source, to_device
from .network import compile_mode

if TYPE_CHECKING:
    from .loss import Loss


@dataclass
class Batch:
    """One micro-batch on the device. x0: clean images in the model's value range; eps: their
    noise; ab: ᾱ [N, 1, 1, 1]; t: the network's time input; aug: augmentation labels, None
    with augment off."""
    x0: torch.Tensor
    eps: torch.Tensor
    ab: torch.Tensor
    t: torch.Tensor
    aug: torch.Tensor | None


class Batches:
    """Micro-batch k of the step at images_seen, for this rank."""

    def __init__(self, recipe: Recipe, data, layout: Layout, loss: Loss, device: torch.device):
        self.source = open_source(data, layout, recipe.data.num_workers, device)
        self.layout, self.loss, self.device = layout, loss, device
        self.augment_cfg = recipe.augment if augment.enabled(recipe.augment) else None
        self.keyed_noise = draws.compiled_keyed_noise() if compile_mode(recipe.train) else draws.keyed_noise

    def __call__(self, images_seen: int, k: int, noise_draws: str = draws.VERSION) -> Batch:
        lay = self.layout
        start = images_seen + (k * lay.world + lay.rank) * lay.micro
        positions = range(start, start + lay.micro)
        x, t, level = self.source.take(images_seen, k, start)
        ab, t_in = self.loss.levels(t, level)
        x, ab, t_in = (to_device(v, self.device) for v in (x, ab, t_in))  # x: already there if indexable
        eps = draws.noise(lay.seed, positions, tuple(x.shape[1:]), x.device, noise_draws, self.keyed_noise)
        labels = None
        if self.augment_cfg is not None:
            labels = augment.draw_params(self.augment_cfg, lay.seed, positions, x.shape[-1])
            x = augment.apply(x, labels)  # on [-1, 1] data, before the value-range map
            labels = to_device(labels, self.device)
        return Batch(self.loss.clean(x), eps, ab.view(-1, 1, 1, 1), t_in, labels)
