"""Tiled rendering cost: seconds per megapixel for a tiled canvas against plain
renders at the model's own size.

    python bench/tile_speed.py [--preset small] [--tile 64] [--overlap 16] [--canvas 1024] [--steps 2]

Random weights (speed does not depend on them). The untiled reference renders
batches of `--batch` tile-sized images; the tiled canvas goes through the
TiledDenoiser with the same number of tiles per network call, so the ratio of
the two is the cost of overlap (more pixels denoised than shown) and blending.
Not run by the test suite.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xurdif.diffusion.denoiser import Denoiser  # noqa: E402
from xurdif.diffusion.samplers import sample  # noqa: E402
from xurdif.diffusion.schedule import make_schedule  # noqa: E402
from xurdif.diffusion.tiled import TiledDenoiser, plan  # noqa: E402
from xurdif.models.unet import UNet, unet_config  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--tile", type=int, default=64, help="the model's size and the tile side (px)")
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--canvas", type=int, default=1024)
    p.add_argument("--steps", type=int, default=2, help="sampler steps (cost is linear in them)")
    p.add_argument("--batch", type=int, default=16, help="images or tiles per network call")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = UNet(**unet_config(args.preset)).to(args.device, memory_format=torch.channels_last).eval()
    torch.nn.init.normal_(net.out.weight, std=0.02)
    den = Denoiser(net, make_schedule("cosine", 1000), "eps")
    t, c = args.tile, args.canvas
    n_tiles = len(plan(c, c, (t, t), args.overlap, False).weights)
    print(f"device {args.device}, threads {torch.get_num_threads()}, preset {args.preset}, tile {t} px, "
          f"overlap {args.overlap}, canvas {c}x{c} ({n_tiles} tiles), {args.steps} ddim steps, "
          f"batch {args.batch}, torch {torch.__version__}")
    sample(den, (2, 3, t, t), "ddim", 1, device=args.device)  # warm-up
    untiled = lambda: timed(lambda: sample(den, (args.batch, 3, t, t), "ddim", args.steps, device=args.device))
    before = untiled()
    plain_mp = args.batch * t * t / 1e6
    tiled_den = TiledDenoiser(den, (t, t), args.overlap, False, batch=args.batch)
    tiled = timed(lambda: sample(tiled_den, (1, 3, c, c), "ddim", args.steps, device=args.device))
    after = untiled()  # again: on a shared machine the load drifts during the tiled render
    plain = (before + after) / 2
    # Cutting and blending alone: the same tiles through a network that costs nothing.
    free = TiledDenoiser(Denoiser(torch.nn.Identity().to(args.device), den.schedule, "x0"), (t, t),
                         args.overlap, False, batch=args.batch)
    free.base.net = lambda x, _t: x
    blend = timed(lambda: sample(free, (1, 3, c, c), "ddim", args.steps, device=args.device))
    tiled_mp = c * c / 1e6
    per_plain, per_tiled = plain / plain_mp / args.steps, tiled / tiled_mp / args.steps
    print("| render | megapixels | seconds | s per megapixel per step | relative |")
    print("|---|---:|---:|---:|---:|")
    print(f"| {args.batch} x {t} px, untiled (before {before:.2f} s, after {after:.2f} s) | {plain_mp:.3f} "
          f"| {plain:.2f} | {per_plain:.2f} | 1.00 |")
    print(f"| {c}x{c}, {n_tiles} tiles of {t} px, overlap {args.overlap} | {tiled_mp:.3f} | {tiled:.2f} "
          f"| {per_tiled:.2f} | {per_tiled / per_plain:.2f} |")
    print(f"| of which cutting and blending (no network) | {tiled_mp:.3f} | {blend:.2f} "
          f"| {blend / tiled_mp / args.steps:.2f} | {blend / tiled_mp / args.steps / per_plain:.2f} |")
    print(f"pixels denoised per pixel shown: {n_tiles * t * t / (c * c):.2f}")


if __name__ == "__main__":
    main()
