"""Shards source: webdataset-style tar files streamed, split by rank and worker, shuffled.

A sample is the group of consecutive tar members sharing a key (the name up to the first
dot of its file name, as webdataset defines it); its image is the member with an image
extension. Only images are ever decoded: pickled members are never unpickled.

Checked at open (so --dry-run reports it and no run folder is made): every local shard's
member list is read (tar headers only). A pickled member is refused there, naming it,
unless data.allow_pickle; a file that is not a tar is skipped with a warning, a damaged
one is read up to the damage. pipe: shards cannot be read twice, so what streaming finds
in them is skipped with a warning instead. Every problem is warned once, by name, and
counted in describe().

Determinism: epoch e reads the shards in an order drawn from (seed, e); each logical worker
(rank r, worker w) takes every T-th shard (or every T-th sample when there are fewer shards
than the T = world_size x workers logical workers) and shuffles with a buffer drawn from
(seed, e, r, w). Batch k of a rank comes from logical worker k mod W. A sample's crop/flip
comes from (seed, e, its shard and key), whichever worker reads it.
"""
from __future__ import annotations

import logging
import random
from dataclasses import replace
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from xurdif.data.augment import crop_flip
from xurdif.ranges import from_uint8
from xurdif.data.images import BadImage, DataError, check_header, decode_image, parse_colour
from xurdif.recipe import DataCfg
from xurdif.seeds import derive_seed
from xurdif.shown import clean

log = logging.getLogger("xurdif.data")

from xurdif.data.shard_files import (IMAGE_KEYS, ShardScan, pickle_text, find_shards, image_member,
                                    read_samples, sample_seed, scan_shard)

# ---------------------------------------------------------------- the stream


class _Worker(IterableDataset):
    """One rank's batches; each DataLoader worker plays one logical worker."""

    def __init__(self, owner: "ShardStream", batch_size: int, seed: int, rank: int, world_size: int,
                 workers: int, skip_batches: int, epochs: Optional[int]):
        self.owner, self.batch_size, self.seed = owner, batch_size, seed
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.skip_batches, self.epochs = skip_batches, epochs

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        slot = info.id if info is not None else 0
        # The DataLoader always starts at its worker 0; rotating the roles makes the first
        # batch after a resume come from the logical worker whose turn it is.
        logical = (slot + self.skip_batches) % self.workers
        done_batches = self.skip_batches // self.workers + (1 if logical < self.skip_batches % self.workers else 0)
        yield from self.owner._batches(self.batch_size, self.seed, self.rank * self.workers + logical,
                                       self.world_size * self.workers, done_batches * self.batch_size,
                                       self.epochs)


class ShardStream:
    indexable = False

    def __init__(self, cfg: DataCfg, rank: int = 0, world_size: int = 1, *, base_dir: Any = None):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.background = parse_colour(cfg.background)
        self.shards = find_shards(cfg, base_dir)
        self._all_urls = set(self.shards.urls)
        self.skipped: list[tuple[str, str]] = []
        self._reported: set[str] = set()
        self._pending: list[tuple[str, str]] = []  # found by this process, not yet handed to stream()
        self._scanned_images: Optional[int] = None
        self._check_shards()

    def _check_shards(self) -> None:
        """Refuse pickles and warn about unreadable shards at open, before training starts."""
        local = [u for u in self.shards.urls if not u.startswith("pipe:")]
        if not local:
            return  # reading a pipe: would run the command once more
        scan = ShardScan()
        for url in local:
            scan_shard(url, scan)
        if scan.pickled and not self.cfg.allow_pickle:
            url, name = scan.pickled[0]
            more = len(scan.pickled) - 1
            raise DataError(pickle_text(url, name) + (f" ({more} more pickled member{'s' * (more != 1)})"
                                                       if more else ""))
        for url, reason in scan.problems:
            self._report(url, reason)
        if scan.unreadable:
            self.shards = replace(self.shards, urls=[u for u in self.shards.urls if u not in scan.unreadable],
                                  counts=None)
        if scan.images == 0 and len(local) == len(self.shards.urls) + len(scan.unreadable):
            where = local[0] if len(local) == 1 else self.shards.origin
            raise DataError(f"data.shards: {where} holds no image members ({', '.join(IMAGE_KEYS)})")
        if len(local) == len(self.shards.urls) + len(scan.unreadable):
            self._scanned_images = scan.images

    @property
    def num_images(self) -> Optional[int]:
        if self.shards.counts is not None:
            return sum(self.shards.counts)
        return self._scanned_images

    def describe(self) -> str:
        n = len(self.shards.urls)
        count = f"{self.num_images} images in " if self.num_images is not None else ""
        skipped = f" ({len(self.skipped)} skipped)" if self.skipped else ""
        return (f"{count}{n} shard{'s' * (n != 1)} from {self.shards.origin}{skipped}, streamed "
                f"(rank {self.rank} of {self.world_size}, shuffle buffer {self.cfg.shuffle_buffer}, "
                f"{self.cfg.num_workers} workers)")

    # ---- problems: found anywhere (a DataLoader worker too), warned once per member in this process
    def _report(self, where: str, reason: str) -> None:
        if where in self._reported:
            return
        self._reported.add(where)
        self.skipped.append((where, reason))
        what = "shard" if where in self._all_urls else "shard member"
        log.warning("skipping %s %s: %s", what, clean(where), clean(reason))  # member names are anyone's

    def _found(self, where: str, reason: str) -> None:
        """A problem seen while streaming; stream() reports it (workers are other processes)."""
        if where not in self._reported:
            self._pending.append((where, reason))

    def _take_found(self) -> list[tuple[str, str]]:
        found, self._pending = self._pending, []
        return found

    def _epoch_raw(self, seed: int, epoch: int, gid: int, total: int) -> Iterator[tuple[str, str, bytes]]:
        """(url, key, image bytes) for this logical worker in epoch `epoch`, before shuffling."""
        urls = list(self.shards.urls)
        random.Random(derive_seed(seed, "shards", epoch)).shuffle(urls)
        by_shard = len(urls) >= total
        mine = urls[gid::total] if by_shard else urls
        j = -1
        for url in mine:
            for key, members in read_samples(url, self.cfg.allow_pickle, self._found):
                img = image_member(members)
                if img is None:
                    self._found(f"{url}:{key}", f"no image member (has {', '.join(members) or 'nothing'})")
                    continue
                j += 1
                if by_shard or j % total == gid:
                    yield url, key, img

    def _epoch_shuffled(self, seed: int, epoch: int, gid: int, total: int) -> Iterator[tuple[str, str, bytes]]:
        rng = random.Random(derive_seed(seed, "buffer", epoch, gid, total))
        buf: list[tuple[str, str, bytes]] = []
        for item in self._epoch_raw(seed, epoch, gid, total):
            if len(buf) < max(1, self.cfg.shuffle_buffer):
                buf.append(item)
                continue
            i = rng.randrange(len(buf))
            buf[i], item = item, buf[i]
            yield item
        rng.shuffle(buf)
        yield from buf

    def _images(self, seed: int, gid: int, total: int, skip: int, epochs: Optional[int]) -> Iterator[torch.Tensor]:
        """uint8 [3, S, S] crops for this logical worker, epoch after epoch; the first `skip` are not decoded."""
        cfg = self.cfg
        epoch = 0
        while epochs is None or epoch < epochs:
            any_sample = False
            for url, key, img in self._epoch_shuffled(seed, epoch, gid, total):
                any_sample = True
                try:
                    if skip > 0:  # resuming: count the sample as the first pass did, without decoding it
                        check_header(img, cfg.max_image_pixels)
                        skip -= 1
                        continue
                    decoded = decode_image(img, cfg.size, self.background, cfg.max_image_pixels)
                except BadImage as e:
                    if skip <= 0:
                        self._found(f"{url}:{key}", str(e))
                    continue
                yield crop_flip(decoded, cfg.size, cfg.crop, cfg.hflip, sample_seed(seed, epoch, url, key))
            if not any_sample:
                return  # nothing for this worker (more workers than samples): end rather than spin
            epoch += 1

    def _batches(self, batch_size: int, seed: int, gid: int, total: int, skip: int,
                 epochs: Optional[int]) -> Iterator[tuple[Optional[torch.Tensor], list[tuple[str, str]]]]:
        """(batch, problems found since the last batch); the batch is None only at the end."""
        batch: list[torch.Tensor] = []
        for img in self._images(seed, gid, total, skip, epochs):
            batch.append(img)
            if len(batch) == batch_size:
                yield from_uint8(torch.stack(batch)), self._take_found()
                batch = []
        if batch or self._pending:
            yield (from_uint8(torch.stack(batch)) if batch else None), self._take_found()

    def _deliver(self, items: Iterator[tuple[Optional[torch.Tensor], list]]) -> Iterator[torch.Tensor]:
        for batch, found in items:
            for where, reason in found:
                self._report(where, reason)
            if batch is not None:
                yield batch

    # ---- the Dataset interface
    def stream(self, batch_size: int, seed: int = 0, skip_images: int = 0, *, epochs: Optional[int] = None,
               rank: Optional[int] = None, world_size: Optional[int] = None) -> Iterator[torch.Tensor]:
        """float32 batches [B, 3, S, S] in [-1, 1] for this rank, epoch after epoch (or `epochs` of them).

        skip_images: images THIS rank's stream already delivered (the run's images seen divided
        by the world size), rounded down to whole batches. Resuming with the same world size,
        batch size, seed and data.num_workers continues exactly where the first run stopped.
        """
        rank = self.rank if rank is None else rank
        world_size = self.world_size if world_size is None else world_size
        if batch_size < 1:
            raise ValueError(f"stream(): batch_size must be >= 1, got {batch_size}")
        workers = max(1, self.cfg.num_workers)
        skip_batches = skip_images // batch_size
        ds = _Worker(self, batch_size, seed, rank, world_size, workers, skip_batches, epochs)
        if self.cfg.num_workers == 0:
            return self._deliver(iter(ds))
        loader = DataLoader(ds, batch_size=None, num_workers=self.cfg.num_workers, prefetch_factor=2)
        return self._deliver(iter(loader))
