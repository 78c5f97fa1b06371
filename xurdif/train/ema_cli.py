"""`xurdif-ema RUN --std 0.02 0.05 0.1`: post-hoc EMA. Reconstructs EMAs of other
lengths from a run's snapshots (trained with ema.posthoc_stds), scores each with
KID against the run's held-out images (eval.holdout or eval.holdout_path; else the
training images, which copies win) and writes the best as a model file."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from ..recipe import RecipeError, recipe_from_yaml


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xurdif-ema",
        description="Post-hoc EMA (EDM2): reconstruct the EMA of each --std from the snapshots in "
                    "RUN/ema-snapshots (a run trained with ema.posthoc_stds), sample each, score it with KID "
                    "against the images the recipe held out (eval.holdout, eval.holdout_path; else the training "
                    "images) and memorisation against the training images, print a table and write the best "
                    "(lowest KID with memorisation below the recipe's eval.memorised_max) as a model file.",
        epilog="Example: xurdif-ema runs/demo --std 0.02 0.05 0.1 0.15 --samples 250")
    p.add_argument("run", type=Path, help="run folder (holds recipe.yaml, model.safetensors, ema-snapshots/)")
    p.add_argument("--std", type=float, nargs="+", required=True,
                   help="relative EMA lengths to try, each in 0.001..0.28 (EDM2 sigma_rel), e.g. 0.02 0.05 0.1")
    p.add_argument("--samples", type=int, default=None, help="samples per KID (default: the recipe's "
                   "eval.kid_samples)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the recipe's eval.kid_steps)")
    p.add_argument("--out", type=Path, default=None, help="model file written (default RUN/model-posthoc.safetensors)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    return p


def fail(msg: str) -> int:
    print(f"xurdif-ema: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..data import DataError, open_dataset
    from ..data.holdout import held_out
    from ..diffusion.schedule import make_schedule
    from ..weights import load_network, load_state, save_model_file
    from .monitor import KidMonitor
    from .posthoc import reconstruct

    run = args.run
    bad = [s for s in args.std if not 0.001 <= s <= 0.28]
    if bad:
        return fail(f"--std {bad[0]}: out of range; each std must be in 0.001..0.28")
    for name, n, least in (("--samples", args.samples, 2), ("--steps", args.steps, 1)):  # KID needs 2 samples
        if n is not None and n < least:
            return fail(f"{name} {n}: must be at least {least}")
    for f in ("recipe.yaml", "model.safetensors"):
        if not (run / f).is_file():
            return fail(f"{run / f}: not found; RUN must be a training run folder")
    try:
        recipe = recipe_from_yaml((run / "recipe.yaml").read_text(), str(run / "recipe.yaml"))
        data = open_dataset(recipe.data)
        heldout = held_out(recipe, data)  # the same images the run held out, taken out of `data` again
    except (RecipeError, DataError) as e:
        return fail(str(e))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net, meta = load_network(run / "model.safetensors", "model")
    net = net.to(device)
    schedule = make_schedule(meta.schedule, meta.timesteps)
    monitor = KidMonitor(recipe, data, device, heldout)
    print(f"KID against {f'{len(heldout.names)} held-out images ({heldout.origin})' if heldout else 'the training images'}"
          f"; memorisation against {len(data) if data.indexable else 'the'} training images", flush=True)
    rows = []
    for std in args.std:
        try:
            state, info = reconstruct(run, std)
        except ValueError as e:
            return fail(str(e))
        net.load_state_dict(state)
        scores = monitor(net.eval(), schedule, meta, args.samples, args.steps)
        rows.append((std, scores, state, info))
        print(f"std {std:.3f}: KID {scores['kid']:.5f} ± {scores['kid_std']:.5f}, "
              f"memorised {scores['memorised']:.1%}", flush=True)
    limit = recipe.eval.memorised_max
    fine = [r for r in rows if r[1]["memorised"] < limit]
    best = min(fine or rows, key=lambda r: r[1]["kid"])
    print(f"\n{'std':>6}  {'KID':>9}  {'±':>8}  {'memorised':>9}")
    for std, s, _, _ in rows:
        mark = "  <- best" if std == best[0] else ""
        print(f"{std:6.3f}  {s['kid']:9.5f}  {s['kid_std']:8.5f}  {s['memorised']:9.1%}{mark}")
    if not fine:
        print(f"note: every std memorises at least eval.memorised_max ({limit:.1%}); wrote the lowest KID anyway")
    out = args.out or run / "model-posthoc.safetensors"
    std, scores, state, info = best
    extra = {**meta.extra, "posthoc_ema": {**info, **{k: float(v) for k, v in scores.items()}}}
    save_model_file(out, dataclasses.replace(meta, extra=extra), load_state(run / "model.safetensors", "model"),
                    state)
    print(f"wrote {out} (EMA std {std:.3f} at {info['images_seen']} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
