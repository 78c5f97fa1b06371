import math

import pytest
import torch

from xurdif.diffusion import prediction as P
from xurdif.diffusion.losses import edge_weights, loss_terms, min_snr_weight
from xurdif.diffusion.schedule import make_schedule
from xurdif.recipe import EmaCfg, LossCfg, OptimCfg
from xurdif.train.ema import ema_decay, make_ema, power_exponent, update_ema
from xurdif.train.lr import learning_rate


def test_cosine_schedule_matches_the_closed_form():
    s = make_schedule("cosine", 1000)
    assert s.T == 1000
    ac = s.alphas_cumprod
    assert torch.all(ac[1:] < ac[:-1])
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    assert ac[499].item() == pytest.approx(f(500) / f(0), rel=1e-9)
    assert ac[-1].item() < 1e-8  # the last beta, clipped at 0.999, leaves almost no signal
    # urdiffusion's variant divides t by T + 1 (its checkpoints were trained on it).
    u = make_schedule("cosine_urdiffusion", 1000).alphas_cumprod
    g = lambda t: math.cos((t / 1001 + 0.008) / 1.008 * math.pi / 2) ** 2
    assert u[499].item() == pytest.approx(g(500) / g(0), rel=1e-9)
    assert u[-1].item() == pytest.approx(g(1000) / g(0), rel=1e-6)


def test_linear_schedule_and_unknown_name():
    s = make_schedule("linear", 1000)
    assert s.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4)
    with pytest.raises(ValueError, match="unknown schedule 'sigmoid'; valid: cosine, linear"):
        make_schedule("sigmoid")


@pytest.mark.parametrize("pred", ["eps", "x0", "v", "edm"])
def test_prediction_round_trips(pred):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    ab = torch.tensor([0.999, 0.7, 0.2, 0.01]).view(-1, 1, 1, 1)
    x_t = P.add_noise(x0, eps, ab)
    out = P.target(pred, x0, eps, ab)  # a perfect network
    torch.testing.assert_close(P.to_x0(pred, out, x_t, ab), x0, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(P.eps_from_x0(x0, x_t, ab), eps, atol=2e-4, rtol=1e-4)


def test_v_is_the_rotation_of_eps_and_x0():
    x0, eps, ab = torch.tensor(0.3), torch.tensor(-1.2), torch.tensor(0.64)
    assert P.target("v", x0, eps, ab).item() == pytest.approx(0.8 * -1.2 - 0.6 * 0.3)
    with pytest.raises(ValueError, match="valid: eps, x0, v, edm"):
        P.target("score", x0, eps, ab)


def _losses(cfg, pred, real, prediction="x0", ab=None):
    ab = ab if ab is not None else torch.full((pred.shape[0],), 0.5)
    return loss_terms(cfg, pred, real, pred, real, prediction, ab)


def test_l1_l2_against_hand_values():
    real = torch.zeros(1, 3, 4, 4)
    pred = torch.zeros(1, 3, 4, 4)
    pred[0, 0, 0, 0] = 1.0  # one pixel off by 1 in [-1, 1]
    total, terms = _losses(LossCfg(l2=2.0, l1=3.0), pred, real)
    assert terms["l2"].item() == pytest.approx(1 / 48)
    assert terms["l1"].item() == pytest.approx(1 / 48)
    assert total.item() == pytest.approx(2 / 48 + 3 / 48)


def test_edge_l1_against_hand_value():
    # A vertical black/white edge: kornia's Sobel marks the two columns beside it.
    real01 = torch.zeros(1, 3, 8, 8)
    real01[..., 4:] = 1.0
    w = edge_weights(real01, threshold=0.08, weight=4.0)
    assert w[0, 0, :, 3:5].eq(5).all() and w[0, 0, :, :3].eq(1).all() and w[0, 0, :, 5:].eq(1).all()
    real, pred = real01 * 2 - 1, real01 * 2 - 1 + 0.2  # +0.2 in [-1,1] = +0.1 in [0,1]
    _, terms = _losses(LossCfg(l2=0, edge_l1=1.0), pred, real)
    assert terms["edge_l1"].item() == pytest.approx(0.1 * (16 * 5 + 48 * 1) / 64, rel=1e-5)


def test_ssim_of_a_known_pair():
    # Constant images a, b in [0,1]: SSIM = (2ab + C1) / (a² + b² + C1), C1 = (0.01·1)².
    a, b, c1 = 0.2, 0.6, 1e-4
    real = torch.full((1, 3, 16, 16), a) * 2 - 1
    pred = torch.full((1, 3, 16, 16), b) * 2 - 1
    _, terms = _losses(LossCfg(l2=0, ssim=1.0), pred, real)
    expected = 1 - (2 * a * b + c1) / (a * a + b * b + c1)
    assert terms["ssim"].item() == pytest.approx(expected, rel=1e-4)
    _, same = _losses(LossCfg(l2=0, ssim=1.0), real, real)
    assert same["ssim"].item() == pytest.approx(0.0, abs=1e-6)


def test_ssim_is_not_inert_for_small_errors():
    # xurdif's data_range=255 bug made 1-SSIM ~700x too small; ours must see noise.
    g = torch.Generator().manual_seed(0)
    real = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    pred = real + 0.1 * torch.randn(2, 3, 32, 32, generator=g)
    _, terms = _losses(LossCfg(l2=0, ssim=1.0), pred, real)
    from pytorch_msssim import ssim

    buggy = 1 - ssim((pred + 1) / 2, (real + 1) / 2, data_range=255, win_size=11).item()
    assert terms["ssim"].item() > 0.01
    assert terms["ssim"].item() > 100 * buggy


def test_ms_ssim_identical_is_zero():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(1, 3, 168, 168, generator=g) * 2 - 1
    _, terms = _losses(LossCfg(l2=0, ms_ssim=1.0), real, real)
    assert terms["ms_ssim"].item() == pytest.approx(0.0, abs=1e-5)


def test_min_snr_weights():
    snr = torch.tensor([0.5, 5.0, 20.0])
    assert min_snr_weight(snr, 5.0, "x0").tolist() == pytest.approx([0.5, 5.0, 5.0])
    assert min_snr_weight(snr, 5.0, "eps").tolist() == pytest.approx([1.0, 1.0, 0.25])
    assert min_snr_weight(snr, 5.0, "v").tolist() == pytest.approx([0.5 / 1.5, 5 / 6, 5 / 21])
    real = torch.zeros(3, 1, 2, 2)
    pred = torch.ones(3, 1, 2, 2)
    ab = snr / (1 + snr)
    _, terms = loss_terms(LossCfg(min_snr_gamma=5.0), pred, real, pred, real, "eps", ab)
    assert terms["l2"].item() == pytest.approx((1 + 1 + 0.25) / 3, rel=1e-5)


def test_ema_decays():
    assert ema_decay(EmaCfg(kind="warmup", decay=0.999, warmup_power=1.0), 9, 0, 10) == pytest.approx(0.9)
    assert ema_decay(EmaCfg(kind="warmup", decay=0.999, warmup_power=1.0), 10**6, 0, 10) == 0.999
    assert ema_decay(EmaCfg(kind="off"), 5, 0, 10) == 0.0
    # EDM2: std 0.05 <-> gamma ≈ 16.97, std 0.10 <-> 6.94; power decay with batch 10 after 1000 images.
    assert power_exponent(0.05) == pytest.approx(16.97, abs=0.01)
    assert power_exponent(0.10) == pytest.approx(6.94, abs=0.01)
    d = ema_decay(EmaCfg(kind="power", std=0.10), 100, 990, 1000)
    assert d == pytest.approx((1 - 10 / 1000) ** (power_exponent(0.10) + 1))


def test_ema_update_moves_towards_the_model_and_keeps_ints():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = make_ema(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.parameters()]
    update_ema(ema, net, 0.75)
    for b, e, n in zip(before, ema.parameters(), net.parameters()):
        torch.testing.assert_close(e, 0.75 * b + 0.25 * n)
    assert not any(p.requires_grad for p in ema.parameters())


def test_learning_rate_curve():
    cfg = OptimCfg(lr=1e-3, warmup_images=100, lr_schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate(cfg, 0, 1100) == pytest.approx(1e-5)
    assert learning_rate(cfg, 100, 1100) == pytest.approx(1e-3)
    assert learning_rate(cfg, 600, 1100) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert learning_rate(cfg, 1100, 1100) == pytest.approx(1e-4)
    assert learning_rate(OptimCfg(lr=2e-4), 5000, 10) == 2e-4
