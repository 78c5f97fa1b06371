"""The training loop: a recipe in, a run folder with checkpoints, samples,
TensorBoard logs and an exported model.safetensors out."""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm import tqdm

from ..data import open_dataset
from ..diffusion import prediction as P
from ..diffusion.losses import loss_terms
from ..diffusion.schedule import make_schedule
from ..recipe import Recipe, recipe_hash
from . import augment, draws
from .checkpoint import checkpoint_dir, load_checkpoint, prune, save_checkpoint
from .ema import ema_decay, make_ema, update_ema
from .lr import learning_rate
from .monitor import KidMonitor
from .network import build_for_recipe, compile_network, configure_backends, speed_layout
from .outputs import RunOutputs
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


def total_images(recipe: Recipe, global_batch: int) -> int:
    if recipe.train.steps is not None:
        return recipe.train.steps * global_batch
    return math.ceil(recipe.train.images / global_batch) * global_batch


def check_same_shape(ours: dict, theirs: dict, path: Path) -> None:
    """A checkpoint of another network is an error that names the keys, not a torch traceback."""
    bad = sorted(set(ours) ^ set(theirs))
    bad += [f"{k} {tuple(theirs[k].shape)} vs {tuple(ours[k].shape)}" for k in sorted(set(ours) & set(theirs))
            if ours[k].shape != theirs[k].shape]
    if bad:
        raise ValueError(f"{path}: checkpoint is of a different model shape than the recipe's; "
                         f"mismatching keys ({len(bad)}): {', '.join(bad[:6])}{' ...' if len(bad) > 6 else ''}")


class Trainer:
    def __init__(self, recipe: Recipe, accelerator: Accelerator, outputs: RunOutputs):
        self.r = recipe
        self.acc = accelerator
        self.out = outputs
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.data = open_dataset(recipe.data, self.rank, self.world)
        torch.manual_seed(draws.derive_seed(recipe.train.seed, "init"))  # same initial weights on every rank and run
        net, self.meta = build_for_recipe(recipe)
        configure_backends(recipe.train, accelerator.device)
        net = speed_layout(net, recipe.train)
        self.schedule = make_schedule(self.meta.schedule, self.meta.timesteps)
        self.ema = make_ema(net).to(accelerator.device)
        net = compile_network(net, recipe.train)  # after the EMA copy: the EMA runs eager
        # Fused AdamW: one kernel for all parameters; on CPU it cut the step from 50 to 10 ms (bench).
        fused = accelerator.device.type in ("cuda", "cpu")
        o = recipe.optim
        opt = torch.optim.AdamW(
            net.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay, fused=fused
        )
        self.net, self.opt = accelerator.prepare(net, opt)
        self.micro = recipe.train.batch_size
        self.global_batch = self.micro * self.world * recipe.train.grad_accum
        self.total = total_images(recipe, self.global_batch)
        self.clock = Clock()
        self.stream = None
        self.kid = None  # KidMonitor, built on first use (main process only)
        self.augment = augment.enabled(recipe.augment)

    # ------------------------------------------------------------ state
    def state(self) -> dict:
        c = self.clock
        return {
            "step": c.step, "images_seen": c.images_seen, "global_batch": self.global_batch,
            "world_size": self.world, "recipe_hash": recipe_hash(self.r), "nonfinite_total": c.nonfinite_total,
        }

    def save(self) -> Path:
        """All ranks call this; rank 0 writes, then everyone waits (no deadlock)."""
        path = None
        if self.acc.is_main_process:
            scaler = self.acc.scaler.state_dict() if self.acc.scaler is not None else None
            model, ema = self.acc.unwrap_model(self.net).state_dict(), self.ema.state_dict()
            path = save_checkpoint(self.out.run_dir, self.state(), model, ema, self.opt.state_dict(), scaler)
            self.out.export_model(self.meta, model, ema)
            prune(self.out.run_dir, self.r.checkpoint.keep_last, self.r.checkpoint.keep_every)
        self.acc.wait_for_everyone()
        return path or self.out.run_dir / "checkpoints"

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
        self.opt.load_state_dict(ck["optimizer"])
        if ck["scaler"] is not None and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(ck["scaler"])
        self.clock = Clock(step=s["step"], images_seen=s["images_seen"], nonfinite_total=s.get("nonfinite_total", 0))

    # ------------------------------------------------------------ one step
    def micro_batch(self, k: int) -> dict[str, torch.Tensor]:
        """Clean images, noise, noise level and augmentation labels of micro-batch k of this step."""
        start = self.clock.images_seen + (k * self.world + self.rank) * self.micro
        positions = range(start, start + self.micro)
        seed = self.r.train.seed
        if self.data.indexable:
            x = self.data.get(draws.data_indices(seed, positions, len(self.data)), draws.augment_seeds(seed, positions))
        else:
            if self.stream is None:
                skip = self.clock.images_seen // self.world
                self.stream = iter(self.data.stream(self.micro, seed, skip_images=skip))
            x = next(self.stream)
        eps, t, level = draws.noise_and_timesteps(seed, positions, tuple(x.shape[1:]), self.schedule.T)
        dev = self.acc.device
        x = x.to(dev)
        labels = None
        if self.augment:
            labels = augment.draw_params(self.r.augment, seed, positions, x.shape[-1])
            x = augment.apply(x, labels)  # on [-1, 1] data, before the value-range map
            labels = labels.to(dev)
        lo, hi = self.meta.value_range
        x0 = (x + 1) / 2 * (hi - lo) + lo  # data is [-1, 1]; the model may use another range
        d = self.r.diffusion
        if d.lognormal:
            # EDM's log-normal σ, kept inside the schedule's range: ᾱ = 1/(1+σ²), and the
            # network's time input is the schedule's (fractional) timestep of that σ.
            lo_snr, hi_snr = self.schedule.log_snr_range()
            log_snr = (-2 * (d.p_mean + d.p_std * level)).clamp(lo_snr, hi_snr).to(dev)
            ab, t_in = torch.sigmoid(log_snr), self.schedule.continuous_t(log_snr)
        else:
            t_in = t.to(dev)
            ab = self.schedule.ab(t_in)
        return {"x0": x0, "eps": eps.to(dev), "ab": ab.view(-1, 1, 1, 1), "t": t_in, "aug": labels}

    def step(self) -> dict[str, float]:
        r, acc = self.r, self.acc
        lr = learning_rate(r.optim, self.clock.images_seen, self.total)
        for group in self.opt.param_groups:
            group["lr"] = lr
        # Dropout draws from the global RNG: reseed it from the clock too.
        torch.manual_seed(draws.derive_seed(r.train.seed, "dropout", self.clock.images_seen, self.rank))
        sums: dict[str, float] = {}
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
                sums[name] = sums.get(name, 0.0) + v.item() / accum
            sums["total"] = sums.get("total", 0.0) + total.item() / accum
        max_norm = r.optim.grad_clip if r.optim.grad_clip > 0 else float("inf")
        norm = acc.clip_grad_norm_(self.net.parameters(), max_norm)
        norm = float(norm)
        finite = math.isfinite(norm)  # identical on every rank: gradients are all-reduced
        if finite or r.train.mixed_precision == "fp16":  # fp16: the grad scaler skips inf steps itself
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        before = self.clock.images_seen
        self.clock.images_seen += self.global_batch
        self.clock.step += 1
        if finite:
            self.clock.nonfinite_in_row = 0
            decay = ema_decay(r.ema, self.clock.step, before, self.clock.images_seen)
            update_ema(self.ema, acc.unwrap_model(self.net), decay)
        else:
            self.clock.nonfinite_in_row += 1
            self.clock.nonfinite_total += 1
            decay = float("nan")
            log.warning("step %d: non-finite loss or gradient, step skipped", self.clock.step)
            if self.clock.nonfinite_in_row >= r.train.max_nonfinite:
                raise NonFiniteError(
                    f"{self.clock.nonfinite_in_row} non-finite steps in a row at step {self.clock.step}; "
                    f"stopping. Lower optim.lr or use mixed_precision: bf16. The last good checkpoint is in "
                    f"{self.out.run_dir / 'checkpoints'}"
                )
        sums.update(lr=lr, grad_norm=norm, ema_decay=decay)
        return sums

    # ------------------------------------------------------------ the loop
    def run(self, stop: StopRequest) -> Path:
        r, acc = self.r, self.acc
        total_steps = self.total // self.global_batch
        bar = tqdm(total=total_steps, initial=self.clock.step, unit="step", disable=not acc.is_main_process,
                   dynamic_ncols=True)
        window: list[dict[str, float]] = []
        t0, img0 = time.perf_counter(), self.clock.images_seen
        saved_at = self.clock.step
        while self.clock.step < total_steps:
            stats = self.step()
            window.append(stats)
            step = self.clock.step
            if step % r.log.every_steps == 0 or step == total_steps:
                ips = (self.clock.images_seen - img0) / max(1e-9, time.perf_counter() - t0)
                means = {k: sum(s[k] for s in window) / len(window) for k in window[-1]}
                means["total"] = float(acc.reduce(torch.tensor(means["total"], device=acc.device), "mean"))
                means["images_per_sec"] = ips
                means["nonfinite_skips"] = self.clock.nonfinite_total
                self.out.log_scalars(means, step)
                bar.set_postfix(loss=f"{means['total']:.4f}", img_s=f"{ips:.1f}")
                window = []
            bar.update(1)
            if r.samples.every_steps and step % r.samples.every_steps == 0 and step < total_steps:
                self.out.sample_grid(self.ema, self.schedule, self.meta, step)
                acc.wait_for_everyone()
            if r.eval.kid_every_steps and step % r.eval.kid_every_steps == 0:
                if acc.is_main_process:
                    self.kid = self.kid or KidMonitor(r, self.data, acc.device)
                    self.out.log_eval(self.kid(self.ema, self.schedule, self.meta), step)
                acc.wait_for_everyone()
            if step % r.checkpoint.every_steps == 0 and step < total_steps:
                self.save()
                saved_at = step
            if stop.requested(acc):
                # Just saved at this step (on schedule): nothing new to write.
                path = self.save() if saved_at != step else checkpoint_dir(self.out.run_dir, step)
                if acc.is_main_process:
                    tqdm.write(f"stopped at step {step}: checkpoint saved in {path}")
                bar.close()
                return path
        bar.close()
        self.out.sample_grid(self.ema, self.schedule, self.meta, self.clock.step)
        acc.wait_for_everyone()
        if saved_at != self.clock.step or not (self.out.run_dir / "model.safetensors").exists():
            self.save()
        return self.out.run_dir / "model.safetensors"
