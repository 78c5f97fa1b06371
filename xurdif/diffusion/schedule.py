"""Discrete noise schedules: everything is derived from alphas_cumprod (ᾱ_t).

Time is the integer timestep 0..T-1 (what urdiffusion/xurdif networks receive), so
imported checkpoints and our own models share one schedule object.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("cosine", "linear", "cosine_urdiffusion")


@dataclass(frozen=True)
class Schedule:
    name: str
    alphas_cumprod: torch.Tensor  # float64, shape [T], decreasing

    @property
    def T(self) -> int:
        return self.alphas_cumprod.shape[0]

    def ab(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ at integer timesteps t (any shape), as float32 on t's device."""
        return self.alphas_cumprod.to(t.device)[t.long()].float()

    def log_snr_range(self) -> tuple[float, float]:
        """(lowest, highest) log(ᾱ/(1-ᾱ)) of the table: the noise levels the timesteps span."""
        ac = self.alphas_cumprod
        return float((ac[-1] / (1 - ac[-1])).log()), float((ac[0] / (1 - ac[0])).log())

    def continuous_t(self, log_snr: torch.Tensor) -> torch.Tensor:
        """The fractional timestep at which the schedule has this log-SNR (linear between
        table entries, clamped to [0, T-1]). Models trained on continuous noise levels
        (diffusion.noise_dist: lognormal) get it as their time input, so at sampling the
        integer timesteps mean the same noise levels."""
        ac = self.alphas_cumprod.to(log_snr.device)
        table = (ac / (1 - ac)).log().flip(0).float()  # increasing with -t
        q = log_snr.float().clamp(float(table[0]), float(table[-1]))
        hi = torch.searchsorted(table, q).clamp(1, self.T - 1)
        lo = hi - 1
        frac = (q - table[lo]) / (table[hi] - table[lo])
        rev = lo.float() + frac  # position in the flipped table
        return (self.T - 1) - rev

    def describe(self) -> dict:
        return {"schedule": self.name, "timesteps": self.T}


def cosine_alphas_cumprod(T: int, s: float = 0.008, max_beta: float = 0.999,
                          span: int | None = None) -> torch.Tensor:
    # Nichol & Dhariwal's cosine schedule with betas clipped at 0.999. urdiffusion/xurdif
    # (after lucidrains) divide t by span = T + 1 instead of T, so their ᾱ_{T-1} is 2.4e-6,
    # not 2.4e-9: imported checkpoints use "cosine_urdiffusion" (tests/test_legacy.py).
    span = T if span is None else span
    steps = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos(((steps / span) + s) / (1 + s) * math.pi / 2) ** 2
    ac = f / f[0]
    betas = (1 - ac[1:] / ac[:-1]).clamp(0, max_beta)
    return torch.cumprod(1 - betas, dim=0)


def linear_alphas_cumprod(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    # DDPM's betas are defined for T=1000; rescale so other T keep the same total noise.
    scale = 1000 / T
    betas = torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def make_schedule(name: str = "cosine", timesteps: int = 1000) -> Schedule:
    if name == "cosine":
        return Schedule(name, cosine_alphas_cumprod(timesteps))
    if name == "linear":
        return Schedule(name, linear_alphas_cumprod(timesteps))
    if name == "cosine_urdiffusion":
        return Schedule(name, cosine_alphas_cumprod(timesteps, span=timesteps + 1))
    raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
