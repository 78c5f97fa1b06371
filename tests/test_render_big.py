"""Rendering big canvases, textures and merge sweeps through the batch renderer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xurdif.diffusion.samplers import sample
from xurdif.diffusion.tiled import TiledDenoiser
from xurdif.guidance import guided
from xurdif.models.unet import UNet, unet_config
from xurdif.render import outputs
from xurdif.render.cli import main
from xurdif.render.job_files import parse_prompts_text
from xurdif.render.jobs import Job
from xurdif.render.plan import tiling
from xurdif.render.run import render
from xurdif.weights import load_denoiser
from xurdif.weights import ModelMeta, save_model_file

from test_render import _cache, pixels  # noqa: F401  (_cache: an autouse fixture, one cache per test)

CFG = unet_config("tiny", base_width=8, mults=[1, 2], norm_groups=4, head_dim=8)


def write_model(path: Path, seed: int, **meta) -> Path:
    torch.manual_seed(seed)
    net = UNet(**CFG)
    torch.nn.init.normal_(net.out.weight, std=0.05)
    save_model_file(path, ModelMeta(architecture="xurdif_unet", net_config=CFG, image_size=(16, 16),
                                    source="test", **meta), net.state_dict(), None)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return (write_model(d / "a.safetensors", 0), write_model(d / "b.safetensors", 1),
            write_model(d / "x0.safetensors", 2, prediction="x0"))


def records(out: Path) -> dict[str, dict]:
    return {r["file"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def jobs_of(text: str, tmp_path: Path) -> list[Job]:
    jobs, errors = parse_prompts_text(text, "p.txt", Job(), base_dir=tmp_path)
    assert not errors, errors
    return jobs


def test_auto_tiling_starts_above_one_and_a_half_times_the_model_size():
    job = Job(prompt="x")
    assert tiling(job, (24, 16), (16, 16)) is None           # 1.5x: one pass
    assert tiling(job, (25, 16), (16, 16)) == ((16, 16), 4)  # > 1.5x: model-size tiles, a quarter overlap
    assert tiling(Job(prompt="x", tile="off"), (64, 64), (16, 16)) is None
    assert tiling(Job(prompt="x", tile=32, overlap=8), (48, 16), (16, 16)) == ((32, 32), 8)
    assert tiling(Job(prompt="x", wrap=True), (16, 16), (16, 16)) == (None, 0)  # texture: half-shifted canvases


def test_tiled_render_is_the_tiled_denoisers_sample_and_records_its_tiles(models, tmp_path):
    a = models[0]
    out = tmp_path / "out"
    jobs = jobs_of("canvas | n=2 seed=3 steps=3 size=48x32 sampler=dpmpp_2m\n"
                   "texture | seed=5 steps=3 size=32x16 wrap=true tile=16 overlap=6\n", tmp_path)
    res = render(a, jobs, out, batch_size=2, progress=False)
    assert res.written == 3 and not res.failures
    recs = records(out)
    assert recs["0000-canvas/3.png"]["params"]["tiles"] == {"tile": [16, 16], "overlap": 4, "wrap": False}
    assert recs["0001-texture/5.png"]["params"]["tiles"] == {"tile": [16, 16], "overlap": 6, "wrap": True}
    # The renderer's pixels are exactly a TiledDenoiser sample with the same seeds.
    den, _ = load_denoiser(a)
    x0 = sample(TiledDenoiser(den, (16, 16), 4, False), (2, 3, 32, 48), "dpmpp_2m", 3,
                generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
    want = [outputs.to_uint8(img) for img in den.to_image(x0)]
    assert np.array_equal(pixels(out / "0000-canvas/3.png"), want[0])
    assert np.array_equal(pixels(out / "0000-canvas/4.png"), want[1])
    untiled = sample(den, (2, 3, 32, 48), "dpmpp_2m", 3, generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
    assert not np.array_equal(outputs.to_uint8(den.to_image(untiled)[0]), want[0])


def test_cli_flags_img2img_init_of_any_size_and_guidance_on_the_whole_canvas(models, tmp_path, monkeypatch):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 70, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "t.png")
    (tmp_path / "jobs.yaml").write_text(
        "jobs:\n"
        "  - {prompt: init, init: i.png, size: 56x24, strength: 0.5}\n"
        f"  - {{prompt: guided, size: 48x32, guidance: {{target: {tmp_path / 't.png'}, target_weight: 1.0,"
        " text_weight: 0, scale: 0.2}}\n")
    seen = []
    losses = guided.Guides.losses
    monkeypatch.setattr(guided.Guides, "losses", lambda self, img, g: seen.append(tuple(img.shape)) or losses(self, img, g))
    out = tmp_path / "out"
    rc = main([str(models[0]), str(tmp_path / "jobs.yaml"), "-o", str(out), "--steps", "4", "--tile", "16",
               "--overlap", "8", "--wrap", "--no-progress"])
    assert rc == 0
    recs = records(out)
    params = recs[f"0000-init/{Job(prompt='init').seeds()[0]}.png"]["params"]
    assert params["tiles"] == {"tile": [16, 16], "overlap": 8, "wrap": True} and params["size"] == [56, 24]
    assert params["tile"] == 16 and params["overlap"] == 8 and params["wrap"] is True
    assert pixels(next((out / "0000-init").glob("[0-9]*.png"))).shape == (24, 56, 3)
    # The guide scored whole 48x32 canvases, never 16 px tiles.
    assert seen and set(seen) == {(1, 3, 32, 48)}


def test_merge_sweep_renders_the_same_seeds_along_the_weights(models, tmp_path, capsys):
    a, b, x0 = models
    out = tmp_path / "out"
    jobs = jobs_of(f"sweep | n=2 seed=11 steps=3 merge={b}:0,0.5,1\n"
                   f"bad | steps=3 merge={x0}:0,1\n", tmp_path)
    res = render(a, jobs, out, batch_size=4, progress=False)
    assert res.written == 6
    assert res.failures == [f"p.txt:2: {x0}: prediction type is 'x0', {a}'s is 'eps': "
                            "only models of the same prediction type can be merged"]
    files = sorted(p.name for p in (out / "0000-sweep").glob("*.png"))
    assert files == ["11-w0.5.png", "11-w0.png", "11-w1.png", "12-w0.5.png", "12-w0.png", "12-w1.png"]
    # Weight 0 is model A's render, weight 1 model B's, with the same seeds.
    for model, w in ((a, "0"), (b, "1")):
        ref = tmp_path / f"ref-{w}"
        render(model, jobs_of("sweep | n=2 seed=11 steps=3\n", tmp_path), ref, batch_size=4, progress=False)
        for s in (11, 12):
            assert np.array_equal(pixels(out / f"0000-sweep/{s}-w{w}.png"), pixels(ref / f"0000-sweep/{s}.png"))
    mid = pixels(out / "0000-sweep/11-w0.5.png")
    assert not np.array_equal(mid, pixels(out / "0000-sweep/11-w0.png"))
    assert records(out)["0000-sweep/11-w0.5.png"]["params"]["merge"] == {"model": str(b), "weight": 0.5}
    # One contact sheet: a row per seed, the sweep left to right (make_grid pads 2 px).
    assert pixels(out / "contact-sheets/0000-sweep.png").shape == (2 + 2 * 18, 2 + 3 * 18, 3)
    again = render(a, jobs[:1], out, batch_size=4, progress=False)  # a rerun finds every file done
    assert again.written == 0 and again.skipped == 6
