"""Guide losses. Each returns one loss per image, shape [N], so a batch's images
are guided independently (the gradient of the sum is per-image).
"""
from __future__ import annotations

import torch
from pytorch_msssim.ssim import _fspecial_gauss_1d, gaussian_filter


def embedding_distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance between unit vectors a [..., D] and b [..., D] (broadcast).

    cosine: 1 - cos, in [0, 2]. spherical: 2·arcsin(|a-b|/2)², the squared
    great-circle distance (used by disco diffusion), whose gradient does not
    vanish as the embeddings align.
    """
    if kind == "cosine":
        return 1 - (a * b).sum(-1)
    return 2 * ((a - b).norm(dim=-1) / 2).clamp(max=1).arcsin().pow(2)


def prompt_loss(emb: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                n: int, kind: str) -> torch.Tensor:
    """emb [N*K, D] cutout embeddings, targets [P, D], weights [P] -> [N]:
    Σ_p weight_p · distance(cutout, prompt_p), averaged over each image's K cutouts."""
    d = embedding_distance(emb[:, None, :], targets[None, :, :], kind)  # [N*K, P]
    return (d * weights).sum(-1).view(n, -1).mean(1)


def ssim_loss(img: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 - SSIM (data_range=1, pytorch-msssim's window and constants) per image.

    The SSIM map is averaged under the mask (blurred by the same window, so a
    map pixel counts as much as the mask around it); without a mask this equals
    1 - pytorch_msssim.ssim(img, target, data_range=1, size_average=False).
    """
    if min(img.shape[-2:]) < 11:
        raise ValueError(f"target_loss ssim needs images of at least 11 px, got {tuple(img.shape[-2:])}; "
                         f"use target_loss: l2")
    # pytorch-msssim's default window, one copy per channel as its ssim() makes it.
    win1 = _fspecial_gauss_1d(11, 1.5).to(img.device, img.dtype)
    win = win1.repeat(img.shape[1], 1, 1, 1)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu1, mu2 = gaussian_filter(img, win), gaussian_filter(target, win)
    s11 = gaussian_filter(img * img, win) - mu1 ** 2
    s22 = gaussian_filter(target * target, win) - mu2 ** 2
    s12 = gaussian_filter(img * target, win) - mu1 * mu2
    smap = (2 * mu1 * mu2 + c1) / (mu1 ** 2 + mu2 ** 2 + c1) * (2 * s12 + c2) / (s11 + s22 + c2)
    if mask is None:
        return 1 - smap.flatten(1).mean(1)
    m = gaussian_filter(mask.expand(img.shape[0], 1, *img.shape[-2:]), win1.view(1, 1, 1, -1))
    return 1 - (smap * m).flatten(1).sum(1) / (m.flatten(1).sum(1) * img.shape[1]).clamp_min(1e-8)


def l2_loss(img: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared pixel difference per image, under the mask if given."""
    sq = (img - target) ** 2
    if mask is None:
        return sq.flatten(1).mean(1)
    m = mask.expand(img.shape[0], 1, *img.shape[-2:])
    return (sq * m).flatten(1).sum(1) / (m.flatten(1).sum(1) * img.shape[1]).clamp_min(1e-8)


def gram(feat: torch.Tensor) -> torch.Tensor:
    """[B, L, C] features -> [B, C, C] Gram matrices normalised by L·C (the
    element count), a statistic of which features co-occur, wherever they are."""
    b, l, c = feat.shape
    return feat.transpose(1, 2) @ feat / (l * c)


def style_loss(feats: list[torch.Tensor], style_grams: list[torch.Tensor], n: int) -> torch.Tensor:
    """Σ over layers of |G - G_style|² / |G_style|², averaged over each image's
    cutouts -> [N]. Dividing by the style Gram's energy makes every layer count
    alike, whatever the scale of its activations."""
    total = 0
    for f, gs in zip(feats, style_grams):
        d = (gram(f) - gs).pow(2).flatten(1).sum(1) / gs.pow(2).sum().clamp_min(1e-12)
        total = total + d.view(n, -1).mean(1)
    return total
