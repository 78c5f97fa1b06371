"""Seconds per image with CLIP text guidance against unguided sampling.

CLIP ViT-B-32 with random weights (the cost does not depend on the weights),
16 cutouts, the "tiny" U-Net preset with random weights, DDIM. Prints a
Markdown table for docs/benchmarks.md.

    .venv/bin/python bench/guidance_speed.py [--device cpu] [--steps 10] [--sizes 64 256] [--threads N]
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from xurdif.diffusion.denoiser import Denoiser
from xurdif.diffusion.samplers import sample
from xurdif.diffusion.schedule import make_schedule
from xurdif.guidance import build_guided_denoiser
from xurdif.models.unet import UNet, unet_config


def seconds_per_image(den, size: int, steps: int, device: str, repeats: int) -> float:
    def once() -> None:
        sample(den, (1, 3, size, size), "ddim", steps, generator=torch.Generator().manual_seed(0),
               device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    once()  # warm-up: allocator, kernels, text embedding already done at build
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--cutouts", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sched = make_schedule("cosine", 1000)
    net = UNet(**unet_config("tiny")).to(args.device).eval()
    den = Denoiser(net, sched, "eps")
    cache: dict = {}
    variants = {
        "unguided": None,
        "text, x0 gradient": {"clip_model": "ViT-B-32", "clip_weights": "none", "cutouts": args.cutouts},
        "text, through_unet": {"clip_model": "ViT-B-32", "clip_weights": "none", "cutouts": args.cutouts,
                               "through_unet": True},
    }
    where = args.device if args.device != "cpu" else f"cpu ({platform.processor() or platform.machine()}, " \
                                                     f"{torch.get_num_threads()} threads)"
    print(f"device: {where}; {args.steps} DDIM steps; tiny U-Net; CLIP ViT-B-32 (random weights), "
          f"{args.cutouts} cutouts; batch 1\n")
    print("| size | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for size in args.sizes:
        row = []
        base_t = None
        for name, guidance in variants.items():
            d = build_guided_denoiser(den, guidance, "a red fox" if guidance else "", args.device, cache=cache)
            s = seconds_per_image(d, size, args.steps, args.device, args.repeats)
            base_t = s if base_t is None else base_t
            row.append(f"{s:.2f} s" + ("" if s is base_t else f" ({s / base_t:.1f}x)"))
        print(f"| {size} px | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
