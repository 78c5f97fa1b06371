"""Folder source: every image file under a folder, recursively, in a fixed order."""
from __future__ import annotations

import os
from pathlib import Path

from xurdif.data.images import DataError, ImageSource, display_path, is_image_name, IMAGE_EXTS
from xurdif.data.indexed import IndexedImages
from xurdif.recipe import DataCfg


def scan_folder(folder: Path, key: str = "data.path") -> list[Path]:
    """Image files under `folder` (extensions case-insensitive), sorted by relative path.

    Hidden files and folders are left out: '._x.png' files are macOS metadata, not images.
    """
    if not folder.exists():
        raise DataError(f"{key}: folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{key}: {folder} is a file; give the folder that holds the images")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / f for f in files if is_image_name(f) and not f.startswith(".")]
    if not found:
        raise DataError(f"{key}: no images in {folder} (looked for {' '.join(IMAGE_EXTS)}, in any case, recursively)")
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


class FolderImages(IndexedImages):
    def __init__(self, cfg: DataCfg, folder: Path, rank: int = 0):
        self.folder = folder
        super().__init__(cfg, scan_folder(folder), display_path(folder), rank)

    def _raw(self, ref: Path) -> ImageSource:
        return ref

    def _name(self, ref: Path) -> str:
        return display_path(ref)
