"""bench/long_run.py's autoguidance (the `guide` study, docs/quality.md): the combination
D_bad + w (D_good - D_bad) on unclipped estimates, clipped once; and the `samplers` study's settings."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import long_run  # noqa: E402
from xurdif.diffusion.denoiser import Denoiser  # noqa: E402
from xurdif.diffusion.schedule import make_schedule  # noqa: E402


class Scale(torch.nn.Module):
    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, x, t, *args):
        return self.k * x


def test_autoguided_extrapolates_unclipped_estimates_and_clips_once():
    sched = make_schedule("cosine", 1000)
    x, t = torch.linspace(-0.9, 0.9, 2 * 3 * 4 * 4).view(2, 3, 4, 4), torch.tensor(500)
    good, bad = Denoiser(Scale(1.5), sched, "x0"), Denoiser(Scale(0.5), sched, "x0")
    assert torch.equal(long_run.Autoguided(good, bad, 1.0)(x, t), (1.5 * x).clamp(-1, 1))
    assert torch.allclose(long_run.Autoguided(good, bad, 2.0)(x, t), (2.5 * x).clamp(-1, 1))
    # A guide that overshoots more than the model: 2x + 2 (1.5x - 2x) = x, inside the range
    # everywhere; clipping each estimate first would give 1 at x = 0.9.
    over = Denoiser(Scale(2.0), sched, "x0")
    assert torch.allclose(long_run.Autoguided(good, over, 2.0)(x, t), x)
    assert long_run.Autoguided(good, bad, 2.0).to_image(torch.zeros(1)).item() == 0.5
    assert good.clip and bad.clip  # the caller's denoisers are left as they were


def test_sampler_specs_read_the_chooser_form_and_name_a_bad_entry():
    specs = long_run.sampler_specs("ddpm:100,dpmpp_3m:10:logsnr::0.05,dpmpp_2m_sde:10:karras")
    assert [(s.sampler, s.steps, s.spacing, s.eta, s.sigma_min) for s in specs] == [
        ("ddpm", 100, "uniform", 0.0, 0.0), ("dpmpp_3m", 10, "logsnr", 0.0, 0.05),
        ("dpmpp_2m_sde", 10, "karras", 1.0, 0.0)]
    for bad, why in (("ddpm:100,foo:10", "unknown sampler 'foo'"), ("ddpm", "expected 2 to 5 fields"),
                     ("dpmpp_3m:10:bogus", "unknown spacing 'bogus'"), ("ddim:10:uniform:2", "eta must be in 0..1")):
        with pytest.raises(SystemExit, match=f"{bad.split(',')[-1]!r}.*{why}"):
            long_run.sampler_specs(bad)


def test_train_spaces_checkpoints_by_the_variants_own_batch(tmp_path):
    args = long_run.build_parser().parse_args(
        ["train", "--out", str(tmp_path), "--images", "400000", "--checkpoints", "8"])
    recipe = str(ROOT / "recipes" / "small-data.yaml")
    every = {}
    for batch in (4, 16):
        overrides = long_run.train_overrides(args, "v", recipe, [f"train.batch_size={batch}"])
        every[batch] = [o for o in overrides if o.startswith("checkpoint.every_steps=")]
    # 400,000 images in 8 parts: 50,000 images apart at either batch
    assert every == {4: ["checkpoint.every_steps=12500"], 16: ["checkpoint.every_steps=3125"]}


def test_no_eval_also_turns_off_the_end_of_run_sampler_choice(tmp_path):
    """The GPU machine has no Inception weights: the choice, which scores with them, would fail there."""
    from xurdif.recipe import load_recipe

    recipe = str(ROOT / "recipes" / "small-data.yaml")
    for flags, evaluated in (([], True), (["--no-eval"], False)):
        args = long_run.build_parser().parse_args(["train", "--out", str(tmp_path), "--images", "1000", *flags])
        r = load_recipe(recipe, long_run.train_overrides(args, "v", recipe, []))
        assert (r.sampling.choose, r.eval.time_share > 0) == (evaluated, evaluated)
        assert r.eval.stop_on_memorised is False  # the study's curves go on past the first copies
