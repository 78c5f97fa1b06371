"""The training loop: a recipe in, a run folder with checkpoints, samples,
TensorBoard logs and an exported model.safetensors out."""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm import tqdm

from ..data import open_dataset
from ..data.holdout import held_out
from ..diffusion import prediction as P
from ..diffusion.losses import loss_terms
from ..diffusion.schedule import make_schedule
from ..recipe import Recipe, recipe_hash, recipe_to_yaml
from ..recipe.duration import parse_duration
from ..seeds import derive_seed
from . import augment, draws
from .budget import PROBE_TOTAL, length_from_speed, measured_again, probe_done, total_images
from .checkpoint import check_same_shape, checkpoint_dir, load_checkpoint, prune, save_checkpoint
from .ema import ema_decay, make_ema, update_ema_if
from .lr import learning_rate
from .nonfinite import NonFiniteCounter
from .monitor import FIRST_EVAL_AFTER_S, KidMonitor
from ..data.augment import to_model_range
from .feed import Layout, open_feed
from .network import build_for_recipe, compile_network, configure_backends, speed_layout
from .outputs import RunOutputs
from .posthoc import PosthocEmas, drop_snapshots_after
from .signals import StopRequest

log = logging.getLogger("xurdif.train")


class NonFiniteError(RuntimeError):
    pass


@dataclass
class Clock:
    step: int = 0
    images_seen: int = 0
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0


def make_accelerator(recipe: Recipe) -> Accelerator:
    # Without cpu=True, `accelerate launch --multi_gpu` on a CPU machine starts
    # independent single-process runs that overwrite each other's files.
    return Accelerator(mixed_precision=recipe.train.mixed_precision, cpu=not torch.cuda.is_available())


def window_means(window: list[dict], acc: Accelerator) -> dict[str, float]:
    """Means of the step statistics since the last log step: one read from the device."""
    keys = list(window[-1])
    dev = acc.device
    vals = torch.stack([torch.stack([torch.as_tensor(s[k], dtype=torch.float32, device=dev) for s in window]).mean()
                        for k in keys])
    i = keys.index("total")
    vals[i] = acc.reduce(vals[i], "mean")  # the loss over all processes
    return dict(zip(keys, vals.tolist()))


REFIT_UNTIL = 0.9  # a time budget's length is fitted again at checkpoints until this share of it


class Trainer:
    def __init__(self, recipe: Recipe, accelerator: Accelerator, outputs: RunOutputs):
        self.born = time.perf_counter()  # a time budget counts from here: data loading is part of the run
        self.r = recipe
        self.acc = accelerator
        self.out = outputs
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.data = open_dataset(recipe.data, self.rank, self.world)
        self.heldout = held_out(recipe, self.data)  # taken out of self.data before anything is trained
        if self.heldout is not None and accelerator.is_main_process:
            outputs.write_heldout(self.heldout)
        torch.manual_seed(derive_seed(recipe.train.seed, "init"))  # same initial weights on every rank and run
        net, self.meta = build_for_recipe(recipe)
        configure_backends(recipe.train, accelerator.device)
        net = speed_layout(net, recipe.train)
        self.schedule = make_schedule(self.meta.schedule, self.meta.timesteps)
        self.ema = make_ema(net).to(accelerator.device)
        self.posthoc = (PosthocEmas(net, recipe.ema.posthoc_stds, accelerator.device)
                        if recipe.ema.posthoc_stds else None)
        net = compile_network(net, recipe.train)  # after the EMA copies: the EMAs run eager
        # Fused AdamW: one kernel for all parameters; on CPU it cut the step from 50 to 10 ms (bench).
        fused = accelerator.device.type in ("cuda", "cpu")
        o = recipe.optim
        opt = torch.optim.AdamW(
            net.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay, fused=fused
        )
        self.net, self.opt = accelerator.prepare(net, opt)
        # Fused AdamW skips a step on the device when its found_inf tensor is 1 (as GradScaler
        # uses it): a non-finite step is skipped without the host reading the gradient norm.
        self.skip_on_device = fused and recipe.train.mixed_precision != "fp16"
        self._opt_inner = opt
        self.micro = recipe.train.batch_size
        self.global_batch = self.micro * self.world * recipe.train.grad_accum
        self.total = total_images(recipe, self.global_batch)
        self.budget_s = parse_duration(recipe.train.time) if recipe.train.time is not None else None
        self.provisional = False  # a time budget's length, to be measured again at the warm-up's end
        self.seconds_before = 0.0  # wall clock of earlier sessions of this run (resume)
        self.best_kid: float | None = None
        self.memorised_warned = False
        self.first_copy_step: int | None = None  # first evaluation with a sample that copies
        self.eval_seconds = 0.0  # this session's evaluations, for the measured time share
        self.eval_ended = None  # perf_counter when the last evaluation ended
        self.clock = Clock()
        self._nf_checked_at = 0
        self._reset_nonfinite()
        self.stream = None
        self.feed = None  # the indexable sources' DataLoader iterator (xurdif/train/feed.py)
        self.layout = Layout(recipe.train.seed, self.micro, self.world, self.rank, recipe.train.grad_accum,
                             self.schedule.T)
        self.kid = None  # KidMonitor, built on first use (main process only)
        self.augment = augment.enabled(recipe.augment)

    # ------------------------------------------------------------ non-finite steps
    def _reset_nonfinite(self) -> None:
        c = self.clock
        self._nf = NonFiniteCounter(c.nonfinite_in_row, c.nonfinite_total, self.r.train.max_nonfinite,
                                    self.acc.device)
        self._nf_seen = c.nonfinite_total

    def check_nonfinite(self) -> None:
        """Read the device counters (a host sync: at log steps and saves only) and stop
        when train.max_nonfinite non-finite steps came in a row."""
        in_row, total, hit = self._nf.read()
        self.clock.nonfinite_in_row, self.clock.nonfinite_total = in_row, total
        if total > self._nf_seen:
            log.warning("step %d: %d non-finite loss or gradient step(s) skipped since step %d",
                        self.clock.step, total - self._nf_seen, self._nf_checked_at)
        self._nf_seen, self._nf_checked_at = total, self.clock.step
        if hit:
            raise NonFiniteError(
                f"{self.r.train.max_nonfinite} non-finite steps in a row at step {hit}; "
                f"stopping. Lower optim.lr or use mixed_precision: bf16. The last good checkpoint is in "
                f"{self.out.run_dir / 'checkpoints'}"
            )

    # ------------------------------------------------------------ state
    def state(self) -> dict:
        c = self.clock
        return {
            "step": c.step, "images_seen": c.images_seen, "global_batch": self.global_batch,
            "world_size": self.world, "recipe_hash": recipe_hash(self.r), "nonfinite_total": c.nonfinite_total,
            "seconds": round(self.seconds_before + time.perf_counter() - self.born, 3),
            "best_kid": self.best_kid, "memorised_warned": self.memorised_warned,
            "first_copy_step": self.first_copy_step,
            # A time budget's length as last fitted (measured, then refitted at checkpoints): a resume
            # goes on from it.
            "time_budget_s": self.budget_s, "total_images": self.total if self.measured_total() else None,
            "noise_draws": draws.VERSION,
        }

    def measured_total(self) -> bool:
        return (self.budget_s is not None and self.total is not None and self.total != PROBE_TOTAL
                and not self.provisional)

    def save(self) -> Path:
        """All ranks call this; rank 0 writes, then everyone waits (no deadlock)."""
        path = None
        self.check_nonfinite()  # the state saved counts every skipped step; no save mid-streak
        if self.acc.is_main_process:
            scaler = self.acc.scaler.state_dict() if self.acc.scaler is not None else None
            model, ema = self.acc.unwrap_model(self.net).state_dict(), self.ema.state_dict()
            posthoc = self.posthoc.state_dict() if self.posthoc else None
            # The recipe rides along: the authority on what these weights were trained with.
            state = dict(self.state(), recipe=recipe_to_yaml(self.r))
            path = save_checkpoint(self.out.run_dir, state, model, ema, self.opt.state_dict(), scaler, posthoc)
            self._export(model, ema)
            at_end = self.total is not None and self.clock.images_seen >= self.total
            if self.posthoc and (not self.r.ema.snapshot_every_images or at_end):
                self.snapshot()
        self.acc.wait_for_everyone()
        return path or self.out.run_dir / "checkpoints"

    def export_if_stale(self) -> None:
        """model.safetensors must hold the newest checkpoint's weights (the current ones);
        a kill between a checkpoint's rename and the export leaves an older one behind."""
        if self.acc.is_main_process and self.out.exported_step() != self.clock.step:
            log.info("model.safetensors is not from step %d: exporting it again", self.clock.step)
            self._export(self.acc.unwrap_model(self.net).state_dict(), self.ema.state_dict())
        self.acc.wait_for_everyone()

    def _export(self, model: dict, ema: dict) -> None:
        meta = replace(self.meta, step=self.clock.step, images_seen=self.clock.images_seen)
        self.out.export_model(meta, model, ema)
        prune(self.out.run_dir, self.r.checkpoint.keep_last, self.r.checkpoint.keep_every)
        self.out.write_report()  # the checkpoint list as pruned

    def load(self, path: Path, verified: bool = False) -> None:
        ck = load_checkpoint(path, verified)
        s = ck["state"]
        if s["global_batch"] != self.global_batch:
            raise ValueError(
                f"{path}: checkpoint was trained with a global batch of {s['global_batch']} "
                f"(batch_size x processes x grad_accum); this run has {self.global_batch}. "
                "Keep the global batch: adjust train.batch_size or train.grad_accum."
            )
        check_same_shape(self.acc.unwrap_model(self.net).state_dict(), ck["model"], path)
        self.acc.unwrap_model(self.net).load_state_dict(ck["model"])
        self.ema.load_state_dict(ck["ema"])
        if self.posthoc:
            if ck["posthoc"] is None:
                raise ValueError(f"{path}: checkpoint has no post-hoc EMAs; ema.posthoc_stds can only be set "
                                 "when a run starts")
            self.posthoc.load_state_dict(ck["posthoc"])
            if self.acc.is_main_process:
                for p in drop_snapshots_after(self.out.run_dir, s["images_seen"]):
                    log.info("removed %s: past the checkpoint resumed from", p)
        self.opt.load_state_dict(ck["optimizer"])
        if ck["scaler"] is not None and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(ck["scaler"])
        if s.get("noise_draws") != draws.VERSION:
            log.warning("%s: saved by an earlier xurdif that drew its noise differently; the run goes on from "
                        "it, but not bit for bit as it would have without the restart", path)
        self.clock = Clock(step=s["step"], images_seen=s["images_seen"], nonfinite_total=s.get("nonfinite_total", 0))
        self.seconds_before = s.get("seconds", 0.0)
        self.best_kid, self.memorised_warned = s.get("best_kid"), s.get("memorised_warned", False)
        self.first_copy_step = s.get("first_copy_step")
        if self.budget_s is not None and s.get("total_images") is not None:
            if s.get("time_budget_s") == self.budget_s:
                self.total = s["total_images"]  # the recorded length, not a new measurement: resume stays exact
            else:
                log.info("train.time changed since the length was fixed (%ss -> %ss): measuring the speed again",
                         s.get("time_budget_s"), self.budget_s)
        self._nf_checked_at = self.clock.step
        self._reset_nonfinite()

    # ------------------------------------------------------------ one step
    def micro_batch(self, k: int) -> dict[str, torch.Tensor]:
        """Clean images, noise, noise level and augmentation labels of micro-batch k of this step."""
        start = self.clock.images_seen + (k * self.world + self.rank) * self.micro
        positions = range(start, start + self.micro)
        seed = self.r.train.seed
        if self.data.indexable:
            # Workers (data.num_workers) decode, crop and draw ahead; uint8 images in pinned memory.
            item = next(self.feed) if self.feed is not None else None
            if item is None or item["start"] != start:  # first use, or out of order: start the loader here
                self.feed = open_feed(self.data, self.layout, self.layout.index_at(self.clock.images_seen, k),
                                      self.r.data.num_workers, self.acc.device.type == "cuda")
                item = next(self.feed)
            x = to_model_range(self.to_device(item["x"]))  # float on the device
            t, level = item["t"], item["level"]
        else:
            if self.stream is None:
                skip = self.clock.images_seen // self.world
                self.stream = iter(self.data.stream(self.micro, seed, skip_images=skip))
            x = next(self.stream)
            t, level = draws.timesteps_and_levels(seed, positions, self.schedule.T)
        d = self.r.diffusion
        # Noise levels from the schedule's table on the host, like every other draw: the
        # device only receives the per-sample numbers (no table copies, no reads back).
        if d.lognormal:
            # EDM's log-normal σ, kept inside the schedule's range: ᾱ = 1/(1+σ²), and the
            # network's time input is the schedule's (fractional) timestep of that σ.
            lo_snr, hi_snr = self.schedule.log_snr_range()
            log_snr = (-2 * (d.p_mean + d.p_std * level)).clamp(lo_snr, hi_snr)
            ab, t_in = torch.sigmoid(log_snr), self.schedule.continuous_t(log_snr)
        else:
            t_in, ab = t, self.schedule.ab(t)
        x, ab, t_in = (self.to_device(v) for v in (x, ab, t_in))  # x: already there if indexable
        eps = draws.noise(seed, positions, tuple(x.shape[1:]), x.device)
        labels = None
        if self.augment:
            labels = augment.draw_params(self.r.augment, seed, positions, x.shape[-1])
            x = augment.apply(x, labels)  # on [-1, 1] data, before the value-range map
            labels = self.to_device(labels)
        lo, hi = self.meta.value_range
        x0 = (x + 1) / 2 * (hi - lo) + lo  # data is [-1, 1]; the model may use another range
        return {"x0": x0, "eps": eps, "ab": ab.view(-1, 1, 1, 1), "t": t_in, "aug": labels}

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Host to device without waiting: a copy from pinned memory returns at once."""
        dev = self.acc.device
        if x.device.type == dev.type:  # compare types: accelerate's "cuda" vs a tensor's "cuda:0"
            return x
        if dev.type == "cuda" and x.device.type == "cpu":
            return (x if x.is_pinned() else x.pin_memory()).to(dev, non_blocking=True)
        return x.to(dev)

    def step(self) -> dict[str, float]:
        r, acc = self.r, self.acc
        lr = learning_rate(r.optim, self.clock.images_seen, self.total)
        for group in self.opt.param_groups:
            group["lr"] = lr
        # Dropout draws from the global RNG: reseed it from the clock too.
        torch.manual_seed(derive_seed(r.train.seed, "dropout", self.clock.images_seen, self.rank))
        sums: dict[str, torch.Tensor] = {}  # on the device: read at log steps only
        accum = r.train.grad_accum
        pred = self.meta.prediction
        for k in range(accum):
            b = self.micro_batch(k)
            x0, eps, ab = b["x0"], b["eps"], b["ab"]
            x_t = P.add_noise(x0, eps, ab)
            extra = {"aug": b["aug"]} if b["aug"] is not None else {}
            # DDP all-reduces gradients only on the last micro-batch.
            with contextlib.nullcontext() if k == accum - 1 else acc.no_sync(self.net):
                with acc.autocast():
                    out = self.net(P.net_input(pred, x_t, ab), b["t"], **extra).float()
                tgt = P.target(pred, x0, eps, ab)
                x0_pred = P.to_x0(pred, out, x_t, ab)
                total, terms = loss_terms(r.loss, out, tgt, x0_pred, x0, pred, ab.flatten(), self.meta.value_range)
                acc.backward(total / accum)
            for name, v in terms.items():
                sums[name] = sums.get(name, 0.0) + v.detach() / accum
            sums["total"] = sums.get("total", 0.0) + total.detach() / accum
        max_norm = r.optim.grad_clip if r.optim.grad_clip > 0 else float("inf")
        norm = acc.clip_grad_norm_(self.net.parameters(), max_norm)
        finite = torch.isfinite(norm)  # identical on every rank: gradients are all-reduced
        if self.skip_on_device:
            self._opt_inner.found_inf = (~finite).float()
            self.opt.step()
        elif r.train.mixed_precision == "fp16" or bool(finite):  # fp16: the grad scaler skips inf steps itself
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        before = self.clock.images_seen
        self.clock.images_seen += self.global_batch
        self.clock.step += 1
        decay = ema_decay(r.ema, self.clock.step, before, self.clock.images_seen)
        # A skipped step leaves the EMAs as they are: decay 1 where the step was not finite.
        self.update_emas(decay, before, finite)
        self._nf.count(finite, self.clock.step)
        # ema_decay is NaN for skipped steps in the logs, as the weights did not move.
        sums.update(lr=lr, grad_norm=norm.detach(), ema_decay=torch.where(finite, decay, float("nan")))
        return sums

    def update_emas(self, decay: float, images_before: int, finite: torch.Tensor) -> None:
        net = self.acc.unwrap_model(self.net)
        update_ema_if(self.ema, net, decay, finite)
        if self.posthoc:
            self.posthoc.update(net, images_before, self.clock.images_seen, finite)

    def snapshot(self) -> None:
        """Post-hoc EMA history for xurdif-ema (main process only)."""
        self.posthoc.write_snapshot(self.out.run_dir, self.clock.step, self.clock.images_seen,
                                    self.r.ema.snapshot_dtype)

    def any_rank(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        return bool(self.acc.reduce(torch.tensor(float(flag), device=self.acc.device), "sum") > 0)

    def from_main(self, value: int) -> int:
        """Rank 0's value on every rank (decisions taken from rank 0's clock)."""
        if self.world == 1:
            return value
        from accelerate.utils import broadcast

        return int(broadcast(torch.tensor([value], device=self.acc.device, dtype=torch.int64))[0])

    # ------------------------------------------------------------ time budget
    def fix_length(self, probe: tuple[float, int, int], again: bool = False) -> bool:
        """While measuring a time budget's speed: True once the run's length is set.

        The speed is measured from the end of the run's first step (which pays for
        warm-up) over time_probe_steps steps, or over the first minute (at most a
        tenth of the budget); the rest of the budget at that speed, in whole global
        batches, is the run's length. If the LR warm-up is still running, that length
        is provisional (not recorded in checkpoints) and `again=True` at the warm-up's
        end measures it once more, from the same start, over the whole warm-up."""
        t1, img1, step1 = probe
        now = time.perf_counter()
        done = again or probe_done(now - t1, self.clock.step - step1, self.r.train.time_probe_steps, self.budget_s)
        if not self.from_main(int(done)):
            return False
        ips = (self.clock.images_seen - img1) / max(1e-9, now - t1)
        left = self.budget_s - (self.seconds_before + now - self.born)
        self.total = self.from_main(length_from_speed(self.clock.images_seen, ips, left, self.global_batch))
        self.provisional = not again and measured_again(self.clock.images_seen, self.total,
                                                        self.r.optim.warmup_images)
        log.info("train.time %s: %.1f images/s%s; the run's length is %s %d images (%d steps)%s",
                 self.r.train.time, ips, " over the LR warm-up" if again else "",
                 "for now" if self.provisional else "fixed at", self.total, self.total // self.global_batch,
                 "; measured again at the warm-up's end" if self.provisional else "")
        return True

    def refit_length(self, t0: float, img0: int, bar: tqdm) -> int:
        """A time budget, at each checkpoint: the rest of the budget at this session's whole
        pace so far, grids, evaluations and saves included (the speed of the first minute
        alone missed a 10-minute budget by 19 %). Not past REFIT_UNTIL of the run, where a new
        length would bend the end of the LR curve. Returns the length in steps."""
        now = time.perf_counter()
        if self.clock.images_seen < REFIT_UNTIL * self.total and now > t0:
            pace = (self.clock.images_seen - img0) / (now - t0)
            left = self.budget_s - (self.seconds_before + now - self.born)
            new = length_from_speed(self.clock.images_seen, pace, left, self.global_batch)
            self.total = self.from_main(max(new, self.clock.images_seen + self.global_batch))
        return self.length_to_bar(bar)

    def length_to_bar(self, bar: tqdm) -> int:
        """The run's length in steps, just measured, shown on the progress bar."""
        bar.total = self.total // self.global_batch
        bar.refresh()
        return bar.total

    # ------------------------------------------------------------ evaluation
    def eval_due(self, step: int, log_step: bool) -> bool:
        """Every eval.kid_every_steps steps, and with eval.time_share at each log step where one
        more evaluation (costed at what the last took) keeps all of this session's evaluations,
        their one-off set-up included, within the share of its time. Rank 0's clock decides
        for every rank."""
        e = self.r.eval
        if e.kid_every_steps and step % e.kid_every_steps == 0:
            return True
        if not (e.time_share and log_step):
            return False
        due = False
        if self.acc.is_main_process:
            now = time.perf_counter()
            if self.eval_ended is None:  # the first: once the LR warm-up is over and a minute trained
                due = (self.clock.images_seen >= self.r.optim.warmup_images
                       and now - self.born >= FIRST_EVAL_AFTER_S)
            else:
                due = self.eval_seconds + self.kid.seconds <= e.time_share * (now - self.born)
        return self.any_rank(due)

    def evaluate(self, step: int) -> bool:
        """Main process: measure, log, judge; True when memorisation is over eval.memorised_max."""
        started = time.perf_counter()
        self.kid = self.kid or KidMonitor(self.r, self.data, self.acc.device, self.heldout)
        scores = self.kid(self.ema, self.schedule, self.meta)
        self.eval_ended = time.perf_counter()
        self.eval_seconds += self.eval_ended - started
        # What evaluating costs, in the log beside the scores (not in model-best's metadata).
        share = self.eval_seconds / max(1e-9, self.eval_ended - self.born)
        self.out.log_eval({**scores, "seconds": self.kid.seconds, "time_share": share}, step)
        self.out.write_closest(self.kid.picture, "last")
        return self.judge(scores, step)

    def judge(self, scores: dict[str, float], step: int) -> bool:
        """Keep model-best.safetensors; True when memorisation is over eval.memorised_max."""
        e = self.r.eval
        memo = scores["memorised"]
        if memo > 0 and self.first_copy_step is None:
            self.first_copy_step = step
            msg = (f"step {step}: first sample that copies a training image ({memo:.1%} of "
                   f"{e.kid_samples} samples; eval.memorised_max is {e.memorised_max:.1%})")
            log.info(msg)
            self.out.log_text("eval/first_copy", msg, step)
        if memo > e.memorised_max:
            if not self.memorised_warned:
                self.memorised_warned = True
                msg = (f"step {step}: {memo:.1%} of samples copy a training image, over eval.memorised_max "
                       f"{e.memorised_max:.1%}; the model is starting to memorise. model-best.safetensors keeps "
                       "the best model below it" + ("; stopping (eval.stop_on_memorised)" if e.stop_on_memorised
                                                     else ""))
                log.warning(msg)
                self.out.log_text("eval/warning", msg, step)
                self.out.log_eval({"memorised_over_max": 1.0}, step)
            return True
        if memo < e.memorised_max and (self.best_kid is None or scores["kid"] < self.best_kid):
            self.best_kid = scores["kid"]
            model = self.acc.unwrap_model(self.net).state_dict()
            self.out.export_best(self.meta, model, self.ema.state_dict(), step, scores)
            if self.kid is not None and self.kid.picture is not None:
                self.out.write_closest(self.kid.picture, "best")
        return False

    # ------------------------------------------------------------ the loop
    def run(self, stop: StopRequest) -> Path:
        r, acc = self.r, self.acc
        measuring = self.total is None
        if measuring:
            self.total = PROBE_TOTAL
        total_steps = self.total // self.global_batch
        bar = tqdm(total=None if measuring else total_steps, initial=self.clock.step, unit="step",
                   disable=not acc.is_main_process, dynamic_ncols=True)
        window: list[dict[str, float]] = []
        t0, img0 = time.perf_counter(), self.clock.images_seen
        saved_at = self.clock.step
        probe = None
        self.stopped = False
        self.interrupted = False
        if checkpoint_dir(self.out.run_dir, saved_at).is_dir():
            self.export_if_stale()  # resumed from this folder: a kill may have cut the export
        while self.clock.step < total_steps:
            stats = self.step()
            window.append(stats)
            step = self.clock.step
            if measuring:
                if probe is None:
                    probe = (time.perf_counter(), self.clock.images_seen, step)
                elif self.fix_length(probe):
                    measuring = False
                    total_steps = self.length_to_bar(bar)
            elif self.provisional and self.clock.images_seen >= r.optim.warmup_images:
                self.fix_length(probe, again=True)  # before the first step whose LR depends on the length
                total_steps = self.length_to_bar(bar)
            if self.posthoc and r.ema.snapshot_every_images and acc.is_main_process:
                every = r.ema.snapshot_every_images
                if self.clock.images_seen // every > (self.clock.images_seen - self.global_batch) // every:
                    self.snapshot()
            log_step = step % r.log.every_steps == 0 or step == total_steps
            if log_step:  # the only host syncs of ordinary training
                self.check_nonfinite()
                ips = (self.clock.images_seen - img0) / max(1e-9, time.perf_counter() - t0)
                means = window_means(window, acc)
                means["images_per_sec"] = ips
                means["nonfinite_skips"] = self.clock.nonfinite_total
                means["time_left_s"] = (total_steps - step) * self.global_batch / max(ips, 1e-9)
                self.out.log_scalars(means, step)
                bar.set_postfix(loss=f"{means['total']:.4f}", img_s=f"{ips:.1f}")
                window = []
            bar.update(1)
            if r.samples.every_steps and step % r.samples.every_steps == 0 and step < total_steps:
                self.out.sample_grid(self.ema, self.schedule, self.meta, step)
                acc.wait_for_everyone()
            memorising = False
            if self.eval_due(step, log_step):
                if acc.is_main_process:
                    memorising = self.evaluate(step)
                acc.wait_for_everyone()
                memorising = r.eval.stop_on_memorised and self.any_rank(memorising)
            if step % r.checkpoint.every_steps == 0 and step < total_steps:
                if self.measured_total():  # before the save: the checkpoint records the new length
                    total_steps = self.refit_length(t0, img0, bar)
                self.save()
                saved_at = step
            # Polled at log steps (with several processes it is a collective): a stop
            # request saves within one log interval.
            if ((log_step or self.world == 1) and stop.requested(acc)) or memorising:
                # Just saved at this step (on schedule): nothing new to write.
                path = self.save() if saved_at != step else checkpoint_dir(self.out.run_dir, step)
                if memorising and acc.is_main_process:
                    tqdm.write(f"stopping at step {step}: memorisation over eval.memorised_max "
                               "(eval.stop_on_memorised)")
                bar.close()
                self.stopped = True
                self.interrupted = not memorising  # a signal: the run is not finished
                return path
        bar.close()
        self.out.sample_grid(self.ema, self.schedule, self.meta, self.clock.step)
        acc.wait_for_everyone()
        if saved_at != self.clock.step or not checkpoint_dir(self.out.run_dir, saved_at).is_dir():
            self.save()
        else:
            self.export_if_stale()
        return self.out.run_dir / "model.safetensors"
