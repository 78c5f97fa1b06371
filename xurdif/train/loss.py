"""What a training step minimises. The loss object turns a micro-batch's host draws into
noise levels (uniform timesteps, or EDM's log-normal sigma), maps clean images into the
model's value range, and scores a network's output with the recipe's loss mix
(xurdif/diffusion/losses.py) in the model's prediction space (prediction.py)."""
from __future__ import annotations

from typing import Callable

import torch

from ..diffusion import prediction as P
from ..diffusion.losses import loss_terms
from ..diffusion.schedule import Schedule
from ..ranges import SIGNED, from_unit, to_unit
from ..recipe import Recipe
from ..weights import ModelMeta
from .batch import Batch

# (network input, time input, augmentation labels or None) -> the network's float output
Denoise = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class Loss:
    def __init__(self, recipe: Recipe, meta: ModelMeta, schedule: Schedule, terms: Callable = loss_terms):
        # A fine-tune trains in its starting model's prediction type and value range.
        self.cfg, self.diffusion, self.schedule = recipe.loss, recipe.diffusion, schedule
        self.prediction, self.value_range = meta.prediction, meta.value_range
        self.terms = terms

    def levels(self, t: torch.Tensor, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ᾱ, the network's time input) per sample, from the schedule's table on the host like
        every other draw: the device only receives the per-sample numbers (no table copies,
        no reads back). t: integer timesteps; level: N(0, 1) numbers (xurdif/train/draws.py)."""
        d = self.diffusion
        if not d.lognormal:
            return self.schedule.ab(t), t
        # EDM's log-normal σ, kept inside the schedule's range: ᾱ = 1/(1+σ²), and the
        # network's time input is the schedule's (fractional) timestep of that σ.
        lo_snr, hi_snr = self.schedule.log_snr_range()
        log_snr = (-2 * (d.p_mean + d.p_std * level)).clamp(lo_snr, hi_snr)
        return torch.sigmoid(log_snr), self.schedule.continuous_t(log_snr)

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        """Data in [-1, 1] in the model's value range (an imported model may use another)."""
        return from_unit(to_unit(x, SIGNED), self.value_range)

    def __call__(self, denoise: Denoise, b: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total, terms) of the network `denoise` on micro-batch b (xurdif.diffusion.losses.loss_terms)."""
        pred = self.prediction
        x_t = P.add_noise(b.x0, b.eps, b.ab)
        out = denoise(P.net_input(pred, x_t, b.ab), b.t, b.aug)
        target = P.target(pred, b.x0, b.eps, b.ab)
        x0_pred = P.to_x0(pred, out, x_t, b.ab)
        return self.terms(self.cfg, out, target, x0_pred, b.x0, pred, b.ab.flatten(), self.value_range)
