"""All metrics of one set of samples against the training images, as one report.

KID, FID and SWD compare with `real_images`; memorisation always with the
training images (`train_images`, default: the same).

`evaluate_images` takes tensors, so the CLI's folder mode and a later
`--model FILE --samples N` mode (images from the renderer) share it.
"""
from __future__ import annotations

import time

import torch

from .fid import fid
from .images import as_uint8, check_images
from .inception import InceptionFeatures
from .kid import kid
from .memorisation import THRESHOLD, Memorisation, copy_verdict
from .swd import swd

MEMORISATION_SPACE = ("either of two pixel spaces: brightness (HSV value) standardised per image, at most 64 px, "
                      "best of all shifts up to a tenth of the side and both horizontal orientations; or plain "
                      "RGB L2 at the training size, mirrored too")
PIXEL_SPACE = "plain L2 on RGB in [0, 1] at the training size, training images also flipped"


def evaluate_images(real_images: torch.Tensor, fake_images: torch.Tensor, *,
                    extractor: InceptionFeatures | None = None,
                    real_features: torch.Tensor | None = None,
                    fake_features: torch.Tensor | None = None,
                    kid_subsets: int = 100, seed: int = 0,
                    threshold: float = THRESHOLD,
                    train_images: torch.Tensor | None = None) -> dict:
    """FID, KID and SWD of fake_images against real_images; memorisation against
    train_images (default: real_images; pass them when real_images are held out).

    Images: float [0, 1] or uint8 [N, 3, H, W]. Pass precomputed Inception
    features (e.g. from the disk cache) to skip the network for that side.
    Returns a JSON-serialisable dict; `memorisation_details(report)` rebuilds
    the per-sample result for pictures.
    """
    check_images(real_images, "real images")
    check_images(fake_images, "fake images")
    # uint8 keeps 10k+ samples small in memory; the metrics quantise anyway.
    real_images, fake_images = as_uint8(real_images.cpu()), as_uint8(fake_images.cpu())
    if train_images is None:
        train_images = real_images
    check_images(train_images, "training images")
    train_images = as_uint8(train_images.cpu())
    extractor = extractor or InceptionFeatures()
    started = time.perf_counter()
    if real_features is None:
        real_features = extractor(real_images)
    if fake_features is None:
        fake_features = extractor(fake_images)
    kid_mean, kid_std = kid(real_features, fake_features, num_subsets=kid_subsets, seed=seed)
    swd_report = swd(real_images, fake_images, seed=seed)
    memo, _, robust, plain = copy_verdict(fake_images, train_images, threshold=threshold)
    return {
        "real_images": real_images.shape[0],
        "train_images": train_images.shape[0],
        "fake_images": fake_images.shape[0],
        "real_size": list(real_images.shape[-2:]),
        "fake_size": list(fake_images.shape[-2:]),
        "fid": fid(real_features, fake_features),
        "kid": {"mean": kid_mean, "std": kid_std, "subsets": kid_subsets},
        "swd_x1e3": {"levels": {str(res): v for res, v in swd_report["levels"].items()},
                     "mean": swd_report["mean"]},
        "memorisation": memorisation_report(memo, robust, plain, threshold),
        "seconds": time.perf_counter() - started,
    }


def memorisation_report(memo, robust, plain, threshold: float) -> dict:
    """The copy verdict as JSON, per sample, so a user can find the copies (and the
    picture can be drawn), with each test on its own beside it (plain L2 misses shifted copies)."""
    return {
        "fraction": memo.fraction,
        "count": int(memo.memorised.sum()),
        "threshold": threshold,
        "space": MEMORISATION_SPACE,
        "ratio": memo.ratio.tolist(),
        "nearest": memo.nearest.tolist(),
        "nearest_row": memo.nearest_row.tolist(),
        "second": memo.second.tolist(),
        "distance": memo.distance.tolist(),
        "pixel_l2": {"fraction": plain.fraction, "count": int(plain.memorised.sum()),
                     "space": PIXEL_SPACE, "ratio": plain.ratio.tolist()},
        "robust": {"fraction": robust.fraction, "count": int(robust.memorised.sum()),
                   "ratio": robust.ratio.tolist()},
    }


def memorisation_details(report: dict) -> Memorisation:
    m = report["memorisation"]
    ratio = torch.tensor(m["ratio"], dtype=torch.float64)
    return Memorisation(fraction=m["fraction"], threshold=m["threshold"], ratio=ratio,
                        nearest=torch.tensor(m["nearest"]), nearest_row=torch.tensor(m["nearest_row"]),
                        second=torch.tensor(m["second"]),
                        distance=torch.tensor(m["distance"], dtype=torch.float64))


def format_table(report: dict) -> str:
    """The report as an aligned two-column table for the terminal."""
    rows = [
        ("images (real / fake)", f"{report['real_images']} / {report['fake_images']}"),
        ("FID", f"{report['fid']:.3f}"),
        ("KID x1e3 (mean ± std)",
         f"{report['kid']['mean'] * 1e3:.3f} ± {report['kid']['std'] * 1e3:.3f}"),
    ]
    for res, value in report["swd_x1e3"]["levels"].items():
        rows.append((f"SWD x1e3 {res} px", f"{value:.3f}"))
    rows.append(("SWD x1e3 mean", f"{report['swd_x1e3']['mean']:.3f}"))
    m = report["memorisation"]
    rows.append((f"memorised (d1 < {m['threshold']:.2g} d2)",
                 f"{m['count']} / {report['fake_images']} = {m['fraction'] * 100:.1f} %"))
    for key, name in (("robust", "  by the shift/flip/colour test"), ("pixel_l2", "  by plain pixel L2")):
        if key in m:
            rows.append((name, f"{m[key]['count']} / {report['fake_images']} = {m[key]['fraction'] * 100:.1f} %"))
    width = max(len(name) for name, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 16}"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)
