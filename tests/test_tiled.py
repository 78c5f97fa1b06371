"""Tiled and wrapping canvases (xurdif/diffusion/tiled.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from xurdif.diffusion.denoiser import Denoiser
from xurdif.diffusion.samplers import SAMPLERS, sample
from xurdif.diffusion.schedule import make_schedule
from xurdif.diffusion.tiled import TiledDenoiser, plan, positions
from xurdif.weights import load_denoiser

SCHED = make_schedule("cosine", 1000)


class Pointwise:
    """A denoiser whose x0 at each pixel is a smooth function of x_t at that pixel
    and t: the untiled prediction is known exactly, so tiling must reproduce it."""

    schedule = SCHED
    value_range = (-1.0, 1.0)

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, x, t):
        self.shapes.append(tuple(x.shape))
        ab = self.schedule.ab(t).view(-1, 1, 1, 1)
        return torch.tanh(1.3 * ab.sqrt() * x) + 0.1 * torch.sin(x)


class SmoothNet(torch.nn.Module):
    """A fixed, hand-made smooth denoiser network (x0 prediction): three 7x7
    Gaussian blurs with zero padding, then tanh. Its zero padding darkens every
    tile's border, so independent tiles show seams; blending must hide them.
    The trained-model seam tests at the end of this file check the same on
    real content."""

    def __init__(self):
        super().__init__()
        k = torch.exp(-torch.arange(-3, 4.0) ** 2 / 4)
        k = k / k.sum()
        self.register_buffer("k", (k[:, None] * k[None, :]).expand(3, 1, 7, 7).clone())

    def forward(self, x, t):
        for _ in range(3):
            x = F.conv2d(x, self.k, padding=3, groups=3)
        return torch.tanh(2 * x)


def smooth_init(n: int, h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = torch.stack([torch.sin(3 * xx) * torch.cos(2 * yy), xx * yy, torch.cos(4 * yy)])
    return img[None].repeat(n, 1, 1, 1)


def gens(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(100 + i) for i in range(n)]


def seam_score(img: torch.Tensor, borders: list[int]) -> float:
    """Mean |x[c] - x[c-1]| across the column borders `borders` (indices mod W,
    0 = the wrap border) over the same for columns at least 3 px from any border."""
    w = img.shape[-1]
    d = (img - img.roll(1, dims=3)).abs().mean(dim=(0, 1, 2))
    b = sorted({c % w for c in borders})
    far = [c for c in range(1, w) if all(min((c - x) % w, (x - c) % w) >= 3 for x in b)]
    return float(d[b].mean() / d[far].mean())


def tile_borders(h: int, w: int, tile, overlap: int, wrap: bool) -> list[int]:
    p = plan(h, w, tile, overlap, wrap)
    tw = p.tile[1]
    edges = {x for _, x in p.starts} | {(x + tw) % w for _, x in p.starts}
    return sorted(e for e in edges if wrap or 0 < e < w)


# --- geometry ----------------------------------------------------------------

def test_positions_cover_the_canvas_with_at_least_the_overlap():
    assert positions(100, 32, 8, False) == [0, 23, 45, 68]
    assert positions(32, 32, 8, False) == [0]
    assert positions(40, 16, 8, True) == [0, 8, 16, 24, 32]
    assert positions(40, 40, 0, True) == [0, 20]  # wrap: the border inside the shifted tile
    for length, tile, ov, wrap in ((100, 32, 8, False), (97, 24, 6, True), (64, 16, 0, False)):
        p = positions(length, tile, ov, wrap)
        gaps = [b - a for a, b in zip(p, p[1:] + ([p[0] + length] if wrap else []))]
        assert all(tile - g >= ov for g in gaps), (p, gaps)
        covered = torch.zeros(length, dtype=torch.bool)
        for s in p:
            covered[torch.arange(s, s + tile) % length] = True
        assert bool(covered.all())


def test_weights_fall_smoothly_to_interior_edges_only():
    p = plan(32, 64, (32, 32), 16, False)
    assert len(p.weights) == 3  # one row of tiles: starts 0, 16, 32
    first = p.weights[0][0]
    assert first[0] == 1.0 and first[-1] < 0.01  # canvas edge: full weight; tile edge: near zero
    assert torch.all(first[:-1] >= first[1:])    # monotone fall, no step
    assert float(p.norm.min()) >= 1.0 - 1e-9


# --- tiled equals untiled ----------------------------------------------------

@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("tile,overlap,wrap", [((16, 16), 6, False), ((24, 16), 8, True), (None, 0, True)])
def test_tiled_sample_equals_untiled_for_a_pointwise_denoiser(sampler, tile, overlap, wrap):
    h, w = 40, 56
    init = smooth_init(2, h, w)  # img2img from an init image the size of the canvas
    opts = {"eta": 0.5} if sampler == "ddim" else {}
    ref = sample(Pointwise(), (2, 3, h, w), sampler, 10, generator=gens(2), init=init, strength=0.7,
                 device="cpu", **opts)
    den = Pointwise()
    got = sample(TiledDenoiser(den, tile, overlap, wrap, batch=5), (2, 3, h, w), sampler, 10,
                 generator=gens(2), init=init, strength=0.7, device="cpu", **opts)
    assert (got - ref).abs().max() < 1e-4
    # Every image's every tile went through the inner denoiser once per step, 5 at a time.
    tiles = len(plan(h, w, tile, overlap, wrap).weights)
    per_step = [5] * (2 * tiles // 5) + ([2 * tiles % 5] if 2 * tiles % 5 else [])
    assert [s[0] for s in den.shapes] == per_step * 7  # ceil(0.7 * 10) steps


def test_tiles_are_differentiable_for_guidance_through_the_unet():
    x = torch.randn(1, 3, 24, 40, requires_grad=True)
    td = TiledDenoiser(Pointwise(), (16, 16), 8, False)
    (g,) = torch.autograd.grad(td(x, torch.tensor([500])).sum(), x)
    (ref,) = torch.autograd.grad(Pointwise()(x, torch.tensor([500])).sum(), x)
    assert (g - ref).abs().max() < 1e-5


# --- seams -------------------------------------------------------------------

def _render(tile, overlap, wrap, h=48, w=96, n=4):
    den = Denoiser(SmoothNet(), SCHED, "x0")
    x = sample(TiledDenoiser(den, tile, overlap, wrap), (n, 3, h, w), "ddim", 8, generator=gens(n),
               device="cpu")
    return x, tile_borders(h, w, tile, overlap, wrap)


def test_blended_tiles_show_no_seams_independent_tiles_do():
    blended, borders = _render((48, 32), 16, False)
    hard, hard_borders = _render((48, 32), 0, False)
    assert hard_borders == [32, 64]
    assert seam_score(blended, borders) <= 1.15
    assert seam_score(hard, hard_borders) >= 2.0


@pytest.mark.parametrize("tile", [None, (48, 32)])
def test_wrap_border_is_seamless(tile):
    x, _ = _render(tile, 16, True)
    assert seam_score(x, [0]) <= 1.15
    # The same network without wrap has a strong seam there (its zero padding).
    flat, _ = _render(None, 0, False)
    assert seam_score(flat, [0]) >= 2.0


# --- seams of a trained model -------------------------------------------------
#
# Why strips: a model trained on the fixture's centred faces draws one face per
# tile with a white margin, so independent tiles meet white to white and the tile
# borders were the smoothest columns of the canvas (score 0.33 for overlap 0 vs
# 0.32 blended, 48x96, 3 seeds), measuring repeated content, not seams; and it
# ignored img2img inits even at strength 0.1 (its x0 at low noise is a face
# whatever the input). Trained on random 16 px crops of strips of the same faces,
# the model draws faces at any horizontal phase, cut by its tile's edges, so tiles
# that do not agree show seams.

FACES = Path(__file__).resolve().parent / "fixtures" / "emoji-faces-32"
RECIPE = Path(__file__).resolve().parent / "recipes" / "fixture.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from PIL import Image

    from xurdif.train.cli import main as launch_main

    d = tmp_path_factory.mktemp("seams")
    faces = [Image.open(p).convert("RGB") for p in sorted(FACES.glob("*.png"))]
    (d / "strips").mkdir()
    for i in range(len(faces)):  # six faces side by side; the trainer resizes 32 -> 16 px tall
        strip = Image.new("RGB", (32 * 6, 32))
        for j in range(6):
            strip.paste(faces[(5 * i + j) % len(faces)], (32 * j, 0))
        strip.save(d / "strips" / f"{i:02d}.png")
    # The demo recipe's objective (x0, edge-L1 + SSIM); 200 steps take ~11 s on 2 idle cores.
    rc = launch_main([str(RECIPE), f"train.output_dir={d / 'run'}", f"data.path={d / 'strips'}",
                      "data.crop=random", "train.steps=200", "checkpoint.every_steps=200", "samples.every_steps=0",
                      "diffusion.prediction=x0", "loss.l2=0", "loss.edge_l1=1.0", "loss.ssim=0.2"])
    assert rc == 0
    return load_denoiser(d / "run" / "model.safetensors")[0]


def _trained_render(den, h, w, n, tile, overlap, wrap):
    return sample(TiledDenoiser(den, tile, overlap, wrap), (n, 3, h, w), "ddim", 10, generator=gens(n),
                  device="cpu")


@pytest.mark.slow
def test_trained_model_blended_tiles_show_no_seams_independent_tiles_do(trained):
    # 6x3 model sizes; a quarter-tile overlap is what the renderer's tile=auto uses.
    borders = tile_borders(48, 96, (16, 16), 4, False)
    blended = seam_score(_trained_render(trained, 48, 96, 8, (16, 16), 4, False), borders)
    hard = seam_score(_trained_render(trained, 48, 96, 8, (16, 16), 0, False), [16, 32, 48, 64, 80])
    # Measured over sampling seeds 100, 200, 300 x train.seed 0, 1: blended 0.97-1.01
    # (1.009 here), hard 1.36-1.58 (1.483). Overlap 8 scored 1.09-1.13 in a like
    # study: its tiles average two predictions over most columns, which blurs the
    # far columns a little.
    assert blended <= 1.15
    assert hard >= 1.25


@pytest.mark.slow
def test_trained_model_wrap_border_is_seamless(trained):
    wrapped = seam_score(_trained_render(trained, 48, 32, 24, (16, 16), 4, True), [0])
    flat = seam_score(_trained_render(trained, 48, 32, 24, (16, 16), 4, False), [0])
    # Measured as above: wrapped 0.92-1.02 (0.918 here); without wrap the canvas's
    # left and right edges are unrelated content: 1.44-1.67 (1.544). (Canvas-sized half-shifted tiles,
    # tile=None, scored 1.01-1.15 on 48x32 and 1.04-1.14 on 16x16 from a single
    # border column: too close to the bound to assert here; SmoothNet covers them.)
    assert wrapped <= 1.15
    assert flat >= 1.25
