"""Reading pictures, once for every reader: training data (folder, hf, shards), init and
guide images, and evaluation.

`read_picture` is the one way a file becomes pixels: bomb and corrupt-file checks, the
first frame of an animation, EXIF orientation, transparency on a background colour.
`decode_image` adds training's aspect-preserving resize (short side == size), and
`training_view` its centre crop, so evaluation sees what training saw. `cover` is the
one way a picture is fitted to another aspect ratio (training views, init images), and
`to_tensor` the one way a picture becomes a tensor.
"""
from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch
from PIL import Image, ImageColor, ImageOps

from xurdif.recipe.schema import DataCfg
from xurdif.shown import clean

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS: int = DataCfg.max_image_pixels  # readers without a recipe use its default
# Training crops a square from a picture whose short side is `size`: a very long strip
# would otherwise be kept (and cached) at size x (size * aspect) pixels, 3 GB for a
# 1,000,000 x 1 strip at 32 px. Cropping the long side to MAX_ASPECT x the short side
# before resizing bounds every decoded image at size x MAX_ASPECT * size.
MAX_ASPECT = 4

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


def find_image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, extensions in any case, sorted by relative path.

    Hidden files and folders are left out: '._x.png' files are macOS metadata, not images,
    and '.xurdif-cache' style folders are ours.
    """
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        # Not a FIFO or socket (reading one blocks); a dangling link stays, to be skipped with a warning.
        found += [Path(root) / f for f in files if is_image_name(f) and not f.startswith(".")
                  and (os.path.isfile(os.path.join(root, f)) or _dangling(os.path.join(root, f)))]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Composite anything with transparency on the background; convert grey/CMYK/palette to RGB."""
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


def _dangling(path: str | os.PathLike) -> bool:
    return os.path.islink(path) and not os.path.exists(path)


def _check_path(src: ImageSource) -> None:
    if isinstance(src, (str, os.PathLike)):
        if _dangling(src):
            raise BadImage(f"a symbolic link to {clean(os.readlink(src))}, which does not exist")
        if os.path.exists(src) and not os.path.isfile(src):
            raise BadImage("not a regular file")  # a folder, or a FIFO whose open() would block


def _reason(e: BaseException) -> str:
    if isinstance(e, Image.UnidentifiedImageError):
        # PIL's text names the stream object ("<_io.BytesIO object at 0x...>"), not the file.
        return "not an image PIL can identify"
    return clean(str(e) or type(e).__name__)


def read_picture(src: ImageSource, background: tuple[int, int, int] = (255, 255, 255),
                 max_pixels: int = DEFAULT_MAX_PIXELS, grey: bool = False) -> Image.Image:
    """An RGB PIL image, upright (EXIF orientation applied), transparency on `background`
    (grey: the plain luminance, alpha ignored, for masks).
    Raises BadImage with a one-line reason for any file that cannot be used."""
    if isinstance(src, bytes):
        src = io.BytesIO(src)
    _check_path(src)
    try:
        with warnings.catch_warnings():
            # Our own limit is checked below; PIL's warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise BadImage(f"{w}x{h} = {w * h} pixels is more than data.max_image_pixels={max_pixels}")
                if w < 1 or h < 1:
                    raise BadImage(f"{w}x{h} has no pixels")
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)  # first frame of an animation / multi-picture file
                im.load()
                # A phone photo stores its pixels sideways plus an orientation tag.
                upright = ImageOps.exif_transpose(im)
                return upright.convert("L") if grey else to_rgb(upright, background)
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise BadImage(f"decompression bomb: {e}") from None
    except Exception as e:  # noqa: BLE001 - a hostile file can make PIL raise almost anything
        raise BadImage(_reason(e)) from None


def bound_aspect(im: Image.Image, max_aspect: int = MAX_ASPECT) -> Image.Image:
    """Centre-crop the long side to at most max_aspect x the short side."""
    w, h = im.size
    if w > max_aspect * h:
        left = (w - max_aspect * h) // 2
        return im.crop((left, 0, left + max_aspect * h, h))
    if h > max_aspect * w:
        top = (h - max_aspect * w) // 2
        return im.crop((0, top, w, top + max_aspect * w))
    return im


def resize_short_side(im: Image.Image, size: int) -> Image.Image:
    """Aspect-preserving Lanczos resize so that the short side equals `size`."""
    w, h = im.size
    if min(w, h) == size:
        return im
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return im.resize(new, Image.Resampling.LANCZOS, reducing_gap=3.0)


def cover(im: Image.Image, size: tuple[int, int], reducing_gap: float | None = 3.0) -> Image.Image:
    """The picture scaled to cover `size` (width, height) and centre-cropped to it, never distorted.

    The long side is first cut to what the crop can use (and to no less than MAX_ASPECT x
    the short side, as training keeps), so a 1,000,000 x 1 strip is never scaled up whole.
    """
    w, h = size
    im = bound_aspect(im, max(MAX_ASPECT, math.ceil(max(w / h, h / w))))
    scale = max(w / im.width, h / im.height)
    im = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))),
                   Image.Resampling.LANCZOS, reducing_gap=reducing_gap)
    left, top = (im.width - w) // 2, (im.height - h) // 2
    return im.crop((left, top, left + w, top + h))


def to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 [C, h, w]: C = 3 for RGB, 1 for grey."""
    arr = np.array(im, dtype=np.uint8)  # a writable copy torch can own
    return torch.from_numpy(arr.reshape(im.height, im.width, -1)).permute(2, 0, 1).contiguous()


def decode_image(src: ImageSource, size: int, background: tuple[int, int, int], max_pixels: int) -> torch.Tensor:
    """RGB uint8 [3, h, w] with min(h, w) == size and max(h, w) <= MAX_ASPECT * size.
    Raises BadImage with a reason for any bad file."""
    im = read_picture(src, background, max_pixels)
    try:
        return to_tensor(resize_short_side(bound_aspect(im), size))
    except (OSError, ValueError, MemoryError) as e:
        raise BadImage(_reason(e)) from None


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, h, w] (short side == size) -> [3, size, size], as data.crop: center does."""
    from xurdif.data.augment import crop_flip

    return crop_flip(img, size, "center", False, 0)


def training_view(src: ImageSource, size: int | tuple[int, int], background: tuple[int, int, int] = (255, 255, 255),
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """uint8 [3, size, size]: the picture exactly as training with data.crop: center sees it.
    A (height, width) size scales the picture to cover it and centre-crops (renders at
    another aspect ratio); a square one is the same as an int."""
    h, w = (size, size) if isinstance(size, int) else size
    if h == w:
        return center_crop(decode_image(src, h, background, max_pixels), h)
    return to_tensor(cover(read_picture(src, background, max_pixels), (w, h)))


def check_header(src: ImageSource, max_pixels: int) -> None:
    """Cheap check without decoding pixels (lazy datasets): raises BadImage for unreadable or huge files."""
    if isinstance(src, bytes):
        src = io.BytesIO(src)
    _check_path(src)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                w, h = im.size
    except Image.DecompressionBombError as e:
        raise BadImage(f"decompression bomb: {e}") from None
    except Exception as e:  # noqa: BLE001 - see read_picture
        raise BadImage(_reason(e)) from None
    if w * h > max_pixels:
        raise BadImage(f"{w}x{h} = {w * h} pixels is more than data.max_image_pixels={max_pixels}")
    if w < 1 or h < 1:
        raise BadImage(f"{w}x{h} has no pixels")


def display_path(path: Path) -> str:
    """Relative to the working directory when inside it, for shorter messages."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
