"""Samplers: plain functions with one signature (k-diffusion style).

    sampler(denoiser, x, timesteps, *, generator=None, callback=None, **options) -> x0

`denoiser(x_t, t[N]) -> predicted x0` in the model's range and has `.schedule`;
`x` is x_t at `timesteps[0]`; `timesteps` is a descending list of integer
timesteps. Each sampler evaluates the denoiser once per timestep and its last
step lands on the clean image (ᾱ = 1), so the returned tensor is x0.

`steps` everywhere (jobs, recipes, the driver) counts network evaluations:
a sampler with two evaluations a step (`edm`, Heun) runs about half as many steps.

`generator` may be one torch.Generator or a list with one per batch row; the
list form makes every image's noise depend on its own seed only, so an image
is the same whichever batch it is rendered in.

The sampler functions do not switch autograd off: guidance wrappers may need
gradients. `sample()` (the driver) does, unless the denoiser asks otherwise.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .schedule import Schedule
from .spacing import KARRAS_SIGMA_MAX, SPACINGS, spaced_timesteps, timesteps_for

__all__ = ["SAMPLERS", "SPACINGS", "get_sampler", "randn", "sample", "spaced_timesteps", "start_timestep",
           "timesteps_for"]

Generator = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict], None] | None


def randn(shape: Sequence[int], generator: Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise; with a list of generators, row i comes from generator i."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        # Drawn on the CPU: the same seed then gives the same image on any device.
        rows = [torch.randn(tuple(shape[1:]), generator=g, device=g.device) for g in generator]
        return torch.stack(rows).to(device)
    if generator is not None and generator.device != torch.device(device):
        return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)
    return torch.randn(tuple(shape), generator=generator, device=device)


def _ab(schedule: Schedule, t: int) -> float:
    """ᾱ_t as a Python float; t = -1 means the clean image (ᾱ = 1)."""
    return 1.0 if t < 0 else float(schedule.alphas_cumprod[t])


def _denoise(denoiser, x: torch.Tensor, t: int) -> torch.Tensor:
    return denoiser(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))


def _steps(timesteps: Sequence[int]) -> list[tuple[int, int]]:
    ts = [int(t) for t in timesteps]
    if not ts or any(a <= b for a, b in zip(ts, ts[1:])) or ts[-1] < 0:
        raise ValueError(f"timesteps must be a non-empty descending list of ints >= 0, got {ts}")
    return list(zip(ts, ts[1:] + [-1]))


def ddim(denoiser, x, timesteps, *, generator: Generator = None, callback: Callback = None,
         eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021). eta = 0 is the deterministic probability-flow
    discretisation; eta = 1 has DDPM's posterior variance."""
    sched = denoiser.schedule
    x0 = x
    for i, (t, s) in enumerate(_steps(timesteps)):
        x0 = _denoise(denoiser, x, t)
        ab_t, ab_s = _ab(sched, t), _ab(sched, s)
        eps = (x - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
        sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)) if s >= 0 else 0.0
        x = math.sqrt(ab_s) * x0 + math.sqrt(max(1 - ab_s - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * randn(x.shape, generator, x.device)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x0


def ddpm(denoiser, x, timesteps, *, generator: Generator = None, callback: Callback = None) -> torch.Tensor:
    """Ancestral sampling from the DDPM posterior q(x_s | x_t, x0̂), with the
    step's own β (1 - ᾱ_t/ᾱ_s) so it works with any timestep spacing."""
    sched = denoiser.schedule
    x0 = x
    for i, (t, s) in enumerate(_steps(timesteps)):
        x0 = _denoise(denoiser, x, t)
        ab_t, ab_s = _ab(sched, t), _ab(sched, s)
        alpha = ab_t / ab_s  # of this (possibly strided) step
        beta = 1 - alpha
        # Posterior mean coefficients and variance (Ho et al. 2020, eq. 7).
        c0 = math.sqrt(ab_s) * beta / (1 - ab_t)
        ct = math.sqrt(alpha) * (1 - ab_s) / (1 - ab_t)
        x = c0 * x0 + ct * x
        if s >= 0:
            var = beta * (1 - ab_s) / (1 - ab_t)
            x = x + math.sqrt(var) * randn(x.shape, generator, x.device)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x0


def dpmpp_2m(denoiser, x, timesteps, *, generator: Generator = None, callback: Callback = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2) in discrete time, with
    λ = log(α/σ), α = sqrt(ᾱ), σ = sqrt(1-ᾱ). The last step (to σ = 0) is first
    order, which lands exactly on the last x0 prediction. It is dpmpp_2m_sde without
    noise: the same float operations, so the same bits."""
    return dpmpp_2m_sde(denoiser, x, timesteps, generator=generator, callback=callback, eta=0.0)


def dpmpp_2m_sde(denoiser, x, timesteps, *, generator: Generator = None, callback: Callback = None,
                 eta: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022; k-diffusion's sample_dpmpp_2m_sde, midpoint
    form) in VP terms. Each step follows the ODE over (1 + eta)·h of log-SNR and puts back
    fresh noise for the extra eta·h, so eta = 0 is dpmpp_2m exactly and eta = 1 is the
    reverse SDE. The injected noise corrects a few-step solve's accumulated error, as
    ddpm's does, at second order between the noise injections."""
    if not 0 <= eta <= 1:
        raise ValueError(f"dpmpp_2m_sde eta must be in [0, 1], got {eta:g}")
    sched = denoiser.schedule
    x0 = prev_x0 = None
    h_prev = None
    for i, (t, s) in enumerate(_steps(timesteps)):
        x0 = _denoise(denoiser, x, t)
        ab_t, ab_s = _ab(sched, t), _ab(sched, s)
        if s < 0:
            x = x0
        else:
            h = 0.5 * math.log(ab_s / (1 - ab_s)) - 0.5 * math.log(ab_t / (1 - ab_t))
            keep = -math.expm1(-h * (1 + eta))  # the x0 share of an ODE step of (1 + eta)·h
            d = x0
            if prev_x0 is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
            x = math.sqrt((1 - ab_s) / (1 - ab_t)) * math.exp(-eta * h) * x + math.sqrt(ab_s) * keep * d
            if eta > 0:
                x = x + math.sqrt((1 - ab_s) * -math.expm1(-2 * eta * h)) * randn(x.shape, generator, x.device)
            h_prev = h
        prev_x0 = x0
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x0


# Without an eta of its own a job gets the sampler's own idea of it: naming the SDE solver
# means wanting its noise (at eta 0 it is dpmpp_2m).
dpmpp_2m_sde.default_eta = 1.0


def dpmpp_3m(denoiser, x, timesteps, *, generator: Generator = None, callback: Callback = None) -> torch.Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022; k-diffusion's sample_dpmpp_3m_sde at eta 0):
    exponential integrator in λ = log(α/σ) with the last three x0 predictions,
    second order on the second step, first order on the first and into σ = 0.

    D2 below estimates h²·x0''/2, so its weight is 2·φ3: the integral of
    e^-(h-τ)·τ²/2 over the step is h²/2 - h + 1 - e^-h = -2·φ3 · h²/2. Common implementations
    (k-diffusion, diffusers) weight it by φ3 alone, which measures as second
    order on the exact Gaussian oracle; this form measures as third
    (tests/test_samplers.py)."""
    sched = denoiser.schedule
    x0 = None
    hist: list[tuple[torch.Tensor, float]] = []  # (x0, h) of the previous steps, newest first
    for i, (t, s) in enumerate(_steps(timesteps)):
        x0 = _denoise(denoiser, x, t)
        ab_t, ab_s = _ab(sched, t), _ab(sched, s)
        if s < 0:
            x = x0
        else:
            h = 0.5 * math.log(ab_s / (1 - ab_s)) - 0.5 * math.log(ab_t / (1 - ab_t))
            # In VE terms x/α: x_s = e^-h x_t + (1 - e^-h) x0 + φ2·D1 - 2φ3·D2; times α_s here.
            x = math.sqrt((1 - ab_s) / (1 - ab_t)) * x - math.sqrt(ab_s) * math.expm1(-h) * x0
            phi2 = math.expm1(-h) / h + 1
            if len(hist) >= 2:
                (x0_1, h_1), (x0_2, h_2) = hist[0], hist[1]
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (x0 - x0_1) / r0, (x0_1 - x0_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi3 = phi2 / h - 0.5
                x = x + math.sqrt(ab_s) * (phi2 * d1 - 2 * phi3 * d2)
            elif hist:
                x0_1, h_1 = hist[0]
                x = x + math.sqrt(ab_s) * phi2 * (x0 - x0_1) / (h_1 / h)
            hist = [(x0, h)] + hist[:1]
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x0


def _sigma(ab: float) -> float:
    return math.sqrt((1 - ab) / ab)


def _timestep_at_sigma(sched: Schedule, sigma: float, at_least: int) -> int:
    """The first timestep >= at_least whose σ reaches `sigma` (T-1 if none does)."""
    ac = sched.alphas_cumprod
    above = ((1 - ac) / ac >= sigma * sigma).nonzero()
    above = above[above >= at_least]
    return int(above[0]) if len(above) else sched.T - 1


def edm(denoiser, x, timesteps, *, generator: Generator = None, callback: Callback = None,
        eta: float = 0.0) -> torch.Tensor:
    """EDM's sampler (Karras et al. 2022, algorithm 2): Heun steps in σ with "churn".
    eta in [0, 1] sets γ = eta·(√2 - 1), the largest EDM allows: each step first
    adds noise to raise σ to σ·(1 + γ) (rounded up to a timestep), then takes the
    Heun step down. eta 0 is the deterministic Heun solver. Two network evaluations
    a step; one on the last (into σ = 0, where Heun's correction is not defined)
    and on a first step from above σ = 80. Meant for karras spacing, its own."""
    if not 0 <= eta <= 1:
        raise ValueError(f"edm eta (churn) must be in [0, 1], got {eta}")
    sched = denoiser.schedule
    gamma = eta * (math.sqrt(2) - 1)
    x0 = x
    for i, (t, s) in enumerate(_steps(timesteps)):
        ab_t = _ab(sched, t)
        t_hat = _timestep_at_sigma(sched, _sigma(ab_t) * (1 + gamma), t) if gamma > 0 else t
        ab_hat = _ab(sched, t_hat)
        sig_t, sig_hat = _sigma(ab_t), _sigma(ab_hat)
        x_ve = x / math.sqrt(ab_t)
        if t_hat != t:
            x_ve = x_ve + math.sqrt(sig_hat**2 - sig_t**2) * randn(x.shape, generator, x.device)
        x0 = _denoise(denoiser, x_ve * math.sqrt(ab_hat), t_hat)
        if s < 0:
            x = x0
        else:
            ab_s = _ab(sched, s)
            sig_s = _sigma(ab_s)
            d = (x_ve - x0) / sig_hat
            x_next = x_ve + (sig_s - sig_hat) * d
            # Above σ = 80 the prediction is the data's mean and the Euler step is exact; Heun's
            # trapezoid across such a step (σ 20,000 -> 80 with the cosine table) is far off.
            if sig_hat <= KARRAS_SIGMA_MAX:
                x0_s = _denoise(denoiser, x_next * math.sqrt(ab_s), s)
                x_next = x_ve + (sig_s - sig_hat) * (d + (x_next - x0_s) / sig_s) / 2
            x = x_next * math.sqrt(ab_s)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x0


edm.evals_per_step = 2

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddpm": ddpm, "ddim": ddim, "dpmpp_2m": dpmpp_2m,
                                                    "dpmpp_2m_sde": dpmpp_2m_sde, "dpmpp_3m": dpmpp_3m, "edm": edm}
# Samplers with a stochasticity knob (`eta`); the others ignore it.
TAKES_ETA = ("ddim", "dpmpp_2m_sde", "edm")


def sampler_steps(sampler: str, evaluations: int) -> int:
    """Timesteps that fit in `evaluations` network evaluations (at least 1)."""
    per = getattr(get_sampler(sampler), "evals_per_step", 1)
    return max(1, (evaluations + per - 1) // per)  # Heun: n steps cost 2n - 1


def default_eta(sampler: str) -> float:
    return getattr(get_sampler(sampler), "default_eta", 0.0)


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def start_timestep(T: int, strength: float) -> int:
    """img2img: strength is the fraction of the noise schedule that is run.
    1.0 starts at the noisiest timestep T-1 (pure noise), 0.5 at the middle."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return max(0, min(T - 1, round(strength * T) - 1))


def sample(denoiser, shape: Sequence[int], sampler: str = "ddim", steps: int = 50, *,
           generator: Generator = None, init: torch.Tensor | None = None, strength: float = 1.0,
           noise_mult: float = 1.0, device: torch.device | str | None = None,
           callback: Callback = None, spacing: str = "uniform", curve: Sequence[float] | None = None,
           sigma_min: float = 0.0, **options) -> torch.Tensor:
    """Draw x_T (or noise `init`, an image in the model's range, to the start
    timestep) and run a sampler; returns x0 in the model's range.

    With an init image and strength s < 1 the sampler runs ceil(s · steps)
    steps from timestep round(s · T) - 1, so a strength-0.5 render costs half of
    a full one. `noise_mult` multiplies the start tensor (xurdif's noise level).
    `steps` is network evaluations; `spacing` (and a fitted `curve`, or `sigma_min`
    for logsnr and karras) place them.
    """
    fn = get_sampler(sampler)
    steps = sampler_steps(sampler, steps)
    T = denoiser.schedule.T
    if device is None:
        device = next(denoiser.net.parameters()).device if hasattr(denoiser, "net") else "cpu"
    if init is None or strength >= 1:
        timesteps = timesteps_for(denoiser.schedule, steps, spacing, curve=curve, sigma_min=sigma_min)
        x = randn(shape, generator, device)
        # A pure-noise start needs no init; at strength 1 the init is ignored
        # (ᾱ_{T-1} ≈ 0 leaves nothing of it anyway).
    else:
        start = start_timestep(T, strength)
        timesteps = timesteps_for(denoiser.schedule, min(start + 1, max(1, math.ceil(strength * steps))),
                                  spacing, start, curve, sigma_min)
        ab = _ab(denoiser.schedule, start)
        eps = randn(shape, generator, device)
        x = math.sqrt(ab) * init.to(device) + math.sqrt(1 - ab) * eps
    x = x * noise_mult
    # No autograd graph unless a guidance wrapper declares it needs one (it
    # then enables gradients itself, inside its own call).
    ctx = torch.no_grad() if getattr(denoiser, "needs_grad", False) else torch.inference_mode()
    with ctx:
        return fn(denoiser, x, timesteps, generator=generator, callback=callback, **options)
