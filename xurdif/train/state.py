"""A run's state: what a checkpoint's state.json records, in one dataclass. Its field
defaults are what a checkpoint written before a key existed reads as, so an old
checkpoint loads without a default anywhere else."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..recipe import Recipe, recipe_hash, recipe_to_yaml
from . import draws

log = logging.getLogger("xurdif.train")


def _about(default):
    """A fact about the session that wrote the checkpoint: checked on resume, never taken
    over (the resuming session writes its own)."""
    return field(default=default, metadata={"restore": False})


@dataclass
class RunState:
    step: int = 0
    images_seen: int = 0
    nonfinite_total: int = 0
    # A resumed run starts a new streak: the limit counts steps in a row of one session.
    nonfinite_in_row: int = field(default=0, metadata={"save": False})
    seconds: float = 0.0  # wall clock of all sessions, up to the save
    best_kid: float | None = None
    best_step: int | None = None  # None with a best_kid: saved before the step was recorded
    evals_since_best: int = 0  # evaluations after model-best that found no better model: a plateau
    memorised_warned: bool = False
    first_copy_step: int | None = None  # first evaluation with a sample that copies
    clean_step: int | None = None  # the newest evaluation under eval.memorised_max (xurdif.train.lookback)
    # A time budget's length as last fitted (measured, then refitted at checkpoints): a resume
    # with the same train.time goes on from it.
    time_budget_s: float | None = None
    total_images: int | None = None
    global_batch: int | None = _about(None)
    world_size: int = _about(1)
    recipe_hash: str = _about("")
    noise_draws: str | None = _about(None)  # None: saved before the draws were versioned
    recipe: str | None = _about(None)  # the authority on what these weights were trained with

    @classmethod
    def fresh(cls, recipe: Recipe, global_batch: int, world_size: int) -> RunState:
        """A run's state before its first step, with this session's facts."""
        return cls(global_batch=global_batch, world_size=world_size, recipe_hash=recipe_hash(recipe),
                   noise_draws=draws.VERSION, recipe=recipe_to_yaml(recipe))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("save", True)}

    @classmethod
    def from_dict(cls, saved: dict) -> RunState:
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved and f.metadata.get("save", True)})

    def every(self, n: int) -> bool:
        """At every n-th step; never for n = 0."""
        return n > 0 and self.step % n == 0

    def resume(self, saved: RunState, where: Path) -> None:
        """Go on from a checkpoint's state, if this session can."""
        if saved.global_batch != self.global_batch:
            raise ValueError(
                f"{where}: checkpoint was trained with a global batch of {saved.global_batch} "
                f"(batch_size x processes x grad_accum); this run has {self.global_batch}. "
                "Keep the global batch: adjust train.batch_size or train.grad_accum."
            )
        if saved.noise_draws in draws.NOISE_VERSIONS:
            self.noise_draws = saved.noise_draws  # the draws it started with: the resume stays bit for bit
        elif saved.noise_draws != self.noise_draws:
            log.warning("%s: saved by a xurdif that drew its noise differently; the run goes on from "
                        "it, but not bit for bit as it would have without the restart", where)
        for f in fields(self):
            if f.metadata.get("restore", True):
                setattr(self, f.name, getattr(saved, f.name))


@dataclass(frozen=True)
class Outcome:
    """How a session of training ended."""
    reason: str  # "done"; "stopped" by a signal (not finished: run me again); "memorised" (eval.stop_on_memorised)
    path: Path  # model.safetensors when done, else the checkpoint of the step it stopped at
