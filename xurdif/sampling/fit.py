"""A step schedule fitted to one model: the noise levels at which a few-step solve
lands closest to the model's own many-step solve from the same noise.

Align Your Steps (Sabour et al. 2024) fits the schedule by minimising a bound on
the solver's error; here the error itself is measured: a batch of seeded noise is
solved once with many steps (the reference) and then with the candidate
schedule, and coordinate descent moves one interior noise level at a time (in
log-SNR, between its neighbours) while the mean squared difference falls. It
starts from the karras spacing and is deterministic given its seed.

The result is a "curve" (log-SNR at evenly spaced positions), which spacing
"fitted" reads for any step count and img2img start (xurdif/diffusion/spacing.py).
"""
from __future__ import annotations

import torch

from ..diffusion.samplers import get_sampler, randn
from ..diffusion.spacing import log_snr_table, nearest_timesteps, timesteps_for
from ..seeds import derive_seed

REFERENCE_STEPS = 100
MOVES = (0.5, 0.25, 0.12, 0.06)  # share of the gap to a neighbour tried each round


@torch.no_grad()
def fit_curve(den, size: tuple[int, int], steps: int = 10, sampler: str = "dpmpp_2m", batch: int = 32,
              seed: int = 0, device="cpu") -> tuple[list[float], dict]:
    """(curve, report) for `steps` evaluations of `sampler` (a one-evaluation-a-step solver)."""
    fn = get_sampler(sampler)
    sched = den.schedule
    table = log_snr_table(sched)
    gens = [torch.Generator().manual_seed(derive_seed(seed, "fit", i)) for i in range(batch)]
    x = randn((batch, 3, *size), gens, device)
    reference = get_sampler("dpmpp_2m")(den, x.clone(), timesteps_for(sched, REFERENCE_STEPS, "logsnr"))

    def error(ts: list[int]) -> float:
        return float(((fn(den, x.clone(), ts) - reference) ** 2).mean())

    ts = timesteps_for(sched, steps, "karras")
    lams = [float(table[t]) for t in ts]
    best = error(ts)
    start_error, evaluations = best, 1
    # The first level is the start and the last the clean end: the interior ones move.
    for share in MOVES:
        for i in range(1, steps - 1):
            for direction in (-1, 1):
                neighbour = lams[i + direction]
                trial = lams.copy()
                trial[i] = lams[i] + share * (neighbour - lams[i])
                trial_ts = nearest_timesteps(sched, trial, ts[0])
                if trial_ts == ts:
                    continue
                e = error(trial_ts)
                evaluations += 1
                if e < best:
                    best, lams, ts = e, trial, trial_ts
    curve = [float(table[t]) for t in ts]
    return curve, {"fitted_for": {"sampler": sampler, "steps": steps}, "seed": seed, "batch": batch,
                   "error_karras": start_error, "error_fitted": best, "solves": evaluations,
                   "timesteps": ts}
