"""Learning rate as a pure function of images seen, so a resumed run, or one with
another per-process batch, follows the same curve."""
from __future__ import annotations

import math

from ..recipe import OptimCfg


def learning_rate(cfg: OptimCfg, images_seen: int, total_images: int) -> float:
    if cfg.warmup_images and images_seen < cfg.warmup_images:
        return cfg.lr * (images_seen + 1) / cfg.warmup_images
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, total_images - cfg.warmup_images)
    progress = min(1.0, (images_seen - cfg.warmup_images) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
