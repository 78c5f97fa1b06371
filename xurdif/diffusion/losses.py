"""The loss mix: each term is a mean over the batch, logged before the recipe's
weight multiplies it, and the total is the weighted sum. With
`loss.min_snr_gamma` the pixel terms (l2, l1) are min-SNR-weighted per sample
before that mean (and logged so); the image-space terms never are. Image-space terms (edge_l1, ssim, ms_ssim) compare the
predicted clean image with the real one, mapped to [0, 1] so SSIM's data_range is
right (xurdif passed data_range=255 on [0, 1] images, making its SSIM inert).
"""
from __future__ import annotations

import kornia
import torch
from pytorch_msssim import ms_ssim, ssim

from ..ranges import to_unit
from ..recipe import LossCfg

TERMS = ("l2", "l1", "edge_l1", "ssim", "ms_ssim")
TOTAL = "total"  # their weighted sum; the terms and it are the statistics logged under loss/


def edge_weights(x01: torch.Tensor, threshold: float, weight: float) -> torch.Tensor:
    """1 + weight on pixels where the grey image's Sobel magnitude exceeds threshold."""
    grey = kornia.color.rgb_to_grayscale(x01) if x01.shape[1] == 3 else x01.mean(1, keepdim=True)
    edges = (kornia.filters.sobel(grey) > threshold).float()
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
        terms["ssim"] = 1 - ssim(pred01, real01, data_range=1.0, size_average=True, win_size=win)
    if cfg.ms_ssim > 0:
        terms["ms_ssim"] = 1 - ms_ssim(pred01, real01, data_range=1.0, size_average=True)
    total = sum(getattr(cfg, k) * v for k, v in terms.items())
    return total, terms


def _odd_below(n: int) -> int:
    return n if n % 2 == 1 else n - 1
