"""EDM preconditioning and log-normal noise levels (Karras et al. 2022), checked
against the paper's σ-form formulas and through every part that takes a model."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xurdif.diffusion import prediction as P
from xurdif.diffusion.denoiser import Denoiser
from xurdif.diffusion.samplers import sample
from xurdif.diffusion.schedule import make_schedule
from xurdif.recipe import load_recipe
from xurdif.weights import load_network, read_meta

ROOT = Path(__file__).resolve().parent.parent
RECIPE = str(ROOT / "tests" / "recipes" / "fixture.yaml")


@pytest.mark.parametrize("sigma", [0.01, 0.3, 1.0, 7.0, 80.0])
def test_edm_matches_the_papers_sigma_form(sigma):
    sd = 0.5
    g = torch.Generator().manual_seed(1)
    x0, eps, F = (torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ab = torch.tensor(1 / (1 + sigma**2), dtype=torch.float64)
    x_t = P.add_noise(x0, eps, ab)
    x_ve = x_t / ab.sqrt()
    torch.testing.assert_close(x_ve, x0 + sigma * eps)  # the VE view of the same sample
    c_in, c_skip = 1 / math.sqrt(sigma**2 + sd**2), sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / math.sqrt(sigma**2 + sd**2)
    torch.testing.assert_close(P.net_input("edm", x_t, ab), c_in * x_ve)
    torch.testing.assert_close(P.to_x0("edm", F, x_t, ab), c_skip * x_ve + c_out * F)
    torch.testing.assert_close(P.target("edm", x0, eps, ab), (x0 - c_skip * x_ve) / c_out)


def test_edm_network_input_has_unit_variance_at_every_level():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(20000, generator=g) - 0.5
    x0 = x0 / x0.std() * 0.5  # σ_data = 0.5
    for ab in (0.999, 0.5, 1e-4):
        ab = torch.tensor(ab)
        x = P.net_input("edm", P.add_noise(x0, torch.randn(20000, generator=g), ab), ab)
        assert x.std().item() == pytest.approx(1.0, abs=0.03)


def test_edm_is_finite_at_both_ends_of_the_schedule():
    s = make_schedule("cosine", 1000)
    ab = s.ab(torch.tensor([0, 999])).view(-1, 1)
    x0, eps = torch.ones(2, 3), torch.ones(2, 3)
    x_t = P.add_noise(x0, eps, ab)
    for v in (P.net_input("edm", x_t, ab), P.target("edm", x0, eps, ab), P.to_x0("edm", eps, x_t, ab)):
        assert torch.isfinite(v).all()


def test_continuous_timestep_inverts_the_schedule():
    for name in ("cosine", "linear", "cosine_urdiffusion"):
        s = make_schedule(name, 1000)
        t = torch.tensor([0, 1, 17, 500, 998, 999])
        ac = s.alphas_cumprod[t]
        torch.testing.assert_close(s.continuous_t((ac / (1 - ac)).log()), t.float(), atol=1e-3, rtol=0)
        lo, hi = s.log_snr_range()
        q = torch.linspace(lo, hi, 101)
        c = s.continuous_t(q)
        assert torch.all(c[1:] <= c[:-1]) and c.min() >= 0 and c.max() <= 999
        # out of range levels clamp to the ends
        torch.testing.assert_close(s.continuous_t(torch.tensor([hi + 5, lo - 5])), torch.tensor([0.0, 999.0]))


def test_lognormal_levels_follow_p_mean_and_p_std(tmp_path):
    from xurdif.train import draws

    _, level = draws.timesteps_and_levels(0, range(4000), 1000)
    sigma = (-1.2 + 1.2 * level).exp()
    assert sigma.log().mean().item() == pytest.approx(-1.2, abs=0.06)
    assert sigma.log().std().item() == pytest.approx(1.2, abs=0.06)


def test_recipe_noise_dist_auto():
    r = load_recipe(RECIPE, ["diffusion.prediction=edm"])
    assert r.diffusion.lognormal
    assert not load_recipe(RECIPE, ["diffusion.prediction=x0"]).diffusion.lognormal
    assert load_recipe(RECIPE, ["diffusion.prediction=x0", "diffusion.noise_dist=lognormal"]).diffusion.lognormal
    assert not load_recipe(RECIPE, ["diffusion.prediction=edm", "diffusion.noise_dist=uniform"]).diffusion.lognormal


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("edm") / "run"
    res = subprocess.run([sys.executable, str(ROOT / "launch.py"), RECIPE, f"train.output_dir={out}",
                          "diffusion.prediction=edm", "train.steps=40", "augment.p=0.3", "checkpoint.every_steps=20"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.mark.slow
def test_edm_model_file_samples_renders_and_evaluates(edm_run, tmp_path):
    meta = read_meta(edm_run / "model.safetensors")
    assert meta.prediction == "edm" and meta.net_config["aug_dim"] == 10
    net, meta = load_network(edm_run / "model.safetensors")
    den = Denoiser(net, make_schedule(meta.schedule, meta.timesteps), meta.prediction, meta.value_range)
    g = torch.Generator().manual_seed(0)
    x = sample(den, (4, 3, 16, 16), "dpmpp_2m", 8, generator=g)
    assert torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1
    # not noise: for iid Gaussian noise this ratio is sqrt(2) = 1.41; 40 steps give about 0.95
    smooth = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() / (x - x.mean()).abs().mean()
    assert smooth < 1.15
    init = torch.zeros(1, 3, 16, 16)
    x2 = sample(den, (1, 3, 16, 16), "ddim", 8, generator=g, init=init, strength=0.3)
    assert (x2 - init).abs().mean() < (x - init).abs().mean()  # img2img stays near its init
    prompts = tmp_path / "p.txt"
    prompts.write_text("edm | n=2 steps=4\n")
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "sample.py"), str(edm_run), str(prompts),
                          "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list((tmp_path / "out").rglob("*.png"))) >= 2
