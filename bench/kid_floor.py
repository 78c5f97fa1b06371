"""What KID a perfect model, a blurred one, or postprocessed samples would score.

Without --samples: splits the training images at random into --held images and the rest,
and scores the held-out images against the rest (the metric's floor: samples from the data's
own distribution that are not copies), then the same held-out images reduced to each --down
size and enlarged again (bilinear): the KID a perfect low-resolution model would reach at
full size without a super-resolving stage. With --samples FOLDER: scores those PNGs (as
bench/quality.py saved them) against all training images, as drawn (enlarged to --size,
bilinear, if smaller) and after each --post chain of the renderer's postprocessing
(xurdif.postprocess).

    .venv/bin/python bench/kid_floor.py --size 64 --down 32 16
    .venv/bin/python bench/kid_floor.py --size 64 --samples runs/r7b/sd30/sd30-samples \\
        --post bilateral:0.1 --post median:3
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import DEFAULT_DATA, load_sample_folder, real_images_and_features  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/kid_floor.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help=f"training image folder (default {DEFAULT_DATA})")
    p.add_argument("--size", type=int, default=64, help="evaluation size in px (default 64)")
    p.add_argument("--held", type=int, default=250, help="held-out images (default 250, as the study's samples)")
    p.add_argument("--down", type=int, nargs="*", default=[32], help="sizes to reduce to and enlarge from (default 32)")
    p.add_argument("--samples", type=Path, help="a folder of sample PNGs to score instead of the floor")
    p.add_argument("--n", type=int, default=250, help="--samples: how many (default 250)")
    p.add_argument("--post", action="append", default=[], metavar="CHAIN",
                   help="--samples: also score after this postprocessing chain, e.g. bilateral:0.1 (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="split and KID seed (default 0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from xurdif.evaluate import InceptionFeatures
    from xurdif.evaluate.images import as_uint8
    from xurdif.evaluate.kid import kid
    from xurdif.postprocess import postprocess

    if args.threads:
        torch.set_num_threads(args.threads)
    extractor = InceptionFeatures()
    real, feats = real_images_and_features(args, extractor)

    def enlarge(images01: torch.Tensor) -> torch.Tensor:
        return F.interpolate(images01, size=args.size, mode="bilinear", align_corners=False)

    def row(name: str, reference: torch.Tensor, images01: torch.Tensor | None = None,
            features: torch.Tensor | None = None) -> None:
        """One table row: KID of images (or of their precomputed features) against reference."""
        if features is None:
            features = extractor(as_uint8(images01.clamp(0, 1)))
        mean, std = kid(reference, features, seed=args.seed)
        print(f"| {name} | {features.shape[0]} | {reference.shape[0]} | {1e3 * mean:.1f} ± {1e3 * std:.1f} |",
              flush=True)

    print("| images | n | reference images | KID x1e3 (± std) |\n|---|---:|---:|---:|", flush=True)
    if args.samples is not None:
        fake = load_sample_folder(args.samples, args.n)
        if fake is None:
            sys.exit(f"{args.samples}: fewer than {args.n} PNG files")
        name = args.samples.name
        if fake.shape[-1] != args.size:
            # A lower-resolution model's samples, enlarged as the floor's held-out images are.
            name = f"{name} ({fake.shape[-1]} px enlarged, bilinear)"
            fake = enlarge(fake)
        row(f"{name} as drawn", feats, fake)
        for chain in args.post:
            row(f"{name}, {chain}", feats, postprocess(fake, chain))
        return 0

    if not 0 < args.held < real.shape[0]:
        sys.exit(f"--held must be in 1..{real.shape[0] - 1} for {real.shape[0]} images, got {args.held}")
    order = torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(args.seed))
    held, rest = order[: args.held], order[args.held:]
    # The held-out images' features are already in the cache: no Inception pass needed.
    row("held out, as they are", feats[rest], features=feats[held])
    held01 = real[held].float() / 255
    for size in args.down:
        row(f"held out, {size} px enlarged (bilinear)", feats[rest],
            enlarge(F.interpolate(held01, size=size, mode="area")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
