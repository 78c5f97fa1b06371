"""Held-out images: images of the same kind that training never sees.

KID against the training images rewards copying (a model that reproduces them
scores as well as the data itself). Against held-out images of the same kind a
score is honest about the data, but not proof against copying either: in the
long-run study (docs/quality.md) held-out KID kept falling while the share of
copies rose to 59 %; the copy limit (eval.memorised_max) is what keeps copies out
of model-best. Held-out images come from a stable share of an indexable source
(eval.holdout) or from a folder of their own (eval.holdout_path).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from xurdif.data.augment import crop_flip
from xurdif.data.images import DataError
from xurdif.recipe import DataCfg

log = logging.getLogger("xurdif.data")
MIN_HELD_OUT = 8  # fewer make KID a coin toss


@dataclass
class HeldOut:
    names: list[str]
    images: torch.Tensor  # uint8 [N, 3, S, S]: the training view (centre crop, not flipped)
    origin: str


def _view(data, indices: list[int]) -> torch.Tensor:
    size = data.cfg.size
    return torch.stack([crop_flip(data.image(i), size, "center", False, 0) for i in indices])


def set_aside(data, fraction: float) -> HeldOut | None:
    """Take `fraction` of an indexable source's images out of it and return them.

    The images whose keys (path inside the folder, or row) hash lowest are chosen,
    so the choice is the same on every process, run and resume, and does not depend
    on the order the files were found in. Too few images to spare: a warning, and
    None (nothing held out; KID against the training images, copies still caught).
    """
    if not getattr(data, "indexable", False):
        raise DataError("eval.holdout: shards cannot set images aside; give a folder of held-out images "
                        "as eval.holdout_path")
    keys = data.keys()
    n = round(len(keys) * fraction)
    if n < MIN_HELD_OUT or len(keys) - n < 2:
        if data.rank == 0:
            log.warning("eval.holdout: %g of %d images is %d, fewer than %d: nothing is held out; KID is measured "
                        "against the training images and copies are still caught (give eval.holdout_path for "
                        "a folder of other images of the kind)", fraction, len(keys), n, MIN_HELD_OUT)
        return None
    ranked = sorted(range(len(keys)), key=lambda i: hashlib.sha256(keys[i].encode()).hexdigest())
    held = sorted(ranked[:n])
    names = data.names()
    out = HeldOut([names[i] for i in held], _view(data, held), f"{fraction:g} of {data.origin}")
    chosen = set(held)
    data.keep_only([i for i in range(len(keys)) if i not in chosen])
    return out


def open_heldout(cfg: DataCfg, path: str, base_dir: str | Path | None = None) -> HeldOut:
    """Every image of the folder `path`, seen as training sees its images (data.size)."""
    from xurdif.data.folder import FolderImages

    folder = Path(path).expanduser()
    if base_dir is not None and not folder.is_absolute():
        folder = Path(base_dir) / folder
    images = FolderImages(replace(cfg, path=str(folder)), folder, key="eval.holdout_path")
    if len(images) < MIN_HELD_OUT:
        raise DataError(f"eval.holdout_path: {folder} holds {len(images)} readable images; "
                        f"give at least {MIN_HELD_OUT}")
    return HeldOut(images.names(), _view(images, list(range(len(images)))), images.origin)


def held_out(recipe, data) -> HeldOut | None:
    """The recipe's held-out images (eval.holdout or eval.holdout_path), taken out of
    `data` where they come from it; None when the recipe holds nothing out."""
    e = recipe.eval
    if e.holdout_path:
        return open_heldout(recipe.data, e.holdout_path)
    if e.holdout:
        return set_aside(data, e.holdout)
    return None
