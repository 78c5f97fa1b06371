"""xurdif-sample: render images from a trained model, in batch, resumably."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from ..cli_args import int_in
from ..lock import FolderBusy
from ..diffusion.samplers import SAMPLERS
from ..diffusion.spacing import SPACINGS
from ..sampling.defaults import AUTO
from .gallery import write_gallery
from .job_files import load_jobs
from .jobs import Job, JobError, make_job
from ..weights import resolve_model_path
from .run import render

EPILOG = """\
examples:
  xurdif-sample runs/emoji -o out --prompt "a smiling face" --n 8
  xurdif-sample runs/emoji/model.safetensors prompts.txt -o out --sampler dpmpp_2m --steps 20
  xurdif-sample runs/emoji jobs.yaml -o out --size 96x64 --post crisp

prompts file: one prompt per line, '#' comments, options after '|':
  a red fox | seed=7 n=4 steps=30 init=fox.png strength=0.6 post=contrast:1.1,gamma:0.9
options: n seed steps sampler spacing eta size init strength noise_mult post tile overlap wrap merge
  (and guidance in YAML)

big canvases and textures:
  xurdif-sample runs/emoji --size 2048x768 --tile auto --overlap 16   # blended overlapping tiles
  xurdif-sample runs/emoji --size 64x64 --wrap                        # a seamless texture
  xurdif-sample runs/emoji --merge other.safetensors:0,0.25,0.5,0.75,1 --n 4   # a sweep towards another model

Outputs go to OUT/<index>-<slug>/<seed>.png with a manifest.jsonl, a contact
sheet per prompt in OUT/contact-sheets/<index>-<slug>.png, and OUT/index.html
shows them all. Running the same command again skips finished images;
--overwrite renders them again."""

# CLI flag -> Job option; flags left unset do not override the job file.
FLAGS = ("n", "seed", "steps", "sampler", "spacing", "sigma_min", "eta", "size", "init", "strength", "noise_mult", "post",
         "tile", "overlap", "wrap", "merge")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xurdif-sample", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run folder (uses <run>/model.safetensors) or a .safetensors model file")
    p.add_argument("jobs", nargs="?", help="prompts file (.txt) or YAML job file (.yaml/.yml)")
    p.add_argument("-o", "--out", default="out", help="output folder (default: out)")
    p.add_argument("--prompt", action="append", default=[],
                   help="a prompt to render (repeatable; used when no job file is given)")
    d = Job()
    p.add_argument("--n", type=str, help=f"images per prompt (default {d.n})")
    p.add_argument("--seed", type=str, help="first seed of each prompt (default: derived from prompt and image index)")
    p.add_argument("--sampler", choices=[AUTO, *SAMPLERS],
                   help="sampler (default auto: the one recorded in the model file, chosen for that model at "
                        "export; a model file without one uses ddim, 50 steps). A named sampler runs 50 steps "
                        "with uniform spacing unless --steps/--spacing say otherwise")
    p.add_argument("--steps", type=str, help="network evaluations per image (default: the model's, or 50)")
    p.add_argument("--spacing", choices=[AUTO, *SPACINGS],
                   help="where the steps fall: uniform in t, logsnr, karras (rho 7), or fitted (the model's "
                        "fitted schedule, tools/tune_sampler.py --fit) (default: the model's, or uniform)")
    p.add_argument("--sigma-min", dest="sigma_min", type=str,
                   help="logsnr/karras: the noise level of the last step, e.g. 0.05 (default: the model's with "
                        "its spacing, else 0 = the schedule's smallest)")
    p.add_argument("--eta", type=str, help="ddim: 0 deterministic .. 1 DDPM-like noise; edm: churn 0..1 "
                                           "(default: the model's, or 0)")
    p.add_argument("--size", type=str, help="output size WIDTHxHEIGHT, e.g. 96x64 (default: the model's)")
    p.add_argument("--init", type=str, help="init image for img2img")
    p.add_argument("--strength", type=str,
                   help=f"img2img: fraction of the schedule run, 1.0 = pure noise (default {d.strength})")
    p.add_argument("--noise-mult", dest="noise_mult", type=str,
                   help=f"multiplies the start tensor (default {d.noise_mult})")
    p.add_argument("--post", type=str, help="postprocessing chain or preset, e.g. contrast:1.1,gamma:0.9 or crisp")
    p.add_argument("--tile", type=str,
                   help="auto (default: tiles of the model's size when the canvas is over 1.5x it), off, "
                        "or a tile side in px")
    p.add_argument("--overlap", type=str, help="px shared by neighbouring tiles (default: a quarter of the tile)")
    p.add_argument("--wrap", action="store_const", const="true",
                   help="seamless texture: the canvas wraps around at its edges")
    p.add_argument("--merge", type=str,
                   help="MODEL:W1,W2,...: render the same seeds with (1-w)*this + w*MODEL, one contact sheet")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights (default ema)")
    p.add_argument("--batch-size", type=int_in(1, 4096), default=8, help="images per sampler call (default 8)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 autocast for the network (default fp32)")
    p.add_argument("--threads", type=int_in(1, 1024), default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is fastest on a busy machine)")
    p.add_argument("--overwrite", action="store_true", help="render finished images again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # while loading jobs or the model; rendering handles its own
        print("interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    err = lambda msg: print(f"error: {msg}", file=sys.stderr)
    flags = {k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None}
    try:
        model_path = resolve_model_path(args.model)
        # Validate the flags like a job line, so their errors read the same way.
        base = make_job({"prompt": "command line", **flags}, Job(), ("command line", 0), {}, Path.cwd())
        cli_defaults = {k: getattr(base, k) for k in flags}
        base = dataclasses.replace(Job(), **cli_defaults)
        presets: dict[str, str] = {}
        if args.jobs:
            jobs, failures, presets = load_jobs(args.jobs, Job(), cli_defaults)
        else:
            prompts = args.prompt or ["sample"]
            jobs = [dataclasses.replace(base, prompt=p, index=i) for i, p in enumerate(prompts)]
            failures = []
    except (FileNotFoundError, JobError, ValueError) as e:
        err(e)
        return 2
    for f in failures:
        err(f)
    if not jobs:
        err("no jobs to render")
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        result = render(model_path, jobs, args.out, weights=args.weights, batch_size=args.batch_size,
                        device=device, overwrite=args.overwrite, presets=presets,
                        precision=args.precision, progress=not args.no_progress)
    except (FileNotFoundError, ValueError, OSError) as e:
        err(e)
        return 2
    except FolderBusy as e:  # another renderer is writing args.out: it would render every image again
        err(e)
        return 1
    failures += result.failures
    print(f"{result.written} images written, {result.skipped} already done, to {args.out}")
    print(f"gallery: {write_gallery(args.out, failures)}")
    if result.contact_sheets:
        print("contact sheets:")
        for path in result.contact_sheets:
            print(f"  {path}")
    if result.interrupted:
        print("interrupted: run the same command again to render the rest", file=sys.stderr)
    if failures:
        print(f"{len(failures)} failed:", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
