"""All conversions between what a network predicts (eps, x0, v or EDM's F) and x0 / eps.

x_t = sqrt(ᾱ)·x0 + sqrt(1-ᾱ)·eps, and v = sqrt(ᾱ)·eps - sqrt(1-ᾱ)·x0.
`ab` broadcasts against x (shape [N,1,1,1] or scalar).

"edm" is Karras et al. 2022's preconditioning, written in the VP terms the rest of
the code uses: with σ² = (1-ᾱ)/ᾱ and x_ve = x_t/sqrt(ᾱ) the denoiser is
D = c_skip·x_ve + c_out·F(c_in·x_ve), and the loss on F with unit weight is
EDM's λ(σ)-weighted loss on D. Everything is expressed through
d = 1 - ᾱ + ᾱ·σ_data² = ᾱ(σ² + σ_data²), which stays finite from ᾱ = 1 (σ = 0)
to ᾱ → 0 (σ → ∞), where the σ form overflows.
"""
from __future__ import annotations

import torch

PREDICTIONS = ("eps", "x0", "v", "edm")
# EDM's σ_data for data in [-1, 1]; xurdif's own models always train in that range.
SIGMA_DATA = 0.5


def _check(pred: str) -> None:
    if pred not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {pred!r}; valid: {', '.join(PREDICTIONS)}")


def _d(ab: torch.Tensor) -> torch.Tensor:
    return 1 - ab + ab * SIGMA_DATA**2


def add_noise(x0: torch.Tensor, eps: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def net_input(pred: str, x_t: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """What the network sees: x_t itself, or EDM's unit-variance c_in·x_ve."""
    _check(pred)
    return x_t / _d(ab).sqrt() if pred == "edm" else x_t


def target(pred: str, x0: torch.Tensor, eps: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """What a network of type `pred` should output for this (x0, eps, ᾱ)."""
    _check(pred)
    if pred == "eps":
        return eps
    if pred == "x0":
        return x0
    if pred == "edm":
        # (x0 - c_skip·x_ve) / c_out, simplified so it does not cancel at σ → 0.
        return ((1 - ab).sqrt() * x0 - SIGMA_DATA**2 * ab.sqrt() * eps) / (SIGMA_DATA * _d(ab).sqrt())
    return ab.sqrt() * eps - (1 - ab).sqrt() * x0


def to_x0(pred: str, out: torch.Tensor, x_t: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    _check(pred)
    if pred == "x0":
        return out
    if pred == "eps":
        return (x_t - (1 - ab).sqrt() * out) / ab.sqrt()
    if pred == "edm":
        d = _d(ab)
        return SIGMA_DATA**2 * ab.sqrt() / d * x_t + SIGMA_DATA * ((1 - ab) / d).sqrt() * out
    return ab.sqrt() * x_t - (1 - ab).sqrt() * out


def eps_from_x0(x0: torch.Tensor, x_t: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
