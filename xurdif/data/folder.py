"""Folder source: every image file under a folder, recursively, in a fixed order."""
from __future__ import annotations

from pathlib import Path

from xurdif.data.images import IMAGE_EXTS, DataError, ImageSource, display_path, find_image_files
from xurdif.data.indexed import IndexedImages
from xurdif.recipe import DataCfg


def scan_folder(folder: Path, key: str = "data.path") -> list[Path]:
    """Image files under `folder` (see find_image_files); DataError naming `key` when there are none."""
    if not folder.exists():
        raise DataError(f"{key}: folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{key}: {folder} is a file; give the folder that holds the images")
    found = find_image_files(folder)
    if not found:
        raise DataError(f"{key}: no images in {folder} (looked for {' '.join(IMAGE_EXTS)}, in any case, recursively)")
    return found


class FolderImages(IndexedImages):
    def __init__(self, cfg: DataCfg, folder: Path, rank: int = 0, key: str = "data.path"):
        self.folder = folder
        super().__init__(cfg, scan_folder(folder, key), display_path(folder), rank)

    def _key(self, ref: Path) -> str:
        return ref.relative_to(self.folder).as_posix()

    def _raw(self, ref: Path) -> ImageSource:
        return ref

    def _name(self, ref: Path) -> str:
        return display_path(ref)
