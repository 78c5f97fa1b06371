"""A run's length in images: given (train.images, train.steps) or fixed from a time budget
(train.time) by measuring the speed early in the run. The measured length is recorded in
checkpoints, so a resumed run keeps it and stays exact."""
from __future__ import annotations

import logging
import math
from typing import Callable

from ..recipe import Recipe
from ..recipe.duration import parse_duration
from .state import RunState

log = logging.getLogger("xurdif.train")

# The LR curve's length while a time budget's speed is still being measured: so
# long that the cosine stays at its peak until the real length is known.
PROBE_TOTAL = 2 ** 62
REFIT_UNTIL = 0.9  # a time budget's length is fitted again at checkpoints until this share of it


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


class TimeBudget:
    """The run's length in images and, with train.time, the wall clock it is fitted to.

    The speed is measured from the end of a session's first step (which pays for warm-up)
    over time_probe_steps steps, or over the first minute (at most a tenth of the budget);
    the rest of the budget at that speed is the run's length. Inside the LR warm-up that
    length is provisional (not recorded in checkpoints) and measured once more at the
    warm-up's end, from the same start. Times are the caller's clock readings (`now`);
    `agree` gives rank 0's value on every rank, so all ranks keep one length."""

    def __init__(self, recipe: Recipe, global_batch: int, born: float, agree: Callable[[int], int] = int,
                 refit_until: float = REFIT_UNTIL):
        t = recipe.train
        self.text, self.probe_steps, self.warmup = t.time, t.time_probe_steps, recipe.optim.warmup_images
        self.seconds = parse_duration(t.time) if t.time is not None else None
        self.global_batch, self.agree, self.refit_until = global_batch, agree, refit_until
        self.total = PROBE_TOTAL if self.seconds is not None else total_images(recipe, global_batch)
        self.provisional = False
        self.born, self.before = born, 0.0  # when this session began; the wall clock of earlier ones
        self.started = (born, 0)  # (time, images seen) when this session's training began
        self.probe: tuple[float, int, int] | None = None  # (time, images seen, step) the speed counts from

    @property
    def steps(self) -> int:
        return self.total // self.global_batch

    @property
    def measuring(self) -> bool:
        return self.total == PROBE_TOTAL

    def measured(self) -> bool:
        """A time budget's length that checkpoints record (and refits follow)."""
        return self.seconds is not None and not self.measuring and not self.provisional

    def left(self, now: float) -> float:
        return self.seconds - (self.before + now - self.born)

    def start(self, now: float, images_seen: int) -> None:
        self.started, self.probe = (now, images_seen), None

    def session_done(self, images_seen: int) -> float:
        """The share of this session's images trained so far, 0-1; 1 while a time budget's
        length is still being measured (nothing is known of the rest yet)."""
        if self.measuring:
            return 1.0
        first = self.started[1]
        return min(1.0, max(0.0, (images_seen - first) / max(1, self.total - first)))

    def pace(self, now: float, images_seen: int) -> float:
        """Images per second of this session's training, everything included."""
        t0, img0 = self.started
        return (images_seen - img0) / max(1e-9, now - t0)

    def due(self, now: float, images_seen: int, step: int) -> str | None:
        """After a step: "measure" while the speed is measured, "again" at the warm-up's end
        after a provisional length (before the first step whose LR depends on it), else None."""
        if self.measuring:
            if self.probe is None:
                self.probe = (now, images_seen, step)
                return None
            return "measure"
        return "again" if self.provisional and images_seen >= self.warmup else None

    def speed(self, probe: tuple[float, int, int], now: float, images_seen: int, step: int,
              again: bool = False) -> float | None:
        """Images per second since `probe` once it has run long enough (`again`: now), else None."""
        t1, img1, step1 = probe
        done = again or probe_done(now - t1, step - step1, self.probe_steps, self.seconds)
        if not self.agree(int(done)):
            return None
        return (images_seen - img1) / max(1e-9, now - t1)

    def fix(self, length: int, speed: float, images_seen: int, again: bool) -> None:
        self.total = self.agree(length)
        self.provisional = not again and measured_again(images_seen, self.total, self.warmup)
        log.info("train.time %s: %.1f images/s%s; the run's length is %s %d images (%d steps)%s",
                 self.text, speed, " over the LR warm-up" if again else "",
                 "for now" if self.provisional else "fixed at", self.total, self.steps,
                 "; measured again at the warm-up's end" if self.provisional else "")

    def refit(self, now: float, images_seen: int) -> None:
        """At a checkpoint: the rest of the budget at this session's whole pace so far, grids,
        evaluations and saves included (the speed of the first minute alone missed a 10-minute
        budget by 19 %). Not past refit_until of the run, where a new length would bend the
        end of the LR curve."""
        if images_seen < self.refit_until * self.total and now > self.started[0]:
            new = length_from_speed(images_seen, self.pace(now, images_seen), self.left(now), self.global_batch)
            self.total = self.agree(max(new, images_seen + self.global_batch))

    def record(self, state: RunState, now: float) -> None:
        """What a checkpoint keeps of it: the time used, the budget and the length fitted to it."""
        state.seconds = round(self.before + now - self.born, 3)
        state.time_budget_s = self.seconds
        state.total_images = self.total if self.measured() else None

    def resume(self, state: RunState) -> None:
        self.before = state.seconds
        if self.seconds is not None and state.total_images is not None:
            if state.time_budget_s == self.seconds:
                self.total = state.total_images  # the recorded length, not a new measurement: resume stays exact
            else:
                log.info("train.time changed since the length was fixed (%ss -> %ss): measuring the speed again",
                         state.time_budget_s, self.seconds)
