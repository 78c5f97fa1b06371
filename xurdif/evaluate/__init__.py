"""Measuring samples: FID / KID on Inception features, multi-scale SWD, memorisation.

For in-training KID on EMA samples:
    extractor = InceptionFeatures(device=accelerator.device)   # loads lazily
    real_feats = extractor(real_images)                         # once; [N, 2048] float64 CPU
    # or, for a folder, cached on disk: real_feats, _, _ = folder_features(folder, extractor)
    mean, std = kid(real_feats, extractor(samples))             # samples: float [0, 1] [N, 3, H, W]
"""
from .cache import folder_features
from .fid import fid
from .images import EvaluateError, list_images, load_folder, load_images, load_samples
from .inception import InceptionFeatures
from .kid import kid
from .memorisation import (Memorisation, memorisation, memorisation_picture, pixel_memorisation,
                           robust_memorisation)
from .suite import evaluate_images, format_table
from .swd import swd

__all__ = [
    "EvaluateError", "InceptionFeatures", "Memorisation", "evaluate_images", "fid", "folder_features",
    "format_table", "kid", "list_images", "load_folder", "load_images", "load_samples", "memorisation",
    "memorisation_picture",
    "pixel_memorisation", "robust_memorisation", "swd",
]
