"""Metrics of stochastic forecasts (numpy, computed in float64).

Conventions: a "sample set" of one test window is (N, ...) predictions against one ground truth (...).
MAE and APD share units (mean absolute difference per element) so that APD/MAE is a pure ratio.
"""

from __future__ import annotations

import numpy as np


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """2 E|X-Y| - E|X-X'| - E|Y-Y'| (exponent 1, Euclidean, V-statistic) between windows x (n, ...) and y (m, ...).

    Trailing dimensions are flattened; see `vmt.metrics.energy.energy_distance` (not square-rooted, unlike
    scipy.stats.energy_distance).
    """
    from vmt.metrics.energy import energy_distance as _energy

    return _energy(np.reshape(x, (len(x), -1)), np.reshape(y, (len(y), -1)), statistic="V")


def sample_mae(gt: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Mean absolute error of each sample: gt (...), samples (N, ...) -> (N,)."""
    diff = np.abs(samples.astype(np.float64) - gt.astype(np.float64)[None])
    return diff.reshape(len(samples), -1).mean(1)


def best_k(gt: np.ndarray, samples: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """Keep the k samples with the lowest MAE; returns (their mean MAE, their indices ordered best first)."""
    if not 1 <= k <= len(samples):
        raise ValueError(f"k must be in 1..{len(samples)}, got {k}")
    mae = sample_mae(gt, samples)
    idx = np.argsort(mae, kind="stable")[:k]
    return float(mae[idx].mean()), idx


def apd(samples: np.ndarray) -> float:
    """Average pairwise distance: mean over pairs i != j of the mean absolute difference per element."""
    n = len(samples)
    if n < 2:
        return 0.0
    s = samples.reshape(n, -1).astype(np.float64)
    # Sum over pairs of sum_e |s_i,e - s_j,e| via sorting each element's column: O(n log n) per element.
    srt = np.sort(s, axis=0)
    coef = (2 * np.arange(n) - n + 1)[:, None]
    total = (coef * srt).sum()                    # sum over i<j of |s_i - s_j|, all elements
    return float(2 * total / (n * (n - 1) * s.shape[1]))


def ade_fde(gt: np.ndarray, samples: np.ndarray) -> tuple[float, float]:
    """Best-of-N average and final displacement errors: gt (H, K, 2), samples (N, H, K, 2) -> (ADE, FDE).

    Displacement is the Euclidean distance of each keypoint; ADE averages over frames and keypoints.
    The minima over samples are taken separately for ADE and FDE.
    """
    d = np.linalg.norm(samples.astype(np.float64) - gt.astype(np.float64)[None], axis=-1)  # (N, H, K)
    return float(d.mean(axis=(1, 2)).min()), float(d[:, -1].mean(axis=1).min())


def crps(gt: np.ndarray, samples: np.ndarray) -> float:
    """Sample CRPS averaged over elements: E|X - y| - 0.5 E|X - X'| (X' pairs over all N^2, V-statistic)."""
    n = len(samples)
    s = samples.reshape(n, -1).astype(np.float64)
    y = gt.reshape(-1).astype(np.float64)
    term1 = np.abs(s - y[None]).mean(0)
    srt = np.sort(s, axis=0)
    coef = (2 * np.arange(n) - n + 1)[:, None]
    term2 = 2 * (coef * srt).sum(0) / (n * n)     # E|X - X'| over all N^2 pairs
    return float((term1 - 0.5 * term2).mean())
