"""Sampling speed: images/s at 64 px, batch 16, per sampler and step count.

    python bench/sample_speed.py [--preset small] [--steps 20 50] [--precision fp32 bf16]

Random weights (speed does not depend on them); the network is the U-Net
preset named, by default "small" (~2.15 GFLOP per 64 px image, the cost of
xurdif's own network). Not run by the test suite.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xurdif.diffusion.denoiser import Denoiser  # noqa: E402
from xurdif.diffusion.samplers import SAMPLERS, sample  # noqa: E402
from xurdif.diffusion.schedule import make_schedule  # noqa: E402
from xurdif.models.unet import UNet, unet_config  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--channels-last", action="store_true", help="also time channels_last memory format")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = UNet(**unet_config(args.preset)).to(args.device).eval()
    torch.nn.init.normal_(net.out.weight, std=0.02)
    den = Denoiser(net, make_schedule("cosine", 1000), "eps")
    shape = (args.batch, 3, args.size, args.size)
    print(f"device {args.device}, threads {torch.get_num_threads()}, preset {args.preset}, "
          f"{args.size} px, batch {args.batch}, torch {torch.__version__}")
    layouts = [False, True] if args.channels_last else [False]
    ref = {}
    print("| sampler | steps | precision | layout | s/image | images/s | max abs diff vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for cl in layouts:
        net.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        for prec in args.precision:
            amp = (torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16)
                   if prec == "bf16" else contextlib.nullcontext())
            for name in args.samplers:
                for steps in args.steps:
                    gen = [torch.Generator().manual_seed(i) for i in range(args.batch)]
                    with amp:
                        sample(den, (2, 3, args.size, args.size), name, 2, device=args.device)  # warm-up
                        if args.device.startswith("cuda"):
                            torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        x = sample(den, shape, name, steps, generator=gen, device=args.device).float()
                        if args.device.startswith("cuda"):
                            torch.cuda.synchronize()
                    dt = time.perf_counter() - t0
                    key = (name, steps)
                    diff = "" if prec == "fp32" and not cl else (
                        f"{(x - ref[key]).abs().max().item():.3f}" if key in ref else "")
                    ref.setdefault(key, x)
                    print(f"| {name} | {steps} | {prec} | {'channels_last' if cl else 'contiguous'} "
                          f"| {dt / args.batch:.3f} | {args.batch / dt:.2f} | {diff} |", flush=True)


if __name__ == "__main__":
    main()
