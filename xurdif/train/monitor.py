"""In-training evaluation of EMA samples: KID against held-out images (or, with none
set aside, the training images) and the share of samples that copy a training image
(shift-, flip- and colour-tolerant: xurdif.evaluate.memorisation). Runs on the main
process only; its cost is bounded by eval.kid_samples and measured (`seconds`).
`BestModel` turns the scores into model-best.safetensors and the memorisation warning."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from ..diffusion.denoiser import Denoiser
from ..diffusion.samplers import sample
from ..ranges import to_uint8
from ..recipe import Recipe
from ..seeds import derive_seed
from .checkpoint import load_weights, validate
from .dist import any_rank
from .feed import open_source
from .lookback import candidates, newest_under, step_of, waiting, weights_of
from .state import RunState

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .model import Model
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


class KidMonitor:
    def __init__(self, recipe: Recipe, data, device: torch.device, heldout=None):
        """heldout: a xurdif.data.holdout.HeldOut (KID is measured against its images) or None."""
        from ..evaluate import InceptionFeatures

        self.r = recipe
        self.data = data
        self.heldout = heldout
        self.device = device
        self.extractor = InceptionFeatures(device=device)
        self.train = None  # uint8 training images, loaded on first use
        self.train_feats = None
        self.heldout_feats = None
        self.seconds = None  # what the last measurement took, without the one-off set-up
        self.picture = None  # uint8 [3, H, W]: the last samples most like a training image, beside it
        self.heldout_flagged = None  # the share of held-out images the copy test flags: its false flags

    def _train_images(self) -> torch.Tensor:
        x = open_source(self.data).first(self.r.eval.real_images, self.r.train.seed)
        return to_uint8(x)

    def _setup(self) -> None:
        self.train = self._train_images()
        self.train_feats = self._features(self.train, "training")
        if self.heldout is not None:
            self.heldout_feats = self._features(self.heldout.images, "held-out")
            self.heldout_flagged = self._false_flags()

    def _false_flags(self) -> float:
        """The share of held-out images (new ones of the kind) the copy test flags against the training
        images: what it reports where there is no copying. On sprites at 32 px it was 5.6 % against 50
        training images (animation frames and variants of one unit; docs/quality.md "Fifty images"),
        over a 2 % limit: the stop would then end a run for images that are not copies."""
        from ..evaluate.memorisation import copy_verdict

        share = copy_verdict(self.heldout.images, self.train)[0].fraction
        n, e = len(self.heldout.images), self.r.eval
        msg = f"evaluation: the copy test flags {share:.1%} of the {n} held-out images against the training images"
        if share >= e.memorised_max:
            log.warning("%s, at or over eval.memorised_max %.1f%%: on this data it flags new images too (near-"
                        "duplicates across the split?), so copies over the limit may not be copies%s", msg,
                        100 * e.memorised_max, " and eval.stop_on_memorised may stop the run early"
                        if e.stop_on_memorised else "")
        else:
            log.info("%s (new images: the test's own false flags)", msg)
        return share

    def _features(self, images: torch.Tensor, what: str) -> torch.Tensor:
        # Cached on disk by the images' bytes: computing them was most of the set-up's ~48 s
        # on a 2-core CPU, repeated by every run and resume on the same data.
        from ..evaluate.cache import image_features

        features, path, hit = image_features(images, self.extractor, what)
        log.info("evaluation: features of %d %s images %s %s", len(images), what,
                 "read from" if hit else "cached at", path)
        return features

    def reference(self) -> tuple[torch.Tensor, str]:
        """KID's reference features and what they are of."""
        if self.train is None:
            self._setup()
        if self.heldout_feats is not None:
            return self.heldout_feats, f"{self.heldout_feats.shape[0]} held-out images"
        return self.train_feats, f"{self.train_feats.shape[0]} training images"

    @torch.no_grad()
    def __call__(self, ema: torch.nn.Module, schedule, meta, samples: int | None = None,
                 steps: int | None = None) -> dict[str, float]:
        """Scores of `samples` (default eval.kid_samples) samples of `steps` (eval.kid_steps) sampler steps:
        kid (against held-out images when there are any), kid_std, kid_train (against the
        training images), memorised (either test), memorised_robust and memorised_pixel."""
        from ..evaluate import kid, memorisation_picture
        from ..evaluate.memorisation import copy_verdict

        if self.train is None:
            self._setup()
        started = time.perf_counter()
        e = self.r.eval
        den = Denoiser(ema, schedule, meta.prediction, meta.value_range)
        h, w = meta.image_size
        g = torch.Generator().manual_seed(derive_seed(self.r.samples.seed, "kid"))
        fake = torch.cat([
            den.to_image(sample(den, (b.numel(), 3, h, w), sampler="dpmpp_2m", steps=steps or e.kid_steps,
                                generator=g, device=self.device)).float().cpu()
            for b in torch.arange(samples or e.kid_samples).split(64)
        ])
        fake_feats = self.extractor(fake)
        kid_train, kid_train_std = kid(self.train_feats, fake_feats)
        scores = {"kid": kid_train, "kid_std": kid_train_std, "kid_train": kid_train}
        if self.heldout_feats is not None:
            scores["kid"], scores["kid_std"] = kid(self.heldout_feats, fake_feats)
        memo, rows, robust, plain = copy_verdict(fake, self.train)
        scores["memorised"] = memo.fraction
        scores["memorised_robust"], scores["memorised_pixel"] = robust.fraction, plain.fraction
        self.picture = memorisation_picture(fake, rows, memo, count=6)
        self.seconds = time.perf_counter() - started
        return scores


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
                   f"{int(scores.get('samples', e.kid_samples))} samples; eval.memorised_max is {e.memorised_max:.1%})")
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
