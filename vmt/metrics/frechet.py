"""Frechet distance between Gaussian fits of two feature sets (the core of FVD and FID), in float64.

    d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))

The trace of sqrtm(S1 S2) is computed without forming the non-symmetric product: with R = S1^(1/2)
(symmetric, from an eigendecomposition), S1 S2 is similar to R S2 R, which is symmetric positive
semi-definite, so tr sqrtm(S1 S2) = sum sqrt(eig(R S2 R)). Tiny negative eigenvalues from rounding are
clipped to zero, so the result stays finite for singular covariances (fewer samples than dimensions).
`method="scipy"` uses scipy.linalg.sqrtm on the product and drops the imaginary residue instead, as the
common FID code does; both agree to rounding on well-conditioned inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vmt.errors import VmtError


@dataclass(frozen=True)
class GaussianStats:
    """Mean (D,) and covariance (D, D) of N feature vectors, float64."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


def gaussian_stats(features: np.ndarray) -> GaussianStats:
    """Fit a Gaussian to features (N, D): sample mean and unbiased covariance (N-1), float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise VmtError(f"features must be (N, D), got shape {x.shape}")
    if len(x) < 2:
        raise VmtError(f"need at least 2 feature vectors for a covariance, got {len(x)}")
    if not np.all(np.isfinite(x)):
        raise VmtError("features contain NaN or Inf; the detector output is not usable")
    return GaussianStats(x.mean(0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]), len(x))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr sqrtm(S1 S2) for symmetric PSD S1, S2 (float64, eigendecomposition route)."""
    r = _psd_sqrt(np.asarray(s1, np.float64))
    m = r @ np.asarray(s2, np.float64) @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def _trace_sqrt_scipy(s1: np.ndarray, s2: np.ndarray, eps: float = 1e-6) -> float:
    try:
        from scipy import linalg
    except ImportError as e:  # pragma: no cover - scipy is in the metrics extra
        raise VmtError("method='scipy' needs scipy: pip install 'vmt[metrics]'") from e
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.all(np.isfinite(covmean)):
        # singular product: regularise both sides slightly, as the common FID code does
        off = np.eye(len(s1)) * eps
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    return float(np.real(np.trace(covmean)))


def frechet_distance(mu1, sigma1, mu2, sigma2, *, method: str = "eigh") -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64, clipped at 0.

    method: "eigh" (default, stable for singular covariances) or "scipy" (sqrtm of the product).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = len(mu1)
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise VmtError(f"Frechet distance needs matching shapes, got mu {mu1.shape}/{mu2.shape}, "
                       f"sigma {s1.shape}/{s2.shape}")
    if method == "eigh":
        tr_cross = trace_sqrt_product(s1, s2)
    elif method == "scipy":
        tr_cross = _trace_sqrt_scipy(s1, s2)
    else:
        raise VmtError(f"unknown Frechet method {method!r}; use 'eigh' or 'scipy'")
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_cross)
    return max(value, 0.0)


@dataclass(frozen=True)
class ReferenceFit:
    """A fixed reference set's Gaussian fit with the square root of its covariance, computed once, so that
    many sets can be measured against it (the resamples of a bootstrap) at one eigendecomposition each."""

    stats: GaussianStats
    sqrt_sigma: np.ndarray
    trace: float


def reference_fit(features: np.ndarray) -> ReferenceFit:
    st = gaussian_stats(features)
    return ReferenceFit(st, _psd_sqrt(st.sigma), float(np.trace(st.sigma)))


def frechet_to_reference(features: np.ndarray, ref: ReferenceFit) -> float:
    """Frechet distance between the Gaussian fit of features (N, D) and a fixed reference, equal to
    frechet_distance_features(features, reference) up to rounding. With Xc the centred features over
    sqrt(N-1) and R = sqrt(S_ref), R S R = (Xc R)^T (Xc R), whose non-zero eigenvalues are those of the
    N x N Gram matrix (Xc R)(Xc R)^T: the smaller of the two is decomposed."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise VmtError(f"need features (N, D) with N >= 2, got shape {x.shape}")
    if x.shape[1] != len(ref.stats.mu):
        raise VmtError(f"feature sizes differ: {x.shape[1]} vs {len(ref.stats.mu)}")
    mu = x.mean(0)
    xc = (x - mu) / np.sqrt(len(x) - 1)
    y = xc @ ref.sqrt_sigma
    g = y @ y.T if len(x) < x.shape[1] else y.T @ y
    tr_cross = float(np.sqrt(np.clip(np.linalg.eigvalsh((g + g.T) / 2), 0.0, None)).sum())
    diff = mu - ref.stats.mu
    return max(float(diff @ diff + np.sum(xc * xc) + ref.trace - 2.0 * tr_cross), 0.0)


def frechet_distance_features(x: np.ndarray, y: np.ndarray, *, method: str = "eigh") -> float:
    """Frechet distance between Gaussian fits of features x (N, D) and y (M, D)."""
    a, b = gaussian_stats(x), gaussian_stats(y)
    if a.mu.shape != b.mu.shape:
        raise VmtError(f"feature sizes differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method=method)
