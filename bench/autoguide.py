"""Autoguidance with a run's own earlier weights: does it lower KID? (docs/quality.md, round 6)

Autoguidance (Karras et al. 2024) guides a model with a worse version of itself,
D = D_bad + w (D_good - D_bad). The free "worse version" of a run is its EMA at an earlier
checkpoint (train with checkpoint.keep_every so that one is kept). Samples the run's
model.safetensors guided by checkpoints/step-N/ema.safetensors for each weight w, with
bench/quality.py's seeds, and scores them as bench/quality.py does; w = 1 is no guidance.
Not a product feature: it did not pay (round 6).

    .venv/bin/python bench/autoguide.py runs/ag/sd10/sd10 --bad-step 1000 --w 1 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/autoguide.py", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run folder with model.safetensors and kept checkpoints")
    bad = p.add_mutually_exclusive_group(required=True)
    bad.add_argument("--bad-step", type=int, help="checkpoint step of this run whose EMA is the bad model")
    bad.add_argument("--bad-model", type=Path, help="or another run folder or model file (same network)")
    p.add_argument("--w", type=float, nargs="+", default=[2.0], help="guidance weights (default 2; 1 = none)")
    p.add_argument("--samples", type=int, default=250)
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)

    import torch
    from safetensors.torch import load_file

    import quality as Q
    from long_run import Autoguided
    from xurdif.diffusion.denoiser import Denoiser
    from xurdif.diffusion.samplers import sample
    from xurdif.diffusion.schedule import make_schedule
    from xurdif.evaluate import InceptionFeatures, evaluate_images
    from xurdif.seeds import derive_seed
    from xurdif.weights import load_network, resolve_model_path

    torch.set_num_threads(1)
    good, meta = load_network(args.run / "model.safetensors", "ema")
    if args.bad_model:
        bad_path = resolve_model_path(args.bad_model)
        bad, _ = load_network(bad_path, "ema")
        label = bad_path.parent.name if bad_path.name == "model.safetensors" else bad_path.stem
    else:
        bad_file = args.run / "checkpoints" / f"step-{args.bad_step:07d}" / "ema.safetensors"
        if not bad_file.is_file():
            raise SystemExit(f"{bad_file}: not found (keep checkpoints with checkpoint.keep_every)")
        bad, _ = load_network(args.run / "model.safetensors", "ema")
        bad.load_state_dict(load_file(bad_file))
        label = f"step{args.bad_step}"
    sched = make_schedule(meta.schedule, meta.timesteps)
    d_good = Denoiser(good, sched, meta.prediction, meta.value_range)
    d_bad = Denoiser(bad, sched, meta.prediction, meta.value_range)

    extractor = InceptionFeatures(device="cpu")
    real, feats = Q.real_images_and_features(argparse.Namespace(data=Q.DEFAULT_DATA, size=meta.image_size[0]),
                                             extractor)
    size = meta.image_size
    for w in args.w:
        out, started = [], time.perf_counter()
        with torch.no_grad():
            for i, first in enumerate(range(0, args.samples, 100)):
                g = torch.Generator().manual_seed(derive_seed(0, "quality-sample", i))
                n = min(100, args.samples - first)
                x = sample(Autoguided(d_good, d_bad, w), (n, 3, *size), sampler=args.sampler, steps=args.steps,
                           generator=g)
                out.append(d_good.to_image(x))
        fake = torch.cat(out)
        tag = f"autoguide-{label}-w{w:g}-{args.sampler}{args.steps}"
        Q.save_grid(fake, args.run.parent / f"{tag}.png")
        rep = evaluate_images(real, fake, extractor=extractor, real_features=feats, kid_subsets=100, seed=0)
        row = {"tag": tag, "fid": rep["fid"], "kid_x1e3": rep["kid"]["mean"] * 1e3,
               "kid_std_x1e3": rep["kid"]["std"] * 1e3, "swd_x1e3": rep["swd_x1e3"]["mean"],
               "memorised": rep["memorisation"]["count"], "sample_seconds": round(time.perf_counter() - started, 1)}
        print(json.dumps(row), flush=True)
        with open(args.run.parent / "autoguide.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
