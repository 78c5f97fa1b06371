"""Image sources for training: a folder, a local HF datasets dataset, or webdataset shards.

`open_dataset` is the only entry point the trainer needs; see docs/design.md "Data".
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from xurdif.data.images import DataError
from xurdif.recipe import DataCfg

__all__ = ["open_dataset", "DataError"]

PathLike = Union[str, os.PathLike]


def _resolve(path: str, base_dir: PathLike | None) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p


def open_dataset(cfg: DataCfg, rank: int = 0, world_size: int = 1, *, base_dir: PathLike | None = None):
    """The dataset `cfg` describes, for process `rank` of `world_size`.

    Indexable sources (folder, hf) return the same dataset on every rank: the trainer picks
    indices. Streaming sources (shards) split their samples by rank here.
    Relative paths are taken from `base_dir` (default: the working directory).
    Raises DataError (a ValueError) naming the path or key when the data cannot be used.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"open_dataset: rank {rank} is not in 0..{world_size - 1}")
    if cfg.source == "folder":
        from xurdif.data.folder import FolderImages
        if not cfg.path:
            raise DataError("data.path: required for data.source: folder")
        return FolderImages(cfg, _resolve(cfg.path, base_dir), rank)
    if cfg.source == "hf":
        from xurdif.data.hf import open_hf
        if not cfg.hf_dataset:
            raise DataError("data.hf_dataset: required for data.source: hf")
        return open_hf(cfg, base_dir, rank)
    if cfg.source == "shards":
        from xurdif.data.shards import ShardStream
        if not cfg.shards:
            raise DataError("data.shards: required for data.source: shards")
        return ShardStream(cfg, rank, world_size, base_dir=base_dir)
    raise DataError(f"data.source: {cfg.source!r} is not a source; use folder, hf or shards")
