"""Looking back at the onset of copying. Evaluations are spaced by time (eval.time_share), so on
few images thousands of epochs can pass between two: 20 sprites went from no copy to 48 % copies
between two evaluations 8,000 epochs apart, and model-best stayed the model of the first minute
(docs/quality.md "Twenty images"). So while no evaluation has found memorisation over
eval.memorised_max, the checkpoints written since the last evaluation under it are kept (beyond
MAX_WAITING they are thinned to stay near evenly spread, the newest staying), and at the
first evaluation over it they are scored by bisection: copying, once begun, only grew in every
run measured, so the newest checkpoint under the limit (half of it, measured with more samples:
best.LOOKBACK_MARGIN) is found in about log2(n) evaluations. It becomes model-best.safetensors
when its KID is lower."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch

from .checkpoint import NAME, list_checkpoints

MAX_WAITING = 8  # checkpoints kept for a look-back (a checkpoint of `base` with its optimizer: ~1 GB)

T = TypeVar("T")


def step_of(path: Path) -> int:
    return int(NAME.match(path.name).group(1))


def thin(items: list[T], cap: int, after: int, step: Callable[[T], int]) -> list[T]:
    """At most `cap` of the items (oldest first), the newest always among them. While there are too
    many, the one whose going leaves the shortest gap between its neighbours goes (the oldest's left
    neighbour is step `after`; the older on a tie), so however many arrive one by one, those kept stay
    near evenly spread over the steps since `after`. Halving instead (every second one) kept the oldest
    and the newest few: 1,000 and 35,000-39,500 of checkpoints every 500 steps after step 720, so an
    onset anywhere between could only be placed at step 1,000."""
    items = list(items)
    while len(items) > cap:
        edges = [after] + [step(x) for x in items]
        del items[min(range(len(items) - 1), key=lambda i: edges[i + 2] - edges[i])]
    return items


def waiting(run_dir: Path, after: int) -> list[Path]:
    """The checkpoints a look-back would score: those after step `after`, thinned to MAX_WAITING."""
    return thin([p for p in list_checkpoints(run_dir) if step_of(p) > after], MAX_WAITING, after, step_of)


def newest_under(items: list[T], memorised: Callable[[T], float], limit: float) -> T | None:
    """The newest item whose memorised share is under `limit`, by bisection (items oldest first;
    the share is taken to grow with the step); None if none is under."""
    lo, hi, found = 0, len(items) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if memorised(items[mid]) < limit:
            found, lo = items[mid], mid + 1
        else:
            hi = mid - 1
    return found


@contextlib.contextmanager
def weights_of(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> Iterator[torch.nn.Module]:
    """`module` with `state` loaded, its own weights back afterwards (the live EMA lends itself
    to score a checkpoint's: no second copy of the network is built)."""
    own = {k: v.detach().clone() for k, v in module.state_dict().items()}
    try:
        module.load_state_dict(state)
        yield module
    finally:
        module.load_state_dict(own)


def candidates(run_dir: Path, after: int, before: int) -> list[Path]:
    """The kept checkpoints strictly between two evaluations' steps (validated only when scored:
    hashing every one, a GB each for `base`, would double the look-back's cost)."""
    return [p for p in waiting(run_dir, after) if step_of(p) < before]
