"""Kernel Inception Distance (Bińkowski et al. 2018).

Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3,
averaged over random subsets, as in StyleGAN-ADA and clean-fid. Unlike FID it
is unbiased, so it is the one to use with a few hundred images (or fewer).
"""
from __future__ import annotations

import torch

from ..seeds import derive_seed
from .images import EvaluateError, as_features


def kid(feats_a, feats_b, num_subsets: int = 100, max_subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the subset estimates. The mean of two samples of the same
    distribution is ~0 and can be slightly negative (the estimate is unbiased)."""
    a, b = as_features(feats_a, "feats_a"), as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise EvaluateError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    d = a.shape[1]
    m = min(a.shape[0], b.shape[0], max_subset_size)
    generator = torch.Generator().manual_seed(derive_seed(seed, "kid-subsets"))
    estimates = []
    for _ in range(num_subsets):
        x = a[torch.randperm(a.shape[0], generator=generator)[:m]]
        y = b[torch.randperm(b.shape[0], generator=generator)[:m]]
        k_xx = (x @ x.T / d + 1) ** 3
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        # Unbiased: leave the diagonals k(x_i, x_i) out of the within-set means.
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        estimates.append(within - 2 * k_xy.mean())
    values = torch.stack(estimates)
    std = values.std() if len(estimates) > 1 else values.new_zeros(())
    return float(values.mean()), float(std)
