"""Decoding one image: bytes or file -> RGB uint8 tensor [3, h, w] whose short side is `size`.

Every source (folder, hf, shards) decodes through `decode_image`, so the same file
gives the same tensor whichever source reads it.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch
from PIL import Image, ImageColor

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

ImageSource = Union[str, os.PathLike, bytes, BinaryIO]


class DataError(ValueError):
    """Data that cannot be used, reported before training starts (one line, naming the path or key)."""


class BadImage(Exception):
    """One image that must be skipped; the message is the reason."""


def parse_colour(text: str) -> tuple[int, int, int]:
    """'#rrggbb' or a colour name PIL knows -> (r, g, b); DataError names data.background."""
    try:
        rgb = ImageColor.getrgb(text)
    except (ValueError, AttributeError):
        raise DataError(f"data.background: {text!r} is not a colour; use '#rrggbb' or a name such as 'white'") from None
    return tuple(rgb[:3])  # type: ignore[return-value]


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Composite anything with transparency on the background; convert grey/CMYK/palette to RGB.
    Every picture xurdif reads (training data, init, guide and evaluation images) goes through it."""
    if im.mode == "P":
        # Palette images may carry transparency in their info dict; RGBA keeps it.
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBa", "La"):
        im = im.convert("RGBA")
    if im.mode in ("LA", "PA") or (im.mode in ("L", "RGB", "I", "I;16", "F") and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        base = Image.new("RGB", im.size, background)
        base.paste(im, mask=im.getchannel("A"))
        return base
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float greyscale: scale to 8 bits rather than clipping at 255.
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def resize_short_side(im: Image.Image, size: int) -> Image.Image:
    """Aspect-preserving Lanczos resize so that the short side equals `size`."""
    w, h = im.size
    if min(w, h) == size:
        return im
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return im.resize(new, Image.Resampling.LANCZOS, reducing_gap=3.0)


def decode_image(src: ImageSource, size: int, background: tuple[int, int, int], max_pixels: int) -> torch.Tensor:
    """RGB uint8 [3, h, w] with min(h, w) == size. Raises BadImage with a reason for any bad file."""
    if isinstance(src, bytes):
        src = io.BytesIO(src)
    try:
        with warnings.catch_warnings():
            # Our own limit is checked below; PIL's warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise BadImage(f"{w}x{h} = {w * h} pixels is more than data.max_image_pixels={max_pixels}")
                if im.format in ("GIF", "MPO") or getattr(im, "n_frames", 1) > 1:
                    im.seek(0)  # first frame of an animation / multi-picture file
                im.load()
                im = resize_short_side(to_rgb(im, background), size)
                arr = np.array(im, dtype=np.uint8)  # a writable copy torch can own
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise BadImage(f"decompression bomb: {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.UnidentifiedImageError) as e:
        # Truncated files raise OSError, unreadable headers UnidentifiedImageError/SyntaxError.
        raise BadImage(str(e) or type(e).__name__) from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def check_header(src: ImageSource, max_pixels: int) -> None:
    """Cheap check without decoding pixels (lazy datasets): raises BadImage for unreadable or huge files."""
    if isinstance(src, bytes):
        src = io.BytesIO(src)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                w, h = im.size
    except Image.DecompressionBombError as e:
        raise BadImage(f"decompression bomb: {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.UnidentifiedImageError) as e:
        raise BadImage(str(e) or type(e).__name__) from None
    if w * h > max_pixels:
        raise BadImage(f"{w}x{h} = {w * h} pixels is more than data.max_image_pixels={max_pixels}")


def display_path(path: Path) -> str:
    """Relative to the working directory when inside it, for shorter messages."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
