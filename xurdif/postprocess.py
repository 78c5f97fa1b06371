"""Postprocessing chain for rendered images (kornia), [0, 1] images in and out.

A chain is written `op:value,op:value,...` and applied left to right, e.g.
`contrast:1.1,gamma:0.9,unsharp:0.5`; a preset name may stand for a chain
(`crisp` or `crisp,grain:0.02`). Grain is seeded per image so a rerun gives
the same pixels.
"""
from __future__ import annotations

from typing import Callable, Sequence

import kornia
import torch

from .options import coerce
from .wording import close_matches, did_you_mean
from .shown import shown

Image = torch.Tensor  # [N, 3, H, W] in [0, 1]


def contrast(x: Image, f: float, gens=None) -> Image:
    # Around each image's mean grey, so contrast changes spread, not brightness.
    return kornia.enhance.adjust_contrast_with_mean_subtraction(x, f).clamp(0, 1)


def gamma(x: Image, g: float, gens=None) -> Image:
    return kornia.enhance.adjust_gamma(x.clamp(0, 1), g)


def saturation(x: Image, f: float, gens=None) -> Image:
    return kornia.enhance.adjust_saturation(x, f).clamp(0, 1)


def median_kernel(k: float) -> int:
    if k < 3 or k % 2 != 1:
        raise ValueError(f"median kernel must be an odd integer >= 3, got {k:g}")
    return int(k)


def median(x: Image, k: float, gens=None) -> Image:
    k = median_kernel(k)
    return kornia.filters.median_blur(x, (k, k))


def bilateral(x: Image, sigma_color: float, gens=None) -> Image:
    # Edge-preserving smoothing: a 5x5 window, spatial sigma 1.5 px; the value
    # is the colour sigma (0.05 subtle .. 0.3 strong).
    return kornia.filters.bilateral_blur(x, (5, 5), sigma_color, (1.5, 1.5)).clamp(0, 1)


def unsharp(x: Image, amount: float, gens=None) -> Image:
    blurred = kornia.filters.gaussian_blur2d(x, (5, 5), (1.0, 1.0), border_type="reflect")
    return (x + amount * (x - blurred)).clamp(0, 1)


def clahe(x: Image, clip: float, gens=None) -> Image:
    # Grid of 8x8 tiles, or fewer for tiny images (a tile needs a few pixels).
    g = max(1, min(8, x.shape[-1] // 16, x.shape[-2] // 16))
    return kornia.enhance.equalize_clahe(x, clip_limit=float(clip), grid_size=(g, g)).clamp(0, 1)


def grain(x: Image, amount: float, gens: Sequence[torch.Generator] | None = None) -> Image:
    """Monochrome film grain with std `amount`, from per-image generators."""
    shape = (1, *x.shape[-2:])
    if gens is None:
        noise = torch.randn(x.shape[0], *shape)
    else:
        noise = torch.stack([torch.randn(shape, generator=g) for g in gens])
    return (x + amount * noise.to(x.device, x.dtype)).clamp(0, 1)


OPS: dict[str, Callable[..., Image]] = {
    "contrast": contrast, "gamma": gamma, "saturation": saturation, "median": median,
    "bilateral": bilateral, "unsharp": unsharp, "clahe": clahe, "grain": grain,
}

# What each op's value may be (inclusive): past these an op either does nothing useful or,
# like a median of 999 px, runs for hours. Checked when a chain is parsed, so a bad prompt
# line fails before any rendering.
RANGES: dict[str, tuple[float, float]] = {
    "contrast": (0.0, 5.0), "gamma": (0.05, 10.0), "saturation": (0.0, 5.0), "median": (3, 15),
    "bilateral": (0.001, 1.0), "unsharp": (0.0, 5.0), "clahe": (0.1, 100.0), "grain": (0.0, 1.0),
}

PRESETS: dict[str, str] = {
    "crisp": "contrast:1.1,unsharp:0.6",
    "soft": "bilateral:0.1,gamma:0.95",
    "film": "contrast:1.05,saturation:0.85,grain:0.03",
    "vivid": "saturation:1.3,contrast:1.1,clahe:1.5",
    "clean": "median:3,unsharp:0.4",
}


def parse_chain(spec: str, presets: dict[str, str] | None = None) -> list[tuple[str, float]]:
    """`contrast:1.1,crisp` -> [("contrast", 1.1), ...]; ValueError names what is valid."""
    presets = {**PRESETS, **(presets or {})}
    return _parse(spec, presets, seen=())


def _parse(spec: str, presets: dict[str, str], seen: tuple[str, ...]) -> list[tuple[str, float]]:
    chain: list[tuple[str, float]] = []
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        name, sep, value = item.partition(":")
        name = name.strip()
        if not sep:
            if name not in presets:
                raise ValueError(_unknown(name, list(OPS) + list(presets), "postprocessing op or preset"))
            if name in seen:
                raise ValueError(f"postprocessing preset {name!r} refers to itself")
            chain += _parse(presets[name], presets, seen + (name,))
            continue
        if name not in OPS:
            raise ValueError(_unknown(name, list(OPS), "postprocessing op"))
        ok, number = coerce(float, value.strip())
        if not ok:
            raise ValueError(f"postprocessing op {name!r} needs a number, got {shown(value)}")
        lo, hi = RANGES[name]
        if not lo <= number <= hi:
            raise ValueError(f"postprocessing op {name!r} takes {lo:g}..{hi:g}, got {value.strip()!r}")
        if name == "median":
            median_kernel(number)
        chain.append((name, number))
    return chain


def _unknown(name: str, valid: list[str], what: str) -> str:
    hint = did_you_mean(close_matches(name, valid))
    return f"unknown {what} {name!r}" + (f"; {hint}" if hint else "") + f" (valid: {', '.join(valid)})"


def apply_chain(x: Image, chain: list[tuple[str, float]],
                gens: Sequence[torch.Generator] | None = None) -> Image:
    for name, value in chain:
        x = OPS[name](x, value, gens)
    return x


def postprocess(x: Image, spec: str, gens: Sequence[torch.Generator] | None = None,
                presets: dict[str, str] | None = None) -> Image:
    return apply_chain(x, parse_chain(spec, presets), gens)
