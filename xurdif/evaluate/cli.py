"""`tools/evaluate.py`: score a folder of samples against the training images."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_write
from ..cli_args import int_in
from ..diffusion.samplers import SAMPLERS
from ..seeds import derive_seed
from .cache import folder_features
from .images import EvaluateError, list_images, load_samples
from .inception import InceptionFeatures
from .memorisation import memorisation_picture, reference_rows
from .suite import MEMORISATION_SPACE, evaluate_images, format_table, memorisation_details


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/evaluate.py",
        description="Score generated images: FID and KID on Inception-v3 features, ProGAN's "
                    "multi-scale sliced Wasserstein distance (x1e3, per pyramid level and mean) "
                    "against held-out images (--heldout) or else the training images, and "
                    "memorisation against the training images (share of samples whose nearest "
                    "training image is closer than 1/3 of the second nearest, in "
                    f"{MEMORISATION_SPACE}; plain pixel L2 beside it). Prints a table and writes a "
                    "JSON report, which names each sample's nearest training image with the "
                    "distances and the verdict, and a PNG of the most memorised samples beside "
                    "their nearest training images.",
        epilog="Examples:\n  tools/evaluate.py --real data/emoji-smileys-64 --fake out/samples\n"
               "  tools/evaluate.py --real data/emoji-smileys-64 --model runs/demo --samples 500\n"
               "  tools/evaluate.py --real train/ --heldout heldout/ --fake out/samples\n\n"
               "Scores against the training images reward copies: a model that reproduces them\n"
               "scores as well as the data. Keep some images of the same kind out of training\n"
               "and pass them as --heldout.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", required=True, type=Path,
                        help="folder of training images (searched recursively; hidden folders skipped)")
    parser.add_argument("--heldout", type=Path, default=None,
                        help="folder of images of the same kind that were never trained on: FID, KID "
                             "and SWD are measured against these instead of --real")
    parser.add_argument("--fake", type=Path, default=None,
                        help="folder of generated images (with --model: where the samples are written)")
    parser.add_argument("--model", type=Path, default=None,
                        help="instead of --fake: a run folder or .safetensors model to sample from")
    parser.add_argument("--samples", type=int_in(2, 1_000_000), default=500, help="with --model: how many samples (default 500)")
    parser.add_argument("--sampler", default="auto", choices=["auto", *SAMPLERS],
                        help="with --model: sampler (default auto: the model's own, recorded in its file)")
    parser.add_argument("--steps", type=int_in(1, 1000), default=None,
                        help="with --model: network evaluations per image (default: the model's, or 50 "
                             "with a named sampler)")
    parser.add_argument("--json", type=Path, default=None,
                        help="report path (default: FAKE-eval.json next to the fake folder)")
    parser.add_argument("--picture", type=Path, default=None,
                        help="memorisation picture (default: the --json path with -memorisation.png)")
    parser.add_argument("--show", type=int_in(0, 1000), default=8,
                        help="samples in the memorisation picture, most memorised first (default 8)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the real folder's Inception features are cached, keyed by its "
                             "files' names, sizes and mtimes (default: ~/.cache/xurdif/features)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--batch-size", type=int_in(1, 4096), default=32, help="Inception batch size (default 32)")
    parser.add_argument("--kid-subsets", type=int_in(1, 100_000), default=100, help="KID subsets (default 100)")
    parser.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0, help="seed of KID subsets and SWD projections")
    return parser


def default_json_path(fake: Path) -> Path:
    fake = fake.resolve()
    return fake.parent / f"{fake.name}-eval.json"


def render_samples(model: Path, out: Path, count: int, sampler: str, steps: int | None, device) -> None:
    """Sample `count` images into `out` (image i from seed i); finished ones are kept,
    so an interrupted evaluation resumes. Sampler "auto": the model's default."""
    import torch
    from torchvision.utils import save_image
    from tqdm import tqdm

    from ..diffusion.samplers import sample
    from ..sampling.defaults import resolve
    from ..weights import load_denoiser

    out.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(count) if not (out / f"{i:05d}.png").exists()]
    if not todo:
        return
    den, meta = load_denoiser(model, "ema", device or "cpu")
    h, w = meta.image_size
    st = resolve(meta.default_sampling(), sampler, steps)
    for chunk in tqdm([todo[i:i + 16] for i in range(0, len(todo), 16)], desc="sampling", unit="batch"):
        gens = [torch.Generator().manual_seed(derive_seed("evaluate-sample", i)) for i in chunk]
        x0 = sample(den, (len(chunk), 3, h, w), generator=gens, device=device or "cpu", **st.sample_args())
        for i, img in zip(chunk, den.to_image(x0.float()).cpu()):
            with atomic_write(out / f"{i:05d}.png") as f:  # a kill never leaves a torn sample
                save_image(img, f, format="png")


def sample_verdicts(report: dict, fake_files: list[str], real_files: list[str]) -> list[dict]:
    """One entry per sample, naming its nearest training files: the user's list of copies."""
    m = report["memorisation"]
    n_train = len(real_files)
    return [{"file": name, "copy": ratio < m["threshold"], "nearest": real_files[nearest],
             "mirrored": row >= n_train, "second": real_files[second], "ratio": ratio, "distance": distance,
             "robust_ratio": robust, "pixel_l2_ratio": pixel}
            for name, ratio, nearest, row, second, distance, robust, pixel in zip(
                fake_files, m["ratio"], m["nearest"], m["nearest_row"], m["second"], m["distance"],
                m["robust"]["ratio"], m["pixel_l2"]["ratio"])]


def run(args: argparse.Namespace) -> dict:
    if args.model is None and args.fake is None:
        raise EvaluateError("give --fake FOLDER or --model MODEL (with --samples N)")
    if args.model is not None:
        if not args.model.exists():
            raise EvaluateError(f"{args.model}: model not found (give a run folder or a .safetensors file)")
        args.fake = args.fake or args.model.with_name(f"{args.model.stem}-samples-{args.samples}")
        render_samples(args.model, args.fake, args.samples, args.sampler, args.steps, args.device)
    real_paths, fake_paths = list_images(args.real), list_images(args.fake)
    fake, fake_paths = load_samples(fake_paths)  # odd-sized files are left out with a warning
    view = (int(fake.shape[-2]), int(fake.shape[-1]))
    train, real_paths = load_samples(real_paths, view)  # as training saw them, at the samples' size
    reference, reference_paths = train, real_paths
    if args.heldout is not None:
        reference, reference_paths = load_samples(list_images(args.heldout), view)
    extractor = InceptionFeatures(device=args.device, batch_size=args.batch_size, progress=True)
    if args.no_cache:
        real_features, cache_file, hit = None, None, False
    else:
        real_features, cache_file, hit = folder_features(args.heldout or args.real, extractor, args.cache_dir,
                                                         reference, view)
    report = evaluate_images(reference, fake, extractor=extractor, real_features=real_features,
                             kid_subsets=args.kid_subsets, seed=args.seed, train_images=train)
    json_path = args.json or default_json_path(args.fake)
    picture_path = args.picture or json_path.with_name(json_path.stem + "-memorisation.png")
    fake_files = [p.relative_to(args.fake).as_posix() for p in fake_paths]
    real_files = [p.relative_to(args.real).as_posix() for p in real_paths]
    report = {
        "real": str(args.real), "heldout": str(args.heldout) if args.heldout else None, "fake": str(args.fake),
        "scored_against": "heldout" if args.heldout else "training images",
        "fake_files": fake_files, "real_files": real_files,
        "heldout_files": ([p.relative_to(args.heldout).as_posix() for p in reference_paths]
                          if args.heldout else None),
        "feature_cache": str(cache_file) if cache_file else None, "feature_cache_hit": hit,
        "picture": str(picture_path), **report,
    }
    report["samples"] = sample_verdicts(report, fake_files, real_files)
    rows = memorisation_picture(fake, reference_rows(train), memorisation_details(report), count=args.show)
    picture = np.ascontiguousarray(rows.permute(1, 2, 0).numpy())
    picture_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(picture_path)
    with atomic_write(json_path) as f:
        f.write((json.dumps(report, indent=1) + "\n").encode())
    print(format_table(report))
    copies = [f"{v['file']} ~ {v['nearest']}" for v in report["samples"] if v["copy"]]
    if copies:
        print(f"copies ({len(copies)}): " + ", ".join(copies[:10]) + (" ..." if len(copies) > 10 else ""))
    print(f"report: {json_path}\nmemorisation picture: {picture_path}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..weights import ModelFileError

    try:
        run(args)
    except (EvaluateError, ModelFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
