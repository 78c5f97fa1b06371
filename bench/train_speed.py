"""Training speed: on CPU our "small" U-Net beside a diffusers UNet2DModel of similar cost;
with --device cuda (or --trainer) the real Trainer step per preset and size (see
bench/trainer_speed.py for what that table measures).

Both networks are trained by the same minimal diffusion step (sample t, add noise,
forward, MSE on eps, backward, AdamW). The machine is shared, so the two models are
measured in interleaved rounds and the ratio is taken per round: load from other
processes hits both halves of a round about equally.

    .venv/bin/python bench/train_speed.py [--rounds 6] [--steps 3] [--threads 2]
        [--formats nchw channels_last] [--clock wall|cpu]

xurdif's own network (tinyunet_with_attention3, 3.76 M, 2.15 GFLOP per 64 px image)
runs in the same rounds as a yardstick: on this machine, idle, it trains at about
10.9 images/s, so ours/xurdif x 10.9 estimates our idle speed from a noisy run.
diffusers is a bench-only extra (pip install diffusers).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xurdif.diffusion.prediction import add_noise  # noqa: E402
from xurdif.diffusion.schedule import make_schedule  # noqa: E402
from xurdif.models.unet import UNet, unet_config  # noqa: E402

import trainer_speed  # noqa: E402  (bench/, next to this file)


class Peer(nn.Module):
    """diffusers wraps its output in an object; give it our net(x, t) -> tensor signature."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t).sample


def peer_unet(widths: tuple[int, ...] = (32, 64, 64, 128)) -> nn.Module:
    """A diffusers UNet2DModel tuned to about our "small" preset's GFLOPs at 64 px."""
    from diffusers import UNet2DModel

    return Peer(UNet2DModel(
        sample_size=64, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=widths,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=32,
    ))


def gflops_per_image(model: nn.Module, size: int = 64) -> float:
    x, t = torch.randn(1, 3, size, size), torch.tensor([500])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t)
    return counter.get_total_flops() / 1e9


def make_trainer(model: nn.Module, batch: int, size: int, seed: int = 0) -> Callable[[], float]:
    """One closure per model: each call runs one training step and returns the loss."""
    sched = make_schedule("cosine", 1000)
    # fused: one kernel for all parameters, 5x faster than the default on CPU.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1  # fixed "data" batch

    def step() -> float:
        t = torch.randint(0, sched.T, (batch,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        x_t = add_noise(x0, eps, sched.ab(t)[:, None, None, None])
        loss = torch.nn.functional.mse_loss(model(x_t, t), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def time_steps(step: Callable[[], float], steps: int, batch: int, clock: Callable[[], float]) -> float:
    start = clock()
    for _ in range(steps):
        step()
    return steps * batch / (clock() - start)


def compare(models: dict[str, nn.Module], rounds: int, steps: int, batch: int, size: int,
            clock: Callable[[], float] = time.perf_counter) -> dict:
    """Images/s per model in interleaved rounds (after one warm-up step each)."""
    trainers = {name: make_trainer(m.train(), batch, size) for name, m in models.items()}
    for step in trainers.values():
        step()
    speeds: dict[str, list[float]] = {name: [] for name in models}
    for r in range(rounds):
        # Alternate the order so neither model always runs first in a round.
        names = list(trainers) if r % 2 == 0 else list(reversed(trainers))
        for name in names:
            speeds[name].append(time_steps(trainers[name], steps, batch, clock))
    return speeds


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class ChannelsLast(nn.Module):
    """Runs a network with NHWC activations and weights; the output is NCHW again."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last), t).contiguous()


def build_models(preset: str, formats: list[str], reference: bool) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    factories = {f"xurdif_unet {preset}": lambda: UNet(**unet_config(preset)),
                 "diffusers UNet2DModel": peer_unet}
    models = {}
    for name, make in factories.items():
        for fmt in formats:
            models[f"{name} ({fmt})"] = ChannelsLast(make()) if fmt == "channels_last" else make()
    if reference:
        # xurdif's own network (3.76 M, 2.15 GFLOP per 64 px image) trains at ~10.9 images/s
        # on this machine when it is idle: it calibrates the other numbers of a noisy run.
        from xurdif.models.legacy import TinyUNetWithAttention3

        models["xurdif tinyunet_with_attention3 (nchw)"] = TinyUNetWithAttention3(64, [1, 2, 2, 2])
    return models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per model per round (default 3); timed steps per row with --trainer or "
                   "--device cuda (default 10)")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help=f"batch (CPU comparison: one, default 16; trainer table: one row per batch given, "
                   f"default by size, {trainer_speed.DEFAULT_BATCH})")
    p.add_argument("--size", type=int, default=64)  # the CPU comparison; the trainer table uses --sizes
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--preset", default="small")
    p.add_argument("--formats", nargs="+", default=["nchw"], choices=["nchw", "channels_last"])
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: images per CPU-second of this process; with --threads 1 it is "
                        "nearly blind to other processes, so it ranks designs on a busy machine")
    p.add_argument("--no-reference", action="store_true", help="skip xurdif's legacy network")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: the real Trainer step per preset, size and mode (bench/trainer_speed.py)")
    p.add_argument("--trainer", action="store_true", help="on CPU too: the real Trainer step table")
    trainer_speed.add_arguments(p)
    args = p.parse_args()
    if args.device == "cuda" or args.trainer:
        if args.device == "cpu":
            torch.set_num_threads(args.threads)
        args.steps = args.steps or 10
        trainer_speed.run_table(args)
        return
    if args.batch and len(args.batch) > 1:
        p.error("--batch: the CPU comparison takes one batch size (several are for --trainer)")
    args.steps, args.batch = args.steps or 3, (args.batch or [16])[0]
    torch.set_num_threads(args.threads)

    models = build_models(args.preset, args.formats, not args.no_reference)
    info = {n: (sum(q.numel() for q in m.parameters()) / 1e6, gflops_per_image(m, args.size))
            for n, m in models.items()}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    speeds = compare(models, args.rounds, args.steps, args.batch, args.size, clock)
    # Per round, each network's best memory format: that is what a user would run.
    best = {who: [max(speeds[n][r] for n in speeds if n.startswith(who)) for r in range(args.rounds)]
            for who in ("xurdif_unet", "diffusers", "xurdif tinyunet")}

    print(f"torch {torch.__version__}, {args.threads} threads, {args.clock} clock, batch {args.batch}, {args.size} px, "
          f"{args.rounds} interleaved rounds x {args.steps} steps per model")
    print("| model (memory format) | params (M) | GFLOP/img fwd | images/s median | min..max | vs peer |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, s in speeds.items():
        ratio = statistics.median(a / b for a, b in zip(s, best["diffusers"]))
        print(f"| {name} | {info[name][0]:.2f} | {info[name][1]:.2f} | {statistics.median(s):.2f} "
              f"| {min(s):.2f}..{max(s):.2f} | {ratio:.3f} |")
    ratios = [a / b for a, b in zip(best["xurdif_unet"], best["diffusers"])]
    print(f"\nours/peer (each in its best format), per round: median {statistics.median(ratios):.3f}, "
          f"range {min(ratios):.3f}..{max(ratios):.3f}")
    if not args.no_reference:
        ref = [a / b for a, b in zip(best["xurdif_unet"], best["xurdif tinyunet"])]
        print(f"ours/xurdif's network, per round: median {statistics.median(ref):.3f}, "
              f"range {min(ref):.3f}..{max(ref):.3f} (x 10.9 images/s idle = "
              f"{10.9 * statistics.median(ref):.1f} images/s estimated on an idle machine)")
    print(f"peak RSS of the process (all models): {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
