"""A run's length in images: given (train.images, train.steps) or fixed from a time budget
(train.time) by measuring the speed early in the run. The measured length is recorded in
checkpoints, so a resumed run keeps it and stays exact."""
from __future__ import annotations

import math

from ..recipe import Recipe

# The LR curve's length while a time budget's speed is still being measured: so
# long that the cosine stays at its peak until the real length is known.
PROBE_TOTAL = 2 ** 62


def total_images(recipe: Recipe, global_batch: int) -> int | None:
    """The run's length in images; None for a time budget (measured at run time)."""
    if recipe.train.time is not None:
        return None
    if recipe.train.steps is not None:
        return recipe.train.steps * global_batch
    return math.ceil(recipe.train.images / global_batch) * global_batch


def probe_done(seconds: float, steps: int, probe_steps: int | None, budget_s: float) -> bool:
    """Measured long enough: time_probe_steps steps, else a minute (at most a tenth of the budget)."""
    return steps >= probe_steps if probe_steps else seconds >= min(60.0, budget_s / 10)


def length_from_speed(images_seen: int, images_per_s: float, seconds_left: float, global_batch: int) -> int:
    """The rest of the budget at this speed, in whole global batches, after images_seen."""
    more = max(0, int(images_per_s * seconds_left) // global_batch) * global_batch
    return images_seen + more


def measured_again(images_seen: int, total: int, warmup_images: int) -> bool:
    """Whether a length just measured is measured again, over the whole LR warm-up, when the
    warm-up ends: until then the LR curve does not depend on the length (xurdif.train.lr), so
    a longer measurement costs nothing, and a slow first minute (another process starting
    beside this one) no longer cuts the run short."""
    return images_seen < warmup_images < total
