"""Sample quality after a fixed wall-clock training budget: FID, KID, SWD, memorisation.

Trains a recipe (default: recipes/demo.yaml, the tiny preset) on a benchmark folder
(default: the 904 Wesnoth unit sprites, ../shared/data/wesnoth-units-64 beside the
checkout, read in place) for --minutes of wall clock (train.time: the trainer measures its
speed over the first minute, and again over the LR warm-up if that is longer, and fixes the
run's length so that the LR schedule and EMA span the budget), samples --samples images
from the EMA weights and scores them against the training images at the training size.
Prints a table and writes JSON.

    .venv/bin/python bench/quality.py --minutes 5 --samples 500 --set optim.lr=1e-3
    .venv/bin/python bench/quality.py --grid --minutes 4 --samples 200
    .venv/bin/python bench/quality.py --grid --only base,v --variant big-lr=optim.lr=3e-3

Every variant is one run with one seed: differences in KID under ~10 % are noise.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The benchmark set lives in ../shared beside the checkout and is never committed.
DEFAULT_DATA = str(ROOT.parent / "shared" / "data" / "wesnoth-units-64")

# Named variants of the --grid mode: recipe overrides applied on top of the base recipe
# (recipes/demo.yaml: x0 prediction, edge-weighted L1 + SSIM, lr 1e-3, warmup EMA 0.995).
# Chosen to answer issue 11's questions: EDM preconditioning and noise levels, non-leaky
# augmentation, learning rate, batch, preset at equal compute, dropout, EMA length.
EDM = ["diffusion.prediction=edm", "loss.l2=1", "loss.edge_l1=0", "loss.ssim=0"]
GRID: dict[str, list[str]] = {
    "base": [],
    "base-s1": ["train.seed=1"],
    "x0-lognormal": ["diffusion.noise_dist=lognormal"],
    "edm": EDM,
    "edm-s1": [*EDM, "train.seed=1"],
    "edm-lr2e-3": [*EDM, "optim.lr=2e-3"],
    "edm-ssim": [*EDM, "loss.ssim=0.2"],
    "edm-aug": [*EDM, "augment.p=0.15"],
    "edm-b64": [*EDM, "train.batch_size=64", "optim.lr=2e-3"],
    "edm-pmean": [*EDM, "diffusion.p_mean=-0.6"],
    "edm-drop": [*EDM, "model.dropout=0.1"],
    "edm-ema999": [*EDM, "ema.decay=0.999"],
    # small costs 3.5x tiny's FLOPs per image: at equal compute it sees 3.5x fewer images
    # (scale train.images by hand to the grid's --images / 3.5).
    "edm-small": [*EDM, "model.preset=small"],
    "edm-lr2e-3-aug": [*EDM, "optim.lr=2e-3", "augment.p=0.15"],
    "edm-lr2e-3-s1": [*EDM, "optim.lr=2e-3", "train.seed=1"],
    # Second round: EDM's log-normal levels (P_mean -1.2) starve the high noise levels that
    # decide a sprite's layout in a short run; uniform timesteps on the cosine schedule do not.
    "edm-uniform": [*EDM, "diffusion.noise_dist=uniform"],
    "edm-uniform-s1": [*EDM, "diffusion.noise_dist=uniform", "train.seed=1"],
    "edm-uniform-lr2e-3": [*EDM, "diffusion.noise_dist=uniform", "optim.lr=2e-3"],
    "edm-wide": [*EDM, "diffusion.p_mean=0.0", "diffusion.p_std=1.6"],
    "base-lr2e-3": ["optim.lr=2e-3"],
    "base-aug": ["augment.p=0.15"],
    "base-ema999": ["ema.decay=0.999"],
    "base-small": ["model.preset=small"],
    # Third round (this CPU, 10 minutes, two variants at a time on one core each): batch
    # size at lr 2e-3. At equal images a smaller batch takes more optimizer steps.
    "b16": ["optim.lr=2e-3", "train.batch_size=16"],
    "b8": ["optim.lr=2e-3", "train.batch_size=8"],
    "b4": ["optim.lr=2e-3", "train.batch_size=4"],
    "b8-lr1e-3": ["optim.lr=1e-3", "train.batch_size=8"],
    "b4-lr1e-3": ["optim.lr=1e-3", "train.batch_size=4"],
    "b2-lr1e-3": ["optim.lr=1e-3", "train.batch_size=2"],
}

# Overrides the bench itself adds (after the recipe's, before the user's): no
# periodic checkpoints, grids or in-training evaluation, no TensorBoard — the budget
# goes to training, and every image to the training set (the bench scores afterwards).
BENCH_OVERRIDES = ["checkpoint.every_steps=1000000", "samples.every_steps=0", "samples.n=16",
                   "log.tensorboard=false", "eval.time_share=0", "eval.kid_every_steps=0", "eval.holdout=0"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/quality.py", description=__doc__.split("\n\n")[0],
        epilog="Grid variants: " + "; ".join(f"{k}: {' '.join(v) or '(recipe as is)'}" for k, v in GRID.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=str(ROOT / "recipes/demo.yaml"), help="base recipe (default recipes/demo.yaml)")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"training image folder (default {DEFAULT_DATA})")
    p.add_argument("--size", type=int, default=32, help="training and evaluation size in px (default 32)")
    p.add_argument("--minutes", type=float, default=5.0, help="wall-clock training budget per run (default 5)")
    p.add_argument("--images", type=int, default=None,
                   help="train.images (length of the LR schedule; training stops there) instead of "
                        "the --minutes budget (train.time)")
    p.add_argument("--samples", type=int, default=500, help="samples to score (default 500)")
    p.add_argument("--sampler", default="dpmpp_2m", help="sampler (default dpmpp_2m)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="weights to sample (default ema)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override for every run, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--grid", action="store_true", help="run several named variants one after another "
                   "and print a comparison table")
    p.add_argument("--only", default="", help="--grid: comma-separated variant names to run (default: all)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=K=V[;K=V...]",
                   help="--grid: add or replace a variant, e.g. --variant slow=optim.lr=1e-4;ema.decay=0.999")
    p.add_argument("--name", default="single", help="run name without --grid (default single)")
    p.add_argument("--out", type=Path, default=ROOT / "runs/bench-quality",
                   help="folder for runs, samples and JSON (default runs/bench-quality)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed and KID/SWD seed (default 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for training (OMP_NUM_THREADS of the child), sampling and metrics "
                        "(default 1: on 2 shared cores, 2 threads per process ran a training step ~8x slower; "
                        "0: torch's default)")
    p.add_argument("--reuse", action="store_true",
                   help="skip training where OUT/NAME/model.safetensors exists (re-score only)")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    p.add_argument("--jobs", type=int, default=1,
                   help="train this many variants at once (default 1; on a GPU small runs share the card, "
                        "so a grid finishes several times sooner)")
    p.add_argument("--device", default="auto", help="device for sampling and metrics (default: cuda if available)")
    p.add_argument("--no-score", action="store_true",
                   help="train and sample only; samples stay as PNGs in OUT/NAME-samples/ to be scored later "
                        "with --reuse (e.g. where the Inception weights are not installed)")
    return p


# ----------------------------------------------------------------- training
def run_overrides(args, overrides: list[str]) -> list[str]:
    """A variant's recipe overrides, in the order launch.py gets them: the bench's, the
    length (--images or the --minutes budget), --set, the variant's own (last wins)."""
    if args.images:
        length = [f"train.images={args.images}", "train.steps=null", "train.time=null"]
    else:
        length = ["train.images=null", "train.steps=null", f"train.time={args.minutes * 60:g}s"]
    return [f"data.path={args.data}", f"data.size={args.size}", *BENCH_OVERRIDES, *length, *args.set, *overrides]


def train(args, name: str, overrides: list[str], run_dir: Path) -> dict:
    """Run launch.py with a train.time budget of args.minutes (or args.images); returns timing and
    images seen. SIGTERM only as a safety net, should a run overrun its budget by far."""
    over = run_overrides(args, overrides) + [f"train.output_dir={run_dir}", f"name=quality-{name}"]
    cmd = [sys.executable, str(ROOT / "launch.py"), args.recipe, *over, "--restart"]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = run_dir.parent / f"{name}-train.log"
    print(f"[{name}] train: {' '.join(cmd[1:])}", flush=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        try:
            proc.wait(timeout=args.minutes * 60 * 1.5 + 300)
            stopped = False
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            stopped = True
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    seconds = time.perf_counter() - started
    if proc.returncode != 0 or not (run_dir / "model.safetensors").is_file():
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"[{name}] training failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    return {"train_seconds": round(seconds, 1), "stopped_by_sigterm": stopped, **checkpoint_state(run_dir),
            "log": str(log_path), "command": " ".join(["python", "launch.py", *cmd[2:]])}


def checkpoint_state(run_dir: Path) -> dict:
    """Step and images seen of a run's last checkpoint."""
    from xurdif.train.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    state = {}
    if ckpt is not None and (ckpt / "state.json").is_file():
        state = json.loads((ckpt / "state.json").read_text())
    return {k: state.get(k) for k in ("step", "images_seen", "total_images")}


# ----------------------------------------------------------------- sampling and scoring
def real_images_and_features(args, extractor):
    """The training images at the evaluation size (uint8) and their Inception
    features, cached on disk keyed by the folder's contents and the size."""
    from xurdif.evaluate import list_images, load_images
    from xurdif.evaluate.cache import cache_path, cached_features

    paths = list_images(args.data)
    real = load_images(paths, args.size)  # as the trainer sees them: resized, centre-cropped, on white
    path = cache_path(args.data, paths, f"{extractor.name}:view{args.size}x{args.size}")
    feats, hit = cached_features(path, lambda: extractor(real))
    print(f"real: {real.shape[0]} images at {args.size} px, features {'cached' if hit else 'computed'} ({path})",
          flush=True)
    return real, feats


def sample_folder(args, name: str) -> Path:
    return args.out / f"{name}-samples"


def load_sample_folder(folder: Path, n: int):
    """Samples saved by an earlier (e.g. --no-score) run, or None if fewer than n."""
    from xurdif.evaluate import load_images

    paths = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if len(paths) < n:
        return None
    return load_images(paths[:n]).float() / 255


def save_sample_folder(images, folder: Path) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    x = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for i, im in enumerate(x):
        Image.fromarray(np.ascontiguousarray(im)).save(folder / f"{i:05d}.png")


def draw_samples(model_path: Path, args) -> tuple:
    import torch
    from xurdif.diffusion.denoiser import Denoiser
    from xurdif.diffusion.samplers import sample
    from xurdif.diffusion.schedule import make_schedule
    from xurdif.seeds import derive_seed
    from xurdif.weights import load_network

    net, meta = load_network(model_path, args.weights)
    net.eval().to(args.device)
    den = Denoiser(net, make_schedule(meta.schedule, meta.timesteps), meta.prediction, meta.value_range)
    size = meta.image_size or args.size
    h, w = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
    out, started, batch = [], time.perf_counter(), 100
    with torch.no_grad():
        for i, first in enumerate(range(0, args.samples, batch)):
            n = min(batch, args.samples - first)
            g = torch.Generator().manual_seed(derive_seed(args.seed, "quality-sample", i))
            x = sample(den, (n, 3, h, w), sampler=args.sampler, steps=args.steps, generator=g, device=args.device)
            out.append(den.to_image(x).clamp(0, 1).cpu())
    return torch.cat(out), time.perf_counter() - started


def save_grid(images, path: Path, n: int = 64) -> None:
    import numpy as np
    from PIL import Image
    import torch

    x = (images[:n].clamp(0, 1) * 255).round().to(torch.uint8)
    cols = 8
    rows = (x.shape[0] + cols - 1) // cols
    h, w = x.shape[-2:]
    canvas = torch.full((3, rows * h, cols * w), 255, dtype=torch.uint8)
    for k in range(x.shape[0]):
        r, c = divmod(k, cols)
        canvas[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = x[k]
    Image.fromarray(np.ascontiguousarray(canvas.permute(1, 2, 0).numpy())).save(path)


def score(args, name: str, run_dir: Path, real, real_feats, extractor) -> dict:
    from xurdif.evaluate import evaluate_images

    folder = sample_folder(args, name)
    fake, sample_s = load_sample_folder(folder, args.samples), 0.0
    if fake is None:
        fake, sample_s = draw_samples(run_dir / "model.safetensors", args)
        save_sample_folder(fake, folder)
    save_grid(fake, run_dir.parent / f"{name}-samples.png")
    if args.no_score:
        return {"samples": fake.shape[0], "sample_seconds": round(sample_s, 1)}
    started = time.perf_counter()
    rep = evaluate_images(real, fake, extractor=extractor, real_features=real_feats,
                          kid_subsets=args.kid_subsets, seed=args.seed)
    m = rep["memorisation"]
    return {
        "samples": rep["fake_images"], "sample_seconds": round(sample_s, 1),
        "metric_seconds": round(time.perf_counter() - started, 1),
        "fid": rep["fid"], "kid_x1e3": rep["kid"]["mean"] * 1e3, "kid_std_x1e3": rep["kid"]["std"] * 1e3,
        "swd_x1e3": rep["swd_x1e3"], "memorised_fraction": m["fraction"], "memorised_count": m["count"],
        "memorisation_space": m["space"],
        "median_nn_ratio": sorted(m["ratio"])[len(m["ratio"]) // 2],
    }


# ----------------------------------------------------------------- tables
def table(results: list[dict]) -> str:
    head = ("| variant | overrides | images seen | train s | FID | KID x1e3 (± std) | SWD x1e3 mean "
            "| memorised | median NN ratio |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | {' '.join(r['overrides']) or '—'} | failed: {r['error'][:60]} |||||||")
            continue
        lines.append(
            f"| {r['name']} | {' '.join(r['overrides']) or '—'} | {r['images_seen'] or 0:,} | {r['train_seconds'] or 0:.0f} "
            f"| {r['fid']:.1f} | {r['kid_x1e3']:.1f} ± {r['kid_std_x1e3']:.1f} | {r['swd_x1e3']['mean']:.1f} "
            f"| {r['memorised_count']}/{r['samples']} ({r['memorised_fraction'] * 100:.1f} %) "
            f"| {r['median_nn_ratio']:.2f} |")
    return "\n".join(lines)


def parse_variants(args) -> dict[str, list[str]]:
    variants = dict(GRID)
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        if not name or not rest:
            raise SystemExit(f"--variant {spec!r}: expected NAME=KEY=VALUE[;KEY=VALUE...]")
        variants[name] = [kv for kv in rest.split(";") if kv]
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in variants]
        if unknown:
            raise SystemExit(f"--only: unknown variants {unknown}; known: {sorted(variants)}")
        # Variants added with --variant run too, after the named ones.
        names += [spec.partition("=")[0] for spec in args.variant if spec.partition("=")[0] not in names]
        variants = {n: variants[n] for n in names}
    elif args.variant and not args.grid:
        variants = {}
    return variants


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from xurdif.evaluate import InceptionFeatures
    from xurdif.recipe import RecipeError, load_recipe

    variants = parse_variants(args) if args.grid else {args.name: []}
    # Validate every variant's recipe before spending any training time.
    for name, over in variants.items():
        try:
            load_recipe(args.recipe, run_overrides(args, over))
        except RecipeError as e:
            print(f"variant {name}: recipe errors:\n{e}", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    extractor = None if args.no_score else InceptionFeatures(device=args.device)
    real = real_feats = None  # loaded at the first scoring (cached on disk after the first bench run)

    # Phase 1: training, up to --jobs variants at once (each is its own process).
    def trained(name: str, over: list[str]) -> dict:
        run_dir = args.out / name
        prev = args.out / f"{name}.json"
        info = json.loads(prev.read_text()) if prev.is_file() else {}
        if args.reuse and ((run_dir / "model.safetensors").is_file() or info.get("images_seen")):
            entry = {k: info.get(k) for k in ("train_seconds", "stopped_by_sigterm", "step", "images_seen",
                                               "command")}
            if entry.get("images_seen") is None:  # no earlier report: the last checkpoint knows
                entry.update(checkpoint_state(run_dir))
            return entry
        return train(args, name, over, run_dir)

    training: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {name: pool.submit(trained, name, over) for name, over in variants.items()}
        for name, fut in futures.items():
            try:
                training[name] = fut.result()
            except Exception as e:  # keep going: one broken variant should not lose the grid
                training[name] = {"error": f"{type(e).__name__}: {e}"}
                print(f"[{name}] FAILED: {training[name]['error']}", file=sys.stderr, flush=True)

    # Phase 2: sampling and scoring, one variant at a time.
    results = []
    for name, over in variants.items():
        run_dir = args.out / name
        # Scores of the raw weights get their own files beside the EMA ones.
        tag = name if args.weights == "ema" else f"{name}-{args.weights}"
        entry = {"name": tag, "overrides": args.set + over, **training[name]}
        if "error" not in entry:
            try:
                if real is None and extractor is not None:
                    real, real_feats = real_images_and_features(args, extractor)
                entry.update(score(args, tag, run_dir, real, real_feats, extractor))
            except Exception as e:
                entry["error"] = f"{type(e).__name__}: {e}"
                print(f"[{name}] FAILED: {entry['error']}", file=sys.stderr, flush=True)
        entry.update({"minutes": args.minutes, "size": args.size, "recipe": args.recipe, "data": args.data,
                      "sampler": args.sampler, "sampler_steps": args.steps, "weights": args.weights,
                      "seed": args.seed})
        (args.out / f"{tag}.json").write_text(json.dumps(entry, indent=1))
        results.append(entry)
        if "error" not in entry and "fid" in entry:
            print(f"[{tag}] images {entry['images_seen']} in {entry['train_seconds']} s; FID {entry['fid']:.2f}, "
                  f"KID x1e3 {entry['kid_x1e3']:.2f} ± {entry['kid_std_x1e3']:.2f}, "
                  f"SWD x1e3 {entry['swd_x1e3']['mean']:.2f}, memorised {entry['memorised_fraction'] * 100:.1f} %",
                  flush=True)
    suffix = "" if args.weights == "ema" else f"-{args.weights}"
    summary = args.out / (f"grid{suffix}.json" if args.grid else f"{args.name}{suffix}-summary.json")
    summary.write_text(json.dumps({"argv": sys.argv[1:], "results": results}, indent=1))
    print()
    print(table([r for r in results if "fid" in r or "error" in r]))
    print(f"\nJSON: {summary}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
