"""Indexable image datasets: the shared cache / lazy-decode / skip policy of folder and hf sources.

A subclass says how to read the raw bytes or path of item k (`_raw`) and how to name it
(`_name`); this class decides whether to decode everything once into memory (uint8, after
the short-side resize so random crops still vary) or to decode per get() call, and keeps
the list of skipped files.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from xurdif.data.augment import crop_flip_batch
from xurdif.ranges import from_uint8
from xurdif.data.images import BadImage, DataError, ImageSource, check_header, decode_image, parse_colour
from xurdif.recipe import DataCfg
from xurdif.shown import clean

log = logging.getLogger("xurdif.data")
MAX_WARNED = 10  # unreadable files named one by one; the rest are counted


class IndexedImages:
    indexable = True

    def __init__(self, cfg: DataCfg, refs: Sequence[Any], origin: str, rank: int = 0):
        self.cfg = cfg
        self.origin = origin
        self.rank = rank
        self.background = parse_colour(cfg.background)
        self.skipped: list[tuple[str, str]] = []
        self._bad_later: set[int] = set()  # lazy mode: files that fail only on full decode
        self._cache: list[torch.Tensor] | None = None
        if len(refs) <= cfg.cache_max_images:
            self._refs, self._cache = self._decode_all(refs)
        else:
            self._refs = self._check_all(refs)
        if len(self.skipped) > MAX_WARNED and rank == 0:
            log.warning("skipped %d more unreadable images (%d of %d in all)", len(self.skipped) - MAX_WARNED,
                        len(self.skipped), len(refs))
        if not self._refs:
            raise DataError(f"{origin}: none of the {len(refs)} images could be read "
                            f"(first problem: {self.skipped[0][0]}: {self.skipped[0][1]})")

    # ---- subclass hooks
    def _raw(self, ref: Any) -> ImageSource:
        raise NotImplementedError

    def _name(self, ref: Any) -> str:
        raise NotImplementedError

    def _key(self, ref: Any) -> str:
        """A name independent of the working directory (held-out images are chosen by it)."""
        return self._name(ref)

    # ---- building
    def _skip(self, ref: Any, reason: str, always: bool = False) -> None:
        name = clean(self._name(ref))  # a file name may hold newlines and terminal escapes
        self.skipped.append((name, clean(reason)))
        # Every rank reads the same files: one warning is enough; the first few by name, then a count.
        if self.rank == 0 and (always or len(self.skipped) <= MAX_WARNED):
            log.warning("skipping image %s: %s", name, clean(reason))

    def _decode(self, ref: Any) -> torch.Tensor:
        return decode_image(self._raw(ref), self.cfg.size, self.background, self.cfg.max_image_pixels)

    def _decode_all(self, refs: Sequence[Any]) -> tuple[list[Any], list[torch.Tensor]]:
        kept, images = [], []
        for ref in tqdm(refs, desc="decoding images", unit="img", disable=self.rank != 0, leave=False):
            try:
                images.append(self._decode(ref))
                kept.append(ref)
            except BadImage as e:
                self._skip(ref, str(e))
        return kept, images

    def _check_all(self, refs: Sequence[Any]) -> list[Any]:
        kept = []
        for ref in tqdm(refs, desc="checking images", unit="img", disable=self.rank != 0, leave=False):
            try:
                check_header(self._raw(ref), self.cfg.max_image_pixels)
                kept.append(ref)
            except BadImage as e:
                self._skip(ref, str(e))
        return kept

    # ---- the Dataset interface
    def __len__(self) -> int:
        return len(self._refs)

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def names(self) -> list[str]:
        return [self._name(r) for r in self._refs]

    def keys(self) -> list[str]:
        return [self._key(r) for r in self._refs]

    def keep_only(self, indices: Sequence[int]) -> None:
        """Drop every image but these (eval.holdout sets the others aside before training)."""
        self._refs = [self._refs[i] for i in indices]
        if self._cache is not None:
            self._cache = [self._cache[i] for i in indices]
        self._bad_later = set()

    def image(self, index: int) -> torch.Tensor:
        """The decoded uint8 [3, h, w] image (short side == size) before crop and flip."""
        if self._cache is not None:
            return self._cache[index]
        # A file whose header was fine may still be truncated: warn once and use the
        # next readable image, so get() keeps its shape and stays deterministic.
        for step in range(len(self._refs)):
            k = (index + step) % len(self._refs)
            if k in self._bad_later:
                continue
            try:
                return self._decode(self._refs[k])
            except BadImage as e:
                self._bad_later.add(k)
                self._skip(self._refs[k], str(e) + " (found while training; its slot reads the next image)",
                           always=True)
        raise DataError(f"{self.origin}: no image could be decoded")

    def get(self, indices: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
        """float32 [N, 3, S, S] in [-1, 1]; sample i augmented by a generator seeded with seeds[i] alone."""
        return from_uint8(self.get_uint8(indices, seeds))

    def get_uint8(self, indices: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
        """get() before the float conversion: uint8 [N, 3, S, S] (xurdif.ranges.from_uint8 maps it to [-1, 1])."""
        c = self.cfg
        return crop_flip_batch([self.image(int(i)) for i in indices], seeds, c.size, c.crop, c.hflip)

    def cache_bytes(self) -> int:
        return sum(t.numel() for t in self._cache) if self._cache is not None else 0

    def describe(self) -> str:
        text = f"{len(self)} images from {self.origin}"
        if self.skipped:
            text += f" ({len(self.skipped)} skipped)"
        if self._cache is not None:
            return text + f", cached in memory: {self.cache_bytes() / 1e6:.1f} MB"
        return text + f", decoded per batch (more than data.cache_max_images={self.cfg.cache_max_images})"
