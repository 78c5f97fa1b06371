"""Choose a model's default sampler by measuring it.

No sampler wins on every model (docs/benchmarks.md, "Samplers"), so each
candidate renders the same seeds with the same number of network evaluations,
and the lowest KID against reference images wins: held-out images of the same
kind where the run set some aside, else the training images. The winner and
every candidate's score go into the model file's metadata ("sampling").
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..diffusion.samplers import sample
from ..seeds import derive_seed
from .defaults import Sampling

# (sampler, spacing, eta, sigma_min): the ones worth trying at 5-20 evaluations. Measured at
# 10 on the sprites (docs/benchmarks.md, "Samplers"): dpmpp_3m won on an x0 model once its
# ramp ended at sigma 0.05-0.1 instead of spending the last evaluation at t = 0 (logsnr and
# karras alike, within 1 % of every solver's best at 50); dpmpp_2m_sde won on eps (karras)
# and v (uniform) models, below even ddpm at 50 (its noise hides a weak model's errors).
# dpmpp_2m came second on x0 (ending it early did not help it). ddpm and ddim never won
# once the SDE solver was in; edm (Heun: 5 steps at 10 evaluations) never came close.
CANDIDATES: tuple[tuple[str, str, float, float], ...] = (
    ("dpmpp_2m", "karras", 0.0, 0.0),
    ("dpmpp_3m", "logsnr", 0.0, 0.05),
    ("dpmpp_3m", "karras", 0.0, 0.1),
    ("dpmpp_2m", "uniform", 0.0, 0.0),  # on a v model, uniform beat karras and logsnr by 30-40 %
    ("dpmpp_2m_sde", "karras", 1.0, 0.0),
    ("dpmpp_2m_sde", "uniform", 1.0, 0.0),
)


def candidates(steps: int, names: tuple[tuple[str, str, float, float], ...] = CANDIDATES) -> list[Sampling]:
    return [Sampling(s, steps, sp, eta, sigma_min=end).check() for s, sp, eta, end in names]


@torch.no_grad()
def draw(den, st: Sampling, n: int, size: tuple[int, int], seed: int, device, batch: int = 64
         ) -> tuple[torch.Tensor, float]:
    """n images (uint8) with these settings, and seconds per image. Image i's noise comes
    from its own seed, so every candidate starts from the same noise."""
    h, w = size
    out, started = [], time.perf_counter()
    for first in range(0, n, batch):
        gens = [torch.Generator().manual_seed(derive_seed(seed, "choose", i))
                for i in range(first, min(n, first + batch))]
        x = sample(den, (len(gens), 3, h, w), generator=gens, device=device, **st.sample_args())
        out.append((den.to_image(x.float()).cpu() * 255).round().to(torch.uint8))
    return torch.cat(out), (time.perf_counter() - started) / n


def measure(den, size: tuple[int, int], reference: torch.Tensor, extractor: Callable, settings: list[Sampling],
            n: int = 200, seed: int = 0, device="cpu", progress: bool = True,
            after_each: Callable[[], None] | None = None) -> list[dict]:
    """KID (x1e3, against `reference` features) and seconds per image of each setting;
    `after_each` runs after every one (training keeps its live report fresh with it)."""
    from ..evaluate import kid

    rows = []
    for st in tqdm(settings, desc="choosing a sampler", unit="candidate", disable=not progress):
        images, per_image = draw(den, st, n, size, seed, device)
        mean, std = kid(reference, extractor(images), seed=seed)
        rows.append({**st.to_json(), "kid_x1e3": round(mean * 1e3, 3), "kid_std_x1e3": round(std * 1e3, 3),
                     "seconds_per_image": round(per_image, 5)})
        if after_each is not None:
            after_each()
    return rows


def winner(rows: list[dict], curve: tuple[float, ...] = ()) -> Sampling:
    best = min(rows, key=lambda r: r["kid_x1e3"])
    # The fitted curve stays with the model whichever spacing wins: a job may still ask for it.
    return Sampling(best["sampler"], best["steps"], best["spacing"], best["eta"], curve, best.get("sigma_min", 0.0))


def choose_for_file(path: Path, reference: torch.Tensor, extractor: Callable, steps: int, n: int = 200,
                    seed: int = 0, device="cpu", reference_name: str = "", progress: bool = True,
                    fit: bool = False, write: bool = True, after_each: Callable[[], None] | None = None
                    ) -> tuple[Sampling, list[dict]]:
    """Measure the candidates on this model file and record the winner in it (unless not
    `write`). fit: first fit a schedule to the model (xurdif/sampling/fit.py) and let
    dpmpp_2m on it compete."""
    from ..weights import load_denoiser, write_sampling

    den, meta = load_denoiser(path, "ema", device)
    size = tuple(meta.image_size)
    curve, evidence = meta.default_sampling().curve, {}
    if fit and steps >= 3:
        from .fit import fit_curve

        if progress:  # minutes with a larger network: say what the wait is for
            tqdm.write(f"{path.name}: fitting a noise schedule to the model ({steps} steps) before the candidates")
        fitted, report = fit_curve(den, size, steps, seed=seed, device=device)
        curve, evidence = tuple(fitted), {"fit": report}
        if after_each is not None:  # a live report left unwritten for that long would call the run stopped
            after_each()
    settings = candidates(steps)
    if curve:
        settings.append(Sampling("dpmpp_2m", steps, "fitted", 0.0, curve))
    rows = measure(den, size, reference, extractor, settings, n, seed, device, progress, after_each)
    best = winner(rows, curve)
    if write:
        write_sampling(path, best, {"measured": rows, "samples": n, "reference": reference_name, **evidence})
    return best, rows
