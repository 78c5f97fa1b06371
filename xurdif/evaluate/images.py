"""Reading image folders and normalising image tensors for the metrics.

Every metric takes images as float [0, 1] or uint8 [0, 255] tensors
[N, 3, H, W]; `as_float01` and `as_uint8` are the only converters.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import IMAGE_EXTS, BadImage, find_image_files, read_picture, to_tensor, training_view

log = logging.getLogger("xurdif.evaluate")


class EvaluateError(ValueError):
    """Bad input to the evaluation tools; the message is one line naming the culprit."""


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder`, found as the training data's folder source finds them
    (recursively, sorted, extensions in any case, hidden entries such as `.xurdif-cache` left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluateError(f"{folder}: no such folder; expected a folder of images "
                            f"({', '.join(IMAGE_EXTS)})")
    paths = find_image_files(folder)
    if not paths:
        raise EvaluateError(f"{folder}: no images found; valid extensions are "
                            f"{', '.join(IMAGE_EXTS)}")
    return paths


def load_samples(paths: list[Path], size: int | tuple[int, int] | None = None) -> tuple[torch.Tensor, list[Path]]:
    """(uint8 tensor [N, 3, H, W], the paths it holds).

    size given (training images): each picture as training sees it with data.size: size and
    data.crop: center (short side resized to size, centre crop; a (height, width) size is
    covered and centre-cropped), so the metrics compare samples with what the model was
    trained on.
    size None (samples): pictures as they are; those whose size differs from the majority's
    are left out with one warning naming them, rather than stretched to fit.
    Unreadable files are left out with one warning naming them, as training skips them.
    """
    read, bad = [], []
    for path in paths:
        try:
            # Transparent pixels become white, as in training (data.background's default).
            read.append((path, training_view(path, size) if size is not None else to_tensor(read_picture(path))))
        except BadImage as e:
            bad.append(f"{path} ({e})")
    if bad:
        log.warning("skipping %d unreadable image%s: %s", len(bad), "s" * (len(bad) != 1), ", ".join(bad))
    if not read:
        raise EvaluateError(f"none of the {len(paths)} images could be read"
                            + (f" (first: {bad[0]})" if bad else ""))
    shapes = Counter(tuple(t.shape) for _, t in read)
    common = shapes.most_common(1)[0][0]  # ties: the size seen first
    kept = [(p, t) for p, t in read if tuple(t.shape) == common]
    odd = [f"{p} ({t.shape[2]}x{t.shape[1]})" for p, t in read if tuple(t.shape) != common]
    if odd:
        log.warning("skipping %d image%s whose size differs from the other %d (%dx%d): %s", len(odd),
                    "s" * (len(odd) != 1), len(kept), common[2], common[1], ", ".join(odd))
    return torch.stack([t for _, t in kept]), [p for p, _ in kept]


def load_images(paths: list[Path], size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 tensor [N, 3, H, W]; see load_samples."""
    return load_samples(paths, size)[0]


def load_folder(folder: str | Path, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """All images of a folder as a uint8 tensor [N, 3, H, W]; see load_samples."""
    return load_images(list_images(folder), size)


def check_images(images: torch.Tensor, what: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise EvaluateError(f"{what}: expected a tensor [N, 3, H, W] (float in [0, 1] or uint8), got {shape}")
    if images.shape[0] == 0:
        raise EvaluateError(f"{what}: no images")


def as_float01(images: torch.Tensor) -> torch.Tensor:
    """float32 in [0, 1], on the images' device."""
    if images.dtype == torch.uint8:
        return images.float() / 255
    return images.float().clamp(0, 1)


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


def resize_to(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float [0, 1] images resized to `size` (antialiased, so shrinking does not alias)."""
    images = as_float01(images)
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True,
                         align_corners=False).clamp(0, 1)


def as_features(feats, what: str, min_rows: int = 2) -> torch.Tensor:
    """Features [N, D] (tensor or array) as a float64 CPU tensor, with at least min_rows rows."""
    feats = feats if isinstance(feats, torch.Tensor) else torch.as_tensor(np.asarray(feats))
    if feats.ndim != 2 or feats.shape[0] < min_rows:
        raise EvaluateError(f"{what}: expected features [N >= {min_rows}, D], got {tuple(feats.shape)}")
    return feats.detach().double().cpu()
