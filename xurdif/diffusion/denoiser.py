"""A network plus its schedule, prediction type and value range, seen by samplers
as one function: x_t, t -> predicted clean image (in the model's own range)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ranges import from_unit, to_unit
from . import prediction as P
from .schedule import Schedule


@dataclass
class Denoiser:
    net: torch.nn.Module
    schedule: Schedule
    prediction: str
    value_range: tuple[float, float] = (-1.0, 1.0)
    # Clip x0 to the value range, as DDPM/DDIM samplers do: at the noisiest steps
    # (ᾱ ≈ 1e-9 with the cosine schedule) an eps model's x0 is its eps error / sqrt(ᾱ),
    # and an unclipped estimate that far outside the data saturates the whole render.
    clip: bool = True

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted x0. `t` is an integer timestep tensor of shape [N] (or a scalar)."""
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        ab = self.schedule.ab(t).view(-1, 1, 1, 1)
        out = self.net(P.net_input(self.prediction, x_t, ab), t).float()  # aug labels: none = zeros
        x0 = P.to_x0(self.prediction, out, x_t, ab)
        return x0.clamp(*self.value_range) if self.clip else x0

    # Images are [0, 1] everywhere outside the model; the model sees its own range
    # (xurdif/ranges.py).
    def to_model(self, img: torch.Tensor) -> torch.Tensor:
        return from_unit(img, self.value_range)

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        return to_unit(x, self.value_range).clamp(0, 1)
