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

import json
import logging
import random
import re
import subprocess
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from xurdif.data.augment import crop_flip, to_model_range
from xurdif.data.images import BadImage, DataError, check_header, decode_image, display_path, parse_colour
from xurdif.recipe import DataCfg
from xurdif.seeds import derive_seed

log = logging.getLogger("xurdif.data")

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")
PICKLE_KEYS = ("pyd", "pickle", "pkl")
INDEX_NAME = "index.json"


# ---------------------------------------------------------------- finding shards


def _expand_braces(pattern: str) -> list[str]:
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


@dataclass(frozen=True)
class ShardList:
    urls: list[str]               # local paths, or pipe: commands when allowed
    counts: Optional[list[int]]   # from an index file, when there is one
    size: Optional[int]           # the pixel size the index says the shards were made at
    origin: str


def _read_index(path: Path) -> ShardList:
    try:
        index = json.loads(path.read_text())
        names = [str(s["name"]) for s in index["shards"]]
        counts = [int(s["count"]) for s in index["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"data.shards: {path} is not a shard index ({e}); make one with tools/make_shards.py") from None
    urls = [str(path.parent / n) for n in names]
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"data.shards: shard {missing[0]} listed in {path} does not exist{more}")
    return ShardList(urls, counts, index.get("size"), display_path(path))


def find_shards(cfg: DataCfg, base_dir: Any = None) -> ShardList:
    """Expand data.shards into shard URLs; every refusal names the key that allows it."""
    spec = cfg.shards.strip()
    if spec.startswith("pipe:"):
        if not cfg.allow_pipe:
            raise DataError(f"data.shards: {spec!r} is a pipe: URL, which runs a shell command; "
                            "set data.allow_pipe: true to allow it")
        return ShardList(_expand_braces(spec), None, None, spec)
    if re.match(r"^[a-z][a-z0-9+.-]*://", spec):
        raise DataError(f"data.shards: {spec!r}: only local files are read (or pipe: commands with "
                        "data.allow_pipe); download the shards first")
    root = Path(base_dir) if base_dir is not None else None
    parts = [p for p in spec.split("::") if p]

    def local(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() or root is None else root / q

    if len(parts) == 1 and local(parts[0]).is_dir():
        folder = local(parts[0])
        if (folder / INDEX_NAME).is_file():
            return _read_index(folder / INDEX_NAME)
        tars = sorted(folder.glob("*.tar"))
        if not tars:
            raise DataError(f"data.shards: no .tar files and no {INDEX_NAME} in folder {folder}")
        return ShardList([str(t) for t in tars], None, None, display_path(folder))
    if len(parts) == 1 and parts[0].endswith(".json"):
        if not local(parts[0]).is_file():
            raise DataError(f"data.shards: index file {local(parts[0])} does not exist")
        return _read_index(local(parts[0]))
    urls = [local(u) for p in parts for u in _expand_braces(p)]
    missing = [u for u in urls if not u.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"data.shards: shard {missing[0]} does not exist{more}")
    return ShardList([str(u) for u in urls], None, None, spec)


# ---------------------------------------------------------------- reading one shard


def _open(url: str) -> IO[bytes]:
    if url.startswith("pipe:"):
        # Only reached with data.allow_pipe: the user asked for this command to run.
        return subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE).stdout  # type: ignore[return-value]
    return open(url, "rb")


def _split_name(name: str) -> tuple[str, str]:
    """webdataset's rule: key = path up to the first dot of the file name; the rest is the extension."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


class ShardProblem(Exception):
    """Raised by read_samples for a damaged shard; `after` names the last member read."""

    def __init__(self, reason: str, after: Optional[str]):
        super().__init__(reason)
        self.reason, self.after = reason, after


def _damage(url: str, after: Optional[str], err: BaseException) -> str:
    if after is None:
        return "not a tar archive, or damaged before its first member"
    text = (str(err).strip() or type(err).__name__).splitlines()[0]
    return f"damaged after member {after} ({text}); the rest of it is skipped"


def _pickle_text(url: str, name: str) -> str:
    return (f"data.shards: {url} member {name} is pickled data, which can run code when loaded; "
            "set data.allow_pickle: true to read these shards (pickled members are still never unpickled)")


def _warn(where: str, reason: str) -> None:
    log.warning("skipping %s: %s", where, reason)


def read_samples(url: str, allow_pickle: bool, report: Callable[[str, str], None] = _warn
                 ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for every sample of one shard, in tar order.

    Pickled members are never read; without data.allow_pickle each is reported (open()
    refuses local shards that hold any, so this only happens for pipe: shards or a shard
    changed since). A damaged tar is reported and read up to the damage."""
    current: Optional[str] = None
    last: Optional[str] = None
    members: dict[str, bytes] = {}
    stream = _open(url)
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = _split_name(info.name)
                last = info.name
                if ext in PICKLE_KEYS:
                    if not allow_pickle:
                        report(f"{url}:{info.name}", "pickled data (can run code when loaded); not read, "
                                                     "set data.allow_pickle: true to silence this")
                    continue
                if key != current:
                    if current is not None:
                        yield current, members
                    current, members = key, {}
                data = tar.extractfile(info)
                members[ext] = data.read() if data is not None else b""
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        report(url, _damage(url, last, e))
    finally:
        stream.close()
    if current is not None:
        yield current, members


@dataclass
class ShardScan:
    """What open() learns from the member lists of the local shards."""
    images: int = 0
    pickled: list[tuple[str, str]] = field(default_factory=list)   # (url, member)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (url, reason)
    unreadable: set[str] = field(default_factory=set)              # not a tar at all


def scan_shard(url: str, scan: ShardScan) -> None:
    """Read one local shard's tar headers (seeking over the data of an uncompressed tar)."""
    last: Optional[str] = None
    try:
        with tarfile.open(url, mode="r:*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                last = info.name
                _, ext = _split_name(info.name)
                if ext in PICKLE_KEYS:
                    scan.pickled.append((url, info.name))
                elif ext in IMAGE_KEYS:
                    scan.images += 1
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        scan.problems.append((url, _damage(url, last, e)))
        if last is None:
            scan.unreadable.add(url)


def image_member(members: dict[str, bytes]) -> Optional[bytes]:
    for ext in IMAGE_KEYS:
        if ext in members:
            return members[ext]
    return None


def sample_seed(seed: int, epoch: int, url: str, key: str) -> int:
    return derive_seed(seed, "shard-sample", epoch, Path(url).name, key)


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
            raise DataError(_pickle_text(url, name) + (f" ({more} more pickled member{'s' * (more != 1)})"
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
        log.warning("skipping %s %s: %s", what, where, reason)

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
                yield to_model_range(torch.stack(batch)), self._take_found()
                batch = []
        if batch or self._pending:
            yield (to_model_range(torch.stack(batch)) if batch else None), self._take_found()

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
