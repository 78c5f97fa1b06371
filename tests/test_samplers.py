"""Samplers against an oracle: for Gaussian data x0 ~ N(mu, s²) per pixel the
exact denoiser E[x0 | x_t] and the exact probability-flow ODE solution are
closed form, so sampler error can be measured without any trained network."""
from __future__ import annotations

import math

import pytest
import torch

from xurdif.diffusion.samplers import (
    SAMPLERS, TAKES_ETA, ddim, ddpm, dpmpp_2m, randn, sample, sampler_steps, spaced_timesteps, start_timestep,
)
from xurdif.diffusion.spacing import log_snr_table, nearest_timesteps, timesteps_for
from xurdif.diffusion.denoiser import Denoiser
from xurdif.diffusion.schedule import make_schedule

SHAPE = (3, 4, 4)


class GaussianOracle:
    """Exact E[x0 | x_t] for x0 ~ N(mu, s²) independently per pixel."""

    def __init__(self, schedule, mu: torch.Tensor, s: torch.Tensor):
        self.schedule, self.mu, self.s = schedule, mu, s
        self.calls = 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        ab = self.schedule.ab(t).view(-1, 1, 1, 1).double()
        a, var = ab.sqrt(), 1 - ab
        gain = a * self.s**2 / (ab * self.s**2 + var)
        return (self.mu + gain * (x_t.double() - a * self.mu)).to(x_t.dtype)

    def ode_solution(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        # The flow maps each pixel's Gaussian marginal affinely onto the next,
        # so the standardised value z is invariant along it.
        ab = float(self.schedule.alphas_cumprod[t])
        z = (x_t.double() - math.sqrt(ab) * self.mu) / torch.sqrt(ab * self.s**2 + 1 - ab)
        return self.mu + self.s * z


@pytest.fixture(scope="module")
def oracle():
    g = torch.Generator().manual_seed(0)
    mu = torch.rand(SHAPE, generator=g, dtype=torch.float64) - 0.5
    # Per-pixel std 0.2-0.5: the spread of real images in [-1, 1].
    s = 0.2 + 0.3 * torch.rand(SHAPE, generator=g, dtype=torch.float64)
    return GaussianOracle(make_schedule("cosine", 1000), mu, s)


def test_spaced_timesteps():
    assert spaced_timesteps(1000, 4) == [999, 749, 499, 249]
    assert spaced_timesteps(1000, 1000) == list(range(999, -1, -1))
    assert spaced_timesteps(10, 3, start=4) == [4, 2, 0]
    ts = spaced_timesteps(1000, 37, start=611)
    assert ts[0] == 611 and len(ts) == 37 and all(a > b for a, b in zip(ts, ts[1:]))
    with pytest.raises(ValueError, match="steps must be in 1..10"):
        spaced_timesteps(1000, 11, start=9)
    assert start_timestep(1000, 1.0) == 999 and start_timestep(1000, 0.5) == 499


def _ode_error(oracle, sampler, steps):
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = spaced_timesteps(1000, steps)
    out = sampler(oracle, x.clone(), ts)
    return (out - oracle.ode_solution(x, ts[0])).abs().mean().item()


def test_deterministic_samplers_converge_to_exact_ode_solution(oracle):
    e_ddim = {n: _ode_error(oracle, ddim, n) for n in (20, 100, 500)}
    e_dpm = {n: _ode_error(oracle, dpmpp_2m, n) for n in (10, 20, 100)}
    assert e_ddim[500] < e_ddim[100] < e_ddim[20]
    assert e_dpm[100] < e_dpm[20] < e_dpm[10]
    assert e_dpm[100] < 2e-4 and e_ddim[500] < 2e-3
    # The point of a second-order solver: 20 steps are as good as first-order
    # DDIM at 100 (measured ratio 0.85-1.03 over three data draws; the last,
    # first-order step into the clean image keeps it from doing better).
    assert e_dpm[20] <= 1.1 * e_ddim[100], (e_dpm, e_ddim)


@pytest.mark.parametrize("name,steps,bias", [("ddim", 100, 0.035), ("dpmpp_2m", 50, 0.01),
                                             ("ddpm", 200, 0.04), ("dpmpp_3m", 50, 0.02), ("edm", 100, 0.03),
                                             ("dpmpp_2m_sde", 50, 0.03)])
def test_sample_statistics_match_data(oracle, name, steps, bias):
    n = 1000
    out = sample(oracle, (n, *SHAPE), name, steps, generator=torch.Generator().manual_seed(2),
                 device="cpu").double()
    # Sampling noise at n=1000: the mean's standard error is 0.032 s per pixel.
    assert ((out.mean(0) - oracle.mu) / oracle.s).abs().mean() < 0.045
    assert ((out.mean(0) - oracle.mu) / oracle.s).abs().max() < 0.15
    # Finite steps shrink the spread a little (the last x0 estimate is a
    # posterior mean); measured biases: ddim 50/100/200 steps 4.4/2.3/1.3 %,
    # dpmpp_2m 20/50 2.6/0.2 %, ddpm 200/1000 2.5/0.8 %, dpmpp_2m_sde (eta 1) 20/50/100/400
    # -0.5/+2.3/+1.2/+0.5 % (first order in the limit, as an SDE solver is).
    ratio = out.std(0) / oracle.s
    assert (ratio - 1).mean().abs() < bias and (ratio - 1).abs().max() < 0.1, ratio


def test_ddpm_equals_ddim_eta1_and_list_generators_are_batch_independent(oracle):
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ts = spaced_timesteps(1000, 25)
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(4)]
    a = ddpm(oracle, x.clone(), ts, generator=gens())
    b = ddim(oracle, x.clone(), ts, generator=gens(), eta=1.0)
    assert torch.allclose(a, b, atol=1e-9)
    # Row 2 alone, with its own generator, gives the same image as inside the batch.
    c = ddpm(oracle, x[2:3].clone(), ts, generator=[torch.Generator().manual_seed(12)])
    assert torch.allclose(a[2:3], c, atol=1e-12)


def test_sample_is_reproducible_and_seeds_differ(oracle):
    run = lambda seed: sample(oracle, (2, *SHAPE), "ddpm", 10,
                              generator=torch.Generator().manual_seed(seed), device="cpu")
    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_img2img_strength_and_noise_mult(oracle):
    init = oracle.mu.expand(2, *SHAPE).float() + 0.2
    calls = []
    cb = lambda d: calls.append(d["t"])
    sample(oracle, (2, *SHAPE), "ddim", 50, init=init, strength=0.4,
           generator=torch.Generator().manual_seed(0), device="cpu", callback=cb)
    assert calls[0] == 399 and len(calls) == 20
    # A small strength keeps the init; a large one mostly replaces it.
    change = {st: (sample(oracle, (2, *SHAPE), "ddim", 50, init=init, strength=st, device="cpu",
                          generator=torch.Generator().manual_seed(0)) - init).abs().mean().item()
              for st in (0.01, 0.9)}
    assert change[0.01] < 0.04 and change[0.9] > 0.15, change
    # noise_mult scales the start tensor: with mult 0 the deterministic DDIM
    # path starts from zeros, whatever the generator.
    z = [sample(oracle, (1, *SHAPE), "ddim", 10, noise_mult=0.0, device="cpu",
                generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert torch.equal(z[0], z[1])


def test_no_autograd_graph_without_guidance(oracle):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x, t):
            return self.conv(x)

    den = Denoiser(Net(), oracle.schedule, "eps")
    out = sample(den, (1, 3, 8, 8), "dpmpp_2m", 5, generator=torch.Generator().manual_seed(0))
    assert not out.requires_grad and out.grad_fn is None


def test_sampler_functions_keep_autograd_for_guidance(oracle):
    # A guidance-like wrapper needs gradients through the sampler functions.
    x = torch.zeros(1, *SHAPE, dtype=torch.float64, requires_grad=True)
    out = SAMPLERS["ddim"](oracle, x, spaced_timesteps(1000, 3))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_randn_list_rows():
    g = lambda s: torch.Generator().manual_seed(s)
    a = randn((2, 3), [g(1), g(2)])
    assert torch.equal(a[1], torch.randn(3, generator=g(2)))


def _exact_at(oracle, x, t: int, u: int) -> torch.Tensor:
    """The probability-flow ODE carries x_t at t to this x_u (the standardised value is kept)."""
    ab, abu = (float(oracle.schedule.alphas_cumprod[v]) for v in (t, u))
    z = (x - math.sqrt(ab) * oracle.mu) / torch.sqrt(ab * oracle.s**2 + 1 - ab)
    return math.sqrt(abu) * oracle.mu + torch.sqrt(abu * oracle.s**2 + 1 - abu) * z


def _order(oracle, name, ns=(8, 16, 32), t0=900, t1=100):
    """Observed order between t0 and t1 (not into the clean image, whose last step is first order
    for every solver): log2 of the error ratio when the steps double, with even gaps in log-SNR."""
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lam = log_snr_table(oracle.schedule)
    l0, l1 = float(lam[t0]), float(lam[t1])
    errs = []
    for n in ns:
        ts = nearest_timesteps(oracle.schedule, [l0 + (l1 - l0) * i / n for i in range(n + 1)], t0)
        got = {}
        SAMPLERS[name](oracle, x.clone(), ts, callback=lambda d: got.__setitem__(d["i"], d["x"]))
        errs.append((got[n - 1] - _exact_at(oracle, x, t0, ts[-1])).abs().mean().item())
    return [math.log2(a / b) for a, b in zip(errs, errs[1:])], errs


@pytest.mark.parametrize("name,order", [("ddim", 1), ("dpmpp_2m", 2), ("dpmpp_3m", 3), ("edm", 2)])
def test_solvers_converge_at_their_order(oracle, name, order):
    # Measured (16 -> 32 steps): ddim 0.98, dpmpp_2m 2.19, dpmpp_3m 3.30, edm (Heun) 2.04.
    orders, errs = _order(oracle, name)
    assert order - 0.1 < orders[-1] < order + 0.75, (orders, errs)


def test_dpmpp_3m_beats_2m_at_ten_steps_into_the_clean_image(oracle):
    e2, e3 = (_ode_error(oracle, SAMPLERS[n], 10) for n in ("dpmpp_2m", "dpmpp_3m"))
    assert e3 < e2, (e3, e2)


def test_edm_churn_is_stochastic_and_counts_evaluations(oracle):
    assert sampler_steps("edm", 10) == 5 and sampler_steps("edm", 11) == 6 and sampler_steps("ddim", 10) == 10
    before = oracle.calls
    run = lambda eta, seed: sample(oracle, (2, *SHAPE), "edm", 10, eta=eta, device="cpu",
                                   generator=torch.Generator().manual_seed(seed))
    a = run(0.0, 1)
    # 5 Heun steps: two evaluations each, one on the last and on the first (from above σ = 80).
    assert oracle.calls - before == 8
    b, c = run(1.0, 1), run(1.0, 1)
    assert torch.equal(b, c) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"edm eta \(churn\) must be in \[0, 1\], got 2"):
        run(2.0, 1)


def test_dpmpp_2m_sde_is_dpmpp_2m_at_eta_0_and_noisy_above(oracle):
    from xurdif.sampling.defaults import LEGACY, resolve

    run = lambda name, seed, **kw: sample(oracle, (2, *SHAPE), name, 10, spacing="karras", device="cpu",
                                          generator=torch.Generator().manual_seed(seed), **kw)
    # The same update in another order of float operations: equal to rounding.
    assert torch.allclose(run("dpmpp_2m_sde", 1, eta=0.0), run("dpmpp_2m", 1), atol=1e-6, rtol=0)
    a, b, c = run("dpmpp_2m_sde", 1, eta=1.0), run("dpmpp_2m_sde", 1, eta=1.0), run("dpmpp_2m_sde", 2, eta=1.0)
    assert torch.equal(a, b) and not torch.allclose(a, c) and not torch.allclose(a, run("dpmpp_2m", 1))
    with pytest.raises(ValueError, match=r"dpmpp_2m_sde eta must be in \[0, 1\], got 1.5"):
        run("dpmpp_2m_sde", 1, eta=1.5)
    # Named without an eta it is the SDE (eta 1), not dpmpp_2m under another name.
    assert resolve(LEGACY, "dpmpp_2m_sde").eta == 1.0 and resolve(LEGACY, "ddim").eta == 0.0
    assert resolve(LEGACY, "dpmpp_2m_sde", eta=0.3).eta == 0.3


def test_spacings():
    sched = make_schedule("cosine", 1000)
    lam = log_snr_table(sched)
    assert timesteps_for(sched, 4, "uniform") == spaced_timesteps(1000, 4)
    for spacing in ("logsnr", "karras"):
        for start, steps in ((999, 10), (499, 7), (5, 6), (3, 1)):
            ts = timesteps_for(sched, steps, spacing, start)
            assert ts[0] == start and len(ts) == steps and all(a > b for a, b in zip(ts, ts[1:])) and ts[-1] >= 0
    ts = timesteps_for(sched, 10, "logsnr")
    sigma = lambda t: math.exp(-float(lam[t]) / 2)
    # One step from the start to σ = 80, then even gaps in log-SNR down to t = 0.
    gaps = [float(lam[b] - lam[a]) for a, b in zip(ts[1:], ts[2:])]
    assert ts[-1] == 0 and 75 < sigma(ts[1]) < 85 and max(gaps) < 1.15 * min(gaps), (ts, gaps)
    # Karras: from σ = 80 too, and the steps crowd towards the clean image.
    ts = timesteps_for(sched, 10, "karras")
    assert ts[0] == 999 and 75 < sigma(ts[1]) < 85 and ts[-1] == 0 and ts[-2] < 40, ts
    assert timesteps_for(sched, 2, "karras") == [999, 0] == timesteps_for(sched, 2, "logsnr")
    with pytest.raises(ValueError, match="unknown spacing 'even'; valid: uniform, logsnr, karras, fitted"):
        timesteps_for(sched, 4, "even")
    with pytest.raises(ValueError, match="spacing 'fitted' needs a model with a fitted schedule"):
        timesteps_for(sched, 4, "fitted")



def test_sigma_min_moves_the_last_step_of_logsnr_and_karras():
    sched = make_schedule("cosine", 1000)
    lam = log_snr_table(sched)
    sigma = lambda t: math.exp(-float(lam[t]) / 2)
    for spacing in ("logsnr", "karras"):
        assert timesteps_for(sched, 10, spacing, sigma_min=0) == timesteps_for(sched, 10, spacing)
        for end in (0.05, 0.1, 1.0):
            ts = timesteps_for(sched, 10, spacing, sigma_min=end)
            # Still from the start, through σ = 80, strictly down; the last step is the nearest to σ_min.
            assert ts[0] == 999 and 75 < sigma(ts[1]) < 85 and all(a > b for a, b in zip(ts, ts[1:])), ts
            nearest = min(range(1000), key=lambda t: abs(float(lam[t]) + 2 * math.log(end)))
            assert ts[-1] == nearest, (spacing, end, ts)
        # Below the table's smallest σ it is the table's end; an img2img start under σ_min keeps its ramp.
        assert timesteps_for(sched, 10, spacing, sigma_min=1e-6) == timesteps_for(sched, 10, spacing)
        assert timesteps_for(sched, 4, spacing, 20, sigma_min=0.5) == timesteps_for(sched, 4, spacing, 20)
    # The logsnr ramp still has even gaps, now down to σ_min.
    ts = timesteps_for(sched, 10, "logsnr", sigma_min=0.05)
    gaps = [float(lam[b] - lam[a]) for a, b in zip(ts[1:], ts[2:])]
    assert max(gaps) < 1.15 * min(gaps), gaps
    for spacing in ("uniform", "fitted"):
        with pytest.raises(ValueError, match=f"^sigma_min applies to logsnr and karras spacing, not '{spacing}'; "
                                             "set it to 0 or change the spacing$"):
            timesteps_for(sched, 4, spacing, curve=[-5.0, 5.0], sigma_min=0.05)
    with pytest.raises(ValueError, match=r"^sigma_min must be a number in 0\.\.80 \(0 = the schedule's smallest\), "
                                         "got -1$"):
        timesteps_for(sched, 4, "karras", sigma_min=-1)

def test_fitted_curve_gives_its_own_steps_and_any_other_count():
    sched = make_schedule("cosine", 1000)
    lam = log_snr_table(sched)
    own = [999, 700, 420, 250, 120, 40, 5]
    curve = [float(lam[t]) for t in own]
    assert timesteps_for(sched, 7, "fitted", curve=curve) == own
    ts = timesteps_for(sched, 13, "fitted", curve=curve)  # every other one is a curve point
    assert ts[::2] == own
    # img2img from timestep 420 follows the curve from there.
    assert timesteps_for(sched, 5, "fitted", 420, curve) == [420, 250, 120, 40, 5]
    with pytest.raises(ValueError, match="at least 2 increasing"):
        timesteps_for(sched, 4, "fitted", curve=[1.0, 0.5])


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "edm"])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_works_with_every_prediction_type(oracle, name, prediction):
    """A network that predicts eps, v or EDM's F exactly gives, through the Denoiser, the
    same samples as the x0 oracle itself: the samplers see only x0 predictions."""
    from xurdif.diffusion import prediction as P

    class Exact(torch.nn.Module):
        def forward(self, x, t):
            ab = oracle.schedule.ab(t).view(-1, 1, 1, 1).double()
            x_t = x.double() * (P._d(ab).sqrt() if prediction == "edm" else 1)  # undo EDM's c_in
            x0 = oracle(x_t, t).double()
            return P.target(prediction, x0, P.eps_from_x0(x0, x_t, ab), ab)

    den = Denoiser(Exact(), oracle.schedule, prediction, clip=False)
    eta = {"eta": 0.5} if name in TAKES_ETA else {}  # the stochastic ones with their noise on
    run = lambda d: sample(d, (3, *SHAPE), name, 8, spacing="karras", device="cpu",
                           generator=[torch.Generator().manual_seed(s) for s in (0, 1, 2)], **eta)
    a, b = run(den).double(), run(oracle).double()
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
