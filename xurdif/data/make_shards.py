"""Write an image folder as webdataset tar shards, decoded and resized once, with an index.

    python tools/make_shards.py FOLDER OUT_DIR --per-shard 1000 --size 64 [--verify]

Each sample is `<key>.png` (short side = --size, transparency composited on --background,
so the shards hold exactly what the folder source would train on) and `<key>.json` naming
the source file. OUT_DIR/index.json lists the shards with their counts; point
data.shards at OUT_DIR (or at the index, or at a brace pattern of the tars).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tarfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from xurdif.cli_args import int_in
from xurdif.data.folder import scan_folder
from xurdif.data.images import BadImage, DataError, decode_image, parse_colour, read_picture
from xurdif.data.shard_files import INDEX_NAME, image_member, read_samples

log = logging.getLogger("xurdif.data")

FORMATS = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}


def encode(img_chw: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    opts = {"optimize": False, "compress_level": 6} if fmt == "png" else {"quality": quality}
    if fmt == "webp" and quality >= 100:
        opts = {"lossless": True}
    Image.fromarray(np.ascontiguousarray(img_chw.transpose(1, 2, 0))).save(buf, FORMATS[fmt], **opts)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: same input, same bytes
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, out_dir: Path, per_shard: int, size: int, background: str = "#ffffff",
                 fmt: str = "png", quality: int = 95, max_image_pixels: int = 89_478_485,
                 prefix: str = "shard") -> dict:
    """Write the shards and index.json; returns the index. Bad images are skipped with a warning."""
    files = scan_folder(folder, key="FOLDER")
    bg = parse_colour(background)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = []
    skipped: list[tuple[str, str]] = []
    tar: Optional[tarfile.TarFile] = None
    tmp: Optional[Path] = None
    count = 0

    def close() -> None:
        nonlocal tar
        if tar is not None:
            tar.close()
            assert tmp is not None
            os.replace(tmp, out_dir / shards[-1]["name"])  # a shard appears only when complete
            tar = None

    for path in tqdm(files, desc="encoding shards", unit="img"):
        try:
            img = decode_image(path, size, bg, max_image_pixels).numpy()
        except BadImage as e:
            skipped.append((str(path), str(e)))
            log.warning("skipping image %s: %s", path, e)
            continue
        if tar is None or shards[-1]["count"] == per_shard:
            close()
            name = f"{prefix}-{len(shards):06d}.tar"
            shards.append({"name": name, "count": 0})
            tmp = out_dir / (name + ".tmp")
            tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)
        key = f"{count:08d}"
        _add(tar, f"{key}.{fmt}", encode(img, fmt, quality))
        meta = {"source": path.relative_to(folder).as_posix(), "height": img.shape[1], "width": img.shape[2]}
        _add(tar, f"{key}.json", json.dumps(meta).encode())
        shards[-1]["count"] += 1
        count += 1
    close()
    if not shards:
        raise DataError(f"FOLDER: none of the {len(files)} images in {folder} could be read")
    last = len(shards) - 1
    index = {"format": "webdataset", "size": size, "background": background, "image": fmt,
             "total": count, "pattern": f"{prefix}-{{{0:06d}..{last:06d}}}.tar", "shards": shards,
             "skipped": [{"file": f, "reason": r} for f, r in skipped]}
    tmp_index = out_dir / (INDEX_NAME + ".tmp")
    tmp_index.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp_index, out_dir / INDEX_NAME)
    return index


def verify(out_dir: Path) -> list[tuple[str, int, int]]:
    """(shard, count in the index, images read back that decode) for every shard."""
    index = json.loads((out_dir / INDEX_NAME).read_text())
    rows = []
    for shard in tqdm(index["shards"], desc="verifying", unit="shard"):
        good = 0
        for _, members in read_samples(str(out_dir / shard["name"]), allow_pickle=False):
            data = image_member(members)
            try:
                if data is not None:
                    read_picture(data)
                    good += 1
            except BadImage:
                pass
        rows.append((shard["name"], int(shard["count"]), good))
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make_shards.py",
        description="Write an image folder as webdataset tar shards (resized once) with an index.json.",
        epilog="Then train with data.source: shards and data.shards: OUT_DIR.")
    p.add_argument("folder", metavar="FOLDER", type=Path, help="image folder, scanned recursively")
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="where the .tar shards and index.json go")
    p.add_argument("--per-shard", type=int_in(1, 10_000_000), default=1000, metavar="N",
                   help="images per shard (default 1000)")
    p.add_argument("--size", type=int_in(8, 4096), default=64, metavar="S",
                   help="resize so the short side is S pixels (default 64); train at data.size <= S")
    p.add_argument("--background", default="#ffffff", help="colour transparency is composited on (default #ffffff)")
    p.add_argument("--format", choices=sorted(FORMATS), default="png", help="image encoding (default png, lossless)")
    p.add_argument("--quality", type=int_in(1, 100), default=95, help="jpg/webp quality (webp 100 = lossless)")
    p.add_argument("--max-image-pixels", type=int_in(1), default=89_478_485, help="skip larger images")
    p.add_argument("--prefix", default="shard", help="shard file name prefix (default shard)")
    p.add_argument("--verify", action="store_true", help="read every shard back and report counts")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out_dir.exists() and not args.out_dir.is_dir():
        print(f"make_shards: {args.out_dir}: is a file; OUT_DIR must be a folder (new, or one holding shards)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        index = write_shards(args.folder, args.out_dir, args.per_shard, args.size, args.background,
                             args.format, args.quality, args.max_image_pixels, args.prefix)
    except DataError as e:
        print(f"make_shards: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # OUT_DIR under a file, no room, no permission: one line, not a traceback
        print(f"make_shards: {e.filename or args.out_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"{index['total']} images in {len(index['shards'])} shards ({index['pattern']}) at {args.out_dir}, "
          f"{len(index['skipped'])} skipped")
    if args.verify:
        bad = 0
        for name, expected, got in verify(args.out_dir):
            ok = expected == got
            bad += not ok
            print(f"  {name}: {got} of {expected} images read back{'' if ok else '  MISMATCH'}")
        print("verify: all shards match the index" if not bad else f"verify: {bad} shards do not match the index")
        return 1 if bad else 0
    return 0
