"""Where a sampler's steps fall: a descending list of integer timesteps.

Samplers see integer timesteps (what every network, ours and imported, was
trained on), so each spacing picks target noise levels and rounds them to the
nearest timestep by log-SNR, keeping the list strictly descending.

- uniform: equal gaps in t, "trailing" (Lin et al. 2023); today's default.
- logsnr: equal gaps in log-SNR λ = log(ᾱ/(1-ᾱ)).
- karras: Karras et al. 2022's σ^(1/ρ) ramp, ρ = 7, σ² = (1-ᾱ)/ᾱ, down to the
  smallest σ of the table.
Both start their ramp at σ = 80 (EDM's σ_max) when the start is noisier: one
step from the start to σ = 80, where the flow is a straight line, then the ramp.
Both end at the table's smallest σ (t = 0) unless `sigma_min` says where the last
step lands: the solver's final step goes from there to the clean image. At 10
evaluations an x0 model's last step at t = 0 (σ ≈ 0.006, under one 8-bit level)
changes nothing; ending at σ = 0.05 spends it higher up (docs/benchmarks.md).
- fitted: a curve recorded in the model file (xurdif/sampling/fit.py), as log-SNR
  at evenly spaced positions u in [0, 1]; any step count and start reads it by
  linear interpolation, as Align Your Steps does with its schedules.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .schedule import Schedule

SPACINGS = ("uniform", "logsnr", "karras", "fitted")
KARRAS_RHO = 7.0
KARRAS_SIGMA_MAX = 80.0


def spaced_timesteps(T: int, steps: int, start: int | None = None) -> list[int]:
    """`steps` evenly spaced timesteps, descending, the first one `start` (default T-1).

    "Trailing" spacing: the gaps are equal and the last one ends at the clean
    image, so the first step starts from the noisiest timestep rather than
    skipping it (Lin et al. 2023). img2img passes a smaller `start`.
    """
    start = _check(T, steps, start)
    n = start + 1
    # Integer arithmetic: exact and strictly decreasing because n / steps >= 1.
    return [n * (steps - i) // steps - 1 for i in range(steps)]


def _check(T: int, steps: int, start: int | None) -> int:
    start = T - 1 if start is None else int(start)
    if not 0 <= start < T:
        raise ValueError(f"start timestep must be in 0..{T - 1}, got {start}")
    if not 1 <= steps <= start + 1:
        raise ValueError(f"steps must be in 1..{start + 1} for start timestep {start}, got {steps}")
    return start


def log_snr_table(schedule: Schedule) -> torch.Tensor:
    """λ_t = log(ᾱ_t / (1 - ᾱ_t)) for t = 0..T-1 (float64, decreasing in t)."""
    ac = schedule.alphas_cumprod.double()
    return (ac / (1 - ac)).log()


def nearest_timesteps(schedule: Schedule, lams: Sequence[float], start: int) -> list[int]:
    """Round target log-SNRs (ascending, the first one the start's) to timesteps:
    nearest in λ, then nudged so the list is strictly descending from `start` to >= 0."""
    table = log_snr_table(schedule)
    ts = [int((table - lam).abs().argmin()) for lam in lams]
    ts[0] = start
    for i in range(1, len(ts)):
        ts[i] = min(ts[i], ts[i - 1] - 1)
    ts[-1] = max(ts[-1], 0)
    for i in range(len(ts) - 2, -1, -1):
        ts[i] = max(ts[i], ts[i + 1] + 1)
    return ts


def fitted_log_snr(curve: Sequence[float], u: float) -> float:
    """The fitted curve (λ at evenly spaced u in [0, 1]) at position u."""
    pos = min(max(u, 0.0), 1.0) * (len(curve) - 1)
    i = min(int(pos), len(curve) - 2)
    return curve[i] + (pos - i) * (curve[i + 1] - curve[i])


def _fitted_targets(curve: Sequence[float], lam_start: float, steps: int) -> list[float]:
    # img2img starts part-way along the curve, where it reaches the start's noise level.
    if len(curve) < 2 or any(a >= b for a, b in zip(curve, curve[1:])):
        raise ValueError("a fitted spacing needs at least 2 increasing log-SNR values")
    u0 = 0.0
    if lam_start > curve[0]:
        lo, hi = 0.0, 1.0
        for _ in range(60):  # bisection: the curve is increasing
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fitted_log_snr(curve, mid) < lam_start else (lo, mid)
        u0 = hi
    return [fitted_log_snr(curve, u0 + (1 - u0) * i / (steps - 1)) for i in range(steps)]


SIGMA_MIN_SPACINGS = ("logsnr", "karras")
SIGMA_MIN_MAX = 80.0


def check_sigma_min(spacing: str, sigma_min: float) -> None:
    """ValueError unless sigma_min is 0 or a noise level that this spacing can end at."""
    if isinstance(sigma_min, bool) or not isinstance(sigma_min, (int, float)) or not 0 <= sigma_min <= SIGMA_MIN_MAX:
        raise ValueError(f"sigma_min must be a number in 0..{SIGMA_MIN_MAX:g} (0 = the schedule's smallest), "
                         f"got {sigma_min!r}")
    if sigma_min and spacing not in SIGMA_MIN_SPACINGS:
        raise ValueError(f"sigma_min applies to {' and '.join(SIGMA_MIN_SPACINGS)} spacing, not {spacing!r}; "
                         "set it to 0 or change the spacing")


def timesteps_for(schedule: Schedule, steps: int, spacing: str = "uniform", start: int | None = None,
                  curve: Sequence[float] | None = None, sigma_min: float = 0.0) -> list[int]:
    """`steps` descending timesteps from `start` (default T-1) for this spacing.
    `curve` is the model's fitted log-SNR curve, needed by spacing "fitted".
    `sigma_min` > 0: where logsnr and karras put their last step (0: t = 0)."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
    check_sigma_min(spacing, sigma_min)
    T = schedule.T
    start = _check(T, steps, start)
    if spacing == "uniform":
        return spaced_timesteps(T, steps, start)
    if steps == 1:
        return [start]
    table = log_snr_table(schedule)
    lam0, lam1 = float(table[start]), float(table[0])
    if sigma_min > 0 and -2 * math.log(sigma_min) > lam0:
        # Never below the table's smallest σ; an img2img start under σ_min keeps the full ramp.
        lam1 = min(lam1, -2 * math.log(sigma_min))
    if spacing in ("logsnr", "karras"):
        # Above σ = 80 the flow is a straight line: one step from the start to σ = 80, and
        # the rest spread below it (the cosine table's last timesteps reach σ = 20,000).
        cap = -2 * math.log(KARRAS_SIGMA_MAX)
        capped = lam0 < cap
        lo, n = (cap, steps - 1) if capped else (lam0, steps)
        fracs = [i / (n - 1) for i in range(n)] if n > 1 else [1.0]  # one point: the clean end
        if spacing == "logsnr":
            lams = [lo + (lam1 - lo) * f for f in fracs]
        else:
            a, b = math.exp(-lo / (2 * KARRAS_RHO)), math.exp(-lam1 / (2 * KARRAS_RHO))  # σ^(1/ρ)
            lams = [-2 * KARRAS_RHO * math.log(a + f * (b - a)) for f in fracs]
        lams = [lam0] + lams if capped else lams
    else:
        if not curve:
            raise ValueError("spacing 'fitted' needs a model with a fitted schedule "
                             "(tools/fit_sampler.py); use uniform, logsnr or karras")
        lams = _fitted_targets(list(curve), lam0, steps)
    return nearest_timesteps(schedule, lams, start)
