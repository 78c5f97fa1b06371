"""Cross-process helpers: the accelerator and the few collectives the loop takes its
decisions with. Every rank must call a collective at the same point, so each is called
under conditions that are the same on every rank; with one process none communicates."""
from __future__ import annotations

import torch
from accelerate import Accelerator

from ..diffusion.losses import TOTAL
from ..recipe import Recipe


def make_accelerator(recipe: Recipe) -> Accelerator:
    # Without cpu=True, `accelerate launch --multi_gpu` on a CPU machine starts
    # independent single-process runs that overwrite each other's files.
    return Accelerator(mixed_precision=recipe.train.mixed_precision, cpu=not torch.cuda.is_available())


def any_rank(acc: Accelerator, flag: bool) -> bool:
    """True on every rank when it is true on any."""
    if acc.num_processes == 1:
        return flag
    return bool(acc.reduce(torch.tensor(float(flag), device=acc.device), "sum") > 0)


def from_main(acc: Accelerator, value: int) -> int:
    """Rank 0's value on every rank (decisions taken from rank 0's clock)."""
    if acc.num_processes == 1:
        return value
    from accelerate.utils import broadcast

    return int(broadcast(torch.tensor([value], device=acc.device, dtype=torch.int64))[0])


def window_means(window: list[dict], acc: Accelerator) -> dict[str, float]:
    """Means of the step statistics since the last log step: one read from the device."""
    keys = list(window[-1])
    dev = acc.device
    vals = torch.stack([torch.stack([torch.as_tensor(s[k], dtype=torch.float32, device=dev) for s in window]).mean()
                        for k in keys])
    i = keys.index(TOTAL)
    vals[i] = acc.reduce(vals[i], "mean")  # the loss over all processes
    return dict(zip(keys, vals.tolist()))
