"""Each postprocessing op checked numerically on small images."""
from __future__ import annotations

import pytest
import torch

from xurdif.postprocess import OPS, PRESETS, RANGES, parse_chain, postprocess


def img(seed: int = 0, n: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # A smooth gradient plus mild texture: something like a picture.
    ramp = torch.linspace(0.2, 0.8, size).view(1, 1, 1, size).expand(n, 3, size, size)
    return (ramp + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)


def test_gamma_one_is_identity_and_gamma_brightens_or_darkens():
    x = img()
    assert torch.allclose(postprocess(x, "gamma:1"), x, atol=1e-6)
    assert postprocess(x, "gamma:0.5").mean() > x.mean() > postprocess(x, "gamma:2").mean()


def test_contrast_changes_spread_not_mean():
    x = img()
    up, down = postprocess(x, "contrast:1.5"), postprocess(x, "contrast:0.5")
    assert up.std() > x.std() * 1.3 and down.std() < x.std() * 0.6
    assert abs(up.mean() - x.mean()) < 0.02 and torch.allclose(postprocess(x, "contrast:1"), x, atol=1e-6)


def test_saturation_zero_is_grey_and_one_is_identity():
    x = img()
    grey = postprocess(x, "saturation:0")
    assert (grey - grey.mean(1, keepdim=True)).abs().max() < 1e-5
    assert torch.allclose(postprocess(x, "saturation:1"), x, atol=1e-5)


def test_median_removes_salt_noise():
    x = torch.full((1, 3, 32, 32), 0.5)
    noisy = x.clone()
    g = torch.Generator().manual_seed(0)
    salt = torch.rand(1, 1, 32, 32, generator=g) < 0.05
    noisy[salt.expand_as(noisy)] = 1.0
    out = postprocess(noisy, "median:3")
    assert (noisy - x).abs().max() == 0.5 and (out - x).abs().max() < 1e-6
    with pytest.raises(ValueError, match="odd integer"):
        postprocess(x, "median:4")


def test_bilateral_smooths_noise_but_keeps_edges():
    step = torch.zeros(1, 3, 32, 32)
    step[..., 16:] = 1.0
    g = torch.Generator().manual_seed(1)
    noisy = step + 0.03 * torch.randn(step.shape, generator=g)
    out = postprocess(noisy, "bilateral:0.1")
    assert (out - step).abs().mean() < 0.6 * (noisy.clamp(0, 1) - step).abs().mean()
    # The edge stays sharp: the columns either side still differ by ~1.
    assert (out[..., 17] - out[..., 14]).mean() > 0.9


def test_unsharp_increases_edge_contrast():
    x = img()
    blurred_edge = torch.zeros(1, 3, 16, 16)
    blurred_edge[..., 8:] = 0.8
    blurred_edge[..., 7] = 0.4
    blurred_edge += 0.1
    out = postprocess(blurred_edge, "unsharp:1.0")
    assert (out[..., 9] - out[..., 6]).mean() > (blurred_edge[..., 9] - blurred_edge[..., 6]).mean()
    assert torch.allclose(postprocess(x, "unsharp:0"), x)


def test_clahe_spreads_a_low_contrast_histogram():
    x = 0.45 + 0.1 * img(size=64)
    low, high = postprocess(x, "clahe:2.0"), postprocess(x, "clahe:8.0")
    # The clip limit bounds the amplification: a higher limit spreads more.
    assert high.std() > low.std() > 1.3 * x.std()


def test_grain_is_seeded_per_image():
    x = img(n=2)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    a = postprocess(x, "grain:0.05", gens([1, 2]))
    b = postprocess(x[1:], "grain:0.05", gens([2]))
    assert torch.equal(a[1:], b)
    assert 0.035 < (a - x).std() < 0.06


def test_chain_presets_and_errors():
    assert parse_chain("crisp,gamma:0.9") == [("contrast", 1.1), ("unsharp", 0.6), ("gamma", 0.9)]
    assert parse_chain("mine", {"mine": "median:3"}) == [("median", 3.0)]
    assert parse_chain("") == []
    with pytest.raises(ValueError, match="did you mean 'gamma'"):
        parse_chain("gamm:1")
    with pytest.raises(ValueError, match="needs a number"):
        parse_chain("gamma:x")
    with pytest.raises(ValueError, match="refers to itself"):
        parse_chain("loop", {"loop": "loop"})
    assert set(OPS) == {"contrast", "gamma", "saturation", "median", "bilateral", "unsharp", "clahe", "grain"}


def test_values_out_of_range_are_refused_when_parsed():
    assert set(RANGES) == set(OPS)
    for preset in PRESETS:  # every shipped preset is inside the ranges
        parse_chain(preset)
    assert parse_chain("median:15,grain:0,contrast:0") == [("median", 15.0), ("grain", 0.0), ("contrast", 0.0)]
    for spec, msg in [("median:999", "'median' takes 3..15, got '999'"), ("median:4", "odd integer"),
                      ("gamma:0", "'gamma' takes 0.05..10"), ("grain:2", "'grain' takes 0..1, got '2'"),
                      ("unsharp:nan", "needs a number"), ("saturation:-1", "takes 0..5")]:
        with pytest.raises(ValueError, match=msg):
            parse_chain(spec)
