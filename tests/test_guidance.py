"""Guidance: options, cutouts, CLIP loading, and that every guide steers a
render toward its goal without touching any network's parameters.

CLIP here is a tiny random-weight open_clip ViT registered from a temporary
config (32 px input, 4 blocks), so a guided 8-step render takes well under a
second on one CPU core. The denoiser is the exact posterior-mean denoiser of
Gaussian data N(0, 0.25) plus a small conv (so it has parameters), scaled so
its x0 prediction depends on x_t as a trained model's does.
"""
from __future__ import annotations

import json
import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_msssim import ssim
from torch import nn

from xurdif.diffusion.denoiser import Denoiser
from xurdif.diffusion.samplers import sample
from xurdif.diffusion.schedule import make_schedule
from xurdif.guidance import (GuidanceError, GuidedDenoiser, build_guided_denoiser, describe_guidance,
                             parse_guidance, parse_weighted, resolve_weights)
from xurdif.guidance import cutouts as C
from xurdif.guidance import losses as L

TINY = "xurdif-test-tiny"
SIZE = 32


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("guidance")
    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 8, "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
    (d / f"{TINY}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d / f"{TINY}.json")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:40]
    stripes = np.stack([np.sin(xx / 2.0), np.cos(yy / 3.0), np.sin((xx + yy) / 4.0)], -1) * 0.5 + 0.5
    Image.fromarray((stripes * 255).astype(np.uint8)).save(d / "stripes.png")
    Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(d / "noise.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 255
    Image.fromarray(mask).save(d / "mask.png")
    return d


class Net(nn.Module):
    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        nn.init.normal_(self.conv.weight, std=0.02)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x, t):
        ab = self.schedule.ab(t).view(-1, 1, 1, 1)
        v = 0.25  # data variance: E[x0 | x_t] = sqrt(ab)·v / (ab·v + 1 - ab) · x_t
        return ab.sqrt() * v / (ab * v + 1 - ab) * x + ab.sqrt() * self.conv(x)


@pytest.fixture(scope="module")
def den():
    torch.manual_seed(0)
    sched = make_schedule("cosine", 1000)
    return Denoiser(Net(sched), sched, "x0")


@pytest.fixture(scope="module")
def cache(files):
    torch.manual_seed(1)  # the random CLIP is built once and shared through the cache
    return {}


def opts(**kw):
    return {"clip_model": TINY, "clip_weights": "none", "cutouts": 8, "text_weight": 0.0, **kw}


def render(d, seed=0, steps=8, batch=2):
    return sample(d, (batch, 3, SIZE, SIZE), "ddim", steps, generator=torch.Generator().manual_seed(seed))


def eval_losses(gd, x0):
    img = gd.base.to_image(x0)
    total = {}
    for k in range(4):  # several cutout draws: the verdict should not hinge on one
        for name, v in gd.guides.losses(img, torch.Generator().manual_seed(100 + k)).items():
            total[name] = total.get(name, 0) + v / 4
    return total


# --- options ---------------------------------------------------------------

def test_weighted_prompts_parse():
    assert parse_weighted("a red fox:1, blurry:-0.5", "text", "text") == (("a red fox", 1.0), ("blurry", -0.5))
    assert parse_weighted("a fox, in the snow", "text", "text") == (("a fox, in the snow", 1.0),)
    assert parse_weighted("a fox, in snow:2, blurry", "text", "text") == (("a fox, in snow", 2.0), ("blurry", 1.0))
    assert parse_weighted("ratio 16:9 photo", "text", "text") == (("ratio 16:9 photo", 1.0),)
    items = ["a:0.5", {"text": "b", "weight": -1}]
    assert parse_weighted(items, "text", "text") == (("a", 0.5), ("b", -1.0))
    cfg = parse_guidance({"image_prompts": [{"image": "x.png", "weight": 2}], "text": "cat:3"})
    assert cfg.image_prompts == (("x.png", 2.0),) and cfg.text == (("cat", 3.0),)


def test_bad_options_name_the_fix():
    with pytest.raises(GuidanceError, match=r"unknown key 'txt_weight'; did you mean 'text_weight'"):
        parse_guidance({"txt_weight": 1})
    with pytest.raises(GuidanceError, match=r"guidance.cutouts: expected an integer, got 'many'"):
        parse_guidance({"cutouts": "many"})
    with pytest.raises(GuidanceError, match=r"guidance.clip_loss: 'l1' is invalid; valid: cosine, spherical"):
        parse_guidance({"clip_loss": "l1"})
    with pytest.raises(GuidanceError, match=r"guidance.cut_max: 0.2 is invalid; valid: a fraction in \[cut_min=0.4, 1\]"):
        parse_guidance({"cut_max": 0.2})
    with pytest.raises(GuidanceError, match=r"guidance.text: bad item"):
        parse_guidance({"text": [{"txt": "a"}]})


def test_describe_is_json_and_empty_when_unguided(files):
    assert describe_guidance({}, "") == {}
    assert describe_guidance({"text_weight": 0}, "a fox") == {}
    d = describe_guidance({"clip_weights": "none", "target": "t.png", "target_weight": 2}, "a red fox:1, blurry:-0.5")
    assert json.loads(json.dumps(d)) == d
    assert d["text"]["prompts"] == [{"text": "a red fox", "weight": 1.0}, {"text": "blurry", "weight": -0.5}]
    assert d["target"] == {"image": "t.png", "weight": 2.0, "loss": "ssim", "mask": None}
    assert d["mode"] == "x0" and d["clip"]["weights"] == "none" and "style" not in d


# --- inactive guidance is the plain path -------------------------------------

def test_inactive_guidance_returns_the_same_denoiser(den, files):
    assert build_guided_denoiser(den, None, "", "cpu") is den
    assert build_guided_denoiser(den, {}, "", "cpu") is den
    zero = opts(text_weight=0, image_prompts=str(files / "noise.png"), image_weight=0,
                target=str(files / "noise.png"), target_weight=0, style=str(files / "noise.png"), style_weight=0)
    assert build_guided_denoiser(den, zero, "a red fox", "cpu") is den
    assert build_guided_denoiser(den, opts(text_weight=1, scale=0), "a fox", "cpu") is den
    assert torch.equal(render(build_guided_denoiser(den, zero, "a red fox", "cpu")), render(den))


def test_guidance_outside_its_time_window_is_bit_identical(den, files, cache):
    # t_min > every timestep except none: the wrapper runs but never steps.
    gd = build_guided_denoiser(den, opts(text_weight=1.0, t_min=0.999, t_max=0.9995), "a fox", "cpu", cache=cache)
    assert isinstance(gd, GuidedDenoiser)
    assert torch.equal(render(gd), render(den))


def test_wrapper_has_the_denoisers_attributes(den, files, cache):
    gd = build_guided_denoiser(den, opts(text_weight=1.0), "a fox", "cpu", cache=cache)
    assert gd.schedule is den.schedule and gd.prediction == "x0" and gd.value_range == den.value_range
    assert gd.net is den.net and gd.to_image == den.to_image and gd.to_model == den.to_model
    assert gd.needs_grad is True
    # Callable under inference_mode too (a sampler may switch autograd off).
    x = torch.randn(2, 3, SIZE, SIZE)
    t = torch.full((2,), 500)
    with torch.inference_mode():
        a = gd(x, t)
    b = build_guided_denoiser(den, opts(text_weight=1.0), "a fox", "cpu", cache=cache)(x, t)
    assert torch.equal(a, b) and not torch.equal(a, den(x, t))


# --- every guide lowers its own loss -----------------------------------------

def _guides(files):
    return {
        "text": (opts(text_weight=1.0, scale=0.1), "a red fox:1, blurry:-0.5"),
        "text_spherical": (opts(text_weight=1.0, clip_loss="spherical", scale=0.1), "a red fox"),
        "image": (opts(image_prompts=f"{files / 'stripes.png'}:1", scale=0.1), ""),
        "target_ssim": (opts(target=str(files / "stripes.png"), scale=0.1), ""),
        "target_l2_mask": (opts(target=str(files / "stripes.png"), target_loss="l2",
                                target_mask=str(files / "mask.png"), scale=0.1), ""),
        "style": (opts(style=str(files / "stripes.png"), scale=0.1), ""),
    }


@pytest.mark.parametrize("through_unet", [False, True], ids=["x0", "through_unet"])
@pytest.mark.parametrize("guide", ["text", "text_spherical", "image", "target_ssim", "target_l2_mask", "style"])
def test_guide_lowers_its_loss_and_never_touches_parameters(den, files, cache, guide, through_unet):
    options, prompt = _guides(files)[guide]
    options = {**options, "through_unet": through_unet, "unet_lr": 0.3}
    gd = build_guided_denoiser(den, options, prompt, "cpu", cache=cache)
    plain, guided = render(den), render(gd)
    before, after = eval_losses(gd, plain), eval_losses(gd, guided)
    (name,) = before
    assert (after[name] < before[name]).all(), (guide, before, after)
    assert after[name].mean() < 0.97 * before[name].mean(), (guide, before, after)
    assert all(p.grad is None for p in den.net.parameters())
    uses_clip = guide.startswith(("text", "image", "style"))
    assert (gd.guides.clip is not None) == uses_clip  # target guides load no CLIP
    if uses_clip:
        assert all(p.grad is None for p in gd.guides.clip.model.parameters())


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "dpmpp_3m", "edm"])
def test_guidance_works_with_every_sampler(den, files, cache, sampler):
    options, prompt = _guides(files)["target_ssim"]
    gd = build_guided_denoiser(den, options, prompt, "cpu", cache=cache)
    run = lambda d: sample(d, (2, 3, SIZE, SIZE), sampler, 8, spacing="karras",
                           generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    before, after = eval_losses(gd, run(den)), eval_losses(gd, run(gd))
    assert (after["target"] < before["target"]).all(), (sampler, before, after)


def test_weights_are_absolute_and_guides_add(den, files, cache):
    # Each guide is RMS-normalised on its own: the x0 step is scale·sqrt(ᾱ)^p·(hi-lo)
    # per unit of weight, and two guides' steps add.
    x, t = torch.randn(2, 3, SIZE, SIZE), torch.full((2,), 600)
    plain = den(x, t)

    def step(**kw):
        return build_guided_denoiser(den, opts(**kw), "a red fox", "cpu", cache=cache)(x, t) - plain

    text1, text2 = step(text_weight=1.0), step(text_weight=2.0)
    target = step(target=str(files / "stripes.png"), target_weight=0.5)
    both = step(text_weight=1.0, target=str(files / "stripes.png"), target_weight=0.5)
    assert torch.allclose(text2, 2 * text1, atol=1e-6)
    assert torch.allclose(both, text1 + target, atol=1e-6)
    ab = den.schedule.ab(t)[0]
    rms = text1.pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert torch.allclose(rms, torch.full((2,), 0.02 * 2 * float(ab.sqrt())), rtol=1e-4)


def test_target_mask_limits_the_guide_to_the_mask(den, files):
    # With a left-half mask, the right half should stay as the plain render had it.
    options = opts(target=str(files / "stripes.png"), target_loss="l2", target_mask=str(files / "mask.png"),
                   scale=0.1)
    gd = build_guided_denoiser(den, options, "", "cpu")
    plain, guided = den.to_image(render(den)), den.to_image(render(gd))
    change = (guided - plain).abs()
    assert change[..., :16].mean() > 20 * change[..., 16:].mean()


def test_negative_weight_pushes_away(den, files, cache):
    toward = build_guided_denoiser(den, opts(text_weight=1.0, scale=0.1), "a red fox", "cpu", cache=cache)
    away = build_guided_denoiser(den, opts(text_weight=1.0, scale=0.1), "a red fox:-1", "cpu", cache=cache)
    plain = eval_losses(toward, render(den))["text"]
    assert (eval_losses(toward, render(away))["text"] > plain).all()


# --- CLIP weights -------------------------------------------------------------

@pytest.fixture
def heavy_work(monkeypatch):
    """Records every model build and download attempt: failing fast means none."""
    import open_clip.factory
    import open_clip.pretrained

    calls: list[str] = []

    def record(name):
        def fn(*a, **k):
            calls.append(name)
            raise RuntimeError(f"{name} called")
        return fn

    for mod in (open_clip, open_clip.factory):
        for name in ("create_model", "create_model_and_transforms"):
            monkeypatch.setattr(mod, name, record(name))
    for mod in (open_clip.pretrained, open_clip.factory):
        for name in ("download_pretrained", "download_pretrained_from_hf"):
            monkeypatch.setattr(mod, name, record(name))
    for name in ("download_pretrained_from_url", "hf_hub_download"):
        monkeypatch.setattr(open_clip.pretrained, name, record(name))
    return calls


def test_missing_weights_file_fails_fast_and_clearly(den, tmp_path, heavy_work):
    with pytest.raises(GuidanceError, match=r"guidance.clip_weights: file '.*nope.pt' does not exist; "
                                            r"put an open_clip checkpoint for ViT-B-32 there"):
        build_guided_denoiser(den, {"clip_weights": str(tmp_path / "nope.pt")}, "a fox", "cpu")
    assert heavy_work == []


def test_uncached_pretrained_tag_fails_fast_saying_what_to_fetch(monkeypatch, tmp_path, heavy_work):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(GuidanceError, match=r"CLIP weights ViT-B-32/laion2b_s34b_b79k are not on this machine.*"
                                            r"run `hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K "
                                            r"open_clip_model.safetensors`"):
        resolve_weights("ViT-B-32", "laion2b_s34b_b79k")
    # A tag known only by URL is looked for in ~/.cache/clip.
    with pytest.raises(GuidanceError, match=r"download https://example.invalid/x/ViT-B-32.pt and put it at "
                                            r".*/.cache/clip/ViT-B-32.pt, or pass a downloaded checkpoint's path"):
        _force_url("ViT-B-32", "openai")
    assert heavy_work == []


def _force_url(arch, tag):
    from unittest import mock

    import open_clip.pretrained as P
    cfg = dict(P.get_pretrained_cfg(arch, tag), hf_hub="", url="https://example.invalid/x/ViT-B-32.pt")
    with mock.patch.object(P, "get_pretrained_cfg", return_value=cfg):
        return resolve_weights(arch, tag)


def test_unknown_tag_and_architecture_name_the_valid_ones():
    with pytest.raises(GuidanceError, match=r"'laion2b' is neither a file nor a pretrained tag of ViT-B-32; "
                                            r"tags: openai, .*laion2b_s34b_b79k"):
        resolve_weights("ViT-B-32", "laion2b")
    with pytest.raises(GuidanceError, match=r"unknown open_clip architecture 'ViT-B32'; did you mean ViT-B-32"):
        resolve_weights("ViT-B32", "none")


def test_local_weights_file_loads(files, tmp_path):
    from xurdif.guidance import load_clip
    torch.manual_seed(3)
    a = load_clip(TINY, "none")
    path = tmp_path / "tiny.pt"
    torch.save(a.model.state_dict(), path)
    b = load_clip(TINY, str(path))
    img = torch.rand(2, 3, 32, 32)
    assert torch.equal(a.encode_image(img)[0], b.encode_image(img)[0])
    assert b.size == (32, 32) and b.num_blocks() == 4


# --- cutouts and losses -------------------------------------------------------

def test_cutout_boxes_respect_size_aspect_and_bounds():
    g = torch.Generator().manual_seed(0)
    b = C.draw_boxes(2000, 48, 64, cut_min=0.4, cut_max=0.9, aspect=1.5, flip=True, generator=g).double()
    cx, cy, w, h, fl = b.unbind(1)
    side = (w * h).sqrt()
    assert side.min() >= 0.4 * 48 - 1e-4 and side.max() <= 0.9 * 48 * math.sqrt(1.5) + 1e-4
    ratio = w / h
    assert ratio.min() >= 1 / 1.5 - 1e-5 and ratio.max() <= 1.5 + 1e-5
    assert ratio.min() < 0.75 and ratio.max() > 1.35  # the jitter is actually used
    assert (cx - w / 2).min() >= -1e-4 and (cx + w / 2).max() <= 64 + 1e-4
    assert (cy - h / 2).min() >= -1e-4 and (cy + h / 2).max() <= 48 + 1e-4
    assert 0.4 < fl.mean() < 0.6
    noflip = C.draw_boxes(100, 48, 64, cut_min=0.4, cut_max=0.9, aspect=1.5, flip=False, generator=g)
    assert (noflip[:, 4] == 0).all()


def test_cutouts_are_one_batched_resample(monkeypatch):
    calls = []
    real = F.grid_sample
    monkeypatch.setattr(C.F, "grid_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    img = torch.rand(3, 3, 40, 56)
    out = C.make_cutouts(img, 16, (24, 24), cut_min=0.5, cut_max=1.0, aspect=1.25, flip=True,
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (48, 3, 24, 24) and len(calls) == 1
    assert out.min() >= 0 and out.max() <= 1


def test_full_box_cutout_is_the_image_and_flip_mirrors_it():
    img = torch.rand(2, 3, 20, 20)
    full = torch.tensor([[10.0, 10.0, 20.0, 20.0, 0.0]]).expand(2, 1, 5)
    assert torch.allclose(C.cut(img, full, (20, 20)), img, atol=1e-5)
    flipped = full.clone()
    flipped[..., 4] = 1
    assert torch.allclose(C.cut(img, flipped, (20, 20)), img.flip(-1), atol=1e-5)
    # Cutout rows are image-major: row n*K + k is cutout k of image n.
    two = torch.cat([full, flipped], 1)
    out = C.cut(img, two, (20, 20))
    assert torch.allclose(out[1], img[0].flip(-1), atol=1e-5) and torch.allclose(out[2], img[1], atol=1e-5)


def test_big_cutouts_are_prefiltered_not_aliased():
    # A 1-px checkerboard shrunk 4x must come out flat grey, not a moire.
    img = ((torch.arange(64)[:, None] + torch.arange(64)[None]) % 2).float().expand(1, 3, 64, 64)
    box = torch.tensor([[[32.0, 32.0, 64.0, 64.0, 0.0]]])
    out = C.cut(img, box, (16, 16))
    assert (out - 0.5).abs().max() < 0.02


def test_ssim_loss_matches_pytorch_msssim_and_masks():
    a, b = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    expect = 1 - ssim(a, b, data_range=1, size_average=False)
    assert torch.allclose(L.ssim_loss(a, b), expect, atol=1e-6)
    assert torch.allclose(L.ssim_loss(a, b, torch.ones(1, 1, 24, 24)), expect, atol=1e-6)
    c = b.clone()
    c[..., :12] = a[..., :12]  # identical on the left half
    left = torch.zeros(1, 1, 24, 24)
    left[..., :2] = 1  # SSIM windows starting here (11 px wide) stay in the left half
    assert L.ssim_loss(a, c, left).abs().max() < 1e-5
    assert (L.ssim_loss(a, c) > 0.1).all()
    with pytest.raises(ValueError, match="at least 11 px"):
        L.ssim_loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_embedding_distances():
    a = F.normalize(torch.randn(5, 8), dim=-1)
    assert torch.allclose(L.embedding_distance(a, a, "cosine"), torch.zeros(5), atol=1e-6)
    assert torch.allclose(L.embedding_distance(a, -a, "cosine"), torch.full((5,), 2.0), atol=1e-6)
    assert torch.allclose(L.embedding_distance(a, -a, "spherical"), torch.full((5,), 2 * (math.pi / 2) ** 2), atol=5e-3)
    # weights: Σ_p w_p d_p averaged over each image's cutouts
    t = F.normalize(torch.randn(2, 8), dim=-1)
    got = L.prompt_loss(a[:4], t, torch.tensor([1.0, -0.5]), 2, "cosine")
    d = 1 - a[:4] @ t.T
    assert torch.allclose(got, (d[:, 0] - 0.5 * d[:, 1]).view(2, 2).mean(1), atol=1e-6)
