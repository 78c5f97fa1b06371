"""Folder source: scanning, bad-file policy, colour handling, crops and get() determinism."""
from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xurdif.data import DataError, open_dataset
from xurdif.data.folder import scan_folder
from xurdif.recipe import DataCfg

FIXTURE = Path(__file__).parent / "fixtures" / "emoji-faces-32"


def cfg(path: Path | str, **kw) -> DataCfg:
    kw.setdefault("size", 8)
    return DataCfg(source="folder", path=str(path), **kw)


def save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode).save(path)
    return path


def solid(path: Path, rgb=(10, 20, 30), w: int = 8, h: int = 8) -> Path:
    return save(path, np.tile(np.array(rgb, np.uint8), (h, w, 1)))


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) * 127.5).round().to(torch.int64)


def bomb_png(path: Path, w: int = 20000, h: int = 20000) -> Path:
    """A tiny file whose header claims w x h pixels: PIL refuses it before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------- scanning


def test_scan_is_recursive_case_insensitive_sorted_and_ignores_other_files(tmp_path):
    solid(tmp_path / "b.PNG")
    solid(tmp_path / "a.JpG")
    solid(tmp_path / "sub" / "deeper" / "c.webp")
    solid(tmp_path / "sub" / "d.TIFF")
    solid(tmp_path / "e.bmp")
    (tmp_path / "LICENSE.md").write_text("not an image")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "._b.png").write_bytes(b"macOS metadata")
    names = [p.relative_to(tmp_path).as_posix() for p in scan_folder(tmp_path)]
    assert names == ["a.JpG", "b.PNG", "e.bmp", "sub/d.TIFF", "sub/deeper/c.webp"]
    ds = open_dataset(cfg(tmp_path))
    assert len(ds) == 5 and ds.skipped == []


def test_fixture_has_32_images_and_license_is_ignored():
    ds = open_dataset(cfg(FIXTURE, size=32))
    assert len(ds) == 32
    assert ds.skipped == []
    assert ds.describe() == f"32 images from {ds.origin}, cached in memory: 0.1 MB"
    assert all(n.endswith(".png") for n in ds.names())


@pytest.mark.parametrize("make, text", [
    (lambda p: p / "nope", "does not exist"),
    (lambda p: solid(p / "one.png"), "is a file"),
    (lambda p: (p / "LICENSE.md").write_text("x") and p, "no images in"),
])
def test_unusable_paths_are_clear_errors_naming_the_path(tmp_path, make, text):
    path = make(tmp_path)
    with pytest.raises(DataError) as err:
        open_dataset(cfg(path))
    msg = str(err.value)
    assert msg.startswith("data.path: ") and text in msg and str(path) in msg
    assert "\n" not in msg
    assert isinstance(err.value, ValueError)


def test_relative_path_is_taken_from_base_dir(tmp_path):
    solid(tmp_path / "imgs" / "a.png")
    assert len(open_dataset(cfg("imgs"), base_dir=tmp_path)) == 1


# ---------------------------------------------------------------- bad files


def make_bad_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    for i in range(3):
        solid(tmp_path / f"good{i}.png", (i * 50, 0, 0))
    (tmp_path / "corrupt.png").write_bytes(b"this is not a png at all" * 10)
    good = (tmp_path / "good0.png").read_bytes()
    big = solid(tmp_path / "big.png", w=80, h=80)  # fine as an image, but above the pixel limit below
    trunc = tmp_path / "truncated.png"
    full = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    save(tmp_path / "tmp_full.png", full)
    trunc.write_bytes((tmp_path / "tmp_full.png").read_bytes()[:2000])
    (tmp_path / "tmp_full.png").unlink()
    bomb_png(tmp_path / "bomb.png")
    assert good and big
    return tmp_path, {"corrupt.png": "", "big.png": "6400 pixels is more than data.max_image_pixels=5000",
                      "truncated.png": "", "bomb.png": ""}


@pytest.mark.parametrize("cache_max", [100, 0])
def test_corrupt_truncated_and_bomb_files_are_skipped_with_one_warning_each(tmp_path, caplog, cache_max):
    folder, bad = make_bad_folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="xurdif.data"):
        ds = open_dataset(cfg(folder, max_image_pixels=5000, cache_max_images=cache_max))
        # Lazy datasets find a truncated body only when decoding: that happens in get().
        x = ds.get(range(len(ds)), range(len(ds)))
        ds.get(range(len(ds)), range(len(ds)))  # a second pass warns no more
    assert len(ds) == (3 if cache_max else 4)
    assert x.shape == (len(ds), 3, 8, 8)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 4
    for name, reason in bad.items():
        lines = [w for w in warned if name in w]
        assert len(lines) == 1, (name, warned)
        assert reason in lines[0]
    assert sorted(Path(n).name for n, _ in ds.skipped) == sorted(bad)
    assert "(4 skipped)" in ds.describe()


def test_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="none of the 1 images could be read"):
        open_dataset(cfg(tmp_path))


# ---------------------------------------------------------------- colour


def test_rgba_is_composited_on_the_background_colour(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[:, :4] = (255, 0, 0, 255)      # opaque red
    a[:, 4:6] = (255, 0, 0, 128)     # half-transparent red
    a[:, 6:] = (12, 34, 56, 0)       # fully transparent: colour must not leak
    save(tmp_path / "rgba.png", a, "RGBA")
    for bg, rgb in (("#00ff00", (0, 255, 0)), ("navy", (0, 0, 128))):
        px = to_uint8(open_dataset(cfg(tmp_path, background=bg)).get([0], [0])[0])
        assert px[:, 0, 0].tolist() == [255, 0, 0]
        assert px[:, 3, 7].tolist() == list(rgb)
        half = [round((255 * 128 + rgb[0] * 127) / 255), round(rgb[1] * 127 / 255), round(rgb[2] * 127 / 255)]
        assert (px[:, 5, 4] - torch.tensor(half)).abs().max() <= 1


def test_palette_and_la_transparency_and_grey_cmyk(tmp_path):
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    p.paste(1, (0, 0, 4, 8))
    p.info["transparency"] = 0
    p.save(tmp_path / "a_pal.png", transparency=0)
    la = np.zeros((8, 8, 2), np.uint8)
    la[:, :4] = (90, 255)
    save(tmp_path / "b_la.png", la, "LA")
    save(tmp_path / "c_grey.png", np.full((8, 8), 77), "L")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "d_cmyk.jpg", quality=100)
    x = to_uint8(open_dataset(cfg(tmp_path, background="#102030")).get(range(4), range(4)))
    assert x[0, :, 0, 0].tolist() == [200, 100, 50] and x[0, :, 0, 7].tolist() == [16, 32, 48]
    assert x[1, :, 0, 0].tolist() == [90, 90, 90] and x[1, :, 0, 7].tolist() == [16, 32, 48]
    assert x[2, :, 4, 4].tolist() == [77, 77, 77]
    r, g, b = x[3, :, 4, 4].tolist()
    assert r > 240 and g < 15 and b < 15  # CMYK (0, 255, 255, 0) is red


def test_bad_background_names_the_key(tmp_path):
    solid(tmp_path / "a.png")
    with pytest.raises(DataError, match=r"^data\.background: 'nocolour' is not a colour"):
        open_dataset(cfg(tmp_path, background="nocolour"))


# ---------------------------------------------------------------- resize, crop, flip


def columns_image(w: int, h: int) -> np.ndarray:
    """Each column a different value, so a crop's offset can be read back from its pixels."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, :, 0] = (np.arange(w) * 10)[None, :]
    a[:, :, 1] = (np.arange(h) * 10)[:, None]
    return a


def test_non_square_images_keep_aspect_and_crop_to_size(tmp_path):
    save(tmp_path / "wide.png", columns_image(16, 8))
    save(tmp_path / "x_tall_big.png", columns_image(20, 60))
    center = open_dataset(cfg(tmp_path))
    assert [tuple(center.image(i).shape) for i in range(2)] == [(3, 8, 16), (3, 24, 8)]
    px = to_uint8(center.get([0], [0])[0])
    assert px[0, 0].tolist() == [c * 10 for c in range(4, 12)]   # centre columns 4..11
    rand = open_dataset(cfg(tmp_path, crop="random"))
    offsets = set()
    for seed in range(100):
        px = to_uint8(rand.get([0], [seed])[0])
        left = int(px[0, 0, 0]) // 10
        assert px[0, 0].tolist() == [c * 10 for c in range(left, left + 8)]
        assert px[1, :, 0].tolist() == [r * 10 for r in range(8)]  # short side never cropped
        offsets.add(left)
    assert offsets == set(range(9))  # every horizontal offset 0..8 occurs
    assert rand.get([1], [3]).shape == (1, 3, 8, 8)


def test_get_is_deterministic_per_seed_and_independent_of_batch(tmp_path):
    save(tmp_path / "a.png", columns_image(24, 8))
    save(tmp_path / "b.png", columns_image(8, 24))
    c = cfg(tmp_path, crop="random", hflip=True)
    ds = open_dataset(c)
    one = ds.get([0, 1, 0], [11, 12, 13])
    assert torch.equal(one, ds.get([0, 1, 0], [11, 12, 13]))
    assert torch.equal(one[1:2], ds.get([1], [12]))         # batch composition does not matter
    assert torch.equal(one[2:3], ds.get([0], [13]))
    assert not torch.equal(one[0], one[2])                     # same image, other seed: other crop
    assert len({ds.get([0], [s]).numpy().tobytes() for s in range(20)}) > 5
    lazy = open_dataset(DataCfg(**{**c.__dict__, "cache_max_images": 0}))
    assert not lazy.cached and ds.cached
    assert torch.equal(one, lazy.get([0, 1, 0], [11, 12, 13]))  # cached and lazy agree
    flips = {bool(torch.equal(ds.get([0], [s]), ds.get([0], [s]).flip(-1))) for s in range(5)}
    assert flips == {False}


def test_hflip_flips_about_half(tmp_path):
    save(tmp_path / "a.png", columns_image(8, 8))
    ds = open_dataset(cfg(tmp_path, hflip=True))
    plain = open_dataset(cfg(tmp_path)).get([0], [0])
    flipped = sum(bool(torch.equal(ds.get([0], [s]), plain.flip(-1))) for s in range(200))
    kept = sum(bool(torch.equal(ds.get([0], [s]), plain)) for s in range(200))
    assert flipped + kept == 200 and 70 < flipped < 130


def test_values_are_float32_in_minus_one_to_one():
    ds = open_dataset(cfg(FIXTURE, size=16, crop="random", hflip=True))
    x = ds.get(range(32), range(100, 132))
    assert x.dtype == torch.float32 and x.shape == (32, 3, 16, 16)
    assert x.min() >= -1 and x.max() <= 1
    assert x.min() == -1 and x.max() == 1  # black outlines and white background are both present


def test_downscale_is_antialiased(tmp_path):
    # A 1-pixel checkerboard shrunk 4x must become flat grey, not aliased stripes.
    board = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)
    save(tmp_path / "c.png", np.stack([board] * 3, -1))
    px = to_uint8(open_dataset(cfg(tmp_path)).get([0], [0])[0])
    assert (px - 128).abs().max() <= 3


# ---------------------------------------------------------------- one reader for every picture


def sideways_photo(path: Path) -> Path:
    """A 16x8 picture stored the way a phone stores a portrait photo: pixels on their side,
    EXIF orientation 6 ("rotate 90 degrees clockwise to show"). Upright it is 8 wide, 16 high,
    red on top (the stored left half) and blue below."""
    a = np.zeros((8, 16, 3), np.uint8)
    a[:, :8] = (255, 0, 0)
    a[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, exif=exif.tobytes())
    return path


def test_exif_orientation_is_applied_to_training_init_and_guide_images(tmp_path):
    from xurdif.guidance.images import load_image
    from xurdif.render.plan import load_init

    (tmp_path / "data").mkdir()
    photo = sideways_photo(tmp_path / "data" / "photo.png")
    ds = open_dataset(cfg(tmp_path / "data", size=8, cache_max_images=0))
    upright = ds.image(0)
    assert tuple(upright.shape) == (3, 16, 8)
    assert upright[:, 0, 0].tolist() == [255, 0, 0] and upright[:, 15, 0].tolist() == [0, 0, 255]
    guide = load_image(str(photo), "target")
    assert tuple(guide.shape) == (1, 3, 16, 8) and guide[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]
    init, (w, h) = load_init(str(photo), None, (16, 16), 8)
    assert (w, h) == (8, 16) and tuple(init.shape) == (3, 16, 8)
    assert init[:, 0, 4].tolist() == [1.0, 0.0, 0.0] and init[:, 15, 4].tolist() == [0.0, 0.0, 1.0]


def test_extreme_aspect_ratio_is_cropped_before_resizing_so_memory_stays_bounded(tmp_path):
    # 100000 x 1 pixels: a 400-byte PNG. Resized to a short side of 8 it would be
    # 800000 x 8 x 3 = 19.2 MB in the cache (3 GB for a 1,000,000 x 1 strip at 32 px).
    save(tmp_path / "strip.png", np.tile(np.array([[[200, 100, 50]]], np.uint8), (1, 100_000, 1)))
    solid(tmp_path / "square.png", w=8, h=8)
    ds = open_dataset(cfg(tmp_path, size=8))
    assert ds.cache_bytes() == 3 * 8 * (4 * 8) + 3 * 8 * 8  # the strip keeps 4:1 of its centre
    assert tuple(ds.image(1).shape) == (3, 8, 32)
    assert to_uint8(ds.get([1], [0])[0])[:, 4, 4].tolist() == [200, 100, 50]


def test_tiff_and_exotic_files_are_read_or_skipped_by_name(tmp_path, caplog):
    solid(tmp_path / "a.TIF", (1, 2, 3))
    solid(tmp_path / "b.tiff", (4, 5, 6))
    (tmp_path / "c.png").write_bytes(b"")                      # empty file
    (tmp_path / "d.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 50)  # a JPEG header, no picture
    with caplog.at_level(logging.WARNING, logger="xurdif.data"):
        ds = open_dataset(cfg(tmp_path))
    assert len(ds) == 2 and sorted(Path(n).name for n, _ in ds.skipped) == ["c.png", "d.jpg"]
    assert not any("BytesIO" in r.getMessage() for r in caplog.records)
    assert "not an image PIL can identify" in dict((Path(n).name, r) for n, r in ds.skipped)["c.png"]


def test_fifos_and_folders_named_like_images_are_not_read(tmp_path):
    """Opening a FIFO blocks for ever: the scan lists regular files only."""
    import os

    solid(tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "folder.jpg").mkdir()
    assert [p.name for p in scan_folder(tmp_path)] == ["a.png"]
    from xurdif.data.images import BadImage, read_picture
    for name in ("pipe.png", "folder.jpg"):
        with pytest.raises(BadImage, match="^not a regular file$"):
            read_picture(tmp_path / name)
