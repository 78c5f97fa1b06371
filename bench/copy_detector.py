"""Does the copy detector catch copies that were moved, mirrored or recoloured, and leave
new images of the same kind alone? (issue 28; docs/quality.md "The copy detector").

The user test of the issue, on the sprites: the benchmark set is split by a hash of each
file name into images "trained on" and held-out images; copies are made of training
images (moved by 3 px; mirrored and moved by 2-4 px; hue rotated by 1-2.5 rad with
saturation 0.7) and mixed with new (held-out) images. Prints, per group, how many each
detector flags (nearest training image closer than 1/3 of the second nearest) and the
range of the ratios, for plain pixel L2 and for the shift-, flip- and colour-aware test.

    .venv/bin/python bench/copy_detector.py                      # the sprites at 64 px
    .venv/bin/python bench/copy_detector.py --size 32 --copies 20
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "wesnoth-units-64"


def moved(image, dx: int, dy: int):
    """Shifted by (dx, dy) px, the uncovered border white (the sets' background)."""
    import torch

    out = torch.ones_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def groups(train, new, copies: int, size: int):
    import kornia
    import torch

    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(train), generator=g)[:3 * copies]
    a, b, c = pick[:copies], pick[copies:2 * copies], pick[2 * copies:]
    s = max(1, round(3 * size / 64))  # 3 px at 64 px
    shift = torch.stack([moved(train[i], s * (1 if k % 2 else -1), s * (1 if k % 3 else -1)) for k, i in enumerate(a)])
    flip = torch.stack([moved(train[i].flip(-1), max(1, round((2 + k % 3) * size / 64)),
                              -max(1, round((2 + (k + 1) % 3) * size / 64))) for k, i in enumerate(b)])
    hue = torch.linspace(1.0, 2.5, copies)
    recolour = kornia.enhance.adjust_saturation(kornia.enhance.adjust_hue(train[c], hue), 0.7)
    return {f"moved {s} px": shift, "mirrored + moved": flip, "recoloured": recolour, "new (held out)": new}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/copy_detector.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--heldout", type=float, default=0.225, help="share held out (default 0.225: 204 of 904)")
    p.add_argument("--copies", type=int, default=20, help="copies per kind (default 20)")
    args = p.parse_args(argv)
    from xurdif.evaluate import list_images, load_images, pixel_memorisation, robust_memorisation

    paths = sorted(list_images(args.data), key=lambda q: hashlib.sha256(q.name.encode()).hexdigest())
    n = round(len(paths) * args.heldout)
    train = load_images(sorted(paths[n:]), args.size).float() / 255
    new = load_images(sorted(paths[:n]), args.size).float() / 255
    print(f"{len(train)} training images, {len(new)} held out, {args.size} px ({args.data.name})\n")
    print(f"| group | images | plain pixel L2: flagged | ratios | shift/flip/colour aware: flagged | ratios | s |")
    print("|---|---|---|---|---|---|---|")
    for name, images in groups(train, new, args.copies, args.size).items():
        plain, _ = pixel_memorisation(images, train)
        started = time.perf_counter()
        robust, _ = robust_memorisation(images, train)
        seconds = time.perf_counter() - started
        span = lambda m: f"{float(m.ratio.min()):.2f}-{float(m.ratio.max()):.2f}"
        print(f"| {name} | {len(images)} | {int(plain.memorised.sum())} | {span(plain)} | "
              f"{int(robust.memorised.sum())} | {span(robust)} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
