"""EMA of the weights, kept as a separate fp32 module (never swapped into the live
model, so training can never silently continue from EMA weights)."""
from __future__ import annotations

import copy

import numpy as np
import torch

from ..recipe import EmaCfg


def power_exponent(std: float) -> float:
    """EDM2: the exponent γ of a power-function EMA whose relative std is `std`."""
    t = std ** -2
    return float(np.roots([1, 7, 16 - t, 12 - t]).real.max())


def power_decay(std: float, images_before: int, images_after: int) -> float:
    """EDM2 eq. 127: the decay that keeps a power-function EMA of relative std `std`."""
    return (1 - (images_after - images_before) / images_after) ** (power_exponent(std) + 1)


def ema_decay(cfg: EmaCfg, step: int, images_before: int, images_after: int) -> float:
    """Decay applied after optimizer step `step` (1-based)."""
    if cfg.kind == "off":
        return 0.0
    if cfg.kind == "warmup":
        return min(cfg.decay, 1 - (1 + step) ** -cfg.warmup_power)
    return power_decay(cfg.std, images_before, images_after)


def make_ema(net: torch.nn.Module) -> torch.nn.Module:
    ema = copy.deepcopy(net).float().eval()
    ema.requires_grad_(False)
    return ema


def _float_pairs(ema: torch.nn.Module, net: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The EMA's floating tensors and the network's beside them, as fp32. Called under no_grad, where
    the network's parameters need no detach(), and fp32 ones no cast: each of those would be one
    more dispatched operation per tensor and step (bench/op_count.py)."""
    e = list(ema.parameters()) + list(ema.buffers())
    n = list(net.parameters()) + list(net.buffers())
    floats = [(a, b) for a, b in zip(e, n) if a.dtype.is_floating_point]
    return [a for a, _ in floats], [b if b.dtype == torch.float32 else b.float() for _, b in floats]


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    mine, theirs = _float_pairs(ema, net)
    torch._foreach_lerp_(mine, theirs, 1 - decay)


@torch.no_grad()
def update_ema_if(ema: torch.nn.Module, net: torch.nn.Module, decay: float, finite: torch.Tensor) -> None:
    """update_ema where the 0-dim bool tensor `finite` holds, else nothing; decided on the
    device, so the host never waits for the flag."""
    mine, theirs = _float_pairs(ema, net)
    weight = torch.where(finite, 1.0 - decay, 0.0).to(torch.float32)
    # Three foreach operations, not _foreach_lerp_: its overloads take a Python number or a list
    # of full-size weights (torch 2.14), none a 0-dim device tensor, and reading the flag on the
    # host would wait for the step.
    deltas = torch._foreach_sub(theirs, mine)
    torch._foreach_mul_(deltas, weight)
    torch._foreach_add_(mine, deltas)
