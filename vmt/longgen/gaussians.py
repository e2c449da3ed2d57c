"""Gaussian fits of latent codes for the sampling priors: one full-covariance Gaussian (mean and Cholesky
factor), its split into a marginal and a conditional, and a Gaussian mixture. All float64."""

from __future__ import annotations

import torch


def gaussian_fit(z: torch.Tensor, ridge: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and Cholesky factor L (D, D) of the sample covariance of z (N, D), float64; `ridge` times the
    mean variance is added to the diagonal so L exists for N <= D or collapsed dimensions."""
    z = z.double()
    mean = z.mean(0)
    cov = torch.cov(z.T).reshape(z.shape[1], z.shape[1])
    cov = cov + ridge * cov.diagonal().mean().clamp(min=1e-12) * torch.eye(z.shape[1], dtype=torch.float64)
    return mean, torch.linalg.cholesky(cov)


def split_gaussian(mean: torch.Tensor, scale: torch.Tensor, dim_x: int):
    """N(mean, L L^T) over (x, v) with x the first `dim_x` coordinates -> (mean_x, mean_v, gain, L_x, L_v|x):
    x = mean_x + L_x eps, v | x = mean_v + gain (x - mean_x) + L_v|x eps'.

    With L lower-triangular, x = mean_x + L[:d, :d] eps_1 and v = mean_v + L[d:, :d] eps_1 + L[d:, d:] eps_2,
    so eps_1 = L_x^-1 (x - mean_x): gain = L[d:, :d] L_x^-1, and L[d:, d:] is the conditional's Cholesky factor.
    """
    d = dim_x
    lx, lvx, lv = scale[:d, :d], scale[d:, :d], scale[d:, d:]
    gain = torch.linalg.solve_triangular(lx, lvx, upper=False, left=False)  # gain L_x = L[d:, :d]
    return mean[:d], mean[d:], gain, lx, lv


def mixture_fit(z: torch.Tensor, components: int, seed: int = 0):
    """Full-covariance Gaussian mixture of z (N, D) (scikit-learn, EM from k-means) -> weights (K,), means
    (K, D), Cholesky factors (K, D, D), float64; `components` is capped at N // 2 (the unused get weight 0).
    A ridge of 1e-4 times the mean variance is added to each covariance, as in `gaussian_fit`."""
    from sklearn.mixture import GaussianMixture

    z = z.double()
    n, d = z.shape
    k = max(1, min(components, n // 2))
    ridge = float(1e-4 * z.var(0).mean().clamp(min=1e-12))
    gm = GaussianMixture(k, covariance_type="full", reg_covar=ridge, random_state=seed).fit(z.numpy())
    weights = torch.zeros(components, dtype=torch.float64)
    means = torch.zeros(components, d, dtype=torch.float64)
    scales = torch.eye(d, dtype=torch.float64).repeat(components, 1, 1)
    weights[:k] = torch.from_numpy(gm.weights_)
    means[:k] = torch.from_numpy(gm.means_)
    scales[:k] = torch.linalg.cholesky(torch.from_numpy(gm.covariances_))
    return weights, means, scales
