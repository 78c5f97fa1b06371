"""The weights a run trains: the network (prepared by accelerate) with its AdamW, the
exported EMA beside it and the post-hoc EMAs (ema.posthoc_stds); one optimizer step, the
EMAs' update, and their tensors as a checkpoint holds them."""
from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from ..diffusion.schedule import make_schedule
from ..recipe import Recipe
from ..seeds import derive_seed
from .checkpoint import check_same_shape
from .ema import make_ema, update_ema_if
from .network import (build_for_recipe, compile_network, configure_backends, make_optimizer, speed_layout,
                      uses_cuda_graphs)
from .posthoc import PosthocEmas


class Model:
    def __init__(self, recipe: Recipe, acc: Accelerator):
        self.r, self.acc, dev = recipe, acc, acc.device
        torch.manual_seed(derive_seed(recipe.train.seed, "init"))  # same initial weights on every rank and run
        net, self.meta = build_for_recipe(recipe)
        configure_backends(recipe.train, dev)
        net = speed_layout(net, recipe.train)
        self.schedule = make_schedule(self.meta.schedule, self.meta.timesteps)
        self.ema = make_ema(net).to(dev)
        self.posthoc = PosthocEmas(net, recipe.ema.posthoc_stds, dev) if recipe.ema.posthoc_stds else None
        if acc.num_processes > 1:  # one process compiles the loss with the network (Trainer)
            net = compile_network(net, recipe.train)  # after the EMA copies: the EMAs run eager
        self.graphs = uses_cuda_graphs(recipe.train, dev)
        self.adamw = make_optimizer(net, recipe.optim, dev)
        self.net, self.opt = acc.prepare(net, self.adamw)
        # Fused AdamW skips a step on the device when its found_inf tensor is 1 (as GradScaler
        # uses it): a non-finite step is skipped without the host reading the gradient norm.
        self.skip_on_device = self.adamw.defaults["fused"] and recipe.train.mixed_precision != "fp16"

    def denoise(self, x: torch.Tensor, t: torch.Tensor, aug: torch.Tensor | None) -> torch.Tensor:
        with self.acc.autocast():
            return self.net(x, t, **({"aug": aug} if aug is not None else {})).float()

    def apply_gradients(self, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(gradient norm, whether it is finite): a non-finite one skips the step."""
        for group in self.opt.param_groups:
            group["lr"] = lr
        clip = self.r.optim.grad_clip
        norm = self.acc.clip_grad_norm_(self.net.parameters(), clip if clip > 0 else float("inf"))
        finite = torch.isfinite(norm)  # identical on every rank: gradients are all-reduced
        if self.skip_on_device:
            self.adamw.found_inf = (~finite).float()
            self.opt.step()
        elif self.r.train.mixed_precision == "fp16" or bool(finite):  # fp16: the grad scaler skips inf steps itself
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return norm, finite

    def update_emas(self, decay: float, images_before: int, images_after: int, finite: torch.Tensor) -> None:
        """A skipped step (not `finite`) leaves the EMAs as they are."""
        net = self.acc.unwrap_model(self.net)
        update_ema_if(self.ema, net, decay, finite)
        if self.posthoc:
            self.posthoc.update(net, images_before, images_after, finite)

    def weights(self) -> dict[str, dict]:
        """The network's and the EMA's tensors, as model files hold them."""
        return {"model": self.acc.unwrap_model(self.net).state_dict(), "ema": self.ema.state_dict()}

    def tensors(self) -> dict[str, dict | None]:
        """What a checkpoint holds besides the state (xurdif.train.checkpoint.save_checkpoint)."""
        scaler = self.acc.scaler
        return {**self.weights(), "optimizer": self.opt.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "posthoc": self.posthoc.state_dict() if self.posthoc else None}

    def load(self, ck: dict, where: Path, run_dir: Path, images_seen: int) -> None:
        """Go on from a checkpoint's tensors (xurdif.train.checkpoint.load_checkpoint)."""
        net = self.acc.unwrap_model(self.net)
        check_same_shape(net.state_dict(), ck["model"], where)
        net.load_state_dict(ck["model"])
        self.ema.load_state_dict(ck["ema"])
        if self.posthoc:
            self.posthoc.resume(ck["posthoc"], where, run_dir, images_seen, self.acc.is_main_process)
        self.opt.load_state_dict(ck["optimizer"])
        if ck["scaler"] is not None and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(ck["scaler"])
