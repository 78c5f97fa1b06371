"""Sampler quality against network evaluations: which solver and step spacing give
fifty-step quality in ten (issue 29; results in docs/benchmarks.md, "Samplers").

For each model, every solver renders the same --samples seeds at each number of
network evaluations; KID is scored against held-out images of the same kind
(--reference) and seconds per image are timed. It also fits a schedule to each
model (xurdif/sampling/fit.py, at 10 evaluations) and runs dpmpp_2m on it, and
reports what sampling.choose would record (the lowest KID among
xurdif/sampling/choose.py's candidates at 10 evaluations) against the best of
every solver at 50.

Models come from bench/quality.py (train them there, e.g. 30 CPU minutes each):

  .venv/bin/python bench/long_run.py split --out runs/samplers --train 700 --heldout 204
  .venv/bin/python bench/quality.py --grid --recipe recipes/small-data.yaml --data runs/samplers/train \\
      --size 32 --minutes 30 --samples 16 --no-score --jobs 3 --out runs/samplers/models --only base \\
      --variant "eps=diffusion.prediction=eps;loss.l2=1;loss.edge_l1=0;loss.ssim=0" \\
      --variant "v=diffusion.prediction=v;loss.l2=1;loss.edge_l1=0;loss.ssim=0;loss.min_snr_gamma=5"
  .venv/bin/python bench/sampler_quality.py --model x0=runs/samplers/models/base \\
      --model eps=runs/samplers/models/eps --model v=runs/samplers/models/v \\
      --reference runs/samplers/heldout --out runs/samplers

Results accumulate in OUT/sampler-quality.json: a rerun skips what is measured.
One training seed per model; KID differences under ~5 % are within its noise.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOLVERS = ("ddpm/uniform", "ddim/uniform", "ddim/karras", "dpmpp_2m/uniform", "dpmpp_2m/karras",
           "dpmpp_2m/logsnr", "dpmpp_2m/fitted", "dpmpp_3m/logsnr", "dpmpp_3m/karras", "edm/karras",
           "edm/karras/0.5", "dpmpp_2m_sde/uniform", "dpmpp_2m_sde/karras", "dpmpp_2m_sde/logsnr",
           "dpmpp_3m/logsnr@0.05", "dpmpp_3m/karras@0.1")
EVALS = (5, 8, 10, 15, 20, 50, 100)
SVG_STYLE = ("<style>text{font:10px sans-serif;fill:#444}.title{font-size:12px;fill:#222}"
             ".frame{fill:none;stroke:#bbb}.grid{stroke:#eee}</style>")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/sampler_quality.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                   help="a model to measure: NAME=run folder or .safetensors (repeatable)")
    p.add_argument("--reference", type=Path, required=True, help="held-out images of the same kind")
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON, tables and plots")
    p.add_argument("--samples", type=int, default=250, help="images per solver and step count (default 250)")
    p.add_argument("--evals", default=",".join(map(str, EVALS)),
                   help=f"network evaluations per image (default {','.join(map(str, EVALS))})")
    p.add_argument("--solvers", default=",".join(SOLVERS),
                   help="sampler/spacing[/eta][@sigma_min] list (default: all of " + ", ".join(SOLVERS) + ")")
    p.add_argument("--seed", type=int, default=0, help="noise and KID seed (default 0)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--device", default="cpu")
    return p


def parse_solver(text: str):
    from xurdif.diffusion.samplers import default_eta
    from xurdif.sampling.defaults import Sampling

    text, _, end = text.partition("@")
    sampler, spacing, *eta = text.split("/")
    return Sampling(sampler, 1, spacing, float(eta[0]) if eta else default_eta(sampler), sigma_min=float(end or 0))


def measure_model(name: str, path: Path, args, reference, extractor, results: dict, save) -> None:
    import dataclasses

    from xurdif.evaluate import kid
    from xurdif.sampling.choose import draw
    from xurdif.sampling.fit import fit_curve
    from xurdif.weights import load_denoiser, resolve_model_path

    den, meta = load_denoiser(resolve_model_path(path), "ema", args.device)
    size = tuple(meta.image_size)
    done = results.setdefault(name, {"model": str(path), "prediction": meta.prediction, "rows": []})
    if "fit" not in done:
        started = time.perf_counter()
        curve, report = fit_curve(den, size, 10, seed=args.seed, device=args.device)
        done["fit"] = {**report, "curve": curve, "seconds": round(time.perf_counter() - started, 1)}
        save()
    have = {(r["solver"], r["evals"]) for r in done["rows"]}
    for solver in args.solvers.split(","):
        for n in [int(e) for e in args.evals.split(",")]:
            if (solver, n) in have:
                continue
            st = dataclasses.replace(parse_solver(solver), steps=n,
                                     curve=tuple(done["fit"]["curve"]) if solver.endswith("/fitted") else ())
            images, per_image = draw(den, st, args.samples, size, args.seed, args.device)
            mean, std = kid(reference, extractor(images), seed=args.seed)
            done["rows"].append({"solver": solver, "evals": n, "kid_x1e3": round(mean * 1e3, 2),
                                 "kid_std_x1e3": round(std * 1e3, 2), "seconds_per_image": round(per_image, 5)})
            print(f"{name} {solver:18s} {n:4d} evals  KID x1e3 {mean * 1e3:7.2f} ± {std * 1e3:5.2f}  "
                  f"{per_image * 1e3:6.1f} ms/image", flush=True)
            save()


def summary(name: str, done: dict) -> dict:
    from xurdif.diffusion.samplers import default_eta
    from xurdif.sampling.choose import CANDIDATES

    rows = done["rows"]
    at = lambda n: [r for r in rows if r["evals"] == n]
    # Named as parse_solver reads them: an eta only where it is not the sampler's own.
    names = {f"{s}/{sp}" + (f"/{e:g}" if e != default_eta(s) else "") + (f"@{end:g}" if end else "")
             for s, sp, e, end in CANDIDATES}
    best50 = min(at(50), key=lambda r: r["kid_x1e3"])
    chosen = min((r for r in at(10) if r["solver"] in names), key=lambda r: r["kid_x1e3"])
    best10 = min(at(10), key=lambda r: r["kid_x1e3"])
    old = next(r for r in at(50) if r["solver"] == "ddim/uniform")
    return {"model": name, "best_at_50": best50, "chosen_at_10": chosen, "best_at_10": best10, "old_default": old,
            "ratio": round(chosen["kid_x1e3"] / best50["kid_x1e3"], 3)}


def tables(results: dict) -> str:
    out = []
    for name, done in results.items():
        evals = sorted({r["evals"] for r in done["rows"]})
        solvers = list(dict.fromkeys(r["solver"] for r in done["rows"]))
        kid = {(r["solver"], r["evals"]): r for r in done["rows"]}
        out.append(f"\n**{name}** ({done['prediction']} prediction), KID x1e3 against the held-out images:\n")
        out.append("| solver | " + " | ".join(f"{n} evals" for n in evals) + " | ms/image at 10 |")
        out.append("|---" * (len(evals) + 2) + "|")
        for s in solvers:
            cells = [f"{kid[(s, n)]['kid_x1e3']:.1f}" if (s, n) in kid else "" for n in evals]
            ms = f"{kid[(s, 10)]['seconds_per_image'] * 1e3:.1f}" if (s, 10) in kid else ""
            out.append(f"| {s} | " + " | ".join(cells) + f" | {ms} |")
        if all(any(r["evals"] == n for r in done["rows"]) for n in (10, 50)):
            sm = summary(name, done)
            out.append(f"\nsampling.choose at 10 evaluations picks {sm['chosen_at_10']['solver']}: "
                       f"{sm['chosen_at_10']['kid_x1e3']:.1f}, {sm['ratio']:.2f}x the best at 50 "
                       f"({sm['best_at_50']['solver']}, {sm['best_at_50']['kid_x1e3']:.1f}); the old default, "
                       f"ddim 50 uniform: {sm['old_default']['kid_x1e3']:.1f}.")
    return "\n".join(out)


def plot(results: dict, path: Path) -> None:
    from xurdif.report.svg import line_plot

    svgs = []
    for name, done in results.items():
        solvers = list(dict.fromkeys(r["solver"] for r in done["rows"]))
        lines = [(s, sorted((r["evals"], r["kid_x1e3"]) for r in done["rows"] if r["solver"] == s)) for s in solvers]
        svgs.append(line_plot(f"{name}: KID x1e3 (held-out) against network evaluations", lines, f"sq-{name}",
                              x_label="network evaluations per image (log scale)", log_x=True))
    # One standalone file: the plots side by side, styled without the report's page.
    w = 370 * len(svgs)
    body = "".join(f'<g transform="translate({370 * i},0)">{s}</g>' for i, s in enumerate(svgs))
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="200" viewBox="0 0 {w} 200">'
                    f'{SVG_STYLE}<rect width="{w}" height="200" fill="#fff"/>{body}</svg>\n')


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from xurdif.atomic import atomic_write
    from xurdif.evaluate import InceptionFeatures
    from xurdif.evaluate.cache import folder_features
    from xurdif.weights import read_meta, resolve_model_path

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "sampler-quality.json"
    results = json.loads(json_path.read_text()) if json_path.is_file() else {}

    def save() -> None:
        with atomic_write(json_path, "w") as f:
            json.dump(results, f, indent=1)

    extractor = InceptionFeatures(device=args.device)
    for spec in args.model:
        name, _, path = spec.partition("=")
        size = tuple(read_meta(resolve_model_path(path)).image_size)
        reference, _, _ = folder_features(args.reference, extractor, size=size)
        measure_model(name, Path(path), args, reference, extractor, results, save)
    text = tables(results)
    (args.out / "sampler-quality.md").write_text(text + "\n")
    plot(results, args.out / "sampler-quality.svg")
    print(text)
    print(f"\n{json_path}, {args.out / 'sampler-quality.md'}, {args.out / 'sampler-quality.svg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
