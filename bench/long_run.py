"""Long runs on few images: do models keep improving, when do they start to copy, and
does keep-best catch it? (issue 28; results in docs/quality.md, "Long runs").

Three steps, each a subcommand:

  split  copies N training images and M held-out images of the same kind out of a
         benchmark folder (default: the 904 sprites in ../shared beside the checkout),
         chosen by a hash of each file name. Held-out images that the copy detector
         already finds in the training part (the set's own near-duplicates: female
         variants, animation frames) are left out, so a model is never scored as
         copying because the data repeats itself.
  train  trains variants (recipe overrides) on the training part, with the in-training
         evaluation on (KID against the held-out part, copies against the training
         part, eval.time_share of the time) and checkpoints kept along the way.
         --jobs runs variants side by side (on a GPU: several on one card).
  score  samples every kept checkpoint (EMA weights) and scores it: KID against the
         held-out images, KID against the training images, the share of copies (either
         test) and each test's own. Writes a JSON per run,
         curves (SVG) and sample grids at three points, and the closest pairs of the
         model keep-best kept and of the last one. Runs on the CPU afterwards.
  guide  autoguidance at length: a kept checkpoint guided by an earlier or smaller one.
  samplers  a kept checkpoint under several samplers and step counts.
  floor  what the split's own images score against the held-out ones: the level a
         copy-free model can aim at (a perfect copier; new images of the same kind).

  .venv/bin/python bench/long_run.py split --out runs/long --train 100 --heldout 204
  .venv/bin/python bench/long_run.py train --out runs/long --size 32 --minutes 60 \\
      --variant small-data=
  .venv/bin/python bench/long_run.py score --out runs/long --samples 256
  .venv/bin/python tools/evaluate.py --real runs/long/train --heldout runs/long/heldout \
      --model runs/long/runs/small-data/model-best.safetensors --samples 256

The GPU version is bench/long_run_gpu.sh (one command). One seed per variant.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "wesnoth-units-64"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/long_run.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="make the training and held-out folders")
    s.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"benchmark folder (default {DEFAULT_DATA})")
    s.add_argument("--out", type=Path, required=True, help="study folder")
    s.add_argument("--train", type=int, default=100, help="training images (default 100)")
    s.add_argument("--heldout", type=int, default=204, help="held-out images before near-duplicates go (default 204)")
    s.add_argument("--size", type=int, default=64, help="size the near-duplicate check runs at (default 64)")
    t = sub.add_parser("train", help="train the variants")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--recipe", default=str(ROOT / "recipes" / "small-data.yaml"))
    t.add_argument("--size", type=int, default=32, help="data.size (default 32)")
    t.add_argument("--minutes", type=float, default=None, help="train.time per variant")
    t.add_argument("--images", type=int, default=None, help="train.images per variant (instead of --minutes)")
    t.add_argument("--checkpoints", type=int, default=12, help="checkpoints kept along each run (default 12)")
    t.add_argument("--steps-hint", type=int, default=None,
                   help="expected steps per run, to space the kept checkpoints (default: from --images)")
    t.add_argument("--variant", action="append", default=[], metavar="NAME[@RECIPE]=K=V[;K=V...]",
                   help="a variant: name, optionally its own recipe, then recipe overrides separated by ';' "
                        "(repeatable)")
    t.add_argument("--no-eval", action="store_true",
                   help="no in-training evaluation and no end-of-run sampler choice (a machine without the "
                        "Inception weights); score afterwards")
    t.add_argument("--max-minutes", type=float, default=None,
                   help="stop every run still going after this long (SIGTERM: each saves a checkpoint first)")
    t.add_argument("--jobs", type=int, default=1, help="variants trained at once (default 1)")
    t.add_argument("--threads", type=int, default=0, help="OMP threads per job (default: torch's choice)")
    t.add_argument("--set", action="append", default=[], metavar="K=V", help="override for every variant")
    m = sub.add_parser("sample", help="sample every kept checkpoint (on the card), for scoring elsewhere")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--to", type=Path, required=True, help="folder for one <run>.pt.xz per run")
    m.add_argument("--samples", type=int, default=256)
    m.add_argument("--steps", type=int, default=20)
    m.add_argument("--device", default=None)
    m.add_argument("--only", default="", help="comma-separated run names (default: all)")
    c = sub.add_parser("score", help="score every kept checkpoint of every run")
    c.add_argument("--from", dest="from_dir", type=Path, default=None,
                   help="score the samples `sample` wrote there instead of sampling here")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--samples", type=int, default=256, help="samples per checkpoint (default 256)")
    c.add_argument("--steps", type=int, default=20, help="dpmpp_2m steps (default 20)")
    c.add_argument("--device", default=None)
    c.add_argument("--only", default="", help="comma-separated run names (default: all)")
    e = sub.add_parser("posthoc", help="score post-hoc EMA lengths of each run's last checkpoint as `score` "
                                       "scores checkpoints (runs trained with ema.posthoc_stds)")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--std", required=True, help="comma-separated relative EMA lengths, e.g. 0.05,0.2")
    e.add_argument("--samples", type=int, default=256)
    e.add_argument("--steps", type=int, default=20, help="dpmpp_2m steps (default 20)")
    e.add_argument("--only", default="", help="comma-separated run names (default: all)")
    g = sub.add_parser("guide", help="autoguidance at length: a checkpoint guided by a worse one (Karras et al. "
                                     "2024, D = D_bad + w (D_good - D_bad)), sampled and scored as `score` does")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--good", type=Path, required=True, help="checkpoint folder of the model to sample")
    g.add_argument("--bad", type=Path, required=True, help="checkpoint folder of the guiding (worse) model: an "
                                                           "earlier checkpoint, or a smaller network's")
    g.add_argument("--w", default="1,1.25,1.5", help="comma-separated guidance weights (1 = no guidance)")
    g.add_argument("--samples", type=int, default=256)
    g.add_argument("--steps", type=int, default=20, help="dpmpp_2m steps (default 20)")
    q = sub.add_parser("samplers", help="one checkpoint under several samplers and step counts")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder of the model to sample")
    q.add_argument("--samplers", default="dpmpp_2m:20,ddpm:50,ddpm:100",
                   help="comma-separated SAMPLER:STEPS[:SPACING[:ETA[:SIGMA_MIN]]] (spacing default uniform, "
                        "eta 0 or dpmpp_2m_sde's 1, sigma_min 0; default dpmpp_2m:20,ddpm:50,ddpm:100)")
    q.add_argument("--samples", type=int, default=256)
    f = sub.add_parser("floor", help="what the split's images themselves score: the training images (a perfect "
                                     "copier) and half the held-out images against the other half")
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--size", type=int, default=32, help="image size scored at (default 32)")
    return p


# ----------------------------------------------------------------- split
def ranked(paths: list[Path], salt: str) -> list[Path]:
    return sorted(paths, key=lambda p: hashlib.sha256(f"{salt}:{p.name}".encode()).hexdigest())


def split(args) -> dict:
    import torch

    from xurdif.evaluate import list_images, load_images, robust_memorisation

    paths = ranked(list_images(args.data), "long-run")
    heldout, rest = paths[:args.heldout], paths[args.heldout:]
    train = sorted(rest[:args.train])
    a = load_images(heldout, args.size)
    # Against the whole remainder, not only the training part: the split must hold for
    # every training subset of it that a later study takes.
    b = load_images(rest, args.size)
    memo, _ = robust_memorisation(a, b)
    dropped = [(heldout[i].name, rest[int(memo.nearest[i])].name, round(float(memo.ratio[i]), 3))
               for i in torch.nonzero(memo.memorised).flatten().tolist()]
    kept = sorted(p for i, p in enumerate(heldout) if not memo.memorised[i])
    for name, files in (("train", train), ("heldout", kept)):
        folder = args.out / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for f in files:
            shutil.copy(f, folder / f.name)
    info = {"data": str(args.data), "train": len(train), "heldout": len(kept),
            "heldout_dropped_as_near_duplicates": dropped}
    (args.out / "split.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{len(train)} training images in {args.out / 'train'}, {len(kept)} held out in {args.out / 'heldout'} "
          f"({len(dropped)} held-out images left out: near-duplicates of the rest, e.g. "
          f"{', '.join(f'{d[0]} ~ {d[1]}' for d in dropped[:3])})")
    return info


# ----------------------------------------------------------------- train
def parse_variant(text: str, default_recipe: str) -> tuple[str, str, list[str]]:
    head, _, rest = text.partition("=")
    name, _, recipe = head.partition("@")
    if not name:
        raise SystemExit(f"--variant {text!r}: expected NAME[@RECIPE]=K=V[;K=V...]")
    return name, str(ROOT / recipe) if recipe else default_recipe, [o for o in rest.split(";") if o]


def train_overrides(args, name: str, recipe: str, overrides: list[str]) -> list[str]:
    from xurdif.recipe import load_recipe

    if (args.minutes is None) == (args.images is None):
        raise SystemExit("train: give --minutes or --images")
    length = ([f"train.images={args.images}", "train.time=null"] if args.images
              else ["train.images=null", f"train.time={args.minutes * 60:g}s"])
    # the variant's own images per optimizer step (one process): the recipe's batch of 4 would keep a
    # third of the checkpoints at batch 16
    t = load_recipe(recipe, [*args.set, *overrides]).train
    steps = args.steps_hint or (args.images // (t.batch_size * t.grad_accum) if args.images else 100_000)
    every = max(100, steps // args.checkpoints)
    # --no-eval: no end-of-run sampler choice either (it scores with the same Inception network)
    off = ["eval.time_share=0", "eval.holdout=0", "eval.holdout_path=", "sampling.choose=false"]
    on = ["eval.holdout=0", f"eval.holdout_path={args.out / 'heldout'}", "eval.time_share=0.03"]
    evaluation = off if args.no_eval else on
    # A study wants the curve past the first copies, where the recipes stop (eval.stop_on_memorised).
    return [f"data.path={args.out / 'train'}", f"data.size={args.size}", "train.steps=null", *length,
            *evaluation, "eval.kid_every_steps=0", "eval.stop_on_memorised=false",
            f"checkpoint.every_steps={every}", f"checkpoint.keep_every={every}", "checkpoint.keep_last=1",
            f"samples.every_steps={every}", f"train.output_dir={args.out / 'runs' / name}", f"name=long-{name}",
            *args.set, *overrides]


def train(args) -> None:
    import signal

    variants = [parse_variant(v, args.recipe) for v in args.variant] or [("small-data", args.recipe, [])]
    procs = []
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    pending = list(variants)
    began = time.perf_counter()
    stopping = False
    while pending or procs:
        if args.max_minutes and not stopping and time.perf_counter() - began > args.max_minutes * 60:
            stopping, pending = True, []
            for name, proc, _ in procs:
                print(f"[{name}] --max-minutes reached: stopping (it saves a checkpoint first)", flush=True)
                proc.send_signal(signal.SIGTERM)
        while pending and len(procs) < args.jobs:
            name, recipe, overrides = pending.pop(0)
            cmd = [sys.executable, str(ROOT / "launch.py"), recipe, *train_overrides(args, name, recipe, overrides)]
            log = args.out / f"{name}-train.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
            procs.append((name, subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                                 cwd=ROOT, env=env), time.perf_counter()))
        time.sleep(5)
        for entry in list(procs):
            name, proc, started = entry
            if proc.poll() is not None:
                procs.remove(entry)
                print(f"[{name}] exit {proc.returncode} after {time.perf_counter() - started:.0f} s", flush=True)


# ----------------------------------------------------------------- score
def kept_checkpoints(run: Path) -> list[Path]:
    from xurdif.train.checkpoint import list_checkpoints

    return list_checkpoints(run)


def load_ema(ckpt: Path, device):
    from safetensors.torch import load_file

    from xurdif.diffusion.denoiser import Denoiser
    from xurdif.diffusion.schedule import make_schedule
    from xurdif.recipe import recipe_from_yaml
    from xurdif.train.network import build_for_recipe

    state = json.loads((ckpt / "state.json").read_text())
    recipe = recipe_from_yaml(state["recipe"], str(ckpt / "state.json"))
    net, meta = build_for_recipe(recipe)
    net.load_state_dict(load_file(ckpt / "ema.safetensors"))
    net = net.to(device).eval()
    den = Denoiser(net, make_schedule(meta.schedule, meta.timesteps), meta.prediction, meta.value_range)
    return den, meta, state


def draw(den, meta, count: int, steps: int, device, sampler: str = "dpmpp_2m", **options):
    """`count` samples in [0, 1] from the study's fixed seed; `options`: sample()'s spacing, curve,
    eta, sigma_min."""
    import torch

    from xurdif.diffusion.samplers import sample

    h, w = meta.image_size
    g = torch.Generator().manual_seed(12345)
    with torch.no_grad():
        return torch.cat([den.to_image(sample(den, (b.numel(), 3, h, w), sampler, steps, generator=g,
                                              device=device, **options)).float().cpu()
                          for b in torch.arange(count).split(64)])


def sampled_checkpoints(run: Path, count: int, steps: int, device, skip: frozenset = frozenset()):
    """(checkpoint name, its state.json, uint8 samples [N, 3, H, W]) of each kept checkpoint
    not named in `skip`."""
    for ckpt in kept_checkpoints(run):
        if ckpt.name in skip:
            continue
        den, meta, state = load_ema(ckpt, device)
        fake = draw(den, meta, count, steps, device)
        yield ckpt.name, {k: v for k, v in state.items() if k != "recipe"}, (fake * 255).round().byte()


def sample_runs(args) -> None:
    """`sample`: the samples of every kept checkpoint of each run, in one xz-compressed file per run."""
    import io
    import lzma

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.to.mkdir(parents=True, exist_ok=True)
    for run in study_runs(args):
        entries = list(sampled_checkpoints(run, args.samples, args.steps, device))
        buf = io.BytesIO()
        torch.save({"run": run.name, "recipe": (run / "recipe.yaml").read_text(), "checkpoints": entries}, buf)
        path = args.to / f"{run.name}.pt.xz"
        path.write_bytes(lzma.compress(buf.getvalue(), preset=6))
        print(f"[{run.name}] {len(entries)} checkpoints x {args.samples} samples -> {path} "
              f"({path.stat().st_size / 1e6:.1f} MB)", flush=True)


def stored_samples(path: Path):
    import io
    import lzma

    import torch

    data = torch.load(io.BytesIO(lzma.decompress(path.read_bytes())), weights_only=False)
    yield from data["checkpoints"]


def study_runs(args) -> list[Path]:
    runs = sorted(p for p in (args.out / "runs").iterdir() if (p / "recipe.yaml").is_file())
    return [r for r in runs if not args.only or r.name in args.only.split(",")]


def score(args) -> None:
    import torch
    from torchvision.utils import make_grid, save_image

    from xurdif.evaluate import InceptionFeatures, kid, load_folder, memorisation_picture
    from xurdif.evaluate.cache import image_features
    from xurdif.evaluate.memorisation import copy_verdict

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.from_dir:
        runs = [(p.name.removesuffix(".pt.xz"), stored_samples(p)) for p in sorted(args.from_dir.glob("*.pt.xz"))
                if not args.only or p.name.removesuffix(".pt.xz") in args.only.split(",")]
    else:
        runs = [(r.name, sampled_checkpoints(r, args.samples, args.steps, device, frozenset(scored(args, r.name))))
                for r in study_runs(args)]
    extractor = InceptionFeatures(device=device)
    cache: dict[int, tuple] = {}
    for name, checkpoints in runs:
        run = args.out / "runs" / name
        rows, count = list(scored(args, name).values()), args.samples
        for ckpt_name, state, fake in checkpoints:
            if any(r["checkpoint"] == ckpt_name for r in rows):
                continue
            count = int(fake.shape[0])
            size = fake.shape[-1]
            if size not in cache:
                train, held = load_folder(args.out / "train", size), load_folder(args.out / "heldout", size)
                cache[size] = (train, held, image_features(train, extractor, "training")[0],
                               image_features(held, extractor, "held-out")[0])
            train, held, train_f, held_f = cache[size]
            feats = extractor(fake)
            memo, refs, robust, plain = copy_verdict(fake, train)
            row = {"step": state["step"], "images_seen": state["images_seen"],
                   "kid_heldout": kid(held_f, feats)[0], "kid_train": kid(train_f, feats)[0],
                   "memorised": memo.fraction, "memorised_robust": robust.fraction,
                   "memorised_pixel": plain.fraction, "checkpoint": ckpt_name}
            rows.append(row)
            print(f"[{name}] {ckpt_name}: images {row['images_seen']:>9,}  KID held-out "
                  f"{row['kid_heldout'] * 1e3:7.2f}  KID train {row['kid_train'] * 1e3:7.2f}  memorised "
                  f"{row['memorised']:.1%} (robust {row['memorised_robust']:.1%}, "
                  f"pixel L2 {row['memorised_pixel']:.1%})", flush=True)
            save_image(make_grid(fake[:36].float() / 255, nrow=6, padding=1, pad_value=1.0),
                       args.out / f"{name}-{ckpt_name}.png")
            save_image(memorisation_picture(fake, refs, memo, count=6).float() / 255,
                       args.out / f"{name}-{ckpt_name}-closest.png")
        rows.sort(key=lambda r: r["images_seen"])
        best = best_step(run)
        report = {"run": name, "samples": count, "steps": args.steps, "rows": rows,
                  "keep_best_step": best, "keep_best_offline": offline_best(rows),
                  "in_training": in_training(run)}
        (args.out / f"{name}-score.json").write_text(json.dumps(report, indent=1) + "\n")
        write_curves(args.out / f"{name}-curves.svg", name, rows, best)


def scored(args, name: str) -> dict[str, dict]:
    """Rows an earlier `score` wrote with the same samples and steps, by checkpoint: a rerun
    (after the run kept more checkpoints) scores only the new ones."""
    path = args.out / f"{name}-score.json"
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    if (old.get("samples"), old.get("steps")) != (args.samples, args.steps):
        return {}
    return {r["checkpoint"]: r for r in old["rows"]}


def best_step(run: Path) -> int | None:
    """The step of the model keep-best kept in training (None: no in-training evaluation ran)."""
    from xurdif.weights import read_meta

    path = run / "model-best.safetensors"
    return read_meta(path).extra["best"]["step"] if path.is_file() else None


def offline_best(rows: list[dict], memorised_max: float = 0.05) -> dict:
    """Which checkpoint each keep-best rule would keep, judged on these scores: the lowest KID
    against the held-out images, or against the training images, below memorised_max."""
    fine = [r for r in rows if r["memorised"] < memorised_max]
    pick = {rule: min(fine, key=lambda r: r[rule])["step"] if fine else None for rule in ("kid_heldout", "kid_train")}
    return {"memorised_max": memorised_max, "by_heldout_kid": pick["kid_heldout"], "by_train_kid": pick["kid_train"]}


def in_training(run: Path) -> dict:
    """The evaluations the trainer made, from its TensorBoard log."""
    from xurdif.report.data import read_scalars

    if not (run / "tb").is_dir():
        return {}
    scalars = read_scalars(run / "tb")
    return {tag: sorted(values.items()) for tag, values in scalars.items() if tag.startswith("eval/")}


def write_curves(path: Path, name: str, rows: list[dict], best: int | None) -> None:
    from xurdif.report.svg import line_plot

    x = [r["images_seen"] for r in rows]
    kid_plot = line_plot(f"{name}: KID x1e3 against images seen (keep-best kept step {best})",
                         [("held-out", list(zip(x, [r["kid_heldout"] * 1e3 for r in rows]))),
                          ("training images", list(zip(x, [r["kid_train"] * 1e3 for r in rows])))], f"{name}-kid")
    memo_plot = line_plot(f"{name}: memorised % against images seen",
                          [("either test (the verdict)", list(zip(x, [r["memorised"] * 100 for r in rows]))),
                           ("shift/flip/colour aware", list(zip(x, [r["memorised_robust"] * 100 for r in rows]))),
                           ("plain pixel L2", list(zip(x, [r["memorised_pixel"] * 100 for r in rows])))],
                          f"{name}-memo")
    path.write_text(f"<div>{kid_plot}{memo_plot}</div>\n")


def heldout_scorer(out: Path, size: int):
    """A function: uint8 samples -> (KID x1e3 against the study's held-out images, share of copies
    of its training images), at `size` px."""
    from xurdif.evaluate import InceptionFeatures, kid, load_folder
    from xurdif.evaluate.cache import image_features
    from xurdif.evaluate.memorisation import copy_verdict

    extractor = InceptionFeatures(device="cpu")
    train, held = load_folder(out / "train", size), load_folder(out / "heldout", size)
    held_f = image_features(held, extractor, "held-out")[0]
    return lambda fake: (kid(held_f, extractor(fake))[0] * 1e3, copy_verdict(fake, train)[0].fraction)


def posthoc(args) -> None:
    """`posthoc`: each --std rebuilt at the last checkpoint (xurdif/train/posthoc.py), sampled with
    the same sampler and seeds as `score`, KID against the held-out images and copies."""
    from xurdif.train.posthoc import reconstruct

    for run in study_runs(args):
        den, meta, _ = load_ema(kept_checkpoints(run)[-1], "cpu")
        score = heldout_scorer(args.out, meta.image_size[0])
        for std in (float(s) for s in args.std.split(",")):
            weights, info = reconstruct(run, std)
            den.net.load_state_dict(weights)
            kid, memorised = score((draw(den, meta, args.samples, args.steps, "cpu") * 255).round().byte())
            print(f"[{run.name}] EMA std {std:.3f} at {info['images_seen']:,} images: KID held-out "
                  f"{kid:7.2f}  memorised {memorised:.1%}", flush=True)


class Autoguided:
    """D = D_bad + w (D_good - D_bad) on unclipped estimates, clipped once as Denoiser clips."""

    def __init__(self, good, bad, w: float):
        from dataclasses import replace

        # Unclipped copies (the same networks): the caller's denoisers stay as they were.
        self.good, self.bad, self.w = replace(good, clip=False), replace(bad, clip=False), w
        self.schedule, self.value_range = good.schedule, good.value_range

    def __call__(self, x, t):
        d = self.good(x, t)
        if self.w != 1:
            b = self.bad(x, t)
            d = b + self.w * (d - b)
        return d.clamp(*self.value_range)

    def to_image(self, x):
        return self.good.to_image(x)


def guide(args) -> None:
    """`guide`: --good sampled with autoguidance by --bad at each weight (same sampler and seeds as
    `score`), KID against the held-out images and copies."""
    good, meta, state = load_ema(args.good, "cpu")
    bad, bad_meta, _ = load_ema(args.bad, "cpu")
    if bad_meta.image_size != meta.image_size:
        raise SystemExit(f"{args.bad}: {bad_meta.image_size} px, but {args.good} is {meta.image_size} px")
    score = heldout_scorer(args.out, meta.image_size[0])
    for w in (float(v) for v in args.w.split(",")):
        fake = (draw(Autoguided(good, bad, w), meta, args.samples, args.steps, "cpu") * 255).round().byte()
        kid, memorised = score(fake)
        print(f"{args.good} ({state['images_seen']:,} images) guided by {args.bad}, w {w:g}: KID held-out "
              f"{kid:7.2f}  memorised {memorised:.1%}", flush=True)


def sampler_specs(text: str) -> list:
    """--samplers' SAMPLER:STEPS[:SPACING[:ETA[:SIGMA_MIN]]] entries as checked Sampling settings,
    each read as a render job naming those would be (the export chooser's candidates are all of
    this form); SystemExit naming a bad entry."""
    from xurdif.sampling.defaults import LEGACY, resolve

    specs = []
    for entry in text.split(","):
        parts = entry.split(":")
        try:
            if not 2 <= len(parts) <= 5:
                raise ValueError("expected 2 to 5 fields")
            sampler, steps, spacing, eta, end = parts + [""] * (5 - len(parts))
            specs.append(resolve(LEGACY, sampler, int(steps), spacing or "uniform", float(eta) if eta else None,
                                 float(end) if end else None).check())
        except ValueError as e:
            raise SystemExit(f"--samplers: {entry!r} is not SAMPLER:STEPS[:SPACING[:ETA[:SIGMA_MIN]]] ({e})")
    return specs


def samplers(args) -> None:
    """`samplers`: one kept checkpoint sampled with each setting (the same seeds as `score`), KID
    against the held-out images and copies: what rendering can add to a trained model."""
    specs = sampler_specs(args.samplers)
    den, meta, state = load_ema(args.checkpoint, "cpu")
    score = heldout_scorer(args.out, meta.image_size[0])
    for st in specs:
        kid, memorised = score((draw(den, meta, args.samples, device="cpu", **st.sample_args()) * 255).round().byte())
        print(f"{args.checkpoint} ({state['images_seen']:,} images), {st.describe()}: KID held-out "
              f"{kid:7.2f}  memorised {memorised:.1%}", flush=True)


def floor(args) -> None:
    """`floor`: KID against the held-out images of the training images themselves (all of them,
    and 256 draws with repeats, as a copier samples), and of half the held-out images against
    the other half (new images of the same kind): the level a copy-free model can aim at."""
    import torch

    from xurdif.evaluate import InceptionFeatures, kid, load_folder

    extractor = InceptionFeatures(device="cpu")
    train_f = extractor(load_folder(args.out / "train", args.size))
    held_f = extractor(load_folder(args.out / "heldout", args.size))
    g = torch.Generator().manual_seed(0)
    half = torch.randperm(held_f.shape[0], generator=g)
    a, b = half[:held_f.shape[0] // 2], half[held_f.shape[0] // 2:]
    draws = torch.randint(0, train_f.shape[0], (256,), generator=g)
    for name, ref, feats in (("the training images (a perfect copier)", held_f, train_f),
                             ("256 draws of them with repeats", held_f, train_f[draws]),
                             ("half the held-out images against the other half", held_f[a], held_f[b])):
        mean, std = kid(ref, feats)
        print(f"{name}: KID {mean * 1e3:.1f} ± {std * 1e3:.1f} x1e3", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    {"split": split, "train": train, "sample": sample_runs, "score": score, "posthoc": posthoc, "samplers": samplers,
     "guide": guide, "floor": floor}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
