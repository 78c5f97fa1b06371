"""Multi-scale sliced Wasserstein distance (ProGAN, Karras et al. 2018, appendix D).

Each image becomes a Laplacian pyramid from full resolution down to 16 px. At
every level, random 7x7 patches are cut out; each set's patches are normalised
per level and colour channel by that set's own mean and std (as ProGAN does, so
the distance compares local structure, not overall brightness); and the
distance between the two clouds of 147-d descriptors is the mean, over random
unit directions, of the 1-D Wasserstein distance of their projections. Values
are reported x 1e3 like ProGAN's `SWDx1e3_<res>`: the finest level reflects
details and noise, the coarsest overall shapes.

Both sets draw patch positions and directions from generators seeded with the
same seed, so swd(x, x) is exactly 0 and comparisons of two models against the
same real set share their random numbers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..seeds import derive_seed
from .images import EvaluateError, as_float01, check_images, resize_to

PATCH = 7
MIN_RESOLUTION = 16

# Binomial 5x5 kernel: the Gaussian of cv2.pyrDown.
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
_KERNEL = torch.outer(_BINOMIAL, _BINOMIAL) / 256


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    kernel = (_KERNEL * gain).to(x).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])


def _pyr_down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[:, :, ::2, ::2]


def _pyr_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    up = x.new_zeros(x.shape[0], x.shape[1], size[0], size[1])
    up[:, :, ::2, ::2] = x
    # The zeros hold 3/4 of the samples, hence the gain of 4.
    return _blur(up, gain=4.0)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[band at full resolution, ..., band at 1/2^(levels-2), low-pass residual]."""
    pyramid = [images]
    for _ in range(levels - 1):
        low = _pyr_down(pyramid[-1])
        pyramid[-1] = pyramid[-1] - _pyr_up(low, pyramid[-1].shape[-2:])
        pyramid.append(low)
    return pyramid


def pyramid_resolutions(height: int, width: int) -> list[int]:
    """Image heights of the levels: full size halved down to 16 px (ProGAN's rule)."""
    res, resolutions = min(height, width), []
    while res >= MIN_RESOLUTION:
        resolutions.append(res)
        res //= 2
    return resolutions


def _descriptors(level: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` normalised 7x7 patches [count, 3*7*7], spread evenly over the images."""
    n, c, h, w = level.shape
    image = torch.arange(count) % n
    top = torch.randint(0, h - PATCH + 1, (count,), generator=generator)
    left = torch.randint(0, w - PATCH + 1, (count,), generator=generator)
    offsets = torch.arange(PATCH)
    rows = (top[:, None] + offsets)[:, None, :, None]           # [count, 1, 7, 1]
    cols = (left[:, None] + offsets)[:, None, None, :]          # [count, 1, 1, 7]
    chans = torch.arange(c)[None, :, None, None]                # [1, c, 1, 1]
    patches = level[image[:, None, None, None], chans, rows, cols]  # [count, c, 7, 7]
    patches = patches - patches.mean(dim=(0, 2, 3), keepdim=True)
    patches = patches / patches.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return patches.reshape(count, -1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator,
                       repeats: int = 4, directions: int = 128) -> float:
    """Mean 1-D Wasserstein distance of a [K, D] and b [K, D] along random unit directions."""
    results = []
    for _ in range(repeats):
        dirs = torch.randn(a.shape[1], directions, generator=generator, dtype=a.dtype)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        # [directions, K]: sorting along the contiguous dim is several times faster.
        proj_a = (dirs.T @ a.T).sort(dim=1).values
        proj_b = (dirs.T @ b.T).sort(dim=1).values
        results.append((proj_a - proj_b).abs().mean())
    return float(torch.stack(results).mean())


def swd(images_a: torch.Tensor, images_b: torch.Tensor, patches_per_image: int = 128,
        seed: int = 0, max_patches: int = 1 << 16) -> dict:
    """{"levels": {resolution: SWD x 1e3}, "mean": mean over levels}.

    Images are float [0, 1] or uint8 [N, 3, H, W]; images_b is resized to
    images_a's size when they differ. Both sets contribute the same number of
    patches (patches_per_image x the smaller set, at most max_patches).
    """
    check_images(images_a, "images_a")
    check_images(images_b, "images_b")
    a = as_float01(images_a).cpu()
    b = resize_to(images_b.cpu(), tuple(a.shape[-2:]))
    resolutions = pyramid_resolutions(*a.shape[-2:])
    if not resolutions:
        raise EvaluateError(f"SWD needs images of at least {MIN_RESOLUTION} px, got "
                            f"{a.shape[-2]}x{a.shape[-1]}")
    count = min(patches_per_image * min(a.shape[0], b.shape[0]), max_patches)
    gen_a, gen_b, gen_dirs = (torch.Generator().manual_seed(derive_seed(seed, "swd")) for _ in range(3))
    levels = {}
    pyramids = zip(laplacian_pyramid(a, len(resolutions)), laplacian_pyramid(b, len(resolutions)))
    for res, (level_a, level_b) in zip(resolutions, pyramids):
        desc_a = _descriptors(level_a, count, gen_a)
        desc_b = _descriptors(level_b, count, gen_b)
        levels[res] = sliced_wasserstein(desc_a, desc_b, gen_dirs) * 1e3
    return {"levels": levels, "mean": sum(levels.values()) / len(levels)}
