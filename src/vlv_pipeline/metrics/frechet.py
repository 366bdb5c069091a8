"""Frechet distance between two sets of feature vectors (the formula behind FID)."""

from __future__ import annotations

import numpy as np
import torch


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of (n, d) feature sets."""
    from scipy import linalg

    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (n, d) feature sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("a Frechet distance needs at least 2 samples per set")
    x, y = a.double().numpy(), b.double().numpy()
    mu_x, mu_y = x.mean(0), y.mean(0)
    s_x, s_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean, _ = linalg.sqrtm(s_x @ s_y, disp=False)
    if not np.isfinite(covmean).all():  # near-singular: regularise, as FID implementations do
        eps = np.eye(len(s_x)) * 1e-6
        covmean = linalg.sqrtm((s_x + eps) @ (s_y + eps))
    covmean = covmean.real
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(s_x + s_y - 2 * covmean))
