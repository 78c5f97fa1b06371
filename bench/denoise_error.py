"""Where a trained model's denoising fails: its clean-image estimate's error per timestep.

Noises real images to each timestep (one fixed noise draw), asks the model for the clean
image and prints the mean absolute error in the model's own range beside the error of
"doing nothing" (x_t / sqrt(ᾱ), clipped): a model worse than doing nothing at low noise
cannot pass a clean image through, which an x0 model trained briefly shows (docs/quality.md,
round 6).

    .venv/bin/python bench/denoise_error.py runs/my-run --images ../shared/data/wesnoth-units-64
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import DEFAULT_DATA  # noqa: E402  (the benchmark set: one definition)

TIMESTEPS = [10, 49, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/denoise_error.py", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="run folder or .safetensors model file")
    p.add_argument("--images", default=DEFAULT_DATA, help=f"folder of real images (default {DEFAULT_DATA})")
    p.add_argument("--n", type=int, default=64, help="images, spread evenly over the folder (default 64)")
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise draw (default 0)")
    args = p.parse_args(argv)

    import torch
    from xurdif.evaluate import list_images, load_images
    from xurdif.weights import load_denoiser

    torch.set_num_threads(1)
    den, meta = load_denoiser(args.model, args.weights)
    paths = list_images(args.images)
    paths = paths[::max(1, len(paths) // args.n)][:args.n]
    size = meta.image_size[0]
    x0 = den.to_model(load_images(paths, size).float() / 255)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(args.seed))
    lo, hi = meta.value_range
    print(f"{args.model}: {len(paths)} images at {size} px, prediction {meta.prediction}; "
          f"mean |error| of the clean-image estimate, in [{lo:g}, {hi:g}]")
    print("| t | sigma | model | x_t itself |\n|---:|---:|---:|---:|")
    with torch.no_grad():
        for t in [t for t in TIMESTEPS if t < den.schedule.T]:
            ab = den.schedule.ab(torch.tensor([t])).view(1, 1, 1, 1)
            x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
            pred = den(x_t, torch.full((x0.shape[0],), t))
            naive = (x_t / ab.sqrt()).clamp(lo, hi)
            sigma = ((1 - ab) / ab).sqrt().item()
            print(f"| {t} | {sigma:.3g} | {(pred - x0).abs().mean():.4f} | {(naive - x0).abs().mean():.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
