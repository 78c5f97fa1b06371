"""Shard files: finding them (brace patterns, index.json), opening them (local or pipe:) and
reading their samples safely: only image members are ever decoded, pickled members are
refused unless allowed, a damaged tar is read up to the damage and reported by name."""
from __future__ import annotations

import json
import logging
import re
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional

from xurdif.data.images import DataError, display_path
from xurdif.recipe import DataCfg
from xurdif.seeds import derive_seed
from xurdif.shown import clean

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


def _damage(after: Optional[str], err: BaseException) -> str:
    if after is None:
        return "not a tar archive, or damaged before its first member"
    text = (str(err).strip() or type(err).__name__).splitlines()[0]
    return f"damaged after member {after} ({text}); the rest of it is skipped"


def pickle_text(url: str, name: str) -> str:
    return (f"data.shards: {url} member {name} is pickled data, which can run code when loaded; "
            "set data.allow_pickle: true to read these shards (pickled members are still never unpickled)")


def _warn(where: str, reason: str) -> None:
    log.warning("skipping %s: %s", clean(where), clean(reason))


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
        report(url, _damage(last, e))
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
        scan.problems.append((url, _damage(last, e)))
        if last is None:
            scan.unreadable.add(url)


def image_member(members: dict[str, bytes]) -> Optional[bytes]:
    for ext in IMAGE_KEYS:
        if ext in members:
            return members[ext]
    return None


def sample_seed(seed: int, epoch: int, url: str, key: str) -> int:
    return derive_seed(seed, "shard-sample", epoch, Path(url).name, key)
