"""The sampler a model renders with when a job does not say, and how a job's
settings resolve against it.

A model file records its default under the metadata key "sampling" (written at
export by xurdif/sampling/choose.py, or by tools/tune_sampler.py). A file
without one (every model from before this was added, and imported checkpoints)
keeps the old default, ddim 50 with uniform spacing, so it renders as before.

A job that names its sampler renders as it did before too: steps 50, uniform
spacing, eta 0 (dpmpp_2m_sde: 1), unless it names those as well. "auto" (the default) takes all of
the model's settings, each of which the job may still override.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..diffusion.samplers import SAMPLERS
from ..diffusion.spacing import SPACINGS, check_sigma_min

AUTO = "auto"


@dataclass(frozen=True)
class Sampling:
    sampler: str
    steps: int          # network evaluations
    spacing: str = "uniform"
    eta: float = 0.0    # ddim's and dpmpp_2m_sde's eta, edm's churn; ignored by the other samplers
    curve: tuple[float, ...] = field(default=(), compare=False)  # spacing "fitted": log-SNR at even u
    sigma_min: float = 0.0  # logsnr/karras: the noise level of the last step (0: the schedule's smallest)

    def describe(self) -> str:
        eta = f" eta {self.eta:g}" if self.eta else ""
        end = f" to sigma {self.sigma_min:g}" if self.sigma_min else ""
        return f"{self.sampler}, {self.steps} steps, {self.spacing} spacing{end}{eta}"

    def sample_args(self) -> dict:
        """These settings as xurdif.diffusion.samplers.sample()'s keyword arguments."""
        from ..diffusion.samplers import TAKES_ETA

        return {"sampler": self.sampler, "steps": self.steps, "spacing": self.spacing, "curve": self.curve,
                "sigma_min": self.sigma_min, **({"eta": self.eta} if self.sampler in TAKES_ETA else {})}

    def to_json(self) -> dict:
        out = {"sampler": self.sampler, "steps": self.steps, "spacing": self.spacing, "eta": self.eta}
        if self.sigma_min:  # written only where set: a file from before reads as it always did
            out["sigma_min"] = self.sigma_min
        if self.curve:
            out["curve"] = list(self.curve)
        return out

    @classmethod
    def from_json(cls, d: object) -> "Sampling":
        """ValueError naming what is wrong (the caller names the file)."""
        if not isinstance(d, dict):
            raise ValueError(f"'sampling' must be a mapping, got {type(d).__name__}")
        s = cls(str(d.get("sampler")), d.get("steps"), str(d.get("spacing", "uniform")), d.get("eta", 0.0),
                tuple(d.get("curve") or ()), d.get("sigma_min", 0.0))
        s.check()
        return s

    def check(self) -> "Sampling":
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; valid: {', '.join(SAMPLERS)}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {self.spacing!r}; valid: {', '.join(SPACINGS)}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be an integer in 1..1000, got {self.steps!r}")
        if not isinstance(self.eta, (int, float)) or not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be in 0..1, got {self.eta!r}")
        check_sigma_min(self.spacing, self.sigma_min)
        if self.spacing == "fitted" and len(self.curve) < 2:
            raise ValueError("spacing 'fitted' needs its curve (at least 2 log-SNR values)")
        if self.curve and not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.curve):
            raise ValueError("the fitted curve must be finite numbers")
        return self


# What every model rendered with before models carried a default.
LEGACY = Sampling("ddim", 50, "uniform", 0.0)


def resolve(model: Sampling, sampler: str | None = AUTO, steps: int | None = None, spacing: str | None = AUTO,
            eta: float | None = None, sigma_min: float | None = None) -> Sampling:
    """The settings a job renders with: the model's for "auto", the old defaults
    under a sampler the job names, and whatever the job sets itself on top.
    The model's sigma_min goes with its spacing: a job that names another spacing
    ends that spacing's own way unless it sets sigma_min too."""
    from ..diffusion.samplers import default_eta

    base = model if sampler in (None, AUTO) else Sampling(sampler, LEGACY.steps, LEGACY.spacing,
                                                          default_eta(sampler) if sampler in SAMPLERS else LEGACY.eta)
    spacing = base.spacing if spacing in (None, AUTO) else spacing
    if sigma_min is None:
        sigma_min = base.sigma_min if spacing == base.spacing else 0.0
    return Sampling(base.sampler, base.steps if steps is None else steps, spacing,
                    base.eta if eta is None else eta, model.curve, sigma_min)
