"""HF source: a local `datasets` dataset, never a download.

data.hf_dataset may be
- a folder written by Dataset.save_to_disk / DatasetDict.save_to_disk,
- a folder of images (read with the `imagefolder` builder; LICENSE files and other
  non-images are ignored by it),
- a hub name ("owner/name") that is already in the local Hugging Face cache.
Images are decoded by our own decode_image (the column is read with decode=False), so the
same picture gives the same tensor as from the folder source, and bad rows are skipped by
the same policy.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Iterator

from xurdif.data.images import DataError, ImageSource, display_path
from xurdif.data.indexed import IndexedImages
from xurdif.recipe import DataCfg

_SAVED_MARKERS = ("dataset_dict.json", "state.json")


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Hub names are read from the cache only: with offline mode on, a cache miss fails at
    once instead of retrying the network. Both libraries read the flag at call time."""
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _hub_cache_places(name: str) -> list[Path]:
    import datasets
    import huggingface_hub.constants as hub_constants

    owner_and_name = name.split("/")
    # datasets names its cache folders owner___snake_case_name (see datasets.load).
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", owner_and_name[-1]).lower()
    prepared = Path(datasets.config.HF_DATASETS_CACHE) / "___".join(owner_and_name[:-1] + [snake])
    raw = Path(hub_constants.HF_HUB_CACHE) / ("datasets--" + name.replace("/", "--"))
    return [prepared, raw]


def _load(cfg: DataCfg, base_dir: Any) -> tuple[Any, str]:
    """(datasets.Dataset of the split, a short description of where it came from)."""
    import datasets

    name = cfg.hf_dataset
    path = Path(name).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if path.is_dir():
        try:
            if any((path / m).is_file() for m in _SAVED_MARKERS):
                loaded = datasets.load_from_disk(str(path))
            else:
                loaded = datasets.load_dataset("imagefolder", data_dir=str(path), split=cfg.hf_split)
        except ValueError as e:
            if "Unknown split" in str(e):
                raise DataError(f"data.hf_split: {_first_line(e)} (in {path})") from None
            raise DataError(f"data.hf_dataset: cannot read {path}: {_first_line(e)}") from None
        except Exception as e:  # datasets raises many types; the user needs one line
            raise DataError(f"data.hf_dataset: cannot read {path}: {_first_line(e)}") from None
        origin = display_path(path)
    elif path.exists():
        raise DataError(f"data.hf_dataset: {path} is a file; give a saved dataset folder, an image folder "
                        "or a hub name in the local cache")
    else:
        if name.count("/") > 1 or name.startswith((".", "/", "~")):
            raise DataError(f"data.hf_dataset: folder {path} does not exist")
        places = _hub_cache_places(name)
        if not any(p.exists() for p in places):
            raise DataError(
                f"data.hf_dataset: {name!r} is neither a folder nor in the local Hugging Face cache "
                f"(looked in {places[0]} and {places[1]}); nothing is downloaded during training: fetch it first "
                f"(huggingface-cli download --repo-type dataset {name}) or give a local folder")
        try:
            with _offline():
                loaded = datasets.load_dataset(name, split=cfg.hf_split)
        except Exception as e:
            raise DataError(f"data.hf_dataset: {name!r} could not be loaded from the local cache "
                            f"(offline): {_first_line(e)}") from None
        origin = f"hf:{name}"
    if isinstance(loaded, datasets.DatasetDict):
        if cfg.hf_split not in loaded:
            raise DataError(f"data.hf_split: {cfg.hf_split!r} is not a split of {origin}; "
                            f"splits: {', '.join(loaded)}")
        loaded = loaded[cfg.hf_split]
        origin += f" [{cfg.hf_split}]"
    return loaded, origin


def _raw_value(value: Any, where: str) -> ImageSource:
    """The bytes or file path behind one cell of the image column."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return value["path"]
    if isinstance(value, (bytes, str)):
        return value
    raise DataError(f"data.image_column: {where} holds {type(value).__name__}, not an image")


class HFImages(IndexedImages):
    def __init__(self, cfg: DataCfg, table: Any, origin: str, rank: int = 0):
        import datasets

        col = cfg.image_column
        if col not in table.column_names:
            raise DataError(f"data.image_column: {col!r} is not a column of {origin}; "
                            f"columns: {', '.join(table.column_names)}")
        table = table.select_columns([col])
        if isinstance(table.features[col], datasets.Image):
            table = table.cast_column(col, datasets.Image(decode=False))
        self.table = table
        super().__init__(cfg, range(len(table)), origin, rank)

    def _raw(self, ref: int) -> ImageSource:
        return _raw_value(self.table[int(ref)][self.cfg.image_column], self._name(ref))

    def _name(self, ref: int) -> str:
        return f"{self.origin}[{ref}]"

    def _key(self, ref: int) -> str:
        return f"row {int(ref)}"


def open_hf(cfg: DataCfg, base_dir: str | os.PathLike | None = None, rank: int = 0) -> HFImages:
    table, origin = _load(cfg, base_dir)
    if len(table) == 0:
        raise DataError(f"data.hf_dataset: {origin} has no rows")
    return HFImages(cfg, table, origin, rank)
