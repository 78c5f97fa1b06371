"""`tools/tune_sampler.py`: measure the candidate samplers on a model file and
record the winner as the model's default."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_args import int_in
from .choose import CANDIDATES


def build_parser() -> argparse.ArgumentParser:
    names = ", ".join(f"{s}/{sp}" + (f" to sigma {end:g}" if end else "") + (f" eta {e:g}" if e else "")
                      for s, sp, e, end in CANDIDATES)
    p = argparse.ArgumentParser(
        prog="tools/tune_sampler.py",
        description="Choose a model's default sampler by measuring: every candidate "
                    f"({names}) renders the same seeds at --steps network evaluations; the lowest KID "
                    "against --reference wins and is recorded in the model file, with every candidate's "
                    "score. tools/sample.py, the studio and the training grids then use it for jobs "
                    "that name no sampler. Training does this itself with sampling.choose: true.",
        epilog="Examples:\n  tools/tune_sampler.py runs/watercolor --reference data/watercolor-heldout\n"
               "  tools/tune_sampler.py model.safetensors --reference data/train --steps 8 --dry-run\n\n"
               "Give held-out images of the same kind as --reference where you have them: against\n"
               "the training images, a sampler that reproduces them scores best.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run folder (uses <run>/model.safetensors) or a .safetensors model file")
    p.add_argument("--reference", required=True, type=Path,
                   help="folder of images to score against (held-out images of the same kind if you have them)")
    p.add_argument("--steps", type=int_in(1, 1000), default=10, help="network evaluations per image (default 10)")
    p.add_argument("--samples", type=int_in(16, 100_000), default=200, help="images per candidate (default 200)")
    p.add_argument("--seed", type=int_in(0, 2**62), default=0, help="seed of the shared noise (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--no-fit", action="store_true",
                   help="do not fit a step schedule to the model first (fitting: xurdif/sampling/fit.py; "
                        "dpmpp_2m on the fitted schedule then competes, and the curve is recorded)")
    p.add_argument("--dry-run", action="store_true", help="measure and print; leave the model file as it is")
    p.add_argument("--json", type=Path, help="also write the measurements here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..evaluate import InceptionFeatures
    from ..evaluate.cache import folder_features
    from ..evaluate.images import EvaluateError
    from ..weights import ModelFileError, read_meta, resolve_model_path
    from .choose import choose_for_file

    try:
        path = resolve_model_path(args.model)
        meta = read_meta(path)
        extractor = InceptionFeatures(device=args.device)
        size = tuple(meta.image_size)
        reference, _, _ = folder_features(args.reference, extractor, size=size)
        best, rows = choose_for_file(path, reference, extractor, args.steps, args.samples, args.seed, args.device,
                                     f"{reference.shape[0]} images in {args.reference}", not args.no_progress,
                                     fit=not args.no_fit, write=not args.dry_run)
    except (FileNotFoundError, ModelFileError, EvaluateError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| sampler | spacing | sigma_min | eta | steps | KID x1e3 (± std) | s/image |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['spacing']} | {r.get('sigma_min', 0):g} | {r['eta']:g} | {r['steps']} | "
              f"{r['kid_x1e3']:.2f} ± {r['kid_std_x1e3']:.2f} | {r['seconds_per_image']:.4f} |")
    print(f"{'best' if args.dry_run else 'recorded in ' + str(path)}: {best.describe()}")
    if args.json:
        args.json.write_text(json.dumps({"model": str(path), "best": best.to_json(), "rows": rows}, indent=1))
    return 0
