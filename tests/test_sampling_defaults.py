"""A model's own default sampler: recorded in its file, used when a job names none,
overridden by a job that does; chosen by measuring candidates."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_model import save_tiny_model
from xurdif.render.cli import main as sample_main
from xurdif.sampling.choose import choose_for_file, measure, winner, candidates
from xurdif.sampling.defaults import LEGACY, Sampling, resolve
from xurdif.weights import ModelFileError, load_denoiser, read_meta, write_sampling

OWN = Sampling("dpmpp_2m", 4, "karras", 0.0)


def manifest(out):
    return {r["file"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def pixels(path):
    return np.asarray(Image.open(path))


def test_resolve_rules():
    assert resolve(OWN) == OWN
    # A named sampler renders as before models had a default: 50 uniform steps, eta 0.
    assert resolve(OWN, "ddim") == Sampling("ddim", 50, "uniform", 0.0)
    assert resolve(OWN, "ddim", 7, "logsnr", 0.5) == Sampling("ddim", 7, "logsnr", 0.5)
    assert resolve(OWN, "auto", 12) == Sampling("dpmpp_2m", 12, "karras", 0.0)
    assert resolve(OWN, "auto", None, "uniform") == Sampling("dpmpp_2m", 4, "uniform", 0.0)
    assert LEGACY == Sampling("ddim", 50, "uniform", 0.0)



def test_sigma_min_goes_with_the_model_spacing():
    own = Sampling("dpmpp_3m", 10, "logsnr", 0.0, sigma_min=0.05)
    assert resolve(own) == own and resolve(own, "auto", 6).sigma_min == 0.05
    # A job naming another spacing (or sampler) ends that spacing its own way, unless it says too.
    assert resolve(own, "auto", None, "karras").sigma_min == 0.0
    assert resolve(own, "auto", None, "karras", None, 0.1).sigma_min == 0.1
    assert resolve(own, "dpmpp_2m").sigma_min == 0.0 and resolve(own, "auto", sigma_min=0).sigma_min == 0
    # Written only where set, so a record from before reads (and writes) as it did.
    assert "sigma_min" not in OWN.to_json() and own.to_json()["sigma_min"] == 0.05
    assert Sampling.from_json(own.to_json()) == own and Sampling.from_json(OWN.to_json()) == OWN
    assert own.describe() == "dpmpp_3m, 10 steps, logsnr spacing to sigma 0.05"
    with pytest.raises(ValueError, match="sigma_min applies to logsnr and karras spacing, not 'uniform'"):
        Sampling.from_json({**own.to_json(), "spacing": "uniform"})


def test_sigma_min_renders_records_and_rerenders(tmp_path):
    from xurdif.render.gallery import rerender_command

    path = save_tiny_model(tmp_path / "m.safetensors", prediction="x0")
    write_sampling(path, Sampling("dpmpp_3m", 5, "logsnr", 0.0, sigma_min=0.2))
    args = ["--prompt", "a fox", "--seed", "3", "--no-progress"]
    assert sample_main([str(path), *args, "-o", str(tmp_path / "own")]) == 0
    assert sample_main([str(path), *args, "--sigma-min", "0", "-o", str(tmp_path / "zero")]) == 0
    rec = manifest(tmp_path / "own")["0000-a-fox/3.png"]
    assert rec["params"]["sigma_min"] == 0.2 and manifest(tmp_path / "zero")["0000-a-fox/3.png"]["params"]["sigma_min"] == 0
    img = pixels(tmp_path / "own" / "0000-a-fox" / "3.png")
    assert not np.array_equal(img, pixels(tmp_path / "zero" / "0000-a-fox" / "3.png"))
    # The gallery's command names it, and running it (on a model without the default) gives the same image.
    plain = save_tiny_model(tmp_path / "plain.safetensors", prediction="x0")
    command = rerender_command(rec)
    assert "--sigma-min 0.2" in command
    import shlex

    argv = shlex.split(command)[1:]
    argv[0] = str(plain)
    assert sample_main([*argv, "--no-progress", "-o", str(tmp_path / "again")]) == 0
    assert np.array_equal(img, pixels(next((tmp_path / "again").rglob("3.png"))))
    assert sample_main([str(path), *args, "--spacing", "uniform", "--sigma-min", "0.1", "-o", str(tmp_path / "bad")]) == 1

def test_model_file_records_its_default_and_refuses_a_bad_one(tmp_path):
    path = save_tiny_model(tmp_path / "m.safetensors")
    assert read_meta(path).sampling is None and read_meta(path).default_sampling() == LEGACY
    before, _ = load_denoiser(path)
    write_sampling(path, OWN, {"samples": 3})
    meta = read_meta(path)
    assert meta.default_sampling() == OWN and meta.sampling["samples"] == 3
    after, _ = load_denoiser(path)  # the weights are untouched
    assert all(torch.equal(a, b) for a, b in zip(before.net.state_dict().values(), after.net.state_dict().values()))
    # A damaged record is refused before any network is built, naming the file.
    from safetensors.torch import load_file, save_file

    md = {**meta.to_metadata(), "sampling": json.dumps({"sampler": "euler", "steps": 4})}
    save_file(load_file(str(path)), str(path), metadata=md)
    with pytest.raises(ModelFileError, match=rf"^{path}: unusable model metadata: sampling \(unknown sampler "
                                             r"'euler'; valid: ddpm, ddim, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, edm\)$"):
        read_meta(path)


def test_renderer_uses_the_model_default_unless_the_job_names_a_sampler(tmp_path):
    old = save_tiny_model(tmp_path / "old.safetensors", prediction="x0")
    new = save_tiny_model(tmp_path / "new.safetensors", prediction="x0")
    write_sampling(new, OWN)
    args = ["--prompt", "a fox", "--seed", "3", "--no-progress"]
    assert sample_main([str(old), *args, "-o", str(tmp_path / "old")]) == 0
    assert sample_main([str(new), *args, "-o", str(tmp_path / "new")]) == 0
    assert sample_main([str(new), *args, "--sampler", "dpmpp_2m", "--steps", "4", "--spacing", "karras",
                        "-o", str(tmp_path / "explicit")]) == 0
    assert sample_main([str(new), *args, "--sampler", "ddim", "-o", str(tmp_path / "named")]) == 0
    rec = {k: manifest(tmp_path / k)["0000-a-fox/3.png"]["params"] for k in ("old", "new", "explicit", "named")}
    used = {k: (p["sampler"], p["steps"], p["spacing"], p["eta"]) for k, p in rec.items()}
    assert used == {"old": ("ddim", 50, "uniform", 0.0), "new": ("dpmpp_2m", 4, "karras", 0.0),
                    "explicit": ("dpmpp_2m", 4, "karras", 0.0), "named": ("ddim", 50, "uniform", 0.0)}
    img = {k: pixels(tmp_path / k / "0000-a-fox" / "3.png") for k in rec}
    assert np.array_equal(img["new"], img["explicit"]) and not np.array_equal(img["new"], img["named"])
    # The old model (no default recorded) renders what the same model with ddim named renders.
    assert np.array_equal(img["old"], img["named"])


def test_fitted_spacing_without_a_curve_fails_the_job_with_one_line(tmp_path, capsys):
    path = save_tiny_model(tmp_path / "m.safetensors")
    assert sample_main([str(path), "--prompt", "x", "--spacing", "fitted", "--steps", "3", "--no-progress",
                        "-o", str(tmp_path / "out")]) == 1
    assert "spacing 'fitted' needs a model with a fitted schedule" in capsys.readouterr().err


def features(images: torch.Tensor) -> torch.Tensor:
    """A cheap stand-in for Inception: colour statistics at 4x4."""
    x = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 4)
    return x.flatten(1).double()


def test_choose_records_the_lowest_kid_and_is_reproducible(tmp_path):
    path = save_tiny_model(tmp_path / "m.safetensors", prediction="x0")
    g = torch.Generator().manual_seed(0)
    reference = features((torch.rand(40, 3, 16, 16, generator=g) * 255).to(torch.uint8))
    done: list[int] = []  # training rewrites its live report after each candidate
    best, rows = choose_for_file(path, reference, features, steps=3, n=24, reference_name="noise", progress=False,
                                 after_each=lambda: done.append(len(read_meta(path).sampling or {})))
    assert [(r["sampler"], r["spacing"]) for r in rows] == [(s.sampler, s.spacing) for s in candidates(3)]
    assert done == [0] * len(candidates(3))  # once per candidate, before the winner is written
    assert best == winner(rows) and best.steps == 3
    assert min(r["kid_x1e3"] for r in rows) == next(r["kid_x1e3"] for r in rows
                                                      if (r["sampler"], r["spacing"]) == (best.sampler, best.spacing))
    meta = read_meta(path)
    assert meta.default_sampling() == best and meta.sampling["measured"] == rows
    assert meta.sampling["reference"] == "noise"
    # Same seeds, same numbers: the choice is a measurement, not a draw.
    den, _ = load_denoiser(path)
    again = measure(den, (16, 16), reference, features, candidates(3), n=24, progress=False)
    assert [r["kid_x1e3"] for r in again] == [r["kid_x1e3"] for r in rows]


def test_choose_with_a_fitted_schedule_says_so_and_keeps_the_report_fresh(tmp_path, capsys):
    """sampling.fit: the fit (minutes on a larger network) is announced, and the live report is
    rewritten after it as after each candidate."""
    path = save_tiny_model(tmp_path / "m.safetensors", prediction="x0")
    g = torch.Generator().manual_seed(0)
    reference = features((torch.rand(40, 3, 16, 16, generator=g) * 255).to(torch.uint8))
    done: list[int] = []
    _, rows = choose_for_file(path, reference, features, steps=3, n=8, reference_name="noise", fit=True,
                              after_each=lambda: done.append(1))
    assert [r["spacing"] for r in rows][-1] == "fitted"
    assert len(done) == len(candidates(3)) + 2  # the fit, each candidate, the fitted candidate
    assert "m.safetensors: fitting a noise schedule to the model (3 steps) before the candidates" in \
        capsys.readouterr().out


@pytest.mark.slow
def test_tune_sampler_tool(tmp_path, capsys):
    from pathlib import Path

    from xurdif.sampling.cli import main

    ref = Path(__file__).parent / "fixtures" / "emoji-faces-32"
    path = save_tiny_model(tmp_path / "m.safetensors", prediction="x0")
    common = [str(path), "--reference", str(ref), "--steps", "3", "--samples", "16", "--no-progress"]
    assert main(common + ["--dry-run", "--no-fit"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| sampler |") and out.count("\n| ") == len(candidates(3)) and "best: " in out
    assert read_meta(path).sampling is None  # --dry-run writes nothing
    assert main(common + ["--json", str(tmp_path / "m.json")]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert [r["spacing"] for r in report["rows"]][-1] == "fitted"  # the fitted schedule competes
    meta = read_meta(path)
    assert meta.default_sampling() == Sampling(**{k: report["best"][k] for k in ("sampler", "steps", "spacing", "eta")})
    assert meta.sampling["reference"] == f"32 images in {ref}" and len(meta.default_sampling().curve) == 3
    assert main([str(tmp_path / "none.safetensors"), "--reference", str(ref)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'none.safetensors'}: model file not found "
                                               "(give a run folder or a .safetensors file)")


def test_fitted_schedule_is_reproducible_and_no_worse_than_where_it_starts(tmp_path):
    from xurdif.diffusion.spacing import timesteps_for
    from xurdif.sampling.fit import fit_curve

    den, _ = load_denoiser(save_tiny_model(tmp_path / "m.safetensors", prediction="x0"))
    a, report = fit_curve(den, (16, 16), steps=5, batch=4, seed=3)
    b, _ = fit_curve(den, (16, 16), steps=5, batch=4, seed=3)
    assert a == b and len(a) == 5 and all(x < y for x, y in zip(a, a[1:]))
    assert report["error_fitted"] <= report["error_karras"] and report["solves"] > 1
    # The curve gives back the fitted timesteps at its own step count.
    assert timesteps_for(den.schedule, 5, "fitted", curve=a) == report["timesteps"]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "dpmpp_3m", "edm"])
def test_every_sampler_renders_img2img_tiles_wrap_and_merge(tmp_path, sampler):
    from xurdif.render.job_files import load_jobs
    from xurdif.render.jobs import Job
    from xurdif.render.run import render

    a = save_tiny_model(tmp_path / "a.safetensors", prediction="x0")
    save_tiny_model(tmp_path / "b.safetensors", prediction="x0")
    Image.fromarray((np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)).save(tmp_path / "init.png")
    common = f"sampler={sampler} spacing=karras steps=6 seed=1"
    (tmp_path / "p.txt").write_text(f"img2img | {common} init=init.png strength=0.5\n"
                                    f"tiles | {common} size=40x24 tile=16 wrap=true\n"
                                    f"merge | {common} merge=b.safetensors:0,1\n")
    jobs, failures, presets = load_jobs(str(tmp_path / "p.txt"), Job(), {})
    result = render(a, jobs, tmp_path / "out", presets=presets, progress=False)
    assert failures == [] and result.failures == [] and result.written == 4
    recs = manifest(tmp_path / "out")
    assert {r["params"]["sampler"] for r in recs.values()} == {sampler}
    assert recs["0001-tiles/1.png"]["params"]["tiles"] == {"tile": [16, 16], "overlap": 4, "wrap": True}
    assert pixels(tmp_path / "out" / "0001-tiles" / "1.png").shape == (24, 40, 3)


@pytest.mark.parametrize("overrides,used", [
    ([], ("dpmpp_2m", 4, "karras")),                                         # the model's default
    (["samples.steps=6"], ("dpmpp_2m", 6, "karras")),
    (["samples.sampler=ddim"], ("ddim", 50, "uniform")),                      # a named sampler: as before
])
def test_training_grids_use_the_model_default(tmp_path, monkeypatch, overrides, used):
    from pathlib import Path

    import xurdif.train.outputs as outputs
    from xurdif.recipe import load_recipe

    recipe = load_recipe(Path(__file__).parent / "recipes" / "fixture.yaml",
                         ["samples.n=1", "samples.steps=null", *overrides])
    path = save_tiny_model(tmp_path / "m.safetensors", prediction="x0")
    write_sampling(path, OWN)
    den, meta = load_denoiser(path)
    calls = []
    monkeypatch.setattr(outputs, "sample", lambda *a, **k: calls.append(k) or torch.zeros(1, 3, 16, 16))
    out = outputs.RunOutputs(recipe, tmp_path / "run", True)
    out.open()
    out.sample_grid(den.net, den.schedule, meta, 0)
    assert (calls[0]["sampler"], calls[0]["steps"], calls[0]["spacing"]) == used


def test_studio_renders_with_the_model_default_when_left_on_auto(tmp_path):
    from xurdif.studio_render import render_once

    path = save_tiny_model(tmp_path / "m.safetensors", prediction="x0")
    write_sampling(path, OWN)
    form = dict(prompt="a", n=1, seed="5", sampler="auto", spacing="auto", steps=0, size="", init=None,
                strength=0.6, eta=None, noise_mult=1.0, post="")
    images, message, records = render_once(str(path), tmp_path / "out", "cpu", form, {}, progress=False)
    assert message.startswith("Saved 1 image(s)") and records[0][1]["params"]["sampler"] == "dpmpp_2m"
    p = manifest(tmp_path / "out")["0000-a/5.png"]["params"]
    assert (p["sampler"], p["steps"], p["spacing"], p["eta"]) == ("dpmpp_2m", 4, "karras", 0.0)
    render_once(str(path), tmp_path / "out", "cpu", {**form, "steps": 3, "sampler": "ddim"}, {}, progress=False)
    p = manifest(tmp_path / "out")["0001-a/5.png"]["params"]
    assert (p["sampler"], p["steps"], p["spacing"]) == ("ddim", 3, "uniform")
