"""Fréchet Inception Distance between two sets of features."""
from __future__ import annotations

import torch

from .images import EvaluateError, as_features


def fid(feats_a, feats_b) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a S_b).

    tr sqrt(S_a S_b) is computed exactly rather than with scipy's sqrtm, which is
    slow at D = 2048 and inaccurate on the rank-deficient covariances of a few
    hundred images. With centred features A [n, D], B [m, D], S_a = A'A/(n-1),
    S_b = B'B/(m-1); the eigenvalues of S_a S_b are the squared singular values
    of C = A B' / sqrt((n-1)(m-1)), so tr sqrt(S_a S_b) = nuclear norm of C.
    For large sets (n m > D^2) the same trace comes from a D x D eigenproblem.
    """
    a, b = as_features(feats_a, "feats_a"), as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise EvaluateError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    n, m, d = a.shape[0], b.shape[0], a.shape[1]
    mu_a, mu_b = a.mean(0), b.mean(0)
    a, b = a - mu_a, b - mu_b
    trace_a = a.square().sum() / (n - 1)
    trace_b = b.square().sum() / (m - 1)
    if n * m <= d * d:
        cross = torch.linalg.svdvals(a @ b.T).sum() / ((n - 1) * (m - 1)) ** 0.5
    else:
        cov_a, cov_b = a.T @ a / (n - 1), b.T @ b / (m - 1)
        evals, evecs = torch.linalg.eigh(cov_a)
        sqrt_a = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
        cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp_min(0).sqrt().sum()
    value = (mu_a - mu_b).square().sum() + trace_a + trace_b - 2 * cross
    # Rounding can push a zero distance a hair below 0.
    return max(float(value), 0.0)
