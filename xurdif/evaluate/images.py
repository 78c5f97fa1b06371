"""Reading image folders and normalising image tensors for the metrics.

Every metric takes images as float [0, 1] or uint8 [0, 255] tensors
[N, 3, H, W]; `as_float01` and `as_uint8` are the only converters.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.images import to_rgb

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class EvaluateError(ValueError):
    """Bad input to the evaluation tools; the message is one line naming the culprit."""


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursively, sorted), skipping hidden entries
    such as a `.xurdif-cache` folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluateError(f"{folder}: no such folder; expected a folder of images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
    paths = sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not paths:
        raise EvaluateError(f"{folder}: no images found; valid extensions are "
                            f"{', '.join(IMAGE_EXTENSIONS)}")
    return paths


def _read_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            # Transparent pixels become white, as in training (data.background's default).
            return to_rgb(im)
    except OSError as e:
        raise EvaluateError(f"{path}: cannot read image ({e})") from e


def load_images(paths: list[Path], size: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 tensor [N, 3, H, W]. Images whose size differs from `size` (default:
    the first image's) are resized with Lanczos so that they can be stacked."""
    arrays = []
    for path in paths:
        im = _read_rgb(path)
        if size is None:
            size = (im.height, im.width)
        if (im.height, im.width) != size:
            im = im.resize((size[1], size[0]), Image.LANCZOS)
        arrays.append(np.asarray(im, dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_folder(folder: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """All images of a folder as a uint8 tensor [N, 3, H, W]."""
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
