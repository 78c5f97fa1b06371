"""When to evaluate during training, and what a score means: model-best.safetensors (the lowest
KID under the copy limit), the memorisation warning and stop, and the look-back to the last model
before the copies (xurdif.train.lookback). The measuring itself is monitor.KidMonitor's."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from ..recipe import Recipe
from .checkpoint import load_weights, validate
from .dist import any_rank
from .lookback import candidates, newest_under, step_of, waiting, weights_of
from .state import RunState

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .model import Model
    from .monitor import KidMonitor
    from .outputs import RunOutputs

log = logging.getLogger("xurdif.train")

# eval.time_share's first measurement: after the LR warm-up and this much training,
# so the first score is of a model that has begun to learn.
FIRST_EVAL_AFTER_S = 60.0
# A share of copies above 0 but under eval.memorised_max is measured again with this many times the
# samples before it counts as under: one copy in 64 samples is under a 2 % limit, and a model that
# copies 4 % of the time shows at most one in 64 samples 27 % of the time (with the second
# measurement 10 %; 3 %: 42 and 23 %; one that copies 1 % passes 87 and 85 % of the time).
CONFIRM_SAMPLES = 4
# The look-back picks at the boundary: of several checkpoints, the newest whose measured share is under
# a limit is the one most likely measured low by chance. On 20 sprites its pick measured 2.0 % in 256
# samples in training and 5.5 % in 256 others afterwards (docs/quality.md "The look-back's pick"). So it
# measures each with CONFIRM_SAMPLES times the samples against this share of the limit: a checkpoint
# copying 2 % then passes 11 % of the time (60 % at the whole limit), 1 %: 53 %, 0.4 %: 92 %.
LOOKBACK_MARGIN = 0.5


class BestModel:
    """When to evaluate, and what a score means: model-best.safetensors keeps the lowest KID
    among evaluations whose memorised share is under eval.memorised_max; over it, a warning
    (once). Its verdicts live in the run's state, so none repeats after a resume. The main
    process evaluates, and its clock decides for every rank."""

    def __init__(self, recipe: Recipe, state: RunState, out: RunOutputs, acc: Accelerator, *, born: float,
                 first_after: float, monitor: Callable[[], KidMonitor], export: Callable[..., None],
                 clock: Callable[[], float], progress: Callable[[], float] = lambda: 1.0):
        """progress: the share of this session's training done, 0-1 (TimeBudget.session_done);
        export(step, scores, weights=None): write model-best (the live weights, or a checkpoint's)."""
        self.cfg, self.warmup = recipe.eval, recipe.optim.warmup_images
        self.state, self.out, self.acc, self.export, self.clock = state, out, acc, export, clock
        self.progress = progress
        self.born, self.first_after = born, first_after
        self.make_monitor, self.kid = monitor, None
        self.seconds = 0.0  # this session's evaluations, their one-off set-up included
        self.setup = 0.0  # of which the set-up: beyond what the measurements themselves took
        self.ended: float | None = None  # when the last evaluation ended
        self.cost = 0.0  # what the last measurement took, without the set-up

    def monitor(self) -> KidMonitor:
        """Built on first use (main process only): its set-up reads the reference images."""
        self.kid = self.kid or self.make_monitor()
        return self.kid

    def due(self, log_step: bool, last: bool = False) -> bool:
        """Every eval.kid_every_steps steps, at the last step, and with eval.time_share at each
        log step where one more evaluation and the last one (costed at what the last took) keep
        all of this session's evaluations within the share of its time."""
        e = self.cfg
        if self.state.every(e.kid_every_steps):
            return True
        # The last model is the one a run without copies most likely keeps, and under the share a
        # run shorter than (set-up + 2 evaluations) / share would otherwise never score anything
        # after its first, early evaluation: model-best would be that early model.
        if last and (e.time_share or e.kid_every_steps):
            return True
        if not (e.time_share and log_step):
            return False
        return any_rank(self.acc, self.acc.is_main_process and self._share_allows(self.clock()))

    def _share_allows(self, now: float) -> bool:
        if self.ended is None:  # the first: once the LR warm-up is over and a minute trained
            return self.state.images_seen >= self.warmup and now - self.born >= self.first_after
        # The one-off set-up (reference images' features: ~70 s for 700 images on a 2-core CPU when
        # not cached) is charged in step with the session's progress, all of it by the end: charged at
        # once, it held an hours-long run's second evaluation back by set-up / share (~40 minutes).
        spent = self.seconds - self.setup * (1.0 - self.progress())
        return spent + 2 * self.cost <= self.cfg.time_share * (now - self.born)  # the last one kept

    def evaluate(self, model: Model) -> bool:
        """Every rank: the main process measures, logs and judges; True on every rank when
        memorisation over eval.memorised_max ends the run (eval.stop_on_memorised)."""
        memorising = False
        if self.acc.is_main_process:
            started = self.clock()
            monitor = self.monitor()
            warned = self.state.memorised_warned
            scores, seconds = self.measure(monitor, model.ema, model, self.state.step)
            memorising = self.record(scores, started, self.clock(), seconds, monitor.picture)
            if memorising and not warned:
                self.look_back(model, monitor)
        self.acc.wait_for_everyone()
        return self.cfg.stop_on_memorised and any_rank(self.acc, memorising)

    def measure(self, monitor: KidMonitor, ema: torch.nn.Module, model: Model,
                step: int) -> tuple[dict[str, float], float]:
        """The monitor's scores of `ema` (the weights of `step`), with "samples": how many were drawn,
        and the seconds they took. A share of copies above 0 but under eval.memorised_max is measured
        again with CONFIRM_SAMPLES times the samples (the first ones among them), and that one counts."""
        n = self.cfg.kid_samples
        scores = monitor(ema, model.schedule, model.meta)
        seconds = monitor.seconds
        if 0 < scores["memorised"] < self.cfg.memorised_max:
            first = scores["memorised"]
            n *= CONFIRM_SAMPLES
            scores = monitor(ema, model.schedule, model.meta, samples=n)
            seconds += monitor.seconds
            log.info("step %d: %.1f%% of %d samples copy, under eval.memorised_max; measured again with %d: %.1f%%",
                     step, 100 * first, self.cfg.kid_samples, n, 100 * scores["memorised"])
        return {**scores, "samples": float(n)}, seconds

    def record(self, scores: dict[str, float], started: float, ended: float, cost: float,
               picture: torch.Tensor | None) -> bool:
        """Log an evaluation (whose measurements took `cost` seconds) and judge it; True when
        memorisation is over eval.memorised_max."""
        step = self.state.step
        self.seconds += ended - started
        self.setup += max(0.0, ended - started - cost)
        self.ended, self.cost = ended, cost
        # What evaluating costs, in the log beside the scores (not in model-best's metadata).
        share = self.seconds / max(1e-9, ended - self.born)
        self.out.log_eval({**scores, "seconds": cost, "time_share": share}, step)
        self.out.write_closest(picture, "last")
        return self.judge(scores, step, picture)

    def judge(self, scores: dict[str, float], step: int, picture: torch.Tensor | None) -> bool:
        """Keep model-best.safetensors; True when memorisation is over eval.memorised_max."""
        e, s = self.cfg, self.state
        memo = scores["memorised"]
        if memo > 0 and s.first_copy_step is None:
            s.first_copy_step = step
            msg = (f"step {step}: first sample that copies a training image ({memo:.1%} of "
                   f"{scores['samples']:.0f} samples; eval.memorised_max is {e.memorised_max:.1%})")
            log.info(msg)
            self.out.log_text("eval/first_copy", msg, step)
        if memo < e.memorised_max:
            s.clean_step = step
        if memo < e.memorised_max and (s.best_kid is None or scores["kid"] < s.best_kid):
            self._make_best(step, scores, picture)
        elif s.best_kid is not None:
            s.evals_since_best += 1
        if memo > e.memorised_max:
            if not s.memorised_warned:
                s.memorised_warned = True
                self._warn(memo, step)
            return True
        return False

    def _make_best(self, step: int, scores: dict[str, float], picture: torch.Tensor | None,
                   weights: dict[str, dict] | None = None, evals_after: int = 0) -> None:
        """model-best.safetensors from these scores: the live weights, or a checkpoint's `weights`."""
        s = self.state
        s.best_kid, s.best_step, s.evals_since_best = scores["kid"], step, evals_after
        self.export(step, scores, weights)
        if picture is not None:
            self.out.write_closest(picture, "best")

    def _warn(self, memo: float, step: int) -> None:
        e = self.cfg
        msg = (f"step {step}: {memo:.1%} of samples copy a training image, over eval.memorised_max "
               f"{e.memorised_max:.1%}; the model is starting to memorise. model-best.safetensors keeps "
               "the best model below it" + ("; stopping (eval.stop_on_memorised)" if e.stop_on_memorised else ""))
        log.warning(msg)
        self.out.log_text("eval/warning", msg, step)
        self.out.log_eval({"memorised_over_max": 1.0}, step)

    def _after_clean(self) -> int:
        return -1 if self.state.clean_step is None else self.state.clean_step

    def keep(self) -> list[Path]:
        """Checkpoints a look-back may score, kept from pruning until the first evaluation over
        eval.memorised_max (xurdif.train.lookback); none when nothing evaluates."""
        if self.state.memorised_warned or not (self.cfg.time_share or self.cfg.kid_every_steps):
            return []
        return waiting(self.out.run_dir, self._after_clean())

    def look_back(self, model: Model, monitor: KidMonitor) -> None:
        """At the first evaluation over eval.memorised_max (main process): the newest kept checkpoint
        since the last evaluation under it whose share is under LOOKBACK_MARGIN of the limit (with
        CONFIRM_SAMPLES times the samples), found by bisection, becomes model-best if its KID is lower.
        Its cost counts against eval.time_share like any evaluation."""
        s, after = self.state, self._after_clean()
        paths = candidates(self.out.run_dir, after, s.step)
        if not paths:
            return
        started, scored, n = self.clock(), {}, self.cfg.kid_samples * CONFIRM_SAMPLES

        def memorised(path: Path) -> float:
            broken = validate(path)
            if broken is not None:  # never model-best: the search goes on among the older ones
                log.warning("look-back: skipping checkpoint %s: %s", path, broken)
                return 1.0
            with weights_of(model.ema, load_weights(path, "ema")["ema"]) as ema:
                scores = monitor(ema, model.schedule, model.meta, samples=n)
            scored[path] = {**scores, "samples": float(n)}, monitor.picture
            return scores["memorised"]

        limit = self.cfg.memorised_max * LOOKBACK_MARGIN
        found = newest_under(paths, memorised, limit)
        self.seconds += self.clock() - started
        since = "the start" if after < 0 else f"step {after}"
        msg = (f"looked back: {len(scored)} of the {len(paths)} checkpoints kept since {since} scored, {n} samples "
               f"each, against {limit:.1%} copies ({LOOKBACK_MARGIN:.0%} of eval.memorised_max); ")
        if found is None:
            msg += "the oldest of them copies more: model-best stays"
        else:
            step = step_of(found)
            scores, picture = scored[found]
            head = (f"step {step} is the newest under it ({scores['memorised']:.1%}), "
                    f"KID {scores['kid'] * 1e3:.1f} x1e-3")
            if s.best_kid is None or scores["kid"] < s.best_kid:
                # after it: the evaluation that found the copies
                self._make_best(step, scores, picture, load_weights(found, "model", "ema"), evals_after=1)
                msg += f"{head}: now model-best"
            else:
                msg += f"{head}: not below model-best's {s.best_kid * 1e3:.1f}"
        log.info(msg)
        self.out.log_text("eval/lookback", msg, s.step)


def best_summary(state: RunState) -> str | None:
    """The end of a run's word on model-best.safetensors: which step, and how many evaluations
    after it found no better model (lower KID under the copy limit). Copy-free models of few
    images level off after ~600 epochs and hold there (docs/quality.md "The recipe as shipped"):
    a long tail of such evaluations says the hours after the best bought nothing."""
    s = state
    if s.best_kid is None:
        return None
    at = "an earlier step" if s.best_step is None else f"step {s.best_step}"
    head = f"model-best.safetensors: {at}, KID {s.best_kid * 1e3:.1f} x1e-3"
    n = s.evals_since_best
    if not n:
        return head + ", the last evaluation"
    span = ""
    if s.best_step is not None:
        left = s.step - s.best_step
        span = f", in the last {left} steps ({left / max(s.step, 1):.0%} of the run),"
    return head + f"; the {n} evaluation{'s' if n > 1 else ''} after it{span} found no better one"
