"""The render's model and, for merge sweeps, its mixes with other models."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from ..diffusion.denoiser import Denoiser


class MergedModels:
    """(1 - w) · this + w · B per tensor (xurdif/merge.py), each mix built once."""

    def __init__(self, den: Denoiser, path: Path, weights: str):
        self.den, self.path, self.weights = den, path, weights
        self.states: dict[str, tuple[dict, dict]] = {}
        self.mixed: dict[tuple[str, float], Denoiser] = {}

    def check(self, other: str) -> None:
        """MergeError (a ValueError) unless `other` can be mixed with this model."""
        from ..merge import load_models

        load_models([self.path, other])

    def get(self, other: str | None, w: float | None) -> Denoiser:
        """The model mixed with `other` at weight w; the model itself for no merge."""
        if w is None:
            return self.den
        from ..merge import interpolate
        from ..weights import load_state

        if (other, w) not in self.mixed:
            if other not in self.states:
                self.states[other] = (load_state(self.path, self.weights), load_state(other, self.weights))
            a, b = self.states[other]
            net = copy.deepcopy(self.den.net)
            net.load_state_dict(interpolate([a, b], [1 - w, w], [str(self.path), other]))
            self.mixed[(other, w)] = dataclasses.replace(self.den, net=net)
        return self.mixed[(other, w)]
