"""The loss mix: each term is a mean over the batch, logged before the recipe's
weight multiplies it, and the total is the weighted sum. With
`loss.min_snr_gamma` the pixel terms (l2, l1) are min-SNR-weighted per sample
before that mean (and logged so); the image-space terms never are. Image-space terms (edge_l1, ssim, ms_ssim) compare the
predicted clean image with the real one, mapped to [0, 1] so SSIM's data_range is
right (xurdif passed data_range=255 on [0, 1] images, making its SSIM inert).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim, ssim
from pytorch_msssim.ssim import _fspecial_gauss_1d

from ..ranges import to_unit
from ..recipe import LossCfg

TERMS = ("l2", "l1", "edge_l1", "ssim", "ms_ssim")
TOTAL = "total"  # their weighted sum; the terms and it are the statistics logged under loss/


# Constant kernels, built once per (name, device, dtype) and kept there: kornia's Sobel and
# grey conversion and pytorch_msssim's window built theirs on every call, on the host, and
# copied them to the device (a blocking copy each on a GPU, and a dozen more operations per step).
_KERNELS: dict[tuple, torch.Tensor] = {}


def _kernel(name: str, device: torch.device, dtype: torch.dtype, make) -> torch.Tensor:
    key = (name, device, dtype)
    k = _KERNELS.get(key)
    if k is None:
        k = _KERNELS[key] = make().to(device=device, dtype=dtype)
    return k


# kornia.filters.sobel's normalised first-order kernels ([dx, dy], L1 norm 1) and
# kornia.color.rgb_to_grayscale's weights, from the same double literals.
SOBEL = [[[-0.125, 0.0, 0.125], [-0.25, 0.0, 0.25], [-0.125, 0.0, 0.125]],
         [[-0.125, -0.25, -0.125], [0.0, 0.0, 0.0], [0.125, 0.25, 0.125]]]
GREY = [0.299, 0.587, 0.114]


def grey(x01: torch.Tensor) -> torch.Tensor:
    """kornia.color.rgb_to_grayscale's float path (the same operations, so the same bits)."""
    r, g, b = x01.unbind(dim=-3)
    w_r, w_g, w_b = _kernel("grey", x01.device, x01.dtype, lambda: torch.tensor(GREY, dtype=torch.float64)).unbind()
    return torch.addcmul(torch.addcmul(r * w_r, g, w_g), b, w_b).unsqueeze(-3)


def sobel(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """kornia.filters.sobel (normalised): sqrt(gx² + gy² + eps) per channel, the border replicated."""
    b, c, h, w = x.shape
    k = _kernel("sobel", x.device, x.dtype, lambda: torch.tensor(SOBEL, dtype=torch.float64)[:, None])
    g = F.conv2d(F.pad(x.reshape(b * c, 1, h, w), [1, 1, 1, 1], "replicate"), k).reshape(b, c, 2, h, w)
    return torch.sqrt((g * g).sum(2) + eps)  # gx·gx + gy·gy: one addition either way


def ssim_window(channels: int, size: int, device: torch.device, dtype: torch.dtype, sigma: float = 1.5) -> torch.Tensor:
    """pytorch_msssim's Gaussian window for `channels` channels ([C, 1, 1, size]), built once per device."""
    return _kernel(f"ssim{channels}x{size}/{sigma}", device, dtype,
                   lambda: _fspecial_gauss_1d(size, sigma).repeat([channels, 1, 1, 1]))


def edge_weights(x01: torch.Tensor, threshold: float, weight: float) -> torch.Tensor:
    """1 + weight on pixels where the grey image's Sobel magnitude exceeds threshold."""
    g = grey(x01) if x01.shape[1] == 3 else x01.mean(1, keepdim=True)
    edges = (sobel(g) > threshold).float()
    return 1 + weight * edges


def min_snr_weight(snr: torch.Tensor, gamma: float, space: str) -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023): min(SNR, γ) in x0 space, rescaled to the space the
    error is measured in (eps error = x0 error · SNR, v error = x0 error · (SNR + 1))."""
    w = snr.clamp(max=gamma)
    if space == "eps":
        return w / snr
    if space == "v":
        return w / (snr + 1)
    return w


def loss_terms(
    cfg: LossCfg,
    out: torch.Tensor,
    target: torch.Tensor,
    x0_pred: torch.Tensor,
    x0: torch.Tensor,
    prediction: str,
    ab: torch.Tensor,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total, {term: batch mean before the recipe's weight; l2 and l1 min-SNR-weighted
    when min_snr_gamma is set}). All inputs [N, C, H, W]; ab [N]."""
    pred01, real01 = to_unit(x0_pred, value_range), to_unit(x0, value_range)
    a, b, space = (out, target, prediction) if cfg.space == "target" else (x0_pred, x0, "x0")
    per_sample = torch.ones_like(ab)
    if cfg.min_snr_gamma is not None:
        per_sample = min_snr_weight(ab / (1 - ab), cfg.min_snr_gamma, space)
    terms: dict[str, torch.Tensor] = {}
    if cfg.l2 > 0:
        terms["l2"] = ((a - b) ** 2).mean(dim=(1, 2, 3)).mul(per_sample).mean()
    if cfg.l1 > 0:
        terms["l1"] = (a - b).abs().mean(dim=(1, 2, 3)).mul(per_sample).mean()
    if cfg.edge_l1 > 0:
        w = edge_weights(real01, cfg.edge_threshold, cfg.edge_weight)
        terms["edge_l1"] = (w * (pred01 - real01).abs()).mean()
    if cfg.ssim > 0:
        win = min(11, _odd_below(min(x0.shape[-2:])))
        window = ssim_window(x0.shape[1], win, pred01.device, pred01.dtype)
        terms["ssim"] = 1 - ssim(pred01, real01, data_range=1.0, size_average=True, win=window)
    if cfg.ms_ssim > 0:
        terms["ms_ssim"] = 1 - ms_ssim(pred01, real01, data_range=1.0, size_average=True,
                                       win=ssim_window(x0.shape[1], 11, pred01.device, pred01.dtype))
    total = sum(getattr(cfg, k) * v for k, v in terms.items())
    return total, terms


def _odd_below(n: int) -> int:
    return n if n % 2 == 1 else n - 1
