"""The training loop: a recipe in, a run folder with checkpoints, samples,
TensorBoard logs and an exported model.safetensors out."""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm import tqdm

from ..data import open_dataset
from ..data.holdout import held_out
from ..diffusion.losses import TOTAL, loss_terms
from ..recipe import Recipe
from ..seeds import derive_seed
from .batch import Batch, Batches
from .budget import REFIT_UNTIL, TimeBudget, length_from_speed
from .checkpoint import checkpoint_dir, load_checkpoint, prune, save_checkpoint
from .dist import from_main, make_accelerator, window_means
from .ema import ema_decay
from .feed import Layout
from .loss import Loss
from .lr import learning_rate
from .model import Model
from .network import compile_forward, exported_meta
from .best import FIRST_EVAL_AFTER_S, BestModel
from .monitor import KidMonitor
from .nonfinite import NonFiniteCounter, NonFiniteError
from .outputs import RunOutputs
from .signals import StopRequest
from .state import Outcome, RunState

# Tests replace loss_terms, length_from_speed, REFIT_UNTIL, KidMonitor, FIRST_EVAL_AFTER_S and
# time in this module, so the Trainer reaches them through it (the loss through a lambda).
__all__ = ["NonFiniteError", "Outcome", "Trainer", "make_accelerator", "window_means"]
log = logging.getLogger("xurdif.train")


class Trainer:
    def __init__(self, recipe: Recipe, accelerator: Accelerator, outputs: RunOutputs):
        born = time.perf_counter()  # a time budget counts from here: data loading is part of the run
        self.r, self.acc, self.out = recipe, accelerator, outputs
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.data = open_dataset(recipe.data, self.rank, self.world)
        self.heldout = held_out(recipe, self.data)  # taken out of self.data before anything is trained
        if self.heldout is not None and accelerator.is_main_process:
            outputs.write_heldout(self.heldout)
        self.model = m = Model(recipe, accelerator)
        t, dev = recipe.train, accelerator.device
        self.global_batch = t.batch_size * self.world * t.grad_accum
        self.state = RunState.fresh(recipe, self.global_batch, self.world)
        self.loss = Loss(recipe, m.meta, m.schedule, lambda *a, **k: loss_terms(*a, **k))
        self.forward = compile_forward(lambda b: self.loss(m.denoise, b), t, self.world)
        layout = Layout(t.seed, t.batch_size, self.world, self.rank, t.grad_accum, m.schedule.T)
        self.batches = Batches(recipe, self.data, layout, self.loss, dev)
        self.budget = TimeBudget(recipe, self.global_batch, born, lambda v: from_main(accelerator, v), REFIT_UNTIL)
        self.best = BestModel(recipe, self.state, outputs, accelerator, born=born, first_after=FIRST_EVAL_AFTER_S,
                              monitor=lambda: KidMonitor(recipe, self.data, dev, self.heldout),
                              export=self.export_best, clock=time.perf_counter,
                              progress=lambda: self.budget.session_done(self.state.images_seen))
        self.nonfinite = NonFiniteCounter(t.max_nonfinite, dev)
        self.bar: tqdm | None = None  # run()'s progress bar
        self.window: list[dict] = []  # step statistics since the last log step
        self.saved_at = -1  # the step of this session's last checkpoint

    # By the names the tests, tools and the CLI read: the state's step and images seen, the weights.
    clock = property(lambda self: self.state)
    net = property(lambda self: self.model.net)
    ema = property(lambda self: self.model.ema)
    _opt_inner = property(lambda self: self.model.adamw)

    # ------------------------------------------------------------ checkpoints
    def check_nonfinite(self) -> None:
        s = self.state
        s.nonfinite_in_row, s.nonfinite_total = self.nonfinite.check(s.step, self.out.run_dir / "checkpoints")

    def save(self) -> Path:
        """All ranks call this; rank 0 writes, then everyone waits (no deadlock)."""
        self.check_nonfinite()  # the state saved counts every skipped step; no save mid-streak
        self.budget.record(self.state, time.perf_counter())
        path = self.out.run_dir / "checkpoints"
        if self.acc.is_main_process:
            tensors = self.model.tensors()
            path = save_checkpoint(self.out.run_dir, self.state.to_dict(), **tensors)
            self._export(tensors["model"], tensors["ema"])
            self.snapshot_if_due(saving=True)
        self.acc.wait_for_everyone()
        return path

    def export_if_stale(self) -> None:
        """model.safetensors must hold the newest checkpoint's weights (the current ones);
        a kill between a checkpoint's rename and the export leaves an older one behind."""
        if self.acc.is_main_process and self.out.exported_step() != self.state.step:
            log.info("model.safetensors is not from step %d: exporting it again", self.state.step)
            self._export(**self.model.weights())
        self.acc.wait_for_everyone()

    def _export(self, model: dict, ema: dict) -> None:
        self.out.export_model(exported_meta(self.model.meta, self.state, self.data), model, ema)
        prune(self.out.run_dir, self.r.checkpoint.keep_last, self.r.checkpoint.keep_every, self.best.keep())
        self.out.write_report()  # the checkpoint list as pruned

    def export_best(self, step: int, scores: dict[str, float], weights: dict[str, dict] | None = None) -> None:
        self.out.export_best(self.model.meta, **(weights or self.model.weights()), step=step, scores=scores)

    def load(self, path: Path, verified: bool = False) -> None:
        ck = load_checkpoint(path, verified)
        s = self.state
        s.resume(RunState.from_dict(ck["state"]), path)
        self.model.load(ck, path, self.out.run_dir, s.images_seen)
        self.budget.resume(s)
        self.nonfinite = NonFiniteCounter(self.r.train.max_nonfinite, self.acc.device, s.nonfinite_total, s.step)

    # ------------------------------------------------------------ one step
    def micro_batch(self, k: int) -> Batch:
        return self.batches(self.state.images_seen, k, self.state.noise_draws)

    def step(self) -> dict[str, torch.Tensor]:
        """One optimizer step; its statistics stay on the device until a log step reads them."""
        r, acc, s, m = self.r, self.acc, self.state, self.model
        # Dropout draws from the global RNG: reseed it from the clock too.
        torch.manual_seed(derive_seed(r.train.seed, "dropout", s.images_seen, self.rank))
        sums: dict[str, torch.Tensor] = {}
        accum = r.train.grad_accum
        for k in range(accum):
            b = self.micro_batch(k)
            # DDP all-reduces gradients only on the last micro-batch.
            with contextlib.nullcontext() if k == accum - 1 else acc.no_sync(m.net):
                if m.graphs:  # a new iteration: the CUDA graphs may reuse the last one's output memory
                    torch.compiler.cudagraph_mark_step_begin()
                total, terms = self.forward(b)
                acc.backward(total / accum)
            for name, v in {**terms, TOTAL: total}.items():
                v = v.detach() / accum if accum > 1 else v.detach()  # no division by 1 (bench/op_count.py)
                sums[name] = sums[name] + v if name in sums else v
        lr = learning_rate(r.optim, s.images_seen, self.budget.total)
        norm, finite = m.apply_gradients(lr)
        before = s.images_seen
        s.images_seen += self.global_batch
        s.step += 1
        decay = ema_decay(r.ema, s.step, before, s.images_seen)
        m.update_emas(decay, before, s.images_seen, finite)
        self.nonfinite.count(finite, s.step)
        # ema_decay is NaN for skipped steps in the logs, as the weights did not move.
        sums.update(lr=lr, grad_norm=norm.detach(), ema_decay=torch.where(finite, decay, float("nan")))
        return sums

    # ------------------------------------------------------------ the loop
    def run(self, stop: StopRequest) -> Outcome:
        r, s, b = self.r, self.state, self.budget
        b.start(time.perf_counter(), s.images_seen)
        self.bar = tqdm(total=None if b.measuring else b.steps, initial=s.step, unit="step",
                        disable=not self.acc.is_main_process, dynamic_ncols=True)
        self.saved_at = s.step
        if checkpoint_dir(self.out.run_dir, s.step).is_dir():
            self.export_if_stale()  # resumed from this folder: a kill may have cut the export
        end = None if s.step < b.steps else "done"
        while end is None:
            self.window.append(self.step())
            self.keep_time()
            last = s.step >= b.steps
            self.snapshot_if_due()
            log_step = s.every(r.log.every_steps) or last
            if log_step:
                self.log()
            self.bar.update(1)
            if s.every(r.samples.every_steps) and not last:
                self.grid()
            memorising = self.best.due(log_step, last) and self.best.evaluate(self.model)
            if s.every(r.checkpoint.every_steps) and not last:
                self.checkpoint()
            end = self.reason_to_end(stop, log_step, memorising)
        return self.end(end)

    def keep_time(self) -> None:
        """train.time: measure the speed, and from it fix the run's length."""
        s, b = self.state, self.budget
        due = b.due(time.perf_counter(), s.images_seen, s.step)
        if due and self.fix_length(b.probe, again=due == "again"):
            self.show_length()

    def fix_length(self, probe: tuple[float, int, int], again: bool = False) -> bool:
        """True once the run's length is fixed from the speed since `probe` (TimeBudget)."""
        s, b, now = self.state, self.budget, time.perf_counter()
        speed = b.speed(probe, now, s.images_seen, s.step, again)
        if speed is None:
            return False
        b.fix(length_from_speed(s.images_seen, speed, b.left(now), self.global_batch), speed, s.images_seen, again)
        return True

    def show_length(self) -> None:
        self.bar.total = self.budget.steps
        self.bar.refresh()

    def snapshot_if_due(self, saving: bool = False) -> None:
        """Post-hoc EMA history for xurdif-ema (main process): each time images seen passes a
        multiple of ema.snapshot_every_images and at the end, or (0) with every checkpoint."""
        s, posthoc, every = self.state, self.model.posthoc, self.r.ema.snapshot_every_images
        if saving:
            due = not every or s.images_seen >= self.budget.total
        else:
            due = every > 0 and s.images_seen // every > (s.images_seen - self.global_batch) // every
        if due and posthoc and self.acc.is_main_process:
            posthoc.write_snapshot(self.out.run_dir, s.step, s.images_seen, self.r.ema.snapshot_dtype)

    def log(self) -> None:
        """The only host syncs of ordinary training: the statistics since the last log step."""
        s = self.state
        self.check_nonfinite()
        ips = self.budget.pace(time.perf_counter(), s.images_seen)
        means = window_means(self.window, self.acc)
        means.update(images_per_sec=ips, nonfinite_skips=s.nonfinite_total,
                     time_left_s=(self.budget.steps - s.step) * self.global_batch / max(ips, 1e-9))
        if not self.budget.measuring:  # the run's length, once known: the report's "step N of M"
            means["steps_total"] = self.budget.steps
        self.out.log_scalars(means, s.step)
        self.bar.set_postfix(loss=f"{means[TOTAL]:.4f}", img_s=f"{ips:.1f}")
        self.window = []

    def grid(self) -> None:
        m = self.model
        self.out.sample_grid(m.ema, m.schedule, m.meta, self.state.step)
        self.acc.wait_for_everyone()

    def checkpoint(self) -> None:
        if self.budget.measured():  # before the save: the checkpoint records the new length
            self.budget.refit(time.perf_counter(), self.state.images_seen)
            self.show_length()
        self.save()
        self.saved_at = self.state.step

    def reason_to_end(self, stop: StopRequest, log_step: bool, memorising: bool) -> str | None:
        if memorising:
            return "memorised"
        # Polled at log steps (with several processes it is a collective): a stop
        # request saves within one log interval.
        if (log_step or self.world == 1) and stop.requested(self.acc):
            return "stopped"
        return "done" if self.state.step >= self.budget.steps else None

    def end(self, reason: str) -> Outcome:
        step, run_dir = self.state.step, self.out.run_dir
        self.bar.close()
        if reason == "done":
            self.grid()
        if self.saved_at == step and checkpoint_dir(run_dir, step).is_dir():
            self.export_if_stale()
        else:
            self.save()
        if reason == "memorised" and self.acc.is_main_process:
            tqdm.write(f"stopping at step {step}: memorisation over eval.memorised_max (eval.stop_on_memorised)")
        return Outcome(reason, run_dir / "model.safetensors" if reason == "done" else checkpoint_dir(run_dir, step))
