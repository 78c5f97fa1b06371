"""On-disk cache of features, keyed by what they are features of.

A folder's key hashes every image's relative path, size and mtime plus the feature
extractor's name, so editing, adding or removing a training image (or changing
the preprocessing) makes a new entry instead of returning stale features. Images
already in memory (the trainer's evaluation) are keyed by their bytes instead.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..atomic import atomic_write
from .images import list_images, load_images


def default_cache_dir() -> Path:
    # Outside the data folder: data may be read-only, and data loaders should not see our files.
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xurdif" / "features"


def file_label(text: str) -> str:
    """A readable, file-name-safe prefix for a cache entry (the key makes it unique)."""
    return "".join(c if c.isalnum() else "-" for c in text)[:40]


def folder_key(folder: Path, paths: list[Path], extractor_name: str) -> str:
    digest = hashlib.sha256(extractor_name.encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"\n{path.relative_to(folder).as_posix()}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def cache_path(folder: str | Path, paths: list[Path], extractor_name: str,
               cache_dir: str | Path | None = None) -> Path:
    folder = Path(folder)
    key = folder_key(folder, paths, extractor_name)
    return Path(cache_dir or default_cache_dir()) / f"{file_label(folder.resolve().name)}-{key}.npy"


def cached_features(path: Path, compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """Features stored at `path`, or `compute()` saved there. Returns (features, was_cached)."""
    if path.is_file():
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False)), True
        except (OSError, ValueError):
            pass  # a torn or foreign file: recompute and overwrite it
    features = compute()
    with atomic_write(path) as f:  # a crash never leaves a torn entry under the real name
        np.save(f, features.cpu().numpy(), allow_pickle=False)
    return features, False


def folder_features(folder: str | Path, extractor, cache_dir: str | Path | None = None,
                    images: torch.Tensor | None = None,
                    size: tuple[int, int] | None = None) -> tuple[torch.Tensor, Path, bool]:
    """Features of every image in `folder` through `extractor` (anything with a
    `name` and `images -> features`, e.g. InceptionFeatures), cached on disk.
    size: read the images as training sees them at that (height, width) (see load_samples);
    part of the cache key. `images`, when given, must be that folder's images as
    `load_folder(folder, size)` returns them; it only saves reading them again.
    Returns (features, cache file, was_cached)."""
    paths = list_images(folder)
    name = extractor.name if size is None else f"{extractor.name}:view{size[0]}x{size[1]}"
    path = cache_path(folder, paths, name, cache_dir)
    features, hit = cached_features(path, lambda: extractor(load_images(paths, size) if images is None else images))
    return features, path, hit


def images_key(images: torch.Tensor, extractor_name: str) -> str:
    """A key for an image tensor's exact contents (shape, dtype and bytes) and the extractor."""
    x = images.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{extractor_name}\n{tuple(x.shape)}\n{x.dtype}\n".encode())
    digest.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def image_features(images: torch.Tensor, extractor, label: str = "images",
                   cache_dir: str | Path | None = None) -> tuple[torch.Tensor, Path, bool]:
    """Features of an image tensor through `extractor`, cached on disk by its bytes: a run, its
    resumes and its siblings on the same images measure them once.
    Returns (features, cache file, was_cached)."""
    path = Path(cache_dir or default_cache_dir()) / f"{file_label(label)}-{images_key(images, extractor.name)}.npy"
    features, hit = cached_features(path, lambda: extractor(images))
    return features, path, hit
