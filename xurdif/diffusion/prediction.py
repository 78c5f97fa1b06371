"""All conversions between what a network predicts (eps, x0 or v) and x0 / eps.

x_t = sqrt(ᾱ)·x0 + sqrt(1-ᾱ)·eps, and v = sqrt(ᾱ)·eps - sqrt(1-ᾱ)·x0.
`ab` broadcasts against x (shape [N,1,1,1] or scalar).
"""
from __future__ import annotations

import torch

PREDICTIONS = ("eps", "x0", "v")


def _check(pred: str) -> None:
    if pred not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {pred!r}; valid: {', '.join(PREDICTIONS)}")


def add_noise(x0: torch.Tensor, eps: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def target(pred: str, x0: torch.Tensor, eps: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """What a network of type `pred` should output for this (x0, eps, ᾱ)."""
    _check(pred)
    if pred == "eps":
        return eps
    if pred == "x0":
        return x0
    return ab.sqrt() * eps - (1 - ab).sqrt() * x0


def to_x0(pred: str, out: torch.Tensor, x_t: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    _check(pred)
    if pred == "x0":
        return out
    if pred == "eps":
        return (x_t - (1 - ab).sqrt() * out) / ab.sqrt()
    return ab.sqrt() * x_t - (1 - ab).sqrt() * out


def to_eps(pred: str, out: torch.Tensor, x_t: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    _check(pred)
    if pred == "eps":
        return out
    if pred == "x0":
        return (x_t - ab.sqrt() * out) / (1 - ab).sqrt()
    return (1 - ab).sqrt() * x_t + ab.sqrt() * out


def eps_from_x0(x0: torch.Tensor, x_t: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
