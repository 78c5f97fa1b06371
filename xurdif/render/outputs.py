"""The output folder: safe names, atomic PNGs with their parameters, the
manifest, contact sheets (in OUT/contact-sheets/) and the model hash.

Crash safety: a PNG is written to a temporary name, fsynced and renamed, and
only then is its manifest line appended (one write, fsynced). The PNG carries
its own manifest record in a text chunk, so on start `reconcile` can repair
any state a kill -9 leaves: a PNG without a line gets its line back, a line
without a PNG or a torn last line is dropped, temporary files are deleted.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from ..atomic import atomic_write
from ..data.images import to_tensor

MANIFEST = "manifest.jsonl"
CONTACT_DIR = "contact-sheets"  # OUT/contact-sheets/<index>-<slug>.png, never among the samples
OLD_CONTACT = "contact-sheet.png"  # where earlier versions put a prompt's sheet: inside its folder
RECORD_KEY = "xurdif"  # PNG text chunk holding the image's manifest record
IMAGE_RE = re.compile(r"\d+(-w[0-9.e+-]+)?\.png")  # <seed>.png, a merge sweep's <seed>-w<weight>.png
SLUG_MAX = 48


def slugify(text: str, max_len: int = SLUG_MAX) -> str:
    """Lower-case [a-z0-9-] only: no dots or slashes can ever reach a path."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "untitled"


def job_dir_name(index: int, prompt: str) -> str:
    return f"{index:04d}-{slugify(prompt)}"


def safe_path(out_dir: Path, *parts: str) -> Path:
    """out_dir/parts, refusing anything that would resolve outside out_dir."""
    root = out_dir.resolve()
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"output path {path} escapes the output folder {root}")
    return path


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> H x W x 3 uint8."""
    return (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def write_png_atomic(path: Path, pixels: np.ndarray, text: dict[str, str]) -> None:
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_itxt(k, v)
    with atomic_write(path) as f:
        Image.fromarray(pixels).save(f, format="PNG", pnginfo=info)


def append_manifest(out_dir: Path, record: dict) -> None:
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(out_dir / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # minus the umask
    try:
        os.write(fd, line)  # one write of one line: a kill tears at most this line
        os.fsync(fd)
    finally:
        os.close(fd)


def read_record(png: Path) -> dict | None:
    """The manifest record a PNG carries, or None if it has none / is unreadable."""
    try:
        with Image.open(png) as im:
            return json.loads(im.text[RECORD_KEY])
    except Exception:
        return None


def reconcile(out_dir: Path) -> dict[str, dict]:
    """Make manifest and PNGs agree after any interruption; returns file -> record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for tmp in out_dir.glob("**/.*.tmp"):
        tmp.unlink(missing_ok=True)
    manifest = out_dir / MANIFEST
    records: dict[str, dict] = {}
    raw_lines = manifest.read_bytes().splitlines(keepends=True) if manifest.exists() else []
    dirty = False
    for raw in raw_lines:
        try:
            rec = json.loads(raw)
            rel = rec["file"]
        except (ValueError, KeyError, TypeError):
            dirty = True  # a torn line from a kill mid-append
            continue
        if not raw.endswith(b"\n") or rel in records or not (out_dir / rel).is_file():
            dirty = True
            if not (out_dir / rel).is_file():
                continue
        records[rel] = rec
    for png in sorted(out_dir.glob("*/*.png")):
        rel = png.relative_to(out_dir).as_posix()
        if rel in records or not IMAGE_RE.fullmatch(png.name):
            continue
        rec = read_record(png)
        if rec is not None and rec.get("file") == rel:
            records[rel] = rec  # written, then killed before its manifest line
            dirty = True
    if dirty:
        rewrite_manifest(out_dir, records.values())
    return records


def rewrite_manifest(out_dir: Path, records) -> None:
    with atomic_write(out_dir / MANIFEST, "w") as f:
        for rec in records:
            f.write(json.dumps(rec, sort_keys=True) + "\n")


def save_image(out_dir: Path, rel: str, img: torch.Tensor, record: dict) -> None:
    """PNG (atomic, parameters in its text chunks) then its manifest line."""
    text = {
        "prompt": record["prompt"],
        "seed": str(record["seed"]),
        "model_sha256": record["model_sha256"],
        "parameters": json.dumps(record["params"], sort_keys=True),
        RECORD_KEY: json.dumps(record, sort_keys=True),
        "Software": "xurdif",
    }
    write_png_atomic(safe_path(out_dir, rel), to_uint8(img), text)
    append_manifest(out_dir, record)


def contact_sheet_path(out_dir: Path, folder: str) -> Path:
    return out_dir / CONTACT_DIR / f"{folder}.png"


def write_contact_sheet(out_dir: Path, folder: str, files: list[Path], nrow: int | None = None) -> Path | None:
    """A grid of a prompt's images (read back from disk, so it includes earlier runs), `nrow`
    images a row (default: a square), at OUT/contact-sheets/FOLDER.png: a sample folder
    holds samples only, so tools that read it (tools/evaluate.py --fake) see no sheet among them."""
    from torchvision.utils import make_grid

    imgs = []
    for f in files:
        with Image.open(f) as im:
            imgs.append(to_tensor(im.convert("RGB")))
    if not imgs:
        return None
    h = max(i.shape[1] for i in imgs)
    w = max(i.shape[2] for i in imgs)
    imgs = [torch.nn.functional.pad(i, (0, w - i.shape[2], 0, h - i.shape[1])) for i in imgs]
    grid = make_grid(torch.stack(imgs), nrow=nrow or math.ceil(math.sqrt(len(imgs))), padding=2, pad_value=0)
    path = contact_sheet_path(out_dir, folder)
    write_png_atomic(path, grid.permute(1, 2, 0).numpy(), {"Software": "xurdif"})
    (out_dir / folder / OLD_CONTACT).unlink(missing_ok=True)  # ours, from an earlier version
    return path


